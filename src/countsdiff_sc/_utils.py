"""Small helpers shared by every layer that touches AnnData: matrix access, validation, provenance records.

Nothing here imports scvi-tools or torch, so pp/, metrics/ and model/ can all use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

UNS_KEY = "countsdiff"
METRICS_UNS_KEY = "countsdiff_metrics"


def get_matrix(adata: ad.AnnData, layer: str | None = None) -> np.ndarray | sp.spmatrix:
    """Return ``adata.X`` or ``adata.layers[layer]`` (not a copy), with a helpful error for a missing layer.

    Parameters
    ----------
    adata
        The AnnData object.
    layer
        Layer name; ``None`` means ``adata.X``.

    Returns
    -------
    The stored matrix (dense array or scipy sparse matrix). Callers must not modify it in place.
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in adata.layers. Available layers: {sorted(adata.layers.keys()) or 'none'}."
        )
    return adata.layers[layer]


def to_dense(x: Any, dtype: Any = None) -> np.ndarray:
    """Return a dense numpy copy-or-view of a dense / sparse / backed matrix, optionally cast to ``dtype``."""
    if is_backed_matrix(x):
        x = x[:]
    if sp.issparse(x):
        out = x.toarray()
    else:
        out = np.asarray(x)
    return out.astype(dtype, copy=False) if dtype is not None else out


def log_normalize(x: Any, target_sum: float = 1e4, *, keep_sparse: bool = False) -> np.ndarray | sp.csr_matrix:
    """Library-size normalisation and log transform, ``log1p(target_sum * x / rowsum)``, in float64.

    The one implementation used by metrics, baselines, plots, DICE and the benchmarks. Cells with no counts stay 0.

    Parameters
    ----------
    x
        Cells x genes counts: dense, scipy sparse or a backed matrix.
    target_sum
        Counts per cell after normalisation (10,000 by default, as ``scanpy.pp.normalize_total(target_sum=1e4)``).
    keep_sparse
        Return a CSR matrix for sparse input (the zeros stay zeros); otherwise a dense array.

    Returns
    -------
    float64 array (or CSR matrix with ``keep_sparse`` and sparse input) of the same shape.

    Examples
    --------
    >>> import numpy as np
    >>> log_normalize(np.array([[1.0, 3.0], [0.0, 0.0]]), target_sum=4.0)
    array([[0.69314718, 1.38629436],
           [0.        , 0.        ]])
    """
    if is_backed_matrix(x):
        x = x[:]
    if keep_sparse and sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64, copy=True)
        totals = np.asarray(x.sum(axis=1)).ravel()
        factors = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        x = sp.csr_matrix(sp.diags(factors) @ x)
        np.log1p(x.data, out=x.data)
        return x
    dense = to_dense(x, np.float64)
    totals = dense.sum(axis=1, keepdims=True)
    factors = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(dense * factors)


def stored_values(x: Any) -> np.ndarray:
    """The values a matrix stores: ``x.data`` of a sparse matrix (its implicit zeros are not read), else the array.

    Examples
    --------
    >>> stored_values(sp.csr_matrix(np.array([[0, 2], [3, 0]])))
    array([2, 3])
    """
    return x.data if sp.issparse(x) else np.asarray(x)


def check_obs_key(adata: ad.AnnData, key: str) -> None:
    """Raise a KeyError listing the available obs columns when ``key`` is not one of them."""
    if key not in adata.obs.columns:
        raise KeyError(f"Column {key!r} not found in adata.obs. Available columns: {list(adata.obs.columns)}.")


def is_backed_matrix(x: Any) -> bool:
    """Whether ``x`` is an on-disk matrix of a backed AnnData (h5py dataset or anndata sparse dataset)."""
    import h5py
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(x, (h5py.Dataset, CSRDataset, CSCDataset))


