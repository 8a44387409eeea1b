"""Each cell's depth as a vector condition: the standardised log library size (``library_condition``).

Conditioning CountsDiff on the depth of each training cell brings its generated cells closer to real ones: without it
the network must also learn the spread of library sizes within a type, and its samples come out too uniform in
depth. The condition is
``(log L - mean) / sd`` with ``L`` the cell's total count; new data must be standardised with the training data's
``mean`` and ``sd`` (``reference=``) or the model reads a different depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._keys import LIBRARY_CONDITION_UNS as UNS_KEY
from .._utils import as_bool_mask, check_counts, get_matrix, iter_row_blocks, record_params

__all__ = ["library_condition"]


def library_condition(
    adata: ad.AnnData,
    key: str = "log_library",
    *,
    layer: str | None = None,
    exclude_layer: str | None = None,
    reference: ad.AnnData | Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> None:
    """Write each cell's standardised log library size to ``adata.obsm[key]``, a vector condition for
    ``CountsDiffModel.setup_anndata(..., condition_obsm_key=key)``.

    ``obsm[key]`` is a float32 column ``(n_cells, 1)``: ``(log L - mean) / sd`` with ``L`` the cell's total count
    over the entries not excluded, and ``mean`` / ``sd`` those of ``log L`` over ``adata``'s cells, or the ones
    recorded for ``key`` in ``reference`` (the training data, so that new cells are read on the training scale).
    The standardisation is recorded in ``adata.uns["countsdiff_library_condition"][key]``.

    Generate with the depth distribution of the training cells by ``model.sample(..., conditions="train")`` (each
    generated cell takes the depth of a random training cell with its label and covariates).

    Parameters
    ----------
    adata
        AnnData of raw counts; ``X`` and the layers are not modified.
    key
        obsm key to write. An existing entry is replaced only when this function wrote it (its record is in
        ``uns["countsdiff_library_condition"]``) or with ``overwrite=True``; a user's own ``obsm[key]`` is refused.
    layer
        Layer holding the counts (``X`` when None).
    exclude_layer
        Boolean layer of entries left out of the sum, e.g. held-out entries (``"countsdiff_mask"``): a condition
        computed with them would leak what is held out into the model's input.
    reference
        AnnData processed by this function (its record for ``key`` is used) or ``{"mean": m, "sd": s}``; None
        standardises over ``adata`` itself.
    overwrite
        Replace an existing ``obsm[key]`` that this function did not write.

    Raises
    ------
    ValueError
        Counts that are not non-negative integers, cells with no counts (the log of 0: remove empty cells), a
        constant library size without a reference, a reference without a record for ``key``, an empty ``key``, or
        an existing ``obsm[key]`` of the user's (without ``overwrite=True``).
    KeyError
        A missing layer.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.cbmc()
    >>> cds.pp.library_condition(adata)
    >>> cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", condition_obsm_key="log_library")
    >>> query = cds.datasets.cbmc()[:100].copy()
    >>> cds.pp.library_condition(query, reference=adata)  # the training data's scale
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string (the obsm key to write), got {key!r}.")
    if key in adata.obsm and not overwrite and key not in adata.uns.get(UNS_KEY, {}):
        raise ValueError(f"adata.obsm[{key!r}] already exists and was not written by library_condition; refusing to "
                         f"replace it. Pass another key, overwrite=True, or delete it first (del adata.obsm[{key!r}]).")
    if adata.n_obs == 0:
        raise ValueError("adata has no cells.")
    x = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(x, where)
    excluded = None
    if exclude_layer is not None:
        excluded = get_matrix(adata, exclude_layer)
        if tuple(excluded.shape) != tuple(adata.shape):
            raise ValueError(f"adata.layers[{exclude_layer!r}] has shape {tuple(excluded.shape)}, not {adata.shape}.")
    lib = np.empty(adata.n_obs, dtype=np.float64)
    for start, block in iter_row_blocks(x):  # bounded memory, backed objects included
        rows = slice(start, start + block.shape[0])
        if excluded is not None:
            keep = ~as_bool_mask(excluded[rows], block.shape, f"adata.layers[{exclude_layer!r}]")
            block = block.multiply(keep) if sp.issparse(block) else np.asarray(block) * keep
        lib[rows] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
    empty = int(np.count_nonzero(lib <= 0))
    if empty:
        raise ValueError(f"{empty} cell(s) have no counts{' outside exclude_layer' if exclude_layer else ''}, so "
                         "their log library size is undefined: remove empty cells first (e.g. "
                         "sc.pp.filter_cells(adata, min_counts=1)).")
    log_lib = np.log(lib)
    if reference is None:
        mean, sd = float(log_lib.mean()), float(log_lib.std())
        if not sd > 0:
            raise ValueError("Every cell has the same library size: there is no depth to condition on.")
    else:
        mean, sd = _reference_scale(reference, key)
    adata.obsm[key] = ((log_lib - mean) / sd).astype(np.float32)[:, None]
    record = {"mean": mean, "sd": sd, "n_cells": int(adata.n_obs), "from_reference": reference is not None}
    record.update({k: v for k, v in (("layer", layer), ("exclude_layer", exclude_layer)) if v is not None})
    adata.uns.setdefault(UNS_KEY, {})[key] = record
    record_params(adata, "library_condition", {"key": key, **record})


def _reference_scale(reference: Any, key: str) -> tuple[float, float]:
    if isinstance(reference, ad.AnnData):
        rec = reference.uns.get(UNS_KEY, {}).get(key)
        if rec is None:
            raise ValueError(f"reference has no record of library_condition for key {key!r}: run "
                             f"cds.pp.library_condition(reference, key={key!r}) on the training data first, or pass "
                             "reference={'mean': ..., 'sd': ...}.")
    elif isinstance(reference, Mapping):
        rec = reference
    else:
        raise TypeError(f"reference must be an AnnData or a dict {{'mean', 'sd'}}, got {type(reference).__name__}.")
    try:
        mean, sd = float(rec["mean"]), float(rec["sd"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"reference must give numbers 'mean' and 'sd', got {dict(rec)}.") from err
    if not (np.isfinite(mean) and np.isfinite(sd) and sd > 0):
        raise ValueError(f"reference has mean {mean} and sd {sd}; sd must be a positive number.")
    return mean, sd
