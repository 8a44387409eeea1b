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
