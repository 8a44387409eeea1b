"""A one-gene toy with a closed-form denoiser, and the exact law of the reverse chain on it.

``x_0`` is drawn from a known finite distribution ``pi`` (a truncated mixture of two Poissons), so the optimal rate
``y(x, t) = E[x_0 | x_t = x] - x`` follows from Bayes' rule with ``x_t | x_0 ~ Binomial(x_0, p(t))``. The law of the
generated counts is then computed *exactly* (no sampling) by pushing a probability vector over the states through
each transition's kernel: random rounding of the pool and binomial births, for the Euler step and for the two stages
of the trapezoid step with the same formulas (float32 rates and probabilities) as
:mod:`countsdiff_sc.diffusion.counts._sampling`. The Monte Carlo tests check the implementation against this law.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats

from countsdiff_sc.diffusion import PSchedule, time_grid, trapezoid_midpoint


def mixture_prior(support: int = 40, means: tuple[float, ...] = (1.0, 12.0), weights: tuple[float, ...] = (0.6, 0.4)):
    """pmf of a mixture of Poissons on ``0..support`` (renormalised)."""
    k = np.arange(support + 1)
    pi = sum(w * stats.poisson.pmf(k, m) for w, m in zip(weights, means, strict=True))
    return pi / pi.sum()


def _p32(schedule: PSchedule, t: float) -> float:
    """``p(t)`` as the sampler uses it for the birth probabilities (float64 value rounded to float32)."""
    return float(np.float32(float(schedule.p(torch.tensor(t, dtype=torch.float64)))))


def posterior_mean(pi: np.ndarray, p: float, x: np.ndarray) -> np.ndarray:
    """``E[x_0 | x_t = x]`` under ``x_0 ~ pi``, ``x_t ~ Binomial(x_0, p)`` (states off the support: ``x`` itself)."""
    x0 = np.arange(len(pi))
    lik = stats.binom.pmf(np.asarray(x)[:, None], x0[None, :], p) * pi[None, :]
    z = lik.sum(1)
    return np.where(z > 0, (lik * x0).sum(1) / np.where(z > 0, z, 1.0), np.asarray(x, dtype=float))


def oracle_rate(pi: np.ndarray, schedule: PSchedule, max_state: int = 200):
    """The Bayes-optimal rate function ``(x, t) -> E[x_0 | x_t = x] - x`` for the sampler (a table per time)."""
    cache: dict[float, torch.Tensor] = {}
    states = np.arange(max_state + 1)

    def rate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = float(t[0])
        if tt not in cache:
            p = float(schedule.p(torch.tensor(tt, dtype=torch.float64)))
            cache[tt] = torch.from_numpy(posterior_mean(pi, p, states) - states).to(torch.float32)
        return cache[tt][x.long().clamp(0, max_state)]

    return rate


def _births(pool: np.ndarray, b: float, n_states: int) -> np.ndarray:
    """``[i, k] = P(k births)`` from the real pool ``pool[i]``: random rounding, then ``Binomial(., b)``."""
    pool = np.clip(pool, 0.0, None)
    lo = np.floor(pool)
    f = pool - lo
    k = np.arange(n_states)[None, :]
    return (1 - f)[:, None] * stats.binom.pmf(k, lo[:, None], b) + f[:, None] * stats.binom.pmf(k, lo[:, None] + 1, b)


def _rate_table(pi: np.ndarray, schedule: PSchedule, t: float, n_states: int) -> np.ndarray:
    # the sampler passes t as float32 to the rate function, and the rates come back as float32
    t32 = float(np.float32(t))
    states = np.arange(n_states)
    y = posterior_mean(pi, float(schedule.p(torch.tensor(t32, dtype=torch.float64))), states) - states
    return y.astype(np.float32).astype(np.float64)


def exact_law(pi: np.ndarray, schedule: PSchedule, n_steps: int, grid: str = "uniform", step_rule: str = "euler",
              n_states: int | None = None) -> np.ndarray:
    """Exact pmf of the chain's output on ``0..n_states-1`` (no attrition), driven by the Bayes-optimal rate."""
    n_states = n_states or 3 * len(pi)
    times = time_grid(n_steps, schedule, grid=grid).tolist()
    dist = np.zeros(n_states)
    dist[0] = 1.0
    for t, s in itertools.pairwise(times):
        p_t, p_s = _p32(schedule, t), _p32(schedule, s)
        y_t = _rate_table(pi, schedule, t, n_states)
        mid = trapezoid_midpoint(schedule, t, s) if step_rule == "trapezoid" else None
        new = np.zeros(n_states)
        if mid is None:
            kernel = _births(y_t, min(max((p_s - p_t) / (1 - p_t), 0.0), 1.0), n_states)
            for x in np.flatnonzero(dist > 0):
                new[x:] += dist[x] * kernel[x, : n_states - x]
            dist = new
            continue
        m, c = mid
        p_m = _p32(schedule, m)
        b1 = min(max((p_m - p_t) / (1 - p_t), 0.0), 1.0)
        b2 = min(max((p_s - p_m) / (1 - p_m), 0.0), 1.0)
        y_m = _rate_table(pi, schedule, m, n_states)
        stage1 = _births(y_t, b1, n_states)
        k = np.arange(n_states)
        for x in np.flatnonzero(dist > 1e-15):
            x_m = np.arange(x, n_states)
            w1 = dist[x] * stage1[x, : n_states - x]
            f = y_t[x] - np.floor(y_t[x])
            kappa = f * (1 - f) / y_t[x] if y_t[x] > 0 else 0.0
            m_t = x + y_t[x]
            pool = m_t + c * ((x_m + y_m[x_m]) - m_t) - x_m - kappa * ((x_m - x) - b1 * y_t[x])
            idx = x_m[:, None] + k[None, :]
            keep = idx < n_states
            new += np.bincount(idx[keep], weights=(w1[:, None] * _births(pool, b2, n_states))[keep],
                               minlength=n_states)
        dist = new
    return dist


def total_variation(dist: np.ndarray, pi: np.ndarray) -> float:
    """Total-variation distance between a pmf on ``0..len(dist)-1`` and ``pi`` (zero-padded)."""
    q = np.zeros(max(len(dist), len(pi)))
    q[: len(pi)] = pi
    d = np.zeros_like(q)
    d[: len(dist)] = dist
    return 0.5 * float(np.abs(d - q).sum())
