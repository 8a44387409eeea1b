"""Quality against the number of reverse steps, time grids and step rules (CountsDiff paper Table 13), on CBMC.

A CountsDiffModel (default settings, ``backbone="mlp"``) is trained once on 90% of the CBMC cells. On the held-out
10% it then runs, for every ``n_steps`` x time grid x step rule (``countsdiff_sc.diffusion.time_grid`` grids
``uniform`` / ``p`` / ``logit`` / ``power``; step rules ``euler``, one network evaluation per step, and the
second-order ``trapezoid``, two per step):

* generation of as many cells as there are held-out cells, with the same labels (guidance 1, no attrition), scored
  against the held-out cells by the multivariate energy distance (``mvED_gen``, computed here: the package's
  ``energy_distance`` is the 1-D one of pooled values) and ``cds.metrics.mmd`` (``MMD_gen``), both in the space of the
  top 50 PCs of the log-normalised training cells, and by ``cds.metrics.classifier_auc`` (``RF_AUC``: random forest
  real vs generated; 0.5 = indistinguishable). The energy distance between the held-out cells and as many training
  cells is printed as the floor a perfect generator would reach;
* RePaint imputation of a 50% MCAR mask of the held-out cells with the default settings (one draw), scored by RMSE
  and the 1-D energy distance of the held-out values (``cds.metrics.rmse`` / ``energy_distance``);

and reports the network evaluations (``countsdiff_sc.diffusion.n_evaluations``; guidance doubles the network passes
of every evaluation alike) and the wall time of each. The reference is the uniform / Euler chain at the largest
``n_steps`` (rerun with a second seed to show the sampling noise); for each grid and rule the table lists the fewest
network evaluations whose score is within 5% of it. A plot of quality against network evaluations is written to
``benchmarks/results[/quick]/steps.png``. Defaults are not changed by this script.

Usage::

    python -m benchmarks.steps --quick     # 3000 cells, n_steps 5, 10, 20, all grids and rules: about 2-3 min
    python -m benchmarks.steps             # n_steps 5, 10, 20, 50, 100, 200, all grids and rules (48 settings)

The full run is expected to take about 30-40 minutes on 2 idle CPU cores (one thread): training 3000 steps (~3 min),
4,620 network evaluations per verb over the 49 chains of 860 held-out cells (the quick run measures ~0.06 s per
evaluation of 300 cells for sample plus impute, so ~15 min), and the metrics of each setting (the 300-tree random
forest dominates, ~10 s each). Twice that on a loaded machine.

Writes ``benchmarks/results[/quick]/steps.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pandas as pd

from benchmarks import _common as common

STEPS = (5, 10, 20, 50, 100, 200)
GRIDS = ("uniform", "p", "logit", "power")
RULES = ("euler", "trapezoid")
QUICK_STEPS = (5, 10, 20)
QUICK_GRIDS = GRIDS
METRICS = ("mvED_gen", "MMD_gen", "RF_AUC", "impute_rmse", "impute_ED")


def multivariate_energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Multivariate energy distance ``2 E|A - B| - E|A - A'| - E|B - B'|`` between two point clouds (Euclidean).

    Not ``countsdiff_sc.metrics.energy_distance``, which is the 1-D energy distance of pooled values.
    """
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return float(2 * torch.cdist(ta, tb).mean() - torch.cdist(ta, ta).mean() - torch.cdist(tb, tb).mean())


