"""Label-conservation metrics of cell embeddings (DICE paper, Sec. 4-5 and App. D), built on scib-metrics.

* :func:`leiden_nmi_ari` - ARI and NMI between Leiden clusters and labels over a resolution sweep.
* :func:`silhouette_cosine` - average cosine silhouette width of the labels.
* :func:`clisi` - cell-type LISI (raw, lower is better; or scib's scaled version), computed by :func:`lisi_per_cell`.

The kNN graphs are exact (scikit-learn, Euclidean, the cell itself included as its first neighbour); for Leiden they
are wrapped in :class:`scib_metrics.nearest_neighbors.NeighborsResults`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._checks import check_int, warn_nan
from ._docs import fill_doc

#: Leiden resolutions of the default sweep: 0.01 to 2.0 as in the DICE paper (App. C).
DEFAULT_RESOLUTIONS: tuple[float, ...] = (0.01, 0.05, *[round(0.1 * i, 1) for i in range(1, 21)])


def _embedding_and_labels(x: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(x, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"The embedding must be a 2-D (cells x dimensions) array, got shape {emb.shape}.")
    lab = np.asarray(labels)
    if lab.shape != (emb.shape[0],):
        raise ValueError(f"labels must have shape ({emb.shape[0]},) (one per cell), got {lab.shape}.")
    if not np.isfinite(emb).all():
        raise ValueError(f"The embedding contains {int((~np.isfinite(emb)).sum())} NaN or infinite values.")
    if len(np.unique(lab.astype(str))) < 2:
        raise ValueError("At least 2 distinct labels are needed to evaluate an embedding.")
    return emb, lab.astype(str)


def _knn(x: np.ndarray, n_neighbors: int, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean kNN (the cell itself included): ``(distances, indices)`` of shape (n_cells, k).

    ``n_neighbors`` (at least ``minimum``) is checked first and capped at ``n_cells - 1``; too few cells for
    ``minimum`` neighbours is its own error.
    """
    from sklearn.neighbors import NearestNeighbors

    n_neighbors = check_int(n_neighbors, "n_neighbors (neighbours per cell, the cell itself included)", minimum)
    k = int(min(n_neighbors, x.shape[0] - 1))
    if k < minimum:
        raise ValueError(f"A {minimum}-NN graph needs at least {minimum + 1} cells, got {x.shape[0]}.")
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return dist, idx


@fill_doc
def leiden_nmi_ari(
    x: Any,
    labels: Any,
    *,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    rule: Literal["max_ari", "max_nmi", "separate"] = "max_ari",
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, Any]:
    """ARI and NMI of Leiden clusters against labels, with the resolution chosen by a sweep.

    A kNN graph (``n_neighbors``, UMAP connectivities as in scanpy) is clustered with Leiden (modularity, igraph) at
    every resolution through :func:`scib_metrics.nmi_ari_cluster_labels_leiden` (``optimize_resolution=False``), and
    ARI / NMI (arithmetic normalisation, which equals the V-measure) are computed against the labels. Because the
    labels choose the resolution, the result is an optimistic, supervised selection; ``rule`` says how:

    * ``"max_ari"`` (default) - the resolution with the highest ARI; ARI and NMI are both reported there. This is the
      DICE paper's protocol (App. C: Leiden over resolutions 0.01-2.0, keep the highest ARI).
    * ``"max_nmi"`` - the resolution with the highest NMI, as :func:`scib_metrics.nmi_ari_cluster_labels_leiden`
      does with its own 10-value grid 0.2-2.0.
    * ``"separate"`` - each metric at its own best resolution (most optimistic).

    Parameters
    ----------
    %(embedding_labels)s
    resolutions
        Leiden resolutions to sweep (default: 0.01, 0.05, 0.1, 0.2, ..., 2.0).
    rule
        Resolution selection rule (see above).
    n_neighbors
        Neighbours of the kNN graph (at least 2; capped at ``n_cells - 1``).
    seed
        Seed of the Leiden runs.

    Returns
    -------
    Dictionary with ``ari``, ``nmi``, ``ari_resolution``, ``nmi_resolution`` and ``sweep`` (a DataFrame with columns
    resolution, ari, nmi).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal(0, 1, (100, 5)), rng.normal(8, 1, (100, 5))])
    >>> leiden_nmi_ari(x, np.repeat(["a", "b"], 100), resolutions=[0.1, 0.5])["ari"]  # doctest: +SKIP
    1.0
    """
    from scib_metrics import nmi_ari_cluster_labels_leiden
    from scib_metrics.nearest_neighbors import NeighborsResults

    emb, lab = _embedding_and_labels(x, labels)
    if rule not in ("max_ari", "max_nmi", "separate"):
        raise ValueError(f"rule must be 'max_ari', 'max_nmi' or 'separate', got {rule!r}.")
    try:
        res = [float(r) for r in resolutions]
    except (TypeError, ValueError):
        raise ValueError(f"resolutions must be a sequence of positive numbers, got {resolutions!r}.") from None
    if not res or not all(np.isfinite(r) and r > 0 for r in res):
        raise ValueError(f"resolutions must be a non-empty sequence of positive numbers, got {resolutions!r}.")
    dist, idx = _knn(emb, n_neighbors)
    nn = NeighborsResults(indices=idx, distances=dist)
    rows = []
    for r in res:
        out = nmi_ari_cluster_labels_leiden(nn, lab, optimize_resolution=False, resolution=r, seed=seed)
        rows.append({"resolution": r, "ari": float(out["ari"]), "nmi": float(out["nmi"])})
    sweep = pd.DataFrame(rows)
    best_ari = int(sweep["ari"].to_numpy().argmax())
    best_nmi = int(sweep["nmi"].to_numpy().argmax())
    i_ari, i_nmi = {"max_ari": (best_ari, best_ari), "max_nmi": (best_nmi, best_nmi), "separate": (best_ari, best_nmi)}[
        rule
    ]
    return {
        "ari": float(sweep["ari"].iloc[i_ari]),
        "nmi": float(sweep["nmi"].iloc[i_nmi]),
        "ari_resolution": float(sweep["resolution"].iloc[i_ari]),
        "nmi_resolution": float(sweep["resolution"].iloc[i_nmi]),
        "sweep": sweep,
    }


