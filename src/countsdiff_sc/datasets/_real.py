"""Loaders for real single-cell count data shipped with the package or its dependencies."""

from __future__ import annotations

from importlib import resources

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._utils import to_dense

_CBMC_FILE = "cbmc_citeseq_rna.h5ad"


def cbmc() -> ad.AnnData:
    """CITE-seq cord-blood mononuclear cells, RNA counts (bundled).

    Raw UMI counts of Stoeckius et al., Nat. Methods 2017 (GEO GSE100866): 8617 cells x 500 genes,
    ``obs["cell_type"]`` with 13 labels. The file ships inside the package (no download); its provenance and
    license are in ``uns["source"]`` and in ``countsdiff_sc/datasets/data/README.md``.

    Returns
    -------
    AnnData with integer-valued float32 CSR counts in ``X`` and a categorical ``obs["cell_type"]``.
    A fresh copy is read on every call, so modifying it never touches the bundled file.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.cbmc()
    >>> adata.shape
    (8617, 500)
    """
    path = resources.files("countsdiff_sc.datasets").joinpath("data", _CBMC_FILE)
    with resources.as_file(path) as p:
        adata = ad.read_h5ad(p)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    adata.obs_names_make_unique()
    return adata


def pbmc68k_reduced_counts() -> ad.AnnData:
    """Integer UMI counts recovered from scanpy's bundled ``pbmc68k_reduced`` (700 cells x 765 genes).

    scanpy ships ``raw.X = log1p(count / n_counts * 1e4)`` rounded to 3 decimals; the counts are recovered exactly
    as ``rint(expm1(raw.X) * n_counts / 1e4)``. The labels are in ``obs["bulk_labels"]``. A small real dataset
    that needs no download: handy for fast tests.

    Returns
    -------
    AnnData with float32 CSR integer counts in ``X``, ``obs["bulk_labels"]`` and ``obs["n_counts"]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> adata.shape
    (700, 765)
    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.to_adata()
    logx = to_dense(raw.X)
    n_counts = src.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.rint(np.expm1(logx.astype(np.float64)) * n_counts / 1e4).astype(np.float32)
    obs = src.obs[["bulk_labels", "n_counts"]].copy()
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=raw.var[[]].copy())
    adata.uns["source"] = {
        "note": "counts recovered as rint(expm1(raw.X) * n_counts / 1e4) from scanpy.datasets.pbmc68k_reduced()",
        "study": "10x Genomics PBMC 68k (Zheng et al., Nat Commun 2017), reduced by scanpy",
    }
    return adata
