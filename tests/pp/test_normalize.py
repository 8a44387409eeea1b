"""``pp.log_normalize``: the library-size + log1p transform, dense and sparse alike, with clear input errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import countsdiff_sc as cds


def test_matches_the_formula_by_hand():
    counts = np.array([[1, 3, 0], [0, 0, 0], [5, 0, 5]])
    out = cds.pp.log_normalize(counts, target_sum=10)
    expected = np.array([[np.log(1 + 2.5), np.log(1 + 7.5), 0.0], [0.0, 0.0, 0.0], [np.log(6.0), 0.0, np.log(6.0)]])
    np.testing.assert_allclose(out, expected)
    assert out.dtype == np.float64
    assert counts.dtype.kind == "i" and counts[0, 1] == 3  # the input is untouched


def test_dense_sparse_and_internal_agree(pbmc):
    from countsdiff_sc._utils import log_normalize as internal

    x = pbmc.X
    dense = cds.pp.log_normalize(x)
    kept = cds.pp.log_normalize(x, keep_sparse=True)
    assert sp.isspmatrix_csr(kept) and kept.nnz == x.nnz
    np.testing.assert_allclose(kept.toarray(), dense)
    np.testing.assert_array_equal(dense, internal(x, 1e4))
    # every cell with counts sums to target_sum after undoing the log
    totals = np.expm1(dense).sum(axis=1)
    np.testing.assert_allclose(totals[np.asarray(x.sum(1)).ravel() > 0], 1e4)


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.array([[1.0, -1.0]]), {}, ValueError, "1 negative"),
        (np.array([[1.0, np.nan]]), {}, ValueError, "NaN or infinite"),
        (np.array([1.0, 2.0]), {}, ValueError, "2-D"),
        (np.array([["a", "b"]]), {}, ValueError, "numeric"),
        (np.ones((2, 2)), {"target_sum": 0}, ValueError, "positive finite"),
        (np.ones((2, 2)), {"target_sum": np.inf}, ValueError, "positive finite"),
        (np.ones((2, 2)), {"target_sum": "1e4"}, ValueError, "positive number"),
        (ad.AnnData(np.ones((2, 2))), {}, TypeError, "adata.X"),
    ],
)
def test_bad_input_says_how_to_fix(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        cds.pp.log_normalize(x, **kwargs)
