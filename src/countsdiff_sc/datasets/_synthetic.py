"""Synthetic count generators from the papers, and a Splatter-model simulator with known true counts."""

from __future__ import annotations

from collections.abc import Sequence

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


def simulate_counts(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_groups: int = 5,
    *,
    group_probs: Sequence[float] | None = None,
    mean_shape: float = 0.6,
    mean_rate: float = 0.3,
    lib_loc: float = 11.0,
    lib_scale: float = 0.2,
    de_prob: float = 0.1,
    de_down_prob: float = 0.5,
    de_fac_loc: float = 0.1,
    de_fac_scale: float = 0.4,
    bcv_common: float = 0.1,
    bcv_df: float = 60.0,
    dropout_mid: float | None = 0.0,
    dropout_shape: float = -1.0,
    seed: int = 0,
) -> ad.AnnData:
    """Single-cell UMI counts with groups, library sizes, biological variation and dropout (Splatter's model).

    A re-implementation from the equations of Splatter (Zappia, Phipson & Oshlack, Genome Biol. 18:174, 2017,
    Methods and Fig. 1; no Splatter code), with its parameter names and defaults (expression outliers and batches
    are left out). For gene ``j``, group ``g`` and cell ``i`` of group ``g(i)``:

    1. **Gene means** ``m_j ~ Gamma(shape=mean_shape, rate=mean_rate)``.
    2. **Groups.** A cell's group is drawn from ``group_probs`` (equal by default). In every group a gene is
       differentially expressed with probability ``de_prob`` with a factor ``f_gj ~ LogNormal(de_fac_loc,
       de_fac_scale)``, inverted (down-regulation) with probability ``de_down_prob``; otherwise ``f_gj = 1``.
    3. **Library sizes** ``L_i ~ LogNormal(lib_loc, lib_scale)``; the cell's base means are its group's
       proportions scaled to its library, ``b_ij = L_i m_j f_{g(i)j} / sum_k m_k f_{g(i)k}``.
    4. **Biological coefficient of variation** ``phi_ij = (bcv_common + 1 / sqrt(b_ij)) sqrt(bcv_df / chi2_j)``
       with ``chi2_j ~ ChiSquared(bcv_df)`` per gene; cell means ``mu_ij ~ Gamma(shape=1 / phi_ij^2,
       scale=b_ij phi_ij^2)`` (mean ``b_ij``, coefficient of variation ``phi_ij``).
    5. **True counts** ``y_ij ~ Poisson(mu_ij)``: marginally gamma-Poisson (negative binomial) with variance
       ``b_ij + phi_ij^2 b_ij^2``.
    6. **Dropout** ("experiment" type): entry ``(i, j)`` is dropped with probability
       ``pi_ij = 1 / (1 + exp(-dropout_shape (log mu_ij - dropout_mid)))`` (logistic in the log mean; a negative
       shape drops lowly expressed genes more), independently of ``y_ij``; observed ``x_ij = 0`` if dropped,
       else ``y_ij``. ``dropout_mid=None`` disables dropout.

    The dropout draws come last from the generator, so the same ``seed`` with different dropout settings gives the
    same true counts.

    Parameters
    ----------
    n_cells, n_genes, n_groups
        Shape of the matrix and number of groups.
    group_probs
        Probabilities of the groups (``n_groups`` values summing to 1); None: equal.
    mean_shape, mean_rate
        Gamma prior of the gene means (Splatter: 0.6, 0.3).
    lib_loc, lib_scale
        Location and scale of the log-normal library sizes (Splatter: 11, 0.2; for a few hundred genes a smaller
        ``lib_loc``, e.g. ``log(1500)``, gives the depth of a typical 10x cell restricted to those genes).
    de_prob, de_down_prob, de_fac_loc, de_fac_scale
        Differential expression per group (Splatter: 0.1, 0.5, 0.1, 0.4).
    bcv_common, bcv_df
        Common biological coefficient of variation and degrees of freedom of its per-gene scatter (Splatter: 0.1,
        60).
    dropout_mid, dropout_shape
        Midpoint (in log mean) and shape of the logistic dropout (Splatter's defaults for "experiment" dropout:
        0, -1); ``dropout_mid=None``: no dropout.
    seed
        Seed of the numpy generator; the same seed gives the same data.

    Returns
    -------
    AnnData with

    - ``X``: observed counts after dropout (float32, dense, integer values);
    - ``layers["truth"]``: counts before dropout ``y``; ``layers["dropout"]``: bool, entries zeroed by dropout
      (dropped and ``y > 0``); ``layers["cell_means"]``: the Poisson means ``mu`` (float32);
    - ``obs["group"]`` (categorical ``group1`` ...), ``obs["library_size"]`` (``L_i``);
    - ``var["base_mean"]`` (``m_j``), ``var["bcv_factor"]`` (``sqrt(bcv_df / chi2_j)``),
      ``var["de_factor_<group>"]`` (``f_gj``);
    - ``uns["simulation"]``: the parameters and the realised ``dropout_rate`` (fraction of the non-zero true
      entries zeroed by dropout), ``zero_fraction_truth`` and ``zero_fraction_observed``.

    Examples
    --------
    >>> import numpy as np
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.simulate_counts(300, 100, 3, lib_loc=np.log(1500), dropout_mid=1.0, seed=0)
    >>> adata.shape
    (300, 100)
    >>> bool((adata.layers["truth"] >= adata.X).all() and (adata.X[adata.layers["dropout"]] == 0).all())
    True
    """
    for name, value in {"n_cells": n_cells, "n_genes": n_genes, "n_groups": n_groups}.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in {"mean_shape": mean_shape, "mean_rate": mean_rate, "bcv_df": bcv_df}.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}.")
    for name, value in {"lib_scale": lib_scale, "de_fac_scale": de_fac_scale, "bcv_common": bcv_common}.items():
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}.")
    for name, value in {"de_prob": de_prob, "de_down_prob": de_down_prob}.items():
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
    if group_probs is None:
        probs = np.full(n_groups, 1.0 / n_groups)
    else:
        probs = np.asarray(group_probs, dtype=np.float64)
        if probs.shape != (n_groups,) or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
            raise ValueError(f"group_probs must hold n_groups={n_groups} non-negative values summing to 1, got "
                             f"{group_probs!r}.")
    rng = np.random.default_rng(seed)
    # 1. gene means (numpy's gamma takes a scale = 1 / rate)
    base = rng.gamma(mean_shape, 1.0 / mean_rate, size=n_genes)
    # 2. groups and differential expression factors
    group = rng.choice(n_groups, size=n_cells, p=probs)
    is_de = rng.random((n_groups, n_genes)) < de_prob
    down = rng.random((n_groups, n_genes)) < de_down_prob
    fac = rng.lognormal(de_fac_loc, de_fac_scale, size=(n_groups, n_genes))
    fac = np.where(is_de, np.where(down, 1.0 / fac, fac), 1.0)
    group_means = base[None, :] * fac
    group_props = group_means / group_means.sum(axis=1, keepdims=True)
    # 3. library sizes and the cells' base means
    lib = rng.lognormal(lib_loc, lib_scale, size=n_cells)
    b = group_props[group] * lib[:, None]
    # 4. biological coefficient of variation and gamma cell means
    bcv_factor = np.sqrt(bcv_df / rng.chisquare(bcv_df, size=n_genes))
    with np.errstate(divide="ignore"):
        phi = (bcv_common + 1.0 / np.sqrt(b)) * bcv_factor[None, :]
    phi = np.minimum(phi, 1e6)  # b = 0 (a gene of zero mean): a finite, huge CV; its mean stays 0
    mu = rng.gamma(1.0 / phi**2, b * phi**2)
    # 5. true counts
    truth = rng.poisson(mu).astype(np.float32)
    # 6. logistic dropout on the log mean (drawn last: the same seed gives the same truth)
    if dropout_mid is None:
        dropped = np.zeros(truth.shape, dtype=bool)
    else:
        with np.errstate(divide="ignore", over="ignore"):
            p_drop = 1.0 / (1.0 + np.exp(-dropout_shape * (np.log(mu) - dropout_mid)))
        dropped = rng.random(truth.shape) < p_drop
    dropout = dropped & (truth > 0)
    observed = np.where(dropout, np.float32(0.0), truth)

    names = [f"group{g + 1}" for g in range(n_groups)]
    obs = pd.DataFrame(
        {"group": pd.Categorical.from_codes(group, categories=names), "library_size": lib},
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"base_mean": base, "bcv_factor": bcv_factor}, index=[f"gene_{j}" for j in range(n_genes)])
    for g, name in enumerate(names):
        var[f"de_factor_{name}"] = fac[g]
    n_nonzero = int(np.count_nonzero(truth))
    uns = {
        "simulation": {
            "model": "Splatter (Zappia et al. 2017): gamma gene means, log-normal DE factors, log-normal library "
            "sizes, gamma-Poisson counts with a biological CV, logistic dropout on the log mean",
            "n_cells": int(n_cells), "n_genes": int(n_genes), "n_groups": int(n_groups),
            "group_probs": probs.tolist(), "mean_shape": float(mean_shape), "mean_rate": float(mean_rate),
            "lib_loc": float(lib_loc), "lib_scale": float(lib_scale), "de_prob": float(de_prob),
            "de_down_prob": float(de_down_prob), "de_fac_loc": float(de_fac_loc), "de_fac_scale": float(de_fac_scale),
            "bcv_common": float(bcv_common), "bcv_df": float(bcv_df),
            "dropout_mid": None if dropout_mid is None else float(dropout_mid), "dropout_shape": float(dropout_shape),
            "seed": int(seed),
            "dropout_rate": float(np.count_nonzero(dropout) / max(n_nonzero, 1)),
            "zero_fraction_truth": float(1.0 - n_nonzero / truth.size),
            "zero_fraction_observed": float(np.mean(observed == 0)),
        }
    }
    layers = {"truth": truth, "dropout": dropout, "cell_means": mu.astype(np.float32)}
    return ad.AnnData(X=observed, obs=obs, var=var, layers=layers, uns=uns)
