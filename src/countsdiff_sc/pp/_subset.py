"""Turn the ways a user can select cells (boolean mask, obs column, column + value) into one boolean array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import check_obs_key

#: What ``subset=`` / ``reference=`` accept to pick cells of an AnnData: a boolean array or pandas Series with one
#: entry per cell, the name of a boolean ``obs`` column, or ``(column, value)`` / ``(column, [values, ...])``.
ObsSelection: TypeAlias = "np.ndarray | pd.Series | Sequence[bool] | str | tuple[str, Any]"


def resolve_obs_selection(adata: ad.AnnData, selection: ObsSelection, argname: str = "subset") -> np.ndarray:
    """Return a boolean array of length ``adata.n_obs`` for a cell selection.

    Parameters
    ----------
    adata
        The AnnData whose cells are selected.
    selection
        One of

        - a boolean numpy array / list with one entry per cell (positional);
        - a boolean :class:`pandas.Series`; if its index is not ``adata.obs_names`` in the same order it is aligned
          on ``adata.obs_names`` (it must contain every cell);
        - the name of a boolean column of ``adata.obs``;
        - a tuple ``(column, value)`` selecting the cells with ``adata.obs[column] == value``, or
          ``(column, [value1, value2, ...])`` selecting the cells whose value is in the list.
    argname
        Name of the argument, used in error messages.

    Returns
    -------
    Boolean array of shape ``(adata.n_obs,)``. Raises ``ValueError`` when the selection is empty or malformed and
    ``KeyError`` when a column does not exist.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> adata = ad.AnnData(np.zeros((3, 1)), obs=pd.DataFrame({"split": ["a", "b", "a"]}, index=["x", "y", "z"]))
    >>> resolve_obs_selection(adata, ("split", "a")).tolist()
    [True, False, True]
    """
    if isinstance(selection, str):
        check_obs_key(adata, selection)
        col = adata.obs[selection]
        if not pd.api.types.is_bool_dtype(col):
            raise ValueError(
                f"{argname}={selection!r} names an obs column of dtype {col.dtype}, not a boolean column. "
                f"Select by value with {argname}=({selection!r}, value), e.g. {argname}=({selection!r}, 'test')."
            )
        out = col.to_numpy(dtype=bool)
    elif isinstance(selection, tuple):
        if len(selection) != 2 or not isinstance(selection[0], str):
            raise ValueError(
                f"{argname} given as a tuple must be (obs column, value) or (obs column, [values]); got {selection!r}."
            )
        column, value = selection
        check_obs_key(adata, column)
        col = adata.obs[column]
        values = list(value) if isinstance(value, (list, tuple, set, np.ndarray, pd.Index)) else [value]
        out = col.isin(values).to_numpy(dtype=bool)
        if not out.any():
            present = list(pd.unique(col.dropna()))[:20]
            raise ValueError(
                f"{argname}={selection!r} selects no cell: adata.obs[{column!r}] has no value in {values}. "
                f"Values present (first 20): {present}."
            )
    elif isinstance(selection, pd.Series):
        series = selection
        if not series.index.equals(adata.obs_names):
            missing = adata.obs_names.difference(series.index)
            if len(missing):
                raise ValueError(
                    f"{argname} is a pandas Series whose index lacks {len(missing)} of the {adata.n_obs} cells of "
                    f"adata (e.g. {list(missing[:3])}). Pass a Series indexed by adata.obs_names, or a numpy array "
                    "(used positionally)."
                )
            series = series.reindex(adata.obs_names)
        if series.isna().any():
            raise ValueError(f"{argname} contains {int(series.isna().sum())} missing values; expected True/False.")
        out = _as_bool_vector(series.to_numpy(), adata.n_obs, argname)
    else:
        out = _as_bool_vector(np.asarray(selection), adata.n_obs, argname)
    if not out.any():
        raise ValueError(f"{argname} selects no cell (all {adata.n_obs} entries are False).")
    return out


def _as_bool_vector(arr: np.ndarray, n_obs: int, argname: str) -> np.ndarray:
    """Check that ``arr`` is a boolean-like vector of length ``n_obs`` and return it as bool."""
    if arr.ndim != 1 or arr.shape[0] != n_obs:
        raise ValueError(f"{argname} must have one entry per cell ({n_obs}); got an array of shape {arr.shape}.")
    if arr.dtype == bool:
        return arr.copy()
    if arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ValueError(
        f"{argname} must be boolean (True = selected cell); got dtype {arr.dtype}. To select cells by the value of an "
        f"obs column pass {argname}=(column, value)."
    )


def describe_selection(selection: Any, n_selected: int) -> str:
    """Short, h5ad-storable description of a cell selection for the ``uns["countsdiff"]`` records.

    Parameters
    ----------
    selection
        The selection as the user gave it (see :func:`resolve_obs_selection`); None means all cells.
    n_selected
        Number of cells it selects.

    Returns
    -------
    A one-line description, e.g. ``"obs['split'] in 'test' (120 cells)"``.

    Examples
    --------
    >>> describe_selection(("split", "test"), 120)
    "obs['split'] in 'test' (120 cells)"
    """
    if selection is None:
        return "all cells"
    if isinstance(selection, str):
        return f"obs[{selection!r}] ({n_selected} cells)"
    if isinstance(selection, tuple):
        return f"obs[{selection[0]!r}] in {selection[1]!r} ({n_selected} cells)"
    return f"boolean mask ({n_selected} cells)"
