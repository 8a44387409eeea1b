"""Genes are matched by name: align a second AnnData to the genes of a first one (metrics and plots that compare two
objects).

Nothing here imports torch or scvi-tools, so the plots and the metrics share it without loading either.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

__all__ = ["align_genes"]


def _names(adata: ad.AnnData, where: str) -> pd.Index:
    names = pd.Index(adata.var_names.astype(str))
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{where} has {len(dup)} duplicated gene names (e.g. {list(dup[:5])}); genes are matched by name, so each "
            "name must be one gene. Make them unique first (adata.var_names_make_unique())."
        )
    return names


def align_genes(first: Any, second: Any, first_name: str, second_name: str) -> Any:
    """``second`` with its genes in the order of ``first``'s, when both are AnnData objects.

    The two objects must hold the same set of gene names: another order is reordered (a view, nothing is copied or
    modified); names missing on either side are an error that counts them and names a few. When either input is a
    plain matrix there are no names to match, and ``second`` is returned as it is (its columns are then taken in
    the order given; the callers check the number of columns).

    Parameters
    ----------
    first, second
        AnnData objects or matrices.
    first_name, second_name
        Names of the arguments, for the messages.

    Returns
    -------
    ``second``, or the view ``second[:, first.var_names]``.

    Raises
    ------
    ValueError
        Duplicated gene names, or gene sets that differ.

    Examples
    --------
    >>> import numpy as np, anndata as ad
    >>> a = ad.AnnData(np.zeros((2, 3)), var={"g": [0, 1, 2]}); a.var_names = ["x", "y", "z"]
    >>> b = a[:, ["z", "x", "y"]].copy()
    >>> list(align_genes(a, b, "real", "generated").var_names)
    ['x', 'y', 'z']
    """
    if not (isinstance(first, ad.AnnData) and isinstance(second, ad.AnnData)):
        return second
    a = _names(first, first_name)
    b = _names(second, second_name)
    if a.equals(b):
        return second
    only_a, only_b = a.difference(b, sort=False), b.difference(a, sort=False)
    if len(only_a) or len(only_b):
        parts = []
        if len(only_a):
            parts.append(f"{len(only_a)} of the {len(a)} genes of {first_name} are missing from {second_name} "
                         f"(e.g. {list(only_a[:5])})")
        if len(only_b):
            parts.append(f"{len(only_b)} of the {len(b)} genes of {second_name} are missing from {first_name} "
                         f"(e.g. {list(only_b[:5])})")
        if not len(only_a):
            fix = f"subset {second_name} to the genes of {first_name} ({second_name}[:, {first_name}.var_names])"
        else:
            fix = "subset both to their common genes (a[:, a.var_names.intersection(b.var_names)])"
        raise ValueError(f"Genes are matched by name, and {'; '.join(parts)}. Compare the same genes: {fix}.")
    return second[:, np.asarray(a)]
