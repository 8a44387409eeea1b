from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from countsdiff_sc.pp import mark_dropouts, mask_mcar, mask_mnar


@pytest.fixture
def marked(pbmc: ad.AnnData) -> ad.AnnData:
    mark_dropouts(pbmc, groupby="bulk_labels")
    return pbmc


def _binomial_ok(k: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(k - n * p) <= z * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_mcar_rate_validity_and_no_side_effects(marked, rate):
    x_before = marked.X.copy()
    valid_before = marked.layers["countsdiff_valid"].copy()
    mask_mcar(marked, rate=rate, seed=3)
    mask = marked.layers["countsdiff_mask"]
    valid = marked.layers["countsdiff_valid"]
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == marked.shape
    assert not (mask & ~valid).any()
    n_valid, n_masked = int(valid.sum()), int(mask.sum())
    assert _binomial_ok(n_masked, n_valid, rate)
    rec = marked.uns["countsdiff"]["countsdiff_mask"]
    assert rec["method"] == "mcar" and rec["seed"] == 3 and rec["rate"] == rate
    assert rec["n_valid"] == n_valid and rec["n_masked"] == n_masked
    assert rec["realised_rate"] == pytest.approx(n_masked / n_valid)
    assert (marked.X != x_before).nnz == 0
    np.testing.assert_array_equal(marked.layers["countsdiff_valid"], valid_before)
    # independence of genes: per-gene rates scatter binomially around the rate (no gene is skipped)
    per_gene = mask.sum(0) / np.maximum(valid.sum(0), 1)
    big = valid.sum(0) > 200
    assert np.all(np.abs(per_gene[big] - rate) < 5 * np.sqrt(rate * (1 - rate) / valid.sum(0)[big]))


def test_mcar_reproducible_and_seed_dependent(marked):
    mask_mcar(marked, 0.3, seed=0, key_added="a")
    mask_mcar(marked, 0.3, seed=0, key_added="b")
    mask_mcar(marked, 0.3, seed=1, key_added="c")
    np.testing.assert_array_equal(marked.layers["a"], marked.layers["b"])
    assert (marked.layers["a"] != marked.layers["c"]).any()


def test_mcar_rate_zero_gives_empty_mask(marked):
    mask_mcar(marked, 0.0)
    assert not marked.layers["countsdiff_mask"].any()


@pytest.mark.parametrize(
    "make_subset",
    [
        lambda a: a.obs["bulk_labels"] == "CD14+ Monocyte",
        lambda a: (a.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy(),
        lambda a: ("bulk_labels", "CD14+ Monocyte"),
        lambda a: ("bulk_labels", ["CD14+ Monocyte"]),
        lambda a: "is_mono",
    ],
)
def test_subset_forms_are_respected(marked, make_subset):
    marked.obs["is_mono"] = marked.obs["bulk_labels"] == "CD14+ Monocyte"
    rows = marked.obs["is_mono"].to_numpy()
    mask_mcar(marked, 0.5, subset=make_subset(marked), seed=0)
    mask = marked.layers["countsdiff_mask"]
    assert not mask[~rows].any()
    assert _binomial_ok(int(mask.sum()), int(marked.layers["countsdiff_valid"][rows].sum()), 0.5)
    assert marked.uns["countsdiff"]["countsdiff_mask"]["subset"].endswith(f"({rows.sum()} cells)")


def test_subset_series_is_aligned_by_obs_names(marked):
    sel = marked.obs["bulk_labels"] == "CD14+ Monocyte"
    mask_mcar(marked, 0.5, subset=sel.iloc[::-1], seed=0, key_added="rev")
    mask_mcar(marked, 0.5, subset=sel, seed=0, key_added="fwd")
    np.testing.assert_array_equal(marked.layers["rev"], marked.layers["fwd"])


def test_mnar_counts_bias_and_validity(marked):
    rate = 0.25
    x = marked.X.toarray()
    valid = marked.layers["countsdiff_valid"]
    mask_mcar(marked, rate, seed=0, key_added="mcar")
    mask_mnar(marked, rate, "low", seed=0, key_added="low", pool_extra=70)
    mask_mnar(marked, rate, "high", seed=0, key_added="high", pool_extra=70)
    for key in ("low", "high"):
        mask = marked.layers[key]
        assert mask.dtype == bool and not (mask & ~valid).any()
        # exactly floor(rate * n_valid) per gene
        np.testing.assert_array_equal(mask.sum(0), np.floor(rate * valid.sum(0) + 1e-9).astype(int))
        rec = marked.uns["countsdiff"][key]
        assert rec["method"] == f"mnar_{key}" and rec["bias"] == key and rec["pool_extra"] == 70
        assert rec["realised_rate"] <= rate
    low = x[marked.layers["low"]].mean()
    mcar = x[marked.layers["mcar"]].mean()
    high = x[marked.layers["high"]].mean()
    assert low < mcar < high


def test_mnar_with_small_pool_takes_extremes(marked):
    x = marked.X.toarray()
    valid = marked.layers["countsdiff_valid"]
    mask_mnar(marked, 0.3, "low", pool_extra=0, key_added="low0")
    mask_mnar(marked, 0.3, "high", pool_extra=0, key_added="high0")
    low, high = marked.layers["low0"], marked.layers["high0"]
    for j in np.flatnonzero(low.sum(0) > 0):
        kept = valid[:, j] & ~low[:, j]
        assert x[low[:, j], j].max() <= x[kept, j].min()
    for j in np.flatnonzero(high.sum(0) > 0):
        kept = valid[:, j] & ~high[:, j]
        assert x[high[:, j], j].min() >= x[kept, j].max()


@pytest.mark.filterwarnings("ignore:.*MCAR-like")
def test_mnar_pool_extra_loosens_the_bias(marked):
    x = marked.X.toarray()
    mask_mnar(marked, 0.2, "high", pool_extra=0, key_added="tight")
    mask_mnar(marked, 0.2, "high", pool_extra=200, key_added="loose")
    assert x[marked.layers["tight"]].mean() > x[marked.layers["loose"]].mean()


@pytest.mark.filterwarnings("ignore:.*valid entries held out")
def test_mnar_ties_are_broken_at_random():
    x = np.zeros((100, 1), dtype=np.float32)  # all tied
    adata = ad.AnnData(X=x)
    mask_mnar(adata, 0.1, "low", pool_extra=0, seed=0, valid_layer=None, key_added="a")
    mask_mnar(adata, 0.1, "low", pool_extra=0, seed=1, valid_layer=None, key_added="b")
    a, b = adata.layers["a"][:, 0], adata.layers["b"][:, 0]
    assert a.sum() == b.sum() == 10
    assert (a != b).any()
    assert not a[:10].all()  # not simply the first k cells


def test_mnar_default_pool_on_small_data_warns_and_is_unbiased(marked):
    x = marked.X.toarray()
    with pytest.warns(UserWarning, match="MCAR-like"):
        mask_mnar(marked, 0.25, "low", seed=0)  # pool_extra=5000 > 700 cells: every gene's pool is complete
    assert marked.uns["countsdiff"]["countsdiff_mask"]["n_genes_unbiased_pool"] > 0
    mask_mcar(marked, 0.25, seed=0, key_added="mcar")
    assert x[marked.layers["countsdiff_mask"]].mean() == pytest.approx(x[marked.layers["mcar"]].mean(), rel=0.1)


@pytest.mark.filterwarnings("ignore:.*MCAR-like")
def test_mnar_reproducible_and_format_independent(marked):
    dense = ad.AnnData(X=marked.X.toarray(), obs=marked.obs, layers={"v": marked.layers["countsdiff_valid"]})
    csc = ad.AnnData(X=sp.csc_matrix(marked.X), obs=marked.obs, layers={"v": marked.layers["countsdiff_valid"]})
    for a in (marked, dense, csc):
        mask_mnar(a, 0.25, "low", seed=7, valid_layer="v" if a is not marked else "countsdiff_valid")
    np.testing.assert_array_equal(marked.layers["countsdiff_mask"], dense.layers["countsdiff_mask"])
    np.testing.assert_array_equal(marked.layers["countsdiff_mask"], csc.layers["countsdiff_mask"])
    mask_mnar(marked, 0.25, "low", seed=8, key_added="other")
    assert (marked.layers["other"] != marked.layers["countsdiff_mask"]).any()


@pytest.mark.filterwarnings("ignore:.*MCAR-like")
def test_mnar_subset_counts_within_subset(marked):
    rows = (marked.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    valid = marked.layers["countsdiff_valid"]
    mask_mnar(marked, 0.5, "low", subset=rows, seed=0)
    mask = marked.layers["countsdiff_mask"]
    assert not mask[~rows].any()
    np.testing.assert_array_equal(mask.sum(0), np.floor(0.5 * valid[rows].sum(0) + 1e-9).astype(int))


def test_missing_valid_layer(pbmc):
    with pytest.warns(UserWarning, match="mark_dropouts"):
        mask_mcar(pbmc, 0.5, seed=0)
    assert pbmc.layers["countsdiff_mask"].mean() == pytest.approx(0.5, abs=0.01)
    assert pbmc.uns["countsdiff"]["countsdiff_mask"]["valid_layer"].startswith("None")
    with pytest.raises(KeyError, match="Available layers"):
        mask_mcar(pbmc, 0.5, valid_layer="my_valid")
    with pytest.raises(KeyError, match="Available layers"):
        mask_mnar(pbmc, 0.5, valid_layer="my_valid")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_mcar(pbmc, 0.5, valid_layer=None)  # explicit opt-out: no warning


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_rates(marked, rate):
    with pytest.raises(ValueError, match="rate"):
        mask_mcar(marked, rate)
    with pytest.raises(ValueError, match="rate"):
        mask_mnar(marked, rate)


def test_bad_arguments(marked):
    with pytest.raises(ValueError, match="bias"):
        mask_mnar(marked, 0.2, bias="middle")
    with pytest.raises(ValueError, match="pool_extra"):
        mask_mnar(marked, 0.2, pool_extra=-1)
    with pytest.raises(ValueError, match="key_added"):
        mask_mcar(marked, 0.2, key_added="countsdiff_valid")
    with pytest.raises(KeyError, match="Available columns"):
        mask_mcar(marked, 0.2, subset=("split", "test"))
    with pytest.raises(ValueError, match="not a boolean column"):
        mask_mcar(marked, 0.2, subset="bulk_labels")
    with pytest.raises(ValueError, match="one entry per cell"):
        mask_mcar(marked, 0.2, subset=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="selects no cell"):
        mask_mcar(marked, 0.2, subset=("bulk_labels", "Neuron"))
    with pytest.raises(ValueError, match="index lacks"):
        mask_mcar(marked, 0.2, subset=pd.Series(True, index=[f"x{i}" for i in range(marked.n_obs)]))
    bad = marked.copy()
    bad.X = bad.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        mask_mnar(bad, 0.2)
    assert "countsdiff_mask" not in marked.layers


def test_fully_masked_cells_are_reported():
    x = np.zeros((50, 4), dtype=np.float32)
    x[:, 0] = 1
    valid = np.zeros_like(x, dtype=bool)
    valid[:, 0] = True  # one valid entry per cell
    adata = ad.AnnData(X=x, layers={"countsdiff_valid": valid})
    with pytest.warns(UserWarning, match="all of their valid entries"):
        mask_mcar(adata, 0.5, seed=0)
    n_full = int(adata.layers["countsdiff_mask"][:, 0].sum())
    assert adata.uns["countsdiff"]["countsdiff_mask"]["n_cells_fully_masked"] == n_full > 0


def test_user_layers_are_never_overwritten(marked):
    marked.layers["counts"] = marked.X.copy()
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        mask_mcar(marked, 0.2, key_added="counts")
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        mask_mnar(marked, 0.2, key_added="counts", pool_extra=10)
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        mark_dropouts(marked, groupby="bulk_labels", key_added="counts")
    assert sp.issparse(marked.layers["counts"])
    # re-running a countsdiff writer with the same key replaces its own output
    mask_mcar(marked, 0.2, seed=0)
    mask_mcar(marked, 0.3, seed=0)
    assert marked.uns["countsdiff"]["countsdiff_mask"]["rate"] == 0.3
    mark_dropouts(marked, groupby="bulk_labels")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "seed"),
    ({"seed": 2.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"key_added": ""}, "key_added"),
    ({"key_added": None}, "key_added"),
    ({"rate": float("nan")}, "rate"),
])
@pytest.mark.parametrize("fn", ["mask_mcar", "mask_mnar"])
def test_bad_mask_settings_are_refused(pbmc, fn, kwargs, match):
    adata = pbmc[:50].copy()
    with pytest.raises(ValueError, match=match):
        {"mask_mcar": mask_mcar, "mask_mnar": mask_mnar}[fn](adata, **{"rate": 0.2, "valid_layer": None, **kwargs})
    assert "countsdiff_mask" not in adata.layers


def test_empty_objects_and_layers_without_valid_entries_are_refused(pbmc):
    with pytest.raises(ValueError, match="no entries"):
        mask_mcar(pbmc[:0].copy(), rate=0.2, valid_layer=None)
    adata = pbmc[:30].copy()
    adata.layers["valid"] = np.zeros(adata.shape, dtype=bool)
    with pytest.raises(ValueError, match="marks no entry"):
        mask_mcar(adata, rate=0.2, valid_layer="valid")
    with pytest.raises(TypeError, match="AnnData"):
        mask_mnar(adata.X, rate=0.2)
