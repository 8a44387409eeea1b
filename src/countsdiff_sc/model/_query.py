"""A user's object prepared for an inference verb: genes matched by name, counts and conditions checked.

Every verb that reads cells from a new AnnData (``impute``, the expression methods, the CLI) goes through
:func:`prepare_query`, so the rules hold everywhere:

* genes are matched by **name**: the query is read in the model's gene order whatever its own order; genes the model
  does not know are ignored (one info line) and keep their observed values in the outputs; model genes missing from
  the query, or duplicated gene names, are an error that says how many and which;
* the counts must be counts (non-negative, finite, integral), checked in blocks of cells at call time (a matrix
  normalised in place after ``setup_anndata`` is caught here);
* labels and covariates must be categories the model knows, without missing values; a vector condition must be
  finite.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from countsdiff_sc._utils import get_matrix

from ._conditions import ConditionSpace
from ._results import check_cells, check_gene_names, gene_positions, is_mudata, take_columns
from ._setup import check_condition_obsm, check_obs_column

logger = logging.getLogger(__name__)

__all__ = ["Query", "check_conditions", "prepare_query"]


@dataclass
class Query:
    """A user's object ready for the chains.

    Attributes
    ----------
    data
        The object the model reads (registered with the model's setup; the model's genes in the model's order):
        the user's own object when its genes already are exactly the model's, else a lean copy.
    target
        The user's AnnData (or RNA modality of a MuData) that receives the results, in its own gene order.
    genes
        Column of ``target`` holding each model gene.
    aligned
        Whether ``target``'s columns are exactly the model's genes in order (then ``data`` reads ``target``).
    valid_missing
        The model has a validity layer that the user's object lacks: ``data`` trusts every entry instead.
    """

    data: Any
    target: ad.AnnData
    genes: np.ndarray
    aligned: bool
    valid_missing: bool = False

    def to_target(self, values: np.ndarray, fill: np.ndarray | None) -> np.ndarray:
        """Put a result in model gene order (last axis) into the target's gene order.

        Genes of the target that the model does not know take ``fill`` (broadcast against the result), e.g. the
        observed counts.
        """
        if self.aligned:
            return values
        out = np.empty((*values.shape[:-1], self.target.n_vars), dtype=values.dtype)
        out[...] = fill
        out[..., self.genes] = values
        return out


def prepare_query(model: Any, adata: Any, carry_layers: tuple[str, ...] = ()) -> Query:
    """Validate a user's object for an inference verb of ``model`` (see the module docstring).

    Parameters
    ----------
    model
        A CountsDiffModel.
    adata
        The user's AnnData or MuData, or None for the model's own training data.
    carry_layers
        Layers of the user's object the verb also reads (e.g. the mask), carried into a realigned copy.

    Returns
    -------
    The prepared :class:`Query`.
    """
    setup_args = model.registry_["setup_args"]
    rna_mod = (setup_args.get("modalities") or {}).get("rna_layer")
    if adata is None:
        if model.adata is None:
            raise ValueError("This model was loaded without its training data, so there are no default cells: pass "
                             "the AnnData to work on (or load the model with CountsDiffModel.load(path, adata=...)).")
        adata = model.adata
    check_cells(adata)
    if rna_mod is not None:
        return _mudata_query(model, adata, rna_mod)
    if is_mudata(adata):
        raise ValueError("This model was set up with setup_anndata: pass an AnnData (e.g. mdata.mod['rna']), not a "
                         "MuData.")
    check_gene_names(adata.var_names, "adata")
    var_names = getattr(model, "var_names_", None)
    missing = [setup_args.get(k) for k in ("mask_layer", "valid_layer")]
    missing = [name for name in missing if name is not None and name not in adata.layers]
    if var_names is None or np.array_equal(np.asarray(adata.var_names), var_names):
        genes, aligned, data = np.arange(adata.n_vars), True, adata
        if missing:  # new cells without the model's mask / validity layers: a copy with neutral ones
            data = _realigned(adata, genes, setup_args, carry_layers)
    else:
        genes = gene_positions(adata.var_names, var_names, model.module.n_genes, "adata")
        if adata.n_vars > len(genes):
            logger.info("%d genes of adata are not among the model's %d genes: they are ignored and keep their "
                        "observed values.", adata.n_vars - len(genes), len(genes))
        aligned, data = False, _realigned(adata, genes, setup_args, carry_layers)
    check_conditions(model.condition_space, data, getattr(model, "condition_table_", None))
    data = model._validate_anndata(data)
    valid = setup_args.get("valid_layer")
    if valid is not None and valid in missing:
        logger.info("adata has no layer %r (the model's validity layer): every entry is trusted. To fill suspected "
                    "dropouts, mark them first (countsdiff_sc.pp.mark_dropouts).", valid)
    return Query(data, adata, genes, aligned, valid_missing=valid is not None and valid in missing)


def _realigned(adata: ad.AnnData, genes: np.ndarray, setup_args: dict, carry: tuple[str, ...]) -> ad.AnnData:
    """A lean AnnData with the model's genes in order: the registered counts, validity and mask layers (an all-False
    mask and an all-True validity layer when ``adata`` has none), the carried layers, obs and obsm of ``adata`` (no
    other data is copied)."""
    layer = setup_args.get("layer")
    x = get_matrix(adata, layer)
    names = [n for n in {setup_args.get("valid_layer"), setup_args.get("mask_layer"), *carry}
             if n is not None and n in adata.layers]
    layers = {n: take_columns(adata.layers[n], genes) for n in names}
    heldout = setup_args.get("mask_layer")
    if heldout is not None and heldout not in layers:  # the registered mask of the training data: none held out here
        layers[heldout] = sp.csr_matrix((adata.n_obs, len(genes)), dtype=bool)
    valid = setup_args.get("valid_layer")
    if valid is not None and valid not in layers:  # no dropouts marked on these cells: every entry trusted
        layers[valid] = np.ones((adata.n_obs, len(genes)), dtype=bool)
    out = ad.AnnData(X=None if layer else take_columns(x, genes), obs=adata.obs.copy(), obsm=dict(adata.obsm.items()),
                     var=pd.DataFrame(index=adata.var_names[genes]))
    for n, v in layers.items():
        out.layers[n] = v
    if layer:
        out.layers[layer] = take_columns(x, genes)
    return out


def check_conditions(space: ConditionSpace, adata: ad.AnnData, table: np.ndarray | None = None) -> None:
    """The checks of setup on the condition columns (present, no missing values) and the vector condition (present,
    2-d, finite), plus: labels and covariates the model knows."""
    columns = ([(space.labels_key, space.label_categories)] if space.use_labels else []) + list(
        space.covariate_categories.items())
    for key, known in columns:
        check_obs_column(adata.obs, key, "adata.obs")
        unseen = sorted(set(adata.obs[key].astype(str)) - set(known))
        if unseen:
            raise ValueError(f"adata.obs[{key!r}] has values the model was not trained on: {unseen[:5]}. Known "
                             f"values: {known}. Drop those cells, or train a model that includes them.")
    if table is not None and len(table) and columns:
        codes = np.stack([pd.Categorical(adata.obs[k].astype(str), categories=known).codes
                          for k, known in columns], axis=1)
        space.check_trained(codes, table)
    if space.n_continuous > 0:
        check_condition_obsm(adata, space.obsm_key)


def _mudata_query(model: Any, mdata: Any, rna_mod: str) -> Query:
    """A MuData (or the AnnData of its RNA modality) for a model set up with ``setup_mudata``."""
    import mudata as md

    if not is_mudata(mdata):
        mdata = md.MuData({rna_mod: mdata})  # holds the user's AnnData itself (no copy)
    if rna_mod not in mdata.mod:
        raise KeyError(f"The model reads counts from modality {rna_mod!r}; this MuData has {list(mdata.mod)}.")
    rna = mdata.mod[rna_mod]
    check_gene_names(rna.var_names, f"mdata.mod[{rna_mod!r}]")
    var_names = getattr(model, "var_names_", None)
    if var_names is not None and not np.array_equal(np.asarray(rna.var_names), var_names):
        raise ValueError(f"The genes of mdata.mod[{rna_mod!r}] differ from the model's (names or order); select them "
                         "by name first: mdata.mod[...] = rna[:, model.var_names_].copy().")
    if mdata.n_obs != rna.n_obs:
        raise ValueError(f"mdata has {mdata.n_obs} cells but its modality {rna_mod!r} {rna.n_obs}; impute needs every "
                         "cell in the RNA modality.")
    data = model._validate_anndata(mdata)
    return Query(data, rna, np.arange(rna.n_vars), True)
