"""CountsDiffModel: the user-facing scvi-tools model of count diffusion.

The class is thin: it builds the module from the registry and composes focused parts, each in its own file:
registration (:mod:`._setup`), the condition space (:mod:`._conditions`), training (:mod:`._training`), generation
(:mod:`._generation`), counterfactual transfer of real cells (:mod:`._transfer`), imputation (:mod:`._imputation`),
scvi-tools' expression API (:mod:`._expression`), all running their reverse chains through one batched runner
(:mod:`._chains`). See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import torch
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from countsdiff_sc.diffusion import PSchedule
from countsdiff_sc.module import CountsDiffModule, DiffusionTrainingPlan

from ._conditions import ConditionSpace
from ._expression import DEPTH_QUANTILE, ExpressionMixin
from ._generation import GenerationMixin
from ._imputation import ImputationMixin
from ._setup import SetupMixin, check_training_data, gene_stats, library_quantile, mean_trusted_per_cell
from ._training import train_method
from ._transfer import TransferMixin

__all__ = ["CountsDiffModel"]


class CountsDiffModel(SetupMixin, GenerationMixin, TransferMixin, ImputationMixin, ExpressionMixin, BaseModelClass):
    """Diffusion on the natural numbers for single-cell UMI counts (CountsDiff).

    The forward process thins counts binomially with a p-schedule, ``x_t ~ Binomial(x_0, p(t))``; a network
    predicts the number of thinned molecules ``y = x_0 - x_t`` and is trained with the weighted Poisson-type loss of
    Eq. 6 on valid entries. Sampling runs the reverse birth-death process with attrition (Prop. 3.2), random
    rounding (Sec. 3.5) and classifier-free guidance (Sec. 3.4). Imputation uses RePaint (Sec. 3.6). ``transfer``
    thins real cells to a time ``t_start`` (Eq. 4) and runs the reverse chain from there under other conditions.

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
    ema_warmup
        Warm-up of the EMA: after ``k`` steps the decay is ``min(ema_decay, (1 + k) / (ema_warmup + k))``, so at the
        default 10 the average covers about the last 11% of the run and a decay above ``1 - 9 / steps`` changes
        nothing; a smaller value averages over more of the run.
    rate_baseline
        ``"none"`` (default) is the paper's plain ``y_hat = softplus(NN)``; ``"gamma_poisson"`` multiplies it by a
        per-gene empirical-Bayes baseline rate (see :class:`~countsdiff_sc.module.CountsDiffModule`).
    uncond_mode
        ``"joint"`` (default, the paper's scheme): a training cell loses all its conditions together with
        probability ``p_uncond``. ``"independent"``: each condition (labels, every categorical covariate, the
        vector condition) is dropped independently with probability ``p_uncond``, and all of them together with
        probability ``p_uncond``; needed for per-covariate guidance with unequal strengths
        (``sample(guidance={...})``, see :meth:`sample`).
    loss_normalisation
        ``"cell"`` (default): each cell's loss is averaged over its trusted entries (valid, not held out), so with a
        validity layer or mask an entry of a cell with few trusted genes weighs more. ``"constant"``: each cell's
        sum over trusted entries is divided by the mean number of trusted entries per training cell (computed here
        from the registered data and saved with the model), so every entry weighs the same, as in Eq. 6 of the
        paper. Identical when every entry is trusted. Measured in ``benchmarks/loss_normalisation.py``.
    time_sampling
        ``"uniform"`` (default): training times ``t ~ U(0, 1)``, each cell's loss weighted by ``w(t)``.
        ``"importance"``: times drawn with density proportional to ``w(t)`` and equal weights, the same objective
        with less gradient noise when ``w`` is peaked (the ``"nll"`` weight); continuous schedules only (see
        :class:`~countsdiff_sc.diffusion.ImportanceTimes`). Measured in ``benchmarks/generation_levers.py``.

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
        loss_normalisation: Literal["cell", "constant"] = "cell",
        time_sampling: Literal["uniform", "importance"] = "uniform",
        ema_warmup: float = 10.0,
    ):
        super().__init__(adata, registry)
        if isinstance(schedule, PSchedule) and schedule.name != "custom":
            schedule = schedule.config()
        space = ConditionSpace.from_registry(self.registry_)
        stats, loss_scale = None, None
        if adata is not None:
            stats = gene_stats(self.adata_manager)
            if loss_normalisation == "constant":
                loss_scale = mean_trusted_per_cell(self.adata_manager)
            counts_obj = adata
            if hasattr(adata, "mod"):  # MuData: the genes are those of the RNA modality
                counts_obj = adata.mod[self.registry_["setup_args"]["modalities"]["rna_layer"]]
            self.var_names_ = np.asarray(counts_obj.var_names).astype(str)
            self.condition_table_ = space.table(self.adata_manager)
            self.depth_ = library_quantile(self.adata_manager, DEPTH_QUANTILE)
        self.module = self._module_cls(
            n_genes=self.summary_stats.n_vars,
            n_cats_per_cov=space.n_cats_per_cov,
            n_continuous=space.n_continuous,
            use_labels=space.use_labels,
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            schedule=schedule,
            loss_weighting=loss_weighting,
            p_uncond=p_uncond,
            ema_decay=ema_decay,
            rate_baseline=rate_baseline,
            gene_stats=stats,
            uncond_mode=uncond_mode,
            loss_normalisation=loss_normalisation,
            loss_scale=loss_scale,
            time_sampling=time_sampling,
            ema_warmup=ema_warmup,
        )
        n_params = sum(p.numel() for p in self.module.net.parameters())
        self._model_summary_string = (
            f"CountsDiffModel: backbone={backbone}, schedule={self.module.schedule!r}, "
            f"loss_weighting={self.module.loss_weighting}, loss_normalisation={loss_normalisation}, "
            f"time_sampling={time_sampling}, "
            f"conditions={space.names()} ({uncond_mode} dropout), "
            f"{self.summary_stats.n_vars} genes, {n_params:,} network parameters, ema_decay={ema_decay}."
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def load(cls, dir_path: str, adata: ad.AnnData | None = None, **kwargs) -> CountsDiffModel:
        """Load a model saved with :meth:`save` (scvi-tools' ``load``; ``accelerator``, ``device``, ... pass through).

        A given ``adata`` becomes the model's training data, so its genes must be the model's genes in the model's
        order (training reads them by position): a reordered or different gene set is refused with the fix,
        ``adata[:, model_genes].copy()``. Inference verbs (``impute``, ...) match genes by name on any object.

        Raises
        ------
        FileNotFoundError
            No saved model in ``dir_path``.
        ValueError
            ``adata`` does not have the model's genes in the model's order.
        """
        path = Path(dir_path)
        file = path / (f"{kwargs['prefix']}model.pt" if kwargs.get("prefix") else "model.pt")
        if not file.is_file() and kwargs.get("backup_url") is None:
            raise FileNotFoundError(f"No saved model at {file}: pass the directory given to model.save(...).")
        if adata is not None and file.is_file() and not hasattr(adata, "mod"):  # (MuData: scvi-tools' own check)
            saved = np.asarray(torch.load(file, map_location="cpu", weights_only=False).get("var_names", []), str)
            given = np.asarray(adata.var_names).astype(str)
            if saved.size and not np.array_equal(saved, given):
                same_set = saved.size == given.size and set(saved) == set(given)
                raise ValueError(
                    f"The genes of adata {'are in another order than' if same_set else 'differ from'} the model's "
                    f"({given.size} vs {saved.size} genes). The training data must have the model's genes in its "
                    "order: pass adata[:, genes].copy() with genes = the saved model's var_names (impute and the "
                    "other verbs match genes by name on any AnnData)."
                )
        return super().load(str(dir_path), adata=adata, **kwargs)

    @property
    def condition_space(self) -> ConditionSpace:
        """What the model is conditioned on (labels, categorical covariates, vector condition), from its registry."""
        return ConditionSpace.from_registry(self.registry_, independent=self.module.uncond_mode == "independent")

    train = train_method(
        "Train the denoiser with Lightning (CountsDiff Algorithm 1; the loss of Eq. 6 on valid entries).",
        default_steps=6000, max_default_epochs=400, weight_decay=0.0, early_stopping_patience=20,
        check=check_training_data,
    )
