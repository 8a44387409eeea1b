"""Metric tables on AnnData: imputation, generation and embedding benchmarks (tidy DataFrames stored in ``uns``).

Every table is also written to ``adata.uns["countsdiff_metrics"][key_added]`` as a dict of equally long 1-D arrays
(one per column), which h5ad can store; :func:`metrics_table` turns it back into a DataFrame. The parameters of the
call are recorded in ``adata.uns["countsdiff"]["metrics_<key_added>"]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import METRICS_UNS_KEY, as_bool_mask, check_obs_key, get_matrix, record_params
from ._bootstrap import bootstrap_weights, standard_error
from ._checks import as_matrix, check_same_shape, labels_array
from ._distributional import energy_distance_resamples, frechet_weighted, masked_values, mmd_weighted, swd_weighted
from ._embedding import DEFAULT_RESOLUTIONS, clisi, leiden_nmi_ari, silhouette_cosine
from ._generation import (
    GENE_STAT_METRICS,
    SPARSITY_METRICS,
    classifier_auc,
    gene_statistics_weighted,
    log_normalize,
    marker_gene_preservation,
    pca_features,
    sparsity_weighted,
    zero_fraction_per_cell,
)
from ._pointwise import POINTWISE_METRICS, pointwise_stats
from ._scfid import describe_embedder, embed_cells, fit_scfid_embedder

if TYPE_CHECKING:
    from scvi.model import SCVI

IMPUTATION_METRICS = (*POINTWISE_METRICS, "energy_distance", "mmd", "swd", "scfid")
GENERATION_METRICS = ("mmd", "swd", "scfid", "classifier_auc", "gene_statistics", "sparsity", "marker_genes")
EMBEDDING_METRICS = ("ari", "nmi", "silhouette_cosine", "clisi", "clisi_scaled")
#: Column order of the tables (h5ad stores dict keys sorted, so metrics_table restores this order).
_COLUMN_ORDER = [
    "embedding", "metric", "value", "std_error", "n_bootstrap", "resolution", "n_cells", "n_entries", "n_real",
    "n_generated", "note",
]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------------------------------------
def _store_table(adata: ad.AnnData, key_added: str, df: pd.DataFrame, params: dict[str, Any]) -> None:
    if adata.is_view:
        warnings.warn(
            f"The AnnData is a view; the {key_added!r} metric table is returned but not stored in its uns. Pass a "
            "copy (adata[...].copy()) to keep it.",
            UserWarning,
            stacklevel=3,
        )
        return
    columns: dict[str, np.ndarray] = {}
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype.kind in "biuf":
            columns[col] = values
        else:
            columns[col] = np.asarray([str(v) for v in values], dtype=str)
    adata.uns.setdefault(METRICS_UNS_KEY, {})[key_added] = columns
    record_params(adata, f"metrics_{key_added}", params)


def metrics_table(adata: ad.AnnData, key: str = "imputation") -> pd.DataFrame:
    """Read a metric table stored by :func:`evaluate_imputation`, :func:`evaluate_generation` or
    :func:`evaluate_embedding` (also after a write_h5ad / read_h5ad round trip).

    Parameters
    ----------
    adata
        The AnnData object holding ``uns["countsdiff_metrics"][key]``.
    key
        The ``key_added`` of the evaluation.

    Returns
    -------
    The table as a DataFrame.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> a = ad.AnnData(np.zeros((1, 1)))
    >>> a.uns["countsdiff_metrics"] = {"imputation": {"metric": np.array(["rmse"]), "value": np.array([0.5])}}
    >>> metrics_table(a)["value"].tolist()
    [0.5]
    """
    store = adata.uns.get(METRICS_UNS_KEY, {})
    if key not in store:
        raise KeyError(
            f"No metric table {key!r} in adata.uns[{METRICS_UNS_KEY!r}]. Available: {sorted(store) or 'none'}. "
            "Run evaluate_imputation / evaluate_generation / evaluate_embedding first."
        )
    table = store[key]
    columns = sorted(table, key=lambda c: (_COLUMN_ORDER.index(c) if c in _COLUMN_ORDER else len(_COLUMN_ORDER), c))
    return pd.DataFrame({col: np.asarray(table[col]) for col in columns})


def _resolve_metrics(metrics: Sequence[str] | None, available: Sequence[str], default: Sequence[str]) -> list[str]:
    if metrics is None:
        return list(default)
    chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(available)}.")
    return chosen


def _rows_from_values(
    values: dict[str, np.ndarray], notes: dict[str, str], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    rows = []
    for name, vals in values.items():
        rows.append(
            {
                "metric": name,
                "value": float(vals[0]),
                "std_error": standard_error(vals[1:]),
                "n_bootstrap": int(np.isfinite(vals[1:]).sum()),
                **extra,
                "note": notes.get(name, ""),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------------------------
# imputation
# --------------------------------------------------------------------------------------------------------------------
def evaluate_imputation(
    adata: ad.AnnData,
    truth_layer: str | None = None,
    imputed_layer: str = "countsdiff_imputed",
    mask_layer: str = "countsdiff_mask",
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
    chosen = _resolve_metrics(
        metrics,
        IMPUTATION_METRICS,
        [m for m in IMPUTATION_METRICS if m != "scfid" or scfid or embedder is not None],
    )
    if transform not in ("none", "log1p"):
        raise ValueError(f"transform must be 'none' or 'log1p', got {transform!r}.")
    truth_where = "adata.X" if truth_layer is None else f"adata.layers[{truth_layer!r}]"
    truth = as_matrix(get_matrix(adata, truth_layer), truth_where)
    imputed = as_matrix(get_matrix(adata, imputed_layer), f"adata.layers[{imputed_layer!r}]")
    check_same_shape(**{truth_where: truth, f"adata.layers[{imputed_layer!r}]": imputed})
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
    t, p, m = truth[cells], imputed[cells], mask[cells]
    n_cells, n_entries = int(cells.size), int(m.sum())
    rng = np.random.default_rng(seed)
    w = bootstrap_weights(n_cells, n_bootstrap, rng)
    values: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}

    pointwise = [name for name in chosen if name in POINTWISE_METRICS]
    if pointwise:
        stats = pointwise_stats(t, p, m, correlations=tuple(c for c in ("spearman", "pearson") if c in pointwise))
        reduced = stats.reduce(w)
        for name in pointwise:
            values[name] = reduced[name]
        for name in ("spearman", "pearson"):
            if name not in pointwise:
                continue
            n_def = int(np.isfinite(getattr(stats, name)).sum())
            notes[name] = f"per-cell, mean over {n_def} of {n_cells} cells (others: < 2 entries or constant)"
    if "energy_distance" in chosen:
        tv, per_cell = masked_values(t, m, truth_where)
        pv, _ = masked_values(p, m, f"adata.layers[{imputed_layer!r}]")
        cell_of_value = np.repeat(np.arange(n_cells), per_cell)
        values["energy_distance"] = energy_distance_resamples(tv, pv, cell_of_value, cell_of_value, w)
        notes["energy_distance"] = "pooled held-out values (scipy.stats.energy_distance)"

    full_needed = {"mmd", "swd", "scfid"} & set(chosen)
    if full_needed:
        # dense copies in the inputs' float precision (float32 for typical count matrices) to bound memory
        dense_t = t.toarray() if sp.issparse(t) else np.array(t)
        dense_p = p.toarray() if sp.issparse(p) else np.asarray(p)
        dtype = np.result_type(dense_t.dtype, dense_p.dtype, np.float32)
        dense_t = dense_t.astype(dtype, copy=False)
        composite = dense_t.copy()
        composite[m] = dense_p[m]
        del dense_p
        space_t = np.log1p(dense_t) if transform == "log1p" else dense_t
        space_c = np.log1p(np.clip(composite, 0, None)) if transform == "log1p" else composite
        if "mmd" in chosen:
            rows = np.arange(n_cells)
            if mmd_max_cells is not None and n_cells > mmd_max_cells:
                rows = np.sort(np.random.default_rng(seed).choice(n_cells, size=mmd_max_cells, replace=False))
            values["mmd"], sigma = mmd_weighted(space_t[rows], space_c[rows], w[rows], w[rows], seed=seed)
            notes["mmd"] = (
                f"unbiased MMD^2, RBF mixture at (0.25, 0.5, 1, 2, 4) x sigma={sigma:.4g} (median heuristic), "
                f"{rows.size} cells, {transform}"
            )
        if "swd" in chosen:
            values["swd"] = swd_weighted(space_t, space_c, w, w, n_projections=n_projections, seed=seed)
            notes["swd"] = f"sliced W2, {n_projections} directions (seed {seed}), {transform}"
        if "scfid" in chosen:
            if embedder is None:
                embedder = fit_scfid_embedder(
                    adata, layer=truth_layer, seed=seed, cache_dir=cache_dir, **(scfid_kwargs or {})
                )
            obs = adata.obs.iloc[cells].copy()
            var = pd.DataFrame(index=adata.var_names)
            z_t = embed_cells(embedder, ad.AnnData(X=sp.csr_matrix(dense_t), obs=obs, var=var), name="truth")
            z_c = embed_cells(embedder, ad.AnnData(X=sp.csr_matrix(composite), obs=obs, var=var), name="imputed")
            values["scfid"] = frechet_weighted(z_t, z_c, w, w)
            notes["scfid"] = describe_embedder(embedder)

    df = pd.DataFrame(
        _rows_from_values({name: values[name] for name in chosen}, notes, {"n_cells": n_cells, "n_entries": n_entries})
    )
    _store_table(
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


# --------------------------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------------------------
def evaluate_generation(
    real: ad.AnnData | Any,
    generated: ad.AnnData | Any,
    labels_key: str | None = None,
    *,
    generated_labels_key: str | None = None,
    layer: str | None = None,
    generated_layer: str | None = None,
    metrics: Sequence[str] | None = None,
    space: Literal["pca", "log1p", "counts"] = "pca",
    n_pcs: int = 50,
    n_bootstrap: int = 10,
    scfid: bool = False,
    embedder: SCVI | None = None,
    n_estimators: int = 1000,
    n_top_markers: int = 20,
    scfid_kwargs: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    key_added: str = "generation",
) -> pd.DataFrame:
    """Compare generated cells with real cells (scDiffusion Sec. 2.4; Sparse Data Diffusion Sec. 4.2; CountsDiff).

    Metric groups (``metrics``):

    * ``mmd``, ``swd`` - :func:`mmd` / :func:`swd` between the two sets of cells in ``space``: "pca" (default,
      log-normalised cells projected on the top ``n_pcs`` PCs of the pooled real and generated cells, as
      scDiffusion computes its MMD on PCs),
      "log1p" (all log-normalised genes) or "counts".
    * ``scfid`` - :func:`scfid` (with ``embedder`` or an SCVI trained on ``real``); added by default when
      ``scfid=True`` or an embedder is given.
    * ``classifier_auc`` - :func:`classifier_auc` (random forest with ``n_estimators`` trees of depth 5 on PCs).
    * ``gene_statistics`` - the 9 values of :func:`gene_statistics_agreement`.
    * ``sparsity`` - the 4 values of :func:`sparsity_fidelity`.
    * ``marker_genes`` - mean Jaccard index and overlap of :func:`marker_gene_preservation` over labels; only with
      ``labels_key``.

    Standard errors come from ``n_bootstrap`` independent bootstrap resamples of the real and of the generated cells
    for mmd, swd, scfid, gene_statistics and sparsity; classifier_auc and marker_genes have no standard error (NaN)
    because each resample would refit a forest / rerun the tests.

    The table is stored in ``generated.uns["countsdiff_metrics"][key_added]`` when ``generated`` is an AnnData (not
    a view; for a view a warning is emitted instead). ``real`` is never modified (it is often a view such as
    ``adata[adata.obs.cell_type == "B"]``).

    Parameters
    ----------
    real, generated
        AnnData (``layer`` / ``generated_layer`` or ``X``) or count matrices with the same genes in the same order.
    labels_key
        obs column of the labels of ``real`` (enables ``marker_genes``).
    generated_labels_key
        obs column of the labels of ``generated``; None uses ``labels_key``.
    layer, generated_layer
        Layers holding the counts (AnnData only).
    metrics
        Subset of the metric groups above; None = all that apply.
    space
        Feature space of mmd and swd.
    n_pcs
        Number of PCs for ``space="pca"`` and for the classifier.
    n_bootstrap
        Number of bootstrap resamples (0 = none).
    scfid, embedder, scfid_kwargs, cache_dir
        scFID settings (see :func:`scfid` / :func:`fit_scfid_embedder`).
    n_estimators
        Trees of the random forest.
    n_top_markers
        Markers per label.
    seed
        Seed of the bootstrap, PCA, directions, classifier and embedder.
    key_added
        Key under ``generated.uns["countsdiff_metrics"]``.

    Returns
    -------
    DataFrame with columns ``metric, value, std_error, n_bootstrap, n_real, n_generated, note``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real, fake = rng.poisson(3, (100, 20)), rng.poisson(3, (80, 20))
    >>> df = evaluate_generation(real, fake, metrics=["sparsity"], n_bootstrap=2)
    >>> df["metric"].tolist()
    ['sparsity_real', 'sparsity_generated', 'sparsity_abs_diff', 'sparsity_w1']
    """
    default = [g for g in GENERATION_METRICS if g != "scfid" or scfid or embedder is not None]
    if labels_key is None:
        default.remove("marker_genes")
    chosen = _resolve_metrics(metrics, GENERATION_METRICS, default)
    if "marker_genes" in chosen and labels_key is None:
        raise ValueError("The marker_genes metric needs labels_key (an obs column of real with the cell labels).")
    if space not in ("pca", "log1p", "counts"):
        raise ValueError(f"space must be 'pca', 'log1p' or 'counts', got {space!r}.")
    r = as_matrix(real, "real", layer)
    g = as_matrix(generated, "generated", generated_layer)
    if r.shape[1] != g.shape[1]:
        raise ValueError(
            f"real has {r.shape[1]} genes but generated has {g.shape[1]}; both must have the same genes in the same "
            "order (subset with adata[:, genes])."
        )
    dense_r = r.toarray() if sp.issparse(r) else np.asarray(r)
    dense_g = g.toarray() if sp.issparse(g) else np.asarray(g)
    rng = np.random.default_rng(seed)
    wr = bootstrap_weights(dense_r.shape[0], n_bootstrap, rng)
    wg = bootstrap_weights(dense_g.shape[0], n_bootstrap, rng)
    values: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    nan_se = np.full(n_bootstrap + 1, np.nan)

    if {"mmd", "swd"} & set(chosen):
        if space == "counts":
            fr, fg = dense_r.astype(np.float64), dense_g.astype(np.float64)
        else:
            fr, fg = log_normalize(dense_r), log_normalize(dense_g)
            if space == "pca":
                fr, fg = pca_features(fr, fg, n_pcs)
        space_note = f"{fr.shape[1]} PCs of log1p-CP10k (pooled fit)" if space == "pca" else space
        if "mmd" in chosen:
            values["mmd"], sigma = mmd_weighted(fr, fg, wr, wg, seed=seed)
            notes["mmd"] = f"unbiased MMD^2, RBF mixture at (0.25..4) x sigma={sigma:.4g}, {space_note}"
        if "swd" in chosen:
            values["swd"] = swd_weighted(fr, fg, wr, wg, seed=seed)
            notes["swd"] = f"sliced W2, 1000 directions, {space_note}"
    if "scfid" in chosen:
        if embedder is None:
            embedder = fit_scfid_embedder(real, layer=layer, seed=seed, cache_dir=cache_dir, **(scfid_kwargs or {}))
        z_r = embed_cells(embedder, real, layer=layer, name="real")
        z_g = embed_cells(embedder, generated, layer=generated_layer, name="generated")
        values["scfid"] = frechet_weighted(z_r, z_g, wr, wg)
        notes["scfid"] = describe_embedder(embedder)
    if "classifier_auc" in chosen:
        auc = classifier_auc(dense_r, dense_g, n_pcs=n_pcs, n_estimators=n_estimators, seed=seed)
        values["classifier_auc"] = np.concatenate([[auc], nan_se[1:]])
        notes["classifier_auc"] = f"random forest ({n_estimators} trees, depth 5) on PCs, held-out 25%"
    if "gene_statistics" in chosen:
        values.update(gene_statistics_weighted(dense_r, dense_g, wr, wg))
        for name in GENE_STAT_METRICS:
            notes[name] = "zero fraction on counts" if "zero_frac" in name else "log1p-CP10k expression"
    if "sparsity" in chosen:
        values.update(sparsity_weighted(zero_fraction_per_cell(dense_r), zero_fraction_per_cell(dense_g), wr, wg))
        notes.update(dict.fromkeys(SPARSITY_METRICS, "fraction of zero counts"))
    if "marker_genes" in chosen:
        table = marker_gene_preservation(
            real,
            generated,
            labels_array(real, labels_key, dense_r.shape[0], "real"),
            labels_array(generated, generated_labels_key or labels_key, dense_g.shape[0], "generated"),
            layer=layer,
            generated_layer=generated_layer,
            n_top=n_top_markers,
        )
        for col in ("jaccard", "overlap"):
            values[f"marker_{col}"] = np.concatenate([[table[col].mean()], nan_se[1:]])
            notes[f"marker_{col}"] = f"top {n_top_markers} t-test markers, mean over {len(table)} labels"

    df = pd.DataFrame(
        _rows_from_values(values, notes, {"n_real": int(dense_r.shape[0]), "n_generated": int(dense_g.shape[0])})
    )
    if isinstance(generated, ad.AnnData):
        _store_table(
            generated,
            key_added,
            df,
            {
                "labels_key": labels_key,
                "metrics": chosen,
                "space": space,
                "n_pcs": n_pcs,
                "n_bootstrap": n_bootstrap,
                "seed": seed,
            },
        )
    return df


# --------------------------------------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------------------------------------
def evaluate_embedding(
    adata: ad.AnnData,
    embedding_keys: str | Sequence[str],
    labels_key: str,
    *,
    metrics: Sequence[str] | None = None,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    resolution_rule: Literal["max_ari", "max_nmi", "separate"] = "max_ari",
    n_neighbors: int = 15,
    lisi_neighbors: int = 90,
    silhouette_rescale: bool = True,
    seed: int = 0,
    key_added: str = "embedding",
) -> pd.DataFrame:
    """Label-conservation metrics of one or more embeddings in ``adata.obsm`` (DICE paper, Sec. 4-5, App. D).

    Metrics (``metrics``, default all):

    * ``ari``, ``nmi`` - Leiden clusters vs labels over a resolution sweep (:func:`leiden_nmi_ari`); the resolution
      is chosen with the labels by ``resolution_rule`` (default "max_ari", the DICE protocol) and is recorded in the
      ``resolution`` column. These are supervised, optimistic selections.
    * ``silhouette_cosine`` - :func:`silhouette_cosine` (rescaled to [0, 1] unless ``silhouette_rescale=False``).
    * ``clisi`` - mean cLISI, lower is better, 1 = pure neighbourhoods (the DICE paper's number);
      ``clisi_scaled`` - scib's scaled median, higher is better (:func:`clisi`).

    Cells whose label is missing are left out. No bootstrap: ``std_error`` is NaN.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``obsm`` and labels in ``obs``.
    embedding_keys
        One or more ``obsm`` keys (e.g. ``["X_pca", "X_dice"]``).
    labels_key
        obs column with the reference labels.
    metrics
        Subset of ``ari, nmi, silhouette_cosine, clisi, clisi_scaled``.
    resolutions
        Leiden resolutions to sweep.
    resolution_rule
        "max_ari", "max_nmi" or "separate" (see :func:`leiden_nmi_ari`).
    n_neighbors
        Neighbours of the Leiden kNN graph.
    lisi_neighbors
        Neighbours of the cLISI kNN graph.
    silhouette_rescale
        Report ``(s + 1) / 2`` (scib convention) instead of the raw silhouette.
    seed
        Seed of the Leiden runs.
    key_added
        Key under ``adata.uns["countsdiff_metrics"]``.

    Returns
    -------
    DataFrame with one row per (embedding, metric) and the columns ``embedding, metric, value, std_error,
    resolution, n_cells, note``.

    Examples
    --------
    >>> import numpy as np, anndata as ad, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> obs = pd.DataFrame({"ct": np.repeat(["a", "b"], 30)}, index=[f"cell{i}" for i in range(60)])
    >>> adata = ad.AnnData(np.zeros((60, 1)), obs=obs)
    >>> adata.obsm["X_emb"] = np.vstack([rng.normal([5, 0, 0], 1, (30, 3)), rng.normal([0, 5, 0], 1, (30, 3))])
    >>> evaluate_embedding(adata, "X_emb", "ct", metrics=["silhouette_cosine"])["value"].round(2).tolist()
    [0.97]
    """
    chosen = _resolve_metrics(metrics, EMBEDDING_METRICS, EMBEDDING_METRICS)
    keys = [embedding_keys] if isinstance(embedding_keys, str) else list(embedding_keys)
    if not keys:
        raise ValueError("embedding_keys is empty; pass obsm keys such as ['X_pca', 'X_dice'].")
    for key in keys:
        if key not in adata.obsm:
            raise KeyError(
                f"Embedding {key!r} not found in adata.obsm. Available: {sorted(adata.obsm.keys()) or 'none'}. "
                "Compute it first (e.g. sc.pp.pca for 'X_pca', DICEModel.embed for 'X_dice')."
            )
    check_obs_key(adata, labels_key)
    present = adata.obs[labels_key].notna().to_numpy()
    labels = adata.obs[labels_key].astype(str).to_numpy()[present]
    rows = []
    for key in keys:
        emb = np.asarray(adata.obsm[key].toarray() if sp.issparse(adata.obsm[key]) else adata.obsm[key])[present]
        results: dict[str, tuple[float, float, str]] = {}
        if {"ari", "nmi"} & set(chosen):
            out = leiden_nmi_ari(
                emb, labels, resolutions=resolutions, rule=resolution_rule, n_neighbors=n_neighbors, seed=seed
            )
            note = f"Leiden, {len(resolutions)} resolutions, rule={resolution_rule}, {n_neighbors}-NN"
            results["ari"] = (out["ari"], out["ari_resolution"], note)
            results["nmi"] = (out["nmi"], out["nmi_resolution"], note)
        if "silhouette_cosine" in chosen:
            value = silhouette_cosine(emb, labels, rescale=silhouette_rescale)
            results["silhouette_cosine"] = (value, np.nan, "(s + 1) / 2" if silhouette_rescale else "raw s in [-1, 1]")
        if "clisi" in chosen:
            value = clisi(emb, labels, n_neighbors=lisi_neighbors)
            results["clisi"] = (value, np.nan, f"mean LISI, {lisi_neighbors}-NN, lower is better")
        if "clisi_scaled" in chosen:
            value = clisi(emb, labels, n_neighbors=lisi_neighbors, scale=True)
            results["clisi_scaled"] = (value, np.nan, "scib scaled median, higher is better")
        for name in chosen:
            value, resolution, note = results[name]
            rows.append(
                {
                    "embedding": key,
                    "metric": name,
                    "value": float(value),
                    "std_error": np.nan,
                    "resolution": float(resolution),
                    "n_cells": int(present.sum()),
                    "note": note,
                }
            )
    df = pd.DataFrame(rows)
    _store_table(
        adata,
        key_added,
        df,
        {
            "embedding_keys": keys,
            "labels_key": labels_key,
            "metrics": chosen,
            "resolution_rule": resolution_rule,
            "resolutions": [float(r) for r in resolutions],
            "n_neighbors": n_neighbors,
            "lisi_neighbors": lisi_neighbors,
            "seed": seed,
        },
    )
    return df
