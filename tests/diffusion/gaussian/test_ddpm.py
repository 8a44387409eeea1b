"""Gaussian DDPM math: beta schedules, forward and reverse process, the DICE start time (diffusion.gaussian)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from countsdiff_sc.diffusion.gaussian import linear_beta_schedule
from tests.diffusion.gaussian._oracle import gaussian_oracle

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- schedule and forward process
def test_linear_schedule_and_alpha_bars(diff):
    b = linear_beta_schedule(512, 1e-4, 2e-2)
    assert b.shape == (512,)
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(2e-2)
    assert bool((b[1:] > b[:-1]).all())
    ab = diff.alpha_bars
    assert ab.shape == (513,) and float(ab[0]) == 1.0
    assert bool((ab[1:] < ab[:-1]).all())
    assert float(ab[-1]) == pytest.approx(float(torch.prod(1 - b)), rel=1e-12)
    with pytest.raises(ValueError):
        linear_beta_schedule(10, 0.1, 0.01)
    with pytest.raises(ValueError):
        linear_beta_schedule(0)


def test_q_sample_moments(diff):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[2.0, -1.0, 0.5]]).repeat(200_000, 1)
    for t in (1, 50, 300, 512):
        noise = torch.randn(x0.shape, generator=g)
        x_t = diff.q_sample(x0, t, noise)
        ab = float(diff.alpha_bars[t])
        torch.testing.assert_close(x_t.mean(0), math.sqrt(ab) * x0[0], atol=0.01, rtol=0)
        torch.testing.assert_close(x_t.var(0), torch.full((3,), 1 - ab), atol=0.01, rtol=0.02)
    # per-row times and the inverse map
    t = torch.tensor([0, 10, 511])
    x0 = torch.randn(3, 4, generator=g)
    e = torch.randn(3, 4, generator=g)
    x_t = diff.q_sample(x0, t, e)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(diff.predict_x0(x_t[1:], t[1:], e[1:]), x0[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("t", "s"), [(1, 0), (2, 1), (100, 99), (400, 250), (512, 0), (300, 17)])
def test_q_posterior_matches_gaussian_conditioning(diff, t, s):
    """q(x_s | x_t, x_0) against the conditional of the joint Gaussian (x_s, x_t) given x_0."""
    ab_t, ab_s = float(diff.alpha_bars[t]), float(diff.alpha_bars[s])
    a = ab_t / ab_s
    # x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) e1 ;  x_t = sqrt(a) x_s + sqrt(1 - a) e2
    var_s, var_t, cov_st = 1 - ab_s, 1 - ab_t, math.sqrt(a) * (1 - ab_s)
    x0 = torch.tensor([[0.7, -2.0]], dtype=torch.float64)
    x_t = torch.tensor([[1.3, 0.1]], dtype=torch.float64)
    expected_mean = math.sqrt(ab_s) * x0 + cov_st / var_t * (x_t - math.sqrt(ab_t) * x0)
    expected_var = var_s - cov_st**2 / var_t
    mean, var = diff.q_posterior(x0, x_t, t, s)
    torch.testing.assert_close(mean, expected_mean, atol=1e-10, rtol=1e-10)
    assert float(var) == pytest.approx(expected_var, abs=1e-12)


def test_p_step_mean_and_variance(diff):
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x_t = torch.tensor([[0.8, -0.4]]).repeat(n, 1)
    eps = torch.tensor([[0.3, 1.1]]).repeat(n, 1)
    for t, s in [(200, 199), (300, 240)]:
        x0_hat = diff.predict_x0(x_t[:1], t, eps[:1])
        post_mean, post_var = diff.q_posterior(x0_hat, x_t[:1], t, s)
        b = 1 - float(diff.alpha_bars[t] / diff.alpha_bars[s])
        for variance, want in [("beta", b), ("posterior", float(post_var))]:
            out = diff.p_step(x_t, t, s, eps, variance=variance, generator=g)
            torch.testing.assert_close(out.mean(0), post_mean[0], atol=4 * math.sqrt(want / n) + 1e-5, rtol=0)
            torch.testing.assert_close(out.var(0), torch.full((2,), want), atol=0, rtol=0.02)
    # the last step to 0 is deterministic
    torch.testing.assert_close(diff.p_step(x_t[:2], 3, 0, eps[:2], generator=g),
                               diff.p_step(x_t[:2], 3, 0, eps[:2], generator=g))
    with pytest.raises(ValueError):
        diff.p_step(x_t[:2], 3, 3, eps[:2])
    with pytest.raises(ValueError):
        diff.p_step(x_t[:2], 3, 2, eps[:2], variance="bogus")


def test_timesteps(diff):
    assert diff.timesteps(5) == [5, 4, 3, 2, 1, 0]
    assert diff.timesteps(0) == [0]
    grid = diff.timesteps(400, n_steps=10)
    assert grid[0] == 400 and grid[-1] == 0 and len(grid) == 11
    assert all(a > b for a, b in itertools.pairwise(grid))
    assert diff.timesteps(7, n_steps=50) == list(range(7, -1, -1))
    with pytest.raises(ValueError):
        diff.timesteps(600)


@pytest.mark.parametrize("n_steps", [None, 10])
def test_oracle_chain_reproduces_point_mass(diff, n_steps):
    """With the exact eps of a point mass, the ancestral chain returns the point from any start."""
    m = torch.tensor([1.5, -0.5, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    out = diff.sample_from(gaussian_oracle(diff, m, 0.0), x_T, 512, n_steps=n_steps, generator=g)
    torch.testing.assert_close(out, m.expand(50, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("t0", "n_steps", "variance", "rtol"), [(512, None, "posterior", 0.03),
                                                                 (512, None, "beta", 0.03), (300, 25, "beta", 0.07)])
def test_oracle_chain_gaussian_marginals(diff, t0, n_steps, variance, rtol):
    """Started from the exact marginal at t0, the chain with the exact eps ends at the data law N(m, s^2 I).

    On a coarse respaced grid the "beta" variance (Eq. 7) keeps the spread; "posterior" would shrink it.
    """
    m, s = torch.tensor([2.0, -1.0]), 0.5
    g = torch.Generator().manual_seed(3)
    n = 40_000
    x0 = m + s * torch.randn(n, 2, generator=g)
    x_t0 = diff.q_sample(x0, t0, torch.randn(n, 2, generator=g))
    out = diff.sample_from(gaussian_oracle(diff, m, s), x_t0, t0, n_steps=n_steps, variance=variance, generator=g)
    torch.testing.assert_close(out.mean(0), m, atol=0.02, rtol=0)
    torch.testing.assert_close(out.std(0), torch.full((2,), s), atol=0, rtol=rtol)


# ---------------------------------------------------------------------- start time of the DICE prior step
def test_select_t0_matches_brute_force(diff):
    ab = diff.alpha_bars.numpy()
    rng = np.random.default_rng(0)
    for rho in [*rng.uniform(0.02, 30, size=40), 0.5, 5.0, 20.0, 1e-3, 1e3]:
        threshold = 1 / (1 + rho**2)
        brute = max([t for t in range(1, 513) if ab[t] > threshold], default=0)
        assert diff.select_t0(rho) == brute
    assert diff.select_t0(1e-3) == 0 and diff.select_t0(1e3) == 512
    # monotone in rho
    values = [diff.select_t0(r) for r in np.linspace(0.05, 10, 50)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError):
        diff.select_t0(0.0)
