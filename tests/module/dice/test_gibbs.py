"""The DICE split Gibbs sampler: rho annealing, the conjugate likelihood step and the full loop (module.dice)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from countsdiff_sc.module.dice import gaussian_likelihood_posterior, gaussian_likelihood_step, rho_schedule, split_gibbs
from tests.diffusion.gaussian._oracle import gaussian_oracle

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rho_schedules():
    lin = rho_schedule((5.0, 0.5), 100)
    assert lin.shape == (100,) and lin[0] == 5.0 and lin[-1] == pytest.approx(0.5)
    assert np.all(np.diff(lin) < 0)
    np.testing.assert_allclose(np.diff(lin), np.full(99, -4.5 / 99))
    geo = rho_schedule((5.0, 0.5), 50, kind="geometric")
    assert geo[0] == pytest.approx(5.0) and geo[-1] == pytest.approx(0.5)
    assert np.all(np.diff(geo) < 0)
    np.testing.assert_allclose(geo[1:] / geo[:-1], np.full(49, 0.1 ** (1 / 49)))
    up = rho_schedule((0.5, 2.0), 10)
    assert np.all(np.diff(up) > 0)
    np.testing.assert_array_equal(rho_schedule(20.0, 7), np.full(7, 20.0))
    np.testing.assert_array_equal(rho_schedule([3.0, 2.0, 1.0], 3), [3.0, 2.0, 1.0])
    for bad in [(5.0, 0.0), -1.0, [1.0, 2.0, 3.0]]:
        with pytest.raises(ValueError):
            rho_schedule(bad, 4, kind="geometric" if bad == (5.0, 0.0) else "linear")
    with pytest.raises(ValueError):
        rho_schedule(1.0, 3, kind="cosine")


@pytest.mark.parametrize(("rho", "noise_var"), [(0.7, 1.0), (3.0, 0.5)])
def test_likelihood_step_is_the_conjugate_posterior(rho, noise_var):
    """Draws of the likelihood step against the posterior of Z ~ N(U, rho^2 I), x | Z ~ N(V Z, sigma^2 I)."""
    g = torch.Generator().manual_seed(4)
    d, k = 12, 3
    v = torch.randn(d, k, generator=g, dtype=torch.float64)  # not orthonormal on purpose
    u = torch.randn(1, k, generator=g, dtype=torch.float64)
    x = torch.randn(1, d, generator=g, dtype=torch.float64) * 2
    # Kalman / Woodbury form, independent of the code's precision form
    s = rho**2 * v @ v.T + noise_var * torch.eye(d, dtype=torch.float64)
    gain = rho**2 * v.T @ torch.linalg.inv(s)
    mean = u + (x - u @ v.T) @ gain.T
    cov = rho**2 * torch.eye(k, dtype=torch.float64) - gain @ v * rho**2
    lam, root = gaussian_likelihood_posterior(v.T @ v, rho, noise_var)
    torch.testing.assert_close(lam, cov, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(root @ root, cov, atol=1e-10, rtol=1e-8)
    n = 200_000
    z = gaussian_likelihood_step((x @ v).repeat(n, 1), u.repeat(n, 1), v.T @ v, rho, noise_var, generator=g)
    scale = torch.sqrt(torch.diagonal(cov))
    torch.testing.assert_close(z.mean(0), mean[0], atol=float(5 * scale.max() / math.sqrt(n)), rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=float(0.02 * scale.max() ** 2), rtol=0)


def test_split_gibbs_targets_the_augmented_posterior(diff):
    """Gaussian prior + exact eps: chains settle on N(U | x) of the rho-augmented model (orthonormal V)."""
    k, m, s, rho = 2, torch.tensor([1.0, -1.0], dtype=torch.float64), 1.5, 1.0
    vtx = torch.tensor([[3.0, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    out = split_gibbs(gaussian_oracle(diff, m, s), vtx, torch.eye(k, dtype=torch.float64), [rho] * 6, diff,
                      n_chains=20_000, variance="posterior", generator=g)
    assert out.shape == (1, 20_000, k)
    noise = 1.0 + rho**2  # x_hat = U + N(0, (sigma^2 + rho^2) I)
    post_var = s**2 * noise / (s**2 + noise)
    post_mean = (s**2 * vtx[0] + noise * m) / (s**2 + noise)
    samples = out[0]
    torch.testing.assert_close(samples.mean(0), post_mean, atol=0.05, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full((k,), post_var, dtype=torch.float64), atol=0, rtol=0.08)


def test_default_prior_steps_keep_the_exact_posterior_variance(diff, rho=0.5, steps=20):
    """Exact-prior check of the default ``n_prior_steps=20`` (issue 22, item 6): with a N(0, I) prior and the exact
    eps, the stationary variance of ``U`` is ``(V^T (sigma^2 I + rho^2 V V^T)^{-1} V + I)^{-1}`` (closed form of the
    rho-augmented model); the chains reach it within 1% (the former ``ceil(20 t0 / T)`` steps fell 3-10% short)."""
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
    cov = torch.eye(3, dtype=torch.float64) + rho**2 * v @ v.T
    exact = torch.linalg.inv(v.T @ torch.linalg.inv(cov) @ v + torch.eye(2, dtype=torch.float64)).diagonal()
    out = split_gibbs(gaussian_oracle(diff, torch.zeros(2), 1.0), torch.zeros(1, 2), v.T.float() @ v.float(),
                      [rho] * 16, diff, n_chains=100_000, n_prior_steps=steps,
                      generator=torch.Generator().manual_seed(3))[0].double()
    ratio = float((out.var(0) / exact).mean())
    assert abs(ratio - 1.0) < 0.01, ratio


def test_split_gibbs_latent_scale_and_reproducibility(diff):
    """Rescaled diffusion coordinates give the same law; the same generator seed gives the same draws."""
    m, s = torch.tensor([4.0, -2.0], dtype=torch.float64), 3.0
    c = 2.5  # the diffusion sees y = u / c ~ N(m / c, (s / c)^2)
    vtx = torch.tensor([[6.0, 1.0]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    raw = split_gibbs(gaussian_oracle(diff, m, s), vtx, eye, [2.0] * 4, diff, n_chains=20_000,
                      variance="posterior", generator=torch.Generator().manual_seed(6))[0]
    scaled = split_gibbs(gaussian_oracle(diff, m / c, s / c), vtx, eye, [2.0] * 4, diff, n_chains=20_000,
                         latent_scale=c, variance="posterior", generator=torch.Generator().manual_seed(7))[0]
    torch.testing.assert_close(raw.mean(0), scaled.mean(0), atol=0.08, rtol=0)
    torch.testing.assert_close(raw.std(0), scaled.std(0), atol=0, rtol=0.05)

    def run(seed):
        return split_gibbs(gaussian_oracle(diff, m, s), vtx.repeat(3, 1), eye, rho_schedule((5.0, 0.5), 5), diff,
                           n_chains=4, n_prior_steps=8, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(0), run(0), atol=0, rtol=0)
    assert not torch.equal(run(0), run(1))
