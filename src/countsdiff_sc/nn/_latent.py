"""Noise predictor for Gaussian diffusion on low-dimensional cell embeddings (the DICE prior)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._embeddings import SinusoidalTimeEmbedding

__all__ = ["LatentDenoiser"]


class _TimeConditionedBlock(nn.Module):
    """Pre-norm residual block ``h + W2 dropout(SiLU(W1 LN(h) + W_t e))``: the time enters inside the expansion."""

    def __init__(self, n_hidden: int, dim_time: int, expansion: int, dropout: float):
        super().__init__()
        width = expansion * n_hidden
        self.norm = nn.LayerNorm(n_hidden)
        self.fc_in = nn.Linear(n_hidden, width)
        self.time_proj = nn.Linear(dim_time, width)
        self.fc_out = nn.Linear(width, n_hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = F.silu(self.fc_in(self.norm(h)) + self.time_proj(emb))
        return h + self.fc_out(self.dropout(z))


class LatentDenoiser(nn.Module):
    """Residual MLP predicting the noise ``eps_theta(x_t, t)`` of a k-dimensional embedding (DICE App. C).

    Design (ours; the paper's network code is not public): a linear lift of ``x_t`` to ``n_hidden`` plus the
    time embedding, ``n_blocks`` pre-norm residual blocks whose expansion layer also receives a projection of the
    time embedding, and a LayerNorm + linear head back to ``k``. The time is normalised to ``[0, 1]`` and embedded
    with :class:`~countsdiff_sc.nn.SinusoidalTimeEmbedding` (as the paper's App. C does). LayerNorm replaces the
    paper's BatchNorm so that a prediction never depends on the other rows of the batch (sampling in chunks is
    then exact and reproducible). The output layer starts at zero, so the untrained network predicts ``eps = 0``.

    When all rows share one time (sampling), pass ``t`` as a 0-d or 1-element tensor: the time features are then
    computed once and broadcast, which keeps CPU sampling cheap.

    Parameters
    ----------
    n_latent
        Embedding dimension ``k``.
    n_hidden
        Width of the residual stream.
    n_blocks
        Number of residual blocks.
    expansion
        Width multiplier inside each block.
    dim_time
        Dimension of the time embedding.
    dropout
        Dropout inside the blocks.

    Examples
    --------
    >>> import torch
    >>> net = LatentDenoiser(n_latent=5, n_hidden=32, n_blocks=2)
    >>> net(torch.randn(8, 5), torch.rand(8)).shape
    torch.Size([8, 5])
    >>> net(torch.randn(8, 5), torch.tensor(0.3)).shape
    torch.Size([8, 5])
    """

    def __init__(
        self,
        n_latent: int,
        n_hidden: int = 256,
        n_blocks: int = 3,
        expansion: int = 2,
        dim_time: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_latent < 1 or n_hidden < 1 or n_blocks < 0 or expansion < 1:
            raise ValueError(
                f"Need n_latent, n_hidden, expansion >= 1 and n_blocks >= 0; got n_latent={n_latent}, "
                f"n_hidden={n_hidden}, n_blocks={n_blocks}, expansion={expansion}."
            )
        self.n_latent = int(n_latent)
        self.time_embedding = SinusoidalTimeEmbedding(dim_time)
        self.time_to_hidden = nn.Linear(dim_time, n_hidden)
        self.input = nn.Linear(n_latent, n_hidden)
        self.blocks = nn.ModuleList(
            [_TimeConditionedBlock(n_hidden, dim_time, expansion, dropout) for _ in range(n_blocks)]
        )
        self.head_norm = nn.LayerNorm(n_hidden)
        self.head = nn.Linear(n_hidden, n_latent)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Parameters
        ----------
        x_t
            Noised embeddings ``(n, k)``.
        t
            Times in ``[0, 1]`` (``t / T``): shape ``(n,)``, or a 0-d / 1-element tensor shared by all rows.

        Returns
        -------
        Predicted noise ``(n, k)``.
        """
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1)
        emb = F.silu(self.time_embedding(t))  # (n, d) or (1, d): broadcast below
        h = self.input(x_t) + self.time_to_hidden(emb)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(self.head_norm(h))
