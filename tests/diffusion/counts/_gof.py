"""Chi-square goodness-of-fit helpers shared by the diffusion tests."""

from __future__ import annotations

import numpy as np
from scipy import stats


def gof_pvalue(samples: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square p-value of integer samples against ``pmf`` on the support ``0..len(pmf)-1``.

    Bins are merged from the left until each expects at least 5 draws (a remainder joins the last bin); samples
    outside the support give 0, fewer than two bins give 1.
    """
    samples = np.asarray(samples).astype(np.int64)
    if samples.min() < 0 or samples.max() >= len(pmf):
        return 0.0
    expected = np.asarray(pmf, dtype=float) * samples.size
    observed = np.bincount(samples, minlength=len(pmf)).astype(float)
    obs_bins, exp_bins, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            obs_bins.append(acc_o)
            exp_bins.append(acc_e)
            acc_o, acc_e = 0.0, 0.0
    if len(obs_bins) < 2:
        return 1.0
    obs_bins[-1] += acc_o
    exp_bins[-1] += acc_e
    exp_arr = np.asarray(exp_bins)
    return float(stats.chisquare(obs_bins, exp_arr * (sum(obs_bins) / exp_arr.sum())).pvalue)


def binomial_pvalue(samples: np.ndarray, n: int, p: float) -> float:
    """:func:`gof_pvalue` against ``Binomial(n, p)``; degenerate cases (``n = 0``, ``p`` in {0, 1}) are exact."""
    if n == 0 or p <= 0.0:
        return 1.0 if np.all(samples == 0) else 0.0
    if p >= 1.0:
        return 1.0 if np.all(samples == n) else 0.0
    return gof_pvalue(samples, stats.binom.pmf(np.arange(n + 1), n, p))
