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

    def raw_variants(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None,
        cont: torch.Tensor | None,
        drop: torch.Tensor | None,
        valid: torch.Tensor | None,
        n_variants: int,
    ) -> torch.Tensor:
        """:meth:`raw` for the same ``n`` cells under ``n_variants`` sets of conditions, in one batch.

        ``x_t``, ``t`` and ``valid`` describe the ``n`` cells once; ``cat``, ``cont`` and ``drop`` hold
        ``n_variants * n`` rows, variant-major (the conditions of variant ``j`` in rows ``j n .. (j + 1) n - 1``).
        This default repeats the cells' inputs; backbones whose first layers see no condition override it to
        compute those layers once per cell instead of once per variant.

        Parameters
        ----------
        x_t, t, valid
            Counts ``(n, n_genes)``, times ``(n,)`` and optional validity mask ``(n, n_genes)`` of the cells.
        cat, cont, drop
            Conditions of every variant, ``n_variants * n`` rows (see :class:`~countsdiff_sc.nn.ConditionEncoder`).
        n_variants
            Number of condition sets.

        Returns
        -------
        Output before the softplus, ``(n_variants * n, n_genes)``, variant-major.

        Examples
        --------
        >>> import torch
        >>> from countsdiff_sc.nn import ResidualMLPDenoiser
        >>> net = ResidualMLPDenoiser(n_genes=20, n_hidden=32, n_layers=1, n_cats_per_cov=[3])
        >>> cat = torch.tensor([[0], [0], [2], [2]])  # two cells under label 0, then under label 2
        >>> net.raw_variants(torch.zeros(2, 20), torch.rand(2), cat, None, None, None, n_variants=2).shape
        torch.Size([4, 20])
        """
        if n_variants == 1:
            return self.raw(x_t, t, cat, cont, drop, valid)
        return self.raw(
            x_t.repeat(n_variants, 1), t.repeat(n_variants), cat, cont, drop,
            None if valid is None else valid.repeat(n_variants, 1),
        )

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        n_variants: int = 1,
    ) -> torch.Tensor:
        """Predicted rates ``y_hat = scale * softplus(raw)`` (n, n_genes), strictly positive.

        Parameters
        ----------
        x_t
            Thinned counts ``(n, n_genes)``.
        t
            Times ``(n,)`` in ``[0, 1]``.
        cat, cont, drop
            Conditions (see :class:`~countsdiff_sc.nn.ConditionEncoder`); ``n_variants * n`` rows when
            ``n_variants > 1``.
        valid
            Boolean ``(n, n_genes)``, False at suspected dropouts (used by backbones that can ignore entries).
        scale
            Optional positive baseline rate ``(n, n_genes)`` multiplying the output (the module's preconditioning).
        n_variants
            Number of condition sets the same cells are evaluated under (guidance); the result then has
            ``n_variants * n`` rows, variant-major (see :meth:`raw_variants`).
        """
        rate = F.softplus(self.raw_variants(x_t, t, cat, cont, drop, valid, int(n_variants)))
        if scale is None:
            return rate
        return rate * (scale if n_variants == 1 else scale.repeat(n_variants, 1))


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0`` (values are clamped at 1e-3)."""
    y = y.float().clamp_min(1e-3)
    return y + torch.log(-torch.expm1(-y))
