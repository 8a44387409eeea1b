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

from ._process import binomial
from ._sampling import RateFn, StepCallback, _check_attrition, chain_times
from ._schedules import PSchedule
from ._steps import StepRule, ThinnedKnown, get_step_rule, schedule_p, transitions

__all__ = ["restore", "restore_start"]


def restore_start(schedule: PSchedule, level: torch.Tensor) -> float:
    """The time a :func:`restore` chain starts from: the latest ``t`` at which every entry is still known,
    ``p(t) = min(level)`` (1 when some level is at most ``p(1)``)."""
    lowest = float(level.min()) if level.numel() else 1.0
    if lowest <= float(schedule.p(torch.tensor(1.0, dtype=torch.float64))):
        return 1.0
    t0 = float(schedule.t_of_p(torch.tensor(lowest, dtype=torch.float64)))
    return min(max(t0, 1e-6), 1.0)


@torch.inference_mode()
def restore(
    rate_fn: RateFn,
    y: torch.Tensor,
    level: torch.Tensor,
    schedule: PSchedule,
    n_steps: int | torch.Tensor = 50,
    *,
    attrition_kind: str = "none",
    attrition: float = 0.0,
    grid: str = "uniform",
    step_rule: str | StepRule = "euler",
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
    - *free* when ``level < p(t)``: the reverse step of :func:`generate` (Euler, or the ``"trapezoid"`` rule, whose
      intermediate state has its known and crossing entries settled the same way before the second evaluation).

    The step rules are those of every chain (:mod:`~countsdiff_sc.diffusion.counts._steps`); what is special here is
    only the hook of the known entries, :class:`~countsdiff_sc.diffusion.ThinnedKnown`.

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
        Number of reverse transitions from ``t_0`` to 0, or the chain's times (a strictly decreasing tensor ending
        at 0; it should start at or above ``t_0``, where every entry is still known).
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
    _check_attrition(attrition)
    rule = get_step_rule(step_rule)
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
    device = y.device
    times = chain_times(n_steps, schedule, restore_start(schedule, level), grid)
    p0 = schedule_p(schedule, float(times[0]), device)
    x = binomial(y, (p0 / level.clamp_min(1e-12)).clamp(max=1.0), generator)
    hook = ThinnedKnown(y, level)
    steps = transitions(times, schedule, device, attrition_kind, attrition)
    for k, tr in enumerate(tqdm(steps, total=len(times) - 1, desc="restoring", disable=not progress, leave=False)):
        if hook.all_known(tr.p_s):  # no entry needs the network: every entry moves along its path
            x = hook.settle(x, x, None, tr, generator)
        else:
            x = rule.step(rate_fn, x, tr, schedule, known=hook, generator=generator)
        if callback is not None:
            callback(k, tr.t, tr.s, x)
    return x
