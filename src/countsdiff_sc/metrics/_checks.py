"""Input validation and matrix access shared by the metric modules (private)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._genes import align_genes
from .._utils import as_bool_mask, get_matrix, stored_values, to_dense

#: Rows processed at once by the row-chunked metrics (bounds the dense working memory).
ROW_CHUNK = 4096


def as_matrix(x: Any, name: str, layer: str | None = None) -> np.ndarray | sp.csr_matrix:
    """Return a 2-D numeric matrix (dense ndarray or CSR) from an array, sparse matrix or AnnData.

    ``layer`` is only used for AnnData input (``None`` = ``adata.X``). Dense inputs are returned without a copy.
    """
    if isinstance(x, ad.AnnData):
        x = get_matrix(x, layer)
    if sp.issparse(x):
        out = sp.csr_matrix(x)
    else:
        out = np.asarray(x)
    if out.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (cells x genes) matrix, got an array with shape {out.shape}.")
    if out.dtype.kind not in "biuf":
        raise ValueError(f"{name} has dtype {out.dtype}; expected a numeric matrix.")
    return out


def check_int(value: Any, name: str, minimum: int, maximum: float = math.inf) -> int:
    """``value`` as an int, refusing booleans, non-integers and values outside ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if not minimum <= value <= maximum:
        bound = f"between {minimum} and {int(maximum)}" if math.isfinite(maximum) else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}.")
    return int(value)


def check_key(key: Any, name: str = "key_added") -> str:
    """A non-empty string key (an empty or non-string key makes the AnnData unsavable)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
    return key


def warn_nan(name: str, reason: str, stacklevel: int = 3) -> None:
    """The RuntimeWarning that goes with a documented NaN result: which value and why."""
    warnings.warn(f"{name} is NaN: {reason}", RuntimeWarning, stacklevel=stacklevel)


def check_same_shape(**arrays: Any) -> tuple[int, int]:
    """Raise a ValueError unless all given matrices have the same shape; return that shape."""
    shapes = {name: tuple(np.shape(a)) for name, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in shapes.items())
        raise ValueError(
            f"Shape mismatch ({listing}). These matrices must describe the same cells and genes in the same order; "
            "subset or reorder them (e.g. adata[:, genes]) so that the shapes agree."
        )
    return next(iter(shapes.values()))


def resolve_mask(mask: Any, shape: tuple[int, int], where: str = "mask") -> np.ndarray:
    """Return a dense boolean mask; ``None`` selects every entry."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    return as_bool_mask(mask, shape, where)


def row_chunks(n: int, size: int = ROW_CHUNK) -> Iterator[slice]:
    """Yield consecutive row slices of at most ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def dense_rows(x: np.ndarray | sp.spmatrix, rows: slice | np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """Dense ``dtype`` copy of the selected rows of a dense or CSR matrix."""
    return to_dense(x[rows], dtype=dtype)


def check_finite(values: np.ndarray, name: str) -> None:
    """Raise a ValueError counting NaN / infinite entries."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(
            f"{name} contains {bad} NaN or infinite entries among the evaluated values; fill or drop them."
        )


def check_nonnegative(x: np.ndarray | sp.spmatrix, name: str) -> None:
    """Raise a ValueError if a matrix has negative or non-finite entries."""
    values = stored_values(x)
    check_finite(values, name)
    n_neg = int(np.count_nonzero(values < 0))
    if n_neg:
        raise ValueError(f"{name} contains {n_neg} negative entries; expected non-negative (count-scale) values.")


def labels_array(data: Any, labels: Any, n: int, name: str) -> np.ndarray:
    """Resolve labels given as an obs column name (for AnnData input) or as an array of length ``n``."""
    if isinstance(labels, str):
        if not isinstance(data, ad.AnnData):
            raise ValueError(f"{name}: a label column name ({labels!r}) needs AnnData input; pass an array instead.")
        if labels not in data.obs.columns:
            raise KeyError(f"Column {labels!r} not found in {name}.obs. Available columns: {list(data.obs.columns)}.")
        return np.asarray(data.obs[labels].astype(str))
    out = np.asarray(labels)
    if out.shape != (n,):
        raise ValueError(f"{name}: labels must have shape ({n},) (one per cell), got {out.shape}.")
    return out.astype(str)


def masked_values(x: Any, mask: Any, name: str = "matrix") -> tuple[np.ndarray, np.ndarray]:
    """Values of ``x`` at the True entries of ``mask`` in row-major order, and the number taken from each row.

    Parameters
    ----------
    x
        Dense or sparse matrix.
    mask
        Boolean mask of the same shape (``None`` = every entry).
    name
        Name used in error messages.

    Returns
    -------
    ``(values, counts_per_row)``; ``values`` is float64.
    """
    mat = as_matrix(x, name)
    m_all = resolve_mask(mask, mat.shape)
    parts = []
    for rows in row_chunks(mat.shape[0]):
        block = dense_rows(mat, rows)
        parts.append(block[m_all[rows]])
    values = np.concatenate(parts) if parts else np.zeros(0)
    check_finite(values, name)
    return values, m_all.sum(axis=1)


def dense_float(x: Any, name: str) -> np.ndarray:
    """Dense floating-point version of a matrix (float32 / float64 kept as is, no copy for dense float input)."""
    mat = as_matrix(x, name)
    out = to_dense(mat)
    if out.dtype.kind != "f":
        out = out.astype(np.float64)
    check_finite(out, name)
    return out


def check_two_samples(x: Any, y: Any, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dense floating-point views of two samples with the same features (two AnnData objects matched by gene name)."""
    y = align_genes(x, y, "x", "y")
    a = dense_float(x, "x")
    b = dense_float(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x has {a.shape[1]} features (genes) but y has {b.shape[1]}; both samples must share the same features "
            "in the same order."
        )
    if a.shape[1] == 0:
        raise ValueError("x and y have 0 features (genes); there is nothing to compare.")
    for name, arr in (("x", a), ("y", b)):
        if arr.shape[0] < min_rows:
            raise ValueError(f"{name} has {arr.shape[0]} rows (cells); at least {min_rows} are needed.")
    return a, b


def common_scale(*arrays: np.ndarray) -> float:
    """The largest absolute value of the arrays (1.0 when all are zero): dividing by it keeps every value in
    ``[-1, 1]``, so float32 distances neither overflow (values of 1e20) nor underflow (values of 1e-20)."""
    top = max((float(np.max(np.abs(a))) if a.size else 0.0) for a in arrays)
    return top if top > 0 and math.isfinite(top) else 1.0
