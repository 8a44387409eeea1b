"""DICE (Meier et al., "Clustering by denoising"): all of its math in one place.

- ``_preprocess``: the reference preprocessing and PCA loadings, fitted once (:func:`fit_projection`,
  :func:`elbow_rank`, :class:`DICEProjection`);
- ``_projection``: the one projection of cells with those frozen statistics (:func:`transform`, :func:`project`);
- ``_gibbs``: the split Gibbs sampler (:func:`rho_schedule`, :func:`gaussian_likelihood_step`, :func:`split_gibbs`);
- ``_module``: :class:`DICEModule`, the scvi-tools module that holds the frozen projection and trains the Gaussian
  DDPM prior (:class:`~countsdiff_sc.diffusion.GaussianDiffusion` with a
  :class:`~countsdiff_sc.nn.LatentDenoiser`).

The user-facing :class:`~countsdiff_sc.DICEModel` (validation, batching, writing into AnnData) builds on these.
"""

from __future__ import annotations

from ._gibbs import RHO_SCHEDULES, gaussian_likelihood_posterior, gaussian_likelihood_step, rho_schedule, split_gibbs
from ._module import DICEModule
from ._preprocess import DICEProjection, elbow_rank, fit_projection
from ._projection import project, transform

__all__ = [
    "RHO_SCHEDULES",
    "DICEModule",
    "DICEProjection",
    "elbow_rank",
    "fit_projection",
    "gaussian_likelihood_posterior",
    "gaussian_likelihood_step",
    "project",
    "rho_schedule",
    "split_gibbs",
    "transform",
]
