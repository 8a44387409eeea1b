"""Performance benchmark of CountsDiff next to scVI on (resampled) CBMC: throughput, peak memory, scaling.

Every measurement runs in a fresh subprocess (``--worker``), so peak memory is that measurement's own: the peak
resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the timed operation) minus
the resident set size at that moment. The numbers are:

* training throughput (cells / s) and time per epoch over a fixed number of optimizer steps after a warm-up
  (data loading included, validation off, no full training), CountsDiff ``backbone="mlp"`` and ``"transformer"``
  next to ``scvi.model.SCVI`` on the same AnnData and batch size;
* imputation throughput (cells / s per draw; RePaint with 20 steps, guidance 0.5 so conditional and unconditional
  passes run as one doubled batch) and generation throughput (50 steps, guidance 1), next to scVI's
  ``posterior_predictive_sample``. The MLP networks are trained first (``--pretrain-steps``, 1,000 by default;
  not timed): the network's cost does not depend on its weights, but the draws' cost does, through the counts
  they handle. An untrained network predicts about a gene's mean at every step, so a 50-step chain ends with
  several times the data's molecules and overstates the binomial draws' share (generated / real molecules per
  cell at 500 genes after 0 / 100 / 300 / 1,000 / 3,000 steps: 6.5 / 3.4 / 1.31 / 0.98 / 1.00). The generation
  rows report that ratio (``molecules_ratio``) so the reader sees how close to the data the chain was;
* the split of a sampler step: time in the network (``module.rate``), in the rest of the RePaint / generation loop
  (binomial draws, random rounding, masking), and in ``impute``'s own bookkeeping; the compiled binomial kernels
  are loaded before timing (their one-time load per process is reported as ``kernel_load_s``);
* peak memory of ``impute(store_samples=False)`` against the number of cells, next to the size of its outputs;
* scaling over the number of cells (resampled from CBMC's 8,617 cells with replacement) and genes (CBMC ships 500
  genes; 2,000 and 5,000 genes are made by resampling gene columns with replacement, so they are copies of real
  genes, not new biology).

Headline numbers are ratios to scVI. Usage::

    python -m benchmarks.perf --quick      # about 2 minutes
    python -m benchmarks.perf              # full run (about 12 minutes on 2 CPU cores)
    python -m benchmarks.perf --device cuda --precision bf16   # on a GPU (writes perf_cuda_bf16.md)

Writes ``benchmarks/results[/quick]/perf.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import _common as common

BATCH = 256


# ---------------------------------------------------------------------------------------------- worker side
def _data(n_cells: int, n_genes: int, seed: int = 0):
    """CBMC cells resampled with replacement to ``n_cells``; genes resampled with replacement beyond 500."""
    import anndata as ad

    import countsdiff_sc as cds

    base = cds.datasets.cbmc()
    rng = np.random.default_rng(seed)
    rows = rng.choice(base.n_obs, n_cells, replace=n_cells > base.n_obs)
    if n_genes <= base.n_vars:
        cols = np.arange(n_genes)
    else:
        cols = np.concatenate([np.arange(base.n_vars), rng.choice(base.n_vars, n_genes - base.n_vars)])
    x = base.X[rows][:, cols].tocsr().astype(np.float32)
    obs = pd.DataFrame({"cell_type": base.obs["cell_type"].to_numpy()[rows]}, index=[f"c{i}" for i in range(n_cells)])
    obs["cell_type"] = obs["cell_type"].astype("category")
    var = pd.DataFrame(index=[f"{base.var_names[c]}_{j}" for j, c in enumerate(cols)])
    return ad.AnnData(X=x, obs=obs, var=var)


def _countsdiff(adata, backbone: str):
    import countsdiff_sc as cds

    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    return cds.CountsDiffModel(adata, preset="paper", backbone=backbone)


def _scvi(adata):
    import scvi

    scvi.model.SCVI.setup_anndata(adata)
    return scvi.model.SCVI(adata)


def _train_task(spec: dict) -> dict:
    from lightning.pytorch.callbacks import Callback

    warmup, steps = spec["warmup"], spec["steps"]

    class StepTimer(Callback):
        t0 = t1 = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.t0 = time.perf_counter()
            elif trainer.global_step == warmup + steps:
                self.t1 = time.perf_counter()

    adata = _data(spec["n_cells"], spec["n_genes"])
    timer = StepTimer()
    accelerator = "gpu" if spec.get("device") == "cuda" else "cpu"
    train_kwargs = {"max_steps": warmup + steps, "batch_size": BATCH, "train_size": 1.0, "accelerator": accelerator,
                    "devices": 1, "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [timer],
                    "logger": False, "enable_checkpointing": False}
    model = _scvi(adata) if spec["model"] == "scvi" else _countsdiff(adata, spec["model"])
    with common.PeakMemory(spec.get("device", "cpu")) as mem:
        if spec["model"] == "scvi":
            model.train(max_epochs=10**6, early_stopping=False, **train_kwargs)
        else:
            model.train(**train_kwargs)
    s_per_step = (timer.t1 - timer.t0) / steps
    return {"s_per_step": s_per_step, "cells_per_s": BATCH / s_per_step,
            "epoch_s": int(np.ceil(adata.n_obs / BATCH)) * s_per_step, "peak_mib": mem.delta_mib,
            "gpu_peak_mib": mem.gpu_mib}


class _Clock:
    """Wraps a callable and accumulates the wall time spent in it (synchronising the GPU around it on CUDA)."""

    def __init__(self, fn, device: str = "cpu"):
        self.fn, self.seconds, self.calls = fn, 0.0, 0
        self.sync = _cuda_sync if device == "cuda" else (lambda: None)

    def __call__(self, *args, **kwargs):
        self.sync()
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def _pretrain_task(spec: dict) -> dict:
    """Train an MLP model briefly on the sampling tasks' data and save it for them (not a timed measurement)."""
    adata = _data(spec["n_cells"], spec["n_genes"])
    model = _countsdiff(adata, spec["model"])
    t0 = time.perf_counter()
    model.train(max_steps=spec["steps"], batch_size=BATCH, train_size=1.0, enable_progress_bar=False,
                enable_model_summary=False, logger=False, enable_checkpointing=False,
                accelerator="gpu" if spec.get("device") == "cuda" else "cpu", devices=1)
    model.save(spec["path"], overwrite=True)
    return {"train_s": time.perf_counter() - t0}


