"""Draws for fixed seeds equal those recorded with 0.1.0 (see ``tests/model/_golden.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.model._golden import HERE, golden_adata, load_models, run_cases


@pytest.fixture(scope="module")
def results():
    a, b = load_models()
    return run_cases(a, b, golden_adata())


def test_golden_models_still_load():
    a, b = load_models()
    assert a.is_trained and b.is_trained
    assert list(a.var_names_) == list(golden_adata().var_names)


@pytest.mark.parametrize("case", sorted(np.load(HERE / "draws.npz").files))
def test_draws_equal_recorded(results, case):
    expected = np.load(HERE / "draws.npz")[case]
    assert np.array_equal(results[case], expected), f"{case}: draws differ from the recorded 0.1.0 draws"
