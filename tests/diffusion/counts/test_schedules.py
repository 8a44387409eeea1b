from __future__ import annotations

import math

import pytest
import torch

from countsdiff_sc.diffusion import (
    BlackoutSchedule,
    CosineSchedule,
    CustomSchedule,
    DiscreteBlackoutSchedule,
    get_schedule,
    loss_weight,
    time_grid,
)

SCHEDULES = [CosineSchedule(), BlackoutSchedule(), DiscreteBlackoutSchedule(), DiscreteBlackoutSchedule(n_grid=11)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_endpoints_and_monotone(schedule):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    p = schedule.p(t)
    assert abs(float(p[0]) - 1.0) < 1e-6
    assert abs(float(p[-1])) < 1e-6
    assert bool((p.diff() <= 0).all())
    assert bool(((p >= 0) & (p <= 1)).all())
    assert bool((schedule.dp(t) <= 0).all())


@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule()], ids=repr)
def test_derivative_matches_finite_difference(schedule):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    fd = (schedule.p(t + h) - schedule.p(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.dp(t), fd, rtol=1e-5, atol=1e-7)


def test_cosine_closed_forms():
    s = CosineSchedule()
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    torch.testing.assert_close(s.p(t), torch.cos(math.pi * t / 2) ** 2)
    # Paper Sec. 3.2: w(t) = -p'(t) = (pi / 2) sin(pi t)
    torch.testing.assert_close(loss_weight(t, s), math.pi / 2 * torch.sin(math.pi * t))


def test_blackout_matches_paper_parameterisation():
    p_min = math.exp(-15)
    s = BlackoutSchedule(p_min)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = torch.sigmoid(logit(1 - p_min) + t * (logit(p_min) - logit(1 - p_min)))
    torch.testing.assert_close(s.p(t), expected)


def test_discrete_grid_recovers_santos_schedule_and_off_by_one():
    T = 1000
    s = DiscreteBlackoutSchedule(n_grid=T)
    k = torch.arange(1, T + 1, dtype=torch.float64)
    grid_t = (k - 1) / (T - 1)
    torch.testing.assert_close(s.snap(grid_t), grid_t)
    # the last grid point is t = 1 exactly (k = T), the first t = 0 (k = 1)
    assert float(s.p(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(math.exp(-15), rel=1e-6)
    # off-grid times snap to the nearest grid time
    torch.testing.assert_close(s.p(grid_t[3:4] + 0.3 / (T - 1)), s.p(grid_t[3:4]))
    # dp at k = 1 is the forward difference, elsewhere the backward difference
    h = 1 / (T - 1)
    cont = BlackoutSchedule()
    torch.testing.assert_close(s.dp(grid_t[:1]), (cont.p(grid_t[1:2]) - cont.p(grid_t[:1])) / h)
    torch.testing.assert_close(s.dp(grid_t[-1:]), (cont.p(grid_t[-1:]) - cont.p(grid_t[-2:-1])) / h)


def test_time_grid_discrete_is_strictly_decreasing():
    g = time_grid(50, DiscreteBlackoutSchedule(n_grid=11))
    assert bool((g.diff() < 0).all())
    assert float(g[0]) == 1.0 and float(g[-1]) == 0.0


def test_custom_schedule_autograd_and_checks():
    s = CustomSchedule(lambda t: (1 - t) ** 2)
    t = torch.tensor([0.2, 0.5], dtype=torch.float64)
    torch.testing.assert_close(s.dp(t), -2 * (1 - t))
    with pytest.raises(ValueError, match="p\\(0\\) = 1"):
        CustomSchedule(lambda t: 0.5 * (1 - t))
    with pytest.raises(ValueError, match="non-increasing"):
        CustomSchedule(lambda t: torch.where(t < 0.5, 1 - 2 * t + 0.4 * t, 1 - t))


def test_get_schedule_roundtrip_and_errors():
    for s in SCHEDULES:
        rebuilt = get_schedule(s.config())
        t = torch.linspace(0, 1, 7)
        torch.testing.assert_close(rebuilt.p(t), s.p(t))
    with pytest.raises(ValueError, match="Unknown p-schedule"):
        get_schedule("linear")


def test_nll_weight_is_finite_and_matches_formula():
    s = CosineSchedule()
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    w = loss_weight(t, s, "nll")
    assert torch.isfinite(w).all()
    tm = torch.tensor(0.3, dtype=torch.float64)
    assert float(w[1]) == pytest.approx(float(-s.dp(tm) / (1 - s.p(tm))))
    # with a non-uniform density the weight is divided by phi(t)
    w2 = loss_weight(t, s, "nll", time_density=lambda x: 2 * torch.ones_like(x))
    torch.testing.assert_close(w2, w / 2)
    assert torch.equal(loss_weight(t, s, "constant"), torch.ones_like(t))
    with pytest.raises(ValueError, match="Unknown loss weighting"):
        loss_weight(t, s, "snr")
