"""The default training budget: scaled to the number of cells with early stopping, against the former 6,000 steps.

Three data sets: pbmc68k (700 cells x 765 genes, bundled), CBMC (8,617 x 500, bundled) and a simulated atlas of
100,000 cells x 500 genes (``datasets.simulate_counts``, Splatter's model, 8 groups, CBMC-like libraries, no
dropout). A seeded tenth of the cells is held out. On the rest, two CountsDiff models with the default preset:

* **default budget**: ``train()`` (``min(400, round(20000 / n_cells * 400))`` epochs, scvi-tools' rule, early stopping
  when the validation loss of 10% of the training cells has not improved for ``max(20 epochs, 500 steps)``);
* **6,000 steps**: ``train(max_steps=6000)``, the default of 0.1 whatever the data size (no early stopping).

Quality on the held-out cells: the loss of Eq. 6 at fixed random times and thinnings (the same draws for both
models), and the denoising of the held-out cells thinned to 25% of their counts (``impute``'s default, scored by the
per-cell Pearson correlation of log-normalised profiles with the untouched cells, as ``downstream.py``). Time: wall
and process CPU seconds of ``train`` at one thread.

Usage::

    python -m benchmarks.training_budget            # full run
    python -m benchmarks.training_budget --quick    # smoke test
    python -m benchmarks.training_budget --datasets simulated --merge   # one data set, the others kept from the page

With ``--merge`` the rows of the data sets not run are taken from the committed JSON, and the page says which rows
come from which run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks import _common as common


def datasets(quick: bool) -> dict[str, Any]:
    import countsdiff_sc as cds

    atlas_cells = 5000 if quick else 100_000
    sim = cds.datasets.simulate_counts(n_cells=atlas_cells, n_genes=500, n_groups=8, lib_loc=float(np.log(1500)),
                                       lib_scale=0.5, de_fac_loc=0.3, dropout_mid=None, seed=0)
    sim.obs = sim.obs[["group"]]
    sim.X = sim.layers["truth"]
    for key in list(sim.layers):
        del sim.layers[key]
    data = {"pbmc68k": (cds.datasets.pbmc68k_reduced_counts(), "bulk_labels"),
            "CBMC": (common.cbmc(2000 if quick else None), "cell_type"),
            f"simulated {atlas_cells:,}": (sim, "group")}
    return data


@torch.inference_mode()
def heldout_loss(model: Any, test: Any, label: str, seed: int) -> float:
    """Eq. 6 on the held-out cells at fixed random times (the module's loss, EMA weights, no condition dropout)."""
    import countsdiff_sc as cds

    data = test.copy()
    cds.CountsDiffModel.setup_anndata(data, labels_key=label)
    manager = model.get_anndata_manager(model._validate_anndata(data), required=True)
    loader = model._make_data_loader(adata=data, batch_size=512, shuffle=False)
    del manager
    model.module.eval()
    losses, sizes = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in loader:
            _, _, out = model.module(batch, generative_kwargs={"use_ema": True})
            losses.append(float(out.loss) * out.n_obs_minibatch)
            sizes.append(out.n_obs_minibatch)
    return float(np.sum(losses) / np.sum(sizes))


def denoising(model: Any, test: Any, label: str, seed: int) -> float:
    """Per-cell Pearson correlation with the untouched cells after ``impute`` of the cells thinned to 25%."""
    import scipy.sparse as sp

    import countsdiff_sc as cds
    from countsdiff_sc.pp import log_normalize

    x = test.X.toarray() if sp.issparse(test.X) else np.asarray(test.X)
    thin = np.random.default_rng(seed).binomial(x.astype(np.int64), 0.25).astype(np.float32)
    data = test.copy()
    data.X = sp.csr_matrix(thin)
    imputed, _ = model.impute(data, n_samples=1, store_samples=False, sampler=cds.Sampler(seed=seed))
    a, b = log_normalize(np.asarray(imputed, np.float64)), log_normalize(x.astype(np.float64))
    return float(np.mean(common.per_cell_pearson(a, b)))


def run(name: str, adata: Any, label: str, quick: bool, seed: int) -> list[dict[str, Any]]:
    import scvi

    import countsdiff_sc as cds

    train, test, _ = common.random_split(adata, seed)
    rows = []
    for arm in ("default budget", "6,000 steps"):
        data = train.copy()
        scvi.settings.seed = seed
        cds.CountsDiffModel.setup_anndata(data, labels_key=label)
        model = cds.CountsDiffModel(data)
        kwargs = {} if arm == "default budget" else {"max_steps": 300 if quick else 6000}
        if quick and arm == "default budget":
            kwargs = {"max_epochs": 5, "early_stopping": True}
        t0, c0 = time.perf_counter(), time.process_time()
        model.train(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        budget = model.train_budget_
        row = {"data": name, "cells": adata.n_obs, "arm": arm, "steps run": budget["steps_run"],
               "max epochs": budget["max_epochs"], "early stopping": budget["early_stopping"],
               "train wall s": wall, "train CPU s": cpu,
               "held-out loss": heldout_loss(model, test, label, seed),
               "denoising r (25% depth)": denoising(model, test, label, seed)}
        common.log(f"{name} / {arm}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in row.items()))
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--datasets", default=None, help="comma-separated names (default: all three)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the data sets not run from the existing JSON (with their provenance)")
    args = p.parse_args()
    common.start(args.seed, args.threads)
    t_all = time.perf_counter()
    rows = []
    for name, (adata, label) in datasets(args.quick).items():
        if args.datasets and name.split(" ")[0] not in args.datasets.split(","):
            continue
        rows += run(name, adata, label, args.quick, args.seed)
    provenance = []
    stem = common.result_stem("training_budget", args.quick)
    if args.merge and stem.with_suffix(".json").exists():
        import json

        old = json.loads(stem.with_suffix(".json").read_text())
        done = {row["data"] for row in rows}
        kept = [row for row in old["rows"] if row["data"] not in done]
        if kept:
            names = ", ".join(dict.fromkeys(row["data"] for row in kept))
            provenance = [f"**Provenance.** The rows of {names} are those of the page's earlier run, kept with "
                          "`--merge` (that page and its own provenance are in the git history of this file; code "
                          f"may have changed since); the rows of {', '.join(sorted(done))} are from this run.", ""]
        rows = kept + rows
    table = pd.DataFrame(rows)
    ratios = []
    for name, sub in table.groupby("data", sort=False):
        d, f = sub.set_index("arm").loc["default budget"], sub.set_index("arm").loc["6,000 steps"]
        ratios.append({"data": name, "steps (default / 6,000)": d["steps run"] / f["steps run"],
                       "CPU time (default / 6,000)": d["train CPU s"] / f["train CPU s"],
                       "held-out loss (default - 6,000)": d["held-out loss"] - f["held-out loss"],
                       "denoising r (default - 6,000)": d["denoising r (25% depth)"] - f["denoising r (25% depth)"]})
    lines = [f"# Training budget ({'quick' if args.quick else 'full'} mode)", "",
             common.machine_header("training_budget", args.quick, time.perf_counter() - t_all), "",
             *provenance,
             "Protocol: the docstring of `benchmarks/training_budget.py`. Lower held-out loss and higher denoising r "
             "are better.", "", common.frame_to_markdown(table, index=False, float_format="{:.4g}"), "",
             "Default budget relative to 6,000 steps:", "",
             common.frame_to_markdown(pd.DataFrame(ratios), index=False, float_format="{:.3g}"), ""]
    common.write_results(stem, lines, {"rows": rows, "ratios": ratios, "args": vars(args),
                                       "provenance": [line for line in provenance if line]})


if __name__ == "__main__":
    main()
