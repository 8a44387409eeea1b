from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from countsdiff_sc.baselines import impute_knn, impute_mean
from countsdiff_sc.pp import mask_mcar


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def _clustered(n_obs: int = 300, n_vars: int = 40, n_groups: int = 3, seed: int = 0) -> ad.AnnData:
    """Poisson counts from well-separated group-specific means and varying library sizes."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n_obs)
    base = rng.gamma(0.7, 4.0, size=(n_groups, n_vars))
    size = rng.uniform(0.5, 2.0, n_obs)
    counts = rng.poisson(base[groups] * size[:, None]).astype(np.float32)
    obs = pd.DataFrame({"group": pd.Categorical(groups.astype(str))}, index=[f"c{i}" for i in range(n_obs)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))


def test_contract_observed_unchanged_masked_filled(masked):
    x_before = _dense(masked).copy()
    out = impute_knn(masked, n_neighbors=10, n_pcs=20)
    mask = masked.layers["countsdiff_mask"]
    assert out.dtype == np.float32 and out.shape == masked.shape
    assert masked.layers["knn_imputed"] is out
    np.testing.assert_array_equal(out[~mask], x_before[~mask])
    np.testing.assert_array_equal(_dense(masked), x_before)
    assert np.isfinite(out).all() and (out >= 0).all()
    assert out[mask].std() > 0  # not a constant fill
    rec = masked.uns["countsdiff"]["knn_imputed"]
    assert rec["method"] == "knn" and rec["n_neighbors"] == 10 and rec["n_pcs"] == 20
    assert rec["n_imputed"] == int(mask.sum())


def test_deterministic_and_reference_forms(masked):
    train = (masked.obs["countsdiff_split"] == "train").to_numpy()
    a = impute_knn(masked, reference=train, key_added="a").copy()
    a2 = impute_knn(masked, reference=train, key_added="a").copy()
    np.testing.assert_array_equal(a, a2)
    b = impute_knn(masked, reference=("countsdiff_split", "train"), key_added="b").copy()
    np.testing.assert_array_equal(a, b)
    # test cells are not train cells, so an external AnnData of the same cells gives the same answer
    c = impute_knn(masked, reference=masked[train].copy(), key_added="c").copy()
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_held_out_truth_never_leaks(masked):
    mask = masked.layers["countsdiff_mask"]
    out = impute_knn(masked).copy()
    poisoned = masked.copy()
    x = _dense(poisoned)
    x[mask] = 1000
    poisoned.X = sp.csr_matrix(x)
    np.testing.assert_array_equal(impute_knn(poisoned)[mask], out[mask])


def test_neighbour_mean_matches_brute_force():
    # also checks that a cell is never its own neighbour (it would be at distance 0 without PCA)
    adata = _clustered(n_obs=80, n_vars=15, seed=1)
    mask_mcar(adata, rate=0.3, seed=2, valid_layer=None)
    out = impute_knn(adata, n_neighbors=5, n_pcs=None)
    x = _dense(adata).astype(np.float64)
    mask = adata.layers["countsdiff_mask"]
    xo = np.where(mask, 0.0, x)
    lib = xo.sum(1)
    target = np.median(lib[lib > 0])
    emb = np.log1p(xo * (target / np.where(lib > 0, lib, 1))[:, None])
    rel = xo / np.where(lib > 0, lib, 1)[:, None]
    gene_mean = np.array([rel[~mask[:, j] & (lib > 0), j].mean() for j in range(x.shape[1])])
    for i in np.flatnonzero(mask.any(1))[:20]:
        d = ((emb - emb[i]) ** 2).sum(1)
        d[i] = np.inf
        d[lib == 0] = np.inf
        nb = np.argsort(d, kind="stable")[:5]
        prof = np.array(
            [rel[nb][~mask[nb, j], j].mean() if (~mask[nb, j]).any() else gene_mean[j] for j in range(x.shape[1])]
        )
        expected = prof * lib[i] / prof[~mask[i]].sum()
        np.testing.assert_allclose(out[i, mask[i]], expected[mask[i]], rtol=1e-5)


def test_beats_mean_on_clustered_data():
    adata = _clustered()
    mask_mcar(adata, rate=0.3, seed=0, valid_layer=None)
    mask = adata.layers["countsdiff_mask"]
    truth = _dense(adata)[mask]
    knn = impute_knn(adata, n_neighbors=10, n_pcs=10)[mask]
    mean = impute_mean(adata)[mask]
    rmse_knn = np.sqrt(np.mean((knn - truth) ** 2))
    rmse_mean = np.sqrt(np.mean((mean - truth) ** 2))
    assert rmse_knn < 0.8 * rmse_mean, (rmse_knn, rmse_mean)


def test_invalid_masked_entries_stay_observed(masked):
    mask_mcar(masked, 0.5, seed=1, valid_layer=None)
    mask, valid = masked.layers["countsdiff_mask"], masked.layers["countsdiff_valid"]
    out = impute_knn(masked, valid_layer="countsdiff_valid")
    x = _dense(masked)
    np.testing.assert_array_equal(out[mask & ~valid], x[mask & ~valid])
    assert masked.uns["countsdiff"]["knn_imputed"]["n_imputed"] == int((mask & valid).sum())


def test_gene_mean_fallback_and_small_reference():
    adata = _clustered(n_obs=40, n_vars=8, seed=2)
    mask = np.zeros(adata.shape, dtype=bool)
    mask[:, 0] = True  # no cell observes gene 0
    mask[0, 1] = True
    adata.layers["countsdiff_mask"] = mask
    with pytest.warns(UserWarning, match="no observed entry"):
        out = impute_knn(adata, n_neighbors=3, n_pcs=None)
    assert (out[:, 0] == 0).all()
    assert adata.uns["countsdiff"]["knn_imputed"]["n_gene_mean_fallbacks"] == adata.n_obs
    with pytest.warns(UserWarning, match="exceeds"), pytest.warns(UserWarning, match="no observed entry"):
        impute_knn(adata, reference=np.arange(40) < 3, n_neighbors=5, key_added="small")
    assert adata.uns["countsdiff"]["small"]["n_neighbors"] == 2


def test_errors(masked):
    with pytest.raises(KeyError, match="Available layers"):
        impute_knn(masked, mask_layer="nope")
    bad = masked.copy()
    bad.layers["countsdiff_mask"] = bad.layers["countsdiff_mask"].astype(np.int8) * 2
    with pytest.raises(ValueError, match="neither 0 nor 1"):
        impute_knn(bad)
    with pytest.raises(ValueError, match="key_added"):
        impute_knn(masked, key_added="countsdiff_mask")
    masked.layers["mine"] = np.zeros(masked.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        impute_knn(masked, key_added="mine")
    assert not masked.layers["mine"].any()
    for k in (0, 2.5, True):
        with pytest.raises(ValueError, match="n_neighbors"):
            impute_knn(masked, n_neighbors=k)
    with pytest.raises(ValueError, match="n_pcs"):
        impute_knn(masked, n_pcs=0)
    with pytest.raises(KeyError, match="lacks"):
        impute_knn(masked, reference=masked[:, :10].copy())
    assert "knn_imputed" not in masked.layers
    # re-running with the same key replaces its own output
    impute_knn(masked)
    impute_knn(masked, n_neighbors=5)
    assert masked.uns["countsdiff"]["knn_imputed"]["n_neighbors"] == 5
