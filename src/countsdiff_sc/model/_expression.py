"""scvi-tools' expression API for CountsDiffModel: ``get_normalized_expression`` and ``posterior_predictive_sample``,
computed by depth restoration (:mod:`._denoise`): each cell enters the reverse chain at its own depth.

Two methods (``method=``):

* ``"posterior_mean"``: the network's own estimate of the restored profile's mean, ``E[x_D | x] = x + y_hat(x, t_f)``
  at the cell's entry time ``p(t_f) = L / D`` (one network pass per guidance term, no randomness); the default of
  ``get_normalized_expression`` whenever the result is a mean;
* ``"depth"``: draws of the restored profile (:func:`~countsdiff_sc.diffusion.restore` from the cell's own
  molecules); ``posterior_predictive_sample`` brings each draw back to the cell's depth as a new measurement,
  ``Poisson(x_D * L / D)`` (:func:`._denoise.predictive_draws`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from countsdiff_sc._resources import check_memory, check_work
from countsdiff_sc._utils import check_counts, to_dense
from countsdiff_sc.module import CONDITION_KEY, VALID_KEY

from ._chains import ChainSettings, positive_int
from ._denoise import predictive_draws, restore_blocks, restored_depths
from ._query import prepare_query
from ._sampler import Sampler, sampler_for

__all__ = ["DEPTH_QUANTILE", "MIN_LABEL_CELLS", "ExpressionMixin", "label_depths", "select_cells"]

Method = Literal["auto", "posterior_mean", "depth"]
#: Quantile of the training cells' depths used as the restored depth when ``depth="auto"``: the median (a typical
#: training cell). Chosen by measurement over the 90th percentile of 0.1, which let a shallow cell borrow
#: most of its profile from the network and put markers in the wrong cell types (see ``docs/defaults.md``).
DEPTH_QUANTILE = 0.5
#: A label needs at least this many training cells for a restored depth of its own (``label_depths``); the cells of
#: a rarer label are restored to the median over every training cell.
MIN_LABEL_CELLS = 10


def label_depths(depths: np.ndarray, labels: np.ndarray, n_labels: int, quantile: float = DEPTH_QUANTILE,
                 min_cells: int = MIN_LABEL_CELLS) -> np.ndarray:
    """The restored depth of each label: the ``quantile`` of its training cells' depths (NaN for a label with fewer
    than ``min_cells`` training cells).

    Cell types differ in depth up to ten-fold on real PBMCs (``docs/defaults.md``), so one depth for every cell
    restores a shallow type far beyond what its cells hold (the network then supplies most of its profile).

    Examples
    --------
    >>> label_depths(np.array([100.0, 200.0, 300.0, 1000.0]), np.array([0, 0, 0, 1]), 3, min_cells=2)
    array([200.,  nan,  nan])
    """
    depths = np.asarray(depths, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    out = np.full(int(n_labels), np.nan)
    for code in np.unique(labels):
        pool = depths[labels == code]
        if 0 <= code < n_labels and pool.size >= min_cells:
            out[code] = np.quantile(pool, quantile)
    return out


def select_cells(indices: Any, n_obs: int) -> np.ndarray:
    """Positions of the cells ``indices`` selects among ``n_obs``: None (all), positions, a boolean mask of length
    ``n_obs`` or a slice.

    Examples
    --------
    >>> select_cells(slice(0, 3), 10)
    array([0, 1, 2])
    """
    if indices is None:
        return np.arange(n_obs)
    if isinstance(indices, slice):
        return np.arange(n_obs)[indices]
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            raise ValueError(f"A boolean indices mask must have one entry per cell ({n_obs}), got shape {idx.shape}.")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n_obs:
        raise ValueError(f"indices must be positions of cells in [0, {n_obs}), a boolean mask or a slice, got "
                         f"{np.asarray(indices).ravel()[:5]}...")
    return idx


class ExpressionMixin:
    """``get_normalized_expression`` / ``posterior_predictive_sample`` of CountsDiffModel."""

    def _restored_depth(self, depth: float | str) -> float:
        if depth != "auto":
            if isinstance(depth, bool) or not isinstance(depth, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(depth) or not depth > 0:
                raise ValueError(f"depth must be a positive number of counts or 'auto', got {depth!r}.")
            return float(depth)
        value = getattr(self, "depth_", None)
        if value is None:
            raise ValueError("This model was saved without its training depth (0.1.0): pass depth= (counts per "
                             "cell to restore, e.g. the median of your cells' library sizes).")
        return float(value)

    def _auto_depths(self, codes: np.ndarray | None, strengths: float | list[float]) -> np.ndarray | float:
        """The depth each cell is restored to with ``depth="auto"`` (before the floor of :func:`restored_depths`).

        A model trained with labels and depth (the default preset) restores each cell to the median depth of its
        label's training cells (:func:`label_depths`) or, where that is deeper, to the median over every training
        cell (``depth_``), when the labels guide the estimate (their guidance strength is above 0). A shallow cell
        type is then restored no deeper than its own cells typically are, and no type deeper than a typical cell:
        restoring a deep type to its own, deeper median let the network supply most of its profile and regressed
        its most extreme genes (thinned CBMC cells: the erythrocytes' dominant gene, the mouse cells; see
        ``docs/defaults.md``). At guidance 0, for a label with fewer than ``MIN_LABEL_CELLS`` training cells and for
        a model without labels every cell is restored to ``depth_``; at guidance 0 the output reads no label.
        """
        base = self._restored_depth("auto")
        if codes is None or not self._uses_label_depths(strengths):
            return base
        table = np.fmin(self._label_depth_table(), base)  # NaN (too few training cells): base
        return table[codes[:, 0]]

    def _uses_label_depths(self, strengths: float | list[float]) -> bool:
        """Whether ``depth="auto"`` reads each cell's label at these guidance strengths: a model with labels and a
        record of its training cells' depths, and a label guidance above 0."""
        label_strength = strengths if not isinstance(strengths, list) else (strengths[0] if strengths else 0.0)
        recorded = getattr(self, "train_depths_", None) is not None and getattr(self, "train_codes_", None) is not None
        return recorded and self.condition_space.use_labels and label_strength > 0

    def _label_depth_table(self) -> np.ndarray | None:
        """The median depth of each label's training cells (NaN where too few), or None for a model without labels
        or without a record of its training cells' depths (preset ``"paper"``, or saved before 0.2)."""
        depths, codes = getattr(self, "train_depths_", None), getattr(self, "train_codes_", None)
        if depths is None or codes is None or not self.condition_space.use_labels:
            return None
        return label_depths(depths, np.asarray(codes)[:, 0], len(self.condition_space.label_categories),
                            quantile=DEPTH_QUANTILE, min_cells=MIN_LABEL_CELLS)

    def restored_depth_table(self) -> pd.DataFrame:
        """The depth ``D`` the denoising verbs restore a cell of each label to with ``depth="auto"`` and a guidance
        above 0 (before each cell's floor ``L / 0.75``): one row per label with its training cells, the median depth
        of those cells (NaN for fewer than 10) and the restored depth, the smaller of that median and the median over
        every training cell (``depth_``, the restored depth of every cell at guidance 0).

        Examples
        --------
        >>> model.restored_depth_table()  # doctest: +SKIP
                 training_cells  label_median  restored_depth
        B cells             150         377.0           365.1
        """
        base = self._restored_depth("auto")
        table = self._label_depth_table()
        if table is None:
            seen = getattr(self, "train_depths_", None)  # a model without a depth condition keeps no record
            return pd.DataFrame({"training_cells": [np.nan if seen is None else len(seen)],
                                 "label_median": [np.nan], "restored_depth": [base]}, index=["all cells"])
        labels = np.asarray(self.train_codes_)[:, 0]
        counts = np.bincount(labels[labels >= 0], minlength=table.size)[: table.size]
        return pd.DataFrame({"training_cells": counts, "label_median": table, "restored_depth": np.fmin(table, base)},
                            index=pd.Index(self.condition_space.label_categories, name="label"))

    def _rate_for(self, codes: np.ndarray | None, cont: np.ndarray | None, valid: np.ndarray | None, strengths,
                  cap: float | None = None):
        """``rate_for(rows, depth)``: the guided rate of the given rows (positions into ``codes`` / ``cont`` /
        ``valid``), conditioned on the depth ``depth`` of each row when the model is depth-conditioned, and capped
        at ``cap`` times the conditional rate (the sampler's ``guidance_cap``; None or inf: no cap)."""
        module, device = self.module, self.device

        def tensor(a: np.ndarray | None, rows: np.ndarray) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a[rows])).to(device)

        def rate_for(rows: np.ndarray, depth: np.ndarray | None):
            cat_b, valid_b = tensor(codes, rows), tensor(valid, rows)
            d = None if depth is None or not module.depth_condition else torch.from_numpy(
                np.asarray(depth, np.float32)).to(device)
            vec = module.vector_condition(tensor(cont, rows), d)

            def rate_fn(x, t):
                if cat_b is None and vec is None:
                    return module.rate(x, t, valid=valid_b)
                return module.rate(x, t, cat_b, vec, valid=valid_b, guidance=strengths, guidance_cap=cap)

            return rate_fn

        return rate_for

    def _restorations(self, adata: Any, indices: Any, n_draws: int, depth: float | str, transform_batch: Any,
                      run: ChainSettings, progress: bool | None, verb: str):
        """The query's cells restored to their depths: ``(query, cells, x_obs, depths, iterator of blocks)``."""
        strengths = self.condition_space.guidance_strengths(run.sampler.guidance)
        query = prepare_query(self, adata)
        manager = self.get_anndata_manager(query.data, required=True)
        cells = select_cells(indices, query.target.n_obs)
        x_obs = to_dense(manager.get_from_registry(REGISTRY_KEYS.X_KEY)[cells], np.float32)
        check_counts(x_obs, where=f"the counts {verb} reads")
        codes = self.condition_space.codes(manager)
        codes = _transform_codes(self.condition_space, None if codes is None else codes[cells], transform_batch)
        cont = None
        if CONDITION_KEY in manager.data_registry:
            cont = np.asarray(to_dense(manager.get_from_registry(CONDITION_KEY))[cells], dtype=np.float32)
        valid = None
        if VALID_KEY in manager.data_registry:
            valid = to_dense(manager.get_from_registry(VALID_KEY)[cells]).astype(bool)
        library = x_obs.sum(axis=1)
        target = self._auto_depths(codes, strengths) if depth == "auto" else self._restored_depth(depth)
        depths = restored_depths(library, target, floor=depth == "auto")
        work = len(cells) * x_obs.shape[1] * (1 + n_draws * run.evaluations(self.module.schedule))
        check_work(f"{verb}() of {len(cells)} cells x {x_obs.shape[1]} genes x {n_draws} draws", work,
                   "fewer n_samples, fewer steps (sampler=cds.Sampler(n_steps=...)) or fewer cells (indices=)")
        blocks_of = -(-len(cells) // max(1, run.batch_size // max(1, n_draws)))  # as restore_blocks cuts them
        steps = blocks_of * (run.evaluations(self.module.schedule) if n_draws else 1)
        show = run.progress(work, steps) if progress is None else bool(progress)
        rate_for = self._rate_for(codes, cont, valid, strengths, run.sampler.guidance_cap)
        blocks = restore_blocks(self, x_obs, rate_for, depths, run, n_draws, show, "denoising")
        return query, cells, x_obs, depths, blocks

    def _expression_sampler(self, sampler: Sampler | None, batch_size: int | None, legacy: dict,
                            caller: str) -> ChainSettings:
        if "t_start" in legacy or legacy.get("method") == "sdedit":
            raise ValueError("method='sdedit' and t_start were removed in 0.2 (re-noising to t_start measured worse "
                             "than depth restoration); use method='posterior_mean' or 'depth'.")
        if batch_size is not None:
            sampler = (sampler or Sampler()).replace(batch_size=positive_int(batch_size, "batch_size"))
        return ChainSettings(sampler_for("denoise", self.preset, sampler, legacy, stacklevel=4, caller=caller),
                             self.device)

    def get_normalized_expression(
        self,
        adata: Any = None,
        indices: Sequence[int] | np.ndarray | slice | None = None,
        *,
        transform_batch: Any = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool | None = None,
        method: Method = "auto",
        depth: float | Literal["auto"] = "auto",
        sampler: Sampler | None = None,
        **legacy: Any,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised, library-size normalised expression of each cell (scvi-tools' signature and return types).

        Each cell's profile is restored to the depth ``D`` (see ``depth``): the posterior mean ``E[x_D | x]`` or
        draws of ``x_D`` (see ``method`` and the module docstring), normalised as ``library_size * x / sum(x)``.

        Parameters
        ----------
        adata
            AnnData (or MuData) with the model's genes, matched by name; the training data when None.
        indices
            Cells of ``adata`` to use: positions, a boolean mask or a slice (all when None).
        transform_batch
            Counterfactual batch, as in scvi-tools: a category of the batch covariate (the model's first
            categorical covariate), and every cell is denoised as if it came from that batch; or a list of categories,
            and the normalised expression is averaged over them (``None`` in the list stands for each cell's own
            batch). A dict ``{covariate: value}`` sets any categorical covariates at once. Whole counterfactual
            cells in count space: :meth:`transfer`; batch-corrected counts: :meth:`correct_batches`.
        gene_list
            Genes to return (by name; all when None).
        library_size
            Scale of the normalised expression (a positive number; 1: proportions), or ``"latent"``: each cell's
            observed depth.
        n_samples
            Draws per cell.
        batch_size
            Rows (cells x draws) per batch of reverse chains (the sampler's when None).
        return_mean
            Average the draws (a cells x genes result).
        return_numpy
            Return an array; None: a DataFrame when the result is cells x genes, else an array
            ``(n_samples, n_cells, n_genes)``.
        silent
            Hide the progress bar; None (default): shown when the call is long.
        method
            ``"posterior_mean"`` (one network pass per guidance term, deterministic), ``"depth"`` (draws of depth
            restoration) or ``"auto"``: ``"posterior_mean"`` when the result is a mean (``return_mean`` or one
            sample), else ``"depth"``.
        depth
            Restored depth ``D`` in counts, or ``"auto"``: the median depth (over trusted entries) of the
            training cells of the cell's label, or of every training cell where that is smaller
            (:meth:`restored_depth_table`; of every training cell at guidance 0, for a model without labels, or for
            a label with fewer than 10 training cells), and ``L / 0.75`` for a cell of ``L`` counts deeper than 0.75
            times that.
        sampler
            Chain settings of the draws (:class:`~countsdiff_sc.Sampler`; ``guidance`` also applies to the posterior
            mean). The default guidance (2, capped at the conditional rate: ``guidance_cap=1``) denoises towards
            each cell's own label, sharper than the conditional posterior mean that ``guidance=1`` gives (the guided
            rate ``y_C^g y_u^(1-g)``, CountsDiff Sec. 3.4, never above ``y_C``: guidance lowers the genes the label
            says the cell lacks and adds none; two network passes per step instead of one); ``guidance=0`` ignores
            the labels, the choice when the output is used to find or confirm groups (a label-conditioned output
            leans towards the labels it was given).

        Returns
        -------
        DataFrame (cells x genes, obs names and gene names) or an array, as in scvi-tools.

        Examples
        --------
        >>> rho = model.get_normalized_expression(adata, library_size=1e4)
        >>> free = model.get_normalized_expression(adata, library_size=1e4, sampler=cds.Sampler(guidance=0.0))
        """
        n_samples = positive_int(n_samples, "n_samples")
        _check_flags(return_mean=return_mean, return_numpy=return_numpy, silent=silent)
        method = legacy.pop("method", method) if "method" in legacy else method
        if method == "auto":
            method = "posterior_mean" if return_mean or n_samples == 1 else "depth"
        if method not in ("posterior_mean", "depth"):
            raise ValueError(f"method must be 'auto', 'posterior_mean' or 'depth', got {method!r}"
                             + (" (removed in 0.2; see the CHANGELOG)" if method in ("sdedit", "dropouts") else "")
                             + ".")
        if not (library_size == "latent" or (isinstance(library_size, (int, float, np.integer, np.floating))
                                             and not isinstance(library_size, bool) and np.isfinite(library_size)
                                             and library_size > 0)):
            raise ValueError(f"library_size must be a positive number or 'latent', got {library_size!r}.")
        run = self._expression_sampler(sampler, batch_size, legacy, "get_normalized_expression")
        n_draws = 0 if method == "posterior_mean" else n_samples
        progress = None if silent is None else not silent
        batches = _batch_list(transform_batch)
        expr, query, cells = None, None, None
        for value in batches:  # averaged over the counterfactual batches, as scvi-tools does
            query, cells, x_obs, _, blocks = self._restorations(adata, indices, n_draws, depth, value, run, progress,
                                                                "get_normalized_expression")
            n_out = 1 if method == "posterior_mean" or return_mean else n_samples
            if expr is None:
                check_memory(f"get_normalized_expression(n_samples={n_samples}) of {len(cells)} cells x "
                             f"{x_obs.shape[1]} genes", 8.0 * len(cells) * n_out * x_obs.shape[1],
                             "return_mean=True, fewer n_samples, or fewer cells per call (indices=)")
                # one batch: each entry is written once, so float32 holds exactly what a float64 sum would give
                expr = np.zeros((len(cells), n_out, x_obs.shape[1]), dtype=np.float64 if len(batches) > 1
                                else np.float32)
            for block in blocks:
                values = block.mean[:, None, :] if block.draws is None else block.draws
                totals = values.sum(axis=2, keepdims=True)
                scale = x_obs[block.cells].sum(axis=1)[:, None, None] if library_size == "latent" else \
                    float(library_size)
                norm = np.divide(values * scale, totals, out=np.zeros(values.shape, np.float64), where=totals > 0)
                expr[block.cells] += norm.mean(axis=1, keepdims=True) if n_out == 1 else norm
        if len(batches) > 1:
            expr = (expr / len(batches)).astype(np.float32)
        expr, names = _select_genes(expr, getattr(self, "var_names_", None), gene_list)
        expr = np.transpose(expr, (1, 0, 2))  # (n_samples, n_cells, n_genes), as scvi-tools
        if expr.shape[0] == 1 and n_samples > 1 and not return_mean:  # a posterior mean asked for as samples
            expr = np.repeat(expr, n_samples, axis=0)
        if expr.shape[0] == 1:
            expr = expr[0]  # a view: no second copy of a matrix that may be gigabytes
        elif return_mean:
            expr = expr.mean(axis=0)
        if return_numpy or expr.ndim == 3:
            return expr
        return pd.DataFrame(expr, index=np.asarray(query.target.obs_names)[cells], columns=names)

    def posterior_predictive_sample(
        self,
        adata: Any = None,
        indices: Sequence[int] | np.ndarray | slice | None = None,
        *,
        transform_batch: Any = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        silent: bool | None = None,
        depth: float | Literal["auto"] = "auto",
        sampler: Sampler | None = None,
        **legacy: Any,
    ):
        """Counts drawn from the model's posterior predictive at each cell's observed depth (scvi-tools' signature).

        Each draw is a new measurement of the cell at its observed depth ``L``: ``Poisson(x_D * L / D)`` for a draw
        ``x_D`` of the cell's restored profile (a new library is a Poisson capture of the cell's mRNA pool; the
        observed molecules are not reused). Parameters as in
        :meth:`get_normalized_expression`.

        Returns
        -------
        ``sparse.GCXS`` of integer counts, shape ``(n_cells, n_genes)`` for one sample, else
        ``(n_cells, n_genes, n_samples)``, as scvi-tools returns (usable by
        :class:`scvi.criticism.PosteriorPredictiveCheck`).

        Examples
        --------
        >>> pp = model.posterior_predictive_sample(adata, n_samples=3)
        """
        import sparse

        n_samples = positive_int(n_samples, "n_samples")
        _check_flags(silent=silent)
        if legacy.get("method", "depth") not in ("auto", "depth"):
            raise ValueError("posterior_predictive_sample draws counts by depth restoration (method='depth'); other "
                             "methods were removed in 0.2.")
        legacy.pop("method", None)
        if isinstance(transform_batch, (list, tuple, np.ndarray, pd.Index, pd.Series)):
            raise ValueError("posterior_predictive_sample takes one transform_batch category (averaged counts would "
                             "not be counts); get_normalized_expression averages over a list.")
        run = self._expression_sampler(sampler, batch_size, legacy, "posterior_predictive_sample")
        progress = None if silent is None else not silent
        _, cells, x_obs, _, blocks = self._restorations(adata, indices, n_samples, depth, transform_batch, run,
                                                             progress, "posterior_predictive_sample")
        check_memory(f"posterior_predictive_sample(n_samples={n_samples}) of {len(cells)} cells x {x_obs.shape[1]} "
                     "genes", 8.0 * len(cells) * n_samples * x_obs.shape[1], "fewer n_samples or fewer cells")
        draws = np.zeros((len(cells), n_samples, x_obs.shape[1]), dtype=np.float32)
        for block in blocks:
            draws[block.cells] = predictive_draws(block.draws, block.fraction, run.generator)
        draws, _ = _select_genes(draws, getattr(self, "var_names_", None), gene_list)
        counts = np.transpose(draws, (0, 2, 1))  # (n_cells, n_genes, n_samples)
        if counts.shape[2] == 1:
            counts = counts[:, :, 0]
        return sparse.GCXS.from_numpy(counts)


def _select_genes(values: np.ndarray, var_names: np.ndarray | None, gene_list: Sequence[str] | None):
    names = np.asarray(var_names) if var_names is not None else np.array([f"gene_{i}" for i in
                                                                          range(values.shape[-1])])
    if gene_list is None:
        return values, names
    if isinstance(gene_list, str):
        gene_list = [gene_list]
    if len(gene_list) == 0:
        raise ValueError("gene_list is empty: give the genes to return (by name), or None for all genes.")
    pos = pd.Index(names).get_indexer(pd.Index([str(g) for g in gene_list]))
    if (pos < 0).any():
        missing = [str(g) for g, p in zip(gene_list, pos, strict=True) if p < 0]
        raise ValueError(f"{len(missing)} genes of gene_list are not among the model's genes (e.g. {missing[:5]}).")
    return values[..., pos], names[pos]


def _check_flags(**flags: Any) -> None:
    """Refuse a non-boolean switch (``silent="no"`` would silence the bar): True, False or None only."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True, False or None, got {value!r}.")


def _batch_list(transform_batch: Any) -> list[Any]:
    """The counterfactual batches of ``get_normalized_expression``: one value (or dict, or None) becomes a list of
    one; a list, tuple, array or index of categories is averaged over (scvi-tools' rule: anything iterable that is
    not a string)."""
    if transform_batch is None or isinstance(transform_batch, (str, Mapping)) or np.isscalar(transform_batch):
        return [transform_batch]
    values = list(transform_batch)
    if not values:
        raise ValueError("transform_batch is an empty list: give a batch category, a list of them, or None.")
    return values


def _transform_codes(space, codes: np.ndarray | None, transform_batch: Any) -> np.ndarray | None:
    """Replace covariate codes by the requested counterfactual values (one set; lists are handled by the caller).

    A plain value names a category of the batch covariate: the model's first categorical covariate. ``codes`` is None
    for a model without categorical conditions, which refuses any ``transform_batch`` but None.
    """
    if transform_batch is None:
        return codes
    covs = list(space.covariate_categories)
    if not isinstance(transform_batch, Mapping):
        if not covs:
            raise ValueError(
                f"transform_batch={transform_batch!r} needs a batch covariate, and this model has none: set it up "
                "with categorical_covariate_keys=['batch'] (the first categorical covariate is the batch), or pass "
                "transform_batch=None."
            )
        if isinstance(transform_batch, (list, tuple, np.ndarray, pd.Index, pd.Series)):
            raise ValueError("Give one transform_batch category here (get_normalized_expression averages over a list).")
        transform_batch = {covs[0]: transform_batch}
    unknown = [key for key in transform_batch if key not in space.covariate_categories]
    if unknown:
        raise KeyError(f"transform_batch names {unknown[0]!r}, not one of the model's covariates {covs}.")
    if codes is None:  # an empty dict on a model without conditions
        return codes
    codes = codes.copy()
    offset = 1 if space.use_labels else 0
    for key, value in transform_batch.items():
        if isinstance(value, (list, tuple)):
            raise ValueError("Give one value per covariate here (get_normalized_expression averages over a list).")
        cats = space.covariate_categories[key]
        if str(value) not in cats:
            raise ValueError(f"Unknown {key} value {value!r}; known values: {cats}.")
        codes[:, offset + covs.index(key)] = cats.index(str(value))
    return codes
