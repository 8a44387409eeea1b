"""The condition space of a CountsDiffModel: what the model can be conditioned on, read from its scvi-tools registry.

A model is conditioned on up to three kinds of *condition slots*, in this order everywhere (network inputs, guidance
strengths, code matrices): the label (``labels_key``), each categorical covariate (``categorical_covariate_keys``)
and one vector slot: the vector condition (``condition_obsm_key``) and / or, for a depth-conditioned model, the
cell's depth (named ``"depth"``). :class:`ConditionSpace` holds their names and categories and turns
what a user passes (label names, covariate values, guidance dicts, condition arrays) into what the module takes
(integer codes, per-slot strengths, float tensors). It needs the registry alone, so it is testable without training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager

from countsdiff_sc.module import CONDITION_KEY

__all__ = ["ConditionSpace"]


@dataclass(frozen=True)
class ConditionSpace:
    """Names and categories of a model's condition slots (labels, categorical covariates, vector condition).

    Parameters
    ----------
    labels_key
        obs column of the labels, or None.
    label_categories
        Label categories in code order (empty without labels).
    covariate_categories
        ``{obs column: categories in code order}`` of the categorical covariates.
    obsm_key
        obsm key of the vector condition, or None.
    n_continuous
        Dimension of the vector condition (0 without one).
    depth
        Whether the model is conditioned on depth (part of the vector slot, after the obsm condition).
    independent
        Whether the model learned the single-condition rates (``uncond_mode="independent"``), which unequal
        per-condition guidance strengths need; with False a guidance dict that resolves to unequal strengths is
        refused by :meth:`guidance_strengths` with a message that names what to pass.

    Examples
    --------
    >>> space = ConditionSpace("cell_type", ["B", "T"], {"batch": ["b0", "b1"]})
    >>> space.n_cats_per_cov, space.slot_names()
    ([2, 2], [('cell_type',), ('batch',)])
    >>> space.guidance_strengths({"batch": 0.0})
    [1.0, 0.0]
    """

    labels_key: str | None = None
    label_categories: list[str] = field(default_factory=list)
    covariate_categories: dict[str, list[str]] = field(default_factory=dict)
    obsm_key: str | None = None
    n_continuous: int = 0
    independent: bool = True
    depth: bool = False

    @classmethod
    def from_registry(cls, registry: Mapping[str, Any], independent: bool = True, depth: bool = False
                      ) -> ConditionSpace:
        """Build the space from a model's ``registry_`` (the setup arguments and the field registries), whether
        its module learned single-condition rates (``independent``) and whether it is conditioned on depth."""
        setup_args = registry["setup_args"]
        fields = registry["field_registries"]
        labels_key = setup_args.get("labels_key")
        labels: list[str] = []
        if labels_key is not None:
            labels = [str(c) for c in fields[REGISTRY_KEYS.LABELS_KEY]["state_registry"]["categorical_mapping"]]
        covariates: dict[str, list[str]] = {}
        if REGISTRY_KEYS.CAT_COVS_KEY in fields:
            state = fields[REGISTRY_KEYS.CAT_COVS_KEY]["state_registry"]
            covariates = {k: [str(c) for c in state["mappings"][k]] for k in state.get("field_keys", [])}
        n_continuous = 0
        if CONDITION_KEY in fields:
            n_continuous = int(fields[CONDITION_KEY]["summary_stats"][f"n_{CONDITION_KEY}"])
        return cls(labels_key, labels, covariates, setup_args.get("condition_obsm_key"), n_continuous, independent,
                   depth)

    # ------------------------------------------------------------------ description
    @property
    def use_labels(self) -> bool:
        """Whether the model is conditioned on labels."""
        return self.labels_key is not None

    @property
    def n_cats_per_cov(self) -> list[int]:
        """Number of categories of each categorical slot, labels first."""
        n = [len(self.label_categories)] if self.use_labels else []
        return n + [len(c) for c in self.covariate_categories.values()]

    @property
    def has_vector(self) -> bool:
        """Whether the model has a vector slot (an obsm condition and / or depth)."""
        return self.n_continuous > 0 or self.depth

    def names(self) -> list[str]:
        """Display names of the slots (the vector condition as ``obsm['key']``, depth as ``depth``)."""
        names = [self.labels_key] if self.use_labels else []
        names += list(self.covariate_categories)
        vector = ([f"obsm[{self.obsm_key!r}]"] if self.obsm_key and self.n_continuous else []) + (
            ["depth"] if self.depth else [])
        if vector:
            names.append(" + ".join(vector))
        return names

    def slot_names(self) -> list[tuple[str, ...]]:
        """Names by which each slot can be addressed (the vector slot by its obsm key, ``obsm['key']`` or
        ``"depth"``)."""
        slots: list[tuple[str, ...]] = [(self.labels_key,)] if self.use_labels else []
        slots += [(k,) for k in self.covariate_categories]
        if self.has_vector:
            names = (self.obsm_key, f"obsm[{self.obsm_key!r}]") if self.n_continuous > 0 else ()
            slots.append((*names, "depth") if self.depth else names)
        return slots

    # ------------------------------------------------------------------ registered data -> codes
    def codes(self, adata_manager: AnnDataManager) -> np.ndarray | None:
        """Integer codes ``(n_obs, n_cat)`` of the categorical slots of a registered object, labels first."""
        cols = []
        if self.use_labels:
            cols.append(np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1, 1))
        if self.covariate_categories:
            cols.append(np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.CAT_COVS_KEY)))
        return np.concatenate(cols, axis=1).astype(np.int64) if cols else None

    def table(self, adata_manager: AnnDataManager) -> np.ndarray:
        """Unique combinations of categorical codes in a registered object, with their counts as last column."""
        codes = self.codes(adata_manager)
        if codes is None:
            return np.zeros((0, 1), dtype=np.int64)
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        return np.concatenate([uniq, counts[:, None]], axis=1).astype(np.int64)

    def check_trained(self, codes: np.ndarray | None, table: np.ndarray | None,
                      columns: Sequence[int] | None = None) -> None:
        """Refuse categories no training cell had (an unused category at setup has an untrained embedding).

        Parameters
        ----------
        codes
            Codes ``(n, n_cat)`` about to be used (or None).
        table
            The training combinations (:meth:`table`); None or empty skips the check (a model saved without it).
        columns
            The slots ``codes`` holds, in the order of its columns (default: all slots).
        """
        if codes is None or table is None or len(table) == 0:
            return
        slots = list(range(codes.shape[1])) if columns is None else list(columns)
        names = ([self.labels_key] if self.use_labels else []) + list(self.covariate_categories)
        cats = ([self.label_categories] if self.use_labels else []) + list(self.covariate_categories.values())
        for j, slot in enumerate(slots):
            seen = set(np.asarray(table)[:, slot].tolist())
            unseen = sorted({int(c) for c in np.unique(codes[:, j])} - seen)
            if unseen:
                bad = [cats[slot][c] for c in unseen]
                raise ValueError(f"{names[slot]} value(s) {bad} have no training cell (a category of the setup "
                                 "column without cells): the model never learned them. Use a value seen in training: "
                                 f"{[cats[slot][c] for c in sorted(seen)]}.")

    # ------------------------------------------------------------------ user arguments -> codes
    def resolve(
        self,
        n: int,
        labels: str | Sequence[str] | None,
        covariates: Mapping[str, str | Sequence[str]] | None,
        rng: np.random.Generator,
        table: np.ndarray | None,
    ) -> tuple[np.ndarray | None, pd.DataFrame]:
        """Turn user-facing labels / covariates into category codes; slots not given are drawn.

        Slots that are not given are drawn from their co-occurrence with the given ones in ``table`` (the training
        cells' combinations, :meth:`table`).

        Returns
        -------
        The code matrix ``(n, n_cat)`` (labels first), or None for unconditional sampling, and the obs frame of the
        ``n`` cells with one categorical column per slot.
        """
        if covariates is not None and not isinstance(covariates, Mapping):
            raise TypeError(f"covariates must be a dict {{covariate: value or one value per cell}}, got "
                            f"{type(covariates).__name__}: e.g. covariates={{'batch': 'b1'}}.")
        covariates = dict(covariates or {})
        unknown = set(covariates) - set(self.covariate_categories)
        if unknown:
            raise KeyError(
                f"Unknown covariates {sorted(unknown)}; the model was set up with {list(self.covariate_categories)}."
            )
        if labels is not None and not self.use_labels:
            raise ValueError("The model was set up without labels_key, so it cannot sample by label.")
        index = [f"generated_{i}" for i in range(n)]
        if labels is None and not covariates:
            return None, pd.DataFrame(index=index)
        columns: list[tuple[str, list[str], Any]] = []
        if self.use_labels:
            columns.append((self.labels_key, self.label_categories, labels))
        columns += [(k, cats, covariates.get(k)) for k, cats in self.covariate_categories.items()]
        codes = np.full((n, len(columns)), -1, dtype=np.int64)
        for j, (name, cats, value) in enumerate(columns):
            if value is not None:
                codes[:, j] = _lookup(name, cats, value, n)
        unspecified = (codes < 0).any(axis=0)
        if unspecified.any():
            if table is None or len(table) == 0:
                raise ValueError("Specify every condition: this model was loaded without its condition table.")
            _draw_unspecified(codes, unspecified, table, rng)
        obs = pd.DataFrame(index=index)
        for j, (name, cats, _) in enumerate(columns):
            obs[name] = pd.Categorical.from_codes(codes[:, j], categories=cats)
        return codes, obs

    def vector_condition(self, conditions: Any, n: int) -> torch.Tensor | None:
        """Check a user's vector condition ``(n, n_continuous)`` and return it as a float32 tensor (or None)."""
        if self.n_continuous == 0:
            if conditions is not None:
                raise ValueError("The model was set up without condition_obsm_key; do not pass conditions.")
            return None
        if conditions is None:
            return None
        arr = np.asarray(conditions, dtype=np.float32)
        if arr.shape != (n, self.n_continuous):
            raise ValueError(
                f"conditions must have shape ({n}, {self.n_continuous}) (cells x condition dims), got {arr.shape}."
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"conditions hold {int((~np.isfinite(arr)).sum())} NaN or infinite values; the vector "
                             "condition must be finite.")
        return torch.from_numpy(arr)

    def guidance_strengths(self, guidance: float | Mapping[str, float]) -> float | list[float]:
        """A float stays a float; a dict ``{slot name: strength}`` becomes one strength per slot.

        Conditions a dict leaves out keep strength 1.0 (the conditional rate), so on a model with labels and a
        covariate ``{"cell_type": 0.5}`` means ``cell_type`` at 0.5 and the covariate at 1.0. Unequal strengths need
        the single-condition rates of ``uncond_mode="independent"``; on a jointly trained model (``independent``
        False) such a dict is refused here, with the strengths it resolved to and the guidance to pass instead (one
        float for every condition, or a dict that names each condition with the same value). The vector condition
        takes part in that check only when the dict names it: a vector condition that is not given to ``sample``
        is dropped, and its strength does not matter.
        """
        if not isinstance(guidance, Mapping):
            g = float(guidance)
            if not math.isfinite(g) or g < 0:
                raise ValueError(f"guidance must be a non-negative number or a dict of them, got {guidance}.")
            return g
        slots = self.slot_names()
        known = [names[0] for names in slots]
        if not slots:
            raise ValueError("Per-covariate guidance needs a conditional model; this one was set up without "
                             "labels_key, categorical_covariate_keys or condition_obsm_key.")
        lookup = {name: i for i, names in enumerate(slots) for name in names}
        unknown = sorted(str(k) for k in guidance if k not in lookup)
        if unknown:
            raise ValueError(f"guidance names unknown condition(s) {unknown}; the model's conditions are {known}.")
        strengths = [1.0] * len(slots)
        for name, g in guidance.items():
            g = float(g)
            if not math.isfinite(g) or g < 0:
                raise ValueError(f"guidance[{name!r}] must be a non-negative number, got {g}.")
            strengths[lookup[name]] = g
        if self.depth and self.n_continuous == 0 and not any(n in guidance for n in slots[-1]) and len(slots) > 1:
            # the depth slot is not a condition a user names: it follows the strength of the first categorical slot
            strengths[-1] = strengths[0]
        if not self.independent:
            self._check_joint(guidance, strengths, slots)
        return strengths

    def _check_joint(self, guidance: Mapping[str, float], strengths: list[float], slots: list[tuple[str, ...]]) -> None:
        """Refuse unequal strengths on a jointly trained model: say which strengths the dict meant, what to pass."""
        named = {slots[i][0] for i, names in enumerate(slots) for name in names if name in guidance}
        checked = [i for i, names in enumerate(slots)
                   if i < len(self.n_cats_per_cov) or names[0] in named]  # the vector slot only when named
        values = {strengths[i] for i in checked}
        if len(values) <= 1:
            return
        meant = ", ".join(f"{slots[i][0]!r}: {strengths[i]:g}" for i in checked)
        given = sorted({float(g) for g in guidance.values()})
        fix = (f"pass guidance={given[0]:g} to guide every condition at {given[0]:g} (or name each condition in the "
               f"dict with that value)" if len(given) == 1 else "pass one strength for all conditions (a float)")
        raise ValueError(
            f"guidance={dict(guidance)!r} means the strengths {{{meant}}}: conditions left out of a guidance dict keep "
            "strength 1.0. Unequal strengths need the single-condition rates of a model trained with "
            f"uncond_mode='independent', and this model was trained with uncond_mode='joint'. Either {fix}, or "
            "train with CountsDiffModel(adata, uncond_mode='independent') for per-condition strengths."
        )


def _lookup(name: str, cats: list[str], value: Any, n: int) -> list[int]:
    """Codes of one slot's values (one value for all ``n`` cells, or one per cell)."""
    values = [value] * n if isinstance(value, str) or np.isscalar(value) else list(value)
    if len(values) != n:
        raise ValueError(f"{name}: got {len(values)} values for {n} cells to generate.")
    index = {c: i for i, c in enumerate(cats)}
    missing = sorted({str(v) for v in values} - set(index))
    if missing:
        raise ValueError(f"Unknown {name} value(s) {missing}. Known values: {cats}.")
    return [index[str(v)] for v in values]


def _draw_unspecified(codes: np.ndarray, unspecified: np.ndarray, table: np.ndarray, rng: np.random.Generator) -> None:
    """Fill the unspecified columns of ``codes`` in place, drawn from the training combinations matching each row."""
    combos, weights = table[:, :-1], table[:, -1].astype(float)
    spec = ~unspecified
    free = np.flatnonzero(unspecified)
    keys, inverse = np.unique(codes[:, spec], axis=0, return_inverse=True)
    for g, key in enumerate(keys):
        rows = np.flatnonzero(inverse.ravel() == g)
        match = (combos[:, spec] == key).all(axis=1) if spec.any() else np.ones(len(combos), bool)
        pool = np.flatnonzero(match) if match.any() else np.arange(len(combos))
        pick = rng.choice(pool, size=len(rows), p=weights[pool] / weights[pool].sum())
        codes[np.ix_(rows, free)] = combos[np.ix_(pick, free)]
