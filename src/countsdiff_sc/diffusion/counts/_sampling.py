"""Reverse-time loops over a caller-supplied rate function: generation (CountsDiff, Soatto et al., 2026,
Algorithm 2) and RePaint imputation (Sec. 3.6).

A *rate function* maps the current state ``x_t`` (shape ``(n, g)``) and the current time ``t`` (shape ``(n,)``) to
the predicted number of missing molecules ``y_hat`` (shape ``(n, g)``, non-negative). The model layer builds it from
a trained network (and mixes conditional and unconditional predictions for guidance); tests drive the loops with
the oracle ``y = x_0 - x_t``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ._process import attrition_rate, binomial, reverse_step
from ._schedules import PSchedule

__all__ = [
    "GRIDS",
    "KNOWN_MODES",
    "POWER_RHO",
    "PRECISIONS",
    "STEP_RULES",
    "RateFn",
    "StepCallback",
    "generate",
    "n_evaluations",
    "repaint",
    "time_grid",
    "trapezoid_midpoint",
    "trapezoid_step",
    "with_precision",
]

RateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, float, float, torch.Tensor], None]


PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def with_precision(rate_fn: RateFn, precision: str, device: torch.device | str) -> RateFn:
    """Run a rate function's network in reduced precision (``torch.autocast``), returning float32 rates.

    Only the network runs in ``bfloat16`` / ``float16`` (matrix products; autocast keeps softplus, logs and
    reductions in float32); the state, the guidance mix and the binomial draws stay in float32, so counts stay
    exact integers. Reduced precision pays off on GPUs with tensor cores; on CPU only ``"bf16"`` is accepted.

    Parameters
    ----------
    rate_fn
        ``rate_fn(x_t, t) -> y_hat``.
    precision
        ``"32"`` (unchanged), ``"bf16"`` or ``"16"`` (float16, GPU only).
    device
        Device the network runs on.

    Returns
    -------
    A rate function with the same signature.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return rate_fn
    device_type = torch.device(device).type
    if dtype is torch.float16 and device_type == "cpu":
        raise ValueError("precision='16' (float16) needs a GPU; use precision='bf16' on CPU.")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device_type, dtype=dtype):
            y = rate_fn(x, t)
        return y.float()

    return fn


#: Time grids of the reverse chain (see :func:`time_grid`).
GRIDS = ("uniform", "p", "logit", "power")

#: Default exponent ``rho`` of the ``"power"`` grid ``t_k = t_start (1 - k / K)^rho``.
POWER_RHO = 2.0

#: Step rules of the reverse chain and the network evaluations each takes per transition.
STEP_RULES = {"euler": 1, "trapezoid": 2}

#: How RePaint carries the observed entries through the chain (see :func:`repaint`).
KNOWN_MODES = ("path", "redraw")


