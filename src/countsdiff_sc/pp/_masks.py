"""Held-out masks for imputation benchmarks: MCAR and value-biased MNAR (CountsDiff paper, Sec. 4.3 and App. A.3)."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._keys import MASK, VALID
from .._utils import as_bool_mask, check_counts, check_seed, check_writable, get_matrix, is_backed_matrix, record_params
from ._subset import ObsSelection, describe_selection, resolve_obs_selection

DEFAULT_VALID_LAYER = VALID


def mask_mcar(
    adata: ad.AnnData,
    rate: float,
    *,
    seed: int = 0,
    valid_layer: str | None = DEFAULT_VALID_LAYER,
    key_added: str = MASK,
    subset: ObsSelection | None = None,
) -> None:
    """Hold out valid entries completely at random (MCAR).

    CountsDiff paper, App. A.3: under MCAR every position is missing independently with the same probability,
    ``o_i ~ Bernoulli(1 - d)``. Here each *valid* entry (see :func:`countsdiff_sc.pp.mark_dropouts`) of the selected
    cells is held out independently with probability ``rate``; suspected dropouts are never held out, since their
    true value is unknown (Sec. 4.3: 50 % MCAR on the fetal and heart atlases). The realised fraction is therefore
    ``Binomial(n_valid, rate) / n_valid``, not exactly ``rate``.

    Parameters
    ----------
    adata
        AnnData object. ``X`` and existing layers are never modified.
    rate
        Probability that a valid entry is held out, in ``[0, 1)``.
    seed
        Random seed; the same seed, data and arguments give the same mask.
    valid_layer
        Boolean layer of trusted entries (``True`` = may be held out). ``None`` treats every entry as valid. If the
        default ``"countsdiff_valid"`` does not exist, every entry is treated as valid and a ``UserWarning`` says so
        (run :func:`~countsdiff_sc.pp.mark_dropouts` first to follow the paper's protocol, or pass
        ``valid_layer=None`` to silence it). Any other missing layer raises ``KeyError``.
    key_added
        Layer to write: dense boolean, ``True`` = held out. Must differ from ``valid_layer``. An existing layer of
        that name is replaced only if countsdiff-sc wrote it (its record is in ``uns["countsdiff"]``); a user's own
        layer raises ``ValueError``.
    subset
        Cells that may receive held-out entries (others get none), e.g. only the test cells:
        ``subset=adata.obs["split"] == "test"`` or ``subset=("split", "test")``. Accepts a boolean array or Series
        with one entry per cell, the name of a boolean obs column, or ``(column, value)`` / ``(column, [values])``.
        ``None`` = all cells.

    Returns
    -------
    ``None``. Writes ``adata.layers[key_added]`` and ``adata.uns["countsdiff"][key_added]`` (method, rate, seed,
    realised rate, numbers of valid / held-out entries, number of cells whose valid entries were all held out).
    A ``UserWarning`` reports cells whose valid entries were *all* held out (nothing observed to condition on); the
    mask is kept as drawn so its distribution stays exactly MCAR.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.mark_dropouts(adata, groupby="bulk_labels")
    >>> cds.pp.mask_mcar(adata, rate=0.5, seed=0)
    >>> mask, valid = adata.layers["countsdiff_mask"], adata.layers["countsdiff_valid"]
    >>> bool((mask & ~valid).any())
    False
    """
    rate = _check_rate(rate)
    seed = check_seed(seed)
    rows, valid, valid_desc = _mask_inputs(adata, valid_layer, key_added, subset)
    rng = np.random.default_rng(seed)
    mask = np.zeros(adata.shape, dtype=bool)
    row_idx = np.flatnonzero(rows)
    # Draw row blocks so the temporary uniform array stays small on large data; the stream is still deterministic.
    block = max(1, 2**22 // max(1, adata.n_vars))
    for start in range(0, row_idx.size, block):
        idx = row_idx[start : start + block]
        mask[idx] = valid[idx] & (rng.random((idx.size, adata.n_vars)) < rate)
    params = {"method": "mcar", "rate": rate, "seed": int(seed)}
    _finish(adata, mask, valid, rows, key_added, params, valid_desc, subset)


def mask_mnar(
    adata: ad.AnnData,
    rate: float,
    bias: Literal["low", "high"] = "low",
    *,
    seed: int = 0,
    layer: str | None = None,
    valid_layer: str | None = DEFAULT_VALID_LAYER,
    key_added: str = MASK,
    pool_extra: int = 5000,
    subset: ObsSelection | None = None,
) -> None:
    """Hold out valid entries not at random, preferring low (or high) counts (MNAR).

    CountsDiff paper, Sec. 4.3 / App. A.3 (low-biased MNAR: the missingness probability is larger for smaller
    values, as when dropouts are caused by low read counts). Per gene, among its ``n_valid`` valid entries in the
    selected cells, ``k = floor(rate * n_valid)`` entries are drawn uniformly without replacement from the pool of
    the ``k + pool_extra`` lowest values (``bias="high"``: highest values). With the default ``pool_extra=5000``
    this is the paper's protocol; ``pool_extra=0`` holds out exactly the ``k`` lowest values.

    Ties: the entries are ranked by value with a random tie-breaker, so when the pool boundary falls inside a run of
    equal values (typically zeros) the tied entries that enter the pool are a uniform random subset of the run.

    The realised rate is slightly below ``rate`` because of the floor (exactly ``sum_g k_g / sum_g n_valid_g``).

    ``pool_extra`` is an absolute number of entries: when ``k + pool_extra >= n_valid`` the pool is the whole gene and
    its held-out entries are uniform, i.e. MCAR. The protocol's 5000 was used on large cell atlases; on a few thousand
    cells use a smaller value (e.g. a tenth of the number of cells) to keep the bias. The number of genes affected is
    recorded, and a ``UserWarning`` is issued when they are more than 10 % of the masked genes.

    Parameters
    ----------
    adata
        AnnData object. ``X`` and existing layers are never modified.
    rate
        Fraction of the valid entries of each gene to hold out, in ``[0, 1)``.
    bias
        ``"low"`` holds out low counts preferentially, ``"high"`` high counts.
    seed
        Random seed; the same seed, data and arguments give the same mask.
    layer
        Layer holding the counts used to rank the entries; ``None`` uses ``adata.X``.
    valid_layer
        Boolean layer of trusted entries; see :func:`mask_mcar` for the behaviour when it is missing or ``None``.
    key_added
        Layer to write: dense boolean, ``True`` = held out. Must differ from ``layer`` and ``valid_layer``; a user's
        own existing layer is never replaced (see :func:`mask_mcar`).
    pool_extra
        Number of extra candidates in the per-gene pool beyond ``k`` (non-negative integer).
    subset
        Cells that may receive held-out entries; the per-gene counts ``n_valid`` are taken within them. See
        :func:`mask_mcar`.

    Returns
    -------
    ``None``. Writes ``adata.layers[key_added]`` and ``adata.uns["countsdiff"][key_added]`` (method, rate, bias,
    pool_extra, seed, realised rate, numbers of valid / held-out entries, number of cells fully held out, number of
    genes whose pool covered all their valid entries). A ``UserWarning`` reports cells whose valid entries were all
    held out.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.mark_dropouts(adata, groupby="bulk_labels")
    >>> cds.pp.mask_mnar(adata, rate=0.25, bias="low", seed=0, pool_extra=50)
    >>> round(adata.uns["countsdiff"]["countsdiff_mask"]["realised_rate"], 2) <= 0.25
    True
    """
    rate = _check_rate(rate)
    seed = check_seed(seed)
    if bias not in ("low", "high"):
        raise ValueError(f"bias must be 'low' or 'high'; got {bias!r}.")
    if isinstance(pool_extra, bool) or not isinstance(pool_extra, numbers.Integral) or pool_extra < 0:
        raise ValueError(f"pool_extra must be a non-negative integer; got {pool_extra!r}.")
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if layer is not None and key_added == layer:
        raise ValueError(f"key_added={key_added!r} equals layer=; choose another name so the counts are not replaced.")
    x = get_matrix(adata, layer)
    check_counts(x, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
    rows, valid, valid_desc = _mask_inputs(adata, valid_layer, key_added, subset)
    if is_backed_matrix(x):  # an on-disk matrix of a backed AnnData: read it (the mask is a dense n_obs x n_vars)
        x = x[:]

    rng = np.random.default_rng(seed)
    mask = np.zeros(adata.shape, dtype=bool)
    row_idx = np.flatnonzero(rows)
    column = _column_reader(x)
    sign = 1.0 if bias == "low" else -1.0
    n_unbiased = n_masked_genes = 0
    for j in range(adata.n_vars):
        cand = row_idx[valid[row_idx, j]]
        k = math.floor(rate * cand.size + 1e-9)  # + 1e-9 guards against 0.29 * 100 = 28.999999999999996
        if k == 0:
            continue
        n_masked_genes += 1
        n_unbiased += k + pool_extra >= cand.size
        values = column(j)[cand]
        order = np.lexsort((rng.random(cand.size), sign * values))  # by value, random among ties
        pool = order[: min(cand.size, k + int(pool_extra))]
        mask[cand[rng.choice(pool, size=k, replace=False)], j] = True
    if n_unbiased > 0.1 * n_masked_genes:
        warnings.warn(
            f"For {n_unbiased} of the {n_masked_genes} masked genes the pool (k + pool_extra = k + {pool_extra}) "
            "covers all valid entries, so their held-out entries are uniform (MCAR-like), not value-biased. "
            "pool_extra is an absolute number of cells (the protocol's 5000 was used on large atlases); lower it "
            "for smaller data.",
            UserWarning,
            stacklevel=2,
        )
    params = {"method": f"mnar_{bias}", "rate": rate, "bias": bias, "pool_extra": int(pool_extra), "seed": int(seed)}
    params["layer"] = layer
    params["n_genes_unbiased_pool"] = n_unbiased
    _finish(adata, mask, valid, rows, key_added, params, valid_desc, subset)




def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (0.0 <= float(rate) < 1.0):
        raise ValueError(
            f"rate must be a number in [0, 1) (the fraction of valid entries to hold out); got {rate!r}. "
            "rate=1 would hide every entry and leave nothing to condition on."
        )
    return float(rate)


def _mask_inputs(
    adata: ad.AnnData, valid_layer: str | None, key_added: str, subset: ObsSelection | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Resolve the cell selection and the validity layer shared by both mask functions."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string (the layer to write); got {key_added!r}.")
    if 0 in adata.shape:
        raise ValueError(f"adata has shape {adata.shape}: there are no entries to hold out.")
    if valid_layer is not None and key_added == valid_layer:
        raise ValueError(
            f"key_added={key_added!r} equals valid_layer=; choose another name so the validity layer is not replaced."
        )
    check_writable(adata, key_added, "layers")
    rows = np.ones(adata.n_obs, dtype=bool) if subset is None else resolve_obs_selection(adata, subset, "subset")
    if valid_layer is None:
        return rows, np.ones(adata.shape, dtype=bool), "None (all entries valid)"
    if valid_layer not in adata.layers and valid_layer == DEFAULT_VALID_LAYER:
        warnings.warn(
            f"Layer {valid_layer!r} not found, so every entry is treated as valid (suspected dropouts may be held "
            "out). Run countsdiff_sc.pp.mark_dropouts(adata, groupby=...) first to follow the paper's protocol, or "
            "pass valid_layer=None to silence this warning.",
            UserWarning,
            stacklevel=3,
        )
        return rows, np.ones(adata.shape, dtype=bool), "None (default layer missing: all entries valid)"
    valid = as_bool_mask(get_matrix(adata, valid_layer), adata.shape, f"adata.layers[{valid_layer!r}]")
    if not valid[rows].any():
        raise ValueError(f"adata.layers[{valid_layer!r}] marks no entry of the selected cells as valid, so nothing can "
                         "be held out. Check the layer (True = trusted entry), or pass valid_layer=None.")
    return rows, valid, valid_layer


def _column_reader(x: np.ndarray | sp.spmatrix):
    """Return a function j -> dense float64 column j of ``x`` (fast for CSC / dense, converts others once)."""
    if sp.issparse(x):
        csc = sp.csc_matrix(x)
        n_obs = csc.shape[0]

        def read(j: int) -> np.ndarray:
            out = np.zeros(n_obs, dtype=np.float64)
            sl = slice(csc.indptr[j], csc.indptr[j + 1])
            out[csc.indices[sl]] = csc.data[sl]
            return out

        return read
    dense = np.asarray(x)
    return lambda j: dense[:, j].astype(np.float64)


def _finish(
    adata: ad.AnnData,
    mask: np.ndarray,
    valid: np.ndarray,
    rows: np.ndarray,
    key_added: str,
    params: dict[str, Any],
    valid_desc: str,
    subset: Any,
) -> None:
    """Write the mask layer, warn about fully held-out cells and record the parameters."""
    n_valid_per_cell = np.where(rows, valid.sum(axis=1), 0)
    n_masked_per_cell = mask.sum(axis=1)
    fully = int(np.count_nonzero((n_valid_per_cell > 0) & (n_masked_per_cell == n_valid_per_cell)))
    if fully:
        warnings.warn(
            f"{fully} cells have all of their valid entries held out in layers[{key_added!r}], so nothing of them is "
            "observed; imputation for them is unconditional. Use a lower rate or exclude such cells from evaluation.",
            UserWarning,
            stacklevel=3,
        )
    n_valid = int(n_valid_per_cell.sum())
    n_masked = int(n_masked_per_cell.sum())
    adata.layers[key_added] = mask
    record_params(
        adata,
        key_added,
        {
            **params,
            "valid_layer": valid_desc,
            "subset": describe_selection(subset, int(rows.sum())),
            "n_valid": n_valid,
            "n_masked": n_masked,
            "realised_rate": n_masked / n_valid if n_valid else 0.0,
            "n_cells_fully_masked": fully,
        },
    )
