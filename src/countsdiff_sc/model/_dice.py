"""DICEModel: diffusion-induced cell embeddings (latent plug-and-play diffusion) as an scvi-tools model."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField
from scvi.dataloaders import DataSplitter
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner

from countsdiff_sc._utils import check_counts, check_obs_key, check_writable, get_matrix, record_params, to_dense
from countsdiff_sc.diffusion import rho_schedule as make_rho_schedule
from countsdiff_sc.module import DICEModule, DiffusionTrainingPlan

from ._dice_preprocess import fit_projection
from ._training import DiffusionTrainingMixin

logger = logging.getLogger(__name__)

__all__ = ["DICEModel"]


def _schedule_name(rho: float | Sequence[float], kind: str) -> str:
    """How the rho values of a run were made: ``"constant"``, the interpolation kind, or ``"custom"``."""
    size = np.asarray(rho).size
    return "constant" if size == 1 else (kind if size == 2 else "custom")


class DICEModel(DiffusionTrainingMixin, BaseModelClass):
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
    the first ``max_components`` singular values (see :func:`~countsdiff_sc.model._dice_preprocess.elbow_rank`).

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
                projection.latent_scale, projection.residual_var,
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
            values = x.data if sp.issparse(x) else np.asarray(x)
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
    def residual_var(self) -> float:
        """Noise variance of the reference PCA (probabilistic-PCA estimate; NaN for models saved by 0.1.0).

        The variance per scaled gene that the ``k`` axes leave unexplained; :meth:`embed` uses it as the likelihood
        variance ``sigma^2`` when ``noise_var="auto"``: ``(trace(C) - sum_{j<=k} lambda_j) / (g - k)`` for the
        covariance ``C`` of the ``g`` scaled reference genes and its eigenvalues ``lambda`` (Tipping & Bishop, 1999).
        """
        return float(self.module.residual_var)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        optimizer: Literal["Adam", "AdamW"] = "AdamW",
        warmup_steps: int = 200,
        gradient_clip_val: float | None = 1.0,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        early_stopping: bool = False,
        early_stopping_patience: int = 50,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the diffusion prior on the reference embeddings (paper Algorithm 2) with Lightning.

        Parameters
        ----------
        max_epochs
            Passes over the training cells. When both ``max_epochs`` and ``max_steps`` are None, a heuristic aims at
            about 4,000 optimizer steps (between 20 and 2,000 epochs).
        max_steps
            Stop after this many optimizer steps.
        batch_size
            Cells per minibatch.
        lr, weight_decay, optimizer, warmup_steps
            Optimiser settings (AdamW as in the paper, linear warm-up over ``warmup_steps`` steps).
        gradient_clip_val
            Gradient-norm clipping (None disables it).
        train_size, validation_size, shuffle_set_split
            Cell split, as in scvi-tools' :class:`~scvi.dataloaders.DataSplitter`.
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience`` epochs.
        accelerator, devices
            Lightning accelerator and devices.
        datasplitter_kwargs
            Extra arguments of the data splitter.
        plan_kwargs
            Extra arguments of :class:`~countsdiff_sc.module.DiffusionTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar=False``).

        Returns
        -------
        None; ``model.history`` holds ``train_loss`` and ``validation_loss`` per epoch (validation uses the EMA
        weights).

        Examples
        --------
        >>> model.train(max_epochs=100, enable_progress_bar=False)
        >>> model.history["validation_loss"].tail(1)
        """
        if self.adata is None:
            raise ValueError("This model has no AnnData to train on (it was loaded with adata=None).")
        self.module.check_fitted()
        self._train_diffusion(
            max_epochs=max_epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            optimizer=optimizer, warmup_steps=warmup_steps, gradient_clip_val=gradient_clip_val,
            train_size=train_size, validation_size=validation_size, shuffle_set_split=shuffle_set_split,
            early_stopping=early_stopping, early_stopping_patience=early_stopping_patience, accelerator=accelerator,
            devices=devices, datasplitter_kwargs=datasplitter_kwargs, plan_kwargs=plan_kwargs,
            default_steps=4000, max_default_epochs=2000, **trainer_kwargs,
        )

    # ------------------------------------------------------------------ data access
    def _query_matrix(self, adata: ad.AnnData | None) -> tuple[ad.AnnData, Any]:
        """The count matrix of ``adata`` (the model's AnnData when None) with its genes aligned to the model's.

        The query is not registered with scvi-tools: only the registered layer is read, so a query needs neither
        the labels nor the batch column of the reference.
        """
        if adata is None:
            if self.adata is None:
                raise ValueError("This model was loaded without AnnData; pass the cells to embed as adata=.")
            adata = self.adata
        layer = self.registry_["setup_args"].get("layer")
        x = get_matrix(adata, layer)
        where = f"adata.layers[{layer!r}]" if layer else "adata.X"
        ref = self.var_names
        query = np.asarray(adata.var_names).astype(str)
        if not (query.shape == ref.shape and np.array_equal(query, ref)):
            missing = np.setdiff1d(ref, query)
            if missing.size:
                raise ValueError(
                    f"The AnnData lacks {missing.size} of the model's {ref.size} genes (e.g. "
                    f"{', '.join(missing[:5])}). DICE projects cells with the reference genes only: give an AnnData "
                    "that holds all of model.var_names (extra genes are ignored)."
                )
            duplicated = pd.Index(query).duplicated(keep=False)
            if np.isin(query[duplicated], ref).any():
                raise ValueError("The AnnData has duplicated var_names among the model's genes; make them unique.")
            position = {g: i for i, g in enumerate(query)}
            logger.info("Aligning the AnnData's %d genes to the model's %d genes by name.", query.size, ref.size)
            x = x[:, np.array([position[g] for g in ref])]
        if self.module.log_normalize:
            check_counts(x, where=where)
        return adata, x

    def _generator(self, seed: int | None) -> tuple[torch.Generator, int]:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        return torch.Generator(device=self.device).manual_seed(int(seed)), int(seed)

    # ------------------------------------------------------------------ projection
    @torch.inference_mode()
    def project(
        self, adata: ad.AnnData | None = None, key_added: str | None = "X_pca", batch_size: int = 4096
    ) -> np.ndarray:
        """PCA coordinates of cells under the reference projection, ``V^T (x_tilde - mean)`` (the DICE start).

        This is the PCA baseline of the paper (query cells projected with the reference's ``V``) and the point
        :meth:`embed` starts from.

        Parameters
        ----------
        adata
            AnnData with the model's genes (extra genes ignored, order aligned by name); the reference when None.
        key_added
            obsm key receiving the coordinates; None writes nothing. A key that exists and was not written by
            countsdiff-sc (e.g. scanpy's own ``X_pca``) raises a ValueError instead of being replaced.
        batch_size
            Cells per batch.

        Returns
        -------
        float32 array ``(n_obs, k)``.

        Examples
        --------
        >>> pcs = model.project(query)  # query.obsm["X_pca"]
        """
        self.module.check_fitted()
        adata, x = self._query_matrix(adata)
        if key_added is not None:
            check_writable(adata, key_added, "obsm")
        out = np.empty((adata.n_obs, self.n_latent), dtype=np.float32)
        for start in range(0, adata.n_obs, batch_size):
            xb = torch.from_numpy(to_dense(x[start : start + batch_size], np.float32)).to(self.device)
            out[start : start + batch_size] = self.module.project(xb).cpu().numpy()
        if key_added is not None:
            adata.obsm[key_added] = out
            record_params(adata, key_added, {"method": "dice_reference_pca", "n_latent": self.n_latent})
        return out

    # ------------------------------------------------------------------ DICE sampler
    @torch.inference_mode()
    def _sample_chains(
        self,
        x: Any,
        n_obs: int,
        n_iter: int,
        rhos: np.ndarray,
        n_chains: int,
        noise_var: float,
        n_prior_steps: int | None,
        variance: str,
        generator: torch.Generator,
        batch_size: int,
        use_ema: bool,
        progress: bool,
        keep_samples: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from tqdm.auto import tqdm

        k = self.n_latent
        mean = np.empty((n_obs, k), dtype=np.float32)
        std = np.zeros((n_obs, k), dtype=np.float32)
        samples = np.empty((n_obs, n_chains, k), dtype=np.float32) if keep_samples else None
        n_batches = math.ceil(n_obs / batch_size)
        with tqdm(total=n_batches * n_iter, desc="DICE Gibbs", disable=not progress, unit="iter") as bar:
            for start in range(0, n_obs, batch_size):
                stop = min(start + batch_size, n_obs)
                xb = torch.from_numpy(to_dense(x[start:stop], np.float32)).to(self.device)
                u = self.module.gibbs(
                    self.module.project(xb), rhos, n_chains, noise_var=noise_var, n_prior_steps=n_prior_steps,
                    variance=variance, generator=generator, use_ema=use_ema, callback=lambda _: bar.update(1),
                )
                mean[start:stop] = u.mean(dim=1).cpu().numpy()
                if n_chains > 1:
                    std[start:stop] = u.std(dim=1).cpu().numpy()
                if samples is not None:
                    samples[start:stop] = u.cpu().numpy()
        return mean, std, samples

    def _check_embed_args(self, n_iter: int, n_chains: int, batch_size: int, noise_var: float | str,
                          n_prior_steps: int | None, variance: str) -> float:
        """Validate the sampler settings; returns the likelihood variance with ``"auto"`` resolved."""
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}.")
        if int(n_chains) < 1:
            raise ValueError(f"n_chains must be >= 1, got {n_chains}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if n_prior_steps is not None and int(n_prior_steps) < 1:
            raise ValueError(f"n_prior_steps must be >= 1 or None (every step), got {n_prior_steps}.")
        if variance not in ("beta", "posterior"):
            raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}.")
        if isinstance(noise_var, str):
            if noise_var != "auto":
                raise ValueError(f"noise_var must be a positive number or 'auto', got {noise_var!r}.")
            if math.isfinite(self.residual_var) and self.residual_var > 0:
                return self.residual_var
            warnings.warn(
                "noise_var='auto' needs the reference's residual variance, which this model does not store (saved "
                "by countsdiff-sc 0.1.0, or k equals the number of genes); using noise_var=1.0. Pass a number to "
                "choose it.",
                UserWarning,
                stacklevel=3,
            )
            return 1.0
        if isinstance(noise_var, bool) or not isinstance(noise_var, (int, float, np.floating, np.integer)) or not (
            math.isfinite(noise_var) and noise_var > 0
        ):
            raise ValueError(f"noise_var must be a positive number or 'auto', got {noise_var!r}.")
        return float(noise_var)

    def embed(
        self,
        adata: ad.AnnData | None = None,
        n_iter: int = 100,
        rho: float | Sequence[float] = (5.0, 0.5),
        rho_schedule: Literal["linear", "geometric"] = "linear",
        n_chains: int = 10,
        seed: int | None = None,
        key_added: str = "X_dice",
        batch_size: int = 1024,
        n_prior_steps: int | None = 20,
        noise_var: float | Literal["auto"] = "auto",
        variance: Literal["beta", "posterior"] = "beta",
        use_ema: bool = True,
        store_samples: bool = False,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Denoised embeddings by the DICE split Gibbs sampler (paper Algorithm 1), averaged over chains.

        Each chain starts at the reference-PCA coordinates ``U^(0) = V^T x`` and alternates, for ``rho_s`` in the
        annealing schedule, the likelihood step ``Z ~ N(Lambda (V^T x / sigma^2 + U / rho_s^2), Lambda)`` with
        ``Lambda = (V^T V / sigma^2 + I / rho_s^2)^{-1}`` (Prop. 3.1; ``V^T V = I`` for PCA loadings) and the prior
        step: the DDPM started at ``t0`` = the largest ``t`` with ``abar_t > 1 / (1 + rho_s^2)`` from
        ``sqrt(abar_t0) Z`` and run down to ``t = 0`` (Eq. 7). The embedding is the mean of the ``n_chains`` final
        states; their per-dimension standard deviation is the uncertainty (the confidence sets of Sec. 3).
        All cells and chains of a batch move together (one network call per reverse step).

        Parameters
        ----------
        adata
            AnnData with the reference genes (a query, or the reference itself when None). Extra genes are ignored
            and the order is aligned by name; missing genes raise a ValueError.
        n_iter
            Gibbs iterations (paper: 100 on CITE-seq, 200 on the synthetic data).
        rho
            Coupling level(s), in PCA units: a number (constant), ``(start, end)`` (annealed by ``rho_schedule``;
            paper Sec. 5.1: 5 -> 0.5) or ``n_iter`` values.
        rho_schedule
            ``"linear"`` (paper) or ``"geometric"``.
        n_chains
            Independent chains per cell.
        seed
            Random seed; the same seed and ``batch_size`` give the same result on the same device. None draws one
            (recorded in ``uns``).
        key_added
            obsm key of the chain mean; the spread goes to ``key_added + "_std"``. Keys that exist and were not
            written by countsdiff-sc raise a ValueError instead of being replaced; an earlier embed() with the same
            key is replaced.
        batch_size
            Cells per batch (each batch moves ``batch_size * n_chains`` rows through the network).
        n_prior_steps
            Cost / accuracy of the prior step: a reverse run from ``T`` would take this many ancestral steps, a run
            from ``t0`` takes ``ceil(n_prior_steps * t0 / T)`` evenly spaced ones (respaced DDPM, same step size
            for every ``rho``). None runs every step ``t0, ..., 1`` of Eq. 7 as the paper does (100-400 network
            calls per Gibbs iteration for ``rho`` between 0.5 and 5; slow on a CPU).
        noise_var
            Variance ``sigma^2`` of the Gaussian likelihood in the scaled gene space. ``"auto"`` (default) uses the
            reference's probabilistic-PCA noise variance :attr:`residual_var` (the variance per gene that the ``k``
            axes do not explain; about 0.7 on CBMC with ``k = 25``); the paper uses 1, which on scaled
            single-cell data overstates the noise and pulls cells further towards the prior. Keep ``"auto"`` for
            queries shallower than the reference too: their normalised profiles are shifted rather than noisier,
            and a variance matched to their larger residual (about 1.3 for CBMC cells thinned to 25% of their
            counts) pulled cells towards the wrong populations (Leiden ARI 0.055 below PCA; ``"auto"``: 0.003
            below; ``benchmarks/dice.py``, part (e)).
        variance
            Reverse-step variance: ``"beta"`` (Eq. 7) or ``"posterior"``.
        use_ema
            Use the EMA weights of the denoiser.
        store_samples
            Also store every chain's final state in ``obsm[key_added + "_samples"]`` (n_obs x n_chains x k).
        progress
            Show a progress bar.

        Returns
        -------
        ``(mean, std)``: float32 arrays ``(n_obs, k)`` as written to ``obsm[key_added]`` and
        ``obsm[key_added + "_std"]``. The settings (and the seed used) go to ``uns["countsdiff"][key_added]``.

        Raises
        ------
        ValueError
            Genes missing from ``adata``, counts that are not raw counts, or invalid settings.
        KeyError
            The registered layer is missing from ``adata``.

        Examples
        --------
        >>> mean, std = model.embed(query, n_iter=100, rho=(5.0, 0.5), n_chains=10, seed=0)
        >>> query.obsm["X_dice"].shape == mean.shape
        True
        """
        self.module.check_fitted()
        noise_var_setting = noise_var
        noise_var = self._check_embed_args(n_iter, n_chains, batch_size, noise_var, n_prior_steps, variance)
        self._check_if_trained(warn=True)
        rhos = make_rho_schedule(rho, n_iter, rho_schedule)
        adata, x = self._query_matrix(adata)
        for key in (key_added, f"{key_added}_std") + ((f"{key_added}_samples",) if store_samples else ()):
            check_writable(adata, key, "obsm")
        generator, seed = self._generator(seed)
        start_time = time.perf_counter()
        mean, std, samples = self._sample_chains(
            x, adata.n_obs, int(n_iter), rhos, int(n_chains), float(noise_var), n_prior_steps, variance, generator,
            int(batch_size), use_ema, progress, store_samples,
        )
        elapsed = time.perf_counter() - start_time
        adata.obsm[key_added] = mean
        adata.obsm[f"{key_added}_std"] = std
        if samples is not None:
            adata.obsm[f"{key_added}_samples"] = samples
        record_params(
            adata,
            key_added,
            {
                "method": "dice", "n_iter": int(n_iter), "rho_start": float(rhos[0]), "rho_end": float(rhos[-1]),
                "rho_schedule": _schedule_name(rho, rho_schedule),
                "n_chains": int(n_chains), "seed": seed, "batch_size": int(batch_size),
                "n_prior_steps": n_prior_steps, "noise_var": float(noise_var),
                "noise_var_auto": noise_var_setting == "auto", "variance": variance,
                "use_ema": bool(use_ema), "n_latent": self.n_latent, "std_key": f"{key_added}_std",
                "samples_key": f"{key_added}_samples" if store_samples else None, "seconds": round(elapsed, 3),
            },
        )
        return mean, std

    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        n_iter: int = 100,
        rho: float | Sequence[float] = (5.0, 0.5),
        rho_schedule: Literal["linear", "geometric"] = "linear",
        n_chains: int = 10,
        seed: int | None = None,
        batch_size: int = 1024,
        n_prior_steps: int | None = 20,
        noise_var: float | Literal["auto"] = "auto",
        variance: Literal["beta", "posterior"] = "beta",
        use_ema: bool = True,
        return_std: bool = False,
        progress: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The DICE embedding (chain mean) without writing into ``adata`` (scvi-tools style alias of :meth:`embed`).

        Parameters
        ----------
        adata, n_iter, rho, rho_schedule, n_chains, seed, batch_size, n_prior_steps, noise_var, variance, use_ema
            As in :meth:`embed`.
        return_std
            Also return the per-dimension spread across chains.
        progress
            Show a progress bar.

        Returns
        -------
        The ``(n_obs, k)`` chain mean, or ``(mean, std)`` when ``return_std``.

        Examples
        --------
        >>> z = model.get_latent_representation(query, seed=0)
        """
        self.module.check_fitted()
        noise_var = self._check_embed_args(n_iter, n_chains, batch_size, noise_var, n_prior_steps, variance)
        self._check_if_trained(warn=True)
        rhos = make_rho_schedule(rho, n_iter, rho_schedule)
        adata, x = self._query_matrix(adata)
        generator, _ = self._generator(seed)
        mean, std, _ = self._sample_chains(
            x, adata.n_obs, int(n_iter), rhos, int(n_chains), float(noise_var), n_prior_steps, variance, generator,
            int(batch_size), use_ema, progress, False,
        )
        return (mean, std) if return_std else mean
