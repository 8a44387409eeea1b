from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi


@pytest.fixture(autouse=True, scope="session")
def _quiet_scvi():
    scvi.settings.verbosity = 30
    scvi.settings.progress_bar_style = "tqdm"


def make_counts(n_obs: int = 240, n_vars: int = 30, n_labels: int = 3, seed: int = 0) -> ad.AnnData:
    """Small synthetic NB counts with label-specific means, a batch column and a 2-d obsm condition."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n_obs)
    base = rng.gamma(1.0, 2.0, size=(n_labels, n_vars))
    mu = base[labels]
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{i}" for i in labels]),
            "batch": pd.Categorical(rng.choice(["b0", "b1"], n_obs)),
        },
        index=[f"c{i}" for i in range(n_obs)],
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))
    adata.obsm["cond"] = rng.normal(size=(n_obs, 2)).astype(np.float32)
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module: the test machine is small and shared, and one thread is much
    faster than two contending ones. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """The bundled pbmc68k counts (700 cells)."""
    import countsdiff_sc as cds

    return cds.datasets.pbmc68k_reduced_counts()


@pytest.fixture(scope="module")
def diff():
    """A 512-step linear-beta Gaussian diffusion (the DICE prior's schedule)."""
    from countsdiff_sc.diffusion.gaussian import GaussianDiffusion, linear_beta_schedule

    return GaussianDiffusion(linear_beta_schedule(512, 1e-4, 2e-2))
