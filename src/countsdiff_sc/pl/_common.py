"""Shared plumbing of the plotting functions: figure / axes creation, the show / save / return_fig convention,
categorical scatter plots and small data helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._genes import align_genes
from .._utils import get_matrix, stored_values, to_dense

_FILE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def new_axes(
    ax: Axes | Sequence[Axes] | None, n: int = 1, *, panel_size: tuple[float, float] = (4.5, 4.0)
) -> tuple[Figure, list[Axes]]:
    """Return the figure and ``n`` axes: the given ones (checked) or a new row of ``n`` panels."""
    if ax is None:
        fig, axs = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False)
        return fig, list(axs[0])
    axs = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axs) != n or not all(isinstance(a, Axes) for a in axs):
        raise ValueError(
            f"ax must be {'an Axes' if n == 1 else f'a sequence of {n} Axes'} (this plot has {n} panel"
            f"{'s' if n > 1 else ''}); got {ax!r}."
        )
    return axs[0].figure, axs


def _interactive_backend() -> bool:
    return mpl.get_backend().lower() not in _FILE_BACKENDS


def finish(
    fig: Figure,
    axes: list[Axes],
    *,
    show: bool | None,
    save: str | Path | bool | None,
    return_fig: bool,
    name: str,
    user_ax: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Apply the save / show / return_fig convention described in :mod:`countsdiff_sc.pl`.

    With ``show=None`` the figure is shown only when the function created it on an interactive backend: a plot
    drawn into axes the caller passed (``user_ax``) is part of the caller's figure, which the caller shows.
    """
    if save:
        path = Path(f"{name}.png") if save is True else Path(save)
        if not path.suffix:
            path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    if return_fig:
        return fig
    if show is None:
        show = _interactive_backend() and not user_ax
    if show:
        plt.show()
        return None
    return axes[0] if len(axes) == 1 else axes


def check_values(x: Any, where: str, *, nonnegative: bool = True) -> None:
    """Refuse a matrix that is not numeric, holds NaN / infinite values, or (``nonnegative``) negative values."""
    values = stored_values(x)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {values.dtype}; expected numbers.")
    n_bad = int(np.count_nonzero(~np.isfinite(values))) if values.dtype.kind == "f" else 0
    if n_bad:
        raise ValueError(f"{where} holds {n_bad} NaN or infinite values; fill or drop them before plotting.")
    n_neg = int(np.count_nonzero(values < 0)) if nonnegative else 0
    if n_neg:
        raise ValueError(f"{where} holds {n_neg} negative values; expected counts (or count-scale values).")


def counts_of(adata: ad.AnnData, layer: str | None, name: str, *, min_cells: int = 1) -> np.ndarray:
    """Dense float64 counts of ``adata`` (``layer`` or ``X``): finite, non-negative numbers of at least ``min_cells``
    cells and one gene, with errors naming the argument."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"{name} must be an AnnData, got {type(adata).__name__}.")
    where = f"{name}.X" if layer is None else f"{name}.layers[{layer!r}]"
    x = get_matrix(adata, layer)
    if adata.n_obs < min_cells or adata.n_vars < 1:
        raise ValueError(f"{name} has {adata.n_obs} cells and {adata.n_vars} genes; at least {min_cells} cell"
                         f"{'s' if min_cells > 1 else ''} and 1 gene are needed.")
    check_values(x, where)
    return to_dense(x).astype(np.float64)


def same_genes(a: ad.AnnData, b: ad.AnnData, name_a: str, name_b: str) -> ad.AnnData:
    """``b`` with its genes in ``a``'s order (genes are matched by name; different gene sets are an error)."""
    for name, obj in ((name_a, a), (name_b, b)):
        if not isinstance(obj, ad.AnnData):
            raise TypeError(f"{name} must be an AnnData, got {type(obj).__name__}.")
    return align_genes(a, b, name_a, name_b)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum`` (booleans and fractions refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or not float(value).is_integer() \
            or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_positive(value: Any, name: str) -> float:
    """``value`` as a positive finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def identity_line(ax: Axes, lo: float, hi: float) -> None:
    """Draw the dashed y = x line over ``[lo, hi]`` and make both axes span it."""
    pad = 0.02 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", lw=1, color="0.3", zorder=3, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)


def category_order(values: Any) -> list[str]:
    """Categories of a pandas Categorical in their own order, otherwise the sorted distinct values, as strings."""
    cats = getattr(values, "cat", None)
    if cats is not None:
        present = set(values.astype(str))
        return [str(c) for c in cats.categories if str(c) in present]
    return sorted({str(v) for v in np.asarray(values)})


def palette(categories: Sequence[str]) -> dict[str, Any]:
    """A colour per category (tab10 / tab20, repeating beyond 20)."""
    cmap = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def categorical_scatter(
    ax: Axes,
    coords: np.ndarray,
    values: np.ndarray,
    *,
    title: str,
    categories: Sequence[str] | None = None,
    size: float | None = None,
    legend_loc: str = "right margin",
) -> None:
    """Scatter ``coords`` coloured by the categories in ``values`` (legend in ``categories`` order, shuffled draw)."""
    values = np.asarray(values).astype(str)
    categories = category_order(values) if categories is None else [str(c) for c in categories]
    colors = palette(categories)
    order = np.random.default_rng(0).permutation(len(values))  # no category hides the others
    s = size if size is not None else max(120000 / max(len(values), 1), 2.0) ** 0.5
    ax.scatter(
        coords[order, 0], coords[order, 1], c=[colors[v] for v in values[order]], s=s, linewidths=0, rasterized=True
    )
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[c], label=c) for c in categories]
    if legend_loc == "right margin":
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small")
    elif legend_loc != "none":
        ax.legend(handles=handles, loc=legend_loc, frameon=False, fontsize="small")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
