"""Reading a user's cells in the model's gene order, and building the AnnData a generating verb returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from countsdiff_sc._utils import check_counts, get_matrix, is_backed_matrix, to_dense

__all__ = ["check_cells", "check_gene_names", "counts_in_model_order", "gene_positions", "generated_adata", "is_mudata",
           "take_columns"]


def is_mudata(obj: object) -> bool:
    """Whether ``obj`` is a MuData (its ``mod`` is a mapping of modalities; a DataFrame's ``mod`` is a method)."""
    return isinstance(getattr(obj, "mod", None), Mapping)


def check_cells(obj: object, name: str = "adata") -> None:
    """Refuse what is not an AnnData / MuData, or an object without cells, with a message that says what to pass."""
    if not (isinstance(obj, ad.AnnData) or is_mudata(obj)):
        raise TypeError(f"{name} must be an AnnData (or a MuData for a model set up with setup_mudata), got "
                        f"{type(obj).__name__}: e.g. anndata.AnnData(X=counts, var=pd.DataFrame(index=genes)).")
    if obj.n_obs == 0:
        raise ValueError(f"{name} has no cells (shape {tuple(obj.shape)}); check the filtering that produced it.")


def check_gene_names(var_names: pd.Index, where: str) -> None:
    """Refuse duplicated gene names: genes are matched by name, so each name must be one gene."""
    if not var_names.is_unique:
        dup = var_names[var_names.duplicated()].unique()
        raise ValueError(
            f"{where} has {len(dup)} duplicated gene names (e.g. {list(dup[:5])}); genes are matched by name. Make "
            "them unique first, e.g. adata.var_names_make_unique() (gene symbols often repeat; Ensembl ids do not)."
        )


def take_columns(x: object, columns: np.ndarray) -> object:
    """``x[:, columns]`` for dense, sparse and backed matrices (h5py reads columns only in increasing order)."""
    if not is_backed_matrix(x):
        return x[:, columns]
    order = np.argsort(columns)
    return x[:, columns[order]][:, np.argsort(order)]


def gene_positions(adata_var_names: pd.Index, var_names: Sequence[str] | None, n_genes: int, where: str) -> np.ndarray:
    """Column of each model gene in ``adata_var_names`` (genes matched by name; extra genes are ignored).

    Parameters
    ----------
    adata_var_names
        ``var_names`` of the user's object.
    var_names
        The model's genes in order (None for a model saved without them: then the counts must have ``n_genes``
        columns and are taken in their order).
    n_genes
        Number of genes of the model.
    where
        Name of the user's object in messages.

    Returns
    -------
    Integer positions, one per model gene.

    Raises
    ------
    ValueError
        Model genes missing from the object (the message counts them and names a few), or, without the model's
        gene names, a different number of genes.
    """
    check_gene_names(adata_var_names, where)
    if var_names is None:
        if len(adata_var_names) != n_genes:
            raise ValueError(f"{where} has {len(adata_var_names)} genes, the model {n_genes}.")
        return np.arange(n_genes)
    pos = adata_var_names.get_indexer(pd.Index(var_names))
    if (pos < 0).any():
        raise ValueError(
            f"{int((pos < 0).sum())} of the model's {len(var_names)} genes are missing from {where} "
            f"(e.g. {np.asarray(var_names)[pos < 0][:5].tolist()})."
        )
    return pos


def counts_in_model_order(
    adata: ad.AnnData,
    layer: str | None,
    cells: np.ndarray,
    var_names: Sequence[str] | None,
    n_genes: int,
    name: str,
    where: str,
) -> np.ndarray:
    """Dense float32 counts of ``cells`` of ``adata`` (called ``name`` in messages) with the model's genes as
    columns, checked to be counts (``where`` names them in that message)."""
    x = to_dense(get_matrix(adata, layer)[cells], np.float32)
    x = x[:, gene_positions(adata.var_names, var_names, n_genes, name)]
    check_counts(x, where=where)
    return x


def model_gene_names(var_names: Sequence[str] | None, n_genes: int) -> list[str]:
    """The model's gene names, or ``gene_0 ... gene_{n-1}`` for a model built without them."""
    return [str(v) for v in var_names] if var_names is not None else [f"gene_{i}" for i in range(n_genes)]


def generated_adata(counts: np.ndarray, obs: pd.DataFrame, var_names: Sequence[str] | None, n_genes: int) -> ad.AnnData:
    """AnnData of generated integer counts (float32 CSR) with the model's genes as ``var_names``."""
    var = pd.DataFrame(index=pd.Index(model_gene_names(var_names, n_genes), dtype=str))
    return ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32, copy=False)), obs=obs, var=var)
