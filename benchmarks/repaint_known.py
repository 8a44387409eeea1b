"""RePaint's observed entries (one path vs a fresh draw per step) and jump-back resampling, on CBMC and on a toy.

Issue 22, items 1 and 2. ``CountsDiffModel.impute(known=)`` carries the observed entries along one forward path read
backwards (``"path"``, the default) or redraws them from ``Binomial(x_obs, p(s))`` at every step (``"redraw"``, the
paper's and Lugmayr et al.'s rule); ``resample_jump`` / ``resample_iters`` re-noise each window of steps and run it
again. This script measures both:

* **Toy with an exact denoiser** (``tests/diffusion/counts/_toy_repaint.py``): three correlated genes from a known
  mixture on ``{0..10}^3``, gene 0 observed, genes 1-2 imputed, the network replaced by the Bayes-optimal
  unconditional rate. The law of RePaint's output is computed exactly (no sampling) and compared with the true
  conditional law by the expected total variation ``E_o TV(law(u | o), pi(u | o))``, for both ``known=`` modes,
  attrition 0 / 0.02 / 0.2 (ReMDM-rescale), resampling ``jump 1`` x ``iters 1 / 2 / 3`` and 5-50 steps.
* **CBMC**: a CountsDiffModel (default settings) is trained once on 90% of the cells (protocol of
  ``benchmarks/steps.py``); the held-out 10% get a 50% MCAR mask, and every setting imputes it with ``--n-samples``
  draws (default guidance 0.5, attrition 0.02). Scores on the held-out entries: RMSE of the mean of the draws, the
  1-D energy distance, MMD and SWD of ``cds.metrics.evaluate_imputation`` (point estimate), and the coverage of the
  central 80% / 95% predictive intervals of the draws (randomised PIT, as in ``benchmarks/calibration.py``). Cost:
  network evaluations per chain (``n_steps x resample_iters``; guidance doubles the passes of each alike) and wall
  time. Rows at 2x / 3x the steps without resampling compare resampling with spending the same evaluations on a
  finer grid.

With ``--budget`` (issues 22 item 2 and 24) the CBMC part instead spends the network evaluations of the default
(Euler, 50 steps) in other ways: the trapezoid step rule of ``benchmarks/steps.py`` at 5 / 10 / 25 steps, each with
and without resampling, to choose the defaults of ``impute`` (the toy part is skipped; results in
``repaint_budget``).

Usage::

    python -m benchmarks.repaint_known --budget  # sampler budget on CBMC (~15 min)
    python -m benchmarks.repaint_known --quick   # 3000 cells, 1000 training steps, n_steps 20: about 3-4 min
    python -m benchmarks.repaint_known           # all cells, 3000 training steps, n_steps 50 (~20-30 min)

Defaults are not changed by this script. Writes ``benchmarks/results[/quick]/repaint_known.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import _common as common

ROOT = Path(__file__).resolve().parents[1]
TOY_STEPS = (5, 10, 20, 50)


def toy_table() -> pd.DataFrame:
    """Exact TVs on the three-gene toy (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from tests.diffusion.counts._toy_repaint import tv_table

    return pd.DataFrame(tv_table(TOY_STEPS))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsample, short training, 20 steps: about 3-4 minutes")
    p.add_argument("--max-steps", type=int, default=3000, help="training steps (full mode)")
    p.add_argument("--n-samples", type=int, default=10, help="imputation draws per held-out entry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", action="store_true", help="step rules x resampling at equal cost (no toy part)")
    args = p.parse_args()

    import scvi

    import countsdiff_sc as cds

    common.quiet()
    scvi.settings.verbosity = 40
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    toy = None if args.budget else toy_table()
    toy_s = time.perf_counter() - t0
    if toy is not None:
        common.log(f"toy: {len(toy)} exact laws in {toy_s:.0f} s")

    adata = common.cbmc(3000 if args.quick else None, args.seed)
    max_steps, n_steps = args.max_steps, 50
    if args.quick:
        max_steps, n_steps = 1000, 20
    train, test, _ = common.random_split(adata, args.seed)
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type")
    model = cds.CountsDiffModel(train, preset="paper")
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    common.log(f"trained {max_steps} steps on {train.n_obs} cells in {train_s:.0f} s; {test.n_obs} held-out cells")
    cds.pp.mask_mcar(test, rate=0.5, seed=args.seed)
    mask = test.layers["countsdiff_mask"]
    mask = mask.toarray() if hasattr(mask, "toarray") else np.asarray(mask)
    truth = test.X.toarray()

    # (label, known, attrition, n_steps, resample_iters, step_rule)
    if args.budget:
        settings = [(f"euler {n_steps} (default)", "path", 0.02, n_steps, 1, "euler"),
                    (f"euler {n_steps}, resample x2", "path", 0.02, n_steps, 2, "euler")]
        for k in (5, 10, 25):
            settings += [(f"trapezoid {k}" + (f", resample x{i}" if i > 1 else ""), "path", 0.02, k, i, "trapezoid")
                         for i in ((1, 2, 3) if k < 25 else (1, 2))]
    else:
        settings = [("path", "path", 0.02, n_steps, 1, "euler"), ("redraw", "redraw", 0.02, n_steps, 1, "euler")]
        for iters in (2, 3):
            settings += [(f"path, resample x{iters}", "path", 0.02, n_steps, iters, "euler"),
                         (f"redraw, resample x{iters}", "redraw", 0.02, n_steps, iters, "euler")]
        settings += [(f"path, {m}x steps", "path", 0.02, m * n_steps, 1, "euler") for m in (2, 3)]
        settings += [("path, no attrition", "path", 0.0, n_steps, 1, "euler"),
                     ("redraw, no attrition", "redraw", 0.0, n_steps, 1, "euler")]

    # warm-up (kernel loading, first-call allocations) outside the timings
    model.impute(test[:20].copy(), mask_layer="countsdiff_mask", n_samples=2, n_steps=2, known="redraw",
                 store_samples=False, progress=False)
    rows = []
    for i, (label, known, eta, steps, iters, rule) in enumerate(settings):
        key = f"imp{i}"
        t0, c0 = time.perf_counter(), time.process_time()
        _, samples = model.impute(test, mask_layer="countsdiff_mask", n_samples=args.n_samples, n_steps=steps,
                                  attrition=eta, attrition_kind="rescale" if eta else "none", known=known,
                                  resample_jump=1 if iters > 1 else None, resample_iters=iters, step_rule=rule,
                                  seed=args.seed, key_added=key, samples_key=f"{key}_samples", store_samples=True,
                                  progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        df = cds.metrics.evaluate_imputation(test, imputed_layer=key, n_bootstrap=0, seed=args.seed,
                                             metrics=["rmse", "energy_distance", "mmd", "swd"], key_added=key)
        value = df.set_index("metric")["value"]
        draws = np.transpose(samples, (0, 2, 1))[mask].astype(np.float64)  # (entries, draws)
        row = {"setting": label, "known": known, "attrition": eta, "n_steps": steps, "resample_iters": iters,
               "step_rule": rule, "evaluations": steps * iters * (2 if rule == "trapezoid" else 1),
               **{m: float(value[m]) for m in ("rmse", "energy_distance", "mmd", "swd")},
               "cov80": common.coverage(draws, truth[mask], 0.8, args.seed)[0],
               "cov95": common.coverage(draws, truth[mask], 0.95, args.seed)[0], "impute_s": wall, "impute_cpu_s": cpu}
        rows.append(row)
        del test.obsm[f"{key}_samples"]
        common.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    table = pd.DataFrame(rows)
    elapsed = time.perf_counter() - t_all
    info = common.machine_info()

    cbmc_lines = [
        f"- CBMC {adata.n_obs} cells x {adata.n_vars} genes; model trained once for {max_steps} steps "
        f"({train_s:.0f} s) on {train.n_obs} cells; {test.n_obs} held-out cells with a 50% MCAR mask; seed "
        f"{args.seed}; {args.n_samples} draws per entry; guidance 0.5; attrition: ReMDM-rescale strength",
        "- rmse / energy_distance / mmd / swd: `cds.metrics.evaluate_imputation` of the mean of the draws on the "
        "held-out entries (lower is better); cov80 / cov95: coverage of the central 80% / 95% predictive interval of "
        "the draws (randomised PIT; target 0.80 / 0.95)",
        "- evaluations: network evaluations per chain (n_steps x resample_iters x 2 for the trapezoid rule, jump 1); "
        "impute_s / impute_cpu_s: wall time / process CPU time of `impute` (all draws; one thread, so CPU time is "
        "robust to shared cores)", "",
        common.frame_to_markdown(table.drop(columns=["known"]), index=False), "",
    ]
    if args.budget:
        lines = [
            f"# RePaint: spending the network evaluations ({'quick' if args.quick else 'full'} mode)", "",
            common.machine_header("repaint_known --budget", args.quick, elapsed, info), "",
            "Step rule (`benchmarks/steps.py`) x resampling at comparable cost; observed entries along one path.", "",
            *cbmc_lines,
        ]
        common.write_results(common.result_stem("repaint_budget", args.quick), lines,
                             {"settings": vars(args), **info, "train_s": train_s,
                              "table": table.to_dict(orient="records")})
        return
    toy_wide = toy.pivot_table(index=["attrition", "resample_iters"], columns=["n_steps", "known"], values="tv")
    toy_wide.columns = [f"{k} steps, {m}" for k, m in toy_wide.columns]
    toy_wide = toy_wide.reset_index()
    base = toy[(toy.resample_iters == 1)]
    path_v = base[base.known == "path"].set_index(["attrition", "n_steps"]).tv
    redraw_v = base[base.known == "redraw"].set_index(["attrition", "n_steps"]).tv
    n_better = int((redraw_v < path_v).sum())
    lines = [
        f"# RePaint: observed entries (path vs redraw) and resampling ({'quick' if args.quick else 'full'} mode)", "",
        common.machine_header("repaint_known", args.quick, elapsed, info), "",
        "## Toy with an exact denoiser (exact laws, no sampling)", "",
        "Three correlated genes from a known mixture on {0..10}^3 (`tests/diffusion/counts/_toy_repaint.py`), gene 0 "
        "observed, genes 1-2 imputed, the network replaced by the Bayes-optimal unconditional rate; cosine schedule, "
        "Euler steps, uniform grid, resampling with jump 1. Entries: expected total variation "
        "`E_o TV(law(u | o), pi(u | o))` between RePaint's output and the true conditional law (lower is better); "
        f"attrition: ReMDM-rescale strength. Computed in {toy_s:.0f} s.", "",
        common.frame_to_markdown(toy_wide, index=False), "",
        f"Without resampling, redraw is below path in {n_better} of {len(path_v)} (attrition, n_steps) settings; "
        f"largest relative gap {float(((path_v - redraw_v) / path_v).abs().max()):.1%}.", "",
        "## CBMC", "",
        *cbmc_lines,
    ]
    common.write_results(common.result_stem("repaint_known", args.quick), lines,
                         {"settings": vars(args), **info, "train_s": train_s, "table": table.to_dict(orient="records"),
                          "toy": toy.to_dict(orient="records")})


if __name__ == "__main__":
    main()
