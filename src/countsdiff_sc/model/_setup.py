"""Registration of a user's AnnData / MuData with CountsDiffModel (scvi-tools fields), and its checks."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    MuDataCategoricalJointObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataObsmField,
    ObsmField,
)

from countsdiff_sc._utils import check_counts, get_matrix, iter_row_blocks, rows_per_block, stored_values, to_dense
from countsdiff_sc.module import CONDITION_KEY, MASK_KEY, VALID_KEY, cell_depth

from ._results import check_gene_names

__all__ = ["SetupMixin", "check_training_data", "distrusted_share", "gene_stats", "training_depths"]


def check_bool_layer(x: Any, where: str, meaning: str) -> np.ndarray:
    """Cheap check that a layer is boolean-like (only stored values of sparse matrices are read); returns them."""
    values = stored_values(x)
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {values.dtype}; expected a boolean layer ({meaning}).")
    bad = int(np.count_nonzero((values != 0) & (values != 1)))
    if bad:
        raise ValueError(f"{where} must be boolean ({meaning}); {bad} entries are neither 0 nor 1.")
    return values


def check_valid_layer(x: Any, where: str) -> None:
    """A validity layer: boolean-like and trusting at least one entry."""
    values = check_bool_layer(x, where, "True = trusted entry")
    if not np.any(values):
        raise ValueError(f"{where} marks no entry as trusted (all False): a model would learn nothing. Check how it "
                         "was made (True = trusted entry), e.g. countsdiff_sc.pp.mark_dropouts.")


def check_mask_layer(x: Any, where: str) -> None:
    """A mask of held-out entries: boolean-like and not holding out every entry."""
    values = check_bool_layer(x, where, "True = held out")
    n_true = int(np.count_nonzero(values))
    if n_true == int(np.prod(x.shape)):
        raise ValueError(f"{where} holds out every entry (all True): a model would learn nothing.")


def check_obs_column(obs: Any, key: str, where: str) -> None:
    """A categorical condition column: present and without missing values (named, with the fix)."""
    if key not in obs.columns:
        raise KeyError(f"Column {key!r} not found in {where}. Available columns: {list(obs.columns)}.")
    n_missing = int(obs[key].isna().sum())
    if n_missing:
        raise ValueError(f"{where}[{key!r}] has {n_missing} missing values (NaN). Every cell needs a value: fill them "
                         f"(e.g. with 'unknown') or drop those cells, e.g. adata = adata[adata.obs[{key!r}].notna()]"
                         ".copy().")


def _as_key_list(keys: Any, name: str) -> list[str] | None:
    """A list of obs columns; one column name given as a string becomes a one-element list."""
    if keys is None or isinstance(keys, list):
        return keys
    if isinstance(keys, str):
        return [keys]
    if isinstance(keys, (tuple, set)) or hasattr(keys, "tolist"):
        return [str(k) for k in keys]
    raise TypeError(f"{name} must be a list of obs column names, got {type(keys).__name__}.")


def check_condition_obsm(adata: ad.AnnData, key: str) -> None:
    """An obsm entry usable as a vector condition: present, 2-d, finite numbers."""
    if key not in adata.obsm:
        raise KeyError(f"obsm key {key!r} not found. Available obsm keys: {list(adata.obsm.keys())}.")
    arr = to_dense(adata.obsm[key])
    if arr.ndim != 2:
        raise ValueError(f"adata.obsm[{key!r}] must be 2-dimensional (n_obs, n_features), got {arr.shape}.")
    if arr.dtype.kind not in "biuf" or not np.isfinite(arr).all():
        raise ValueError(f"adata.obsm[{key!r}] must hold finite numbers.")


def _check_shape_and_keys(adata: Any, labels_key: str | None, covariate_keys: list[str] | None) -> None:
    """An object with cells and genes, and condition columns named once each."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata has {adata.n_obs} cells x {adata.n_vars} genes; a model needs at least one of each "
                         "(check the filtering that produced it).")
    keys = ([labels_key] if labels_key else []) + list(covariate_keys or [])
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"Condition column(s) {repeated} given more than once (labels_key and "
                         "categorical_covariate_keys together): name each obs column once.")
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ValueError(f"Condition columns must be non-empty obs column names, got {key!r}.")


