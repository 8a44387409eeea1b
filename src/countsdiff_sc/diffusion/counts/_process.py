"""Forward thinning, the count loss, the log-linear rate mix of guidance and the reverse step with attrition.

References are to CountsDiff (Soatto et al., 2026): Eq. 4-6, Proposition 3.2 (Eq. 8), Sec. 3.3-3.5.
All functions are pure torch and vectorised over any tensor shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch

from ._kernels_torch import binomial_torch, rounded_binomial_torch

__all__ = [
    "ATTRITION_KINDS",
    "attrition_rate",
    "binomial",
    "count_loss",
    "log_linear_mix",
    "reverse_step",
    "sigma_max",
    "thin",
]

ATTRITION_KINDS = ("none", "rescale", "cap", "constant")

_LOG_EPS = 1e-8


def _cpu_kernels() -> ModuleType:
    """The compiled CPU kernels of :mod:`._kernels_cpu`, imported on the first CPU draw."""
    # The one place that loads the kernels, lazily on purpose: they are numba code, and importing numba and loading
    # the kernels from numba's on-disk cache costs a noticeable part of a second per process (compiling them on a
    # cache miss, several seconds), which neither
    # ``import countsdiff_sc.diffusion`` nor a run whose tensors all live on a GPU should pay: the kernels serve the
    # CPU path only. The kernels import only the leaf _kernels_torch, never this module, so there is no cycle.
    from . import _kernels_cpu

    return _kernels_cpu


def binomial(count: torch.Tensor, prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Element-wise ``Binomial(count, prob)`` draws as float tensors (``prob`` is clamped to ``[0, 1]``).

    ``count`` must hold non-negative integers (any float dtype); ``prob`` broadcasts against it.

    On CPU the draws come from a compiled inversion kernel (exact, several times faster than ``torch.binomial``,
    whose serial CPU kernel was the costliest op of a sampler step); on other devices ``torch.binomial`` runs in
    parallel and is used directly. Either way the draws are a function of the generator's state.
    """
    count = count.to(torch.float32)
    prob = torch.as_tensor(prob, dtype=torch.float32, device=count.device).clamp(0.0, 1.0)
    if count.device.type == "cpu" and count.numel() > 0:
        return _cpu_kernels().binomial_cpu(count, prob, generator)
    return binomial_torch(count, prob, generator)


