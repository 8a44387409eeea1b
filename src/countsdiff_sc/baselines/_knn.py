"""k-nearest-neighbour imputation baseline: neighbours in a PCA space of observed, normalised ``log1p`` counts."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._utils import log_normalize
from ..pp import ObsSelection, resolve_obs_selection
from ._common import load_inputs, load_reference, write_output


def impute_knn(
    adata: ad.AnnData,
    reference: ad.AnnData | ObsSelection | None = None,
    *,
    mask_layer: str = "countsdiff_mask",
    key_added: str = "knn_imputed",
    layer: str | None = None,
    valid_layer: str | None = None,
    n_neighbors: int = 15,
    n_pcs: int | None = 30,
    seed: int = 0,
) -> np.ndarray:
    """Impute held-out entries with the library-size-rescaled mean of the cell's nearest neighbours.

    Procedure, for every cell of ``adata`` with entries to fill:

    1. **Observed profiles only.** Held-out entries (``layers[mask_layer]``) are set to 0 *before* anything else,
       in ``adata`` and in the reference cells, so their true values cannot leak into the library sizes, the
       embedding or the neighbour averages. A cell's library size ``l_i`` is the sum of its entries that are not
       held out.
    2. **Embedding.** Each profile is normalised to the median library size of the reference cells and
       ``log1p``-transformed; a PCA with ``n_pcs`` components is fitted on the reference cells and applied to the
       cells to impute (``n_pcs=None``: no PCA, Euclidean distances on the ``log1p`` profiles). Held-out genes of a
       query cell enter this embedding as zeros.
    3. **Neighbours.** The ``n_neighbors`` nearest reference cells in that space (Euclidean, exact brute-force
       search: deterministic); a cell is never its own neighbour, and reference cells without observed counts are
       not candidates.
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
        ``None`` skips the PCA.
    seed
        Random state of the (randomized) PCA; results are deterministic for a given seed.

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
    target = float(np.median(ref_lib))

    query = np.flatnonzero(inputs.fill.any(axis=1))
    estimate = np.zeros(inputs.counts.shape, dtype=np.float64)
    n_fallback = 0
    k_eff = int(n_neighbors)
    n_pcs_eff: int | None = None
    if query.size:
        q_x = inputs.observed_input[query].astype(np.float64)
        q_lib = q_x.sum(axis=1)

        # 2. embedding fitted on the reference cells.
        ref_emb = log_normalize(ref_x, target)
        q_emb = log_normalize(q_x, target)
        n_pcs_eff = None if n_pcs is None else min(int(n_pcs), ref_emb.shape[0] - 1, ref_emb.shape[1])
        if n_pcs_eff is not None and n_pcs_eff >= 1:
            from sklearn.decomposition import PCA

            pca = PCA(n_components=n_pcs_eff, svd_solver="randomized", random_state=seed)
            ref_emb = pca.fit_transform(ref_emb)
            q_emb = pca.transform(q_emb)
        else:
            n_pcs_eff = None

        # 3. neighbours (one extra candidate so a query cell that is also a reference cell can drop itself).
        in_pool = np.isin(query, ref_rows)
        n_candidates = ref_emb.shape[0] - (1 if in_pool.any() else 0)
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
        idx = _neighbours(ref_emb, q_emb, ref_rows, query, k_eff, drop_self=bool(in_pool.any()))

        # 4. mean of the normalised neighbour values over neighbours observing the gene.
        rel = np.where(ref_observed, ref_x / ref_lib[:, None], 0.0)
        obs_f = ref_observed.astype(np.float64)
        n_ref = ref_emb.shape[0]
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
