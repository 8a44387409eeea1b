"""Count diffusion (CountsDiff, Soatto et al., 2026): binomial thinning and its reverse birth-death process.

- ``_schedules``: p-schedules ``p(t)`` of the forward process (cosine, Blackout, discrete Blackout, custom).
- ``_weights``: loss weightings ``w(t)`` of the objective.
- ``_process``: forward thinning, the count loss, the log-linear rate mix of guidance, attrition and the reverse step.
- ``_sampling``: the generation and RePaint loops over a caller-supplied rate function.
- ``_restore``: the reverse chain from counts seen through a known per-entry binomial thinning (``restore``).
- ``_kernels_torch``: torch samplers (a leaf: imports torch only); ``_kernels_cpu``: the compiled (numba) CPU
  kernels of the binomial draws and the fused reverse step, loaded on the first CPU draw by ``_process``.

The public names are re-exported by :mod:`countsdiff_sc.diffusion`, the place to import them from.
"""

from __future__ import annotations

from ._process import (
    ATTRITION_KINDS,
    attrition_rate,
    binomial,
    count_loss,
    log_linear_mix,
    reverse_step,
    sigma_max,
    thin,
)
from ._restore import restore, restore_start
from ._sampling import (
    GRIDS,
    KNOWN_MODES,
    POWER_RHO,
    PRECISIONS,
    STEP_RULES,
    RateFn,
    StepCallback,
    generate,
    n_evaluations,
    repaint,
    time_grid,
    trapezoid_midpoint,
    trapezoid_step,
    with_precision,
)
from ._schedules import (
    BlackoutSchedule,
    CosineSchedule,
    CustomSchedule,
    DiscreteBlackoutSchedule,
    PSchedule,
    get_schedule,
)
from ._weights import LOSS_WEIGHTINGS, TIME_SAMPLINGS, ImportanceTimes, loss_weight, resolve_loss_weighting

__all__ = [
    "ATTRITION_KINDS",
    "GRIDS",
    "KNOWN_MODES",
    "LOSS_WEIGHTINGS",
    "POWER_RHO",
    "PRECISIONS",
    "STEP_RULES",
    "TIME_SAMPLINGS",
    "BlackoutSchedule",
    "CosineSchedule",
    "CustomSchedule",
    "DiscreteBlackoutSchedule",
    "ImportanceTimes",
    "PSchedule",
    "RateFn",
    "StepCallback",
    "attrition_rate",
    "binomial",
    "count_loss",
    "generate",
    "get_schedule",
    "log_linear_mix",
    "loss_weight",
    "n_evaluations",
    "repaint",
    "resolve_loss_weighting",
    "restore",
    "restore_start",
    "reverse_step",
    "sigma_max",
    "thin",
    "time_grid",
    "trapezoid_midpoint",
    "trapezoid_step",
    "with_precision",
]
