"""Input handling shared by the imputation baselines: counts, mask, validity, reference cells, output layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import as_bool_mask, check_counts, check_obs_key, check_writable, get_matrix, record_params, to_dense
from ..pp import ObsSelection, describe_selection, resolve_obs_selection


@dataclass
class ImputationInputs:
    """Dense views of what a baseline needs from the AnnData it imputes."""

    counts: np.ndarray  # float32 (n_obs, n_vars), a private copy; masked entries still hold the true values
    mask: np.ndarray  # bool, True = held out (unknown to the method)
    valid: np.ndarray | None  # bool, True = trusted entry; None = all trusted
    fill: np.ndarray  # bool, entries the baseline writes: mask & valid

    @property
    def observed_input(self) -> np.ndarray:
        """Counts with every held-out entry set to 0: all a method may look at for these cells."""
        return np.where(self.mask, np.float32(0), self.counts)


@dataclass
class Reference:
    """Reference (training) cells used to fit a baseline."""

    counts: np.ndarray  # float64 (n_ref, n_vars)
    masked: np.ndarray  # bool, held-out entries of the reference cells (never used)
    valid: np.ndarray | None  # bool or None
    obs: pd.DataFrame
    description: str

    @property
    def observed(self) -> np.ndarray:
        """Entries a baseline may learn from: not held out, and valid when a validity layer is used."""
        return ~self.masked if self.valid is None else (~self.masked & self.valid)


def where_layer(layer: str | None) -> str:
    """Human-readable location of a count matrix for error messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def load_inputs(
    adata: ad.AnnData, mask_layer: str, layer: str | None, valid_layer: str | None, key_added: str
) -> ImputationInputs:
    """Read and validate counts, mask and validity of ``adata``."""
    clashes = {"layer": layer, "mask_layer": mask_layer, "valid_layer": valid_layer}
    for name, value in clashes.items():
        if value is not None and value == key_added:
            raise ValueError(f"key_added={key_added!r} equals {name}=; choose another name so inputs are not replaced.")
    check_writable(adata, key_added, "layers")
    x = get_matrix(adata, layer)
    check_counts(x, where_layer(layer))
    counts = np.array(to_dense(x), dtype=np.float32, copy=True)
    mask = as_bool_mask(get_matrix(adata, mask_layer), adata.shape, f"adata.layers[{mask_layer!r}]")
    valid = None
    if valid_layer is not None:
        valid = as_bool_mask(get_matrix(adata, valid_layer), adata.shape, f"adata.layers[{valid_layer!r}]")
    fill = mask if valid is None else (mask & valid)
    return ImputationInputs(counts=counts, mask=mask, valid=valid, fill=fill)


def load_reference(
    adata: ad.AnnData,
    inputs: ImputationInputs,
    reference: ad.AnnData | ObsSelection | None,
    layer: str | None,
    mask_layer: str,
    valid_layer: str | None,
) -> Reference:
    """Resolve ``reference=`` (None, AnnData of training cells, or a cell selection of ``adata``)."""
    if reference is None:
        return Reference(
            counts=inputs.counts.astype(np.float64),
            masked=inputs.mask,
            valid=inputs.valid,
            obs=adata.obs,
            description="adata itself (entries not held out)",
        )
    if isinstance(reference, ad.AnnData):
        ref = reference
        if not ref.var_names.equals(adata.var_names):
            missing = adata.var_names.difference(ref.var_names)
            if len(missing):
                raise KeyError(
                    f"The reference AnnData lacks {len(missing)} of the {adata.n_vars} genes of adata "
                    f"(e.g. {list(missing[:5])}); both need the same var_names."
                )
            if not ref.var_names.is_unique:
                raise ValueError("The reference AnnData has duplicated var_names; call ref.var_names_make_unique().")
            ref = ref[:, adata.var_names]
        x = get_matrix(ref, layer)
        check_counts(x, "reference." + where_layer(layer).removeprefix("adata."))
        shape = (ref.n_obs, ref.n_vars)
        masked = np.zeros(shape, dtype=bool)
        if mask_layer in ref.layers:
            masked = as_bool_mask(ref.layers[mask_layer], shape, f"reference.layers[{mask_layer!r}]")
        valid = None
        if valid_layer is not None:
            if valid_layer not in ref.layers:
                raise KeyError(
                    f"valid_layer={valid_layer!r} is not a layer of the reference AnnData. Available layers: "
                    f"{sorted(ref.layers.keys()) or 'none'}. Run mark_dropouts on the reference too, or pass "
                    "valid_layer=None."
                )
            valid = as_bool_mask(ref.layers[valid_layer], shape, f"reference.layers[{valid_layer!r}]")
        return Reference(
            counts=to_dense(x, np.float64),
            masked=masked,
            valid=valid,
            obs=ref.obs,
            description=f"AnnData ({ref.n_obs} cells)",
        )
    rows = resolve_obs_selection(adata, reference, "reference")
    return Reference(
        counts=inputs.counts[rows].astype(np.float64),
        masked=inputs.mask[rows],
        valid=None if inputs.valid is None else inputs.valid[rows],
        obs=adata.obs.iloc[np.flatnonzero(rows)],
        description=describe_selection(reference, int(rows.sum())),
    )


def reference_labels(reference: Reference, labels_key: str, is_anndata: bool) -> pd.Series:
    """Labels of the reference cells, with a KeyError naming the right object when the column is missing."""
    if labels_key not in reference.obs.columns:
        owner = "reference.obs" if is_anndata else "adata.obs"
        raise KeyError(f"Column {labels_key!r} not found in {owner}. Available columns: {list(reference.obs.columns)}.")
    return reference.obs[labels_key]


def query_labels(adata: ad.AnnData, labels_key: str) -> pd.Series:
    """Labels of the cells to impute."""
    check_obs_key(adata, labels_key)
    return adata.obs[labels_key]


def write_output(
    adata: ad.AnnData,
    inputs: ImputationInputs,
    estimate: np.ndarray,
    key_added: str,
    params: dict[str, Any],
) -> np.ndarray:
    """Observed entries copied, ``fill`` entries from ``estimate``; write the float32 layer and the record."""
    out = inputs.counts.copy()
    out[inputs.fill] = np.asarray(estimate, dtype=np.float32)[inputs.fill]
    adata.layers[key_added] = out
    record_params(adata, key_added, {**params, "key_added": key_added, "n_imputed": int(inputs.fill.sum())})
    return out
