from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.baselines import impute_conditional_mean, impute_mean, impute_zero
from countsdiff_sc.pp import mask_mcar


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def _brute_mean(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        vals = x[observed[:, j], j]
        out[j] = vals.mean() if vals.size else 0.0
    return out


def _check_observed_unchanged(adata: ad.AnnData, out: np.ndarray, key: str, fill: np.ndarray) -> None:
    x = _dense(adata)
    assert out.dtype == np.float32 and out.shape == adata.shape
    assert adata.layers[key] is out or np.array_equal(adata.layers[key], out)
    np.testing.assert_array_equal(out[~fill], x[~fill])


def test_zero(masked):
    x_before = _dense(masked).copy()
    out = impute_zero(masked)
    mask = masked.layers["countsdiff_mask"]
    _check_observed_unchanged(masked, out, "zero_imputed", mask)
    assert (out[mask] == 0).all()
    np.testing.assert_array_equal(_dense(masked), x_before)
    rec = masked.uns["countsdiff"]["zero_imputed"]
    assert rec["method"] == "zero" and rec["n_imputed"] == int(mask.sum())


@pytest.mark.parametrize("valid_layer", [None, "countsdiff_valid"])
def test_mean_equals_numpy_on_train_cells(masked, valid_layer):
    x = _dense(masked)
    train = (masked.obs["countsdiff_split"] == "train").to_numpy()
    observed = ~masked.layers["countsdiff_mask"]
    if valid_layer:
        observed &= masked.layers["countsdiff_valid"]
    expected = _brute_mean(x[train], observed[train])
    out = impute_mean(masked, reference=("countsdiff_split", "train"), valid_layer=valid_layer)
    mask = masked.layers["countsdiff_mask"]
    _check_observed_unchanged(masked, out, "mean_imputed", mask)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(out[rows, cols], expected[cols].astype(np.float32), rtol=1e-6)
    assert masked.uns["countsdiff"]["mean_imputed"]["reference"].endswith("(560 cells)")


def test_mean_reference_forms_agree(masked):
    train = (masked.obs["countsdiff_split"] == "train").to_numpy()
    a = impute_mean(masked, reference=train, key_added="a").copy()
    b = impute_mean(masked, reference=masked.obs["countsdiff_split"] == "train", key_added="b").copy()
    ref = masked[train].copy()
    ref = ref[:, ref.var_names[::-1]].copy()  # gene order must not matter
    c = impute_mean(masked, reference=ref, key_added="c").copy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-6)


