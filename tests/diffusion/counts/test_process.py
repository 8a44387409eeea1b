from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from countsdiff_sc.diffusion import (
    BlackoutSchedule,
    CosineSchedule,
    attrition_rate,
    count_loss,
    generate,
    log_linear_mix,
    repaint,
    reverse_step,
    sigma_max,
    thin,
)

from ._gof import binomial_pvalue

X0_VALUES = torch.tensor([0.0, 1.0, 3.0, 12.0, 40.0])
N_REP = 6000


def _marginal_pvalues(rate_offset: float, eta: float, schedule, n_steps=8, seed=0):
    x0 = X0_VALUES.repeat(N_REP, 1)
    gen = torch.Generator().manual_seed(seed)
    pvals = []

    def oracle(x, t):
        return (x0 - x + rate_offset).clamp_min(0)

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j, n in enumerate(X0_VALUES.tolist()):
            pvals.append(binomial_pvalue(x[:, j].numpy(), int(n), ps))

    out = generate(oracle, x0.shape, schedule, n_steps=n_steps, attrition_kind="rescale", attrition=eta,
                   generator=gen, callback=check)
    return np.asarray(pvals), out, x0


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule()], ids=["cosine", "blackout"])
def test_oracle_chain_reproduces_binomial_marginals(eta, schedule):
    pvals, out, x0 = _marginal_pvalues(0.0, eta, schedule)
    # Bonferroni over all (step, x0) checks at family-wise level 1e-3
    assert pvals.min() > 1e-3 / len(pvals), f"worst p-value {pvals.min():.2e}"
    if float(schedule.p(torch.tensor(0.0))) == 1.0:
        assert torch.equal(out, x0), "the oracle chain must end exactly at x0"
    else:  # Blackout: p(0) = 1 - p_min, so the last step may (rarely) remove a molecule; expected ~0.1 in total
        lost = x0 - out
        assert bool((lost >= 0).all()) and float(lost.sum()) <= 5, "the oracle chain must end at x0 up to p_min"


def test_marginal_test_detects_a_biased_rate():
    # negative control: the same statistical test rejects a chain driven by y + 1
    pvals, out, x0 = _marginal_pvalues(1.0, 0.0, CosineSchedule())
    assert pvals.min() < 1e-6
    assert not torch.equal(out, x0)


def test_repaint_with_oracle_keeps_marginals_and_observed_entries():
    schedule = CosineSchedule()
    x0 = X0_VALUES.repeat(N_REP, 1)
    target = torch.zeros_like(x0, dtype=torch.bool)
    target[:, [1, 3]] = True
    gen = torch.Generator().manual_seed(1)
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j in (1, 3, 4):  # imputed and observed columns alike follow Binomial(x0, p(s))
            pvals.append(binomial_pvalue(x[:, j].numpy(), int(X0_VALUES[j]), ps))

    out = repaint(lambda x, t: x0 - x, x0, target, schedule, n_steps=6, attrition_kind="rescale", attrition=0.1,
                  generator=gen, callback=check)
    assert torch.equal(out, x0)
    assert min(pvals) > 1e-3 / len(pvals)


def test_repaint_observed_entries_follow_one_forward_path():
    # Without attrition the observed entries only gain molecules from step to step (a forward path read backwards),
    # unlike independent redraws Binomial(x_obs, p(s)), which fall back often; their marginals are checked above.
    schedule = CosineSchedule()
    x0 = torch.full((4000, 2), 12.0)
    target = torch.tensor([True, False]).expand_as(x0)
    states = []
    out = repaint(lambda x, t: x0 - x, x0, target, schedule, n_steps=8, generator=torch.Generator().manual_seed(2),
                  callback=lambda k, t, s, x: states.append(x[:, 1].clone()))
    steps = torch.stack(states)
    assert bool((steps.diff(dim=0) >= 0).all())
    assert bool((steps <= 12).all()) and torch.equal(out, x0)


def test_repaint_resampling_rewinds_only_to_window_start():
    schedule = CosineSchedule()
    x0 = torch.full((2000, 3), 20.0)
    target = torch.tensor([True, False, False]).expand_as(x0)
    seen = []
    out = repaint(lambda x, t: x0 - x, x0, target, schedule, n_steps=6, resample_jump=2, resample_iters=3,
                  generator=torch.Generator().manual_seed(0), callback=lambda k, t, s, x: seen.append(k))
    # windows [0,1], [2,3], [4,5], each run three times
    assert seen == [0, 1] * 3 + [2, 3] * 3 + [4, 5] * 3
    assert torch.equal(out, x0)


