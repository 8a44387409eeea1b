"""Importance sampling of training times (``ImportanceTimes``): the density is proportional to the loss weight, the
constant weight is its integral, and the weighted objective is the same as with uniform times."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate

from countsdiff_sc.diffusion import (
    BlackoutSchedule,
    CosineSchedule,
    DiscreteBlackoutSchedule,
    ImportanceTimes,
    loss_weight,
)


@pytest.mark.parametrize(("schedule", "weighting"), [(CosineSchedule(), "neg_dp"), (CosineSchedule(), "nll"),
                                                     (BlackoutSchedule(), "nll"), (CosineSchedule(), "constant")])
def test_times_follow_the_weight_and_the_weight_is_its_integral(schedule, weighting):
    times = ImportanceTimes(schedule, weighting)

    def w(t):
        return float(loss_weight(torch.tensor([t], dtype=torch.float64), schedule, weighting)[0])

    z = integrate.quad(w, 0.0, 1.0, points=[1e-3, 1 - 1e-3], limit=200)[0]
    assert times.weight == pytest.approx(z, rel=2e-3)
    t = times.sample(40000, generator=torch.Generator().manual_seed(0)).numpy()
    assert t.min() >= 0.0 and t.max() <= 1.0

    def cdf(x):
        return np.array([integrate.quad(w, 0.0, xi, points=[min(1e-3, xi)], limit=200)[0] / z
                         for xi in np.atleast_1d(x)])

    grid = np.linspace(0.0, 1.0, 41)
    empirical = np.searchsorted(np.sort(t), grid) / t.size
    assert np.abs(empirical - cdf(grid)).max() < 0.01


def test_importance_weighted_objective_equals_the_uniform_one():
    # a smooth stand-in for the expected loss at time t: both estimators target int_0^1 w(t) L(t) dt
    schedule = CosineSchedule()
    times = ImportanceTimes(schedule, "neg_dp")
    gen = torch.Generator().manual_seed(1)
    loss = lambda t: 1.0 + torch.sin(3 * t) ** 2  # noqa: E731
    t_u = torch.rand(400000, generator=gen, dtype=torch.float64)
    uniform = float((loss_weight(t_u, schedule, "neg_dp") * loss(t_u)).mean())
    t_i = times.sample(400000, generator=gen).double()
    importance = float((times.weight * loss(t_i)).mean())
    assert importance == pytest.approx(uniform, rel=5e-3)
    # and with less spread across cells (the point of it)
    assert float((times.weight * loss(t_i)).std()) < float((loss_weight(t_u, schedule, "neg_dp") * loss(t_u)).std())


def test_discrete_schedules_are_refused():
    with pytest.raises(ValueError, match="continuous schedule"):
        ImportanceTimes(DiscreteBlackoutSchedule(), "nll")
