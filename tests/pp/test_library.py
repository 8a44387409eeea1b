"""``pp.library_condition``: the standardised log library size as a vector condition, on the training scale."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from tests.conftest import make_counts

import countsdiff_sc as cds


def test_standardised_log_library_and_record(tmp_path):
    adata = make_counts(n_obs=120, n_vars=15, seed=1)
    x_before = adata.X.copy()
    cds.pp.library_condition(adata)
    lib = np.log(np.asarray(adata.X.sum(1)).ravel())
    z = adata.obsm["log_library"]
    assert z.shape == (120, 1) and z.dtype == np.float32
    np.testing.assert_allclose(z[:, 0], (lib - lib.mean()) / lib.std(), rtol=1e-5, atol=1e-6)
    rec = adata.uns["countsdiff_library_condition"]["log_library"]
    assert rec["mean"] == pytest.approx(lib.mean()) and rec["sd"] == pytest.approx(lib.std())
    assert (adata.X != x_before).nnz == 0  # counts untouched
    adata.write_h5ad(tmp_path / "a.h5ad")  # the record is storable
    back = ad.read_h5ad(tmp_path / "a.h5ad").uns["countsdiff_library_condition"]["log_library"]
    assert back["sd"] == pytest.approx(lib.std())


def test_reference_scale_layer_and_excluded_entries():
    train = make_counts(n_obs=100, n_vars=10, seed=2)
    cds.pp.library_condition(train, key="depth")
    query = make_counts(n_obs=30, n_vars=10, seed=3)
    cds.pp.library_condition(query, key="depth", reference=train)
    rec = train.uns["countsdiff_library_condition"]["depth"]
    lib = np.log(np.asarray(query.X.sum(1)).ravel())
    np.testing.assert_allclose(query.obsm["depth"][:, 0], (lib - rec["mean"]) / rec["sd"], rtol=1e-5, atol=1e-6)
    cds.pp.library_condition(query, key="d2", reference={"mean": 1.0, "sd": 2.0}, layer="counts")
    np.testing.assert_allclose(query.obsm["d2"][:, 0], (lib - 1.0) / 2.0, rtol=1e-5, atol=1e-6)
    # held-out entries are left out of the sum
    mask = np.zeros(query.shape, bool)
    mask[:, :3] = True
    query.layers["heldout"] = mask
    cds.pp.library_condition(query, key="d3", reference={"mean": 0.0, "sd": 1.0}, exclude_layer="heldout")
    kept = np.log(np.asarray(query.X[:, 3:].sum(1)).ravel())
    np.testing.assert_allclose(query.obsm["d3"][:, 0], kept, rtol=1e-5)


def test_bad_inputs():
    adata = make_counts(n_obs=20, n_vars=5, seed=4)
    x = adata.X.toarray()
    x[0] = 0
    empty = ad.AnnData(sp.csr_matrix(x))
    with pytest.raises(ValueError, match="1 cell"):
        cds.pp.library_condition(empty)
    with pytest.raises(ValueError, match="no record"):
        cds.pp.library_condition(adata, reference=make_counts(n_obs=10, n_vars=5))
    with pytest.raises(ValueError, match="sd must be"):
        cds.pp.library_condition(adata, reference={"mean": 0.0, "sd": 0.0})
    with pytest.raises(TypeError, match="AnnData or a dict"):
        cds.pp.library_condition(adata, reference=[1, 2])
    with pytest.raises(KeyError, match="not found"):
        cds.pp.library_condition(adata, layer="raw")
    frac = ad.AnnData(np.full((3, 2), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="integer"):
        cds.pp.library_condition(frac)


def test_backed_object_gives_the_same_condition(tmp_path):
    adata = make_counts(n_obs=50, n_vars=8, seed=5)
    cds.pp.library_condition(adata)
    adata.write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    cds.pp.library_condition(backed, key="again")
    np.testing.assert_allclose(backed.obsm["again"], adata.obsm["log_library"], rtol=1e-6)


def test_a_users_obsm_entry_is_never_replaced():
    adata = make_counts(n_obs=40, n_vars=6, seed=5)
    mine = np.arange(40, dtype=np.float64)[:, None]
    adata.obsm["log_library"] = mine.copy()
    with pytest.raises(ValueError, match="was not written by library_condition"):
        cds.pp.library_condition(adata)
    np.testing.assert_array_equal(adata.obsm["log_library"], mine)  # untouched
    cds.pp.library_condition(adata, key="depth")
    first = adata.obsm["depth"].copy()
    cds.pp.library_condition(adata, key="depth", layer="counts")  # its own entry: a re-run replaces it
    np.testing.assert_allclose(adata.obsm["depth"], first)
    cds.pp.library_condition(adata, overwrite=True)  # on purpose
    assert adata.obsm["log_library"].dtype == np.float32
    for key in ("", None):
        with pytest.raises(ValueError, match="non-empty string"):
            cds.pp.library_condition(adata, key=key)
