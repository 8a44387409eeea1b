"""A three-gene toy for RePaint with an exact denoiser, and the exact law of the RePaint chain on it.

``x_0 = (o, u_1, u_2)`` is drawn from a known joint pmf ``pi`` on ``{0..S}^3`` (a mixture of three product-Poisson
components, truncated and renormalised, so the genes are correlated through the component). Gene 0 is observed, genes
1 and 2 are imputed. The *network* is the Bayes-optimal unconditional denoiser, ``y(x, t) = E[x_0 | x_t = x] - x``
with ``x_t | x_0 ~ Binomial(x_0, p(t))`` gene-wise: what a perfectly trained CountsDiff model predicts. The target of
imputation is the conditional law ``pi(u_1, u_2 | o)`` (Bayes' rule on ``pi``).

The law of :func:`countsdiff_sc.diffusion.repaint`'s output (Euler steps, uniform grid, any attrition, resampling with
any window) is computed *exactly* by pushing the joint probability of ``(o, k, u_1, u_2)`` (``k`` the current value
of the observed entry) through each transition: given the state, the three genes move independently (random rounding
of the rate, binomial births, binomial deaths), the observed gene along its path (``known="path"``: deaths and births
driven by the integer rate ``o - k``) or redrawn (``known="redraw"``: ``Binomial(o, p(s))``, ``o`` at ``s = 0``).
The Monte Carlo tests check the implementation against this law; :func:`repaint_tv` measures the error.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import torch
from scipy import stats

from countsdiff_sc.diffusion import CosineSchedule, PSchedule, attrition_rate, time_grid

from ._toy import _births, _p32

#: Support ``0..S`` of every gene.
S = 10
#: Mixture components: weights and per-gene Poisson means (observed gene first).
WEIGHTS = (0.45, 0.35, 0.20)
MEANS = ((0.5, 6.0, 1.0), (5.0, 1.0, 4.0), (8.0, 7.0, 7.0))


@cache
def joint_prior(support: int = S) -> np.ndarray:
    """``pi[o, u_1, u_2]``: the truncated, renormalised three-gene mixture."""
    k = np.arange(support + 1)
    pi = sum(w * np.einsum("i,j,l->ijl", *(stats.poisson.pmf(k, m) for m in means))
             for w, means in zip(WEIGHTS, MEANS, strict=True))
    return pi / pi.sum()


def _binom_matrix(p: float, n: int) -> np.ndarray:
    """``[x, x0] = P(Binomial(x0, p) = x)`` on ``0..n-1``."""
    k = np.arange(n)
    return stats.binom.pmf(k[:, None], k[None, :], p)


def rate_table(pi: np.ndarray, p: float) -> np.ndarray:
    """``[k, a, b, g] = E[x_0^g | x_t = (k, a, b)] - x_t^g``: the exact denoiser's rate at survival prob. ``p``."""
    n = pi.shape[0]
    bm = _binom_matrix(p, n)
    vals = np.arange(n, dtype=float)
    z = np.einsum("ijl,ki,aj,bl->kab", pi, bm, bm, bm, optimize=True)
    sums = np.stack([np.einsum("ijl,ki,aj,bl,i->kab", pi, bm, bm, bm, vals, optimize=True),
                     np.einsum("ijl,ki,aj,bl,j->kab", pi, bm, bm, bm, vals, optimize=True),
                     np.einsum("ijl,ki,aj,bl,l->kab", pi, bm, bm, bm, vals, optimize=True)], axis=-1)
    grid = np.stack(np.meshgrid(vals, vals, vals, indexing="ij"), axis=-1)
    # states the prior cannot produce (x_t > 0 at p = 0): no births
    means = np.where(z[..., None] > 0, sums / np.where(z > 0, z, 1.0)[..., None], grid)
    return np.clip(means - grid, 0.0, None)


def oracle_rate(pi: np.ndarray, schedule: PSchedule):
    """The exact denoiser as a rate function for :func:`~countsdiff_sc.diffusion.repaint` (float32 tables)."""
    tables: dict[float, torch.Tensor] = {}
    n = pi.shape[0]

    def rate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = float(t[0])
        if tt not in tables:
            p = float(schedule.p(torch.tensor(tt, dtype=torch.float64)))
            tables[tt] = torch.from_numpy(rate_table(pi, p)).to(torch.float32)
        idx = x.long().clamp(0, n - 1)
        return tables[tt][idx[:, 0], idx[:, 1], idx[:, 2]]

    return rate


def _gene_kernel(y: np.ndarray, u: np.ndarray, sigma: float, beta: float, n: int) -> np.ndarray:
    """``[state, u']``: survivors ``Binomial(u, 1 - sigma)`` plus births ``Binomial(round(y), beta)``."""
    births = _births(y.ravel(), beta, n)  # [state, births]
    if sigma <= 0.0:
        surv = np.zeros((u.size, n))
        surv[np.arange(u.size), u.ravel()] = 1.0
    else:
        surv = stats.binom.pmf(np.arange(n)[None, :], u.ravel()[:, None], 1.0 - sigma)
    out = np.zeros((u.size, n))
    for d in range(n):  # convolution of survivors and births, truncated at the support
        out[:, d:] += surv[:, d : d + 1] * births[:, : n - d]
    return out.reshape(*y.shape, n)


