"""Time grids of the reverse chain (``time_grid(grid=...)``) and the inverse ``PSchedule.t_of_p``."""

from __future__ import annotations

import itertools

import pytest
import torch

from countsdiff_sc.diffusion import (
    GRIDS,
    POWER_RHO,
    BlackoutSchedule,
    CosineSchedule,
    CustomSchedule,
    DiscreteBlackoutSchedule,
    PSchedule,
    generate,
    time_grid,
)

SCHEDULES = [
    CosineSchedule(),
    BlackoutSchedule(),
    BlackoutSchedule(p_min=0.01),
    DiscreteBlackoutSchedule(),
    DiscreteBlackoutSchedule(n_grid=51),
    CustomSchedule(lambda t: 1.0 - t),
    CustomSchedule(lambda t: (1.0 - t) ** 3),
]
CONTINUOUS = [s for s in SCHEDULES if not s.discrete]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("n_steps", [1, 2, 3, 7, 20, 200])
@pytest.mark.parametrize("t_start", [1.0, 0.6])
def test_grid_is_strictly_decreasing_from_t_start_to_zero(schedule, grid, n_steps, t_start):
    times = time_grid(n_steps, schedule, t_start, grid)
    assert times.dtype == torch.float64
    assert bool((times.diff() < 0).all()), times
    assert float(times[-1]) == 0.0
    t0 = float(schedule.snap(torch.tensor(t_start, dtype=torch.float64))) if schedule.discrete else t_start
    assert float(times[0]) == t0
    if schedule.discrete:  # snapped onto the schedule's grid, duplicates dropped
        assert len(times) <= n_steps + 1
        assert torch.equal(schedule.snap(times), times)
    else:
        assert len(times) == n_steps + 1


@pytest.mark.parametrize("schedule", CONTINUOUS, ids=repr)
@pytest.mark.parametrize("t_start", [1.0, 0.7])
def test_p_grid_is_uniform_in_p(schedule, t_start):
    times = time_grid(40, schedule, t_start, "p")
    p = schedule.p(times)
    steps = p.diff()
    expected = (float(schedule.p(torch.tensor(0.0, dtype=torch.float64))) - float(p[0])) / 40
    torch.testing.assert_close(steps, torch.full_like(steps, expected), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_grid", [1000, 101])
def test_p_grid_of_a_discrete_schedule_is_the_nearest_grid_times(n_grid):
    schedule = DiscreteBlackoutSchedule(n_grid=n_grid)
    times = time_grid(10, schedule, grid="p")
    # each time is the grid time nearest to the continuous curve's p-uniform time
    cont = time_grid(10, BlackoutSchedule(p_min=schedule.p_min), grid="p")
    assert torch.equal(times, torch.unique(schedule.snap(cont)).flip(0))


@pytest.mark.parametrize("schedule", [CosineSchedule(), CustomSchedule(lambda t: (1.0 - t) ** 3)], ids=repr)
def test_logit_grid_is_uniform_in_logit_p_between_the_uniform_grids_end_times(schedule):
    k = 30
    times = time_grid(k, schedule, grid="logit")
    assert float(times[1]) == pytest.approx(1.0 - 1.0 / k, abs=1e-12)
    assert float(times[-2]) == pytest.approx(1.0 / k, abs=1e-12)
    logit = torch.logit(schedule.p(times[1:-1]))
    steps = logit.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps.mean())), rtol=1e-7, atol=1e-9)


def test_logit_grid_of_the_blackout_schedule_is_the_uniform_grid():
    # logit p(t) = (2 t - 1) logit(p_min) is linear in t
    torch.testing.assert_close(time_grid(25, BlackoutSchedule(), grid="logit"), time_grid(25), rtol=0, atol=1e-10)


def test_power_grid_formula():
    times = time_grid(8, CosineSchedule(), 0.9, "power")
    expected = 0.9 * (1.0 - torch.arange(9, dtype=torch.float64) / 8) ** POWER_RHO
    assert torch.equal(times, expected)
    assert torch.equal(time_grid(8, grid="power", rho=1.0), time_grid(8))
    dense_end = time_grid(10, grid="power")
    assert float(dense_end[-2]) < 0.1 < float(dense_end[1]) - float(dense_end[2])  # denser near t = 0


def test_default_grid_is_todays_uniform_grid_bit_for_bit():
    for n in (1, 7, 50):
        assert torch.equal(time_grid(n), torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64))
        assert torch.equal(time_grid(n, CosineSchedule(), 0.6), torch.linspace(0.6, 0.0, n + 1, dtype=torch.float64))
    schedule = DiscreteBlackoutSchedule(n_grid=30)
    grid = torch.linspace(1.0, 0.0, 51, dtype=torch.float64)
    assert torch.equal(time_grid(50, schedule, grid="uniform"), torch.unique(schedule.snap(grid)).flip(0))


def test_grid_errors():
    with pytest.raises(ValueError, match="Unknown time grid"):
        time_grid(5, CosineSchedule(), grid="cosine")
    with pytest.raises(ValueError, match="pass the schedule"):
        time_grid(5, grid="p")
    with pytest.raises(ValueError, match="rho"):
        time_grid(5, grid="power", rho=0.0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_t_of_p_inverts_p(schedule):
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    p = schedule.p(t)
    back = schedule.t_of_p(p)
    assert back.dtype == torch.float64
    assert bool(((back >= 0) & (back <= 1)).all())
    torch.testing.assert_close(schedule.p(back), p, rtol=0, atol=1e-10)
    if not schedule.discrete:  # closed forms agree with the generic bisection
        torch.testing.assert_close(back, PSchedule.t_of_p(schedule, p), rtol=0, atol=1e-7)


def test_t_of_p_clamps_values_outside_the_range():
    s = BlackoutSchedule(p_min=0.01)
    assert float(s.t_of_p(torch.tensor(1.0))) == pytest.approx(0.0, abs=1e-12)
    assert float(s.t_of_p(torch.tensor(0.0))) == pytest.approx(1.0, abs=1e-12)
    assert float(CosineSchedule().t_of_p(torch.tensor(0.0))) == 1.0
    assert float(PSchedule.t_of_p(CustomSchedule(lambda t: 0.5 - 0.5 * t, check=False), torch.tensor(0.9))) < 1e-12


@pytest.mark.parametrize("grid", GRIDS)
def test_generate_on_every_grid_with_the_oracle_ends_at_x0(grid):
    x0 = torch.tensor([[0.0, 2.0, 7.0, 30.0]]).repeat(50, 1)
    seen = []
    out = generate(lambda x, t: x0 - x, x0.shape, CosineSchedule(), n_steps=6, grid=grid,
                   generator=torch.Generator().manual_seed(0), callback=lambda k, t, s, x: seen.append((t, s)))
    assert torch.equal(out, x0)
    times = time_grid(6, CosineSchedule(), grid=grid).tolist()
    assert seen == list(itertools.pairwise(times))
