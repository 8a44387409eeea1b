"""Plots of generated cells: a joint UMAP of real and generated cells, and label-interpolation trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._utils import check_obs_key, log_normalize
from ._common import (
    categorical_scatter,
    category_order,
    check_positive,
    check_positive_int,
    counts_of,
    finish,
    new_axes,
    same_genes,
)
from ._docs import fill_doc


@fill_doc
def real_vs_generated_umap(
    adata_real: ad.AnnData,
    adata_generated: ad.AnnData,
    color: str | None = None,
    *,
    layer: str | None = None,
    generated_layer: str | None = None,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    size: float | None = None,
    seed: int = 0,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Joint UMAP of real and generated cells, coloured by source (real / generated) and by label.

    The counts of both objects are concatenated, normalised to 10,000 counts per cell, log1p-transformed, reduced
    with PCA, and embedded with scanpy's neighbours graph and UMAP, so that both sets share one embedding. Generated
    cells that cover the real cells, and sit with the real cells of their label, are what a good generator gives.
    Neither input is modified.

    Parameters
    ----------
    adata_real
        Real cells (counts in ``layer`` or ``X``).
    adata_generated
        Generated cells with the same genes (e.g. from ``CountsDiffModel.sample``); genes are matched by name
        (another order is reordered, different gene sets are an error).
    color
        obs column present in both objects (e.g. the labels key); None draws only the source panel.
    layer, generated_layer
        Layers holding the counts; None means ``X``.
    n_pcs
        Number of principal components (capped by the data size).
    n_neighbors
        Neighbours of the kNN graph behind the UMAP (at least 2; capped by the data size).
    size
        Marker size (positive); None picks one from the number of cells.
    seed
        Seed of the PCA and the UMAP.
    ax
        Axes to draw into: one per panel (two with ``color``); None creates a figure.
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the Axes (a list of two with ``color``).

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> gen = model.sample(labels=adata.obs["cell_type"].sample(500, random_state=0))  # doctest: +SKIP
    >>> cds.pl.real_vs_generated_umap(adata, gen, color="cell_type")  # doctest: +SKIP
    """
    import scanpy as sc

    adata_generated = same_genes(adata_real, adata_generated, "adata_real", "adata_generated")
    n_pcs = check_positive_int(n_pcs, "n_pcs")
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors", 2)
    if size is not None:
        size = check_positive(size, "size")
    real = counts_of(adata_real, layer, "adata_real")
    gen = counts_of(adata_generated, generated_layer, "adata_generated")
    source = np.repeat(["real", "generated"], [real.shape[0], gen.shape[0]])
    obs = pd.DataFrame({"source": source}, index=[f"cell{i}" for i in range(len(source))])
    if color is not None:
        check_obs_key(adata_real, color)
        check_obs_key(adata_generated, color)
        obs[color] = np.concatenate(
            [adata_real.obs[color].astype(str).to_numpy(), adata_generated.obs[color].astype(str).to_numpy()]
        )
    if len(obs) < 4:
        raise ValueError(f"Need at least 4 cells in total for a UMAP, got {len(obs)}.")
    joint = ad.AnnData(np.vstack([real, gen]).astype(np.float32), obs=obs)
    # scanpy's float32 normalisation, not the float64 _utils.log_normalize: switching would move the UMAP by round-off
    sc.pp.normalize_total(joint, target_sum=1e4)
    sc.pp.log1p(joint)
    n_comps = int(max(1, min(n_pcs, joint.n_obs - 1, joint.n_vars - 1)))
    sc.pp.pca(joint, n_comps=n_comps, random_state=seed)
    sc.pp.neighbors(joint, n_neighbors=min(n_neighbors, joint.n_obs - 1), use_rep="X_pca", random_state=seed)
    sc.tl.umap(joint, random_state=seed)
    coords = joint.obsm["X_umap"]

    fig, axs = new_axes(ax, 1 if color is None else 2, panel_size=(5.2, 4.3))
    categorical_scatter(
        axs[0], coords, joint.obs["source"].to_numpy(), title="source", size=size, categories=["real", "generated"]
    )
    if color is not None:
        order = category_order(adata_real.obs[color])
        order += [c for c in category_order(adata_generated.obs[color]) if c not in order]
        categorical_scatter(axs[1], coords, joint.obs[color].to_numpy(), title=color, size=size, categories=order)
    for a in axs:
        a.set_xlabel("UMAP1")
        a.set_ylabel("UMAP2")
    fig.tight_layout()
    return finish(fig, axs, show=show, save=save, return_fig=return_fig, name="real_vs_generated_umap",
                  user_ax=ax is not None)


