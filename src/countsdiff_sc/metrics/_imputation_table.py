"""The imputation metric table, :func:`evaluate_imputation`, and the registry of its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._keys import IMPUTED, MASK
from .._utils import as_bool_mask, get_matrix, stored_values, to_dense
from ._bootstrap import bootstrap_weights
from ._checks import as_matrix, check_int, check_key, check_same_shape, masked_values
from ._distributional import energy_distance_resamples, mmd_weighted, swd_weighted
from ._frechet import frechet_weighted
from ._pointwise import NAN_REASONS, POINTWISE_METRICS, PointwiseStats, pointwise_stats
from ._scfid import describe_embedder, embed_cells, fit_scfid_embedder
from ._tables import (
    MetricSpec,
    compute_metrics,
    registry,
    resolve_metrics,
    rows_from_values,
    store_table,
    warn_nan_rows,
)

if TYPE_CHECKING:
    from scvi.model import SCVI

_CORRELATIONS = ("spearman", "pearson")


@dataclass(eq=False)
class _ImputationInputs:
    """The evaluated cells of one :func:`evaluate_imputation` call, and the intermediates its metrics share
    (computed on first use, once)."""

    adata: ad.AnnData
    cells: np.ndarray  # rows of adata with at least one evaluated entry
    truth: np.ndarray | sp.csr_matrix  # those rows of the truth, imputation and mask
    imputed: np.ndarray | sp.csr_matrix
    mask: np.ndarray
    weights: np.ndarray  # bootstrap multiplicities of the cells, column 0 = the original sample
    chosen: list[str]
    truth_layer: str | None
    truth_where: str
    imputed_where: str
    transform: str
    mmd_max_cells: int | None
    n_projections: int
    seed: int
    embedder: SCVI | None
    scfid_kwargs: dict[str, Any] | None
    cache_dir: str | Path | None

    @property
    def n_cells(self) -> int:
        return int(self.cells.size)

    @cached_property
    def pointwise(self) -> tuple[PointwiseStats, dict[str, np.ndarray]]:
        """Per-cell error sums (only the correlations that were asked for) and every pointwise metric per resample."""
        correlations = tuple(c for c in _CORRELATIONS if c in self.chosen)
        stats = pointwise_stats(self.truth, self.imputed, self.mask, correlations=correlations)
        return stats, stats.reduce(self.weights)

    @cached_property
    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense truth and composite (truth with its held-out entries replaced by the imputations) of the evaluated
        cells, in the inputs' float precision (float32 for typical count matrices) to bound memory."""
        dense_t, dense_p = to_dense(self.truth), to_dense(self.imputed)
        dense_t = dense_t.astype(np.result_type(dense_t.dtype, dense_p.dtype, np.float32), copy=False)
        composite = dense_t.copy()
        composite[self.mask] = dense_p[self.mask]
        return dense_t, composite

    @cached_property
    def spaces(self) -> tuple[np.ndarray, np.ndarray]:
        """The two matrices in the space of the MMD and the SWD (``transform``)."""
        dense_t, composite = self.matrices
        if self.transform == "log1p":
            return np.log1p(dense_t), np.log1p(np.clip(composite, 0, None))
        return dense_t, composite


# --------------------------------------------------------------------------------------------------------------------
# the metrics
# --------------------------------------------------------------------------------------------------------------------
def _pointwise_metric(name: str) -> MetricSpec:
    def compute(d: _ImputationInputs) -> dict[str, tuple[np.ndarray, str]]:
        stats, values = d.pointwise
        note = ""
        if name in _CORRELATIONS:
            n_def = int(np.isfinite(getattr(stats, name)).sum())
            note = f"per-cell, mean over {n_def} of {d.n_cells} cells (others: < 2 entries or constant)"
        return {name: (values[name], note)}

    higher = {"rmse": False, "mae": False, "bias": None}.get(name, True)  # r2 and the correlations: higher
    return MetricSpec(name, compute, higher_is_better=higher)