def _model_for(adata, spec: dict):
    """The pretrained model of this gene count when the plan made one, else an untrained one."""
    import countsdiff_sc as cds

    if spec.get("weights"):
        return cds.CountsDiffModel.load(spec["weights"], adata=adata, accelerator="cpu")
    return _countsdiff(adata, spec["model"])


def _impute_task(spec: dict) -> dict:
    import countsdiff_sc as cds
    from countsdiff_sc.model import _imputation as impute_mod  # the module whose repaint impute() calls

    adata = _data(spec["n_cells"], spec["n_genes"])
    cds.pp.mask_mcar(adata, rate=0.5, seed=0)
    model = _model_for(adata, spec)
    device = spec.get("device", "cpu")
    model.to_device(device)
    rate = model.module.rate = _Clock(model.module.rate, device)  # instance attribute shadows the method
    loop = impute_mod.repaint = _Clock(impute_mod.repaint, device)
    t0 = time.perf_counter()
    with common.PeakMemory(device) as mem:
        model.impute(adata, mask_layer="countsdiff_mask",
                     n_samples=spec["n_samples"], n_steps=spec["n_steps"], store_samples=spec["store_samples"],
                     batch_size=spec.get("batch_size", 2048), seed=0, precision=spec.get("precision", "32"),
                     progress=False, **common.EULER_SAMPLER)
    total = time.perf_counter() - t0
    n_draws = adata.n_obs * spec["n_samples"]
    outputs_mib = adata.n_obs * adata.n_vars * (4 + 1) / 2**20  # float32 point estimate + boolean mask
    if spec["store_samples"]:
        outputs_mib += n_draws * adata.n_vars * 4 / 2**20
    # throughput normalised to 20 steps (imputations of one draw per second)
    return {"total_s": total, "cells_per_s_per_draw": n_draws / total * spec["n_steps"] / 20,
            "network_frac": rate.seconds / total, "sampler_rest_frac": (loop.seconds - rate.seconds) / total,
            "impute_overhead_frac": (total - loop.seconds) / total, "peak_mib": mem.delta_mib,
            "gpu_peak_mib": mem.gpu_mib,
            "outputs_mib": outputs_mib, "rate_calls": rate.calls}


