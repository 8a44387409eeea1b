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

from .._utils import get_matrix, to_dense

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


def counts_of(adata: ad.AnnData, layer: str | None, name: str) -> np.ndarray:
    """Dense float64 counts of ``adata`` (``layer`` or ``X``), with an error naming the argument."""
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"{name} must be an AnnData, got {type(adata).__name__}.")
    return to_dense(get_matrix(adata, layer)).astype(np.float64)


def check_same_genes(a: ad.AnnData, b: ad.AnnData, name_a: str, name_b: str) -> None:
    """Raise a ValueError unless both objects hold the same genes in the same order."""
    if a.n_vars != b.n_vars or not np.array_equal(a.var_names.to_numpy(), b.var_names.to_numpy()):
        raise ValueError(
            f"{name_a} ({a.n_vars} genes) and {name_b} ({b.n_vars} genes) must have the same genes in the same order; "
            f"subset one with {name_b}[:, {name_a}.var_names]."
        )


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
