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
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._results import counts_in_model_order, model_gene_names

__all__ = ["GroupSums", "NoSharedStrata", "check_retention_series", "estimate_retention", "pair_name"]

#: Cells read at once when summing a reference's counts (bounds the dense block in memory).
CHUNK = 8192
#: Molecules' worth of evidence at the batch-wide ratio in each stratum's own ratio (:meth:`GroupSums.stratum_ratios`;
#: chosen by the batch benchmark, see the table of defaults in the documentation).
STRATUM_PRIOR = 5.0


def pair_name(source: Mapping[str, str], target: Mapping[str, str]) -> str:
    """Readable name of a source -> target move, e.g. ``"batch: b -> a"``."""
    return "; ".join(f"{k}: {source[k]} -> {target[k]}" for k in target)


class NoSharedStrata(ValueError):
    """Two conditions have no stratum (label, other covariates) in common, so no ratio between them can be read."""


@dataclass
class GroupSums:
    """Cells and summed counts of each gene per (group, stratum) of a reference AnnData, read in one pass.

    A *group* is a combination of values of ``group_keys`` (the conditions a verb changes, e.g. the batch), a
    *stratum* one of ``strata_keys`` (every other categorical condition, e.g. the cell type). Only combinations that
    have cells are kept, so the memory is ``(occupied combinations) x genes`` float64 whatever the number of
    categories. :meth:`ratio` then gives the retention between any two groups without reading the data again.

    Attributes
    ----------
    group_keys, strata_keys
        obs columns of the groups and of the strata.
    groups, strata
        Group and stratum (tuples of strings) of each occupied combination.
    n
        Cells of each combination.
    sums
        Summed counts of each gene, ``(combinations, genes)`` float64, in the model's gene order.
    name
        The reference, as named in messages.
    """

    group_keys: list[str]
    strata_keys: list[str]
    groups: list[tuple[str, ...]]
    strata: list[tuple[str, ...]]
    n: np.ndarray
    sums: np.ndarray
    name: str

    @classmethod
    def collect(
        cls,
        adata: ad.AnnData,
        layer: str | None,
        var_names: Sequence[str] | None,
        n_genes: int,
        group_keys: Sequence[str],
        strata_keys: Sequence[str],
        name: str = "the reference",
        groups: Sequence[tuple[str, ...]] | None = None,
    ) -> GroupSums:
        """Sum the counts of ``adata`` per (group, stratum), reading ``CHUNK`` cells at a time (backed objects too).

        Parameters
        ----------
        adata
            The reference cells (e.g. the model's training data).
        layer
            Layer of the counts (None: ``X``).
        var_names, n_genes
            The model's genes (matched by name) and their number.
        group_keys, strata_keys
            obs columns of the groups and of the strata.
        name
            The reference, as named in messages.
        groups
            Only read the cells of these groups (None: every group).

        Raises
        ------
        KeyError
            A column missing from ``adata.obs``.
        ValueError
            Genes of the model missing from ``adata``, or counts that are not counts.
        """
        group_keys, strata_keys = list(group_keys), list(strata_keys)
        for key in [*group_keys, *strata_keys]:
            if key not in adata.obs.columns:
                raise KeyError(f"{name} has no obs column {key!r}, needed to estimate the retention between "
                               "conditions.")
        obs = adata.obs
        cols = [obs[k].astype(str).to_numpy() for k in group_keys + strata_keys]
        if cols:
            codes, uniques = pd.MultiIndex.from_arrays(cols).factorize()
            combos = [tuple(str(v) for v in c) for c in uniques]
        else:
            codes, combos = np.zeros(adata.n_obs, dtype=np.int64), [()] if adata.n_obs else []
        n_g = len(group_keys)
        wanted = np.ones(len(combos), dtype=bool)
        if groups is not None:
            keep = {tuple(str(v) for v in g) for g in groups}
            wanted = np.asarray([c[:n_g] in keep for c in combos], dtype=bool)
        used = np.flatnonzero(wanted[codes]) if len(combos) else np.zeros(0, np.int64)
        sums = np.zeros((len(combos), n_genes))
        for start in range(0, used.size, CHUNK):
            cells = used[start:start + CHUNK]
            x = counts_in_model_order(adata, layer, cells, var_names, n_genes, name, f"the counts of {name}")
            _add_rows(sums, codes[cells], x)
        n = np.bincount(codes[used], minlength=len(combos)).astype(np.float64) if used.size else np.zeros(len(combos))
        occupied = np.flatnonzero(n > 0)
        return cls(group_keys, strata_keys, [combos[i][:n_g] for i in occupied], [combos[i][n_g:] for i in occupied],
                   n[occupied], sums[occupied], name)

    def strata_of(self, group: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The strata in which ``group`` has cells, in order of first appearance."""
        group = tuple(str(v) for v in group)
        return list(dict.fromkeys(s for g, s in zip(self.groups, self.strata, strict=True) if g == group))

    def _rows_of(self, group: tuple[str, ...]) -> dict[tuple[str, ...], int]:
        """``{stratum: row of sums / n}`` of the combinations of ``group``."""
        group = tuple(str(v) for v in group)
        return {s: i for i, (g, s) in enumerate(zip(self.groups, self.strata, strict=True)) if g == group}

    def mean_counts(self, group: tuple[str, ...], stratum: tuple[str, ...]) -> np.ndarray:
        """Mean counts of each gene in the cells of ``group`` in ``stratum`` (float64, the model's gene order)."""
        row = self._rows_of(group)[tuple(str(v) for v in stratum)]
        return self.sums[row] / self.n[row]

    def cells_in(self, group: tuple[str, ...], stratum: tuple[str, ...]) -> int:
        """Number of cells of ``group`` in ``stratum``."""
        row = self._rows_of(group).get(tuple(str(v) for v in stratum))
        return 0 if row is None else int(self.n[row])

    def cells_of(self, group: tuple[str, ...]) -> int:
        """Number of cells of ``group``."""
        group = tuple(str(v) for v in group)
        return int(sum(n for g, n in zip(self.groups, self.n, strict=True) if g == group))

    def ratio(self, source: tuple[str, ...], target: tuple[str, ...], fix: str = "") -> tuple[np.ndarray, dict]:
        r"""Per-gene ratio of mean counts, ``source`` over ``target``, within the strata both have cells in.

        With ``m_{s,h,g}`` / ``m_{t,h,g}`` the groups' mean counts of gene ``g`` in stratum ``h`` and the weight
        ``w_h = n_{s,h} n_{t,h} / (n_{s,h} + n_{t,h})`` (the effective size of a two-group comparison),

        .. math:: r_g = \frac{\sum_h w_h m_{s,h,g} + a}{\sum_h w_h m_{t,h,g} + a}, \qquad a = 1 / \sum_h w_h,

        a ratio of standardised means shrunk towards 1 by one molecule's worth of pseudo-count ``a`` (a gene seen in
        neither group gets 1: no evidence of an effect).

        Parameters
        ----------
        source, target
            The two groups (values of ``group_keys``).
        fix
            What to do instead, appended to the error message.

        Returns
        -------
        ``(r, info)``: the ratios (float64, the model's gene order) and a summary (cells and strata used).

        Raises
        ------
        NoSharedStrata
            The groups have no stratum in common (the message lists each group's strata).
        """
        source, target = tuple(str(v) for v in source), tuple(str(v) for v in target)
        src, tgt = self._rows_of(source), self._rows_of(target)
        shared = [s for s in src if s in tgt]
        if not shared:
            raise NoSharedStrata(self._no_overlap(source, target, list(src), list(tgt), fix))
        i_s = np.asarray([src[s] for s in shared])
        i_t = np.asarray([tgt[s] for s in shared])
        n_s, n_t = self.n[i_s], self.n[i_t]
        w = n_s * n_t / (n_s + n_t)
        num = (w / n_s) @ self.sums[i_s]
        den = (w / n_t) @ self.sums[i_t]
        a = 1.0 / w.sum()
        info = {"source_cells": int(n_s.sum()), "target_cells": int(n_t.sum()), "strata": len(shared),
                "strata_keys": list(self.strata_keys)}
        return (num + a) / (den + a), info

    def stratum_ratios(self, source: tuple[str, ...], target: tuple[str, ...], base: np.ndarray,
                       prior: float = STRATUM_PRIOR) -> dict[tuple[str, ...], np.ndarray]:
        r"""Per-gene ratio of mean counts, ``source`` over ``target``, in each stratum on its own, shrunk towards
        ``base`` (the ratio over every shared stratum, :meth:`ratio`).

        With ``m_{s,h,g}`` / ``m_{t,h,g}`` the groups' mean counts in stratum ``h`` and its effective size
        ``w_h = n_{s,h} n_{t,h} / (n_{s,h} + n_{t,h})`` (``b`` = ``base``),

        .. math:: r_{h,g} = \frac{m_{s,h,g} + a_h b_g}{m_{t,h,g} + a_h}, \qquad a_h = \mathrm{prior} / w_h,

        i.e. ``prior`` molecules' worth of evidence at the shared ratio: a gene well measured in a large stratum
        gets that stratum's own ratio (an effect that differs by cell type, e.g. ambient RNA, which adds the same
        molecules to every type and so changes rare-in-type genes most), a gene rarely seen there, or a small
        stratum, the shared one. A gene seen in neither group gets ``base``.

        Returns
        -------
        ``{stratum: r}`` for every stratum both groups have cells in (float64, the model's gene order).
        """
        src, tgt = self._rows_of(source), self._rows_of(target)
        base = np.asarray(base, dtype=np.float64)
        out = {}
        for stratum, i in src.items():
            if stratum not in tgt:
                continue
            j = tgt[stratum]
            n_s, n_t = self.n[i], self.n[j]
            a = prior * (n_s + n_t) / (n_s * n_t)
            out[stratum] = (self.sums[i] / n_s + a * base) / (self.sums[j] / n_t + a)
        return out

    def _no_overlap(self, source, target, src_strata, tgt_strata, fix: str) -> str:
        def named(group):
            return ", ".join(f"{k}={v!r}" for k, v in zip(self.group_keys, group, strict=True))

        def listed(strata):
            shown = [s[0] if len(s) == 1 else "/".join(s) for s in strata[:8]]
            return f"{shown}{' ...' if len(strata) > 8 else ''}"

        n_src, n_tgt = self.cells_of(source), self.cells_of(target)
        if self.strata_keys and n_src and n_tgt:
            where = "/".join(self.strata_keys)
            detail = (f"no {where} in common: {named(source)} has {listed(src_strata)}, {named(target)} has "
                      f"{listed(tgt_strata)}")
        else:
            detail = f"{named(source)} has {n_src} cells and {named(target)} {n_tgt}"
        return (f"{self.name} has no cells of both {named(source)} and {named(target)} to compare ({detail}), so "
                f"the retention between them cannot be estimated{': ' + fix if fix else '.'}")


def _add_rows(sums: np.ndarray, codes: np.ndarray, x: np.ndarray) -> None:
    """``sums[codes[i]] += x[i]`` for every row (a sparse indicator product: no Python loop over cells)."""
    if codes.size == 0:
        return
    uniq, inverse = np.unique(codes, return_inverse=True)
    indicator = sp.csr_matrix((np.ones(codes.size), (inverse, np.arange(codes.size))), shape=(uniq.size, codes.size))
    sums[uniq] += indicator @ x.astype(np.float64)


#: How :func:`estimate_retention` says what to do when two conditions cannot be compared.
SERIES_FIX = ("pass retention= as a pandas Series of one ratio per gene (indexed by gene name), or a reference that "
              "has both.")


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
    """Per-gene ratio of mean counts, source over target, within strata of the other conditions.

    Cells of ``adata`` whose obs columns match ``source`` (all of its keys) form the source group, those matching
    ``target`` the target group; the ratio is :meth:`GroupSums.ratio` (standardised over the strata both groups
    have cells in, shrunk towards 1 by one molecule's worth of pseudo-count).

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
    keys = list(target)
    src, tgt = tuple(str(source[k]) for k in keys), tuple(str(target[k]) for k in keys)
    sums = GroupSums.collect(adata, layer, var_names, n_genes, keys, strata_keys, name, groups=[src, tgt])
    return sums.ratio(src, tgt, SERIES_FIX)


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
