"""scvi-tools modules and Lightning training plans."""

from __future__ import annotations

from ._countsdiff import (
    BACKBONES,
    CONDITION_KEY,
    RATE_BASELINES,
    UNCOND_MODES,
    VALID_KEY,
    ConditionVariant,
    CountsDiffModule,
    gene_prior,
)
from ._dice import DICEModule
from ._ema import EMAMixin
from ._trainingplan import DiffusionTrainingPlan

__all__ = [
    "BACKBONES",
    "CONDITION_KEY",
    "RATE_BASELINES",
    "UNCOND_MODES",
    "VALID_KEY",
    "ConditionVariant",
    "CountsDiffModule",
    "DICEModule",
    "DiffusionTrainingPlan",
    "EMAMixin",
    "gene_prior",
]
