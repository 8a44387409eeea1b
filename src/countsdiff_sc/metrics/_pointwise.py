"""Pointwise imputation metrics on held-out entries (CountsDiff paper, Sec. 4.3 and App. D.3.3).

All functions take ``(true, imputed, mask=None)``: two matrices of the same ``(n_cells, n_genes)`` shape (dense
arrays or scipy sparse matrices) and an optional boolean mask selecting the held-out entries (``None`` = every
entry). The matrices are processed in row chunks, so sparse inputs are never densified as a whole.

Definitions (``e = imputed - true`` over the held-out entries, pooled over cells):

* ``rmse = sqrt(mean(e^2))``, ``mae = mean(|e|)``, ``bias = mean(e)``,
* ``r2 = 1 - sum(e^2) / sum((true - mean(true))^2)`` (the pooled coefficient of determination, as
  :func:`sklearn.metrics.r2_score` on the flattened held-out values); NaN with a ``RuntimeWarning`` when the true
  held-out values are all equal (a single held-out entry included), since R^2 is then undefined,
* ``spearman`` / ``pearson``: the correlation between a cell's true and imputed held-out values, computed per cell and
  averaged over cells (the paper's "computed individually for each sample and averaged"). Spearman uses average ranks
  for ties, so it equals :func:`scipy.stats.spearmanr` on each cell. Cells with fewer than 2 held-out entries, or whose
  true or imputed held-out values are constant (the correlation is undefined there), are skipped; if no cell is left
  the result is NaN and a ``RuntimeWarning`` is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .._genes import align_genes
from ._checks import as_matrix, check_finite, check_same_shape, dense_rows, resolve_mask, row_chunks, warn_nan
from ._docs import fill_doc

POINTWISE_METRICS = ("rmse", "mae", "bias", "r2", "spearman", "pearson")


def _masked_row_correlation(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a[i, m[i]]`` and ``b[i, m[i]]`` for every row ``i``; NaN where undefined."""
    k = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_min = np.where(m, a, np.inf).min(axis=1)
        a_max = np.where(m, a, -np.inf).max(axis=1)
        b_min = np.where(m, b, np.inf).min(axis=1)
        b_max = np.where(m, b, -np.inf).max(axis=1)
        valid = (k >= 2) & (a_max > a_min) & (b_max > b_min)
        mean_a = np.where(m, a, 0.0).sum(axis=1) / k
        mean_b = np.where(m, b, 0.0).sum(axis=1) / k
        ac = np.where(m, a - mean_a[:, None], 0.0)
        bc = np.where(m, b - mean_b[:, None], 0.0)
        r = (ac * bc).sum(axis=1) / np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    r = np.clip(r, -1.0, 1.0)
    r[~valid] = np.nan
    return r