def _sample_task(spec: dict) -> dict:
    from countsdiff_sc.model import _generation as generation_mod  # the module whose generate sample() calls

    adata = _data(max(spec["n_cells"], 1000), spec["n_genes"])
    model = _model_for(adata, spec)
    device = spec.get("device", "cpu")
    model.to_device(device)
    rate = model.module.rate = _Clock(model.module.rate, device)
    loop = generation_mod.generate = _Clock(generation_mod.generate, device)
    labels = list(np.random.default_rng(0).choice(adata.obs["cell_type"].astype(str), spec["n_cells"]))
    t0 = time.perf_counter()
    with common.PeakMemory(device) as mem:
        fake = model.sample(labels=labels, n_steps=spec["n_steps"], guidance=1.0, seed=0,
                            precision=spec.get("precision", "32"), progress=False)
    total = time.perf_counter() - t0
    molecules = float(fake.X.sum() / fake.n_obs) / float(adata.X.sum() / adata.n_obs)
    return {"total_s": total, "cells_per_s": spec["n_cells"] / total, "molecules_ratio": molecules,
            "network_frac": rate.seconds / total,
            "sampler_rest_frac": (loop.seconds - rate.seconds) / total,
            "overhead_frac": (total - loop.seconds) / total, "peak_mib": mem.delta_mib, "gpu_peak_mib": mem.gpu_mib}


def _scvi_ppc_task(spec: dict) -> dict:
    adata = _data(spec["n_cells"], spec["n_genes"])
    model = _scvi(adata)
    model.is_trained_ = True  # cost does not depend on the weights
    model.to_device(spec.get("device", "cpu"))
    t0 = time.perf_counter()
    with common.PeakMemory(spec.get("device", "cpu")) as mem:
        model.posterior_predictive_sample(adata, n_samples=1, batch_size=BATCH)
    total = time.perf_counter() - t0
    return {"total_s": total, "cells_per_s": adata.n_obs / total, "peak_mib": mem.delta_mib,
            "gpu_peak_mib": mem.gpu_mib}


TASKS = {"train": _train_task, "pretrain": _pretrain_task, "impute": _impute_task, "sample": _sample_task,
         "scvi_ppc": _scvi_ppc_task}


def _worker(spec: dict) -> None:
    import scvi
    import torch

    common.quiet()
    torch.set_num_threads(spec["threads"])
    scvi.settings.verbosity = 40
    scvi.settings.seed = 0
    # load the compiled binomial kernels (numba's on-disk cache; compiled once per install) before timing, and
    # report that one-time cost of the first draw in a process separately
    from countsdiff_sc.diffusion.counts._kernels_cpu import binomial_cpu, reverse_step_cpu

    t0 = time.perf_counter()
    binomial_cpu(torch.ones(4), torch.tensor(0.5))
    reverse_step_cpu(torch.ones(4), torch.ones(4), 0.1, 0.5)
    kernel_load = time.perf_counter() - t0
    result = {**TASKS[spec["task"]](spec), "kernel_load_s": kernel_load}
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------- driver side
def _run(spec: dict, timeout: float) -> dict:
    """One measurement in a fresh ``python -m benchmarks.perf --worker`` subprocess (:func:`_common.run_worker`)."""
    return common.run_worker("benchmarks.perf", spec, timeout)


