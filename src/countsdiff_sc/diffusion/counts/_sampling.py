"""Reverse-time loops over a caller-supplied rate function: generation (CountsDiff, Soatto et al., 2026,
Algorithm 2) and RePaint imputation (Sec. 3.6).

A *rate function* maps the current state ``x_t`` (shape ``(n, g)``) and the current time ``t`` (shape ``(n,)``) to
the predicted number of missing molecules ``y_hat`` (shape ``(n, g)``, non-negative). The model layer builds it from
a trained network (and mixes conditional and unconditional predictions for guidance); tests drive the loops with
the oracle ``y = x_0 - x_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ._process import attrition_rate, binomial, reverse_step
from ._schedules import PSchedule

__all__ = ["PRECISIONS", "RateFn", "StepCallback", "generate", "repaint", "time_grid", "with_precision"]

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


def time_grid(n_steps: int, schedule: PSchedule | None = None, t_start: float = 1.0) -> torch.Tensor:
    """Uniform decreasing time grid from ``t_0 = t_start`` down to ``t_K = 0`` with ``K = n_steps`` transitions.

    ``n_steps`` counts network evaluations (transitions): the paper's "20 time points" are ``n_steps = 19``.
    For a discrete schedule the times are snapped to its grid and duplicates dropped, so the grid stays strictly
    decreasing (it may then have fewer transitions).

    Examples
    --------
    >>> time_grid(4)
    tensor([1.0000, 0.7500, 0.5000, 0.2500, 0.0000], dtype=torch.float64)
    """
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}.")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start}.")
    grid = torch.linspace(t_start, 0.0, int(n_steps) + 1, dtype=torch.float64)
    if schedule is not None and schedule.discrete:
        grid = torch.unique(schedule.snap(grid)).flip(0)
    return grid


def _sched(schedule: PSchedule, t: float, device: torch.device) -> torch.Tensor:
    return schedule.p(torch.tensor(t, dtype=torch.float64)).to(device=device, dtype=torch.float32)


def _check_attrition(attrition_kind: str, attrition: float) -> None:
    # the loops' ``attrition`` used to be the kind; a kind passed where the strength goes gets a pointed message
    if isinstance(attrition, str):
        raise TypeError(
            f"attrition is the attrition strength (a number), got {attrition!r}; pass the kind as "
            f"attrition_kind={attrition!r} and the strength as attrition=."
        )


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
        Number of reverse transitions on a uniform time grid.
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
    if x_start is None:
        if t_start < 1.0:
            raise ValueError("Starting below t = 1 needs x_start (e.g. thinned real cells).")
        x = torch.zeros(shape, dtype=torch.float32, device=device)
    else:
        x = x_start.to(dtype=torch.float32, device=device or x_start.device)
        x = x.clone(memory_format=torch.contiguous_format)  # the chain's own buffer, stepped in place
    grid = time_grid(n_steps, schedule, t_start)
    n = x.shape[0]
    for k in tqdm(range(len(grid) - 1), desc="sampling", disable=not progress, leave=False):
        t, s = float(grid[k]), float(grid[k + 1])
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
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """RePaint imputation with the count reverse process (CountsDiff, Soatto et al., 2026, Sec. 3.6; Lugmayr et al.
    2022, Algorithm 1).

    Entries where ``target`` is True follow the reverse step (Prop. 3.2) driven by the network's rate; every other
    entry follows the same step driven by its known missing count ``y = x_obs - x_t``. That is the exact posterior
    ``q(x_s | x_t, x_0 = x_obs)`` of the forward process, so an observed entry is ``Binomial(x_obs, p(s))`` at
    every step (RePaint's "known" draw, Lugmayr et al. 2022, Eq. 8) and equals ``x_obs`` exactly at ``s = 0``.
    RePaint redraws the known part independently at each step; here it is one forward path traversed backwards,
    which has the same marginal at every step, keeps the observed entries from jittering between steps and lets
    one binomial draw per step serve both kinds of entries (the known draw used to cost more than the step itself).

    RePaint resampling (``resample_iters > 1``) splits the grid into windows of ``resample_jump`` transitions.
    Each window is run ``resample_iters`` times; between runs the state is re-noised from the window's end ``b``
    back to its start ``a`` by binomial thinning ``Binomial(x_b, p(t_a) / p(t_b))`` (Eq. 5) and the observed entries
    are re-drawn at ``t_a``. (This is the correct jump back; re-noising to ``t = 1`` would wipe the state and turn
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
    generator, callback, progress
        As in :func:`generate`.

    Returns
    -------
    Completed counts: target entries imputed, all others equal to ``x_obs``.
    """
    _check_attrition(attrition_kind, attrition)
    if target.shape != x_obs.shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but x_obs has shape {tuple(x_obs.shape)}.")
    if resample_iters < 1:
        raise ValueError(f"resample_iters must be >= 1, got {resample_iters}.")
    jump = 1 if resample_jump is None else int(resample_jump)
    if jump < 1:
        raise ValueError(f"resample_jump must be >= 1, got {resample_jump}.")
    x_obs = x_obs.to(torch.float32).contiguous()
    target = target.to(torch.bool).contiguous()
    grid = time_grid(n_steps, schedule)
    n_trans = len(grid) - 1
    device, n = x_obs.device, x_obs.shape[0]

    # Start at t = 1: observed entries thinned to p(1) (all zeros for schedules with p(1) = 0), targets empty.
    x_start = binomial(x_obs, _sched(schedule, float(grid[0]), device), generator)
    x = torch.where(target, torch.zeros_like(x_obs), x_start).contiguous()
    window_starts = range(0, n_trans, jump) if resample_iters > 1 else [0]
    bar = tqdm(total=n_trans * resample_iters, desc="repaint", disable=not progress, leave=False)
    for a in window_starts:
        b = n_trans if resample_iters == 1 else min(a + jump, n_trans)
        for r in range(resample_iters):
            for k in range(a, b):
                t, s = float(grid[k]), float(grid[k + 1])
                p_t, p_s = _sched(schedule, t, device), _sched(schedule, s, device)
                y_hat = rate_fn(x, torch.full((n,), t, dtype=torch.float32, device=device))
                sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
                # observed entries: the oracle rate x_obs - x_t (an integer, so the fused rounding leaves it alone)
                x = reverse_step(x, y_hat, p_t, p_s, sigma, generator, out=x if callback is None else None,
                                 x_obs=x_obs, target=target)
                if callback is not None:
                    callback(k, t, s, x)
                bar.update(1)
            if r < resample_iters - 1:
                p_a = _sched(schedule, float(grid[a]), device)
                p_b = _sched(schedule, float(grid[b]), device)
                # forward thinning from t_b back to t_a (Eq. 5), for observed entries too: x_b ~ Binomial(x_obs, p_b)
                # thinned by p_a / p_b is Binomial(x_obs, p_a)
                x = binomial(x, p_a / p_b.clamp_min(1e-30), generator)
    bar.close()
    return x
