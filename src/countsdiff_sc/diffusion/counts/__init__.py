"""Count diffusion (CountsDiff, Soatto et al., 2026): binomial thinning and its reverse birth-death process.

- ``_schedules``: p-schedules ``p(t)`` of the forward process (cosine, Blackout, discrete Blackout, custom).
- ``_weights``: loss weightings ``w(t)`` of the objective.
- ``_process``: forward thinning, the count loss, the log-linear rate mix of guidance, attrition and the reverse step.
- ``_steps``: the step rules (:class:`Euler`, :class:`Trapezoid`) as objects, shared by every chain, and the hooks of
  entries with known values (RePaint's observed entries, ``restore``'s thinned entries).
- ``_sampling``: time grids, and the generation and RePaint loops over a caller-supplied rate function.
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
    POWER_RHO,
    PRECISIONS,
    RateFn,
    StepCallback,
    chain_times,
    generate,
    n_evaluations,
    repaint,
    time_grid,
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
from ._steps import (
    KNOWN_MODES,
    STEP_RULES,
    Euler,
    Known,
    ObservedPath,
    ObservedRedraw,
    StepRule,
    ThinnedKnown,
    Transition,
    Trapezoid,
    get_step_rule,
    observed_hook,
    transitions,
    trapezoid_midpoint,
    trapezoid_step,
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
    "Euler",
    "ImportanceTimes",
    "Known",
    "ObservedPath",
    "ObservedRedraw",
    "PSchedule",
    "RateFn",
    "StepCallback",
    "StepRule",
    "ThinnedKnown",
    "Transition",
    "Trapezoid",
    "attrition_rate",
    "binomial",
    "chain_times",
    "count_loss",
    "generate",
    "get_schedule",
    "get_step_rule",
    "log_linear_mix",
    "loss_weight",
    "n_evaluations",
    "observed_hook",
    "repaint",
    "resolve_loss_weighting",
    "restore",
    "restore_start",
    "reverse_step",
    "sigma_max",
    "thin",
    "time_grid",
    "transitions",
    "trapezoid_midpoint",
    "trapezoid_step",
    "with_precision",
]