def time_grid(
    n_steps: int,
    schedule: PSchedule | None = None,
    t_start: float = 1.0,
    grid: str = "uniform",
    *,
    rho: float = POWER_RHO,
) -> torch.Tensor:
    """Decreasing time grid from ``t_0 = t_start`` down to ``t_K = 0`` with ``K = n_steps`` transitions.

    ``n_steps`` counts transitions: the paper's "20 time points" are ``n_steps = 19``. Every grid is strictly
    decreasing, starts at ``t_start`` and ends at 0 with ``n_steps + 1`` times. For a discrete schedule the times are
    snapped to its grid and duplicates dropped, so the grid stays strictly decreasing (it may then have fewer
    transitions); the same de-duplication guards the inverted grids against a schedule that is flat somewhere.

    Grids (``grid=``):

    ``"uniform"``
        Uniform in ``t`` (the paper's Algorithm 2; the default).
    ``"p"``
        Uniform in the survival probability: ``t_k = p^{-1}(p_k)`` with ``p_k`` evenly spaced from ``p(t_start)`` to
        ``p(0)`` (via :meth:`~countsdiff_sc.diffusion.PSchedule.t_of_p`). Each transition then moves the same
        expected fraction of a cell's molecules.
    ``"logit"``
        Uniform in ``logit p(t)`` between finite endpoints (the count analogue of a log-SNR grid): ``logit p`` is
        infinite where ``p = 0`` or 1, so the first and last interior times are those of the uniform grid,
        ``t_1 = t_start (1 - 1/K)`` and ``t_{K-1} = t_start / K``, and the ``K - 3`` times between them are uniform in
        ``logit p``. The end intervals thus shrink like ``1/K`` as for the uniform grid, while the interior
        concentrates where ``p`` changes on a logarithmic scale (geometrically towards both ends for the cosine
        schedule; for the Blackout schedule, whose ``logit p`` is linear in ``t``, it equals the uniform grid).
    ``"power"``
        ``t_k = t_start (1 - k / K)^rho`` (``rho`` defaults to :data:`POWER_RHO` = 2), a polynomial grid in the
        style of Karras et al. (2022)'s EDM grid: dense near ``t = 0``, where the last molecules are born, sparse
        near ``t_start``.

    Parameters
    ----------
    n_steps
        Number of transitions ``K`` (positive).
    schedule
        The p-schedule; needed by ``"p"`` and ``"logit"`` and for snapping discrete schedules.
    t_start
        First time, in ``(0, 1]``.
    grid
        One of :data:`GRIDS`.
    rho
        Exponent of the ``"power"`` grid (positive; 1 is the uniform grid).

    Returns
    -------
    Float64 tensor of ``K + 1`` (or fewer, see above) strictly decreasing times.

    Examples
    --------
    >>> time_grid(4)
    tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000], dtype=torch.float64)
    >>> time_grid(4, grid="power")
    tensor([1.0000, 0.5625, 0.2500, 0.0625, 0.0000], dtype=torch.float64)
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}.")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start}.")
    if grid not in GRIDS:
        raise ValueError(f"Unknown time grid {grid!r}; choose one of {GRIDS}.")
    k = int(n_steps)
    if grid == "uniform":
        times = torch.linspace(t_start, 0.0, k + 1, dtype=torch.float64)
    elif grid == "power":
        if not rho > 0.0:
            raise ValueError(f"rho of the power grid must be positive, got {rho}.")
        times = t_start * (1.0 - torch.arange(k + 1, dtype=torch.float64) / k) ** float(rho)
    else:
        if schedule is None:
            raise ValueError(f"The {grid!r} grid is defined through p(t): pass the schedule.")
        times = _inverted_grid(k, schedule, t_start, grid)
    if schedule is not None and schedule.discrete:
        times = schedule.snap(times)
    if grid != "uniform" or (schedule is not None and schedule.discrete):
        times = torch.unique(times).flip(0)  # strictly decreasing (drops snapped or inverted duplicates)
    return times


def _inverted_grid(k: int, schedule: PSchedule, t_start: float, grid: str) -> torch.Tensor:
    """The ``"p"`` and ``"logit"`` grids: evenly spaced values of ``p`` or ``logit p`` mapped back to times."""
    times = torch.empty(k + 1, dtype=torch.float64)
    times[0], times[k] = t_start, 0.0
    if k < 2:
        return times
    frac = torch.arange(1, k, dtype=torch.float64) / k
    if grid == "p":
        p_first = float(schedule.p(torch.tensor(t_start, dtype=torch.float64)))
        p_last = float(schedule.p(torch.tensor(0.0, dtype=torch.float64)))
        times[1:k] = schedule.t_of_p(p_first + frac * (p_last - p_first))
    else:
        # logit endpoints at the uniform grid's first and last interior times (finite for every schedule)
        ends = schedule.p(torch.tensor([t_start * (1.0 - 1.0 / k), t_start / k], dtype=torch.float64))
        lo, hi = torch.logit(ends.clamp(1e-300, 1.0 - 1e-16))
        w = torch.linspace(0.0, 1.0, k - 1, dtype=torch.float64) if k > 2 else torch.zeros(1, dtype=torch.float64)
        times[1:k] = schedule.t_of_p(torch.sigmoid(lo + w * (hi - lo)))
    # keep the interior strictly inside (0, t_start) so the endpoints stay exactly t_start and 0
    times[1:k] = times[1:k].clamp(0.0, t_start)
    return times


def _sched(schedule: PSchedule, t: float, device: torch.device) -> torch.Tensor:
    return schedule.p(torch.tensor(t, dtype=torch.float64)).to(device=device, dtype=torch.float32)


def _check_attrition(attrition_kind: str, attrition: float) -> None:
    # the loops' ``attrition`` used to be the kind; a kind passed where the strength goes gets a pointed message
    if isinstance(attrition, str):
        raise TypeError(
            f"attrition is the attrition strength (a number), got {attrition!r}; pass the kind as "
            f"attrition_kind={attrition!r} and the strength as attrition=."
        )


def _check_step_rule(step_rule: str) -> None:
    if step_rule not in STEP_RULES:
        raise ValueError(f"Unknown step_rule {step_rule!r}; choose one of {tuple(STEP_RULES)}.")


def _check_known(known: str) -> None:
    if known not in KNOWN_MODES:
        raise ValueError(f"Unknown known={known!r}; choose one of {KNOWN_MODES}.")


def _redraw_known(x: torch.Tensor, x_obs: torch.Tensor, target: torch.Tensor, p: torch.Tensor, final: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """RePaint's known draw (Lugmayr et al. 2022, Eq. 8): the observed entries of ``x`` replaced by a fresh
    ``Binomial(x_obs, p)``, independent of the chain so far; at the last time (``final``) by ``x_obs`` itself.
    ``x_obs`` must be zero at the target entries (their draws are discarded)."""
    fresh = x_obs if final else binomial(x_obs, p, generator)
    return torch.where(target, x, fresh)


def _p64(schedule: PSchedule, t: float) -> float:
    return float(schedule.p(torch.tensor(t, dtype=torch.float64)))


def trapezoid_midpoint(schedule: PSchedule, t: float, s: float) -> tuple[float, float] | None:
    """Intermediate time ``m`` of a trapezoid step from ``t`` to ``s`` and its extrapolation coefficient ``c``.

    ``m`` is the time of the midpoint in ``p``, ``p(m) = (p(t) + p(s)) / 2`` (snapped onto a discrete schedule's grid).
    With the conditional birth probabilities ``b1 = (p_m - p_t) / (1 - p_t)`` and ``b2 = (p_s - p_m) / (1 - p_m)`` of
    the two stages, ``c = 1 + (sqrt((b1 + b2^2 (1 - b1)) / (b1 (1 - b1))) - 1) / b2``, which is exactly 2 at the
    midpoint in ``p`` (see :func:`trapezoid_step`) and otherwise the value that keeps the step's variance exact for
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


def n_evaluations(
    n_steps: int,
    schedule: PSchedule,
    t_start: float = 1.0,
    grid: str = "uniform",
    step_rule: str = "euler",
) -> int:
    """Number of network evaluations (calls of the rate function) of one reverse chain.

    ``"euler"`` takes one per transition, ``"trapezoid"`` two (one less on each transition of a discrete schedule
    with no grid time inside it, see :func:`trapezoid_midpoint`). Guidance multiplies the count by the number of
    network passes per rate evaluation; the loops do not see that.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> n_evaluations(10, CosineSchedule(), step_rule="trapezoid")
    20
    """
    _check_step_rule(step_rule)
    times = time_grid(n_steps, schedule, t_start, grid).tolist()
    if step_rule == "euler":
        return len(times) - 1
    return sum(1 + (trapezoid_midpoint(schedule, t, s) is not None) for t, s in itertools.pairwise(times))


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
    r"""One second-order reverse transition from ``t`` to ``s < t``: two evaluations of the rate function.

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
        Attrition of the step, as in :func:`generate`.
    generator
        Torch generator.
    x_obs, target
        RePaint: observed counts and the mask of entries to impute (see :func:`reverse_step`); observed entries
        take the oracle step ``x_obs - x`` in both stages, so they stay ``Binomial(x_obs, p)`` at ``m`` and ``s``.
    known, final
        RePaint's observed entries (see :func:`repaint`): ``"path"`` keeps the oracle steps above; ``"redraw"``
        replaces them by fresh ``Binomial(x_obs, p)`` draws at ``m`` and at ``s`` (``x_obs`` itself at ``s`` when
        ``final``). With ``"redraw"``, ``x_obs`` must be zero at the target entries.

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
    device, n = x_t.device, x_t.shape[0]
    p_t, p_s = _sched(schedule, t, device), _sched(schedule, s, device)
    if y_t is None:
        y_t = rate_fn(x_t, torch.full((n,), t, dtype=torch.float32, device=device))
    sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
    mid = trapezoid_midpoint(schedule, t, s)
    redraw = known == "redraw" and x_obs is not None
    if mid is None:
        x_s = reverse_step(x_t, y_t, p_t, p_s, sigma, generator, x_obs=x_obs, target=target)
        return _redraw_known(x_s, x_obs, target, p_s, final, generator) if redraw else x_s
    m, c = mid
    p_m = _sched(schedule, m, device)
    x_m = reverse_step(x_t, y_t, p_t, p_m, sigma, generator, x_obs=x_obs, target=target)
    if redraw:
        x_m = _redraw_known(x_m, x_obs, target, p_m, False, generator)
    y_m = rate_fn(x_m, torch.full((n,), m, dtype=torch.float32, device=device))
    m_t = x_t + y_t
    pool = (m_t - x_m).add_((x_m + y_m).sub_(m_t), alpha=c)  # M_t + c (M_m - M_t) - x_m
    # rounding correction: -kappa (dx - E[dx]), kappa = f (1 - f) / y; zero for integer rates (the oracle)
    y = y_t.clamp_min(0.0)
    frac = y - torch.floor(y)
    kappa = torch.where(y > 0, frac * (1.0 - frac) / y.clamp_min(1e-30), torch.zeros_like(y))
    b1 = ((p_m - (1.0 - sigma) * p_t) / (1.0 - p_t).clamp_min(1e-12)).clamp(0.0, 1.0)
    expected = b1 * y - sigma * x_t
    pool.sub_(kappa.mul_((x_m - x_t).sub_(expected)))
    x_s = reverse_step(x_m, pool, p_m, p_s, 0.0, generator, out=x_m, x_obs=x_obs, target=target)
    return _redraw_known(x_s, x_obs, target, p_s, final, generator) if redraw else x_s


@torch.inference_mode()
def generate(
    rate_fn: RateFn,
    shape: tuple[int, int],
    schedule: PSchedule,
    n_steps: int = 50,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    grid: str = "uniform",
    step_rule: str = "euler",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse process from ``t_start`` to 0 (CountsDiff, Soatto et al., 2026, Algorithm 2).

    Parameters
    ----------
    rate_fn
        ``rate_fn(x_t, t) -> y_hat`` (see module docstring).
    shape
        ``(n_cells, n_genes)``.
    schedule
        The p-schedule the network was trained with.
    n_steps
        Number of reverse transitions.
    attrition_kind
        How each step's attrition follows from the strength: ``"none"``, ``"rescale"``, ``"cap"`` or ``"constant"``
        (see :func:`~countsdiff_sc.diffusion.attrition_rate`).
    attrition
        Attrition strength ``eta`` (non-negative; at most 1 for ``"rescale"``). 0 is a pure-birth reverse process.
    x_start
        State at ``t_start``. Defaults to all zeros, the noise distribution at ``t = 1``; pass thinned real cells
        ``Binomial(x, p(t_start))`` to start part-way (used for cell-state interpolation).
    t_start
        Starting time in ``(0, 1]``.
    grid
        Time grid, one of :data:`GRIDS` (see :func:`time_grid`): ``"uniform"`` in ``t`` (default, Algorithm 2),
        ``"p"``, ``"logit"`` or ``"power"``.
    step_rule
        ``"euler"`` (default): the first-order step of Algorithm 2, one network evaluation per transition.
        ``"trapezoid"``: the second-order two-stage rule of :func:`trapezoid_step`, two evaluations per transition
        (see :func:`n_evaluations`).
    generator
        Torch generator; the same seed gives the same draws on the same device.
    device
        Device of the state (defaults to ``x_start``'s or CPU).
    callback
        Called after every transition as ``callback(k, t, s, x_s)``.
    progress
        Show a progress bar over the steps.

    Returns
    -------
    Float tensor of non-negative integer counts, shape ``shape``.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> x0 = torch.tensor([[3.0, 0.0, 7.0]])
    >>> oracle = lambda x, t: x0 - x  # the true missing count drives the chain back to x0
    >>> generate(oracle, x0.shape, CosineSchedule(), n_steps=10, attrition_kind="rescale", attrition=0.1,
    ...          generator=torch.Generator().manual_seed(0))
    tensor([[3., 0., 7.]])
    """
    _check_attrition(attrition_kind, attrition)
    _check_step_rule(step_rule)
    if x_start is None:
        if t_start < 1.0:
            raise ValueError("Starting below t = 1 needs x_start (e.g. thinned real cells).")
        x = torch.zeros(shape, dtype=torch.float32, device=device)
    else:
        x = x_start.to(dtype=torch.float32, device=device or x_start.device)
        x = x.clone(memory_format=torch.contiguous_format)  # the chain's own buffer, stepped in place
    times = time_grid(n_steps, schedule, t_start, grid)
    n = x.shape[0]
    for k in tqdm(range(len(times) - 1), desc="sampling", disable=not progress, leave=False):
        t, s = float(times[k]), float(times[k + 1])
        if step_rule == "trapezoid":
            x = trapezoid_step(rate_fn, x, t, s, schedule, attrition_kind=attrition_kind, attrition=attrition,
                               generator=generator)
            if callback is not None:
                callback(k, t, s, x)
            continue
        p_t, p_s = _sched(schedule, t, x.device), _sched(schedule, s, x.device)
        y_hat = rate_fn(x, torch.full((n,), t, dtype=torch.float32, device=x.device))
        sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
        # the chain owns x, so the step writes into it unless a callback may keep a reference
        x = reverse_step(x, y_hat, p_t, p_s, sigma, generator, out=x if callback is None else None)
        if callback is not None:
            callback(k, t, s, x)
    return x


@torch.inference_mode()
def repaint(
    rate_fn: RateFn,
    x_obs: torch.Tensor,
    target: torch.Tensor,
    schedule: PSchedule,
    n_steps: int = 20,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    resample_jump: int | None = None,
    resample_iters: int = 1,
    grid: str = "uniform",
    step_rule: str = "euler",
    known: str = "path",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """RePaint imputation with the count reverse process (CountsDiff, Soatto et al., 2026, Sec. 3.6; Lugmayr et al.
    2022, Algorithm 1).

    Entries where ``target`` is True follow the reverse step (Prop. 3.2) driven by the network's rate, which sees the
    whole state, observed entries included. The observed entries are carried in one of two ways (``known=``); both
    give them exactly the marginal ``Binomial(x_obs, p(s))`` at every grid time ``s`` (RePaint's "known" draw,
    Lugmayr et al. 2022, Eq. 8) and ``x_obs`` at ``s = 0``:

    ``"path"`` (default)
        Each observed entry takes the same reverse step as the others, driven by its known missing count
        ``y = x_obs - x_t``: one forward path read backwards. Without attrition that step is the forward process's
        posterior ``q(x_s | x_t, x_0 = x_obs)``; with attrition it is a birth-death bridge that keeps the binomial
        marginals but is not that posterior. The observed entries do not jitter between steps and one binomial draw
        per step serves both kinds of entries.
    ``"redraw"``
        The paper's and Lugmayr et al.'s rule: after every step the observed entries are replaced by a fresh
        ``Binomial(x_obs, p(s))``, independent of the previous steps (one more binomial draw per step; with
        ``"trapezoid"`` also at its intermediate time).

    Neither makes the imputed entries an exact draw from the conditional law given ``x_obs``, even with an exact
    denoiser: the network's rate is the unconditional ``E[x_0 - x_t | x_t]``, and births made early in the chain,
    while the observed entries are still near 0, are never undone. Resampling (below) reduces that error; on a toy
    with an exact denoiser (``tests/diffusion/counts/test_repaint_known.py``) and on CBMC the options are compared in
    ``benchmarks/results/repaint_known.md``.

    RePaint resampling (``resample_iters > 1``) splits the grid into windows of ``resample_jump`` transitions.
    Each window is run ``resample_iters`` times; between runs the state is re-noised from the window's end ``b``
    back to its start ``a`` by binomial thinning ``Binomial(x_b, p(t_a) / p(t_b))`` (Eq. 5) and the observed entries
    are thinned alike. (This is the correct jump back; re-noising to ``t = 1`` would wipe the state and turn
    resampling into independent restarts.)

    Parameters
    ----------
    rate_fn
        ``rate_fn(x_t, t) -> y_hat``.
    x_obs
        Observed counts, shape ``(n, g)``; values at target entries are ignored.
    target
        Boolean mask of the entries to impute.
    schedule
        The p-schedule of the trained network.
    n_steps
        Number of reverse transitions.
    attrition_kind, attrition
        Attrition kind and strength, as in :func:`generate`.
    resample_jump
        Window length in transitions for resampling; defaults to 1 when ``resample_iters > 1``.
    resample_iters
        Number of passes over each window (1 = no resampling).
    grid, step_rule
        Time grid and step rule, as in :func:`generate`. With ``"trapezoid"`` the observed entries stay
        ``Binomial(x_obs, p)`` in both stages of a step.
    known
        How the observed entries are carried: ``"path"`` or ``"redraw"`` (see above; :data:`KNOWN_MODES`).
    generator, callback, progress
        As in :func:`generate`.

    Returns
    -------
    Completed counts: target entries imputed, all others equal to ``x_obs``.
    """
    _check_attrition(attrition_kind, attrition)
    _check_step_rule(step_rule)
    _check_known(known)
    if target.shape != x_obs.shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but x_obs has shape {tuple(x_obs.shape)}.")
    if resample_iters < 1:
        raise ValueError(f"resample_iters must be >= 1, got {resample_iters}.")
    jump = 1 if resample_jump is None else int(resample_jump)
    if jump < 1:
        raise ValueError(f"resample_jump must be >= 1, got {resample_jump}.")
    x_obs = x_obs.to(torch.float32).contiguous()
    target = target.to(torch.bool).contiguous()
    times = time_grid(n_steps, schedule, grid=grid)
    n_trans = len(times) - 1
    device, n = x_obs.device, x_obs.shape[0]

    # Start at t = 1: observed entries thinned to p(1) (all zeros for schedules with p(1) = 0), targets empty.
    x_start = binomial(x_obs, _sched(schedule, float(times[0]), device), generator)
    x = torch.where(target, torch.zeros_like(x_obs), x_start).contiguous()
    redraw = known == "redraw"
    if redraw:
        x_obs = torch.where(target, torch.zeros_like(x_obs), x_obs)  # target values are ignored, never drawn from
    window_starts = range(0, n_trans, jump) if resample_iters > 1 else [0]
    bar = tqdm(total=n_trans * resample_iters, desc="repaint", disable=not progress, leave=False)
    for a in window_starts:
        b = n_trans if resample_iters == 1 else min(a + jump, n_trans)
        for r in range(resample_iters):
            for k in range(a, b):
                t, s = float(times[k]), float(times[k + 1])
                final = k == n_trans - 1
                if step_rule == "trapezoid":
                    x = trapezoid_step(rate_fn, x, t, s, schedule, attrition_kind=attrition_kind,
                                       attrition=attrition, generator=generator, x_obs=x_obs, target=target,
                                       known=known, final=final)
                else:
                    p_t, p_s = _sched(schedule, t, device), _sched(schedule, s, device)
                    y_hat = rate_fn(x, torch.full((n,), t, dtype=torch.float32, device=device))
                    sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
                    # observed entries: the oracle rate x_obs - x_t (an integer, so the fused rounding leaves it alone)
                    x = reverse_step(x, y_hat, p_t, p_s, sigma, generator, out=x if callback is None else None,
                                     x_obs=x_obs, target=target)
                    if redraw:
                        x = _redraw_known(x, x_obs, target, p_s, final, generator)
                if callback is not None:
                    callback(k, t, s, x)
                bar.update(1)
            if r < resample_iters - 1:
                p_a = _sched(schedule, float(times[a]), device)
                p_b = _sched(schedule, float(times[b]), device)
                # forward thinning from t_b back to t_a (Eq. 5), for observed entries too: x_b ~ Binomial(x_obs, p_b)
                # thinned by p_a / p_b is Binomial(x_obs, p_a)
                x = binomial(x, p_a / p_b.clamp_min(1e-30), generator)
    bar.close()
    return x
