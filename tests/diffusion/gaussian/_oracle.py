"""The exact noise predictor of Gaussian data, shared by the DDPM and the DICE Gibbs sampler tests."""

from __future__ import annotations

import math

import torch

from countsdiff_sc.diffusion.gaussian import EpsFn, GaussianDiffusion


def gaussian_oracle(diff: GaussianDiffusion, m: torch.Tensor, s: float) -> EpsFn:
    """Exact E[eps | x_t] when x_0 ~ N(m, s^2 I)."""

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        ab = float(diff.alpha_bars[t])
        return math.sqrt(1 - ab) * (x - math.sqrt(ab) * m) / (ab * s * s + 1 - ab)

    return eps_fn