def test_mean_default_reference_uses_unmasked_entries_of_all_cells(masked):
    x = _dense(masked)
    expected = _brute_mean(x, ~masked.layers["countsdiff_mask"])
    out = impute_mean(masked)
    rows, cols = np.nonzero(masked.layers["countsdiff_mask"])
    np.testing.assert_allclose(out[rows, cols], expected[cols].astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize("impute", ["zero", "mean", "conditional_mean"])
def test_held_out_truth_never_leaks(masked, impute):
    fn = {
        "zero": lambda a: impute_zero(a),
        "mean": lambda a: impute_mean(a),
        "conditional_mean": lambda a: impute_conditional_mean(a, "bulk_labels"),
    }[impute]
    mask = masked.layers["countsdiff_mask"]
    out = fn(masked).copy()
    poisoned = masked.copy()
    x = _dense(poisoned)
    x[mask] = 1000
    poisoned.X = sp.csr_matrix(x)
    np.testing.assert_array_equal(fn(poisoned)[mask], out[mask])


def test_invalid_masked_entries_stay_observed(masked):
    mask_mcar(masked, 0.5, seed=1, valid_layer=None)  # also holds out suspected dropouts
    mask, valid = masked.layers["countsdiff_mask"], masked.layers["countsdiff_valid"]
    assert (mask & ~valid).any()
    out = impute_mean(masked, valid_layer="countsdiff_valid")
    x = _dense(masked)
    np.testing.assert_array_equal(out[mask & ~valid], x[mask & ~valid])
    assert masked.uns["countsdiff"]["mean_imputed"]["n_imputed"] == int((mask & valid).sum())


@pytest.mark.filterwarnings("ignore:.*pairs have no observed reference entry")
def test_conditional_mean_per_label(masked):
    x = _dense(masked)
    labels = masked.obs["bulk_labels"].to_numpy()
    train = (masked.obs["countsdiff_split"] == "train").to_numpy()
    observed = ~masked.layers["countsdiff_mask"] & masked.layers["countsdiff_valid"]
    out = impute_conditional_mean(
        masked, "bulk_labels", reference=("countsdiff_split", "train"), valid_layer="countsdiff_valid"
    )
    global_mean = _brute_mean(x[train], observed[train])
    mask = masked.layers["countsdiff_mask"]
    _check_observed_unchanged(masked, out, "conditional_mean_imputed", mask)
    for lab in np.unique(labels[mask.any(1)]):
        sel = train & (labels == lab)
        expected = _brute_mean(x[sel], observed[sel])
        empty = observed[sel].sum(0) == 0
        expected[empty] = global_mean[empty]
        rows = np.flatnonzero((labels == lab) & mask.any(1))
        for i in rows:
            np.testing.assert_allclose(out[i, mask[i]], expected[mask[i]].astype(np.float32), rtol=1e-6)


@pytest.mark.filterwarnings("ignore:.*pairs have no observed reference entry")
def test_conditional_mean_reference_anndata_equals_selection(masked):
    train = (masked.obs["countsdiff_split"] == "train").to_numpy()
    a = impute_conditional_mean(masked, "bulk_labels", reference=train, key_added="a").copy()
    b = impute_conditional_mean(masked, "bulk_labels", reference=masked[train].copy(), key_added="b")
    np.testing.assert_allclose(a, b, rtol=1e-6)
    ref = masked[train].copy()
    del ref.obs["bulk_labels"]
    with pytest.raises(KeyError, match=r"reference\.obs"):
        impute_conditional_mean(masked, "bulk_labels", reference=ref)


def test_conditional_mean_unseen_label_falls_back_to_global(masked):
    labels = masked.obs["bulk_labels"].astype(str).to_numpy()
    lab = "CD14+ Monocyte"
    ref = (masked.obs["countsdiff_split"] == "train").to_numpy() & (labels != lab)
    with pytest.warns(UserWarning, match="absent from the reference"):
        out = impute_conditional_mean(masked, "bulk_labels", reference=ref, key_added="cm").copy()
    glob = impute_mean(masked, reference=ref, key_added="m")
    rows = labels == lab
    mask = masked.layers["countsdiff_mask"]
    assert (mask[rows]).any()
    np.testing.assert_allclose(out[rows][mask[rows]], glob[rows][mask[rows]], rtol=1e-6)
    assert masked.uns["countsdiff"]["cm"]["n_cells_unseen_label"] == int((mask[rows].any(1)).sum())


def test_errors(masked):
    with pytest.raises(KeyError, match="Available layers"):
        impute_zero(masked, mask_layer="nope")
    with pytest.raises(KeyError, match="Available layers"):
        impute_mean(masked, valid_layer="nope")
    with pytest.raises(ValueError, match="key_added"):
        impute_mean(masked, key_added="countsdiff_mask")
    masked.layers["mine"] = np.zeros(masked.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        impute_zero(masked, key_added="mine")
    assert not masked.layers["mine"].any()
    with pytest.raises(KeyError, match="Available columns"):
        impute_conditional_mean(masked, "cell_type")
    with pytest.raises(KeyError, match="lacks"):
        impute_mean(masked, reference=masked[:, :10].copy())
    with pytest.raises(ValueError, match="one entry per cell"):
        impute_mean(masked, reference=np.ones(3, dtype=bool))
    bad = masked.copy()
    bad.layers["countsdiff_mask"] = bad.layers["countsdiff_mask"].astype(np.int8) * 2
    with pytest.raises(ValueError, match="neither 0 nor 1"):
        impute_zero(bad)
    bad = masked.copy()
    bad.X = bad.X * -1
    with pytest.raises(ValueError, match="negative"):
        impute_mean(bad)
    assert "mean_imputed" not in masked.layers


@pytest.mark.filterwarnings("ignore:.*pairs have no observed reference entry")
def test_results_survive_h5ad_round_trip(masked, tmp_path):
    impute_zero(masked)
    impute_mean(masked, reference=("countsdiff_split", "train"), valid_layer="countsdiff_valid")
    impute_conditional_mean(masked, "bulk_labels", reference=masked.obs["countsdiff_split"] == "train")
    path = tmp_path / "a.h5ad"
    masked.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in ("countsdiff_valid", "countsdiff_mask", "mean_imputed", "conditional_mean_imputed"):
        np.testing.assert_array_equal(back.layers[key], masked.layers[key])
    rec = back.uns["countsdiff"]
    assert set(rec) >= {"mark_dropouts", "countsdiff_split", "countsdiff_mask", "mean_imputed", "zero_imputed"}
    assert rec["countsdiff_mask"]["method"] == "mcar"
