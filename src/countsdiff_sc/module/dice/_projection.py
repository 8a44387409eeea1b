"""The one projection of DICE: counts -> normalised, scaled, clipped profile ``x_tilde`` -> PCA coordinates.

Every path that maps cells with the frozen reference statistics runs these two functions: the second pass of
:func:`~countsdiff_sc.module.dice.fit_projection` (float64 on the CPU), and
:meth:`~countsdiff_sc.module.DICEModule.transform` / :meth:`~countsdiff_sc.module.DICEModule.project` in training and
sampling (float32 on the model's device), through which ``DICEModel.project`` and ``DICEModel.embed`` read their
cells. They are written in torch so that training minibatches never leave the accelerator.

The pipeline is that of the DICE paper (Meier et al., "Clustering by denoising", Sec. 3 and App. H.1):
library-size normalisation and ``log1p``, per-gene scaling clipped to ``[-max_value, max_value]``, then
``U_hat = V_hat^T (x_tilde - mean)``.
"""

from __future__ import annotations

import torch

__all__ = ["project", "transform"]


def transform(
    x: torch.Tensor,
    gene_mean: torch.Tensor,
    gene_std: torch.Tensor,
    *,
    log_normalize: bool = True,
    scale: bool = True,
    target_sum: float = 1e4,
    max_value: float | None = 10.0,
) -> torch.Tensor:
    """Normalised, scaled and clipped expression ``x_tilde`` of count rows.

    The library-size step is ``log1p(target_sum * x / rowsum)`` with empty cells kept at 0: the torch form of
    :func:`countsdiff_sc._utils.log_normalize`, which computes the reference statistics.

    Parameters
    ----------
    x
        Counts ``(n, n_genes)`` (or already transformed values when ``log_normalize`` is False).
    gene_mean, gene_std
        ``(n_genes,)`` scaling statistics; their dtype and device are those of the result.
    log_normalize
        Normalise every cell to ``target_sum`` counts and apply ``log1p``.
    scale
        Subtract ``gene_mean``, divide by ``gene_std`` and clip; without it ``gene_mean``, ``gene_std`` and
        ``max_value`` are ignored.
    target_sum
        Library size after normalisation.
    max_value
        Clip of the scaled values (None: no clip).

    Returns
    -------
    Tensor ``(n, n_genes)`` in the dtype of ``gene_mean``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    >>> transform(x, torch.zeros(2), torch.ones(2), target_sum=4.0, max_value=1.0)
    tensor([[0.6931, 1.0000],
            [0.0000, 0.0000]])
    """
    z = x.to(gene_mean.dtype)
    if log_normalize:
        totals = z.sum(dim=1, keepdim=True)
        factors = torch.where(totals > 0, target_sum / totals.clamp_min(1e-12), torch.zeros_like(totals))
        z = torch.log1p(z * factors)
    if scale:
        z = (z - gene_mean) / gene_std
        if max_value is not None:
            z = z.clamp(-max_value, max_value)
    return z


def project(
    x: torch.Tensor,
    gene_mean: torch.Tensor,
    gene_std: torch.Tensor,
    pca_mean: torch.Tensor,
    loadings: torch.Tensor,
    *,
    log_normalize: bool = True,
    scale: bool = True,
    target_sum: float = 1e4,
    max_value: float | None = 10.0,
) -> torch.Tensor:
    """PCA coordinates ``V^T (x_tilde - mean)`` of count rows (DICE Sec. 3, ``U_hat = V_hat^T X``).

    Parameters
    ----------
    x
        Counts ``(n, n_genes)``.
    gene_mean, gene_std
        Scaling statistics (see :func:`transform`).
    pca_mean
        ``(n_genes,)`` PCA centre of the transformed reference.
    loadings
        ``(n_genes, k)`` principal axes ``V``.
    log_normalize, scale, target_sum, max_value
        Settings of :func:`transform`.

    Returns
    -------
    Tensor ``(n, k)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    >>> project(x, torch.zeros(2), torch.ones(2), torch.zeros(2), torch.eye(2)[:, :1], log_normalize=False,
    ...         scale=False)
    tensor([[1.],
            [2.]])
    """
    z = transform(
        x, gene_mean, gene_std, log_normalize=log_normalize, scale=scale, target_sum=target_sum, max_value=max_value
    )
    return (z - pca_mean) @ loadings
