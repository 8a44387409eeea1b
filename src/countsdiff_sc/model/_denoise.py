"""Depth restoration: each cell enters the reverse chain at its own depth (the denoising of ``impute`` and of the
expression methods).

A cell with ``L`` counts observed from a profile of depth ``D`` is, for CountsDiff's forward process (Eq. 4), the
state ``x_t ~ Binomial(x_D, f)`` at the time ``t_f`` with ``p(t_f) = f = L / D``. Two things follow:

* the **posterior mean** of the restored profile is the network's own estimate at that time,
  ``E[x_D | x] = x + y_hat(x, t_f)`` (the network is trained, Eq. 6, to predict the mean number of molecules thinned
  away): one network pass per guidance term, no randomness. Scaled back to the cell's depth, ``f * E[x_D | x]`` is
  the expected count of each gene at the depth the cell was sequenced at (a SAVER-like posterior mean: observed
  entries shrink towards the profile the cell's other genes imply, zeros rise to what the cell's depth explains, and
  the library is kept);
* **draws** of ``x_D`` come from :func:`~countsdiff_sc.diffusion.restore` with every gene of the cell at level ``f``:
  the cell keeps every molecule and the chain adds the missing ones. A draw of a **new measurement** of the cell at
  its own depth is ``Poisson(f * x_D)`` (:func:`predictive_draws`): a new library captures its molecules from the
  cell's whole mRNA pool, of which a library holds a small share, not from the ``D`` molecules of the restored
  profile (``Binomial(x_D, f)`` would share the observed molecules with the new measurement and shrink its
  sampling variance by the factor ``1 - f``: a half to a quarter for the median cell's ``f`` of 0.5-0.75).

``D`` is the restored depth: by default the median depth of the training cells of the cell's label, or of every
training cell where that is smaller (cell types differ in depth up to ten-fold; the model's
``restored_depth_table``), and for a cell deeper than ``D * F_MAX`` its own depth divided by ``F_MAX``, so that
every cell is treated as a thinning of a deeper profile (deep cells are restored a little, never not at all). A
depth-conditioned model is given ``D`` as the depth of the profile it restores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from countsdiff_sc.diffusion import restore, restore_start, thin

from ._chains import ChainSettings

__all__ = ["F_MAX", "Restored", "predictive_draws", "predictive_variance", "restore_blocks", "restored_depths"]

#: The largest depth fraction ``f = L / D`` a cell is restored from (see the module docstring).
F_MAX = 0.75


def restored_depths(library: np.ndarray, depth: float | np.ndarray, floor: bool = True) -> np.ndarray:
    """The depth ``D_c`` each cell is restored to: ``depth`` (one for every cell, or one per cell), or
    ``L_c / F_MAX`` for a cell deeper than ``depth * F_MAX`` (``floor``); with ``floor=False`` (a depth the user asked
    for) ``max(depth, L_c)``.

    Examples
    --------
    >>> restored_depths(np.array([100.0, 900.0]), 1000.0)
    array([1000., 1200.])
    """
    library = np.asarray(library, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    if floor:
        return np.maximum(depth, library / F_MAX)
    return np.maximum(depth, library)


def predictive_draws(draws: np.ndarray, fraction: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
    """Draws of a new measurement of each cell at its own depth: ``Poisson(f * x_D)`` for each draw ``x_D``.

    The library of a cell captures a small share of its mRNA molecules, so a second library of the same cell is a
    Poisson capture of its expression (count splitting, Neufeld et al. 2022, rests on the same fact), at the rate
    ``f * x_D`` that brings the restored profile back to the cell's depth ``L = f * D``. Averaged over the posterior
    of ``x_D`` this is the posterior predictive; its mean is the point estimate ``f * E[x_D | x]``.

    Parameters
    ----------
    draws
        Draws of the restored profiles, ``(cells, n_draws, genes)``.
    fraction
        ``f = L / D`` of each cell, ``(cells,)``.
    generator
        Torch random generator (the call's seed).

    Returns
    -------
    Float32 counts, ``(cells, n_draws, genes)``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> predictive_draws(np.full((1, 2, 3), 10.0), np.array([0.0]), g)[0, 0]
    array([0., 0., 0.], dtype=float32)
    """
    rates = torch.from_numpy(np.asarray(draws, dtype=np.float32)) * torch.from_numpy(
        np.asarray(fraction, dtype=np.float32))[:, None, None]
    return torch.poisson(rates, generator=generator).numpy()


def predictive_variance(draws: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Variance of :func:`predictive_draws` over the posterior of ``x_D``: ``f E[x_D] + f^2 Var[x_D]`` (the law of
    total variance: Poisson sampling noise plus the posterior's own spread, sample variance over the draws).

    Examples
    --------
    >>> predictive_variance(np.array([[[2.0], [4.0]]]), np.array([0.5]))
    array([[2.]])
    """
    d = np.asarray(draws, dtype=np.float64)
    f = np.asarray(fraction, dtype=np.float64)[:, None]
    spread = d.var(axis=1, ddof=1) if d.shape[1] > 1 else np.zeros_like(d[:, 0])
    return f * d.mean(axis=1) + f ** 2 * spread


@dataclass
class Restored:
    """One block of cells restored to their depths.

    Attributes
    ----------
    cells
        Positions of the block's cells among the cells asked for.
    fraction
        ``f = L / D`` of each cell (1 for cells with nothing to restore).
    mean
        Posterior mean ``E[x_D | x]`` of each cell's restored profile, ``(cells, genes)``.
    draws
        Draws of ``x_D``, ``(cells, n_draws, genes)``, or None.
    """

    cells: np.ndarray
    fraction: np.ndarray
    mean: np.ndarray
    draws: np.ndarray | None


def _entry_times(schedule, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's entry time ``t_f`` (``p(t_f) = f``) and the extra thinning ``q`` that puts it there: 1 for a
    continuous schedule; for a discrete one the first grid time at or after ``t_f`` and ``q = p(t_k) / f``."""
    f64 = torch.as_tensor(f, dtype=torch.float64)
    t = schedule.t_of_p(f64)
    if not schedule.discrete:
        return t.numpy(), np.ones_like(f)
    n_grid = getattr(schedule, "n_grid", None)
    t = torch.ceil(t * (n_grid - 1) - 1e-9) / (n_grid - 1) if n_grid else schedule.snap(t)
    p = schedule.p(t).numpy()
    q = np.divide(p, f, out=np.ones_like(f), where=f > 0)
    return t.numpy(), np.minimum(q, 1.0)


def restore_blocks(model: Any, x_obs: np.ndarray, rate_for, depth: np.ndarray, run: ChainSettings, n_draws: int,
                   progress: bool, desc: str) -> Iterator[Restored]:
    """Restore cells to their depths in blocks of ``run.batch_size`` rows: posterior means and ``n_draws`` draws.

    Parameters
    ----------
    model
        The CountsDiffModel (its module and device are used).
    x_obs
        Observed counts in the model's gene order, ``(cells, genes)`` float32.
    rate_for
        ``rate_for(cells, depth) -> rate_fn(x, t)``: the guided rate of the cells at positions ``cells`` (repeated
        per draw as given), conditioned on the restored ``depth`` of each row.
    depth
        The depth ``D_c`` of each cell (:func:`restored_depths`).
    run
        The call's chain settings.
    n_draws
        Draws per cell (0: posterior means only).
    progress, desc
        Progress display.

    Yields
    ------
    :class:`Restored` blocks, cells in increasing order of ``f`` (shallow cells first, so each block's chains start
    near their cells' own entry times).
    """
    module, device = model.module, model.device
    module.eval()
    library = x_obs.sum(axis=1).astype(np.float64)
    f = np.clip(np.divide(library, depth, out=np.ones_like(library), where=depth > 0), 0.0, 1.0)
    t_f, q = _entry_times(module.schedule, f)
    order = np.argsort(f, kind="stable")
    per_block = max(1, run.batch_size // max(1, n_draws))
    starts = range(0, len(order), per_block)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2):
        cells = np.sort(order[start:start + per_block])
        yield _restore_block(module, device, x_obs, cells, f, t_f, q, depth, rate_for, run, n_draws,
                             progress and len(starts) < 2)


@torch.inference_mode()
def _restore_block(module, device, x_obs, cells, f, t_f, q, depth, rate_for, run, n_draws, show) -> Restored:
    """One block of :func:`restore_blocks` (in inference mode)."""
    x = torch.from_numpy(np.ascontiguousarray(x_obs[cells], dtype=np.float32)).to(device)  # (float64 above 2^24)
    if bool((q[cells] < 1).any()):  # discrete schedules: down to the grid time (exact in distribution)
        x = thin(x, torch.from_numpy(q[cells].astype(np.float32))[:, None].to(device), generator=run.generator)
    d = depth[cells]
    rate = run.wrap(rate_for(cells, d))
    t = torch.from_numpy(t_f[cells].astype(np.float32)).to(device)
    mean = x + rate(x, t)
    done = torch.from_numpy(f[cells] >= 1.0).to(device)  # nothing to restore: the profile is the cell
    mean[done] = x[done]
    draws = None
    if n_draws > 0:
        rows = np.repeat(cells, n_draws)
        level = torch.from_numpy(np.repeat(np.minimum(f[cells] * q[cells], 1.0),
                                           n_draws).astype(np.float32))[:, None].to(device)
        y = x.repeat_interleave(n_draws, dim=0)
        row_rate = rate_for(rows, np.repeat(d, n_draws))
        times = run.times(module.schedule, restore_start(module.schedule, level))
        out = restore(run.wrap(row_rate), y, level, module.schedule, times, **run.chain_kwargs(),
                      generator=run.generator, progress=show)
        draws = out.cpu().numpy().reshape(len(cells), n_draws, -1)
    return Restored(cells, f[cells], mean.cpu().numpy(), draws)