def test_repaint_resampling_keeps_marginals():
    schedule = CosineSchedule()
    x0 = torch.tensor([5.0, 9.0]).repeat(N_REP, 1)
    target = torch.tensor([True, False]).expand_as(x0)
    pvals = []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        pvals.append(binomial_pvalue(x[:, 0].numpy(), 5, ps))

    repaint(lambda x, t: x0 - x, x0, target, schedule, n_steps=4, resample_jump=2, resample_iters=2,
            generator=torch.Generator().manual_seed(3), callback=check)
    assert min(pvals) > 1e-3 / len(pvals)


def test_random_rounding_unbiased_and_integer():
    # the last step (p(s) = 1, so beta = 1) from an empty state without deaths returns the randomly rounded rate
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0.0, 0.1, 0.49, 0.5, 2.7, 10.25]).repeat(200000, 1)
    r = reverse_step(torch.zeros_like(y), y, torch.tensor(0.2), torch.tensor(1.0), generator=gen)
    assert torch.equal(r, r.round())
    assert bool((r >= torch.floor(y)).all() and (r <= torch.ceil(y)).all())
    se = y[0] * 0 + 0.5 / np.sqrt(200000)
    assert bool(((r.mean(0) - y[0]).abs() < 5 * se).all())
    # naive rounding would collapse 0.1 and 0.49 to zero; random rounding keeps their mass
    assert float(r[:, 1].mean()) > 0.09


def test_thin_binomial_moments():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((100000, 1), 30.0)
    xt = thin(x0, torch.tensor([[0.3]]), gen)
    assert abs(float(xt.mean()) - 9.0) < 0.05
    assert abs(float(xt.var()) - 6.3) < 0.15
    assert bool((xt <= x0).all())


