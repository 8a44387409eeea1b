"""Imputation of a user's own data: every entry's expected count by default (denoise), suspected dropouts on request,
held-out entries that never train, the spread of the draws, and draws that are not stored when they would be large."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch

import countsdiff_sc as cds
from countsdiff_sc.model import _imputation
from tests.conftest import make_counts

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False}
QUICK = {"n_samples": 3, "n_steps": 3, "progress": False, "seed": 0}


def with_dropouts(n_obs=100, n_vars=15, seed=0):
    adata = make_counts(n_obs=n_obs, n_vars=n_vars, seed=seed)
    x = adata.X.toarray()
    rng = np.random.default_rng(seed)
    adata.layers["valid"] = ~((x == 0) & (rng.random(x.shape) < 0.5))  # half the zeros are suspected dropouts
    return adata


@pytest.fixture(scope="module")
def dropout_model():
    adata = with_dropouts()
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", valid_layer="valid")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=3, **FAST)
    return adata, model


def test_default_job_is_every_entrys_expected_count(dropout_model):
    adata, model = dropout_model
    data = adata.copy()
    imputed, samples = model.impute(data, **QUICK)
    rec = data.uns["countsdiff"]["countsdiff_imputed"]
    assert rec["target"] == "denoise" and rec["n_entries_imputed"] == data.n_obs * data.n_vars
    assert imputed.dtype == np.float32 and np.isfinite(imputed).all() and (imputed >= 0).all()
    std = data.layers["countsdiff_imputed_std"]
    assert isinstance(std, np.ndarray) and std.shape == data.shape and (std >= 0).all()
    assert samples.shape == (data.n_obs, 3, data.n_vars) and np.array_equal(samples, np.round(samples))
    again, _ = model.impute(data.copy(), **{**QUICK, "seed": 5})
    np.testing.assert_array_equal(again, imputed)  # the point estimate is the posterior mean: no randomness
    # the expected counts at the cell's depth: f * E[x_D | x], the posterior mean scaled back
    rho = model.get_normalized_expression(data, library_size=1.0, return_numpy=True)
    np.testing.assert_allclose(imputed / imputed.sum(axis=1, keepdims=True), rho, rtol=1e-4, atol=1e-6)


def test_dropouts_target_fills_every_suspected_dropout(dropout_model):
    adata, model = dropout_model
    data = adata.copy()
    imputed, samples = model.impute(data, target="dropouts", **QUICK)
    valid = data.layers["valid"]
    x = data.X.toarray()
    np.testing.assert_array_equal(imputed[valid], x[valid])  # observed entries untouched
    assert (imputed[~valid] > 0).mean() > 0.2  # dropouts are filled (an untrained net still predicts counts)
    assert np.array_equal(samples, np.round(samples)) and (samples >= 0).all()
    np.testing.assert_array_equal(samples[:, 0, :][valid], x[valid])
    rec = data.uns["countsdiff"]["countsdiff_imputed"]
    assert rec["target"] == "dropouts" and rec["mask_layer"] == "None"  # (None is stored as "None" in h5ad)
    assert rec["n_entries_imputed"] == int((~valid).sum())
    assert rec["n_cells_imputed"] == int((~valid).any(axis=1).sum())


def test_spread_layer_is_the_std_of_the_draws_on_filled_entries(dropout_model):
    adata, model = dropout_model
    data = adata.copy()
    _, samples = model.impute(data, target="dropouts", **QUICK)
    std = data.layers["countsdiff_imputed_std"]
    assert sp.issparse(std) and std.dtype == np.float32
    expected = np.where(~data.layers["valid"], samples.std(axis=1), 0.0)
    np.testing.assert_allclose(std.toarray(), expected, rtol=1e-6, atol=1e-6)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["std_key"] == "countsdiff_imputed_std"
    other = adata.copy()
    model.impute(other, std_key=None, target="dropouts", **QUICK)
    assert "countsdiff_imputed_std" not in other.layers
    model.impute(data, std_key=None, store_samples=False, target="dropouts", **QUICK)  # a re-run leaves nothing stale
    assert "countsdiff_imputed_std" not in data.layers and "countsdiff_samples" not in data.obsm


def test_targets_are_explicit(dropout_model):
    adata, model = dropout_model
    data = adata.copy()
    data.layers["countsdiff_mask"] = np.random.default_rng(0).random(data.shape) < 0.2
    with pytest.raises(ValueError, match="say which job you mean"):
        model.impute(data, **QUICK)
    model.impute(data, target="dropouts", **QUICK)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["target"] == "dropouts"
    model.impute(data, mask_layer="countsdiff_mask", **QUICK)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["target"] == "mask"
    with pytest.raises(ValueError, match="do not pass mask_layer"):
        model.impute(data, mask_layer="countsdiff_mask", target="dropouts", **QUICK)
    with pytest.raises(ValueError, match="target must be"):
        model.impute(data, target="everything", **QUICK)


def test_model_without_validity_layer_says_what_it_can_fill():
    adata = make_counts(n_obs=40, n_vars=8)
    cds.CountsDiffModel.setup_anndata(adata)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    with pytest.raises(ValueError, match=r"does not know which zeros are suspected dropouts"):
        model.impute(adata, target="dropouts", **QUICK)


def _train_weights(masked_values: str) -> dict[str, torch.Tensor]:
    adata = with_dropouts(n_obs=60, n_vars=10, seed=3)
    mask = np.random.default_rng(5).random(adata.shape) < 0.3
    x = adata.X.toarray()
    if masked_values == "changed":
        x[mask] = x[mask] * 7 + 3  # other values at the held-out entries only
    adata.X = sp.csr_matrix(x)
    adata.layers["heldout"] = mask
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", valid_layer="valid", mask_layer="heldout")
    scvi.settings.seed = 0
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.5)
    model.train(max_steps=4, batch_size=16, **FAST)
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_held_out_entries_never_train():
    """Changing the values under a registered mask leaves the trained weights identical (fixed seed)."""
    a, b = _train_weights("original"), _train_weights("changed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_registered_mask_is_the_default_target_on_the_training_data():
    adata = with_dropouts(n_obs=50, n_vars=10, seed=1)
    adata.layers["heldout"] = np.random.default_rng(2).random(adata.shape) < 0.2
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", valid_layer="valid", mask_layer="heldout")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=2, **FAST)
    model.impute(**QUICK)  # the training data, its registered mask
    rec = adata.uns["countsdiff"]["countsdiff_imputed"]
    assert rec["target"] == "mask" and rec["mask_layer"] == "heldout"
    assert rec["n_entries_imputed"] == int((adata.layers["heldout"] & adata.layers["valid"]).sum())
    new = with_dropouts(n_obs=20, n_vars=10, seed=4)  # new cells without that layer: their expected counts
    model.impute(new, **QUICK)
    assert new.uns["countsdiff"]["countsdiff_imputed"]["target"] == "denoise"
    assert "heldout" not in new.layers


def test_large_draws_are_not_stored_by_default(dropout_model, monkeypatch):
    adata, model = dropout_model
    data = adata.copy()
    monkeypatch.setattr(_imputation, "SAMPLES_AUTO_LIMIT", 10)
    _, samples = model.impute(data, **QUICK)
    assert samples is None and "countsdiff_samples" not in data.obsm
    assert data.uns["countsdiff"]["countsdiff_imputed"]["samples_key"] == "None"
    _, kept = model.impute(data, store_samples=True, **QUICK)
    assert kept.shape == (data.n_obs, 3, data.n_vars)
    with pytest.raises(TypeError, match="store_samples"):
        model.impute(data, store_samples="yes", **QUICK)


def test_large_dense_spread_is_not_stored_by_default_and_no_draws_are_made(dropout_model, monkeypatch):
    adata, model = dropout_model
    full = adata.copy()
    expected, _ = model.impute(full, **QUICK)  # small: the spread is stored
    monkeypatch.setattr(_imputation, "SAMPLES_AUTO_LIMIT", 10)
    data = full.copy()  # holds the earlier run's spread: a run that stores none removes it
    imputed, samples = model.impute(data, **QUICK)
    rec = data.uns["countsdiff"]["countsdiff_imputed"]
    assert samples is None and "countsdiff_imputed_std" not in data.layers and "countsdiff_samples" not in data.obsm
    assert rec["std_key"] == "None" and rec["draws_made"] == 0 and rec["n_samples"] == 3
    np.testing.assert_array_equal(imputed, expected)  # the expected counts do not depend on the draws
    # asked for by name, it is stored whatever the size, and the draws are made for it
    model.impute(data, std_key="countsdiff_imputed_std", **QUICK)
    np.testing.assert_array_equal(data.layers["countsdiff_imputed_std"], full.layers["countsdiff_imputed_std"])
    assert data.uns["countsdiff"]["countsdiff_imputed"]["draws_made"] == 3
    # the median needs the draws; RePaint's sparse spread is stored whatever the size
    median = data.copy()
    model.impute(median, point_estimate="median", **QUICK)
    rec = median.uns["countsdiff"]["countsdiff_imputed"]
    assert rec["draws_made"] == 3 and "countsdiff_imputed_std" not in median.layers
    sparse = data.copy()
    model.impute(sparse, target="dropouts", **QUICK)
    assert sp.issparse(sparse.layers["countsdiff_imputed_std"])


def test_sparse_and_backed_validity_give_the_same_draws(dropout_model, tmp_path):
    adata, model = dropout_model
    dense = adata.copy()
    ref, _ = model.impute(dense, **QUICK)
    sparse = adata.copy()
    sparse.layers["valid"] = sp.csr_matrix(sparse.layers["valid"])
    got, _ = model.impute(sparse, **QUICK)
    np.testing.assert_array_equal(got, ref)
    path = tmp_path / "q.h5ad"
    adata.copy().write_h5ad(path)
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    got_backed, _ = model.impute(backed, **QUICK)
    np.testing.assert_array_equal(got_backed, ref)


def test_new_cells_without_the_validity_layer(dropout_model):
    adata, model = dropout_model
    new = adata.copy()
    del new.layers["valid"]
    with pytest.raises(ValueError, match=r"no suspected dropout is marked on these cells.*mark_dropouts"):
        model.impute(new, target="dropouts", **QUICK)
    new.layers["countsdiff_mask"] = np.random.default_rng(0).random(new.shape) < 0.2
    model.impute(new, mask_layer="countsdiff_mask", **QUICK)  # a mask still works: all entries trusted
    assert new.uns["countsdiff"]["countsdiff_imputed"]["n_entries_imputed"] == int(new.layers["countsdiff_mask"].sum())
    assert "valid" not in new.layers
    df = model.get_normalized_expression(new, sampler=cds.Sampler(n_steps=3, seed=0))
    assert df.shape == new.shape


def test_spread_is_collected_in_place_into_its_final_csr():
    """The spread's arrays are allocated once at their final size; the CSR matrix uses them without a copy."""
    from countsdiff_sc.model._imputation import _Spread

    rng = np.random.default_rng(0)
    fill = rng.random((7, 5)) < 0.4
    fill[3] = False  # a cell without entries to fill
    draws = rng.poisson(3.0, (7, 4, 5)).astype(np.float32)
    spread = _Spread(fill.shape, int(fill.sum()))
    for rows in (np.arange(0, 3), np.arange(4, 7)):  # batches in increasing cell order; cell 3 is skipped
        spread.add(rows, fill[rows], draws[rows])
    m = spread.matrix()
    expected = np.where(fill, draws.std(axis=1), 0.0)
    np.testing.assert_allclose(m.toarray(), expected, rtol=1e-6)
    assert m.indices.dtype == np.int32 and m.indptr.dtype == np.int32
    assert np.shares_memory(m.data, spread.values) and np.shares_memory(m.indices, spread.cols)
    short = _Spread(fill.shape, int(fill.sum()) + 1)
    short.add(np.arange(7), fill, draws)
    with pytest.raises(RuntimeError, match="collected"):
        short.matrix()