def _energy_distance(d: _ImputationInputs) -> dict[str, tuple[np.ndarray, str]]:
    tv, per_cell = masked_values(d.truth, d.mask, d.truth_where)
    pv, _ = masked_values(d.imputed, d.mask, d.imputed_where)
    cell_of_value = np.repeat(np.arange(d.n_cells), per_cell)
    values = energy_distance_resamples(tv, pv, cell_of_value, cell_of_value, d.weights)
    return {"energy_distance": (values, "pooled held-out values (scipy.stats.energy_distance)")}


#: Why a row of the imputation table is NaN.
IMPUTATION_NAN_REASONS = {
    **NAN_REASONS,
    "mmd": "the mask holds entries of a single cell, and the unbiased MMD needs at least 2 cells on each side",
}


def _mmd(d: _ImputationInputs) -> dict[str, tuple[np.ndarray, str]]:
    if d.n_cells < 2:
        return {"mmd": (np.full(d.weights.shape[1], np.nan), "undefined: a single evaluated cell")}
    space_t, space_c = d.spaces
    rows = np.arange(d.n_cells)
    if d.mmd_max_cells is not None and d.n_cells > d.mmd_max_cells:
        rows = np.sort(np.random.default_rng(d.seed).choice(d.n_cells, size=d.mmd_max_cells, replace=False))
    values, sigma = mmd_weighted(space_t[rows], space_c[rows], d.weights[rows], d.weights[rows], seed=d.seed)
    note = (
        f"unbiased MMD^2, RBF mixture at (0.25, 0.5, 1, 2, 4) x sigma={sigma:.4g} (median heuristic), "
        f"{rows.size} cells, {d.transform}"
    )
    return {"mmd": (values, note)}


def _swd(d: _ImputationInputs) -> dict[str, tuple[np.ndarray, str]]:
    space_t, space_c = d.spaces
    values = swd_weighted(space_t, space_c, d.weights, d.weights, n_projections=d.n_projections, seed=d.seed)
    return {"swd": (values, f"sliced W2, {d.n_projections} directions (seed {d.seed}), {d.transform}")}


def _scfid(d: _ImputationInputs) -> dict[str, tuple[np.ndarray, str]]:
    embedder = d.embedder
    if embedder is None:
        embedder = fit_scfid_embedder(
            d.adata, layer=d.truth_layer, seed=d.seed, cache_dir=d.cache_dir, **(d.scfid_kwargs or {})
        )
    dense_t, composite = d.matrices
    obs = d.adata.obs.iloc[d.cells].copy()
    var = pd.DataFrame(index=d.adata.var_names)
    z_t = embed_cells(embedder, ad.AnnData(X=sp.csr_matrix(dense_t), obs=obs, var=var), name="truth")
    z_c = embed_cells(embedder, ad.AnnData(X=sp.csr_matrix(composite), obs=obs, var=var), name="imputed")
    return {"scfid": (frechet_weighted(z_t, z_c, d.weights, d.weights), describe_embedder(embedder))}


#: The metrics of :func:`evaluate_imputation`, in the order they are computed.
IMPUTATION_REGISTRY: dict[str, MetricSpec] = registry(
    [
        *(_pointwise_metric(name) for name in POINTWISE_METRICS),
        MetricSpec("energy_distance", _energy_distance),
        MetricSpec("mmd", _mmd),
        MetricSpec("swd", _swd),
        MetricSpec("scfid", _scfid, needs=frozenset({"embedder"})),
    ]
)


