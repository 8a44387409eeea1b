"""The split Gibbs sampler of DICE (Meier et al., "Clustering by denoising"): rho annealing, likelihood step, loop.

Pure torch (numpy for the schedule): no AnnData, no scvi-tools. Equation numbers refer to the DICE paper:

- Prop. 3.1 / Eq. 12-13 (App. B): closed-form Gaussian likelihood step of the split Gibbs sampler;
- Algorithm 1: the DICE loop (likelihood alignment, then prior alignment by a DDPM run from ``t0``, Eq. 7).

The prior is a :class:`~countsdiff_sc.diffusion.GaussianDiffusion` with a trained noise predictor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from countsdiff_sc.diffusion.gaussian import EpsFn, GaussianDiffusion

__all__ = [
    "RHO_SCHEDULES",
    "gaussian_likelihood_posterior",
    "gaussian_likelihood_step",
    "rho_schedule",
    "split_gibbs",
]

RHO_SCHEDULES = ("linear", "geometric")


def rho_schedule(
    rho: float | Sequence[float] | np.ndarray, n_iter: int, kind: Literal["linear", "geometric"] = "linear"
) -> np.ndarray:
    """Annealing levels ``rho_1, ..., rho_n`` of the DICE Gibbs loop (Algorithm 1).

    Parameters
    ----------
    rho
        A number (constant schedule), a pair ``(start, end)`` interpolated by ``kind``, or a sequence of
        ``n_iter`` values used as they are. Every value must be positive.
    n_iter
        Number of Gibbs iterations.
    kind
        ``"linear"`` (equally spaced, paper Sec. 5.1: 5 -> 0.5) or ``"geometric"`` (constant ratio).

    Returns
    -------
    float64 array of shape ``(n_iter,)``.

    Examples
    --------
    >>> rho_schedule((5.0, 0.5), 4)
    array([5. , 3.5, 2. , 0.5])
    >>> rho_schedule((4.0, 1.0), 3, kind="geometric")
    array([4., 2., 1.])
    """
    n_iter = int(n_iter)
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}.")
    if kind not in RHO_SCHEDULES:
        raise ValueError(f"rho_schedule must be one of {RHO_SCHEDULES}, got {kind!r}.")
    values = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    if values.ndim != 1:
        raise ValueError(f"rho must be a number or a 1-d sequence, got shape {values.shape}.")
    if values.size == 1:
        out = np.full(n_iter, values[0])
    elif values.size == 2:
        start, end = values
        if kind == "linear":
            out = np.linspace(start, end, n_iter)
        else:
            if start <= 0 or end <= 0:
                raise ValueError(f"A geometric rho schedule needs positive endpoints, got {tuple(values)}.")
            out = np.geomspace(start, end, n_iter)
    elif values.size == n_iter:
        out = values.copy()
    else:
        raise ValueError(
            f"rho must be a number, a pair (start, end) or {n_iter} values (one per iteration); got {values.size}."
        )
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"Every rho must be positive and finite; got values from {out.min()} to {out.max()}.")
    return out


def gaussian_likelihood_posterior(
    vtv: torch.Tensor, rho: float, noise_var: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Covariance ``Lambda = (V^T V / sigma^2 + I / rho^2)^{-1}`` of the DICE likelihood step and its square root.

    Prop. 3.1 / Eq. 12 of the paper with a standard Gaussian likelihood (``sigma^2 = 1``); ``sigma^2 = noise_var``
    generalises it to ``X = V Z + N(0, sigma^2 I_d)``.

    Parameters
    ----------
    vtv
        ``V^T V`` of shape ``(k, k)`` (the identity for orthonormal PCA loadings).
    rho
        Coupling standard deviation.
    noise_var
        Observation noise variance ``sigma^2``.

    Returns
    -------
    ``(Lambda, Lambda^{1/2})``, both ``(k, k)`` and symmetric.

    Examples
    --------
    >>> import torch
    >>> lam, root = gaussian_likelihood_posterior(torch.eye(2), rho=1.0)
    >>> lam
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]])
    """
    if not rho > 0 or not noise_var > 0:
        raise ValueError(f"rho and noise_var must be positive, got rho={rho}, noise_var={noise_var}.")
    evals, evecs = torch.linalg.eigh(vtv.to(torch.float64))
    d = 1.0 / (evals.clamp_min(0.0) / noise_var + 1.0 / rho**2)
    lam = (evecs * d) @ evecs.T
    root = (evecs * d.sqrt()) @ evecs.T
    return lam.to(vtv.dtype), root.to(vtv.dtype)


