"""Shared parameter documentation of the model verbs, written once and filled into docstrings.

A docstring line that holds only ``%(name)s`` is replaced by the numpydoc entry ``PARAMS[name]``, indented like the
marker (the role scvi-tools gives docrep). Other ``%`` signs are left alone.

Examples
--------
>>> @fill_doc
... def f(progress=True):
...     '''Do it.
...
...     Parameters
...     ----------
...     %(progress)s
...     '''
>>> "Show a progress bar" in f.__doc__
True
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PARAMS", "fill_doc"]

F = TypeVar("F", bound=Callable)

PARAMS: dict[str, str] = {
    "precision": """\
precision
    ``"32"`` (default), ``"bf16"`` or ``"16"``: run the network under ``torch.autocast`` in that precision (the
    draws stay exact float32 counts); for GPUs with tensor cores. ``"16"`` needs a GPU.""",
    "progress": """\
progress
    Show a progress bar.""",
    "attrition": """\
attrition, attrition_kind
    Attrition strength and kind: ``"rescale"`` (``sigma = attrition * sigma_max``, attrition in [0, 1]), ``"cap"``
    (``sigma = min(attrition, sigma_max)``), ``"constant"`` (death rate ``attrition`` per unit time) or ``"none"``;
    see :func:`~countsdiff_sc.diffusion.attrition_rate`.""",
    "sampler": """\
time_grid
    Time grid of the reverse chain: ``"uniform"`` in ``t`` (default, the paper's), ``"p"``, ``"logit"`` or
    ``"power"``; see :func:`~countsdiff_sc.diffusion.time_grid`.
step_rule
    ``"euler"`` (default): the paper's first-order step, one network evaluation per step. ``"trapezoid"``: a
    second-order two-stage step (two evaluations per step) that reaches a given accuracy with far fewer steps;
    see :func:`~countsdiff_sc.diffusion.trapezoid_step`.""",
    "seed": """\
seed
    Random seed; the same seed gives the same draws on the same device (and ``batch_size``).""",
    "guidance_dict": """\
guidance
    One strength ``g`` for all conditions: the guided rate ``y_C^g y_u^(1-g)`` of CountsDiff Sec. 3.4 (1 =
    conditional, 0 = unconditional, > 1 sharpens). Or a dict ``{condition: strength}`` naming the labels key,
    categorical covariate keys or the obsm condition key: compositional guidance (see
    :func:`~countsdiff_sc.module.guidance_terms`); equal strengths give exactly the single-strength rule.
    Conditions a dict leaves out keep strength 1.0, so ``{"cell_type": 0.5}`` on a model that also has a
    covariate means ``cell_type`` at 0.5 and the covariate at 1.0. Unequal strengths need a model trained with
    ``uncond_mode="independent"``; on a jointly trained model (the default) such a dict raises a ValueError that
    lists the strengths it meant and what to pass instead (one float, e.g. ``guidance=0.5``, or every condition
    named with the same value).""",
    "train": """\
max_epochs
    Number of passes over the training cells. When both ``max_epochs`` and ``max_steps`` are None, a heuristic aims
    at about %(default_steps)s optimizer steps (between 20 and %(max_default_epochs)s epochs).
max_steps
    Stop after this many optimizer steps (takes precedence over ``max_epochs`` when smaller).
batch_size
    Cells per minibatch.
lr, weight_decay, optimizer, warmup_steps
    Optimiser settings (linear warm-up over ``warmup_steps`` steps).
gradient_clip_val
    Gradient-norm clipping (None disables it).
train_size, validation_size, shuffle_set_split
    Cell split, as in scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
early_stopping, early_stopping_patience
    Stop when ``validation_loss`` has not improved for ``early_stopping_patience`` epochs.
accelerator, devices
    Lightning accelerator and devices (``"cpu"``, ``"gpu"``, ...). ``strategy="ddp"`` and other
    :class:`lightning.pytorch.Trainer` arguments pass through ``trainer_kwargs``; with a DDP strategy every process
    trains on its own shard of the cells (scvi-tools' distributed sampler), so ``batch_size`` is per process.
    Lightning's ``"ddp"`` re-runs the calling script for each process: call ``train`` from a script (guarded by
    ``if __name__ == "__main__"``), or use ``"ddp_notebook"`` in notebooks.
datasplitter_kwargs
    Extra arguments of the data splitter (e.g. ``num_workers``).
plan_kwargs
    Extra arguments of :class:`~countsdiff_sc.module.DiffusionTrainingPlan`.
**trainer_kwargs
    Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer` (e.g. ``enable_progress_bar=False``,
    ``strategy="ddp"``).""",
}

_MARKER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def fill_doc(obj: F, **values: str) -> F:
    """Replace every line ``%(name)s`` of ``obj.__doc__`` by ``PARAMS[name]`` at that line's indentation.

    ``values`` fill ``%(key)s`` placeholders inside the inserted entries (e.g. a model's default number of steps).
    An unknown name raises a KeyError at import time, so a typo cannot reach a user.
    """
    doc = obj.__doc__
    if doc is None:
        return obj

    def entry(match: re.Match) -> str:
        text = PARAMS[match["name"]]
        for key, value in values.items():
            text = text.replace(f"%({key})s", value)
        return textwrap.indent(text, match["indent"])

    obj.__doc__ = _MARKER.sub(entry, doc)
    return obj
