"""Step rules of the reverse chain as objects, and the hooks that carry entries whose values are known.

A reverse chain (:func:`~countsdiff_sc.diffusion.generate`, :func:`~countsdiff_sc.diffusion.repaint`,
:func:`~countsdiff_sc.diffusion.restore`) is a loop over the transitions ``t -> s`` of a tensor of times; each
transition is one call of a :class:`StepRule` (k-diffusion's shape: a sampler is a function of a model, a state and
a tensor of times). There are two rules, each written once and shared by the three chains:

* :class:`Euler`: the first-order step of CountsDiff's Algorithm 2 (Prop. 3.2), one evaluation of the rate;
* :class:`Trapezoid`: a second-order two-stage step, two evaluations.

What differs between the chains is only how entries with known values move, which a :class:`Known` hook says:
nothing is known in generation; RePaint's observed entries follow their forward path (:class:`ObservedPath`) or are
redrawn after each stage (:class:`ObservedRedraw`); the entries of :func:`~countsdiff_sc.diffusion.restore` are
known until the chain passes their thinning level (:class:`ThinnedKnown`). A step calls the hook after each of its
stages, so the intermediate state of the trapezoid rule is corrected before the network sees it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._process import attrition_rate, binomial, reverse_step
from ._schedules import PSchedule

__all__ = [
    "KNOWN_MODES",
    "NOTHING_KNOWN",
    "STEP_RULES",
    "Euler",
    "Known",
    "ObservedPath",
    "ObservedRedraw",
    "StepRule",
    "ThinnedKnown",
    "Transition",
    "Trapezoid",
    "describe",
    "get_step_rule",
    "observed_hook",
    "schedule_p",
    "transitions",
    "trapezoid_midpoint",
    "trapezoid_step",
]

RateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def schedule_p(schedule: PSchedule, t: float, device: torch.device | str) -> torch.Tensor:
    """``p(t)`` as a float32 scalar tensor on ``device`` (computed in float64)."""
    return schedule.p(torch.tensor(t, dtype=torch.float64)).to(device=device, dtype=torch.float32)


def _p64(schedule: PSchedule, t: float) -> float:
    return float(schedule.p(torch.tensor(t, dtype=torch.float64)))


@dataclass(frozen=True)
class Transition:
    """One transition ``t -> s`` of a reverse chain (or one stage of a two-stage step).

    Attributes
    ----------
    t, s
        Current and next time, ``s < t``.
    p_t, p_s
        ``p(t)`` and ``p(s)`` as float32 scalar tensors on the chain's device.
    sigma
        Attrition (death probability of each present molecule) of the transition.
    final
        Whether ``s`` is the last time of the chain (0).
    """

    t: float
    s: float
    p_t: torch.Tensor
    p_s: torch.Tensor
    sigma: torch.Tensor | float
    final: bool


def transitions(times: torch.Tensor, schedule: PSchedule, device: torch.device | str, attrition_kind: str = "none",
                attrition: float = 0.0) -> Iterator[Transition]:
    """The transitions of a decreasing tensor of times, with their ``p`` values and attrition (Prop. 3.2).

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule, time_grid
    >>> [round(tr.s, 2) for tr in transitions(time_grid(4), CosineSchedule(), "cpu")]
    [0.75, 0.5, 0.25, 0.0]
    """
    values = [float(v) for v in times]
    for k in range(len(values) - 1):
        t, s = values[k], values[k + 1]
        p_t, p_s = schedule_p(schedule, t, device), schedule_p(schedule, s, device)
        sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
        yield Transition(t, s, p_t, p_s, sigma, k == len(values) - 2)


def _times(n: int, t: float, device: torch.device | str) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.float32, device=device)


# ---------------------------------------------------------------------------------------------------- known entries
class Known:
    """How entries with known values move through a reverse chain (the default: no entry is known).

    A step rule calls :meth:`settle` after each of its stages with the state before and after the stage; the hook
    returns the state with its known entries where they belong at the stage's end. :meth:`kernel_args` are passed
    to :func:`~countsdiff_sc.diffusion.reverse_step` (RePaint's observed entries ride inside the fused kernel).
    """

    #: :meth:`settle` reads the state before the stage, so the stage must not overwrite it in place.
    needs_previous: bool = False

    def kernel_args(self) -> dict[str, torch.Tensor]:
        """Extra arguments of :func:`~countsdiff_sc.diffusion.reverse_step` (none by default)."""
        return {}

    def settle(self, x_new: torch.Tensor, x_old: torch.Tensor, y_old: torch.Tensor | None, tr: Transition,
               generator: torch.Generator | None) -> torch.Tensor:
        """The state after a stage ``tr.t -> tr.s`` with the known entries put in place (unchanged by default).

        Parameters
        ----------
        x_new
            State after the stage.
        x_old
            State before the stage.
        y_old
            Rate the stage used at ``x_old`` (None when the network was not evaluated).
        tr
            The stage.
        generator
            Torch generator.
        """
        return x_new

    def all_known(self, p_s: torch.Tensor) -> bool:
        """Whether every entry is known at ``p(s)`` (the transition then needs no evaluation of the network)."""
        return False


NOTHING_KNOWN = Known()


class ObservedPath(Known):
    """RePaint's observed entries on one forward path read backwards (``known="path"`` of :func:`repaint`).

    Each observed entry takes the same reverse step as the others, driven by its known missing count
    ``x_obs - x_t`` (chosen inside the fused kernel), so it stays ``Binomial(x_obs, p)`` at every time.

    Parameters
    ----------
    x_obs
        Observed counts.
    target
        Boolean mask of the entries to impute (True) among all entries.
    """

    def __init__(self, x_obs: torch.Tensor, target: torch.Tensor):
        self.x_obs, self.target = x_obs, target

    def kernel_args(self) -> dict[str, torch.Tensor]:
        return {"x_obs": self.x_obs, "target": self.target}


class ObservedRedraw(ObservedPath):
    """RePaint's observed entries redrawn after every stage (``known="redraw"``; Lugmayr et al. 2022, Eq. 8): a fresh
    ``Binomial(x_obs, p(s))``, independent of the chain so far, and ``x_obs`` itself at the last time. ``x_obs`` must
    be zero at the target entries (their draws are discarded)."""

    def settle(self, x_new, x_old, y_old, tr, generator):
        fresh = self.x_obs if tr.final else binomial(self.x_obs, tr.p_s, generator)
        return torch.where(self.target, x_new, fresh)


def _path(x: torch.Tensor, y: torch.Tensor, level: torch.Tensor, p_from: torch.Tensor, p_to: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    """Forward path read backwards: ``x ~ Binomial(y, p_from / level)`` moved to ``Binomial(y, p_to / level)`` by
    ``x + Binomial(y - x, (p_to - p_from) / (level - p_from))``."""
    prob = ((p_to - p_from) / (level - p_from).clamp_min(1e-12)).clamp(0.0, 1.0)
    return x + binomial((y - x).clamp_min(0.0), prob, generator)


class ThinnedKnown(Known):
    """Entries seen through a known binomial thinning, ``y ~ Binomial(x_0, level)`` (:func:`restore`).

    At the end of a stage ``t -> s`` an entry is

    - *known* when ``level >= p(s)``: ``x_s = x_t + Binomial(y - x_t, (p(s) - p(t)) / (level - p(t)))``, so
      ``x_s ~ Binomial(y, p(s) / level)``;
    - *crossing* when ``p(t) <= level < p(s)``: it first takes the rest of its known path to ``y`` (the state at
      ``p = level``), then a reverse step (Prop. 3.2) from ``level`` to ``p(s)`` with the rate evaluated at ``x_t``
      less the molecules just added, ``max(y_hat - (y - x_t), 0)`` (the estimate of ``x_0 - y``); none of ``y`` is
      lost;
    - *free* when ``level < p(t)``: the state the step rule drew.

    Parameters
    ----------
    y
        Observed counts.
    level
        Thinning level of every entry (shaped like ``y``).
    """

    needs_previous = True

    def __init__(self, y: torch.Tensor, level: torch.Tensor):
        self.y, self.level = y, level

    def all_known(self, p_s: torch.Tensor) -> bool:
        return bool((self.level >= p_s).all())

    def settle(self, x_new, x_old, y_old, tr, generator):
        known = self.level >= tr.p_s
        out = torch.where(known, _path(x_old, self.y, self.level, tr.p_t, tr.p_s, generator), x_new)
        crossing = (self.level >= tr.p_t) & ~known
        if y_old is not None and bool(crossing.any()):
            rest = (y_old - (self.y - x_old)).clamp_min(0.0)
            lev = torch.where(crossing, self.level, tr.p_t.expand_as(self.level))
            sig = torch.as_tensor(tr.sigma, dtype=torch.float32, device=x_old.device)
            born = reverse_step(torch.where(crossing, self.y, x_old), torch.where(crossing, rest, y_old), lev,
                                tr.p_s.expand_as(lev), sig, generator)
            out = torch.where(crossing, born, out)
        return out


# ---------------------------------------------------------------------------------------------------- step rules
class StepRule(ABC):
    """A rule for one reverse transition ``t -> s`` of a count chain, shared by every chain.

    Subclasses implement :meth:`step` and say how many evaluations of the rate function a transition takes
    (:meth:`evaluations`).
    """

    #: Name of the rule in :data:`STEP_RULES` and in recorded settings.
    name: str = ""

    @abstractmethod
    def step(self, rate_fn: RateFn, x: torch.Tensor, tr: Transition, schedule: PSchedule, *,
             known: Known = NOTHING_KNOWN, generator: torch.Generator | None = None,
             in_place: bool = False) -> torch.Tensor:
        """The state at ``tr.s`` from the state ``x`` at ``tr.t``.

        Parameters
        ----------
        rate_fn
            ``rate_fn(x_t, t) -> y_hat``.
        x
            Current counts (float32); overwritten only when ``in_place`` (and the hook allows it).
        tr
            The transition.
        schedule
            The p-schedule.
        known
            The hook of entries with known values.
        generator
            Torch generator.
        in_place
            Let the step write its result into ``x``'s buffer (a chain that owns its state).
        """

    @abstractmethod
    def evaluations(self, schedule: PSchedule, t: float, s: float) -> int:
        """Number of evaluations of the rate function the transition ``t -> s`` takes."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Euler(StepRule):
    """The first-order step of CountsDiff's Algorithm 2: one evaluation of the rate, then the exact reverse step of
    Prop. 3.2 (Eq. 8) with the randomly rounded rate, ``x_s = Binomial(x_t, 1 - sigma) +
    Binomial(round(y_hat), beta)``."""

    name = "euler"

    def step(self, rate_fn, x, tr, schedule, *, known=NOTHING_KNOWN, generator=None, in_place=False):
        y = rate_fn(x, _times(x.shape[0], tr.t, x.device))
        out = x if in_place and not known.needs_previous else None
        x_s = reverse_step(x, y, tr.p_t, tr.p_s, tr.sigma, generator, out=out, **known.kernel_args())
        return known.settle(x_s, x, y, tr, generator)

    def evaluations(self, schedule, t, s):
        return 1


def trapezoid_midpoint(schedule: PSchedule, t: float, s: float) -> tuple[float, float] | None:
    """Intermediate time ``m`` of a trapezoid step from ``t`` to ``s`` and its extrapolation coefficient ``c``.

    ``m`` is the time of the midpoint in ``p``, ``p(m) = (p(t) + p(s)) / 2`` (snapped onto a discrete schedule's grid).
    With the conditional birth probabilities ``b1 = (p_m - p_t) / (1 - p_t)`` and ``b2 = (p_s - p_m) / (1 - p_m)`` of
    the two stages, ``c = 1 + (sqrt((b1 + b2^2 (1 - b1)) / (b1 (1 - b1))) - 1) / b2``, which is exactly 2 at the
    midpoint in ``p`` (see :class:`Trapezoid`) and otherwise the value that keeps the step's variance exact for
    a Poisson posterior. Returns None when no time lies strictly between ``s`` and ``t`` (a discrete schedule's
    adjacent grid times); the step is then a plain Euler step.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> m, c = trapezoid_midpoint(CosineSchedule(), 0.5, 0.25)
    >>> round(m, 4), round(c, 6)
    (0.385, 2.0)
    """
    p_t, p_s = _p64(schedule, t), _p64(schedule, s)
    m = float(schedule.t_of_p(torch.tensor(0.5 * (p_t + p_s), dtype=torch.float64)))
    if schedule.discrete:
        m = float(schedule.snap(torch.tensor(m, dtype=torch.float64)))
    if not s < m < t:
        return None
    p_m = _p64(schedule, m)
    b1 = (p_m - p_t) / (1.0 - p_t)
    b2 = (p_s - p_m) / (1.0 - p_m)
    if not (0.0 < b1 < 1.0 and b2 > 0.0):
        return None
    c = 1.0 + (math.sqrt((b1 + b2 * b2 * (1.0 - b1)) / (b1 * (1.0 - b1))) - 1.0) / b2
    return m, min(max(c, 1.0), 4.0)


class Trapezoid(StepRule):
    r"""The second-order step: two evaluations of the rate function per transition ``t -> s``.

    The rule is the :math:`\theta`-trapezoidal rule of tau-leaping for jump processes (Ren et al., 2025, "Fast
    solvers for discrete diffusion models"; tau-leaping: Gillespie, 2001) with ``theta = 1/2``, applied to the
    *posterior mean* ``M(x, t) = x + y(x, t) = E[x_0 | x_t = x]`` that the network estimates, not to the rate, and
    with both stages drawn by the exact reverse step of CountsDiff (Soatto et al., 2026, Prop. 3.2, Eq. 8):

    1. ``m``: the midpoint in ``p``, ``p(m) = (p(t) + p(s)) / 2`` (:func:`trapezoid_midpoint`).
    2. Stage 1: ``x_m = reverse_step(x_t, y(x_t, t), p(t), p(m), sigma)``, with the attrition ``sigma`` of the whole
       step ``t -> s`` (admissible: ``sigma_max(t, m) >= sigma_max(t, s)``), so a step dies as much as an Euler step.
    3. Stage 2: ``x_s = reverse_step(x_m, n_2, p(m), p(s), 0)`` with the pool
       ``n_2 = M_t + c (M_m - M_t) - x_m - kappa (dx - E[dx])``, where ``M_t = x_t + y(x_t, t)``,
       ``M_m = x_m + y(x_m, m)``, ``c = 2``, ``dx = x_m - x_t`` with its stage-1 mean ``E[dx] = b_1 y - sigma x_t``,
       and ``kappa = f (1 - f) / y`` (``f`` the fractional part of ``y = y(x_t, t)``; 0 where ``y = 0``). Negative
       pools count as 0.

    **Derivation.** Take one gene (cross moments of several genes follow the same lines) and no attrition. Given
    ``x_0`` the step of Prop. 3.2 is exact; the only approximation of Algorithm 2 is that the unknown missing count
    ``n = x_0 - x_t`` is replaced by the randomly rounded estimate ``y = E[n | x_t]``. With
    ``beta = (p_s - p_t) / (1 - p_t)`` the births ``B = x_s - x_t`` of the exact transition have
    ``E[B] = beta y`` and ``E[B (B - 1)] = beta^2 E[n (n - 1) | x_t] = beta^2 (y^2 - y + V)``, ``V = Var(x_0 | x_t)``.
    The Euler step ``Binomial(round(y), beta)`` gets the mean right but has ``E[B (B - 1)] = beta^2 (y^2 - y +
    f (1 - f))``: a local error ``beta^2 (V - f (1 - f))``, hence weak order 1 (the error of ``K`` steps falls like
    ``1/K``). The identity ``(x_0 - x) C(x_0, x) = (x + 1) C(x_0, x + 1)`` turns Bayes' rule into
    ``E[n g(x_0) | x_t = x] = y(x) E[g(x_0) | x_t = x + 1]``, so ``V = y(x) D(x)`` with ``D(x) = M(x + 1) - M(x)``:
    the posterior variance is how far the posterior mean jumps when one more molecule is seen, which the network
    reveals only at another state. Stage 1 supplies that state. In ``p``-time the exact reverse chain makes ``M`` a
    martingale (a birth raises it by ``D``; between births it drifts by ``dM/dp = -y D / (1 - p)``). With
    ``b_1 = beta / 2`` and ``b_2 = (p_s - p_m) / (1 - p_m) = beta / 2 + O(beta^2)`` and expanding over the stage-1
    births ``B_1 in {0, 1}`` (``P(B_1 >= 2) = O(beta^2)``):

    - ``E[B] = b_1 y + b_2 E[n_2] = b_1 y + b_2 y (1 - b_1) + O(beta^3) = beta y + O(beta^3)`` for every ``c`` and
      ``kappa`` (``(1 - b_1) (1 - b_2) = 1 - beta``; the ``kappa`` term has mean zero);
    - ``E[B (B - 1)] = (b_1^2 + b_2^2) (y^2 - y + f (1 - f)) + 2 b_1 b_2 (y^2 - y + c y D - kappa y) + O(beta^3)``
      (each stage's random rounding adds ``b^2 f (1 - f)``; ``B_1 = 1`` raises ``M_m - M_t`` by ``D``; the
      ``kappa`` term lowers ``E[B_1 n_2]`` by ``kappa Var(B_1) = kappa b_1 y + O(beta^2)``)
      ``= beta^2 (y^2 - y + y D) + (beta^2 / 2) (f (1 - f) - kappa y) + O(beta^3)`` at ``c = 2``, which is the exact
      ``beta^2 (y^2 - y + V)`` when ``kappa y = f (1 - f)``.

    So ``c = 2`` supplies the posterior variance the Euler step misses and ``kappa`` removes the variance that the two
    roundings add on top (without it the rounding leaves an ``O(beta^2)`` floor, first order again). The local
    error is ``O(beta^3)``: weak order 2, at two evaluations per step. Extrapolating ``M`` rather than ``y`` is what
    keeps the oracle exact: with ``y = x_0 - x_t`` the posterior mean is the constant ``x_0`` and ``kappa = 0``
    (integer rate), so ``n_2 = x_0 - x_m`` and both stages are exact Prop. 3.2 steps: ``x_s ~ Binomial(x_0, p(s))``
    for any admissible attrition (RePaint's observed entries take this oracle and stay exact).

    Beyond small steps: when the posterior of ``n`` is Poisson (a Poisson prior; ``D = 1``), the exact transition
    adds ``Poisson(y beta)`` molecules, and (for an integer ``y``) the rule's variance
    ``b_2 (1 - b_2) E[n_2] + (1 + b_2 (c - 1))^2 Var(B_1)`` equals ``y beta`` at the midpoint in ``p`` exactly when
    ``c = 2``, for every ``beta`` including the last step (``beta = 1``).

    The known-entry hook settles the intermediate state before the second evaluation and the final state after the
    second stage.
    """

    name = "trapezoid"

    def step(self, rate_fn, x, tr, schedule, *, known=NOTHING_KNOWN, generator=None, in_place=False, y_t=None):
        n, device = x.shape[0], x.device
        if y_t is None:
            y_t = rate_fn(x, _times(n, tr.t, device))
        mid = trapezoid_midpoint(schedule, tr.t, tr.s)
        kernel = known.kernel_args()
        if mid is None:
            x_s = reverse_step(x, y_t, tr.p_t, tr.p_s, tr.sigma, generator, **kernel)
            return known.settle(x_s, x, y_t, tr, generator)
        m, c = mid
        p_m = schedule_p(schedule, m, device)
        first = Transition(tr.t, m, tr.p_t, p_m, tr.sigma, False)
        x_m = reverse_step(x, y_t, tr.p_t, p_m, tr.sigma, generator, **kernel)
        x_m = known.settle(x_m, x, y_t, first, generator)
        y_m = rate_fn(x_m, _times(n, m, device))
        m_t = x + y_t
        pool = (m_t - x_m).add_((x_m + y_m).sub_(m_t), alpha=c)  # M_t + c (M_m - M_t) - x_m
        # rounding correction: -kappa (dx - E[dx]), kappa = f (1 - f) / y; zero for integer rates (the oracle)
        y = y_t.clamp_min(0.0)
        frac = y - torch.floor(y)
        kappa = torch.where(y > 0, frac * (1.0 - frac) / y.clamp_min(1e-30), torch.zeros_like(y))
        b1 = ((p_m - (1.0 - tr.sigma) * tr.p_t) / (1.0 - tr.p_t).clamp_min(1e-12)).clamp(0.0, 1.0)
        expected = b1 * y - tr.sigma * x
        pool.sub_(kappa.mul_((x_m - x).sub_(expected)))
        second = Transition(m, tr.s, p_m, tr.p_s, 0.0, tr.final)
        out = None if known.needs_previous else x_m
        x_s = reverse_step(x_m, pool, p_m, tr.p_s, 0.0, generator, out=out, **kernel)
        return known.settle(x_s, x_m, y_m, second, generator)

    def evaluations(self, schedule, t, s):
        return 1 + (trapezoid_midpoint(schedule, t, s) is not None)


#: The step rules by name (``step_rule="euler"`` / ``"trapezoid"`` of the chains and of the model's ``Sampler``).
STEP_RULES: dict[str, StepRule] = {"euler": Euler(), "trapezoid": Trapezoid()}


def get_step_rule(rule: str | StepRule) -> StepRule:
    """A step rule from its name (:data:`STEP_RULES`) or the object itself.

    Examples
    --------
    >>> get_step_rule("trapezoid")
    Trapezoid()
    """
    if isinstance(rule, StepRule):
        return rule
    if isinstance(rule, str) and rule in STEP_RULES:
        return STEP_RULES[rule]
    raise ValueError(f"Unknown step_rule {rule!r}; choose one of {tuple(STEP_RULES)} or pass a StepRule object.")


def trapezoid_step(
    rate_fn: RateFn,
    x_t: torch.Tensor,
    t: float,
    s: float,
    schedule: PSchedule,
    *,
    y_t: torch.Tensor | None = None,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    generator: torch.Generator | None = None,
    x_obs: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    known: str = "path",
    final: bool = False,
) -> torch.Tensor:
    """One second-order reverse transition from ``t`` to ``s < t`` (:class:`Trapezoid`), as a function.

    Parameters
    ----------
    rate_fn
        ``rate_fn(x_t, t) -> y_hat``.
    x_t
        Current counts (float32, not modified).
    t, s
        Current and next time, ``s < t``.
    schedule
        The p-schedule.
    y_t
        ``rate_fn(x_t, t)`` if already evaluated.
    attrition_kind, attrition
        Attrition of the step, as in :func:`~countsdiff_sc.diffusion.generate`.
    generator
        Torch generator.
    x_obs, target
        RePaint: observed counts and the mask of entries to impute; observed entries stay ``Binomial(x_obs, p)`` at
        the intermediate time and at ``s``.
    known, final
        RePaint's observed entries: ``"path"`` (:class:`ObservedPath`) or ``"redraw"`` (:class:`ObservedRedraw`,
        ``x_obs`` itself at ``s`` when ``final``; ``x_obs`` must then be zero at the target entries).

    Returns
    -------
    ``x_s`` (a fresh tensor).

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> x0 = torch.tensor([[4.0, 0.0, 9.0]])
    >>> oracle = lambda x, t: x0 - x
    >>> trapezoid_step(oracle, torch.zeros(1, 3), 0.1, 0.0, CosineSchedule())
    tensor([[4., 0., 9.]])
    """
    device = x_t.device
    p_t, p_s = schedule_p(schedule, t, device), schedule_p(schedule, s, device)
    sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
    return STEP_RULES["trapezoid"].step(rate_fn, x_t, Transition(t, s, p_t, p_s, sigma, final), schedule,
                                        known=observed_hook(known, x_obs, target), generator=generator, y_t=y_t)


#: How RePaint carries the observed entries through the chain (see :func:`~countsdiff_sc.diffusion.repaint`).
KNOWN_MODES = ("path", "redraw")


def observed_hook(known: str, x_obs: torch.Tensor | None, target: torch.Tensor | None) -> Known:
    """The hook of RePaint's observed entries for ``known`` (``"path"`` or ``"redraw"``); none without ``x_obs``."""
    if known not in KNOWN_MODES:
        raise ValueError(f"Unknown known={known!r}; choose one of {KNOWN_MODES}.")
    if x_obs is None:
        return NOTHING_KNOWN
    return ObservedRedraw(x_obs, target) if known == "redraw" else ObservedPath(x_obs, target)


def describe(rule: Any) -> str:
    """The name of a step rule for records (a StepRule's ``name``, else its repr)."""
    return rule.name if isinstance(rule, StepRule) and rule.name else repr(rule)
