"""Denoiser backbones and their embeddings."""

from __future__ import annotations

from ._embeddings import ConditionEncoder, SinusoidalTimeEmbedding
from ._latent import LatentDenoiser
from ._mlp import ResidualMLPDenoiser
from ._transformer import GeneTransformerDenoiser

__all__ = [
    "ConditionEncoder",
    "GeneTransformerDenoiser",
    "LatentDenoiser",
    "ResidualMLPDenoiser",
    "SinusoidalTimeEmbedding",
]
