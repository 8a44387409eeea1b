"""Pure helpers of the perturbation benchmark: the simulated perturbation keeps integer counts and its truth, the
DEG ranking, the scores and the mean-shift baseline, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.perturbation import mean_shift, r2, random_round, setting_name, simulate_perturbation, top_degs


@pytest.fixture
def cells():
    rng = np.random.default_rng(0)
    labels = np.repeat(["A", "B", "C"], [400, 300, 301])
    base = rng.gamma(2.0, 2.0, (3, 60))
    x = rng.poisson(base[np.searchsorted(["A", "B", "C"], labels)])
    return x, labels


def test_perturbation_is_integer_half_per_type_and_keeps_controls(cells):
    x, labels = cells
    sim = simulate_perturbation(x, labels, np.random.default_rng(1), n_shared=10, n_specific=5)
    counts, stim, lfc = sim["counts"], sim["stimulated"], sim["lfc"]
    assert counts.dtype == np.int64 and counts.min() >= 0
    np.testing.assert_array_equal(counts[~stim], x[~stim])  # the control cells are the untouched truth
    for t, n in zip(["A", "B", "C"], [400, 300, 301], strict=True):
        assert stim[labels == t].sum() == n // 2
    assert list(lfc.index) == ["A", "B", "C"] and lfc.shape == (3, 60)
    program = lfc.loc["A"].to_numpy()[sim["shared"]] / sim["strength"]["A"]
    assert np.all(program != 0)
    for t in lfc.index:
        row = lfc.loc[t].to_numpy()
        # the shared program, scaled by the type's strength (own programs use other genes)
        np.testing.assert_allclose(row[sim["shared"]] / sim["strength"][t], program, rtol=1e-12)
        assert np.count_nonzero(row) == 10 + 5
        untouched = row == 0
        cells_t = (labels == t) & stim
        np.testing.assert_array_equal(counts[cells_t][:, untouched], x[cells_t][:, untouched])
        down = row < 0
        assert np.all(counts[cells_t][:, down] <= x[cells_t][:, down])  # thinning only removes molecules


def test_perturbation_acts_multiplicatively_on_the_mean():
    rng = np.random.default_rng(3)
    labels = np.repeat(["A"], 20_000)
    x = rng.poisson(np.full((20_000, 40), 6.0))
    sim = simulate_perturbation(x, labels, np.random.default_rng(4), n_shared=12, n_specific=6)
    fold = 2.0 ** sim["lfc"].loc["A"].to_numpy()
    stim = sim["stimulated"]
    ratio = sim["counts"][stim].mean(axis=0) / x[~stim].mean(axis=0)
    np.testing.assert_allclose(ratio, fold, rtol=0.05)


def test_degs_scores_and_baselines_by_hand():
    rng = np.random.default_rng(5)
    ctrl = rng.normal(0.0, 1.0, (200, 6))
    stim = ctrl + np.array([0.0, 3.0, 0.0, -2.0, 0.0, 0.5])
    assert list(top_degs(ctrl, stim, n=3)) == [1, 3, 5]
    assert r2(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert r2(np.ones(3), np.array([1.0, 2.0, 3.0])) == 0.0
    x = np.array([[10.0, 10.0], [10.0, 10.0], [5.0, 15.0], [5.0, 15.0], [1.0, 1.0], [1.0, 1.0]])
    labels = np.array(["A", "A", "A", "A", "B", "B"])
    stim = np.array([False, False, True, True, False, True])
    ratio = mean_shift(x, labels, stim, held_type="B")  # only A: ratios of counts per 10,000
    expected = (np.array([2500.0, 7500.0]) + 0.1) / (np.array([5000.0, 5000.0]) + 0.1)
    np.testing.assert_allclose(ratio, expected)
    draws = random_round(np.full(100_000, 2.3), np.random.default_rng(6))
    assert set(np.unique(draws)) == {2.0, 3.0} and draws.mean() == pytest.approx(2.3, abs=0.01)
    assert setting_name(0.5, None) == "t_start=0.5"
    assert setting_name(None, "auto") == "retention=auto"
    assert setting_name(0.5, "auto") == "retention=auto, t_start=0.5"
