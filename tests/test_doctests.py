"""The examples in the docstrings run as written, in every subpackage but ``model`` (whose examples need trained
models; the model tests and the tutorials run those workflows)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import matplotlib
import pytest

PACKAGES = ["diffusion", "nn", "module", "pp", "metrics", "baselines", "datasets", "pl"]
MODULES = sorted(
    info.name
    for package in (importlib.import_module(f"countsdiff_sc.{name}") for name in PACKAGES)
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")  # subpackages too
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    matplotlib.use("Agg")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