def _plan(quick: bool, pretrain_steps: int = 0, weights_root: str | None = None) -> list[dict]:
    """The measurements; sizes chosen so the full run fits in about 12 minutes on 2 cores (9 before the pretraining).

    The transformer attends over all genes (memory and time quadratic in n_genes): about 7 s per training step
    and 2.7 GiB at 500 genes and batch 256 on one core, so it is measured at 500 genes only.
    """
    specs: list[dict] = []
    if quick:
        warm, steps, t_warm, t_steps = 3, 15, 1, 1
        cell_sizes, gene_sizes = [1000], [500]
        impute_cells, tf_cells, tf_steps, mem_cells = 300, 32, 2, [1000, 3000]
    else:
        warm, steps, t_warm, t_steps = 20, 200, 1, 5
        cell_sizes, gene_sizes = [1000, 3000, 10000, 30000, 100000], [500, 2000, 5000]
        impute_cells, tf_cells, tf_steps, mem_cells = 1000, 256, 5, [1000, 10000, 30000, 100000]
    ref_cells = cell_sizes[min(2, len(cell_sizes) - 1)]
    for n in cell_sizes:  # training against n_cells, CBMC's 500 genes
        for model in ("mlp", "scvi"):
            specs.append({"task": "train", "model": model, "n_cells": n, "n_genes": 500, "warmup": warm,
                          "steps": steps})
    for g in gene_sizes[1:]:  # training against n_genes
        for model in ("mlp", "scvi"):
            specs.append({"task": "train", "model": model, "n_cells": ref_cells, "n_genes": g, "warmup": warm,
                          "steps": steps})
    specs.append({"task": "train", "model": "transformer", "n_cells": ref_cells, "n_genes": 500, "warmup": t_warm,
                  "steps": t_steps})
    for g in gene_sizes:  # sampling throughput and the network / rest split
        trained = {}
        if pretrain_steps > 0 and weights_root is not None:
            trained = {"weights": str(Path(weights_root) / f"mlp_{g}"), "pretrain_steps": pretrain_steps}
            specs.append({"task": "pretrain", "model": "mlp", "n_cells": 1000, "n_genes": g, "steps": pretrain_steps,
                          "path": trained["weights"]})
        specs.append({"task": "impute", "model": "mlp", "n_cells": impute_cells, "n_genes": g, "n_samples": 1,
                      "n_steps": 20, "store_samples": False, **trained})
        specs.append({"task": "sample", "model": "mlp", "n_cells": impute_cells, "n_genes": g, "n_steps": 50,
                      **trained})
        specs.append({"task": "scvi_ppc", "model": "scvi", "n_cells": 2000, "n_genes": g})
    specs.append({"task": "impute", "model": "transformer", "n_cells": tf_cells, "n_genes": 500, "n_samples": 1,
                  "n_steps": tf_steps, "store_samples": False})
    if not quick:
        specs.append({"task": "sample", "model": "transformer", "n_cells": tf_cells, "n_genes": 500,
                      "n_steps": tf_steps})
    # peak memory of impute against n_cells: one draw, one step (the working set does not depend on either)
    for n in mem_cells:
        specs.append({"task": "impute", "model": "mlp", "n_cells": n, "n_genes": 500, "n_samples": 1, "n_steps": 1,
                      "store_samples": False, "role": "memory"})
    specs.append({"task": "impute", "model": "mlp", "n_cells": mem_cells[1], "n_genes": 500, "n_samples": 5,
                  "n_steps": 1, "store_samples": True, "role": "memory"})
    return specs


