"""scvi-tools module of CountsDiff: the network, the forward process and the loss of Eq. 6."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from countsdiff_sc.diffusion import (
    TIME_SAMPLINGS,
    ImportanceTimes,
    count_loss,
    get_schedule,
    log_linear_mix,
    loss_weight,
    resolve_loss_weighting,
    thin,
)
from countsdiff_sc.nn import GeneTransformerDenoiser, RateDenoiser, ResidualMLPDenoiser

from ._ema import EMAMixin
from ._guidance import check_guidance_cap, guidance_terms, interpolation_terms

__all__ = [
    "BACKBONES",
    "CONDITION_KEY",
    "LOSS_NORMALISATIONS",
    "MASK_KEY",
    "RATE_BASELINES",
    "UNCOND_MODES",
    "VALID_KEY",
    "ConditionVariant",
    "CountsDiffModule",
    "cell_depth",
    "gene_prior",
]

VALID_KEY = "valid"
#: Registry key of held-out entries (True = held out): they never train, neither as input nor in the loss.
MASK_KEY = "heldout"
CONDITION_KEY = "condition"
#: The denoiser backbones by name (``CountsDiffModel(backbone=...)``); register a new one by adding its class.
BACKBONES: dict[str, type[RateDenoiser]] = {"mlp": ResidualMLPDenoiser, "transformer": GeneTransformerDenoiser}
RATE_BASELINES = ("gamma_poisson", "none")
UNCOND_MODES = ("joint", "independent")
LOSS_NORMALISATIONS = ("cell", "constant")

#: ``(cat, cont, drop)`` of one network pass: category codes, vector condition and the drop mask of its cells.
ConditionVariant = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]


def cell_depth(x: torch.Tensor, trusted: torch.Tensor | None, profile: torch.Tensor) -> torch.Tensor:
    """Each cell's depth read from its trusted entries: ``sum_trusted x / share``.

    ``share`` is the part of the mean ``profile`` (the genes' mean counts) that falls on the cell's trusted entries,
    so a cell whose entries are partly held out (a mask) or distrusted (suspected dropouts) gets the depth its trusted
    entries imply, not a smaller one; untrusted values are never read. Without ``trusted`` it is the total count.

    Parameters
    ----------
    x
        Counts ``(n, n_genes)``.
    trusted
        Boolean ``(n, n_genes)``, True where an entry may be read (None: every entry).
    profile
        Mean count of every gene ``(n_genes,)`` (positive).

    Returns
    -------
    Depths ``(n,)`` in counts (float32).

    Examples
    --------
    >>> x = torch.tensor([[4.0, 6.0, 10.0]])
    >>> cell_depth(x, torch.tensor([[True, True, False]]), torch.tensor([1.0, 1.0, 2.0]))
    tensor([20.])
    """
    x = x.to(torch.float32)
    if trusted is None:
        return x.sum(dim=1)
    keep = trusted.to(torch.bool)
    observed = torch.where(keep, x, torch.zeros_like(x)).sum(dim=1)
    profile = profile.to(device=x.device, dtype=torch.float32)
    share = (keep.to(torch.float32) @ profile) / profile.sum()
    return observed / share.clamp_min(0.05)


def gene_prior(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene Gamma prior of the Poisson rate (mean ``mu``, shape ``a``) by the method of moments.

    For counts with mean ``mu`` and variance ``v``, a Gamma(shape ``a``, rate ``a / mu``) mixture of Poissons has
    ``v = mu + mu^2 / a``, so ``a = mu^2 / (v - mu)``; ``a`` is clipped to ``[0.05, 100]`` (100 ~ Poisson) and
    ``mu`` to at least 1e-3.
    """
    mean = mean.float().clamp_min(1e-3)
    excess = (var.float() - mean).clamp_min(1e-6)
    shape = (mean**2 / excess).clamp(0.05, 100.0)
    return mean, shape


class CountsDiffModule(EMAMixin, BaseModuleClass):
    """Count diffusion module (paper Sec. 3, Algorithm 1).

    ``inference`` draws ``t ~ U(0, 1)`` per cell (snapped to the grid of a discrete schedule), thins
    ``x_t ~ Binomial(x_0, p(t))`` and decides which conditions of each cell are replaced by their null tokens
    (classifier-free guidance, see ``uncond_mode``); ``generative`` predicts ``y_hat``; ``loss`` is Eq. 6 on the
    trusted entries, normalised per cell (see ``loss_normalisation``) and weighted by ``w(t)``.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_cats_per_cov
        Categories of each categorical condition (labels first, if used, then covariates).
    n_continuous
        Dimension of the vector condition (0 for none).
    use_labels
        Whether the registered labels are the first categorical condition.
    backbone
        ``"mlp"`` (:class:`~countsdiff_sc.nn.ResidualMLPDenoiser`) or ``"transformer"``
        (:class:`~countsdiff_sc.nn.GeneTransformerDenoiser`).
    backbone_kwargs
        Keyword arguments of the backbone class.
    schedule
        p-schedule name or config (see :func:`~countsdiff_sc.diffusion.get_schedule`).
    loss_weighting
        ``"auto"`` (default: ``"neg_dp"`` for the cosine schedule, ``"nll"`` for the Blackout schedules), ``"neg_dp"``,
        ``"nll"`` or ``"constant"`` (see :func:`~countsdiff_sc.diffusion.loss_weight`). Stored resolved.
    p_uncond
        Condition-dropout probability (see ``uncond_mode``).
    uncond_mode
        ``"joint"`` (default, the paper's scheme): each training cell loses all its conditions together with
        probability ``p_uncond``, so the network learns the fully conditional and the unconditional rate.
        ``"independent"``: each condition of a cell is dropped independently with probability ``p_uncond`` and,
        in addition, all conditions are dropped together with probability ``p_uncond`` (so the unconditional rate
        stays well trained). The network then also learns the rates given any subset of the conditions, which
        per-covariate guidance with unequal strengths needs (see :meth:`rate`). With ``K`` conditions a cell keeps
        only condition ``k`` with probability ``(1 - p_uncond)^2 p_uncond^(K - 1)``: raise ``p_uncond`` (e.g. to
        0.2-0.3) when there are three or more conditions.
    ema_decay
        Decay of the EMA copy of the network used for validation and sampling (0 disables it).
    ema_warmup
        Warm-up ``w`` of the EMA: the decay after ``k`` updates is ``min(ema_decay, (1 + k) / (w + k))`` (see
        :class:`~countsdiff_sc.module.EMAMixin`); a smaller ``w`` averages over a longer part of the run.
    rate_baseline
        Preconditioning of the predicted rate. ``"none"`` (default): the paper's plain ``y_hat = softplus(NN)``.
        ``"gamma_poisson"``: ``y_hat = b * softplus(NN)`` with
        ``b = (1 - p(t)) (a_g + x_t) / (a_g / mu_g + p(t))``, the posterior mean of ``y = x_0 - x_t`` given ``x_t``
        when gene ``g`` has a Gamma(a_g, a_g / mu_g)-Poisson prior (:func:`gene_prior`). The network then learns a
        correction factor of order one; ``b -> 0`` as ``t -> 0`` and ``b = mu_g`` at ``t = 1``, which keeps the
        near-deterministic last reverse steps (``beta -> 1``) from adding spurious molecules. The objective (Eq. 6)
        and its minimiser are unchanged. On CBMC's imputation protocol it measured worse than the plain
        parametrization (CHANGELOG, 0.1.0), so it is an option, not the default.
    gene_stats
        ``(mean, variance)`` of every gene's counts over the training cells (valid entries), used for the
        baseline and for the initial output bias. Stored as buffers, so they are saved with the model.
    loss_normalisation
        ``"cell"`` (default): each cell's loss is the mean over its trusted entries (weight ``1 / n_valid`` per
        entry), so an entry of a cell with few trusted genes weighs more and the learned rate leans towards such
        cells. ``"constant"``: each cell's sum over trusted entries is divided by one constant, ``loss_scale``, so
        every entry weighs the same and the objective is Eq. 6 (a sum over entries) up to that constant. Without a
        validity layer or mask both are identical.
    time_sampling
        ``"uniform"`` (default): ``t ~ U(0, 1)``, each cell's loss weighted by ``w(t)``. ``"importance"``: ``t`` drawn
        with density ``w(t) / Z`` and every cell weighted by ``Z`` (:class:`~countsdiff_sc.diffusion.ImportanceTimes`):
        the same objective with equal weights in a minibatch (continuous schedules only).
    loss_scale
        The constant of ``loss_normalisation="constant"`` (the model passes the mean number of trusted entries per
        training cell, which keeps the loss on the scale of ``"cell"``); stored as a buffer, so it is saved with
        the model. Defaults to ``n_genes``. Ignored for ``"cell"``.
    depth_condition
        Condition on each cell's depth: the standardised log of :meth:`estimate_depth` becomes one more dimension of
        the vector condition (after the user's vector condition, if any), dropped with it for guidance. Training
        cells read their own depth; generation draws it (the model takes the training cells' depths); imputation
        and denoising give the depth of the profile being drawn. Without it the network must also learn the spread
        of depths within a label, and generated cells come out too uniform in depth.
    depth_stats
        ``(mean, sd)`` of the log depth over the training cells, the standardisation of the depth feature (buffers,
        saved with the model). Required with ``depth_condition``; the model computes it over trusted entries.
    """

    def __init__(
        self,
        n_genes: int,
        n_cats_per_cov: Sequence[int] = (),
        n_continuous: int = 0,
        use_labels: bool = False,
        backbone: str = "mlp",
        backbone_kwargs: dict | None = None,
        schedule: str | dict = "cosine",
        loss_weighting: str = "auto",
        p_uncond: float = 0.1,
        ema_decay: float = 0.999,
        rate_baseline: str = "none",
        gene_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        uncond_mode: str = "joint",
        loss_normalisation: str = "cell",
        loss_scale: float | None = None,
        time_sampling: str = "uniform",
        ema_warmup: float = 10.0,
        depth_condition: bool = False,
        depth_stats: tuple[float, float] | None = None,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {backbone!r}; choose one of {tuple(BACKBONES)}.")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}.")
        if uncond_mode not in UNCOND_MODES:
            raise ValueError(f"Unknown uncond_mode {uncond_mode!r}; choose one of {UNCOND_MODES}.")
        self.n_genes = n_genes
        self.n_cats_per_cov = [int(n) for n in n_cats_per_cov]
        self.depth_condition = bool(depth_condition)
        self.n_vector_user = int(n_continuous)
        self.n_continuous = self.n_vector_user + int(self.depth_condition)  # the vector slot's input dimension
        self.use_labels = bool(use_labels)
        self.n_conditions = len(self.n_cats_per_cov) + int(self.n_continuous > 0)
        self.schedule = get_schedule(schedule)
        self.loss_weighting = resolve_loss_weighting(loss_weighting, self.schedule)
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"Unknown time_sampling {time_sampling!r}; choose one of {TIME_SAMPLINGS}.")
        self.time_sampling = time_sampling
        self._times = ImportanceTimes(self.schedule, self.loss_weighting) if time_sampling == "importance" else None
        self.p_uncond = float(p_uncond)
        self.uncond_mode = uncond_mode
        self.net: RateDenoiser = BACKBONES[backbone](
            n_genes, n_cats_per_cov=self.n_cats_per_cov, n_continuous=self.n_continuous, **(backbone_kwargs or {})
        )
        if rate_baseline not in RATE_BASELINES:
            raise ValueError(f"Unknown rate_baseline {rate_baseline!r}; choose one of {RATE_BASELINES}.")
        self.rate_baseline = rate_baseline
        if loss_normalisation not in LOSS_NORMALISATIONS:
            raise ValueError(
                f"Unknown loss_normalisation {loss_normalisation!r}; choose one of {LOSS_NORMALISATIONS}."
            )
        self.loss_normalisation = loss_normalisation
        if loss_normalisation == "constant":  # a buffer only here: state dicts of "cell" modules stay as they were
            scale = float(n_genes if loss_scale is None else loss_scale)
            if not scale > 0:
                raise ValueError(f"loss_scale must be positive, got {loss_scale}.")
            self.register_buffer("loss_scale", torch.tensor(scale, dtype=torch.float32))
        if gene_stats is None:
            gene_stats = (torch.ones(n_genes), torch.full((n_genes,), 2.0))
        mean, shape = gene_prior(torch.as_tensor(gene_stats[0]), torch.as_tensor(gene_stats[1]))
        self.register_buffer("prior_mean", mean)
        self.register_buffer("prior_shape", shape)
        if self.depth_condition:  # buffers only here: state dicts of modules without the condition stay as they were
            if depth_stats is None:
                raise ValueError("depth_condition=True needs depth_stats=(mean, sd) of the training cells' log depth.")
            loc, scale = (float(v) for v in depth_stats)
            if not (np.isfinite(loc) and np.isfinite(scale) and scale > 0):
                raise ValueError(f"depth_stats must be finite with a positive sd, got {depth_stats}.")
            self.register_buffer("depth_loc", torch.tensor(loc, dtype=torch.float32))
            self.register_buffer("depth_scale", torch.tensor(scale, dtype=torch.float32))
        # start at y_hat = b (baseline) or at y_hat = mean count (plain softplus)
        self.net.init_output_bias(torch.ones(n_genes) if rate_baseline == "gamma_poisson" else mean)
        self._init_ema(ema_decay, ema_warmup)

    def baseline(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """Gamma-Poisson baseline rate ``b(t, x_t)`` of shape ``x_t.shape`` (None for ``rate_baseline="none"``)."""
        if self.rate_baseline == "none":
            return None
        p = self.schedule.p(t).to(x_t.dtype)[:, None]
        a, mu = self.prior_shape[None, :], self.prior_mean[None, :]
        return (1.0 - p) * (a + x_t) / (a / mu + p)

    # ------------------------------------------------------------------ scvi-tools module interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {"x": tensors[REGISTRY_KEYS.X_KEY], "conditions": self._conditions_from_tensors(tensors),
                "heldout": tensors.get(MASK_KEY)}

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {
            "x_t": inference_outputs["x_t"],
            "t": inference_outputs["t"],
            "drop": inference_outputs["drop"],
            "conditions": inference_outputs["conditions"],
            "valid": self._trusted(tensors),
        }

    @staticmethod
    def _trusted(tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Entries the loss and the network's keys may use: valid (if registered) and not held out (if registered)."""
        valid, heldout = tensors.get(VALID_KEY), tensors.get(MASK_KEY)
        if heldout is None:
            return valid
        keep = ~heldout.bool()
        return keep if valid is None else valid.bool() & keep

    def _conditions_from_tensors(self, tensors: dict[str, torch.Tensor]) -> dict:
        cats = []
        if self.use_labels:
            cats.append(tensors[REGISTRY_KEYS.LABELS_KEY].long().reshape(-1, 1))
        if REGISTRY_KEYS.CAT_COVS_KEY in tensors and tensors[REGISTRY_KEYS.CAT_COVS_KEY] is not None:
            cats.append(tensors[REGISTRY_KEYS.CAT_COVS_KEY].long())
        cat = torch.cat(cats, dim=1) if cats else None
        cont = tensors.get(CONDITION_KEY) if self.n_vector_user > 0 else None
        depth = None
        if self.depth_condition:
            depth = self.estimate_depth(tensors[REGISTRY_KEYS.X_KEY].to(torch.float32), self._trusted(tensors))
        return {"cat": cat, "cont": self.vector_condition(cont, depth)}

    # ------------------------------------------------------------------ depth
    def estimate_depth(self, x: torch.Tensor, trusted: torch.Tensor | None = None) -> torch.Tensor:
        """Each cell's depth from its trusted entries (:func:`cell_depth` with the genes' mean counts)."""
        return cell_depth(x, trusted, self.prior_mean)

    def depth_feature(self, depth: torch.Tensor) -> torch.Tensor:
        """The standardised log depth ``(log max(depth, 1) - mean) / sd``, shape ``(n, 1)``."""
        depth = torch.as_tensor(depth, dtype=torch.float32, device=self.depth_loc.device)
        return ((torch.log(depth.clamp_min(1.0)) - self.depth_loc) / self.depth_scale).reshape(-1, 1)

    def vector_condition(self, cont: torch.Tensor | None, depth: torch.Tensor | None) -> torch.Tensor | None:
        """The input of the vector slot: the user's vector condition and, for a depth-conditioned module, the depth
        feature of ``depth`` (counts per cell) after it. None leaves the slot to its null token.

        Raises
        ------
        ValueError
            A depth-conditioned module given a user vector condition without depths (or the reverse).
        """
        if not self.depth_condition:
            return cont
        if depth is None:
            if cont is not None:
                raise ValueError("This model is conditioned on depth: give each cell's depth with its vector "
                                 "condition.")
            return None
        if self.n_vector_user > 0 and cont is None:
            raise ValueError("This model has a vector condition (condition_obsm_key): give it with the depths.")
        feature = self.depth_feature(depth)
        return feature if cont is None else torch.cat([cont.to(feature), feature], dim=1)

    @auto_move_data
    def inference(self, x: torch.Tensor, conditions: dict, heldout: torch.Tensor | None = None) -> dict:
        """Sample times, thin the counts and draw the condition dropout (training-time forward process).

        Held-out entries (``heldout``, a registered mask) are set to zero before anything else, so their values reach
        neither the network's input nor the loss: a model's weights do not depend on them.
        """
        x0 = x.to(torch.float32)
        if heldout is not None:
            x0 = x0.masked_fill(heldout.bool(), 0.0)
        n = x0.shape[0]
        if self._times is None:
            t = self.schedule.snap(torch.rand(n, device=x0.device))
        else:
            t = self._times.sample(n, device=x0.device)
        x_t = thin(x0, self.schedule.p(t)[:, None])
        drop = None
        if self.n_conditions and self.training and self.p_uncond > 0:
            drop = (torch.rand(n, 1, device=x0.device) < self.p_uncond).expand(n, self.n_conditions)
            if self.uncond_mode == "independent":
                drop = drop | (torch.rand(n, self.n_conditions, device=x0.device) < self.p_uncond)
        return {"x0": x0, "x_t": x_t, "t": t, "drop": drop, "conditions": conditions}

    @auto_move_data
    def generative(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        drop: torch.Tensor | None,
        conditions: dict,
        valid: torch.Tensor | None = None,
        use_ema: bool = False,
    ) -> dict:
        """Predict ``y_hat = softplus(NN(x_t, t, c))``."""
        valid_b = valid.bool() if valid is not None else None
        net = self.network(use_ema)
        scale = self.baseline(x_t, t)
        return {"y_hat": net(x_t, t, conditions["cat"], conditions["cont"], drop, valid_b, scale)}

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Eq. 6 on trusted entries (valid and not held out): mean over cells of
        ``w(t) * mean_trusted(y_hat - y log(y_hat + 1e-8))`` (``loss_normalisation="cell"``) or of
        ``w(t) * sum_trusted(...) / loss_scale`` (``"constant"``)."""
        y = inference_outputs["x0"] - inference_outputs["x_t"]
        valid = self._trusted(tensors)
        t = inference_outputs["t"]
        if self._times is None:
            w = loss_weight(t, self.schedule, self.loss_weighting)
        else:  # times drawn with density w / Z: every cell weighs Z
            w = torch.full_like(t, self._times.weight)
        norm = self.loss_scale if self.loss_normalisation == "constant" else None
        per_cell = count_loss(generative_outputs["y_hat"], y, valid, w, reduce=False, normaliser=norm)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, n_obs_minibatch=y.shape[0])

    # ------------------------------------------------------------------ sampling helpers
    @torch.inference_mode()
    def rate(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        guidance: float | torch.Tensor | Sequence[float] = 1.0,
        use_ema: bool = True,
        guidance_cap: float | None = None,
    ) -> torch.Tensor:
        """Guided rate of the reverse process; all network passes it needs run as one batch.

        A condition is *given* when its input is passed: every categorical slot when ``cat`` is given, the vector
        slot when ``cont`` is given. Conditions that are not given are replaced by their null tokens. Write
        ``y_u`` for the unconditional rate (every condition dropped), ``y_C`` for the rate given all given
        conditions and ``y_k`` for the rate given condition ``k`` alone.

        * ``guidance`` a float or a tensor ``g`` (broadcastable to the rates, e.g. ``(n, 1)`` for one strength per
          cell): the predictor-free guidance of paper Sec. 3.4 (Nisonoff et al. 2025; Ho and Salimans 2022),
          ``log y = log y_u + g (log y_C - log y_u)``, i.e. ``y = y_C^g y_u^(1 - g)``.
        * ``guidance`` a list or tuple of one strength ``g_k`` per condition (order: labels, categorical
          covariates, vector condition): compositional guidance anchored on the joint conditional,

          ``log y = log y_u + gbar (log y_C - log y_u) + sum_k (g_k - gbar) (log y_k - log y_u)``,

          where ``gbar`` is the mean of ``g_k`` over the given conditions and the sum runs over them. When all
          ``g_k`` equal ``g`` this is exactly the single-strength rule above (two passes). When the conditions are
          conditionally independent given ``x_t`` (``log y_C - log y_u = sum_k (log y_k - log y_u)``) it equals
          the composable-diffusion rule ``log y_u + sum_k g_k (log y_k - log y_u)`` (Liu et al. 2022,
          "Compositional visual generation with composable diffusion models"), so ``g_k`` is the strength of
          condition ``k`` alone; the interaction the joint rate learned beyond that sum keeps the mean strength.
          Unequal strengths need the single-condition rates ``y_k``, which only ``uncond_mode="independent"``
          trains: a jointly trained module raises a ValueError.

        Parameters
        ----------
        x_t
            Current counts ``(n, n_genes)``.
        t
            Times ``(n,)``.
        cat
            Category codes ``(n, n_cat)`` (labels first), or None.
        cont
            Vector condition ``(n, n_continuous)``, or None.
        valid
            Optional validity mask of the entries (passed to the backbone).
        guidance
            Strength (float or tensor) or per-condition strengths (list / tuple of length ``n_conditions``).
        use_ema
            Use the EMA weights.
        guidance_cap
            Opt-in safeguard for guidance above 1 (see :func:`~countsdiff_sc.module.check_guidance_cap`): the
            guided rate is capped at ``guidance_cap * y_C``. None (default) leaves the rate as it is. No effect
            without a given condition or when ``y_C`` is not part of the mix (strength 0).

        Returns
        -------
        Rates ``(n, n_genes)``; the unconditional rate when no condition is given.

        Examples
        --------
        >>> m = CountsDiffModule(20, n_cats_per_cov=[3, 2], use_labels=True, uncond_mode="independent").eval()
        >>> x, t = torch.zeros(4, 20), torch.full((4,), 0.5)
        >>> cat = torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0]])
        >>> m.rate(x, t, cat, guidance=[2.0, 0.5]).shape
        torch.Size([4, 20])
        """
        n, device = x_t.shape[0], x_t.device
        cap = check_guidance_cap(guidance_cap)
        if self.n_conditions == 0:
            return self.mixed_rate(x_t, t, [(None, None, torch.zeros(n, 0, dtype=torch.bool, device=device))],
                                   [1.0], valid, use_ema)
        given = np.zeros(self.n_conditions, dtype=bool)
        given[: len(self.n_cats_per_cov)] = cat is not None
        if self.n_continuous > 0:
            given[-1] = cont is not None
        cat = cat if cat is not None else self._null_cat(n, device)
        cont = cont if cont is not None else self._null_cont(n, device)
        terms = guidance_terms(given, guidance, independent=self.uncond_mode == "independent")
        variants = [(cat, cont, self.drop_mask(n, device, keep)) for keep, _ in terms]
        if cap is not None:  # the cap is relative to the pass that keeps every given condition (y_C)
            conditional = next(j for j, (keep, _) in enumerate(terms) if np.array_equal(keep, given))
            cap = (conditional, cap)
        return self.mixed_rate(x_t, t, variants, [c for _, c in terms], valid, use_ema, cap=cap)

    @torch.inference_mode()
    def interpolation_rate(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor,
        cont: torch.Tensor | None,
        weight: torch.Tensor,
        guidance: float,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Rate of a path between two labels: ``log y = log y_u + g ((1 - a) log y_src + a log y_tgt - log y_u)``.

        See :func:`~countsdiff_sc.module.interpolation_terms`; ``y_src`` and ``y_tgt`` keep every condition (the
        source or target label codes, the shared covariates and vector condition), ``y_u`` drops them all.

        Parameters
        ----------
        x_t, t
            Current counts ``(n, n_genes)`` and times ``(n,)``.
        source, target
            Category codes ``(n, n_cat)`` (labels first) of the source and the target condition.
        cont
            Vector condition ``(n, n_continuous)`` or None.
        weight
            Interpolation weights ``(n, 1)`` in [0, 1].
        guidance
            Guidance strength ``g``.
        use_ema
            Use the EMA weights.

        Returns
        -------
        Rates ``(n, n_genes)``.
        """
        n, device = x_t.shape[0], x_t.device
        keep_all = np.ones(self.n_conditions, dtype=bool)
        codes = {"source": source, "target": target}
        terms = interpolation_terms(guidance, weight)
        variants = [(codes[label], cont, self.drop_mask(n, device, keep_all if kept else ~keep_all))
                    for label, kept, _ in terms]
        return self.mixed_rate(x_t, t, variants, [c for _, _, c in terms], use_ema=use_ema)

    @torch.inference_mode()
    def mixed_rate(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        variants: Sequence[ConditionVariant],
        coefs: Sequence[float | torch.Tensor],
        valid: torch.Tensor | None = None,
        use_ema: bool = True,
        cap: tuple[int, float] | None = None,
    ) -> torch.Tensor:
        """``exp(sum_j c_j log y_j)`` over rates ``y_j`` of the same cells under different conditions.

        The network passes of all variants with a non-zero coefficient run as one batch of
        ``n_variants * n`` rows (see :func:`~countsdiff_sc.diffusion.log_linear_mix`). Guidance, per-covariate
        guidance and cell-state interpolation are all of this form.

        Parameters
        ----------
        x_t, t
            Current counts ``(n, n_genes)`` and times ``(n,)``.
        variants
            ``(cat, cont, drop)`` per pass: codes ``(n, n_cat)`` or None, vector condition ``(n, n_continuous)``
            or None, drop mask ``(n, n_conditions)`` (True = null token).
        coefs
            One coefficient per variant: a float or a tensor broadcastable to ``(n, n_genes)``.
        valid, use_ema
            As in :meth:`rate`.
        cap
            ``(j, c)``: cap the mixed rate at ``c`` times the rate of variant ``j`` (ignored when variant ``j`` has
            coefficient 0); the guidance safeguard of :meth:`rate`. None (default): no cap.

        Returns
        -------
        Mixed rates ``(n, n_genes)``.
        """
        used = [j for j, c in enumerate(coefs) if torch.is_tensor(c) or float(c) != 0.0]
        keep = [(variants[j], coefs[j]) for j in used]
        if not keep:
            raise ValueError("All coefficients of the rate mixture are zero.")
        net = self.network(use_ema)
        m, n = len(keep), x_t.shape[0]
        scale = self.baseline(x_t, t)

        def stack(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if parts[0] is None else torch.cat(parts, dim=0)

        cat = stack([v[0] for v, _ in keep])
        cont = stack([v[1] for v, _ in keep])
        drop = stack([v[2] for v, _ in keep]) if self.n_conditions else None
        y = net(x_t, t, cat, cont, drop, valid, scale, n_variants=m)
        if m == 1 and not torch.is_tensor(keep[0][1]) and float(keep[0][1]) == 1.0:
            return y
        rates = list(y.view(m, n, -1))
        # the reference of the cap, copied before the in-place mix overwrites it
        ceiling = rates[used.index(cap[0])].clone().mul_(cap[1]) if cap is not None and cap[0] in used else None
        # the network's output is ours: mix in place (no temporaries of the size of the rates)
        mixed = log_linear_mix(rates, [c for _, c in keep], inplace=True)
        return mixed if ceiling is None else torch.minimum(mixed, ceiling, out=mixed)

    def drop_mask(self, n: int, device: torch.device, keep: np.ndarray) -> torch.Tensor:
        """Drop mask ``(n, n_conditions)`` of :meth:`mixed_rate` keeping the conditions where ``keep`` is True.

        Parameters
        ----------
        n
            Number of cells.
        device
            Device of the mask.
        keep
            Boolean array ``(n_conditions,)`` (labels, categorical covariates, vector condition).

        Returns
        -------
        Boolean tensor ``(n, n_conditions)``, True where a condition is replaced by its null token.
        """
        return torch.from_numpy(~keep).to(device)[None, :].expand(n, -1)

    def _null_cat(self, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.n_cats_per_cov:
            return None
        return torch.tensor(self.n_cats_per_cov, device=device, dtype=torch.long)[None].expand(n, -1)

    def _null_cont(self, n: int, device: torch.device) -> torch.Tensor | None:
        if self.n_continuous == 0:
            return None
        return torch.zeros(n, self.n_continuous, device=device)
