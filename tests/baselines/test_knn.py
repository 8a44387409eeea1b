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
    assert rec["distance"] == "observed"
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


@pytest.mark.parametrize("distance", ["observed", "zero_filled"])
@pytest.mark.parametrize("n_pcs", [30, None])
@pytest.mark.parametrize("use_reference", [False, True])
def test_held_out_truth_never_leaks(masked, distance, n_pcs, use_reference):
    # the held-out values of the query cells (and, without a reference, of every cell) are never read
    mask = masked.layers["countsdiff_mask"]
    reference = ("countsdiff_split", "train") if use_reference else None
    kwargs = {"reference": reference, "distance": distance, "n_pcs": n_pcs, "valid_layer": "countsdiff_valid"}
    out = impute_knn(masked, **kwargs).copy()
    rng = np.random.default_rng(0)
    for fill in (lambda n: np.full(n, 1000.0), lambda n: rng.poisson(50.0, n), lambda n: np.zeros(n)):
        poisoned = masked.copy()
        x = _dense(poisoned).copy()
        x[mask] = fill(int(mask.sum()))
        poisoned.X = sp.csr_matrix(x)
        np.testing.assert_array_equal(impute_knn(poisoned, **kwargs)[mask], out[mask])


def test_observed_distance_matches_brute_force():
    # exact masked distance (n_pcs=None): mean squared difference of the library-corrected log1p profiles over the
    # genes both cells observe; a cell is never its own neighbour (its distance to itself is 0)
    adata = _clustered(n_obs=80, n_vars=15, seed=1)
    mask_mcar(adata, rate=0.4, seed=2, valid_layer=None)
    out = impute_knn(adata, n_neighbors=5, n_pcs=None)
    x = _dense(adata).astype(np.float64)
    known = ~adata.layers["countsdiff_mask"]
    xo = np.where(known, x, 0.0)
    lib = xo.sum(1)
    target = np.median(lib[lib > 0])
    rel = xo / np.where(lib > 0, lib, 1)[:, None]
    gene_mean = np.array([rel[known[:, j] & (lib > 0), j].mean() for j in range(x.shape[1])])
    share = gene_mean / gene_mean.sum()
    frac = np.array([share[known[i]].sum() for i in range(x.shape[0])])
    prof = np.log1p(xo * (target * frac / np.where(lib > 0, lib, 1))[:, None])
    for i in np.flatnonzero((~known).any(1))[:20]:
        d = np.full(x.shape[0], np.inf)
        for n in range(x.shape[0]):
            both = known[i] & known[n]
            if n != i and lib[n] > 0 and both.any():
                d[n] = np.mean((prof[i, both] - prof[n, both]) ** 2)
        nb = np.argsort(d, kind="stable")[:5]
        est = np.array(
            [rel[nb][known[nb, j], j].mean() if known[nb, j].any() else gene_mean[j] for j in range(x.shape[1])]
        )
        expected = est * lib[i] / est[known[i]].sum()
        np.testing.assert_allclose(out[i, ~known[i]], expected[~known[i]], rtol=1e-5)


def test_masked_pca_projection_of_complete_cells_is_the_pca_transform():
    # with a complete reference and complete query genes the masked projection reduces to PCA.transform, so the
    # "observed" distance with n_pcs equals a Euclidean kNN in the ordinary PCA space of the reference
    from sklearn.decomposition import PCA

    from countsdiff_sc.baselines._knn import _project

    rng = np.random.default_rng(0)
    prof = np.log1p(rng.poisson(3.0, size=(60, 12)).astype(float))
    pca = PCA(n_components=4, random_state=0).fit(prof)
    full = np.ones(prof.shape, dtype=bool)
    np.testing.assert_allclose(_project(prof, full, pca.components_.T, pca.mean_), pca.transform(prof), atol=1e-10)
    # a cell missing genes is placed by least squares on the rest: exact when its profile lies in the PCA space
    low_rank = pca.inverse_transform(pca.transform(prof))
    part = full.copy()
    part[:, :3] = False
    np.testing.assert_allclose(
        _project(low_rank, part, pca.components_.T, pca.mean_), pca.transform(low_rank), atol=1e-4
    )


@pytest.mark.parametrize("n_pcs", [10, None])
def test_observed_distance_beats_zero_filled_at_high_mask_rate(n_pcs):
    adata = _clustered(n_obs=400, n_vars=60, seed=3)
    adata.obs["split"] = np.arange(adata.n_obs) < 300
    mask_mcar(adata, rate=0.6, seed=0, valid_layer=None, subset=~adata.obs["split"].to_numpy())
    mask = adata.layers["countsdiff_mask"]
    truth = _dense(adata)[mask]

    def rmse(distance):
        out = impute_knn(adata, reference="split", n_neighbors=10, n_pcs=n_pcs, distance=distance, key_added=distance)
        return np.sqrt(np.mean((out[mask] - truth) ** 2))

    assert rmse("observed") < rmse("zero_filled")


def test_neighbour_mean_matches_brute_force():
    # former behaviour (distance="zero_filled"); also checks that a cell is never its own neighbour
    adata = _clustered(n_obs=80, n_vars=15, seed=1)
    mask_mcar(adata, rate=0.3, seed=2, valid_layer=None)
    out = impute_knn(adata, n_neighbors=5, n_pcs=None, distance="zero_filled")
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
    with pytest.raises(ValueError, match="distance"):
        impute_knn(masked, distance="euclidean")
    with pytest.raises(KeyError, match="lacks"):
        impute_knn(masked, reference=masked[:, :10].copy())
    assert "knn_imputed" not in masked.layers
    # re-running with the same key replaces its own output
    impute_knn(masked)
    impute_knn(masked, n_neighbors=5)
    assert masked.uns["countsdiff"]["knn_imputed"]["n_neighbors"] == 5
