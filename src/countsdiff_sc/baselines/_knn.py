"""k-nearest-neighbour imputation baseline: neighbours compared on the entries each cell has observed."""

from __future__ import annotations

import warnings
from typing import Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._keys import MASK
from .._utils import log_normalize
from ..pp import ObsSelection, resolve_obs_selection
from ._common import load_inputs, load_reference, write_output


def impute_knn(
    adata: ad.AnnData,
    reference: ad.AnnData | ObsSelection | None = None,
    *,
    mask_layer: str = MASK,
    key_added: str = "knn_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
    n_neighbors: int = 15,
    n_pcs: int | None = 30,
    seed: int = 0,
    distance: Literal["observed", "zero_filled"] = "observed",
) -> np.ndarray:
    """Impute held-out entries with the library-size-rescaled mean of the cell's nearest neighbours.

    Procedure, for every cell of ``adata`` with entries to fill:

    1. **Observed entries only.** A cell's *known* entries are those not held out (``layers[mask_layer]``); held-out
       values are never read (they are set to 0 before anything else, in ``adata`` and in the reference cells), so
       they cannot leak into library sizes, distances or neighbour averages. A cell's observed library ``l_i`` is the
       sum of its known entries.
    2. **Profiles.** Each cell is normalised to the median reference library and ``log1p``-transformed. With the
       default ``distance="observed"`` the normaliser is the cell's estimated *full* library ``l_i / f_i``, where
       ``f_i`` is the share of the reference mean profile that falls on the cell's known genes, so that a query cell
       with half its genes held out is on the same scale as a complete reference cell.
    3. **Distances** (``distance=``):

       - ``"observed"`` (default): cells are compared only on the genes both have observed. With ``n_pcs=None``
         the distance is the mean squared difference of the ``log1p`` profiles over those genes (exact, no
         embedding). With ``n_pcs`` set, a PCA with ``n_pcs`` components is fitted on the reference profiles (their
         held-out entries, if any, replaced by the gene's mean over reference cells that observe it) and every cell
         is placed in it by least squares on its known genes only (a masked projection; for a complete cell this is
         the ordinary PCA transform); distances are Euclidean in that space.
       - ``"zero_filled"``: the former default: held-out genes of a query cell enter a PCA embedding (``n_pcs``;
         ``None``: the ``log1p`` profiles themselves) as zeros and the library is not corrected. It is leakage-free
         but pulls query cells towards low-expression neighbours, which made its held-out error much larger than
         ``"observed"``'s under MCAR masks (the imputation benchmark page of the docs has the figures). Kept for
         reproducing old results.

       The ``n_neighbors`` nearest reference cells are taken (exact brute-force search: deterministic); a cell is
       never its own neighbour, and reference cells without observed counts are not candidates.
    4. **Estimate.** For gene ``j``, ``p_ij`` is the mean of ``x_nj / l_n`` over the neighbours ``n`` that observe
       gene ``j`` (not held out and, when ``valid_layer`` is given, valid); when none of them does, ``p_ij`` is the
       mean of ``x_nj / l_n`` over all reference cells observing ``j`` (the gene's reference mean, counted in
       ``uns``; a gene that no reference cell observes gets 0 with a ``UserWarning``). The profile is rescaled to
       the cell's observed library, ``x_ij = p_ij * l_i / sum_{k not held out in i} p_ik`` (the library correction
       of :func:`impute_magic` and :func:`impute_scvi`). Cells without observed counts get 0 (``UserWarning``); if
       the neighbours' profile has no mass on the cell's observed genes, ``l_i`` is replaced by the median
       reference library size.

    Parameters
    ----------
    adata
        AnnData with counts in ``X`` (or ``layers[layer]``) and a boolean held-out mask in ``layers[mask_layer]``.
    reference
        Cells the neighbours are drawn from (and the PCA is fitted on):

        - ``None``: all cells of ``adata`` (their entries that are not held out);
        - an AnnData of training cells with the same genes (``var_names``; reordered if needed). Its
          ``layers[mask_layer]`` entries, if that layer exists, are treated as held out; ``valid_layer`` must exist
          in it when given;
        - a selection of cells of ``adata``: boolean array / Series, boolean obs column name, or
          ``(column, value)``, e.g. ``("countsdiff_split", "train")``.
    mask_layer
        Boolean layer, ``True`` = held out.
    key_added
        Output layer (float32).
    layer
        Layer holding the counts (in ``adata`` and in a reference AnnData); ``None`` uses ``X``.
    valid_layer
        Optional boolean validity layer: invalid entries are not averaged over and not imputed (left as observed).
    n_neighbors
        Number of neighbours (reduced, with a ``UserWarning``, when the reference has fewer candidate cells).
    n_pcs
        Number of principal components of the embedding (capped by the reference size and the number of genes);
        ``None`` skips the PCA (with ``distance="observed"``: exact masked distances over the shared known genes;
        their cost grows with cells x reference cells x genes, so keep a PCA for large data).
    seed
        Random state of the (randomized) PCA; results are deterministic for a given seed.
    distance
        How cells are compared: ``"observed"`` (default; on each pair's known genes) or ``"zero_filled"`` (held-out
        genes as zeros; the former behaviour). See step 3.

    Returns
    -------
    The imputed matrix (float32, dense), also stored in ``adata.layers[key_added]``; observed entries unchanged.
    Parameters and the number of gene-mean fallbacks are recorded in ``adata.uns["countsdiff"][key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.mask_mcar(adata, rate=0.5, valid_layer=None)
    >>> out = cds.baselines.impute_knn(adata, n_neighbors=10)
    >>> out.shape
    (700, 765)
    """
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}.")
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, (int, np.integer)) or n_pcs < 1):
        raise ValueError(f"n_pcs must be a positive integer or None, got {n_pcs!r}.")
    if distance not in ("observed", "zero_filled"):
        raise ValueError(f"distance must be 'observed' or 'zero_filled', got {distance!r}.")
    inputs = load_inputs(adata, mask_layer, layer, valid_layer, key_added)
    ref = load_reference(adata, inputs, reference, layer, mask_layer, valid_layer)

    # Positions of the reference cells in adata (-1 for an external AnnData), to exclude each cell from its own
    # neighbourhood.
    if reference is None:
        ref_rows = np.arange(adata.n_obs)
    elif isinstance(reference, ad.AnnData):
        ref_rows = np.full(ref.counts.shape[0], -1)
    else:
        ref_rows = np.flatnonzero(resolve_obs_selection(adata, reference, "reference"))

    # 1. observed profiles: held-out entries are zeroed before any use.
    ref_x = np.where(ref.masked, 0.0, ref.counts)
    ref_lib = ref_x.sum(axis=1)
    pool = ref_lib > 0
    if not pool.any():
        raise ValueError("No reference cell has observed counts; kNN imputation needs observed neighbours.")
    ref_x, ref_lib, ref_rows = ref_x[pool], ref_lib[pool], ref_rows[pool]
    ref_observed = ref.observed[pool]
    ref_known = ~ref.masked[pool]
    target = float(np.median(ref_lib))

    query = np.flatnonzero(inputs.fill.any(axis=1))
    estimate = np.zeros(inputs.counts.shape, dtype=np.float64)
    n_fallback = 0
    k_eff = int(n_neighbors)
    n_pcs_eff: int | None = None
    if query.size:
        q_x = inputs.observed_input[query].astype(np.float64)
        q_lib = q_x.sum(axis=1)

        in_pool = np.isin(query, ref_rows)
        n_candidates = ref_x.shape[0] - (1 if in_pool.any() else 0)
        if n_candidates < 1:
            raise ValueError("The reference holds no cell other than the one to impute; pass a larger reference.")
        if k_eff > n_candidates:
            warnings.warn(
                f"n_neighbors={n_neighbors} exceeds the {n_candidates} candidate reference cells; using "
                f"{n_candidates}.",
                UserWarning,
                stacklevel=2,
            )
            k_eff = n_candidates
        n_pcs_req = None if n_pcs is None else min(int(n_pcs), ref_x.shape[0] - 1, ref_x.shape[1])
        if n_pcs_req is not None and n_pcs_req < 1:
            n_pcs_req = None
        drop_self = bool(in_pool.any())
        if distance == "zero_filled":
            # 2-3. former behaviour: held-out genes of the query enter a PCA embedding as zeros.
            ref_emb = log_normalize(ref_x, target)
            q_emb = log_normalize(q_x, target)
            if n_pcs_req is not None:
                from sklearn.decomposition import PCA

                pca = PCA(n_components=n_pcs_req, svd_solver="randomized", random_state=seed)
                ref_emb = pca.fit_transform(ref_emb)
                q_emb = pca.transform(q_emb)
            idx = _neighbours(ref_emb, q_emb, ref_rows, query, k_eff, drop_self=drop_self)
        else:
            # 2. profiles normalised by the estimated full library (observed library / share of the mean profile).
            q_known = ~inputs.mask[query]
            share = _gene_shares(ref_x, ref_lib, ref_known)
            ref_prof = _observed_profiles(ref_x, ref_lib, ref_known, share, target)
            q_prof = _observed_profiles(q_x, q_lib, q_known, share, target)
            # 3. neighbours on the known genes only.
            if n_pcs_req is not None:
                ref_emb, q_emb = _masked_pca(ref_prof, ref_known, q_prof, q_known, n_pcs_req, seed)
                idx = _neighbours(ref_emb, q_emb, ref_rows, query, k_eff, drop_self=drop_self)
            else:
                idx = _masked_neighbours(ref_prof, ref_known, q_prof, q_known, ref_rows, query, k_eff)
        n_pcs_eff = n_pcs_req

        # 4. mean of the normalised neighbour values over neighbours observing the gene.
        rel = np.where(ref_observed, ref_x / ref_lib[:, None], 0.0)
        obs_f = ref_observed.astype(np.float64)
        n_ref = ref_x.shape[0]
        graph = sp.csr_matrix(
            (np.ones(idx.size), (np.repeat(np.arange(query.size), k_eff), idx.ravel())), shape=(query.size, n_ref)
        )
        sums = np.asarray(graph @ rel)
        counts = np.asarray(graph @ obs_f)
        gene_mean = _reference_gene_means(rel, obs_f)
        empty = counts == 0
        profile = np.where(empty, gene_mean[None, :], sums / np.maximum(counts, 1.0))
        n_fallback = int(np.count_nonzero(empty & inputs.fill[query]))

        q_known = ~inputs.mask[query]
        denom = np.where(q_known, profile, 0.0).sum(axis=1)
        lib = np.where(denom > 0, q_lib, target)
        scale = np.where(q_lib > 0, lib / np.where(denom > 0, denom, 1.0), 0.0)
        n_empty_cells = int(np.count_nonzero(q_lib == 0))
        if n_empty_cells:
            warnings.warn(
                f"{n_empty_cells} cells to impute have no observed counts; their held-out entries are imputed with 0.",
                UserWarning,
                stacklevel=2,
            )
        estimate[query] = profile * scale[:, None]

    params = {
        "method": "knn",
        "reference": ref.description,
        "mask_layer": mask_layer,
        "layer": layer,
        "valid_layer": valid_layer,
        "n_neighbors": k_eff,
        "n_pcs": n_pcs_eff,
        "seed": int(seed),
        "distance": distance,
        "target_sum": target,
        "n_gene_mean_fallbacks": n_fallback,
    }
    return write_output(adata, inputs, estimate, key_added, params)


