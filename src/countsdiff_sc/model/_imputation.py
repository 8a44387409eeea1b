"""Imputation verb of CountsDiffModel: RePaint over the masked entries of a user's AnnData."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

import anndata as ad
import numpy as np
import torch
from scvi import REGISTRY_KEYS

from countsdiff_sc._utils import (
    as_bool_mask,
    check_counts,
    check_writable,
    get_matrix,
    iter_row_blocks,
    record_params,
    rows_per_block,
    to_dense,
)
from countsdiff_sc.diffusion import repaint
from countsdiff_sc.module import CONDITION_KEY, VALID_KEY

from ._chains import ChainSettings, positive_int, run_batches
from ._docs import fill_doc
from ._query import Query, prepare_query

__all__ = ["ImputationMixin"]


class ImputationMixin:
    """``impute`` of CountsDiffModel (needs ``module``, ``condition_space``, ``device`` and the scvi-tools base)."""

    @torch.inference_mode()
    def impute(
        self,
        adata: ad.AnnData | None = None,
        mask_layer: str = "countsdiff_mask",
        n_samples: int = 5,
        n_steps: int = 50,
        guidance: float | Mapping[str, float] = 0.5,
        attrition: float = 0.02,
        attrition_kind: Literal["rescale", "cap", "constant", "none"] = "rescale",
        resample_jump: int | None = None,
        resample_iters: int = 1,
        point_estimate: Literal["mean", "median"] = "mean",
        batch_size: int = 2048,
        seed: int | None = None,
        key_added: str = "countsdiff_imputed",
        samples_key: str = "countsdiff_samples",
        store_samples: bool = True,
        precision: Literal["32", "bf16", "16"] = "32",
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Impute held-out entries with RePaint (CountsDiff Sec. 3.6), drawing ``n_samples`` imputations per cell.

        Masked entries follow the reverse process driven by the network; every other entry follows the same step
        driven by its known missing count ``x_obs - x_t``, so it is ``Binomial(x_obs, p(s))`` (the noised ground
        truth) at every step and ``x_obs`` at the end. Entries marked invalid in the registered
        ``valid_layer`` (suspected dropouts) are never imputed nor scored: they enter the network exactly as
        during training (as the zeros they are for the MLP; masked out as keys for the transformer). Only cells
        with at least one masked entry are processed.

        Parameters
        ----------
        adata
            AnnData with the training genes (set up with the model's registry automatically); the training data
            when None. A view is turned into an actual AnnData first (scvi-tools behaviour). A backed AnnData
            (``anndata.read_h5ad(path, backed="r")``) works: its counts are read from disk in blocks of cells, and the
            results go to in-memory ``layers`` / ``obsm`` of the object (the file is not modified; save them with
            ``adata.write_h5ad(new_path)`` or use the returned arrays).
        mask_layer
            Boolean layer, True where the value is held out (see :func:`countsdiff_sc.pp.mask_mcar`).
        n_samples
            Number of RePaint draws per cell (the paper averages 5).
        n_steps
            Number of reverse transitions (the paper uses 20; quality against steps:
            ``benchmarks/results/steps.md``).
        guidance
            Guidance strength (paper's best scRNA setting: 0.5), or per-condition strengths as a dict (see
            :meth:`sample`); ignored for an unconditional model.
        %(attrition)s
            The paper's best scRNA setting is ReMDM-rescale ``eta = 0.02``.
        resample_jump, resample_iters
            RePaint resampling: windows of ``resample_jump`` transitions run ``resample_iters`` times, re-noising
            by thinning back to the window start in between (not a restart; see
            :func:`~countsdiff_sc.diffusion.repaint`).
        point_estimate
            ``"mean"`` or ``"median"`` of the draws on masked entries.
        batch_size
            Rows processed at once (cells times draws).
        %(seed)s
        key_added
            Layer receiving the point estimate (float32; observed entries copied unchanged).
        samples_key
            obsm key receiving the draws (int32, ``n_obs x n_samples x n_vars``) when ``store_samples``.
        store_samples
            Store the draws (memory: 4 bytes x n_obs x n_samples x n_vars); set False for large data. Without
            them, memory beyond the inputs is the float32 output (4 bytes per entry), the dense boolean mask (and
            validity layer; 1 byte per entry) and a working set bounded by ``batch_size``.
        %(precision)s
        %(progress)s

        Returns
        -------
        ``(imputed, samples)``: the float32 matrix written to ``layers[key_added]`` and the int32 draws (or None).
        The settings are recorded in ``uns["countsdiff"][key_added]``.

        Raises
        ------
        KeyError
            The mask layer is missing.
        ValueError
            Wrong mask shape or non-boolean mask, genes that do not match the model, bad settings, or a
            ``key_added`` / ``samples_key`` that names a layer / obsm entry the user owns (never overwritten).

        Warns
        -----
        UserWarning
            Masked entries that are invalid in the validity layer (they are dropped from the mask), or cells whose
            valid entries are all masked (their imputation then rests on their conditions alone).
        """
        strengths = self.condition_space.guidance_strengths(guidance)
        settings = ChainSettings(n_steps, attrition_kind, attrition, precision, self.device, seed)
        n_draws = positive_int(n_samples, "n_samples")
        batch_size = positive_int(batch_size, "batch_size")
        resample_iters = positive_int(resample_iters, "resample_iters")
        if resample_jump is not None:
            resample_jump = positive_int(resample_jump, "resample_jump")
        if point_estimate not in ("mean", "median"):
            raise ValueError(f"point_estimate must be 'mean' or 'median', got {point_estimate!r}.")
        query = prepare_query(self, adata, carry_layers=(mask_layer,))
        manager = self.get_anndata_manager(query.data, required=True)
        source = query.target if query.aligned else query.data  # holds the mask in the model's gene order
        mask, valid_all = _imputation_targets(source, manager, mask_layer)
        check_writable(query.target, key_added, "layers")
        if store_samples:
            check_writable(query.target, samples_key, "obsm")
        x_all = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        codes = self.condition_space.codes(manager)
        cont_all = None
        if CONDITION_KEY in manager.data_registry:
            cont_all = np.asarray(to_dense(manager.get_from_registry(CONDITION_KEY)), dtype=np.float32)
        cells = np.flatnonzero(mask.any(axis=1))
        imputed = _observed_counts(x_all, mask.shape)
        samples = None
        if store_samples:
            samples = np.empty((mask.shape[0], n_draws, mask.shape[1]), dtype=np.int32)
            samples[:] = imputed[:, None, :]
        module, device = self.module, self.device

        def rows(array: np.ndarray | None, idx: np.ndarray) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.repeat(array[idx], n_draws, axis=0)).to(device)

        def chain(sl: slice, show: bool) -> torch.Tensor:
            idx = cells[sl]
            x_obs = rows(to_dense(x_all[idx], np.float32), np.arange(len(idx)))
            cat_b, cont_b, valid_b = rows(codes, idx), rows(cont_all, idx), rows(valid_all, idx)

            def rate_fn(x, t):
                return module.rate(x, t, cat_b, cont_b, valid=valid_b, guidance=strengths)

            return repaint(settings.wrap(rate_fn), x_obs, rows(mask, idx), module.schedule, settings.n_steps,
                           attrition_kind=settings.attrition_kind, attrition=settings.attrition,
                           resample_jump=resample_jump, resample_iters=resample_iters,
                           generator=settings.generator, progress=show)

        for sl, draws in run_batches(module, len(cells), max(1, batch_size // n_draws), chain, progress, "imputing"):
            idx = cells[sl]
            draws = draws.reshape(len(idx), n_draws, -1)
            est = draws.mean(axis=1) if point_estimate == "mean" else np.median(draws, axis=1)
            imputed[idx] = np.where(mask[idx], est, imputed[idx])
            if samples is not None:
                samples[idx] = draws.astype(np.int32)
        imputed, samples = _write(query, imputed, samples, key_added, samples_key, self.registry_["setup_args"])
        record_params(query.target, key_added, {
            "mask_layer": mask_layer, "key_added": key_added, "samples_key": samples_key if store_samples else None,
            "n_samples": n_draws, **settings.record(), "guidance": guidance, "resample_jump": resample_jump,
            "resample_iters": resample_iters, "point_estimate": point_estimate, "n_cells_imputed": len(cells),
            "n_entries_imputed": int(mask.sum()),
        })
        return imputed, samples

    impute = fill_doc(impute)


def _observed_counts(x: object, shape: tuple[int, int]) -> np.ndarray:
    """The registered counts as a float32 array, read (backed matrices too) and checked in blocks of rows.

    With the stored draws it is the only array of size n_obs x n_vars that ``impute`` makes (besides the boolean mask
    and validity layer).
    """
    out = np.empty(shape, dtype=np.float32)
    for start, block in iter_row_blocks(x, rows_per_block(shape[1])):
        out[start : start + block.shape[0]] = to_dense(block, np.float32)
        check_counts(out[start : start + block.shape[0]], where="the counts of the cells to impute")
    return out


def _write(query: Query, imputed: np.ndarray, samples: np.ndarray | None, key_added: str, samples_key: str,
           setup_args: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Write the results into the user's object, in its gene order (genes the model does not know keep their counts)."""
    if not query.aligned:
        observed = to_dense(get_matrix(query.target, setup_args.get("layer")), np.float32)
        imputed = query.to_target(imputed, observed)
        samples = None if samples is None else query.to_target(samples, observed[:, None, :].astype(np.int32))
    query.target.layers[key_added] = imputed
    if samples is not None:
        query.target.obsm[samples_key] = samples
    return imputed, samples


def _imputation_targets(adata: ad.AnnData, manager, mask_layer: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The entries to impute (the mask less invalid entries) and the validity layer, with the warnings they need."""
    if mask_layer not in adata.layers:
        raise KeyError(
            f"Mask layer {mask_layer!r} not found; available layers: {sorted(adata.layers.keys())}. Create one "
            "with countsdiff_sc.pp.mask_mcar / mask_mnar, or pass mask_layer=."
        )
    mask = as_bool_mask(adata.layers[mask_layer], adata.shape, f"adata.layers[{mask_layer!r}]")
    valid_all = None
    if VALID_KEY in manager.data_registry:
        valid_all = as_bool_mask(manager.get_from_registry(VALID_KEY), adata.shape, "the registered valid layer")
        bad = mask & ~valid_all
        if bad.any():
            warnings.warn(
                f"{int(bad.sum())} masked entries are marked invalid (suspected dropouts) in the valid layer; "
                "they are left out of the imputation and keep their observed value.",
                UserWarning,
                stacklevel=3,
            )
            mask &= valid_all
    n_valid = valid_all.sum(1) if valid_all is not None else np.full(adata.n_obs, adata.n_vars)
    all_masked = (mask.sum(1) == n_valid) & (n_valid > 0)
    if all_masked.any():
        warnings.warn(
            f"{int(all_masked.sum())} cells have all their valid entries masked; their imputation is a "
            "generation from their conditions alone.",
            UserWarning,
            stacklevel=3,
        )
    return mask, valid_all
