"""Lightning training plan for the diffusion modules: Adam/AdamW, linear warm-up, EMA, clean history keys."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.module.base import BaseModuleClass
from scvi.train import TrainingPlan

__all__ = ["VALIDATION_SEED", "DiffusionTrainingPlan"]

#: Seed of the validation draws (plus the batch index): the same draws every epoch.
VALIDATION_SEED = 20_260_101


class DiffusionTrainingPlan(TrainingPlan):
    """Training plan for modules whose ``loss`` returns a plain objective (no ELBO terms).

    Differences from :class:`scvi.train.TrainingPlan`:

    - the history holds ``train_loss`` and ``validation_loss`` (epoch means) and nothing ELBO-shaped;
    - a linear learning-rate warm-up over ``warmup_steps`` optimizer steps;
    - after every optimizer step the module's EMA weights are updated (``module.update_ema()``), and validation
      runs with the EMA weights (``generative_kwargs={"use_ema": True}``), as sampling does;
    - validation draws the same random times, thinnings and condition drops every epoch (common random numbers: a
      fixed seed per validation batch, the global random state restored afterwards), so the validation loss changes
      only with the weights and early stopping reads a curve, not sampling noise.

    Gradient clipping is the Trainer's job (``gradient_clip_val``, set by the model's ``train``).

    Parameters
    ----------
    module
        A :class:`~scvi.module.base.BaseModuleClass` with ``update_ema()`` and a ``use_ema`` argument to
        ``generative`` (see :class:`~countsdiff_sc.module.EMAMixin`).
    optimizer
        ``"Adam"`` or ``"AdamW"``.
    lr
        Peak learning rate.
    weight_decay
        Weight decay.
    warmup_steps
        Number of optimizer steps of linear warm-up from ``lr / warmup_steps`` to ``lr`` (0 disables it).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (e.g. ``reduce_lr_on_plateau``).
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        optimizer: Literal["Adam", "AdamW"] = "AdamW",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        **kwargs,
    ):
        kwargs.setdefault("eps", 1e-8)
        kwargs.setdefault("lr_scheduler_metric", "validation_loss")
        if optimizer in ("Adam", "AdamW") and kwargs.get("optimizer_creator") is None:
            # scvi-tools' documented "Custom" route, to build the same optimizer with its fused kernel
            kwargs["optimizer_creator"] = _fused_creator(
                torch.optim.Adam if optimizer == "Adam" else torch.optim.AdamW, lr, kwargs["eps"], weight_decay
            )
            optimizer = "Custom"
        super().__init__(
            module, optimizer=optimizer, lr=lr, weight_decay=weight_decay, n_epochs_kl_warmup=None, **kwargs
        )
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}.")
        self.warmup_steps = int(warmup_steps)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, _, loss_output = self.forward(batch)
        loss = loss_output.loss
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
            batch_size=loss_output.n_obs_minibatch, sync_dist=self.use_sync_dist,
        )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.module.update_ema()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        with torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else []):
            torch.manual_seed(VALIDATION_SEED + batch_idx)
            _, _, loss_output = self.module(batch, generative_kwargs={"use_ema": True})
        self.log(
            "validation_loss", loss_output.loss, on_step=False, on_epoch=True, prog_bar=True,
            batch_size=loss_output.n_obs_minibatch, sync_dist=self.use_sync_dist,
        )

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if self.warmup_steps > 0 and "lr_scheduler" not in config:
            warm = self.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                config["optimizer"], lambda step: min(1.0, (step + 1) / warm)
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step", "frequency": 1}
        return config


def _fused_creator(cls: type[torch.optim.Optimizer], lr: float, eps: float, weight_decay: float):
    """``params -> cls(params, lr, eps, weight_decay)`` using the fused (single-kernel) update when every parameter is
    a floating-point tensor on a CPU or CUDA device. Same update rule; on a 2-core CPU the default per-tensor loop
    of Adam costs about 1.3 ms per step for the default 1.3 M-parameter MLP, the fused kernel 0.35 ms."""

    def create(params) -> torch.optim.Optimizer:
        params = list(params)
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return cls(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=fused or None)

    return create
