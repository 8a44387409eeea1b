"""``train`` of the diffusion models: scvi-tools DataSplitter + TrainRunner + DiffusionTrainingPlan, written once.

:class:`TrainingMixin` holds the one ``train`` method; a model says how long to train by default through
:meth:`TrainingMixin._budget` (CountsDiffModel: scaled to the number of cells with early stopping, or the paper's
fixed budget under ``preset="paper"``; DICEModel: a fixed number of steps). Every argument is checked before
Lightning starts, so a bad setting is a message that says what to pass, not a traceback from deep inside Lightning.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy

from ._chains import positive_int

__all__ = ["Budget", "TrainingMixin", "check_accelerator", "scaled_epochs", "train_method"]

#: The arguments of the training plan a user may set through ``plan_kwargs`` (see DiffusionTrainingPlan and scvi-tools'
#: TrainingPlan).
PLAN_KEYS = ("lr", "weight_decay", "optimizer", "warmup_steps", "eps", "reduce_lr_on_plateau", "lr_factor",
             "lr_patience", "lr_threshold", "lr_min", "lr_scheduler_metric")
#: 0.1 keywords of ``train`` that are now ``plan_kwargs`` entries (accepted for one release with a FutureWarning).
LEGACY_PLAN_KEYWORDS = ("lr", "weight_decay", "optimizer", "warmup_steps")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
#: The keyword defaults of ``train`` (shared by :meth:`TrainingMixin.train` and :func:`train_method`).
_TRAIN_DEFAULTS = {"batch_size": 256, "train_size": 0.9, "validation_size": None, "shuffle_set_split": True,
                   "early_stopping": "auto", "early_stopping_patience": None, "accelerator": "auto", "devices": "auto",
                   "datasplitter_kwargs": None, "plan_kwargs": None}


@dataclass(frozen=True)
class Budget:
    """How long a model trains when ``train()`` is called without ``max_epochs`` / ``max_steps``.

    Attributes
    ----------
    max_epochs
        Epochs to train (early stopping may end sooner).
    early_stopping
        Whether early stopping on the validation loss is on by default (only where there is a validation set).
    patience
        Epochs without improvement of the validation loss before stopping.
    rule
        How the budget was chosen (recorded in ``model.train_budget_``).
    """

    max_epochs: int
    early_stopping: bool
    patience: int
    rule: str


def scaled_epochs(n_cells: int) -> int:
    """scvi-tools' rule for the number of epochs: ``min(400, round(20000 / n_cells * 400))`` (400 epochs up to 20,000
    cells, fewer beyond, so that large data sets train for about eight million cell passes).

    Examples
    --------
    >>> scaled_epochs(700), scaled_epochs(100_000)
    (400, 80)
    """
    return int(min(400, max(1, round(20000 / max(int(n_cells), 1) * 400))))


def _steps_per_epoch(n_obs: int, train_size: float, batch_size: int) -> int:
    return max(1, math.ceil(int(n_obs * train_size) / batch_size))


def _is_ddp(strategy: Any) -> bool:
    """Whether a Lightning ``strategy`` argument selects distributed data parallel (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if isinstance(strategy, str):
        return "ddp" in strategy
    return isinstance(strategy, DDPStrategy)


def _check_split(train_size: float | None, validation_size: float | None) -> None:
    """Fractions of cells for training and validation: train in (0, 1], validation in [0, 1), together at most 1."""
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, numbers.Real)
                                   or not 0.0 < train_size <= 1.0):
        raise ValueError(f"train_size must be a fraction in (0, 1] (0.9 trains on 90% of the cells), got "
                         f"{train_size!r}.")
    if validation_size is not None:
        if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real) \
                or not 0.0 <= validation_size < 1.0:
            raise ValueError(f"validation_size must be a fraction in [0, 1), got {validation_size!r}.")
        if (train_size if train_size is not None else 0.9) + validation_size > 1.0 + 1e-9:
            raise ValueError(f"train_size + validation_size must be at most 1, got {train_size} + {validation_size}.")