def _tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    df = pd.DataFrame([r for r in rows if "error" not in r])
    tables: dict[str, pd.DataFrame] = {}
    train = df[df.task == "train"]
    if len(train):
        wide = train.pivot_table(index=["n_cells", "n_genes"], columns="model", values="cells_per_s")
        epoch = train.pivot_table(index=["n_cells", "n_genes"], columns="model", values="epoch_s")
        peak = train.pivot_table(index=["n_cells", "n_genes"], columns="model", values="peak_mib")
        out = pd.DataFrame(index=wide.index)
        for m in [c for c in ("mlp", "transformer", "scvi") if c in wide.columns]:
            out[f"{m} cells/s"] = wide[m]
            out[f"{m} s/epoch"] = epoch[m]
            out[f"{m} peak MiB"] = peak[m]
        for m in [c for c in ("mlp", "transformer") if c in wide.columns and "scvi" in wide.columns]:
            out[f"{m} / scVI throughput"] = wide[m] / wide["scvi"]
        tables["Training"] = out.reset_index()
    samp = df[df.task.isin(["impute", "sample", "scvi_ppc"]) & (df.get("role") != "memory")]
    if len(samp):
        samp = samp.assign(**{"cells/s (per draw)": samp.get("cells_per_s_per_draw").fillna(samp.cells_per_s)})
        ppc = samp[samp.task == "scvi_ppc"].set_index("n_genes")["cells/s (per draw)"]
        samp = samp.assign(**{"ratio to scVI ppc": samp["cells/s (per draw)"].to_numpy()
                              / ppc.reindex(samp.n_genes).to_numpy()})
        cols = ["task", "model", "n_cells", "n_genes", "n_steps", "pretrain_steps", "cells/s (per draw)",
                "ratio to scVI ppc", "molecules_ratio", "network_frac", "sampler_rest_frac", "peak_mib", "gpu_peak_mib"]
        tables["Sampling and imputation"] = samp[[c for c in cols if c in samp.columns and samp[c].notna().any()]]
        split = samp[samp.task.isin(["impute", "sample"])].copy()
        split["bookkeeping_frac"] = split.get("impute_overhead_frac").fillna(split.get("overhead_frac"))
        split["rest / network"] = split.sampler_rest_frac / split.network_frac
        tables["Sampler step split (fraction of wall time)"] = split[
            [c for c in ("task", "model", "n_genes", "pretrain_steps", "network_frac", "sampler_rest_frac",
                         "bookkeeping_frac", "rest / network") if c in split.columns]]
    mem = df[df.get("role") == "memory"] if "role" in df else df.iloc[:0]
    if len(mem):
        tables["impute peak memory vs n_cells"] = mem[
            ["n_cells", "n_genes", "n_samples", "store_samples", "peak_mib", "outputs_mib", "total_s"]].assign(
            **{"peak - outputs (MiB)": mem.peak_mib - mem.outputs_mib})
    return tables


def _headline(tables: dict[str, pd.DataFrame], rows: list[dict]) -> list[str]:
    """Ratios to scVI, as bullet points (medians over the sizes measured)."""
    lines = ["## Headline (ratios to scVI; > 1 means CountsDiff is faster)", ""]
    train = tables.get("Training")
    if train is not None:
        for m in ("mlp", "transformer"):
            col = f"{m} / scVI throughput"
            if col in train and train[col].notna().any():
                vals = train[col].dropna()
                lines.append(f"- training throughput, {m}: {vals.median():.3g}x scVI (median of {len(vals)} sizes; "
                             f"range {vals.min():.3g} to {vals.max():.3g})")
    samp = tables.get("Sampling and imputation")
    if samp is not None:
        for task, what in (("impute", "imputation, per draw, 20 steps"), ("sample", "generation, 50 steps")):
            for m in ("mlp", "transformer"):
                sub = samp[(samp.task == task) & (samp.model == m)]
                if len(sub):
                    lines.append(f"- {what}, {m}: " + ", ".join(
                        f"{r:.3g}x ({g} genes)" for r, g in zip(sub["ratio to scVI ppc"], sub.n_genes, strict=True))
                        + " scVI posterior-predictive sampling")
    load = pd.Series([r["kernel_load_s"] for r in rows if "kernel_load_s" in r], dtype=float)
    if len(load):
        lines.append(f"- one-time load of the compiled binomial kernels per process (not in the timings above): "
                     f"median {load.median():.2f} s, max {load.max():.2f} s")
    return [*lines, ""]


