"""Label-conditioned generation benchmark on the bundled CBMC counts: CountsDiff vs a Gaussian DDPM and scVI.

Protocol (CountsDiff paper Sec. 3.4 / E.5, Tables 11-12; metrics of scDiffusion Sec. 2.3-3):

1. cells split 80 / 20 (train / held-out), stratified by ``cell_type`` (``countsdiff_sc.pp.split_cells``);
2. CountsDiff trained on *all* entries of the train cells with the labels (no ``valid_layer``) with the plain calls
   (``CountsDiffModel(train)``: the default preset, conditioned on each cell's depth, whose generated cells take the
   depths of random train cells of their type; ``train()``: the default budget with early stopping on 10% of the
   train cells); the Gaussian DDPM baseline (``countsdiff_sc.baselines``, same residual MLP size, ``log1p`` counts
   standardised per gene, linear betas, T = 1000) for ``--max-steps`` steps; plain scVI (NB likelihood, no labels) on
   the train cells; and (unless ``--no-paper-model``) a second CountsDiff model with ``preset="paper"`` (the
   settings of 0.1: no depth condition, ``--max-steps`` steps), the before of the new defaults;
3. for each of the largest cell types, as many cells as held out (capped by ``--max-cells``) are generated:
   CountsDiff at a small grid of guidance strengths (paper Table 12: 0-3, best ED at 2) and attrition levels
   (Table 11: eta_rescale 0-0.05), the Gaussian DDPM (guidance 1), scVI posterior-predictive draws of random *train*
   cells of that type (a label-conditioned generator that never sees held-out cells) and of the held-out cells
   themselves (an oracle reconstruction, for reference), and random train cells of that type (the floor of every
   metric: a second real sample);
4. every set is compared with the held-out cells of its type: MMD and SWD on the top 50 PCs of the pooled
   log-normalised cells, energy distance of the pooled raw counts (paper App. D.3.4), scFID with one scVI embedder
   trained once on the train cells, random-forest real-vs-generated AUC, per-gene zero-fraction error (mean
   absolute), per-gene mean and variance Pearson correlation (log-normalised), and the sparsity difference;
5. label fidelity: logistic regression on 50 PCs of log-normalised counts, trained on the real train cells (all
   types); its accuracy on the real held-out cells of each type is compared with its accuracy on the cells generated
   for that label (guided samples should be classified as their label at least as often as real held-out cells);
6. rare-type augmentation: the rare types are the ``--rare-k`` (4) cell types with the fewest train cells among those
   with at least ``--rare-min-held`` (10) held-out cells ("Unknown" is not a type and never chosen; on CBMC: pDC, DC,
   Eryth, Mk with 40-75 train cells). Each is topped up to a target count, the median train size of the 13 types
   (176 cells: a typical type, not the largest), and, as the alternative amount, to 3x that (528: synthetic cells then
   outnumber the real ones 6-12x). The extra cells come from CountsDiff (``model.sample(labels=type)``, guidance 1,
   no attrition), from scVI posterior-predictive draws of random train cells of the type, or are random duplicates
   of those same train cells (plain oversampling, the honest baseline); the smaller set is the first part of the
   larger, and both are drawn with ``--aug-seeds`` (3) seeds. One PCA (50 components of log-normalised counts,
   fitted on the real train cells only, so every arm shares one embedding) feeds a logistic regression
   (``max_iter=2000``) trained on the real train cells alone, the same with ``class_weight="balanced"`` (the other
   honest baseline; both deterministic, fitted once) or the real cells plus one set of extra cells. All held-out
   cells are classified: per rare type recall, precision and F1, their macro-F1, overall accuracy and macro-F1
   over all types (the common types must not suffer), mean +- sd over the seeds of the draw.

Usage::

    python -m benchmarks.generation            # full run (~20-25 min on 2 CPU cores)
    python -m benchmarks.generation --quick    # smoke test (~3 min)

Writes ``benchmarks/results[/quick]/generation.md``, ``.json``, ``_umap.png`` and ``_augmentation.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks._generation_common import set_metrics, split_held_out

FULL_GRID = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (3.0, 0.0), (1.0, 0.01), (1.0, 0.05), (2.0, 0.02)]
QUICK_GRID = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (1.0, 0.05)]
INTERPOLATIONS = [("CD14+ Mono", "CD16+ Mono"), ("CD4 T", "NK")]
NOT_A_TYPE = ("Unknown",)
ALT_FACTOR = 3  # the alternative augmentation target, in multiples of the main one
AUG_ARMS = ["real only", "real only (balanced weights)", "real + CountsDiff", "real + scVI", "real + oversampled"]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--max-steps", type=int, default=6000, help="training steps of CountsDiff and the Gaussian DDPM")
    p.add_argument("--n-steps", type=int, default=50, help="sampling steps of CountsDiff and the Gaussian DDPM")
    p.add_argument("--top", type=int, default=4, help="number of largest cell types evaluated")
    p.add_argument("--max-cells", type=int, default=500, help="cap on generated cells per type")
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--model-kwargs", default="{}",
                   help='CountsDiffModel keyword arguments as JSON, e.g. \'{"rate_baseline": "gamma_poisson"}\'')
    p.add_argument("--no-paper-model", action="store_true", help="skip the paper-preset CountsDiff model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--rare-k", type=int, default=4, help="number of rare cell types augmented")
    p.add_argument("--rare-min-held", type=int, default=10, help="held-out cells a rare type needs at least")
    p.add_argument("--aug-seeds", type=int, default=3, help="seeds of the augmentation draw")
    return p.parse_args()


def rare_types(lab_train: np.ndarray, lab_held: np.ndarray, k: int, min_held: int) -> list[str]:
    """The ``k`` cell types with the fewest train cells among those with ``>= min_held`` held-out cells."""
    n_train = pd.Series(lab_train).value_counts()
    n_held = pd.Series(lab_held).value_counts().reindex(n_train.index, fill_value=0)
    ok = (n_held >= min_held) & ~n_train.index.isin(NOT_A_TYPE)
    return list(n_train[ok].sort_values(kind="stable").index[:k])


def augmentation(model: Any, scvi_model: Any, scvi_data: Any, pca: Any, x_train: np.ndarray, lab_train: np.ndarray,
                 x_held: np.ndarray, lab_held: np.ndarray, rare: list[str], targets: dict[str, int],
                 args: argparse.Namespace, timings: dict[str, float]) -> pd.DataFrame:
    """Classifiers trained with and without extra cells of the rare types, scored on all held-out cells.

    One row per (arm, target, seed): overall accuracy, macro-F1 over all types and over the rare types, and recall /
    precision / F1 of each rare type. The real-only arms do not depend on the draw and have one row (seed -1).
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    import countsdiff_sc as cds
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.pp import log_normalize

    n_train = pd.Series(lab_train).value_counts()
    if any(n_train[t] >= min(targets.values()) for t in rare):
        raise ValueError(f"a rare type already has {min(targets.values())} train cells; lower --rare-k")
    n_max = {t: max(targets.values()) - int(n_train[t]) for t in rare}
    z_train, z_held = pca.transform(log_normalize(x_train)), pca.transform(log_normalize(x_held))

    def score(arm: str, target: str, seed: int, n_extra: int, z_extra: np.ndarray | None = None,
              lab_extra: np.ndarray | None = None, **kw: Any) -> dict[str, Any]:
        z, lab = z_train, lab_train
        if z_extra is not None:
            z, lab = np.vstack([z_train, z_extra]), np.concatenate([lab_train, lab_extra])
        pred = LogisticRegression(max_iter=2000, **kw).fit(z, lab).predict(z_held)
        prec, rec, f1, _ = precision_recall_fscore_support(lab_held, pred, labels=rare, zero_division=0)
        row = {"arm": arm, "target": target, "seed": seed, "n_extra": n_extra,
               "accuracy": float(np.mean(pred == lab_held)),
               "macro_f1_all": float(f1_score(lab_held, pred, average="macro", zero_division=0)),
               "macro_f1_rare": float(f1.mean()), "recall_rare": float(rec.mean()),
               "precision_rare": float(prec.mean())}
        for i, t in enumerate(rare):
            row |= {f"recall {t}": float(rec[i]), f"precision {t}": float(prec[i]), f"F1 {t}": float(f1[i])}
        return row

    torch.set_num_threads(args.threads)  # scanpy's neighbours (the UMAP just before) may change it
    t0 = time.perf_counter()
    rows = [score("real only", "none", -1, 0), score("real only (balanced weights)", "none", -1, 0,
                                                    class_weight="balanced")]
    t_fit = time.perf_counter() - t0
    t_gen = 0.0
    rng = np.random.default_rng(args.seed + 1)
    for s in range(args.aug_seeds):
        seed = args.seed + s
        t0 = time.perf_counter()
        extra: dict[str, dict[str, np.ndarray]] = {"real + CountsDiff": {}, "real + scVI": {},
                                                    "real + oversampled": {}}
        t_cd = 0.0
        for t in rare:
            t1 = time.perf_counter()
            out = model.sample(n_max[t], labels=t, sampler=cds.Sampler(n_steps=args.n_steps, guidance=1.0,
                                                                        attrition=0.0, seed=seed, progress=False))
            extra["real + CountsDiff"][t] = to_dense(out.X, np.float64).reshape(n_max[t], -1)
            t_cd += time.perf_counter() - t1
            idx = rng.choice(np.flatnonzero(lab_train == t), n_max[t], replace=True)
            torch.manual_seed(seed)
            draw = scvi_model.posterior_predictive_sample(scvi_data, indices=idx.tolist(), n_samples=1)
            extra["real + scVI"][t] = common.dense_draws(draw).reshape(n_max[t], -1)
            extra["real + oversampled"][t] = x_train[idx]
        torch.set_num_threads(args.threads)
        t_seed = time.perf_counter() - t0
        t_gen += t_seed
        t0 = time.perf_counter()
        for target, size in targets.items():
            n_t = {t: size - int(n_train[t]) for t in rare}  # the first cells of each draw
            lab_extra = np.concatenate([[t] * n_t[t] for t in rare])
            for arm, sets in extra.items():
                z_extra = pca.transform(log_normalize(np.vstack([sets[t][: n_t[t]] for t in rare])))
                rows.append(score(arm, target, seed, len(lab_extra), z_extra, lab_extra))
        t_fit += time.perf_counter() - t0
        common.log(f"augmentation seed {seed}: extra cells in {t_seed:.0f} s (CountsDiff {t_cd:.0f} s), "
                   f"classifiers in {time.perf_counter() - t0:.0f} s")
    timings["augmentation_generate_s"], timings["augmentation_classifiers_s"] = t_gen, t_fit
    return pd.DataFrame(rows)


