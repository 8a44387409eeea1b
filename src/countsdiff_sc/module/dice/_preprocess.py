"""Reference preprocessing and PCA loadings of DICE, fitted once on the reference and frozen with the model.

Pipeline (DICE paper, Meier et al., Sec. 5 and App. H.1): library-size normalisation to ``target_sum``, ``log1p``,
optional subset to highly variable genes, per-gene scaling to unit variance with values clipped to
``[-max_value, max_value]``, then PCA. The loading matrix ``V`` (paper Eq. 1-3, estimated by the SVD of Sec. 3) and
every statistic of the pipeline come from the reference alone, so a query is projected exactly as the reference was.
The second pass of the fit runs the same :func:`~countsdiff_sc.module.dice.transform` that projects every cell later.

Genes outside the highly variable subset keep a zero row in ``V``: projecting all genes with that ``V`` equals
projecting the subset, so every stored array is indexed by the registered genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from countsdiff_sc._utils import log_normalize as log_normalize_counts
from countsdiff_sc._utils import to_dense

from ._projection import transform

__all__ = ["DICEProjection", "elbow_rank", "fit_projection"]


@dataclass
class DICEProjection:
    """Frozen preprocessing statistics and PCA loadings of a reference.

    Attributes
    ----------
    gene_mean, gene_std
        ``(n_genes,)`` mean and standard deviation (ddof = 1) of the log-normalised reference, used for scaling
        (0 and 1 when scaling is off or for genes outside the selected subset; constant genes get std 1).
    pca_mean
        ``(n_genes,)`` mean of the scaled, clipped reference (0 outside the subset): the PCA centre.
    loadings
        ``(n_genes, n_latent)`` orthonormal principal axes ``V`` (zero rows outside the subset). Each axis is
        signed so that its largest-magnitude entry is positive.
    singular_values
        The leading singular values of the centred reference matrix (the scree curve, at most ``max_components``).
    highly_variable
        ``(n_genes,)`` boolean mask of the genes used.
    latent_scale
        Scale ``c`` with which the diffusion prior sees ``u / c`` (1 when not standardised).
    n_latent
        Number of components ``k``.
    residual_var
        Maximum-likelihood noise variance ``sigma^2`` of probabilistic PCA (Tipping & Bishop, 1999, Eq. 8): the mean
        of the ``g - k`` eigenvalues of the selected genes' covariance that the ``k`` axes leave out,
        ``(trace(C) - sum_{j<=k} lambda_j) / (g - k)``. It is the per-gene variance the rank-``k`` model does not
        explain, i.e. the ``sigma^2`` of DICE's Gaussian likelihood in the scaled gene space; NaN when ``k = g``.
    embedding_scale
        Spread of the reference embedding: the root mean variance of its ``k`` PCA scores,
        ``sqrt(mean_{j<=k} lambda_j)`` (whether or not the prior is trained on standardised coordinates). The
        coupling ``rho`` of :meth:`~countsdiff_sc.model.DICEModel.embed` defaults to it.
    """

    gene_mean: np.ndarray
    gene_std: np.ndarray
    pca_mean: np.ndarray
    loadings: np.ndarray
    singular_values: np.ndarray
    highly_variable: np.ndarray
    latent_scale: float
    n_latent: int
    residual_var: float = float("nan")
    embedding_scale: float = float("nan")


def elbow_rank(singular_values: np.ndarray, min_rank: int = 2) -> int:
    """Number of components at the elbow of a scree curve: the point farthest below its chord.

    The curve ``(i, s_i)``, ``i = 1..m``, is mapped to the unit square (``x = (i - 1) / (m - 1)``,
    ``y = (s_i - s_m) / (s_1 - s_m)``); the chord joins its end points ``(0, 1)`` and ``(1, 0)``. The elbow is the
    ``i`` maximising the distance to the chord on the lower side, ``1 - x_i - y_i`` (the "kneedle" rule), and ``k``
    is that ``i`` (components 1..i are kept), at least ``min_rank``. For a spectrum with a clean drop after ``r``
    large values the knee is the first small value, so ``k = r + 1``: one component more than the signal rank,
    which the paper (App. F) notes is safe ("choosing a slightly larger k is generally safe").

    Parameters
    ----------
    singular_values
        Non-increasing singular values ``s_1 >= ... >= s_m`` (the first ``m`` considered; ``m >= 3``).
    min_rank
        Smallest rank returned.

    Returns
    -------
    The chosen rank ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> elbow_rank(np.array([10.0, 9.0, 8.0, 1.2, 1.1, 1.0, 0.9, 0.8]))
    4
    """
    s = np.asarray(singular_values, dtype=np.float64)
    m = s.size
    if m < 3:
        return int(max(min(m, min_rank), 1))
    span = s[0] - s[-1]
    if span <= 0:
        return int(min(max(min_rank, 1), m))
    x = np.arange(m) / (m - 1)
    y = (s - s[-1]) / span
    k = int(np.argmax(1.0 - x - y)) + 1
    return int(min(max(k, min_rank), m))


def _select_genes(
    x: Any, n_top_genes: int | None, log_normalize: bool, target_sum: float, variances: np.ndarray
) -> np.ndarray:
    """Boolean mask of the highly variable genes (all genes when ``n_top_genes`` is None)."""
    n_genes = x.shape[1]
    if n_top_genes is None or int(n_top_genes) >= n_genes:
        return np.ones(n_genes, dtype=bool)
    n_top = int(n_top_genes)
    if n_top < 2:
        raise ValueError(f"n_top_genes must be at least 2, got {n_top_genes}.")
    if log_normalize:
        import anndata as ad
        import scanpy as sc

        # Seurat-flavoured dispersion ranking on the log-normalised reference (scanpy's "seurat" flavour).
        tmp = ad.AnnData(X=log_normalize_counts(x, target_sum, keep_sparse=True))
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top, flavor="seurat", subset=False, inplace=True)
        return tmp.var["highly_variable"].to_numpy(dtype=bool)
    mask = np.zeros(n_genes, dtype=bool)
    mask[np.argsort(-variances, kind="stable")[:n_top]] = True
    return mask


def fit_projection(
    x: Any,
    *,
    log_normalize: bool = True,
    scale: bool = True,
    target_sum: float = 1e4,
    max_value: float | None = 10.0,
    n_top_genes: int | None = None,
    n_latent: int | None = None,
    max_components: int = 50,
    standardize_latent: bool = True,
    chunk_size: int = 4096,
) -> DICEProjection:
    """Fit the preprocessing and the PCA loadings ``V`` of DICE on a reference matrix.

    Two passes over the cells (in chunks, so the dense matrix is never built): per-gene moments of the
    log-normalised data, then the mean and Gram matrix of the scaled, clipped data; the principal axes are the
    leading eigenvectors of its covariance (exact PCA, memory ``O(n_genes^2)``).

    Parameters
    ----------
    x
        Reference matrix ``(n_cells, n_genes)``: raw counts when ``log_normalize``, else already transformed values.
    log_normalize
        Library-size normalisation to ``target_sum`` followed by ``log1p``.
    scale
        Scale every gene to unit variance (mean-centred), clipped to ``[-max_value, max_value]``.
    target_sum
        Library size after normalisation.
    max_value
        Clip of the scaled values (None: no clip; ignored without ``scale``).
    n_top_genes
        Keep this many highly variable genes (scanpy's ``"seurat"`` flavour on the log-normalised data, or the
        largest variances without ``log_normalize``); None keeps all genes.
    n_latent
        Number of components ``k``; None chooses it at the elbow of the singular values (:func:`elbow_rank`).
    max_components
        Length of the scree curve used by the elbow rule.
    standardize_latent
        Give the diffusion prior ``u / c`` with ``c = sqrt(mean_j Var(u_j))`` over the ``k`` components, so that
        it sees data of unit average variance; otherwise ``c = 1`` (the paper trains on raw PCA scores).
    chunk_size
        Cells per chunk.

    Returns
    -------
    :class:`DICEProjection`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> proj = fit_projection(rng.poisson(2.0, size=(200, 30)), n_latent=5)
    >>> proj.loadings.shape, bool(np.allclose(proj.loadings.T @ proj.loadings, np.eye(5)))
    ((30, 5), True)
    """
    n_cells, n_genes = x.shape
    if n_cells < 3:
        raise ValueError(f"The reference needs at least 3 cells to fit a PCA, got {n_cells}.")
    if target_sum <= 0:
        raise ValueError(f"target_sum must be positive, got {target_sum}.")
    if max_value is not None and max_value <= 0:
        raise ValueError(f"max_value must be positive or None, got {max_value}.")
    chunks = [slice(i, min(i + chunk_size, n_cells)) for i in range(0, n_cells, chunk_size)]

    # pass 1: moments of the (log-normalised) expression
    s1 = np.zeros(n_genes)
    s2 = np.zeros(n_genes)
    for sl in chunks:
        z = log_normalize_counts(x[sl], target_sum) if log_normalize else to_dense(x[sl], np.float64)
        s1 += z.sum(axis=0)
        s2 += np.square(z).sum(axis=0)
    mean = s1 / n_cells
    var = np.maximum(s2 - n_cells * mean**2, 0.0) / (n_cells - 1)
    hvg = _select_genes(x, n_top_genes, log_normalize, target_sum, var)
    if scale:
        gene_mean = np.where(hvg, mean, 0.0)
        std = np.sqrt(var)
        gene_std = np.where(hvg & (std > 0), std, 1.0)
    else:
        gene_mean, gene_std = np.zeros(n_genes), np.ones(n_genes)

    # pass 2: mean and Gram matrix of the scaled, clipped values of the selected genes
    idx = np.flatnonzero(hvg)
    g = idx.size
    c1 = np.zeros(g)
    gram = np.zeros((g, g))
    settings = {"log_normalize": log_normalize, "scale": scale, "target_sum": target_sum, "max_value": max_value}
    stats = torch.from_numpy(gene_mean), torch.from_numpy(gene_std)
    for sl in chunks:
        z = transform(torch.from_numpy(to_dense(x[sl], np.float64)), *stats, **settings).numpy()[:, idx]
        c1 += z.sum(axis=0)
        gram += z.T @ z
    centre = c1 / n_cells
    cov = (gram - n_cells * np.outer(centre, centre)) / (n_cells - 1)
    rank_cap = min(g, n_cells - 1)
    n_eig = min(max(max_components, int(n_latent or 0), 3), g)
    # only the leading eigenpairs are needed (scree curve and axes)
    evals, evecs = scipy.linalg.eigh(cov, subset_by_index=[g - n_eig, g - 1])
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    singular = np.sqrt(evals[: min(max_components, rank_cap)] * (n_cells - 1))
    if n_latent is None:
        n_latent = elbow_rank(singular)
    n_latent = int(n_latent)
    if not 1 <= n_latent <= rank_cap:
        raise ValueError(
            f"n_latent={n_latent} is not possible with {n_cells} reference cells and {g} genes; choose a value in "
            f"1..{rank_cap} (or None to pick it at the elbow of the singular values)."
        )
    axes = evecs[:, :n_latent]
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(n_latent)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    loadings = np.zeros((n_genes, n_latent))
    loadings[idx] = axes
    pca_mean = np.zeros(n_genes)
    pca_mean[idx] = centre
    embedding_scale = float(np.sqrt(np.mean(np.clip(evals[:n_latent], 0.0, None))))
    latent_scale = embedding_scale if standardize_latent else 1.0
    if not latent_scale > 0:
        latent_scale = 1.0
    # PPCA noise variance: the variance left outside the k axes, per discarded dimension (zero eigenvalues beyond
    # the rank of the reference included, as in the maximum-likelihood estimate)
    left_out = float(np.trace(cov) - evals[:n_latent].sum())
    residual_var = left_out / (g - n_latent) if g > n_latent and left_out > 0 else float("nan")
    return DICEProjection(
        gene_mean=gene_mean,
        gene_std=gene_std,
        pca_mean=pca_mean,
        loadings=loadings,
        singular_values=np.sqrt(evals[: min(max(max_components, n_latent), rank_cap)] * (n_cells - 1)),
        highly_variable=hvg,
        latent_scale=latent_scale,
        n_latent=n_latent,
        residual_var=residual_var,
        embedding_scale=embedding_scale if embedding_scale > 0 else float("nan"),
    )

