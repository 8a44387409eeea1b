"""Bootstrap resampling of cells, shared by the metric tables.

A resample is represented by a vector of multiplicities ``c`` (how often each cell was drawn), so that metrics
built from per-cell sums (pointwise errors, per-gene moments, kernel sums of the MMD) evaluate every resample with a
matrix product instead of copying data. Column 0 of the weight matrices built here is the original sample (all ones);
columns 1..B are the bootstrap resamples.
"""

from __future__ import annotations

import numpy as np


def bootstrap_weights(n: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities of ``n_bootstrap`` resamples of ``n`` cells drawn with replacement, after a column of ones.

    Parameters
    ----------
    n
        Number of cells.
    n_bootstrap
        Number of resamples ``B`` (0 gives only the original sample).
    rng
        Random generator.

    Returns
    -------
    Float array of shape ``(n, 1 + B)``; every column sums to ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> w = bootstrap_weights(5, 2, np.random.default_rng(0))
    >>> w.shape, w.sum(axis=0).tolist()
    ((5, 3), [5.0, 5.0, 5.0])
    """
    if n < 1:
        raise ValueError("Cannot bootstrap an empty set of cells.")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}.")
    w = np.ones((n, 1 + n_bootstrap))
    for b in range(n_bootstrap):
        w[:, 1 + b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return w


def weights_to_indices(w: np.ndarray) -> np.ndarray:
    """Row indices of a resample from its multiplicity vector (``np.repeat(arange(n), w)``)."""
    return np.repeat(np.arange(w.shape[0]), w.astype(np.int64))


def standard_error(values: np.ndarray) -> float:
    """Bootstrap standard error: the standard deviation (ddof=1) of the finite resample values, NaN if < 2."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan")
    return float(np.std(values, ddof=1))
