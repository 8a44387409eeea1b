"""Count-space counterfactual transfer benchmark on CBMC with a synthetic batch effect: CountsDiff ``transfer`` vs
scVI's ``transform_batch`` (issue 23, item 2).

Protocol:

1. CBMC cells split 80 / 20 (train / held-out), stratified by ``cell_type``, seed 0
   (``countsdiff_sc.pp.split_cells``);
2. half of all cells (drawn with a fixed seed) become batch ``"b"`` and get a synthetic count-space batch effect;
   the others are batch ``"a"`` and stay untouched. The effect: every gene keeps a fraction ``f_g = 0.3 + 0.7 B``,
   ``B ~ Beta(2, 2)``, of its molecules (binomial thinning, ``Binomial(x, f_g)``), and 20 random genes get extra
   ``Poisson(3 * gene mean)`` counts. The untouched counts of the batch-b cells are kept as the truth;
3. CountsDiff (``labels_key="cell_type"``, ``categorical_covariate_keys=["batch"]``; the model has no separate
   ``batch_key``) and, for a comparison that uses no labels like scVI, a second CountsDiff model with the batch
   covariate only, are trained on the batch-affected train cells; scVI (``batch_key="batch"``, NB likelihood) too;
4. the held-out batch-b cells are moved to batch ``"a"``: CountsDiff ``transfer(covariates={"batch": "a"})`` over a
   grid of ``t_start`` (each cell keeps its own label); the same with per-gene retention (``retention="auto"``,
   estimated from the train cells; ``t_start`` then caps the levels, 0 = no cap) and, for the labels model, with the
   true retention of the simulated effect (``retention=`` a Series: the oracle of the estimate); the mean of
   ``--n-draws`` draws of the uncapped retention transfer (``n_samples=``); a naive per-gene rescaling by the
   estimated retention (no model); scVI ``get_normalized_expression(transform_batch="a")`` times
   the cell's observed library size, and scVI ``posterior_predictive_sample(transform_batch="a")`` (counts);
5. scores against the untouched originals: mean per-cell Pearson correlation of log-normalised profiles with the
   cell's own original; MMD (``countsdiff_sc.metrics.mmd``, 50 PCs fitted on the untouched train cells) to the
   held-out batch-a cells of the same type (the untouched distribution; mean over the 4 largest types); and, on a
   PCA (50 PCs) of the corrected batch-b cells together with the held-out batch-a cells: batch mixing (iLISI, scib's
   scaling (median - 1) / (n_batches - 1): 1 = perfectly mixed) and label conservation (cLISI scaled as in scib,
   1 = pure; ARI / NMI of Leiden clusters vs ``cell_type`` at the best-ARI resolution of a sweep).
   Rows: the batch-affected input (no correction), scVI, CountsDiff at each ``t_start``, and the untouched
   originals (the ceiling).

Usage::

    python -m benchmarks.transfer            # full run (~25 min on 2 CPU cores)
    python -m benchmarks.transfer --quick    # smoke test (~3 min)

Writes ``benchmarks/results[/quick]/transfer.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common

FULL_GRID = [0.2, 0.3, 0.4, 0.5, 0.6, 0.8]
QUICK_GRID = [0.2, 0.4, 0.6]
#: caps of the per-gene retention transfer (0 = no cap: every gene at its own level)
FULL_RETENTION_GRID = [0.0, 0.2, 0.3, 0.5]
QUICK_RETENTION_GRID = [0.0, 0.3]
QUICK_RESOLUTIONS = (0.1, 0.3, 0.5, 1.0)
N_BOOSTED = 20


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--max-steps", type=int, default=6000, help="training steps of CountsDiff")
    p.add_argument("--n-steps", type=int, default=50, help="reverse steps of a transfer (from t_start to 0)")
    p.add_argument("--top", type=int, default=4, help="number of largest cell types for the MMD")
    p.add_argument("--scvi-epochs", type=int, default=200)
    p.add_argument("--n-draws", type=int, default=5,
                   help="draws averaged in the mean rows (transfer(n_samples=...))")
    p.add_argument("--no-batch-only", action="store_true", help="skip the second CountsDiff model (batch only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args()


def mixing_and_conservation(x: np.ndarray, batch: np.ndarray, labels: np.ndarray, resolutions: Any,
                            seed: int) -> dict[str, float]:
    """iLISI (scib scaling), cLISI (scib scaling), Leiden ARI / NMI on a 50-PC PCA of log-normalised counts."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from countsdiff_sc import metrics
    from countsdiff_sc.metrics._embedding import lisi_per_cell
    from countsdiff_sc.pp import log_normalize

    emb = PCA(50, random_state=seed).fit_transform(log_normalize(x))
    dist, idx = NearestNeighbors(n_neighbors=90).fit(emb).kneighbors(emb)
    ilisi = lisi_per_cell(dist, idx, batch, 30.0)
    n_batches = len(np.unique(batch))
    leiden = metrics.leiden_nmi_ari(emb, labels, resolutions=resolutions, seed=seed)
    return {
        "ilisi": float((np.nanmedian(ilisi) - 1) / (n_batches - 1)),
        "clisi": metrics.clisi(emb, labels, scale=True),
        "ari": leiden["ari"], "nmi": leiden["nmi"],
    }


