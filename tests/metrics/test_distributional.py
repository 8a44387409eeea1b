from __future__ import annotations

from math import lcm

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import scipy.stats
from scipy.spatial.distance import pdist

from countsdiff_sc.metrics import (
    energy_distance,
    frechet_distance,
    frechet_distance_from_embeddings,
    median_heuristic_bandwidth,
    mmd,
    swd,
)
from countsdiff_sc.metrics._bootstrap import bootstrap_weights, weights_to_indices
from countsdiff_sc.metrics._distributional import (
    energy_distance_resamples,
    mmd_weighted,
    random_directions,
    swd_weighted,
)

MULTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def naive_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Full-matrix unbiased MMD^2 with the averaged 5-bandwidth RBF kernel (reference implementation)."""

    def gram(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.mean([np.exp(-d2 / (2 * (m * sigma) ** 2)) for m in MULTS], axis=0)

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    m, n = len(x), len(y)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


def exact_w2_1d(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W2 between two 1-D empirical distributions: replicate both to lcm(n, m) atoms and match sorted values."""
    k = lcm(len(x), len(y))
    xs = np.repeat(np.sort(x), k // len(x))
    ys = np.repeat(np.sort(y), k // len(y))
    return float(np.sqrt(np.mean((xs - ys) ** 2)))


# ---------------------------------------------------------------------------------------------------------- energy
def test_energy_distance_equals_scipy_with_mask(counts, rng):
    imputed = counts + rng.poisson(1.0, counts.shape)
    mask = rng.random(counts.shape) < 0.3
    expected = scipy.stats.energy_distance(counts[mask], imputed[mask])
    assert energy_distance(counts, imputed, mask) == pytest.approx(expected, rel=1e-12)
    assert energy_distance(sp.csr_matrix(counts), sp.csr_matrix(imputed), mask) == pytest.approx(expected, rel=1e-12)


def test_energy_distance_unequal_pools_and_zero(rng):
    u, v = rng.normal(size=37), rng.normal(1.0, 2.0, size=55)
    assert energy_distance(u, v) == pytest.approx(scipy.stats.energy_distance(u, v), rel=1e-12)
    assert energy_distance(u, u.copy()) == 0.0
    with pytest.raises(ValueError, match="shape"):
        energy_distance(np.zeros((3, 2)), np.zeros((3, 3)), np.ones((3, 2), bool))


# ---------------------------------------------------------------------------------------------------------- frechet
def test_frechet_scalar_case():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance(0.5, 4.0, -1.0, 9.0) == pytest.approx(1.5**2 + (2.0 - 3.0) ** 2)


def test_frechet_diagonal_and_commuting_cases(rng):
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # same eigenvectors -> commuting covariances
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_general_case_matches_sqrtm(rng):
    g1, g2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = g1 @ g1.T + 0.1 * np.eye(5), g2 @ g2.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_frechet_identical_and_singular_covariances(rng):
    g = rng.normal(size=(4, 2))
    s = g @ g.T  # rank 2: eigenvalues ~0 must be clipped, not produce NaN
    assert frechet_distance(np.zeros(4), s, np.zeros(4), s) == pytest.approx(0.0, abs=1e-10)


def test_frechet_from_samples_close_to_analytic(rng):
    d = 4
    s1 = np.diag([1.0, 2.0, 0.5, 1.5])
    s2 = np.diag([2.0, 1.0, 0.5, 3.0])
    mu2 = np.array([1.0, 0.0, -0.5, 0.0])
    analytic = frechet_distance(np.zeros(d), s1, mu2, s2)
    x = rng.multivariate_normal(np.zeros(d), s1, size=100_000)
    y = rng.multivariate_normal(mu2, s2, size=100_000)
    assert frechet_distance_from_embeddings(x, y) == pytest.approx(analytic, rel=0.05)
    assert frechet_distance_from_embeddings(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_shape_errors():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="features"):
        frechet_distance_from_embeddings(np.zeros((5, 2)), np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------------------------- swd
def test_swd_1d_equals_exact_w2_equal_sizes(rng):
    x, y = rng.normal(size=(200, 1)), rng.gamma(2.0, size=(200, 1))
    expected = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert swd(x, y, n_projections=3, dtype="float64") == pytest.approx(expected, rel=1e-12)


def test_swd_1d_equals_exact_w2_unequal_sizes(rng):
    x, y = rng.normal(size=(30, 1)), rng.exponential(size=(45, 1))
    assert swd(x, y, n_projections=5, dtype="float64") == pytest.approx(exact_w2_1d(x[:, 0], y[:, 0]), rel=1e-12)
    x, y = rng.normal(size=(7, 1)), rng.normal(size=(11, 1))  # coprime sizes
    assert swd(x, y, n_projections=1, dtype="float64") == pytest.approx(exact_w2_1d(x[:, 0], y[:, 0]), rel=1e-12)


def test_swd_of_a_translation_is_known_exactly(rng):
    x = rng.normal(size=(100, 6))
    shift = rng.normal(size=6)
    theta = random_directions(6, 50, seed=3)
    expected = np.sqrt(np.mean((shift @ theta) ** 2))
    assert swd(x, x + shift, n_projections=50, seed=3, dtype="float64") == pytest.approx(expected, rel=1e-9)


def test_swd_properties(rng, counts):
    assert swd(counts, counts.copy()) == 0.0
    perm = rng.permutation(counts.shape[0])
    other = counts + 1.0
    assert swd(counts[perm], other) == pytest.approx(swd(counts, other), rel=1e-6)
    assert swd(counts, other, seed=1) == swd(counts, other, seed=1)
    assert swd(sp.csr_matrix(counts), other) == pytest.approx(swd(counts, other), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------- mmd
def test_median_heuristic_matches_pdist(rng):
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3))
    assert median_heuristic_bandwidth(x, y) == pytest.approx(np.median(pdist(np.vstack([x, y]))), rel=1e-10)


@pytest.mark.parametrize("block_size", [7, 64, 2048])
def test_mmd_blockwise_equals_naive(rng, block_size):
    x, y = rng.normal(size=(50, 4)), rng.normal(0.3, 1.2, size=(37, 4))
    sigma = median_heuristic_bandwidth(x, y)
    expected = naive_mmd2(x, y, sigma)
    assert mmd(x, y, block_size=block_size, dtype="float64") == pytest.approx(expected, rel=1e-10)
    assert mmd(x, y, block_size=block_size) == pytest.approx(expected, rel=1e-4)
    assert mmd(x, y, bandwidth=2.0, dtype="float64") == pytest.approx(naive_mmd2(x, y, 2.0), rel=1e-10)


def test_mmd_near_zero_for_equal_distributions(rng):
    x, y = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert abs(mmd(x, y)) < 0.01
    assert abs(mmd(x, x.copy())) < 0.01  # the U-statistic is slightly negative for identical samples


def test_mmd_grows_with_mean_shift(rng):
    x, noise = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    sigma = median_heuristic_bandwidth(x, noise)
    values = [mmd(x, noise + s, bandwidth=sigma) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert np.all(np.diff(values) > 0)


def test_mmd_invariant_to_row_order(rng, counts):
    other = counts + rng.poisson(0.5, counts.shape)
    perm_x, perm_y = rng.permutation(counts.shape[0]), rng.permutation(counts.shape[0])
    a = mmd(counts, other, dtype="float64", block_size=16)
    b = mmd(counts[perm_x], other[perm_y], dtype="float64", block_size=16)
    assert a == pytest.approx(b, rel=1e-10)


def test_mmd_input_errors():
    with pytest.raises(ValueError, match="features"):
        mmd(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="multipliers"):
        mmd(np.zeros((5, 2)), np.ones((5, 2)), multipliers=())


# ---------------------------------------------------------------------------------------------------------- bootstrap
def test_weighted_mmd_and_swd_equal_explicit_resamples(rng):
    x, y = rng.normal(size=(40, 3)), rng.normal(0.5, 1.0, size=(30, 3))
    wx = np.stack([np.ones(40), np.bincount(rng.integers(0, 40, 40), minlength=40)], axis=1)
    wy = np.stack([np.ones(30), np.bincount(rng.integers(0, 30, 30), minlength=30)], axis=1)
    vals, sigma = mmd_weighted(x, y, wx, wy, dtype="float64", block_size=9)
    xr, yr = x[weights_to_indices(wx[:, 1])], y[weights_to_indices(wy[:, 1])]
    assert vals[0] == pytest.approx(naive_mmd2(x, y, sigma), rel=1e-10)
    assert vals[1] == pytest.approx(naive_mmd2(xr, yr, sigma), rel=1e-8)
    sw = swd_weighted(x, y, wx, wy, n_projections=20, dtype="float64")
    assert sw[1] == pytest.approx(swd(xr, yr, n_projections=20, dtype="float64"), rel=1e-10)


def test_energy_distance_resamples_equal_scipy_with_multiplicities(rng):
    per_cell = rng.integers(0, 6, size=40)
    u = rng.poisson(3.0, per_cell.sum()).astype(float)
    v = rng.poisson(3.5, per_cell.sum()).astype(float)
    cell = np.repeat(np.arange(40), per_cell)
    w = bootstrap_weights(40, 3, rng)
    out = energy_distance_resamples(u, v, cell, cell, w)
    assert out[0] == pytest.approx(scipy.stats.energy_distance(u, v), rel=1e-12)
    for k in range(1, 4):
        keep_u, keep_v = np.repeat(u, w[cell, k].astype(int)), np.repeat(v, w[cell, k].astype(int))
        assert out[k] == pytest.approx(scipy.stats.energy_distance(keep_u, keep_v), rel=1e-10)
