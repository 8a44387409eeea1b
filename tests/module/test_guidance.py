"""Guidance algebra: the terms of each rule, and the rule they encode on known rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from countsdiff_sc.diffusion import log_linear_mix
from countsdiff_sc.module import check_strengths, guidance_terms, interpolation_terms


def mix(terms, rates):
    """Evaluate terms on fixed rates: ``rates[pattern]`` is the rate of a condition pattern."""
    return log_linear_mix([rates[tuple(k.tolist())].clone() for k, _ in terms], [c for _, c in terms])


@pytest.fixture
def rates():
    torch.manual_seed(0)
    patterns = [(a, b) for a in (False, True) for b in (False, True)]
    return {p: torch.rand(4, 3) + 0.1 for p in patterns}


def test_single_strength_is_the_papers_rule(rates):
    given = np.array([True, True])
    y = mix(guidance_terms(given, 1.7, independent=False), rates)
    expected = rates[(True, True)] ** 1.7 * rates[(False, False)] ** -0.7
    torch.testing.assert_close(y, expected)


def test_equal_per_condition_strengths_equal_one_strength(rates):
    given = np.array([True, True])
    a = guidance_terms(given, [2.0, 2.0], independent=False)
    b = guidance_terms(given, 2.0, independent=False)
    assert [(k.tolist(), c) for k, c in a] == [(k.tolist(), c) for k, c in b]


def test_compositional_rule(rates):
    given = np.array([True, True])
    g = [3.0, 0.5]
    y = mix(guidance_terms(given, g, independent=True), rates)
    lu, lc = rates[(False, False)].log(), rates[(True, True)].log()
    l1, l2 = rates[(True, False)].log(), rates[(False, True)].log()
    gbar = np.mean(g)
    expected = torch.exp(lu + gbar * (lc - lu) + (g[0] - gbar) * (l1 - lu) + (g[1] - gbar) * (l2 - lu))
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="uncond_mode='independent'"):
        guidance_terms(given, g, independent=False)


def test_nothing_given_is_unconditional():
    terms = guidance_terms(np.array([False, False]), [5.0, -1.0], independent=False)  # strengths unused
    assert [(k.tolist(), c) for k, c in terms] == [([False, False], 1.0)]


def test_interpolation_endpoints(rates):
    src, tgt, unc = rates[(True, False)], rates[(False, True)], rates[(False, False)]
    for a, g in [(0.0, 1.0), (1.0, 1.0), (0.3, 2.0)]:
        terms = interpolation_terms(g, a)
        by = {("source", True): src, ("target", True): tgt, ("source", False): unc}
        y = log_linear_mix([by[(lab, kept)].clone() for lab, kept, _ in terms], [c for _, _, c in terms])
        torch.testing.assert_close(y, src ** (g * (1 - a)) * tgt ** (g * a) * unc ** (1 - g))


def test_check_strengths_messages():
    with pytest.raises(ValueError, match="needs 3 strengths"):
        check_strengths([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="finite and non-negative"):
        check_strengths([1.0, float("nan")], 2)


def _toy_module(y_c: torch.Tensor, y_u: torch.Tensor, uncond_mode: str = "joint"):
    """A module whose network returns ``y_c`` for passes that keep a condition and ``y_u`` for fully dropped ones."""
    from countsdiff_sc.module import CountsDiffModule

    module = CountsDiffModule(y_c.numel(), n_cats_per_cov=[2, 2], use_labels=True, uncond_mode=uncond_mode).eval()

    def net(x_t, t, cat, cont, drop, valid, scale, n_variants=1):
        dropped = drop.all(dim=1, keepdim=True)
        return torch.where(dropped, y_u.expand(drop.shape[0], -1), y_c.expand(drop.shape[0], -1)).clone()

    module.network = lambda use_ema=True: net
    return module


def test_guidance_cap_bounds_the_guided_rate_on_a_toy():
    # gene 2 is switched on by the condition: y_u << y_C, so g = 3 gives y_C (y_C / y_u)^2 = 4 * 400^2 = 640,000
    y_c = torch.tensor([1.0, 2.0, 4.0, 8.0])
    y_u = torch.tensor([1.0, 3.0, 0.01, 8.0])
    module = _toy_module(y_c, y_u)
    x, t, cat = torch.zeros(3, 4), torch.full((3,), 0.5), torch.zeros(3, 2, dtype=torch.long)
    free = module.rate(x, t, cat, guidance=3.0)
    torch.testing.assert_close(free, (y_c ** 3 * y_u ** -2).expand(3, -1))
    assert float(free[0, 2]) > 6e5
    capped = module.rate(x, t, cat, guidance=3.0, guidance_cap=3.0)
    torch.testing.assert_close(capped, torch.minimum(free, 3.0 * y_c))
    assert float(capped[0, 2]) == pytest.approx(12.0) and torch.equal(capped[:, [0, 1, 3]], free[:, [0, 1, 3]])
    # a cap that never binds, and guidance <= 1 where the rate stays between y_u and y_C, change nothing
    assert torch.equal(module.rate(x, t, cat, guidance=3.0, guidance_cap=1e9), free)
    assert torch.equal(module.rate(x, t, cat, guidance=0.5, guidance_cap=3.0), module.rate(x, t, cat, guidance=0.5))
    # per-condition strengths: the cap is relative to the joint conditional pass
    indep = _toy_module(y_c, y_u, "independent")
    per = indep.rate(x, t, cat, guidance=[3.0, 2.0], guidance_cap=2.0)
    torch.testing.assert_close(per, torch.minimum(indep.rate(x, t, cat, guidance=[3.0, 2.0]), 2.0 * y_c))
    # no condition given: the unconditional rate, whatever the cap
    torch.testing.assert_close(module.rate(x, t, guidance=3.0, guidance_cap=2.0), y_u.expand(3, -1))


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, float("-inf"), float("nan")])
def test_guidance_cap_values(bad):
    from countsdiff_sc.module import check_guidance_cap

    assert check_guidance_cap(None) is None and check_guidance_cap(2) == 2.0
    assert check_guidance_cap(float("inf")) is None  # how a sampler lifts a verb's default cap
    with pytest.raises(ValueError, match="guidance_cap must be None, a number >= 1"):
        check_guidance_cap(bad)
