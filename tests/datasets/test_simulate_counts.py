"""``datasets.simulate_counts`` against the equations of Splatter's model (Zappia et al. 2017)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import countsdiff_sc as cds

LIB = float(np.log(1500))


@pytest.fixture(scope="module")
def sim():
    return cds.datasets.simulate_counts(2000, 300, 4, lib_loc=LIB, lib_scale=0.4, dropout_mid=1.0, seed=3)


def test_structure_and_dropout_bookkeeping(sim):
    assert sim.shape == (2000, 300)
    x, y, drop = sim.X, sim.layers["truth"], sim.layers["dropout"]
    for m in (x, y):
        assert np.array_equal(m, np.round(m)) and m.min() >= 0
    assert drop.dtype == bool
    assert (y >= x).all()
    assert (x[drop] == 0).all() and (y[drop] > 0).all()
    assert np.array_equal(x[~drop], y[~drop])  # dropout is the only difference
    assert list(sim.obs["group"].cat.categories) == ["group1", "group2", "group3", "group4"]
    s = sim.uns["simulation"]
    assert s["dropout_mid"] == 1.0 and s["dropout_shape"] == -1.0 and s["seed"] == 3
    assert s["dropout_rate"] == pytest.approx(drop.sum() / np.count_nonzero(y))
    assert s["zero_fraction_observed"] == pytest.approx(np.mean(x == 0))


def test_dropout_rate_matches_logistic_formula(sim):
    # P(entry zeroed by dropout | mu) = logistic(log mu) * P(Poisson(mu) > 0), dropout independent of the count
    mu = sim.layers["cell_means"].astype(np.float64)
    with np.errstate(divide="ignore"):
        p = 1.0 / (1.0 + np.exp(1.0 * (np.log(mu) - 1.0)))
    expected = p * -np.expm1(-mu)
    drop = sim.layers["dropout"]
    sd = np.sqrt((expected * (1 - expected)).sum())
    assert abs(drop.sum() - expected.sum()) < 4 * sd
    # and within bins of the mean, against the formula
    bins = np.quantile(mu[mu > 0], [0.2, 0.4, 0.6, 0.8])
    which = np.digitize(mu, bins)
    for b in range(5):
        sel = which == b
        assert drop[sel].mean() == pytest.approx(expected[sel].mean(), abs=0.01)


def test_library_sizes_are_log_normal(sim):
    lib = sim.obs["library_size"].to_numpy()
    z = (np.log(lib) - LIB) / 0.4
    assert stats.kstest(z, "norm").pvalue > 0.01
    # the true counts have these libraries as their expected totals
    ratio = sim.layers["truth"].sum(axis=1) / lib
    assert ratio.mean() == pytest.approx(1.0, abs=0.02)


def test_group_means_and_de_factors(sim):
    y = sim.layers["truth"].astype(np.float64)
    lib = sim.obs["library_size"].to_numpy()
    base = sim.var["base_mean"].to_numpy()
    n_de = 0
    for g in sim.obs["group"].cat.categories:
        fac = sim.var[f"de_factor_{g}"].to_numpy()
        n_de += int((fac != 1).sum())
        prop = base * fac / (base * fac).sum()
        cells = (sim.obs["group"] == g).to_numpy()
        observed_prop = (y[cells] / lib[cells, None]).mean(axis=0)
        assert np.corrcoef(np.log(prop), np.log(observed_prop + 1e-6))[0, 1] > 0.9
        assert stats.pearsonr(prop, observed_prop).statistic > 0.98
    # DE genes: a fraction de_prob = 0.1 of the 4 x 300 (group, gene) pairs
    assert abs(n_de - 120) < 4 * np.sqrt(1200 * 0.1 * 0.9)


def test_negative_binomial_variance():
    # one group, fixed library: y_j ~ gamma-Poisson with mean b_j and variance b_j + phi_j^2 b_j^2
    a = cds.datasets.simulate_counts(6000, 40, 1, lib_loc=np.log(400), lib_scale=0.0, dropout_mid=None, seed=1)
    y = a.layers["truth"].astype(np.float64)
    assert not a.layers["dropout"].any() and np.array_equal(a.X, y)
    m = a.var["base_mean"].to_numpy() * a.var["de_factor_group1"].to_numpy()
    b = 400 * m / m.sum()
    phi = (0.1 + 1 / np.sqrt(b)) * a.var["bcv_factor"].to_numpy()
    z = (y.mean(axis=0) - b) / np.sqrt((b + phi**2 * b**2) / y.shape[0])
    assert np.abs(z).max() < 4.5
    keep = b > 1
    ratio = y.var(axis=0, ddof=1)[keep] / (b + phi**2 * b**2)[keep]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)


def test_seed_reproducible_and_dropout_last():
    a = cds.datasets.simulate_counts(200, 50, 2, lib_loc=LIB, dropout_mid=0.5, seed=7)
    b = cds.datasets.simulate_counts(200, 50, 2, lib_loc=LIB, dropout_mid=0.5, seed=7)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.layers["truth"], b.layers["truth"])
    c = cds.datasets.simulate_counts(200, 50, 2, lib_loc=LIB, dropout_mid=2.0, seed=7)
    assert np.array_equal(a.layers["truth"], c.layers["truth"])  # same truth, more dropout
    assert c.layers["dropout"].sum() > a.layers["dropout"].sum()
    d = cds.datasets.simulate_counts(200, 50, 2, lib_loc=LIB, dropout_mid=0.5, seed=8)
    assert not np.array_equal(a.layers["truth"], d.layers["truth"])


@pytest.mark.parametrize(
    "kwargs",
    [{"n_cells": 0}, {"n_groups": 2, "group_probs": [0.2, 0.2]}, {"de_prob": 1.5}, {"mean_shape": 0.0},
     {"lib_scale": -1.0}],
)
def test_bad_arguments(kwargs):
    args = {"n_cells": 10, "n_genes": 5, "n_groups": 2, **kwargs}
    with pytest.raises(ValueError):
        cds.datasets.simulate_counts(**args)