# --------------------------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------------------------
def evaluate_imputation(
    adata: ad.AnnData,
    truth_layer: str | None = None,
    imputed_layer: str = IMPUTED,
    mask_layer: str = MASK,
    *,
    valid_layer: str | None = None,
    n_bootstrap: int = 10,
    metrics: Sequence[str] | None = None,
    scfid: bool = False,
    embedder: SCVI | None = None,
    transform: Literal["none", "log1p"] = "none",
    mmd_max_cells: int | None = None,
    n_projections: int = 1000,
    scfid_kwargs: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    key_added: str = "imputation",
) -> pd.DataFrame:
    """Evaluate an imputation on its held-out entries (CountsDiff paper, Sec. 4.3 and App. D.3.3-D.3.4).

    Only entries with ``mask_layer`` True (and ``valid_layer`` True, if given) are scored, and only the cells that
    have at least one such entry ("evaluated cells") take part.

    * Pointwise (:func:`rmse`, :func:`mae`, :func:`bias`, :func:`r2`, :func:`spearman`, :func:`pearson`): on the
      held-out entries; correlations per cell, averaged over cells.
    * ``energy_distance``: between the pooled 1-D held-out true and imputed values.
    * ``mmd`` / ``swd``: between the full cell x gene matrices of the evaluated cells, truth vs truth with its held-out
      entries replaced by the imputations (optionally after ``log1p``). With ``mmd_max_cells`` the MMD uses a seeded
      uniform subsample of at most that many evaluated cells (its cost is quadratic in cells); default: all cells.
      The MMD is the unbiased U-statistic, so a perfect imputation (identical matrices) gives the small negative
      value ``-2 (1 - mean kernel) / (n_cells - 1)``, not exactly 0.
    * ``scfid``: Frechet distance between scVI embeddings of the same two matrices (:func:`scfid`), with ``embedder``
      or, by default, an SCVI trained (and cached) on the truth of *all* cells of ``adata``.

    Standard errors come from ``n_bootstrap`` bootstrap resamples of the evaluated cells (with replacement, the same
    cells for truth and imputation); the reported value is the estimate on the original cells. The MMD bandwidth,
    the SWD directions and the scFID embedder are held fixed across resamples.

    A value that is undefined for the input is NaN, with a RuntimeWarning naming it and saying why: ``r2`` when the
    true held-out values are all equal (e.g. a single held-out entry), ``spearman`` / ``pearson`` when no cell has 2
    held-out entries with non-constant values, ``mmd`` when a single cell is evaluated.

    Parameters
    ----------
    adata
        AnnData with truth, imputation and mask (not modified except for ``uns``).
    truth_layer
        Layer of ground-truth counts; None means ``adata.X``.
    imputed_layer
        Layer with the imputed values (``CountsDiffModel.impute`` writes ``"countsdiff_imputed"``).
    mask_layer
        Boolean layer, True at held-out entries (``pp.mask_mcar`` writes ``"countsdiff_mask"``).
    valid_layer
        Optional boolean layer of trusted entries (``pp.mark_dropouts``); the mask is intersected with it.
    n_bootstrap
        Number of bootstrap resamples for the standard errors (0 = none, std_error NaN).
    metrics
        Subset of ``rmse, mae, bias, r2, spearman, pearson, energy_distance, mmd, swd, scfid``. None = all but scfid
        (scfid is added when ``scfid=True`` or an ``embedder`` is given).
    scfid
        Compute scFID (trains the default embedder if ``embedder`` is None).
    embedder
        A trained :class:`scvi.model.SCVI` for scFID (its genes must match ``adata``'s).
    transform
        Transform applied to both matrices before MMD and SWD: "none" (raw counts, the paper) or "log1p".
    mmd_max_cells
        Optional cap on the number of cells used by the MMD.
    n_projections
        Number of random directions of the SWD.
    scfid_kwargs
        Extra settings of the default embedder (``n_latent``, ``max_epochs``, ``accelerator``, ...), see
        :func:`fit_scfid_embedder`.
    cache_dir
        Directory where the default scFID embedder is saved / reloaded.
    seed
        Seed of the bootstrap, of the MMD subsampling / median heuristic, of the SWD directions and of the embedder.
    key_added
        Key under ``adata.uns["countsdiff_metrics"]``.

    Returns
    -------
    DataFrame with columns ``metric, value, std_error, n_bootstrap, n_cells, n_entries, note``; also stored in
    ``adata.uns["countsdiff_metrics"][key_added]`` (unless ``adata`` is a view, which only gets a warning).

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> x = np.random.default_rng(0).poisson(3, (50, 20)).astype(np.float32)
    >>> adata = ad.AnnData(x, layers={"countsdiff_imputed": x.copy(), "countsdiff_mask": x > 2})
    >>> df = evaluate_imputation(adata, metrics=["rmse", "bias"], n_bootstrap=2)
    >>> df["value"].tolist()
    [0.0, 0.0]
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}; for matrices use "
                        "countsdiff_sc.metrics.pointwise_metrics / mmd / swd.")
    chosen = resolve_metrics(metrics, IMPUTATION_REGISTRY, {"embedder"} if scfid or embedder is not None else ())
    if transform not in ("none", "log1p"):
        raise ValueError(f"transform must be 'none' or 'log1p', got {transform!r}.")
    n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 0)
    n_projections = check_int(n_projections, "n_projections", 1)
    if mmd_max_cells is not None:
        mmd_max_cells = check_int(mmd_max_cells, "mmd_max_cells (None for all cells)", 2)
    check_key(key_added)
    truth_where = "adata.X" if truth_layer is None else f"adata.layers[{truth_layer!r}]"
    imputed_where = f"adata.layers[{imputed_layer!r}]"
    truth = as_matrix(get_matrix(adata, truth_layer), truth_where)
    imputed = as_matrix(get_matrix(adata, imputed_layer), imputed_where)
    check_same_shape(**{truth_where: truth, imputed_where: imputed})
    if transform == "log1p":
        for where, mat in ((truth_where, truth), (imputed_where, imputed)):
            n_bad = int(np.count_nonzero(stored_values(mat) <= -1))
            if n_bad:
                raise ValueError(f"{where} holds {n_bad} values <= -1, where log1p is undefined; transform='log1p' "
                                 "needs count-scale values (or use transform='none').")
    mask = as_bool_mask(get_matrix(adata, mask_layer), adata.shape, f"adata.layers[{mask_layer!r}]")
    if valid_layer is not None:
        mask &= as_bool_mask(get_matrix(adata, valid_layer), adata.shape, f"adata.layers[{valid_layer!r}]")
    cells = np.flatnonzero(mask.any(axis=1))
    if cells.size == 0:
        raise ValueError(
            f"adata.layers[{mask_layer!r}] selects no entries"
            + (f" inside adata.layers[{valid_layer!r}]" if valid_layer else "")
            + "; nothing to evaluate. Create a mask with cds.pp.mask_mcar first."
        )
    inputs = _ImputationInputs(
        adata=adata,
        cells=cells,
        truth=truth[cells],
        imputed=imputed[cells],
        mask=mask[cells],
        weights=bootstrap_weights(int(cells.size), n_bootstrap, np.random.default_rng(seed)),
        chosen=chosen,
        truth_layer=truth_layer,
        truth_where=truth_where,
        imputed_where=imputed_where,
        transform=transform,
        mmd_max_cells=mmd_max_cells,
        n_projections=n_projections,
        seed=seed,
        embedder=embedder,
        scfid_kwargs=scfid_kwargs,
        cache_dir=cache_dir,
    )
    results = compute_metrics(IMPUTATION_REGISTRY, chosen, inputs)
    extra = {"n_cells": inputs.n_cells, "n_entries": int(inputs.mask.sum())}
    df = pd.DataFrame(rows_from_values({name: results[name] for name in chosen}, extra))
    warn_nan_rows(df, IMPUTATION_NAN_REASONS)
    store_table(
        adata,
        key_added,
        df,
        {
            "truth_layer": truth_layer,
            "imputed_layer": imputed_layer,
            "mask_layer": mask_layer,
            "valid_layer": valid_layer,
            "n_bootstrap": n_bootstrap,
            "metrics": chosen,
            "transform": transform,
            "mmd_max_cells": mmd_max_cells,
            "n_projections": n_projections,
            "seed": seed,
        },
    )
    return df