@dataclass
class PointwiseStats:
    """Per-cell sufficient statistics of the held-out errors, from which every pointwise metric (and each of its
    bootstrap resamples) follows by weighted sums over cells."""

    n_entries: np.ndarray
    sum_err: np.ndarray
    sum_abs_err: np.ndarray
    sum_sq_err: np.ndarray
    sum_true: np.ndarray
    sum_true_sq: np.ndarray
    spearman: np.ndarray
    pearson: np.ndarray

    def reduce(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Metric values for each column of a ``(n_cells, B)`` weight (multiplicity) matrix."""
        n = weights.T @ self.n_entries
        sse = weights.T @ self.sum_sq_err
        st = weights.T @ self.sum_true
        sst = weights.T @ self.sum_true_sq - st**2 / n
        out = {
            "rmse": np.sqrt(sse / n),
            "mae": (weights.T @ self.sum_abs_err) / n,
            "bias": (weights.T @ self.sum_err) / n,
        }
        with np.errstate(invalid="ignore", divide="ignore"):
            out["r2"] = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
        for name in ("spearman", "pearson"):
            per_cell = getattr(self, name)
            ok = np.isfinite(per_cell)
            w_ok = weights[ok]
            denom = w_ok.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(denom > 0, (w_ok.T @ per_cell[ok]) / np.where(denom > 0, denom, 1.0), np.nan)
        return out


def pointwise_stats(
    true: Any, imputed: Any, mask: Any = None, correlations: tuple[str, ...] = ("spearman", "pearson")
) -> PointwiseStats:
    """Per-cell sums of the held-out errors and the per-cell correlations named in ``correlations``.

    Correlations not requested are left NaN. Raises a ValueError for mismatched shapes (two AnnData objects are
    matched by gene name first), an empty matrix or mask, or non-finite held-out values.
    """
    imputed = align_genes(true, imputed, "true", "imputed")
    t = as_matrix(true, "true")
    p = as_matrix(imputed, "imputed")
    shape = check_same_shape(true=t, imputed=p, mask=mask)
    if 0 in shape:
        what = "cells" if shape[0] == 0 else "genes"
        raise ValueError(f"true and imputed have shape {shape}: there are no {what} to evaluate.")
    m_all = resolve_mask(mask, shape)
    if not m_all.any():
        raise ValueError("The mask selects no entries; there is nothing to evaluate (is the mask layer empty?).")
    n_cells = shape[0]
    stats = {k: np.zeros(n_cells) for k in ("n", "e", "ae", "se", "t", "t2")}
    spear = np.full(n_cells, np.nan)
    pear = np.full(n_cells, np.nan)
    for rows in row_chunks(n_cells):
        m = m_all[rows]
        if not m.any():
            continue
        a = dense_rows(t, rows)
        b = dense_rows(p, rows)
        check_finite(a[m], "true")
        check_finite(b[m], "imputed")
        e = np.where(m, b - a, 0.0)
        at = np.where(m, a, 0.0)
        stats["n"][rows] = m.sum(axis=1)
        stats["e"][rows] = e.sum(axis=1)
        stats["ae"][rows] = np.abs(e).sum(axis=1)
        stats["se"][rows] = (e * e).sum(axis=1)
        stats["t"][rows] = at.sum(axis=1)
        stats["t2"][rows] = (at * at).sum(axis=1)
        if "pearson" in correlations:
            pear[rows] = _masked_row_correlation(a, b, m)
        if "spearman" in correlations:
            ra = rankdata(np.where(m, a, np.nan), axis=1, nan_policy="omit")
            rb = rankdata(np.where(m, b, np.nan), axis=1, nan_policy="omit")
            spear[rows] = _masked_row_correlation(ra, rb, m)
    return PointwiseStats(
        n_entries=stats["n"],
        sum_err=stats["e"],
        sum_abs_err=stats["ae"],
        sum_sq_err=stats["se"],
        sum_true=stats["t"],
        sum_true_sq=stats["t2"],
        spearman=spear,
        pearson=pear,
    )


#: Why a pointwise metric is NaN (the only metrics that can be: the others are finite for finite input).
NAN_REASONS = {
    "r2": "the true held-out values are all equal (or there is only one), so their variance, the denominator of "
    "R^2, is 0 and R^2 is undefined",
    "spearman": "no cell has >= 2 held-out entries with non-constant true and imputed values, so the per-cell "
    "correlation is undefined for every cell",
    "pearson": "no cell has >= 2 held-out entries with non-constant true and imputed values, so the per-cell "
    "correlation is undefined for every cell",
}


def _single(true: Any, imputed: Any, mask: Any, name: str) -> float:
    stats = pointwise_stats(true, imputed, mask, correlations=(name,) if name in ("spearman", "pearson") else ())
    value = float(stats.reduce(np.ones((stats.n_entries.shape[0], 1)))[name][0])
    if np.isnan(value):
        warn_nan(name, NAN_REASONS[name], stacklevel=4)
    return value


@fill_doc
def rmse(true: Any, imputed: Any, mask: Any = None) -> float:
    """Root mean squared error over the held-out entries, pooled over cells.

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    ``sqrt(mean((imputed - true)[mask] ** 2))``.

    Examples
    --------
    >>> import numpy as np
    >>> rmse(np.array([[1.0, 2.0]]), np.array([[1.0, 4.0]]))
    1.4142135623730951
    """
    return _single(true, imputed, mask, "rmse")


@fill_doc
def mae(true: Any, imputed: Any, mask: Any = None) -> float:
    """Mean absolute error over the held-out entries, pooled over cells.

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    ``mean(|imputed - true|[mask])``.

    Examples
    --------
    >>> import numpy as np
    >>> mae(np.array([[1.0, 2.0]]), np.array([[0.0, 4.0]]))
    1.5
    """
    return _single(true, imputed, mask, "mae")


@fill_doc
def bias(true: Any, imputed: Any, mask: Any = None) -> float:
    """Mean signed error ``mean(imputed - true)`` over the held-out entries (CountsDiff paper, App. D.3.3).

    A negative value means the method under-imputes, which matters when low counts are masked more often (MNAR).

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    ``mean((imputed - true)[mask])``.

    Examples
    --------
    >>> import numpy as np
    >>> bias(np.array([[1.0, 2.0]]), np.array([[0.0, 4.0]]))
    0.5
    """
    return _single(true, imputed, mask, "bias")


@fill_doc
def r2(true: Any, imputed: Any, mask: Any = None) -> float:
    """Coefficient of determination of the held-out values, pooled over cells.

    ``1 - sum(e^2) / sum((true - mean(true))^2)`` over the held-out entries (equal to
    :func:`sklearn.metrics.r2_score` on the flattened held-out values); NaN with a RuntimeWarning if the true
    held-out values are constant (e.g. a single held-out entry).

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    The pooled R^2 (1 = perfect, 0 = as good as the mean of the true values, can be negative).

    Examples
    --------
    >>> import numpy as np
    >>> r2(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    1.0
    """
    return _single(true, imputed, mask, "r2")


@fill_doc
def spearman(true: Any, imputed: Any, mask: Any = None) -> float:
    """Per-cell Spearman rank correlation of held-out values, averaged over cells (CountsDiff paper, Sec. 4.3).

    For each cell, the true and imputed values at its held-out entries are ranked (average ranks for ties) and
    correlated; the result is the mean over cells. Cells with fewer than 2 held-out entries or with constant true or
    imputed held-out values are skipped (their correlation is undefined).

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    The mean per-cell Spearman correlation; NaN with a RuntimeWarning if no cell qualifies.

    Examples
    --------
    >>> import numpy as np
    >>> spearman(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]), np.array([[1.0, 5.0, 9.0], [1.0, 2.0, 3.0]]))
    1.0
    """
    return _single(true, imputed, mask, "spearman")


@fill_doc
def pearson(true: Any, imputed: Any, mask: Any = None) -> float:
    """Per-cell Pearson correlation of held-out values, averaged over cells.

    Same conventions as :func:`spearman` (cells with fewer than 2 held-out entries or constant values are skipped).

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    The mean per-cell Pearson correlation, NaN (with a RuntimeWarning) if no cell qualifies.

    Examples
    --------
    >>> import numpy as np
    >>> pearson(np.array([[1.0, 2.0, 3.0]]), np.array([[2.0, 4.0, 6.0]]))
    1.0
    """
    return _single(true, imputed, mask, "pearson")


@fill_doc
def pointwise_metrics(true: Any, imputed: Any, mask: Any = None) -> dict[str, float]:
    """All pointwise metrics (rmse, mae, bias, r2, spearman, pearson) in one pass over the data.

    Parameters
    ----------
    %(true_imputed_mask)s

    Returns
    -------
    Dictionary metric name -> value (see the individual functions for the definitions). ``r2``, ``spearman`` and
    ``pearson`` may be NaN, each with a RuntimeWarning that says why.

    Examples
    --------
    >>> import numpy as np
    >>> out = pointwise_metrics(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    >>> out["rmse"], out["spearman"]
    (0.0, 1.0)
    """
    stats = pointwise_stats(true, imputed, mask)
    values = stats.reduce(np.ones((stats.n_entries.shape[0], 1)))
    out = {name: float(values[name][0]) for name in POINTWISE_METRICS}
    for name, value in out.items():
        if np.isnan(value):
            warn_nan(name, NAN_REASONS[name])
    return out
