from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_counts


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def imputed_adata() -> ad.AnnData:
    adata = make_counts(n_obs=60, n_vars=12)
    rng = np.random.default_rng(1)
    x = adata.X.toarray()
    adata.layers["countsdiff_mask"] = rng.random(adata.shape) < 0.3
    adata.layers["countsdiff_imputed"] = (x + rng.normal(0, 0.5, x.shape)).clip(0).astype(np.float32)
    return adata


@pytest.fixture
def interp_adata() -> tuple[ad.AnnData, ad.AnnData]:
    """A reference and a fake interpolation output (the contract of CountsDiffModel.interpolate)."""
    ref = make_counts(n_obs=90, n_vars=15, n_labels=2)
    x = ref.X.toarray()
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    mu_a, mu_b = x[labels == "type_0"].mean(0), x[labels == "type_1"].mean(0)
    rng = np.random.default_rng(2)
    weights = np.repeat(np.linspace(0, 1, 5), 8)
    counts = rng.poisson((1 - weights[:, None]) * mu_a + weights[:, None] * mu_b).astype(np.float32)
    obs = pd.DataFrame(
        {"interpolation_weight": weights, "source_label": "type_0", "target_label": "type_1"},
        index=[f"i{k}" for k in range(len(weights))],
    )
    return ad.AnnData(counts, obs=obs, var=ref.var.copy()), ref
