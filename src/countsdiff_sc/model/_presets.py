"""The presets of CountsDiffModel: the measured defaults (``"default"``) and the CountsDiff paper's (``"paper"``).

A preset fixes the module's options here, the training budget (``CountsDiffModel._budget``) and every sampling verb's
default sampler (:data:`~countsdiff_sc.model._sampler.SAMPLER_DEFAULTS`). The measurement behind each default is in
the documentation's table of defaults; the paper's settings stay one switch away so its tables reproduce.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["MODULE_OPTIONS", "PRESETS", "check_backbone_kwargs", "check_preset"]

#: Module options of each preset (see :class:`~countsdiff_sc.module.CountsDiffModule`).
PRESETS: dict[str, dict[str, Any]] = {
    # the generation recipe that measured best on CBMC and pbmc68k (depth condition, nll weight, condition dropout
    # 0.2, an EMA over about the last 2.5% of the run)
    "default": {"depth_condition": True, "loss_weighting": "nll", "p_uncond": 0.2, "ema_decay": 0.9999,
                "ema_warmup": 40.0},
    # CountsDiff (Soatto et al., 2026): w = -p'(t) for the cosine schedule, condition dropout 0.1, EMA 0.999
    "paper": {"depth_condition": False, "loss_weighting": "auto", "p_uncond": 0.1, "ema_decay": 0.999,
              "ema_warmup": 10.0},
}

#: Options a user may pass through ``CountsDiffModel(**module_kwargs)`` (research options and the preset's own).
MODULE_OPTIONS = ("loss_weighting", "p_uncond", "ema_decay", "ema_warmup", "depth_condition", "uncond_mode",
                  "rate_baseline", "loss_normalisation", "time_sampling")

#: Hyper-parameters of each backbone: name -> kind ("int" >= 1, or "dropout" in [0, 1)).
_BACKBONE_PARAMS = {
    "mlp": {"n_hidden": "int", "n_layers": "int", "dim_emb": "int", "dropout": "dropout"},
    "transformer": {"d_model": "int", "n_heads": "int", "n_layers": "int", "dim_feedforward": "int",
                    "dropout": "dropout"},
}


def check_preset(preset: Any) -> str:
    """A preset name (``"default"`` or ``"paper"``)."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    return preset


def check_backbone_kwargs(backbone: Any, kwargs: dict | None) -> None:
    """Refuse unknown backbones, unknown hyper-parameters and values that would build a broken network.

    Examples
    --------
    >>> check_backbone_kwargs("mlp", {"n_hidden": 128})
    """
    if not isinstance(backbone, str) or backbone not in _BACKBONE_PARAMS:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(_BACKBONE_PARAMS)}.")
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise TypeError(f"backbone_kwargs must be a dict, got {type(kwargs).__name__}.")
    params = _BACKBONE_PARAMS[backbone]
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ValueError(f"Unknown backbone_kwargs {unknown} for backbone={backbone!r}; it takes {sorted(params)}.")
    for name, value in kwargs.items():
        if params[name] == "int":
            if value is None and name == "dim_feedforward":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"backbone_kwargs[{name!r}] must be a positive integer, got {value!r}.")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not 0.0 <= value < 1.0:
            raise ValueError(f"backbone_kwargs[{name!r}] must be a dropout rate in [0, 1), got {value!r}.")
