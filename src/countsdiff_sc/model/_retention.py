"""Per-gene retention between two conditions: how a condition thins (or adds to) each gene's molecules.

A technical effect in count space (a batch with weaker capture of some genes, shallower sequencing) is a binomial
thinning of each gene's molecules: ``y_g ~ Binomial(x_g, r_g)``, so the source condition's mean counts are ``r_g``
times the target's in cells that are otherwise alike. :func:`estimate_retention` reads ``r_g`` off data: the ratio of
mean counts between cells of the source and of the target condition, compared within strata of every other
categorical condition (cell type, other covariates), so that a difference in composition is not taken for a batch
effect. :meth:`~countsdiff_sc.model._transfer.TransferMixin.transfer` uses it to move cells by
:func:`~countsdiff_sc.diffusion.restore`: the molecules a source gene is missing are drawn by the network, the extra
ones of a gene the source inflates are thinned away, and the rest of the cell is kept molecule for molecule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ._results import counts_in_model_order, model_gene_names

__all__ = ["check_retention_series", "estimate_retention", "pair_name"]

#: Cells read at once when summing a reference's counts (bounds the dense block in memory).
CHUNK = 8192


def pair_name(source: Mapping[str, str], target: Mapping[str, str]) -> str:
    """Readable name of a source -> target move, e.g. ``"batch: b -> a"``."""
    return "; ".join(f"{k}: {source[k]} -> {target[k]}" for k in target)


def estimate_retention(
    adata: ad.AnnData,
    layer: str | None,
    var_names: Sequence[str] | None,
    n_genes: int,
    strata_keys: Sequence[str],
    source: Mapping[str, str],
    target: Mapping[str, str],
    name: str = "the reference",
) -> tuple[np.ndarray, dict[str, Any]]:
    r"""Per-gene ratio of mean counts, source over target, within strata of the other conditions.

    Cells of ``adata`` whose obs columns match ``source`` (all of its keys) form the source group, those matching
    ``target`` the target group. Within each stratum ``h`` (a combination of the ``strata_keys`` columns) present in
    both groups, ``m_{s,h,g}`` and ``m_{t,h,g}`` are the groups' mean counts of gene ``g``; with the weight
    ``w_h = n_{s,h} n_{t,h} / (n_{s,h} + n_{t,h})`` (the effective size of a two-group comparison),

    .. math:: r_g = \frac{\sum_h w_h m_{s,h,g} + a}{\sum_h w_h m_{t,h,g} + a}, \qquad a = 1 / \sum_h w_h,

    a ratio of standardised means shrunk towards 1 by one molecule's worth of pseudo-count ``a`` (a gene seen in
    neither group gets 1: no evidence of an effect).

    Returns
    -------
    ``(r, info)``: the ratios (float64, the model's gene order) and a summary (cells and strata used).

    Raises
    ------
    KeyError
        A column of ``source`` / ``target`` / ``strata_keys`` missing from ``adata.obs``.
    ValueError
        No stratum has cells of both conditions.
    """
    for key in [*target, *strata_keys]:
        if key not in adata.obs.columns:
            raise KeyError(f"{name} has no obs column {key!r}, needed to estimate the retention between conditions.")
    obs = adata.obs
    src = np.ones(adata.n_obs, dtype=bool)
    tgt = np.ones(adata.n_obs, dtype=bool)
    for key in target:
        col = obs[key].astype(str).to_numpy()
        src &= col == str(source[key])
        tgt &= col == str(target[key])
    if strata_keys:
        strata = pd.MultiIndex.from_frame(obs[list(strata_keys)].astype(str)).to_flat_index()
        codes, _ = pd.factorize(pd.Index(strata))
    else:
        codes = np.zeros(adata.n_obs, dtype=np.int64)
    n_strata = int(codes.max()) + 1 if codes.size else 0
    n_src = np.bincount(codes[src], minlength=n_strata).astype(np.float64)
    n_tgt = np.bincount(codes[tgt], minlength=n_strata).astype(np.float64)
    shared = (n_src > 0) & (n_tgt > 0)
    if not shared.any():
        where = f" within the same {', '.join(strata_keys)}" if strata_keys else ""
        raise ValueError(
            f"{name} has no cells of both {dict(source)} ({int(src.sum())} cells) and {dict(target)} "
            f"({int(tgt.sum())} cells){where}, so the retention between them cannot be estimated: pass retention= as "
            "a pandas Series of one ratio per gene (indexed by gene name), or a reference that has both."
        )
    w = np.where(shared, n_src * n_tgt / np.maximum(n_src + n_tgt, 1.0), 0.0)
    # per-cell weights w_h / n_{group,h} turn the sums of counts into sum_h w_h m_{group,h}
    cell_w_src = np.where(src, w[codes] / np.maximum(n_src[codes], 1.0), 0.0)
    cell_w_tgt = np.where(tgt, w[codes] / np.maximum(n_tgt[codes], 1.0), 0.0)
    used = np.flatnonzero((cell_w_src > 0) | (cell_w_tgt > 0))
    num = np.zeros(n_genes)
    den = np.zeros(n_genes)
    for start in range(0, used.size, CHUNK):
        cells = used[start:start + CHUNK]
        x = counts_in_model_order(adata, layer, cells, var_names, n_genes, name, f"the counts of {name}")
        num += cell_w_src[cells] @ x.astype(np.float64)
        den += cell_w_tgt[cells] @ x.astype(np.float64)
    a = 1.0 / w.sum()
    ratio = (num + a) / (den + a)
    info = {"source_cells": int(n_src[shared].sum()), "target_cells": int(n_tgt[shared].sum()),
            "strata": int(shared.sum()), "strata_keys": list(strata_keys)}
    return ratio, info


def check_retention_series(retention: Any, var_names: Sequence[str] | None, n_genes: int) -> np.ndarray:
    """A user's per-gene retention (a pandas Series indexed by gene name) in the model's gene order."""
    if not isinstance(retention, pd.Series):
        raise TypeError(
            "retention must be 'auto' (estimated from the model's training data), a pandas Series of one ratio per "
            f"gene indexed by gene name, or None; got {type(retention).__name__}."
        )
    if retention.index.has_duplicates:
        dup = retention.index[retention.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"retention has duplicated gene names {dup}: give one ratio per gene.")
    names = model_gene_names(var_names, n_genes)
    missing = pd.Index(names).difference(retention.index.astype(str))
    if len(missing):
        raise ValueError(f"retention has no value for {len(missing)} of the model's genes (e.g. "
                         f"{missing[:5].tolist()}): give one ratio per gene, matched by name.")
    r = retention.rename(index=str).reindex(names).to_numpy(dtype=np.float64)
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("retention must hold finite non-negative ratios (source mean / target mean per gene).")
    return r
