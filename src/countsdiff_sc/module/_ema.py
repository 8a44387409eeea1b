"""Exponential moving average of a network's weights, stored inside the module so it survives save / load."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMAMixin"]


class EMAMixin:
    """Keeps ``self.ema_net``, an EMA copy of ``self.net``, for validation and sampling.

    Modules call :meth:`_init_ema` after building ``self.net``. The copy is a registered submodule with frozen
    parameters, so it is part of ``state_dict()`` (saved with the model) and moves with ``.to(device)``; the
    optimizer never sees it because its parameters do not require gradients. ``ema_decay = 0`` disables the EMA
    (the live weights are used everywhere).

    The effective decay warms up as ``min(decay, (1 + k) / (w + k))`` after ``k`` updates (``w = ema_warmup``,
    default 10), so a short run does not leave a large weight on the random initial weights (with a fixed 0.999, 22%
    of the average would still sit on them after 1,500 steps). Until the cap ``decay`` binds, ``1 - decay_k ~
    (w - 1) / k``: the average spans about the last ``1 / (w - 1)`` of the run (11% for ``w = 10``), whatever the
    run's length; a smaller ``w`` averages over more of it (power-function EMA; Karras et al., 2024, "Analyzing and
    improving the training dynamics of diffusion models", Sec. 3.1). The update counter is a buffer and is saved
    with the model.
    """

    net: nn.Module
    ema_net: nn.Module | None
    ema_decay: float
    ema_updates: torch.Tensor

    def _init_ema(self, decay: float, warmup: float = 10.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {decay}.")
        if not float(warmup) > 1.0:
            raise ValueError(f"ema_warmup must be greater than 1 (at 1 the average never moves), got {warmup}.")
        self.ema_decay = float(decay)
        self.ema_warmup = float(warmup)
        if self.ema_decay > 0:
            self.ema_net = copy.deepcopy(self.net)
            for p in self.ema_net.parameters():
                p.requires_grad_(False)
        else:
            self.ema_net = None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA update ``ema <- decay * ema + (1 - decay) * live`` (call after every optimizer step)."""
        if self.ema_net is None:
            return
        k = float(self.ema_updates)
        decay = min(self.ema_decay, (1.0 + k) / (getattr(self, "ema_warmup", 10.0) + k))
        self.ema_updates += 1
        live = dict(self.net.named_parameters())
        ema = list(self.ema_net.named_parameters())
        # one multi-tensor update instead of a Python loop of small ones (same arithmetic as p_ema.lerp_(p, w))
        torch._foreach_lerp_([p for _, p in ema], [live[name].detach() for name, _ in ema], 1.0 - decay)
        live_buffers = dict(self.net.named_buffers())
        for name, b_ema in self.ema_net.named_buffers():
            b_ema.copy_(live_buffers[name])

    def network(self, use_ema: bool = True) -> nn.Module:
        """The EMA network when it exists and ``use_ema`` is True, else the live one."""
        return self.ema_net if (use_ema and self.ema_net is not None) else self.net
