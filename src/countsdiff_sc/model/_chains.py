"""Batched reverse chains: the one loop every sampling verb (``sample``, ``interpolate``, ``impute``) runs.

A verb builds its rows (cells, cells x weights, cells x draws), then hands :func:`run_batches` a function that runs
the reverse chain of one slice of rows (``generate`` or ``repaint`` of :mod:`countsdiff_sc.diffusion` over a rate
function of the module). The runner owns what the verbs used to repeat: slicing rows into batches, the network's
precision, the evaluation mode, progress display and moving the draws to host memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from countsdiff_sc.diffusion import PSchedule, RateFn, get_step_rule, n_evaluations, time_grid, with_precision

from ._sampler import Sampler

__all__ = ["ChainSettings", "make_generator", "positive_int", "run_batches"]

class ChainSettings:
    """One call's resolved :class:`~countsdiff_sc.model._sampler.Sampler` bound to a device: the step rule object, the
    time grid as a tensor, the random state and the network's precision.

    Parameters
    ----------
    sampler
        A resolved sampler (every setting given, see :func:`~countsdiff_sc.model._sampler.sampler_for`).
    device
        Device of the module.

    Examples
    --------
    >>> from countsdiff_sc.model._sampler import sampler_for
    >>> run = ChainSettings(sampler_for("sample", "default", None), "cpu")
    >>> run.rule, run.n_steps
    (Euler(), 50)
    """

    def __init__(self, sampler: Sampler, device: torch.device | str):
        self.sampler = sampler
        self.rule = get_step_rule(sampler.step_rule)
        grid = sampler.time_grid
        self.n_steps = int(sampler.n_steps) if not isinstance(grid, torch.Tensor) else grid.numel() - 1
        self.attrition_kind, self.attrition = sampler.attrition_kind, float(sampler.attrition)
        self.precision, self.device = sampler.precision, device
        self.batch_size = int(sampler.batch_size)
        self.generator, self.rng, self.seed = make_generator(sampler.seed, device)

    def times(self, schedule: PSchedule, t_start: float = 1.0) -> torch.Tensor:
        """The chain's times from ``t_start`` to 0: the named grid, or ``t_start`` times the given fractions."""
        grid = self.sampler.time_grid
        if isinstance(grid, torch.Tensor):
            times = float(t_start) * grid
            if schedule.discrete:
                times = torch.unique(schedule.snap(times)).flip(0)
            return times
        return time_grid(self.n_steps, schedule, t_start, grid)

    def evaluations(self, schedule: PSchedule, t_start: float = 1.0) -> int:
        """Network evaluations of one chain from ``t_start`` (resampling included)."""
        n = n_evaluations(self.times(schedule, t_start), schedule, step_rule=self.rule)
        return n * int(self.sampler.resample_iters)

    def progress(self, work: float, steps: float = 0) -> bool:
        """Whether to show a progress bar: the sampler's choice, or (None) when the call does more than about 5e8
        entry-evaluations of the network (a few seconds on a CPU core) or, on little data, more than 2,000
        sequential chain steps (``steps``: batches x evaluations; each step has a fixed cost of a few ms)."""
        if self.sampler.progress is not None:
            return bool(self.sampler.progress)
        return work > 5e8 or steps > 2000

    def wrap(self, rate_fn: RateFn) -> RateFn:
        """The rate function run in the requested precision."""
        return with_precision(rate_fn, self.precision, self.device)

    def record(self) -> dict:
        """The settings as recorded in ``uns["countsdiff"]`` (the seed actually used included)."""
        return {**self.sampler.record(), "seed": self.seed}

    def chain_kwargs(self) -> dict:
        """Keyword arguments of :func:`~countsdiff_sc.diffusion.generate` / ``repaint`` / ``restore`` these settings
        fix (their times are given separately)."""
        return {"attrition_kind": self.attrition_kind, "attrition": self.attrition, "step_rule": self.rule}


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``; booleans and non-integral numbers are refused, not truncated.

    Examples
    --------
    >>> positive_int(3.0, "n_samples")
    3
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}; round it yourself if that is what you mean.")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(value)


def make_generator(seed: int | None, device: torch.device | str) -> tuple[torch.Generator, np.random.Generator, int]:
    """A torch generator on ``device`` and a numpy generator from one seed (drawn when None), and the seed."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    gen = torch.Generator(device=device).manual_seed(int(seed))
    return gen, np.random.default_rng(int(seed)), int(seed)


def run_batches(
    module: torch.nn.Module,
    n_rows: int,
    rows_per_batch: int,
    chain: Callable[[slice, bool], torch.Tensor],
    progress: bool,
    desc: str,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Run ``chain`` over consecutive slices of ``n_rows`` rows and yield ``(slice, draws)`` per batch.

    Parameters
    ----------
    module
        The module whose network the chains evaluate (put in evaluation mode).
    n_rows
        Number of rows (chains).
    rows_per_batch
        Rows per batch (at least 1).
    chain
        ``chain(rows, show_steps)`` runs the reverse chains of the rows ``rows`` and returns their final counts;
        ``show_steps`` asks for a progress bar over the steps (a single batch).
    progress
        Show progress: over the steps for a single batch, over the batches otherwise.
    desc
        Label of the progress bar.

    Yields
    ------
    The slice of rows and their draws as a numpy array (host memory).
    """
    rows_per_batch = max(1, int(rows_per_batch))
    module.eval()
    n_batches = math.ceil(n_rows / rows_per_batch)
    starts = range(0, n_rows, rows_per_batch)
    for start in tqdm(starts, desc=desc, disable=not progress or n_batches < 2):
        sl = slice(start, min(n_rows, start + rows_per_batch))
        yield sl, chain(sl, progress and n_batches == 1).cpu().numpy()
