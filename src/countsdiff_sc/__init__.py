"""countsdiff-sc: diffusion on the natural numbers for single-cell counts, on scvi-tools."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import baselines, datasets, diffusion, metrics, nn, pp
from .model import CountsDiffModel

try:
    __version__ = version("countsdiff-sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["CountsDiffModel", "__version__", "baselines", "datasets", "diffusion", "metrics", "nn", "pp"]
