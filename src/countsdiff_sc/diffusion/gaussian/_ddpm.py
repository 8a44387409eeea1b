"""Discrete-time Gaussian DDPM with eps-prediction: beta schedules and the forward / reverse process.

Generic variance-preserving diffusion (Ho et al., 2020), used by the Gaussian baseline
(:class:`~countsdiff_sc.baselines.GaussianDDPMGenerator`) and as the prior of DICE (:mod:`countsdiff_sc.module.dice`).
Pure torch: no AnnData, no scvi-tools. Equation numbers refer to the DICE paper (Meier et al., "Clustering by
denoising"), which states the process in this notation:

- Eq. 8 (App. A): forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``;
- Eq. 7 (Sec. 3): ancestral reverse step ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)
  + sigma_t z``.

Time indices follow the paper: ``t = 1, ..., T`` with ``abar_t = prod_{s <= t} (1 - beta_s)``; ``t = 0`` is the
clean data (``abar_0 = 1``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

__all__ = [
    "EpsFn",
    "GaussianDiffusion",
    "cosine_beta_schedule",
    "linear_beta_schedule",
]

#: ``eps_fn(x_t, t)`` predicts the noise of a batch ``x_t`` (n, k) that shares the integer time ``t``.
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]

VARIANCES = ("beta", "posterior")


def linear_beta_schedule(n_timesteps: int = 512, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Linearly spaced ``beta_1, ..., beta_T`` (Ho et al. 2020; DICE App. C uses 1e-4 .. 2e-2 over T = 512).

    Parameters
    ----------
    n_timesteps
        Number of diffusion steps ``T``.
    beta_start, beta_end
        ``beta_1`` and ``beta_T``; ``0 < beta_start <= beta_end < 1``.

    Returns
    -------
    float64 tensor of shape ``(T,)``.

    Examples
    --------
    >>> b = linear_beta_schedule(512)
    >>> b.shape, float(b[0]), float(b[-1])
    (torch.Size([512]), 0.0001, 0.02)
    """
    if int(n_timesteps) < 1:
        raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}.")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}.")
    return torch.linspace(beta_start, beta_end, int(n_timesteps), dtype=torch.float64)


