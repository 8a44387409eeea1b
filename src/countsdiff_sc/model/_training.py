"""Training loop shared by the diffusion models: scvi-tools DataSplitter + TrainRunner + DiffusionTrainingPlan."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from lightning.pytorch.strategies import DDPStrategy

__all__ = ["DiffusionTrainingMixin"]


def _is_ddp(strategy: Any) -> bool:
    """Whether a Lightning ``strategy`` argument selects distributed data parallel (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if isinstance(strategy, str):
        return "ddp" in strategy
    return isinstance(strategy, DDPStrategy)


class DiffusionTrainingMixin:
    """Implements the body of ``train`` for models whose training plan is a
    :class:`~countsdiff_sc.module.DiffusionTrainingPlan`.

    The models keep their own ``train`` signature and docstring (defaults differ) and delegate here.
    """

    def _train_diffusion(
        self,
        *,
        max_epochs: int | None,
        max_steps: int | None,
        batch_size: int,
        lr: float,
        weight_decay: float,
        optimizer: str,
        warmup_steps: int,
        gradient_clip_val: float | None,
        train_size: float | None,
        validation_size: float | None,
        shuffle_set_split: bool,
        early_stopping: bool,
        early_stopping_patience: int,
        accelerator: str,
        devices: int | list[int] | str,
        datasplitter_kwargs: dict | None,
        plan_kwargs: dict | None,
        default_steps: int,
        max_default_epochs: int,
        **trainer_kwargs,
    ) -> None:
        """Train with Lightning. Without ``max_epochs`` / ``max_steps`` the number of epochs aims at
        ``default_steps`` optimizer steps, between 20 and ``max_default_epochs`` epochs."""
        if self.adata is None:
            raise ValueError("This model has no AnnData to train on (it was loaded with adata=None); pass one to load.")
        n_train = int(self.adata.n_obs * (train_size if train_size is not None else 0.9))
        steps_per_epoch = max(1, math.ceil(n_train / batch_size))
        if max_epochs is None:
            target = max_steps if max_steps is not None else default_steps
            low, high = (1, 10**6) if max_steps else (20, max_default_epochs)
            max_epochs = int(np.clip(math.ceil(target / steps_per_epoch), low, high))
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
        training_plan = self._training_plan_cls(self.module, **plan)
        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            **trainer_kwargs,
        )
        runner()
        self.module.eval()