def _check_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The training plan's arguments: known names and sane values (a typo is refused, not ignored)."""
    unknown = sorted(k for k in plan if k not in PLAN_KEYS)
    if unknown:
        hint = " (the learning rate is 'lr')" if "learning_rate" in unknown else ""
        raise ValueError(f"Unknown plan_kwargs {unknown}{hint}; the training plan takes {list(PLAN_KEYS)}.")
    if "lr" in plan:
        lr = plan["lr"]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or not 0 < lr <= 1:
            raise ValueError(f"lr must be a finite learning rate in (0, 1], got {lr!r} (the default is 1e-3).")
    if "weight_decay" in plan:
        wd = plan["weight_decay"]
        if isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}.")
    if "optimizer" in plan and plan["optimizer"] not in ("Adam", "AdamW"):
        raise ValueError(f"optimizer must be 'Adam' or 'AdamW', got {plan['optimizer']!r} (for another optimizer, "
                         "pass plan_kwargs={'optimizer': 'Custom', ...} through scvi-tools' TrainingPlan is not "
                         "supported here).")
    if "warmup_steps" in plan:
        plan["warmup_steps"] = positive_int(plan["warmup_steps"], "warmup_steps", minimum=0)
    return plan


def check_accelerator(accelerator: Any) -> None:
    """Refuse an accelerator name Lightning does not know, or one this machine lacks (``train`` and ``load``)."""
    if not isinstance(accelerator, str) or accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}.")
    cuda = torch.cuda.is_available()
    mps = _has_mps()
    if accelerator in ("gpu", "cuda") and not cuda and not (accelerator == "gpu" and mps):
        raise ValueError(f"accelerator={accelerator!r}, but torch sees no GPU on this machine "
                         f"(torch {torch.__version__}, CUDA available: False). Use accelerator='cpu' or 'auto', or "
                         "install the torch build for your GPU.")
    if accelerator == "mps" and not mps:
        raise ValueError("accelerator='mps', but this machine has no Apple GPU available to torch; use 'cpu'.")


def _has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _check_splitter_kwargs(kwargs: Any) -> dict:
    """Extra arguments of the data splitter: a dict of names the splitter or its DataLoaders take (a typo is refused
    here, not after Lightning has started)."""
    import inspect

    from scvi.dataloaders import AnnDataLoader, DataSplitter
    from torch.utils.data import DataLoader

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"datasplitter_kwargs must be a dict, got {type(kwargs).__name__}.")
    known = set()
    for fn in (DataSplitter.__init__, AnnDataLoader.__init__, DataLoader.__init__):
        known |= set(inspect.signature(fn).parameters) - {"self", "args", "kwargs", "data_loader_kwargs"}
    managed = {"adata_manager", "train_size", "validation_size", "shuffle_set_split", "batch_size"}
    unknown = sorted(k for k in kwargs if k not in known or k in managed)
    if unknown:
        hint = " (train_size, validation_size, shuffle_set_split and batch_size are arguments of train itself)" \
            if any(k in managed for k in unknown) else ""
        raise ValueError(f"Unknown datasplitter_kwargs {unknown}{hint}; the data splitter and its DataLoaders take "
                         f"e.g. num_workers, pin_memory, persistent_workers, drop_last.")
    return dict(kwargs)


def _check_hardware(accelerator: Any, devices: Any, strategy: Any) -> None:
    """Refuse accelerators this machine lacks and CPU multi-process runs nobody asked for."""
    check_accelerator(accelerator)
    cuda = torch.cuda.is_available()
    mps = _has_mps()
    if isinstance(devices, bool):
        raise ValueError(f"devices must be 'auto', a number of devices or a list of device ids, got {devices!r}.")
    n = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, (list, tuple)) else None)
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda and not mps)
    if isinstance(n, int) and n > 1 and on_cpu and strategy is None:
        raise ValueError(f"devices={devices!r} on the CPU would start {n} DDP processes that each re-run your script. "
                         "Pass an explicit strategy (strategy='ddp' from a script guarded by if __name__ == "
                         "'__main__', or 'ddp_notebook' in a notebook), or devices=1.")
    if isinstance(n, int) and n < 1 and devices != -1:
        raise ValueError(f"devices must be at least 1 (or -1 / 'auto'), got {devices!r}.")


