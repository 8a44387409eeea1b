"""Loss weightings: ``"auto"`` resolution, the hazard ``-p'/(1-p)`` and why Blackout needs the NLL weight."""

from __future__ import annotations

import pytest
import torch

from countsdiff_sc.diffusion import (
    LOSS_WEIGHTINGS,
    BlackoutSchedule,
    CosineSchedule,
    CustomSchedule,
    DiscreteBlackoutSchedule,
    generate,
    loss_weight,
    resolve_loss_weighting,
    time_grid,
)


def test_auto_resolves_per_schedule():
    assert "auto" in LOSS_WEIGHTINGS
    assert resolve_loss_weighting("auto", CosineSchedule()) == "neg_dp"
    assert resolve_loss_weighting("auto", CustomSchedule(lambda t: 1.0 - t)) == "neg_dp"
    assert resolve_loss_weighting("auto", BlackoutSchedule()) == "nll"
    assert resolve_loss_weighting("auto", DiscreteBlackoutSchedule()) == "nll"
    for w in ("neg_dp", "nll", "constant"):
        assert resolve_loss_weighting(w, BlackoutSchedule()) == w
    with pytest.raises(ValueError, match="Unknown loss weighting"):
        resolve_loss_weighting("snr", CosineSchedule())


def test_cosine_auto_is_bitwise_the_papers_neg_dp():
    t = torch.rand(10000, generator=torch.Generator().manual_seed(0))
    s = CosineSchedule()
    assert torch.equal(loss_weight(t, s, "auto"), loss_weight(t, s, "neg_dp"))
    assert torch.equal(loss_weight(t, s), -s.dp(t))


@pytest.mark.parametrize(
    "schedule", [CosineSchedule(), BlackoutSchedule(), DiscreteBlackoutSchedule(), DiscreteBlackoutSchedule(n_grid=11)],
    ids=["cosine", "blackout", "blackout_discrete", "blackout_discrete_11"],
)
def test_hazard_matches_float64_ratio(schedule):
    # float64 reference -p'/(1-p) away from the singular endpoint t = 0 of the generic formula (the cosine
    # schedule keeps the generic float32 ratio, which loses digits below t ~ 0.05 where 1 - p(t) < 6e-3)
    t_min = 0.05 if isinstance(schedule, CosineSchedule) else 1e-3
    t64 = torch.linspace(t_min, 1.0, 2001, dtype=torch.float64)
    ref = -schedule.dp(t64) / (1.0 - schedule.p(t64))
    h32 = schedule.hazard(t64.float()).double()
    assert torch.isfinite(h32).all()
    torch.testing.assert_close(h32, ref, rtol=2e-5, atol=1e-6)


def test_blackout_hazard_is_stable_in_float32_near_zero():
    # 1 - p(t) ~ 3e-7 near t = 0: the generic float32 ratio of the discrete finite difference is quantised
    # (p_k - p_{k-1} rounds to 0 or 6e-8), the override is not
    t = torch.linspace(0.0, 0.05, 51)
    for s in (BlackoutSchedule(), DiscreteBlackoutSchedule()):
        exact = s.hazard(t.double())
        torch.testing.assert_close(s.hazard(t).double(), exact, rtol=1e-5, atol=0.0)
    s = DiscreteBlackoutSchedule()
    generic = -s.dp(t) / (1.0 - s.p(t)).clamp_min(1e-12)
    exact = s.hazard(t.double())
    assert float(((generic.double() - exact).abs() / exact).max()) > 0.5  # the failure the override avoids
    # the continuous Blackout hazard is 2 |logit(p_min)| p(t): ~30 at t = 0
    s = BlackoutSchedule()
    assert float(s.hazard(torch.tensor(0.0))) == pytest.approx(30.0, rel=1e-5)
    w = loss_weight(torch.tensor([0.0, 0.1, 0.5, 1.0]), s, "auto")
    assert torch.isfinite(w).all() and float(w.min()) > 0 and float(w.max()) <= 30.0


def test_neg_dp_vanishes_where_the_blackout_sampler_still_gives_birth():
    # Sampler sensitivity: a constant rate error delta on an empty state adds delta * sum_k beta_k molecules over
    # the steps with t_k < 0.3, ~ delta * int_0^0.3 hazard dt ~ 8 delta, while -p' there is < 1% of its peak.
    s = BlackoutSchedule()
    delta, n = 0.05, 20000
    grid = time_grid(50)

    def rate(x, t):
        return torch.where(t[:, None] < 0.3 - 1e-9, torch.full_like(x, delta), torch.zeros_like(x))

    out = generate(rate, (n, 1), s, n_steps=50, generator=torch.Generator().manual_seed(0))
    p = s.p(grid)
    beta = (p[1:] - p[:-1]) / (1.0 - p[:-1])
    expected = delta * float(beta[grid[:-1] < 0.3 - 1e-9].sum())
    assert expected > 5 * delta
    se = (expected / n) ** 0.5
    assert abs(float(out.mean()) - expected) < 5 * se  # births with mean delta * sum(beta)
    t = torch.linspace(0.0, 0.3, 31)
    peak = float(-s.dp(torch.tensor(0.5)))
    assert float((-s.dp(t)).max()) < 0.01 * peak
    assert float(s.hazard(t).min()) > 25.0
