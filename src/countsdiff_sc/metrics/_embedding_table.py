"""The embedding metric table, :func:`evaluate_embedding`, and the registry of its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import check_obs_key, to_dense
from ._checks import check_int, check_key
from ._embedding import DEFAULT_RESOLUTIONS, clisi, leiden_nmi_ari, silhouette_cosine
from ._tables import MetricSpec, compute_metrics, registry, resolve_metrics, store_table


@dataclass(eq=False)
class _EmbeddingInputs:
    """One embedding of an :func:`evaluate_embedding` call with its labels and settings, and the Leiden sweep that
    ``ari`` and ``nmi`` share (computed on first use, once)."""

    emb: np.ndarray
    labels: np.ndarray
    resolutions: Sequence[float]
    resolution_rule: str
    n_neighbors: int
    lisi_neighbors: int
    silhouette_rescale: bool
    seed: int

    @cached_property
    def leiden(self) -> tuple[dict[str, Any], str]:
        out = leiden_nmi_ari(
            self.emb,
            self.labels,
            resolutions=self.resolutions,
            rule=self.resolution_rule,
            n_neighbors=self.n_neighbors,
            seed=self.seed,
        )
        note = f"Leiden, {len(self.resolutions)} resolutions, rule={self.resolution_rule}, {self.n_neighbors}-NN"
        return out, note


# --------------------------------------------------------------------------------------------------------------------
# the metrics: {name: (value, resolution, note)}
# --------------------------------------------------------------------------------------------------------------------
def _leiden_metric(name: str) -> MetricSpec:
    def compute(d: _EmbeddingInputs) -> dict[str, tuple[float, float, str]]:
        out, note = d.leiden
        return {name: (out[name], out[f"{name}_resolution"], note)}

    return MetricSpec(name, compute, higher_is_better=True)


def _silhouette(d: _EmbeddingInputs) -> dict[str, tuple[float, float, str]]:
    value = silhouette_cosine(d.emb, d.labels, rescale=d.silhouette_rescale)
    return {"silhouette_cosine": (value, np.nan, "(s + 1) / 2" if d.silhouette_rescale else "raw s in [-1, 1]")}


def _clisi(d: _EmbeddingInputs) -> dict[str, tuple[float, float, str]]:
    value = clisi(d.emb, d.labels, n_neighbors=d.lisi_neighbors)
    return {"clisi": (value, np.nan, f"mean LISI, {d.lisi_neighbors}-NN, lower is better")}


def _clisi_scaled(d: _EmbeddingInputs) -> dict[str, tuple[float, float, str]]:
    value = clisi(d.emb, d.labels, n_neighbors=d.lisi_neighbors, scale=True)
    return {"clisi_scaled": (value, np.nan, "scib scaled median, higher is better")}


#: The metrics of :func:`evaluate_embedding`, in the order they are computed.
EMBEDDING_REGISTRY: dict[str, MetricSpec] = registry(
    [
        _leiden_metric("ari"),
        _leiden_metric("nmi"),
        MetricSpec("silhouette_cosine", _silhouette, higher_is_better=True),
        MetricSpec("clisi", _clisi, higher_is_better=False),
        MetricSpec("clisi_scaled", _clisi_scaled, higher_is_better=True),
    ]
)


# --------------------------------------------------------------------------------------------------------------------
# the table
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
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    chosen = resolve_metrics(metrics, EMBEDDING_REGISTRY)
    n_neighbors = check_int(n_neighbors, "n_neighbors (of the Leiden kNN graph)", 2)
    lisi_neighbors = check_int(lisi_neighbors, "lisi_neighbors (of the cLISI kNN graph)", 3)
    check_key(key_added)
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
        inputs = _EmbeddingInputs(
            emb=to_dense(adata.obsm[key])[present],
            labels=labels,
            resolutions=resolutions,
            resolution_rule=resolution_rule,
            n_neighbors=n_neighbors,
            lisi_neighbors=lisi_neighbors,
            silhouette_rescale=silhouette_rescale,
            seed=seed,
        )
        results = compute_metrics(EMBEDDING_REGISTRY, chosen, inputs)
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
    store_table(
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
