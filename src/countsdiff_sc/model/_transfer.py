"""Count-space counterfactual transfer of CountsDiffModel: ``transfer`` moves real cells to other conditions.

Each cell keeps its own conditions except the targets given (another batch, another label, ...), in one of two ways:

- uniform thinning (``retention=None``): the cell is thinned to ``t_start`` (Eq. 4) and the reverse chain (Algorithm
  2, Prop. 3.2) runs from ``t_start`` to 0 under the target conditions, guided as in
  :meth:`~countsdiff_sc.model._generation.GenerationMixin.sample` (Sec. 3.4). The molecules kept by the thinning carry
  the cell's identity; the ones the chain adds back follow the target conditions.
- per-gene retention (``retention="auto"`` or a Series): the source condition is read as a binomial thinning of the
  target's counts, gene by gene (:mod:`._retention`); genes the source inflates are thinned back, and
  :func:`~countsdiff_sc.diffusion.restore` draws the molecules the source lost, keeping every other molecule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from countsdiff_sc._resources import check_memory, check_work
from countsdiff_sc._utils import record_params
from countsdiff_sc.diffusion import binomial, generate, restore, restore_start

from ._chains import ChainSettings, positive_int, run_batches
from ._expression import select_cells
from ._generation import check_t_start, own_vector_condition, thinned_start
from ._results import check_cells, counts_in_model_order, generated_adata, is_mudata, model_gene_names
from ._retention import SERIES_FIX, GroupSums, check_retention_series, pair_name
from ._sampler import Sampler, sampler_for

__all__ = ["TransferMixin"]

#: Prefix of the obs columns of :meth:`TransferMixin.transfer` that keep a target condition's original values.
SOURCE_PREFIX = "transfer_source_"


class TransferMixin:
    """``transfer`` of CountsDiffModel (needs ``module``, ``condition_space``, ``registry_`` and ``device``)."""

    @torch.inference_mode()
    def transfer(
        self,
        adata: ad.AnnData,
        labels: str | Sequence[str] | None = None,
        *,
        covariates: Mapping[str, str | Sequence[str]] | None = None,
        t_start: float | None = None,
        retention: Literal["auto"] | pd.Series | None = None,
        indices: Sequence[int] | np.ndarray | slice | None = None,
        n_samples: int = 1,
        sampler: Sampler | None = None,
        **legacy: Any,
    ) -> ad.AnnData:
        """Move real cells to other conditions in count space (a counterfactual: "this cell, as if from batch b2").

        Every cell keeps its own conditions (its label and covariates, read from ``adata.obs``, and its vector
        condition from ``adata.obsm``) except the targets given. The cell is thinned to ``t_start``,
        ``x_t ~ Binomial(x_0, p(t_start))`` (Eq. 4), and the reverse process (Algorithm 2, the birth-death step of
        Prop. 3.2) runs from ``t_start`` to 0 with the rate of the target conditions, guided against the
        unconditional rate with strength ``g`` (Sec. 3.4) as in :meth:`sample`. The molecules the thinning keeps are
        the part of the cell that stays; the chain rewrites the rest. ``t_start`` sets the trade-off: small values
        keep more of the cell (and of its batch effect), large ones move it further (``t_start = 1`` forgets the
        cell and samples a new one under the target conditions).

        **Per-gene retention** (``retention="auto"`` or a Series; the choice for batch and other technical effects).
        A technical effect in count space is a thinning of each gene's molecules: the source condition keeps a
        fraction ``r_g`` of gene ``g``'s molecules relative to the target (``r_g > 1`` for a gene the source
        inflates). ``"auto"`` estimates ``r_g`` from the model's training data for each source -> target move (mean
        counts of the source cells over the target cells', compared within the same label and other covariates;
        :func:`~countsdiff_sc.model._retention.estimate_retention`). Each gene of the cell is then seen at level
        ``l_g = min(r_g, 1, p(t_start))`` (``t_start`` None: no cap): a gene above its level is thinned to it,
        ``Binomial(x_g, l_g / r_g)``, and :func:`~countsdiff_sc.diffusion.restore` draws ``x_0`` given the result
        under the target conditions: a gene at level 1 is kept molecule for molecule, a gene at level ``l < 1``
        keeps its molecules and gains those the network expects were lost. The cell's depth follows the target
        (the global part of a batch's depth difference is a thinning like any other). ``t_start`` adds a uniform
        cap, trading more of the cell for more of the target, as in the uniform mode. A vector condition is read
        from the cells' own ``obsm`` in both modes; a depth-conditioned model (the default preset) is given each
        cell's own depth in the uniform mode and the depth its retention implies, ``sum_g x_g / r_g``, with
        ``retention``.

        Parameters
        ----------
        adata
            AnnData of real cells: the model's genes (matched by name, any order; extra genes are ignored) in the
            registered counts layer, an obs column for each registered condition that is not a target, and the obsm
            vector condition if the model has one.
        labels
            Target label (a value of the model's ``labels_key``) for all cells, or one per cell. None keeps each
            cell's own label.
        covariates
            Target values ``{covariate: value or list of one value per cell}`` of categorical covariates registered
            with ``categorical_covariate_keys``; covariates not named keep each cell's own value.
        t_start
            Time in (0, 1] the cells are thinned to; with the cosine schedule a cell keeps a fraction ``p(t_start)``
            of its molecules (0.85 at 0.3, 0.5 at 0.5, 0.35 at 0.6). None: 0.5 in the uniform mode, no cap with
            ``retention``.
        indices
            Cells of ``adata`` to transfer (positions, a boolean mask or a slice; all cells when None).
        sampler
            Chain settings (:class:`~countsdiff_sc.Sampler`); default 50 Euler steps over the whole time grid (a
            chain from ``t_start``, or from the lowest retention level, runs the steps of its interval), guidance 1.
        retention
            None (default): uniform thinning to ``t_start``. ``"auto"``: per-gene retention estimated from the
            model's training data for each move (the cells' own values of the target conditions must be obs columns
            of ``adata``; a cell already in its target only gets the ``t_start`` cap). A pandas Series of one ratio
            per gene (source mean over target mean, indexed by gene name, matched by name): the same retention for
            every cell.
        n_samples
            Independent draws per cell. ``X`` holds the first (integer counts); with more than one, the layers
            ``transfer_mean`` and ``transfer_sd`` hold the mean and standard deviation over the draws (float32,
            dense): the counterfactual's expected counts and their uncertainty.

        Returns
        -------
        AnnData with one cell per input cell, in the input order: integer counts (float32 CSR) in ``X``, the model's
        genes as ``var_names``, the input cells' ``obs_names`` and a copy of their ``obs`` in which each target
        condition's column holds the target values (categorical, the model's categories) and
        ``transfer_source_<column>`` the cell's original values (when ``adata.obs`` has that column). The settings
        are in ``uns["countsdiff"]["transfer"]``; with ``retention`` the ratios used are in
        ``uns["transfer_retention"]`` (a DataFrame, genes x moves) and each cell's move in ``obs["transfer_move"]``.

        Raises
        ------
        ValueError
            No target given, a target or a cell's own condition value unknown to the model (the message lists the
            known ones), labels given to a model without labels, a per-cell target of the wrong length,
            ``t_start`` outside (0, 1], genes of the model missing from ``adata``, ``indices`` out of range, a
            MuData, or bad sampling settings.
        KeyError
            An unknown covariate name, a registered condition that is neither a target nor an obs column of
            ``adata``, the counts layer or the obsm vector condition missing.

        Examples
        --------
        >>> moved = model.transfer(adata_b, covariates={"batch": "b2"}, t_start=0.4, seed=0)
        >>> moved.obs[["batch", "transfer_source_batch"]].value_counts()
        >>> as_b = model.transfer(adata, labels="B", indices=np.flatnonzero(adata.obs["cell_type"] == "NK"), seed=0)
        >>> restored = model.transfer(adata_b, covariates={"batch": "a"}, retention="auto", seed=0)
        >>> restored.uns["transfer_retention"].describe()
        """
        space = self.condition_space
        check_cells(adata)
        if is_mudata(adata):
            raise ValueError("Pass the AnnData of the RNA modality (mdata.mod[...]) to transfer, not a MuData.")
        run = ChainSettings(sampler_for("transfer", self.preset, sampler, legacy, stacklevel=4), self.device)
        targets = _targets(space, labels, covariates)
        if retention is None:
            t_start = check_t_start(0.5 if t_start is None else t_start)
        elif t_start is not None:
            t_start = check_t_start(t_start)
        given = retention is not None and not (isinstance(retention, str) and retention == "auto")
        retention_series = (check_retention_series(retention, getattr(self, "var_names_", None), self.module.n_genes)
                            if given else None)
        strengths = space.guidance_strengths(run.sampler.guidance)
        settings = run
        batch_size = run.batch_size
        n_samples = positive_int(n_samples, "n_samples")
        cells = select_cells(indices, adata.n_obs)
        n = cells.size
        check_work(f"transfer(n_samples={n_samples}) of {n} cells", n * n_samples * self.module.n_genes *
                   run.evaluations(self.module.schedule), "fewer n_samples, fewer cells (indices=) or fewer steps")
        check_memory(f"transfer(n_samples={n_samples}) of {n} cells", 16.0 * n * self.module.n_genes * (
            3 if n_samples > 1 else 1), "fewer cells per call (indices=)")
        self._warn_distrusted()

        # conditions: the targets where given, every other slot from the cell's own obs
        values = {key: _per_cell(key, value, n) for key, value in targets.items()}
        for key in condition_slots(space):
            if key not in values:
                if key not in adata.obs.columns:
                    raise KeyError(
                        f"adata.obs has no column {key!r}, a condition of the model, so the cells' own {key} is "
                        f"unknown: add the column, or give {key} as a target "
                        f"({'labels=' if key == space.labels_key else f'covariates={{{key!r}: ...}}'})."
                    )
                values[key] = adata.obs[key].to_numpy()[cells]
        for key, v in values.items():
            values[key] = np.asarray([str(x) for x in v], dtype=object)
        label_values = values.get(space.labels_key) if space.use_labels else None
        codes, _ = space.resolve(n, label_values, {k: values[k] for k in space.covariate_categories}, settings.rng,
                                 None)
        space.check_trained(codes, getattr(self, "condition_table_", None))
        cont = own_vector_condition(space, adata, cells, "adata")
        x0 = counts_in_model_order(adata, self.registry_["setup_args"].get("layer"), cells,
                                   getattr(self, "var_names_", None), self.module.n_genes, "adata",
                                   "the counts of adata")

        module, device = self.module, self.device
        cat_all = None if codes is None else torch.from_numpy(codes).to(device)
        obs = _transfer_obs(adata, cells, space, values, targets)
        record: dict[str, Any] = {"targets": {k: _summary(v) for k, v in targets.items()}}
        evaluations = run.evaluations(module.schedule)
        shown = run.progress(n * n_samples * module.n_genes * evaluations,
                             n_samples * math.ceil(n / batch_size) * evaluations)
        progress = shown and n_samples == 1  # several draws: one bar over the draws instead of one per draw
        if retention is not None:
            draw, table, moves = self._retention_chains(
                adata, cells, x0, values, targets, retention_series, t_start, settings, strengths, cat_all,
                cont, batch_size, progress)
            obs["transfer_move"] = pd.Categorical(moves)
            record.update({"t_start": t_start, "retention": "auto" if retention_series is None else "given"})
        else:
            table = None
            own = None if not module.depth_condition else torch.from_numpy(x0.sum(axis=1).astype(np.float32))
            vec = module.vector_condition(cont, own)
            cont_all = None if vec is None else vec.to(device)

            def draw() -> np.ndarray:
                t0, x_t = thinned_start(module, x0, settings, t_start)
                record["t_start"] = t0
                times = settings.times(module.schedule, t0)

                def chain(rows: slice, show: bool) -> torch.Tensor:
                    rate_fn = _guided_rate(module, cat_all, cont_all, rows, strengths,
                                           settings.sampler.guidance_cap)
                    return generate(settings.wrap(rate_fn), (rows.stop - rows.start, module.n_genes),
                                    module.schedule, times, **settings.chain_kwargs(), x_start=x_t[rows],
                                    generator=settings.generator, device=device, progress=show)

                return np.concatenate([x for _, x in run_batches(module, n, batch_size, chain, progress,
                                                                 "transferring")])

        bar = tqdm(total=n_samples, desc="transferring (draws)", disable=not shown or n_samples == 1)
        counts = draw()
        bar.update(1)
        result = generated_adata(counts, obs, getattr(self, "var_names_", None), module.n_genes)
        if n_samples > 1:
            total = counts.astype(np.float64)
            squares = total ** 2
            for _ in range(n_samples - 1):
                more = draw().astype(np.float64)
                total += more
                squares += more ** 2
                bar.update(1)
            mean = total / n_samples
            result.layers["transfer_mean"] = mean.astype(np.float32)
            result.layers["transfer_sd"] = np.sqrt(np.maximum(squares / n_samples - mean ** 2, 0.0)
                                                   * n_samples / (n_samples - 1)).astype(np.float32)
        bar.close()
        if table is not None:
            result.uns["transfer_retention"] = table
        record_params(result, "transfer", {**record, **settings.record(), "n_cells": n, "n_samples": n_samples})
        return result

    def _retention_chains(self, adata, cells, x0, values, targets, series, t_start, settings, strengths,
                          cat_all, cont, batch_size, progress):
        """Per-gene retention transfer: levels per cell, thinning of inflated genes, :func:`restore` chains.

        Returns a function that makes one draw of all cells, the table of ratios (genes x moves) and each cell's
        move name."""
        space, module, device = self.condition_space, self.module, self.device
        n = cells.size
        var_names = getattr(self, "var_names_", None)
        sources = {}
        for key in targets:
            if key not in adata.obs.columns:
                raise KeyError(f"retention needs each cell's own {key!r} (the condition it moves from): adata.obs "
                               f"has no column {key!r}.")
            sources[key] = np.asarray([str(v) for v in adata.obs[key].to_numpy()[cells]], dtype=object)
        keys = list(targets)
        move_of = [tuple((sources[k][i], values[k][i]) for k in keys) for i in range(n)]
        distinct = list(dict.fromkeys(move_of))
        names = {m: pair_name({k: v[0] for k, v in zip(keys, m, strict=True)},
                              {k: v[1] for k, v in zip(keys, m, strict=True)}) for m in distinct}
        ratios = {m: np.ones(module.n_genes) for m in distinct if all(a == b for a, b in m)}
        moving = [m for m in distinct if m not in ratios]
        if series is not None:
            ratios.update({m: series for m in moving})
        elif moving:
            sums = self._training_sums(keys, [k for k in condition_slots(space) if k not in targets],
                                       [tuple(p[i] for p in m) for m in moving for i in (0, 1)],
                                       "a pandas Series of one ratio per gene")
            for m in moving:
                ratios[m], _ = sums.ratio(tuple(pair[0] for pair in m), tuple(pair[1] for pair in m), SERIES_FIX)
        cap = 1.0 if t_start is None else float(module.schedule.p(torch.tensor(t_start, dtype=torch.float64)))
        r = np.stack([ratios[m] for m in move_of]).astype(np.float32)  # (cells, genes)
        level, keep, depth = retention_levels(x0, r, cap)
        x = torch.from_numpy(x0).to(device)
        keep_all = torch.from_numpy(keep).to(device)
        level_all = torch.from_numpy(level).to(device)
        vec = module.vector_condition(cont, torch.from_numpy(depth) if module.depth_condition else None)
        cont_all = None if vec is None else vec.to(device)

        def draw() -> np.ndarray:
            return draw_retention(module, settings, x, keep_all, level_all,
                                  lambda rows: _guided_rate(module, cat_all, cont_all, rows, strengths,
                                                            settings.sampler.guidance_cap),
                                  batch_size, progress, "transferring")[1]

        table = pd.DataFrame({names[m]: ratios[m] for m in distinct},
                             index=pd.Index(model_gene_names(var_names, module.n_genes), dtype=str))
        return draw, table, [names[m] for m in move_of]

    def _training_sums(self, group_keys: list[str], strata_keys: list[str], groups: list[tuple[str, ...]],
                       given: str) -> GroupSums:
        """Counts of the model's training data summed per (group, stratum), for retention estimates (``given``: how
        to pass the ratios instead, for the message of a model loaded without its data)."""
        if getattr(self, "adata", None) is None:
            raise ValueError("retention='auto' estimates the ratios from the model's training data, which this model "
                             "was loaded without: load it with CountsDiffModel.load(path, adata=...), or pass "
                             f"retention= as {given}.")
        return GroupSums.collect(self.adata, self.registry_["setup_args"].get("layer"),
                                 getattr(self, "var_names_", None), self.module.n_genes, group_keys, strata_keys,
                                 name="the model's training data", groups=groups)


def retention_levels(x0: np.ndarray, r: np.ndarray, cap: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a per-gene retention ``r`` (cells x genes, source mean over target mean) asks of each entry.

    Returns
    -------
    ``(level, keep, depth)``: the level ``l = min(r, 1, cap)`` each entry is seen at after the thinning, the share
    ``l / r`` (at most 1) of its molecules the thinning keeps (1 for a gene the source does not inflate, so every
    molecule stays), and each cell's depth at the target, ``sum_g x_g / r_g`` (the depth a depth-conditioned model
    is given), all float32.

    Examples
    --------
    >>> level, keep, depth = retention_levels(np.array([[4.0, 6.0]]), np.array([[0.5, 2.0]]))
    >>> level.tolist(), keep.tolist(), depth.tolist()
    ([[0.5, 1.0]], [[1.0, 0.5]], [11.0])
    """
    r = np.asarray(r, dtype=np.float32)
    level = np.minimum(np.minimum(r, 1.0), cap).astype(np.float32)
    keep = np.where(r > 0, level / np.maximum(r, 1e-30), 0.0).astype(np.float32)  # <= 1: level <= r
    depth = np.where(r > 0, x0 / np.maximum(r, 1e-3), 0.0).sum(axis=1).astype(np.float32)
    return level, keep, depth


