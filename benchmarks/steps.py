"""Quality against the number of reverse steps (CountsDiff paper Table 13) on CBMC, with one trained model.

A CountsDiffModel (default settings, ``backbone="mlp"``) is trained once on 90% of the CBMC cells. On the held-out
10% it then

* generates as many cells as there are held-out cells, with the same labels (guidance 1, no attrition), and scores
  them by the multivariate energy distance to the held-out cells in the space of the top 50 PCs of the
  log-normalised training cells (``mvED_gen``, computed here: the package's ``energy_distance`` is the 1-D one of
  pooled values; the same distance between the held-out cells and as many training cells is printed as the floor a
  perfect generator would reach);
* imputes a 50% MCAR mask of the held-out cells with the default RePaint settings (one draw) and scores RMSE and
  the 1-D energy distance of the held-out values (``cds.metrics.energy_distance``);

for ``n_steps`` in 5, 10, 20, 50, 100 (plus a second seed at 50 steps, to show the sampling noise). It reports the
smallest ``n_steps`` whose score is within 5% of the 50-step score. Defaults are not changed by this script.

Usage::

    python benchmarks/steps.py --quick     # about 2-3 minutes
    python benchmarks/steps.py             # full run (about 10 minutes on 2 CPU cores)

Writes ``benchmarks/results/steps[_quick].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

try:
    import _common as common
except ImportError:  # imported as benchmarks.steps from the repository root
    from benchmarks import _common as common

STEPS = (5, 10, 20, 50, 100)


def multivariate_energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Multivariate energy distance ``2 E|A - B| - E|A - A'| - E|B - B'|`` between two point clouds (Euclidean).

    Not ``countsdiff_sc.metrics.energy_distance``, which is the 1-D energy distance of pooled values.
    """
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return float(2 * torch.cdist(ta, tb).mean() - torch.cdist(ta, ta).mean() - torch.cdist(tb, tb).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsample and short training, about 2 minutes")
    p.add_argument("--max-steps", type=int, default=3000, help="training steps (full mode)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import scvi

    import countsdiff_sc as cds
    from countsdiff_sc._utils import log_normalize

    common.quiet()
    scvi.settings.verbosity = 40
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    adata = cds.datasets.cbmc()
    max_steps, steps = args.max_steps, STEPS
    if args.quick:
        rng = np.random.default_rng(args.seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, 3000, replace=False))].copy()
        max_steps, steps = 1000, (5, 10, 20, 50)
    rng = np.random.default_rng(args.seed)
    test_idx = np.sort(rng.choice(adata.n_obs, adata.n_obs // 10, replace=False))
    is_test = np.zeros(adata.n_obs, bool)
    is_test[test_idx] = True
    train, test = adata[~is_test].copy(), adata[is_test].copy()

    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type")
    model = cds.CountsDiffModel(train)
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False)
    train_s = time.perf_counter() - t0
    common.log(f"trained {max_steps} steps on {train.n_obs} cells in {train_s:.0f} s; {test.n_obs} held-out cells")

    # PCA space of the log-normalised training cells
    ref = log_normalize(train.X)
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref[rng.choice(len(ref), min(len(ref), 4000), replace=False)] - mean,
                             full_matrices=False)
    basis = vt[:50].T

    def pcs(x) -> np.ndarray:
        return (log_normalize(x) - mean) @ basis

    real = pcs(test.X)
    floor = multivariate_energy_distance(real, pcs(train.X[rng.choice(train.n_obs, test.n_obs, replace=False)]))
    cds.pp.mask_mcar(test, rate=0.5, seed=args.seed)
    mask = test.layers["countsdiff_mask"]
    truth = test.X.toarray()
    labels = test.obs["cell_type"].astype(str).tolist()

    rows = []
    runs = [(n, args.seed) for n in steps] + [(50, args.seed + 1)]
    for n_steps, seed in runs:
        t0 = time.perf_counter()
        gen = model.sample(labels=labels, n_steps=n_steps, seed=seed, progress=False)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        imputed, _ = model.impute(test, mask_layer="countsdiff_mask",
                                  n_samples=1, n_steps=n_steps, seed=seed, store_samples=False,
                                  key_added=f"imputed_{n_steps}_{seed}", progress=False)
        imp_s = time.perf_counter() - t0
        row = {"n_steps": n_steps, "seed": seed, "mvED_gen": multivariate_energy_distance(real, pcs(gen.X)),
               "impute_rmse": cds.metrics.rmse(truth, imputed, mask),
               "impute_ED": cds.metrics.energy_distance(truth, imputed, mask),
               "sample_s": gen_s, "impute_s": imp_s}
        rows.append(row)
        common.log("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    table = pd.DataFrame(rows)
    base = table[(table.n_steps == 50) & (table.seed == args.seed)].iloc[0]
    main_runs = table[table.seed == args.seed].sort_values("n_steps")
    smallest = {}
    for metric in ("mvED_gen", "impute_rmse", "impute_ED"):
        ok = main_runs[main_runs[metric] <= 1.05 * base[metric]]
        smallest[metric] = {"smallest n_steps within 5% of 50": int(ok.n_steps.min()),
                            "best n_steps": int(main_runs.n_steps[main_runs[metric].idxmin()]),
                            "score at 50": float(base[metric])}
    noise = table[table.n_steps == 50].set_index("seed")
    elapsed = time.perf_counter() - t_all
    info = common.machine_info()
    lines = [
        f"# Quality against the number of reverse steps ({'quick' if args.quick else 'full'} mode)", "",
        common.machine_header("steps", args.quick, elapsed, info), "",
        f"- CBMC {adata.n_obs} cells x {adata.n_vars} genes; model trained once for {max_steps} steps "
        f"({train_s:.0f} s) on {train.n_obs} cells; {test.n_obs} held-out cells",
        "- mvED_gen: multivariate energy distance of generated vs held-out cells on 50 PCs of log-normalised "
        f"training cells (guidance 1, no attrition); floor (held-out vs training cells): {floor:.4g}",
        "- impute_rmse / impute_ED: 50% MCAR mask of the held-out cells, one RePaint draw with the default settings "
        "(guidance 0.5, attrition 0.02), on the masked entries; impute_ED is `cds.metrics.energy_distance` (1-D, "
        "pooled values); lower is better everywhere",
        "", common.frame_to_markdown(table, index=False), "",
        "## Smallest n_steps within 5% of the 50-step score", "",
        common.frame_to_markdown(pd.DataFrame(smallest).T.rename_axis("metric"), index=True), "",
        "Sampling noise at 50 steps (two seeds): "
        + ", ".join(f"{m} {noise[m].iloc[0]:.4g} vs {noise[m].iloc[1]:.4g}"
                    for m in ("mvED_gen", "impute_rmse", "impute_ED")), "",
    ]
    common.write_results(common.result_stem("steps", args.quick), lines,
                         {"settings": vars(args), **info, "floor_mvED_gen": floor, "smallest_within_5pct": smallest,
                          "table": table.to_dict(orient="records")})


if __name__ == "__main__":
    main()
