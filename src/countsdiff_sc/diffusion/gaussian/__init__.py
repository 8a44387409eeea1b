"""Gaussian diffusion: the generic DDPM (beta schedules, forward noising, ancestral reverse steps).

Kept apart from the count diffusion of :mod:`countsdiff_sc.diffusion.counts`. Used by the Gaussian baseline and as
the prior of DICE, whose split Gibbs sampler lives with the rest of DICE's math in :mod:`countsdiff_sc.module.dice`.
"""

from __future__ import annotations

from ._ddpm import EpsFn, GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule

__all__ = ["EpsFn", "GaussianDiffusion", "cosine_beta_schedule", "linear_beta_schedule"]
