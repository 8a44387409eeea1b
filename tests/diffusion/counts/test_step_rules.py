"""The second-order ``"trapezoid"`` step rule: oracle exactness, its cost, and its accuracy on a toy whose denoiser is
known in closed form (exact laws from :mod:`._toy`, Monte Carlo checks of the sampler against them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from countsdiff_sc.diffusion import (
    GRIDS,
    STEP_RULES,
    BlackoutSchedule,
    CosineSchedule,
    DiscreteBlackoutSchedule,
    generate,
    n_evaluations,
    repaint,
    time_grid,
    trapezoid_midpoint,
    trapezoid_step,
)

from ._gof import binomial_pvalue, gof_pvalue
from ._toy import exact_law, mixture_prior, oracle_rate, total_variation

X0_VALUES = torch.tensor([0.0, 1.0, 3.0, 12.0, 40.0])
N_REP = 6000


@pytest.mark.parametrize(("kind", "eta"), [("none", 0.0), ("rescale", 0.5), ("rescale", 1.0), ("cap", 0.2),
                                           ("constant", 2.0)])
@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule(), DiscreteBlackoutSchedule(n_grid=40)],
                         ids=["cosine", "blackout", "blackout_discrete"])
@pytest.mark.parametrize("grid", ["uniform", "logit"])
def test_trapezoid_oracle_chain_keeps_binomial_marginals(kind, eta, schedule, grid):
    x0 = X0_VALUES.repeat(N_REP, 1)
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j, n in enumerate(X0_VALUES.tolist()):
            pvals.append(binomial_pvalue(x[:, j].numpy(), int(n), ps))

    out = generate(lambda x, t: x0 - x, x0.shape, schedule, n_steps=6, grid=grid, step_rule="trapezoid",
                   attrition_kind=kind, attrition=eta, generator=torch.Generator().manual_seed(0), callback=check)
    assert min(pvals) > 1e-3 / len(pvals), f"worst p-value {min(pvals):.2e}"
    lost = x0 - out  # Blackout's p(0) = 1 - p_min may (rarely) keep a molecule from being born
    assert bool((lost >= 0).all()) and float(lost.sum()) <= 5


def test_trapezoid_marginal_test_detects_a_biased_rate():
    # negative control: the same test rejects the trapezoid chain driven by y + 1
    x0 = X0_VALUES.repeat(N_REP, 1)
    schedule = CosineSchedule()
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        pvals.extend(binomial_pvalue(x[:, j].numpy(), int(n), ps) for j, n in enumerate(X0_VALUES.tolist()))

    generate(lambda x, t: x0 - x + 1.0, x0.shape, schedule, n_steps=6, step_rule="trapezoid",
             generator=torch.Generator().manual_seed(0), callback=check)
    assert min(pvals) < 1e-6


def test_trapezoid_step_with_the_oracle_is_exactly_binomial_in_one_step():
    # one big step t = 1 -> s: x_s ~ Binomial(x0, p(s)) exactly, through both stages
    schedule = CosineSchedule()
    x0 = torch.full((20000, 1), 25.0)
    for s in (0.7, 0.3):
        x_s = trapezoid_step(lambda x, t: x0 - x, torch.zeros_like(x0), 1.0, s, schedule,
                             generator=torch.Generator().manual_seed(5))
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        assert binomial_pvalue(x_s[:, 0].numpy(), 25, ps) > 1e-3


@pytest.mark.parametrize("grid", GRIDS)
def test_repaint_trapezoid_keeps_observed_entries_exact(grid):
    schedule = CosineSchedule()
    x0 = X0_VALUES.repeat(N_REP, 1)
    target = torch.zeros_like(x0, dtype=torch.bool)
    target[:, [1, 3]] = True
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j in (1, 3, 4):  # imputed (oracle-driven here) and observed columns alike
            pvals.append(binomial_pvalue(x[:, j].numpy(), int(X0_VALUES[j]), ps))

    # the network's rate is wrong on purpose for the observed entries: they must ignore it
    def rate(x, t):
        return torch.where(target, x0 - x, torch.full_like(x, 3.7))

    out = repaint(rate, x0, target, schedule, n_steps=5, grid=grid, step_rule="trapezoid", attrition_kind="rescale",
                  attrition=0.1, generator=torch.Generator().manual_seed(1), callback=check)
    assert torch.equal(out, x0)
    assert min(pvals) > 1e-3 / len(pvals)


def test_repaint_trapezoid_with_resampling_ends_at_the_observations():
    x_obs = torch.tensor([[4.0, 9.0, 0.0]]).repeat(300, 1)
    target = torch.tensor([True, False, False]).expand_as(x_obs)
    out = repaint(lambda x, t: x_obs - x, x_obs, target, CosineSchedule(), n_steps=6, resample_jump=2,
                  resample_iters=2, step_rule="trapezoid", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x_obs)


@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule(), DiscreteBlackoutSchedule(n_grid=30)],
                         ids=["cosine", "blackout", "blackout_discrete"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("rule", list(STEP_RULES))
def test_network_evaluations_are_counted(schedule, grid, rule):
    calls = []

    def rate(x, t):
        calls.append(float(t[0]))
        return torch.ones_like(x)

    n_steps = 12
    generate(rate, (3, 2), schedule, n_steps=n_steps, grid=grid, step_rule=rule,
             generator=torch.Generator().manual_seed(0))
    expected = n_evaluations(n_steps, schedule, grid=grid, step_rule=rule)
    assert len(calls) == expected
    n_trans = len(time_grid(n_steps, schedule, grid=grid)) - 1
    if schedule.discrete:
        assert n_trans * (1 + (rule == "trapezoid")) >= expected >= n_trans
    else:
        assert expected == (1 + (rule == "trapezoid")) * n_steps


def test_trapezoid_midpoint_and_fallback():
    m, c = trapezoid_midpoint(CosineSchedule(), 0.8, 0.4)
    p = CosineSchedule().p(torch.tensor([0.8, m, 0.4], dtype=torch.float64))
    assert float(p[1]) == pytest.approx(0.5 * float(p[0] + p[2]), abs=1e-12)
    assert c == pytest.approx(2.0, abs=1e-9)
    # a discrete schedule's adjacent grid times have nothing in between: an Euler step, one evaluation
    s = DiscreteBlackoutSchedule(n_grid=11)
    assert trapezoid_midpoint(s, 0.5, 0.4) is None
    m, c = trapezoid_midpoint(s, 0.6, 0.4)
    assert m == pytest.approx(0.5) and 1.0 <= c <= 4.0


def test_default_step_rule_and_grid_are_bit_identical_to_passing_them():
    x0 = torch.tensor([[2.0, 0.0, 11.0, 5.0]]).repeat(64, 1)

    def rate(x, t):
        return (x0 - x).clamp_min(0) * 0.9 + 0.3  # not the oracle: fractional rates exercise the rounding

    a = generate(rate, x0.shape, CosineSchedule(), n_steps=9, attrition_kind="rescale", attrition=0.2,
                 generator=torch.Generator().manual_seed(3))
    b = generate(rate, x0.shape, CosineSchedule(), n_steps=9, attrition_kind="rescale", attrition=0.2,
                 grid="uniform", step_rule="euler", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    target = torch.rand(x0.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    a = repaint(rate, x0, target, CosineSchedule(), n_steps=7, generator=torch.Generator().manual_seed(4))
    b = repaint(rate, x0, target, CosineSchedule(), n_steps=7, grid="uniform", step_rule="euler",
                generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_unknown_step_rule():
    with pytest.raises(ValueError, match="step_rule"):
        generate(lambda x, t: x, (2, 2), CosineSchedule(), n_steps=3, step_rule="rk4")
    with pytest.raises(ValueError, match="step_rule"):
        n_evaluations(3, CosineSchedule(), step_rule="heun")


# --- accuracy on the toy with a closed-form denoiser -------------------------------------------------------------

TOY_STEPS = (2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def toy_tv():
    """Exact total-variation distances to the data distribution, ``{(rule, n_steps): tv}`` (cosine, uniform grid)."""
    pi = mixture_prior()
    schedule = CosineSchedule()
    table = {(rule, k): total_variation(exact_law(pi, schedule, k, step_rule=rule), pi)
             for rule in STEP_RULES for k in (*TOY_STEPS, 2 * TOY_STEPS[-1])}
    return table


def test_trapezoid_beats_euler_at_equal_steps_and_at_equal_evaluations(toy_tv):
    for k in TOY_STEPS:
        trap, euler, euler_same_cost = toy_tv["trapezoid", k], toy_tv["euler", k], toy_tv["euler", 2 * k]
        assert trap < 0.5 * euler, (k, trap, euler)
        if k >= 4:
            assert trap < 0.75 * euler_same_cost, (k, trap, euler_same_cost)
    # at 32 steps (64 evaluations) the trapezoid's error is over 10x below Euler's at 64 steps
    assert toy_tv["trapezoid", 32] < 0.1 * toy_tv["euler", 64]


def test_observed_orders_of_convergence(toy_tv):
    # error ratio per doubling of n_steps: ~2 for first order (Euler), ~4 for second order (trapezoid)
    for k in (8, 16, 32, 64):
        euler_ratio = toy_tv["euler", k] / toy_tv["euler", 2 * k]
        assert 1.7 < euler_ratio < 2.4, (k, euler_ratio)
    for k in (8, 16, 32):
        trap_ratio = toy_tv["trapezoid", k] / toy_tv["trapezoid", 2 * k]
        assert 3.4 < trap_ratio < 5.0, (k, trap_ratio)
    # log-log slope over 8..64 steps
    ks = np.array([8, 16, 32, 64])
    slope_euler = -np.polyfit(np.log(ks), np.log([toy_tv["euler", k] for k in ks]), 1)[0]
    slope_trap = -np.polyfit(np.log(ks), np.log([toy_tv["trapezoid", k] for k in ks]), 1)[0]
    assert 0.85 < slope_euler < 1.2 and 1.8 < slope_trap < 2.3, (slope_euler, slope_trap)


@pytest.mark.parametrize("grid", ["p", "logit", "power"])
def test_trapezoid_converges_faster_on_the_other_grids(grid):
    pi = mixture_prior()
    schedule = CosineSchedule()
    tv = {(rule, k): total_variation(exact_law(pi, schedule, k, grid=grid, step_rule=rule), pi)
          for rule in STEP_RULES for k in (8, 16, 32)}
    for k in (8, 16, 32):
        assert tv["trapezoid", k] < 0.5 * tv["euler", k]
    assert tv["trapezoid", 8] / tv["trapezoid", 32] > 1.5 * tv["euler", 8] / tv["euler", 32]


@pytest.mark.parametrize(("rule", "n_steps"), [("euler", 4), ("trapezoid", 4), ("euler", 16), ("trapezoid", 16)])
def test_sampler_draws_follow_the_exact_law_of_the_toy(rule, n_steps):
    # the implementation against the exact law computed independently in _toy: 60000 chains, chi-square test
    pi = mixture_prior()
    schedule = CosineSchedule()
    law = exact_law(pi, schedule, n_steps, step_rule=rule)
    out = generate(oracle_rate(pi, schedule), (600, 100), schedule, n_steps=n_steps, step_rule=rule,
                   generator=torch.Generator().manual_seed(11))
    draws = out.flatten().numpy().astype(np.int64)
    assert gof_pvalue(draws, law) > 1e-4
    empirical = np.bincount(draws, minlength=len(law))[: len(law)] / draws.size
    # Monte Carlo error of the TV of 60000 draws on ~40 states: < 0.02
    assert abs(total_variation(empirical, pi) - total_variation(law, pi)) < 0.02


def test_trapezoid_more_accurate_on_a_correlated_two_gene_toy():
    # x0 from four atoms in 2-D (correlated genes); the exact denoiser is the posterior mean over the atoms
    atoms = torch.tensor([[0.0, 6.0], [3.0, 0.0], [9.0, 8.0], [2.0, 2.0]], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.2, 0.3, 0.2], dtype=torch.float64)
    schedule = CosineSchedule()

    def rate(x, t):
        p = schedule.p(t[:1].double())
        xx = x.double()[:, None, :]
        a = atoms[None]
        ok = (xx <= a).all(-1)
        logc = torch.lgamma(a + 1) - torch.lgamma(xx + 1) - torch.lgamma((a - xx).clamp_min(0) + 1)
        loglik = (logc + xx * torch.log(p) + (a - xx).clamp_min(0) * torch.log1p(-p)).sum(-1)
        loglik = torch.where(ok, loglik + torch.log(weights), torch.full_like(loglik, -torch.inf))
        post = torch.softmax(loglik, dim=1).nan_to_num(0.0)  # states no atom can explain: no births
        return ((post[:, :, None] * a).sum(1) - x.double()).clamp_min(0.0).float()

    def tv(out):
        keys, counts = torch.unique(out, dim=0, return_counts=True)
        freq = counts.double() / out.shape[0]
        truth = {tuple(a.tolist()): float(w) for a, w in zip(atoms, weights, strict=True)}
        got = {tuple(k.tolist()): float(f) for k, f in zip(keys.double(), freq, strict=True)}
        return 0.5 * sum(abs(got.get(s, 0.0) - truth.get(s, 0.0)) for s in set(truth) | set(got))

    n = 100000
    res = {}
    for rule in STEP_RULES:
        for k in (3, 6, 12):
            out = generate(rate, (n, 2), schedule, n_steps=k, step_rule=rule,
                           generator=torch.Generator().manual_seed(k))
            res[rule, k] = tv(out)
    # Monte Carlo noise of these TVs is ~0.005; the gaps asserted are several times larger
    for k in (3, 6, 12):
        assert res["trapezoid", k] < 0.6 * res["euler", k] - 0.01, res
    assert res["trapezoid", 6] < res["euler", 12] - 0.01, res
