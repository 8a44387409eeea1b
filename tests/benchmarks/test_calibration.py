"""The calibration benchmark's coverage (randomised PIT) is nominal for a calibrated sampler and detects a biased
one; the plain range of 20 draws would not be."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks._common import coverage, pit


@pytest.fixture
def poisson():
    rng = np.random.default_rng(1)
    lam = rng.gamma(2.0, 2.0, 20_000)
    return rng, lam, rng.poisson(lam[:, None], (lam.size, 20))


def test_calibrated_sampler_has_nominal_coverage(poisson):
    rng, lam, draws = poisson
    truth = rng.poisson(lam)
    for level in (0.5, 0.8, 0.95):
        assert coverage(draws, truth, level)[0] == pytest.approx(level, abs=0.015)
    u = pit(draws, truth)
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 0.9 * u.size / 10


def test_biased_sampler_is_detected(poisson):
    rng, lam, draws = poisson
    truth = rng.poisson(2 * lam)  # the draws are too low
    assert coverage(draws, truth, 0.95)[0] < 0.85
