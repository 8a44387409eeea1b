"""Shared fixtures of the metric tests: small synthetic counts and one tiny scVI embedder per session."""

from __future__ import annotations

import numpy as np
import pytest

import countsdiff_sc as cds


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def counts(rng: np.random.Generator) -> np.ndarray:
    """NB-like counts: 120 cells x 40 genes, with many zeros, float32."""
    mu = rng.gamma(0.8, 2.0, size=40)
    size = rng.lognormal(0.0, 0.5, size=(120, 1))
    return rng.poisson(rng.gamma(2.0, mu * size / 2.0)).astype(np.float32)


@pytest.fixture(scope="session")
def pbmc():
    """700 cells x 765 genes of real counts with obs['bulk_labels']."""
    return cds.datasets.pbmc68k_reduced_counts()


@pytest.fixture(scope="session")
def pbmc_embedder(pbmc):
    """The default scFID embedder trained for 3 epochs on pbmc (cached by the package for the whole session)."""
    from countsdiff_sc.metrics import fit_scfid_embedder

    return fit_scfid_embedder(pbmc, max_epochs=3, accelerator="cpu", seed=0)
