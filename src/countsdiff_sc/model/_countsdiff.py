"""CountsDiffModel: the user-facing scvi-tools model of count diffusion.

The class is thin: it builds the module from the registry and composes focused parts, each in its own file:
registration (:mod:`._setup`), the condition space (:mod:`._conditions`), the presets of the defaults
(:mod:`._presets`), the sampler settings (:mod:`._sampler`), training (:mod:`._training`), generation
(:mod:`._generation`), counterfactual transfer of real cells (:mod:`._transfer`), batch-corrected counts of a whole
data set (:mod:`._correction`), imputation (:mod:`._imputation`), scvi-tools' expression API (:mod:`._expression`),
all running their reverse chains through one batched runner (:mod:`._chains`). See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import torch
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from countsdiff_sc.diffusion import PSchedule
from countsdiff_sc.module import CountsDiffModule, DiffusionTrainingPlan

from ._conditions import ConditionSpace
from ._correction import CorrectionMixin
from ._expression import DEPTH_QUANTILE, ExpressionMixin
from ._generation import GenerationMixin
from ._imputation import ImputationMixin
from ._presets import MODULE_OPTIONS, PRESETS, check_backbone_kwargs, check_preset
from ._results import is_mudata
from ._setup import (
    SetupMixin,
    check_training_data,
    distrusted_share,
    gene_stats,
    mean_trusted_per_cell,
    training_depths,
)
from ._training import Budget, TrainingMixin, check_accelerator, scaled_epochs
from ._transfer import TransferMixin

__all__ = ["CountsDiffModel"]


#: The preset a model saved before presets existed (0.1) is rebuilt with when loaded: its settings are the paper's.
_LOADING_PRESET: contextvars.ContextVar[str | None] = contextvars.ContextVar("countsdiff_loading_preset",
                                                                            default=None)


@contextlib.contextmanager
def _loading_preset(preset: str | None) -> Iterator[None]:
    token = _LOADING_PRESET.set(preset)
    try:
        yield
    finally:
        _LOADING_PRESET.reset(token)


class CountsDiffModel(SetupMixin, TrainingMixin, GenerationMixin, TransferMixin, CorrectionMixin, ImputationMixin,
                      ExpressionMixin, BaseModelClass):
    """Diffusion on the natural numbers for single-cell UMI counts (CountsDiff).

    The forward process thins counts binomially with a p-schedule, ``x_t ~ Binomial(x_0, p(t))``; a network
    predicts the number of thinned molecules ``y = x_0 - x_t`` and is trained with the weighted Poisson-type loss of
    Eq. 6 on trusted entries. Sampling runs the reverse birth-death process with attrition (Prop. 3.2), random
    rounding (Sec. 3.5) and classifier-free guidance (Sec. 3.4). Imputation uses RePaint (Sec. 3.6); denoising enters
    the reverse chain at each cell's own depth (Eq. 4).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (or a MuData registered with :meth:`setup_mudata`).
        May be None when the model is built from a saved registry (``load(path, adata=None)``).
    registry
        Registry of a saved model (used by :meth:`load`; users leave it None).
    preset
        ``"default"``: the settings chosen by the package's measurements (the docs' table of defaults): the network is
        also conditioned on each cell's depth (read from its trusted entries, so held-out values never enter it),
        the loss weight ``w = -p'(t) / (1 - p(t))`` (``"nll"``), condition dropout 0.2 and an EMA over about the last
        2.5% of the run; training scaled to the number of cells with early stopping; the verbs' sampler defaults of
        ``SAMPLER_DEFAULTS["default"]``. ``"paper"``: the settings of the CountsDiff paper's scRNA-seq protocol
        (no depth condition, ``w = -p'(t)``, dropout 0.1, EMA 0.999, 6,000 training steps, RePaint with 19 Euler
        steps, attrition 0.02 and guidance 0.5), with which the benchmark tables reproduce; the paper's per-gene
        transformer is ``backbone="transformer"`` (for GPUs).
    backbone
        ``"mlp"`` (residual MLP, fast on CPU; default) or ``"transformer"`` (the paper's per-gene transformer); the
        registry is :data:`countsdiff_sc.module.BACKBONES`.
    backbone_kwargs
        Keyword arguments of the backbone: ``n_hidden``, ``n_layers``, ``dim_emb``, ``dropout`` for the MLP;
        ``d_model``, ``n_heads``, ``n_layers``, ``dim_feedforward``, ``dropout`` for the transformer.
    schedule
        p-schedule: ``"cosine"`` (default), ``"blackout"``, ``"blackout_discrete"``, a config dict or a
        :class:`~countsdiff_sc.diffusion.PSchedule` (a ``CustomSchedule`` cannot be saved).
    **module_kwargs
        Research options of :class:`~countsdiff_sc.module.CountsDiffModule`, over the preset's values:
        ``loss_weighting``, ``p_uncond``, ``ema_decay``, ``ema_warmup``, ``depth_condition``, ``uncond_mode``
        (``"independent"`` for per-condition guidance strengths), ``rate_baseline``, ``loss_normalisation``,
        ``time_sampling``. Options other than the preset's measured no better than its values.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.cbmc()
    >>> cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    >>> model = cds.CountsDiffModel(adata)
    >>> model.train()
    >>> gen = model.sample(labels=["B"] * 100)
    """

    _module_cls = CountsDiffModule
    _training_plan_cls = DiffusionTrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner
    _train_check = staticmethod(check_training_data)

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        *,
        preset: Literal["default", "paper"] | None = None,
        backbone: Literal["mlp", "transformer"] = "mlp",
        backbone_kwargs: dict | None = None,
        schedule: str | dict | PSchedule = "cosine",
        **module_kwargs: Any,
    ):
        preset = check_preset(preset if preset is not None else (_LOADING_PRESET.get() or "default"))
        unknown = sorted(k for k in module_kwargs if k not in MODULE_OPTIONS)
        if unknown:
            raise TypeError(f"CountsDiffModel() got unknown option(s) {unknown}; the module options are "
                            f"{list(MODULE_OPTIONS)} (see countsdiff_sc.module.CountsDiffModule).")
        check_backbone_kwargs(backbone, backbone_kwargs)
        if adata is not None and not (isinstance(adata, ad.AnnData) or is_mudata(adata)):
            raise TypeError(f"adata must be an AnnData (or MuData) registered with CountsDiffModel.setup_anndata, got "
                            f"{type(adata).__name__}.")
        super().__init__(adata, registry)
        options = {**PRESETS[preset], **module_kwargs}
        if isinstance(schedule, PSchedule) and schedule.name != "custom":
            schedule = schedule.config()
        space = ConditionSpace.from_registry(self.registry_)
        stats, loss_scale, depth_stats = None, None, None
        if adata is not None:
            stats = gene_stats(self.adata_manager)
            if options.get("loss_normalisation") == "constant":
                loss_scale = mean_trusted_per_cell(self.adata_manager)
            counts_obj = adata
            if is_mudata(adata):  # MuData: the genes are those of the RNA modality
                counts_obj = adata.mod[self.registry_["setup_args"]["modalities"]["rna_layer"]]
            self.var_names_ = np.asarray(counts_obj.var_names).astype(str)
            self.condition_table_ = space.table(self.adata_manager)
            depths = training_depths(self.adata_manager, stats[0])
            self.distrusted_share_ = distrusted_share(self.adata_manager)
            self.depth_ = float(np.quantile(depths, DEPTH_QUANTILE)) if depths.size else 0.0
            if options["depth_condition"]:
                log_depth = np.log(np.maximum(depths, 1.0))
                depth_stats = (float(log_depth.mean()), float(max(log_depth.std(), 1e-3)))
                self.train_depths_ = depths.astype(np.float32)
                codes = space.codes(self.adata_manager)
                self.train_codes_ = None if codes is None else codes.astype(np.int32)
        elif options["depth_condition"]:
            depth_stats = (0.0, 1.0)  # placeholders: the saved buffers replace them when the weights are loaded
        self.preset_ = preset
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            n_cats_per_cov=space.n_cats_per_cov,
            n_continuous=space.n_continuous,
            use_labels=space.use_labels,
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            schedule=schedule,
            gene_stats=stats,
            loss_scale=loss_scale,
            depth_stats=depth_stats,
            **options,
        )
        n_params = sum(p.numel() for p in self.module.net.parameters())
        module = self.module
        self._model_summary_string = (
            f"CountsDiffModel (preset={preset!r}): backbone={backbone}, schedule={module.schedule!r}, "
            f"loss_weighting={module.loss_weighting}, p_uncond={module.p_uncond}, "
            f"conditions={self.condition_space.names()} ({module.uncond_mode} dropout), "
            f"{self.summary_stats.n_vars} genes, {n_params:,} network parameters, ema_decay={module.ema_decay} "
            f"(warm-up {module.ema_warmup:g})"
            + ("; beyond the preset: " + ", ".join(f"{k}={v}" for k, v in sorted(module_kwargs.items()))
               if module_kwargs else "") + "."
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def load(cls, dir_path: str, adata: ad.AnnData | None = None, **kwargs) -> CountsDiffModel:
        """Load a model saved with :meth:`save` (scvi-tools' ``load``; ``accelerator``, ``device``, ... pass through).

        A given ``adata`` becomes the model's training data, so its genes must be the model's genes in the model's
        order (training reads them by position): a reordered or different gene set is refused with the fix,
        ``adata[:, model_genes].copy()``. Inference verbs (``impute``, ...) match genes by name on any object. A
        model saved by countsdiff-sc 0.1 (before presets) loads with ``preset="paper"``, its settings then.

        Raises
        ------
        FileNotFoundError
            No saved model in ``dir_path``.
        ValueError
            ``adata`` does not have the model's genes in the model's order, the file is not a saved CountsDiffModel
            (e.g. a DICEModel's directory) or cannot be read, or ``accelerator`` names a device this machine lacks.
        """
        path = Path(dir_path)
        if path.is_file():
            raise ValueError(f"{path} is a file; pass the directory given to model.save(...).")
        check_accelerator(kwargs.get("accelerator", "auto"))
        file = path / (f"{kwargs['prefix']}model.pt" if kwargs.get("prefix") else "model.pt")
        if not file.is_file() and kwargs.get("backup_url") is None:
            raise FileNotFoundError(f"No saved model at {file}: pass the directory given to model.save(...).")
        saved: dict = {}
        if file.is_file():
            try:
                saved = torch.load(file, map_location="cpu", weights_only=False)
            except Exception as err:  # a truncated or foreign file: say which, not torch's unpickling error
                raise ValueError(f"{file} is not a readable saved model ({type(err).__name__}: {err}).") from err
            attrs = saved.get("attr_dict", {}) if isinstance(saved, dict) else {}
            kind = attrs.get("registry_", {}).get("model_name")
            if kind is not None and kind != cls.__name__:
                raise ValueError(f"{path} holds a saved {kind}, not a {cls.__name__}: load it with "
                                 f"countsdiff_sc.{kind}.load(...).")
        if adata is not None and saved and not is_mudata(adata):  # (MuData: scvi-tools' own check)
            names = np.asarray(saved.get("var_names", []), str)
            given = np.asarray(adata.var_names).astype(str)
            if names.size and not np.array_equal(names, given):
                same_set = names.size == given.size and set(names) == set(given)
                raise ValueError(
                    f"The genes of adata {'are in another order than' if same_set else 'differ from'} the model's "
                    f"({given.size} vs {names.size} genes). The training data must have the model's genes in its "
                    "order: pass adata[:, genes].copy() with genes = the saved model's var_names (impute and the "
                    "other verbs match genes by name on any AnnData)."
                )
        init = saved.get("attr_dict", {}).get("init_params_", {}) if isinstance(saved, dict) else {}
        flat = {**init.get("non_kwargs", {}), **init.get("kwargs", {})} if isinstance(init, dict) else {}
        legacy = "paper" if init and "preset" not in flat else None  # saved by 0.1, before presets
        with _loading_preset(legacy):
            return super().load(str(dir_path), adata=adata, **kwargs)

    def _validate_anndata(self, adata: Any = None, copy_if_view: bool = True) -> Any:
        """scvi-tools' check of a query, without adopting it: a model loaded without its training data registers the
        query for this call but keeps ``adata`` None, so ``train()`` and ``retention="auto"`` never read a query as
        if it were the training data."""
        detached = self._adata is None
        self._check_condition_width(adata)
        out = super()._validate_anndata(adata, copy_if_view)
        if detached:
            self._adata, self._adata_manager = None, None
        return out

    def _check_condition_width(self, adata: Any) -> None:
        """A query's vector condition (``obsm[condition_obsm_key]``) has the width the model was trained with."""
        key = self.registry_.get("setup_args", {}).get("condition_obsm_key")
        if adata is None or key is None or key not in getattr(adata, "obsm", {}):
            return
        width, expected = np.shape(adata.obsm[key])[1:2], self.condition_space.n_continuous
        if width != (expected,):
            raise ValueError(
                f"adata.obsm[{key!r}] has shape {np.shape(adata.obsm[key])}, but the model was trained on a condition "
                f"of {expected} columns: compute it for the query the way it was computed for the training cells "
                f"(n_obs x {expected})."
            )

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False, **kwargs) -> None:
        """Save the model to the directory ``dir_path`` (scvi-tools' ``save``; ``save_anndata=True`` stores the
        training data with it).

        Raises
        ------
        ValueError
            ``dir_path`` is an existing file, or an existing directory and ``overwrite`` is False.
        """
        path = Path(dir_path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; model.save(...) writes a directory: pass a directory path.")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise ValueError(f"{path} already exists and is not empty; pass overwrite=True to replace the model "
                             "saved there, or another directory.")
        super().save(str(dir_path), overwrite=True if path.is_dir() else overwrite, save_anndata=save_anndata,
                     **kwargs)

    @property
    def condition_space(self) -> ConditionSpace:
        """What the model is conditioned on (labels, categorical covariates, vector condition, depth)."""
        return ConditionSpace.from_registry(self.registry_, independent=self.module.uncond_mode == "independent",
                                            depth=self.module.depth_condition)

    @property
    def preset(self) -> str:
        """The preset the model was built with (``"default"`` or ``"paper"``)."""
        return getattr(self, "preset_", "paper")

    def _budget(self, n_obs: int, train_size: float, batch_size: int, has_validation: bool) -> Budget:
        """Default training budget: scaled to the cells with early stopping, or the paper's 6,000 steps."""
        steps = max(1, math.ceil(int(n_obs * train_size) / batch_size))
        if self.preset == "paper":
            return Budget(int(np.clip(math.ceil(6000 / steps), 20, 400)), False, 20, "paper: 6,000 steps")
        epochs = scaled_epochs(n_obs)
        patience = int(max(20, math.ceil(500 / steps)))  # at least 20 epochs and 500 optimizer steps
        return Budget(epochs, True, patience, "scaled: min(400, 20000 / n_cells * 400) epochs, early stopping")
