"""DICEModel: diffusion-induced cell embeddings (latent plug-and-play diffusion) as an scvi-tools model."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from countsdiff_sc._utils import check_counts, check_obs_key, get_matrix, stored_values
from countsdiff_sc.module import DICEModule, DiffusionTrainingPlan
from countsdiff_sc.module.dice import fit_projection

from ._chains import positive_int
from ._dice_embedding import DICEEmbeddingMixin
from ._training import train_method

logger = logging.getLogger(__name__)

__all__ = ["DICEModel"]


def _fraction(value: Any, name: str, *, upper_open: bool = True, lower_open: bool = False) -> float:
    """``value`` as a float in ``[0, 1)`` (bounds per the flags), refusing booleans, strings and NaN."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    low_ok = value > 0 if lower_open else value >= 0
    high_ok = value < 1 if upper_open else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = f"{'(' if lower_open else '['}0, 1{')' if upper_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}.")
    return float(value)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def read_saved(cls_name: str, dir_path: str | Path, prefix: str | None = None) -> None:
    """Refuse, with the fix, a directory that holds no saved model, an unreadable ``model.pt`` or another class's
    model (scvi-tools would raise an unpickling error or "a model from a different class")."""
    path = Path(dir_path)
    if path.is_file():
        raise ValueError(f"{path} is a file; pass the directory given to model.save(...).")
    file = path / f"{prefix or ''}model.pt"
    if not file.is_file():
        raise FileNotFoundError(f"No saved model at {file}: pass the directory given to model.save(...).")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which, not torch's unpickling error
        raise ValueError(f"{file} is not a readable saved model ({type(err).__name__}: {err}); it may be corrupt "
                         "or not written by model.save(...).") from err
    attrs = saved.get("attr_dict", {}) if isinstance(saved, dict) else {}
    kind = attrs.get("registry_", {}).get("model_name") if isinstance(attrs, dict) else None
    if kind is None:
        raise ValueError(f"{file} is not a saved scvi-tools model (no registry in it).")
    if kind != cls_name:
        raise ValueError(f"{path} holds a saved {kind}, not a {cls_name}: load it with countsdiff_sc.{kind}.load(...).")