def main() -> None:
    args = _parse()
    import scipy.sparse as sp
    import scvi
    import torch

    import countsdiff_sc as cds
    from countsdiff_sc import metrics, pp
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.metrics._embedding import DEFAULT_RESOLUTIONS
    from countsdiff_sc.pp import log_normalize

    common.start(args.seed, args.threads)
    grid, resolutions, r_grid = FULL_GRID, DEFAULT_RESOLUTIONS, FULL_RETENTION_GRID
    if args.quick:
        args.max_steps, args.n_steps, args.scvi_epochs = 400, 20, 10
        grid, resolutions, r_grid = QUICK_GRID, QUICK_RESOLUTIONS, QUICK_RETENTION_GRID
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # ---------------------------------------------------------------- data and the synthetic batch effect
    adata = common.cbmc()
    pp.split_cells(adata, train=0.8, validation=0.0, test=0.2, seed=args.seed, stratify="cell_type")
    original = to_dense(adata.X, np.float64)
    effect = common.synthetic_batch_effect(original, np.random.default_rng(args.seed), N_BOOSTED)
    observed, in_b, keep = effect["observed"], effect["in_b"], effect["keep"]
    boosted, boost_rate = effect["boosted"], effect["boost_rate"]
    adata.X = sp.csr_matrix(observed.astype(np.float32))
    adata.obs["batch"] = pd.Categorical(np.where(in_b, "b", "a"), categories=["a", "b"])
    is_train = (adata.obs["countsdiff_split"] == "train").to_numpy()
    train = adata[is_train].copy()
    held = adata[~is_train].copy()
    held_orig = original[~is_train]
    held_b_mask = (held.obs["batch"] == "b").to_numpy()
    held_b = held[held_b_mask].copy()
    x_b_true, x_b_obs = held_orig[held_b_mask], to_dense(held_b.X, np.float64)
    x_a = held_orig[~held_b_mask]
    lab_b = held_b.obs["cell_type"].astype(str).to_numpy()
    lab_a = held.obs["cell_type"].astype(str).to_numpy()[~held_b_mask]
    types = list(held.obs["cell_type"].value_counts().index[: args.top])
    common.log(f"CBMC {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs} ({int(in_b[is_train].sum())} "
               f"in batch b), held-out {held.n_obs} ({len(lab_b)} in batch b); effect: keep fractions "
               f"{keep.min():.2f}-{keep.max():.2f} (mean {keep.mean():.2f}), {N_BOOSTED} genes boosted; "
               f"batch-b library {x_b_obs.sum(1).mean():.0f} vs untouched {x_b_true.sum(1).mean():.0f}")

    # ---------------------------------------------------------------- training
    fit = {"batch_size": 256, "train_size": 0.95, "accelerator": "cpu", "enable_progress_bar": False,
           "enable_model_summary": False}
    models: dict[str, Any] = {}
    t0 = time.perf_counter()
    cd_data = train.copy()
    cds.CountsDiffModel.setup_anndata(cd_data, labels_key="cell_type", categorical_covariate_keys=["batch"])
    models["CountsDiff"] = cds.CountsDiffModel(cd_data, preset="paper")
    models["CountsDiff"].train(max_steps=args.max_steps, **fit)
    timings["countsdiff_train_s"] = time.perf_counter() - t0
    common.log(f"CountsDiff (labels + batch) trained ({args.max_steps} steps) in {timings['countsdiff_train_s']:.0f} s")
    if not args.no_batch_only:
        t0 = time.perf_counter()
        bo_data = train.copy()
        cds.CountsDiffModel.setup_anndata(bo_data, categorical_covariate_keys=["batch"])
        models["CountsDiff (batch only)"] = cds.CountsDiffModel(bo_data, preset="paper")
        models["CountsDiff (batch only)"].train(max_steps=args.max_steps, **fit)
        timings["countsdiff_batch_only_train_s"] = time.perf_counter() - t0
        common.log(f"CountsDiff (batch only) trained in {timings['countsdiff_batch_only_train_s']:.0f} s")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    scvi_data = train.copy()
    scvi.model.SCVI.setup_anndata(scvi_data, batch_key="batch")
    scvi_model = scvi.model.SCVI(scvi_data, gene_likelihood="nb")
    scvi_model.train(max_epochs=args.scvi_epochs, accelerator="cpu", enable_progress_bar=False)
    torch.set_num_threads(args.threads)  # scvi-tools may change it
    timings["scvi_train_s"] = time.perf_counter() - t0
    common.log(f"scVI trained ({args.scvi_epochs} epochs) in {timings['scvi_train_s']:.0f} s")

    # ---------------------------------------------------------------- corrections of the held-out batch-b cells
    corrected: dict[str, np.ndarray] = {"batch-affected input (no correction)": x_b_obs}
    t0 = time.perf_counter()
    rho = scvi_model.get_normalized_expression(held_b.copy(), transform_batch="a", library_size=1.0,
                                               return_numpy=True)
    corrected["scVI transform_batch (mean x library)"] = np.asarray(rho, np.float64) * x_b_obs.sum(1, keepdims=True)
    corrected["scVI transform_batch (posterior predictive)"] = common.dense_draws(
        scvi_model.posterior_predictive_sample(held_b.copy(), transform_batch="a"))
    timings["scvi_transform_s"] = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    transfer_rows: list[dict[str, Any]] = []
    # the simulated effect's retention per gene (batch-b mean / untouched mean): thinning keep_g, plus the boost
    gene_mean = original.mean(axis=0)
    true_r = keep.copy()
    true_r[boosted] += boost_rate / np.maximum(gene_mean[boosted], 1e-12)
    true_retention = pd.Series(true_r, index=adata.var_names)
    retention_fit: dict[str, dict[str, float]] = {}
    estimates: dict[str, np.ndarray] = {}
    for name, model in models.items():
        for t in grid:
            t0 = time.perf_counter()
            out = model.transfer(held_b, covariates={"batch": "a"}, t_start=t, n_steps=args.n_steps, seed=args.seed,
                                 progress=False)
            seconds = time.perf_counter() - t0
            row = f"{name} transfer t_start={t:g}"
            corrected[row] = to_dense(out.X, np.float64)
            transfer_rows.append({"row": row, "model": name, "t_start": t, "seconds": seconds})
        retentions = {"auto": "auto"}
        if name == "CountsDiff":
            retentions["true"] = true_retention
        for kind, retention in retentions.items():
            for t in r_grid:
                # the uncapped one also averages draws (its first draw is the single-draw row: same seed)
                n_draws = args.n_draws if t == 0 else 1
                t0 = time.perf_counter()
                out = model.transfer(held_b, covariates={"batch": "a"}, t_start=t or None, n_steps=args.n_steps,
                                     seed=args.seed, progress=False, retention=retention, n_samples=n_draws)
                seconds = time.perf_counter() - t0
                row = f"{name} transfer retention={kind} t_start={t:g}"
                corrected[row] = to_dense(out.X, np.float64)
                transfer_rows.append({"row": row, "model": f"{name}, retention={kind}", "t_start": t,
                                      "seconds": seconds / n_draws})
                if n_draws > 1:
                    corrected[f"{row}, mean of {n_draws} draws"] = out.layers["transfer_mean"].astype(np.float64)
                if kind == "auto" and t == 0:
                    est = out.uns["transfer_retention"]["batch: b -> a"].to_numpy()
                    estimates[name] = est
                    retention_fit[name] = {
                        "pearson_log": float(np.corrcoef(np.log(est), np.log(true_retention.to_numpy()))[0, 1]),
                        "median_abs_log_error": float(np.median(np.abs(np.log(est / true_retention.to_numpy()))))}
        spent = sum(r["seconds"] for r in transfer_rows if r["model"].startswith(name))
        common.log(f"{name}: {len(grid)} transfers in {spent:.0f} s")
    timings["countsdiff_transfer_s"] = sum(r["seconds"] for r in transfer_rows)
    # the naive count-space correction with the same estimate: every gene divided by its retention (no model)
    est = estimates.get("CountsDiff")
    if est is not None:
        scaled = x_b_obs / est[None, :]
        corrected["per-gene rescale x / r (estimated r, real-valued)"] = scaled
        frac = scaled - np.floor(scaled)
        rounded = np.floor(scaled) + (np.random.default_rng(args.seed + 2).random(scaled.shape) < frac)
        corrected["per-gene rescale x / r, randomly rounded (counts)"] = rounded
    depth = float(x_b_obs.sum() / x_b_true.sum())  # a reference: the depth loss alone, no gene-specific distortion
    thinned = np.random.default_rng(args.seed + 1).binomial(x_b_true.astype(np.int64), depth)
    corrected[f"untouched originals thinned to {depth:.2f} (reference)"] = thinned.astype(np.float64)
    corrected["untouched originals (ceiling)"] = x_b_true

    # ---------------------------------------------------------------- metrics
    from sklearn.decomposition import PCA

    t0 = time.perf_counter()
    ref_pca = PCA(50, random_state=args.seed).fit(log_normalize(original[is_train]))
    z_a = ref_pca.transform(log_normalize(x_a))
    rows = []
    for name, x in corrected.items():
        z = ref_pca.transform(log_normalize(x))
        mmds = {t: metrics.mmd(z[lab_b == t], z_a[lab_a == t], seed=args.seed) for t in types}
        mix = mixing_and_conservation(np.vstack([x, x_a]), np.r_[["b"] * len(x), ["a"] * len(x_a)],
                                      np.r_[lab_b, lab_a], resolutions, args.seed)
        rows.append({"method": name, "per_cell_pearson": float(common.per_cell_pearson(x, x_b_true).mean()),
                     "mmd_same_type": float(np.mean(list(mmds.values()))), **mix,
                     "library_ratio": float(x.sum(1).mean() / x_b_true.sum(1).mean()),
                     **{f"mmd[{t}]": v for t, v in mmds.items()}})
        common.log(f"scored {name}: r = {rows[-1]['per_cell_pearson']:.3f}, iLISI {mix['ilisi']:.3f}, "
                   f"ARI {mix['ari']:.3f}")
    timings["metrics_s"] = time.perf_counter() - t0
    table = pd.DataFrame(rows).set_index("method")

    t0 = time.perf_counter()
    fig_path = common.result_stem("transfer", args.quick, ".png")
    _plot(table, transfer_rows, fig_path)
    timings["plot_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    torch.set_num_threads(args.threads)  # the header records the threads the transfers ran with
    effect = {"keep_min": float(keep.min()), "keep_mean": float(keep.mean()), "keep_max": float(keep.max()),
              "boosted_genes": [str(g) for g in adata.var_names[boosted]],
              "boost_rate": [float(r) for r in boost_rate]}
    effect["retention_estimate"] = retention_fit
    _write(table, transfer_rows, timings, args, grid, types, len(lab_b), len(lab_a), effect, fig_path)


def _plot(table: pd.DataFrame, transfer_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("per_cell_pearson", "per-cell Pearson r with the original"), ("ari", "Leiden ARI vs cell type"),
              ("nmi", "Leiden NMI vs cell type"), ("clisi", "cLISI (scaled, 1 = pure)"),
              ("ilisi", "iLISI (scaled, 1 = mixed)"), ("mmd_same_type", "MMD to batch-a cells of the type")]
    lines = {"batch-affected input (no correction)": ("grey", "--"),
             "scVI transform_batch (mean x library)": ("tab:red", "-."),
             "scVI transform_batch (posterior predictive)": ("tab:orange", ":"),
             "per-gene rescale x / r (estimated r, real-valued)": ("tab:purple", "-."),
             "CountsDiff transfer retention=auto t_start=0, mean of 5 draws": ("tab:brown", "--"),
             "untouched originals (ceiling)": ("black", "-")}
    lines.update({name: ("tab:green", (0, (1, 3))) for name in table.index if name.endswith("(reference)")})
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.5))
    frame = pd.DataFrame(transfer_rows)
    for ax, (col, title) in zip(axes.ravel(), panels, strict=True):
        for model, sub in frame.groupby("model", sort=False):
            ax.plot(sub["t_start"], table.loc[sub["row"], col].to_numpy(), marker="o", label=model)
        for name, (color, style) in lines.items():
            if name in table.index:
                ax.axhline(table.loc[name, col], color=color, linestyle=style, linewidth=1, label=name)
        ax.set_xlabel("t_start (retention rows: cap, 0 = none)")
        ax.set_title(title, fontsize=10)
        if col == "mmd_same_type":
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)  # the U-statistic of equal distributions may be slightly negative
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write(table: pd.DataFrame, transfer_rows: list[dict], timings: dict, args: argparse.Namespace, grid: list,
           types: list[str], n_b: int, n_a: int, effect: dict, fig_path: Path) -> None:
    info = common.machine_info()
    mode = "quick" if args.quick else "full"
    cols = ["per_cell_pearson", "mmd_same_type", "ilisi", "clisi", "ari", "nmi", "library_ratio"]
    lines = [
        f"# Counterfactual transfer benchmark on CBMC with a synthetic batch effect ({mode} mode)", "",
        common.machine_header("transfer", args.quick, timings["total_s"], info), "",
        f"Train / held-out split 80 / 20 stratified by cell type (seed {args.seed}); half of the cells are batch b "
        f"with a count-space batch effect: each gene keeps {effect['keep_min']:.2f}-{effect['keep_max']:.2f} "
        f"(mean {effect['keep_mean']:.2f}; 0.3 + 0.7 Beta(2, 2)) of its molecules and {N_BOOSTED} random genes get "
        "extra Poisson(3 x gene mean) counts; batch a is untouched. CountsDiff (labels + batch, and batch only) "
        f"trained {args.max_steps} steps, scVI (batch_key) {args.scvi_epochs} epochs, on the batch-affected train "
        f"cells. The {n_b} held-out batch-b cells are moved to batch a (CountsDiff `transfer(covariates="
        f"{{'batch': 'a'}}, t_start=...)`, {args.n_steps} reverse steps; scVI `transform_batch='a'`) and scored "
        f"against their untouched originals; the {n_a} held-out batch-a cells are the reference.", "",
        "`retention=auto` rows: `transfer(..., retention='auto', t_start=cap)`: each gene of a batch-b cell is read "
        "as a binomial thinning of its batch-a counts with the ratio of mean counts estimated from the train cells "
        "(within cell types for the labels model), inflated genes are thinned back, and the reverse chain "
        "(`countsdiff_sc.diffusion.restore`) draws only the molecules the batch lost; `t_start` caps every gene's "
        "level at p(t_start) (0 = no cap). `retention=true` rows give the labels model the simulated ratios "
        "instead (the estimate's oracle). The `per-gene rescale` rows are the naive count-space correction with the "
        "same estimate and no model: each gene of the batch-b cell divided by its estimated retention (real-valued, "
        "and randomly rounded to counts). `mean of N draws` rows are `transfer(n_samples=N)`'s `transfer_mean` "
        "layer (expected counts, real-valued like scVI's `mean x library`); their first draw is the row above them.",
        "",
        "Columns: `per_cell_pearson` mean over cells of the Pearson correlation of the log-normalised profile with "
        "the cell's own untouched original (higher is better); `mmd_same_type` MMD on 50 PCs (fitted on the untouched "
        f"train cells) to the held-out batch-a cells of the same type, mean over {', '.join(types)} (lower is "
        "better); on a 50-PC PCA of the corrected cells together with the batch-a cells: `ilisi` batch mixing (scib "
        "scaling, 1 = mixed as well as possible), `clisi` label conservation (scib scaling, 1 = pure neighbourhoods), "
        "`ari` / `nmi` Leiden clusters vs cell type (best-ARI resolution of a sweep); `library_ratio` mean counts "
        "per cell over the untouched originals'. The labels + batch CountsDiff model conditions on each cell's "
        "(true) cell type, which scVI does not use; the batch-only model is the like-for-like comparison.", "",
        "Reading the columns: the per-cell correlation is taken with the cell's raw original, one noisy draw, so any "
        "method that redraws molecules adds sampling noise of its own and loses correlation even when it restores the "
        "right profile; the `thinned ... (reference)` row (the originals uniformly thinned to the batch-b depth, "
        "without the gene-specific effect) shows what the depth loss alone costs. scVI's `mean x library` rows are "
        "denoised means without sampling noise, so in a PCA they sit apart from the raw batch-a cells (low iLISI, "
        "high MMD) whatever their quality; counts compare with counts in the posterior-predictive row. The same holds "
        "for CountsDiff's `mean of N draws` rows. Against one sparse original, a correction that leaves a cell's "
        "zeros at zero (the per-gene rescale) is favoured by the per-cell correlation: a draw or a mean that puts "
        "the lost molecules back spreads them over genes the original may not have sampled.", "",
        common.frame_to_markdown(table[cols], float_format="{:.3f}"), "",
        f"![Trade-off over t_start]({fig_path.name})", "",
        "## MMD per cell type", "",
        common.frame_to_markdown(table[[f"mmd[{t}]" for t in types]], float_format="{:.4f}"), "",
        "## Timings (s)", "", common.frame_to_markdown(pd.Series(timings).round(1).to_frame("seconds")), "",
        "Estimated retention (`retention='auto'`, from the train cells) against the simulated one: "
        + "; ".join(f"{m}: Pearson r of log ratios {v['pearson_log']:.3f}, median |log error| "
                    f"{v['median_abs_log_error']:.3f}" for m, v in effect.get("retention_estimate", {}).items())
        + ".", "",
        "Per transfer: " + ", ".join(f"{r['row']} {r['seconds']:.1f}" for r in transfer_rows) + ".", "",
    ]
    payload = {"settings": vars(args), "grid": grid, "cell_types": types, "effect": effect, **info,
               "timings": timings, "transfers": transfer_rows,
               "table": table.reset_index().to_dict(orient="records")}
    common.write_results(common.result_stem("transfer", args.quick), lines, payload, also=[fig_path.name])


if __name__ == "__main__":
    main()
