"""Reverse-time loops over a caller-supplied rate function: generation (CountsDiff, Soatto et al., 2026,
Algorithm 2) and RePaint imputation (Sec. 3.6).

A *rate function* maps the current state ``x_t`` (shape ``(n, g)``) and the current time ``t`` (shape ``(n,)``) to
the predicted number of missing molecules ``y_hat`` (shape ``(n, g)``, non-negative). The model layer builds it from
a trained network (and mixes conditional and unconditional predictions for guidance); tests drive the loops with
the oracle ``y = x_0 - x_t``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ._process import binomial
from ._schedules import PSchedule
from ._steps import (
    StepRule,
    get_step_rule,
    observed_hook,
    transitions,
)

__all__ = [
    "GRIDS",
    "POWER_RHO",
    "PRECISIONS",
    "RateFn",
    "StepCallback",
    "chain_times",
    "generate",
    "n_evaluations",
    "repaint",
    "time_grid",
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


def _check_attrition(attrition: float) -> None:
    # the loops' ``attrition`` used to be the kind; a kind passed where the strength goes gets a pointed message
    if isinstance(attrition, str):
        raise TypeError(
            f"attrition is the attrition strength (a number), got {attrition!r}; pass the kind as "
            f"attrition_kind={attrition!r} and the strength as attrition=."
        )


def chain_times(steps: int | torch.Tensor, schedule: PSchedule, t_start: float = 1.0,
                grid: str = "uniform") -> torch.Tensor:
    """The times of a chain: ``steps`` transitions of the named grid from ``t_start`` (:func:`time_grid`), or a given
    decreasing tensor of times (which must end at 0 and lie in ``[0, 1]``)."""
    if isinstance(steps, torch.Tensor):
        times = steps.detach().to("cpu", torch.float64).flatten()
        if times.numel() < 2 or not bool((times[1:] < times[:-1]).all()) or float(times[-1]) != 0.0 \
                or float(times[0]) > 1.0:
            raise ValueError("A tensor of times must be strictly decreasing, start at most at 1 and end at 0, got "
                             f"{times.tolist()[:6]}...")
        return times
    return time_grid(steps, schedule, t_start, grid)


def n_evaluations(
    n_steps: int | torch.Tensor,
    schedule: PSchedule,
    t_start: float = 1.0,
    grid: str = "uniform",
    step_rule: str | StepRule = "euler",
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
    rule = get_step_rule(step_rule)
    times = chain_times(n_steps, schedule, t_start, grid).tolist()
    return sum(rule.evaluations(schedule, t, s) for t, s in itertools.pairwise(times))


@torch.inference_mode()
def generate(
    rate_fn: RateFn,
    shape: tuple[int, int],
    schedule: PSchedule,
    n_steps: int | torch.Tensor = 50,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    x_start: torch.Tensor | None = None,
    t_start: float = 1.0,
    grid: str = "uniform",
    step_rule: str | StepRule = "euler",
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
        Number of reverse transitions of the ``grid`` from ``t_start``, or the chain's times themselves: a strictly
        decreasing tensor ending at 0 (``t_start`` and ``grid`` are then not used).
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
        A :class:`~countsdiff_sc.diffusion.StepRule` or its name: ``"euler"`` (default, :class:`Euler`): the
        first-order step of Algorithm 2, one network evaluation per transition; ``"trapezoid"``
        (:class:`Trapezoid`): a second-order two-stage rule, two evaluations per transition (see
        :func:`n_evaluations`).
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
    _check_attrition(attrition)
    rule = get_step_rule(step_rule)
    if x_start is None:
        if t_start < 1.0:
            raise ValueError("Starting below t = 1 needs x_start (e.g. thinned real cells).")
        x = torch.zeros(shape, dtype=torch.float32, device=device)
    else:
        x = x_start.to(dtype=torch.float32, device=device or x_start.device)
        x = x.clone(memory_format=torch.contiguous_format)  # the chain's own buffer, stepped in place
    times = chain_times(n_steps, schedule, t_start, grid)
    steps = transitions(times, schedule, x.device, attrition_kind, attrition)
    for k, tr in enumerate(tqdm(steps, total=len(times) - 1, desc="sampling", disable=not progress, leave=False)):
        # the chain owns x, so a step may write into it unless a callback may keep a reference
        x = rule.step(rate_fn, x, tr, schedule, generator=generator, in_place=callback is None)
        if callback is not None:
            callback(k, tr.t, tr.s, x)
    return x


@torch.inference_mode()
def repaint(
    rate_fn: RateFn,
    x_obs: torch.Tensor,
    target: torch.Tensor,
    schedule: PSchedule,
    n_steps: int | torch.Tensor = 20,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    resample_jump: int | None = None,
    resample_iters: int = 1,
    grid: str = "uniform",
    step_rule: str | StepRule = "euler",
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
    with an exact denoiser and on CBMC the options are compared on the documentation's benchmark pages.

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
        Number of reverse transitions, or the chain's times (a strictly decreasing tensor from 1 to 0).
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
    _check_attrition(attrition)
    rule = get_step_rule(step_rule)
    if target.shape != x_obs.shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but x_obs has shape {tuple(x_obs.shape)}.")
    if resample_iters < 1:
        raise ValueError(f"resample_iters must be >= 1, got {resample_iters}.")
    jump = 1 if resample_jump is None else int(resample_jump)
    if jump < 1:
        raise ValueError(f"resample_jump must be >= 1, got {resample_jump}.")
    x_obs = x_obs.to(torch.float32).contiguous()
    target = target.to(torch.bool).contiguous()
    times = chain_times(n_steps, schedule, grid=grid)
    hook = observed_hook(known, x_obs, target)  # validates known
    steps = list(transitions(times, schedule, x_obs.device, attrition_kind, attrition))
    n_trans = len(steps)

    # Start at t = 1: observed entries thinned to p(1) (all zeros for schedules with p(1) = 0), targets empty.
    x_start = binomial(x_obs, steps[0].p_t, generator)
    x = torch.where(target, torch.zeros_like(x_obs), x_start).contiguous()
    if known == "redraw":
        x_obs = torch.where(target, torch.zeros_like(x_obs), x_obs)  # target values are ignored, never drawn from
        hook = observed_hook(known, x_obs, target)
    window_starts = range(0, n_trans, jump) if resample_iters > 1 else [0]
    bar = tqdm(total=n_trans * resample_iters, desc="repaint", disable=not progress, leave=False)
    for a in window_starts:
        b = n_trans if resample_iters == 1 else min(a + jump, n_trans)
        for r in range(resample_iters):
            for k in range(a, b):
                x = rule.step(rate_fn, x, steps[k], schedule, known=hook, generator=generator,
                              in_place=callback is None)
                if callback is not None:
                    callback(k, steps[k].t, steps[k].s, x)
                bar.update(1)
            if r < resample_iters - 1:
                p_a = steps[a].p_t
                p_b = steps[b - 1].p_s
                # forward thinning from t_b back to t_a (Eq. 5), for observed entries too: x_b ~ Binomial(x_obs, p_b)
                # thinned by p_a / p_b is Binomial(x_obs, p_a)
                x = binomial(x, p_a / p_b.clamp_min(1e-30), generator)
    bar.close()
    return x