def draw_retention(module, run: ChainSettings, x: torch.Tensor, keep: torch.Tensor, level: torch.Tensor,
                   rate_for, batch_size: int, progress: bool, desc: str) -> tuple[torch.Tensor, np.ndarray]:
    """One draw of cells moved by per-gene retention: genes above their level thinned to it, then :func:`restore`
    under the target conditions in batches of ``batch_size`` rows.

    Parameters
    ----------
    module
        The CountsDiffModule.
    run
        The call's chain settings (its generator is advanced).
    x, keep, level
        Counts, kept share and level of each entry (:func:`retention_levels`), tensors on the module's device.
    rate_for
        ``rate_for(rows: slice) -> rate_fn(x, t)``: the rate of the target conditions of those rows.
    batch_size, progress, desc
        Rows per chain and the progress display.

    Returns
    -------
    ``(y, counts)``: the thinned counts the chains started from (a tensor) and the restored counts (float32 array);
    ``counts >= y`` entry-wise (a restoration never loses a molecule).
    """
    y_all = binomial(x, keep, run.generator)  # genes above their level thinned to it

    def chain(rows: slice, show: bool) -> torch.Tensor:
        lvl = level[rows]
        return restore(run.wrap(rate_for(rows)), y_all[rows], lvl, module.schedule,
                       run.times(module.schedule, restore_start(module.schedule, lvl)), **run.chain_kwargs(),
                       generator=run.generator, progress=show)

    return y_all, np.concatenate([c for _, c in run_batches(module, x.shape[0], batch_size, chain, progress, desc)])