class DICEModel(DICEEmbeddingMixin, BaseModelClass):
    """Diffusion Induced Cell Embeddings (DICE; Meier et al., "Clustering by denoising").

    A reference fixes the preprocessing and the PCA loadings ``V`` (paper Sec. 3, Eq. 1-3) and trains a Gaussian
    DDPM prior on its k-dimensional PCA embeddings (App. A, C). :meth:`embed` then denoises the embedding of any
    cell with the split Gibbs sampler of Algorithm 1: a closed-form Gaussian likelihood step in observation space
    (Prop. 3.1) alternating with a prior step that runs the DDPM from the noise level matching the coupling
    ``rho``. Averaging independent chains gives the embedding, their spread its uncertainty.

    Preprocessing, fitted on the reference passed here and frozen with the model (buffers of the module):
    library-size normalisation to ``target_sum`` and ``log1p`` (for count data), optional subset to
    ``n_top_genes`` highly variable genes, per-gene scaling to unit variance clipped at ``max_value``, PCA.
    ``n_latent=None`` picks ``k`` at the elbow of the singular values: the component farthest below the chord of
    the first ``max_components`` singular values (see :func:`~countsdiff_sc.module.dice.elbow_rank`).

    The module computes the embedding from the registered counts with these buffers (rather than reading a
    precomputed ``obsm`` field), so training, query mapping and save / load share one projection code path and
    nothing is written into the AnnData at setup.

    Parameters
    ----------
    adata
        Reference AnnData registered with :meth:`setup_anndata`; the projection is fitted on all its cells.
        None when the model is built from a saved registry (``DICEModel.load(path, adata=None)``).
    registry
        Registry of a saved model (used by :meth:`load`; users leave it None). When given, nothing is fitted:
        the projection comes from the saved state.
    n_latent
        Embedding dimension ``k``; None chooses it at the singular-value elbow.
    max_components
        Length of the scree curve for the elbow rule (and of ``singular_values_``).
    n_top_genes
        Number of highly variable genes to use (scanpy's ``"seurat"`` flavour on the log-normalised reference);
        None uses all genes.
    target_sum
        Library size after normalisation (count data only).
    scale
        Scale genes to unit variance (paper App. H.1).
    max_value
        Clip of the scaled values (paper: 10); None disables it.
    standardize_latent
        Train the prior on ``u / c`` with ``c = sqrt(mean_j Var(u_j))`` (a single number, so the isotropic
        coupling of the sampler is preserved exactly: the prior step uses ``rho / c``). False trains on raw PCA
        scores, as the paper does; the results differ only through how well the network learns either scale.
    n_hidden, n_blocks, expansion, dim_time, dropout
        Denoiser architecture (:class:`~countsdiff_sc.nn.LatentDenoiser`). The defaults (about 0.2 M parameters,
        the size of the paper's synthetic-data network) keep sampling fast on a CPU; the paper's single-cell
        network is much larger (35 M parameters, trained on a GPU).
    n_timesteps, beta_start, beta_end
        Linear beta schedule of the DDPM (paper: T = 512, beta from 1e-4 to 2e-2).
    mixup_prob, mixup_size
        Same-label Dirichlet mixup of the training embeddings (paper App. C: 0.9 and 5); needs ``labels_key``.
    ema_decay
        Decay of the EMA weights used for validation and sampling (0 disables them).

    Notes
    -----
    Query mapping: :meth:`embed`, :meth:`get_latent_representation` and :meth:`project` read only the registered
    layer of the AnnData they are given, aligned to the reference genes by name; a query needs neither the labels
    nor the batch column of the reference and is not registered with scvi-tools. A saved model can be loaded
    without data (``DICEModel.load(path, adata=None)``) and used on queries directly; loading with an AnnData runs
    ``setup_anndata`` on it with the saved arguments (so it then needs those obs columns), and never refits the
    projection.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.cbmc()
    >>> cds.DICEModel.setup_anndata(adata)
    >>> model = cds.DICEModel(adata, n_latent=25)
    >>> model.train(max_epochs=50)
    >>> mean, std = model.embed(adata)  # obsm["X_dice"], obsm["X_dice_std"]
    """

    _module_cls = DICEModule
    _training_plan_cls = DiffusionTrainingPlan
    _data_splitter_cls = DataSplitter
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        registry: dict | None = None,
        n_latent: int | None = None,
        max_components: int = 50,
        n_top_genes: int | None = None,
        target_sum: float = 1e4,
        scale: bool = True,
        max_value: float | None = 10.0,
        standardize_latent: bool = True,
        n_hidden: int = 128,
        n_blocks: int = 2,
        expansion: int = 2,
        dim_time: int = 64,
        dropout: float = 0.0,
        n_timesteps: int = 512,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        mixup_prob: float = 0.0,
        mixup_size: int = 5,
        ema_decay: float = 0.999,
    ):
        if n_latent is not None:
            n_latent = positive_int(n_latent, "n_latent")
        max_components = positive_int(max_components, "max_components")
        if n_top_genes is not None:
            n_top_genes = positive_int(n_top_genes, "n_top_genes")
        target_sum = _positive(target_sum, "target_sum")
        if max_value is not None:
            max_value = _positive(max_value, "max_value (None for no clip)")
        n_hidden, n_blocks = positive_int(n_hidden, "n_hidden"), positive_int(n_blocks, "n_blocks", 0)
        expansion, dim_time = positive_int(expansion, "expansion"), positive_int(dim_time, "dim_time")
        dropout = _fraction(dropout, "dropout")
        n_timesteps = positive_int(n_timesteps, "n_timesteps", 2)
        beta_start = _fraction(beta_start, "beta_start", lower_open=True)
        beta_end = _fraction(beta_end, "beta_end", lower_open=True)
        if not beta_start < beta_end:
            raise ValueError(f"beta_start must be below beta_end (a rising noise schedule), got {beta_start} and "
                             f"{beta_end}.")
        mixup_prob = _fraction(mixup_prob, "mixup_prob", upper_open=False)
        mixup_size = positive_int(mixup_size, "mixup_size", 2)
        ema_decay = _fraction(ema_decay, "ema_decay")
        super().__init__(adata, registry)
        setup_args = self.registry_["setup_args"]
        log_normalize = bool(setup_args.get("is_counts", True))
        use_labels = setup_args.get("labels_key") is not None
        n_labels = len(self.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"][
            "categorical_mapping"])
        projection = None
        if adata is not None and registry is None:
            x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            projection = fit_projection(
                x, log_normalize=log_normalize, scale=scale, target_sum=target_sum, max_value=max_value,
                n_top_genes=n_top_genes, n_latent=n_latent, max_components=max_components,
                standardize_latent=standardize_latent,
            )
            n_latent = projection.n_latent  # the resolved k is what init_params_ records (needed by load)
            self.singular_values_ = projection.singular_values
            self.highly_variable_ = projection.highly_variable
        elif n_latent is None:
            raise ValueError("n_latent must be given when the model is built from a registry without AnnData.")
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_latent=int(n_latent),
            n_labels=n_labels,
            use_labels=use_labels,
            log_normalize=log_normalize,
            scale=scale,
            target_sum=target_sum,
            max_value=max_value,
            n_hidden=n_hidden,
            n_blocks=n_blocks,
            expansion=expansion,
            dim_time=dim_time,
            dropout=dropout,
            n_timesteps=n_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            mixup_prob=mixup_prob,
            mixup_size=mixup_size,
            ema_decay=ema_decay,
        )
        if projection is not None:
            self.module.set_projection(
                projection.gene_mean, projection.gene_std, projection.pca_mean, projection.loadings,
                projection.latent_scale, projection.residual_var, projection.embedding_scale,
            )
        n_params = sum(p.numel() for p in self.module.net.parameters())
        self._model_summary_string = (
            f"DICEModel: k={int(n_latent)} latent dimensions, {self.summary_stats.n_vars} genes "
            f"({'counts: normalise + log1p' if log_normalize else 'pre-transformed values'}"
            f"{', scaled' if scale else ''}), DDPM T={n_timesteps}, {n_params:,} network parameters, "
            f"mixup_prob={mixup_prob}, ema_decay={ema_decay}."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        is_counts: bool = True,
        **kwargs,
    ) -> None:
        """Register a reference AnnData with the model class.

        Parameters
        ----------
        adata
            AnnData with raw integer UMI counts (dense, CSR or CSC).
        layer
            Layer holding the counts; ``adata.X`` when None.
        labels_key
            obs column of cell labels; used only by the optional same-label mixup of the training embeddings.
        batch_key
            obs column of batches; registered for bookkeeping (DICE does not correct batch effects).
        is_counts
            True (default): the layer holds raw counts, checked, library-size normalised and log1p-transformed.
            False: the layer holds already transformed real values (e.g. log-normalised data or the paper's
            synthetic Gaussian factor model); they are used as they are.

        Raises
        ------
        KeyError
            The layer or an obs column does not exist (the message lists the available ones).
        ValueError
            ``is_counts`` and the counts are negative, non-finite or non-integer.

        Examples
        --------
        >>> import countsdiff_sc as cds
        >>> adata = cds.datasets.pbmc68k_reduced_counts()
        >>> cds.DICEModel.setup_anndata(adata, labels_key="bulk_labels")
        """
        x = get_matrix(adata, layer)
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
        if is_counts:
            check_counts(x, where=where)
        else:
            values = stored_values(x)
            if values.dtype.kind not in "biuf" or not np.isfinite(values).all():
                raise ValueError(f"{where} must hold finite numbers.")
        for key in (labels_key, batch_key):
            if key is not None:
                check_obs_key(adata, key)
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=bool(is_counts)),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def load(cls, dir_path: str, adata: ad.AnnData | None = None, **kwargs) -> DICEModel:
        """Load a model saved with :meth:`save` (scvi-tools' ``load``; ``accelerator``, ``device``, ``prefix``, ...
        pass through).

        Raises
        ------
        FileNotFoundError
            No saved model in ``dir_path``.
        ValueError
            ``dir_path`` is a file, its ``model.pt`` cannot be read (corrupt or foreign), or it holds another class's
            model (e.g. a CountsDiffModel's directory).

        Examples
        --------
        >>> dice = cds.DICEModel.load("dice_model", adata=None)  # doctest: +SKIP
        """
        if kwargs.get("backup_url") is None:
            read_saved(cls.__name__, dir_path, kwargs.get("prefix"))
        return super().load(dir_path, adata=adata, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def var_names(self) -> np.ndarray:
        """Genes of the reference, in the order the model expects them."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
        return np.asarray(state["column_names"]).astype(str)

    @property
    def n_latent(self) -> int:
        """Embedding dimension ``k``."""
        return self.module.n_latent

    @property
    def loadings(self) -> np.ndarray:
        """PCA loadings ``V`` (n_genes x k; zero rows for genes outside the highly variable subset)."""
        return self.module.loadings.detach().cpu().numpy().copy()

    @property
    def embedding_scale(self) -> float:
        """Spread ``c`` of the reference embedding, ``sqrt(mean_j Var(u_j))`` over its ``k`` PCA scores (NaN for models
        saved before 0.2): the unit of :meth:`embed`'s default coupling ``rho="auto"`` (``2c -> 0.2c``)."""
        return float(self.module.embedding_scale)

    @property
    def residual_var(self) -> float:
        """Noise variance of the reference PCA (probabilistic-PCA estimate; NaN for models saved by 0.1.0).

        The variance per scaled gene that the ``k`` axes leave unexplained; :meth:`embed` uses it as the likelihood
        variance ``sigma^2`` when ``noise_var="auto"``: ``(trace(C) - sum_{j<=k} lambda_j) / (g - k)`` for the
        covariance ``C`` of the ``g`` scaled reference genes and its eigenvalues ``lambda`` (Tipping & Bishop, 1999).
        """
        return float(self.module.residual_var)

    # ------------------------------------------------------------------ training
    train = train_method(
        "Train the diffusion prior on the reference embeddings (DICE, Meier et al., Algorithm 2) with Lightning.",
        default_steps=4000, max_default_epochs=2000, weight_decay=1e-5, early_stopping_patience=50,
        check=lambda model: model.module.check_fitted(),
    )
