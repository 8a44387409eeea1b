from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import r2_score

from countsdiff_sc.metrics import bias, mae, pearson, pointwise_metrics, r2, rmse, spearman


@pytest.fixture
def triple(counts, rng):
    mask = rng.random(counts.shape) < 0.4
    imputed = np.where(mask, counts + rng.normal(0.3, 2.0, counts.shape), counts)
    return counts, imputed, mask


@pytest.mark.parametrize("sparse", [False, True])
def test_error_metrics_match_numpy_formulas(triple, sparse):
    true, imputed, mask = triple
    e = (imputed - true)[mask]
    t = true[mask].astype(np.float64)
    args = (sp.csr_matrix(true), sp.csr_matrix(imputed), sp.csr_matrix(mask)) if sparse else (true, imputed, mask)
    assert rmse(*args) == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
    assert mae(*args) == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    assert bias(*args) == pytest.approx(np.mean(e), rel=1e-12)
    assert r2(*args) == pytest.approx(1 - np.sum(e**2) / np.sum((t - t.mean()) ** 2), rel=1e-12)
    assert r2(*args) == pytest.approx(r2_score(t, imputed[mask]), rel=1e-12)


def test_mask_none_uses_every_entry(triple):
    true, imputed, _ = triple
    assert rmse(true, imputed) == pytest.approx(np.sqrt(np.mean((imputed - true) ** 2)))


def test_per_cell_correlations_match_scipy(triple):
    true, imputed, mask = triple
    # integer-valued imputations create ties, which exercises the average-rank convention
    imputed = np.where(mask, np.rint(np.clip(imputed, 0, None)), imputed)
    rhos, rs = [], []
    for i in range(true.shape[0]):
        a, b = true[i, mask[i]], imputed[i, mask[i]]
        if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        rhos.append(spearmanr(a, b).statistic)
        rs.append(pearsonr(a, b).statistic)
    assert spearman(true, imputed, mask) == pytest.approx(np.mean(rhos), rel=1e-10)
    assert pearson(true, imputed, mask) == pytest.approx(np.mean(rs), rel=1e-10)


def test_correlations_skip_undefined_cells():
    true = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 1.0], [1.0, 2.0, 3.0, 9.0]])
    imputed = np.array([[1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, False], [True, True, True, False], [True, False, False, False]])
    # row 1: constant true values -> skipped; row 2: a single held-out entry -> skipped
    expected = spearmanr([1, 2, 3], [1, 3, 2]).statistic
    assert spearman(true, imputed, mask) == pytest.approx(expected)
    assert np.isfinite(pearson(true, imputed, mask))


def test_all_cells_undefined_gives_nan_with_warning():
    true = np.ones((3, 4))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert np.isnan(spearman(true, true + np.arange(4)))


def test_perfect_imputation(triple):
    true, _, mask = triple
    out = pointwise_metrics(true, true.copy(), mask)
    assert out["rmse"] == 0 and out["mae"] == 0 and out["bias"] == 0
    assert out["r2"] == 1 and out["spearman"] == pytest.approx(1) and out["pearson"] == pytest.approx(1)


def test_pointwise_metrics_agree_with_single_functions(triple):
    out = pointwise_metrics(*triple)
    for name, fn in {
        "rmse": rmse,
        "mae": mae,
        "bias": bias,
        "r2": r2,
        "spearman": spearman,
        "pearson": pearson,
    }.items():
        assert out[name] == pytest.approx(fn(*triple), rel=1e-12)


def test_values_outside_the_mask_are_ignored(triple):
    true, imputed, mask = triple
    polluted = np.where(mask, imputed, np.nan)
    assert rmse(true, polluted, mask) == pytest.approx(rmse(true, imputed, mask))


@pytest.mark.parametrize(
    ("true_shape", "imputed_shape", "mask_shape"),
    [((5, 4), (5, 3), None), ((5, 4), (4, 4), None), ((5, 4), (5, 4), (5, 3))],
)
def test_shape_mismatch_raises(true_shape, imputed_shape, mask_shape):
    mask = None if mask_shape is None else np.ones(mask_shape, bool)
    with pytest.raises(ValueError, match="shape"):
        rmse(np.zeros(true_shape), np.zeros(imputed_shape), mask)


def test_bad_inputs_raise():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match="selects no entries"):
        rmse(x, x, np.zeros_like(x, bool))
    with pytest.raises(ValueError, match="NaN"):
        rmse(x, np.full_like(x, np.nan), np.ones_like(x, bool))
    with pytest.raises(ValueError, match="boolean"):
        rmse(x, x, np.full(x.shape, 2))
