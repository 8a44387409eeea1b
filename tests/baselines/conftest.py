from __future__ import annotations

import anndata as ad
import pytest

import countsdiff_sc as cds


@pytest.fixture(scope="session")
def _prepared() -> ad.AnnData:
    adata = cds.datasets.pbmc68k_reduced_counts()
    cds.pp.mark_dropouts(adata, groupby="bulk_labels")
    cds.pp.split_cells(adata, seed=0, stratify="bulk_labels")
    cds.pp.mask_mcar(adata, rate=0.5, seed=0, subset=("countsdiff_split", "test"))
    return adata


@pytest.fixture
def masked(_prepared: ad.AnnData) -> ad.AnnData:
    """pbmc68k counts with layers countsdiff_valid / countsdiff_mask (50 % MCAR of the test cells), obs split."""
    return _prepared.copy()
