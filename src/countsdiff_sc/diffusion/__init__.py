"""Diffusion math in pure torch, in two separate subpackages. No AnnData and no scvi-tools in here: everything is
testable with tensors alone.

- :mod:`countsdiff_sc.diffusion.counts`: the count diffusion of CountsDiff (Soatto et al., 2026): p-schedules, loss
  weights, binomial thinning, the count loss, the reverse step with attrition and random rounding, the log-linear
  rate mix of guidance, and the generation / RePaint loops over a rate function (with compiled CPU kernels for the
  binomial draws).
- :mod:`countsdiff_sc.diffusion.gaussian`: the Gaussian DDPM (beta schedules, forward noising, ancestral reverse
  steps), used by the Gaussian baseline and as DICE's prior.

Import the public names from here (``from countsdiff_sc.diffusion import generate``); the subpackages' modules are
private.
"""

from __future__ import annotations

from . import counts, gaussian
from .counts import *  # noqa: F403  (the public names of both subpackages, listed in their __all__)
from .gaussian import *  # noqa: F403

__all__ = sorted([*counts.__all__, *gaussian.__all__])
