"""p-schedules of the count forward process (CountsDiff, Soatto et al., 2026, Sec. 3.1, App. B.2-B.3).

A p-schedule is a differentiable, monotonically decreasing map ``p: [0, 1] -> [0, 1]`` with ``p(0) = 1`` and
``p(1) = 0`` (Proposition 3.1). The forward marginal is ``x_t ~ Binomial(x_0, p(t))`` (Eq. 4) and the conditional
between two times is ``x_t | x_s ~ Binomial(x_s, p(t) / p(s))`` (Eq. 5). Every schedule exposes ``p(t)``, its time
derivative ``dp(t)``, its inverse ``t_of_p(p)`` (used by the time grids of the sampler) and ``snap(t)``, which maps
times onto the schedule's own grid (identity for continuous schedules).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

__all__ = [
    "BlackoutSchedule",
    "CosineSchedule",
    "CustomSchedule",
    "DiscreteBlackoutSchedule",
    "PSchedule",
    "get_schedule",
]


class PSchedule(ABC):
    """Base class of p-schedules.

    Subclasses implement :meth:`p` and :meth:`dp`; both take a tensor of times in ``[0, 1]`` and return a tensor
    of the same shape. ``name`` and :meth:`config` identify the schedule so a model can be saved and rebuilt.
    """

    name: str = "base"
    discrete: bool = False
    #: Loss weighting that ``loss_weighting="auto"`` resolves to (see :func:`~countsdiff_sc.diffusion.loss_weight`).
    default_weighting: str = "neg_dp"

    @abstractmethod
    def p(self, t: torch.Tensor) -> torch.Tensor:
        """Survival probability ``p(t)`` of one molecule at time ``t``."""

    @abstractmethod
    def dp(self, t: torch.Tensor) -> torch.Tensor:
        """Time derivative ``p'(t)`` (non-positive)."""

    def hazard(self, t: torch.Tensor) -> torch.Tensor:
        """``-p'(t) / (1 - p(t))``: the reverse-time birth rate of each missing molecule (the NLL weight).

        A reverse step from ``t`` to ``s`` gives birth to a fraction ``~ hazard(t) (t - s)`` of ``y_hat``.
        Subclasses override this where ``1 - p(t)`` loses precision (it diverges at ``t = 0`` when ``p(0) = 1``).
        """
        return -self.dp(t) / (1.0 - self.p(t)).clamp_min(1e-12)

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        """Map times onto the schedule's grid (identity for continuous schedules)."""
        return t

    def t_of_p(self, p: torch.Tensor) -> torch.Tensor:
        """Inverse of the schedule: a time ``t`` in ``[0, 1]`` with ``p(t) = p``, in float64.

        Values outside ``[p(1), p(0)]`` map to the nearer end (1 or 0). The generic inverse bisects ``[0, 1]``
        (64 halvings in float64, so the time is exact to machine precision); where ``p`` is flat the returned time is
        somewhere on the flat piece. Schedules with a closed-form inverse override it. Discrete schedules invert
        their underlying continuous curve (snap the result onto their grid).

        Parameters
        ----------
        p
            Survival probabilities, any shape.

        Returns
        -------
        Times, a float64 tensor of ``p``'s shape.

        Examples
        --------
        >>> s = CustomSchedule(lambda t: 1.0 - t ** 2)
        >>> round(float(s.t_of_p(torch.tensor(0.75))), 12)
        0.5
        """
        target = torch.as_tensor(p, dtype=torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.p(mid) > target  # p is non-increasing: p(mid) above the target means t lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def config(self) -> dict:
        """Keyword arguments that rebuild this schedule with :func:`get_schedule`."""
        return {"name": self.name}

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.p(t)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class CosineSchedule(PSchedule):
    """Cosine schedule ``p(t) = cos^2(pi t / 2)`` (paper Sec. 3.1, App. B.3).

    Its derivative is ``p'(t) = -(pi / 2) sin(pi t)``, so the default weight ``w(t) = -p'(t)`` is the paper's
    ``(pi / 2) sin(pi t)`` (Sec. 3.2).

    Examples
    --------
    >>> import torch
    >>> s = CosineSchedule()
    >>> [round(float(v), 6) for v in s.p(torch.tensor([0.0, 0.5, 1.0]))]
    [1.0, 0.5, 0.0]
    """

    name = "cosine"

    def p(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t) ** 2

    def dp(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(math.pi * t)

    def t_of_p(self, p: torch.Tensor) -> torch.Tensor:
        # p = cos^2(pi t / 2)  <=>  t = (2 / pi) arccos(sqrt(p))
        p = torch.as_tensor(p, dtype=torch.float64).clamp(0.0, 1.0)
        return (2.0 / math.pi) * torch.arccos(torch.sqrt(p))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class BlackoutSchedule(PSchedule):
    """Continuous Blackout-diffusion / Fisher-information schedule (paper App. B.2).

    ``p(t) = sigmoid(L + t (logit(p_min) - L))`` with ``L = logit(1 - p_min) = -logit(p_min)``, i.e.
    ``p(t) = sigmoid((2 t - 1) logit(p_min))``. The endpoints are ``p(0) = 1 - p_min`` and ``p(1) = p_min``
    (``p_min = e^-15`` by default, so both are within 3.1e-7 of the ideal 1 and 0).

    Its default loss weighting (``loss_weighting="auto"``) is the exact NLL weight
    ``-p'(t) / (1 - p(t)) = -2 logit(p_min) p(t)``, bounded by ``2 |logit(p_min)|`` (30), not ``-p'(t)``: ``1 - p(t)``
    vanishes like ``e^-15`` at ``t = 0``, so ``-p'(t) = -2 logit(p_min) p (1 - p)`` leaves the network untrained
    for ``t < ~0.3`` while the reverse sampler still gives birth there to a fraction ``~ -2 logit(p_min) dt`` of
    ``y_hat`` per step (see :func:`~countsdiff_sc.diffusion.loss_weight`).

    Parameters
    ----------
    p_min
        Value of the schedule at ``t = 1``.
    """

    name = "blackout"
    default_weighting = "nll"

    def __init__(self, p_min: float = math.exp(-15.0)):
        if not 0.0 < p_min < 0.5:
            raise ValueError(f"p_min must lie in (0, 0.5), got {p_min}.")
        self.p_min = float(p_min)
        self._lmin = _logit(self.p_min)

    def p(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((2.0 * t - 1.0) * self._lmin)

    def dp(self, t: torch.Tensor) -> torch.Tensor:
        p = self.p(t)
        return 2.0 * self._lmin * p * (1.0 - p)

    def hazard(self, t: torch.Tensor) -> torch.Tensor:
        # -p' / (1 - p) = -2 logit(p_min) p exactly; the generic ratio cancels catastrophically in float32 near t = 0
        return -2.0 * self._lmin * self.p(t)

    def t_of_p(self, p: torch.Tensor) -> torch.Tensor:
        # logit p = (2 t - 1) logit(p_min)  <=>  t = (1 + logit(p) / logit(p_min)) / 2, clamped to [0, 1]
        p = torch.as_tensor(p, dtype=torch.float64).clamp(self.p_min, 1.0 - self.p_min)
        return (0.5 * (1.0 + torch.logit(p) / self._lmin)).clamp(0.0, 1.0)

    def config(self) -> dict:
        return {"name": self.name, "p_min": self.p_min}


class DiscreteBlackoutSchedule(BlackoutSchedule):
    """Blackout schedule on the discrete grid of ``T`` times of Santos et al. (2023) (paper App. B.2, Eq. 11).

    The grid is ``t_k = (k - 1) / (T - 1)`` for ``k = 1..T`` (so both 0 and 1 are grid points: there are ``T``
    points and ``T - 1`` intervals, which is the off-by-one to beware of). ``p`` and ``dp`` first snap ``t`` to the
    nearest grid time. ``dp`` is the finite difference that the discrete Blackout loss weights with,
    ``(p_k - p_{k-1}) (T - 1)`` (backward difference; the forward difference at ``k = 1``, where no earlier grid
    point exists).

    Parameters
    ----------
    n_grid
        Number ``T`` of grid times (paper: 1000).
    p_min
        Value of the schedule at ``t = 1``.
    """

    name = "blackout_discrete"
    discrete = True

    def __init__(self, n_grid: int = 1000, p_min: float = math.exp(-15.0)):
        super().__init__(p_min)
        if n_grid < 2:
            raise ValueError(f"n_grid must be at least 2, got {n_grid}.")
        self.n_grid = int(n_grid)

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        return torch.round(t.clamp(0.0, 1.0) * (self.n_grid - 1))

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        return self._index(t) / (self.n_grid - 1)

    def p(self, t: torch.Tensor) -> torch.Tensor:
        return super().p(self.snap(t))

    def dp(self, t: torch.Tensor) -> torch.Tensor:
        k = self._index(t)
        h = 1.0 / (self.n_grid - 1)
        k_prev = torch.where(k > 0, k - 1, k)
        k_next = torch.where(k > 0, k, k + 1)
        return (super().p(k_next * h) - super().p(k_prev * h)) / h

    def hazard(self, t: torch.Tensor) -> torch.Tensor:
        # -dp / (1 - p) with dp's finite difference, in q = 1 - p = sigmoid(-(2 t - 1) logit(p_min)) so nothing cancels
        # near t = 0 (there 1 - p is ~3e-7 and p_k - p_{k-1} rounds to 0 or 6e-8 in float32).
        k = self._index(t.to(torch.float64))
        h = 1.0 / (self.n_grid - 1)
        k_prev = torch.where(k > 0, k - 1, k)
        k_next = torch.where(k > 0, k, k + 1)

        def q(j: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(-(2.0 * j * h - 1.0) * self._lmin)

        return ((q(k_next) - q(k_prev)) / (q(k) * h)).to(t.dtype)

    def config(self) -> dict:
        return {"name": self.name, "n_grid": self.n_grid, "p_min": self.p_min}


class CustomSchedule(PSchedule):
    """A user-supplied p-schedule.

    Parameters
    ----------
    p_fn
        Callable mapping a tensor of times in ``[0, 1]`` to survival probabilities; must be differentiable by
        torch autograd if ``dp_fn`` is not given, decreasing, with ``p(0) = 1`` and ``p(1) = 0``.
    dp_fn
        Optional derivative; computed by autograd when omitted.
    check
        Verify monotonicity and endpoints on a grid of 1001 times (tolerance 1e-4) and raise ValueError if not.

    Notes
    -----
    A model trained with a custom schedule cannot rebuild it from a saved file (callables are not serialised);
    pass the same schedule object again when loading.

    Examples
    --------
    >>> import torch
    >>> s = CustomSchedule(lambda t: 1.0 - t)
    >>> float(s.dp(torch.tensor(0.3)))
    -1.0
    """

    name = "custom"

    def __init__(
        self,
        p_fn: Callable[[torch.Tensor], torch.Tensor],
        dp_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        check: bool = True,
    ):
        self._p_fn = p_fn
        self._dp_fn = dp_fn
        if check:
            grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
            values = self.p(grid)
            if abs(float(values[0]) - 1.0) > 1e-4 or abs(float(values[-1])) > 1e-4:
                raise ValueError(
                    f"A p-schedule must satisfy p(0) = 1 and p(1) = 0; got p(0) = {float(values[0]):.6g}, "
                    f"p(1) = {float(values[-1]):.6g}."
                )
            if bool((values.diff() > 1e-7).any()) or bool(((values < -1e-7) | (values > 1 + 1e-7)).any()):
                raise ValueError("A p-schedule must be non-increasing with values in [0, 1].")

    def p(self, t: torch.Tensor) -> torch.Tensor:
        return self._p_fn(t)

    def dp(self, t: torch.Tensor) -> torch.Tensor:
        if self._dp_fn is not None:
            return self._dp_fn(t)
        with torch.enable_grad():
            tt = t.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._p_fn(tt).sum(), tt)
        return grad.detach()


_REGISTRY: dict[str, type[PSchedule]] = {
    "cosine": CosineSchedule,
    "blackout": BlackoutSchedule,
    "blackout_discrete": DiscreteBlackoutSchedule,
}


def get_schedule(schedule: str | PSchedule | dict, **kwargs) -> PSchedule:
    """Build a p-schedule from a name, a config dict (see :meth:`PSchedule.config`) or pass an instance through.

    Parameters
    ----------
    schedule
        ``"cosine"`` (default of the package), ``"blackout"`` (continuous Fisher-information schedule),
        ``"blackout_discrete"`` (the same on a ``T = 1000`` grid), a config dict, or a :class:`PSchedule`.
    **kwargs
        Extra arguments of the schedule class (``p_min``, ``n_grid``).

    Returns
    -------
    The schedule object.

    Examples
    --------
    >>> get_schedule("blackout_discrete", n_grid=100)
    DiscreteBlackoutSchedule(n_grid=100, p_min=3.059023205018258e-07)
    """
    if isinstance(schedule, PSchedule):
        return schedule
    if isinstance(schedule, dict):
        kwargs = {**{k: v for k, v in schedule.items() if k != "name"}, **kwargs}
        schedule = schedule["name"]
    if schedule not in _REGISTRY:
        raise ValueError(
            f"Unknown p-schedule {schedule!r}. Choose one of {sorted(_REGISTRY)} or pass a PSchedule instance "
            "(e.g. CustomSchedule(p_fn))."
        )
    return _REGISTRY[schedule](**kwargs)
