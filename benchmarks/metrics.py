"""Time and memory of every ``countsdiff_sc.metrics`` function on synthetic NB-like counts.

Usage::

    python -m benchmarks.metrics --quick            # 2k and 10k cells x 1000 genes (a few minutes on 2 cores)
    python -m benchmarks.metrics                    # 10k and 50k cells x 1000 genes

Data: ``n_cells x n_genes`` negative-binomial counts (gene means log-normal around 1, dispersion 2, cell size factors
log-normal) with 5 labels that scale 50 marker genes each. "Imputed" = truth with 50% of the entries (MCAR) replaced
by a Poisson draw around the truth; "generated" = an independent sample of the same model with unit size factors.

Memory, two measures per call:

* ``tracemalloc_mib`` - peak of Python / numpy allocations during the call (``tracemalloc``; torch and jax buffers are
  not traced).
* ``rss_delta_mib`` - peak resident set size during the call minus the RSS just before it, sampled every 5 ms by a
  watcher thread from ``/proc/self/statm`` (covers torch / jax / BLAS; freed-and-reused memory is not counted, so it is
  a lower bound). ``ru_maxrss`` of the whole process is reported at the end.

Writes ``benchmarks/results[/quick]/metrics.md`` (the markdown table) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as common

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class RssWatcher:
    """Samples the RSS in a background thread and keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssWatcher:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``fn`` once: result, wall seconds, tracemalloc peak MiB, RSS increase MiB."""
    before = rss_bytes()
    tracemalloc.start()
    with RssWatcher() as watcher:
        t0 = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, elapsed, peak / 2**20, max(watcher.peak - before, 0) / 2**20


def make_data(n_cells: int, n_genes: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    theta = 2.0
    mu = rng.lognormal(0.0, 1.0, size=n_genes)
    labels = rng.integers(0, 5, size=n_cells)
    scale = np.ones((5, n_genes))
    for k in range(5):
        scale[k, rng.choice(n_genes, 50, replace=False)] = 4.0

    def sample(size_factors: np.ndarray, lab: np.ndarray) -> np.ndarray:
        mean = size_factors[:, None] * mu[None, :] * scale[lab]
        return rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)

    truth = sample(rng.lognormal(0.0, 0.4, n_cells), labels)
    mask = rng.random(truth.shape) < 0.5
    imputed = np.where(mask, rng.poisson(truth + 0.5), truth).astype(np.float32)
    gen_labels = rng.integers(0, 5, size=n_cells)
    generated = sample(np.ones(n_cells), gen_labels)
    return {
        "truth": truth,
        "imputed": imputed,
        "mask": mask,
        "labels": np.array([f"t{k}" for k in labels]),
        "generated": generated,
        "generated_labels": np.array([f"t{k}" for k in gen_labels]),
    }


def benchmark_size(n_cells: int, n_genes: int, args: argparse.Namespace, embedder: Any) -> list[dict[str, Any]]:
    import anndata as ad
    import scipy.sparse as sp

    from countsdiff_sc import metrics as M
    from countsdiff_sc.metrics._generation import pca_features
    from countsdiff_sc.pp import log_normalize

    d = make_data(n_cells, n_genes, args.seed)
    t, p, m, g = d["truth"], d["imputed"], d["mask"], d["generated"]
    composite = np.where(m, p, t)
    emb_t, emb_g = pca_features(log_normalize(t), log_normalize(g), 30)
    adata = ad.AnnData(sp.csr_matrix(t))
    adata.layers["countsdiff_mask"] = m
    adata.layers["countsdiff_imputed"] = p
    adata.obs["label"] = d["labels"]
    adata.obsm["X_pca"] = emb_t
    real_ad = ad.AnnData(t, obs={"label": d["labels"]})
    gen_ad = ad.AnnData(g, obs={"label": d["generated_labels"]})
    n_emb = min(n_cells, args.embedding_cells)

    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("rmse", "held-out entries", lambda: M.rmse(t, p, m)),
        ("mae", "held-out entries", lambda: M.mae(t, p, m)),
        ("bias", "held-out entries", lambda: M.bias(t, p, m)),
        ("r2", "held-out entries", lambda: M.r2(t, p, m)),
        ("spearman", "per cell", lambda: M.spearman(t, p, m)),
        ("pearson", "per cell", lambda: M.pearson(t, p, m)),
        ("energy_distance", "pooled held-out values", lambda: M.energy_distance(t, p, m)),
        ("mmd", "full matrices, float32, all cells", lambda: M.mmd(t, composite)),
        ("swd", "full matrices, 1000 directions", lambda: M.swd(t, composite)),
        (
            "frechet_distance_from_embeddings",
            "30-d PCA embeddings",
            lambda: M.frechet_distance_from_embeddings(emb_t, emb_g),
        ),
    ]
    if embedder is not None:
        cases.append(("scfid", "embed both + Frechet (pre-trained embedder)", lambda: M.scfid(t, composite, embedder)))
    cases += [
        (
            "classifier_auc",
            f"{args.trees} trees, depth 5, 50 PCs",
            lambda: M.classifier_auc(t, g, n_estimators=args.trees, n_jobs=2),
        ),
        ("gene_statistics_agreement", "log1p-CP10k", lambda: M.gene_statistics_agreement(t, g)),
        ("sparsity_fidelity", "", lambda: M.sparsity_fidelity(t, g)),
        (
            "marker_gene_preservation",
            "5 labels, t-test, top 20",
            lambda: M.marker_gene_preservation(real_ad, gen_ad, "label"),
        ),
        ("silhouette_cosine", f"{n_emb} cells, 30-d", lambda: M.silhouette_cosine(emb_t[:n_emb], d["labels"][:n_emb])),
        ("clisi", f"{n_emb} cells, 30-d, 90-NN", lambda: M.clisi(emb_t[:n_emb], d["labels"][:n_emb])),
        (
            "leiden_nmi_ari",
            f"{n_emb} cells, 30-d, 22 resolutions",
            lambda: M.leiden_nmi_ari(emb_t[:n_emb], d["labels"][:n_emb])["ari"],
        ),
        (
            "evaluate_imputation",
            f"all but scfid, 10 bootstraps, mmd_max_cells={args.mmd_max_cells}",
            lambda: M.evaluate_imputation(adata, n_bootstrap=10, mmd_max_cells=args.mmd_max_cells),
        ),
    ]
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    rows = []
    for name, detail, fn in cases:
        out, seconds, tm, rss = measure(fn)
        value = float(out) if np.isscalar(out) or hasattr(out, "__float__") else None
        rows.append(
            {
                "n_cells": n_cells,
                "n_genes": n_genes,
                "metric": name,
                "detail": detail,
                "seconds": round(seconds, 3),
                "tracemalloc_mib": round(tm, 1),
                "rss_delta_mib": round(rss, 1),
                "value": value,
            }
        )
        common.log(f"{n_cells:>6} x {n_genes}  {name:<34} {seconds:8.2f} s  {tm:8.1f} MiB  {rss:8.1f} MiB")
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    sizes = sorted({r["n_cells"] for r in rows})
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    by = {(r["metric"], r["n_cells"]): r for r in rows}
    head = "| metric | detail | " + " | ".join(f"{n:,} cells: s / tracemalloc MiB / RSS+ MiB" for n in sizes) + " |"
    lines = [
        f"# countsdiff_sc.metrics benchmark ({meta['mode']})",
        "",
        common.machine_header("metrics", meta["mode"] == "quick", meta["total_s"], meta),
        "",
        f"{meta['n_genes']} genes, synthetic NB counts.",
        "Memory: tracemalloc peak (numpy / Python allocations) and peak RSS increase sampled every 5 ms "
        "(covers torch / jax; a lower bound when freed memory is reused).",
        f"Process ru_maxrss at the end: {meta['ru_maxrss_mib']:.0f} MiB. "
        f"scFID embedder training: {meta['scfid_training']}. {meta['warmup']}",
        "",
        head,
        "|" + "---|" * (2 + len(sizes)),
    ]
    for metric in metrics:
        detail = next(by[(metric, n)]["detail"] for n in sizes if (metric, n) in by)
        cells = []
        for n in sizes:
            r = by.get((metric, n))
            cells.append(f"{r['seconds']:.2f} / {r['tracemalloc_mib']:.0f} / {r['rss_delta_mib']:.0f}" if r else "-")
        lines.append(f"| {metric} | {detail} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k and 10k cells instead of 10k and 50k")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the numbers of cells")
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--trees", type=int, default=100, help="random forest size of classifier_auc (paper: 1000)")
    parser.add_argument("--embedding-cells", type=int, default=10_000, help="cells used by the embedding metrics")
    parser.add_argument("--mmd-max-cells", type=int, default=10_000, help="MMD cap inside evaluate_imputation")
    parser.add_argument("--no-scfid", action="store_true", help="skip training the scFID embedder and timing scfid")
    parser.add_argument("--only", nargs="+", help="time only these metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS)
    args = parser.parse_args()

    from countsdiff_sc import metrics as M

    t_all = time.perf_counter()
    sizes = args.sizes or ([2000, 10_000] if args.quick else [10_000, 50_000])
    embedder, training = None, "skipped"
    if not args.no_scfid and (not args.only or "scfid" in args.only):
        train = make_data(5000, args.genes, args.seed + 1)["truth"]
        t0 = time.perf_counter()
        embedder = M.fit_scfid_embedder(train, max_epochs=5, accelerator="cpu", seed=args.seed)
        training = f"{time.perf_counter() - t0:.1f} s (5000 cells, 5 epochs, n_latent=20)"
        common.log(f"scFID embedder trained: {training}")
    common.log("warm-up on 300 cells (imports, numba / jax compilation):")
    t0 = time.perf_counter()
    benchmark_size(300, args.genes, args, embedder)
    warmup = (
        f"Every function was first called once on 300 cells ({time.perf_counter() - t0:.0f} s: imports, numba "
        "compilation), which the timings exclude."
    )
    rows = []
    for n in sizes:
        rows += benchmark_size(n, args.genes, args, embedder)
    meta = {
        "mode": "quick" if args.quick else "full",
        "n_genes": args.genes,
        "sizes": sizes,
        **common.machine_info(),
        "total_s": time.perf_counter() - t_all,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "scfid_training": training,
        "warmup": warmup,
    }
    stem = common.result_stem("metrics", args.quick, folder=args.out_dir)
    common.write_results(stem, markdown(rows, meta), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