def gaussian_likelihood_step(
    vtx: torch.Tensor,
    u: torch.Tensor,
    vtv: torch.Tensor,
    rho: float,
    noise_var: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``Z ~ N(Lambda (V^T x / sigma^2 + U / rho^2), Lambda)`` (paper Prop. 3.1, Eq. 12-13).

    The exact conditional of the augmented target Eq. 4 given ``U`` when ``x = V Z + N(0, sigma^2 I_d)``.
    Only ``V^T x`` enters, so it is precomputed once per cell.

    Parameters
    ----------
    vtx
        ``V^T x`` per row, ``(n, k)``.
    u
        Current prior-side state ``U``, ``(n, k)``.
    vtv
        ``V^T V``, ``(k, k)``.
    rho
        Coupling standard deviation.
    noise_var
        Observation noise variance ``sigma^2`` (the paper: 1).
    generator
        Torch random generator.

    Returns
    -------
    ``Z`` of shape ``(n, k)``.

    Examples
    --------
    >>> import torch
    >>> z = gaussian_likelihood_step(torch.zeros(3, 2), torch.zeros(3, 2), torch.eye(2), rho=1.0)
    >>> z.shape
    torch.Size([3, 2])
    """
    lam, root = gaussian_likelihood_posterior(vtv, rho, noise_var)
    lam, root = lam.to(vtx), root.to(vtx)
    mean = (vtx / noise_var + u / rho**2) @ lam
    noise = torch.randn(vtx.shape, generator=generator, device=vtx.device, dtype=vtx.dtype)
    return mean + noise @ root


def split_gibbs(
    eps_fn: EpsFn,
    vtx: torch.Tensor,
    vtv: torch.Tensor,
    rhos: Sequence[float] | np.ndarray,
    diffusion: GaussianDiffusion,
    n_chains: int = 1,
    noise_var: float = 1.0,
    latent_scale: float = 1.0,
    n_prior_steps: int | None = None,
    variance: Literal["beta", "posterior"] = "beta",
    generator: torch.Generator | None = None,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The DICE split Gibbs sampler (Algorithm 1), vectorised over cells and chains.

    Every chain starts at ``U^(0) = V^T x`` (Algorithm 1, line 2). Iteration ``s`` with level ``rho_s``:

    1. likelihood alignment: ``Z ~ N(Lambda (V^T x / sigma^2 + U / rho_s^2), Lambda)``
       (:func:`gaussian_likelihood_step`);
    2. prior alignment: start the DDPM at ``t0`` = the largest ``t`` with ``abar_t > 1 / (1 + rho_s^2)`` from
       ``x_t0 = sqrt(abar_t0) Z`` and run ancestral steps (Eq. 7) down to ``t = 0``; ``U`` is the result.

    The diffusion may live in rescaled coordinates ``y = u / latent_scale``: the prior step then uses
    ``rho_s / latent_scale`` to pick ``t0``, which is exact because the coupling noise is isotropic.

    Parameters
    ----------
    eps_fn
        Noise predictor of the diffusion prior, ``eps_fn(x_t, t)``, in the rescaled coordinates.
    vtx
        ``V^T x`` of each cell, ``(n, k)``.
    vtv
        ``V^T V``, ``(k, k)``.
    rhos
        One coupling level per iteration (see :func:`rho_schedule`).
    diffusion
        The :class:`GaussianDiffusion` the prior was trained with.
    n_chains
        Independent chains per cell (rows ordered cell-major).
    noise_var
        Observation noise variance ``sigma^2`` of the likelihood.
    latent_scale
        Scale between the sampler's coordinates and the diffusion's: ``u = latent_scale * y``.
    n_prior_steps
        Network evaluations of every prior step: ``min(n_prior_steps, t0)`` evenly spaced ancestral steps from
        ``t0`` to 0 (a respaced DDPM). None runs all ``t0`` steps of Eq. 7. Too few steps shrink the stationary
        posterior variance below its closed form (checked with an exact Gaussian prior in the tests).
    variance
        Reverse-step variance, ``"beta"`` (Eq. 7) or ``"posterior"``.
    generator
        Torch random generator.
    callback
        Called with the iteration index after every Gibbs iteration (progress bars).

    Returns
    -------
    Final states ``U^(n_iter)`` of shape ``(n, n_chains, k)``.

    Examples
    --------
    >>> import torch
    >>> from countsdiff_sc.diffusion import GaussianDiffusion, linear_beta_schedule
    >>> diff = GaussianDiffusion(linear_beta_schedule(64))
    >>> out = split_gibbs(lambda x, t: torch.zeros_like(x), torch.randn(4, 2), torch.eye(2), [2.0, 1.0], diff,
    ...                   n_chains=3, n_prior_steps=5)
    >>> out.shape
    torch.Size([4, 3, 2])
    """
    if int(n_chains) < 1:
        raise ValueError(f"n_chains must be >= 1, got {n_chains}.")
    if not latent_scale > 0:
        raise ValueError(f"latent_scale must be positive, got {latent_scale}.")
    if n_prior_steps is not None and int(n_prior_steps) < 1:
        raise ValueError(f"n_prior_steps must be >= 1 or None, got {n_prior_steps}.")

    n_steps = None if n_prior_steps is None else int(n_prior_steps)
    n, k = vtx.shape
    vtx_rep = vtx.repeat_interleave(int(n_chains), dim=0)
    u = vtx_rep.clone()
    vtv = vtv.to(vtx)
    for i, rho in enumerate(np.asarray(rhos, dtype=np.float64)):
        z = gaussian_likelihood_step(vtx_rep, u, vtv, float(rho), noise_var, generator)
        t0 = diffusion.select_t0(float(rho) / latent_scale)
        if t0 == 0:
            u = z
        else:
            x_t0 = math.sqrt(float(diffusion.alpha_bars[t0])) * (z / latent_scale)
            u = latent_scale * diffusion.sample_from(eps_fn, x_t0, t0, n_steps, variance, generator)
        if callback is not None:
            callback(i)
    return u.reshape(n, int(n_chains), k)
