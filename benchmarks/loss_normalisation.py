"""Per-cell loss normalisation (issue 22, item 3): ``loss_normalisation="cell"`` vs ``"constant"``.

``"cell"`` (the default) averages each cell's loss over its trusted entries (weight ``1 / n_valid`` per entry);
``"constant"`` divides each cell's sum by one constant (the mean number of trusted entries per cell), so every entry
weighs the same, as in Eq. 6 of the CountsDiff paper (a sum over entries). The two differ only when the number of
trusted entries varies between cells, e.g. with a validity layer from ``pp.mark_dropouts``, which trusts more entries
in deep cells.

Data: ``countsdiff_sc.datasets.simulate_counts`` (Splatter's gamma-Poisson model; 3 groups, 200 genes, depth
~1500 UMIs over those genes, logistic dropout with midpoint 1) with a log-normal library-size s.d. of 0.3, 0.6 and
0.9. The validity layer is ``pp.mark_dropouts(groupby="group")``, either as scIDPMs Algorithm 1 (``alg1``:
every zero of a gene seen in the group is a suspected dropout, so deep cells, with more non-zeros, have more trusted
entries) or with ``min_expected=3`` (``min3``: a zero is suspected only where the group predicts >= 3 counts at the
cell's depth, so deep cells have *fewer* trusted entries); 10% of the trusted entries are
held out completely at random (``pp.mask_mcar``) and registered as the mask, so they never train. The models are
unconditional (no labels): at ``t = 1`` (``x_t = 0``) the learned rate is then the model's estimate of each
gene's mean count.

Measurements per setting and option:

- rate at t = 1: ``sum_g y_hat_g(x_t = 0, t = 1)`` over ``sum_g`` of the true mean count of each gene (the mean of
  the counts before dropout, ``layers["truth"]``, over all cells), and the same ratio for the *exact minimiser* of
  each loss on the training data at ``t = 1`` (a perfect network: the trusted-entry mean of each gene weighted by
  ``1 / n_valid`` of its cell for ``"cell"``, unweighted for ``"constant"``), which carries no training noise;
- generation: mean library size of ``sample()`` (as many cells as the data) over the real mean library size (before
  dropout, and observed);
- imputation (MCAR mask, ``impute(mask_layer=...)``, default settings): relative bias
  ``sum(imputed - held-out value) / sum(held-out value)`` and RMSE on the held-out entries.

Usage::

    python -m benchmarks.loss_normalisation --quick   # ~3 min on 1 CPU thread: 1500 cells, 400 steps, 1 seed
    python -m benchmarks.loss_normalisation           # 3000 cells, 1500 steps, 2 seeds

Writes ``benchmarks/results[/quick]/loss_normalisation.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import _common as common

OPTIONS = ("cell", "constant")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings (~3 min)")
    p.add_argument("--sds", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="library-size s.d. (log scale)")
    p.add_argument("--n-cells", type=int, default=None)
    p.add_argument("--n-genes", type=int, default=200)
    p.add_argument("--validity", nargs="+", default=["alg1", "min3"], choices=["alg1", "min3"])
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="output stem (default benchmarks/results[/quick]/loss_normalisation)")
    args = p.parse_args()
    args.n_cells = args.n_cells or (1500 if args.quick else 3000)
    args.max_steps = args.max_steps or (400 if args.quick else 1500)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1])
    return args


def make_data(sd: float, n_cells: int, n_genes: int, seed: int, validity: str = "alg1"):
    """Simulated counts with a validity layer (``mark_dropouts``) and an MCAR mask of 10% of the trusted entries."""
    import countsdiff_sc as cds

    adata = cds.datasets.simulate_counts(n_cells, n_genes, 3, lib_loc=np.log(1500), lib_scale=sd, dropout_mid=1.0,
                                         seed=seed)
    cds.pp.mark_dropouts(adata, groupby="group", min_expected=3.0 if validity == "min3" else None)
    cds.pp.mask_mcar(adata, rate=0.1, seed=seed)
    return adata


def exact_minimisers(x: np.ndarray, trusted: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene minimiser of each loss at ``t = 1`` (``x_t = 0``, target ``y = x``) for a rate shared by all cells.

    Per gene, ``sum_i w_i v_ig (y_hat - x_ig log y_hat)`` is minimal at ``y_hat = sum_i w_i v_ig x_ig / sum_i w_i v_ig``
    with ``w_i = 1 / n_valid_i`` ("cell") or ``w_i = 1`` ("constant").
    """
    v = trusted.astype(np.float64)
    w_cell = 1.0 / np.maximum(v.sum(axis=1, keepdims=True), 1.0)
    out = {}
    for name, w in (("cell", w_cell), ("constant", np.ones_like(w_cell))):
        out[name] = (w * v * x).sum(axis=0) / np.maximum((w * v).sum(axis=0), 1e-12)
    return out