def test_count_loss_valid_mask_and_weights():
    y = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 1.0]])
    y_hat = torch.tensor([[1.5, 2.0, 0.5], [3.0, 0.2, 1.0]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    term = y_hat - y * torch.log(y_hat + 1e-8)
    per_cell = count_loss(y_hat, y, valid, reduce=False)
    torch.testing.assert_close(per_cell[0], term[0, :2].mean())
    assert float(per_cell[1]) == 0.0  # no valid gene: no contribution, no NaN
    w = torch.tensor([2.0, 3.0])
    torch.testing.assert_close(count_loss(y_hat, y, valid, w), (per_cell * w).mean())
    # minimised at y_hat = y (Poisson-type loss)
    yy = torch.tensor([[3.0]])
    grid = torch.linspace(0.5, 6, 1000)[:, None]
    losses = torch.stack([count_loss(g[None], yy) for g in grid])
    assert abs(float(grid[losses.argmin()]) - 3.0) < 0.01


def test_single_condition_guidance_is_the_two_term_mix():
    # y_c^g * y_u^(1 - g) (Sec. 3.4): g = 1 conditional, g = 0 unconditional, g > 1 extrapolates; g may be per cell
    yc, yu = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0])

    def guided(g):
        return log_linear_mix([yc, yu], [g, 1.0 - g])

    torch.testing.assert_close(guided(1.0), yc)
    torch.testing.assert_close(guided(0.0), yu)
    torch.testing.assert_close(guided(0.5), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(guided(2.0), yc**2 / yu)
    torch.testing.assert_close(guided(torch.tensor([0.5, 1.0])), torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize("kind", ["none", "rescale", "cap", "constant"])
def test_attrition_within_bounds(kind):
    s = CosineSchedule()
    grid = torch.linspace(1, 0, 21, dtype=torch.float64)
    for eta in (0.0, 0.01, 0.3, 1.0):
        for t, u in itertools.pairwise(grid):
            p_t, p_s = s.p(t), s.p(u)
            sig = attrition_rate(kind, eta, p_t, p_s, dt=float(t - u))
            smax = sigma_max(p_t, p_s)
            assert 0.0 <= float(sig) <= float(smax) + 1e-12
            beta = (p_s - (1 - sig) * p_t) / (1 - p_t)
            assert -1e-9 <= float(beta) <= 1 + 1e-9


def test_attrition_values_and_errors():
    p_t, p_s = torch.tensor(0.5), torch.tensor(0.8)
    assert float(sigma_max(p_t, p_s)) == pytest.approx(0.4)
    assert float(attrition_rate("rescale", 0.5, p_t, p_s)) == pytest.approx(0.2)
    assert float(attrition_rate("cap", 0.1, p_t, p_s)) == pytest.approx(0.1)
    assert float(attrition_rate("constant", 2.0, p_t, p_s, dt=0.1)) == pytest.approx(1 - np.exp(-0.2))
    with pytest.raises(ValueError, match="eta in \\[0, 1\\]"):
        attrition_rate("rescale", 1.5, p_t, p_s)
    with pytest.raises(ValueError, match="Unknown attrition"):
        attrition_rate("remask", 0.1, p_t, p_s)
    with pytest.raises(ValueError, match="dt"):
        attrition_rate("constant", 0.1, p_t, p_s)


def test_reverse_step_final_step_adds_rounded_rate():
    x_t = torch.tensor([[2.0, 0.0]])
    out = reverse_step(x_t, torch.tensor([[3.0, 1.0]]), torch.tensor(0.2), torch.tensor(1.0))
    assert torch.equal(out, torch.tensor([[5.0, 1.0]]))


def test_seed_reproducibility():
    x0 = torch.poisson(torch.full((50, 10), 4.0), generator=torch.Generator().manual_seed(0))
    run = lambda seed: generate(lambda x, t: (x0 - x).clamp_min(0) + 0.3, x0.shape, CosineSchedule(), n_steps=5,  # noqa: E731
                                attrition_kind="rescale", attrition=0.2, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_loops_take_the_attrition_kind_and_strength_by_keyword():
    x0 = torch.tensor([[3.0, 0.0, 7.0]])
    oracle = lambda x, t: x0 - x  # noqa: E731
    target = torch.tensor([[True, False, True]])
    with pytest.raises(TypeError):  # keyword-only: the old positional (kind, strength) order is refused
        generate(oracle, x0.shape, CosineSchedule(), 5, "rescale", 0.1)
    with pytest.raises(TypeError, match="attrition_kind='rescale'"):
        generate(oracle, x0.shape, CosineSchedule(), 5, attrition="rescale")
    with pytest.raises(TypeError, match="attrition_kind='cap'"):
        repaint(oracle, x0, target, CosineSchedule(), 5, attrition="cap")
    for kind in ("none", "rescale", "cap", "constant"):
        out = repaint(oracle, x0, target, CosineSchedule(), 5, attrition_kind=kind, attrition=0.2,
                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, x0)


def test_in_place_chain_matches_the_chain_with_fresh_buffers():
    # without a callback the samplers step their state in place; with one they allocate per step: same draws
    x0 = torch.poisson(torch.full((40, 12), 6.0), generator=torch.Generator().manual_seed(3))
    x_start = x0.T.contiguous().T  # a non-contiguous start must be copied, never written to
    kept = x_start.clone()
    oracle = lambda x, t: (x0 - x).clamp_min(0) + 0.4  # noqa: E731
    kw = dict(n_steps=6, attrition_kind="rescale", attrition=0.3, x_start=x_start, t_start=0.7)
    quiet = generate(oracle, x0.shape, CosineSchedule(), generator=torch.Generator().manual_seed(5), **kw)
    loud = generate(oracle, x0.shape, CosineSchedule(), generator=torch.Generator().manual_seed(5),
                    callback=lambda *a: None, **kw)
    assert torch.equal(quiet, loud) and torch.equal(x_start, kept)
    target = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    run = lambda cb: repaint(oracle, x0, target, CosineSchedule(), n_steps=6,  # noqa: E731
                             generator=torch.Generator().manual_seed(2), callback=cb)
    assert torch.equal(run(None), run(lambda *a: None))


@pytest.mark.parametrize("kind", ["none", "rescale", "cap", "constant"])
@pytest.mark.parametrize("schedule", [CosineSchedule(), BlackoutSchedule()], ids=["cosine", "blackout"])
def test_attrition_within_bounds_on_a_grid_of_t_s_eta(kind, schedule):
    # every pair s < t of a 41-point grid (not only consecutive steps), strengths from tiny to huge
    grid = torch.linspace(0, 1, 41, dtype=torch.float64)
    t, s = torch.meshgrid(grid, grid, indexing="ij")
    keep = s < t
    t, s = t[keep], s[keep]
    p_t, p_s = schedule.p(t), schedule.p(s)
    smax = sigma_max(p_t, p_s)
    etas = [0.0, 1e-3, 0.02, 0.5, 1.0] + ([] if kind == "rescale" else [3.0, 100.0])
    for eta in etas:
        sig = attrition_rate(kind, eta, p_t, p_s, dt=t - s)
        assert sig.shape == t.shape
        assert bool((sig >= 0).all()), (kind, eta)
        assert bool((sig <= smax + 1e-12).all()), (kind, eta)
        assert bool((smax <= 1).all())
        if kind == "none" or eta == 0.0:
            assert bool((sig == 0).all())
        beta = (p_s - (1 - sig) * p_t) / (1 - p_t).clamp_min(1e-12)
        assert bool((beta >= -1e-9).all() and (beta <= 1 + 1e-9).all()), (kind, eta)


def test_log_linear_mix():
    y1, y2, y3 = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 4.0]), torch.tensor([2.0, 2.0])
    torch.testing.assert_close(log_linear_mix([y1, y2], [0.5, 0.5]), torch.tensor([2.0, 2.0]))
    # the single-condition guidance rule is the two-term special case
    torch.testing.assert_close(log_linear_mix([y1, y2], [2.0, -1.0]), y1**2 / y2)
    # coefficients summing to one leave a rate all terms agree on unchanged; per-cell tensor coefficients
    torch.testing.assert_close(log_linear_mix([y3, y3, y3], [3.0, -1.5, -0.5]), y3)
    a = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(log_linear_mix([y1, y2], [1 - a, a]), torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="one coefficient per rate"):
        log_linear_mix([y1, y2], [1.0])


@pytest.mark.parametrize("coefs", [[1.5, -0.5], [0.3, 0.3, 0.4], "per-cell"])
def test_log_linear_mix_in_place_matches_the_copying_mix(coefs):
    gen = torch.Generator().manual_seed(0)
    n_terms = 2 if coefs == "per-cell" else len(coefs)
    stacked = 3.0 * torch.rand(n_terms, 5, 7, generator=gen)
    stacked[0, 0, 0] = 0.0  # clamped at 1e-12 by both
    if coefs == "per-cell":
        g = torch.linspace(0.0, 2.0, 5)[:, None]
        coefs = [g, 1.0 - g]
    expected = log_linear_mix(list(stacked.clone()), coefs)
    mixed = log_linear_mix(list(stacked), coefs, inplace=True)
    torch.testing.assert_close(mixed, expected)
    assert mixed.data_ptr() == stacked.data_ptr()  # written into the first rate's storage


def test_reverse_step_rounding_matches_binomial_of_randomly_rounded_rate():
    # births ~ Binomial(random_round(y), beta): for y = 2.3 a 0.7 / 0.3 mixture of Binomial(2, .) and Binomial(3, .)
    n, y, p_t, p_s = 200_000, 2.3, 0.5, 0.7
    beta = (p_s - p_t) / (1 - p_t)
    gen = torch.Generator().manual_seed(3)
    out = reverse_step(torch.zeros(n), torch.full((n,), y), p_t, p_s, generator=gen).numpy().astype(int)
    pmf = 0.7 * stats.binom.pmf(np.arange(4), 2, beta) + 0.3 * stats.binom.pmf(np.arange(4), 3, beta)
    observed = np.bincount(out, minlength=4)
    assert observed.size == 4  # support {0, ..., 3}
    assert stats.chisquare(observed, pmf * n).pvalue > 1e-3
    # negative control: deterministic rounding to 2 is rejected
    wrong = stats.binom.pmf(np.arange(4), 2, beta) + 1e-12
    assert stats.chisquare(observed, wrong / wrong.sum() * n).pvalue < 1e-6


def test_count_loss_constant_normaliser():
    y_hat = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 4.0]])
    y = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    term = y_hat - y * torch.log(y_hat + 1e-8)
    per_cell = count_loss(y_hat, y, valid, reduce=False, normaliser=2.5)
    torch.testing.assert_close(per_cell, (term * valid).sum(1) / 2.5)
    torch.testing.assert_close(count_loss(y_hat, y, None, normaliser=3.0), term.sum(1).mean() / 3.0)
    torch.testing.assert_close(count_loss(y_hat, y, None, normaliser=3.0), count_loss(y_hat, y))  # all trusted
    with pytest.raises(ValueError, match="normaliser"):
        count_loss(y_hat, y, valid, normaliser=0.0)
