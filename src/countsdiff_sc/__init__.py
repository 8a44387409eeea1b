"""countsdiff-sc: diffusion on the natural numbers for single-cell counts, on scvi-tools.

Subpackages and models are imported on first use, so ``import countsdiff_sc`` and the command line's ``--help`` stay
fast; ``cds.pp``, ``cds.metrics``, ``cds.pl``, ``cds.CountsDiffModel`` ... load their dependencies (scvi-tools,
torch, matplotlib) when first touched. ``cds.settings.num_threads`` (or ``cds.set_num_threads``) sets the CPU threads
of torch and of the compiled sampler kernels together.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("countsdiff-sc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

_SUBPACKAGES = ("baselines", "datasets", "diffusion", "metrics", "model", "module", "nn", "pl", "pp")
_LAZY_NAMES = {"CountsDiffModel": "countsdiff_sc.model", "DICEModel": "countsdiff_sc.model",
               "Sampler": "countsdiff_sc.model",
               "settings": "countsdiff_sc._settings", "set_num_threads": "countsdiff_sc._settings"}

__all__ = [
    "CountsDiffModel",
    "DICEModel",
    "Sampler",
    "__version__",
    "baselines",
    "datasets",
    "diffusion",
    "metrics",
    "model",
    "module",
    "nn",
    "pl",
    "pp",
    "set_num_threads",
    "settings",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import baselines, datasets, diffusion, metrics, model, module, nn, pl, pp
    from ._settings import set_num_threads, settings
    from .model import CountsDiffModel, DICEModel, Sampler


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"countsdiff_sc.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'countsdiff_sc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