def run_one(validity: str, sd: float, seed: int, args: argparse.Namespace) -> list[dict]:
    import torch

    import countsdiff_sc as cds

    adata = make_data(sd, args.n_cells, args.n_genes, seed, validity)
    x = np.asarray(adata.X, dtype=np.float64)
    truth = np.asarray(adata.layers["truth"], dtype=np.float64)
    valid = np.asarray(adata.layers["countsdiff_valid"], bool)
    mask = np.asarray(adata.layers["countsdiff_mask"], bool)
    trusted = valid & ~mask
    n_valid = trusted.sum(axis=1)
    true_mean = truth.mean(axis=0)
    exact = exact_minimisers(x, trusted)
    lib_truth, lib_obs = truth.sum(axis=1).mean(), x.sum(axis=1).mean()
    corr = float(np.corrcoef(n_valid, x.sum(axis=1))[0, 1])
    rows = []
    for option in OPTIONS:
        t0 = time.perf_counter()
        cds.CountsDiffModel.setup_anndata(adata, valid_layer="countsdiff_valid", mask_layer="countsdiff_mask")
        torch.manual_seed(seed)
        model = cds.CountsDiffModel(adata, preset="paper", loss_normalisation=option)
        model.train(max_steps=args.max_steps, batch_size=128, enable_progress_bar=False)
        t_train = time.perf_counter() - t0
        with torch.inference_mode():
            rate1 = model.module.rate(torch.zeros(1, args.n_genes), torch.ones(1)).numpy()[0]
        gen = model.sample(n_samples=args.n_cells, seed=seed, progress=False)
        lib_gen = float(np.asarray(gen.X.sum(axis=1)).mean())
        model.impute(adata, mask_layer="countsdiff_mask", n_samples=3, seed=seed, progress=False)
        imp = np.asarray(adata.layers["countsdiff_imputed"], dtype=np.float64)
        held = x[mask]
        rows.append({
            "validity": validity, "sd": sd, "seed": seed, "option": option,
            "n_valid mean": float(n_valid.mean()), "n_valid cv": float(n_valid.std() / n_valid.mean()),
            "corr(n_valid, library)": corr,
            "exact rate(t=1) / true mean": float(exact[option].sum() / true_mean.sum()),
            "learned rate(t=1) / true mean": float(rate1.sum() / true_mean.sum()),
            "learned rate(t=1) / exact": float(rate1.sum() / exact[option].sum()),
            "gen library / real (truth)": lib_gen / lib_truth,
            "gen library / real (observed)": lib_gen / lib_obs,
            "imputation rel. bias": float((imp[mask] - held).sum() / held.sum()),
            "imputation RMSE": float(np.sqrt(np.mean((imp[mask] - held) ** 2))),
            "imputation rel. bias vs truth": float((imp[mask] - truth[mask]).sum() / truth[mask].sum()),
            "time (s)": time.perf_counter() - t0, "train (s)": t_train,
        })
        common.log(f"{validity} sd={sd} seed={seed} {option}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in rows[-1].items() if isinstance(v, float) and k not in ("sd",)))
    return rows


def main() -> None:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    common.quiet()
    t_all = time.perf_counter()
    rows = [r for v in args.validity for sd in args.sds for seed in args.seeds for r in run_one(v, sd, seed, args)]
    total = time.perf_counter() - t_all
    df = pd.DataFrame(rows)
    cols = ["exact rate(t=1) / true mean", "learned rate(t=1) / true mean", "learned rate(t=1) / exact",
            "gen library / real (truth)", "gen library / real (observed)", "imputation rel. bias",
            "imputation RMSE", "imputation rel. bias vs truth", "train (s)"]
    shape = ["n_valid mean", "n_valid cv", "corr(n_valid, library)"]
    table = df.groupby(["validity", "sd", "option"])[[*shape, *cols]].mean()
    info = common.machine_info()
    lines = [
        f"# Per-cell loss normalisation ({'quick' if args.quick else 'full'} mode; issue 22, item 3)", "",
        common.machine_header("loss_normalisation", args.quick, total, info), "",
        "Arguments: " + ", ".join(f"{k}={v}" for k, v in vars(args).items() if k != "out") + ".", "",
        f"`simulate_counts` ({args.n_cells} cells, {args.n_genes} genes, 3 groups, depth ~1500, dropout midpoint 1), "
        "validity layer `mark_dropouts(groupby='group')` as Algorithm 1 (`alg1`) or with `min_expected=3` (`min3`), "
        "10% MCAR mask of the trusted entries "
        f"(registered, never trained on); unconditional CountsDiffModel (defaults), {args.max_steps} steps, batch "
        f"128; seeds {args.seeds} (means shown). `sample()` draws as many cells as the data (50 steps); `impute` "
        "uses its defaults with 3 draws.", "",
        "Columns: `exact` = the loss's exact minimiser at t = 1 on the training data (a perfect network); `true mean` "
        "= mean count before dropout; `gen library / real` = mean library size of generated cells over the real one "
        "(before dropout: truth; after: observed); imputation bias / RMSE on the held-out entries against their "
        "observed values (and against the counts before dropout).", "",
        common.frame_to_markdown(table, float_format="{:.4g}"), "",
    ]
    payload = {"settings": vars(args), **info, "total_s": total, "rows": rows}
    stem = Path(args.out) if args.out else common.result_stem("loss_normalisation", args.quick)
    common.write_results(stem, lines, payload)


if __name__ == "__main__":
    main()
