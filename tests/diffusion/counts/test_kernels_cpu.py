"""The compiled CPU binomial kernels against the exact pmf (chi-square), with a negative control, determinism,
independence from the thread split and safety in a forked process."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from scipy import stats

from countsdiff_sc.diffusion import binomial, reverse_step
from countsdiff_sc.diffusion.counts._kernels_cpu import (
    INVERSION_MAX_MEAN,
    binomial_cpu,
    reverse_step_cpu,
)
from countsdiff_sc.diffusion.counts._kernels_torch import rounded_binomial_torch

from ._gof import gof_pvalue

N_DRAWS = 100_000


def rounded_binomial_cpu(y: torch.Tensor, beta: torch.Tensor, generator=None) -> torch.Tensor:
    # Binomial(random_round(y), beta): the kernel's reverse step from an empty state without deaths
    return reverse_step_cpu(torch.zeros_like(y), y, 0.0, float(beta), generator)


# small means (inversion), p > 1/2 (inversion of 1 - p), means beyond INVERSION_MAX_MEAN (torch fallback)
CASES = [(1, 0.3), (3, 0.05), (7, 0.5), (20, 0.9), (60, 0.1), (300, 0.02), (200, 0.3), (1000, 0.999), (90, 0.97)]


def test_binomial_matches_the_pmf():
    gen = torch.Generator().manual_seed(0)
    pvals = []
    for n, p in CASES:
        x = binomial_cpu(torch.full((N_DRAWS,), float(n)), torch.tensor(p, dtype=torch.float32), gen).numpy()
        pvals.append(gof_pvalue(x, stats.binom.pmf(np.arange(n + 1), n, np.float32(p))))
    assert min(pvals) > 1e-3 / len(CASES), pvals
    # both code paths were exercised
    assert any(n * min(p, 1 - p) >= INVERSION_MAX_MEAN for n, p in CASES)


def test_gof_test_rejects_a_wrong_probability():
    # negative control: draws with p = 0.105 are rejected as Binomial(20, 0.1)
    x = binomial_cpu(torch.full((N_DRAWS,), 20.0), torch.tensor(0.105), torch.Generator().manual_seed(1)).numpy()
    assert gof_pvalue(x, stats.binom.pmf(np.arange(21), 20, 0.1)) < 1e-6


def test_binomial_per_entry_probabilities_and_trivial_cases():
    gen = torch.Generator().manual_seed(2)
    probs = torch.tensor([[0.0], [1.0], [0.2], [0.8]])  # one probability per row, as in thin()
    count = torch.tensor([[5.0, 0.0, 12.0]]).expand(4, 3).repeat(N_DRAWS // 4, 1)
    p = probs.repeat(N_DRAWS // 4, 1)
    x = binomial(count, p, gen)
    assert torch.equal(x[0::4], torch.zeros_like(x[0::4]))
    assert torch.equal(x[1::4], count[1::4])
    assert bool((x[:, 1] == 0).all())
    for row, prob in ((2, 0.2), (3, 0.8)):
        draws = x[row::4, 2].numpy()
        assert gof_pvalue(draws, stats.binom.pmf(np.arange(13), 12, np.float32(prob))) > 1e-4


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("y, beta", [(0.4, 0.3), (2.7, 0.2), (6.25, 0.85), (120.5, 0.5), (3.0, 0.4)])
def test_rounded_binomial_is_the_rounding_mixture(y, beta, path):
    # "torch" is the GPU path (torch.binomial + a Bernoulli), run here on CPU
    # Binomial(random_round(y), beta): P = (1 - f) Bin(m, beta) + f Bin(m + 1, beta) with m = floor y, f = frac y
    m, f = int(np.floor(y)), y - np.floor(y)
    b = np.float32(beta)
    support = np.arange(m + 2)
    pmf = (1 - f) * stats.binom.pmf(support, m, b) + f * stats.binom.pmf(support, m + 1, b)
    draw = rounded_binomial_cpu if path == "kernel" else rounded_binomial_torch
    x = draw(torch.full((N_DRAWS,), y), torch.tensor(beta), torch.Generator().manual_seed(3)).numpy()
    assert gof_pvalue(x, pmf) > 1e-4
    # negative control: the same test rejects rounding to the nearest integer
    wrong = binomial_cpu(torch.full((N_DRAWS,), float(round(y))), torch.tensor(beta), torch.Generator().manual_seed(3))
    if f > 0.2:
        assert gof_pvalue(wrong.numpy(), pmf) < 1e-6


def test_rounded_binomial_edge_probabilities_and_negative_input():
    y = torch.tensor([-1.0, 0.0, 3.0, 4.5] * 1000)
    assert torch.equal(rounded_binomial_cpu(y, torch.tensor(0.0)), torch.zeros_like(y))
    full = rounded_binomial_cpu(y, torch.tensor(1.0), torch.Generator().manual_seed(4))
    assert torch.equal(full[0::4], torch.zeros(1000)) and torch.equal(full[2::4], torch.full((1000,), 3.0))
    assert set(full[3::4].tolist()) == {4.0, 5.0}


def test_draws_are_reproducible_and_independent_of_the_thread_split():
    count = torch.randint(0, 30, (600, 1000)).float()  # large enough to be split over threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = binomial_cpu(count, torch.tensor(0.3), torch.Generator().manual_seed(5))
        r_a = rounded_binomial_cpu(count + 0.5, torch.tensor(0.3), torch.Generator().manual_seed(5))
        torch.set_num_threads(1)
        b = binomial_cpu(count, torch.tensor(0.3), torch.Generator().manual_seed(5))
        r_b = rounded_binomial_cpu(count + 0.5, torch.tensor(0.3), torch.Generator().manual_seed(5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and torch.equal(r_a, r_b)
    c = binomial_cpu(count, torch.tensor(0.3), torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)
    # the global torch seed is honoured without a generator
    torch.manual_seed(7)
    d = binomial_cpu(count, torch.tensor(0.3))
    torch.manual_seed(7)
    assert torch.equal(d, binomial_cpu(count, torch.tensor(0.3)))


def _child(queue) -> None:
    torch.set_num_threads(1)
    x = torch.full((300_000,), 5.0)
    half = torch.tensor(0.5)
    queue.put((float(binomial_cpu(x, half).mean()), float(rounded_binomial_cpu(x, half).mean())))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_kernels_work_in_a_process_forked_after_use():
    binomial_cpu(torch.full((300_000,), 5.0), torch.tensor(0.5))  # threaded launch in the parent first
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the binomial kernels hung in a forked child")
    means = queue.get(timeout=5)
    assert abs(means[0] - 2.5) < 0.05 and abs(means[1] - 2.5) < 0.05


def _step_pmf(n: int, sigma: float, y: float, beta: float) -> np.ndarray:
    # pmf of Binomial(n, 1 - sigma) + Binomial(random_round(y), beta): the survivors' binomial convolved with the
    # rounding mixture
    m, f = int(np.floor(y)), y - np.floor(y)
    b, keep = np.float32(beta), np.float32(1.0 - sigma)
    births = (1 - f) * stats.binom.pmf(np.arange(m + 2), m, b) + f * stats.binom.pmf(np.arange(m + 2), m + 1, b)
    return np.convolve(stats.binom.pmf(np.arange(n + 1), n, keep), births)


@pytest.mark.parametrize("n, sigma, y, beta", [(6, 0.1, 2.5, 0.3), (9, 0.7, 0.3, 0.9), (150, 0.5, 4.2, 0.2),
                                               (4, 0.0, 80.6, 0.6), (5, 1.0, 1.5, 1.0)])
def test_fused_reverse_step_matches_the_convolution(n, sigma, y, beta):
    # x_s = Binomial(n, 1 - sigma) + Binomial(random_round(y), beta): the pmf is the convolution of the survivors'
    # binomial and the rounding mixture (cases: flipped death probability, large means redrawn by torch, edges)
    pmf = _step_pmf(n, sigma, y, beta)
    x = reverse_step_cpu(torch.full((N_DRAWS,), float(n)), torch.full((N_DRAWS,), y), sigma, beta,
                         torch.Generator().manual_seed(8)).numpy()
    assert gof_pvalue(x, pmf) > 1e-4
    # negative control: ignoring the deaths is rejected whenever they matter
    if 0 < sigma < 1:
        no_deaths = reverse_step_cpu(torch.full((N_DRAWS,), float(n)), torch.full((N_DRAWS,), y), 0.0, beta,
                                     torch.Generator().manual_seed(8)).numpy()
        assert gof_pvalue(no_deaths, pmf) < 1e-6


def test_reverse_step_in_place_on_interleaved_entries():
    # zero and non-zero counts and rates interleaved (the kernel does not branch on them) plus a large mean that
    # torch redraws, written into x_t itself: the same draws as into a fresh tensor, and every column keeps its pmf
    cols = [(0, 0.4), (6, 0.0), (150, 4.2), (0, 2.5), (3, 1.0)]
    n = torch.tensor([float(c[0]) for c in cols]).repeat(N_DRAWS // 5)
    y = torch.tensor([c[1] for c in cols]).repeat(N_DRAWS // 5)
    fresh = reverse_step_cpu(n, y, 0.1, 0.3, torch.Generator().manual_seed(9))
    x = n.clone()
    out = reverse_step_cpu(x, y, 0.1, 0.3, torch.Generator().manual_seed(9), out=x)
    assert out is x and torch.equal(x, fresh)
    pvals = [gof_pvalue(x[j::5].numpy(), _step_pmf(c[0], 0.1, c[1], 0.3)) for j, c in enumerate(cols)]
    assert min(pvals) > 1e-3 / len(cols), pvals
    with pytest.raises(ValueError, match="contiguous float32"):
        reverse_step_cpu(n, y, 0.1, 0.3, out=torch.empty(3))


def test_binomial_scalar_probability_on_interleaved_zero_counts():
    count = torch.tensor([0.0, 5.0, 0.0, 40.0]).repeat(N_DRAWS // 4)
    x = binomial_cpu(count, torch.tensor(0.3), torch.Generator().manual_seed(10))
    assert bool((x[0::2] == 0).all())
    assert gof_pvalue(x[1::4].numpy(), stats.binom.pmf(np.arange(6), 5, np.float32(0.3))) > 1e-4
    assert gof_pvalue(x[3::4].numpy(), stats.binom.pmf(np.arange(41), 40, np.float32(0.3))) > 1e-4


@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_repaint_step_chooses_the_rate_inside_the_kernel(sigma):
    # RePaint's step with x_obs / target draws exactly what a plain step draws from where(target, y_hat, x_obs - x):
    # the uniforms depend on the seed and the entry's position only. Large enough for a threaded launch, with a few
    # large means that torch redraws (on both kinds of entries).
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(0, 6, (400, 700), generator=gen).float()
    x_obs = x + torch.randint(0, 4, x.shape, generator=gen).float()
    y_hat = 3.0 * torch.rand(x.shape, generator=gen)
    target = torch.rand(x.shape, generator=gen) < 0.5
    x[0, :4], x_obs[0, :4], y_hat[0, :4] = 200.0, 500.0, 400.0  # means beyond INVERSION_MAX_MEAN
    target[0, :4] = torch.tensor([True, False, True, False])
    plain = reverse_step_cpu(x, torch.where(target, y_hat, x_obs - x), sigma, 0.3, torch.Generator().manual_seed(12))
    state = x.clone()
    fused = reverse_step_cpu(state, y_hat, sigma, 0.3, torch.Generator().manual_seed(12), out=state, x_obs=x_obs,
                             target=target)
    assert fused is state and torch.equal(fused, plain)
    with pytest.raises(ValueError, match="both x_obs and target"):
        reverse_step_cpu(x, y_hat, sigma, 0.3, x_obs=x_obs)
    with pytest.raises(ValueError, match="shaped like x_t"):
        reverse_step_cpu(x, y_hat, sigma, 0.3, x_obs=x_obs[:, :3], target=target[:, :3])


def test_repaint_step_torch_path_completes_observed_entries():
    # the torch path (GPUs; here forced by one schedule value per entry): with p(s) = 1 every observed entry ends at
    # x_obs exactly and every target entry at x_t + random_round(y_hat)
    x = torch.tensor([[0.0, 2.0, 1.0, 0.0]]).repeat(500, 1)
    x_obs = torch.tensor([[3.0, 5.0, 9.0, 1.0]]).repeat(500, 1)
    target = torch.tensor([[False, True, False, True]]).repeat(500, 1)
    y_hat = torch.full_like(x, 2.5)
    out = reverse_step(x, y_hat, torch.full_like(x, 0.4), torch.ones_like(x), 0.0, torch.Generator().manual_seed(13),
                       x_obs=x_obs, target=target)
    assert torch.equal(out[:, [0, 2]], x_obs[:, [0, 2]])
    assert set(torch.unique(out[:, 1] - x[:, 1]).tolist()) == {2.0, 3.0}
    with pytest.raises(ValueError, match="both x_obs and target"):
        reverse_step(x, y_hat, 0.4, 1.0, target=target)


@pytest.mark.parametrize("n_cols", [500, 7])  # rows long enough for the P(0) table, and short rows without it
def test_binomial_with_one_probability_per_row(n_cols):
    # the forward thinning of a batch (one time per cell): each row's entries are Binomial(count, p_row); rows with
    # p = 0 / 1, p > 1/2 (inversion of 1 - p) and means beyond INVERSION_MAX_MEAN (torch redraws them)
    row_p = [0.0, 1.0, 0.15, 0.8, 0.35]
    counts = [3.0, 3.0, 9.0, 11.0, 300.0]
    n_rows = N_DRAWS // n_cols
    p = torch.tensor(row_p * n_rows, dtype=torch.float32)[:n_rows].reshape(-1, 1)  # row r has row_p[r % 5]
    c = torch.tensor(counts * n_rows)[:n_rows].reshape(-1, 1).expand(n_rows, n_cols).contiguous()
    x = binomial_cpu(c, p, torch.Generator().manual_seed(14))
    assert bool((x[0::5] == 0).all()) and torch.equal(x[1::5], c[1::5])
    pvals = [gof_pvalue(x[j::5].reshape(-1).numpy(), stats.binom.pmf(np.arange(int(counts[j]) + 1), int(counts[j]),
                                                                       np.float32(row_p[j]))) for j in (2, 3, 4)]
    assert min(pvals) > 1e-3 / 3, pvals
    # negative control: rows drawn with a wrong probability are rejected
    wrong = binomial_cpu(c[2::5], torch.full((c[2::5].shape[0], 1), 0.17), torch.Generator().manual_seed(14))
    assert gof_pvalue(wrong.reshape(-1).numpy(), stats.binom.pmf(np.arange(10), 9, np.float32(0.15))) < 1e-6
    # one probability per row gives what the same probabilities per entry give, in distribution and here exactly
    # (the uniforms are indexed by the flat position in both paths) wherever neither path needs torch's redraw
    per_entry = binomial_cpu(c, p.expand_as(c).contiguous(), torch.Generator().manual_seed(14))
    small = c * torch.minimum(p, 1 - p) < INVERSION_MAX_MEAN
    assert torch.equal(x[small], per_entry[small])
