"""Calibration of CountsDiff's per-entry uncertainty on CBMC: the default ``impute`` and RePaint on held-out entries.

Cells are split 80/10/10, stratified by cell type; one model is trained with the default flow (``pp.mark_dropouts``'
default rule, ``CountsDiffModel(adata)``, ``train()``'s default budget) on the train + validation cells. Two
protocols on the test cells:

* **The default ``impute`` (target ``"denoise"``), held-out molecules.** Each test cell is split into two halves by
  count splitting (Neufeld et al. 2022, "data thinning"): ``x_a ~ Binomial(x, 1/2)`` entry by entry and
  ``x_b = x - x_a``. Under Poisson sampling the halves are independent replicate measurements of the same cell at the
  same depth, so ``x_b`` is a truth for the predictive distribution of a new measurement that ``impute(x_a)``'s draws
  define (``Poisson(f x_D)`` over draws of the restored profile ``x_D``: a new library of the cell). Every entry is
  scored (zeros included), and the spread layer against the error of the point estimate.
* **RePaint on held-out entries (target ``"mask"``).** 50% MCAR and 25% MNAR-low masks of the test cells'
  trusted entries, filled with ``impute(mask_layer=...)`` and its defaults; the held-out values are the truth.

Coverage of the central interval of nominal level ``c`` of the predictive distribution the draws define is measured
with the randomised probability integral transform (PIT) of the true value among the draws, ``u = (#{draws < y} + V
(#{draws = y} + 1)) / (n + 1)`` with ``V ~ U(0, 1)`` (ties are common for counts): for a calibrated sampler ``u`` is
uniform whatever the number of draws, and the coverage is the fraction of ``u`` in ``[(1-c)/2, (1+c)/2]``. (The plain
interval between empirical quantiles of ``n`` draws would be biased: with 20 draws the "95%" interval is the range of
the draws, whose expected coverage is 19/21 = 90.5%.) The width is that of the empirical quantile interval. The
spread layer (``layers["countsdiff_imputed_std"]``) is scored as a predictor of the absolute error of the point
estimate (Spearman correlation). Target: 75-85% (80%) and 91-98% (95%).

Usage::

    python -m benchmarks.calibration --quick     # smoke test (about 2 minutes)
    python -m benchmarks.calibration             # full run (the default training budget, 20 draws)

Writes ``benchmarks/results[/quick]/calibration.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import spearmanr

from benchmarks import _common as common

LEVELS = (0.5, 0.8, 0.95)
BINS = [(0, 0), (1, 2), (3, 9), (10, np.inf)]


def score(regime: str, draws: np.ndarray, truth: np.ndarray, point: np.ndarray, std: np.ndarray,
          rows: list[dict], by_value: list[dict]) -> None:
    """Coverage rows of one regime: ``draws`` (entries x draws), ``truth``, the point estimate and spread per entry."""
    err = np.abs(point - truth)
    row = {"regime": regime, "entries": int(truth.size), "draws": int(draws.shape[1]),
           "rmse": float(np.sqrt(np.mean((point - truth) ** 2))),
           "spearman(std, abs. error)": float(spearmanr(std, err).statistic)}
    for level in LEVELS:
        cov, width = common.coverage(draws, truth, level)
        row[f"{level:.0%} coverage"], row[f"{level:.0%} width"] = cov, width
    rows.append(row)
    for lo, hi in BINS:
        sel = (truth >= lo) & (truth <= hi)
        if sel.any():
            by_value.append({"regime": regime, "true value": f"{lo}" if lo == hi else f"{lo}-{hi:g}",
                             "entries": int(sel.sum()),
                             **{f"{lv:.0%} coverage": common.coverage(draws[sel], truth[sel], lv)[0]
                                for lv in LEVELS}})
    common.log(f"{regime}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if isinstance(v, float)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import countsdiff_sc as cds
    from countsdiff_sc import pp

    common.start(args.seed, args.threads)
    t_all = time.perf_counter()
    adata = common.cbmc(2500 if args.quick else None, args.seed)
    n_samples = 10 if args.quick else args.n_samples
    pp.mark_dropouts(adata, groupby="cell_type")
    pp.split_cells(adata, seed=args.seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train, test = adata[split != "test"].copy(), adata[split == "test"].copy()
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type", valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(train)
    t0 = time.perf_counter()
    model.train(accelerator="cpu", enable_progress_bar=False, **({"max_steps": 400} if args.quick else {}))
    common.log(f"trained in {time.perf_counter() - t0:.0f} s ({model.train_budget_}); test cells {test.n_obs}")
    sampler = cds.Sampler(seed=args.seed)
    rows, by_value = [], []

    # the default impute: count splitting of the test cells
    x = test.X.toarray().astype(np.int64)
    rng = np.random.default_rng(args.seed + 1)
    half_a = rng.binomial(x, 0.5)
    half_b = (x - half_a).astype(np.float64)
    # the default, then the conditional posterior mean itself (guidance 1, the default of 0.2.0) on the same halves
    for regime, chain in (("denoise: held-out half (count split)", sampler),
                          ("denoise: held-out half (count split), guidance 1", sampler.replace(guidance=1.0))):
        data = test.copy()
        data.X = sp.csr_matrix(half_a.astype(np.float32))
        imputed, samples = model.impute(data, n_samples=n_samples, store_samples=True, sampler=chain)
        std = np.asarray(data.layers["countsdiff_imputed_std"])
        score(regime, samples.transpose(0, 2, 1).reshape(-1, n_samples), half_b.ravel(), imputed.ravel(),
              std.ravel(), rows, by_value)
        if chain is sampler:
            lib_ratio = float(np.median(imputed.sum(axis=1) / np.maximum(half_a.sum(axis=1), 1)))

    mcar = lambda a: pp.mask_mcar(a, rate=0.5, seed=args.seed)  # noqa: E731
    regimes = {
        "RePaint: MCAR 50%": (mcar, sampler),
        "RePaint: MNAR-low 25%": (lambda a: pp.mask_mnar(a, rate=0.25, bias="low", seed=args.seed,
                                                         pool_extra=max(1, a.n_obs // 10)), sampler),
        # RePaint's default guidance is 0.5 (chosen by this row's earlier run); guidance 1, the default of the
        # verbs without a mask, next to it
        "RePaint: MCAR 50%, guidance 1": (mcar, sampler.replace(guidance=1.0)),
    }
    for regime, (make_mask, chain) in regimes.items():
        data = test.copy()
        make_mask(data)
        mask = data.layers["countsdiff_mask"] & data.layers["countsdiff_valid"]
        imputed, samples = model.impute(data, mask_layer="countsdiff_mask", n_samples=n_samples,
                                        store_samples=True, sampler=chain)
        std = data.layers["countsdiff_imputed_std"].toarray()[mask]
        score(regime, samples.transpose(0, 2, 1)[mask], data.X.toarray()[mask], imputed[mask], std, rows, by_value)
    total = time.perf_counter() - t_all
    table, detail = pd.DataFrame(rows).set_index("regime"), pd.DataFrame(by_value)
    title = "# Calibration of the imputation draws" + (" (quick mode)" if args.quick else "")
    md = [title, "", common.machine_header("calibration", args.quick, total), "",
          f"CountsDiff, default flow (trained with `train()`'s default budget: {model.train_budget_}), "
          f"`impute(n_samples={n_samples})` with its defaults; coverage of central intervals by the randomised PIT of "
          "the true value among the draws (see the script's docstring); width of the empirical quantile interval; "
          f"target coverage 75-85% (80%) and 91-98% (95%). Denoise: median library ratio of the imputed half to the "
          f"observed half {lib_ratio:.3f}.", "",
          common.frame_to_markdown(table.round(3)), "", "By true value:", "",
          common.frame_to_markdown(detail.round(3), index=False)]
    common.write_results(common.result_stem("calibration", args.quick), md,
                         {"machine": common.machine_info(), "args": vars(args), "rows": rows, "by_value": by_value,
                          "train_budget": model.train_budget_, "library_ratio": lib_ratio, "total_s": total})


if __name__ == "__main__":
    main()