def thin(x0: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward process: ``x_t ~ Binomial(x_0, p(t))`` element-wise (Eq. 4).

    Parameters
    ----------
    x0
        Counts, shape ``(n, g)``.
    p
        Survival probabilities; shape ``(n, 1)`` (one time per cell) or anything broadcastable to ``x0``.
    generator
        Optional torch generator for reproducibility.

    Returns
    -------
    Thinned counts ``x_t`` (float tensor, same shape as ``x0``).
    """
    return binomial(x0, p, generator)


def count_loss(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduce: bool = True,
    normaliser: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The CountsDiff loss of Eq. 6 restricted to valid entries.

    Per cell: the mean over valid genes of ``y_hat - y log(y_hat + 1e-8)`` (``normaliser=None``), or the sum over
    valid genes divided by the constant ``normaliser``; batch: the mean over cells of ``w(t)`` times that. Cells
    without any valid gene contribute zero.

    The per-cell mean weights every entry of a cell by ``1 / n_valid`` of that cell, so cells with fewer valid genes
    weigh more per entry and the minimiser leans towards them (when validity varies by cell, this is the
    inverse-probability weighting that counts every cell once). A constant ``normaliser`` (e.g. the mean number of
    valid genes per cell) weighs every entry equally: the loss is Eq. 6 (a sum over entries) up to a constant
    factor, so it has the same minimiser, on the scale of the per-cell mean.

    Parameters
    ----------
    y_hat
        Predicted rates (positive, softplus already applied), shape ``(n, g)``.
    y
        Targets ``x_0 - x_t``, shape ``(n, g)``.
    valid
        Boolean (or 0/1) mask of entries that count; all entries when None.
    weight
        Per-cell weights ``w(t)``, shape ``(n,)``; 1 when None.
    reduce
        Return the batch mean (default) or the per-cell weighted losses.
    normaliser
        None (default): average each cell over its valid genes. A positive number (or 0-d tensor, not checked):
        divide each cell's sum over valid genes by it.

    Returns
    -------
    Scalar loss, or a tensor of shape ``(n,)`` when ``reduce=False``.
    """
    term = y_hat - y * torch.log(y_hat + _LOG_EPS)
    if normaliser is not None:
        if not torch.is_tensor(normaliser) and not normaliser > 0:
            raise ValueError(f"normaliser must be positive, got {normaliser}.")
        per_cell = (term if valid is None else term * valid.to(term.dtype)).sum(dim=-1) / normaliser
    elif valid is None:
        per_cell = term.mean(dim=-1)
    else:
        v = valid.to(term.dtype)
        per_cell = (term * v).sum(dim=-1) / v.sum(dim=-1).clamp_min(1.0)
    if weight is not None:
        per_cell = per_cell * weight
    return per_cell.mean() if reduce else per_cell


def log_linear_mix(
    rates: Sequence[torch.Tensor], coefs: Sequence[float | torch.Tensor], inplace: bool = False
) -> torch.Tensor:
    """Weighted geometric mean of rates, ``exp(sum_j c_j log y_j)``, the common form of every guided rate.

    Single-condition guidance (Sec. 3.4) is ``rates = (y_c, y_u)`` with ``coefs = (g, 1 - g)``; per-covariate
    (compositional) guidance and cell-state interpolation use more terms. The coefficients of a guided rate sum to
    one (an affine combination in log space), so a rate that all terms agree on is returned unchanged.

    Parameters
    ----------
    rates
        Positive rates of one shape (each clamped at 1e-12 before the log).
    coefs
        One coefficient per rate: a float or a tensor broadcastable to the rates (e.g. ``(n, 1)``, one per cell).
    inplace
        Overwrite the rates with their logs and return the result in the storage of ``rates[0]``: no temporary
        tensors, which on a CPU saves most of the mix's cost (each fresh buffer of a large rate matrix costs a round of
        page faults). For samplers that own the rates and need no gradient.

    Returns
    -------
    The mixed rate, same shape as ``rates[0]`` (``rates[0]`` itself when ``inplace``).

    Examples
    --------
    >>> y_c, y_u = torch.tensor([4.0]), torch.tensor([1.0])
    >>> log_linear_mix([y_c, y_u], [0.5, 0.5])
    tensor([2.])
    """
    if len(rates) != len(coefs) or not rates:
        raise ValueError(f"Need one coefficient per rate, got {len(rates)} rates and {len(coefs)} coefficients.")
    if not inplace:
        log_y = sum(c * torch.log(y.clamp_min(1e-12)) for y, c in zip(rates, coefs, strict=True))
        return torch.exp(log_y)
    out = rates[0].clamp_min_(1e-12).log_().mul_(coefs[0])
    for y, c in zip(rates[1:], coefs[1:], strict=True):
        log_y = y.clamp_min_(1e-12).log_()
        if torch.is_tensor(c):
            out.add_(log_y.mul_(c))
        else:
            out.add_(log_y, alpha=float(c))
    return out.exp_()


def sigma_max(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    """Largest admissible attrition ``min(1, (1 - p(s)) / p(t))`` of a step from ``t`` to ``s < t`` (Prop. 3.2)."""
    return ((1.0 - p_s) / p_t.clamp_min(1e-30)).clamp(0.0, 1.0)


def attrition_rate(
    kind: str, eta: float, p_t: torch.Tensor, p_s: torch.Tensor, dt: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Attrition ``sigma_{t,s}`` of one reverse step, always within ``[0, sigma_max]``.

    Parameters
    ----------
    kind
        ``"none"``: ``sigma = 0`` (pure-birth, Blackout-style step). ``"rescale"``: ``sigma = eta * sigma_max``
        (ReMDM-rescale, paper Sec. 3.3; ``eta`` in [0, 1]). ``"cap"``: ``sigma = min(eta, sigma_max)``
        (ReMDM-cap: a fixed per-step death probability, capped). ``"constant"``: a constant death *rate* ``eta``
        per unit time, ``sigma = min(1 - exp(-eta (t - s)), sigma_max)``, which, unlike ``"cap"``, does not
        depend on how many steps the sampler takes.
    eta
        Strength of the attrition (non-negative).
    p_t, p_s
        Schedule values at the current time ``t`` and the next time ``s < t``.
    dt
        Step length ``t - s``; required for ``"constant"``.

    Returns
    -------
    Tensor ``sigma`` broadcast from ``p_t`` and ``p_s``.
    """
    smax = sigma_max(p_t, p_s)
    if kind not in ATTRITION_KINDS:
        raise ValueError(f"Unknown attrition kind {kind!r}; choose one of {ATTRITION_KINDS}.")
    if eta < 0.0:
        raise ValueError(f"Attrition strength must be non-negative, got {eta}.")
    if kind == "none" or eta == 0.0:
        return torch.zeros_like(smax)
    if kind == "rescale":
        if eta > 1.0:
            raise ValueError(f"ReMDM-rescale attrition needs eta in [0, 1] (sigma = eta * sigma_max), got {eta}.")
        return eta * smax
    if kind == "cap":
        return smax.clamp(max=float(eta))
    if dt is None:
        raise ValueError("Constant-rate attrition needs the step length dt = t - s.")
    dt = torch.as_tensor(dt, dtype=smax.dtype, device=smax.device)
    return torch.minimum(-torch.expm1(-eta * dt), smax)


def reverse_step(
    x_t: torch.Tensor,
    y_hat: torch.Tensor,
    p_t: torch.Tensor,
    p_s: torch.Tensor,
    sigma: torch.Tensor | float = 0.0,
    generator: torch.Generator | None = None,
    *,
    out: torch.Tensor | None = None,
    x_obs: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step with attrition from ``t`` to ``s < t`` (Prop. 3.2, Eq. 8; Algorithm 2).

    ``x_s = Binomial(x_t, 1 - sigma) + Binomial(random_round(y_hat), beta)`` with
    ``beta = (p(s) - (1 - sigma) p(t)) / (1 - p(t))``. With the oracle ``y_hat = x_0 - x_t`` this preserves the
    marginal ``x_s ~ Binomial(x_0, p(s))`` for every ``sigma`` in ``[0, sigma_max]``.

    Parameters
    ----------
    x_t
        Current counts.
    y_hat
        Predicted number of missing molecules ``x_0 - x_t`` (real-valued; negative entries count as 0). It is
        rounded at random, ``floor(y) + Bernoulli(y - floor(y))``, which keeps its expectation (Sec. 3.5); the
        rounding is fused into the birth draw, so the rounded pool is never materialised.
    p_t, p_s
        Schedule values at ``t`` and ``s``; scalars or tensors broadcastable to ``x_t``.
    sigma
        Attrition (death probability of each present molecule), within ``[0, sigma_max(p_t, p_s)]``.
    generator
        Optional torch generator.
    out
        Optional float32 tensor shaped like ``x_t`` to write ``x_s`` into; it may be ``x_t`` itself, which a sampler
        that owns its state uses to avoid a fresh buffer per step.
    x_obs, target
        RePaint (Sec. 3.6): observed counts and the boolean mask of the entries to impute, shaped like ``x_t``. Entries
        where ``target`` is False are driven by their known missing count ``x_obs - x_t`` instead of ``y_hat``, which
        keeps them ``Binomial(x_obs, p(s))`` (without attrition this is the posterior ``q(x_s | x_t, x_0 = x_obs)``
        of the forward process; with attrition a bridge with the same marginals); on CPU the choice is made inside
        the fused kernel.

    Returns
    -------
    ``x_s`` as a float tensor of non-negative integers (``out`` when given).
    """
    if (x_obs is None) != (target is None):
        raise ValueError("Give both x_obs and target (RePaint), or neither.")
    p_t = torch.as_tensor(p_t, dtype=torch.float32, device=x_t.device)
    p_s = torch.as_tensor(p_s, dtype=torch.float32, device=x_t.device)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device)
    beta = ((p_s - (1.0 - sigma) * p_t) / (1.0 - p_t).clamp_min(1e-12)).clamp(0.0, 1.0)
    if x_t.device.type == "cpu" and beta.numel() == 1 and sigma.numel() == 1 and x_t.numel() > 0:
        # compiled kernel: deaths, rounding and births in one pass (same distribution; see _kernels_cpu)
        return _cpu_kernels().reverse_step_cpu(x_t.to(torch.float32), y_hat.to(torch.float32).expand_as(x_t),
                                               float(sigma), float(beta), generator, out=out, x_obs=x_obs,
                                               target=target)
    # torch path (GPUs; on CPU, per-entry p or sigma): the deaths go through binomial(), which on CPU is the compiled
    # kernel, and the births through the rounded binomial of _kernels_torch
    if x_obs is not None:
        y_hat = torch.where(target, y_hat, x_obs - x_t)
    survivors = x_t if not bool((sigma > 0).any()) else binomial(x_t, 1.0 - sigma, generator)
    return torch.add(survivors, rounded_binomial_torch(y_hat, beta, generator), out=out)
