"""Reverse chain from counts seen through a known binomial thinning of each entry (``restore``).

Binomial thinning is CountsDiff's forward process (Soatto et al., 2026, Eq. 4), and it is also a faithful model of
the commonest technical effects on UMI counts: shallower sequencing keeps each molecule with a probability, and a
batch whose capture of gene ``g`` is weaker keeps a gene-specific fraction of its molecules. Counts
``y ~ Binomial(x_0, level)`` seen through such a thinning are, for the diffusion, the state at the time ``t`` with
``p(t) = level``; when the level differs between entries (genes, cells) every entry simply sits at its own time.
``restore`` runs the reverse chain (Algorithm 2, Prop. 3.2) from those observations to ``t = 0``:

- while ``p(t) <= level`` an entry is *known*: its state is ``Binomial(y, p(t) / level)``, carried along one forward
  path read backwards (the forward posterior, as RePaint's observed entries with ``known="path"``);
- once the chain passes ``p(t) = level`` the entry holds all of ``y`` and the network adds the molecules the thinning
  removed, seeing the whole state (the known entries included) as in imputation (Sec. 3.6).

An entry at level 1 is returned unchanged; an entry at level 0 is filled from scratch, like RePaint's targets. The
molecules of ``y`` are never lost (without attrition the output is at least ``y`` entry-wise), which is what a
count-space counterfactual wants: the cell's own molecules stay, only the missing ones are drawn.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ._process import attrition_rate, binomial, reverse_step
from ._sampling import (
    RateFn,
    StepCallback,
    _check_attrition,
    _check_step_rule,
    _sched,
    time_grid,
    trapezoid_midpoint,
    trapezoid_step,
)
from ._schedules import PSchedule

__all__ = ["restore", "restore_start"]


def restore_start(schedule: PSchedule, level: torch.Tensor) -> float:
    """The time a :func:`restore` chain starts from: the latest ``t`` at which every entry is still known,
    ``p(t) = min(level)`` (1 when some level is at most ``p(1)``)."""
    lowest = float(level.min()) if level.numel() else 1.0
    if lowest <= float(schedule.p(torch.tensor(1.0, dtype=torch.float64))):
        return 1.0
    t0 = float(schedule.t_of_p(torch.tensor(lowest, dtype=torch.float64)))
    return min(max(t0, 1e-6), 1.0)


def _path(x: torch.Tensor, y: torch.Tensor, level: torch.Tensor, p_from: torch.Tensor, p_to: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    """Forward path read backwards for known entries: ``x ~ Binomial(y, p_from / level)`` moved to
    ``Binomial(y, p_to / level)`` by ``x + Binomial(y - x, (p_to - p_from) / (level - p_from))``."""
    prob = ((p_to - p_from) / (level - p_from).clamp_min(1e-12)).clamp(0.0, 1.0)
    return x + binomial((y - x).clamp_min(0.0), prob, generator)


@torch.inference_mode()
def restore(
    rate_fn: RateFn,
    y: torch.Tensor,
    level: torch.Tensor,
    schedule: PSchedule,
    n_steps: int = 50,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    grid: str = "uniform",
    step_rule: str = "euler",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Draw ``x_0`` given counts seen through a known binomial thinning, ``y ~ Binomial(x_0, level)`` entry-wise.

    The chain starts at ``t_0`` with ``p(t_0) = min(level)`` (:func:`restore_start`) from
    ``x = Binomial(y, p(t_0) / level)`` and runs ``n_steps`` transitions of the time grid to 0. In a transition
    ``t -> s`` an entry is

    - *known* when ``level >= p(s)``: ``x_s = x_t + Binomial(y - x_t, (p(s) - p(t)) / (level - p(t)))``, so
      ``x_s ~ Binomial(y, p(s) / level)`` (the network is not consulted: a transition where every entry is known
      costs no evaluation);
    - *crossing* when ``p(t) <= level < p(s)``: it first takes the rest of its known path to ``y`` (the state at
      ``p = level``), then a reverse step (Prop. 3.2) from ``level`` to ``p(s)`` with the rate evaluated at ``x_t``
      less the molecules just added, ``max(y_hat - (y - x_t), 0)`` (the estimate of ``x_0 - y``), and birth
      probability ``(p(s) - (1 - sigma) level) / (1 - level)``; none of ``y`` is lost;
    - *free* when ``level < p(t)``: the reverse step of :func:`generate` (Euler, or the ``"trapezoid"`` rule of
      :func:`trapezoid_step`, whose intermediate state has its known entries put on their path before the second
      evaluation).

    With an exact denoiser the mean is exact: for a Poisson prior of mean ``lambda`` (rate
    ``lambda (1 - p(t))``) every transition keeps ``E[x_s] = lambda p(s)``, so ``E[x_0 - y] = lambda (1 - level)``
    (``tests/diffusion/counts/test_restore.py``). As in RePaint, the network's rate is the unconditional
    ``E[x_0 - x_t | x_t]``, so molecules born early are not revised when later entries become known.

    Parameters
    ----------
    rate_fn
        ``rate_fn(x_t, t) -> y_hat``.
    y
        Observed counts, shape ``(n, g)`` (non-negative integers).
    level
        Thinning level of each entry in ``[0, 1]``, broadcastable to ``y`` (one per gene ``(g,)``, per cell
        ``(n, 1)``, or per entry).
    schedule
        The p-schedule of the trained network.
    n_steps
        Number of reverse transitions from ``t_0`` to 0.
    attrition_kind, attrition
        Attrition of the free entries' steps, as in :func:`generate` (known entries follow their path).
    grid, step_rule
        Time grid and step rule, as in :func:`generate`.
    generator, callback, progress
        As in :func:`generate`.

    Returns
    -------
    Float tensor of non-negative integer counts shaped like ``y``; entries at level 1 equal ``y``.

    Examples
    --------
    >>> from countsdiff_sc.diffusion import CosineSchedule
    >>> x0 = torch.tensor([[4.0, 10.0, 7.0]])
    >>> y = torch.tensor([[4.0, 5.0, 0.0]])  # seen through levels 1, 0.5, 0.1
    >>> oracle = lambda x, t: x0 - x
    >>> restore(oracle, y, torch.tensor([1.0, 0.5, 0.1]), CosineSchedule(), n_steps=10,
    ...         generator=torch.Generator().manual_seed(0))
    tensor([[ 4., 10.,  7.]])
    """
    _check_attrition(attrition_kind, attrition)
    _check_step_rule(step_rule)
    y = y.to(torch.float32)
    if y.dim() != 2:
        raise ValueError(f"y must be a (cells, genes) matrix, got shape {tuple(y.shape)}.")
    if bool((y < 0).any()) or not bool(torch.equal(y, torch.round(y))):
        raise ValueError("y must hold non-negative integer counts.")
    level = torch.as_tensor(level, dtype=torch.float32, device=y.device)
    try:
        level = torch.broadcast_to(level, y.shape).contiguous()
    except RuntimeError as err:
        raise ValueError(f"level of shape {tuple(level.shape)} does not broadcast to y's {tuple(y.shape)}.") from err
    if not bool(torch.isfinite(level).all()) or bool((level < 0).any()) or bool((level > 1).any()):
        raise ValueError("level must hold thinning probabilities in [0, 1] (thin entries seen above their level "
                         "first: Binomial(y, 1 / ratio)).")
    y = torch.where(level > 0, y, torch.zeros_like(y))  # nothing is seen at level 0
    device, n = y.device, y.shape[0]
    t0 = restore_start(schedule, level)
    times = time_grid(n_steps, schedule, t0, grid)
    p0 = _sched(schedule, float(times[0]), device)
    x = binomial(y, (p0 / level.clamp_min(1e-12)).clamp(max=1.0), generator)
    for k in tqdm(range(len(times) - 1), desc="restoring", disable=not progress, leave=False):
        t, s = float(times[k]), float(times[k + 1])
        p_t, p_s = _sched(schedule, t, device), _sched(schedule, s, device)
        known_s = level >= p_s
        if bool(known_s.all()):
            x = _path(x, y, level, p_t, p_s, generator)
        else:
            x = _step(rate_fn, x, y, level, t, s, p_t, p_s, schedule, attrition_kind, attrition, step_rule,
                      generator, n)
        if callback is not None:
            callback(k, t, s, x)
    return x