def fewest_evaluations(table: pd.DataFrame, reference: pd.Series) -> pd.DataFrame:
    """Per grid, rule and metric: the fewest network evaluations whose score is within 5% of the reference."""
    rows = []
    for (grid, rule), part in table.groupby(["grid", "step_rule"], sort=False):
        row = {"grid": grid, "step_rule": rule}
        for metric in METRICS:
            # RF AUC: within 5% of the reference's distance to 0.5 (chance); the others: within 5% of the score
            if metric == "RF_AUC":
                ok = part[(part[metric] - 0.5) <= 1.05 * (reference[metric] - 0.5) + 1e-9]
            else:
                ok = part[part[metric] <= 1.05 * reference[metric]]
            row[metric] = int(ok.evaluations.min()) if len(ok) else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, path) -> None:
    """Quality against network evaluations: one panel per metric, a line per grid (colour) and rule (style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    colours = dict(zip(GRIDS, ("C0", "C1", "C2", "C3"), strict=True))
    styles = {"euler": "-", "trapezoid": "--"}
    for ax, metric in zip(axes, METRICS, strict=True):
        for (grid, rule), part in table.groupby(["grid", "step_rule"], sort=False):
            part = part.sort_values("evaluations")
            ax.plot(part.evaluations, part[metric], styles[rule], marker="o", ms=3, color=colours[grid],
                    label=f"{grid} / {rule}")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_title(metric + (" (0.5 = chance)" if metric == "RF_AUC" else " (lower is better)"), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _timing(model, test, args, max_steps: int, steps, grids, t_all: float) -> None:
    """Process CPU time of ``sample`` and ``impute`` (one draw, 50% MCAR) of the held-out cells per setting."""
    import countsdiff_sc as cds
    from countsdiff_sc.diffusion import n_evaluations

    cds.pp.mask_mcar(test, rate=0.5, seed=args.seed)
    labels = test.obs["cell_type"].astype(str).tolist()
    model.sample(labels=labels[:20], n_steps=2, progress=False)  # warm-up outside the timings
    rows = []
    for n_steps, grid, rule in itertools.product(steps, grids, RULES):
        sampler = {"n_steps": n_steps, "time_grid": grid, "step_rule": rule, "seed": args.seed, "progress": False}
        c0 = time.process_time()
        model.sample(labels=labels, **sampler)
        gen_cpu = time.process_time() - c0
        c0 = time.process_time()
        model.impute(test, mask_layer="countsdiff_mask", n_samples=1, store_samples=False, key_added="imputed_steps",
                     resample_iters=1, **sampler)
        imp_cpu = time.process_time() - c0
        rows.append({"n_steps": n_steps, "grid": grid, "step_rule": rule,
                     "evaluations": n_evaluations(n_steps, model.module.schedule, grid=grid, step_rule=rule),
                     "sample_cpu_s": gen_cpu, "impute_cpu_s": imp_cpu})
        common.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    table = pd.DataFrame(rows)
    base = table[(table.n_steps == 50) & (table.grid == "uniform") & (table.step_rule == "euler")]
    if len(base):
        table["sample / Euler 50"] = table["sample_cpu_s"] / float(base["sample_cpu_s"].iloc[0])
        table["impute / Euler 50"] = table["impute_cpu_s"] / float(base["impute_cpu_s"].iloc[0])
    info = common.machine_info()
    lines = [
        "# Cost of the reverse samplers: CPU time per setting", "",
        common.machine_header("steps --timing", False, time.perf_counter() - t_all, info), "",
        f"- {test.n_obs} held-out CBMC cells; `sample` (their labels, guidance 1) and `impute` (one draw of a 50% MCAR "
        f"mask, guidance 0.5, no resampling); model trained {max_steps} steps (the cost does not depend on the "
        "weights); process CPU time at one torch thread, robust to other processes on the machine", "",
        common.frame_to_markdown(table, index=False), "",
    ]
    common.write_results(common.result_stem("steps_timing", False), lines,
                         {"settings": vars(args), **info, "table": table.to_dict(orient="records")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsample, short training, fewer settings: about 3 minutes")
    p.add_argument("--max-steps", type=int, default=3000, help="training steps (full mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing", action="store_true",
                   help="cost only: process CPU time of sample / impute per setting on a briefly trained model "
                   "(the cost does not depend on the weights); writes steps_timing.md")
    args = p.parse_args()

    import scvi

    import countsdiff_sc as cds
    from countsdiff_sc.diffusion import n_evaluations
    from countsdiff_sc.pp import log_normalize

    common.quiet()
    scvi.settings.verbosity = 40
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    adata = common.cbmc(3000 if args.quick else None, args.seed)
    max_steps, steps, grids, n_trees = args.max_steps, STEPS, GRIDS, 300
    if args.quick:
        max_steps, steps, grids, n_trees = 1000, QUICK_STEPS, QUICK_GRIDS, 100
    if args.timing:
        max_steps = 100
    train, test, rng = common.random_split(adata, args.seed)

    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type")
    model = cds.CountsDiffModel(train, preset="paper")
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    common.log(f"trained {max_steps} steps on {train.n_obs} cells in {train_s:.0f} s; {test.n_obs} held-out cells")
    schedule = model.module.schedule

    # PCA space of the log-normalised training cells
    ref = log_normalize(train.X)
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref[rng.choice(len(ref), min(len(ref), 4000), replace=False)] - mean,
                             full_matrices=False)
    basis = vt[:50].T

    def pcs(x) -> np.ndarray:
        return (log_normalize(x) - mean) @ basis

    if args.timing:
        _timing(model, test, args, max_steps, steps, grids, t_all)
        return
    real = pcs(test.X)
    floor = multivariate_energy_distance(real, pcs(train.X[rng.choice(train.n_obs, test.n_obs, replace=False)]))
    cds.pp.mask_mcar(test, rate=0.5, seed=args.seed)
    mask = test.layers["countsdiff_mask"]
    truth = test.X.toarray()
    labels = test.obs["cell_type"].astype(str).tolist()

    def run(n_steps: int, grid: str, rule: str, seed: int) -> dict:
        sampler = {"n_steps": n_steps, "time_grid": grid, "step_rule": rule, "seed": seed, "progress": False}
        t0 = time.perf_counter()
        gen = model.sample(labels=labels, **sampler)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        imputed, _ = model.impute(test, mask_layer="countsdiff_mask", n_samples=1, store_samples=False,
                                  key_added="imputed_steps", resample_iters=1, **sampler)
        imp_s = time.perf_counter() - t0
        gen_pcs = pcs(gen.X)
        return {
            "n_steps": n_steps, "grid": grid, "step_rule": rule, "seed": seed,
            "evaluations": n_evaluations(n_steps, schedule, grid=grid, step_rule=rule),
            "mvED_gen": multivariate_energy_distance(real, gen_pcs),
            "MMD_gen": cds.metrics.mmd(real, gen_pcs, seed=seed),
            "RF_AUC": cds.metrics.classifier_auc(truth, gen.X.toarray(), n_estimators=n_trees, seed=seed, n_jobs=1),
            "impute_rmse": cds.metrics.rmse(truth, imputed, mask),
            "impute_ED": cds.metrics.energy_distance(truth, imputed, mask),
            "sample_s": gen_s, "impute_s": imp_s,
        }

    rows = []
    for n_steps, grid, rule in itertools.product(steps, grids, RULES):
        rows.append(run(n_steps, grid, rule, args.seed))
        common.log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    noise_row = run(max(steps), "uniform", "euler", args.seed + 1)
    table = pd.DataFrame(rows)
    reference = table[(table.n_steps == max(steps)) & (table.grid == "uniform") & (table.step_rule == "euler")].iloc[0]
    fewest = fewest_evaluations(table, reference)
    png = common.result_stem("steps", args.quick).with_suffix(".png")
    plot(table, png)
    elapsed = time.perf_counter() - t_all
    info = common.machine_info()
    shown = table.drop(columns=["seed"])
    lines = [
        f"# Quality against reverse steps, time grids and step rules ({'quick' if args.quick else 'full'} mode)", "",
        common.machine_header("steps", args.quick, elapsed, info), "",
        f"- CBMC {adata.n_obs} cells x {adata.n_vars} genes; model trained once for {max_steps} steps "
        f"({train_s:.0f} s) on {train.n_obs} cells; {test.n_obs} held-out cells; seed {args.seed}",
        "- evaluations: network evaluations per chain (`euler` 1 per step, `trapezoid` 2 per step); "
        "sample_s / impute_s: wall time of `sample` / `impute` on the held-out cells",
        "- mvED_gen / MMD_gen: multivariate energy distance and `cds.metrics.mmd` of generated vs held-out cells on 50 "
        f"PCs of log-normalised training cells (guidance 1, no attrition); mvED floor (held-out vs training cells): "
        f"{floor:.4g}; RF_AUC: `cds.metrics.classifier_auc` ({n_trees} trees; 0.5 = indistinguishable)",
        "- impute_rmse / impute_ED: 50% MCAR mask of the held-out cells, one RePaint draw with the default settings "
        "(guidance 0.5, attrition 0.02), on the masked entries; impute_ED is `cds.metrics.energy_distance` (1-D, "
        "pooled values); lower is better everywhere",
        "", common.frame_to_markdown(shown, index=False), "",
        f"## Fewest network evaluations within 5% of uniform / euler at {max(steps)} steps", "",
        "(RF_AUC: within 5% of the reference's distance to 0.5; `-`: not reached)", "",
        common.frame_to_markdown(fewest, index=False), "",
        f"Sampling noise at the reference ({max(steps)} steps, uniform / euler, seeds {args.seed} and "
        f"{args.seed + 1}): " + ", ".join(f"{m} {reference[m]:.4g} vs {noise_row[m]:.4g}" for m in METRICS), "",
        f"![quality against network evaluations]({png.name})", "",
    ]
    common.write_results(common.result_stem("steps", args.quick), lines,
                         {"settings": vars(args), **info, "floor_mvED_gen": floor,
                          "fewest_evaluations_within_5pct": fewest.to_dict(orient="records"),
                          "noise_row": noise_row, "table": table.to_dict(orient="records")},
                         also=[png.name])


if __name__ == "__main__":
    main()
