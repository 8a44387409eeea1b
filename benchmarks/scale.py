"""Atlas-scale dropout imputation: wall time and peak memory of ``impute`` next to scVI's ``get_normalized_expression``.

Data: CBMC cells resampled with replacement to ``n_cells`` and gene columns resampled with replacement beyond CBMC's
500 genes (copies of real genes, not new biology; ``_data`` below). Suspected dropouts are marked with
``pp.mark_dropouts(groupby="cell_type", preset="paper")`` (scIDPMs Algorithm 1). Every measurement runs in a fresh
subprocess, so its peak memory is its own (Linux ``VmHWM`` growth during the timed call; ``_common.PeakMemory``).

* CountsDiff: the MLP trained briefly (``--pretrain-steps``; the cost of a chain does not depend on the weights'
  quality beyond the counts they produce), then ``impute(adata, n_samples=5, target="dropouts")`` (RePaint over
  the suspected dropouts, Euler steps; ``store_samples="auto"``, which does not store draws of this size);
* CountsDiff's ``get_normalized_expression(n_samples=5)`` (its default, the posterior mean of depth restoration:
  one network pass per cell);
* scVI: ``SCVI.get_normalized_expression(n_samples=5)`` (its cost does not depend on the weights, so the model is
  not trained, as in ``perf.py``);
* memory against the number of cells: one draw, one step (the working set does not depend on either), peak minus
  the outputs (the float32 point estimate and the spread of the filled entries).

Usage::

    python -m benchmarks.scale --quick                # about 2 minutes
    python -m benchmarks.scale --n-steps 20           # the sizes of the issue (about an hour on 2 CPU cores)

Writes ``benchmarks/results[/quick]/scale.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks import _common as common


def _data(n_cells: int, n_genes: int, seed: int = 0):
    """CBMC cells resampled with replacement to ``n_cells``; gene columns resampled with replacement beyond 500.

    The gene columns depend on ``n_genes`` and ``seed`` only, so a model trained on one draw of cells reads any other
    (genes are matched by name).
    """
    import anndata as ad

    import countsdiff_sc as cds

    base = cds.datasets.cbmc()
    rows = np.random.default_rng([seed, n_cells]).choice(base.n_obs, n_cells, replace=n_cells > base.n_obs)
    cols = np.arange(min(n_genes, base.n_vars))
    if n_genes > base.n_vars:
        extra = np.random.default_rng([seed, n_genes]).choice(base.n_vars, n_genes - base.n_vars)
        cols = np.concatenate([cols, extra])
    x = base.X[rows][:, cols].tocsr().astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(base.obs["cell_type"].to_numpy()[rows])},
                       index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"{base.var_names[c]}_{j}" for j, c in enumerate(cols)])
    return ad.AnnData(X=x, obs=obs, var=var)


def _prepared(n_cells: int, n_genes: int):
    import countsdiff_sc as cds

    adata = _data(n_cells, n_genes)
    t0 = time.perf_counter()
    cds.pp.mark_dropouts(adata, groupby="cell_type", preset="paper")
    return adata, time.perf_counter() - t0


def _pretrain_task(spec: dict) -> dict:
    import countsdiff_sc as cds

    adata, _ = _prepared(spec["train_cells"], spec["n_genes"])
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(adata, preset="paper")
    t0 = time.perf_counter()
    model.train(max_steps=spec["steps"], train_size=1.0, accelerator="cpu", enable_progress_bar=False,
                enable_model_summary=False, logger=False, enable_checkpointing=False)
    model.save(spec["path"], overwrite=True)
    return {"train_s": time.perf_counter() - t0}


def _impute_task(spec: dict) -> dict:
    import countsdiff_sc as cds

    adata, mark_s = _prepared(spec["n_cells"], spec["n_genes"])
    model = cds.CountsDiffModel.load(spec["weights"], adata=None, accelerator="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    with common.PeakMemory() as mem:
        model.impute(adata, n_samples=spec["n_samples"], target="dropouts",  # 0.1's fill of the suspected dropouts
                     store_samples=spec.get("store_samples", "auto"),
                     **common.chain_settings(0, n_steps=spec["n_steps"], batch_size=spec.get("batch_size", 2048),
                                             **common.EULER_SAMPLER))
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = adata.uns["countsdiff"]["countsdiff_imputed"]
    spread = adata.layers["countsdiff_imputed_std"]
    outputs = adata.n_obs * adata.n_vars * 4 + spread.data.nbytes + spread.indices.nbytes + spread.indptr.nbytes
    return {"total_s": total, "cpu_s": cpu, "mark_dropouts_s": mark_s, "peak_mib": mem.delta_mib,
            "outputs_mib": outputs / 2**20,
            "valid_layer_mib": adata.layers["countsdiff_valid"].nbytes / 2**20,
            "filled_frac": rec["n_entries_imputed"] / (adata.n_obs * adata.n_vars),
            "draws_stored": "countsdiff_samples" in adata.obsm}


def _expression_task(spec: dict) -> dict:
    import countsdiff_sc as cds

    adata, _ = _prepared(spec["n_cells"], spec["n_genes"])
    model = cds.CountsDiffModel.load(spec["weights"], adata=None, accelerator="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    with common.PeakMemory() as mem:
        out = model.get_normalized_expression(adata, n_samples=spec["n_samples"], return_numpy=True,
                                              **common.chain_settings(0))
    return {"total_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_mib": mem.delta_mib,
            "outputs_mib": out.nbytes / 2**20}


def _scvi_task(spec: dict) -> dict:
    import scvi

    adata = _data(spec["n_cells"], spec["n_genes"])
    scvi.model.SCVI.setup_anndata(adata, labels_key="cell_type")
    model = scvi.model.SCVI(adata)
    model.is_trained_ = True  # its cost does not depend on the weights
    t0, c0 = time.perf_counter(), time.process_time()
    with common.PeakMemory() as mem:
        out = model.get_normalized_expression(adata, n_samples=spec["n_samples"], return_numpy=True)
    total = time.perf_counter() - t0
    return {"total_s": total, "cpu_s": time.process_time() - c0, "peak_mib": mem.delta_mib,
            "outputs_mib": out.nbytes / 2**20}


TASKS = {"pretrain": _pretrain_task, "impute": _impute_task, "expression": _expression_task, "scvi": _scvi_task}


def _worker(spec: dict) -> None:
    import scvi
    import torch

    common.quiet()
    torch.set_num_threads(spec["threads"])
    scvi.settings.verbosity = 40
    scvi.settings.seed = 0
    print("RESULT " + json.dumps(TASKS[spec["task"]](spec)))


def _run(spec: dict, timeout: float) -> dict:
    """One measurement in a fresh ``python -m benchmarks.scale --worker`` subprocess (:func:`_common.run_worker`)."""
    return common.run_worker("benchmarks.scale", spec, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--n-steps", type=int, default=50, help="reverse steps of impute (default: impute's 50)")
    parser.add_argument("--n-samples", type=int, default=5)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory-against-cells part (writes scale_memory.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    common.quiet()
    t_start = time.perf_counter()
    sizes = [(2000, 500), (1000, 2000)] if args.quick else [(100_000, 2000), (20_000, 20_000)]
    if args.memory_only:
        sizes = [(10, 2000 if not args.quick else 500)]  # only its gene count is used: the memory part's genes
    memory_cells = [500, 1000, 2000] if args.quick else [10_000, 30_000, 100_000]
    pretrain = 100 if args.quick else args.pretrain_steps
    base = {"threads": args.threads, "n_samples": args.n_samples}
    rows, weights = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_genes in sorted({g for _, g in sizes}):
            path = os.path.join(tmp, f"m{n_genes}")
            n_train = 2000 if args.quick else 20_000
            _run({**base, "task": "pretrain", "train_cells": n_train, "n_cells": n_train, "n_genes": n_genes,
                  "steps": pretrain, "path": path}, timeout=7200)
            weights[n_genes] = path
        for n_cells, n_genes in ([] if args.memory_only else sizes):
            rows.append(_run({**base, "task": "impute", "n_cells": n_cells, "n_genes": n_genes,
                              "n_steps": args.n_steps, "weights": weights[n_genes]}, timeout=4 * 3600))
            rows.append(_run({**base, "task": "expression", "n_cells": n_cells, "n_genes": n_genes,
                              "weights": weights[n_genes]}, timeout=7200))
            rows.append(_run({**base, "task": "scvi", "n_cells": n_cells, "n_genes": n_genes}, timeout=7200))
        mem_genes = sizes[0][1]
        for n_cells in memory_cells:
            spec = {**base, "task": "impute", "n_cells": n_cells, "n_genes": mem_genes, "n_steps": 1, "n_samples": 1,
                    "batch_size": 256, "store_samples": False, "weights": weights[mem_genes]}
            rows.append({**_run(spec, timeout=7200), "part": "memory"})
    frame = pd.DataFrame(rows)
    memory = frame[frame.get("part") == "memory"][["n_cells", "n_genes", "peak_mib", "outputs_mib"]].copy()
    memory["peak minus outputs (MiB)"] = memory["peak_mib"] - memory["outputs_mib"]
    memory_text = ["Peak memory of `impute` against the number of cells (one draw, one step, `batch_size=256` rows so "
                   "that every size spans several batches, draws not stored; outputs = float32 point estimate + "
                   "spread of the filled entries):", "", common.frame_to_markdown(memory.round(1), index=False)]
    total = time.perf_counter() - t_start
    payload = {"machine": common.machine_info(), "args": vars(args), "rows": rows, "total_s": total}
    if args.memory_only:
        md = ["# Memory of dropout imputation against the number of cells" + (" (quick mode)" if args.quick else ""),
              "", common.machine_header("scale", args.quick, total), "", *memory_text]
        common.write_results(common.result_stem("scale_memory", args.quick), md, payload)
        return
    timed = frame[frame.get("part", pd.Series(index=frame.index, dtype=object)).isna()]
    table = timed.pivot_table(index=["n_cells", "n_genes"], columns="task", values=["total_s", "cpu_s", "peak_mib"])
    table.columns = [f"{task} {what}" for what, task in table.columns]
    table["impute / scVI time"] = table["impute total_s"] / table["scvi total_s"]
    table["impute / scVI CPU time"] = table["impute cpu_s"] / table["scvi cpu_s"]
    table["expression / scVI time"] = table["expression total_s"] / table["scvi total_s"]
    table["expression / scVI CPU time"] = table["expression cpu_s"] / table["scvi cpu_s"]
    title = "# Atlas-scale dropout imputation and expression" + (" (quick mode)" if args.quick else "")
    md = [title, "", common.machine_header("scale", args.quick, total),
          "", f"Dropout imputation (`impute(adata, n_samples={args.n_samples}, target=\"dropouts\", "
          f"sampler=cds.Sampler(n_steps={args.n_steps}, step_rule=\"euler\"))`, suspected dropouts of "
          "`mark_dropouts(preset=\"paper\")`) and CountsDiff's `get_normalized_expression(n_samples={args.n_samples})` "
          "(default: the posterior mean, one network pass per cell) next to scVI's "
          f"`get_normalized_expression(n_samples={args.n_samples})`; "
          f"{args.threads} threads; CountsDiff MLP trained {pretrain} steps (not timed). `total_s` is wall time, "
          "`cpu_s` the process CPU time of the timed call: at one thread the CPU time does not grow when other "
          "processes share the cores (the wall time does), so the CPU-time ratios are the ones to compare when the "
          "machine was not idle.", "",
          common.frame_to_markdown(table.round(3)), "", *memory_text]
    common.write_results(common.result_stem("scale", args.quick), md, payload)


if __name__ == "__main__":
    main()
