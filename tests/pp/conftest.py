from __future__ import annotations

import anndata as ad
import pytest

import countsdiff_sc as cds


@pytest.fixture(scope="session")
def _pbmc_session() -> ad.AnnData:
    return cds.datasets.pbmc68k_reduced_counts()


@pytest.fixture
def pbmc(_pbmc_session: ad.AnnData) -> ad.AnnData:
    """Fresh copy of the 700 x 765 real count dataset (CSR, obs['bulk_labels'])."""
    return _pbmc_session.copy()