def _header(args: argparse.Namespace, elapsed: float, info: dict) -> list[str]:
    import torch

    import countsdiff_sc as cds

    return [f"# Performance benchmark ({'quick' if args.quick else 'full'} mode)", "",
            common.machine_header("perf", args.quick, elapsed, info), "",
            f"- machine: {info['cpu']}, {info['cpus']} logical CPUs visible; torch {info['torch']}, "
            + (f"GPU: {torch.cuda.get_device_name(0)}, precision {args.precision}" if args.device == "cuda"
               else "CPU only"),
            f"- threads per measurement: {args.threads} (OMP / MKL / torch); every measurement in a fresh subprocess",
            f"- countsdiff-sc {cds.__version__}; batch size {BATCH}; total time {elapsed / 60:.1f} min",
            "- data: CBMC (8,617 cells x 500 genes) resampled with replacement to n_cells; n_genes > 500 by "
            "resampling gene columns with replacement (copies of real genes)",
            (f"- sampling / imputation: MLP networks trained for {args.pretrain_steps} steps first (not timed; the "
             "draws' cost depends on the counts a chain carries), transformer untrained; " if args.pretrain_steps
             else "- sampling / imputation: untrained networks (the draws' cost is overstated); ")
            + "imputation: 50% MCAR mask, guidance 0.5 (one doubled batch per step), 20 steps; generation: 50 steps, "
            "guidance 1; scVI: posterior_predictive_sample, 1 draw",
            "- peak memory: growth of the peak RSS during the measured call (VmHWM reset before it)", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per measurement before it is skipped")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where models run (default cpu)")
    p.add_argument("--precision", choices=["32", "bf16", "16"], default="32",
                   help="network precision of imputation and generation (default 32)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="training steps of the sampling tasks' MLP models (default 1000, quick 100; 0: untrained)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    if args.pretrain_steps is None:
        args.pretrain_steps = 100 if args.quick else 1000
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cds_perf_") as weights_root:
        rows = [_run({**spec, "threads": args.threads, "device": args.device, "precision": args.precision},
                     args.timeout) for spec in _plan(args.quick, args.pretrain_steps, weights_root)]
    elapsed = time.perf_counter() - t0
    tables = _tables(rows)
    info = {**common.machine_info(), "torch_threads": args.threads}  # the measurements' threads
    lines = _header(args, elapsed, info) + _headline(tables, rows)
    for name, table in tables.items():
        lines += [f"## {name}", "", common.frame_to_markdown(table, index=False), ""]
        if name.startswith("impute peak memory"):
            lines += ["outputs: float32 point estimate + boolean mask (+ int32 draws with store_samples). The rest is "
                      "the working set of one chunk of `batch_size` = 2048 rows (cells x draws; doubled inside the "
                      "guided network pass) plus a block of counts read for the output: it grows until a chunk is "
                      "full and is flat in n_cells after that.", ""]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Skipped", ""] + [f"- {r['task']} {r.get('model')} {r['n_cells']} x {r['n_genes']}: "
                                       f"{r['error']}" for r in errors] + [""]
    stem = common.result_stem("perf", args.quick, "" if args.device == "cpu" else f"_{args.device}_{args.precision}")
    common.write_results(stem, lines, {"settings": vars(args), **info, "elapsed_s": elapsed, "rows": rows})


if __name__ == "__main__":
    main()
