"""Imputation verb of CountsDiffModel: the expected counts of a user's cells, or RePaint over held-out entries.

Three jobs share the verb (``target=``):

* ``"denoise"`` (a user's own data, the default without a mask): every entry's expected count at the depth the cell
  was sequenced at, ``f * E[x_D | x]`` (depth restoration, :mod:`._denoise`): observed entries shrink towards the
  profile the cell's other genes imply, zeros rise to what the cell's depth explains, and the library is kept; the
  spread is that of a new measurement of the cell at its depth (the posterior predictive). Nothing is invented that
  the cell's own counts do not support;
* ``"mask"`` (the benchmark protocol, CountsDiff Sec. 3.6): RePaint fills the entries of a boolean mask of held-out
  values (register it with ``setup_anndata(mask_layer=)`` so those values never train);
* ``"dropouts"``: RePaint fills every entry the registered validity layer distrusts (scIDPMs Algorithm 1 marks,
  :func:`countsdiff_sc.pp.mark_dropouts`), the behaviour of 0.1.

The data are read in blocks of cells (dense, sparse or backed), so memory beyond the outputs is bounded by the
sampler's ``batch_size``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from tqdm.auto import tqdm

from countsdiff_sc import _keys
from countsdiff_sc._resources import check_memory, check_work
from countsdiff_sc._utils import (
    as_bool_mask,
    check_counts,
    check_writable,
    get_matrix,
    record_params,
    rows_per_block,
    to_dense,
)
from countsdiff_sc.diffusion import repaint
from countsdiff_sc.module import CONDITION_KEY, MASK_KEY, VALID_KEY

from ._chains import ChainSettings, positive_int
from ._denoise import predictive_draws, predictive_variance, restore_blocks, restored_depths
from ._query import Query, prepare_query
from ._sampler import Sampler, sampler_for

logger = logging.getLogger(__name__)

__all__ = ["SAMPLES_AUTO_LIMIT", "ImputationMixin"]

#: ``store_samples="auto"`` stores the draws when they hold at most this many entries (4 MiB of int32), so a default
#: call never makes an h5ad much larger than its input.
SAMPLES_AUTO_LIMIT = 2**20

Target = Literal["auto", "denoise", "mask", "dropouts"]
#: Largest count a float32 layer holds exactly (2^24): observed counts above it are stored in float64.
FLOAT32_EXACT = 2**24


class ImputationMixin:
    """``impute`` of CountsDiffModel (needs ``module``, ``condition_space``, ``device`` and the scvi-tools base)."""

    def impute(
        self,
        adata: ad.AnnData | None = None,
        mask_layer: str | None = None,
        *,
        n_samples: int = 5,
        target: Target = "auto",
        sampler: Sampler | None = None,
        point_estimate: Literal["mean", "median"] = "mean",
        key_added: str = _keys.IMPUTED,
        std_key: str | None = "auto",
        samples_key: str = _keys.SAMPLES,
        store_samples: bool | Literal["auto"] = "auto",
        **legacy: Any,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Impute a user's cells: each entry's expected count at the cell's depth, or RePaint over held-out entries.

        Which entries are imputed (``target``, recorded in ``uns["countsdiff"][key_added]["target"]``):

        * ``"denoise"``: every entry, by depth restoration: the cell of ``L`` counts is read as a binomial thinning,
          at ``f = L / D``, of a deeper profile ``x_D`` (CountsDiff's forward process, Eq. 4), and the point estimate
          is ``f * E[x_D | x]``, the network's posterior mean at the cell's entry time brought back to the cell's own
          depth (one network pass per guidance term; SAVER-like; with guidance ``g`` the mean under the guided rate,
          the conditional one at ``g = 1``). Observed counts shrink towards what the cell's other genes imply
          (a stray molecule of an off-type marker fades), zeros rise to what the cell's depth explains, and the
          cell's library is kept (what a zero gains, the noise of the observed entries gives back). The spread is
          that of a new measurement of the cell at its own depth, ``Poisson(f * x_D)`` over draws ``x_D`` of the
          restored profile (a new library is a Poisson capture of the cell's mRNA pool), so the intervals of the
          draws are meant to cover a held-out measurement at their nominal rate.
        * ``"mask"``: RePaint (CountsDiff Sec. 3.6) over the entries of ``mask_layer`` (or of the mask registered
          with ``setup_anndata(mask_layer=)``), less those the validity layer distrusts (a warning says how many);
          every other entry keeps its observed value. The benchmark protocol: hide entries, fill them, score them
          with :func:`countsdiff_sc.metrics.evaluate_imputation`.
        * ``"dropouts"``: RePaint over every entry the registered ``valid_layer`` marks False (suspected dropouts).
        * ``"auto"`` (default): ``"mask"`` when a mask is passed or registered, else ``"denoise"``.

        Parameters
        ----------
        adata
            AnnData with the model's genes, matched by name (any order; genes the model does not know are ignored
            and keep their counts in the outputs); the training data when None. A backed AnnData works (its counts
            are read in blocks; the results go to in-memory ``layers`` / ``obsm``).
        mask_layer
            Boolean layer, True where a value is held out (see :func:`countsdiff_sc.pp.mask_mcar`); implies
            ``target="mask"``. None: the mask registered at setup, if any.
        n_samples
            Draws per cell: RePaint completions (``"mask"`` / ``"dropouts"``, averaged for the point estimate), or
            draws of the restored profile (``"denoise"``, for the spread and the stored draws; the expected counts do
            not depend on them).
        target
            ``"auto"``, ``"denoise"``, ``"mask"`` or ``"dropouts"`` (see above).
        sampler
            Chain settings (:class:`~countsdiff_sc.Sampler`); the defaults per target and preset are in
            ``SAMPLER_DEFAULTS`` (RePaint: 10 trapezoid steps run twice, guidance 0.5; denoising: 10 trapezoid
            steps, guidance 2 capped at the conditional rate). Guidance imputes towards each cell's own label: 1
            gives the conditional posterior mean; the default is the guided rate ``y_C^g y_u^(1-g)`` (CountsDiff
            Sec. 3.4) at ``g = 2`` capped at ``y_C`` (``guidance_cap=1``), so guidance only lowers a gene the label
            says is less expressed than the cell alone suggests (CD8A in a CD4 T cell) and never raises one above
            its conditional expectation (a wrong label cannot add another type's genes); two network passes per
            step instead of one. ``cds.Sampler(guidance=1.0)`` gives 0.2.0's output; pass
            ``cds.Sampler(guidance=0.0)`` when the output is used to find or confirm groups.
        point_estimate
            ``"mean"`` (the posterior mean for ``"denoise"``, the mean of the draws otherwise) or ``"median"`` of the
            draws.
        key_added
            Layer receiving the point estimate (float32; float64 when an observed count it copies exceeds 2^24).
            Never the model's counts, validity or mask layer, nor a layer the user owns.
        std_key
            Layer receiving the spread (standard deviation, float32): dense for ``"denoise"``, a CSR matrix of the
            filled entries otherwise. ``"auto"``: ``key_added + "_std"``, except a dense spread of more than
            ``SAMPLES_AUTO_LIMIT`` = 2^20 entries, which is not stored (a second dense matrix beside the estimate would
            double a saved h5ad; pass ``std_key="countsdiff_imputed_std"`` to keep it). None: not stored. A run that
            stores no spread removes the spread of an earlier run of the same imputation; with neither spread nor
            draws stored (and ``point_estimate="mean"``), ``"denoise"`` makes no draws at all (``uns`` records
            ``draws_made``).
        samples_key
            obsm key receiving the draws (integer counts, ``n_obs x n_samples x n_vars``; new measurements at the
            cell's depth for ``"denoise"``, completions otherwise).
        store_samples
            Store the draws: True, False, or ``"auto"`` (default), which stores them when they hold at most
            ``SAMPLES_AUTO_LIMIT`` = 2^20 entries (4 MiB; so a saved h5ad does not balloon). A re-run that does not
            store them removes the draws of the earlier run.
        **legacy
            The chain keywords of 0.1 (``n_steps=``, ``guidance=``, ...): accepted for one release with a
            FutureWarning; pass them in ``sampler=`` instead.

        Returns
        -------
        ``(imputed, samples)``: the matrix written to ``layers[key_added]`` and the draws (or None), both in the
        gene order of ``adata``. The settings are recorded in ``uns["countsdiff"][key_added]``.

        Raises
        ------
        KeyError
            A mask layer that does not exist.
        ValueError
            A mask of the wrong shape or not boolean, genes missing from ``adata``, values that are not counts, labels
            the model was not trained on, bad settings, output keys that collide or name data the package must not
            overwrite, or a request beyond the resource guard (with its estimate and the ways out).

        Warns
        -----
        UserWarning
            Masked entries that are invalid in the validity layer (they keep their observed value), or cells without
            any trusted entry (their imputation rests on their conditions alone).

        Examples
        --------
        >>> model.impute(adata, n_samples=5)                      # expected counts at each cell's depth (+ spread)
        >>> model.impute(adata, std_key="countsdiff_imputed_std")  # the spread kept whatever the size
        >>> model.impute(bench, mask_layer="countsdiff_mask")     # benchmark: held-out entries (RePaint)
        >>> adata.layers["countsdiff_imputed"], adata.layers["countsdiff_imputed_std"]
        """
        n_draws = positive_int(n_samples, "n_samples")
        if target not in ("auto", "denoise", "mask", "dropouts"):
            raise ValueError(f"target must be 'auto', 'denoise', 'mask' or 'dropouts', got {target!r}.")
        if point_estimate not in ("mean", "median"):
            raise ValueError(f"point_estimate must be 'mean' or 'median', got {point_estimate!r}.")
        if not isinstance(store_samples, (bool, np.bool_)) and store_samples != "auto":
            raise TypeError(f"store_samples must be True, False or 'auto', got {store_samples!r}.")
        setup_args = self.registry_["setup_args"]
        resolved_std = _keys.std_key(key_added) if std_key == "auto" else std_key
        user = adata if adata is not None else getattr(self, "adata", None)
        if isinstance(user, ad.AnnData):  # output keys first: a refusal must leave the user's object as it was
            _check_output_keys(user, key_added, resolved_std, samples_key, setup_args, mask_layer)
        query = prepare_query(self, adata, carry_layers=(mask_layer,) if mask_layer else ())
        manager = self.get_anndata_manager(query.data, required=True)
        registered = setup_args.get("mask_layer")
        has_mask = mask_layer is not None or (registered is not None and registered in query.target.layers)
        if target == "auto" and not has_mask and _keys.MASK in query.target.layers:
            raise ValueError(
                f"adata has a {_keys.MASK!r} layer, but no mask was passed or registered: say which job you mean, "
                f"target='denoise' (every entry's expected count) or mask_layer={_keys.MASK!r} (fill the held-out "
                "entries; register it with setup_anndata(mask_layer=) so they never train).")
        kind = target if target != "auto" else ("mask" if has_mask else "denoise")
        verb = "denoise" if kind == "denoise" else "impute"
        run = ChainSettings(sampler_for(verb, self.preset, sampler, legacy, stacklevel=3, caller="impute"), self.device)
        shape = (query.target.n_obs, len(query.genes))
        std_key = _std_layer(std_key, key_added, kind, shape)
        _check_output_keys(query.target, key_added, std_key, samples_key, setup_args, mask_layer)
        keep_draws = _store_draws(store_samples, shape, n_draws, kind)
        made = n_draws
        if kind == "denoise":
            if mask_layer is not None:
                raise ValueError("target='denoise' imputes every entry; a mask_layer means target='mask'.")
            # draws serve the spread, the stored draws and the median; with none of them asked for, none are made
            made = n_draws if std_key is not None or keep_draws or point_estimate == "median" else 0
            imputed, samples, spread, n_cells, n_entries = self._denoise(query, manager, made, run, keep_draws,
                                                                        point_estimate)
        else:
            targets = _Targets.build(kind, mask_layer, query, manager)
            imputed, samples, spread, n_cells, n_entries = self._repaint(targets, manager, n_draws, run, keep_draws,
                                                                         point_estimate)
        imputed, samples = _write(query, imputed, samples, spread, key_added, std_key, samples_key, setup_args)
        record_params(query.target, key_added, {
            "operation": "impute", "target": kind, "mask_layer": None if kind == "denoise" else (
                mask_layer or registered), "key_added": key_added, "std_key": std_key,
            "samples_key": samples_key if samples is not None else None, "n_samples": n_draws,
            "draws_made": made,
            "point_estimate": point_estimate, "n_cells_imputed": n_cells, "n_entries_imputed": n_entries,
            "preset": self.preset, **run.record(),
            **({"restored_depth": _depth_rule(self, run)} if kind == "denoise" else {}),
        })
        return imputed, samples

    def _repaint(self, targets: _Targets, manager: Any, n_draws: int, run: ChainSettings, keep_draws: bool,
                 point_estimate: str):
        """RePaint over the entries of a mask or the suspected dropouts (targets ``"mask"`` / ``"dropouts"``)."""
        strengths = self.condition_space.guidance_strengths(run.sampler.guidance)
        x_all = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        codes = self.condition_space.codes(manager)
        cont_all = None
        if CONDITION_KEY in manager.data_registry:
            cont_all = np.asarray(to_dense(manager.get_from_registry(CONDITION_KEY)), dtype=np.float32)
        cells, n_entries = targets.scan()
        shape = targets.shape
        work = len(cells) * n_draws * shape[1] * run.evaluations(self.module.schedule)
        what = f"impute(target={targets.kind!r}, n_samples={n_draws}) of {len(cells)} cells x {shape[1]} genes"
        check_work(what, work, "fewer n_samples, fewer steps (sampler=cds.Sampler(n_steps=...)) or fewer cells")
        check_memory(what, _output_bytes(shape, n_draws if keep_draws else 0) + 8.0 * n_entries,
                     "store_samples=False, fewer n_samples, or fewer cells per call")
        imputed, big = _observed_counts(x_all, shape)
        samples = None
        if keep_draws:
            samples = np.empty((shape[0], n_draws, shape[1]), dtype=np.int64 if big else np.int32)
            samples[:] = imputed[:, None, :]
        module = self.module
        progress = run.progress(work, -(-len(cells) // max(1, run.batch_size // n_draws))
                                * run.evaluations(self.module.schedule))
        spread = _Spread(shape, n_entries)
        per_batch = max(1, run.batch_size // n_draws)
        module.eval()
        bar = tqdm(total=len(cells), desc="imputing", disable=not progress, leave=False)
        for start in range(0, len(cells), per_batch):
            idx = cells[start:start + per_batch]
            fill, valid = targets.rows(idx)
            draws = self._repaint_block(imputed[idx], fill, valid, None if codes is None else codes[idx],
                                        None if cont_all is None else cont_all[idx], n_draws, run, strengths,
                                        progress and len(cells) <= per_batch)
            draws = draws.reshape(len(idx), n_draws, -1)
            # the observed entries as observed (the chain runs in float32, which rounds counts above 2^24)
            draws = np.where(fill[:, None, :], draws, imputed[idx][:, None, :])
            est = draws.mean(axis=1) if point_estimate == "mean" else np.median(draws, axis=1)
            imputed[idx] = np.where(fill, est, imputed[idx])
            spread.add(idx, fill, draws)
            if samples is not None:
                samples[idx] = draws.astype(samples.dtype)
            bar.update(len(idx))
        bar.close()
        return imputed, samples, spread.matrix(), len(cells), n_entries

    @torch.inference_mode()
    def _repaint_block(self, x_b: np.ndarray, fill: np.ndarray, valid: np.ndarray | None, codes: np.ndarray | None,
                       cont: np.ndarray | None, n_draws: int, run: ChainSettings, strengths, show: bool) -> np.ndarray:
        """``n_draws`` RePaint completions of a block of cells (rows: cell-major, draws within)."""
        module, device = self.module, self.device

        def rows(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.repeat(array, n_draws, axis=0)).to(device)

        depth = None
        if module.depth_condition:  # the depth the cell's trusted entries imply (held-out values are never read)
            trusted = ~fill if valid is None else valid & ~fill
            depth = module.estimate_depth(torch.from_numpy(x_b.astype(np.float32)), torch.from_numpy(trusted))
            depth = depth.repeat_interleave(n_draws).to(device)
        cat_b, valid_b = rows(codes), rows(valid)
        vec = module.vector_condition(rows(cont), depth)

        def rate_fn(x, t):
            return module.rate(x, t, cat_b, vec, valid=valid_b, guidance=strengths,
                               guidance_cap=run.sampler.guidance_cap)

        out = repaint(run.wrap(rate_fn), rows(x_b.astype(np.float32)), rows(fill), module.schedule,
                      run.times(module.schedule), **run.chain_kwargs(), resample_jump=run.sampler.resample_jump,
                      resample_iters=run.sampler.resample_iters, known=run.sampler.known, generator=run.generator,
                      progress=show)
        return out.cpu().numpy()

    def _denoise(self, query: Query, manager: Any, n_draws: int, run: ChainSettings, keep_draws: bool,
                 point_estimate: str):
        """Every entry's expected count at the cell's own depth, and the spread of a new measurement there."""
        strengths = self.condition_space.guidance_strengths(run.sampler.guidance)
        x_all = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        shape = (query.target.n_obs, len(query.genes))
        work = shape[0] * shape[1] * (1 + n_draws * run.evaluations(self.module.schedule))
        what = f"impute(target='denoise', n_samples={n_draws}) of {shape[0]} cells x {shape[1]} genes"
        check_work(what, work, "fewer n_samples, fewer steps (sampler=cds.Sampler(n_steps=...)) or fewer cells")
        check_memory(what, _output_bytes(shape, n_draws if keep_draws else 0) + 4.0 * shape[0] * shape[1],
                     "store_samples=False, fewer n_samples, or fewer cells per call")
        x_obs, big = _observed_counts(x_all, shape)
        draw_type = np.int64 if big else np.int32  # int32 would wrap counts near 2^31 (a 3e9 count became negative)
        codes = self.condition_space.codes(manager)
        cont = None
        if CONDITION_KEY in manager.data_registry:
            cont = np.asarray(to_dense(manager.get_from_registry(CONDITION_KEY)), dtype=np.float32)
        valid = None
        if VALID_KEY in manager.data_registry:
            valid = np.concatenate([to_dense(b).astype(bool) for b in _blocks(manager.get_from_registry(VALID_KEY),
                                                                               shape)]) if shape[0] else None
        depths = restored_depths(x_obs.sum(axis=1), self._auto_depths(codes, strengths))
        imputed = np.empty(shape, dtype=np.float32)
        spread = np.zeros(shape, dtype=np.float32) if n_draws > 1 else None
        samples = np.empty((shape[0], n_draws, shape[1]), dtype=draw_type) if keep_draws else None
        rate_for = self._rate_for(codes, cont, valid, strengths, run.sampler.guidance_cap)
        blocks = restore_blocks(self, x_obs, rate_for, depths, run, n_draws,
                                run.progress(work, -(-shape[0] // max(1, run.batch_size // max(1, n_draws)))
                                             * run.evaluations(self.module.schedule)), "imputing")
        for block in blocks:
            f = block.fraction[:, None]
            if n_draws:
                reps = predictive_draws(block.draws, block.fraction, run.generator)
            if point_estimate == "mean":
                imputed[block.cells] = f * block.mean
            else:
                imputed[block.cells] = np.median(reps, axis=1)
            if spread is not None:  # the spread of a new measurement, over the posterior of x_D
                spread[block.cells] = np.sqrt(np.maximum(predictive_variance(block.draws, block.fraction), 0.0))
            if samples is not None:
                samples[block.cells] = np.rint(reps).astype(draw_type)
        return imputed, samples, spread, shape[0], shape[0] * shape[1]


def _depth_rule(model: Any, run: ChainSettings) -> str:
    """What ``depth="auto"`` restored the cells to, for ``uns`` (:meth:`ExpressionMixin._auto_depths`)."""
    if model._uses_label_depths(model.condition_space.guidance_strengths(run.sampler.guidance)):
        return "median of the cell's label, at most that of all cells"
    return "median of the training cells"


def _blocks(x: Any, shape: tuple[int, int]):
    step = rows_per_block(shape[1])
    for start in range(0, shape[0], step):
        yield x[start:start + step]


def _output_bytes(shape: tuple[int, int], n_draws: int) -> float:
    """Bytes of impute's dense outputs: the point estimate (float32) and, when stored, the draws (int32)."""
    return 4.0 * shape[0] * shape[1] * (1 + n_draws)


def _check_output_keys(target: ad.AnnData, key_added: Any, std_key: Any, samples_key: Any, setup_args: dict,
                       mask_layer: str | None) -> None:
    """Output keys: non-empty strings, distinct, never an input of the model, never a key the user owns."""
    for name, key, optional in (("key_added", key_added, False), ("std_key", std_key, True),
                                ("samples_key", samples_key, False)):
        if key is None and optional:
            continue
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{name} must be a non-empty string, got {key!r}.")
    if std_key is not None and std_key == key_added:
        raise ValueError(f"std_key and key_added are both {key_added!r}: the spread would overwrite the imputation; "
                         "give them different names (std_key='auto' adds '_std').")
    inputs = {setup_args.get("layer"), setup_args.get("valid_layer"), setup_args.get("mask_layer"), mask_layer,
              _keys.VALID, _keys.MASK}
    records = target.uns.get(_keys.PARAMS, {})
    for op in ("mark_dropouts", "mask_mcar", "mask_mnar", "library_condition"):
        rec = records.get(op)
        if isinstance(rec, dict) and rec.get("key_added"):
            inputs.add(str(rec["key_added"]))
    for rec in records.values():  # the outputs of other verbs (e.g. correct_batches' corrected counts)
        if isinstance(rec, dict) and rec.get("operation") not in (None, "impute") and rec.get("key_added"):
            inputs.add(str(rec["key_added"]))
    inputs.discard(None)
    for name, key in (("key_added", key_added), ("std_key", std_key)):
        if key in inputs:
            raise ValueError(f"{name}={key!r} names an input of the model (its counts, validity or mask layer, the "
                             "package's validity / mask layer names, or the output of another countsdiff-sc step); "
                             "choose another name.")
    for key, where in ((key_added, "layers"), (std_key, "layers"), (samples_key, "obsm")):
        if key is not None:
            check_writable(target, key, where)


def _std_layer(std_key: str | None, key_added: str, kind: str, shape: tuple[int, int]) -> str | None:
    """The layer of the spread, or None: with ``std_key="auto"``, ``key_added + "_std"`` unless the spread is dense
    (target ``"denoise"``) and holds more than ``SAMPLES_AUTO_LIMIT`` entries (a second dense matrix beside the
    estimate would double what a saved h5ad holds)."""
    if std_key != "auto":
        return std_key
    if kind == "denoise" and shape[0] * shape[1] > SAMPLES_AUTO_LIMIT:
        logger.info("Not storing the dense %d x %d spread (std_key='auto' stores at most %d entries of it); pass "
                    "std_key=%r to keep it.", shape[0], shape[1], SAMPLES_AUTO_LIMIT, _keys.std_key(key_added))
        return None
    return _keys.std_key(key_added)


def _store_draws(store_samples: bool | str, shape: tuple[int, int], n_draws: int, kind: str) -> bool:
    if store_samples == "auto":
        size = shape[0] * shape[1] * n_draws
        if size > SAMPLES_AUTO_LIMIT:
            logger.info("Not storing the %d x %d x %d draws (store_samples='auto' stores at most %d entries); pass "
                        "store_samples=True to keep them.", shape[0], n_draws, shape[1], SAMPLES_AUTO_LIMIT)
            return False
        return True
    return bool(store_samples)


class _Targets:
    """The entries ``impute`` fills, read block by block: a mask less distrusted entries, or the suspected dropouts."""

    def __init__(self, kind: str, mask: Any, mask_name: str | None, valid: Any, shape: tuple[int, int]):
        self.kind, self.mask, self.mask_name, self.valid, self.shape = kind, mask, mask_name, valid, shape

    @classmethod
    def build(cls, target: str, mask_layer: str | None, query: Query, manager: Any) -> _Targets:
        """Resolve ``target`` against what is passed and registered (see ``impute``'s docstring)."""
        if target not in ("auto", "mask", "dropouts"):
            raise ValueError(f"target must be 'auto', 'mask' or 'dropouts', got {target!r}.")
        registry = manager.data_registry
        valid = manager.get_from_registry(VALID_KEY) if VALID_KEY in registry else None
        source = query.target if query.aligned else query.data  # holds the user's layers in the model's gene order
        shape = (source.n_obs, len(query.genes))
        # the mask registered at setup counts when the user's object carries it (the training data, typically)
        registered = manager.registry["setup_args"].get("mask_layer")
        registered = registered if registered is not None and registered in query.target.layers else None
        if target == "dropouts" or (target == "auto" and mask_layer is None and registered is None):
            if mask_layer is not None:
                raise ValueError("target='dropouts' fills the suspected dropouts of the validity layer; do not pass "
                                 "mask_layer (or use target='mask').")
            if valid is None:
                raise ValueError(
                    "This model was set up without valid_layer, so it does not know which zeros are suspected "
                    "dropouts. Pass mask_layer= (a boolean layer of the entries to fill), set the model up with "
                    "valid_layer= (see countsdiff_sc.pp.mark_dropouts), or denoise every entry with "
                    "model.get_normalized_expression()."
                )
            if query.valid_missing:
                name = manager.registry["setup_args"].get("valid_layer")
                raise ValueError(
                    f"adata has no layer {name!r}, the model's validity layer, so no suspected dropout is marked on "
                    f"these cells. Mark them first (countsdiff_sc.pp.mark_dropouts(adata, groupby=..., "
                    f"key_added={name!r})), or pass mask_layer= (the entries to fill)."
                )
            if target == "auto" and _keys.MASK in source.layers:
                raise ValueError(
                    "adata has a 'countsdiff_mask' layer, but no mask was passed or registered: say which job you "
                    "mean, target='dropouts' (fill the suspected dropouts) or mask_layer='countsdiff_mask' (fill "
                    "the held-out entries; register it with setup_anndata(mask_layer=) so they never train)."
                )
            return cls("dropouts", None, None, valid, shape)
        if mask_layer is not None:
            if mask_layer not in source.layers:
                raise KeyError(
                    f"Mask layer {mask_layer!r} not found; available layers: {sorted(source.layers.keys())}. Create "
                    "one with countsdiff_sc.pp.mask_mcar / mask_mnar, or pass mask_layer=."
                )
            mask, name = source.layers[mask_layer], mask_layer
        elif registered is not None:
            mask, name = manager.get_from_registry(MASK_KEY), registered
        else:
            raise KeyError("target='mask' needs mask_layer= (or a mask registered with setup_anndata(mask_layer=)).")
        if tuple(mask.shape) != shape:
            raise ValueError(f"adata.layers[{name!r}] has shape {tuple(mask.shape)}, expected {shape} (n_obs, n_vars).")
        return cls("mask", mask, name, valid, shape)

    def rows(self, idx: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Entries to fill and validity (dense booleans) of the cells ``idx`` (a slice or sorted indices)."""
        valid = None if self.valid is None else as_bool_mask(
            self.valid[idx], (_n_rows(idx, self.shape[0]), self.shape[1]), "the registered valid layer")
        if self.kind == "dropouts":
            return ~valid, valid
        fill = as_bool_mask(self.mask[idx], (_n_rows(idx, self.shape[0]), self.shape[1]),
                            f"adata.layers[{self.mask_name!r}]")
        return (fill if valid is None else fill & valid), valid

    def scan(self) -> tuple[np.ndarray, int]:
        """One pass over the rows: the cells with entries to fill, their count, and the warnings."""
        n_obs, n_vars = self.shape
        cells, n_entries, dropped, bare = [], 0, 0, 0
        step = rows_per_block(n_vars)
        for start in range(0, n_obs, step):
            sl = slice(start, min(n_obs, start + step))
            fill, valid = self.rows(sl)
            counts = fill.sum(axis=1)
            cells.append(start + np.flatnonzero(counts))
            n_entries += int(counts.sum())
            n_valid = valid.sum(axis=1) if valid is not None else np.full(counts.size, n_vars)
            if self.kind == "mask":
                raw = as_bool_mask(self.mask[sl], fill.shape, f"adata.layers[{self.mask_name!r}]")
                dropped += int(raw.sum()) - int(counts.sum())
                bare += int(((counts == n_valid) & (n_valid > 0)).sum())
            else:
                bare += int(((n_valid == 0) & (counts > 0)).sum())
        if dropped:
            warnings.warn(
                f"{dropped} masked entries are marked invalid (suspected dropouts) in the valid layer; they are left "
                "out of the imputation and keep their observed value. To fill suspected dropouts, use "
                "target='dropouts'.", UserWarning, stacklevel=4)
        if bare:
            warnings.warn(
                f"{bare} cells have no trusted entry left to condition on; their imputation is a generation from "
                "their conditions alone.", UserWarning, stacklevel=4)
        return (np.concatenate(cells) if cells else np.zeros(0, np.int64)), n_entries


def _n_rows(idx: Any, n_obs: int) -> int:
    return len(range(*idx.indices(n_obs))) if isinstance(idx, slice) else len(idx)


class _Spread:
    """The standard deviation of the draws on the filled entries, collected into one CSR matrix (8 bytes per filled
    entry: float32 values, int32 column indices). The arrays are allocated once, at their final size (the number of
    entries to fill is known from ``_Targets.scan``), and filled in place: batches come in increasing cell order, so
    no concatenation, and no transient second copy, is ever made."""

    def __init__(self, shape: tuple[int, int], n_entries: int):
        self.shape, self.per_row = shape, np.zeros(shape[0], np.int64)
        self.index = np.int32 if max(n_entries, shape[1]) < 2**31 - 1 else np.int64
        self.cols = np.empty(n_entries, self.index)
        self.values = np.empty(n_entries, np.float32)
        self.filled = 0

    def add(self, idx: np.ndarray, fill: np.ndarray, draws: np.ndarray) -> None:
        r, c = np.nonzero(fill)  # row-major: the order of a CSR matrix
        end = self.filled + len(r)
        self.per_row[idx] = fill.sum(axis=1)
        self.cols[self.filled:end] = c
        self.values[self.filled:end] = draws[r, :, c].std(axis=1)
        self.filled = end

    def matrix(self) -> sp.csr_matrix:
        if self.filled != len(self.values):
            raise RuntimeError(f"{self.filled} of {len(self.values)} filled entries were collected.")
        indptr = np.zeros(self.shape[0] + 1, self.index)
        np.cumsum(self.per_row, out=indptr[1:])
        return sp.csr_matrix((self.values, self.cols, indptr), shape=self.shape, copy=False)


def _observed_counts(x: Any, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """The registered counts as a float32 array (float64 when a count exceeds 2^24, which float32 would round), read
    (backed matrices too) and checked in blocks of rows; and whether any count exceeds the int32 range."""
    out = np.empty(shape, dtype=np.float32)
    step = rows_per_block(shape[1])
    largest = 0.0
    for start in range(0, shape[0], step):
        block = to_dense(x[start : start + step], np.float64)
        check_counts(block, where="the counts of the cells to impute")
        largest = max(largest, float(block.max(initial=0.0)))
        if largest > FLOAT32_EXACT and out.dtype == np.float32:
            out = out.astype(np.float64)
        out[start : start + block.shape[0]] = block
    return out, largest > np.iinfo(np.int32).max // 4


def _write(query: Query, imputed: np.ndarray, samples: np.ndarray | None, spread: Any, key_added: str,
           std_key: str | None, samples_key: str, setup_args: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the results into the user's object, in its gene order (genes the model does not know keep their counts),
    and remove what an earlier run with the same ``key_added`` left that this run does not write (its spread, its
    draws), so no stale output survives a re-run."""
    target = query.target
    if not query.aligned:
        observed = to_dense(get_matrix(target, setup_args.get("layer")), np.float64)
        imputed = query.to_target(imputed, observed.astype(imputed.dtype))
        samples = None if samples is None else query.to_target(samples, observed[:, None, :].astype(samples.dtype))
        if sp.issparse(spread):
            cols = query.genes[spread.indices]
            spread = sp.csr_matrix((spread.data, cols, spread.indptr), shape=target.shape)
            spread.sort_indices()
        elif spread is not None:
            spread = query.to_target(spread, np.float32(0.0))
    previous = target.uns.get(_keys.PARAMS, {}).get(key_added)
    if isinstance(previous, dict):
        old_std, old_samples = previous.get("std_key"), previous.get("samples_key")
        if old_std not in (None, "None", std_key) and old_std in target.layers and old_std != key_added:
            del target.layers[old_std]
        if old_samples not in (None, "None") and old_samples in target.obsm and (
                samples is None or old_samples != samples_key):
            del target.obsm[old_samples]
    target.layers[key_added] = imputed
    if std_key is not None:
        if spread is None:  # one draw: no spread to report
            spread = sp.csr_matrix(target.shape, dtype=np.float32)
        target.layers[std_key] = spread
    if samples is not None:
        target.obsm[samples_key] = samples
    return imputed, samples
