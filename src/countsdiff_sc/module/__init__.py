"""scvi-tools modules and Lightning training plans."""

from __future__ import annotations

from ._countsdiff import (
    BACKBONES,
    CONDITION_KEY,
    LOSS_NORMALISATIONS,
    MASK_KEY,
    RATE_BASELINES,
    UNCOND_MODES,
    VALID_KEY,
    ConditionVariant,
    CountsDiffModule,
    cell_depth,
    gene_prior,
)
from ._ema import EMAMixin
from ._guidance import GuidanceTerm, check_guidance_cap, check_strengths, guidance_terms, interpolation_terms
from ._trainingplan import DiffusionTrainingPlan
from .dice import DICEModule

__all__ = [
    "BACKBONES",
    "CONDITION_KEY",
    "LOSS_NORMALISATIONS",
    "MASK_KEY",
    "RATE_BASELINES",
    "UNCOND_MODES",
    "VALID_KEY",
    "ConditionVariant",
    "CountsDiffModule",
    "DICEModule",
    "DiffusionTrainingPlan",
    "EMAMixin",
    "GuidanceTerm",
    "cell_depth",
    "check_guidance_cap",
    "check_strengths",
    "gene_prior",
    "guidance_terms",
    "interpolation_terms",
]
