"""Generating verbs of CountsDiffModel: ``sample`` (new cells) and ``interpolate`` (real cells moved between labels)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch

from countsdiff_sc import _keys
from countsdiff_sc._resources import check_memory, check_work
from countsdiff_sc._utils import check_obs_key, record_params, to_dense
from countsdiff_sc.diffusion import generate, thin
from countsdiff_sc.module import CONDITION_KEY, check_guidance_cap

from ._chains import ChainSettings, positive_int, run_batches
from ._results import check_cells, counts_in_model_order, generated_adata, is_mudata
from ._sampler import Sampler, sampler_for

__all__ = ["GenerationMixin"]

#: Bytes per generated cell beyond its counts (its obs name and row of obs), for the resource guard.
CELL_OVERHEAD = 200.0
#: Default interpolation weights of :meth:`GenerationMixin.interpolate`: 0, 0.1, ..., 1.
_DEFAULT_WEIGHTS = tuple(float(a) for a in np.linspace(0.0, 1.0, 11))



class GenerationMixin:
    """``sample`` and ``interpolate`` of CountsDiffModel (needs ``module``, ``condition_space`` and ``device``)."""

    def sample(
        self,
        n_cells: int | None = None,
        labels: str | Sequence[str] | None = None,
        *,
        covariates: Mapping[str, str | Sequence[str]] | None = None,
        conditions: np.ndarray | Literal["train"] | None = None,
        depth: float | np.ndarray | Literal["train"] | None = "train",
        sampler: Sampler | None = None,
        **legacy: Any,
    ) -> ad.AnnData:
        """Generate cells (CountsDiff Algorithm 2), conditioned on labels / covariates or unconditionally.

        Without labels, covariates and vector conditions the cells are drawn from the unconditional rate (every
        condition replaced by its null token, learned through condition dropout) and guidance has no effect.

        Parameters
        ----------
        n_cells
            Number of cells; may be omitted when ``labels`` (or a covariate) is a list, whose length it takes.
        labels
            One label for all cells or one per cell. None samples without a label condition.
        covariates
            ``{covariate: value or list}`` for covariates registered with ``categorical_covariate_keys``.
            Conditions that are not given are drawn from their co-occurrence with the given ones in the training
            cells (so ``labels=["B"] * 10`` draws batches in which B cells were seen).
        conditions
            The vector condition, if the model was set up with ``condition_obsm_key``: an ``(n, d)`` array, or
            ``"train"`` to give each generated cell the vector condition of a random training cell with the same
            labels and covariates. None: the vector slot's null token (for a depth-conditioned model, the depth is
            then given by ``depth`` and the obsm condition must be given too).
        depth
            For a depth-conditioned model (the default preset): ``"train"`` (default) gives each generated cell the
            depth of a random training cell with the same labels and covariates (the same cell as its vector
            condition with ``conditions="train"``), so generated libraries follow the training cells'; a number or
            one number per cell asks for those depths (counts per cell); None leaves the vector slot to its null token
            (truly unconditional cells). For a model with an obsm condition the depth goes with it: without
            ``conditions`` the whole vector slot is left to its null token.
        sampler
            Chain settings (:class:`~countsdiff_sc.Sampler`); default 50 Euler steps, guidance 1 (guidance 0 loses
            the cell type, 2-3 overshoot), no attrition.

        Returns
        -------
        AnnData of generated cells: integer counts (float32 CSR) in ``X``, the conditions in ``obs`` (the depth asked
        for in ``obs["countsdiff_depth"]`` for a depth-conditioned model, the vector condition in ``obsm`` under the
        model's key), the genes of the training data as ``var_names`` and the settings in
        ``uns["countsdiff"]["sample"]``.

        Raises
        ------
        ValueError
            Unknown label / covariate values or ones without training cells, a guidance dict naming unknown
            conditions, unequal per-condition strengths on a jointly trained model, or a request beyond the resource
            guard.

        Warns
        -----
        UserWarning
            When the model was trained without a large share of its entries (a validity layer distrusting more than
            5% of them: Algorithm 1's marks): the cells it generates have too few zeros.

        Examples
        --------
        >>> gen = model.sample(labels=["B"] * 100, sampler=cds.Sampler(seed=0))
        >>> noise = model.sample(n_cells=100)  # unconditional
        """
        if "n_samples" in legacy:
            value = legacy.pop("n_samples")
            warnings.warn("sample(n_samples=...) is deprecated (n_samples means draws per cell everywhere): pass "
                          "n_cells=... instead.", FutureWarning, stacklevel=2)
            if n_cells is not None and n_cells != value:
                raise ValueError("Give the number of cells once, as n_cells.")
            n_cells = value
        run = ChainSettings(sampler_for("sample", self.preset, sampler, legacy, stacklevel=3), self.device)
        space = self.condition_space
        strengths = space.guidance_strengths(run.sampler.guidance)
        cap = check_guidance_cap(run.sampler.guidance_cap)
        n = _n_to_generate(n_cells, labels, covariates)
        check_work(f"sample(n_cells={n}) of {self.module.n_genes} genes",
                   n * self.module.n_genes * run.evaluations(self.module.schedule),
                   "fewer cells per call or fewer steps (sampler=cds.Sampler(n_steps=...))")
        check_memory(f"sample(n_cells={n}) of {self.module.n_genes} genes",
                     12.0 * n * self.module.n_genes + CELL_OVERHEAD * n, "fewer cells per call")
        self._warn_distrusted()
        codes, obs = space.resolve(n, labels, covariates, run.rng, getattr(self, "condition_table_", None))
        space.check_trained(codes, getattr(self, "condition_table_", None))
        conditions_arg = conditions
        picked = None
        if isinstance(conditions, str) or (isinstance(depth, str) and self.module.depth_condition):
            if isinstance(conditions, str) and conditions != "train":
                raise ValueError(f"conditions must be an array, 'train' or None, got {conditions!r}.")
            if isinstance(depth, str) and depth != "train":
                raise ValueError(f"depth must be 'train', a number or one number per cell, got {depth!r}.")
            picked = self._training_cells(codes, n, run.rng)
        if isinstance(conditions, str):
            conditions = self._training_vector_conditions(picked)
        cont = space.vector_condition(conditions, n)
        depths = self._depths_of(depth, picked, n)
        if cont is not None and codes is None and space.n_cats_per_cov:
            raise ValueError("With a vector condition, also give the categorical conditions (labels / covariates).")
        if isinstance(run.sampler.guidance, Mapping) and codes is None and cont is None and depths is None:
            raise ValueError("Per-covariate guidance needs conditions: give labels, covariates or conditions.")
        if depths is None and cont is not None and self.module.depth_condition:
            raise ValueError("A depth-conditioned model reads the depth with the vector condition: give depth= too.")
        if cont is None and space.n_continuous > 0:
            depths = None  # no obsm condition given: the whole vector slot (depth included) takes its null token
        vec = self.module.vector_condition(cont, None if depths is None else torch.from_numpy(depths))
        counts = self._generate(codes, vec, n, run, strengths, cap)
        result = generated_adata(counts, obs, getattr(self, "var_names_", None), self.module.n_genes)
        if cont is not None:  # the vector condition each cell was generated under
            result.obsm[space.obsm_key] = cont.cpu().numpy().astype(np.float32)
        if depths is not None:
            result.obs[_keys.DEPTH] = depths.astype(np.float32)
        record_params(result, "sample", {**run.record(), "guidance_cap": cap, "depth": depth if isinstance(
            depth, str) else "given", "conditions": "train" if isinstance(conditions_arg, str) else
            ("given" if cont is not None else "None")})
        return result

    @torch.inference_mode()
    def _generate(self, codes: np.ndarray | None, vec: torch.Tensor | None, n: int, run: ChainSettings, strengths,
                  cap) -> np.ndarray:
        """Generated counts of ``n`` cells from ``t = 1`` in batches."""
        module, device = self.module, self.device
        times = run.times(module.schedule)

        def chain(rows: slice, show: bool) -> torch.Tensor:
            cat = None if codes is None else torch.from_numpy(codes[rows]).to(device)
            v = None if vec is None else vec[rows].to(device)
            if cat is None and v is None:
                rate_fn = module.rate
            else:
                def rate_fn(x, t):
                    return module.rate(x, t, cat, v, guidance=strengths, guidance_cap=cap)
            return generate(run.wrap(rate_fn), (rows.stop - rows.start, module.n_genes), module.schedule, times,
                            **run.chain_kwargs(), generator=run.generator, device=device, progress=show)

        evaluations = run.evaluations(module.schedule)
        progress = run.progress(n * module.n_genes * evaluations, -(-n // run.batch_size) * evaluations)
        return np.concatenate([x for _, x in run_batches(module, n, run.batch_size, chain, progress, "sampling")])

    def _warn_distrusted(self) -> None:
        """Warn once per call when the model learned without a large share of its entries (too dense generations)."""
        share = getattr(self, "distrusted_share_", None)
        valid_layer = self.registry_["setup_args"].get("valid_layer")
        if valid_layer is None or (share is not None and share <= 0.05):
            return
        warnings.warn(
            f"This model was set up with valid_layer={valid_layer!r}, which distrusts "
            f"{'many' if share is None else f'{share:.0%} of the'} entries (e.g. scIDPMs Algorithm 1's marks): it "
            "never learned how often those genes are absent, so the cells it generates have too few zeros "
            "(several times fewer than real cells). Use it for imputation; for generation, train on "
            "all entries or with mark_dropouts' default marks.",
            UserWarning,
            stacklevel=3,
        )

    def _training_cells(self, codes: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
        """For each generated cell a random training cell with the same categorical codes (all training cells when
        the model has no categorical condition); positions into the training cells."""
        train_codes = getattr(self, "train_codes_", None)
        n_train = len(getattr(self, "train_depths_", [])) if train_codes is None else len(train_codes)
        if train_codes is None and self.adata is not None:
            train_codes = self.condition_space.codes(self.adata_manager)
            n_train = self.adata.n_obs
        if n_train == 0:
            raise ValueError("This model has no record of its training cells (saved before 0.2 and loaded without "
                             "its data): pass depth= / conditions= as numbers, or load it with its training AnnData.")
        if codes is None or train_codes is None:
            return rng.integers(0, n_train, n)
        keys, inverse = np.unique(codes, axis=0, return_inverse=True)
        out = np.empty(codes.shape[0], dtype=np.int64)
        space = self.condition_space
        for k, key in enumerate(keys):
            pool = np.flatnonzero((train_codes == key).all(axis=1))
            if pool.size == 0:
                cats = ([space.label_categories] if space.use_labels else []) + list(
                    space.covariate_categories.values())
                names = [m for m in space.names()[: len(cats)]]
                which = {name: str(c[int(v)]) for name, c, v in zip(names, cats, key, strict=True)}
                raise ValueError(f"No training cell has the conditions {which}, so there is no depth or vector "
                                 "condition to draw from: pass depth= (and conditions=) as numbers.")
            rows = np.flatnonzero(inverse.ravel() == k)
            out[rows] = rng.choice(pool, rows.size)
        return out

    def _training_vector_conditions(self, picked: np.ndarray) -> np.ndarray:
        """``conditions="train"``: the obsm vector condition of the training cells ``picked``."""
        space = self.condition_space
        if space.n_continuous == 0:
            raise ValueError("conditions='train' needs a model set up with condition_obsm_key (a vector condition).")
        if self.adata is None:
            raise ValueError("conditions='train' draws from the training cells: load the model with its training "
                             "AnnData (CountsDiffModel.load(path, adata=...)), or pass an array.")
        return to_dense(self.adata_manager.get_from_registry(CONDITION_KEY), np.float32)[picked]

    def _depths_of(self, depth: Any, picked: np.ndarray | None, n: int) -> np.ndarray | None:
        """The depth of each generated cell for a depth-conditioned model (None otherwise)."""
        if depth is None:
            return None
        if not self.module.depth_condition:
            if not (isinstance(depth, str) and depth == "train"):
                raise ValueError("depth= needs a depth-conditioned model (preset='default'); this one is not.")
            return None
        if isinstance(depth, str):
            return np.asarray(self.train_depths_, dtype=np.float32)[picked]
        raw = np.asarray(depth)
        if raw.dtype.kind not in "iuf":
            raise ValueError(f"depth must be 'train', None, a positive number of counts or one per cell ({n}), got "
                             f"{depth!r}.")
        values = np.broadcast_to(raw.astype(np.float64), (n,)) if raw.ndim == 0 else raw.astype(np.float64)
        if values.shape != (n,) or not np.isfinite(values).all() or (values <= 0).any():
            raise ValueError(f"depth must be a positive number of counts or one per cell ({n}), got "
                             f"{raw.ravel()[:5]}.")
        seen = np.asarray(getattr(self, "train_depths_", []), dtype=np.float64)
        if seen.size and ((values > 10 * seen.max()) | (values < 0.1 * seen.min())).any():
            warnings.warn(f"depth asks for {values.min():.4g} to {values.max():.4g} counts per cell, more than ten "
                          f"times outside the training cells' {seen.min():.4g} to {seen.max():.4g}: the network "
                          "extrapolates there, and the cells need not reach that depth.", UserWarning, stacklevel=3)
        return values.astype(np.float32)

    def interpolate(
        self,
        adata_source: ad.AnnData,
        labels: tuple[str, str] | str | None = None,
        *args: Any,
        weights: Sequence[float] | np.ndarray = _DEFAULT_WEIGHTS,
        t_start: float = 0.6,
        n_cells: int | None = None,
        sampler: Sampler | None = None,
        **legacy: Any,
    ) -> ad.AnnData:
        """Move real cells of one label towards another along a path of mixed conditional rates.

        The cells of the source label in ``adata_source`` are thinned to ``t_start``,
        ``x_t ~ Binomial(x_0, p(t_start))`` (Eq. 4; one thinning per cell, shared by all weights), and the reverse
        process runs from ``t_start`` to 0 (Algorithm 2) with, for each weight ``a``, the rate
        ``log y = log y_u + g ((1 - a) log y_src + a log y_tgt - log y_u)`` (see
        :func:`~countsdiff_sc.module.interpolation_terms`): the geometric mix ``y_src^(1-a) y_tgt^a`` of the source-
        and target-label rates, guided against the unconditional rate ``y_u`` with strength ``g`` as in Sec. 3.4.
        Every other condition (categorical covariates, vector condition, the cell's own depth) is kept from the
        source cell. A larger ``t_start`` moves cells further (``t_start = 1`` forgets the source cell entirely).

        Parameters
        ----------
        adata_source
            AnnData holding the source cells: the model's genes (matched by name) in the registered counts layer,
            the labels column and, when registered, the covariate columns (covariates missing there are drawn from
            their co-occurrence with the source label in the training cells) and the obsm vector condition.
        labels
            ``(source_label, target_label)``: the labels (values of the model's ``labels_key``) of the start and end
            of the path.
        weights
            Interpolation weights ``a`` in [0, 1]; 0 keeps the source label, 1 is the target label.
        t_start
            Time in (0, 1] the source cells are noised to; with the cosine schedule a cell keeps a fraction
            ``p(t_start)`` of its molecules (0.35 at 0.6, 0.10 at 0.8, 0.02 at 0.9).
        n_cells
            Number of source cells, drawn at random without replacement (all cells of the source label when None).
        sampler
            Chain settings (:class:`~countsdiff_sc.Sampler`; one guidance strength); default 30 Euler steps.

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
        >>> path = model.interpolate(adata, ("CD4 T", "B"), weights=[0.0, 0.5, 1.0], t_start=0.6, n_cells=100)
        >>> path.obs.groupby("interpolation_weight").size()
        """
        source_label, target_label = _path_labels(labels, args, legacy)
        run = ChainSettings(sampler_for("interpolate", self.preset, sampler, legacy, stacklevel=3), self.device)
        space = self.condition_space
        if not space.use_labels:
            raise ValueError("interpolate needs a model set up with labels_key; this model has no labels.")
        if isinstance(run.sampler.guidance, Mapping):
            raise ValueError("interpolate takes one guidance strength (a float), not a dict.")
        g = space.guidance_strengths(run.sampler.guidance)
        w = _check_path(t_start, weights)
        cells = _source_cells(adata_source, space, source_label, target_label)
        space.check_trained(np.array([[space.label_categories.index(str(v))] for v in (source_label, target_label)]),
                            getattr(self, "condition_table_", None), columns=[0])
        if n_cells is not None:
            if not 1 <= positive_int(n_cells, "n_cells") <= cells.size:
                raise ValueError(f"n_cells must lie in [1, {cells.size}] (cells of {source_label!r}), got {n_cells}.")
            cells = np.sort(run.rng.choice(cells, size=int(n_cells), replace=False))
        n, n_w = cells.size, w.size
        what = f"interpolate() of {n} cells x {n_w} weights"
        check_work(what, n * n_w * self.module.n_genes * run.evaluations(self.module.schedule, t_start),
                   "fewer weights, fewer cells (n_cells=) or steps")
        check_memory(what, n * n_w * (12.0 * self.module.n_genes + CELL_OVERHEAD), "fewer weights or fewer cells "
                     "(n_cells=)")
        x_src = counts_in_model_order(adata_source, self.registry_["setup_args"].get("layer"), cells,
                                      getattr(self, "var_names_", None), self.module.n_genes, "adata_source",
                                      f"the counts of the {source_label!r} cells of adata_source")
        # conditions: the source label (or the target label), covariates and vector condition of the source cells
        present = {k: adata_source.obs[k].to_numpy()[cells].astype(str) for k in space.covariate_categories
                   if k in adata_source.obs.columns}
        src_codes, cov_obs = space.resolve(n, [str(source_label)] * n, present, run.rng,
                                           getattr(self, "condition_table_", None))
        tgt_codes = src_codes.copy()
        tgt_codes[:, 0] = space.label_categories.index(str(target_label))
        cont = own_vector_condition(space, adata_source, cells, "adata_source")
        vec = self.module.vector_condition(cont, self._own_depths(x_src))
        counts, t0 = self._interpolate_chains(x_src, src_codes, tgt_codes, vec, w, t_start, run, g)
        obs = _path_obs(adata_source, cells, w, source_label, target_label, cov_obs, space.labels_key)
        result = generated_adata(counts, obs, getattr(self, "var_names_", None), self.module.n_genes)
        record_params(result, "interpolation", {
            "source_label": str(source_label), "target_label": str(target_label), "weights": [float(a) for a in w],
            "t_start": t0, **run.record(), "n_cells": n,
        })
        return result

    def _own_depths(self, x: np.ndarray) -> torch.Tensor | None:
        """Each real cell's own depth (its total count) for a depth-conditioned model, else None."""
        if not self.module.depth_condition:
            return None
        return torch.from_numpy(np.asarray(x, np.float64).sum(axis=1).astype(np.float32))

    @torch.inference_mode()
    def _interpolate_chains(self, x_src, src_codes, tgt_codes, vec, w, t_start, run, g) -> tuple[np.ndarray, float]:
        """Rows weight-major, one shared thinning per source cell."""
        module, device = self.module, self.device
        n, n_w = x_src.shape[0], w.size
        t0, x_t = thinned_start(module, x_src, run, t_start)
        rows_x = x_t.repeat(n_w, 1)
        rows_a = torch.from_numpy(np.repeat(w, n).astype(np.float32)).to(device)
        rows_src = torch.from_numpy(np.tile(src_codes, (n_w, 1))).to(device)
        rows_tgt = torch.from_numpy(np.tile(tgt_codes, (n_w, 1))).to(device)
        rows_vec = None if vec is None else vec.to(device).repeat(n_w, 1)
        times = run.times(module.schedule, t0)

        def chain(rows: slice, show: bool) -> torch.Tensor:
            v = None if rows_vec is None else rows_vec[rows]

            def rate_fn(x, t):
                return module.interpolation_rate(x, t, rows_src[rows], rows_tgt[rows], v, rows_a[rows, None], g)

            return generate(run.wrap(rate_fn), (rows.stop - rows.start, module.n_genes), module.schedule, times,
                            **run.chain_kwargs(), x_start=rows_x[rows], generator=run.generator, device=device,
                            progress=show)

        evaluations = run.evaluations(module.schedule, t0)
        progress = run.progress(n * n_w * module.n_genes * evaluations, -(-n * n_w // run.batch_size) * evaluations)
        counts = np.concatenate([x for _, x in run_batches(module, n * n_w, run.batch_size, chain, progress,
                                                           "interpolating")])
        return counts, t0


def _path_labels(labels: Any, args: tuple, legacy: dict) -> tuple[str, str]:
    """``(source, target)`` from ``labels=(a, b)``, or from the 0.1 call ``interpolate(adata, a, b)`` /
    ``source_label=`` / ``target_label=`` (with a FutureWarning)."""
    old = {k: legacy.pop(k) for k in ("source_label", "target_label") if k in legacy}
    if args or old:
        if len(args) > 1:
            raise TypeError("interpolate takes (adata_source, labels) positionally; pass weights=, t_start=, ... by "
                            "keyword.")
        source = labels if labels is not None else old.get("source_label")
        target = args[0] if args else old.get("target_label")
        warnings.warn("interpolate(adata, source_label, target_label) is deprecated: pass labels=(source, target).",
                      FutureWarning, stacklevel=3)
        labels = (source, target)
    if isinstance(labels, str) or labels is None or len(labels) != 2:
        raise ValueError(f"labels must be the pair (source_label, target_label), got {labels!r}.")
    return str(labels[0]), str(labels[1])


def _n_to_generate(n_cells: int | None, labels, covariates) -> int:
    """The number of cells to generate: ``n_cells``, or the length of a per-cell list of labels / covariates."""
    if n_cells is None:
        sized = [v for v in [labels, *(covariates or {}).values()] if v is not None and not isinstance(v, str)]
        if not sized:
            raise ValueError("Pass n_cells, or labels / covariates as one value per cell to generate.")
        n_cells = len(sized[0])
    return positive_int(n_cells, "n_cells")


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


def thinned_start(module, x: np.ndarray, run: ChainSettings, t_start: float) -> tuple[float, torch.Tensor]:
    """Real cells thinned to the start of a partial reverse chain: ``x_t ~ Binomial(x, p(t0))`` (Eq. 4).

    ``t0`` is ``t_start`` snapped to the first point of the sampler's time grid (discrete schedules take their own
    times), so the chain runs from exactly the time the cells were thinned to.

    Returns
    -------
    ``(t0, x_t)``: the start time and the thinned counts on the module's device (one draw of the run's generator).
    """
    t0 = float(run.times(module.schedule, check_t_start(t_start))[0])
    p0 = module.schedule.p(torch.tensor(t0, dtype=torch.float64)).float().to(run.device)
    return t0, thin(torch.from_numpy(x).to(run.device), p0, generator=run.generator)


def _check_path(t_start: float, weights) -> np.ndarray:
    """Validate ``t_start`` and the interpolation weights; returns the weights as a float array."""
    check_t_start(t_start)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
        raise ValueError(f"weights must be a non-empty list of numbers in [0, 1], got {np.asarray(weights)}.")
    return w


def _source_cells(adata_source: ad.AnnData, space, source_label: str, target_label: str) -> np.ndarray:
    """Indices of the ``source_label`` cells of ``adata_source``, after checking both labels."""
    check_cells(adata_source, "adata_source")
    if is_mudata(adata_source):
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