def _pca_fit(x: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    k = int(max(1, min(n_pcs, x.shape[0] - 1, x.shape[1])))
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T


@fill_doc
def interpolation_trajectory(
    adata_interp: ad.AnnData,
    reference: ad.AnnData,
    labels_key: str,
    source_label: str | None = None,
    target_label: str | None = None,
    *,
    layer: str | None = None,
    reference_layer: str | None = None,
    weight_key: str = "interpolation_weight",
    n_pcs: int = 30,
    band: Literal["sd", "iqr"] = "sd",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Distance of interpolated cells to the source and target centroids against the interpolation weight.

    Written for the output of ``CountsDiffModel.interpolate``: an AnnData of generated counts with
    ``obs["interpolation_weight"]`` (0 = source label, 1 = target label), ``obs["source_label"]`` and
    ``obs["target_label"]``. A PCA is fitted on the log1p-normalised (10,000 counts per cell) counts of
    ``reference``; the centroids of its source and target cells are computed there, and every interpolated cell is
    projected on the same components. The plot shows, per weight, the mean Euclidean distance to each centroid
    with a band (one standard deviation, or the interquartile range), and as dotted lines the mean distance of the
    real source / target cells to their own centroid (the typical spread of a label). A smooth interpolation moves
    away from the source centroid and towards the target centroid as the weight grows.

    Parameters
    ----------
    adata_interp
        Interpolated cells (counts in ``layer`` or ``X``) with ``obs[weight_key]``.
    reference
        Real cells with ``obs[labels_key]`` and the same genes (matched by name), on which the PCA and the
        centroids are computed.
    labels_key
        obs column of ``reference`` with the labels.
    source_label, target_label
        The two labels; None takes them from ``obs["source_label"]`` / ``obs["target_label"]`` of
        ``adata_interp`` (which must then hold a single pair). When given and those columns exist, only the rows
        of that pair are used.
    layer, reference_layer
        Layers holding the counts; None means ``X``.
    weight_key
        obs column of the interpolation weight.
    n_pcs
        Number of principal components.
    band
        "sd" (mean +- one standard deviation) or "iqr" (25%-75% quantiles).
    %(ax)s
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the Axes.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> interp = model.interpolate(adata, "CD14+ Mono", "B", weights=[0, 0.25, 0.5, 0.75, 1])  # doctest: +SKIP
    >>> cds.pl.interpolation_trajectory(interp, adata, "cell_type")  # doctest: +SKIP
    """
    if band not in ("sd", "iqr"):
        raise ValueError(f"band must be 'sd' or 'iqr', got {band!r}.")
    n_pcs = check_positive_int(n_pcs, "n_pcs")
    adata_interp = same_genes(reference, adata_interp, "reference", "adata_interp")
    check_obs_key(adata_interp, weight_key)
    check_obs_key(reference, labels_key)
    obs = adata_interp.obs
    keep = np.ones(adata_interp.n_obs, dtype=bool)
    pair = {}
    for which, given in (("source_label", source_label), ("target_label", target_label)):
        if given is not None:
            pair[which] = str(given)
            if which in obs.columns:
                keep &= obs[which].astype(str).to_numpy() == str(given)
            continue
        if which not in obs.columns:
            raise KeyError(f"Pass {which}=, or give adata_interp an obs[{which!r}] column (model.interpolate does).")
        values = obs[which].astype(str).unique()
        if len(values) != 1:
            raise ValueError(f"adata_interp.obs[{which!r}] holds several labels {sorted(values)}; pass {which}=.")
        pair[which] = values[0]
    ref_labels = reference.obs[labels_key].astype(str).to_numpy()
    for which, lab in pair.items():
        if not (ref_labels == lab).any():
            raise ValueError(f"{which} {lab!r} has no cell in reference.obs[{labels_key!r}].")
    if not keep.any():
        raise ValueError(
            f"No row of adata_interp has source_label={pair['source_label']!r} and "
            f"target_label={pair['target_label']!r}."
        )

    ref = log_normalize(counts_of(reference, reference_layer, "reference"))
    mean, comps = _pca_fit(ref, n_pcs)
    z_ref = (ref - mean) @ comps
    z = (log_normalize(counts_of(adata_interp, layer, "adata_interp")[keep]) - mean) @ comps
    weights = pd.to_numeric(obs[weight_key], errors="coerce").to_numpy(dtype=float)[keep]
    if not np.isfinite(weights).all():
        raise ValueError(f"adata_interp.obs[{weight_key!r}] holds non-numeric, missing or infinite weights.")
    grid = np.unique(weights)

    fig, (a,) = new_axes(ax, panel_size=(5.2, 4.0))
    styles = {"source_label": ("tab:blue", "source"), "target_label": ("tab:red", "target")}
    for which, lab in pair.items():
        color, role = styles[which]
        members = z_ref[ref_labels == lab]
        centroid = members.mean(axis=0)
        dist = np.linalg.norm(z - centroid, axis=1)
        stats = np.array([_summary(dist[weights == w], band) for w in grid])
        a.plot(grid, stats[:, 0], marker="o", ms=3, color=color, label=f"to {role} centroid ({lab})")
        a.fill_between(grid, stats[:, 1], stats[:, 2], color=color, alpha=0.2, linewidth=0)
        spread = float(np.linalg.norm(members - centroid, axis=1).mean())
        a.axhline(spread, color=color, ls=":", lw=1, label=f"real {lab} cells to their centroid")
    a.set_xlabel(
        "interpolation weight" if weight_key == "interpolation_weight" else f"interpolation weight ({weight_key})"
    )
    a.set_ylabel(f"distance to centroid ({comps.shape[1]} PCs)")
    a.set_title(f"{pair['source_label']} \u2192 {pair['target_label']}", fontsize="medium")
    a.legend(fontsize="small", frameon=False)
    return finish(fig, [a], show=show, save=save, return_fig=return_fig, name="interpolation_trajectory",
                  user_ax=ax is not None)


def _summary(d: np.ndarray, band: str) -> tuple[float, float, float]:
    m = float(d.mean())
    if band == "sd":
        s = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        return m, m - s, m + s
    lo, hi = np.quantile(d, [0.25, 0.75])
    return m, float(lo), float(hi)
