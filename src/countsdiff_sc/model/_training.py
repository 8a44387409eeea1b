"""``train`` of the diffusion models, written once: scvi-tools DataSplitter + TrainRunner + DiffusionTrainingPlan.

The models differ only in defaults (how many optimizer steps the epoch heuristic aims at, weight decay, early-stopping
patience) and in the first line of the docstring; :func:`train_method` builds each model's ``train`` from one
signature, one body and one parameter documentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from lightning.pytorch.strategies import DDPStrategy

from ._chains import positive_int
from ._docs import fill_doc

__all__ = ["train_method"]


def _is_ddp(strategy: Any) -> bool:
    """Whether a Lightning ``strategy`` argument selects distributed data parallel (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if isinstance(strategy, str):
        return "ddp" in strategy
    return isinstance(strategy, DDPStrategy)


def _check_split(train_size: float | None, validation_size: float | None) -> None:
    """Fractions of cells for training and validation: train in (0, 1], validation in [0, 1), together at most 1."""
    if train_size is not None and not (isinstance(train_size, (int, float)) and 0.0 < train_size <= 1.0):
        raise ValueError(f"train_size must be a fraction in (0, 1] (0.9 trains on 90% of the cells), got "
                         f"{train_size!r}.")
    if validation_size is not None:
        if not (isinstance(validation_size, (int, float)) and 0.0 <= validation_size < 1.0):
            raise ValueError(f"validation_size must be a fraction in [0, 1), got {validation_size!r}.")
        if (train_size if train_size is not None else 0.9) + validation_size > 1.0 + 1e-9:
            raise ValueError(f"train_size + validation_size must be at most 1, got {train_size} + {validation_size}.")


def _epochs(n_obs: int, train_size: float | None, batch_size: int, max_epochs: int | None, max_steps: int | None,
            default_steps: int, max_default_epochs: int) -> int:
    """Number of epochs: ``max_epochs``, or enough to reach ``max_steps`` (else ``default_steps``) optimizer steps."""
    if max_epochs is not None:
        return max_epochs
    n_train = int(n_obs * (train_size if train_size is not None else 0.9))
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    target = max_steps if max_steps is not None else default_steps
    low, high = (1, 10**6) if max_steps else (20, max_default_epochs)
    return int(np.clip(math.ceil(target / steps_per_epoch), low, high))


def train_method(
    summary: str,
    *,
    default_steps: int,
    max_default_epochs: int,
    weight_decay: float,
    early_stopping_patience: int,
    check: Callable[[Any], None] | None = None,
) -> Callable[..., None]:
    """Build a model's ``train`` with its own defaults.

    Parameters
    ----------
    summary
        First paragraph of the docstring (what is trained, with the paper's algorithm).
    default_steps, max_default_epochs
        Target of the epoch heuristic when neither ``max_epochs`` nor ``max_steps`` is given.
    weight_decay, early_stopping_patience
        Defaults of these arguments.
    check
        Called with the model before training (raises when the model cannot be trained yet).

    Returns
    -------
    The ``train`` method (assign it in the class body).
    """

    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = weight_decay,
        optimizer: Literal["Adam", "AdamW"] = "AdamW",
        warmup_steps: int = 200,
        gradient_clip_val: float | None = 1.0,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        early_stopping: bool = False,
        early_stopping_patience: int = early_stopping_patience,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        if self.adata is None:
            raise ValueError("This model has no AnnData to train on (it was loaded with adata=None); pass one to load.")
        batch_size = positive_int(batch_size, "batch_size")
        max_steps = None if max_steps is None else positive_int(max_steps, "max_steps")
        max_epochs = None if max_epochs is None else positive_int(max_epochs, "max_epochs")
        _check_split(train_size, validation_size)
        train_size = 0.9 if train_size is None else train_size  # (scvi-tools' None can leave tiny data no cell)
        if check is not None:
            check(self)
        max_epochs = _epochs(self.adata.n_obs, train_size, batch_size, max_epochs, max_steps, default_steps,
                             max_default_epochs)
        plan = {"lr": lr, "weight_decay": weight_decay, "optimizer": optimizer, "warmup_steps": warmup_steps}
        plan.update(plan_kwargs or {})
        if max_steps is not None:
            trainer_kwargs["max_steps"] = int(max_steps)
        if gradient_clip_val is not None:
            trainer_kwargs.setdefault("gradient_clip_val", gradient_clip_val)
        if early_stopping:
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
            trainer_kwargs.setdefault("early_stopping_mode", "min")
        splitter_kwargs = dict(datasplitter_kwargs or {})
        # under DDP every process must see its own shard of the cells (as scvi-tools' own models do)
        splitter_kwargs.setdefault("distributed_sampler", _is_ddp(trainer_kwargs.get("strategy")))
        data_splitter = self._data_splitter_cls(
            self.adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            batch_size=batch_size,
            **splitter_kwargs,
        )
        if getattr(data_splitter, "n_val", 1) > 0:  # validate every epoch; with train_size=1 there is no
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)  # validation set to run on
        runner = self._train_runner_cls(
            self,
            training_plan=self._training_plan_cls(self.module, **plan),
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            **trainer_kwargs,
        )
        runner()
        self.module.eval()

    train.__doc__ = f"""{summary}

        Parameters
        ----------
        %(train)s

        Notes
        -----
        ``model.history`` holds ``train_loss`` and ``validation_loss`` per epoch; validation uses the EMA weights.

        Examples
        --------
        >>> model.train(max_steps=3000, enable_progress_bar=False)
        >>> model.history["validation_loss"].tail(1)
        """
    return fill_doc(train, default_steps=f"{default_steps:,}", max_default_epochs=f"{max_default_epochs:,}")
