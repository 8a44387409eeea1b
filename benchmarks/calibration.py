"""Calibration of CountsDiff's per-entry uncertainty on held-out CBMC entries.

Protocol of ``benchmarks/imputation.py`` (suspected dropouts marked per cell type, scIDPMs Algorithm 1; cells split
80/10/10 stratified by cell type; the model trains on the train + validation cells), then on the test cells 50% MCAR
and 25% MNAR-low masks. ``impute`` draws ``--n-samples`` imputations per held-out entry. Coverage of the central
interval of nominal level ``c`` of the predictive distribution the draws define is measured with the randomised
probability integral transform (PIT) of the true value among the draws, ``u = (#{draws < y} + V (#{draws = y} + 1))
/ (n + 1)`` with ``V ~ U(0, 1)`` (ties are common for counts): for a calibrated sampler ``u`` is uniform whatever the
number of draws, and the coverage is the fraction of ``u`` in ``[(1-c)/2, (1+c)/2]``. (The plain interval between
empirical quantiles of ``n`` draws would be biased: with 20 draws the "95%" interval is the range of the draws,
whose expected coverage is 19/21 = 90.5%.) The width is that of the empirical quantile interval. The spread layer
(``layers["countsdiff_imputed_std"]``) is scored as a predictor of the absolute error of the point estimate
(Spearman correlation).

Usage::

    python -m benchmarks.calibration --quick     # smoke test (about 2 minutes)
    python -m benchmarks.calibration             # full run (6,000 training steps, 20 draws)

Writes ``benchmarks/results[/quick]/calibration.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from benchmarks import _common as common
from scipy.stats import spearmanr

LEVELS = (0.5, 0.8, 0.95)
BINS = [(0, 0), (1, 2), (3, 9), (10, np.inf)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--n-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import scvi

    import countsdiff_sc as cds
    from countsdiff_sc import pp

    common.quiet()
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    adata = common.cbmc(2500 if args.quick else None, args.seed)
    max_steps, n_samples, n_steps = args.max_steps, args.n_samples, args.n_steps
    if args.quick:
        max_steps, n_samples, n_steps = 400, 10, 10
    pp.mark_dropouts(adata, groupby="cell_type")
    pp.split_cells(adata, seed=args.seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train, test = adata[split != "test"].copy(), adata[split == "test"].copy()
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type", valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(train)
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, train_size=8 / 9, accelerator="cpu", enable_progress_bar=False)
    common.log(f"trained {max_steps} steps in {time.perf_counter() - t0:.0f} s; test cells {test.n_obs}")
    regimes = {
        "MCAR 50%": lambda a: pp.mask_mcar(a, rate=0.5, seed=args.seed),
        "MNAR-low 25%": lambda a: pp.mask_mnar(a, rate=0.25, bias="low", seed=args.seed,
                                               pool_extra=max(1, a.n_obs // 10)),
    }
    rows, by_value = [], []
    for regime, make_mask in regimes.items():
        data = test.copy()
        make_mask(data)
        mask = data.layers["countsdiff_mask"] & data.layers["countsdiff_valid"]
        imputed, samples = model.impute(data, mask_layer="countsdiff_mask", n_samples=n_samples, n_steps=n_steps,
                                        seed=args.seed, store_samples=True, progress=False,
                                        **common.EULER_SAMPLER)
        truth = data.X.toarray()[mask]
        draws = samples.transpose(0, 2, 1)[mask]  # (n_entries, n_draws)
        err = np.abs(imputed[mask] - truth)
        std = data.layers["countsdiff_imputed_std"].toarray()[mask]
        row = {"regime": regime, "entries": int(mask.sum()), "draws": n_samples,
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
    total = time.perf_counter() - t_all
    table, detail = pd.DataFrame(rows).set_index("regime"), pd.DataFrame(by_value)
    title = "# Calibration of the imputation draws" + (" (quick mode)" if args.quick else "")
    md = [title, "", common.machine_header("calibration", args.quick, total), "",
          f"CountsDiff (MLP, {max_steps} training steps), `impute(n_samples={n_samples}, n_steps={n_steps})`; "
          "coverage of central intervals by the randomised PIT of the true value among the draws (see the script's "
          "docstring); width of the empirical quantile interval; target coverage 75-85% (80%) and 91-98% (95%).",
          "",
          common.frame_to_markdown(table.round(3)), "", "By true value:", "",
          common.frame_to_markdown(detail.round(3), index=False)]
    common.write_results(common.result_stem("calibration", args.quick), md,
                         {"machine": common.machine_info(), "args": vars(args), "rows": rows, "by_value": by_value,
                          "total_s": total})


if __name__ == "__main__":
    main()
