"""RePaint's observed entries, ``known="path"`` (one forward path) vs ``"redraw"`` (a fresh binomial per step), and
jump-back resampling: exact marginals of the observed entries, the implementation against the exact law of the
three-gene toy of :mod:`._toy_repaint`, and the orderings of its total-variation errors that hold with a wide margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from countsdiff_sc.diffusion import KNOWN_MODES, CosineSchedule, repaint

from ._gof import binomial_pvalue, gof_pvalue
from ._toy_repaint import exact_repaint_law, joint_prior, oracle_rate, repaint_tv

X_OBS = torch.tensor([0.0, 1.0, 3.0, 12.0, 40.0])
N_REP = 4000


@pytest.mark.parametrize(("step_rule", "iters", "kind", "eta"),
                         [("euler", 1, "none", 0.0), ("euler", 2, "rescale", 0.2), ("trapezoid", 1, "rescale", 0.02)])
def test_redraw_observed_entries_are_fresh_binomials_at_every_step(step_rule, iters, kind, eta):
    schedule = CosineSchedule()
    x_obs = X_OBS.repeat(N_REP, 1)
    target = torch.zeros_like(x_obs, dtype=torch.bool)
    target[:, 0] = True  # one imputed column; the observed columns must ignore the rate
    pvals, corr, prev = [], [], []

    def check(k, t, s, x):
        ps = float(schedule.p(torch.tensor(s, dtype=torch.float64)))
        for j in (2, 3, 4):
            pvals.append(binomial_pvalue(x[:, j].numpy(), int(X_OBS[j]), ps))
        if prev and 0.0 < ps < 1.0 and iters == 1:
            corr.append(float(np.corrcoef(prev[-1], x[:, 4].numpy())[0, 1]))
        prev.append(x[:, 4].numpy().copy())

    out = repaint(lambda x, t: torch.full_like(x, 2.3), x_obs, target, schedule, n_steps=6, known="redraw",
                  step_rule=step_rule, attrition_kind=kind, attrition=eta, resample_jump=1, resample_iters=iters,
                  generator=torch.Generator().manual_seed(0), callback=check)
    assert torch.equal(out[:, 1:], x_obs[:, 1:])
    assert min(pvals) > 1e-3 / len(pvals), f"worst p-value {min(pvals):.2e}"
    # independent between steps (the path's consecutive values are strongly correlated)
    assert all(abs(c) < 0.06 for c in corr), corr


def test_path_observed_entries_are_correlated_between_steps_and_redraw_is_not():
    schedule = CosineSchedule()
    x_obs = torch.full((4000, 2), 30.0)
    target = torch.tensor([True, False]).expand_as(x_obs)
    corr = {}
    for known in KNOWN_MODES:
        xs: list[np.ndarray] = []
        repaint(lambda x, t: torch.ones_like(x), x_obs, target, schedule, n_steps=4, known=known,
                generator=torch.Generator().manual_seed(1),
                callback=lambda k, t, s, x, xs=xs: xs.append(x[:, 1].numpy().copy()))
        corr[known] = float(np.corrcoef(xs[1], xs[2])[0, 1])
    assert corr["path"] > 0.4 and abs(corr["redraw"]) < 0.06, corr


def test_known_values_at_target_entries_are_ignored_and_unknown_mode_fails():
    x_obs = torch.tensor([[5.0, 7.0]]).repeat(50, 1)
    target = torch.tensor([True, False]).expand_as(x_obs)
    junk = x_obs.clone()
    junk[:, 0] = -3.0  # nonsense where the target is: never drawn from
    a = repaint(lambda x, t: torch.ones_like(x), x_obs, target, CosineSchedule(), n_steps=5, known="redraw",
                generator=torch.Generator().manual_seed(2))
    b = repaint(lambda x, t: torch.ones_like(x), junk, target, CosineSchedule(), n_steps=5, known="redraw",
                generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a[:, 1], x_obs[:, 1])
    with pytest.raises(ValueError, match="known"):
        repaint(lambda x, t: x, x_obs, target, CosineSchedule(), n_steps=2, known="fresh")


# --- the three-gene toy with an exact denoiser ---------------------------------------------------------------------


@pytest.mark.parametrize(("known", "eta", "iters"), [("path", 0.2, 2), ("redraw", 0.2, 2), ("redraw", 0.0, 1)])
def test_repaint_draws_follow_the_exact_law_of_the_toy(known, eta, iters):
    # the implementation against the law computed independently in _toy_repaint: 30000 chains, chi-square test
    pi = joint_prior()
    schedule = CosineSchedule()
    kw = {"known": known, "attrition_kind": "rescale" if eta else "none", "attrition": eta, "resample_jump": 1,
          "resample_iters": iters}
    law = exact_repaint_law(pi, schedule, 4, **kw)
    rng = np.random.default_rng(0)
    n = 30000
    flat = rng.choice(pi.size, size=n, p=pi.ravel())
    x0 = torch.from_numpy(np.stack(np.unravel_index(flat, pi.shape), axis=1).astype(np.float32))
    target = torch.tensor([False, True, True]).expand_as(x0)
    out = repaint(oracle_rate(pi, schedule), x0, target, schedule, n_steps=4,
                  generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out[:, 0], x0[:, 0])
    cells = np.ravel_multi_index(out.long().numpy().T, pi.shape)
    assert gof_pvalue(cells, law.ravel()) > 1e-4


@pytest.fixture(scope="module")
def toy_tv():
    pi = joint_prior()
    schedule = CosineSchedule()
    table = {}
    for known in KNOWN_MODES:
        for eta in (0.0, 0.2):
            for k, iters in ((5, 1), (5, 2), (5, 3), (20, 1)):
                law = exact_repaint_law(pi, schedule, k, known=known, attrition_kind="rescale" if eta else "none",
                                        attrition=eta, resample_jump=1, resample_iters=iters)
                table[known, eta, k, iters] = repaint_tv(law, pi)
    return table


def test_resampling_reduces_the_error_for_both_modes(toy_tv):
    for known in KNOWN_MODES:
        for eta in (0.0, 0.2):
            e1, e2, e3 = (toy_tv[known, eta, 5, i] for i in (1, 2, 3))
            assert e3 < 0.85 * e2 < 0.85 * 0.85 * e1, (known, eta, e1, e2, e3)
        # without attrition, 5 steps x 3 passes (15 evaluations) beat 20 steps without resampling
        assert toy_tv[known, 0.0, 5, 3] < 0.95 * toy_tv[known, 0.0, 20, 1]


def test_path_and_redraw_are_close_on_the_toy(toy_tv):
    # the two carry the observed entries with the same marginals; on this toy their errors differ by < 3%, while
    # RePaint's own error (unconditional rate, early births never undone) is ~0.2-0.3 without resampling
    for key in [k for k in toy_tv if k[0] == "path"]:
        other = toy_tv[("redraw", *key[1:])]
        assert abs(toy_tv[key] - other) < 0.03 * toy_tv[key], (key, toy_tv[key], other)
        assert toy_tv[key] > 0.1


def test_the_toy_law_test_detects_a_different_chain():
    # negative control: draws without resampling against the law with resampling are rejected
    pi = joint_prior()
    schedule = CosineSchedule()
    law = exact_repaint_law(pi, schedule, 4, resample_jump=1, resample_iters=2)
    flat = np.random.default_rng(0).choice(pi.size, size=30000, p=pi.ravel())
    x0 = torch.from_numpy(np.stack(np.unravel_index(flat, pi.shape), axis=1).astype(np.float32))
    out = repaint(oracle_rate(pi, schedule), x0, torch.tensor([False, True, True]).expand_as(x0), schedule,
                  n_steps=4, generator=torch.Generator().manual_seed(3))
    assert gof_pvalue(np.ravel_multi_index(out.long().numpy().T, pi.shape), law.ravel()) < 1e-6