def _neighbours(
    ref_emb: np.ndarray, q_emb: np.ndarray, ref_rows: np.ndarray, query: np.ndarray, k: int, drop_self: bool
) -> np.ndarray:
    """Indices (into the reference) of the ``k`` nearest reference cells of each query cell, self excluded
    (``drop_self``: some query cells are reference cells, so one extra candidate is searched)."""
    from sklearn.neighbors import NearestNeighbors

    extra = 1 if drop_self else 0
    nn = NearestNeighbors(n_neighbors=min(k + extra, ref_emb.shape[0]), algorithm="brute")
    nn.fit(ref_emb)
    _, idx = nn.kneighbors(q_emb)
    is_self = ref_rows[idx] == query[:, None]
    # Stable sort moves the cell itself (if found) behind its true neighbours; then keep the first k.
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)[:, :k]


def _reference_gene_means(rel: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Mean normalised value of each gene over the reference cells observing it (0 and a warning if none)."""
    n = observed.sum(axis=0)
    n_empty = int(np.count_nonzero(n == 0))
    if n_empty:
        warnings.warn(
            f"{n_empty} genes have no observed entry in the reference cells; where no neighbour observes them "
            "they are imputed with 0.",
            UserWarning,
            stacklevel=3,
        )
    return rel.sum(axis=0) / np.maximum(n, 1.0)


def _gene_shares(ref_x: np.ndarray, ref_lib: np.ndarray, ref_known: np.ndarray) -> np.ndarray:
    """Reference mean profile (mean of ``x / l`` over the cells that know each gene), normalised to sum 1."""
    rel = np.where(ref_known, ref_x / ref_lib[:, None], 0.0)
    mean = rel.sum(axis=0) / np.maximum(ref_known.sum(axis=0), 1)
    total = mean.sum()
    return mean / total if total > 0 else np.full(mean.shape, 1.0 / mean.size)


def _observed_profiles(
    x: np.ndarray, lib: np.ndarray, known: np.ndarray, share: np.ndarray, target: float
) -> np.ndarray:
    """``log1p`` of counts normalised by the estimated full library ``lib / f`` (``f``: share of the reference mean
    profile on the cell's known genes); held-out entries are 0 and must be ignored by the caller."""
    frac = known.astype(np.float64) @ share
    frac = np.where(frac > 0, frac, 1.0)
    scale = np.where(lib > 0, target * frac / np.where(lib > 0, lib, 1.0), 0.0)
    return np.log1p(np.where(known, x, 0.0) * scale[:, None])


def _masked_neighbours(
    ref_prof: np.ndarray,
    ref_known: np.ndarray,
    q_prof: np.ndarray,
    q_known: np.ndarray,
    ref_rows: np.ndarray,
    query: np.ndarray,
    k: int,
) -> np.ndarray:
    """``k`` nearest reference cells by mean squared difference over the genes known in both cells (self and
    pairs without a shared known gene excluded). Exact; processed in chunks of query cells."""
    complete = bool(ref_known.all())
    b = ref_known.astype(np.float64)
    r_sq = ref_prof**2
    out = np.empty((query.size, k), dtype=np.int64)
    chunk = max(1, 2**24 // max(1, ref_prof.shape[0]))
    for start in range(0, query.size, chunk):
        sl = slice(start, min(query.size, start + chunk))
        a = q_known[sl].astype(np.float64)
        y = np.where(q_known[sl], q_prof[sl], 0.0)
        if complete:  # every reference entry known: the shared genes are the query's
            sq = (a * y**2).sum(axis=1, keepdims=True) - 2.0 * y @ ref_prof.T + a @ r_sq.T
            n_shared = np.broadcast_to(a.sum(axis=1, keepdims=True), sq.shape)
        else:
            sq = (a * y**2) @ b.T - 2.0 * y @ (b * ref_prof).T + a @ (b * r_sq).T
            n_shared = a @ b.T
        # pairs without a shared known gene are last resorts; the cell itself is never chosen (k < candidates)
        d = np.where(n_shared > 0, np.maximum(sq, 0.0) / np.maximum(n_shared, 1.0), np.finfo(np.float64).max)
        d[ref_rows[None, :] == query[sl, None]] = np.inf
        out[sl] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


def _masked_pca(
    ref_prof: np.ndarray, ref_known: np.ndarray, q_prof: np.ndarray, q_known: np.ndarray, n_pcs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on the reference profiles (unknown entries: the gene's mean over the cells knowing it); every
    cell placed by least squares on its known genes, ``argmin_z ||W_K z - (y_K - mu_K)||``."""
    from sklearn.decomposition import PCA

    n_known = ref_known.sum(axis=0)
    gene_mean = np.where(ref_known, ref_prof, 0.0).sum(axis=0) / np.maximum(n_known, 1)
    filled = np.where(ref_known, ref_prof, gene_mean[None, :])
    pca = PCA(n_components=n_pcs, svd_solver="randomized", random_state=seed).fit(filled)
    w, mu = pca.components_.T, pca.mean_  # (genes, pcs): orthonormal columns
    return _project(ref_prof, ref_known, w, mu), _project(q_prof, q_known, w, mu)


def _project(prof: np.ndarray, known: np.ndarray, w: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Least-squares coordinates of each cell on its known genes (ordinary projection for complete cells)."""
    centred = np.where(known, prof - mu[None, :], 0.0)
    z = centred @ w
    partial = np.flatnonzero(~known.all(axis=1))
    if partial.size:
        n_pcs = w.shape[1]
        chunk = max(1, 2**24 // (w.shape[0] * n_pcs * n_pcs))
        ridge = 1e-6 * np.eye(n_pcs)  # keeps the solve defined for cells with very few known genes
        for start in range(0, partial.size, chunk):
            rows = partial[start : start + chunk]
            gram = np.einsum("cg,gp,gq->cpq", known[rows].astype(np.float64), w, w, optimize=True)
            z[rows] = np.linalg.solve(gram + ridge[None], z[rows][..., None])[..., 0]
    return z
