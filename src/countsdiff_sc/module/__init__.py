"""scvi-tools modules and Lightning training plans."""

from __future__ import annotations

from ._countsdiff import BACKBONES, CONDITION_KEY, VALID_KEY, CountsDiffModule
from ._ema import EMAMixin
from ._trainingplan import DiffusionTrainingPlan

__all__ = ["BACKBONES", "CONDITION_KEY", "VALID_KEY", "CountsDiffModule", "DiffusionTrainingPlan", "EMAMixin"]
