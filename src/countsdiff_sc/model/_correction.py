"""Batch-corrected integer counts of a whole data set: ``CountsDiffModel.correct_batches``.

Every cell outside the reference batch is moved to it by retention, the mechanism of
:meth:`~countsdiff_sc.model._transfer.TransferMixin.transfer`: the batch is read as a binomial thinning of the
reference's counts, ``y_g ~ Binomial(x_g, r_g)`` (:mod:`._retention`; ``r_g`` estimated from the model's training
data, by default for each cell type on its own and shrunk towards the batch's per-gene ratio), the molecules of genes
the batch inflates (``r_g > 1``) are thinned back, and :func:`~countsdiff_sc.diffusion.restore` draws, under the
reference's conditions, only the molecules the batch lost. Every other molecule of the cell is kept. The data are read
and written in blocks of cells (backed objects included), and the result is an integer sparse layer.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from countsdiff_sc import _keys
from countsdiff_sc._resources import check_memory, check_work
from countsdiff_sc._utils import check_counts, check_writable, get_matrix, is_backed_matrix, record_params, to_dense
from countsdiff_sc.diffusion import restore_start
from countsdiff_sc.module import check_guidance_cap

from ._chains import ChainSettings, positive_int
from ._generation import own_vector_condition
from ._query import check_conditions
from ._results import check_cells, gene_positions, is_mudata, model_gene_names
from ._retention import NoSharedStrata, check_retention_series
from ._sampler import Sampler, sampler_for
from ._transfer import condition_slots, draw_retention, retention_levels

__all__ = ["POOLED", "CorrectionMixin", "cell_retention"]

#: ``reference=POOLED`` moves every batch to the geometric mean of the batches (see ``correct_batches``).
POOLED = "pooled"
#: Entries (cells x genes) of one block when ``block_size`` is None: about 64 MiB per float64 array.
BLOCK_ENTRIES = 2**23
#: Most cells in one block when ``block_size`` is None (so the progress bar moves on narrow data too).
MAX_BLOCK = 65536
#: Working bytes per entry of a block (the user's counts in float64, the corrected counts in int64, the retention,
#: levels, kept shares and chain states in float32, the running sums of the draws), used by the resource guard.
BYTES_PER_BLOCK_ENTRY = 64
#: The estimated retentions: per stratum (cell type, other covariates) shrunk towards the batch's per-gene ratio, or
#: one ratio per gene and batch (0.2.0).
RETENTION_MODES = ("auto", "per_gene")
#: Columns of the per-stratum table that count training cells (the others name the batch and the stratum).
PAIR_CELLS = ("cells", "reference cells", "depth change")
#: A (batch, cell type) pair whose own retention moves its average cell to more than this many times its depth (or
#: less than its inverse) is named in a warning: most of those cells' molecules would be drawn, not measured.
DEPTH_WARNING = 4.0
INT32_MAX = np.iinfo(np.int32).max


class CorrectionMixin:
    """``correct_batches`` of CountsDiffModel (needs ``module``, ``condition_space``, ``registry_``, ``device`` and
    ``TransferMixin._training_sums``)."""

    @torch.inference_mode()
    def correct_batches(
        self,
        adata: ad.AnnData | None = None,
        covariate: str | None = None,
        *,
        reference: str | None = None,
        retention: Literal["auto", "per_gene"] | pd.DataFrame = "auto",
        n_samples: int = 1,
        key_added: str = _keys.CORRECTED,
        block_size: int | None = None,
        sampler: Sampler | None = None,
    ) -> pd.DataFrame:
        r"""Batch-corrected integer counts: every cell of every batch moved to a reference batch, molecule by molecule.

        A batch effect in count space is read as a per-gene thinning: batch ``b`` keeps a fraction ``r_{b,g}`` of
        gene ``g``'s molecules relative to the reference (``r > 1`` for a gene the batch inflates). ``r`` is
        estimated from the model's training data as the ratio of mean counts, batch over reference, compared within
        the same label and other covariates (so a difference in cell-type composition is not taken for a batch
        effect; :meth:`~countsdiff_sc.model._retention.GroupSums.ratio`). With ``retention="auto"`` each cell type
        (each stratum of the label and other covariates) then gets its own ratio, shrunk towards the batch's by five
        molecules' worth of evidence (:meth:`~countsdiff_sc.model._retention.GroupSums.stratum_ratios`): real batch
        effects differ by type (ambient RNA adds the same molecules to every cell, a large change for a gene a type
        barely expresses), and one ratio per gene leaves them in. Cells of a type that the batch or the reference
        lacks in the training data use the batch's ratio. Each cell of ``b`` then keeps every
        molecule of the genes its batch does not inflate; the genes it inflates are thinned back,
        ``Binomial(x_g, 1 / r_g)``; and :func:`~countsdiff_sc.diffusion.restore` draws the molecules its batch lost,
        ``x_0 | y ~ Binomial(x_0, min(r_g, 1))``, with the network's rate under the reference batch and the cell's own
        label, other covariates and vector condition (a depth-conditioned model is given the depth the retention
        implies, ``sum_g x_g / r_g``). With ``retention="per_gene"`` this is :meth:`transfer` with
        ``covariates={covariate: reference}`` and ``retention="auto"``, run over the whole object in blocks of cells.

        The labels steer the correction (as ComBat-seq's protected covariate does): scores of how well the corrected
        counts keep those same labels apart are then partly circular, and labels that are wrong for a batch are
        written into its counts. Use labels annotated independently of the batch (per batch, or transferred from a
        reference), or ``retention="per_gene"`` when the labels are unreliable.

        Parameters
        ----------
        adata
            AnnData of raw counts (in the layer the model was set up with) with the model's genes, matched by name in
            any order (genes the model does not know keep their counts), an obs column for the batch covariate and
            each other registered condition, and the obsm vector condition if the model has one. May be backed
            (read in blocks). None: the model's training data. (A view becomes an actual object when the layer is
            written, anndata's rule; its parent is not changed.)
        covariate
            The batch covariate (an obs column registered with ``categorical_covariate_keys``); None: the model's
            first categorical covariate.
        reference
            The batch every cell is moved to (a category of ``covariate`` with training cells); None: the batch with
            the most training cells. Its cells are kept unchanged. ``"pooled"`` (unless a batch has that name): a
            virtual batch whose level of each gene is the geometric mean over the model's batches,
            ``r_{b,g} = \tilde r_{b,g} / (\prod_{b'} \tilde r_{b',g})^{1/K}`` with ``\tilde r`` each batch's
            retention relative to the batch with the most training cells (the choice cancels out); every cell is
            moved, and the chains run on the geometric mean of the ``K`` batches' rates (``K`` network passes per
            step instead of one).
        retention
            ``"auto"`` (estimated from the model's training data, per cell type and batch, shrunk towards the batch's
            per-gene ratio; chosen by measurement, see the table of defaults), ``"per_gene"`` (one ratio per gene and
            batch, 0.2.0's estimate; also what ``reference="pooled"`` uses) or a pandas DataFrame of ratios, genes
            (index, by name) x batches (columns: each batch of ``adata`` to move), relative to the reference, applied
            to every cell of the batch, e.g. the per-gene table an earlier call stored in
            ``uns[key_added + "_retention"]``.
        n_samples
            Draws per cell. ``layers[key_added]`` holds the first (the same whatever ``n_samples``); with more than
            one, ``layers[key_added + "_mean"]`` and ``layers[key_added + "_sd"]`` hold their mean and standard
            deviation (float32 CSR with the sparsity of the mean: an entry is stored where some draw is non-zero).
        key_added
            Layer receiving the corrected counts. Never the model's counts, validity or mask layer, nor a layer the
            user owns; a re-run with the same ``key_added`` replaces every output of the earlier run.
        block_size
            Cells read, corrected and written at once; None: about 8 million entries (at most 65,536 cells) per
            block. With the same seed, the same ``block_size`` gives the same result (reordered genes and backed
            objects included).
        sampler
            Chain settings (:class:`~countsdiff_sc.Sampler`), defaults those of ``transfer`` (50 Euler steps over
            the whole time grid, a chain running the steps below its lowest retention level; guidance 1); its
            ``seed`` makes the call reproducible and ``progress`` forces the progress bar on or off (default: on
            for long runs).

        Returns
        -------
        The per-gene retention table (genes x batches moved, float64), also stored in
        ``adata.uns[key_added + "_retention"]``. With ``retention="auto"`` the ratios per cell type are stored in
        ``adata.uns[key_added + "_retention_by_stratum"]``: ``"strata"`` (a DataFrame, one row per batch and
        stratum, with the training cells of each side and the depth change of its average cell, ``sum_g m_g / r_g``
        over ``sum_g m_g``; a change beyond 4x either way is also named in a warning) and ``"ratios"`` (float64,
        rows in that order x the model's genes in the order of the per-gene table). ``adata.layers[key_added]``
        receives the corrected counts: a CSR
        matrix of int32 (int64 when a count exceeds the int32 range), non-negative, in ``adata``'s gene order; the
        settings are recorded in ``adata.uns["countsdiff"][key_added]``.

        Raises
        ------
        KeyError
            An unknown covariate, or a registered condition without its obs column in ``adata``.
        ValueError
            A model without categorical covariates; a reference that is not a batch with training cells; a batch of
            ``adata`` unknown to the model; a batch that shares no label with the reference in the training data
            (the message names both sides' labels); ``retention="auto"`` on a model loaded without its training
            data; model genes missing from ``adata``; values that are not counts; an output key that names the
            model's inputs or a user's layer; or a request beyond the resource guard (with its estimate).

        Examples
        --------
        >>> table = model.correct_batches(adata, covariate="batch", reference="b1")
        >>> adata.layers["countsdiff_corrected"]            # integer counts, every cell as if from b1
        >>> model.correct_batches(adata, reference="pooled", n_samples=5, sampler=cds.Sampler(seed=0))
        """
        space, module = self.condition_space, self.module
        if adata is None:
            adata = self._training_anndata("correct_batches(adata=None)")
        if is_mudata(adata) or (self.registry_["setup_args"].get("modalities") is not None):
            raise ValueError("correct_batches works on AnnData models: pass the AnnData of the RNA modality to a model "
                             "set up with setup_anndata.")
        check_cells(adata)
        covariate = _check_covariate(space, covariate)
        batches = space.covariate_categories[covariate]
        n_samples = positive_int(n_samples, "n_samples")
        if not isinstance(key_added, str) or not key_added.strip():
            raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
        run = ChainSettings(sampler_for("transfer", self.preset, sampler), self.device)
        trained = self._trained_batches(covariate)
        reference = self._check_reference(reference, batches, trained, covariate)
        pooled = reference == POOLED
        if pooled and isinstance(run.sampler.guidance, Mapping):
            raise ValueError("reference='pooled' mixes the rates of every batch and takes one guidance strength: "
                             "pass Sampler(guidance=<number>).")
        if pooled and check_guidance_cap(run.sampler.guidance_cap) is not None:
            raise ValueError("guidance_cap has no single conditional rate to cap with reference='pooled' (the chains "
                             "run on the geometric mean of the batches' rates): leave it unset, or move the cells to "
                             "one batch (reference=...).")
        strengths = space.guidance_strengths(run.sampler.guidance)
        layer = self.registry_["setup_args"].get("layer")
        counts = get_matrix(adata, layer)
        genes = gene_positions(adata.var_names, getattr(self, "var_names_", None), module.n_genes, "adata")
        check_conditions(space, adata, getattr(self, "condition_table_", None))
        own = adata.obs[covariate].astype(str).to_numpy()
        present = [b for b in batches if b in set(own)]
        moved = present if pooled else [b for b in present if b != reference]
        outputs = _output_keys(key_added, n_samples)
        _check_outputs(adata, outputs, self.registry_["setup_args"])
        table, info, stratified = self._retention_table(retention, covariate, reference, moved, trained, space)

        n_obs, n_vars = adata.n_obs, adata.n_vars
        moving = np.isin(own, moved)
        r_all = table.to_numpy(np.float32).T  # (batches moved, genes)
        batch_row = pd.Index(moved).get_indexer(own)  # row of each cell's batch in r_all (-1: not moved)
        if stratified is not None:  # a cell whose (batch, stratum) had training cells on both sides: its own row
            frame, ratios = stratified
            pair_row = _pair_rows(frame, adata.obs, np.arange(n_obs))
            batch_row = np.where(moving & (pair_row >= 0), len(moved) + pair_row, batch_row)
            r_all = np.vstack([r_all, ratios.astype(np.float32)])
            info["cells_with_own_stratum_ratio"] = int((moving & (pair_row >= 0)).sum())
            info["cells_with_batch_ratio"] = int((moving & (pair_row < 0)).sum())
        used = np.unique(batch_row[moving])
        lowest = float(r_all[used].min()) if used.size and r_all.size else 1.0
        passes = (len(trained) if pooled else 1) * (2 if run.sampler.guidance not in (1, 1.0) else 1)
        evaluations = run.evaluations(module.schedule, restore_start(module.schedule, torch.tensor(min(lowest, 1.0))))
        work = float(moving.sum()) * n_samples * module.n_genes * evaluations * (len(trained) if pooled else 1)
        what = f"correct_batches(n_samples={n_samples}) of {n_obs} cells x {n_vars} genes"
        check_work(what, work, "fewer n_samples, fewer steps (sampler=cds.Sampler(n_steps=...)), a named reference "
                   "instead of 'pooled', or fewer cells per call")
        block = _block_size(block_size, max(n_vars, module.n_genes), run.batch_size)
        check_memory(what, _memory_estimate(counts, n_obs, n_vars, n_samples, block, module.n_genes, run.batch_size,
                                            passes),
                     "a smaller block_size, n_samples=1 (no mean / sd layers), or fewer cells per call")

        extra = None
        if n_samples > 1:  # the first draw is the same whatever n_samples: the others come from a second stream
            extra = ChainSettings(run.sampler.replace(seed=(run.seed + 1) % 2**63), self.device)
        writer = _Writer(n_obs, n_vars, n_samples > 1)
        n_moving = int(moving.sum())
        n_blocks = math.ceil(n_obs / block)
        show = run.progress(work, n_samples * (math.ceil(n_moving / run.batch_size) + n_blocks) * evaluations)
        inner = show and n_blocks == 1 and n_samples == 1  # one chain run: its own bar shows the steps
        bar = tqdm(total=n_obs - n_moving + n_moving * n_samples, desc="correcting batches", disable=not show or inner)
        codes_all = self._target_codes(adata, covariate, reference if not pooled else trained[0], moving, not pooled)
        for start in range(0, n_obs, block):
            rows = slice(start, min(n_obs, start + block))
            x_user = to_dense(counts[rows], np.float64)
            check_counts(x_user, where=f"adata.layers[{layer!r}]" if layer else "adata.X")
            exact = np.rint(x_user).astype(np.int64)
            mean = sd = None
            if extra is not None:
                mean, sd = exact.astype(np.float64), np.zeros(x_user.shape)
            sel = np.flatnonzero(moving[rows])
            if sel.size:
                cells = start + sel
                x = x_user[np.ix_(sel, genes)]
                level, keep, depth = retention_levels(x.astype(np.float32), r_all[batch_row[cells]])
                rate_for = self._correction_rates(adata, cells, codes_all, depth, covariate, trained, pooled,
                                                  strengths, run)
                observed = exact[np.ix_(sel, genes)]
                first = _corrected(module, run, x, observed, keep, level, rate_for, inner)
                bar.update(sel.size)
                exact[np.ix_(sel, genes)] = first
                if extra is not None:
                    total, squares = first.astype(np.float64), first.astype(np.float64) ** 2
                    for _ in range(n_samples - 1):
                        more = _corrected(module, extra, x, observed, keep, level, rate_for, False)
                        more = more.astype(np.float64)
                        bar.update(sel.size)
                        total += more
                        squares += more ** 2
                    m = total / n_samples
                    mean[np.ix_(sel, genes)] = m
                    sd[np.ix_(sel, genes)] = np.sqrt(np.maximum(squares / n_samples - m ** 2, 0.0)
                                                     * n_samples / (n_samples - 1))
            writer.add(exact, mean, sd)
            bar.update(rows.stop - rows.start - sel.size)
        bar.close()

        layers = writer.finish()
        previous = adata.uns.get(_keys.PARAMS, {}).get(key_added)
        if isinstance(previous, dict) and isinstance(previous.get("layers"), str):  # an earlier run's outputs
            for old in json.loads(previous["layers"]):  # that this run does not write
                if old not in outputs and old in adata.layers:
                    del adata.layers[old]
        adata.layers[key_added] = layers[0]
        if n_samples > 1:
            adata.layers[outputs[1]], adata.layers[outputs[2]] = layers[1], layers[2]
        adata.uns[f"{key_added}_retention"] = table
        by_stratum = f"{key_added}_retention_by_stratum"
        if stratified is not None:
            adata.uns[by_stratum] = {"strata": stratified[0].set_axis(
                [str(i) for i in range(len(stratified[0]))]), "ratios": stratified[1]}
        else:
            adata.uns.pop(by_stratum, None)  # an earlier run's table would not describe this one
        mode = retention if isinstance(retention, str) else "given"
        record_params(adata, key_added, {
            "operation": "correct_batches", "covariate": covariate, "reference": reference,
            "retention": "per_gene" if mode == "auto" and stratified is None else mode, "n_samples": n_samples,
            "block_size": block, "key_added": key_added, "layers": list(outputs),
            "retention_key": f"{key_added}_retention", "dtype": str(layers[0].dtype),
            "retention_by_stratum_key": by_stratum if stratified is not None else "",
            "cells_moved": {str(b): int((own == b).sum()) for b in moved}, "preset": self.preset, **info,
            **run.record(),
        })
        return table

    # ------------------------------------------------------------------ checks and tables
    def _training_anndata(self, what: str) -> ad.AnnData:
        if getattr(self, "adata", None) is None:
            raise ValueError(f"{what}: this model was loaded without its training data, so there are no default "
                             "cells: pass the AnnData to correct (or load the model with CountsDiffModel.load(path, "
                             "adata=...)).")
        return self.adata

    def _trained_batches(self, covariate: str) -> list[str]:
        """The batches with training cells (all categories for a model saved without its condition table)."""
        space = self.condition_space
        cats = space.covariate_categories[covariate]
        table = getattr(self, "condition_table_", None)
        if table is None or len(table) == 0:
            return list(cats)
        column = (1 if space.use_labels else 0) + list(space.covariate_categories).index(covariate)
        counts = np.bincount(np.asarray(table)[:, column], weights=np.asarray(table)[:, -1], minlength=len(cats))
        order = np.argsort(-counts, kind="stable")
        return [cats[i] for i in order if counts[i] > 0]  # most training cells first

    def _check_reference(self, reference: Any, batches: list[str], trained: list[str], covariate: str) -> str:
        if reference is None:
            return trained[0]
        if not isinstance(reference, (str, np.str_, int, np.integer)) or isinstance(reference, bool):
            raise TypeError(f"reference must be a {covariate} value or 'pooled', got {reference!r}.")
        reference = str(reference)
        if reference == POOLED and POOLED not in batches:
            if len(trained) < 2:
                raise ValueError(f"reference='pooled' needs at least two {covariate} values with training cells; the "
                                 f"model has {trained}.")
            return POOLED
        if reference not in batches:
            raise ValueError(f"Unknown reference {reference!r}: the model's {covariate} values are {batches} (or "
                             "'pooled').")
        if reference not in trained:
            raise ValueError(f"reference {reference!r} has no training cell (a category of the setup column without "
                             f"cells), so the model never learned it; use one of {trained} (or 'pooled').")
        return reference

    def _retention_table(self, retention: Any, covariate: str, reference: str, moved: list[str], trained: list[str],
                         space) -> tuple[pd.DataFrame, dict[str, Any], tuple[pd.DataFrame, np.ndarray] | None]:
        """The retention of each batch to move relative to the reference: genes x batches, float64; and, for
        ``retention="auto"`` with a named reference, each (batch, stratum) pair's own ratios (``(strata, ratios)``:
        one row per pair with its training cells, ratios pairs x genes; None otherwise)."""
        names = pd.Index(model_gene_names(getattr(self, "var_names_", None), self.module.n_genes), dtype=str)
        if not (isinstance(retention, str) and retention in RETENTION_MODES):
            return (_given_table(retention, moved, getattr(self, "var_names_", None), self.module.n_genes, names),
                    {}, None)
        if not moved:
            return pd.DataFrame(index=names, dtype=np.float64), {}, None
        strata = [k for k in condition_slots(space) if k != covariate]
        pooled = reference == POOLED
        anchor = trained[0] if pooled else reference
        needed = trained if pooled else [*moved, anchor]
        sums = self._training_sums([covariate], strata, [(b,) for b in needed],
                                  "a DataFrame of ratios, genes (index) x batches (columns)")
        rel = {}
        for b in (trained if pooled else moved):
            try:
                rel[b] = sums.ratio((b,), (anchor,))[0] if b != anchor else np.ones(self.module.n_genes)
            except NoSharedStrata:
                raise ValueError(_no_overlap(sums, covariate, b, anchor, strata, pooled)) from None
        if pooled:
            centre = np.exp(np.mean(np.log(np.stack(list(rel.values()))), axis=0))
            rel = {b: rel[b] / centre for b in moved}
        table = pd.DataFrame({str(b): rel[b] for b in moved}, index=names, dtype=np.float64)
        info = {"strata_keys": strata, "anchor": anchor} if pooled else {"strata_keys": strata}
        if pooled or not strata:
            return table, info, None
        rows, ratios = [], []
        for b in moved:
            for stratum, r in sums.stratum_ratios((b,), (anchor,), rel[b]).items():
                r = r if retention == "auto" else rel[b]  # what the pair's cells are moved with
                mean = sums.mean_counts((b,), stratum)  # the pair's average cell, and its depth once moved
                change = float((mean / np.maximum(r, 1e-3)).sum() / mean.sum()) if mean.sum() > 0 else 1.0
                rows.append((str(b), *stratum, sums.cells_in((b,), stratum), sums.cells_in((anchor,), stratum),
                             change))
                ratios.append(r)
        frame = pd.DataFrame(rows, columns=[covariate, *strata, *PAIR_CELLS])
        _warn_far(frame, covariate, strata)
        if retention != "auto":
            return table, info, None
        ratios_array = np.vstack(ratios) if ratios else np.zeros((0, self.module.n_genes))
        return table, info, (frame, ratios_array)

    def _target_codes(self, adata: ad.AnnData, covariate: str, target: str, moving: np.ndarray,
                      warn: bool) -> np.ndarray | None:
        """The condition codes of every cell of ``adata`` with the batch set to ``target`` (labels first); with
        ``warn``, a warning when moved cells ask for a combination no training cell had (e.g. a cell type never seen
        in the reference batch: the network extrapolates it)."""
        space = self.condition_space
        cols = [(space.labels_key, space.label_categories)] if space.use_labels else []
        cols += list(space.covariate_categories.items())
        if not cols:
            return None
        out = np.empty((adata.n_obs, len(cols)), dtype=np.int64)
        for j, (key, cats) in enumerate(cols):
            if key == covariate:
                out[:, j] = cats.index(target)
            else:
                out[:, j] = pd.Categorical(adata.obs[key].astype(str), categories=cats).codes
        table = getattr(self, "condition_table_", None)
        space.check_trained(out, table)
        if warn and table is not None and len(table) and moving.any():
            seen = {tuple(row) for row in np.asarray(table)[:, :-1].tolist()}
            combos, counts = np.unique(out[moving], axis=0, return_counts=True)
            unseen = [(c, k) for c, k in zip(combos.tolist(), counts, strict=True) if tuple(c) not in seen]
            if unseen:
                def named(codes):
                    return ", ".join(f"{key}={cats[v]!r}" for (key, cats), v in zip(cols, codes, strict=True))

                warnings.warn(
                    f"{sum(k for _, k in unseen)} cells are moved to conditions no training cell had (e.g. "
                    f"{named(unseen[0][0])}): the network never saw them, so what it restores there is an "
                    "extrapolation. A reference that has every cell type avoids it.", UserWarning, stacklevel=3)
        return out

    def _correction_rates(self, adata, cells: np.ndarray, codes_all, depth: np.ndarray, covariate: str,
                          trained: list[str], pooled: bool, strengths, run: ChainSettings):
        """``rate_for(rows)`` of the moved cells ``cells``: the rate under the reference (or the geometric mean of the
        batches' rates for the pooled reference), with each cell's own other conditions."""
        module, device, space = self.module, self.device, self.condition_space
        cont = own_vector_condition(space, adata, cells, "adata")
        vec = module.vector_condition(cont, torch.from_numpy(depth) if module.depth_condition else None)
        vec = None if vec is None else vec.to(device)
        cat = None if codes_all is None else torch.from_numpy(codes_all[cells]).to(device)
        if not pooled:
            def rate_for(rows: slice):
                c = None if cat is None else cat[rows]
                v = None if vec is None else vec[rows]
                return lambda x, t: module.rate(x, t, c, v, guidance=strengths,
                                                guidance_cap=run.sampler.guidance_cap)

            return rate_for
        column = (1 if space.use_labels else 0) + list(space.covariate_categories).index(covariate)
        cats = space.covariate_categories[covariate]
        g = float(strengths)

        def pooled_for(rows: slice):
            c, v = cat[rows], None if vec is None else vec[rows]
            n = c.shape[0]
            keep = np.ones(module.n_conditions, dtype=bool)
            if v is None and module.n_continuous > 0:  # no vector condition: its null token, as rate() does
                keep[-1] = False
                v = torch.zeros(n, module.n_continuous, device=device)
            variants, coefs = [], []
            for b in trained:
                cb = c.clone()
                cb[:, column] = cats.index(b)
                variants.append((cb, v, module.drop_mask(n, device, keep)))
                coefs.append(g / len(trained))
            if g != 1.0:  # guided against the unconditional rate, as in sample()
                variants.append((c, v, module.drop_mask(n, device, np.zeros(module.n_conditions, dtype=bool))))
                coefs.append(1.0 - g)
            return lambda x, t: module.mixed_rate(x, t, variants, coefs)

        return pooled_for


def _corrected(module, run: ChainSettings, x: np.ndarray, exact: np.ndarray, keep: np.ndarray, level: np.ndarray,
               rate_for, progress: bool) -> np.ndarray:
    """One draw of the moved cells as int64 counts: the kept molecules exactly as observed (``exact``), the thinned
    genes as drawn, plus the molecules the chains restored."""
    device = run.device
    y, out = draw_retention(module, run, torch.from_numpy(x.astype(np.float32)).to(device),
                            torch.from_numpy(keep).to(device), torch.from_numpy(level).to(device), rate_for,
                            run.batch_size, progress, "correcting batches")
    y = y.cpu().numpy()
    kept = np.where(keep >= 1.0, exact, np.rint(y).astype(np.int64))  # float32 would round counts above 2^24
    return kept + np.maximum(np.rint(out.astype(np.float64) - y), 0).astype(np.int64)


def _no_overlap(sums, covariate: str, batch: str, anchor: str, strata: list[str], pooled: bool) -> str:
    """Why the retention of ``batch`` relative to ``anchor`` cannot be estimated, and what to do."""
    def listed(b: str) -> str:
        found = sorted("/".join(s) for s in sums.strata_of((b,)))
        return f"{found[:8]}{' ...' if len(found) > 8 else ''}"

    what = f"{anchor!r} (the anchor of the pooled reference)" if pooled else f"the reference {anchor!r}"
    if strata and sums.cells_of((batch,)) and sums.cells_of((anchor,)):
        why = (f"shares no {'/'.join(strata)} with {what} in the model's training data ({batch!r} has "
               f"{listed(batch)}, {anchor!r} has {listed(anchor)})")
    else:
        why = f"has {sums.cells_of((batch,))} training cells and {what} {sums.cells_of((anchor,))}"
    shared = f"a {'/'.join(strata)} with every batch" if strata else "cells with every batch"
    other = f"a named reference that shares {shared}" if pooled else f"a reference that shares {shared}"
    return (f"The {covariate} {batch!r} {why}, so its retention cannot be estimated: choose {other}, correct the "
            "cells of that batch in a separate call with another reference, or pass retention= as a DataFrame of "
            "ratios (genes x batches).")


def _check_covariate(space, covariate: Any) -> str:
    covs = list(space.covariate_categories)
    if covariate is None:
        if not covs:
            raise ValueError("correct_batches needs a batch covariate, and this model has none: set it up with "
                             "categorical_covariate_keys=['batch'] (the first categorical covariate is the batch).")
        return covs[0]
    if covariate not in covs:
        hint = " (the labels_key: correct_batches moves cells between batches, not labels)" \
            if covariate == space.labels_key else ""
        raise KeyError(f"Unknown covariate {covariate!r}{hint}; the model's categorical covariates are {covs}.")
    return covariate


def cell_retention(adata: ad.AnnData, key_added: str = _keys.CORRECTED, cells: Any = None) -> np.ndarray:
    """The retention each cell was moved with by ``correct_batches(adata, key_added=...)``.

    Parameters
    ----------
    adata
        The AnnData that ``correct_batches`` wrote to (its obs columns and ``uns`` tables, as written or read back
        from an h5ad).
    key_added
        The ``key_added`` of that call.
    cells
        Positions (or a boolean mask) of the cells to return; None: every cell.

    Returns
    -------
    float32 array, cells x genes in the order of ``adata.uns[key_added + "_retention"].index``: the row of
    ``uns[key_added + "_retention_by_stratum"]`` of the cell's batch and cell type (and other covariates) when the
    call had one, else its batch's per-gene ratio; 1 for the cells that were not moved (the reference). A gene at most
    1 kept every observed molecule in that cell; a gene above 1 was thinned.

    Raises
    ------
    ValueError
        ``key_added`` was not written by ``correct_batches``, or its tables are missing.

    Examples
    --------
    >>> model.correct_batches(adata, reference="E2")
    >>> r = cds.model.cell_retention(adata)               # cells x genes
    >>> kept = r <= 1                                      # every observed molecule of these entries is kept
    """
    rec = adata.uns.get(_keys.PARAMS, {}).get(key_added)
    table = adata.uns.get(f"{key_added}_retention")
    if not (isinstance(rec, Mapping) and rec.get("operation") == "correct_batches") or table is None:
        raise ValueError(f"adata holds no output of correct_batches under key_added={key_added!r} (its settings in "
                         f"uns['countsdiff'][{key_added!r}] and its table in uns[{key_added + '_retention'!r}]): run "
                         "model.correct_batches(adata, ...) first, or pass the key_added it used.")
    rows = np.arange(adata.n_obs) if cells is None else np.arange(adata.n_obs)[np.asarray(cells)]
    own = adata.obs[str(rec["covariate"])].astype(str).to_numpy()[rows]
    out = np.ones((rows.size, table.shape[0]), dtype=np.float32)
    column = pd.Index([str(c) for c in table.columns]).get_indexer(own)
    moved = column >= 0
    out[moved] = table.to_numpy(np.float32).T[column[moved]]
    by = adata.uns.get(f"{key_added}_retention_by_stratum")
    if by is not None:
        row = _pair_rows(by["strata"], adata.obs, rows)
        hit = row >= 0
        out[hit] = np.asarray(by["ratios"], dtype=np.float32)[row[hit]]
    return out


def _warn_far(frame: pd.DataFrame, covariate: str, strata: list[str]) -> None:
    """Name the (batch, cell type) pairs whose retention moves their average cell beyond ``DEPTH_WARNING`` in depth."""
    change = frame["depth change"]
    far = frame[(change > DEPTH_WARNING) | (change < 1 / DEPTH_WARNING)]
    if not len(far):
        return
    named = "; ".join(
        f"{covariate}={row[covariate]!r}, " + ", ".join(f"{k}={row[k]!r}" for k in strata)
        + f" ({int(row['cells'])} training cells): x{row['depth change']:.2g}"
        for _, row in far.sort_values("depth change", key=lambda v: -np.abs(np.log(v))).head(3).iterrows())
    warnings.warn(
        f"{len(far)} cell type(s) of the moved batches are moved to more than {DEPTH_WARNING:g}x (or less than "
        f"1/{DEPTH_WARNING:g}) of their depth ({named}): most of a deepened cell's molecules will be drawn by the "
        "model, not measured, and a thinned one loses most of its own. Check that such a type is the same population "
        "in both batches (annotation, quality) before reading its corrected counts; retention='per_gene' moves it by "
        "the batch's ratio of each gene instead, a DataFrame by ratios of your own. With retention='auto' each "
        "pair's depth change is in uns[key_added + '_retention_by_stratum']['strata'].", UserWarning, stacklevel=4)


def _pair_rows(strata: pd.DataFrame, obs: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """For the cells ``rows``, the row of ``strata`` (one per batch and stratum, see ``correct_batches``) that holds
    their values of its obs columns; -1 for a cell with none (its batch was not moved or lacks that stratum)."""
    keys = [c for c in strata.columns if c not in PAIR_CELLS]
    pairs = pd.MultiIndex.from_frame(strata[keys].astype(str))
    return pairs.get_indexer(pd.MultiIndex.from_arrays([obs[k].astype(str).to_numpy()[rows] for k in keys]))


def _given_table(retention: Any, moved: list[str], var_names, n_genes: int, names: pd.Index) -> pd.DataFrame:
    """A user's table of ratios (genes x batches) checked and put in the model's gene order."""
    if not isinstance(retention, pd.DataFrame):
        raise TypeError("retention must be 'auto' (estimated from the model's training data per cell type), "
                        "'per_gene' (one ratio per gene and batch) or a pandas DataFrame of ratios, genes (index, by "
                        f"name) x batches (columns), relative to the reference; got {retention!r}."
                        if isinstance(retention, str) else
                        "retention must be 'auto', 'per_gene' or a pandas DataFrame of ratios, genes (index, by name) "
                        f"x batches (columns), relative to the reference; got {type(retention).__name__}.")
    columns = [str(c) for c in retention.columns]
    missing = [b for b in moved if b not in columns]
    if missing:
        raise ValueError(f"retention has no column for the batch(es) {missing} of adata: give one column of ratios "
                         "per batch to move (relative to the reference).")
    table = retention.set_axis(columns, axis=1)
    out = {b: check_retention_series(table[b], var_names, n_genes) for b in moved}
    return pd.DataFrame(out, index=names, dtype=np.float64)


def _output_keys(key_added: str, n_samples: int) -> tuple[str, ...]:
    return (key_added, f"{key_added}_mean", f"{key_added}_sd") if n_samples > 1 else (key_added,)


def _check_outputs(adata: ad.AnnData, outputs: tuple[str, ...], setup_args: dict) -> None:
    """The output layers and the retention table: never an input of the model, never a key the user owns."""
    inputs = {setup_args.get("layer"), setup_args.get("valid_layer"), setup_args.get("mask_layer"), _keys.VALID,
              _keys.MASK}
    records = adata.uns.get(_keys.PARAMS, {})
    for rec in records.values():  # layers other countsdiff-sc steps wrote (masks, validity, imputations)
        if isinstance(rec, dict) and rec.get("operation") != "correct_batches" and rec.get("key_added"):
            inputs.add(str(rec["key_added"]))
    inputs.discard(None)
    key = outputs[0]
    previous = records.get(key)
    owned = isinstance(previous, dict) and previous.get("operation") == "correct_batches"
    written = set(json.loads(previous["layers"])) if owned and isinstance(previous.get("layers"), str) else set()
    for out in outputs:
        if out in inputs:
            raise ValueError(f"key_added={key!r} would write {out!r}, an input of the model (its counts, validity or "
                             "mask layer) or the output of another countsdiff-sc step; choose another key_added.")
        if out not in written:  # a layer the earlier run under this key wrote is ours to replace
            check_writable(adata, out, "layers")
    for uns_key in (f"{key}_retention", f"{key}_retention_by_stratum"):
        if uns_key in adata.uns and not owned:
            raise ValueError(f"adata.uns[{uns_key!r}] already exists and was not written by correct_batches; refusing "
                             "to overwrite it. Pass another key_added, or delete it first.")


def _block_size(block_size: Any, width: int, batch_size: int) -> int:
    if block_size is None:
        return int(min(MAX_BLOCK, max(min(batch_size, 4096), BLOCK_ENTRIES // max(1, width), 64)))
    return positive_int(block_size, "block_size")


def _stored_entries(counts: Any, n_obs: int, n_vars: int) -> float:
    """Entries the input stores: its non-zeros when sparse (backed included), else every entry."""
    if sp.issparse(counts):
        return float(counts.nnz)
    if is_backed_matrix(counts) and hasattr(counts, "group"):
        return float(counts.group["data"].shape[0])
    return float(n_obs) * n_vars


def _memory_estimate(counts: Any, n_obs: int, n_vars: int, n_samples: int, block: int, n_genes: int,
                     batch_size: int, passes: int) -> float:
    """Bytes held at once: the output layers (CSR, twice while they are assembled) and one block's working arrays.

    The output's stored entries are taken as twice the input's (restoration fills some zeros), at most every entry.
    """
    entries = min(float(n_obs) * n_vars, 2.0 * _stored_entries(counts, n_obs, n_vars))
    per_entry = 8.0 + (16.0 if n_samples > 1 else 0.0)  # int32 value + int32 column; float32 mean and sd
    output = 2.0 * (entries * per_entry + 8.0 * (n_obs + 1))
    working = float(min(block, n_obs)) * max(n_vars, n_genes) * BYTES_PER_BLOCK_ENTRY
    chains = float(batch_size) * n_genes * 4.0 * 16 * passes  # chain states and the network's activations
    return output + working + chains


class _Writer:
    """The corrected blocks assembled into CSR layers: int32 values (int64 when a count exceeds the int32 range)
    and, with several draws, float32 mean and spread with the mean's sparsity."""

    def __init__(self, n_obs: int, n_vars: int, spread: bool):
        self.shape, self.spread = (n_obs, n_vars), spread
        self.data: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.nnz = np.zeros(n_obs + 1, dtype=np.int64)
        self.stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.stat_nnz = np.zeros(n_obs + 1, dtype=np.int64)
        self.rows = 0
        self.wide = False

    def add(self, counts: np.ndarray, mean: np.ndarray | None, sd: np.ndarray | None) -> None:
        if counts.size and int(counts.max()) > INT32_MAX:
            self.wide = True
        r, c = np.nonzero(counts)
        n = counts.shape[0]
        self.nnz[self.rows + 1:self.rows + n + 1] = np.bincount(r, minlength=n)
        self.indices.append(c.astype(np.int32))
        values = counts[r, c]
        self.data.append(values if self.wide else values.astype(np.int32))
        if self.spread:
            rm, cm = np.nonzero(mean)
            self.stat_nnz[self.rows + 1:self.rows + n + 1] = np.bincount(rm, minlength=n)
            self.stats.append((cm.astype(np.int32), mean[rm, cm].astype(np.float32), sd[rm, cm].astype(np.float32)))
        self.rows += n

    def finish(self) -> list[sp.csr_matrix]:
        dtype = np.int64 if self.wide else np.int32
        data = np.concatenate([d.astype(dtype, copy=False) for d in self.data]) if self.data else np.zeros(0, dtype)
        self.data = []
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32)
        self.indices = []
        index_type = np.int32 if data.size <= INT32_MAX else np.int64
        out = [sp.csr_matrix((data, indices.astype(index_type, copy=False),
                              np.cumsum(self.nnz).astype(index_type)), shape=self.shape)]
        if self.spread:
            cols = np.concatenate([s[0] for s in self.stats]) if self.stats else np.zeros(0, np.int32)
            mean = np.concatenate([s[1] for s in self.stats]) if self.stats else np.zeros(0, np.float32)
            sd = np.concatenate([s[2] for s in self.stats]) if self.stats else np.zeros(0, np.float32)
            self.stats = []
            ptr = np.cumsum(self.stat_nnz).astype(np.int32 if cols.size <= INT32_MAX else np.int64)
            out += [sp.csr_matrix((mean, cols, ptr), shape=self.shape),
                    sp.csr_matrix((sd, cols.copy(), ptr.copy()), shape=self.shape)]
        return out