def cosine_beta_schedule(n_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine noise schedule of Nichol & Dhariwal (2021): ``abar(t) = cos^2(pi / 2 (t / T + s) / (1 + s))``.

    ``beta_t = 1 - abar(t) / abar(t - 1)``, clipped at ``max_beta`` (the singularity at ``t = T``). The CountsDiff
    paper's Gaussian baseline of the toy experiment (App. D.1) uses this schedule.

    Parameters
    ----------
    n_timesteps
        Number of diffusion steps ``T``.
    offset
        Small offset ``s`` that keeps ``beta_1`` away from 0.
    max_beta
        Upper clip of every ``beta_t``, in ``(0, 1)``.

    Returns
    -------
    float64 tensor of shape ``(T,)``.

    Examples
    --------
    >>> b = cosine_beta_schedule(1000)
    >>> b.shape, float(b[-1])
    (torch.Size([1000]), 0.999)
    """
    if int(n_timesteps) < 1:
        raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}.")
    if not 0.0 < max_beta < 1.0 or offset < 0:
        raise ValueError(f"Need 0 < max_beta < 1 and offset >= 0, got max_beta={max_beta}, offset={offset}.")
    steps = torch.arange(int(n_timesteps) + 1, dtype=torch.float64) / int(n_timesteps)
    abar = torch.cos((steps + offset) / (1.0 + offset) * math.pi / 2) ** 2
    betas = 1.0 - abar[1:] / abar[:-1]
    return betas.clamp(min=1e-8, max=max_beta)


class GaussianDiffusion:
    """Discrete-time variance-preserving Gaussian diffusion with eps-prediction (DICE App. A, Eq. 7-8).

    All schedule arrays are float64 on the CPU; results are cast to the dtype and device of the data.

    Parameters
    ----------
    betas
        ``beta_1, ..., beta_T`` (see :func:`linear_beta_schedule`).

    Attributes
    ----------
    alpha_bars
        float64 tensor ``(T + 1,)``: ``alpha_bars[t] = abar_t`` with ``alpha_bars[0] = 1``.

    Examples
    --------
    >>> import torch
    >>> diff = GaussianDiffusion(linear_beta_schedule(512))
    >>> x0 = torch.zeros(4, 3)
    >>> x_t = diff.q_sample(x0, torch.full((4,), 100), torch.randn(4, 3))
    >>> diff.select_t0(5.0)  # largest t with abar_t > 1 / (1 + 5^2)
    405
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty sequence of numbers in (0, 1).")
        self.betas = betas
        self.alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, dim=0)])

    @property
    def n_timesteps(self) -> int:
        """Number of diffusion steps ``T``."""
        return int(self.betas.numel())

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.n_timesteps}, beta=[{float(self.betas[0]):.3g}, {float(self.betas[-1]):.3g}], "
            f"abar_T={float(self.alpha_bars[-1]):.3g})"
        )

    # ------------------------------------------------------------------ helpers
    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` cast to ``like``; a tensor ``t`` of shape (n,) gives shape (n, 1) for broadcasting."""
        if torch.is_tensor(t) and t.ndim > 0:
            out = self.alpha_bars[t.detach().cpu().long()].to(dtype=like.dtype, device=like.device)
            return out.reshape(-1, *([1] * (like.ndim - 1)))
        return torch.as_tensor(float(self.alpha_bars[int(t)]), dtype=like.dtype, device=like.device)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """Noised data ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (Eq. 8).

        Parameters
        ----------
        x0
            Clean data ``(n, k)``.
        t
            Integer time(s) in ``0..T``: a scalar or a tensor of shape ``(n,)``.
        noise
            Standard normal noise shaped like ``x0``.

        Returns
        -------
        ``x_t`` shaped like ``x0``.

        Examples
        --------
        >>> import torch
        >>> diff = GaussianDiffusion(linear_beta_schedule(10))
        >>> bool(torch.equal(diff.q_sample(torch.ones(2, 2), 0, torch.randn(2, 2)), torch.ones(2, 2)))
        True
        """
        ab = self._abar(t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 8 for ``x0`` given a noise (prediction): ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``.

        Parameters
        ----------
        x_t
            Noised data ``(n, k)``.
        t
            Integer time(s) in ``1..T``.
        eps
            Noise or predicted noise shaped like ``x_t``.

        Returns
        -------
        Estimated clean data shaped like ``x_t``.

        Examples
        --------
        >>> import torch
        >>> diff = GaussianDiffusion(linear_beta_schedule(10))
        >>> x0, e = torch.randn(3, 2), torch.randn(3, 2)
        >>> bool(torch.allclose(diff.predict_x0(diff.q_sample(x0, 5, e), 5, e), x0, atol=1e-5))
        True
        """
        ab = self._abar(t, x_t)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int, s: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_s | x_t, x_0)`` for ``0 <= s < t`` (``s = t - 1`` by default).

        With ``a = abar_t / abar_s`` and ``b = 1 - a`` (the effective beta of the jump ``s -> t``):
        ``mean = sqrt(abar_s) b / (1 - abar_t) x0 + sqrt(a) (1 - abar_s) / (1 - abar_t) x_t`` and
        ``var = b (1 - abar_s) / (1 - abar_t)`` (Ho et al. 2020, Eq. 6-7, for a jump of several steps).

        Parameters
        ----------
        x0, x_t
            Clean and noised data ``(n, k)``.
        t, s
            Integer times with ``0 <= s < t <= T``.

        Returns
        -------
        ``(mean, var)``: mean shaped like ``x_t`` and the scalar variance as a 0-d tensor.

        Examples
        --------
        >>> import torch
        >>> diff = GaussianDiffusion(linear_beta_schedule(10))
        >>> mean, var = diff.q_posterior(torch.ones(1, 2), torch.ones(1, 2), t=1)
        >>> bool(torch.allclose(mean, torch.ones(1, 2))), float(var)
        (True, 0.0)
        """
        s = t - 1 if s is None else int(s)
        t = int(t)
        if not 0 <= s < t <= self.n_timesteps:
            raise ValueError(f"Need 0 <= s < t <= T={self.n_timesteps}, got s={s}, t={t}.")
        ab_t, ab_s = float(self.alpha_bars[t]), float(self.alpha_bars[s])
        a = ab_t / ab_s
        b = 1.0 - a
        mean = (math.sqrt(ab_s) * b / (1.0 - ab_t)) * x0 + (math.sqrt(a) * (1.0 - ab_s) / (1.0 - ab_t)) * x_t
        var = torch.as_tensor(b * (1.0 - ab_s) / (1.0 - ab_t), dtype=x_t.dtype, device=x_t.device)
        return mean, var

    # ------------------------------------------------------------------ reverse process
    def p_step(
        self,
        x_t: torch.Tensor,
        t: int,
        s: int,
        eps: torch.Tensor,
        variance: Literal["beta", "posterior"] = "beta",
        generator: torch.Generator | None = None,
        clip_x0: tuple[torch.Tensor | float, torch.Tensor | float] | None = None,
    ) -> torch.Tensor:
        """One ancestral step from ``t`` to ``s < t`` (Eq. 7; for ``s < t - 1`` a respaced DDPM step).

        ``x_s = (x_t - b / sqrt(1 - abar_t) eps) / sqrt(a) + sigma z`` with ``a = abar_t / abar_s``, ``b = 1 - a``;
        the mean equals the posterior mean of :meth:`q_posterior` at ``x0 = predict_x0(x_t, t, eps)``.
        ``sigma^2 = b`` (``"beta"``, the paper's Eq. 7) or the posterior variance ``b (1 - abar_s) / (1 - abar_t)``
        (``"posterior"``). No noise is added on the last step to ``s = 0`` (Ho et al. 2020, Algorithm 2).
        On a coarse respaced grid ``"beta"`` keeps the spread of the data far better than ``"posterior"``, which
        ignores the uncertainty of ``x0`` given ``x_t`` and shrinks the samples (for Gaussian data with 10 steps
        from ``t = 400``: about 1% vs 15% too small a standard deviation).

        Parameters
        ----------
        x_t
            Current state ``(n, k)``.
        t, s
            Integer times with ``0 <= s < t <= T``.
        eps
            Predicted noise at ``(x_t, t)``.
        variance
            ``"beta"`` or ``"posterior"``.
        generator
            Torch random generator for the noise.
        clip_x0
            Optional ``(low, high)`` bounds (numbers or tensors broadcastable to ``x_t``): the mean is then the
            posterior mean of :meth:`q_posterior` at the clipped ``predict_x0(x_t, t, eps)``.

        Returns
        -------
        ``x_s`` shaped like ``x_t``.

        Examples
        --------
        >>> import torch
        >>> diff = GaussianDiffusion(linear_beta_schedule(10))
        >>> diff.p_step(torch.zeros(2, 3), t=5, s=4, eps=torch.zeros(2, 3)).shape
        torch.Size([2, 3])
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}.")
        t, s = int(t), int(s)
        if not 0 <= s < t <= self.n_timesteps:
            raise ValueError(f"Need 0 <= s < t <= T={self.n_timesteps}, got s={s}, t={t}.")
        ab_t, ab_s = float(self.alpha_bars[t]), float(self.alpha_bars[s])
        a = ab_t / ab_s
        b = 1.0 - a
        if clip_x0 is None:
            mean = (x_t - (b / math.sqrt(1.0 - ab_t)) * eps) / math.sqrt(a)
        else:
            x0 = self.predict_x0(x_t, t, eps).clamp(*clip_x0)
            mean = self.q_posterior(x0, x_t, t, s)[0]
        if s == 0:
            return mean
        var = b if variance == "beta" else b * (1.0 - ab_s) / (1.0 - ab_t)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + math.sqrt(var) * noise

    def timesteps(self, t0: int, n_steps: int | None = None) -> list[int]:
        """Descending time grid ``t0 > ... > 0`` of a reverse run started at ``t0``.

        Parameters
        ----------
        t0
            Start time in ``0..T``.
        n_steps
            Number of reverse steps (network evaluations). None runs every step ``t0, t0 - 1, ..., 1`` as in Eq. 7;
            an integer keeps ``min(t0, n_steps)`` evenly spaced steps (a respaced DDPM, Nichol & Dhariwal 2021).

        Returns
        -------
        List of integer times starting at ``t0`` and ending at ``0``.

        Examples
        --------
        >>> GaussianDiffusion(linear_beta_schedule(512)).timesteps(100, n_steps=4)
        [100, 75, 50, 25, 0]
        """
        t0 = int(t0)
        if not 0 <= t0 <= self.n_timesteps:
            raise ValueError(f"t0 must lie in 0..{self.n_timesteps}, got {t0}.")
        if t0 == 0:
            return [0]
        if n_steps is None or int(n_steps) >= t0:
            return list(range(t0, -1, -1))
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1 or None, got {n_steps}.")
        grid = np.unique(np.round(np.linspace(0, t0, int(n_steps) + 1)).astype(int))[::-1]
        return [int(v) for v in grid]

    def sample_from(
        self,
        eps_fn: EpsFn,
        x_t0: torch.Tensor,
        t0: int,
        n_steps: int | None = None,
        variance: Literal["beta", "posterior"] = "beta",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Run the ancestral reverse chain (Eq. 7) from ``x_{t0}`` down to ``x_0``.

        Parameters
        ----------
        eps_fn
            ``eps_fn(x_t, t)`` predicting the noise of a batch at integer time ``t``.
        x_t0
            Start state ``(n, k)``.
        t0
            Start time (0 returns ``x_t0`` unchanged).
        n_steps
            Reverse steps (see :meth:`timesteps`); None = all ``t0`` steps.
        variance
            ``"beta"`` (Eq. 7) or ``"posterior"`` (see :meth:`p_step`).
        generator
            Torch random generator.

        Returns
        -------
        ``x_0`` shaped like ``x_t0``.

        Examples
        --------
        >>> import torch
        >>> diff = GaussianDiffusion(linear_beta_schedule(50))
        >>> x0 = diff.sample_from(lambda x, t: torch.zeros_like(x), torch.randn(5, 2), t0=50, n_steps=10)
        >>> x0.shape
        torch.Size([5, 2])
        """
        grid = self.timesteps(t0, n_steps)
        x = x_t0
        for t, s in itertools.pairwise(grid):
            x = self.p_step(x, t, s, eps_fn(x, t), variance=variance, generator=generator)
        return x

    def select_t0(self, rho: float) -> int:
        """Start time of the DICE prior step: the largest ``t`` with ``abar_t > 1 / (1 + rho^2)`` (Sec. 3).

        Then ``sqrt(abar_t0) Z`` carries about the noise level ``sqrt(1 - abar_t0)`` of the forward process at
        ``t0`` when ``Z`` is ``U`` plus noise of standard deviation ``rho``. Returns 0 when even ``abar_1`` is not
        above the threshold (``rho`` tiny: the prior step is the identity) and ``T`` when every ``abar_t`` is.

        Parameters
        ----------
        rho
            Coupling standard deviation (> 0), in the units of the diffusion's data.

        Returns
        -------
        Integer ``t0`` in ``0..T``.

        Examples
        --------
        >>> diff = GaussianDiffusion(linear_beta_schedule(512))
        >>> diff.select_t0(0.5), diff.select_t0(1e-4), diff.select_t0(100.0)
        (104, 0, 512)
        """
        rho = float(rho)
        if not rho > 0 or not math.isfinite(rho):
            raise ValueError(f"rho must be a positive finite number, got {rho}.")
        threshold = 1.0 / (1.0 + rho * rho)
        above = torch.nonzero(self.alpha_bars[1:] > threshold).flatten()
        return int(above.max()) + 1 if above.numel() else 0