def _guided_rate(module, cat_all: torch.Tensor | None, cont_all: torch.Tensor | None, rows: slice, strengths,
                 cap: float | None = None):
    """The guided rate of the target conditions for the cells ``rows`` (as in ``sample``), capped at ``cap`` times
    the conditional rate (the sampler's ``guidance_cap``)."""
    cat = None if cat_all is None else cat_all[rows]
    vec = None if cont_all is None else cont_all[rows]

    def rate_fn(x, t):
        return module.rate(x, t, cat, vec, guidance=strengths, guidance_cap=cap)

    return rate_fn


def condition_slots(space) -> list[str]:
    """obs columns of the model's categorical conditions, labels first."""
    return ([space.labels_key] if space.use_labels else []) + list(space.covariate_categories)


def _targets(space, labels: Any, covariates: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{obs column: target value(s)}`` of the conditions to change, after checking their names."""
    if covariates is not None and not isinstance(covariates, Mapping):
        raise TypeError(f"covariates must be a dict {{covariate: value}}, got {type(covariates).__name__}.")
    covariates = dict(covariates or {})
    unknown = sorted(str(k) for k in covariates if k not in space.covariate_categories)
    if unknown:
        known = list(space.covariate_categories)
        hint = " (the label is set with labels=)" if space.labels_key in unknown else ""
        raise KeyError(f"Unknown covariate(s) {unknown}{hint}; the model's categorical covariates are {known}.")
    targets: dict[str, Any] = {}
    if labels is not None:
        if not space.use_labels:
            raise ValueError("The model was set up without labels_key, so it cannot move cells to another label.")
        targets[space.labels_key] = labels
    targets.update({k: v for k, v in covariates.items() if v is not None})
    if not targets:
        raise ValueError(
            "transfer needs a target: give labels= (the model's "
            f"{space.labels_key or 'labels: none'}) and/or covariates={{covariate: value}} (the model's "
            f"{list(space.covariate_categories)}); every condition not given stays the cell's own."
        )
    return targets


def _per_cell(key: str, value: Any, n: int) -> np.ndarray:
    """A target as one value per cell (a single value is repeated)."""
    if isinstance(value, str) or np.isscalar(value):
        return np.asarray([value] * n, dtype=object)
    values = np.asarray(list(value), dtype=object)
    if values.shape != (n,):
        raise ValueError(f"The target {key} has {len(values)} values for {n} cells: give one value, or one per cell "
                         "(in the order of the cells, after indices).")
    return values


def _summary(value: Any) -> Any:
    """A target as recorded in ``uns``: the value, or the sorted distinct values of a per-cell list."""
    if isinstance(value, str) or np.isscalar(value):
        return str(value)
    return sorted({str(v) for v in value})


def _transfer_obs(adata: ad.AnnData, cells: np.ndarray, space, values: dict[str, np.ndarray],
                  targets: Mapping[str, Any]) -> pd.DataFrame:
    """A copy of the cells' obs: target columns hold the targets, ``transfer_source_<key>`` the original values."""
    obs = adata.obs.iloc[cells].copy()
    categories = {space.labels_key: space.label_categories} if space.use_labels else {}
    categories.update(space.covariate_categories)
    for key in targets:
        if key in obs.columns:
            obs[f"{SOURCE_PREFIX}{key}"] = obs[key].copy()
        obs[key] = pd.Categorical(values[key].astype(str), categories=categories[key])
    return obs
