"""Per-gene transformer denoiser: the network the CountsDiff paper used for scRNA-seq."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import RateDenoiser, inverse_softplus
from ._embeddings import ConditionEncoder, SinusoidalTimeEmbedding

__all__ = ["GeneTransformerDenoiser"]


class GeneTransformerDenoiser(RateDenoiser):
    """One token per gene, plus a time token and one token per condition, through a transformer encoder.

    Gene token ``g`` = ``Linear(log1p(x_t[g]))`` + a learned gene embedding. The time and each condition are
    extra tokens that are never padded; genes marked invalid (suspected dropouts) are masked as keys so no token
    attends to them. A shared ``Linear(d_model, 1)`` head reads each gene token; ``softplus`` is applied exactly
    once, to the output. (The CountsDiff paper's scRNA-seq network: 3 layers, d = 64-128, 4-8 heads.)

    Parameters
    ----------
    n_genes
        Number of genes.
    d_model, n_heads, n_layers
        Transformer size.
    n_cats_per_cov, n_continuous
        Conditions, as in :class:`~countsdiff_sc.nn.ResidualMLPDenoiser`.
    dim_feedforward
        Hidden size of the feed-forward sublayers (``4 * d_model`` when None).
    dropout
        Dropout in the encoder layers.

    Examples
    --------
    >>> import torch
    >>> net = GeneTransformerDenoiser(n_genes=10, d_model=16, n_heads=2, n_layers=1)
    >>> net(torch.zeros(3, 10), torch.rand(3)).shape
    torch.Size([3, 10])
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 3,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        dim_feedforward: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.n_genes = n_genes
        self.value_proj = nn.Linear(1, d_model)
        self.gene_embedding = nn.Parameter(torch.randn(n_genes, d_model) * 0.02)
        self.time_embedding = SinusoidalTimeEmbedding(d_model)
        self.conditions = ConditionEncoder(n_cats_per_cov, n_continuous, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward or 4 * d_model, dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)
        self.gene_bias = nn.Parameter(torch.zeros(n_genes))

    def init_output_bias(self, rates: torch.Tensor) -> None:
        """Start the output near ``rates`` (e.g. per-gene mean counts) so early training is well scaled."""
        with torch.no_grad():
            self.gene_bias.copy_(inverse_softplus(rates).to(self.gene_bias.device))
            self.head.weight.mul_(0.1)

    def raw(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output before the softplus (for tests and diagnostics)."""
        n = x_t.shape[0]
        genes = self.value_proj(torch.log1p(x_t)[..., None]) + self.gene_embedding[None]
        extra = [self.time_embedding(t)[:, None, :]]
        cond = self.conditions(cat, cont, drop)
        if cond.shape[1]:
            extra.append(cond)
        extra_tokens = torch.cat(extra, dim=1)
        tokens = torch.cat([extra_tokens, genes], dim=1)
        padding = None
        if valid is not None:
            pad_genes = ~valid.bool()
            padding = torch.cat(
                [torch.zeros(n, extra_tokens.shape[1], dtype=torch.bool, device=x_t.device), pad_genes], dim=1
            )
        h = self.encoder(tokens, src_key_padding_mask=padding)
        h = h[:, extra_tokens.shape[1] :, :]
        return self.head(self.out_norm(h)).squeeze(-1) + self.gene_bias[None]
