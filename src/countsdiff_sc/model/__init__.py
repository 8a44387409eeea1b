"""User-facing scvi-tools models."""

from __future__ import annotations

from ._countsdiff import CountsDiffModel

__all__ = ["CountsDiffModel"]
