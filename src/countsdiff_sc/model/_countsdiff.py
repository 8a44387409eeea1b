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
    iter_row_blocks,
    record_params,
    rows_per_block,
    to_dense,
)
from countsdiff_sc.diffusion import ATTRITION_KINDS, PSchedule, generate, repaint, thin, time_grid, with_precision
from countsdiff_sc.module import CONDITION_KEY, VALID_KEY, CountsDiffModule, DiffusionTrainingPlan

from ._training import DiffusionTrainingMixin

logger = logging.getLogger(__name__)

__all__ = ["CountsDiffModel"]

#: Default interpolation weights of :meth:`CountsDiffModel.interpolate`: 0, 0.1, ..., 1.
_DEFAULT_WEIGHTS = tuple(float(a) for a in np.linspace(0.0, 1.0, 11))



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
        ``"auto"`` (default): ``"neg_dp"`` (``w = -p'(t)``, the paper's) for the cosine schedule and ``"nll"``
        (``w = -p'(t) / (1 - p(t))``) for the Blackout schedules, whose ``-p'(t)`` leaves the network untrained
        near ``t = 0``, where the sampler still adds molecules (see :func:`~countsdiff_sc.diffusion.loss_weight`);
        or ``"neg_dp"``, ``"nll"``, ``"constant"``.
    p_uncond
        Condition-dropout probability of a training cell (classifier-free guidance; see ``uncond_mode``).
    ema_decay
        Decay of the EMA weights used for validation and sampling (0 disables).
    rate_baseline
        ``"none"`` (default) is the paper's plain ``y_hat = softplus(NN)``; ``"gamma_poisson"`` multiplies it by a
        per-gene empirical-Bayes baseline rate (see :class:`~countsdiff_sc.module.CountsDiffModule`).
    uncond_mode
        ``"joint"`` (default, the paper's scheme): a training cell loses all its conditions together with
        probability ``p_uncond``. ``"independent"``: each condition (labels, every categorical covariate, the
        vector condition) is dropped independently with probability ``p_uncond``, and all of them together with
        probability ``p_uncond``; needed for per-covariate guidance with unequal strengths
        (``sample(guidance={...})``, see :meth:`sample`).

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
        loss_weighting: Literal["auto", "neg_dp", "nll", "constant"] = "auto",
        p_uncond: float = 0.1,
        ema_decay: float = 0.999,
        rate_baseline: Literal["none", "gamma_poisson"] = "none",
        uncond_mode: Literal["joint", "independent"] = "joint",
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
            uncond_mode=uncond_mode,
        )
        n_params = sum(p.numel() for p in self.module.net.parameters())
        self._model_summary_string = (
            f"CountsDiffModel: backbone={backbone}, schedule={self.module.schedule!r}, "
            f"loss_weighting={self.module.loss_weighting}, "
            f"conditions={self._condition_names()} ({uncond_mode} dropout), "
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
        """Mean and variance of every gene over the valid entries of the registered training cells.

        Accumulated over blocks of cells, so a backed (on-disk) count matrix is never loaded whole.
        """
        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        w_all = None
        if VALID_KEY in self.adata_manager.data_registry:
            w_all = self.adata_manager.get_from_registry(VALID_KEY)
        n = np.zeros(x.shape[1])
        s1 = np.zeros(x.shape[1])
        s2 = np.zeros(x.shape[1])
        for start, block in iter_row_blocks(x, rows_per_block(x.shape[1])):
            xb = to_dense(block, np.float64)
            if w_all is None:
                n += xb.shape[0]
            else:
                wb = to_dense(w_all[start : start + xb.shape[0]]).astype(bool)
                n += wb.sum(axis=0)
                xb = np.where(wb, xb, 0.0)
            s1 += xb.sum(axis=0)
            s2 += (xb**2).sum(axis=0)
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
            :class:`lightning.pytorch.Trainer` arguments pass through ``trainer_kwargs``; with a DDP strategy every
            process trains on its own shard of the cells (scvi-tools' distributed sampler), so ``batch_size`` is
            per process. Lightning's ``"ddp"`` re-runs the calling script for each process: call ``train`` from a
            script (guarded by ``if __name__ == "__main__"``), or use ``"ddp_notebook"`` in notebooks.
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

    def _check_sampling_args(
        self, n_steps: int, guidance: float | Mapping[str, float], attrition: float, attrition_kind: str
    ) -> float | list[float]:
        """Validate the reverse-process settings; returns the guidance in the form ``module.rate`` takes."""
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        if not isinstance(attrition_kind, str) or attrition_kind not in ATTRITION_KINDS:
            raise ValueError(
                f"Unknown attrition_kind {attrition_kind!r}; choose one of {ATTRITION_KINDS} (see "
                "countsdiff_sc.diffusion.attrition_rate)."
            )
        if not math.isfinite(float(attrition)) or attrition < 0:
            raise ValueError(f"attrition (the attrition strength eta) must be a non-negative number, got {attrition}.")
        if attrition_kind == "rescale" and attrition > 1:
            raise ValueError(
                f"attrition must lie in [0, 1] for attrition_kind='rescale' (sigma = attrition * sigma_max), got "
                f"{attrition}. For a per-step death probability use attrition_kind='cap', for a death rate per unit "
                "time attrition_kind='constant'."
            )
        return self._guidance_strengths(guidance)

    def _condition_slot_names(self) -> list[tuple[str, ...]]:
        """Names by which each condition slot (labels, categorical covariates, vector condition) can be addressed."""
        setup_args = self.registry_["setup_args"]
        slots: list[tuple[str, ...]] = []
        if self.module.use_labels:
            slots.append((setup_args["labels_key"],))
        slots += [(k,) for k in self._covariate_categories()]
        if self.module.n_continuous > 0:
            key = setup_args["condition_obsm_key"]
            slots.append((key, f"obsm[{key!r}]"))
        return slots

    def _guidance_strengths(self, guidance: float | Mapping[str, float]) -> float | list[float]:
        """A float stays a float; a dict becomes one strength per condition slot (unnamed slots get 1.0)."""
        if not isinstance(guidance, Mapping):
            g = float(guidance)
            if not math.isfinite(g) or g < 0:
                raise ValueError(f"guidance must be a non-negative number or a dict of them, got {guidance}.")
            return g
        slots = self._condition_slot_names()
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
        return strengths

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def sample(
        self,
        n_samples: int | None = None,
        labels: str | Sequence[str] | None = None,
        covariates: Mapping[str, str | Sequence[str]] | None = None,
        conditions: np.ndarray | None = None,
        n_steps: int = 50,
        guidance: float | Mapping[str, float] = 1.0,
        attrition: float = 0.0,
        attrition_kind: Literal["rescale", "cap", "constant", "none"] = "rescale",
        seed: int | None = None,
        batch_size: int = 1024,
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
    ) -> ad.AnnData:
        """Generate cells (paper Algorithm 2), conditioned on labels / covariates or unconditionally.

        Without labels, covariates and vector conditions the cells are drawn from the unconditional rate (every
        condition replaced by its null token, learned through condition dropout) and ``guidance`` has no effect.
        A vector condition that is not passed (``conditions=None``) is likewise replaced by its null token.

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
            One strength ``g`` for all conditions: the guided rate ``y_C^g y_u^(1-g)`` of paper Sec. 3.4
            (1 = conditional, 0 = unconditional, > 1 sharpens). Or a dict ``{condition: strength}`` naming the
            labels key, categorical covariate keys or the obsm condition key (conditions not named get 1.0): the
            compositional guidance of :meth:`~countsdiff_sc.module.CountsDiffModule.rate`,
            ``log y = log y_u + gbar (log y_C - log y_u) + sum_k (g_k - gbar) (log y_k - log y_u)`` with ``gbar``
            the mean strength and ``y_k`` the rate given condition ``k`` alone; equal strengths give exactly the
            single-strength rule. Unequal strengths need a model trained with ``uncond_mode="independent"``
            (a jointly trained model raises a ValueError).
        attrition, attrition_kind
            Attrition strength and kind: ``"rescale"`` (``sigma = attrition * sigma_max``, attrition in [0, 1]),
            ``"cap"`` (``sigma = min(attrition, sigma_max)``), ``"constant"`` (death rate ``attrition`` per unit
            time) or ``"none"``; see :func:`~countsdiff_sc.diffusion.attrition_rate`.
        seed
            Random seed; the same seed gives the same cells on the same device.
        batch_size
            Cells generated at once.
        precision
            ``"32"`` (default), ``"bf16"`` or ``"16"``: run the network under ``torch.autocast`` in that precision
            (the draws stay exact float32 counts); for GPUs with tensor cores. ``"16"`` needs a GPU.
        progress
            Show a progress bar.

        Returns
        -------
        AnnData of generated cells: integer counts (float32 CSR) in ``X``, the conditions in ``obs``, the genes of
        the training data as ``var_names`` and the settings in ``uns["countsdiff"]["sample"]``.

        Raises
        ------
        ValueError
            Unknown label / covariate values, a guidance dict naming unknown conditions (the message lists the
            model's), unequal per-condition strengths on a jointly trained model, an unknown ``attrition_kind`` or
            an attrition strength out of range.

        Examples
        --------
        >>> gen = model.sample(labels=["B"] * 100, guidance=1.5, attrition=0.01, seed=0)
        >>> gen = model.sample(labels=["B"] * 100, covariates={"batch": "b1"},
        ...                    guidance={"cell_type": 2.0, "batch": 0.0}, seed=0)  # uncond_mode="independent"
        >>> noise = model.sample(n_samples=100, seed=0)  # unconditional
        """
        strengths = self._check_sampling_args(n_steps, guidance, attrition, attrition_kind)
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
        if isinstance(guidance, Mapping) and codes is None and cont is None:
            raise ValueError("Per-covariate guidance needs conditions: give labels, covariates or conditions.")
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
                return self.module.rate(x, t, cat_b, cont_b, guidance=strengths)

            x = generate(with_precision(rate_fn, precision, device), (sl.stop - sl.start, self.module.n_genes),
                         self.module.schedule, n_steps,
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

    @torch.inference_mode()
    def interpolate(
        self,
        adata_source: ad.AnnData,
        source_label: str,
        target_label: str,
        weights: Sequence[float] | np.ndarray = _DEFAULT_WEIGHTS,
        t_start: float = 0.6,
        n_steps: int = 30,
        guidance: float = 1.0,
        attrition: float = 0.0,
        attrition_kind: Literal["rescale", "cap", "constant", "none"] = "rescale",
        n_cells: int | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
    ) -> ad.AnnData:
        """Move real cells of one label towards another along a path of mixed conditional rates.

        The cells of ``source_label`` in ``adata_source`` are thinned to ``t_start``,
        ``x_t ~ Binomial(x_0, p(t_start))`` (Eq. 4; one thinning per cell, shared by all weights), and the reverse
        process runs from ``t_start`` to 0 (Algorithm 2) with, for each weight ``a``, the rate

        ``log y = log y_u + g ((1 - a) log y_src + a log y_tgt - log y_u)``,

        the geometric mix ``y_src^(1-a) y_tgt^a`` of the source- and target-label rates, guided against the
        unconditional rate ``y_u`` with strength ``g`` as in paper Sec. 3.4 (``g = 1``: no unconditional pass).
        Every other condition (categorical covariates, vector condition) is kept from the source cell. The
        counts thinned away are the part of the cell the reverse process rewrites: a larger ``t_start`` moves
        cells further (``t_start = 1`` forgets the source cell entirely).

        Parameters
        ----------
        adata_source
            AnnData holding the source cells: the model's genes (any order; extra genes are ignored) in the
            registered counts layer, the labels column and, when registered, the covariate columns (covariates
            missing there are drawn from their co-occurrence with ``source_label`` in the training cells) and the
            obsm vector condition.
        source_label, target_label
            Labels (values of the model's ``labels_key``) of the start and end of the path.
        weights
            Interpolation weights ``a`` in [0, 1]; 0 keeps the source label, 1 is the target label.
        t_start
            Time in (0, 1] the source cells are noised to; with the cosine schedule a cell keeps a fraction
            ``p(t_start)`` of its molecules (0.35 at 0.6, 0.10 at 0.8, 0.02 at 0.9). Measured on CBMC
            (``benchmarks/results/generation.md``, tutorial 02): at 0.6 paths move steadily but only part of the
            way (CD14+ -> CD16+ monocytes: mean distance to the CD16+ centroid 13.7 -> 12.7 in 50 PCs); at 0.9 they
            reach the target (13.1 -> 9.0). Use 0.8-0.9 for distant cell types, 0.6 to stay close to the source.
        n_steps
            Number of reverse transitions from ``t_start`` to 0.
        guidance
            Guidance strength ``g`` (one float).
        attrition, attrition_kind
            Attrition strength and kind, as in :meth:`sample`.
        n_cells
            Number of source cells, drawn at random without replacement (all cells of ``source_label`` when None).
        seed
            Random seed; the same seed gives the same cells on the same device (and ``batch_size``).
        batch_size
            Rows (cells times weights) generated at once.
        precision
            ``"32"`` (default), ``"bf16"`` or ``"16"``: run the network under ``torch.autocast`` in that precision
            (the draws stay exact float32 counts); for GPUs with tensor cores. ``"16"`` needs a GPU.
        progress
            Show a progress bar.

        Returns
        -------
        AnnData of ``n_cells * len(weights)`` cells (grouped by weight, source cells in their original order
        within each group) with integer counts (float32 CSR) in ``X``, the model's genes as ``var_names``, and in
        ``obs``: ``interpolation_weight``, ``source_cell`` (obs name of the source cell), ``source_label``,
        ``target_label`` and the kept covariates. The settings are in ``uns["countsdiff"]["interpolation"]``.

        Raises
        ------
        ValueError
            The model has no labels, a label is unknown to the model or absent from ``adata_source``, weights
            outside [0, 1], genes of the model missing from ``adata_source``, or bad sampling settings.
        KeyError
            The labels column, the counts layer or the obsm condition is missing from ``adata_source``.

        Examples
        --------
        >>> path = model.interpolate(adata, "CD4 T", "B", weights=[0.0, 0.5, 1.0], t_start=0.6, n_cells=100, seed=0)
        >>> path.obs.groupby("interpolation_weight").size()
        """
        if not self.module.use_labels:
            raise ValueError("interpolate needs a model set up with labels_key; this model has no labels.")
        if isinstance(guidance, Mapping):
            raise ValueError("interpolate takes one guidance strength (a float), not a dict.")
        g = self._check_sampling_args(n_steps, guidance, attrition, attrition_kind)
        if not 0.0 < float(t_start) <= 1.0:
            raise ValueError(f"t_start must lie in (0, 1], got {t_start}.")
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
            raise ValueError(f"weights must be a non-empty list of numbers in [0, 1], got {np.asarray(weights)}.")
        if hasattr(adata_source, "mod"):
            raise ValueError("Pass the AnnData of the RNA modality (mdata.mod[...]) as adata_source, not a MuData.")
        labels_key = self.registry_["setup_args"]["labels_key"]
        cats = self._label_categories()
        for name, value in (("source_label", source_label), ("target_label", target_label)):
            if str(value) not in cats:
                raise ValueError(f"Unknown {name} {value!r}: the model knows the {labels_key} values {cats}.")
        check_obs_key(adata_source, labels_key)
        obs_labels = adata_source.obs[labels_key].astype(str).to_numpy()
        cells = np.flatnonzero(obs_labels == str(source_label))
        if cells.size == 0:
            raise ValueError(
                f"No cell of adata_source has {labels_key} == {source_label!r}; its labels are "
                f"{sorted(set(obs_labels.tolist()))}."
            )
        gen, rng, seed = self._generator(seed)
        if n_cells is not None:
            if not 1 <= int(n_cells) <= cells.size:
                raise ValueError(f"n_cells must lie in [1, {cells.size}] (cells of {source_label!r}), got {n_cells}.")
            cells = np.sort(rng.choice(cells, size=int(n_cells), replace=False))
        n, n_w = cells.size, w.size

        # counts of the source cells, genes in the model's order
        layer = self.registry_["setup_args"].get("layer")
        x_src = to_dense(get_matrix(adata_source, layer)[cells], np.float32)
        var_names = getattr(self, "var_names_", None)
        if var_names is not None:
            pos = adata_source.var_names.get_indexer(pd.Index(var_names))
            if (pos < 0).any():
                raise ValueError(
                    f"{int((pos < 0).sum())} of the model's {len(var_names)} genes are missing from adata_source "
                    f"(e.g. {list(np.asarray(var_names)[pos < 0][:5])})."
                )
            x_src = x_src[:, pos]
        elif x_src.shape[1] != self.module.n_genes:
            raise ValueError(f"adata_source has {x_src.shape[1]} genes, the model {self.module.n_genes}.")
        check_counts(x_src, where=f"the counts of the {source_label!r} cells of adata_source")

        # conditions: the source label (or the target label), covariates and vector condition of the source cells
        present = {k: adata_source.obs[k].to_numpy()[cells].astype(str) for k in self._covariate_categories()
                   if k in adata_source.obs.columns}
        src_codes, cov_obs = self._resolve_conditions(n, [str(source_label)] * n, present, rng)
        tgt_codes = src_codes.copy()
        tgt_codes[:, 0] = cats.index(str(target_label))
        cont = None
        if self.module.n_continuous > 0:
            key = self.registry_["setup_args"]["condition_obsm_key"]
            if key not in adata_source.obsm:
                raise KeyError(f"adata_source has no obsm[{key!r}], the model's vector condition.")
            cont = self._check_obsm_condition(to_dense(adata_source.obsm[key])[cells], n)

        # rows: weight-major, one shared thinning per source cell
        schedule, device = self.module.schedule, self.device
        t0 = float(time_grid(n_steps, schedule, float(t_start))[0])  # snapped for discrete schedules
        p0 = schedule.p(torch.tensor(t0, dtype=torch.float64)).float()
        x_t = thin(torch.from_numpy(x_src).to(device), p0.to(device), generator=gen)
        rows_x = x_t.repeat(n_w, 1)
        rows_a = torch.from_numpy(np.repeat(w, n).astype(np.float32)).to(device)
        rows_src = torch.from_numpy(np.tile(src_codes, (n_w, 1))).to(device)
        rows_tgt = torch.from_numpy(np.tile(tgt_codes, (n_w, 1))).to(device)
        rows_cont = None if cont is None else cont.to(device).repeat(n_w, 1)
        keep_all = np.ones(self.module.n_conditions, dtype=bool)
        self.module.eval()
        out = []
        n_rows = n * n_w
        n_batches = math.ceil(n_rows / batch_size)
        for b in range(n_batches):
            sl = slice(b * batch_size, min(n_rows, (b + 1) * batch_size))
            m = sl.stop - sl.start
            a_b = rows_a[sl, None]
            cont_b = None if rows_cont is None else rows_cont[sl]
            cond = self.module.drop_mask(m, device, keep_all)
            uncond = self.module.drop_mask(m, device, ~keep_all)
            variants = [(rows_src[sl], cont_b, cond), (rows_tgt[sl], cont_b, cond), (rows_src[sl], cont_b, uncond)]
            coefs = [g * (1.0 - a_b), g * a_b, 1.0 - g]

            def rate_fn(x, t, variants=variants, coefs=coefs):
                return self.module.mixed_rate(x, t, variants, coefs)

            x = generate(with_precision(rate_fn, precision, device), (m, self.module.n_genes), schedule, n_steps,
                         attrition_kind, attrition,
                         x_start=rows_x[sl], t_start=t0, generator=gen, device=device,
                         progress=progress and n_batches == 1)
            out.append(x.cpu().numpy())
            if progress and n_batches > 1:
                logger.info("interpolated batch %d / %d", b + 1, n_batches)
        counts = np.concatenate(out, axis=0).astype(np.float32)
        names = np.asarray(adata_source.obs_names)[cells].astype(str)
        obs = pd.DataFrame(
            {
                "interpolation_weight": np.repeat(w, n),
                "source_cell": pd.Categorical(np.tile(names, n_w), categories=pd.unique(names)),
                "source_label": pd.Categorical([str(source_label)] * n_rows),
                "target_label": pd.Categorical([str(target_label)] * n_rows),
            },
            index=[f"{c}_w{j}" for j in range(n_w) for c in names],
        )
        for col in cov_obs.columns:
            if col != labels_key:
                obs[col] = pd.Categorical(np.tile(np.asarray(cov_obs[col].astype(str)), n_w),
                                          categories=cov_obs[col].cat.categories)
        var = pd.DataFrame(index=pd.Index(var_names if var_names is not None else
                                          [f"gene_{i}" for i in range(self.module.n_genes)], dtype=str))
        result = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
        record_params(result, "interpolation", {
            "source_label": str(source_label), "target_label": str(target_label), "weights": [float(a) for a in w],
            "t_start": t0, "n_steps": n_steps, "guidance": g, "attrition": attrition,
            "attrition_kind": attrition_kind, "n_cells": n, "seed": seed, "batch_size": batch_size,
        })
        return result

    # ------------------------------------------------------------------ imputation
    @torch.inference_mode()
    def impute(
        self,
        adata: ad.AnnData | None = None,
        mask_layer: str = "countsdiff_mask",
        n_samples: int = 5,
        n_steps: int = 50,
        guidance: float | Mapping[str, float] = 0.5,
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
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Impute held-out entries with RePaint (paper Sec. 3.6), drawing ``n_samples`` imputations per cell.

        Masked entries follow the reverse process driven by the network; every other entry follows the same step
        driven by its known missing count ``x_obs - x_t``, so it is ``Binomial(x_obs, p(s))`` (the noised ground
        truth) at every step and ``x_obs`` at the end. Entries marked invalid in the registered
        ``valid_layer`` (suspected dropouts) are never imputed nor scored: they enter the network exactly as
        during training (as the zeros they are for the MLP; masked out as keys for the transformer). Only cells
        with at least one masked entry are processed.

        Parameters
        ----------
        adata
            AnnData with the training genes (set up with the model's registry automatically); the training data
            when None. A view is turned into an actual AnnData first (scvi-tools behaviour). A backed AnnData
            (``anndata.read_h5ad(path, backed="r")``) works: its counts are read from disk in blocks of cells, and the
            results go to in-memory ``layers`` / ``obsm`` of the object (the file is not modified; save them with
            ``adata.write_h5ad(new_path)`` or use the returned arrays).
        mask_layer
            Boolean layer, True where the value is held out (see :func:`countsdiff_sc.pp.mask_mcar`).
        n_samples
            Number of RePaint draws per cell (the paper averages 5).
        n_steps
            Number of reverse transitions. The paper uses 20; on CBMC 50 steps lower the RMSE by 6% and the energy
            distance of the imputed values by 20% relative to 20 steps, at 2.5x the cost, and 100 steps gain
            nothing more (``benchmarks/steps.py``, results/steps.md).
        guidance
            Guidance strength (paper's best scRNA setting: 0.5), or per-condition strengths as a dict (see
            :meth:`sample`); ignored for an unconditional model.
        attrition, attrition_kind
            Attrition (paper's best scRNA setting: ReMDM-rescale ``eta = 0.02``); ``attrition_kind`` is one of
            ``"rescale"``, ``"cap"``, ``"constant"``, ``"none"`` (see :func:`~countsdiff_sc.diffusion.attrition_rate`).
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
            Store the draws (memory: 4 bytes x n_obs x n_samples x n_vars); set False for large data. Without
            them, memory beyond the inputs is the float32 output (4 bytes per entry), the dense boolean mask (and
            validity layer; 1 byte per entry) and a working set bounded by ``batch_size``.
        precision
            ``"32"`` (default), ``"bf16"`` or ``"16"``: run the network under ``torch.autocast`` in that precision
            (the draws stay exact float32 counts); for GPUs with tensor cores. ``"16"`` needs a GPU.
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
        strengths = self._check_sampling_args(n_steps, guidance, attrition, attrition_kind)
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
        # the outputs are the only arrays of size n_obs x n_vars (besides the boolean mask / validity layer);
        # a backed count matrix is read in blocks of rows
        imputed = np.empty(adata.shape, dtype=np.float32)
        for start, block in iter_row_blocks(x_all, rows_per_block(adata.n_vars)):
            imputed[start : start + block.shape[0]] = to_dense(block, np.float32)
        samples = None
        if store_samples:
            samples = np.empty((adata.n_obs, n_draws, adata.n_vars), dtype=np.int32)
            samples[:] = imputed[:, None, :]
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
                return self.module.rate(x, t, cat_b, cont_b, valid=valid_b, guidance=strengths)

            draws = repaint(with_precision(rate_fn, precision, device), x_obs, target, self.module.schedule, n_steps,
                            attrition_kind, attrition,
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
