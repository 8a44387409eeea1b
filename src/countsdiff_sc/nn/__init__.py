"""Denoiser backbones and their embeddings."""

from __future__ import annotations

from ._base import RateDenoiser, inverse_softplus
from ._embeddings import ConditionEncoder, SinusoidalTimeEmbedding
from ._latent import LatentDenoiser
from ._mlp import ResidualMLPDenoiser
from ._transformer import GeneTransformerDenoiser

__all__ = [
    "ConditionEncoder",
    "GeneTransformerDenoiser",
    "LatentDenoiser",
    "RateDenoiser",
    "ResidualMLPDenoiser",
    "SinusoidalTimeEmbedding",
    "inverse_softplus",
]
