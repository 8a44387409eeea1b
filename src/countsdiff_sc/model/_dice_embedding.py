"""Embedding verbs of DICEModel: ``project`` (PCA start), ``embed`` (split Gibbs chains, DICE Algorithm 3) and
``get_latent_representation``; the math lives in :mod:`countsdiff_sc.module.dice`."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import torch

from countsdiff_sc._resources import check_memory, check_work, format_bytes
from countsdiff_sc._utils import check_counts, check_writable, get_matrix, record_params, to_dense
from countsdiff_sc.module.dice import rho_schedule as make_rho_schedule

from ._chains import make_generator, positive_int
from ._docs import fill_doc
from ._results import check_gene_names, gene_positions

logger = logging.getLogger(__name__)

__all__ = ["DICEEmbeddingMixin"]


#: ``rho="auto"``: the ends of the annealed coupling in units of the reference's spread ``c`` (``embedding_scale``),
#: ``2c -> 0.2c``: the paper's single-cell schedule 5 -> 0.5, set for scaled PCA scores whose spread is about 2.5,
#: expressed in units of ``c`` so that it means the same for data of any scale.
RHO_AUTO = (2.0, 0.2)


def _schedule_name(rho: float | Sequence[float] | str, rhos: np.ndarray, kind: str) -> str:
    """How the rho values ``rhos`` of a run were made from the argument ``rho``: ``"constant"``, the interpolation
    kind, or ``"custom"``."""
    if np.ptp(rhos) == 0:
        return "constant"
    return kind if isinstance(rho, str) or np.asarray(rho).size == 2 else "custom"


class DICEEmbeddingMixin:
    """``project``, ``embed`` and ``get_latent_representation`` of DICEModel."""

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
        if not np.array_equal(np.asarray(adata.var_names).astype(str), self.var_names):
            check_gene_names(adata.var_names, "adata")
            logger.info("Aligning the AnnData's %d genes to the model's %d genes by name.", adata.n_vars,
                        self.var_names.size)
            x = x[:, gene_positions(adata.var_names, self.var_names, self.var_names.size, "adata")]
        if self.module.log_normalize:
            check_counts(x, where=where)
        return adata, x

    def _generator(self, seed: int | None) -> tuple[torch.Generator, int]:
        generator, _, seed = make_generator(seed, self.device)
        return generator, seed

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
        batch_size = positive_int(batch_size, "batch_size")
        if key_added is not None and (not isinstance(key_added, str) or not key_added):
            raise ValueError(f"key_added must be a non-empty string or None, got {key_added!r}.")
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

    def _prepare_chains(
        self,
        adata: ad.AnnData | None,
        n_iter: int,
        rho: float | Sequence[float] | str,
        rho_schedule: str,
        n_chains: int,
        seed: int | None,
        batch_size: int,
        n_prior_steps: int | None,
        noise_var: float | str,
        variance: str,
        obsm_keys: Sequence[str] = (),
        store_samples: bool = False,
    ) -> tuple[ad.AnnData, Any, np.ndarray, float, torch.Generator, int]:
        """Validate the settings and the cells of :meth:`embed` / :meth:`get_latent_representation`.

        Returns the AnnData, its aligned count matrix, the rho values, the likelihood variance (``"auto"`` resolved),
        the random generator and the seed it was made from; ``obsm_keys`` are checked to be writable.
        """
        self.module.check_fitted()
        noise_var = self._check_embed_args(n_iter, n_chains, batch_size, noise_var, n_prior_steps, variance)
        if seed is not None:
            seed = positive_int(seed, "seed (a non-negative integer, or None to draw one)", 0)
        for key in obsm_keys:
            if not isinstance(key, str) or not key:
                raise ValueError(f"key_added must be a non-empty string, got {key!r}.")
        self._check_if_trained(warn=True)
        rhos = make_rho_schedule(self._resolve_rho(rho), n_iter, rho_schedule)
        adata, x = self._query_matrix(adata)
        if adata.n_obs == 0:
            raise ValueError("adata has no cells to embed.")
        for key in obsm_keys:
            check_writable(adata, key, "obsm")
        self._check_resources(adata.n_obs, int(x.shape[1]), rhos, int(n_chains), int(batch_size), n_prior_steps,
                              store_samples)
        generator, seed = self._generator(seed)
        return adata, x, rhos, noise_var, generator, seed

    def _resolve_rho(self, rho: float | Sequence[float] | str) -> float | Sequence[float]:
        """``rho`` with ``"auto"`` resolved: :data:`RHO_AUTO` times the reference's spread (:attr:`embedding_scale`)."""
        if not isinstance(rho, str):
            return rho
        if rho != "auto":
            raise ValueError(f"rho must be 'auto', a positive number, a pair (start, end) or n_iter numbers, got "
                             f"{rho!r}.")
        scale = self.embedding_scale
        if not (math.isfinite(scale) and scale > 0):
            scale = float(self.module.latent_scale)  # saved before 0.2: c itself when the prior is standardised
        if scale != 1.0 and math.isfinite(scale) and scale > 0:
            return tuple(f * scale for f in RHO_AUTO)
        warnings.warn(
            "rho='auto' is the spread of the reference embedding, which this model does not store (saved before "
            "countsdiff-sc 0.2 with standardize_latent=False); using the former default rho=(5.0, 0.5). Pass rho= "
            "to choose it.",
            UserWarning,
            stacklevel=5,  # user -> embed -> _prepare_chains -> _resolve_rho -> here
        )
        return (5.0, 0.5)

    def _check_resources(self, n_obs: int, n_genes: int, rhos: np.ndarray, n_chains: int, batch_size: int,
                         n_prior_steps: int | None, store_samples: bool) -> None:
        """The resource guard of :meth:`embed`: refuse, before anything is allocated, chains the memory or the work
        budget cannot hold (``countsdiff_sc.settings.max_memory`` / ``max_work``).

        Memory: the outputs (chain mean and spread, ``n_obs x k`` each, and the ``n_obs x n_chains x k`` chain states
        with ``store_samples``) and the working arrays of one batch: its ``batch_size x n_chains`` rows each hold
        about ten ``k``-vectors (state, likelihood draw, noise, network input and output) and the network's
        activations (its width), plus the batch's dense counts and their normalised copies. Work: rows (cells x
        chains) x network evaluations per row (the prior steps of every iteration) x the network's width, the cost of
        one evaluation of one row.
        """
        k = self.n_latent
        width = max((int(p.shape[0]) for p in self.module.net.parameters() if p.ndim == 2), default=k)
        diffusion, scale = self.module.diffusion, float(self.module.latent_scale)
        evals = 0
        for r in rhos:
            t0 = diffusion.select_t0(float(r) / scale)
            evals += t0 if n_prior_steps is None else min(int(n_prior_steps), t0)
        rows_per_batch = min(batch_size, n_obs) * n_chains
        out_bytes = 4.0 * n_obs * k * (2 + (n_chains if store_samples else 0))
        work_bytes = 4.0 * rows_per_batch * (10 * k + 4 * width) + 16.0 * min(batch_size, n_obs) * n_genes
        what = (f"embed(n_chains={n_chains}, n_iter={rhos.size}, batch_size={batch_size}) of {n_obs:,} cells "
                f"(k = {k})")
        check_memory(what, out_bytes + work_bytes,
                     f"fewer chains (n_chains), a smaller batch_size (each batch moves batch_size x n_chains = "
                     f"{rows_per_batch:,} rows, about {format_bytes(work_bytes)})"
                     + (", or store_samples=False" if store_samples else ""))
        check_work(what + f", {evals} network evaluations per chain", float(n_obs) * n_chains * evals * width,
                   "fewer chains (n_chains), fewer iterations (n_iter) or prior steps (n_prior_steps), or fewer cells "
                   "per call")

    def _check_embed_args(self, n_iter: int, n_chains: int, batch_size: int, noise_var: float | str,
                          n_prior_steps: int | None, variance: str) -> float:
        """Validate the sampler settings (whole numbers: ``n_iter=2.5`` is refused, not truncated); returns the
        likelihood variance with ``"auto"`` resolved."""
        positive_int(n_iter, "n_iter")
        positive_int(n_chains, "n_chains")
        positive_int(batch_size, "batch_size")
        if n_prior_steps is not None:
            positive_int(n_prior_steps, "n_prior_steps (or None for every step)")
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
                stacklevel=4,  # user -> embed -> _prepare_chains -> here
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
        rho: float | Sequence[float] | Literal["auto"] = "auto",
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
            Coupling level(s), in PCA units: ``"auto"`` (default), a number (constant), ``(start, end)`` (annealed by
            ``rho_schedule``) or ``n_iter`` values. ``"auto"`` anneals from ``2c`` to ``0.2c`` (:data:`RHO_AUTO`),
            ``c`` the spread of the reference embedding (:attr:`embedding_scale`): the paper's single-cell schedule
            (Sec. 5.1: 5 -> 0.5 on scaled PCA scores, whose spread is about 2.5) in units of the data, so that it
            means the same for data of any scale. The chains forget their start, so the last iterations' coupling
            sets the result, and it says how far the prior may move a cell: at a small fraction of ``c`` DICE
            removes noise and keeps each cell near its measured position (what query mapping of real cells needs);
            a constant coupling of the order of ``c`` moves cells towards the centre of the population the prior puts
            them in, which sharpens overlapping clusters (the paper's synthetic setups: pass
            ``rho=model.embedding_scale``) but on real cells also pulls more of them into a wrong population.
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
            Network evaluations of every prior step: ``min(n_prior_steps, t0)`` evenly spaced ancestral steps from
            the start ``t0`` of ``rho`` (respaced DDPM). 20 (default) keeps the posterior variance, hence
            ``X_dice_std``, close to its exact value for an exact Gaussian prior (fewer steps shrink it). None runs
            every step ``t0, ..., 1`` of Eq. 7 as the paper does (hundreds of network calls per Gibbs iteration at
            large ``rho``; slow on a CPU).
        noise_var
            Variance ``sigma^2`` of the Gaussian likelihood in the scaled gene space. ``"auto"`` (default) uses the
            reference's probabilistic-PCA noise variance :attr:`residual_var` (the variance per gene that the ``k``
            axes do not explain); the paper uses 1, which on scaled single-cell data overstates the noise and pulls
            cells further towards the prior. Keep ``"auto"`` for queries shallower than the reference too: their
            normalised profiles are shifted rather than noisier, and a variance matched to their larger residual
            pulls cells towards the wrong populations (the DICE benchmark page of the docs has the measurements).
        variance
            Reverse-step variance: ``"beta"`` (Eq. 7) or ``"posterior"``.
        use_ema
            Use the EMA weights of the denoiser.
        store_samples
            Also store every chain's final state in ``obsm[key_added + "_samples"]`` (n_obs x n_chains x k).
        %(progress)s

        Returns
        -------
        ``(mean, std)``: float32 arrays ``(n_obs, k)`` as written to ``obsm[key_added]`` and
        ``obsm[key_added + "_std"]``. The settings (and the seed used) go to ``uns["countsdiff"][key_added]``.
        The spread is the width of the sampled posterior of the cell state, not a per-cell confidence of a label:
        the likelihood step's covariance is the same for every cell, so the spread hardly differs between cells and
        does not tell which cells a label transfer gets wrong (the neighbours' disagreement does; the DICE benchmark
        page of the docs has the measurement).

        Raises
        ------
        ValueError
            Genes missing from ``adata``, counts that are not raw counts, or invalid settings.
        KeyError
            The registered layer is missing from ``adata``.

        Examples
        --------
        >>> mean, std = model.embed(query, n_iter=100, n_chains=10, seed=0)  # rho="auto": 2c -> 0.2c
        >>> query.obsm["X_dice"].shape == mean.shape
        True
        """
        noise_var_setting = noise_var
        keys = (key_added, f"{key_added}_std") + ((f"{key_added}_samples",) if store_samples else ())
        adata, x, rhos, noise_var, generator, seed = self._prepare_chains(
            adata, n_iter, rho, rho_schedule, n_chains, seed, batch_size, n_prior_steps, noise_var, variance, keys,
            bool(store_samples),
        )
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
                "rho_schedule": _schedule_name(rho, rhos, rho_schedule),
                "rho_auto": isinstance(rho, str),
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
        rho: float | Sequence[float] | Literal["auto"] = "auto",
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
        %(progress)s

        Returns
        -------
        The ``(n_obs, k)`` chain mean, or ``(mean, std)`` when ``return_std``.

        Examples
        --------
        >>> z = model.get_latent_representation(query, seed=0)
        """
        adata, x, rhos, noise_var, generator, _ = self._prepare_chains(
            adata, n_iter, rho, rho_schedule, n_chains, seed, batch_size, n_prior_steps, noise_var, variance
        )
        mean, std, _ = self._sample_chains(
            x, adata.n_obs, int(n_iter), rhos, int(n_chains), float(noise_var), n_prior_steps, variance, generator,
            int(batch_size), use_ema, progress, False,
        )
        return (mean, std) if return_std else mean

    embed = fill_doc(embed)
    get_latent_representation = fill_doc(get_latent_representation)
