"""Imputation plots: imputed vs true values on held-out entries, per-gene calibration of statistics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._keys import IMPUTED, MASK
from .._utils import as_bool_mask, get_matrix, to_dense
from ._common import (
    check_positive,
    check_positive_int,
    check_values,
    counts_of,
    finish,
    identity_line,
    new_axes,
    same_genes,
)
from ._docs import fill_doc

_IMPUTED_HINT = "Run CountsDiffModel.impute (or a baseline from countsdiff_sc.baselines) first, or pass layer=."
_MASK_HINT = "Create it with countsdiff_sc.pp.mask_mcar / mask_mnar, or pass mask_layer=."


def _layer(adata: ad.AnnData, layer: str, what: str, hint: str) -> np.ndarray:
    if layer not in adata.layers:
        raise KeyError(
            f"{what} layer {layer!r} not found in adata.layers (available: {sorted(adata.layers.keys()) or 'none'}). "
            f"{hint}"
        )
    return adata.layers[layer]


@fill_doc
def imputed_vs_true(
    adata: ad.AnnData,
    layer: str = IMPUTED,
    mask_layer: str = MASK,
    true_layer: str | None = None,
    *,
    log1p: bool = True,
    gridsize: int = 40,
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Density scatter of imputed against true values on the held-out entries.

    A hexagonal-bin histogram (log colour scale) of the pairs ``(true, imputed)`` over the entries where
    ``mask_layer`` is True, with the identity line. The title reports the RMSE and the Spearman correlation of
    :mod:`countsdiff_sc.metrics` (on the count scale, whatever ``log1p`` says) and the number of entries.

    Parameters
    ----------
    adata
        AnnData holding the truth, the imputation and the mask.
    layer
        Layer with the imputed values (``CountsDiffModel.impute`` writes ``"countsdiff_imputed"``).
    mask_layer
        Boolean layer, True at the held-out entries (``pp.mask_mcar`` writes ``"countsdiff_mask"``).
    true_layer
        Layer with the true counts; None means ``adata.X``.
    log1p
        Plot ``log1p`` of both values (the metrics in the title stay on the count scale).
    gridsize
        Number of hexagons along the x axis.
    cmap
        Colour map of the density.
    %(ax)s
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the Axes.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> model.impute(adata)  # doctest: +SKIP
    >>> cds.pl.imputed_vs_true(adata)  # doctest: +SKIP
    """
    from ..metrics import rmse, spearman  # metrics loads torch: import on use, so that pl itself stays light

    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    gridsize = check_positive_int(gridsize, "gridsize")
    imputed = _layer(adata, layer, "Imputed", _IMPUTED_HINT)
    mask = as_bool_mask(_layer(adata, mask_layer, "Mask", _MASK_HINT), adata.shape, f"adata.layers[{mask_layer!r}]")
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"adata.layers[{mask_layer!r}] holds no True entry: there is nothing to compare.")
    truth = get_matrix(adata, true_layer)
    t = to_dense(truth)[mask]
    y = to_dense(imputed)[mask]
    true_where = "adata.X" if true_layer is None else f"adata.layers[{true_layer!r}]"
    check_values(t, f"{true_where} (at the held-out entries)", nonnegative=False)
    check_values(y, f"adata.layers[{layer!r}] (at the held-out entries)", nonnegative=False)
    t, y = t.astype(np.float64), y.astype(np.float64)
    if log1p and min(t.min(), y.min()) <= -1:
        raise ValueError("log1p=True needs values > -1 (count-scale values); the held-out entries hold values down "
                         f"to {min(t.min(), y.min()):.4g}. Pass log1p=False to plot them as they are.")
    err = rmse(truth, imputed, mask)
    with warnings.catch_warnings():  # undefined per-cell correlations are reported as NaN in the title
        warnings.simplefilter("ignore", RuntimeWarning)
        rho = spearman(truth, imputed, mask)

    fig, (a,) = new_axes(ax, panel_size=(5.0, 4.3))
    px, py = (np.log1p(t), np.log1p(y)) if log1p else (t, y)
    hb = a.hexbin(px, py, gridsize=gridsize, bins="log", mincnt=1, cmap=cmap, linewidths=0)
    fig.colorbar(hb, ax=a, label="entries")
    identity_line(a, float(min(px.min(), py.min())), float(max(px.max(), py.max())))
    true_name = "X" if true_layer is None else true_layer
    scale = "log1p " if log1p else ""
    a.set_xlabel(f"true ({scale}{true_name})")
    a.set_ylabel(f"imputed ({scale}{layer})")
    a.set_title(f"RMSE {err:.3g}, Spearman {rho:.3f} ({n:,} held-out entries)", fontsize="medium")
    return finish(fig, [a], show=show, save=save, return_fig=return_fig, name="imputed_vs_true",
                  user_ax=ax is not None)