def rows_per_block(n_cols: int, budget: int = 2**20) -> int:
    """Rows of a block of about ``budget`` entries (at least 64) for :func:`iter_row_blocks`."""
    return max(64, int(budget) // max(1, int(n_cols)))


def iter_row_blocks(x: Any, block_size: int = 8192) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, x[start:start + block_size])`` over the rows of a dense, sparse or backed matrix.

    Each block is loaded into memory (for a backed matrix only that block is read from disk), so callers that
    reduce block by block use memory bounded by ``block_size`` rows.
    """
    for start in range(0, int(x.shape[0]), int(block_size)):
        yield start, x[start : start + int(block_size)]


def check_counts(x: Any, where: str = "adata.X") -> None:
    """Raise a ValueError unless ``x`` holds finite, non-negative, integer-valued numbers.

    Accepts dense arrays, scipy sparse matrices (only stored values are inspected) and the on-disk matrices of a
    backed AnnData (checked in blocks of rows, never loaded whole), of any numeric dtype.
    The message says how many entries are bad and where to look, so the user can fix the input.

    Parameters
    ----------
    x
        Matrix to check.
    where
        Human-readable location of the matrix used in the error message (e.g. ``"adata.layers['counts']"``).
    """
    blocks = (b for _, b in iter_row_blocks(x)) if is_backed_matrix(x) else [x]
    n_nonfinite = n_negative = n_fractional = 0
    for block in blocks:
        values = stored_values(block)
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{where} has dtype {values.dtype}; expected a numeric count matrix.")
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            n_nonfinite += int(np.count_nonzero(~finite))
            n_fractional += int(np.count_nonzero(finite & (values != np.floor(values))))
        n_negative += int(np.count_nonzero(values < 0))
    if n_nonfinite:
        raise ValueError(
            f"{where} contains {n_nonfinite} NaN or infinite entries; countsdiff-sc needs raw integer counts. "
            "Remove or fill them, or point layer= to the raw counts."
        )
    if n_negative:
        raise ValueError(
            f"{where} contains {n_negative} negative entries; countsdiff-sc needs raw non-negative counts "
            "(was the data scaled or centred?). Point layer= to the raw counts."
        )
    if n_fractional:
        raise ValueError(
            f"{where} contains {n_fractional} non-integer entries; countsdiff-sc needs raw UMI counts, not "
            "normalised or log-transformed values. Point layer= to the raw counts (e.g. layer='counts')."
        )


def as_bool_mask(x: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    """Return a dense boolean copy of a mask-like matrix, checking its shape and that it only holds 0/1 values.

    Parameters
    ----------
    x
        Boolean, or numeric with only 0 and 1, dense or sparse.
    shape
        Expected ``(n_obs, n_vars)``.
    where
        Location used in error messages (e.g. ``"adata.layers['countsdiff_mask']"``).
    """
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{where} has shape {tuple(x.shape)}, expected {tuple(shape)} (n_obs, n_vars).")
    dense = to_dense(x)
    if dense.dtype == bool:
        return dense.copy()
    if dense.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {dense.dtype}; expected a boolean mask.")
    bad = int(np.count_nonzero((dense != 0) & (dense != 1)))
    if bad:
        raise ValueError(f"{where} is not boolean-like: {bad} entries are neither 0 nor 1.")
    return dense.astype(bool)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars / arrays / tuples into h5ad-serialisable python or numpy objects."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, np.integer, np.floating)) for v in value) and value:
            return np.asarray(value)
        return json.dumps([_jsonable(v) if not isinstance(v, np.ndarray) else v.tolist() for v in value])
    if isinstance(value, np.generic):
        return value.item()
    if value is None:
        return "None"
    return value


def check_seed(seed: Any, maximum: int | None = None) -> int:
    """A random seed: a non-negative integer (at most ``maximum`` when given), booleans refused."""
    import numbers

    if (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0
            or (maximum is not None and seed > maximum)):
        if maximum is None:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
        raise ValueError(f"seed must be an integer in [0, {maximum}]; got {seed!r}.")
    return int(seed)


def record_params(adata: ad.AnnData, key: str, params: Mapping[str, Any]) -> None:
    """Store the parameters of an operation in ``adata.uns["countsdiff"][key]`` in an h5ad-serialisable form.

    ``None`` becomes the string ``"None"`` and lists of non-numbers become JSON strings, because h5py can store
    neither directly.
    """
    store = adata.uns.setdefault(UNS_KEY, {})
    store[key] = _jsonable(dict(params))


_WRITTEN_FIELDS = ("key_added", "cluster_key_added", "sample_key_added", "samples_key", "std_key")


def check_writable(adata: ad.AnnData, key: str, where: Literal["layers", "obs", "obsm"]) -> None:
    """Raise a ValueError if ``adata.layers/obs/obsm[key]`` exists and was not written by countsdiff-sc.

    A key counts as written by countsdiff-sc when ``adata.uns["countsdiff"]`` holds a record named ``key`` or a
    record whose ``key_added`` / ``cluster_key_added`` / ``sample_key_added`` / ``samples_key`` / ``std_key`` is
    ``key``; re-running a function
    with the same ``key_added`` therefore replaces its earlier output, but a user's own layer or column is never
    replaced.
    """
    exists = key in adata.obs.columns if where == "obs" else key in getattr(adata, where)
    if not exists:
        return
    records = adata.uns.get(UNS_KEY, {})
    owned = set(records)
    for rec in records.values():
        if isinstance(rec, dict):
            owned.update(str(rec[f]) for f in _WRITTEN_FIELDS if f in rec)
    if key not in owned:
        raise ValueError(
            f"adata.{where}[{key!r}] already exists and was not written by countsdiff-sc; refusing to overwrite it. "
            f"Pass another key_added, or delete it first (del adata.{where}[{key!r}])."
        )
