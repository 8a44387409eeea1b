"""Frechet distance (2-Wasserstein between Gaussians), the core of FID / scFID (Heusel et al., 2017; Rizvi et al.,
2025; CountsDiff paper, App. D.3.4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._bootstrap import weights_to_indices
from ._checks import check_finite, check_two_samples
from ._docs import fill_doc

#: Relative tolerance of the covariance checks: asymmetry and negative eigenvalues up to ``PSD_RTOL`` times the
#: largest eigenvalue magnitude are round-off (clipped); beyond it the matrix is not a covariance and is refused.
PSD_RTOL = 1e-6


def _check_covariance(s: np.ndarray, name: str) -> np.ndarray:
    """The symmetric part of ``s``, refusing a matrix that is not symmetric or not positive semi-definite beyond
    round-off (a Frechet distance of such a matrix is meaningless: clipped to 0, it would report identical
    Gaussians)."""
    top = float(np.max(np.abs(s))) if s.size else 0.0
    asym = float(np.max(np.abs(s - s.T))) if s.size else 0.0
    if asym > PSD_RTOL * max(top, np.finfo(float).tiny):
        raise ValueError(f"{name} is not symmetric (largest |S - S^T| entry {asym:.3g}, largest entry {top:.3g}); a "
                         "covariance matrix must be symmetric. Pass a covariance, e.g. np.cov(z, rowvar=False).")
    sym = (s + s.T) / 2.0
    vals = np.linalg.eigvalsh(sym)
    scale = float(np.max(np.abs(vals))) if vals.size else 0.0
    if vals.size and vals[0] < -PSD_RTOL * max(scale, np.finfo(float).tiny):
        raise ValueError(f"{name} is not positive semi-definite: its smallest eigenvalue is {vals[0]:.4g} (largest "
                         f"magnitude {scale:.4g}); a covariance matrix has no negative eigenvalues. Pass a covariance, "
                         "e.g. np.cov(z, rowvar=False).")
    return sym


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(s)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between two Gaussians, ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    This is the squared 2-Wasserstein distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` (the FID formula of Heusel
    et al., 2017, used by scFID). The trace of the matrix square root is computed in a symmetric, numerically stable
    form: ``Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2) = sum_i sqrt(lambda_i)``, where ``S1^(1/2)`` comes
    from an eigendecomposition of S1 and ``lambda_i`` are the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)``; tiny negative eigenvalues produced by round-off are clipped to 0, and so is a tiny
    negative final result.

    Covariances that are not symmetric positive semi-definite beyond round-off (relative tolerance
    :data:`PSD_RTOL`) are refused with a ValueError rather than projected: such a matrix is not a covariance, and
    projecting it would hide the mistake that produced it (e.g. a precision or a difference of covariances).

    Parameters
    ----------
    mu1, mu2
        Mean vectors of shape ``(d,)``.
    sigma1, sigma2
        Covariance matrices of shape ``(d, d)`` (symmetric positive semi-definite).

    Returns
    -------
    The Frechet distance (a squared distance; 0 for identical Gaussians).

    Raises
    ------
    ValueError
        Inconsistent shapes, ``d = 0``, non-finite values, or a covariance that is not symmetric positive
        semi-definite.

    Examples
    --------
    >>> import numpy as np
    >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
    4.0
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = m1.shape[0]
    if m1.ndim != 1 or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"Inconsistent shapes: mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, sigma2 {s2.shape}; expected "
            "mu of shape (d,) and sigma of shape (d, d) with the same d."
        )
    if d == 0:
        raise ValueError("mu1 and mu2 have 0 dimensions; there is nothing to compare.")
    for name, arr in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        check_finite(arr, name)
    s1, s2 = _check_covariance(s1, "sigma1"), _check_covariance(s2, "sigma2")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


@fill_doc
def frechet_distance_from_embeddings(x: Any, y: Any) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (sample mean, covariance with ddof=1).

    Parameters
    ----------
    %(two_samples)s
        Embeddings, each with at least 2 rows.

    Returns
    -------
    :func:`frechet_distance` of the fitted Gaussians.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(100, 3))
    >>> round(frechet_distance_from_embeddings(z, z), 10)
    0.0
    """
    a, b = check_two_samples(x, y, min_rows=2)
    return frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))


def frechet_weighted(x: np.ndarray, y: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Frechet distance of fitted Gaussians for every column of the multiplicity matrices (bootstrap helper)."""
    out = np.empty(wx.shape[1])
    for k in range(wx.shape[1]):
        a = x[weights_to_indices(wx[:, k])]
        b = y[weights_to_indices(wy[:, k])]
        out[k] = frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))
    return out
