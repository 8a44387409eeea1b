"""User-facing scvi-tools models and the sampler settings of their verbs."""

from __future__ import annotations

from ._correction import cell_retention
from ._countsdiff import CountsDiffModel
from ._dice import DICEModel
from ._presets import PRESETS
from ._sampler import MAX_STEPS, SAMPLER_DEFAULTS, Sampler, defaults_table

__all__ = ["MAX_STEPS", "PRESETS", "SAMPLER_DEFAULTS", "CountsDiffModel", "DICEModel", "Sampler", "cell_retention",
           "defaults_table"]
