"""Batched reverse chains: the one loop every sampling verb (``sample``, ``interpolate``, ``impute``) runs.

A verb builds its rows (cells, cells x weights, cells x draws), then hands :func:`run_batches` a function that runs
the reverse chain of one slice of rows (``generate`` or ``repaint`` of :mod:`countsdiff_sc.diffusion` over a rate
function of the module). The runner owns what the verbs used to repeat: slicing rows into batches, the network's
precision, the evaluation mode, progress display and moving the draws to host memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from countsdiff_sc.diffusion import ATTRITION_KINDS, GRIDS, STEP_RULES, RateFn, with_precision

__all__ = ["ChainSettings", "check_chain_settings", "make_generator", "positive_int", "run_batches"]

Precision = Literal["32", "bf16", "16"]


class ChainSettings:
    """Settings shared by every reverse chain of a verb call: steps, attrition, time grid, step rule, precision, device,
    random state.

    Parameters
    ----------
    n_steps
        Number of reverse transitions.
    attrition_kind, attrition
        Attrition kind and strength (see :func:`~countsdiff_sc.diffusion.attrition_rate`).
    precision
        Network precision under ``torch.autocast`` (``"32"``, ``"bf16"``, ``"16"``).
    device
        Device of the module.
    seed
        Random seed (None draws one; the seed used is recorded in :attr:`seed`).
    time_grid
        Time grid of the chain (see :func:`~countsdiff_sc.diffusion.time_grid`).
    step_rule
        ``"euler"`` or ``"trapezoid"`` (see :func:`~countsdiff_sc.diffusion.generate`).
    """

    def __init__(
        self,
        n_steps: int,
        attrition_kind: str,
        attrition: float,
        precision: Precision,
        device: torch.device,
        seed: int | None,
        *,
        time_grid: str = "uniform",
        step_rule: str = "euler",
    ):
        check_chain_settings(n_steps, attrition_kind, attrition)
        if time_grid not in GRIDS:
            raise ValueError(f"Unknown time_grid {time_grid!r}; choose one of {GRIDS} (see "
                             "countsdiff_sc.diffusion.time_grid).")
        if step_rule not in STEP_RULES:
            raise ValueError(f"Unknown step_rule {step_rule!r}; choose one of {tuple(STEP_RULES)} (see "
                             "countsdiff_sc.diffusion.generate).")
        self.time_grid = time_grid
        self.step_rule = step_rule
        self.n_steps = int(n_steps)
        self.attrition_kind = attrition_kind
        self.attrition = attrition
        self.precision = precision
        self.device = device
        self.generator, self.rng, self.seed = make_generator(seed, device)

    def wrap(self, rate_fn: RateFn) -> RateFn:
        """The rate function run in the requested precision."""
        return with_precision(rate_fn, self.precision, self.device)

    def record(self) -> dict:
        """The settings as recorded in ``uns["countsdiff"]``."""
        return {"n_steps": self.n_steps, "attrition": self.attrition, "attrition_kind": self.attrition_kind,
                "time_grid": self.time_grid, "step_rule": self.step_rule, "seed": self.seed}

    def chain_kwargs(self) -> dict:
        """Keyword arguments of :func:`~countsdiff_sc.diffusion.generate` / ``repaint`` these settings fix."""
        return {"attrition_kind": self.attrition_kind, "attrition": self.attrition, "grid": self.time_grid,
                "step_rule": self.step_rule}


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


def check_chain_settings(n_steps: int, attrition_kind: str, attrition: float) -> None:
    """Validate the reverse-process settings with messages that say what to pass instead."""
    positive_int(n_steps, "n_steps")
    if not isinstance(attrition_kind, str) or attrition_kind not in ATTRITION_KINDS:
        raise ValueError(
            f"Unknown attrition_kind {attrition_kind!r}; choose one of {ATTRITION_KINDS} (see "
            "countsdiff_sc.diffusion.attrition_rate)."
        )
    if not math.isfinite(float(attrition)) or attrition < 0:
        raise ValueError(f"attrition (the attrition strength eta) must be a non-negative number, got {attrition}.")
    if attrition_kind == "rescale" and attrition > 1:
        raise ValueError(
            f"attrition must lie in [0, 1] for attrition_kind='rescale' (sigma = attrition * sigma_max), got "
            f"{attrition}. For a per-step death probability use attrition_kind='cap', for a death rate per unit "
            "time attrition_kind='constant'."
        )


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