def exact_repaint_law(pi: np.ndarray, schedule: PSchedule, n_steps: int, *, known: str = "path",
                      attrition_kind: str = "none", attrition: float = 0.0, resample_jump: int | None = None,
                      resample_iters: int = 1) -> np.ndarray:
    """Exact joint pmf ``[o, u_1, u_2]`` of RePaint's output (``o ~`` the observed gene's marginal), Euler steps."""
    n = pi.shape[0]
    pi_o = pi.sum((1, 2))
    times = time_grid(n_steps, schedule).tolist()
    n_trans = len(times) - 1
    o = np.arange(n)
    kk = np.arange(n)
    # P[o, k, a, b]; start at t = 1: observed entry Binomial(o, p(1)), imputed entries 0
    dist = np.zeros((n, n, n, n))
    dist[:, :, 0, 0] = pi_o[:, None] * stats.binom.pmf(kk[None, :], o[:, None], _p32(schedule, times[0]))
    grid = np.stack(np.meshgrid(kk, kk, kk, indexing="ij"), axis=-1)

    def step(dist: np.ndarray, k: int) -> np.ndarray:
        t, s = times[k], times[k + 1]
        p_t, p_s = _p32(schedule, t), _p32(schedule, s)
        sigma = float(attrition_rate(attrition_kind, attrition, torch.tensor(p_t, dtype=torch.float32),
                                     torch.tensor(p_s, dtype=torch.float32), dt=t - s))
        beta = float(np.clip((np.float32(p_s) - (1 - np.float32(sigma)) * np.float32(p_t))
                             / max(1 - np.float32(p_t), 1e-12), 0.0, 1.0))
        y = rate_table(pi, float(schedule.p(torch.tensor(float(np.float32(t)), dtype=torch.float64))))
        y = y.astype(np.float32).astype(np.float64)
        ka = _gene_kernel(y[..., 1], grid[..., 1], sigma, beta, n)  # [k, a, b, A]
        kb = _gene_kernel(y[..., 2], grid[..., 2], sigma, beta, n)  # [k, a, b, B]
        if known == "redraw":
            fresh = np.zeros((n, n))
            if k == n_trans - 1:
                fresh[o, o] = 1.0
            else:
                fresh = stats.binom.pmf(kk[None, :], o[:, None], p_s)  # [o, K]
            kk_kernel = np.broadcast_to(fresh[:, None, :], (n, n, n))  # [o, k, K]
        else:
            # path: survivors of k plus Binomial(o - k, beta) births (k > o has probability 0)
            miss = np.clip(o[:, None] - kk[None, :], 0, None)
            births = stats.binom.pmf(kk[None, None, :], miss[..., None], beta)  # [o, k, births]
            surv = stats.binom.pmf(kk[None, :], kk[:, None], 1.0 - sigma) if sigma > 0 else np.eye(n)  # [k, d]
            kk_kernel = np.zeros((n, n, n))
            for d in range(n):
                kk_kernel[:, :, d:] += surv[None, :, d : d + 1] * births[:, :, : n - d]
        inner = np.einsum("okab,kabA,kabB->okAB", dist, ka, kb, optimize=True)
        return np.einsum("okAB,okK->oKAB", inner, kk_kernel, optimize=True)

    def thin(dist: np.ndarray, ratio: float) -> np.ndarray:
        tm = _binom_matrix(ratio, n).T  # [x, x']
        return np.einsum("okab,kK,aA,bB->oKAB", dist, tm, tm, tm, optimize=True)

    jump = 1 if resample_jump is None else resample_jump
    starts = range(0, n_trans, jump) if resample_iters > 1 else [0]
    for a in starts:
        b = n_trans if resample_iters == 1 else min(a + jump, n_trans)
        for r in range(resample_iters):
            for k in range(a, b):
                dist = step(dist, k)
            if r < resample_iters - 1:
                p_a, p_b = _p32(schedule, times[a]), _p32(schedule, times[b])
                dist = thin(dist, float(np.float32(p_a) / max(np.float32(p_b), np.float32(1e-30))))
    # at the end the observed entry equals o; return the law of (o, u_1, u_2)
    return np.einsum("oKAB->oAB", dist)


def repaint_tv(law: np.ndarray, pi: np.ndarray) -> float:
    """Expected total variation ``E_o[TV(law(u | o), pi(u | o))]`` (= TV of the joint laws, ``o`` shared)."""
    return 0.5 * float(np.abs(law - pi).sum())


def tv_table(n_steps=(5, 10, 20, 50), settings=None, schedule: PSchedule | None = None) -> list[dict]:
    """Exact TVs of RePaint on the toy for every ``n_steps`` and setting ``(known, attrition, resample_iters)``."""
    schedule = schedule or CosineSchedule()
    pi = joint_prior()
    settings = settings or list(itertools.product(("path", "redraw"), (0.0, 0.02, 0.2), (1, 2, 3)))
    rows = []
    for k, (known, eta, iters) in itertools.product(n_steps, settings):
        law = exact_repaint_law(pi, schedule, k, known=known, attrition_kind="rescale" if eta else "none",
                                attrition=eta, resample_jump=1, resample_iters=iters)
        rows.append({"n_steps": k, "known": known, "attrition": eta, "resample_iters": iters,
                     "tv": repaint_tv(law, pi), "mass": float(law.sum())})
    return rows
