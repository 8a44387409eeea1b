"""Naive imputation baselines of the CountsDiff paper (Sec. 4.3, App. D.3.2): zero, mean, conditional mean."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._keys import MASK
from ..pp import ObsSelection
from ._common import load_inputs, load_reference, query_labels, reference_labels, write_output


def impute_zero(
    adata: ad.AnnData,
    *,
    mask_layer: str = MASK,
    key_added: str = "zero_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
) -> np.ndarray:
    """Impute every held-out entry with 0 (the "Zero" baseline of the CountsDiff paper, Sec. 4.3).

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
    mask_layer
        Boolean layer, ``True`` = held out (e.g. from :func:`countsdiff_sc.pp.mask_mcar`).
    key_added
        Output layer (float32).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    valid_layer
        Optional boolean validity layer; held-out entries that are not valid are left as observed.

    Returns
    -------
    The imputed matrix (float32, dense), also stored in ``adata.layers[key_added]``: observed entries are copied
    unchanged, held-out (valid) entries are 0. Parameters are recorded in ``adata.uns["countsdiff"][key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None)
    >>> out = cds.baselines.impute_zero(adata)
    >>> float(out[adata.layers["countsdiff_mask"]].max())
    0.0
    """
    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    params = {"method": "zero", "mask_layer": mask_layer, "layer": layer, "valid_layer": valid_layer}
    return write_output(adata, inputs, np.zeros_like(inputs.counts), key_added, params)


def impute_mean(
    adata: ad.AnnData,
    reference: ad.AnnData | ObsSelection | None = None,
    *,
    mask_layer: str = MASK,
    key_added: str = "mean_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
) -> np.ndarray:
    """Impute held-out entries with the per-gene mean of the reference cells ("Mean imputation", Sec. 4.3).

    The mean of gene ``j`` is taken over the *observed* entries of the reference cells: entries that are not held
    out and, when ``valid_layer`` is given, that are valid (suspected dropouts are excluded, as in the paper's
    protocol where they are excluded from training). A gene without any observed reference entry is imputed with
    0 and reported in a ``UserWarning``.

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
    reference
        Training cells the mean is computed on:

        - ``None``: all cells of ``adata`` (their entries that are not held out);
        - an AnnData of training cells with the same genes (``var_names``; reordered if needed). Its
          ``layers[mask_layer]`` entries, if that layer exists, are excluded; ``valid_layer`` must exist in it
          when given;
        - a selection of cells of ``adata``: boolean array / Series, boolean obs column name, or
          ``(column, value)``, e.g. ``("countsdiff_split", "train")``.
    mask_layer
        Boolean layer, ``True`` = held out.
    key_added
        Output layer (float32).
    layer
        Layer holding the counts (in ``adata`` and in a reference AnnData); ``None`` uses ``X``.
    valid_layer
        Optional boolean validity layer: invalid entries are neither used for the mean nor imputed (left as
        observed).

    Returns
    -------
    The imputed matrix (float32, dense), also stored in ``adata.layers[key_added]``; observed entries unchanged.
    The parameters are recorded in ``adata.uns["countsdiff"][key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.split_cells(adata, seed=0)
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None, subset=("countsdiff_split", "test"))
    >>> out = cds.baselines.impute_mean(adata, reference=("countsdiff_split", "train"))
    >>> out.shape
    (700, 765)
    """
    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    ref = load_reference(adata, inputs, reference, layer, mask_layer, valid_layer)
    means = _gene_means(ref.counts, ref.observed)
    params = {
        "method": "mean",
        "reference": ref.description,
        "mask_layer": mask_layer,
        "layer": layer,
        "valid_layer": valid_layer,
    }
    return write_output(adata, inputs, np.broadcast_to(means, inputs.counts.shape), key_added, params)


def impute_conditional_mean(
    adata: ad.AnnData,
    labels_key: str,
    reference: ad.AnnData | ObsSelection | None = None,
    *,
    mask_layer: str = MASK,
    key_added: str = "conditional_mean_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
) -> np.ndarray:
    """Impute held-out entries with the per-label, per-gene mean of the reference cells ("Conditional Mean").

    CountsDiff paper, Sec. 4.3 / App. D.3.2: the mean expression of the missing gene over the reference samples
    with the same condition (here the label in ``obs[labels_key]``, e.g. the cell type). Means use the observed
    (not held out, and valid when ``valid_layer`` is given) entries of the reference cells. Fallbacks, each
    announced by a ``UserWarning``: cells whose label does not occur in the reference (or is missing) get the global
    per-gene mean of :func:`impute_mean`; a (label, gene) pair with no observed reference entry also falls back to
    the global mean of that gene.

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
    labels_key
        Column of ``obs`` with the condition, in ``adata`` and in a reference AnnData.
    reference
        Training cells; see :func:`impute_mean`.
    mask_layer
        Boolean layer, ``True`` = held out.
    key_added
        Output layer (float32).
    layer
        Layer holding the counts; ``None`` uses ``X``.
    valid_layer
        Optional boolean validity layer; invalid entries are neither used nor imputed.

    Returns
    -------
    The imputed matrix (float32, dense), also stored in ``adata.layers[key_added]``; observed entries unchanged.
    Parameters and the number of fallbacks are recorded in ``adata.uns["countsdiff"][key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.split_cells(adata, seed=0, stratify="bulk_labels")
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None, subset=("countsdiff_split", "test"))
    >>> out = cds.baselines.impute_conditional_mean(adata, "bulk_labels", reference=("countsdiff_split", "train"))
    """
    q_labels = query_labels(adata, labels_key)
    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    ref = load_reference(adata, inputs, reference, layer, mask_layer, valid_layer)
    r_labels = reference_labels(ref, labels_key, isinstance(reference, ad.AnnData))

    observed = ref.observed
    global_means = _gene_means(ref.counts, observed)
    ref_values = np.asarray(r_labels.astype(object))
    known = pd.Index(pd.unique(r_labels.dropna()).astype(object))
    ref_codes = known.get_indexer(ref_values)
    if len(known) == 0:
        raise ValueError(f"The reference cells have no {labels_key!r} label (all missing); use impute_mean instead.")
    has_label = np.flatnonzero(ref_codes >= 0)
    indicator = sp.csr_matrix(
        (np.ones(has_label.size), (ref_codes[has_label], has_label)), shape=(len(known), ref_codes.size)
    )
    sums = indicator @ np.where(observed, ref.counts, 0.0)
    nobs = indicator @ observed.astype(np.float64)
    empty = nobs == 0
    label_means = np.where(empty, global_means[None, :], sums / np.maximum(nobs, 1))

    q_codes = known.get_indexer(np.asarray(q_labels.astype(object)))
    unseen = q_codes < 0
    needs = inputs.fill.any(axis=1)
    n_unseen_cells = int(np.count_nonzero(unseen & needs))
    if n_unseen_cells:
        names = sorted({str(v) for v in np.asarray(q_labels.astype(object))[unseen & needs]})
        warnings.warn(
            f"{n_unseen_cells} cells to impute have labels absent from the reference ({names[:10]}); they get the "
            "global per-gene mean.",
            UserWarning,
            stacklevel=2,
        )
    n_empty_pairs = int(np.count_nonzero(empty))
    if n_empty_pairs:
        warnings.warn(
            f"{n_empty_pairs} (label, gene) pairs have no observed reference entry; they use the global gene mean.",
            UserWarning,
            stacklevel=2,
        )
    estimate = np.where(unseen[:, None], global_means[None, :], label_means[np.maximum(q_codes, 0)])
    params = {
        "method": "conditional_mean",
        "labels_key": labels_key,
        "reference": ref.description,
        "mask_layer": mask_layer,
        "layer": layer,
        "valid_layer": valid_layer,
        "n_cells_unseen_label": n_unseen_cells,
        "n_label_gene_fallbacks": n_empty_pairs,
    }
    return write_output(adata, inputs, estimate, key_added, params)


def _gene_means(counts: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per-gene mean over observed entries; genes without any observed entry get 0 (with a warning)."""
    n = observed.sum(axis=0)
    sums = np.where(observed, counts, 0.0).sum(axis=0)
    n_empty = int(np.count_nonzero(n == 0))
    if n_empty:
        warnings.warn(
            f"{n_empty} genes have no observed entry in the reference cells; they are imputed with 0.",
            UserWarning,
            stacklevel=3,
        )
    return sums / np.maximum(n, 1)
