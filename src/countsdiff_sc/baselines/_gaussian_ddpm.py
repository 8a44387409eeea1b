"""Gaussian-diffusion baseline for count generation: a DDPM on ``log1p`` counts (CountsDiff paper, Sec. 4.1 / App. D.1).

The CountsDiff paper compares count diffusion with "a Gaussian diffusion model operating in log-space": a DDPM trained
on ``y = log(1 + x)``. Its samples are real numbers and must be mapped back to counts by ``round(expm1(y))`` and
clipping at 0; the failure modes of this route (samples squeezed towards the mode, a wrong share of exact zeros, a
collapsed variance) are what the toy experiment of the paper shows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from .._utils import check_counts, check_obs_key, get_matrix, record_params, to_dense
from ..diffusion.gaussian import GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule
from ..module import EMAMixin
from ..nn import ResidualMLPDenoiser

__all__ = ["GaussianDDPMGenerator"]

BETA_SCHEDULES = ("linear", "cosine")


class _NoiseMLP(ResidualMLPDenoiser):
    """The residual MLP of CountsDiff (same blocks and parameter count) as a noise predictor with a Gaussian skip.

    Differences to :class:`~countsdiff_sc.nn.ResidualMLPDenoiser`: the input is the real-valued ``y_t`` itself (not
    ``log1p`` of counts, which is undefined for negative ``y_t``), the output is unconstrained (no softplus), and the
    network predicts the noise as

    ``eps_hat = eps_lin(y_t, t) + MLP(y_t, t, c)``,  ``eps_lin = sqrt(1 - abar_t) (y_t - sqrt(abar_t) mu)
    / (abar_t sigma^2 + 1 - abar_t)``,

    where ``eps_lin`` is the exact posterior-mean noise of a per-gene Gaussian with the training mean ``mu`` and
    variance ``sigma^2`` (``mu = 0``, ``sigma = 1`` after standardisation): a parameter-free skip connection, the
    eps-form of the ``c_skip`` preconditioning of Karras et al. (2022). It is needed because the hidden width
    (256) is below the number of genes: without it the noise of every gene has to pass through the hidden layers,
    so at large ``t`` (where ``eps ~ y_t``) a network of width ``h`` can reproduce at most ``h`` of the ``n_genes``
    noise directions. The rest is never denoised, the reverse chain diverges (or, with ``x0`` clipping, pins the
    samples to the clipping bounds whatever the label) and the loss stalls at about ``1 - h / n_genes``. The MLP
    only learns the correction to the Gaussian (gene correlations, labels, non-Gaussian marginals); its
    zero-initialised head makes the untrained network the per-gene Gaussian model. ``t`` is the integer step
    ``1..T`` (embedded as ``t / T``).
    """

    def __init__(self, n_genes: int, alpha_bars: torch.Tensor, data_mean: torch.Tensor, data_var: torch.Tensor,
                 **kwargs: Any):
        super().__init__(n_genes, **kwargs)
        self.register_buffer("alpha_bars", torch.as_tensor(alpha_bars, dtype=torch.float32))
        self.register_buffer("data_mean", torch.as_tensor(data_mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("data_var", torch.as_tensor(data_var, dtype=torch.float32).reshape(1, -1))
        nn.init.zeros_(self.head.bias)

    @property
    def n_timesteps(self) -> int:
        return self.alpha_bars.numel() - 1

    def gaussian_eps(self, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The skip term ``eps_lin``: the noise estimate of independent Gaussian genes with the data's moments."""
        ab = self.alpha_bars[t.long()][:, None]
        return (1.0 - ab).sqrt() * (y_t - ab.sqrt() * self.data_mean) / (ab * self.data_var + 1.0 - ab)

    def forward(  # type: ignore[override]
        self, y_t: torch.Tensor, t: torch.Tensor, cat: torch.Tensor | None = None, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_embedding(t.float() / self.n_timesteps)
        cond = self.conditions(cat, None, drop)
        if cond.shape[1]:
            emb = emb + cond.sum(dim=1)
        h = self.input(y_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.gaussian_eps(y_t, t) + self.head(self.out_norm(h))


class _NoiseModel(EMAMixin, nn.Module):
    """Holds the live noise network and its EMA copy (the same EMA warm-up as CountsDiff's module)."""

    def __init__(self, net: _NoiseMLP, ema_decay: float):
        super().__init__()
        self.net = net
        self._init_ema(ema_decay)


class GaussianDDPMGenerator:
    """Gaussian DDPM on ``log1p`` counts, with classifier-free label guidance: the Gaussian baseline of CountsDiff.

    Training (Ho et al., 2020): the data are ``y = log1p(x)``, optionally standardised per gene
    (``(y - mean) / std`` over the training cells); ``y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps`` with ``t``
    uniform on ``1..T`` and the network predicts ``eps`` under the MSE loss. The network is CountsDiff's residual MLP
    (:class:`~countsdiff_sc.nn.ResidualMLPDenoiser` blocks: FiLM time / label conditioning, same default width and
    depth, so the two models have about the same number of parameters) plus a parameter-free skip: the MLP adds its
    output to the posterior-mean noise of independent Gaussian genes, ``sqrt(1 - abar_t) y_t`` for standardised
    data, so the noise of all genes reaches the output even though the hidden width is below the number of genes
    (without it a 256-wide MLP cannot denoise 500 genes). With ``labels_key`` the label of a training
    cell is replaced by a null token with probability ``p_uncond``; sampling mixes
    ``eps = eps_u + guidance (eps_c - eps_u)`` (1 = conditional, 0 = unconditional, > 1 sharpens), the convention
    of :meth:`countsdiff_sc.CountsDiffModel.sample`. Optimiser, warm-up, clipping and EMA follow CountsDiff's
    defaults. Training is a plain torch loop (CPU is fine for a few thousand steps).

    Sampling runs the ancestral reverse chain (:class:`~countsdiff_sc.diffusion.GaussianDiffusion`) on ``n_steps``
    evenly spaced times (a respaced DDPM; ``n_steps=None`` runs all ``T``). **Back to counts:** a Gaussian model on
    ``log1p`` counts produces real numbers, so the only way to obtain counts is ``x = max(0, round(expm1(y)))``
    (after undoing the standardisation). This rounding is part of the baseline, not a choice of the benchmark: every
    ``y < log(1.5)`` becomes an exact zero, and values are additionally capped at ``log1p(10 * max training count)``
    before ``expm1`` so that a rare divergent sample cannot overflow (the cap is far above the data and almost never
    active).

    Parameters
    ----------
    n_hidden, n_layers, dim_emb, dropout
        Residual MLP size (CountsDiff's defaults: 256, 3, 128, 0).
    n_timesteps
        Number of diffusion steps ``T`` of training.
    beta_schedule
        ``"linear"`` (``beta`` from ``beta_start`` to ``beta_end``, Ho et al.) or ``"cosine"`` (Nichol & Dhariwal;
        the paper's toy experiment, App. D.1).
    beta_start, beta_end
        Ends of the linear schedule.
    standardize
        Standardise ``log1p`` counts per gene before the diffusion (the paper's toy model uses plain ``log1p``).
    p_uncond
        Probability of dropping the label of a training cell (classifier-free guidance).
    ema_decay
        Decay of the EMA weights used for sampling (0 disables).

    Attributes
    ----------
    history_
        DataFrame with the mean training loss every ``log_every`` steps (after :meth:`fit`).
    var_names_, labels_key_, label_categories_
        Genes, label column and label categories seen by :meth:`fit`.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.synthetic_nb(n_cells=500)
    >>> gen = cds.baselines.GaussianDDPMGenerator(n_hidden=32, n_layers=1).fit(adata, max_steps=50, progress=False)
    >>> gen.sample(20, seed=0).shape
    (20, 10)
    """

    def __init__(
        self,
        n_hidden: int = 256,
        n_layers: int = 3,
        dim_emb: int = 128,
        dropout: float = 0.0,
        n_timesteps: int = 1000,
        beta_schedule: Literal["linear", "cosine"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        standardize: bool = True,
        p_uncond: float = 0.1,
        ema_decay: float = 0.999,
    ):
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}.")
        if int(n_hidden) < 1 or int(n_layers) < 0 or int(dim_emb) < 2 or int(dim_emb) % 2:
            raise ValueError(
                f"Need n_hidden >= 1, n_layers >= 0 and an even dim_emb >= 2; got n_hidden={n_hidden}, "
                f"n_layers={n_layers}, dim_emb={dim_emb}."
            )
        betas = (
            linear_beta_schedule(n_timesteps, beta_start, beta_end)
            if beta_schedule == "linear"
            else cosine_beta_schedule(n_timesteps)
        )
        self.diffusion = GaussianDiffusion(betas)
        self.net_kwargs = {"n_hidden": int(n_hidden), "n_layers": int(n_layers), "dim_emb": int(dim_emb),
                           "dropout": float(dropout)}
        self.settings = {**self.net_kwargs, "n_timesteps": int(n_timesteps), "beta_schedule": beta_schedule,
                         "beta_start": float(beta_start), "beta_end": float(beta_end), "standardize": bool(standardize),
                         "p_uncond": float(p_uncond), "ema_decay": float(ema_decay)}
        self.model_: _NoiseModel | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.model_ is not None else "not fitted"
        return f"GaussianDDPMGenerator({self.diffusion!r}, {self.net_kwargs}, {state})"

    @property
    def n_params(self) -> int:
        """Number of parameters of the noise network (0 before :meth:`fit`)."""
        return 0 if self.model_ is None else sum(p.numel() for p in self.model_.net.parameters())

    # ------------------------------------------------------------------ training
    def fit(
        self,
        adata: ad.AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        max_steps: int = 6000,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        gradient_clip_val: float | None = 1.0,
        seed: int = 0,
        log_every: int = 100,
        progress: bool = True,
    ) -> GaussianDDPMGenerator:
        """Train the noise predictor on all cells of ``adata``.

        Parameters
        ----------
        adata
            AnnData with raw integer counts in ``X`` or ``layers[layer]``; it is not modified.
        layer
            Layer holding the counts; None uses ``X``.
        labels_key
            Optional obs column of labels to condition on (classifier-free guidance).
        max_steps
            Number of optimiser steps.
        batch_size
            Cells per minibatch (minibatches run over shuffled epochs).
        lr, weight_decay, warmup_steps, gradient_clip_val
            AdamW settings, linear warm-up and gradient-norm clipping (None disables it).
        seed
            Seed of the weights, minibatches, times and noise; the same seed gives the same model on the same device.
        log_every
            Steps per entry of :attr:`history_`.
        progress
            Show a progress bar.

        Returns
        -------
        ``self``, fitted.
        """
        from tqdm.auto import tqdm

        if not isinstance(adata, ad.AnnData):
            raise ValueError(f"adata must be an AnnData, got {type(adata).__name__}.")
        if int(max_steps) < 1 or int(batch_size) < 1 or int(log_every) < 1:
            raise ValueError(
                f"max_steps, batch_size and log_every must be positive, got {max_steps}, {batch_size}, {log_every}."
            )
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if adata.n_obs < 2:
            raise ValueError(f"Need at least 2 cells to train, got {adata.n_obs}.")
        x = get_matrix(adata, layer)
        check_counts(x, "adata.X" if layer is None else f"adata.layers[{layer!r}]")
        counts = to_dense(x, np.float64)
        codes = None
        categories: list[str] = []
        if labels_key is not None:
            check_obs_key(adata, labels_key)
            lab = adata.obs[labels_key]
            if lab.isna().any():
                raise ValueError(f"adata.obs[{labels_key!r}] has {int(lab.isna().sum())} missing labels; fill them.")
            cat = pd.Categorical(lab.astype(str))
            categories = [str(c) for c in cat.categories]
            codes = torch.as_tensor(cat.codes.astype(np.int64))[:, None]

        y = np.log1p(counts)
        mean = y.mean(axis=0) if self.settings["standardize"] else np.zeros(y.shape[1])
        std = np.maximum(y.std(axis=0), 1e-3) if self.settings["standardize"] else np.ones(y.shape[1])
        data = torch.as_tensor((y - mean) / std, dtype=torch.float32)
        self.mean_, self.std_ = mean.astype(np.float32), std.astype(np.float32)
        self.max_log_ = float(np.log1p(10.0 * max(counts.max(), 1.0)))
        self.max_count_log_ = np.log1p(np.maximum(counts.max(axis=0), 1.0)).astype(np.float32)
        self.var_names_ = np.asarray(adata.var_names).astype(str)
        self.labels_key_ = labels_key
        self.label_categories_ = categories

        n, n_genes = data.shape
        T = self.diffusion.n_timesteps
        abar = self.diffusion.alpha_bars.to(torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = _NoiseMLP(n_genes, abar, data.mean(dim=0), data.var(dim=0).clamp_min(1e-6),
                            n_cats_per_cov=[len(categories)] if categories else [], **self.net_kwargs)
            model = _NoiseModel(net, self.settings["ema_decay"])
            gen = torch.Generator().manual_seed(int(seed))
            opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=weight_decay)
            warm = max(int(warmup_steps), 0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) if warm else 1.0)
            model.train()
            losses: list[float] = []
            history: list[dict[str, float]] = []
            perm, pos = torch.randperm(n, generator=gen), 0
            bs = min(int(batch_size), n)
            for step in tqdm(range(int(max_steps)), desc="Gaussian DDPM", disable=not progress):
                if pos + bs > n:
                    perm, pos = torch.randperm(n, generator=gen), 0
                idx = perm[pos: pos + bs]
                pos += bs
                y0 = data[idx]
                t = torch.randint(1, T + 1, (bs,), generator=gen)
                eps = torch.randn(y0.shape, generator=gen)
                y_t = self.diffusion.q_sample(y0, t, eps)
                cat_b = drop = None
                if codes is not None:
                    cat_b = codes[idx]
                    drop = torch.rand(bs, 1, generator=gen) < self.settings["p_uncond"]
                loss = torch.mean((model.net(y_t, t, cat_b, drop) - eps) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if gradient_clip_val is not None:
                    nn.utils.clip_grad_norm_(model.net.parameters(), gradient_clip_val)
                opt.step()
                sched.step()
                model.update_ema()
                losses.append(float(loss.detach()))
                if (step + 1) % int(log_every) == 0 or step + 1 == int(max_steps):
                    history.append({"step": step + 1, "train_loss": float(np.mean(losses))})
                    losses = []
        model.eval()
        self.model_ = model
        self.history_ = pd.DataFrame(history)
        self.fit_params_ = {"layer": layer, "labels_key": labels_key, "max_steps": int(max_steps),
                            "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed), "n_cells": int(n)}
        return self

    # ------------------------------------------------------------------ sampling
    def _label_codes(self, n: int, labels: str | Sequence[str] | None) -> tuple[torch.Tensor | None, pd.DataFrame]:
        obs = pd.DataFrame(index=[f"generated_{i}" for i in range(n)])
        if labels is None:
            return None, obs
        if self.labels_key_ is None:
            raise ValueError("The generator was fitted without labels_key, so it cannot sample by label.")
        values = [labels] * n if isinstance(labels, str) or np.isscalar(labels) else [str(v) for v in labels]
        if len(values) != n:
            raise ValueError(f"labels: got {len(values)} values for {n} cells to generate.")
        lookup = {c: i for i, c in enumerate(self.label_categories_)}
        missing = sorted({str(v) for v in values} - set(lookup))
        if missing:
            raise ValueError(f"Unknown {self.labels_key_} value(s) {missing}. Known values: {self.label_categories_}.")
        codes = np.array([lookup[str(v)] for v in values], dtype=np.int64)
        obs[self.labels_key_] = pd.Categorical.from_codes(codes, categories=self.label_categories_)
        return torch.from_numpy(codes)[:, None], obs

    @torch.inference_mode()
    def sample(
        self,
        n_samples: int | None = None,
        labels: str | Sequence[str] | None = None,
        n_steps: int | None = 50,
        guidance: float = 1.0,
        variance: Literal["beta", "posterior"] = "beta",
        clip_x0: bool = True,
        seed: int | None = None,
        batch_size: int = 1024,
        return_log: bool = False,
    ) -> ad.AnnData:
        """Generate cells and map them to counts by ``max(0, round(expm1(y)))``.

        Parameters
        ----------
        n_samples
            Number of cells; may be omitted when ``labels`` is a list.
        labels
            One label for all cells or one per cell (requires ``labels_key`` in :meth:`fit`); None samples
            unconditionally.
        n_steps
            Reverse steps (network evaluations) on an evenly spaced grid of ``1..T``; None runs all ``T`` steps.
        guidance
            Classifier-free guidance strength ``g`` of ``eps_u + g (eps_c - eps_u)`` (only with labels).
        variance
            Reverse-step variance: ``"beta"`` (Ho et al. Eq. 7; keeps the spread on a coarse grid) or
            ``"posterior"``.
        clip_x0
            Clip the clean-data estimate ``y_0_hat`` of every reverse step to the support of the training data,
            ``[log1p(0), log1p(max(1, max training count of the gene))]`` (in standardised units when
            ``standardize``), and take the step from the posterior ``q(y_s | y_t, y_0_hat)``: the usual
            ``clip_denoised`` of DDPM samplers (images: ``[-1, 1]``). Without it the first steps of a cosine
            schedule, where ``abar_t`` is nearly 0, can diverge.
        seed
            Random seed; the same seed gives the same cells on the same device.
        batch_size
            Cells generated at once.
        return_log
            Also store the real-valued ``log1p``-scale samples (before rounding) in ``layers["log1p_sample"]``.

        Returns
        -------
        AnnData of generated cells: integer counts (float32 CSR) in ``X``, the labels in ``obs[labels_key]``, the
        genes of the training data as ``var_names`` and the settings in ``uns["countsdiff"]["sample"]``.
        """
        if self.model_ is None:
            raise RuntimeError("The generator is not fitted; call fit(adata, ...) first.")
        if n_samples is None:
            if labels is None or isinstance(labels, str):
                raise ValueError("Pass n_samples, or labels as one value per cell to generate.")
            n_samples = len(labels)
        n = int(n_samples)
        if n < 1:
            raise ValueError(f"n_samples must be positive, got {n_samples}.")
        if n_steps is not None and int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1 or None, got {n_steps}.")
        if guidance < 0:
            raise ValueError(f"guidance must be non-negative, got {guidance}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        codes, obs = self._label_codes(n, labels)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        gen = torch.Generator().manual_seed(int(seed))
        net = self.model_.network(use_ema=True)
        T = self.diffusion.n_timesteps
        n_genes = len(self.var_names_)
        null = len(self.label_categories_)
        lo = torch.as_tensor(-self.mean_ / self.std_)  # a zero count, in the diffusion's coordinates
        hi = torch.as_tensor((self.max_count_log_ - self.mean_) / self.std_)
        out = []
        for start in range(0, n, int(batch_size)):
            stop = min(n, start + int(batch_size))
            m = stop - start
            cat_b = None if codes is None else codes[start:stop]

            def eps_fn(y: torch.Tensor, t: int, cat_b: torch.Tensor | None = cat_b, m: int = m) -> torch.Tensor:
                tt = torch.full((y.shape[0],), t, dtype=torch.long)
                if cat_b is None:
                    if null:  # a labelled model sampled without labels: the null token
                        return net(y, tt, torch.full((m, 1), null, dtype=torch.long))
                    return net(y, tt)
                if guidance == 1.0:
                    return net(y, tt, cat_b)
                if guidance == 0.0:
                    return net(y, tt, torch.full_like(cat_b, null))
                both = net(torch.cat([y, y]), torch.cat([tt, tt]), torch.cat([cat_b, torch.full_like(cat_b, null)]))
                e_c, e_u = both[:m], both[m:]
                return e_u + guidance * (e_c - e_u)

            y = torch.randn((m, n_genes), generator=gen)
            for t, s in itertools.pairwise(self.diffusion.timesteps(T, n_steps)):
                y = self.diffusion.p_step(y, t, s, eps_fn(y, t), variance=variance, generator=gen,
                                          clip_x0=(lo, hi) if clip_x0 else None)
            out.append(y.numpy())
        y = np.concatenate(out, axis=0).astype(np.float64) * self.std_ + self.mean_
        counts = self.to_counts(y, self.max_log_)
        result = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=pd.Index(self.var_names_)))
        if return_log:
            result.layers["log1p_sample"] = y.astype(np.float32)
        record_params(result, "sample", {"method": "gaussian_ddpm", "n_steps": n_steps, "guidance": guidance,
                                         "variance": variance, "clip_x0": clip_x0,
                                         "seed": int(seed), **self.settings})
        return result

    @staticmethod
    def to_counts(y: Any, max_log: float = math.inf) -> np.ndarray:
        """Map ``log1p``-scale values to counts: ``max(0, round(expm1(min(y, max_log))))`` as float32.

        Parameters
        ----------
        y
            Real-valued samples on the ``log1p`` scale.
        max_log
            Cap applied before ``expm1`` (overflow guard).

        Returns
        -------
        float32 array of non-negative integers.

        Examples
        --------
        >>> import numpy as np
        >>> GaussianDDPMGenerator.to_counts(np.array([-1.0, 0.3, 0.5, np.log(11.0)]))
        array([ 0.,  0.,  1., 10.], dtype=float32)
        """
        y = np.minimum(np.asarray(y, dtype=np.float64), max_log)
        return np.clip(np.rint(np.expm1(y)), 0, None).astype(np.float32)
