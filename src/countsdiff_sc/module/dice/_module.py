"""scvi-tools module of DICE: frozen reference projection + Gaussian DDPM prior on the PCA embeddings."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from countsdiff_sc.diffusion.gaussian import GaussianDiffusion, linear_beta_schedule
from countsdiff_sc.nn import LatentDenoiser

from .._ema import EMAMixin
from ._gibbs import split_gibbs
from ._projection import project, transform

__all__ = ["DICEModule"]


class DICEModule(EMAMixin, BaseModuleClass):
    """Gaussian diffusion prior over the k-dimensional PCA embeddings of a reference (DICE, Sec. 3 and App. A, C).

    The module reads raw counts (the registered layer) and computes the embedding itself with frozen buffers
    fitted on the reference (``set_projection``): library-size normalisation and ``log1p`` (``log_normalize``),
    per-gene scaling and clipping (``scale``), centring and projection on the loadings ``V``, by
    :func:`~countsdiff_sc.module.dice.project`. Keeping the projection inside the module makes training, query
    mapping and save / load use one code path, and the buffers travel with the state dict.

    Training (paper Algorithm 2): ``u = V^T (x_tilde - mean)``, optionally a same-label Dirichlet mixup inside the
    minibatch (App. C), ``y = u / latent_scale``, ``t ~ U{1..T}``, ``y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps``
    (Eq. 8) and the loss ``mean ||eps - eps_theta(y_t, t)||^2 / k``.

    Parameters
    ----------
    n_input
        Number of registered genes.
    n_latent
        Embedding dimension ``k``.
    n_labels
        Number of label categories (for mixup).
    use_labels
        Whether labels were registered (mixup needs them).
    log_normalize
        Normalise library sizes to ``target_sum`` and apply ``log1p`` (raw counts); False for data that is
        already transformed.
    scale
        Scale genes with the stored mean / std and clip to ``[-max_value, max_value]``.
    target_sum
        Library size after normalisation.
    max_value
        Clip of the scaled values (None: no clip).
    n_hidden, n_blocks, expansion, dim_time, dropout
        Denoiser architecture (:class:`~countsdiff_sc.nn.LatentDenoiser`).
    n_timesteps, beta_start, beta_end
        Linear beta schedule (App. C: T = 512, 1e-4 .. 2e-2).
    mixup_prob
        Probability that a training embedding is replaced by a Dirichlet(1) mixture of itself and
        ``mixup_size - 1`` random same-label cells of the minibatch (App. C uses 0.9 with 5 cells).
    mixup_size
        Number of cells in a mixup.
    ema_decay
        Decay of the EMA network used for validation and sampling (0 disables it).

    Examples
    --------
    >>> import numpy as np, torch
    >>> module = DICEModule(n_input=4, n_latent=2, log_normalize=False, scale=False, n_hidden=16, n_blocks=1)
    >>> module.set_projection(np.zeros(4), np.ones(4), np.zeros(4), np.eye(4)[:, :2], latent_scale=1.0)
    >>> module.project(torch.ones(3, 4)).shape
    torch.Size([3, 2])
    >>> module.gibbs(torch.zeros(3, 2), np.array([2.0, 1.0]), n_chains=5, n_prior_steps=4).shape
    torch.Size([3, 5, 2])
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        n_labels: int = 1,
        use_labels: bool = False,
        log_normalize: bool = True,
        scale: bool = True,
        target_sum: float = 1e4,
        max_value: float | None = 10.0,
        n_hidden: int = 256,
        n_blocks: int = 3,
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
        super().__init__()
        if not 0.0 <= mixup_prob <= 1.0:
            raise ValueError(f"mixup_prob must lie in [0, 1], got {mixup_prob}.")
        if mixup_prob > 0 and not use_labels:
            raise ValueError("mixup_prob > 0 needs labels: register labels_key= in setup_anndata, or set mixup_prob=0.")
        if int(mixup_size) < 2:
            raise ValueError(f"mixup_size must be >= 2, got {mixup_size}.")
        self.n_input = int(n_input)
        self.n_latent = int(n_latent)
        self.n_labels = int(n_labels)
        self.use_labels = bool(use_labels)
        self.log_normalize = bool(log_normalize)
        self.scale = bool(scale)
        self.target_sum = float(target_sum)
        self.max_value = None if max_value is None else float(max_value)
        self.mixup_prob = float(mixup_prob)
        self.mixup_size = int(mixup_size)
        self.diffusion = GaussianDiffusion(linear_beta_schedule(n_timesteps, beta_start, beta_end))
        self.register_buffer("gene_mean", torch.zeros(self.n_input))
        self.register_buffer("gene_std", torch.ones(self.n_input))
        self.register_buffer("pca_mean", torch.zeros(self.n_input))
        self.register_buffer("loadings", torch.zeros(self.n_input, self.n_latent))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("residual_var", torch.full((), float("nan")))
        self.register_buffer("embedding_scale", torch.full((), float("nan")))
        self.register_buffer("projection_fitted", torch.zeros((), dtype=torch.bool))
        self.net = LatentDenoiser(
            self.n_latent, n_hidden=n_hidden, n_blocks=n_blocks, expansion=expansion, dim_time=dim_time,
            dropout=dropout,
        )
        self._init_ema(ema_decay)

    # ------------------------------------------------------------------ projection
    @torch.no_grad()
    def set_projection(
        self,
        gene_mean: np.ndarray,
        gene_std: np.ndarray,
        pca_mean: np.ndarray,
        loadings: np.ndarray,
        latent_scale: float,
        residual_var: float = float("nan"),
        embedding_scale: float = float("nan"),
    ) -> None:
        """Store the frozen reference preprocessing and loadings (:func:`~countsdiff_sc.module.dice.fit_projection`).

        Parameters
        ----------
        gene_mean, gene_std
            ``(n_input,)`` scaling statistics of the log-normalised reference.
        pca_mean
            ``(n_input,)`` PCA centre of the scaled reference.
        loadings
            ``(n_input, n_latent)`` principal axes ``V``.
        latent_scale
            Scale ``c`` of the diffusion coordinates ``y = u / c``.
        residual_var
            Probabilistic-PCA noise variance of the reference (``DICEProjection.residual_var``; NaN: unknown), the
            likelihood variance that ``noise_var="auto"`` uses.
        embedding_scale
            Spread of the reference embedding (``DICEProjection.embedding_scale``; NaN: unknown), the coupling that
            ``rho="auto"`` uses.

        Returns
        -------
        None; the buffers (saved with the state dict) are overwritten and the module is marked as fitted.
        """
        for name, value in [("gene_mean", gene_mean), ("gene_std", gene_std), ("pca_mean", pca_mean),
                            ("loadings", loadings)]:
            buf = getattr(self, name)
            value = torch.as_tensor(np.asarray(value), dtype=buf.dtype)
            if value.shape != buf.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(buf.shape)}.")
            buf.copy_(value)
        self.latent_scale.fill_(float(latent_scale))
        self.residual_var.fill_(float(residual_var))
        self.embedding_scale.fill_(float(embedding_scale))
        self.projection_fitted.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # models saved by 0.1.0 have no residual_var buffer, those saved before 0.2 no embedding_scale: load them with
        # "unknown" (NaN) instead of failing
        state_dict.setdefault(prefix + "residual_var", torch.full((), float("nan")))
        state_dict.setdefault(prefix + "embedding_scale", torch.full((), float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_fitted(self) -> None:
        """Raise a ValueError when the projection buffers were never set.

        Returns
        -------
        None.
        """
        if not bool(self.projection_fitted):
            raise ValueError(
                "The DICE projection has not been fitted: build the model from a reference AnnData "
                "(DICEModel(adata)) or load a saved model."
            )

    @property
    def _settings(self) -> dict:
        """Keyword settings of :func:`~countsdiff_sc.module.dice.transform` stored with this module."""
        return {"log_normalize": self.log_normalize, "scale": self.scale, "target_sum": self.target_sum,
                "max_value": self.max_value}

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, scaled, clipped expression ``x_tilde`` (:func:`~countsdiff_sc.module.dice.transform`).

        Parameters
        ----------
        x
            Counts ``(n, n_input)`` (or transformed values when ``log_normalize`` is False).

        Returns
        -------
        Float tensor ``(n, n_input)``; cells without counts stay at zero before scaling.
        """
        return transform(x, self.gene_mean, self.gene_std, **self._settings)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """PCA coordinates ``V^T (x_tilde - mean)`` of count rows (paper Sec. 3, ``U_hat = V_hat^T X``).

        Parameters
        ----------
        x
            Counts ``(n, n_input)``.

        Returns
        -------
        Float tensor ``(n, n_latent)``.
        """
        return project(x, self.gene_mean, self.gene_std, self.pca_mean, self.loadings, **self._settings)

    # ------------------------------------------------------------------ scvi-tools module interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {"x": tensors[REGISTRY_KEYS.X_KEY], "labels": tensors.get(REGISTRY_KEYS.LABELS_KEY)}

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {"y_t": inference_outputs["y_t"], "t": inference_outputs["t"]}

    def mixup(self, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same-label Dirichlet(1) mixup inside a minibatch (paper App. C).

        Each row is, with probability ``mixup_prob``, replaced by ``sum_j lambda_j y_j`` over itself and
        ``mixup_size - 1`` cells drawn with replacement among the minibatch cells of its label,
        ``lambda ~ Dirichlet(1)``. Mixing embeddings equals mixing the preprocessed profiles, since the
        projection is linear. A label alone in the minibatch mixes with itself (no change).

        Parameters
        ----------
        y
            Embeddings ``(n, k)`` of a minibatch.
        labels
            Label codes ``(n,)`` or ``(n, 1)``.

        Returns
        -------
        Tensor ``(n, k)``.
        """
        n = y.shape[0]
        if self.mixup_prob <= 0 or n < 2:
            return y
        lab = labels.reshape(-1).long()
        order = torch.argsort(lab, stable=True)
        counts = torch.bincount(lab, minlength=self.n_labels)
        starts = torch.cumsum(counts, 0) - counts
        m = self.mixup_size - 1
        pick = (torch.rand(n, m, device=y.device) * counts[lab][:, None]).long()
        partners = order[starts[lab][:, None] + pick]  # (n, m) indices of same-label cells
        members = torch.cat([y[:, None, :], y[partners]], dim=1)  # (n, mixup_size, k)
        weights = torch.distributions.Dirichlet(torch.ones(self.mixup_size, device=y.device)).sample((n,))
        mixed = (weights[:, :, None] * members).sum(dim=1)
        use = torch.rand(n, device=y.device) < self.mixup_prob
        return torch.where(use[:, None], mixed, y)

    @auto_move_data
    def inference(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Embed the counts, (optionally) mix up, draw ``t ~ U{1..T}`` and noise the embedding (Eq. 8).

        Parameters
        ----------
        x
            Counts ``(n, n_input)``.
        labels
            Label codes (used by the mixup in training mode only).

        Returns
        -------
        Dict with the clean coordinates ``y``, times ``t``, noise ``eps`` and noised ``y_t``.
        """
        y = self.project(x) / self.latent_scale
        if self.training and self.mixup_prob > 0 and labels is not None:
            y = self.mixup(y, labels)
        n = y.shape[0]
        t = torch.randint(1, self.diffusion.n_timesteps + 1, (n,), device=y.device)
        eps = torch.randn_like(y)
        return {"y": y, "t": t, "eps": eps, "y_t": self.diffusion.q_sample(y, t, eps)}

    @auto_move_data
    def generative(self, y_t: torch.Tensor, t: torch.Tensor, use_ema: bool = False) -> dict:
        """Predict the noise ``eps_theta(y_t, t / T)``.

        Parameters
        ----------
        y_t
            Noised coordinates ``(n, k)``.
        t
            Integer times ``(n,)``.
        use_ema
            Use the EMA network (validation and sampling).

        Returns
        -------
        Dict with ``eps_hat`` ``(n, k)``.
        """
        net = self.network(use_ema)
        return {"eps_hat": net(y_t, t.to(y_t.dtype) / self.diffusion.n_timesteps)}

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Noise-prediction loss of Algorithm 2, averaged over the ``k`` dimensions and the cells.

        Parameters
        ----------
        tensors
            The minibatch (unused).
        inference_outputs, generative_outputs
            Outputs of :meth:`inference` and :meth:`generative`.

        Returns
        -------
        :class:`~scvi.module.base.LossOutput` with the mean loss and the per-cell losses.
        """
        per_cell = (inference_outputs["eps"] - generative_outputs["eps_hat"]).pow(2).mean(dim=1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, n_obs_minibatch=per_cell.shape[0])

    # ------------------------------------------------------------------ sampling
    def eps_fn(self, use_ema: bool = True):
        """The noise predictor as the sampler expects it: ``eps_fn(y_t, t)`` for one integer ``t`` per batch.

        Parameters
        ----------
        use_ema
            Use the EMA network.

        Returns
        -------
        Callable ``(y_t, t) -> eps_hat``.
        """
        net = self.network(use_ema)
        n_timesteps = self.diffusion.n_timesteps

        def fn(y_t: torch.Tensor, t: int) -> torch.Tensor:
            return net(y_t, torch.tensor(t / n_timesteps, dtype=y_t.dtype, device=y_t.device))

        return fn

    @torch.inference_mode()
    def gibbs(
        self,
        vtx: torch.Tensor,
        rhos: np.ndarray,
        n_chains: int,
        noise_var: float = 1.0,
        n_prior_steps: int | None = None,
        variance: Literal["beta", "posterior"] = "beta",
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        callback=None,
    ) -> torch.Tensor:
        """DICE split Gibbs chains (Algorithm 1) started at the PCA coordinates ``vtx``.

        Parameters
        ----------
        vtx
            ``V^T x`` per cell, ``(n, k)`` (:meth:`project`).
        rhos
            Coupling level per iteration.
        n_chains
            Chains per cell.
        noise_var, n_prior_steps, variance, generator, callback
            See :func:`~countsdiff_sc.module.dice.split_gibbs`.
        use_ema
            Use the EMA network.

        Returns
        -------
        Final states ``(n, n_chains, k)``; ``V^T V`` comes from the stored loadings.
        """
        self.check_fitted()
        vtv = self.loadings.T @ self.loadings
        return split_gibbs(
            self.eps_fn(use_ema), vtx, vtv, rhos, self.diffusion, n_chains=n_chains, noise_var=noise_var,
            latent_scale=float(self.latent_scale), n_prior_steps=n_prior_steps, variance=variance,
            generator=generator, callback=callback,
        )
