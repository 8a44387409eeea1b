"""Common interface of the count denoisers: ``y_hat = scale * softplus(raw(...))``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RateDenoiser"]


class RateDenoiser(nn.Module, ABC):
    """Base class of networks that predict the number of thinned molecules ``y_hat`` (paper Eq. 6).

    Subclasses implement :meth:`raw` (the unconstrained output) and :meth:`init_output_bias`; :meth:`forward`
    applies ``softplus`` exactly once and an optional positive baseline ``scale``.
    """

    @abstractmethod
    def raw(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output before the softplus, shape ``(n, n_genes)``."""

    @abstractmethod
    def init_output_bias(self, rates: torch.Tensor) -> None:
        """Initialise the output so that ``softplus(raw)`` starts at ``rates`` (one per gene)."""

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted rates ``y_hat = scale * softplus(raw)`` (n, n_genes), strictly positive.

        Parameters
        ----------
        x_t
            Thinned counts ``(n, n_genes)``.
        t
            Times ``(n,)`` in ``[0, 1]``.
        cat, cont, drop
            Conditions (see :class:`~countsdiff_sc.nn.ConditionEncoder`).
        valid
            Boolean ``(n, n_genes)``, False at suspected dropouts (used by backbones that can ignore entries).
        scale
            Optional positive baseline rate multiplying the output (the module's preconditioning).
        """
        rate = F.softplus(self.raw(x_t, t, cat, cont, drop, valid))
        return rate if scale is None else rate * scale


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0`` (values are clamped at 1e-3)."""
    y = y.float().clamp_min(1e-3)
    return y + torch.log(-torch.expm1(-y))
