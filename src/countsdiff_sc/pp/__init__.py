"""Preprocessing for imputation benchmarks: dropout marking (scIDPMs Algorithm 1), held-out masks, cell splits."""

from __future__ import annotations

from ._dropout import mark_dropouts
from ._masks import mask_mcar, mask_mnar
from ._split import split_cells

__all__ = ["mark_dropouts", "mask_mcar", "mask_mnar", "split_cells"]
