"""Synthetic count generators from the papers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def synthetic_nb(
    n_cells: int = 4000,
    n_genes: int = 10,
    mean_range: tuple[float, float] = (0.05, 0.5),
    dispersion_range: tuple[float, float] = (0.2, 5.0),
    size_factor_sigma: float = 0.6,
    seed: int = 0,
) -> ad.AnnData:
    """Sparse negative-binomial counts with shared size factors (CountsDiff paper, App. D.1 / Sec. 4.1).

    Every dimension ``j`` has a mean ``mu_j ~ LogUniform(mean_range)`` and a dispersion
    ``theta_j ~ LogUniform(dispersion_range)``; a cell draws ``x_j ~ NB(mu_j, theta_j)`` (variance
    ``mu + mu^2 / theta``) and the draw is multiplied by a cell size factor ``s ~ LogNormal(0, size_factor_sigma)``
    and rounded, which couples the dimensions. With the defaults more than half the entries are zero.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the matrix.
    mean_range, dispersion_range
        Ranges of the log-uniform priors of the NB mean and dispersion.
    size_factor_sigma
        Standard deviation of the log size factor.
    seed
        Seed of the numpy generator; the same seed gives the same data.

    Returns
    -------
    AnnData with integer counts (float32, dense) in ``X``, ``var["nb_mean"]``, ``var["nb_dispersion"]`` and
    ``obs["size_factor"]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.synthetic_nb(n_cells=100, seed=1)
    >>> adata.shape
    (100, 10)
    """
    if n_cells < 1 or n_genes < 1:
        raise ValueError(f"n_cells and n_genes must be positive, got {n_cells} and {n_genes}.")
    for name, (lo, hi) in {"mean_range": mean_range, "dispersion_range": dispersion_range}.items():
        if not 0 < lo <= hi:
            raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}.")
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.uniform(np.log(mean_range[0]), np.log(mean_range[1]), n_genes))
    theta = np.exp(rng.uniform(np.log(dispersion_range[0]), np.log(dispersion_range[1]), n_genes))
    # numpy parameterises NB by (n, p) with mean n (1 - p) / p: n = theta, p = theta / (theta + mu).
    x = rng.negative_binomial(theta[None, :], (theta / (theta + mu))[None, :], size=(n_cells, n_genes))
    s = rng.lognormal(0.0, size_factor_sigma, size=n_cells)
    counts = np.rint(x * s[:, None]).astype(np.float32)
    obs = pd.DataFrame({"size_factor": s}, index=[f"cell_{i}" for i in range(n_cells)])
    var = pd.DataFrame(
        {"nb_mean": mu, "nb_dispersion": theta}, index=[f"dim_{j}" for j in range(n_genes)]
    )
    return ad.AnnData(X=counts, obs=obs, var=var)
