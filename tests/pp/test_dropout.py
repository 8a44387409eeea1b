from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import countsdiff_sc as cds
from countsdiff_sc.pp import mark_dropouts


def brute_force_valid(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Literal per-group, per-column, per-element transcription of scIDPMs Algorithm 1 (True = not nulled)."""
    valid = np.ones(x.shape, dtype=bool)
    for g in np.unique(labels):
        rows = np.flatnonzero(labels == g)
        for j in range(x.shape[1]):
            column = x[rows, j]
            if np.any(column != 0):
                for i, value in zip(rows, column, strict=True):
                    if value == 0:
                        valid[i, j] = False
    return valid


def _toy() -> ad.AnnData:
    x = np.array([[0, 1, 0], [2, 0, 0], [0, 0, 0], [0, 3, 0]], dtype=np.float32)
    obs = pd.DataFrame({"g": ["A", "A", "B", "B"]}, index=[f"c{i}" for i in range(4)])
    return ad.AnnData(X=x, obs=obs)


def test_toy_example_by_hand():
    adata = _toy()
    mark_dropouts(adata, groupby="g", preset="paper")
    expected = np.array([[0, 1, 1], [1, 0, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(adata.layers["countsdiff_valid"], expected)
    rec = adata.uns["countsdiff"]["mark_dropouts"]
    assert rec["n_suspected_dropouts"] == 3
    assert rec["fraction_valid"] == pytest.approx(9 / 12)
    assert rec["n_groups"] == 2


def test_matches_brute_force_on_real_data(pbmc):
    x_before = pbmc.X.copy()
    mark_dropouts(pbmc, groupby="bulk_labels", preset="paper")
    valid = pbmc.layers["countsdiff_valid"]
    assert isinstance(valid, np.ndarray) and valid.dtype == bool and valid.shape == pbmc.shape
    expected = brute_force_valid(pbmc.X.toarray(), pbmc.obs["bulk_labels"].to_numpy())
    np.testing.assert_array_equal(valid, expected)
    # non-zero entries are always valid; some zeros are suspected dropouts, some are true zeros
    nonzero = pbmc.X.toarray() != 0
    assert valid[nonzero].all()
    assert (~valid).any() and valid[~nonzero].any()
    assert pbmc.uns["countsdiff"]["mark_dropouts"]["fraction_valid"] == pytest.approx(valid.mean())
    assert sp.issparse(pbmc.X) and (pbmc.X != x_before).nnz == 0


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "int_dense"])
def test_formats_and_layer_give_same_result(pbmc, fmt):
    ref = pbmc.copy()
    mark_dropouts(ref, groupby="bulk_labels", preset="paper")
    dense = pbmc.X.toarray()
    converted = {
        "dense": dense.copy(),
        "csr": sp.csr_matrix(dense),
        "csc": sp.csc_matrix(dense),
        "int_dense": dense.astype(np.int64),
    }[fmt]
    adata = ad.AnnData(X=np.zeros_like(dense), obs=pbmc.obs.copy(), layers={"counts": converted})
    mark_dropouts(adata, groupby="bulk_labels", layer="counts", key_added="v", preset="paper")
    np.testing.assert_array_equal(adata.layers["v"], ref.layers["countsdiff_valid"])
    after = adata.layers["counts"]
    assert type(after) is type(converted)
    np.testing.assert_array_equal(after.toarray() if sp.issparse(after) else after, dense)
    assert not adata.X.any()


def test_explicit_zeros_in_sparse_are_zeros():
    x = sp.csr_matrix((np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 2, 2])), shape=(2, 2))
    assert x.nnz == 2  # an explicitly stored zero at (0, 1)
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"g": ["a", "a"]}, index=["c0", "c1"]))
    mark_dropouts(adata, groupby="g", preset="paper")
    np.testing.assert_array_equal(adata.layers["countsdiff_valid"], [[True, True], [False, True]])


def test_copy_returns_new_object(pbmc):
    out = mark_dropouts(pbmc, groupby="bulk_labels", copy=True)
    assert isinstance(out, ad.AnnData)
    assert "countsdiff_valid" in out.layers and "countsdiff_valid" not in pbmc.layers
    assert mark_dropouts(pbmc, groupby="bulk_labels") is None


def test_single_cell_group_has_no_dropouts():
    adata = _toy()
    adata.obs["g"] = ["A", "B", "C", "D"]
    mark_dropouts(adata, groupby="g", preset="paper")
    assert adata.layers["countsdiff_valid"].all()


def test_groupby_none_clusters_and_warns(pbmc):
    sub = pbmc[:300].copy()
    x_before = sub.X.toarray()
    with pytest.warns(UserWarning, match="clustered"):
        mark_dropouts(sub, resolution=0.5, seed=1, cluster_key_added="clusters", preset="paper")
    labels = sub.obs["clusters"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert 1 < labels.nunique() < 300
    np.testing.assert_array_equal(sub.layers["countsdiff_valid"], brute_force_valid(x_before, labels.to_numpy()))
    np.testing.assert_array_equal(sub.X.toarray(), x_before)
    rec = sub.uns["countsdiff"]["mark_dropouts"]
    assert rec["clustered"] is True and rec["groupby"] == "clusters" and rec["seed"] == 1
    # same seed -> same clusters
    again = pbmc[:300].copy()
    with pytest.warns(UserWarning):
        mark_dropouts(again, resolution=0.5, seed=1, cluster_key_added="clusters", preset="paper")
    np.testing.assert_array_equal(again.obs["clusters"].to_numpy(), labels.to_numpy())


def test_errors(pbmc):
    with pytest.raises(KeyError, match="bulk_labels"):
        mark_dropouts(pbmc, groupby="cell_type")
    with pytest.raises(KeyError, match="Available layers"):
        mark_dropouts(pbmc, groupby="bulk_labels", layer="counts")
    with pytest.raises(ValueError, match="key_added"):
        mark_dropouts(pbmc, groupby="bulk_labels", layer="x", key_added="x")
    neg = _toy()
    neg.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        mark_dropouts(neg, groupby="g")
    frac = _toy()
    frac.X[0, 1] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        mark_dropouts(frac, groupby="g")
    nan_labels = _toy()
    nan_labels.obs["g"] = ["A", None, "B", "B"]
    with pytest.raises(ValueError, match="missing labels"):
        mark_dropouts(nan_labels, groupby="g")
    with pytest.raises(ValueError, match="resolution"):
        mark_dropouts(_toy(), resolution=-1.0)


# ------------------------------------------------------------------ min_expected: zeros sampling does not explain


def brute_force_expected(x: np.ndarray, labels: np.ndarray, min_expected: float) -> np.ndarray:
    """Literal loop: a zero is suspected when L_c * S_gk / T_k >= min_expected (docstring of mark_dropouts)."""
    valid = np.ones(x.shape, dtype=bool)
    for g in np.unique(labels):
        rows = np.flatnonzero(labels == g)
        gene_sums = x[rows].sum(axis=0)
        total = gene_sums.sum()
        for i in rows:
            for j in range(x.shape[1]):
                if x[i, j] == 0 and total > 0 and x[i].sum() * gene_sums[j] / total >= min_expected:
                    valid[i, j] = False
    return valid


def test_min_expected_toy_by_hand():
    x = np.array([[0, 10, 0], [10, 0, 2], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"g": ["A", "A", "B", "B"]}, index=[f"c{i}" for i in range(4)]))
    mark_dropouts(adata, groupby="g", min_expected=3)
    # group A: S = (10, 10, 2), T = 22. c0 (L = 10): gene 0 expects 4.55 -> suspected; gene 2 expects 0.91 -> valid.
    # c1 (L = 12): gene 1 expects 5.45 -> suspected. Group B: c2 is empty (expects 0 everywhere), c3 has no zero of
    # an expressed gene. Algorithm 1 would also mark c0's gene 2 and c2's gene 0.
    expected = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(adata.layers["countsdiff_valid"], expected)
    assert adata.uns["countsdiff"]["mark_dropouts"]["min_expected"] == 3.0
    mark_dropouts(adata, groupby="g", preset="paper")
    assert adata.uns["countsdiff"]["mark_dropouts"]["min_expected"] == "None"  # record_params: h5ad-safe None
    assert (~adata.layers["countsdiff_valid"]).sum() == 4


@pytest.mark.parametrize("min_expected", [0.5, 3.0])
def test_min_expected_matches_brute_force_and_is_a_subset_of_algorithm_1(pbmc, min_expected):
    sub = pbmc[:200].copy()
    x = sub.X.toarray()
    labels = sub.obs["bulk_labels"].to_numpy()
    mark_dropouts(sub, groupby="bulk_labels", min_expected=min_expected)
    valid = sub.layers["countsdiff_valid"]
    np.testing.assert_array_equal(valid, brute_force_expected(x.astype(np.float64), labels, min_expected))
    # every zero it suspects, Algorithm 1 suspects too; it suspects fewer
    alg1 = brute_force_valid(x, labels)
    assert not (~valid & alg1).any()
    assert (~valid).sum() < (~alg1).sum()
    # a higher threshold suspects a subset
    stricter = mark_dropouts(sub, groupby="bulk_labels", min_expected=2 * min_expected, copy=True)
    assert not (~stricter.layers["countsdiff_valid"] & valid).any()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "3", True])
def test_min_expected_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="min_expected"):
        mark_dropouts(_toy(), groupby="g", min_expected=bad)


def test_default_rule_is_the_expected_count_test_and_the_paper_preset_is_algorithm_1():
    pbmc = cds.datasets.pbmc68k_reduced_counts()
    default = mark_dropouts(pbmc, groupby="bulk_labels", copy=True)
    paper = mark_dropouts(pbmc, groupby="bulk_labels", preset="paper", copy=True)
    explicit = mark_dropouts(pbmc, groupby="bulk_labels", min_expected=3, copy=True)
    np.testing.assert_array_equal(default.layers["countsdiff_valid"], explicit.layers["countsdiff_valid"])
    algorithm1 = mark_dropouts(pbmc, groupby="bulk_labels", min_expected=None, copy=True)
    np.testing.assert_array_equal(paper.layers["countsdiff_valid"], algorithm1.layers["countsdiff_valid"])
    zeros = pbmc.X.toarray() == 0
    assert (~default.layers["countsdiff_valid"]).sum() < 0.01 * zeros.sum()  # few zeros suspected
    assert (~paper.layers["countsdiff_valid"]).sum() > 0.8 * zeros.sum()  # Algorithm 1: most of them
    assert default.uns["countsdiff"]["mark_dropouts"]["preset"] == "default"
    with pytest.raises(ValueError, match="preset"):
        mark_dropouts(pbmc, groupby="bulk_labels", preset="fast", copy=True)
    with pytest.raises(ValueError, match="n_pcs"):
        mark_dropouts(pbmc, n_pcs=0, copy=True)
