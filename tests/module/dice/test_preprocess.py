"""DICE preprocessing: the one projection (transform, project) and the reference fit (PCA, elbow, PPCA noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from countsdiff_sc._utils import log_normalize, to_dense
from countsdiff_sc.module.dice import DICEProjection, elbow_rank, fit_projection, project, transform

pytestmark = pytest.mark.usefixtures("one_thread")


def counts(n=300, g=40, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 2.0, size=(1, g)) * rng.uniform(0.5, 2.0, size=(n, 1))
    x = rng.poisson(rates).astype(np.float32)
    x[0] = 0  # an empty cell must stay finite
    return x


def project_float64(x, proj: DICEProjection, **settings) -> np.ndarray:
    """The library's projection in float64 on a dense or sparse matrix."""
    stats = [torch.from_numpy(a) for a in (proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings)]
    return project(torch.from_numpy(to_dense(x, np.float64)), *stats, **settings).numpy()


def numpy_reference(x, proj: DICEProjection, scale: bool, max_value: float | None) -> np.ndarray:
    """The pipeline written out in numpy, on the shared log-normalisation helper."""
    z = log_normalize(x, 1e4)
    if scale:
        z = (z - proj.gene_mean) / proj.gene_std
        if max_value is not None:
            z = np.clip(z, -max_value, max_value)
    return (z - proj.pca_mean) @ proj.loadings


# ---------------------------------------------------------------------- the one projection
def test_transform_normalises_like_the_shared_helper():
    x = counts()
    z = transform(torch.from_numpy(x), torch.zeros(x.shape[1], dtype=torch.float64),
                  torch.ones(x.shape[1], dtype=torch.float64), scale=False)
    assert z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), log_normalize(x, 1e4), rtol=1e-13, atol=0)
    assert np.all(z.numpy()[0] == 0)  # the empty cell


@pytest.mark.parametrize(("scale", "max_value"), [(True, 10.0), (True, 1.0), (False, None)])
def test_projection_matches_the_numpy_pipeline(scale, max_value):
    x = counts()
    proj = fit_projection(x, n_latent=4, scale=scale, max_value=max_value)
    ours = project_float64(x, proj, scale=scale, max_value=max_value)
    np.testing.assert_allclose(ours, numpy_reference(x, proj, scale, max_value), rtol=1e-10, atol=1e-10)
    # PCA scores of the reference are centred, with variances = eigenvalues (decreasing)
    np.testing.assert_allclose(ours.mean(0), 0, atol=1e-10)
    var = ours.var(0, ddof=1)
    assert np.all(np.diff(var) <= 1e-12)
    np.testing.assert_allclose(var, (proj.singular_values[:4] ** 2) / (x.shape[0] - 1), rtol=1e-8)
    assert proj.latent_scale == pytest.approx(math.sqrt(var.mean()), rel=1e-8)


def test_sparse_and_dense_references_give_the_same_fit():
    x = counts()
    dense, sparse = fit_projection(x, n_latent=4), fit_projection(sp.csr_matrix(x), n_latent=4)
    for name in ("gene_mean", "gene_std", "pca_mean", "loadings", "singular_values"):
        np.testing.assert_allclose(getattr(sparse, name), getattr(dense, name), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- the reference fit
def test_elbow_rank():
    s = np.array([50.0, 40.0, 31.0, 30.0, 6.0, 5.5, 5.0, 4.8, 4.5, 4.2, 4.0, 3.9])
    assert elbow_rank(s) == 5  # four large values, then the knee (the first small one) is kept too
    # brute-force definition: farthest point below the chord of the normalised curve
    x = np.linspace(0, 1, s.size)
    y = (s - s[-1]) / (s[0] - s[-1])
    assert elbow_rank(s) == int(np.argmax(1 - x - y)) + 1
    assert elbow_rank(np.array([10.0, 1.0, 0.9, 0.8]), min_rank=2) == 2
    assert elbow_rank(np.ones(10)) == 2


def test_projection_matches_scanpy_pca(pbmc):
    import scanpy as sc

    adata = pbmc.copy()
    proj = fit_projection(adata.X, n_latent=8)
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.scale(ref, max_value=10)
    sc.pp.pca(ref, n_comps=8, svd_solver="full")
    ours = project_float64(adata.X, proj)
    for j in range(8):
        corr = np.corrcoef(ours[:, j], ref.obsm["X_pca"][:, j])[0, 1]
        assert abs(corr) > 0.999, (j, corr)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref.obsm["X_pca"]), atol=2e-2 * np.abs(ours).max())
    np.testing.assert_allclose(proj.loadings.T @ proj.loadings, np.eye(8), atol=1e-10)


def test_residual_var_is_the_ppca_noise_variance(pbmc):
    """sigma^2 = mean of the discarded eigenvalues of the scaled genes' covariance (Tipping & Bishop 1999, Eq. 8)."""
    x = pbmc.X[:, :120]
    proj = fit_projection(x, n_latent=7, max_components=20)
    hv = np.flatnonzero(proj.highly_variable)
    z = np.log1p(np.asarray(x.toarray(), dtype=np.float64) / np.asarray(x.sum(1)) * 1e4)
    z = np.clip((z - z.mean(0)) / np.where(z.std(0, ddof=1) > 0, z.std(0, ddof=1), 1.0), -10, 10)[:, hv]
    evals = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
    np.testing.assert_allclose(proj.residual_var, evals[7:].mean(), rtol=1e-8)


def test_residual_var_recovers_isotropic_noise():
    """A rank-3 signal plus N(0, 0.3) noise in 200 unscaled dimensions: the estimate is 0.3 within sampling error."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(200, 3)))[0]
    x = rng.normal(scale=[6.0, 4.0, 3.0], size=(4000, 3)) @ basis.T + rng.normal(scale=np.sqrt(0.3), size=(4000, 200))
    proj = fit_projection(x, log_normalize=False, scale=False, n_latent=3)
    assert abs(proj.residual_var - 0.3) < 0.01, proj.residual_var
    # no dimension left out: the variance is unknown
    assert np.isnan(fit_projection(x[:, :3], log_normalize=False, scale=False, n_latent=3).residual_var)