class TrainingMixin:
    """``train`` of the diffusion models (needs the scvi-tools base and the class attributes of the model)."""

    #: Default weight decay of the optimizer.
    _weight_decay: float = 0.0
    #: Called with the model before training (raises when the model cannot be trained yet).
    _train_check: staticmethod | None = None

    def _budget(self, n_obs: int, train_size: float, batch_size: int, has_validation: bool) -> Budget:
        """The default budget; models override it."""
        steps = _steps_per_epoch(n_obs, train_size, batch_size)
        return Budget(int(np.clip(math.ceil(6000 / steps), 20, 400)), False, 20, "6,000 steps")

    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        *,
        batch_size: int = 256,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        early_stopping: bool | str = "auto",
        early_stopping_patience: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the network with Lightning (CountsDiff Algorithm 1: the loss of Eq. 6 on trusted entries).

        Parameters
        ----------
        max_epochs
            Passes over the training cells. None (with ``max_steps`` None too): the model's default budget, which
            for CountsDiffModel is scaled to the number of cells as scvi-tools does (``min(400, round(20000 /
            n_cells * 400))`` epochs), with early stopping on the validation loss; under ``preset="paper"`` about
            6,000 steps without early stopping. The budget used is in ``model.train_budget_``.
        max_steps
            Stop after this many optimizer steps.
        batch_size
            Cells per minibatch.
        train_size, validation_size, shuffle_set_split
            Cell split, as in scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
        early_stopping
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience`` epochs. ``"auto"``
            (default): on with the model's default budget (no ``max_epochs`` / ``max_steps`` given) when the model's
            budget uses it and there is a validation set; True needs a validation set (``train_size < 1``).
        early_stopping_patience
            Epochs without improvement before stopping (None: the model's default, recorded in
            ``model.train_budget_``).
        accelerator, devices
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"`` / ``"cuda"``, ``"mps"``) and devices. Several
            devices need an explicit ``strategy`` (e.g. ``strategy="ddp"`` through ``trainer_kwargs``): with DDP every
            process trains on its own shard of the cells, ``batch_size`` per process, and Lightning re-runs the calling
            script for each process (call ``train`` from a script guarded by ``if __name__ == "__main__"``, or use
            ``"ddp_notebook"`` in notebooks).
        datasplitter_kwargs
            Extra arguments of the data splitter (e.g. ``num_workers``).
        plan_kwargs
            Optimizer settings of :class:`~countsdiff_sc.module.DiffusionTrainingPlan`: ``lr`` (default 1e-3),
            ``weight_decay``, ``optimizer`` (``"AdamW"`` default or ``"Adam"``), ``warmup_steps`` (linear warm-up,
            default 200) and scvi-tools' learning-rate schedule options; unknown names are refused.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer` (e.g.
            ``enable_progress_bar=False``, ``gradient_clip_val`` (default 1.0), ``strategy``).

        Notes
        -----
        ``model.history`` holds ``train_loss`` and ``validation_loss`` per epoch. Validation uses the EMA weights and
        the same random times and thinnings every epoch, so its curve moves only with the weights.

        Examples
        --------
        >>> model.train()                      # budget scaled to the data, early stopping on the validation loss
        >>> model.train(max_steps=3000, plan_kwargs={"lr": 5e-4}, enable_progress_bar=False)
        >>> model.history["validation_loss"].tail(1)
        """
        _fit(self, self._budget, self._train_check, self._weight_decay, max_epochs, max_steps,
             batch_size=batch_size, train_size=train_size, validation_size=validation_size,
             shuffle_set_split=shuffle_set_split, early_stopping=early_stopping,
             early_stopping_patience=early_stopping_patience, accelerator=accelerator, devices=devices,
             datasplitter_kwargs=datasplitter_kwargs, plan_kwargs=plan_kwargs, **trainer_kwargs)


def _fit(model: Any, budget_fn: Callable[..., Budget], check: Callable[[Any], None] | None, weight_decay: float,
         max_epochs: int | None, max_steps: int | None, *, batch_size: int, train_size: float | None,
         validation_size: float | None, shuffle_set_split: bool, early_stopping: bool | str,
         early_stopping_patience: int | None, accelerator: str, devices: Any, datasplitter_kwargs: dict | None,
         plan_kwargs: dict | None, **trainer_kwargs) -> None:
    """The body of ``train`` (see :meth:`TrainingMixin.train`), for a model with its budget, check and weight decay."""
    if model.adata is None:
        raise ValueError("This model has no AnnData to train on (it was loaded with adata=None); pass one to load.")
    plan = dict(plan_kwargs or {})
    legacy = {k: trainer_kwargs.pop(k) for k in LEGACY_PLAN_KEYWORDS if k in trainer_kwargs}
    if legacy:
        spelled = ", ".join(f"{k!r}: {v!r}" for k, v in legacy.items())
        warnings.warn(f"train({', '.join(legacy)}=...) is deprecated and will stop working in 0.3: pass "
                      f"plan_kwargs={{{spelled}}} instead.", FutureWarning, stacklevel=4)
        clash = sorted(k for k in legacy if k in plan and plan[k] != legacy[k])
        if clash:
            raise ValueError(f"train(): {clash} given both as keywords and in plan_kwargs; give them once, in "
                             "plan_kwargs.")
        plan.update(legacy)
    plan.setdefault("weight_decay", weight_decay)
    plan = _check_plan(plan)
    batch_size = positive_int(batch_size, "batch_size")
    max_steps = None if max_steps is None else positive_int(max_steps, "max_steps")
    max_epochs = None if max_epochs is None else positive_int(max_epochs, "max_epochs")
    _check_split(train_size, validation_size)
    train_size = 0.9 if train_size is None else float(train_size)  # (scvi-tools' None can leave tiny data no cell)
    _check_hardware(accelerator, devices, trainer_kwargs.get("strategy"))
    if not (early_stopping == "auto" or isinstance(early_stopping, (bool, np.bool_))):
        raise ValueError(f"early_stopping must be True, False or 'auto', got {early_stopping!r}.")
    if check is not None:
        check(model)
    n_obs = model.adata.n_obs
    has_validation = (validation_size or 0) > 0 or train_size < 1.0
    if early_stopping is True and not has_validation:
        raise ValueError("early_stopping=True needs a validation set, and train_size=1.0 leaves none: pass "
                         "train_size=0.9 (or validation_size=...), or early_stopping=False.")
    budget = budget_fn(n_obs, train_size, batch_size, has_validation)
    default_budget = max_epochs is None and max_steps is None
    if max_epochs is None:
        max_epochs = budget.max_epochs if max_steps is None else 10**6
    # "auto": the model's default budget comes with its early stopping; a budget the user gives is run as given
    stop = (budget.early_stopping and has_validation and default_budget) if early_stopping == "auto" \
        else bool(early_stopping)
    patience = budget.patience if early_stopping_patience is None else positive_int(
        early_stopping_patience, "early_stopping_patience")
    if max_steps is not None:
        trainer_kwargs["max_steps"] = int(max_steps)
    trainer_kwargs.setdefault("gradient_clip_val", 1.0)
    if trainer_kwargs["gradient_clip_val"] is None:
        del trainer_kwargs["gradient_clip_val"]
    if stop:
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", patience)
        trainer_kwargs.setdefault("early_stopping_mode", "min")
    splitter_kwargs = _check_splitter_kwargs(datasplitter_kwargs)
    # under DDP every process must see its own shard of the cells (as scvi-tools' own models do)
    splitter_kwargs.setdefault("distributed_sampler", _is_ddp(trainer_kwargs.get("strategy")))
    data_splitter = model._data_splitter_cls(
        model.adata_manager,
        train_size=train_size,
        validation_size=validation_size,
        shuffle_set_split=shuffle_set_split,
        batch_size=batch_size,
        **splitter_kwargs,
    )
    if getattr(data_splitter, "n_val", 1) > 0:  # validate every epoch; with train_size=1 there is no
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)  # validation set to run on
    runner = model._train_runner_cls(
        model,
        training_plan=model._training_plan_cls(model.module, **plan),
        data_splitter=data_splitter,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        early_stopping=stop,
        **trainer_kwargs,
    )
    runner()
    model.module.eval()
    model.train_budget_ = {"rule": budget.rule if max_steps is None and max_epochs == budget.max_epochs
                          else "given", "max_epochs": int(max_epochs), "max_steps": max_steps,
                          "early_stopping": bool(stop), "patience": int(patience) if stop else None,
                          "steps_run": int(model.module.ema_updates) if hasattr(model.module, "ema_updates")
                          else None}


def train_method(summary: str, *, default_steps: int, max_default_epochs: int, weight_decay: float,
                 early_stopping_patience: int, check: Callable[[Any], None] | None = None) -> Callable[..., None]:
    """A ``train`` with fixed defaults for models that do not derive from :class:`TrainingMixin` (DICEModel).

    The returned function runs :meth:`TrainingMixin.train` with a budget of about ``default_steps`` optimizer steps
    (between 20 and ``max_default_epochs`` epochs) and no early stopping by default.
    """

    def budget(self, n_obs: int, train_size: float, batch_size: int, has_validation: bool) -> Budget:
        steps = _steps_per_epoch(n_obs, train_size, batch_size)
        epochs = int(np.clip(math.ceil(default_steps / steps), 20, max_default_epochs))
        return Budget(epochs, False, early_stopping_patience, f"{default_steps:,} steps")

    def train(self, max_epochs: int | None = None, max_steps: int | None = None, **kwargs) -> None:
        _fit(self, lambda *a: budget(self, *a), check, weight_decay, max_epochs, max_steps,
             **{**_TRAIN_DEFAULTS, **kwargs})

    train.__doc__ = f"{summary}\n\n" + (TrainingMixin.train.__doc__ or "").split("\n\n", 1)[1]
    return train
