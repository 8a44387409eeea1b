"""The resource guard: budgets, refusals with the estimate and the ways out."""

from __future__ import annotations

import pytest

import countsdiff_sc as cds
from countsdiff_sc._resources import ResourceError, available_memory, check_memory, check_work, format_bytes


@pytest.fixture
def budgets():
    old = cds.settings.max_memory, cds.settings.max_work
    yield
    cds.settings.max_memory, cds.settings.max_work = old


def test_memory_budget_from_the_machine_and_from_settings(budgets):
    assert available_memory() > 0
    check_memory("a small request", 1024, "none needed")
    with pytest.raises(ResourceError, match=r"needs about 2\.0 MiB.*settings.max_memory.*store_samples=False"):
        cds.settings.max_memory = 2**20
        check_memory("a big request", 2 * 2**20, "store_samples=False")
    with pytest.raises(ResourceError, match="90% of the memory available"):
        cds.settings.max_memory = None
        check_memory("an impossible request", 10 * available_memory(), "fewer draws")


def test_work_budget(budgets):
    check_work("a normal job", 4e10, "none")
    with pytest.raises(ResourceError, match=r"1e\+12 entry-evaluations.*fewer draws"):
        check_work("impute(n_samples=10**6)", 1e12, "fewer draws")
    cds.settings.max_work = 2e12
    check_work("impute(n_samples=10**6)", 1e12, "fewer draws")
    with pytest.raises(ResourceError):
        check_work("nan work", float("nan"), "none")


@pytest.mark.parametrize("bad", [0, -1, True, float("nan"), "1GB"])
def test_budget_settings_refuse_bad_values(budgets, bad):
    with pytest.raises(ValueError, match="max_memory"):
        cds.settings.max_memory = bad
    with pytest.raises(ValueError, match="max_work"):
        cds.settings.max_work = bad


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
