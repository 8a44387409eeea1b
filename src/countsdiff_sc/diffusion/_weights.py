"""Loss weightings ``w(t)`` of the CountsDiff objective (paper Sec. 3.2, App. B.4-B.6).

The objective (Eq. 6) is ``E_{t ~ phi}[w(t) (y_hat - y log y_hat)]``. Every positive ``w`` has the same pointwise
minimiser ``y_hat = E[y | x_t]``; the weight only changes the training dynamics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._schedules import PSchedule

__all__ = ["LOSS_WEIGHTINGS", "loss_weight"]

LOSS_WEIGHTINGS = ("neg_dp", "nll", "constant")

# Times are clamped into [eps, 1 - eps] for the NLL weight, whose 1 / (1 - p(t)) factor diverges at t = 0.
_NLL_EPS = 1e-3


def loss_weight(
    t: torch.Tensor,
    schedule: PSchedule,
    weighting: str = "neg_dp",
    time_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Weight ``w(t)`` of each cell's loss.

    Parameters
    ----------
    t
        Times in ``[0, 1]`` (one per cell).
    schedule
        The p-schedule.
    weighting
        ``"neg_dp"``: ``w(t) = -p'(t)`` (paper default, Prop. B.1: an exact NLL of a reparameterised process; for
        the cosine schedule ``(pi / 2) sin(pi t)``). ``"nll"``: ``w(t) = -p'(t) / ((1 - p(t)) phi(t))``, the exact
        continuous-time NLL weight for times drawn from the density ``phi`` (App. B.4); ``t`` is clamped to
        ``[1e-3, 1 - 1e-3]`` because the weight diverges as ``p(t) -> 1``. ``"constant"``: ``w(t) = 1``.
    time_density
        The density ``phi`` the times were drawn from (only for ``"nll"``); uniform when omitted.

    Returns
    -------
    Tensor of weights with the shape of ``t``.

    Examples
    --------
    >>> import torch
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> loss_weight(torch.tensor([0.5]), CosineSchedule())
    tensor([1.5708])
    """
    if weighting == "neg_dp":
        return -schedule.dp(t)
    if weighting == "constant":
        return torch.ones_like(t)
    if weighting == "nll":
        tc = t.clamp(_NLL_EPS, 1.0 - _NLL_EPS)
        phi = torch.ones_like(tc) if time_density is None else time_density(tc)
        return -schedule.dp(tc) / ((1.0 - schedule.p(tc)).clamp_min(1e-12) * phi)
    raise ValueError(f"Unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}.")