def _step(rate_fn: RateFn, x: torch.Tensor, y: torch.Tensor, level: torch.Tensor, t: float, s: float,
          p_t: torch.Tensor, p_s: torch.Tensor, schedule: PSchedule, attrition_kind: str, attrition: float,
          step_rule: str, generator: torch.Generator | None, n: int) -> torch.Tensor:
    """One transition of :func:`restore` with at least one entry that is not known at ``s``."""
    device = x.device
    known_s = level >= p_s
    crossing = (level >= p_t) & ~known_s
    y_hat = rate_fn(x, torch.full((n,), t, dtype=torch.float32, device=device))
    sigma = attrition_rate(attrition_kind, attrition, p_t, p_s, dt=t - s)
    mid = trapezoid_midpoint(schedule, t, s) if step_rule == "trapezoid" else None
    if mid is not None:
        m, _ = mid
        p_m = _sched(schedule, m, device)
        known_m = level >= p_m
        held: dict[str, torch.Tensor] = {}

        def rate_mid(x_m: torch.Tensor, tm: torch.Tensor) -> torch.Tensor:
            # the intermediate state's known entries put on their path before the network sees them; written into
            # x_m itself so that the second stage continues from the corrected state
            on_path = _path(x, y, level, p_t, p_m, generator)
            x_m.copy_(torch.where(known_m, on_path, x_m))
            held["x_m"] = x_m.clone()  # the second stage writes x_s into x_m's buffer
            return rate_fn(x_m, tm)

        free = trapezoid_step(rate_mid, x, t, s, schedule, y_t=y_hat, attrition_kind=attrition_kind,
                              attrition=attrition, generator=generator)
        x_m = held.get("x_m")
        if x_m is not None:
            known_path = _path(x_m, y, level, p_m, p_s, generator)
        else:
            known_path = _path(x, y, level, p_t, p_s, generator)
    else:
        free = reverse_step(x, y_hat, p_t, p_s, sigma, generator)
        known_path = _path(x, y, level, p_t, p_s, generator)
    out = torch.where(known_s, known_path, free)
    if bool(crossing.any()):
        # the rest of the known path (x_t -> y), then a reverse step from p = level with the remaining estimate
        rest = (y_hat - (y - x)).clamp_min(0.0)
        lev = torch.where(crossing, level, p_t.expand_as(level))
        sig = torch.as_tensor(sigma, dtype=torch.float32, device=device)
        born = reverse_step(torch.where(crossing, y, x), torch.where(crossing, rest, y_hat), lev, p_s.expand_as(lev),
                            sig, generator)
        out = torch.where(crossing, born, out)
    return out