def main() -> None:
    args = _parse()
    import scvi
    import torch

    import countsdiff_sc as cds
    from countsdiff_sc import metrics
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.pp import log_normalize

    common.start(args.seed, args.threads)
    grid = FULL_GRID
    n_estimators, embedder_epochs = 1000, None
    if args.quick:
        args.max_steps, args.n_steps, args.top, args.max_cells, args.scvi_epochs = 400, 20, 3, 100, 10
        grid, n_estimators, embedder_epochs = QUICK_GRID, 100, 5
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # ---------------------------------------------------------------- data
    adata = cds.datasets.cbmc()
    train, held, types, n_gen = split_held_out(adata, "cell_type", args.seed, args.top, args.max_cells)
    common.log(f"CBMC {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs}, held-out {held.n_obs}; "
        f"cell types {types}")
    x_train, x_held = to_dense(train.X, np.float64), to_dense(held.X, np.float64)
    lab_train = train.obs["cell_type"].astype(str).to_numpy()
    lab_held = held.obs["cell_type"].astype(str).to_numpy()

    # ---------------------------------------------------------------- training
    t0, c0 = time.perf_counter(), time.process_time()
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type")
    model = cds.CountsDiffModel(train, **json.loads(args.model_kwargs))
    model.train(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                **({"max_steps": args.max_steps} if args.quick else {}))
    timings["countsdiff_train_s"] = time.perf_counter() - t0
    timings["countsdiff_train_cpu_s"] = time.process_time() - c0
    budget = dict(model.train_budget_)
    common.log(f"CountsDiff trained ({budget}) in {timings['countsdiff_train_s']:.0f} s")

    t0 = time.perf_counter()
    gauss = cds.baselines.GaussianDDPMGenerator().fit(train, labels_key="cell_type", max_steps=args.max_steps,
                                                      batch_size=256, seed=args.seed, progress=False)
    timings["gaussian_train_s"] = time.perf_counter() - t0
    common.log(f"Gaussian DDPM trained ({args.max_steps} steps, {gauss.n_params:,} parameters) in "
        f"{timings['gaussian_train_s']:.0f} s")

    t0, c0 = time.perf_counter(), time.process_time()
    scvi_data = train.copy()
    scvi.model.SCVI.setup_anndata(scvi_data)
    scvi_model = scvi.model.SCVI(scvi_data, gene_likelihood="nb")
    scvi_model.train(max_epochs=args.scvi_epochs, accelerator="cpu", enable_progress_bar=False)
    torch.set_num_threads(args.threads)  # scvi-tools may change it
    timings["scvi_train_s"] = time.perf_counter() - t0
    timings["scvi_train_cpu_s"] = time.process_time() - c0
    common.log(f"scVI trained ({args.scvi_epochs} epochs) in {timings['scvi_train_s']:.0f} s")

    t0 = time.perf_counter()
    embedder = metrics.fit_scfid_embedder(train, max_epochs=embedder_epochs, seed=args.seed, accelerator="cpu")
    torch.set_num_threads(args.threads)
    timings["scfid_embedder_s"] = time.perf_counter() - t0
    common.log(f"scFID embedder trained in {timings['scfid_embedder_s']:.0f} s")

    # label classifier on real train cells
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    pca = PCA(50, random_state=args.seed).fit(log_normalize(x_train))
    clf = LogisticRegression(max_iter=2000).fit(pca.transform(log_normalize(x_train)), lab_train)

    def label_accuracy(x: np.ndarray, label: str) -> float:
        return float(np.mean(clf.predict(pca.transform(log_normalize(x))) == label))

    timings["label_classifier_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- interpolation (issue 5, item 3)
    t0 = time.perf_counter()
    interp_rows = []
    x_pca_train = pca.transform(log_normalize(x_train))
    for src, tgt in INTERPOLATIONS:
        out = model.interpolate(held, (src, tgt), weights=np.linspace(0.0, 1.0, 6), t_start=0.6,
                                n_cells=20 if args.quick else 100,
                                sampler=cds.Sampler(seed=args.seed, progress=False))
        z = pca.transform(log_normalize(to_dense(out.X, np.float64)))
        proba = clf.predict_proba(z)[:, list(clf.classes_).index(tgt)]
        c_src, c_tgt = x_pca_train[lab_train == src].mean(0), x_pca_train[lab_train == tgt].mean(0)
        w = out.obs["interpolation_weight"].to_numpy()
        for a in np.unique(w):
            sel = w == a
            interp_rows.append({
                "path": f"{src} -> {tgt}", "weight": float(a),
                "P(target) (classifier)": float(proba[sel].mean()),
                "classified as target": float(np.mean(clf.predict(z[sel]) == tgt)),
                "dist. to source centroid": float(np.linalg.norm(z[sel] - c_src, axis=1).mean()),
                "dist. to target centroid": float(np.linalg.norm(z[sel] - c_tgt, axis=1).mean()),
            })
    interp = pd.DataFrame(interp_rows)
    timings["interpolation_s"] = time.perf_counter() - t0
    common.log(f"interpolation done in {timings['interpolation_s']:.0f} s")

    # ---------------------------------------------------------------- generation
    rng = np.random.default_rng(args.seed)
    generated: dict[str, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    for g, eta in grid:
        name = f"CountsDiff g={g:g} eta={eta:g}"
        generated[name] = {}
        for t in types:
            out = model.sample(n_gen[t], labels=t, sampler=cds.Sampler(
                n_steps=args.n_steps, guidance=g, attrition=eta, attrition_kind="rescale", seed=args.seed,
                progress=False))
            generated[name][t] = to_dense(out.X, np.float64)
    timings["countsdiff_sample_s"] = time.perf_counter() - t0
    common.log(f"CountsDiff: {len(grid)} settings sampled in {timings['countsdiff_sample_s']:.0f} s")
    if not args.no_paper_model:
        # the settings of 0.1 (preset="paper"): no depth condition, the paper's loss weight and EMA, a fixed budget
        t0, c0 = time.perf_counter(), time.process_time()
        paper_data = train.copy()
        cds.CountsDiffModel.setup_anndata(paper_data, labels_key="cell_type")
        paper_model = cds.CountsDiffModel(paper_data, preset="paper")
        paper_model.train(max_steps=args.max_steps, batch_size=256, train_size=0.95, accelerator="cpu",
                          enable_progress_bar=False, enable_model_summary=False)
        timings["countsdiff_paper_train_s"] = time.perf_counter() - t0
        timings["countsdiff_paper_train_cpu_s"] = time.process_time() - c0
        generated["CountsDiff preset paper g=1"] = {
            t: to_dense(paper_model.sample(n_gen[t], labels=t, sampler=cds.Sampler(
                n_steps=args.n_steps, guidance=1.0, seed=args.seed, progress=False)).X, np.float64)
            for t in types
        }
        common.log(f"paper-preset CountsDiff trained and sampled in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    generated["Gaussian DDPM"] = {
        t: to_dense(gauss.sample(n_gen[t], labels=t, n_steps=args.n_steps, seed=args.seed).X, np.float64) for t in types
    }
    timings["gaussian_sample_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated["scVI (train cells)"], generated["scVI (held-out cells, oracle)"] = {}, {}
    generated["real train cells (floor)"] = {}
    for t in types:
        idx_train = rng.choice(np.flatnonzero(lab_train == t), n_gen[t], replace=n_gen[t] > np.sum(lab_train == t))
        idx_held = np.flatnonzero(lab_held == t)[: n_gen[t]]
        generated["scVI (train cells)"][t] = common.dense_draws(
            scvi_model.posterior_predictive_sample(scvi_data, indices=idx_train.tolist(), n_samples=1))
        generated["scVI (held-out cells, oracle)"][t] = common.dense_draws(
            scvi_model.posterior_predictive_sample(held.copy(), indices=idx_held.tolist(), n_samples=1))
        generated["real train cells (floor)"][t] = x_train[idx_train]
    timings["scvi_sample_s"] = time.perf_counter() - t0
    for sets in generated.values():
        for t, x in sets.items():
            sets[t] = x.reshape(n_gen[t], -1)

    # ---------------------------------------------------------------- metrics
    t0 = time.perf_counter()
    rows, fid_rows = [], []
    for t in types:
        real_t = x_held[lab_held == t]
        fid_rows.append({"method": "real held-out cells", "cell_type": t, "accuracy": label_accuracy(real_t, t)})
        for method, sets in generated.items():
            m = set_metrics(real_t, sets[t], embedder, n_estimators, args.seed)
            rows.append({"method": method, "cell_type": t, "n_real": len(real_t), "n_generated": n_gen[t], **m})
            fid_rows.append({"method": method, "cell_type": t, "accuracy": label_accuracy(sets[t], t)})
        common.log(f"metrics for {t} done ({time.perf_counter() - t0:.0f} s)")
    timings["metrics_s"] = time.perf_counter() - t0
    table, fidelity = pd.DataFrame(rows), pd.DataFrame(fid_rows)

    t0 = time.perf_counter()
    umap_path = common.result_stem("generation", args.quick, "_umap.png")
    _umap(x_held, lab_held, types, generated, pca, umap_path, args.seed)
    timings["umap_s"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- rare-type augmentation (issue 23, item 3)
    counts = pd.DataFrame({"train": pd.Series(lab_train).value_counts(),
                           "held-out": pd.Series(lab_held).value_counts()}).fillna(0).astype(int).sort_values("train")
    counts.index.name = "cell type"
    rare = rare_types(lab_train, lab_held, args.rare_k, args.rare_min_held)
    target = int(np.median(counts["train"]))
    targets = {"main": target, "alternative": ALT_FACTOR * target}
    common.log(f"cell types (train / held-out): {counts.to_dict(orient='index')}; rare types {rare}, topped up to "
               f"{target} (median train size) and {ALT_FACTOR * target} train cells")
    aug = augmentation(model, scvi_model, scvi_data, pca, x_train, lab_train, x_held, lab_held, rare, targets, args,
                       timings)
    aug_path = common.result_stem("generation", args.quick, "_augmentation.png")
    _augmentation_figure(aug, rare, targets, aug_path)
    aug_info = {"rare_types": rare, "targets": targets, "type_counts": counts, "table": aug, "figure": aug_path}
    timings["total_s"] = time.perf_counter() - t_all
    _write(table, fidelity, interp, timings, args, grid, types, n_gen, umap_path, gauss.n_params,
           sum(p.numel() for p in model.module.net.parameters()), aug_info)


def _umap(x_held: np.ndarray, lab_held: np.ndarray, types: list[str], generated: dict, pca: Any, path: Path,
          seed: int) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    from countsdiff_sc.pp import log_normalize

    shown = ["CountsDiff g=1 eta=0", "Gaussian DDPM", "scVI (train cells)"]
    blocks, source, label = [], [], []
    keep = np.isin(lab_held, types)
    blocks.append(x_held[keep])
    source += ["real held-out"] * int(keep.sum())
    label += list(lab_held[keep])
    for method in shown:
        for t in types:
            blocks.append(generated[method][t])
            source += [method] * len(generated[method][t])
            label += [t] * len(generated[method][t])
    x = np.vstack(blocks)
    emb = ad.AnnData(obs=pd.DataFrame({"source": source, "cell_type": label}, index=[str(i) for i in range(len(x))]))
    emb.obsm["X_pca"] = pca.transform(log_normalize(x))
    sc.pp.neighbors(emb, use_rep="X_pca", random_state=seed)
    sc.tl.umap(emb, random_state=seed)
    sources = ["real held-out", *shown]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 4.2), sharex=True, sharey=True)
    u = emb.obsm["X_umap"]
    colors = {t: plt.cm.tab10(i) for i, t in enumerate(types)}
    for ax, src in zip(axes, sources, strict=True):
        ax.scatter(u[:, 0], u[:, 1], s=2, c="lightgrey")
        for t in types:
            sel = (emb.obs["source"] == src).to_numpy() & (emb.obs["cell_type"] == t).to_numpy()
            ax.scatter(u[sel, 0], u[sel, 1], s=3, color=colors[t], label=t)
        ax.set_title(src, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(markerscale=4, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _augmentation_summary(aug: pd.DataFrame, cols: list[str], targets: dict[str, int]) -> pd.DataFrame:
    """Mean +- sd over the seeds per (arm, target), as text; the deterministic real-only arms show the value."""
    g = aug.groupby(["arm", "target"], sort=False)[cols]
    mean, sd, n = g.mean(), g.std(ddof=1), g.size()
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[c] = [f"{m:.3f} ± {d:.3f}" if k > 1 else f"{m:.3f}" for m, d, k in zip(mean[c], sd[c], n, strict=True)]
    sizes = {"none": "as is", **{k: str(v) for k, v in targets.items()}}
    out.index = pd.MultiIndex.from_tuples([(a, sizes[t]) for a, t in out.index], names=["arm", "rare type size"])
    return out


def _augmentation_figure(aug: pd.DataFrame, rare: list[str], targets: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [f"F1 {t}" for t in rare] + ["macro_f1_rare"]
    names = [*rare, "macro-F1 (rare)"]
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 3.8), sharey=True)
    width = 0.8 / len(AUG_ARMS)
    for ax, (target, size) in zip(np.atleast_1d(axes), targets.items(), strict=True):
        for i, arm in enumerate(AUG_ARMS):
            sub = aug[(aug.arm == arm) & aug.target.isin(["none", target])]
            mean, sd = sub[cols].mean().to_numpy(), sub[cols].std(ddof=1).fillna(0.0).to_numpy()
            ax.bar(np.arange(len(cols)) + (i - (len(AUG_ARMS) - 1) / 2) * width, mean, width, yerr=sd, capsize=2,
                   color=plt.cm.tab10(i), label=arm)
        ax.set_xticks(np.arange(len(cols)), names, fontsize=9)
        ax.set_title(f"rare types topped up to {size} train cells", fontsize=10)
        ax.set_ylim(0, 1.05)
    np.atleast_1d(axes)[0].set_ylabel("F1 on held-out cells")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(AUG_ARMS), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write(table: pd.DataFrame, fidelity: pd.DataFrame, interp: pd.DataFrame, timings: dict,
           args: argparse.Namespace, grid: list, types: list[str],
           n_gen: dict, umap_path: Path, n_gauss: int, n_cd: int, aug_info: dict) -> None:
    info = common.machine_info()
    order = list(dict.fromkeys(table.method))
    cols = ["mmd", "swd", "energy_distance", "scfid", "rf_auc", "zero_frac_mae", "mean_pearson", "var_pearson",
            "sparsity_abs_diff"]
    mean_table = table.groupby("method", sort=False)[cols].mean().loc[order]
    acc = fidelity.pivot(index="method", columns="cell_type", values="accuracy")
    acc = acc.loc[["real held-out cells", *order], types]
    acc["mean"] = acc.mean(axis=1)
    real_acc = acc.loc["real held-out cells", types]
    acc["all types >= real"] = [bool(np.all(acc.loc[m, types].to_numpy() >= real_acc.to_numpy() - 1e-12))
                                for m in acc.index]
    mode = "quick" if args.quick else "full"
    lines = [
        f"# Generation benchmark on CBMC ({mode} mode)", "",
        common.machine_header("generation", args.quick, timings["total_s"], info),
        "",
        f"Train / held-out split 80 / 20 stratified by cell type; {args.max_steps} training steps for CountsDiff "
        f"(residual MLP, {n_cd:,} parameters, all entries, labels, model settings {args.model_kwargs}; training "
        f"{timings['countsdiff_train_s']:.0f} s wall / {timings['countsdiff_train_cpu_s']:.0f} s CPU, scVI "
        f"{timings['scvi_train_s']:.0f} s / {timings['scvi_train_cpu_s']:.0f} s) and the Gaussian DDPM "
        f"({n_gauss:,} parameters); "
        f"{args.n_steps} sampling steps for both; scVI {args.scvi_epochs} epochs. Cell types: "
        + ", ".join(f"{t} ({n_gen[t]} cells generated)" for t in types) + ".",
        "",
        *([] if "countsdiff_paper_train_s" not in timings else [
            "`CountsDiff preset paper`: the settings of 0.1 (`CountsDiffModel(preset=\"paper\")`: no depth "
            f"condition, the paper's loss weight and EMA), {args.max_steps} steps; training "
            f"{timings['countsdiff_paper_train_s']:.0f} s wall / {timings['countsdiff_paper_train_cpu_s']:.0f} s CPU. "
            "The rows `CountsDiff g=... eta=...` are the default preset (depth-conditioned; generated cells take the "
            "depths of random train cells of their type).", ""]),
        "Metrics against the held-out cells of each type: MMD / SWD on 50 PCs of pooled log-normalised cells, "
        "energy distance (ED) of pooled raw counts, scFID (one scVI embedder trained on the train cells), random-"
        "forest AUC (0.5 = indistinguishable), mean absolute error of per-gene zero fractions, Pearson correlation "
        "of per-gene means / variances (log-normalised), |sparsity difference|. Lower is better except the "
        "correlations; `real train cells (floor)` is a second real sample, the best any generator can do.",
        "",
        "## Mean over cell types", "", common.frame_to_markdown(mean_table), "",
        "## Label fidelity (accuracy of a logistic regression on 50 PCs trained on real train cells)", "",
        "Guided samples should be classified as their label at least as often as real held-out cells.", "",
        common.frame_to_markdown(acc, float_format="{:.3f}"), "",
        "## Cell-state interpolation (`model.interpolate`)", "",
        "Held-out cells of the source type thinned to t = 0.6 and regenerated with the geometric mix "
        "y_src^(1-a) y_tgt^a of the two conditional rates (guidance 1); per weight a: mean classifier probability "
        "of the target type, share classified as the target, mean distance to the source / target centroids of the "
        "real train cells (50 PCs of log-normalised counts). A monotone path moves every column monotonically.", "",
        common.frame_to_markdown(interp.set_index(["path", "weight"]), float_format="{:.3f}"), "",
    ]
    lines += _augmentation_lines(aug_info, args)
    lines += [
        "## Per cell type", "",
    ]
    for t in types:
        sub = table[table.cell_type == t].set_index("method")[cols]
        lines += [f"### {t}", "", common.frame_to_markdown(sub), ""]
    lines += [f"![UMAP of real held-out and generated cells]({umap_path.name})", "",
              "## Timings (s)", "", common.frame_to_markdown(pd.Series(timings).round(1).to_frame("seconds")), ""]
    payload = {"settings": vars(args), "grid": grid, "cell_types": types, "n_generated": n_gen, **info,
               "timings": timings, "table": table.to_dict(orient="records"),
               "label_fidelity": fidelity.to_dict(orient="records"),
               "interpolation": interp.to_dict(orient="records"),
               "augmentation": {"rare_types": aug_info["rare_types"], "targets": aug_info["targets"],
                                "type_counts": aug_info["type_counts"].to_dict(orient="index"),
                                "arms": AUG_ARMS, "table": aug_info["table"].to_dict(orient="records")}}
    common.write_results(common.result_stem("generation", args.quick), lines, payload,
                         also=[umap_path.name, aug_info["figure"].name])


def _augmentation_lines(aug_info: dict, args: argparse.Namespace) -> list[str]:
    rare, targets, aug = aug_info["rare_types"], aug_info["targets"], aug_info["table"]
    counts = aug_info["type_counts"].loc[rare].copy()
    for name, size in targets.items():
        counts[f"extra cells ({name}: {size})"] = size - counts["train"]
    summary = _augmentation_summary(
        aug, ["accuracy", "macro_f1_all", "macro_f1_rare", "recall_rare", "precision_rare"], targets)
    summary.columns = ["accuracy (all)", "macro-F1 (all types)", "macro-F1 (rare)", "recall (rare)",
                       "precision (rare)"]
    n_seeds = args.aug_seeds
    lo, hi = int(counts["held-out"].min()), int(counts["held-out"].max())
    lines = [
        "## Rare-type augmentation", "",
        f"The {len(rare)} types with the fewest train cells among those with at least {args.rare_min_held} held-out "
        f"cells (\"Unknown\" excluded) are topped up to {targets['main']} train cells (the median train size of the "
        f"{len(aug_info['type_counts'])} types: every rare type becomes a typical one, none a dominant one) and, as "
        f"the alternative amount, to {targets['alternative']} (synthetic cells outnumber the real ones). Extra cells: "
        "CountsDiff samples of the label (guidance 1, no attrition), scVI posterior-predictive draws of random train "
        "cells of the type, or duplicates of the same random train cells (plain oversampling); the smaller set is "
        "the first part of the larger. One PCA (50 components of log-normalised counts, fitted on the real train "
        "cells only, so all arms share one embedding) and a logistic regression (`max_iter=2000`) trained on the "
        "real train cells of all types plus the extra cells; `balanced weights` is `class_weight=\"balanced\"` on "
        "the real cells alone. Scored on all held-out cells; mean ± sd over "
        f"{n_seeds} seed{'s' if n_seeds > 1 else ''} of the extra cells (the real-only arms are deterministic, "
        f"one fit). With {lo}-{hi} held-out cells per rare type, one cell moves its recall by {1 / hi:.2f}-"
        f"{1 / lo:.2f}.", "",
        common.frame_to_markdown(counts), "",
        "### Summary", "",
        common.frame_to_markdown(summary), "",
    ]
    for metric in ("F1", "recall", "precision"):
        per_type = _augmentation_summary(aug, [f"{metric} {t}" for t in rare], targets)
        per_type.columns = rare
        lines += [f"### Per rare type: {metric}", "", common.frame_to_markdown(per_type), ""]
    lines += [f"![F1 per rare type and arm]({aug_info['figure'].name})", ""]
    return lines


if __name__ == "__main__":
    main()
