"""Library-size normalisation with a log transform (``log_normalize``), the feature space of the metrics and plots."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .. import _utils

__all__ = ["log_normalize"]


def log_normalize(x: Any, target_sum: float = 1e4, *, keep_sparse: bool = False) -> np.ndarray | sp.csr_matrix:
    """Scale every cell to ``target_sum`` counts and take ``log1p``: ``log(1 + target_sum * x_ig / sum_g x_ig)``.

    This is the transform behind the package's embeddings and distances (the PCA of the generation and imputation
    metrics, the plots, DICE's preprocessing): dividing by the cell's library removes sequencing depth, and the log
    makes the variance of a gene roughly independent of its mean, as in ``scanpy.pp.normalize_total`` followed by
    ``scanpy.pp.log1p``. It is exposed so that a user's own analysis reads data in the same space the package
    scores it in. Cells without counts stay all zero. The input is not modified; the result is float64.

    Parameters
    ----------
    x
        Cells x genes matrix of counts (or of non-negative count-like values such as an imputed layer): a dense
        array, a scipy sparse matrix, or the on-disk matrix of a backed AnnData (read whole). Pass ``adata.X`` or
        ``adata.layers[...]``, not the AnnData itself.
    target_sum
        Total of every cell after scaling; positive and finite (10,000 by default, scanpy's usual choice).
    keep_sparse
        For sparse input, return a CSR matrix (the zeros stay zeros, so memory stays proportional to the stored
        entries); otherwise the result is a dense array.

    Returns
    -------
    numpy.ndarray or scipy.sparse.csr_matrix
        float64 matrix of ``x``'s shape; CSR only with ``keep_sparse=True`` and sparse input.

    Raises
    ------
    TypeError
        If ``x`` is an AnnData object (pass its ``X`` or a layer).
    ValueError
        If ``x`` is not two-dimensional, not numeric, holds negative or non-finite values, or ``target_sum`` is
        not a positive finite number.

    Examples
    --------
    >>> import numpy as np
    >>> import countsdiff_sc as cds
    >>> counts = np.array([[1, 3], [0, 0], [2, 2]])
    >>> cds.pp.log_normalize(counts, target_sum=4)
    array([[0.69314718, 1.38629436],
           [0.        , 0.        ],
           [1.09861229, 1.09861229]])
    >>> import scipy.sparse as sp
    >>> cds.pp.log_normalize(sp.csr_matrix(counts), target_sum=4, keep_sparse=True).nnz
    4
    """
    if isinstance(x, ad.AnnData):
        raise TypeError(
            "log_normalize takes a matrix; pass adata.X or adata.layers['<counts layer>'], not the AnnData."
        )
    if isinstance(target_sum, bool) or not isinstance(target_sum, (int, float, np.integer, np.floating)):
        raise ValueError(f"target_sum must be a positive number, got {target_sum!r}.")
    if not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(f"target_sum must be a positive finite number (e.g. 1e4), got {target_sum!r}.")
    if _utils.is_backed_matrix(x):
        x = x[:]
    if not sp.issparse(x):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a cells x genes matrix (2-D); got an array of shape {x.shape}.")
    values = _utils.stored_values(x)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"x has dtype {values.dtype}; expected a numeric matrix of counts.")
    if values.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        if n_bad:
            raise ValueError(
                f"x holds {n_bad} NaN or infinite value(s); replace them (e.g. with 0) before normalising."
            )
    n_negative = int(np.count_nonzero(values < 0))
    if n_negative:
        raise ValueError(
            f"x holds {n_negative} negative value(s); log_normalize expects counts. Clip them (np.clip(x, 0, None)) "
            "or pass the raw counts layer."
        )
    return _utils.log_normalize(x, float(target_sum), keep_sparse=keep_sparse)
