"""Pure-torch count diffusion: p-schedules, loss weights, thinning, the reverse step with attrition, random rounding,
guidance and the generation / RePaint loops. No AnnData and no scvi-tools in here: everything is testable with
tensors alone.
"""

from __future__ import annotations

from ._gaussian import (
    RHO_SCHEDULES,
    EpsFn,
    GaussianDiffusion,
    cosine_beta_schedule,
    gaussian_likelihood_posterior,
    gaussian_likelihood_step,
    linear_beta_schedule,
    rho_schedule,
    split_gibbs,
)
from ._process import (
    ATTRITION_KINDS,
    attrition_rate,
    binomial,
    count_loss,
    guidance_mix,
    log_linear_mix,
    random_round,
    reverse_step,
    sigma_max,
    thin,
)
from ._sampling import PRECISIONS, RateFn, StepCallback, generate, repaint, time_grid, with_precision
from ._schedules import (
    BlackoutSchedule,
    CosineSchedule,
    CustomSchedule,
    DiscreteBlackoutSchedule,
    PSchedule,
    get_schedule,
)
from ._weights import LOSS_WEIGHTINGS, loss_weight, resolve_loss_weighting

__all__ = [
    "ATTRITION_KINDS",
    "LOSS_WEIGHTINGS",
    "PRECISIONS",
    "RHO_SCHEDULES",
    "BlackoutSchedule",
    "CosineSchedule",
    "CustomSchedule",
    "DiscreteBlackoutSchedule",
    "EpsFn",
    "GaussianDiffusion",
    "PSchedule",
    "RateFn",
    "StepCallback",
    "attrition_rate",
    "binomial",
    "cosine_beta_schedule",
    "count_loss",
    "gaussian_likelihood_posterior",
    "gaussian_likelihood_step",
    "generate",
    "get_schedule",
    "guidance_mix",
    "linear_beta_schedule",
    "log_linear_mix",
    "loss_weight",
    "random_round",
    "repaint",
    "resolve_loss_weighting",
    "reverse_step",
    "rho_schedule",
    "sigma_max",
    "split_gibbs",
    "thin",
    "time_grid",
    "with_precision",
]
