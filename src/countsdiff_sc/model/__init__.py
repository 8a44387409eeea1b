"""User-facing scvi-tools models."""

from __future__ import annotations

from ._countsdiff import CountsDiffModel
from ._dice import DICEModel

__all__ = ["CountsDiffModel", "DICEModel"]