@fill_doc
def silhouette_cosine(x: Any, labels: Any, *, rescale: bool = True) -> float:
    """Average silhouette width of the labels with cosine distance (DICE paper, App. D item 1).

    ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` where ``a(i)`` is the mean cosine distance from cell i to the other
    cells of its label and ``b(i)`` the smallest mean distance to the cells of another label; cells of singleton
    labels get ``s = 0`` (the conventions of :func:`sklearn.metrics.silhouette_score` with ``metric="cosine"``, which
    it equals). The mean over cells is computed in row chunks (``O(chunk x n_cells)`` memory instead of the full
    distance matrix). With ``rescale`` the mean is mapped to ``(s + 1) / 2`` in ``[0, 1]`` like scib's
    ``silhouette_label``; the DICE paper's Table 1 reports the raw ``s`` in ``[-1, 1]`` (``rescale=False``).

    Parameters
    ----------
    %(embedding_labels)s
    rescale
        Map to ``[0, 1]``.

    Returns
    -------
    The (rescaled) average cosine silhouette width; higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> round(silhouette_cosine(x, ["a", "a", "b", "b"], rescale=False), 2)
    0.99
    """
    emb, lab = _embedding_and_labels(x, labels)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    codes = np.asarray(pd.Categorical(lab).codes)
    onehot = np.eye(codes.max() + 1)[codes]
    sizes = onehot.sum(axis=0)
    n = emb.shape[0]
    chunk = max(1, 2**24 // n)
    s = np.empty(n)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        dist = np.clip(1.0 - unit[rows] @ unit.T, 0.0, 2.0)
        dist[np.arange(dist.shape[0]), np.arange(rows.start, rows.stop)] = 0.0
        sums = dist @ onehot
        own = codes[rows]
        idx = np.arange(dist.shape[0])
        own_size = sizes[own]
        with np.errstate(invalid="ignore", divide="ignore"):
            a = sums[idx, own] / (own_size - 1)
            mean_other = sums / sizes
        mean_other[idx, own] = np.inf
        b = mean_other.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            si = (b - a) / np.maximum(a, b)
        s[rows] = np.where((own_size > 1) & np.isfinite(si), si, 0.0)
    mean = float(s.mean())
    return (mean + 1.0) / 2.0 if rescale else mean


def lisi_per_cell(
    distances: np.ndarray,
    indices: np.ndarray,
    labels: np.ndarray,
    perplexity: float,
    tol: float = 1e-5,
    max_iter: int = 50,
) -> np.ndarray:
    """Local inverse Simpson index of every cell from its kNN distances (Korsunsky et al., 2019).

    Each cell weights its neighbours (itself excluded) by ``exp(-beta * d)``, with the precision ``beta`` found by
    the usual perplexity calibration: starting from ``beta = 1``, it is doubled / halved until the entropy of the
    weights brackets ``log(perplexity)`` and then bisected, until the entropy is within ``tol`` or after ``max_iter``
    steps (the algorithm of Harmony's LISI and :func:`scib_metrics.lisi_knn`). The Simpson index is
    ``sum_c (sum of the weights of label c)^2`` and LISI its inverse; cells whose weights all underflow get NaN.
    This vectorised numpy version avoids the per-shape jax compilation of scib-metrics (seconds on a CPU for every
    new number of cells) and is tested against it.
    """
    d = np.asarray(distances, dtype=np.float64)
    keep = indices != np.arange(indices.shape[0])[:, None]
    d = d - np.where(keep, d, np.inf).min(axis=1, keepdims=True)  # shift: weights are invariant, no underflow
    target = np.log(perplexity)

    def entropy(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", under="ignore"):  # beta -> 0 or inf for degenerate neighbourhoods
            w = np.where(keep, np.exp(-d * beta[:, None]), 0.0)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            h = np.log(total) + beta * (d * w).sum(axis=1) / total
            return h, w / total[:, None]

    n = d.shape[0]
    beta, lo, hi = np.ones(n), np.full(n, -np.inf), np.full(n, np.inf)
    h, p = entropy(beta)
    for _ in range(max_iter):
        diff = h - target
        active = np.abs(diff) >= tol
        if not active.any():
            break
        up = active & (diff > 0)
        down = active & (diff <= 0)
        lo = np.where(up, beta, lo)
        hi = np.where(down, beta, hi)
        beta = np.where(up, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2), beta)
        beta = np.where(down, np.where(np.isinf(lo), beta / 2, (beta + lo) / 2), beta)
        h_new, p_new = entropy(beta)
        h = np.where(active, h_new, h)
        p = np.where(active[:, None], p_new, p)
    codes = pd.Categorical(labels).codes
    neighbour_codes = codes[indices]
    simpson = np.zeros(n)
    for c in range(codes.max() + 1):
        mass = np.where(neighbour_codes == c, p, 0.0).sum(axis=1)
        simpson += mass * mass
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(h) & (simpson > 0), 1.0 / simpson, np.nan)


