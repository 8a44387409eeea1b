"""Guidance algebra: which network passes a guided rate needs, and with which log-space coefficients.

Every guided rate of the package has the form ``y = exp(sum_j c_j log y_j)`` (see
:func:`~countsdiff_sc.diffusion.log_linear_mix`), where ``y_j`` is the network's rate for the same cells under one
*condition pattern*: a boolean vector over the condition slots (labels, categorical covariates, vector condition)
saying which conditions are kept (True) and which are replaced by their null tokens (False). The functions here turn
a user's guidance request into such a list of ``(pattern, coefficient)`` terms; they touch no network and no tensor
of counts, so the rules can be read and tested on their own. :meth:`CountsDiffModule.rate` and
:meth:`CountsDiffModule.mixed_rate` evaluate the terms.

Rules (CountsDiff, Soatto et al. 2026, Sec. 3.4; write ``y_u`` for the unconditional rate, ``y_C`` for the rate
given all given conditions and ``y_k`` for the rate given condition ``k`` alone):

* one strength ``g``: ``log y = log y_u + g (log y_C - log y_u)``, the predictor-free guidance of the paper
  (Nisonoff et al. 2025; Ho and Salimans 2022);
* one strength ``g_k`` per condition (compositional guidance anchored on the joint conditional):
  ``log y = log y_u + gbar (log y_C - log y_u) + sum_k (g_k - gbar) (log y_k - log y_u)``, ``gbar`` the mean over
  the given conditions; equal strengths give exactly the single-strength rule;
* interpolation between two labels with weight ``a``:
  ``log y = log y_u + g ((1 - a) log y_src + a log y_tgt - log y_u)``.

Guidance above 1 has no bound of its own: ``y = y_C (y_C / y_u)^(g - 1)`` grows without limit where the
unconditional rate is much smaller than the conditional one (a gene the condition switches on). The opt-in
``guidance_cap`` (:func:`check_guidance_cap`) keeps the guided rate at most ``guidance_cap * y_C``, which is the
same as clamping the guidance term ``(g - 1)(log y_C - log y_u)`` at ``log(guidance_cap)`` for one strength. It is
off by default (``None``), so default draws are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["GuidanceTerm", "check_guidance_cap", "check_strengths", "guidance_terms", "interpolation_terms"]

#: ``(keep, coefficient)``: the condition pattern of one network pass (True = condition kept) and its coefficient.
GuidanceTerm = tuple[np.ndarray, float | torch.Tensor]


def check_strengths(guidance: Sequence[float], n_conditions: int) -> np.ndarray:
    """Validate per-condition guidance strengths: one finite non-negative number per condition slot.

    Parameters
    ----------
    guidance
        Strengths in slot order (labels, categorical covariates, vector condition).
    n_conditions
        Number of condition slots of the module.

    Returns
    -------
    The strengths as a float array.

    Examples
    --------
    >>> check_strengths([2.0, 0.5], 2)
    array([2. , 0.5])
    """
    strengths = np.asarray(guidance, dtype=float)
    if strengths.shape != (n_conditions,):
        raise ValueError(
            f"Per-condition guidance needs {n_conditions} strengths (labels, categorical covariates, vector "
            f"condition), got {strengths.shape[0] if strengths.ndim == 1 else strengths.shape}."
        )
    if not np.isfinite(strengths).all() or (strengths < 0).any():
        raise ValueError(f"Guidance strengths must be finite and non-negative, got {strengths.tolist()}.")
    return strengths


def check_guidance_cap(cap: float | None) -> float | None:
    """Validate the cap of a guided rate: None or ``inf`` (no cap), or a number >= 1.

    With a cap ``c`` the guided rate is ``min(y, c * y_C)``, ``y_C`` the rate given all given conditions; a cap
    below 1 would push even the conditional rate (``g = 1``) down, so it is refused.

    Parameters
    ----------
    cap
        None, or the largest allowed ratio of the guided to the conditional rate.

    Returns
    -------
    The cap as a float, or None (no cap).

    Examples
    --------
    >>> check_guidance_cap(5)
    5.0
    >>> check_guidance_cap(float("inf")) is None
    True
    """
    if cap is None:
        return None
    value = float(cap)
    if value == float("inf"):  # no cap (how a sampler overrides a verb's default cap)
        return None
    if not value >= 1.0:
        raise ValueError(f"guidance_cap must be None, a number >= 1 (the largest ratio of the guided to the "
                         f"conditional rate) or inf (no cap), got {cap}.")
    return value


def guidance_terms(
    given: np.ndarray, guidance: float | torch.Tensor | Sequence[float], independent: bool
) -> list[GuidanceTerm]:
    """The terms of a guided rate (module docstring, first two rules).

    Parameters
    ----------
    given
        Boolean ``(n_conditions,)``: which conditions the caller gives (the others are null tokens in every pass).
    guidance
        One strength (float or tensor broadcastable to the rates, e.g. one per cell) or a list / tuple of one
        strength per condition slot.
    independent
        Whether the module learned single-condition rates (``uncond_mode="independent"``); unequal per-condition
        strengths need them.

    Returns
    -------
    ``[(keep, coefficient), ...]``; a single term with coefficient 1 when no condition is given.

    Examples
    --------
    >>> given = np.array([True, True])
    >>> [(k.tolist(), c) for k, c in guidance_terms(given, 1.5, independent=False)]
    [([True, True], 1.5), ([False, False], -0.5)]
    >>> [(k.tolist(), c) for k, c in guidance_terms(given, [2.0, 1.0], independent=True)]
    [([False, False], -0.5), ([True, True], 1.5), ([True, False], 0.5), ([False, True], -0.5)]
    """
    given = np.asarray(given, dtype=bool)
    none = np.zeros_like(given)
    if not given.any():
        return [(none, 1.0)]
    if isinstance(guidance, (list, tuple)):
        strengths = check_strengths(guidance, given.size)[given]
        g_bar = float(strengths.mean())
        if not np.allclose(strengths, g_bar, rtol=0.0, atol=1e-12):
            if not independent:
                raise ValueError(
                    f"Per-condition guidance with unequal strengths {strengths.tolist()} (conditions a guidance dict "
                    "leaves out get 1.0) needs the rates given single conditions, which a module trained with "
                    "uncond_mode='joint' never learned. Retrain with uncond_mode='independent', or use one strength "
                    "for all conditions."
                )
            terms: list[GuidanceTerm] = [(none, 1.0 - g_bar), (given, g_bar)]
            for k, g_k in zip(np.flatnonzero(given), strengths, strict=True):
                if abs(g_k - g_bar) > 1e-12:
                    only_k = np.zeros_like(given)
                    only_k[k] = True
                    terms.append((only_k, float(g_k) - g_bar))
            return terms
        guidance = g_bar
    return [(given, guidance), (none, 1.0 - guidance)]


def interpolation_terms(
    guidance: float, weight: float | torch.Tensor
) -> list[tuple[str, bool, float | torch.Tensor]]:
    """The terms of the interpolation rate (module docstring, third rule).

    Parameters
    ----------
    guidance
        Guidance strength ``g``.
    weight
        Interpolation weight ``a`` in [0, 1] (float, or a tensor of one weight per row, e.g. ``(n, 1)``).

    Returns
    -------
    ``[(label, conditioned, coefficient), ...]``: ``label`` is ``"source"`` or ``"target"`` (which label codes the
    pass uses), ``conditioned`` whether the pass keeps every condition (True) or drops them all (False).

    Examples
    --------
    >>> interpolation_terms(1.0, 0.25)
    [('source', True, 0.75), ('target', True, 0.25), ('source', False, 0.0)]
    """
    g = guidance
    return [("source", True, g * (1.0 - weight)), ("target", True, g * weight), ("source", False, 1.0 - g)]
