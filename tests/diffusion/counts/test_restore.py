"""``restore``: the reverse chain from counts seen through a known per-entry binomial thinning.

Checked against the math: with the oracle rate ``x_0 - x_t`` the chain returns ``x_0`` exactly for any levels, step
rule and attrition; known entries are ``Binomial(y, p(s) / level)`` at every grid time; with the exact denoiser of a
Poisson prior the added molecules have the posterior mean ``lambda (1 - level)`` (and the Poisson variance under the
second-order rule); the observed molecules are never lost; entries at level 1 come back unchanged at no cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from countsdiff_sc.diffusion import (
    BlackoutSchedule,
    CosineSchedule,
    binomial,
    restore,
    restore_start,
)

from ._gof import binomial_pvalue

LAM = torch.tensor([3.0, 8.0, 20.0, 0.5, 6.0])
LEVEL = torch.tensor([0.2, 0.5, 0.9, 0.0, 1.0])


def poisson_rate(schedule, lam):
    """Exact ``E[x_0 - x_t | x_t]`` for independent Poisson(lam) genes: ``lam (1 - p(t))``, whatever ``x_t``."""
    def rate(x, t):
        p = schedule.p(t.to(torch.float64)).float()[:, None]
        return (lam * (1.0 - p)).expand_as(x)
    return rate


@pytest.mark.parametrize("step_rule", ["euler", "trapezoid"])
@pytest.mark.parametrize(("kind", "eta"), [("none", 0.0), ("rescale", 0.3)])
@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule()], ids=["cosine", "blackout"])
def test_oracle_rate_returns_the_true_counts_for_any_levels(step_rule, kind, eta, schedule):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.poisson(torch.full((200, 6), 7.0), generator=gen)
    level = torch.rand((200, 6), generator=gen)
    level[:, 0] = 1.0
    level[:, 1] = 0.0
    y = binomial(x0, level, gen)
    out = restore(lambda x, t: x0 - x, y, level, schedule, n_steps=8, step_rule=step_rule, attrition_kind=kind,
                  attrition=eta, generator=gen)
    assert torch.equal(out, x0)


@pytest.mark.parametrize("step_rule", ["euler", "trapezoid"])
def test_known_entries_are_binomials_of_the_observation_at_every_step(step_rule):
    schedule = CosineSchedule()
    n = 4000
    y = torch.tensor([[12.0, 30.0, 5.0]]).repeat(n, 1)
    level = torch.tensor([0.95, 0.7, 0.0])
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j in (0, 1):
            if ps <= float(level[j]):
                pvals.append(binomial_pvalue(x[:, j].numpy(), int(y[0, j]), min(1.0, ps / float(level[j]))))

    restore(lambda x, t: torch.full_like(x, 2.5), y, level, schedule, n_steps=12, step_rule=step_rule,
            generator=torch.Generator().manual_seed(3), callback=check)
    assert len(pvals) >= 10
    assert min(pvals) > 1e-3 / len(pvals), f"worst p-value {min(pvals):.2e}"


@pytest.mark.parametrize(("step_rule", "var_lo"), [("euler", 0.3), ("trapezoid", 0.85)])
def test_poisson_prior_gets_the_posterior_mean_and_keeps_every_observed_molecule(step_rule, var_lo):
    # x_0 ~ Poisson(lam), y ~ Binomial(x_0, level): x_0 - y ~ Poisson(lam (1 - level)), independent of y
    schedule = CosineSchedule()
    gen = torch.Generator().manual_seed(1)
    n = 20000
    x0 = torch.poisson(LAM.expand(n, -1).contiguous(), generator=gen)
    y = binomial(x0, LEVEL.expand(n, -1), gen)
    out = restore(poisson_rate(schedule, LAM), y, LEVEL, schedule, n_steps=10, step_rule=step_rule, generator=gen)
    added = (out - y).numpy()
    want = (LAM * (1 - LEVEL)).numpy()
    free = want > 0
    se = np.sqrt(want[free] / n)
    assert np.all(np.abs(added.mean(0)[free] - want[free]) < 5 * se + 0.01 * want[free]), (added.mean(0), want)
    assert (added >= 0).all() and np.array_equal(out[:, 4].numpy(), y[:, 4].numpy())
    ratio = added.var(0)[free] / want[free]
    assert np.all(ratio > var_lo) and np.all(ratio < 1.15), ratio  # Euler's rounding narrows; trapezoid ~ Poisson
    # the added molecules do not depend on what was seen (independence of the Poisson posterior)
    assert abs(np.corrcoef(added[:, 1], y[:, 1].numpy())[0, 1]) < 0.05


def test_level_one_everywhere_returns_the_input_without_evaluating_the_network():
    calls = []
    y = torch.tensor([[3.0, 0.0, 9.0], [1.0, 4.0, 0.0]])
    out = restore(lambda x, t: calls.append(1) or torch.ones_like(x), y, torch.ones(3), CosineSchedule(), n_steps=5)
    assert torch.equal(out, y) and not calls


def test_per_cell_levels_restore_depth_and_levels_broadcast():
    # one level per cell (downsampled cells restored to full depth): (n, 1) broadcasts over genes
    schedule = CosineSchedule()
    gen = torch.Generator().manual_seed(4)
    n = 6000
    lam = torch.tensor([4.0, 10.0])
    x0 = torch.poisson(lam.expand(n, -1).contiguous(), generator=gen)
    level = torch.where(torch.arange(n)[:, None] % 2 == 0, 0.3, 0.8)
    y = binomial(x0, level.expand(n, 2), gen)
    out = restore(poisson_rate(schedule, lam), y, level, schedule, n_steps=10, generator=gen)
    for parity in (0, 1):
        m = out[parity::2].mean(0)
        assert torch.allclose(m, lam, rtol=0.04), (parity, m)


def test_start_time_is_where_the_lowest_level_is_reached():
    schedule = CosineSchedule()
    t0 = restore_start(schedule, torch.tensor([0.9, 0.35, 0.6]))
    assert float(schedule.p(torch.tensor(t0, dtype=torch.float64))) == pytest.approx(0.35, abs=1e-6)
    assert restore_start(schedule, torch.tensor([0.0, 0.5])) == 1.0


def test_bad_inputs_are_refused_with_what_to_fix():
    y = torch.tensor([[1.0, 2.0]])
    rate = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        restore(rate, y, torch.tensor([0.5, 1.2]), CosineSchedule())
    with pytest.raises(ValueError, match="broadcast"):
        restore(rate, y, torch.tensor([0.5, 0.5, 0.5]), CosineSchedule())
    with pytest.raises(ValueError, match="integer"):
        restore(rate, torch.tensor([[1.5, 2.0]]), torch.tensor([0.5, 0.5]), CosineSchedule())
    with pytest.raises(ValueError, match="matrix"):
        restore(rate, torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]), CosineSchedule())
    with pytest.raises(ValueError, match="step_rule"):
        restore(rate, y, torch.tensor([0.5, 0.5]), CosineSchedule(), step_rule="rk4")