@fill_doc
def clisi(x: Any, labels: Any, *, n_neighbors: int = 90, perplexity: float | None = None, scale: bool = False) -> float:
    """Cell-type local inverse Simpson index (Korsunsky et al., 2019; DICE paper, App. D item 3).

    Per-cell LISI values (:func:`lisi_per_cell`, the algorithm of :func:`scib_metrics.lisi_knn`) on an exact
    ``n_neighbors``-NN graph with perplexity ``n_neighbors // 3`` by default. With ``scale=False`` (default) the
    result is their *mean*, in ``[1, n_labels]`` - 1 means every neighbourhood is pure, lower is better - the
    quantity the DICE paper reports (Tables 1-2). With ``scale=True`` it is scib's convention
    (:func:`scib_metrics.clisi_knn`): the median rescaled to ``(n_labels - median) / (n_labels - 1)`` in
    ``[0, 1]``, higher is better.

    Parameters
    ----------
    %(embedding_labels)s
    n_neighbors
        Neighbours per cell, the cell itself included (at least 3; capped at ``n_cells - 1``).
    perplexity
        Effective neighbourhood size, a positive number; None uses ``n_neighbors // 3``.
    scale
        Return scib's scaled median instead of the raw mean.

    Returns
    -------
    The cLISI value. Cells whose neighbourhood weights all underflow have no LISI and are left out of the mean;
    if no cell has one the result is NaN, with a RuntimeWarning.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal(0, 1, (50, 3)), rng.normal(20, 1, (50, 3))])
    >>> round(clisi(x, np.repeat(["a", "b"], 50), n_neighbors=30), 3)
    1.0
    """
    emb, lab = _embedding_and_labels(x, labels)
    if perplexity is not None and (isinstance(perplexity, bool) or not isinstance(perplexity, (int, float))
                                   or not (np.isfinite(perplexity) and perplexity > 0)):
        raise ValueError(f"perplexity must be a positive number or None (n_neighbors // 3), got {perplexity!r}.")
    dist, idx = _knn(emb, n_neighbors, minimum=3)
    perp = float(np.floor(idx.shape[1] / 3)) if perplexity is None else float(perplexity)
    lisi = lisi_per_cell(dist, idx, lab, perp)
    if not np.isfinite(lisi).any():
        warn_nan("clisi", "every cell's neighbourhood weights underflowed (duplicated points or an extreme "
                 "perplexity), so no cell has a LISI value")
        return float("nan")
    if scale:
        n_labels = len(np.unique(lab))
        return float((n_labels - np.nanmedian(lisi)) / (n_labels - 1))
    return float(np.nanmean(lisi))
