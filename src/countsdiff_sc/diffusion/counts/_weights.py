"""Loss weightings ``w(t)`` of the count objective (CountsDiff, Soatto et al., 2026, Sec. 3.2, App. B.4-B.6).

The objective (Eq. 6) is ``E_{t ~ phi}[w(t) (y_hat - y log y_hat)]``. Every positive ``w`` has the same pointwise
minimiser ``y_hat = E[y | x_t]``; the weight only changes the training dynamics, i.e. which times a finite network
fits well.

Which times matter for sampling: a reverse step from ``t`` to ``s`` gives birth to
``Binomial(y_hat, (p(s) - p(t)) / (1 - p(t)))`` molecules, so an error ``delta`` of ``y_hat`` adds about
``delta * (-p'(t) / (1 - p(t))) dt`` molecules: the sampler's sensitivity to ``y_hat`` is the NLL weight
``-p'(t) / (1 - p(t))``. ``-p'(t)`` is that times ``1 - p(t)``. For the cosine schedule ``1 - p(t) ~ (pi t / 2)^2``
near ``t = 0`` (a mild, polynomial down-weighting), but for the Blackout schedule ``1 - p(t) ~ e^(-15 (1 - 2 t))``:
``-p'`` is below 1e-4 of its peak for ``t < 0.2`` while every sampler step there still gives birth to ~30 dt of
``y_hat``; an untrained, over-estimated ``y_hat`` there over-generates (more steps, more spurious births). The
``"auto"`` weighting therefore resolves to the schedule's ``default_weighting``: ``"neg_dp"`` for the cosine (and
custom) schedules, ``"nll"`` for the Blackout schedules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._schedules import PSchedule

__all__ = ["LOSS_WEIGHTINGS", "TIME_SAMPLINGS", "ImportanceTimes", "loss_weight", "resolve_loss_weighting"]

#: How training times are drawn: ``"uniform"`` (``t ~ U(0, 1)``, weight ``w(t)``) or ``"importance"``
#: (density proportional to ``w``, constant weight; see :class:`ImportanceTimes`).
TIME_SAMPLINGS = ("uniform", "importance")

LOSS_WEIGHTINGS = ("auto", "neg_dp", "nll", "constant")

# Times are clamped into [eps, 1 - eps] for the NLL weight, whose 1 / (1 - p(t)) factor diverges at t = 0.
_NLL_EPS = 1e-3


def resolve_loss_weighting(weighting: str, schedule: PSchedule) -> str:
    """The concrete weighting of ``weighting`` for ``schedule``: ``"auto"`` becomes ``schedule.default_weighting``.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import BlackoutSchedule, CosineSchedule
    >>> resolve_loss_weighting("auto", CosineSchedule()), resolve_loss_weighting("auto", BlackoutSchedule())
    ('neg_dp', 'nll')
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"Unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}.")
    return schedule.default_weighting if weighting == "auto" else weighting


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
        ``"auto"``: the schedule's ``default_weighting`` (``"neg_dp"`` for the cosine schedule, ``"nll"`` for the
        Blackout schedules; see the module docstring). ``"neg_dp"``: ``w(t) = -p'(t)`` (paper default, Prop. B.1:
        an exact NLL of a reparameterised process; for the cosine schedule ``(pi / 2) sin(pi t)``). ``"nll"``:
        ``w(t) = -p'(t) / ((1 - p(t)) phi(t))`` (``schedule.hazard(t) / phi(t)``), the exact continuous-time NLL
        weight for times drawn from the density ``phi`` (App. B.4); ``t`` is clamped to ``[1e-3, 1 - 1e-3]`` because
        the weight diverges as ``p(t) -> 1`` for the cosine schedule (for Blackout it is bounded by 30).
        ``"constant"``: ``w(t) = 1``.
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
    weighting = resolve_loss_weighting(weighting, schedule)
    if weighting == "neg_dp":
        return -schedule.dp(t)
    if weighting == "constant":
        return torch.ones_like(t)
    if weighting == "nll":
        tc = t.clamp(_NLL_EPS, 1.0 - _NLL_EPS)
        if time_density is None:
            return schedule.hazard(tc)
        phi = time_density(tc)
        return schedule.hazard(tc) / phi
    raise AssertionError(weighting)  # unreachable: resolve_loss_weighting validated it


class ImportanceTimes:
    r"""Training times drawn with density proportional to the loss weight: importance sampling of the time integral.

    The objective is :math:`\int_0^1 w(t) L(t) dt` with :math:`L(t)` the expected loss at time ``t`` (Eq. 6). Drawing
    ``t ~ U(0, 1)`` and weighting by ``w(t)`` estimates it without bias, but when ``w`` is peaked (the ``"nll"``
    weight of the cosine schedule grows like ``2 / t`` near 0) a few cells of a minibatch carry most of the gradient.
    Drawing ``t`` from :math:`\phi(t) = w(t) / Z`, :math:`Z = \int_0^1 w`, and weighting every cell by ``Z`` is the
    same objective with equal weights (the variance-reducing choice when :math:`L(t)` varies less than ``w``). ``w``
    is tabulated at the midpoints of ``n_grid`` equal cells of ``[0, 1]`` (with the clamps of :func:`loss_weight`);
    within a cell the density is constant, so the objective is that of the tabulated weight.

    Parameters
    ----------
    schedule
        A continuous p-schedule (discrete schedules snap times onto their own grid: refused).
    weighting
        Loss weighting (see :func:`loss_weight`).
    n_grid
        Cells of the table.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> times = ImportanceTimes(CosineSchedule(), "neg_dp")
    >>> round(times.weight, 4)  # the integral of (pi / 2) sin(pi t) over [0, 1]
    1.0
    """

    def __init__(self, schedule: PSchedule, weighting: str, n_grid: int = 4096):
        if schedule.discrete:
            raise ValueError("time_sampling='importance' needs a continuous schedule; discrete schedules draw their "
                             "own grid times (use time_sampling='uniform').")
        edges = torch.linspace(0.0, 1.0, n_grid + 1, dtype=torch.float64)
        mids = 0.5 * (edges[:-1] + edges[1:])
        w = loss_weight(mids, schedule, weighting).to(torch.float64).clamp_min(0.0)
        mass = w / n_grid
        total = float(mass.sum())
        if not total > 0:
            raise ValueError(f"The {weighting!r} weight of this schedule integrates to {total}: nothing to sample.")
        self.weight = total
        self.n_grid = n_grid
        self._cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0) / total]).float()
        self._edges = edges.float()

    def sample(self, n: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` times from the tabulated density (inverse CDF, uniform within a cell)."""
        cdf, edges = self._cdf.to(device), self._edges.to(device)
        u = torch.rand(n, device=device, generator=generator)
        idx = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, self.n_grid - 1)
        lo, hi = cdf[idx], cdf[idx + 1]
        frac = ((u - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
        return edges[idx] + frac / self.n_grid
