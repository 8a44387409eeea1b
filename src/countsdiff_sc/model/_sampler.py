"""The sampler settings object of every sampling verb (``Sampler``), and each verb's defaults written once.

Every verb that runs reverse chains (``impute``, ``sample``, ``interpolate``, ``transfer``, ``correct_batches`` and
the expression methods) takes its chain settings from one :class:`Sampler`: how many steps and which step rule, the
time grid, RePaint's resampling and observed entries, guidance, attrition, precision, batch size, seed and progress.
A setting left at None takes the verb's default from :data:`SAMPLER_DEFAULTS`, the one table of defaults (per
preset: the measured defaults, or the CountsDiff paper's). The keywords of 0.1 (``n_steps=``, ``guidance=``, ...
passed to a verb) still work for one release, with a ``FutureWarning`` that names the new spelling.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch

from countsdiff_sc.diffusion import ATTRITION_KINDS, GRIDS, KNOWN_MODES, PRECISIONS, STEP_RULES, StepRule
from countsdiff_sc.module import check_guidance_cap

__all__ = ["MAX_STEPS", "SAMPLER_DEFAULTS", "Sampler", "defaults_table", "sampler_for"]

#: More reverse steps than this change nothing measurable (quality is flat from about 200 steps) and would run for
#: hours: a request above it is refused.
MAX_STEPS = 10_000

Verb = Literal["impute", "denoise", "sample", "interpolate", "transfer"]


def _check_int(value: Any, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(float(value)) or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    if int(value) < minimum or (maximum is not None and int(value) > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum:,}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return int(value)


def _check_number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum:
        kind = "non-negative number" if minimum == 0 else f"number >= {minimum:g}"
        raise ValueError(f"{name} must be a finite {kind}, got {value!r}.")
    return float(value)


@dataclass(frozen=True, eq=False)
class Sampler:
    """Settings of the reverse chains, accepted by every sampling verb as ``sampler=``.

    Leave a setting at None to take the verb's default (:func:`defaults_table` lists them per verb and preset;
    they are chosen by measurements, see the docs' table of defaults). A sampler is immutable:
    ``sampler.replace(seed=1)`` gives a copy with one setting changed.

    Parameters
    ----------
    n_steps
        Number of reverse transitions (of the whole chain from ``t = 1``; a chain that starts later, e.g. a transfer
        from ``t_start``, runs the transitions of its own interval). At most :data:`MAX_STEPS`.
    step_rule
        ``"euler"`` (CountsDiff's Algorithm 2, one network evaluation per step), ``"trapezoid"`` (a second-order
        two-stage step, two evaluations per step, reaching a given accuracy with far fewer steps), or a
        :class:`~countsdiff_sc.diffusion.StepRule` object.
    time_grid
        ``"uniform"`` in ``t`` (the paper's), ``"p"``, ``"logit"`` or ``"power"`` (see
        :func:`~countsdiff_sc.diffusion.time_grid`); or a tensor of fractions decreasing from 1 to 0: a chain from
        ``t_start`` runs through the times ``t_start * u`` (``n_steps`` then follows from its length).
    resample_iters, resample_jump
        RePaint resampling of ``impute``: windows of ``resample_jump`` transitions (default 1) run ``resample_iters``
        times, re-noised by thinning back to the window start in between (see
        :func:`~countsdiff_sc.diffusion.repaint`).
    known
        How RePaint carries the observed entries: ``"path"`` (one forward path read backwards) or ``"redraw"`` (a
        fresh binomial draw after every step, the paper's rule).
    guidance
        Classifier-free guidance strength ``g`` (CountsDiff Sec. 3.4): the rate ``y_C^g y_u^(1-g)``; 1 is the
        conditional rate, 0 the unconditional one (label-free: use it when you will look for structure the labels
        would impose), above 1 sharpens. Or a dict ``{condition: strength}`` (compositional guidance; unequal
        strengths need a model trained with ``uncond_mode="independent"``).
    guidance_cap
        For guidance above 1: cap the guided rate at this multiple of the conditional rate; ``math.inf``: no cap.
        Denoising (``impute`` without a mask, the expression verbs) caps at 1 by default: guidance then only lowers
        a gene below its expected count under the cell's label, where the label says it is less expressed than the
        cell alone suggests, and never raises one above it, so a wrong label cannot add another type's genes
        (measured in the docs' table of defaults). The other verbs: no cap.
    attrition, attrition_kind
        Attrition strength and kind (``"rescale"``, ``"cap"``, ``"constant"`` or ``"none"``; see
        :func:`~countsdiff_sc.diffusion.attrition_rate`). ``"rescale"`` needs a strength in [0, 1].
    precision
        ``"32"``, ``"bf16"`` or ``"16"`` (GPU only): the network's precision under ``torch.autocast``; the counts
        stay exact.
    batch_size
        Chains run at once (cells x draws).
    seed
        Random seed (a non-negative integer); the same seed gives the same draws on the same device and batch size.
        None draws one (recorded with the results).
    progress
        Show a progress bar; None (default) shows one when the call is long (more than a few seconds of work).

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> fast = cds.Sampler(n_steps=10, step_rule="trapezoid", seed=0)
    >>> fast.replace(seed=1).seed
    1
    """

    n_steps: int | None = None
    step_rule: str | StepRule | None = None
    time_grid: str | torch.Tensor | None = None
    resample_iters: int | None = None
    resample_jump: int | None = None
    known: Literal["path", "redraw"] | None = None
    guidance: float | Mapping[str, float] | None = None
    guidance_cap: float | None = None
    attrition: float | None = None
    attrition_kind: Literal["rescale", "cap", "constant", "none"] | None = None
    precision: Literal["32", "bf16", "16"] | None = None
    batch_size: int | None = None
    seed: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.n_steps is not None:
            set_(self, "n_steps", _check_int(self.n_steps, "n_steps", 1, MAX_STEPS))
        if self.step_rule is not None and not isinstance(self.step_rule, StepRule) and (
                not isinstance(self.step_rule, str) or self.step_rule not in STEP_RULES):
            raise ValueError(f"Unknown step_rule {self.step_rule!r}; choose one of {tuple(STEP_RULES)} or pass a "
                             "countsdiff_sc.diffusion.StepRule.")
        grid = self.time_grid
        if isinstance(grid, (torch.Tensor, np.ndarray, list, tuple)):
            u = torch.as_tensor(np.asarray(grid, dtype=np.float64))
            if u.ndim != 1 or u.numel() < 2 or not bool(torch.isfinite(u).all()) or float(u[0]) != 1.0 \
                    or float(u[-1]) != 0.0 or not bool((u[1:] < u[:-1]).all()):
                raise ValueError("time_grid as numbers must be a strictly decreasing sequence of fractions from 1 to 0 "
                                 f"(a chain from t_start runs through t_start * u), got {u.tolist()[:6]}.")
            if u.numel() - 1 > MAX_STEPS:
                raise ValueError(f"time_grid has {u.numel() - 1} steps; at most {MAX_STEPS:,} are allowed.")
            if self.n_steps is not None and self.n_steps != u.numel() - 1:
                raise ValueError(f"n_steps={self.n_steps} disagrees with the {u.numel() - 1} steps of time_grid; "
                                 "give one of them.")
            set_(self, "time_grid", u)
        elif grid is not None and grid not in GRIDS:
            raise ValueError(f"Unknown time_grid {grid!r}; choose one of {GRIDS} or give a tensor of fractions.")
        for name in ("resample_iters", "resample_jump", "batch_size"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _check_int(value, name, 1, MAX_STEPS if name != "batch_size" else None))
        if self.known is not None and self.known not in KNOWN_MODES:
            raise ValueError(f"known must be one of {KNOWN_MODES}, got {self.known!r}.")
        if self.guidance is not None:
            if isinstance(self.guidance, Mapping):
                for key, value in self.guidance.items():
                    _check_number(value, f"guidance[{key!r}]")
                set_(self, "guidance", dict(self.guidance))
            else:
                set_(self, "guidance", _check_number(self.guidance, "guidance"))
        if self.guidance_cap is not None:
            cap = self.guidance_cap
            if isinstance(cap, (bool, np.bool_)) or not isinstance(cap, numbers.Real):
                raise ValueError(f"guidance_cap must be None, a number >= 1 or math.inf (no cap), got {cap!r}.")
            check_guidance_cap(cap)  # the range rule, shared with the module (inf stays inf here: None = default)
            set_(self, "guidance_cap", float(cap))
        if self.attrition is not None:
            set_(self, "attrition", _check_number(self.attrition, "attrition"))
        if self.attrition_kind is not None and self.attrition_kind not in ATTRITION_KINDS:
            raise ValueError(f"Unknown attrition_kind {self.attrition_kind!r}; choose one of {ATTRITION_KINDS}.")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}.")
        if self.seed is not None:
            set_(self, "seed", _check_int(self.seed, "seed", 0, 2**63 - 1))
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise TypeError(f"progress must be True, False or None (automatic), got {self.progress!r}.")
        if self.attrition_kind == "rescale" and self.attrition is not None and self.attrition > 1:
            raise ValueError(f"attrition must lie in [0, 1] for attrition_kind='rescale', got {self.attrition}. For a "
                             "per-step death probability use attrition_kind='cap', for a rate 'constant'.")

    def replace(self, **changes: Any) -> Sampler:
        """A copy with some settings changed (validated like the constructor)."""
        return replace(self, **changes)

    def given(self) -> dict[str, Any]:
        """The settings that are not None."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def resolve(self, defaults: Sampler) -> Sampler:
        """Every setting left at None taken from ``defaults`` (a verb's defaults), validated together."""
        return replace(defaults, **self.given())

    def record(self) -> dict[str, Any]:
        """The settings as recorded in ``uns["countsdiff"]`` (plain, h5ad-writable values)."""
        out: dict[str, Any] = {}
        for name, value in self.given().items():
            if isinstance(value, StepRule):
                value = value.name or repr(value)
            elif isinstance(value, torch.Tensor):
                value = [float(v) for v in value]
            out[name] = value
        return out

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.given().items())
        return f"Sampler({given})"


def _table(**verbs: dict[str, Any]) -> dict[str, Sampler]:
    common = {"time_grid": "uniform", "known": "path", "guidance_cap": None, "precision": "32", "batch_size": 1024,
              "resample_iters": 1, "attrition_kind": "rescale"}
    return {verb: Sampler(**{**common, **settings}) for verb, settings in verbs.items()}


#: Each verb's default sampler, per model preset (``CountsDiffModel(preset=...)``). ``"denoise"`` is the chain of
#: ``impute(target="denoise")`` and of the expression methods; ``transfer`` also serves ``correct_batches``.
SAMPLER_DEFAULTS: dict[str, dict[str, Sampler]] = {
    "default": _table(
        impute=dict(n_steps=10, step_rule="trapezoid", resample_iters=2, guidance=0.5, attrition=0.02),
        denoise=dict(n_steps=10, step_rule="trapezoid", guidance=2.0, guidance_cap=1.0, attrition=0.0),
        sample=dict(n_steps=50, step_rule="euler", guidance=1.0, attrition=0.0),
        interpolate=dict(n_steps=30, step_rule="euler", guidance=1.0, attrition=0.0),
        transfer=dict(n_steps=50, step_rule="euler", guidance=1.0, attrition=0.0),
    ),
    "paper": _table(
        impute=dict(n_steps=19, step_rule="euler", guidance=0.5, attrition=0.02),
        denoise=dict(n_steps=50, step_rule="euler", guidance=1.0, attrition=0.0),
        sample=dict(n_steps=50, step_rule="euler", guidance=1.0, attrition=0.0),
        interpolate=dict(n_steps=30, step_rule="euler", guidance=1.0, attrition=0.0),
        transfer=dict(n_steps=50, step_rule="euler", guidance=1.0, attrition=0.0),
    ),
}

#: The verb keywords of 0.1 that are now Sampler settings (accepted for one release with a FutureWarning).
LEGACY_KEYWORDS = ("n_steps", "step_rule", "time_grid", "resample_iters", "resample_jump", "known", "guidance",
                   "guidance_cap", "attrition", "attrition_kind", "precision", "batch_size", "seed", "progress")


def sampler_for(verb: str, preset: str, sampler: Sampler | None, legacy: Mapping[str, Any] | None = None,
                stacklevel: int = 3, caller: str | None = None) -> Sampler:
    """The resolved sampler of one call: the user's ``sampler`` (and any 0.1 keywords) over the verb's defaults.

    Parameters
    ----------
    verb
        A key of the preset's table (``"impute"``, ``"denoise"``, ``"sample"``, ``"interpolate"``, ``"transfer"``).
    preset
        The model's preset.
    sampler
        The user's sampler, or None.
    legacy
        Keywords of 0.1 given to the verb (``n_steps=...``): each becomes a sampler setting, with a FutureWarning.
        A keyword that is not a sampler setting is a TypeError, as for any unknown argument.
    stacklevel
        Where the warning points (the user's line).
    caller
        The method the user called, as named in messages (default: ``verb``).

    Raises
    ------
    TypeError
        ``sampler`` is not a Sampler, or an unknown keyword.
    ValueError
        A 0.1 keyword and the sampler set the same setting differently, or a bad value.
    """
    if sampler is not None and not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a countsdiff_sc.Sampler, got {type(sampler).__name__}: e.g. "
                        "sampler=cds.Sampler(n_steps=10).")
    user = sampler or Sampler()
    legacy = dict(legacy or {})
    name = caller or verb
    if legacy:
        unknown = sorted(k for k in legacy if k not in LEGACY_KEYWORDS)
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword argument(s) {unknown}.")
        spelled = ", ".join(f"{k}={v!r}" for k, v in legacy.items())
        warnings.warn(f"Passing {spelled} to {name}() is deprecated and will stop working in 0.3: pass "
                      f"sampler=countsdiff_sc.Sampler({spelled}) instead.", FutureWarning, stacklevel=stacklevel)
        clash = {k: (v, getattr(user, k)) for k, v in legacy.items()
                 if getattr(user, k) is not None and not _same(getattr(user, k), v)}
        if clash:
            raise ValueError(f"{name}(): the keyword(s) and the sampler disagree on {sorted(clash)}; set each once, "
                             "in the sampler.")
        user = user.replace(**{k: v for k, v in legacy.items() if v is not None})
    return user.resolve(SAMPLER_DEFAULTS[preset][verb])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return a == b


def defaults_table(preset: str = "default"):
    """The default sampler of every verb for a preset, as a DataFrame (verbs x settings).

    Examples
    --------
    >>> defaults_table().loc["impute", "step_rule"]
    'trapezoid'
    """
    import pandas as pd

    rows = {verb: s.record() for verb, s in SAMPLER_DEFAULTS[preset].items()}
    return pd.DataFrame(rows).T
