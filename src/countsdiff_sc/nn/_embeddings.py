"""Time and condition embeddings shared by the denoisers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConditionEncoder", "SinusoidalTimeEmbedding"]


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal features of a time in ``[0, 1]`` followed by a two-layer MLP.

    The time is scaled by ``scale`` (1000 by default, the DDPM convention) before the sinusoids of
    ``dim // 2`` log-spaced frequencies.

    Parameters
    ----------
    dim
        Output dimension (even).
    scale
        Multiplier applied to ``t`` before the sinusoids.
    """

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}.")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times of shape ``(n,)`` into ``(n, dim)``."""
        args = t.float()[:, None] * self.scale * self.freqs[None, :]
        return self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=-1))


class ConditionEncoder(nn.Module):
    """Embeddings of categorical covariates and of one vector-valued condition, each with a learned null token.

    Every categorical covariate ``i`` with ``n_cats_per_cov[i]`` categories has an embedding table of
    ``n_cats + 1`` rows; the last row is its null token, used when the covariate is dropped (classifier-free
    guidance, paper Sec. 3.4). A vector condition of ``n_continuous`` dimensions is embedded by a linear layer and
    replaced by a learned null vector when dropped.

    Parameters
    ----------
    n_cats_per_cov
        Number of categories of each categorical covariate (may be empty).
    n_continuous
        Dimension of the vector condition (0 for none).
    dim
        Embedding dimension.
    """

    def __init__(self, n_cats_per_cov: Sequence[int], n_continuous: int, dim: int):
        super().__init__()
        self.n_cats_per_cov = [int(n) for n in n_cats_per_cov]
        self.n_continuous = int(n_continuous)
        self.dim = dim
        self.cat_embeddings = nn.ModuleList([nn.Embedding(n + 1, dim) for n in self.n_cats_per_cov])
        if self.n_continuous > 0:
            self.cont_proj = nn.Sequential(nn.Linear(self.n_continuous, dim), nn.SiLU(), nn.Linear(dim, dim))
            self.cont_null = nn.Parameter(torch.zeros(dim))
        self.register_buffer(
            "null_index", torch.tensor(self.n_cats_per_cov, dtype=torch.long), persistent=False
        )

    @property
    def n_conditions(self) -> int:
        """Number of condition slots (categorical covariates plus one for the vector condition, if any)."""
        return len(self.n_cats_per_cov) + int(self.n_continuous > 0)

    def forward(
        self,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed the conditions of ``n`` cells.

        Parameters
        ----------
        cat
            Long tensor ``(n, n_cat)`` of category indices; an index equal to ``n_cats`` is the null token.
        cont
            Float tensor ``(n, n_continuous)``.
        drop
            Boolean ``(n, n_conditions)``: True replaces that condition by its null token.

        Returns
        -------
        Tensor ``(n, n_conditions, dim)`` (``n_conditions`` may be 0).
        """
        parts = []
        if self.n_cats_per_cov:
            idx = cat.long()
            if drop is not None:
                idx = torch.where(drop[:, : len(self.n_cats_per_cov)], self.null_index[None, :], idx)
            parts.extend(emb(idx[:, i]) for i, emb in enumerate(self.cat_embeddings))
        if self.n_continuous > 0:
            e = self.cont_proj(cont.float())
            if drop is not None:
                e = torch.where(drop[:, -1:], self.cont_null[None, :].expand_as(e), e)
            parts.append(e)
        if not parts:
            n = cat.shape[0] if cat is not None else (cont.shape[0] if cont is not None else 0)
            return torch.zeros(n, 0, self.dim, device=self.null_index.device)
        return torch.stack(parts, dim=1)
