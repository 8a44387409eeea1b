"""Frechet distance (2-Wasserstein between Gaussians), the core of FID / scFID (Heusel et al., 2017; Rizvi et al.,
2025; CountsDiff paper, App. D.3.4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._bootstrap import weights_to_indices
from ._checks import check_finite, check_two_samples


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((s + s.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet distance between two Gaussians, ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    This is the squared 2-Wasserstein distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` (the FID formula of Heusel
    et al., 2017, used by scFID). The trace of the matrix square root is computed in a symmetric, numerically stable
    form: ``Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2) = sum_i sqrt(lambda_i)``, where ``S1^(1/2)`` comes
    from an eigendecomposition of S1 and ``lambda_i`` are the eigenvalues of the symmetric PSD matrix
    ``S1^(1/2) S2 S1^(1/2)``; tiny negative eigenvalues produced by round-off are clipped to 0, and so is a tiny
    negative final result.

    Parameters
    ----------
    mu1, mu2
        Mean vectors of shape ``(d,)``.
    sigma1, sigma2
        Covariance matrices of shape ``(d, d)`` (symmetric positive semi-definite).

    Returns
    -------
    The Frechet distance (a squared distance; 0 for identical Gaussians).

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
    for name, arr in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        check_finite(arr, name)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance_from_embeddings(x: Any, y: Any) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (sample mean, covariance with ddof=1).

    Parameters
    ----------
    x, y
        Embeddings of shape ``(n_x, d)`` and ``(n_y, d)``, each with at least 2 rows.

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
