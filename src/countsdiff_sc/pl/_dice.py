"""Plot of the per-cell uncertainty of DICE embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._utils import check_obs_key, to_dense
from ._common import category_order, check_positive, check_positive_int, check_values, finish, new_axes, palette
from ._docs import fill_doc


@fill_doc
def dice_uncertainty(
    adata: ad.AnnData,
    basis: str = "X_umap",
    key: str = "X_dice",
    labels_key: str | None = None,
    *,
    bins: int = 30,
    cmap: str = "magma_r",
    size: float | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """An embedding coloured by the per-cell uncertainty of a DICE embedding, and its histogram by label.

    The uncertainty of a cell is the Euclidean norm of ``obsm[key + "_std"]``, the per-dimension spread of the
    Gibbs chain that ``DICEModel.embed`` stores next to the chain mean ``obsm[key]``. Cells between clusters or with
    few counts typically have the largest spread.

    Parameters
    ----------
    adata
        AnnData with ``obsm[key + "_std"]`` and ``obsm[basis]``.
    basis
        obsm key of the 2-D embedding to draw (``"umap"`` is read as ``"X_umap"``); e.g. a UMAP computed with
        ``sc.pp.neighbors(adata, use_rep="X_dice"); sc.tl.umap(adata)``.
    key
        obsm key of the DICE embedding (``DICEModel.embed``'s ``key_added``).
    labels_key
        obs column; the histogram is split by its values. None draws one histogram.
    bins
        Number of histogram bins (at least 1).
    cmap
        Colour map of the uncertainty.
    size
        Marker size (positive); None picks one from the number of cells.
    ax
        Two Axes to draw into (embedding, histogram); None creates a figure.
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the two Axes.

    Examples
    --------
    >>> import scanpy as sc, countsdiff_sc as cds
    >>> dice.embed(adata)  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_dice"); sc.tl.umap(adata)  # doctest: +SKIP
    >>> cds.pl.dice_uncertainty(adata, labels_key="cell_type")  # doctest: +SKIP
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    bins = check_positive_int(bins, "bins")
    if size is not None:
        size = check_positive(size, "size")
    std_key = f"{key}_std"
    if std_key not in adata.obsm:
        raise KeyError(
            f"obsm[{std_key!r}] not found (available: {sorted(adata.obsm.keys()) or 'none'}). Run "
            f"DICEModel.embed(adata, key_added={key!r}) first, or pass key= (the spread is stored as key + '_std')."
        )
    if basis not in adata.obsm and f"X_{basis}" in adata.obsm:
        basis = f"X_{basis}"
    if basis not in adata.obsm:
        raise KeyError(
            f"Embedding {basis!r} not found in adata.obsm (available: {sorted(adata.obsm.keys()) or 'none'}). "
            f"Compute one, e.g. sc.pp.neighbors(adata, use_rep={key!r}); sc.tl.umap(adata)."
        )
    coords = to_dense(adata.obsm[basis])
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"obsm[{basis!r}] must have at least 2 columns, got shape {coords.shape}.")
    check_values(coords, f"obsm[{basis!r}]", nonnegative=False)
    std = to_dense(adata.obsm[std_key])
    check_values(std, f"obsm[{std_key!r}] (a spread: finite and >= 0)")
    std = std.astype(np.float64)
    if adata.n_obs == 0:
        raise ValueError("adata has no cells to plot.")
    uncertainty = np.linalg.norm(std.reshape(adata.n_obs, -1), axis=1)

    fig, axs = new_axes(ax, 2, panel_size=(4.8, 4.0))
    order = np.argsort(uncertainty)  # the most uncertain cells on top
    s = size if size is not None else max(120000 / max(adata.n_obs, 1), 2.0) ** 0.5
    sca = axs[0].scatter(
        coords[order, 0], coords[order, 1], c=uncertainty[order], cmap=cmap, s=s, linewidths=0, rasterized=True
    )
    fig.colorbar(sca, ax=axs[0], label=f"\u2016{std_key}\u2016")
    name = basis.removeprefix("X_")
    name = name.upper() if name.lower() in ("umap", "tsne", "pca", "phate") else name
    axs[0].set_xlabel(f"{name}1")
    axs[0].set_ylabel(f"{name}2")
    axs[0].set_xticks([])
    axs[0].set_yticks([])
    axs[0].set_title(f"{key} uncertainty", fontsize="medium")

    edges = np.histogram_bin_edges(uncertainty, bins=bins)
    if labels_key is None:
        axs[1].hist(uncertainty, bins=edges, color="0.4")
    else:
        check_obs_key(adata, labels_key)
        labels = adata.obs[labels_key].astype(str).to_numpy()
        categories = category_order(adata.obs[labels_key])
        colors = palette(categories)
        for c in categories:
            axs[1].hist(uncertainty[labels == c], bins=edges, histtype="step", lw=1.5, color=colors[c], label=c)
        axs[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small", title=labels_key)
    axs[1].set_xlabel(f"uncertainty \u2016{std_key}\u2016")
    axs[1].set_ylabel("cells")
    fig.tight_layout()
    return finish(fig, axs, show=show, save=save, return_fig=return_fig, name="dice_uncertainty",
                  user_ax=ax is not None)