_STATS = ("zero_fraction", "mean", "variance")


def _gene_stat(x: np.ndarray, stat: str) -> np.ndarray:
    if stat == "zero_fraction":
        return (x == 0).mean(axis=0)
    if stat == "mean":
        return x.mean(axis=0)
    return x.var(axis=0, ddof=1) if x.shape[0] > 1 else np.zeros(x.shape[1])


@fill_doc
def gene_calibration(
    adata_real: ad.AnnData,
    adata_pred: ad.AnnData | None = None,
    stat: Literal["zero_fraction", "mean", "variance"] = "zero_fraction",
    *,
    layer: str | None = None,
    pred_layer: str | None = None,
    log1p: bool = True,
    pred_name: str | None = None,
    size: float = 12.0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Per-gene calibration: a statistic of the real cells against the same statistic of imputed or generated cells.

    One point per gene with the identity line; the title gives the Pearson correlation of the plotted values. Use it
    with generated cells (``adata_pred`` from ``CountsDiffModel.sample``, compared with real cells of the same
    labels) or with an imputation (``adata_pred=None``: ``adata_real.layers[pred_layer]`` against the counts).

    Parameters
    ----------
    adata_real
        Real cells (counts in ``layer`` or ``X``).
    adata_pred
        Generated cells with the same genes (values in ``pred_layer`` or ``X``; genes are matched by name, another
        order is reordered); None compares with the layer ``pred_layer`` (default ``"countsdiff_imputed"``) of
        ``adata_real``.
    stat
        "zero_fraction" (fraction of cells with a zero), "mean" or "variance" (unbiased) over cells.
    layer
        Layer of ``adata_real`` with the counts; None means ``X``.
    pred_layer
        Layer with the predicted values (see ``adata_pred``).
    log1p
        Plot ``log1p`` of mean and variance (ignored for the zero fraction).
    pred_name
        Axis label of the predicted values; None gives "generated" or "imputed".
    size
        Marker size.
    %(ax)s
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the Axes.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> gen = model.sample(labels=["B"] * 200)  # doctest: +SKIP
    >>> cds.pl.gene_calibration(adata[adata.obs.cell_type == "B"], gen, stat="variance")  # doctest: +SKIP
    """
    if stat not in _STATS:
        raise ValueError(f"stat must be one of {list(_STATS)}, got {stat!r}.")
    size = check_positive(size, "size")
    real = counts_of(adata_real, layer, "adata_real")
    if adata_pred is None:
        pred_layer = pred_layer or IMPUTED
        pred = _layer(adata_real, pred_layer, "Predicted", _IMPUTED_HINT)
        check_values(pred, f"adata_real.layers[{pred_layer!r}]")
        pred = to_dense(pred).astype(np.float64)
        default_name = "imputed"
    else:
        adata_pred = same_genes(adata_real, adata_pred, "adata_real", "adata_pred")
        pred = counts_of(adata_pred, pred_layer, "adata_pred")
        default_name = "generated"
    xs, ys = _gene_stat(real, stat), _gene_stat(pred, stat)
    transformed = log1p and stat != "zero_fraction"
    if transformed:
        xs, ys = np.log1p(xs), np.log1p(ys)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = float(np.corrcoef(xs, ys)[0, 1]) if len(xs) > 1 else float("nan")
    if np.isnan(r):
        warnings.warn(f"The correlation in the title is NaN: the per-gene {stat.replace('_', ' ')} is the same for "
                      "every gene on one side (or there is a single gene), so it is undefined.", RuntimeWarning,
                      stacklevel=2)

    fig, (a,) = new_axes(ax, panel_size=(4.3, 4.3))
    a.scatter(xs, ys, s=size, alpha=0.7, linewidths=0, color="tab:blue")
    identity_line(a, float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max())))
    label = stat.replace("_", " ")
    label = f"log1p({label})" if transformed else label
    a.set_xlabel(f"real: {label}")
    a.set_ylabel(f"{pred_name or default_name}: {label}")
    a.set_title(f"{label} per gene (r = {r:.3f}, {len(xs)} genes)", fontsize="medium")
    a.set_aspect("equal", adjustable="box")
    return finish(fig, [a], show=show, save=save, return_fig=return_fig, name="gene_calibration",
                  user_ax=ax is not None)
