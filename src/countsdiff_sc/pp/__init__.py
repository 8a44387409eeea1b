"""Preprocessing: dropout marking (scIDPMs Algorithm 1), held-out masks, cell splits, the depth condition."""

from __future__ import annotations

from ._dropout import mark_dropouts
from ._library import library_condition
from ._masks import mask_mcar, mask_mnar
from ._normalize import log_normalize
from ._split import split_cells
from ._subset import ObsSelection, describe_selection, resolve_obs_selection

__all__ = [
    "ObsSelection",
    "describe_selection",
    "library_condition",
    "log_normalize",
    "mark_dropouts",
    "mask_mcar",
    "mask_mnar",
    "resolve_obs_selection",
    "split_cells",
]
