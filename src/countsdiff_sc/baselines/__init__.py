"""Baselines of the CountsDiff paper: imputation (Sec. 4.3, App. D.3.2) and count generation (Sec. 4.1, App. D.1).

Every imputation baseline reads counts and a boolean held-out mask (``layers["countsdiff_mask"]``), copies the
observed entries unchanged into a float32 output layer, fills the held-out entries, records its parameters in
``uns["countsdiff"][key_added]`` and returns the filled matrix. An existing output layer is replaced only if
countsdiff-sc wrote it (a user's own layer raises ``ValueError``); ``X`` and input layers are never modified.

:class:`GaussianDDPMGenerator` is the generation baseline: a Gaussian DDPM on ``log1p`` counts with the interface
of ``CountsDiffModel.sample`` (``fit`` then ``sample`` returning an AnnData of integer counts).
"""

from __future__ import annotations

from ._gaussian_ddpm import GaussianDDPMGenerator
from ._knn import impute_knn
from ._magic import impute_magic
from ._scvi import SCVIImputation, impute_scvi
from ._simple import impute_conditional_mean, impute_mean, impute_zero

__all__ = [
    "GaussianDDPMGenerator",
    "SCVIImputation",
    "impute_conditional_mean",
    "impute_knn",
    "impute_magic",
    "impute_mean",
    "impute_scvi",
    "impute_zero",
]
