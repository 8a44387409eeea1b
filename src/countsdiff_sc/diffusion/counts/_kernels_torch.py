"""Torch samplers of the count diffusion that every device can run (the path of GPUs).

A leaf module: it imports torch only, so both the reverse step (:mod:`._process`) and the compiled CPU kernels
(:mod:`._kernels_cpu`, which redraw their rare large-mean entries with it) can use it without importing each other.
"""

from __future__ import annotations

import torch

__all__ = ["binomial_torch", "rounded_binomial_torch"]


def binomial_torch(count: torch.Tensor, prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``Binomial(count, prob)`` with ``torch.binomial``, ``prob`` broadcast to the shape of ``count``.

    Parameters
    ----------
    count
        Float tensor of non-negative integers.
    prob
        Probabilities in ``[0, 1]``, broadcastable to ``count``.
    generator
        Optional torch generator.

    Returns
    -------
    Float tensor shaped like ``count``.
    """
    return torch.binomial(count, prob.expand_as(count).contiguous(), generator=generator)


def rounded_binomial_torch(
    y_hat: torch.Tensor, beta: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``Binomial(random_round(max(y_hat, 0)), beta)`` without materialising the randomly rounded pool.

    With ``y = m + f`` (``m`` integer, ``0 <= f < 1``), the random rounding of CountsDiff (Soatto et al., 2026,
    Sec. 3.5) is ``m + B`` with ``B ~ Bernoulli(f)``, and ``Binomial(m + B, beta) = Binomial(m, beta) +
    B * Bernoulli(beta)``, whose second term is ``Bernoulli(f * beta)``. Same distribution, but the binomial kernel
    only sees the integer parts, which on sparse data are mostly zero.

    Parameters
    ----------
    y_hat
        Real-valued rates (negative entries count as 0).
    beta
        Birth probabilities in ``[0, 1]``, broadcastable to ``y_hat``.
    generator
        Optional torch generator; one uniform per entry is drawn before the binomial draws.

    Returns
    -------
    Float tensor of non-negative integers shaped like ``y_hat``.
    """
    y = y_hat.clamp_min(0.0)
    whole = torch.floor(y)
    u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    prob = beta.to(y.dtype).expand_as(whole).contiguous()
    return torch.binomial(whole, prob, generator=generator) + (u < (y - whole) * beta).to(y.dtype)