def test_default_guidance_only_lowers_the_conditional_expected_counts():
    """The denoising default (guidance 2 capped at the conditional rate, ``guidance_cap=1``) is, entry by entry, the
    smaller of the uncapped guided estimate and the conditional one (guidance 1): guidance may take expression away
    where the label says a gene is lower than the cell alone suggests, never add any (a wrong label cannot add
    another type's genes). ``guidance_cap=inf`` lifts the cap."""
    import math

    adata = with_dropouts(seed=3)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", valid_layer="valid")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=150, **FAST)  # enough for the label to matter (3 steps leave y_C = y_u)

    def at(**settings):
        data = adata.copy()
        out, _ = model.impute(data, n_samples=1, store_samples=False,
                              sampler=cds.Sampler(progress=False, seed=0, **settings))
        return np.asarray(out, np.float64), data.uns["countsdiff"]["countsdiff_imputed"]

    default, rec = at()
    assert rec["guidance"] == 2.0 and rec["guidance_cap"] == 1.0
    conditional, _ = at(guidance=1.0)
    uncapped, rec_free = at(guidance=2.0, guidance_cap=math.inf)
    assert rec_free["guidance_cap"] == math.inf
    assert (uncapped > conditional * (1 + 1e-4) + 1e-6).any()  # the cap binds somewhere: not a vacuous check
    assert (default <= conditional * (1 + 1e-5) + 1e-6).all()
    np.testing.assert_allclose(default, np.minimum(uncapped, conditional), rtol=1e-5, atol=1e-6)