def gene_stats(adata_manager: AnnDataManager) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of every gene over the trusted entries (valid, not held out) of the registered cells.

    Accumulated over blocks of cells, so a backed (on-disk) count matrix is never loaded whole.
    """
    x = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    registry = adata_manager.data_registry
    w_all = adata_manager.get_from_registry(VALID_KEY) if VALID_KEY in registry else None
    m_all = adata_manager.get_from_registry(MASK_KEY) if MASK_KEY in registry else None
    n = np.zeros(x.shape[1])
    s1 = np.zeros(x.shape[1])
    s2 = np.zeros(x.shape[1])
    for start, block in iter_row_blocks(x, rows_per_block(x.shape[1])):
        xb = to_dense(block, np.float64)
        rows = slice(start, start + xb.shape[0])
        wb = np.ones(xb.shape, bool) if w_all is None else to_dense(w_all[rows]).astype(bool)
        if m_all is not None:
            wb &= ~to_dense(m_all[rows]).astype(bool)
        n += wb.sum(axis=0)
        xb = np.where(wb, xb, 0.0)
        s1 += xb.sum(axis=0)
        s2 += (xb**2).sum(axis=0)
    n = np.maximum(n, 1.0)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(var, dtype=torch.float32)


def mean_trusted_per_cell(adata_manager: AnnDataManager) -> float:
    """Mean number of trusted entries (valid, not held out) per registered cell (at least 1), read in blocks."""
    x = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    registry = adata_manager.data_registry
    valid = adata_manager.get_from_registry(VALID_KEY) if VALID_KEY in registry else None
    heldout = adata_manager.get_from_registry(MASK_KEY) if MASK_KEY in registry else None
    if valid is None and heldout is None:
        return float(x.shape[1])
    n_obs, n_vars = x.shape
    n_trusted, step = 0, rows_per_block(n_vars)
    for start in range(0, n_obs, step):  # only the layers are read, never the counts
        rows = slice(start, min(n_obs, start + step))
        keep = np.ones((rows.stop - start, n_vars), bool) if valid is None else to_dense(valid[rows]).astype(bool)
        if heldout is not None:
            keep &= ~to_dense(heldout[rows]).astype(bool)
        n_trusted += int(np.count_nonzero(keep))
    return max(1.0, n_trusted / max(n_obs, 1))


def check_training_data(model: Any) -> None:
    """At the start of training: the registered counts are still counts (not normalised in place after setup), and
    the validity layer, if any, trusts at least one entry (otherwise the loss is 0 and nothing is learned)."""
    manager = model.adata_manager
    x = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    valid = manager.get_from_registry(VALID_KEY) if VALID_KEY in manager.data_registry else None
    heldout = manager.get_from_registry(MASK_KEY) if MASK_KEY in manager.data_registry else None
    n_trusted = 0
    for start, block in iter_row_blocks(x, rows_per_block(x.shape[1])):
        check_counts(block, where="the registered counts (changed since setup_anndata?)")
        rows = slice(start, start + block.shape[0])
        keep = np.ones(block.shape, bool) if valid is None else to_dense(valid[rows]).astype(bool)
        if heldout is not None:
            keep &= ~to_dense(heldout[rows]).astype(bool)
        n_trusted += int(np.count_nonzero(keep))
    if n_trusted == 0:
        args = model.registry_["setup_args"]
        raise ValueError(f"No entry is left to train on: the validity layer {args.get('valid_layer')!r} and the mask "
                         f"{args.get('mask_layer')!r} exclude every entry. Check how they were made (valid: True = "
                         "trusted; mask: True = held out).")


def distrusted_share(adata_manager: AnnDataManager) -> float:
    """Share of the registered entries the validity layer distrusts (0 without one), read in blocks."""
    registry = adata_manager.data_registry
    if VALID_KEY not in registry:
        return 0.0
    valid = adata_manager.get_from_registry(VALID_KEY)
    n_obs, n_vars = valid.shape
    bad, step = 0, rows_per_block(n_vars)
    for start in range(0, n_obs, step):
        bad += int(np.count_nonzero(~to_dense(valid[start:start + step]).astype(bool)))
    return bad / max(1, n_obs * n_vars)


def training_depths(adata_manager: AnnDataManager, gene_means: torch.Tensor) -> np.ndarray:
    """Each registered cell's depth over its trusted entries (valid, not held out), read in blocks.

    The depth is :func:`~countsdiff_sc.module.cell_depth` with the genes' mean counts as profile (the module's
    ``prior_mean``): held-out values never enter it, so neither the restored depth of ``get_normalized_expression``
    nor the depth condition's standardisation depends on them.
    """
    x = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    registry = adata_manager.data_registry
    valid = adata_manager.get_from_registry(VALID_KEY) if VALID_KEY in registry else None
    heldout = adata_manager.get_from_registry(MASK_KEY) if MASK_KEY in registry else None
    profile = torch.as_tensor(gene_means, dtype=torch.float32).clamp_min(1e-3)
    out = []
    for start, block in iter_row_blocks(x, rows_per_block(x.shape[1])):
        rows = slice(start, start + block.shape[0])
        keep = None if valid is None else to_dense(valid[rows]).astype(bool)
        if heldout is not None:
            held = to_dense(heldout[rows]).astype(bool)
            keep = ~held if keep is None else keep & ~held
        xb = torch.from_numpy(to_dense(block, np.float32))
        out.append(cell_depth(xb, None if keep is None else torch.from_numpy(keep), profile).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


class SetupMixin:
    """``setup_anndata`` / ``setup_mudata`` of CountsDiffModel."""

    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        valid_layer: str | None = None,
        condition_obsm_key: str | None = None,
        mask_layer: str | None = None,
        **kwargs,
    ) -> None:
        """Register an AnnData of raw counts with the model class.

        Parameters
        ----------
        adata
            AnnData with raw integer UMI counts (dense, CSR or CSC; integer or float dtype).
        layer
            Layer holding the counts; ``adata.X`` when None.
        labels_key
            obs column of cell labels (e.g. cell type) to condition on.
        categorical_covariate_keys
            Further categorical obs columns to condition on (batch, donor, ...).
        valid_layer
            Boolean layer, False where a zero is a suspected dropout (see :func:`countsdiff_sc.pp.mark_dropouts`);
            invalid entries are excluded from the loss and from imputation.
        condition_obsm_key
            obsm key of a vector-valued condition (e.g. a continuous covariate or an embedding).
        mask_layer
            Boolean layer, True where a value is held out for evaluation (see :func:`countsdiff_sc.pp.mask_mcar`).
            Held-out entries never train: they are zeroed before the forward process (so the network never sees
            them) and left out of the loss, and :meth:`impute` fills them by default. Register the mask here when
            you score imputations of entries of the training cells (the benchmark protocol).

        Raises
        ------
        KeyError
            A layer, obs column or obsm key does not exist (the message lists the available ones).
        ValueError
            The counts are negative, not finite or not integers, or the validity layer is not boolean.
        """
        categorical_covariate_keys = _as_key_list(categorical_covariate_keys, "categorical_covariate_keys")
        setup_method_args = cls._get_setup_method_args(**locals())  # first: only the arguments are recorded
        if getattr(adata, "is_view", False):
            raise ValueError("adata is a view (a subset of another AnnData); scvi-tools registers only actual objects. "
                             "Pass adata.copy() (e.g. adata = adata[cells].copy()).")
        _check_shape_and_keys(adata, labels_key, categorical_covariate_keys)
        check_counts(get_matrix(adata, layer), where=f"adata.layers[{layer!r}]" if layer else "adata.X")
        check_gene_names(adata.var_names, "adata")
        for key in ([labels_key] if labels_key else []) + list(categorical_covariate_keys or []):
            check_obs_column(adata.obs, key, "adata.obs")
        if valid_layer is not None:
            check_valid_layer(get_matrix(adata, valid_layer), f"adata.layers[{valid_layer!r}]")
        if condition_obsm_key is not None:
            check_condition_obsm(adata, condition_obsm_key)
        if mask_layer is not None:
            check_mask_layer(get_matrix(adata, mask_layer), f"adata.layers[{mask_layer!r}]")
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
        ]
        if valid_layer is not None:
            fields.append(LayerField(VALID_KEY, valid_layer, is_count_data=False))
        if condition_obsm_key is not None:
            fields.append(ObsmField(CONDITION_KEY, condition_obsm_key))
        if mask_layer is not None:
            fields.append(LayerField(MASK_KEY, mask_layer, is_count_data=False))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        valid_layer: str | None = None,
        condition_obsm_key: str | None = None,
        modalities: dict[str, str] | None = None,
        mask_layer: str | None = None,
        **kwargs,
    ) -> None:
        """Register the RNA modality of a MuData (e.g. CITE-seq) with the model class.

        Parameters
        ----------
        mdata
            MuData object.
        rna_layer
            Layer of the RNA modality holding counts (``.X`` when None).
        labels_key, categorical_covariate_keys, valid_layer, condition_obsm_key, mask_layer
            As in :meth:`setup_anndata`; looked up in the modality named by ``modalities``.
        modalities
            Mapping from each argument name to the modality that holds it, e.g.
            ``{"rna_layer": "rna", "labels_key": "rna"}``. Arguments not listed default to the ``rna_layer``
            modality.
        """
        categorical_covariate_keys = _as_key_list(categorical_covariate_keys, "categorical_covariate_keys")
        setup_method_args = cls._get_setup_method_args(**locals())  # first: only the arguments are recorded
        if modalities is None or "rna_layer" not in modalities:
            raise ValueError("setup_mudata needs modalities={'rna_layer': <name of the RNA modality>, ...}.")
        rna_mod = modalities["rna_layer"]
        if rna_mod not in mdata.mod:
            raise KeyError(f"Modality {rna_mod!r} not in mdata.mod: {list(mdata.mod)}.")
        mod_of = {arg: modalities.get(arg, rna_mod) for arg in
                  ("labels_key", "categorical_covariate_keys", "valid_layer", "condition_obsm_key", "mask_layer")}
        check_counts(get_matrix(mdata.mod[rna_mod], rna_layer), where=f"mdata.mod[{rna_mod!r}] layer {rna_layer!r}")
        check_gene_names(mdata.mod[rna_mod].var_names, f"mdata.mod[{rna_mod!r}]")
        for key, arg in [(labels_key, "labels_key")] + [(k, "categorical_covariate_keys") for k in
                                                         (categorical_covariate_keys or [])]:
            if key is not None:
                frame = mdata.obs if mod_of[arg] is None else mdata.mod[mod_of[arg]].obs
                check_obs_column(frame, key, f"the obs of modality {mod_of[arg]!r}")
        if valid_layer is not None:
            check_valid_layer(get_matrix(mdata.mod[mod_of["valid_layer"]], valid_layer), f"layer {valid_layer!r}")
        if mask_layer is not None:
            check_mask_layer(get_matrix(mdata.mod[mod_of["mask_layer"]], mask_layer), f"layer {mask_layer!r}")
        fields = [
            MuDataLayerField(REGISTRY_KEYS.X_KEY, rna_layer, mod_key=rna_mod, is_count_data=True, mod_required=True),
            MuDataCategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=mod_of["labels_key"]),
            MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys, mod_key=mod_of["categorical_covariate_keys"]
            ),
        ]
        if valid_layer is not None:
            fields.append(MuDataLayerField(VALID_KEY, valid_layer, mod_key=mod_of["valid_layer"],
                                           is_count_data=False, mod_required=True))
        if condition_obsm_key is not None:
            fields.append(MuDataObsmField(CONDITION_KEY, condition_obsm_key, mod_key=mod_of["condition_obsm_key"],
                                          mod_required=True))
        if mask_layer is not None:
            fields.append(MuDataLayerField(MASK_KEY, mask_layer, mod_key=mod_of["mask_layer"], is_count_data=False,
                                           mod_required=True))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)
