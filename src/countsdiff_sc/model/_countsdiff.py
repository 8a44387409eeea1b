"""CountsDiffModel: the user-facing scvi-tools model of count diffusion (train, sample, impute, save / load)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
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
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from countsdiff_sc._utils import (
    as_bool_mask,
    check_counts,
    check_obs_key,
    check_writable,
    get_matrix,
    record_params,
    to_dense,
)
from countsdiff_sc.diffusion import ATTRITION_KINDS, PSchedule, generate, repaint
from countsdiff_sc.module import CONDITION_KEY, VALID_KEY, CountsDiffModule, DiffusionTrainingPlan

from ._training import DiffusionTrainingMixin

logger = logging.getLogger(__name__)

__all__ = ["CountsDiffModel"]



def _check_valid_layer(x: Any, where: str) -> None:
    """Cheap check that a validity layer is boolean-like (only stored values of sparse matrices are read)."""
    values = x.data if sp.issparse(x) else np.asarray(x)
    if values.dtype == bool:
        return
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {values.dtype}; expected a boolean layer (True = trusted entry).")
    bad = int(np.count_nonzero((values != 0) & (values != 1)))
    if bad:
        raise ValueError(f"{where} must be boolean (True = trusted entry); {bad} entries are neither 0 nor 1.")


class CountsDiffModel(DiffusionTrainingMixin, BaseModelClass):
    """Diffusion on the natural numbers for single-cell UMI counts (CountsDiff).

    The forward process thins counts binomially with a p-schedule, ``x_t ~ Binomial(x_0, p(t))``; a network
    predicts the number of thinned molecules ``y = x_0 - x_t`` and is trained with the weighted Poisson-type loss of
    Eq. 6 on valid entries. Sampling runs the reverse birth-death process with attrition (Prop. 3.2), random
    rounding (Sec. 3.5) and classifier-free guidance (Sec. 3.4). Imputation uses RePaint (Sec. 3.6).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (or a MuData registered with :meth:`setup_mudata`).
        May be None when the model is built from a saved registry (``load(path, adata=None)``).
    registry
        Registry of a saved model (used by :meth:`load`; users leave it None).
    backbone
        ``"mlp"`` (residual MLP, fast on CPU; default) or ``"transformer"`` (the paper's per-gene transformer).
    backbone_kwargs
        Keyword arguments of the backbone: ``n_hidden``, ``n_layers``, ``dim_emb``, ``dropout`` for the MLP;
        ``d_model``, ``n_heads``, ``n_layers``, ``dim_feedforward``, ``dropout`` for the transformer.
    schedule
        p-schedule: ``"cosine"`` (default), ``"blackout"``, ``"blackout_discrete"``, a config dict or a
        :class:`~countsdiff_sc.diffusion.PSchedule` (a ``CustomSchedule`` cannot be saved).
    loss_weighting
        ``"neg_dp"`` (default, ``w = -p'(t)``), ``"nll"`` or ``"constant"``.
    p_uncond
        Probability of dropping all conditions of a training cell (classifier-free guidance).
    ema_decay
        Decay of the EMA weights used for validation and sampling (0 disables).
    rate_baseline
        ``"none"`` (default) is the paper's plain ``y_hat = softplus(NN)``; ``"gamma_poisson"`` multiplies it by a
        per-gene empirical-Bayes baseline rate (see :class:`~countsdiff_sc.module.CountsDiffModule`).

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.cbmc()
    >>> cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    >>> model = cds.CountsDiffModel(adata)
    >>> model.train(max_epochs=5)
    >>> gen = model.sample(labels=["B"] * 100)
    """

    _module_cls = CountsDiffModule
    _training_plan_cls = DiffusionTrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        backbone: Literal["mlp", "transformer"] = "mlp",
        backbone_kwargs: dict | None = None,
        schedule: str | dict | PSchedule = "cosine",
        loss_weighting: Literal["neg_dp", "nll", "constant"] = "neg_dp",
        p_uncond: float = 0.1,
        ema_decay: float = 0.999,
        rate_baseline: Literal["none", "gamma_poisson"] = "none",
    ):
        super().__init__(adata, registry)
        if isinstance(schedule, PSchedule) and schedule.name != "custom":
            schedule = schedule.config()
        setup_args = self.registry_["setup_args"]
        field_registries = self.registry_["field_registries"]
        use_labels = setup_args.get("labels_key") is not None
        n_cats_per_cov: list[int] = []
        if use_labels:
            n_cats_per_cov.append(len(self._label_categories()))
        if REGISTRY_KEYS.CAT_COVS_KEY in field_registries:
            n_cats_per_cov.extend(
                int(n) for n in field_registries[REGISTRY_KEYS.CAT_COVS_KEY]["state_registry"].get("n_cats_per_key", [])
            )
        n_continuous = 0
        if CONDITION_KEY in field_registries:
            n_continuous = int(field_registries[CONDITION_KEY]["summary_stats"][f"n_{CONDITION_KEY}"])
        gene_stats = None
        if adata is not None:
            gene_stats = self._gene_stats()
            counts_obj = adata
            if hasattr(adata, "mod"):  # MuData: the genes are those of the RNA modality
                counts_obj = adata.mod[setup_args["modalities"]["rna_layer"]]
            self.var_names_ = np.asarray(counts_obj.var_names).astype(str)
            self.condition_table_ = self._build_condition_table()
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            n_cats_per_cov=n_cats_per_cov,
            n_continuous=n_continuous,
            use_labels=use_labels,
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            schedule=schedule,
            loss_weighting=loss_weighting,
            p_uncond=p_uncond,
            ema_decay=ema_decay,
            rate_baseline=rate_baseline,
            gene_stats=gene_stats,
        )
        n_params = sum(p.numel() for p in self.module.net.parameters())
        self._model_summary_string = (
            f"CountsDiffModel: backbone={backbone}, schedule={self.module.schedule!r}, "
            f"loss_weighting={loss_weighting}, conditions={self._condition_names()}, "
            f"{self.summary_stats.n_vars} genes, {n_params:,} network parameters, ema_decay={ema_decay}."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        valid_layer: str | None = None,
        condition_obsm_key: str | None = None,
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

        Raises
        ------
        KeyError
            A layer, obs column or obsm key does not exist (the message lists the available ones).
        ValueError
            The counts are negative, not finite or not integers, or the validity layer is not boolean.
        """
        check_counts(get_matrix(adata, layer), where=f"adata.layers[{layer!r}]" if layer else "adata.X")
        for key in ([labels_key] if labels_key else []) + list(categorical_covariate_keys or []):
            check_obs_key(adata, key)
        if valid_layer is not None:
            _check_valid_layer(get_matrix(adata, valid_layer), f"adata.layers[{valid_layer!r}]")
        if condition_obsm_key is not None:
            cls._check_condition_obsm(adata, condition_obsm_key)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
        ]
        if valid_layer is not None:
            fields.append(LayerField(VALID_KEY, valid_layer, is_count_data=False))
        if condition_obsm_key is not None:
            fields.append(ObsmField(CONDITION_KEY, condition_obsm_key))
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
        **kwargs,
    ) -> None:
        """Register the RNA modality of a MuData (e.g. CITE-seq) with the model class.

        Parameters
        ----------
        mdata
            MuData object.
        rna_layer
            Layer of the RNA modality holding counts (``.X`` when None).
        labels_key, categorical_covariate_keys, valid_layer, condition_obsm_key
            As in :meth:`setup_anndata`; looked up in the modality named by ``modalities``.
        modalities
            Mapping from each argument name to the modality that holds it, e.g.
            ``{"rna_layer": "rna", "labels_key": "rna"}``. Arguments not listed default to the ``rna_layer``
            modality.
        """
        if modalities is None or "rna_layer" not in modalities:
            raise ValueError("setup_mudata needs modalities={'rna_layer': <name of the RNA modality>, ...}.")
        if modalities["rna_layer"] not in mdata.mod:
            raise KeyError(f"Modality {modalities['rna_layer']!r} not in mdata.mod: {list(mdata.mod)}.")
        rna_mod = modalities["rna_layer"]

        def mod_of(arg: str) -> str:
            return modalities.get(arg, rna_mod)

        rna = mdata.mod[rna_mod]
        check_counts(get_matrix(rna, rna_layer), where=f"mdata.mod[{rna_mod!r}] layer {rna_layer!r}")
        for key, arg in [(labels_key, "labels_key")] + [(k, "categorical_covariate_keys") for k in
                                                         (categorical_covariate_keys or [])]:
            if key is not None:
                frame = mdata.obs if mod_of(arg) is None else mdata.mod[mod_of(arg)].obs
                if key not in frame.columns:
                    raise KeyError(f"Column {key!r} not found in the obs of modality {mod_of(arg)!r}.")
        if valid_layer is not None:
            _check_valid_layer(get_matrix(mdata.mod[mod_of("valid_layer")], valid_layer), f"layer {valid_layer!r}")
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            MuDataLayerField(REGISTRY_KEYS.X_KEY, rna_layer, mod_key=rna_mod, is_count_data=True, mod_required=True),
            MuDataCategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=mod_of("labels_key")),
            MuDataCategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys, mod_key=mod_of("categorical_covariate_keys")
            ),
        ]
        if valid_layer is not None:
            fields.append(
                MuDataLayerField(VALID_KEY, valid_layer, mod_key=mod_of("valid_layer"), is_count_data=False,
                                 mod_required=True)
            )
        if condition_obsm_key is not None:
            fields.append(MuDataObsmField(CONDITION_KEY, condition_obsm_key, mod_key=mod_of("condition_obsm_key"),
                                          mod_required=True))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    @staticmethod
    def _check_condition_obsm(adata: ad.AnnData, key: str) -> None:
        if key not in adata.obsm:
            raise KeyError(f"obsm key {key!r} not found. Available obsm keys: {list(adata.obsm.keys())}.")
        arr = to_dense(adata.obsm[key])
        if arr.ndim != 2:
            raise ValueError(f"adata.obsm[{key!r}] must be 2-dimensional (n_obs, n_features), got {arr.shape}.")
        if arr.dtype.kind not in "biuf" or not np.isfinite(arr).all():
            raise ValueError(f"adata.obsm[{key!r}] must hold finite numbers.")

    def _gene_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of every gene over the valid entries of the registered training cells."""
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if VALID_KEY in self.adata_manager.data_registry:
            w = self.adata_manager.get_from_registry(VALID_KEY)
            w = (w.astype(bool).astype(np.float64) if sp.issparse(w) else np.asarray(w, dtype=np.float64))
        else:
            w = None
        xs = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, dtype=np.float64)
        if w is None:
            n = np.full(x.shape[1], float(x.shape[0]))
            s1 = np.asarray(xs.sum(axis=0)).ravel()
            s2 = np.asarray(xs.multiply(xs).sum(axis=0)).ravel() if sp.issparse(xs) else (xs**2).sum(axis=0)
        else:
            w = w.toarray() if sp.issparse(w) else w
            n = w.sum(axis=0)
            xw = xs.multiply(w) if sp.issparse(xs) else xs * w
            s1 = np.asarray(xw.sum(axis=0)).ravel()
            s2 = np.asarray((xw.multiply(xs) if sp.issparse(xw) else xw * xs).sum(axis=0)).ravel()
        n = np.maximum(n, 1.0)
        mean = s1 / n
        var = np.maximum(s2 / n - mean**2, 0.0)
        return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(var, dtype=torch.float32)

    # ------------------------------------------------------------------ registry helpers
    def _state(self, key: str) -> dict:
        return self.registry_["field_registries"][key]["state_registry"]

    def _label_categories(self) -> list[str]:
        return [str(c) for c in self._state(REGISTRY_KEYS.LABELS_KEY)["categorical_mapping"]]

    def _covariate_categories(self) -> dict[str, list[str]]:
        if REGISTRY_KEYS.CAT_COVS_KEY not in self.registry_["field_registries"]:
            return {}
        state = self._state(REGISTRY_KEYS.CAT_COVS_KEY)
        return {k: [str(c) for c in state["mappings"][k]] for k in state.get("field_keys", [])}

    def _condition_names(self) -> list[str]:
        setup_args = self.registry_["setup_args"]
        names = [setup_args["labels_key"]] if setup_args.get("labels_key") else []
        names += list(self._covariate_categories())
        if setup_args.get("condition_obsm_key"):
            names.append(f"obsm[{setup_args['condition_obsm_key']!r}]")
        return names

    def _categorical_codes(self, adata_manager: AnnDataManager) -> np.ndarray | None:
        """Integer codes (n_obs, n_cat) of the categorical conditions of a registered object, labels first."""
        cols = []
        if self.registry_["setup_args"].get("labels_key") is not None:
            cols.append(np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1, 1))
        if self._covariate_categories():
            cols.append(np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.CAT_COVS_KEY)))
        return np.concatenate(cols, axis=1).astype(np.int64) if cols else None

    def _build_condition_table(self) -> np.ndarray:
        """Unique combinations of categorical condition codes in the training data, with their counts."""
        codes = self._categorical_codes(self.adata_manager)
        if codes is None:
            return np.zeros((0, 1), dtype=np.int64)
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        return np.concatenate([uniq, counts[:, None]], axis=1).astype(np.int64)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["Adam", "AdamW"] = "AdamW",
        warmup_steps: int = 200,
        gradient_clip_val: float | None = 1.0,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        early_stopping: bool = False,
        early_stopping_patience: int = 20,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the denoiser with Lightning (paper Algorithm 1).

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells. When both ``max_epochs`` and ``max_steps`` are None, a
            heuristic aims at about 6,000 optimizer steps (between 20 and 400 epochs).
        max_steps
            Stop after this many optimizer steps (takes precedence over ``max_epochs`` when smaller).
        batch_size
            Cells per minibatch.
        lr, weight_decay, optimizer, warmup_steps
            Optimiser settings (linear warm-up over ``warmup_steps`` steps).
        gradient_clip_val
            Gradient-norm clipping (None disables it).
        train_size, validation_size, shuffle_set_split
            Cell split, as in scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience`` epochs.
        accelerator, devices
            Lightning accelerator and devices (``"cpu"``, ``"gpu"``, ...). ``strategy="ddp"`` and other
            :class:`lightning.pytorch.Trainer` arguments pass through ``trainer_kwargs``.
        datasplitter_kwargs
            Extra arguments of the data splitter (e.g. ``num_workers``).
        plan_kwargs
            Extra arguments of :class:`~countsdiff_sc.module.DiffusionTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer`
            (e.g. ``enable_progress_bar=False``, ``strategy="ddp"``).

        Notes
        -----
        The history (``model.history``) holds ``train_loss`` and ``validation_loss`` per epoch; validation uses
        the EMA weights.
        """
        self._train_diffusion(
            max_epochs=max_epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            optimizer=optimizer, warmup_steps=warmup_steps, gradient_clip_val=gradient_clip_val,
            train_size=train_size, validation_size=validation_size, shuffle_set_split=shuffle_set_split,
            early_stopping=early_stopping, early_stopping_patience=early_stopping_patience, accelerator=accelerator,
            devices=devices, datasplitter_kwargs=datasplitter_kwargs, plan_kwargs=plan_kwargs,
            default_steps=6000, max_default_epochs=400, **trainer_kwargs,
        )

    # ------------------------------------------------------------------ conditions for sampling
    def _resolve_conditions(
        self,
        n: int,
        labels: str | Sequence[str] | None,
        covariates: Mapping[str, str | Sequence[str]] | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray | None, pd.DataFrame]:
        """Turn user-facing labels / covariates into category codes; unspecified covariates are drawn.

        Returns the code matrix (labels first) or None for unconditional sampling, and the obs frame.
        """
        cov_cats = self._covariate_categories()
        label_key = self.registry_["setup_args"].get("labels_key")
        covariates = dict(covariates or {})
        unknown = set(covariates) - set(cov_cats)
        if unknown:
            raise KeyError(f"Unknown covariates {sorted(unknown)}; the model was set up with {list(cov_cats)}.")
        if labels is not None and not self.module.use_labels:
            raise ValueError("The model was set up without labels_key, so it cannot sample by label.")
        if labels is None and not covariates:
            return None, pd.DataFrame(index=[f"generated_{i}" for i in range(n)])
        columns: list[tuple[str, list[str], Any]] = []
        if self.module.use_labels:
            columns.append((label_key, self._label_categories(), labels))
        columns += [(k, cats, covariates.get(k)) for k, cats in cov_cats.items()]
        codes = np.full((n, len(columns)), -1, dtype=np.int64)
        for j, (name, cats, value) in enumerate(columns):
            if value is None:
                continue
            values = [value] * n if isinstance(value, str) or np.isscalar(value) else list(value)
            if len(values) != n:
                raise ValueError(f"{name}: got {len(values)} values for {n} cells to generate.")
            lookup = {c: i for i, c in enumerate(cats)}
            missing = sorted({str(v) for v in values} - set(lookup))
            if missing:
                raise ValueError(f"Unknown {name} value(s) {missing}. Known values: {cats}.")
            codes[:, j] = [lookup[str(v)] for v in values]
        # draw unspecified conditions from their co-occurrence with the specified ones in the training cells
        table = getattr(self, "condition_table_", None)
        unspecified = (codes < 0).any(axis=0)
        if unspecified.any():
            if table is None or len(table) == 0:
                raise ValueError("Specify every condition: this model was loaded without its condition table.")
            combos, weights = table[:, :-1], table[:, -1].astype(float)
            spec = ~unspecified
            keys, inverse = np.unique(codes[:, spec], axis=0, return_inverse=True)
            for g, key in enumerate(keys):
                rows = np.flatnonzero(inverse.ravel() == g)
                match = (combos[:, spec] == key).all(axis=1) if spec.any() else np.ones(len(combos), bool)
                pool = np.flatnonzero(match) if match.any() else np.arange(len(combos))
                pick = rng.choice(pool, size=len(rows), p=weights[pool] / weights[pool].sum())
                codes[np.ix_(rows, np.flatnonzero(unspecified))] = combos[np.ix_(pick, np.flatnonzero(unspecified))]
        obs = pd.DataFrame(index=[f"generated_{i}" for i in range(n)])
        for j, (name, cats, _) in enumerate(columns):
            obs[name] = pd.Categorical.from_codes(codes[:, j], categories=cats)
        return codes, obs

    def _check_obsm_condition(self, conditions: Any, n: int) -> torch.Tensor | None:
        if self.module.n_continuous == 0:
            if conditions is not None:
                raise ValueError("The model was set up without condition_obsm_key; do not pass conditions.")
            return None
        if conditions is None:
            return None
        arr = np.asarray(conditions, dtype=np.float32)
        if arr.shape != (n, self.module.n_continuous):
            raise ValueError(
                f"conditions must have shape ({n}, {self.module.n_continuous}) (cells x condition dims), "
                f"got {arr.shape}."
            )
        return torch.from_numpy(arr)

    def _generator(self, seed: int | None) -> tuple[torch.Generator, np.random.Generator, int]:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return gen, np.random.default_rng(int(seed)), int(seed)

    @staticmethod
    def _check_sampling_args(n_steps: int, guidance: float, attrition: float, attrition_kind: str) -> None:
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        if guidance < 0:
            raise ValueError(f"guidance must be non-negative, got {guidance}.")
        if attrition_kind not in ATTRITION_KINDS:
            raise ValueError(f"attrition_kind must be one of {ATTRITION_KINDS}, got {attrition_kind!r}.")
        if attrition < 0 or (attrition_kind == "rescale" and attrition > 1):
            raise ValueError(f"attrition must lie in [0, 1] for attrition_kind='rescale', got {attrition}.")

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def sample(
        self,
        n_samples: int | None = None,
        labels: str | Sequence[str] | None = None,
        covariates: Mapping[str, str | Sequence[str]] | None = None,
        conditions: np.ndarray | None = None,
        n_steps: int = 50,
        guidance: float = 1.0,
        attrition: float = 0.0,
        attrition_kind: Literal["rescale", "cap", "constant", "none"] = "rescale",
        seed: int | None = None,
        batch_size: int = 1024,
        progress: bool = True,
    ) -> ad.AnnData:
        """Generate cells (paper Algorithm 2), conditioned on labels / covariates or unconditionally.

        Parameters
        ----------
        n_samples
            Number of cells; may be omitted when ``labels`` (or a covariate) is a list, whose length it takes.
        labels
            One label for all cells or one per cell. None samples without a label condition.
        covariates
            ``{covariate: value or list}`` for covariates registered with ``categorical_covariate_keys``.
            Conditions that are not given are drawn from their co-occurrence with the given ones in the training
            cells (so ``labels=["B"] * 10`` draws batches in which B cells were seen). Give neither labels nor
            covariates for unconditional samples.
        conditions
            ``(n, d)`` array of the vector condition, if the model was set up with ``condition_obsm_key``.
        n_steps
            Number of reverse transitions.
        guidance
            Guidance strength ``g`` of ``y_c^g y_u^(1-g)``: 1 = conditional, 0 = unconditional, > 1 sharpens.
        attrition, attrition_kind
            Attrition strength and kind (``"rescale"``: ``sigma = attrition * sigma_max``; see
            :func:`~countsdiff_sc.diffusion.attrition_rate`).
        seed
            Random seed; the same seed gives the same cells on the same device.
        batch_size
            Cells generated at once.
        progress
            Show a progress bar.

        Returns
        -------
        AnnData of generated cells: integer counts (float32 CSR) in ``X``, the conditions in ``obs``, the genes of
        the training data as ``var_names`` and the settings in ``uns["countsdiff"]["sample"]``.
        """
        self._check_sampling_args(n_steps, guidance, attrition, attrition_kind)
        if n_samples is None:
            sized = [v for v in [labels, *(covariates or {}).values()] if v is not None and not isinstance(v, str)]
            if not sized:
                raise ValueError("Pass n_samples, or labels / covariates as one value per cell to generate.")
            n_samples = len(sized[0])
        n = int(n_samples)
        if n < 1:
            raise ValueError(f"n_samples must be positive, got {n_samples}.")
        gen, rng, seed = self._generator(seed)
        codes, obs = self._resolve_conditions(n, labels, covariates, rng)
        cont = self._check_obsm_condition(conditions, n)
        if cont is not None and codes is None and self.module.n_cats_per_cov:
            raise ValueError("With a vector condition, also give the categorical conditions (labels / covariates).")
        self.module.eval()
        device = self.device
        out = []
        n_batches = math.ceil(n / batch_size)
        for b in range(n_batches):
            sl = slice(b * batch_size, min(n, (b + 1) * batch_size))
            cat_b = None if codes is None else torch.from_numpy(codes[sl]).to(device)
            cont_b = None if cont is None else cont[sl].to(device)
            conditional = cat_b is not None or cont_b is not None

            def rate_fn(x, t, cat_b=cat_b, cont_b=cont_b, conditional=conditional):
                if not conditional:
                    return self.module.rate(x, t)
                return self.module.rate(x, t, cat_b, cont_b, guidance=guidance)

            x = generate(rate_fn, (sl.stop - sl.start, self.module.n_genes), self.module.schedule, n_steps,
                         attrition_kind, attrition, generator=gen, device=device,
                         progress=progress and n_batches == 1)
            out.append(x.cpu().numpy())
            if progress and n_batches > 1:
                logger.info("sampled batch %d / %d", b + 1, n_batches)
        counts = np.concatenate(out, axis=0).astype(np.float32)
        var = pd.DataFrame(index=pd.Index(getattr(self, "var_names_", [f"gene_{i}" for i in
                                                                       range(self.module.n_genes)]), dtype=str))
        result = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
        record_params(result, "sample", {"n_steps": n_steps, "guidance": guidance, "attrition": attrition,
                                         "attrition_kind": attrition_kind, "seed": seed})
        return result

    # ------------------------------------------------------------------ imputation
    @torch.inference_mode()
    def impute(
        self,
        adata: ad.AnnData | None = None,
        mask_layer: str = "countsdiff_mask",
        n_samples: int = 5,
        n_steps: int = 20,
        guidance: float = 0.5,
        attrition: float = 0.02,
        attrition_kind: Literal["rescale", "cap", "constant", "none"] = "rescale",
        resample_jump: int | None = None,
        resample_iters: int = 1,
        point_estimate: Literal["mean", "median"] = "mean",
        batch_size: int = 2048,
        seed: int | None = None,
        key_added: str = "countsdiff_imputed",
        samples_key: str = "countsdiff_samples",
        store_samples: bool = True,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Impute held-out entries with RePaint (paper Sec. 3.6), drawing ``n_samples`` imputations per cell.

        Masked entries follow the reverse process; every other entry is re-drawn at each step as
        ``Binomial(x_obs, p(s))``, the noised ground truth. Entries marked invalid in the registered
        ``valid_layer`` (suspected dropouts) are never imputed nor scored: they enter the network exactly as
        during training (as the zeros they are for the MLP; masked out as keys for the transformer). Only cells
        with at least one masked entry are processed.

        Parameters
        ----------
        adata
            AnnData with the training genes (set up with the model's registry automatically); the training data
            when None. A view is turned into an actual AnnData first (scvi-tools behaviour).
        mask_layer
            Boolean layer, True where the value is held out (see :func:`countsdiff_sc.pp.mask_mcar`).
        n_samples
            Number of RePaint draws per cell (the paper averages 5).
        n_steps
            Number of reverse transitions (paper: 20 time points).
        guidance
            Guidance strength (paper's best scRNA setting: 0.5); ignored for an unconditional model.
        attrition, attrition_kind
            Attrition (paper's best scRNA setting: ReMDM-rescale ``eta = 0.02``).
        resample_jump, resample_iters
            RePaint resampling: windows of ``resample_jump`` transitions run ``resample_iters`` times, re-noising
            by thinning back to the window start in between (not a restart; see
            :func:`~countsdiff_sc.diffusion.repaint`).
        point_estimate
            ``"mean"`` or ``"median"`` of the draws on masked entries.
        batch_size
            Rows processed at once (cells times draws).
        seed
            Random seed; the same seed gives the same draws on the same device.
        key_added
            Layer receiving the point estimate (float32; observed entries copied unchanged).
        samples_key
            obsm key receiving the draws (int32, ``n_obs x n_samples x n_vars``) when ``store_samples``.
        store_samples
            Store the draws (memory: 4 bytes x n_obs x n_samples x n_vars); set False for large data.
        progress
            Show a progress bar.

        Returns
        -------
        ``(imputed, samples)``: the float32 matrix written to ``layers[key_added]`` and the int32 draws (or None).
        The settings are recorded in ``uns["countsdiff"][key_added]``.

        Raises
        ------
        KeyError
            The mask layer is missing.
        ValueError
            Wrong mask shape or non-boolean mask, genes that do not match the model, bad settings, or a
            ``key_added`` / ``samples_key`` that names a layer / obsm entry the user owns (never overwritten).

        Warns
        -----
        UserWarning
            Masked entries that are invalid in the validity layer (they are dropped from the mask), or cells whose
            valid entries are all masked (their imputation then rests on their conditions alone).
        """
        self._check_sampling_args(n_steps, guidance, attrition, attrition_kind)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        if point_estimate not in ("mean", "median"):
            raise ValueError(f"point_estimate must be 'mean' or 'median', got {point_estimate!r}.")
        adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        if mask_layer not in adata.layers:
            raise KeyError(
                f"Mask layer {mask_layer!r} not found; available layers: {sorted(adata.layers.keys())}. Create one "
                "with countsdiff_sc.pp.mask_mcar / mask_mnar, or pass mask_layer=."
            )
        mask = as_bool_mask(adata.layers[mask_layer], adata.shape, f"adata.layers[{mask_layer!r}]")
        check_writable(adata, key_added, "layers")
        if store_samples:
            check_writable(adata, samples_key, "obsm")
        x_all = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        valid_all = None
        if VALID_KEY in manager.data_registry:
            valid_all = as_bool_mask(manager.get_from_registry(VALID_KEY), adata.shape, "the registered valid layer")
            bad = mask & ~valid_all
            if bad.any():
                warnings.warn(
                    f"{int(bad.sum())} masked entries are marked invalid (suspected dropouts) in the valid layer; "
                    "they are left out of the imputation and keep their observed value.",
                    UserWarning,
                    stacklevel=2,
                )
                mask &= valid_all
        n_valid = valid_all.sum(1) if valid_all is not None else np.full(adata.n_obs, adata.n_vars)
        all_masked = (mask.sum(1) == n_valid) & (n_valid > 0)
        if all_masked.any():
            warnings.warn(
                f"{int(all_masked.sum())} cells have all their valid entries masked; their imputation is a "
                "generation from their conditions alone.",
                UserWarning,
                stacklevel=2,
            )
        codes = self._categorical_codes(manager)
        cont_all = None
        if CONDITION_KEY in manager.data_registry:
            cont_all = np.asarray(to_dense(manager.get_from_registry(CONDITION_KEY)), dtype=np.float32)
        gen, _, seed = self._generator(seed)
        cells = np.flatnonzero(mask.any(axis=1))
        n_draws = int(n_samples)
        imputed = to_dense(x_all, np.float32).copy()
        samples = None
        if store_samples:
            samples = np.repeat(imputed.astype(np.int32)[:, None, :], n_draws, axis=1)
        cells_per_batch = max(1, batch_size // n_draws)
        device = self.device
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(cells), cells_per_batch), desc="imputing", disable=not progress):
            idx = cells[start : start + cells_per_batch]
            x_obs = torch.from_numpy(np.repeat(to_dense(x_all[idx], np.float32), n_draws, axis=0)).to(device)
            target = torch.from_numpy(np.repeat(mask[idx], n_draws, axis=0)).to(device)
            valid_b = None
            if valid_all is not None:
                valid_b = torch.from_numpy(np.repeat(valid_all[idx], n_draws, axis=0)).to(device)
            cat_b = None if codes is None else torch.from_numpy(np.repeat(codes[idx], n_draws, axis=0)).to(device)
            cont_b = None if cont_all is None else torch.from_numpy(np.repeat(cont_all[idx], n_draws, 0)).to(device)

            def rate_fn(x, t, cat_b=cat_b, cont_b=cont_b, valid_b=valid_b):
                return self.module.rate(x, t, cat_b, cont_b, valid=valid_b, guidance=guidance)

            draws = repaint(rate_fn, x_obs, target, self.module.schedule, n_steps, attrition_kind, attrition,
                            resample_jump, resample_iters, generator=gen)
            draws = draws.cpu().numpy().reshape(len(idx), n_draws, -1)
            est = draws.mean(axis=1) if point_estimate == "mean" else np.median(draws, axis=1)
            imputed[idx] = np.where(mask[idx], est, imputed[idx])
            if samples is not None:
                samples[idx] = draws.astype(np.int32)
        adata.layers[key_added] = imputed
        if samples is not None:
            adata.obsm[samples_key] = samples
        record_params(
            adata,
            key_added,
            {
                "mask_layer": mask_layer, "key_added": key_added, "samples_key": samples_key if store_samples else None,
                "n_samples": n_draws, "n_steps": n_steps, "guidance": guidance, "attrition": attrition,
                "attrition_kind": attrition_kind, "resample_jump": resample_jump, "resample_iters": resample_iters,
                "point_estimate": point_estimate, "seed": seed, "n_cells_imputed": len(cells),
                "n_entries_imputed": int(mask.sum()),
            },
        )
        return imputed, samples
