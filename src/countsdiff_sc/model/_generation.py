"""Generating verbs of CountsDiffModel: ``sample`` (new cells) and ``interpolate`` (real cells moved between labels)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch

from countsdiff_sc._utils import check_obs_key, record_params, to_dense
from countsdiff_sc.diffusion import generate, thin
from countsdiff_sc.diffusion import time_grid as make_time_grid
from countsdiff_sc.module import CONDITION_KEY, check_guidance_cap

from ._chains import ChainSettings, positive_int, run_batches
from ._docs import fill_doc
from ._results import counts_in_model_order, generated_adata

__all__ = ["GenerationMixin"]

#: Default interpolation weights of :meth:`GenerationMixin.interpolate`: 0, 0.1, ..., 1.
_DEFAULT_WEIGHTS = tuple(float(a) for a in np.linspace(0.0, 1.0, 11))

AttritionKind = Literal["rescale", "cap", "constant", "none"]
GridKind = Literal["uniform", "p", "logit", "power"]
StepRule = Literal["euler", "trapezoid"]


class GenerationMixin:
    """``sample`` and ``interpolate`` of CountsDiffModel (needs ``module``, ``condition_space`` and ``device``)."""

    @torch.inference_mode()
    def sample(
        self,
        n_samples: int | None = None,
        labels: str | Sequence[str] | None = None,
        covariates: Mapping[str, str | Sequence[str]] | None = None,
        conditions: np.ndarray | Literal["train"] | None = None,
        n_steps: int = 50,
        guidance: float | Mapping[str, float] = 1.0,
        attrition: float = 0.0,
        attrition_kind: AttritionKind = "rescale",
        seed: int | None = None,
        batch_size: int = 1024,
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
        guidance_cap: float | None = None,
        *,
        time_grid: GridKind = "uniform",
        step_rule: StepRule = "euler",
    ) -> ad.AnnData:
        """Generate cells (CountsDiff Algorithm 2), conditioned on labels / covariates or unconditionally.

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
            The vector condition, if the model was set up with ``condition_obsm_key``: an ``(n, d)`` array, or
            ``"train"`` to give each generated cell the vector condition of a random training cell with the same
            labels and covariates (drawn with replacement; the empirical joint distribution, e.g. the depth of a
            model conditioned on each cell's library size, see :func:`countsdiff_sc.pp.library_condition`).
        n_steps
            Number of reverse transitions.
        %(guidance_dict)s
        %(attrition)s
        %(seed)s
        batch_size
            Cells generated at once.
        %(precision)s
        %(progress)s
        guidance_cap
            Opt-in safeguard for guidance above 1: cap the guided rate at ``guidance_cap`` times the conditional
            rate ``y_C`` at every step (for one strength, the same as clamping ``(g - 1)(log y_C - log y_u)`` at
            ``log(guidance_cap)``). ``y_C (y_C / y_u)^(g - 1)`` has no bound where the unconditional rate ``y_u`` is
            much smaller than ``y_C``; a cap such as 3 keeps such genes from exploding while leaving the others
            guided. None (default): no cap, the draws of earlier releases. See
            :func:`~countsdiff_sc.module.check_guidance_cap`.
        %(sampler)s

        Returns
        -------
        AnnData of generated cells: integer counts (float32 CSR) in ``X``, the conditions in ``obs`` (and the
        vector condition, when one was given, in ``obsm`` under the model's key), the genes of the training data as
        ``var_names`` and the settings in ``uns["countsdiff"]["sample"]``.

        Raises
        ------
        ValueError
            Unknown label / covariate values, a guidance dict naming unknown conditions (the message lists the
            model's), unequal per-condition strengths on a jointly trained model, an unknown ``attrition_kind`` or
            an attrition strength out of range.

        Warns
        -----
        UserWarning
            When the model was set up with ``valid_layer`` (see the note below), once per call.

        Notes
        -----
        A model set up with ``valid_layer`` learned from the trusted entries only: the loss never sees the
        suspected dropouts, so the model learns the expression of a cell without its dropouts, and the cells it
        generates have too few zeros (measured on CBMC: 11% zeros in generated cells against 40% in real ones).
        That model is the right one for imputation; for generation, train a model on all entries (set up
        without ``valid_layer``), as ``countsdiff-sc demo`` does.

        Examples
        --------
        >>> gen = model.sample(labels=["B"] * 100, guidance=1.5, attrition=0.01, seed=0)
        >>> gen = model.sample(labels=["B"] * 100, covariates={"batch": "b1"},
        ...                    guidance={"cell_type": 2.0, "batch": 0.0}, seed=0)  # uncond_mode="independent"
        >>> noise = model.sample(n_samples=100, seed=0)  # unconditional
        """
        space = self.condition_space
        strengths = space.guidance_strengths(guidance)
        cap = check_guidance_cap(guidance_cap)
        settings = ChainSettings(n_steps, attrition_kind, attrition, precision, self.device, seed,
                                 time_grid=time_grid, step_rule=step_rule)
        n = _n_to_generate(n_samples, labels, covariates)
        _warn_valid_layer(self.registry_["setup_args"].get("valid_layer"))
        batch_size = positive_int(batch_size, "batch_size")
        codes, obs = space.resolve(n, labels, covariates, settings.rng, getattr(self, "condition_table_", None))
        conditions_arg = conditions
        if isinstance(conditions, str):
            conditions = self._training_vector_conditions(conditions, codes, n, settings.rng)
        cont = space.vector_condition(conditions, n)
        if cont is not None and codes is None and space.n_cats_per_cov:
            raise ValueError("With a vector condition, also give the categorical conditions (labels / covariates).")
        if isinstance(guidance, Mapping) and codes is None and cont is None:
            raise ValueError("Per-covariate guidance needs conditions: give labels, covariates or conditions.")
        module, device = self.module, self.device

        def chain(rows: slice, show: bool) -> torch.Tensor:
            cat = None if codes is None else torch.from_numpy(codes[rows]).to(device)
            vec = None if cont is None else cont[rows].to(device)
            if cat is None and vec is None:
                rate_fn = module.rate
            else:
                def rate_fn(x, t):
                    return module.rate(x, t, cat, vec, guidance=strengths, guidance_cap=cap)
            return generate(settings.wrap(rate_fn), (rows.stop - rows.start, module.n_genes), module.schedule,
                            settings.n_steps, **settings.chain_kwargs(),
                            generator=settings.generator, device=device, progress=show)

        counts = np.concatenate([x for _, x in run_batches(module, n, batch_size, chain, progress, "sampling")])
        result = generated_adata(counts, obs, getattr(self, "var_names_", None), module.n_genes)
        if cont is not None:  # the vector condition each cell was generated under
            result.obsm[space.obsm_key] = cont.cpu().numpy().astype(np.float32)
        record_params(result, "sample", {**settings.record(), "guidance": guidance, "guidance_cap": cap,
                                         "conditions": "train" if isinstance(conditions_arg, str) else
                                         ("given" if cont is not None else "None")})
        return result

    def _training_vector_conditions(self, how: str, codes: np.ndarray | None, n: int,
                                    rng: np.random.Generator) -> np.ndarray:
        """``conditions="train"``: for each generated cell the vector condition of a random training cell with the
        same categorical codes (all training cells when the model has no categorical condition)."""
        space = self.condition_space
        if how != "train":
            raise ValueError(f"conditions must be an array or 'train', got {how!r}.")
        if space.n_continuous == 0:
            raise ValueError("conditions='train' needs a model set up with condition_obsm_key (a vector condition).")
        manager = getattr(self, "adata_manager", None) if getattr(self, "adata", None) is not None else None
        if manager is None:
            raise ValueError("conditions='train' draws from the training cells: load the model with its training "
                             "AnnData (CountsDiffModel.load(path, adata=...)), or pass an array.")
        train_vec = to_dense(manager.get_from_registry(CONDITION_KEY), np.float32)
        train_codes = space.codes(manager)
        if codes is None or train_codes is None:
            return train_vec[rng.integers(0, train_vec.shape[0], n)]
        keys, inverse = np.unique(codes, axis=0, return_inverse=True)
        out = np.empty((codes.shape[0], train_vec.shape[1]), dtype=np.float32)
        for k, key in enumerate(keys):
            pool = np.flatnonzero((train_codes == key).all(axis=1))
            if pool.size == 0:
                cats = ([space.label_categories] if space.use_labels else []) + list(
                    space.covariate_categories.values())
                names = [n for n in space.names() if not n.startswith("obsm[")]
                which = {name: str(c[int(v)]) for name, c, v in zip(names, cats, key, strict=True)}
                raise ValueError(f"No training cell has the conditions {which}, so conditions='train' has nothing to "
                                 "draw from: pass an array of vector conditions.")
            rows = np.flatnonzero(inverse.ravel() == k)
            out[rows] = train_vec[rng.choice(pool, rows.size)]
        return out

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
        attrition_kind: AttritionKind = "rescale",
        n_cells: int | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
        *,
        time_grid: GridKind = "uniform",
        step_rule: StepRule = "euler",
    ) -> ad.AnnData:
        """Move real cells of one label towards another along a path of mixed conditional rates.

        The cells of ``source_label`` in ``adata_source`` are thinned to ``t_start``,
        ``x_t ~ Binomial(x_0, p(t_start))`` (Eq. 4; one thinning per cell, shared by all weights), and the reverse
        process runs from ``t_start`` to 0 (Algorithm 2) with, for each weight ``a``, the rate
        ``log y = log y_u + g ((1 - a) log y_src + a log y_tgt - log y_u)`` (see
        :func:`~countsdiff_sc.module.interpolation_terms`): the geometric mix ``y_src^(1-a) y_tgt^a`` of the source-
        and target-label rates, guided against the unconditional rate ``y_u`` with strength ``g`` as in Sec. 3.4.
        Every other condition (categorical covariates, vector condition) is kept from the source cell. The
        counts thinned away are the part of the cell the reverse process rewrites: a larger ``t_start`` moves
        cells further (``t_start = 1`` forgets the source cell entirely).

        Parameters
        ----------
        adata_source
            AnnData holding the source cells: the model's genes (matched by name, any order; extra genes are
            ignored) in the registered counts layer, the labels column and, when registered, the covariate columns
            (covariates missing there are drawn from their co-occurrence with ``source_label`` in the training
            cells) and the obsm vector condition.
        source_label, target_label
            Labels (values of the model's ``labels_key``) of the start and end of the path.
        weights
            Interpolation weights ``a`` in [0, 1]; 0 keeps the source label, 1 is the target label.
        t_start
            Time in (0, 1] the source cells are noised to; with the cosine schedule a cell keeps a fraction
            ``p(t_start)`` of its molecules (0.35 at 0.6, 0.10 at 0.8, 0.02 at 0.9). Larger values move cells
            further towards the target (measured paths: ``benchmarks/results/generation.md`` and tutorial 02).
        n_steps
            Number of reverse transitions from ``t_start`` to 0.
        guidance
            Guidance strength ``g`` (one float).
        %(attrition)s
        n_cells
            Number of source cells, drawn at random without replacement (all cells of ``source_label`` when None).
        %(seed)s
        batch_size
            Rows (cells times weights) generated at once.
        %(precision)s
        %(progress)s
        %(sampler)s

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
        space = self.condition_space
        if not space.use_labels:
            raise ValueError("interpolate needs a model set up with labels_key; this model has no labels.")
        if isinstance(guidance, Mapping):
            raise ValueError("interpolate takes one guidance strength (a float), not a dict.")
        g = space.guidance_strengths(guidance)
        w = _check_path(t_start, weights)
        cells = _source_cells(adata_source, space, source_label, target_label)
        settings = ChainSettings(n_steps, attrition_kind, attrition, precision, self.device, seed,
                                 time_grid=time_grid, step_rule=step_rule)
        batch_size = positive_int(batch_size, "batch_size")
        if n_cells is not None:
            if not 1 <= positive_int(n_cells, "n_cells") <= cells.size:
                raise ValueError(f"n_cells must lie in [1, {cells.size}] (cells of {source_label!r}), got {n_cells}.")
            cells = np.sort(settings.rng.choice(cells, size=int(n_cells), replace=False))
        n, n_w = cells.size, w.size
        x_src = counts_in_model_order(adata_source, self.registry_["setup_args"].get("layer"), cells,
                                      getattr(self, "var_names_", None), self.module.n_genes, "adata_source",
                                      f"the counts of the {source_label!r} cells of adata_source")
        # conditions: the source label (or the target label), covariates and vector condition of the source cells
        present = {k: adata_source.obs[k].to_numpy()[cells].astype(str) for k in space.covariate_categories
                   if k in adata_source.obs.columns}
        src_codes, cov_obs = space.resolve(n, [str(source_label)] * n, present, settings.rng,
                                           getattr(self, "condition_table_", None))
        tgt_codes = src_codes.copy()
        tgt_codes[:, 0] = space.label_categories.index(str(target_label))
        cont = own_vector_condition(space, adata_source, cells, "adata_source")

        # rows: weight-major, one shared thinning per source cell
        module, device = self.module, self.device
        t0, x_t = thinned_start(module, x_src, settings, t_start)
        rows_x = x_t.repeat(n_w, 1)
        rows_a = torch.from_numpy(np.repeat(w, n).astype(np.float32)).to(device)
        rows_src = torch.from_numpy(np.tile(src_codes, (n_w, 1))).to(device)
        rows_tgt = torch.from_numpy(np.tile(tgt_codes, (n_w, 1))).to(device)
        rows_cont = None if cont is None else cont.to(device).repeat(n_w, 1)

        def chain(rows: slice, show: bool) -> torch.Tensor:
            vec = None if rows_cont is None else rows_cont[rows]

            def rate_fn(x, t):
                return module.interpolation_rate(x, t, rows_src[rows], rows_tgt[rows], vec, rows_a[rows, None], g)

            return generate(settings.wrap(rate_fn), (rows.stop - rows.start, module.n_genes), module.schedule,
                            settings.n_steps, **settings.chain_kwargs(), x_start=rows_x[rows],
                            t_start=t0, generator=settings.generator, device=device, progress=show)

        counts = np.concatenate([x for _, x in run_batches(module, n * n_w, batch_size, chain, progress,
                                                           "interpolating")])
        obs = _path_obs(adata_source, cells, w, source_label, target_label, cov_obs, space.labels_key)
        result = generated_adata(counts, obs, getattr(self, "var_names_", None), module.n_genes)
        record_params(result, "interpolation", {
            "source_label": str(source_label), "target_label": str(target_label), "weights": [float(a) for a in w],
            "t_start": t0, **settings.record(), "guidance": g, "n_cells": n, "batch_size": batch_size,
        })
        return result

    sample = fill_doc(sample)
    interpolate = fill_doc(interpolate)


def _warn_valid_layer(valid_layer: str | None) -> None:
    """Warn that a model trained on valid entries only generates too few zeros (see ``sample``'s notes)."""
    if valid_layer is None:
        return
    warnings.warn(
        f"This model was set up with valid_layer={valid_layer!r}: it learned from the trusted entries only, never "
        "from the suspected dropouts, so the cells it generates have too few zeros (measured on CBMC: 11% zeros "
        "against 40% in real cells). Use it for imputation; for generation, train a model set up without "
        "valid_layer (on all entries).",
        UserWarning,
        stacklevel=4,  # this function, sample, torch's inference-mode wrapper, the caller
    )


def _n_to_generate(n_samples: int | None, labels, covariates) -> int:
    """The number of cells to generate: ``n_samples``, or the length of a per-cell list of labels / covariates."""
    if n_samples is None:
        sized = [v for v in [labels, *(covariates or {}).values()] if v is not None and not isinstance(v, str)]
        if not sized:
            raise ValueError("Pass n_samples, or labels / covariates as one value per cell to generate.")
        n_samples = len(sized[0])
    return positive_int(n_samples, "n_samples")


def check_t_start(t_start: float) -> float:
    """``t_start`` as a float in (0, 1], the time real cells are thinned to before their reverse chain."""
    if isinstance(t_start, (bool, np.bool_)) or not isinstance(t_start, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(t_start) <= 1.0:
        raise ValueError(f"t_start must be a number in (0, 1], got {t_start!r}.")
    return float(t_start)


def own_vector_condition(space, adata: ad.AnnData, cells: np.ndarray, name: str) -> torch.Tensor | None:
    """The cells' own vector condition from ``adata.obsm`` (checked by the condition space), or None when the model
    has none; a missing obsm entry is a KeyError naming it."""
    if space.n_continuous == 0:
        return None
    if space.obsm_key not in adata.obsm:
        raise KeyError(f"{name} has no obsm[{space.obsm_key!r}], the model's vector condition (each cell keeps its "
                       "own).")
    return space.vector_condition(to_dense(adata.obsm[space.obsm_key])[cells], cells.size)


def thinned_start(module, x: np.ndarray, settings: ChainSettings, t_start: float) -> tuple[float, torch.Tensor]:
    """Real cells thinned to the start of a partial reverse chain: ``x_t ~ Binomial(x, p(t0))`` (Eq. 4).

    ``t0`` is ``t_start`` snapped to the first point of the sampler's time grid (discrete schedules take their own
    times), so the chain of ``settings.n_steps`` steps runs from exactly the time the cells were thinned to.

    Returns
    -------
    ``(t0, x_t)``: the start time and the thinned counts on the module's device (one draw of the settings'
    generator).
    """
    t0 = float(make_time_grid(settings.n_steps, module.schedule, check_t_start(t_start))[0])
    p0 = module.schedule.p(torch.tensor(t0, dtype=torch.float64)).float().to(settings.device)
    return t0, thin(torch.from_numpy(x).to(settings.device), p0, generator=settings.generator)


def _check_path(t_start: float, weights) -> np.ndarray:
    """Validate ``t_start`` and the interpolation weights; returns the weights as a float array."""
    check_t_start(t_start)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
        raise ValueError(f"weights must be a non-empty list of numbers in [0, 1], got {np.asarray(weights)}.")
    return w


def _source_cells(adata_source: ad.AnnData, space, source_label: str, target_label: str) -> np.ndarray:
    """Indices of the ``source_label`` cells of ``adata_source``, after checking both labels."""
    if hasattr(adata_source, "mod"):
        raise ValueError("Pass the AnnData of the RNA modality (mdata.mod[...]) as adata_source, not a MuData.")
    key, cats = space.labels_key, space.label_categories
    for name, value in (("source_label", source_label), ("target_label", target_label)):
        if str(value) not in cats:
            raise ValueError(f"Unknown {name} {value!r}: the model knows the {key} values {cats}.")
    check_obs_key(adata_source, key)
    obs_labels = adata_source.obs[key].astype(str).to_numpy()
    cells = np.flatnonzero(obs_labels == str(source_label))
    if cells.size == 0:
        raise ValueError(
            f"No cell of adata_source has {key} == {source_label!r}; its labels are {sorted(set(obs_labels.tolist()))}."
        )
    return cells


def _path_obs(adata_source, cells, w, source_label, target_label, cov_obs, labels_key) -> pd.DataFrame:
    """obs of the interpolated rows (weight-major): weight, source cell, labels and the kept covariates."""
    n, n_w = cells.size, w.size
    names = np.asarray(adata_source.obs_names)[cells].astype(str)
    obs = pd.DataFrame(
        {
            "interpolation_weight": np.repeat(w, n),
            "source_cell": pd.Categorical(np.tile(names, n_w), categories=pd.unique(names)),
            "source_label": pd.Categorical([str(source_label)] * (n * n_w)),
            "target_label": pd.Categorical([str(target_label)] * (n * n_w)),
        },
        index=[f"{c}_w{j}" for j in range(n_w) for c in names],
    )
    for col in cov_obs.columns:
        if col != labels_key:
            obs[col] = pd.Categorical(np.tile(np.asarray(cov_obs[col].astype(str)), n_w),
                                      categories=cov_obs[col].cat.categories)
    return obs
