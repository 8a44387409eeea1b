"""Compiled CPU kernels for the binomial draws of the count diffusion (numba, compiled on first use).

``torch.binomial`` on CPU draws one entry at a time through a general-purpose sampler and was the costliest op of a
sampler step (about 2.4x the network's time for 2,000 genes with the default MLP). UMI counts are sparse and the
per-step probabilities small, so almost every draw has a small mean ``n q`` and sequential inversion, one uniform
and about ``n q + 1`` multiply-adds, is exact and cheap. The kernels below run it in one pass over the tensor,
with the uniforms from a counter-based generator (the SplitMix64 output for counter ``i``), so a draw depends only on
the seed and the entry's position, never on how the work is split. Large tensors are split into contiguous chunks
run on plain Python threads (the kernels release the GIL), as many as ``torch.get_num_threads()``; numba's own
threading layers are avoided on purpose, since they hang in a process forked after a threaded launch (OpenMP) or
abort on concurrent launches (workqueue), and a sampler must be safe in notebooks, data-loader workers and
multiprocessing pools. Entries with ``n q >= INVERSION_MAX_MEAN``
(rare on UMI data) are flagged and left to ``torch.binomial`` by the caller.

The seed is drawn from the caller's torch generator (or torch's global one), so ``torch.manual_seed`` and
``generator=`` keep their meaning.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch

INVERSION_MAX_MEAN = 40.0
_MIN_ENTRIES_PER_THREAD = 1 << 17

__all__ = ["INVERSION_MAX_MEAN", "binomial_cpu", "rounded_binomial_cpu"]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53


@numba.njit(inline="always", cache=True)
def _uniform(seed, i):
    # SplitMix64 output for counter i: a bijective mix of seed + (i + 1) * golden; the top 53 bits as a double
    z = seed + np.uint64(i + 1) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    z = z ^ (z >> _S31)
    return np.float64(z >> _S11) * _INV53


@numba.njit(inline="always", cache=True)
def _invert(n, q, pmf0, ratio, u):
    # Binomial(n, q) for q in (0, 1/2] by sequential inversion of u, given P(0) = (1 - q)^n and q / (1 - q);
    # returns -1 when the mean n q is too large for it
    if n * q >= INVERSION_MAX_MEAN:
        return -1.0
    pmf = pmf0
    cdf = pmf
    k = 0.0
    while u > cdf and k < n:  # k = n ends the search: the cdf is 1 there up to rounding
        pmf *= (n - k) / (k + 1.0) * ratio
        cdf += pmf
        k += 1.0
    return k


@numba.njit(inline="always", cache=True)
def _draw(n, p, u):
    # Binomial(n, p) for any p in [0, 1]: trivial cases, then inversion of the smaller of p and 1 - p
    if n <= 0.0 or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return n
    q = min(p, 1.0 - p)
    k = _invert(n, q, np.exp(n * np.log1p(-q)), q / (1.0 - q), u)
    return k if (k < 0.0 or q == p) else n - k


@numba.njit(cache=True, nogil=True)
def _binomial_kernel(count, prob, seed, out, start, stop):
    per_entry = prob.size > 1
    n_big = 0
    for i in range(start, stop):
        n = np.float64(count[i])
        if n <= 0.0:
            out[i] = 0.0
        else:
            out[i] = _draw(n, np.float64(prob[i] if per_entry else prob[0]), _uniform(seed, i))
            n_big += out[i] < 0.0
    return n_big


@numba.njit(cache=True, nogil=True)
def _rounded_kernel(y, beta, seed, out, start, stop):
    # Binomial(random_round(y), beta) = Binomial(floor y, beta) + Bernoulli(frac(y) beta): two uniforms per entry
    # (counters 2i and 2i + 1). A large-mean entry is returned as -1 - Bernoulli; the caller adds torch's draw of
    # its floor part.
    b = np.float64(beta[0])
    q = min(b, 1.0 - b)
    flip = q != b
    log1m_q = np.log1p(-q) if q > 0.0 else 0.0
    ratio = q / (1.0 - q) if q > 0.0 else 0.0
    n_big = 0
    for i in range(start, stop):
        v = max(np.float64(y[i]), 0.0)
        whole = np.floor(v)
        extra = 1.0 if _uniform(seed, 2 * i + 1) < (v - whole) * b else 0.0
        if whole == 0.0 or b <= 0.0:
            out[i] = extra
        elif b >= 1.0:
            out[i] = whole + extra
        else:
            k = _invert(whole, q, np.exp(whole * log1m_q), ratio, _uniform(seed, 2 * i))
            if k < 0.0:
                out[i] = -1.0 - extra
                n_big += 1
            else:
                out[i] = (whole - k if flip else k) + extra
    return n_big


def _seed(generator: torch.Generator | None) -> np.uint64:
    return np.uint64(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _launch(kernel, *args) -> int:
    """Run ``kernel(*args, start, stop)`` over the entries, in ``torch.get_num_threads()`` contiguous chunks on
    Python threads when the tensor is large (the kernels release the GIL); the draws do not depend on the split.
    Returns the number of entries flagged as large-mean."""
    size = args[0].size
    n_threads = min(torch.get_num_threads(), size // _MIN_ENTRIES_PER_THREAD)
    if n_threads <= 1:
        return int(kernel(*args, 0, size))
    bounds = np.linspace(0, size, n_threads + 1).astype(np.int64)
    flagged = [0] * n_threads

    def work(j: int) -> None:
        flagged[j] = int(kernel(*args, int(bounds[j]), int(bounds[j + 1])))

    workers = [threading.Thread(target=work, args=(j,)) for j in range(1, n_threads)]
    for w in workers:
        w.start()
    work(0)
    for w in workers:
        w.join()
    return sum(flagged)


def binomial_cpu(count: torch.Tensor, prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact ``Binomial(count, prob)`` on CPU tensors (see the module docstring).

    Parameters
    ----------
    count
        Float32 CPU tensor of non-negative integers.
    prob
        Float32 probabilities in ``[0, 1]``: a scalar or a tensor broadcastable to ``count``.
    generator
        Optional torch generator (one integer is drawn from it for the seed).

    Returns
    -------
    Float32 tensor shaped like ``count``.
    """
    c = np.ascontiguousarray(count.detach().numpy().reshape(-1), dtype=np.float32)
    p = prob.reshape(-1) if prob.numel() == 1 else prob.expand(count.shape).reshape(-1)
    p_np = np.ascontiguousarray(p.detach().numpy(), dtype=np.float32)
    out = np.empty_like(c)
    if _launch(_binomial_kernel, c, p_np, _seed(generator), out):  # large means: torch's sampler on those few
        big = out < 0
        idx = torch.from_numpy(np.flatnonzero(big))
        p_big = p[idx] if p.numel() > 1 else p.expand(idx.numel())
        out[big] = torch.binomial(torch.from_numpy(c)[idx], p_big.contiguous(), generator=generator).numpy()
    return torch.from_numpy(out).reshape(count.shape)


def rounded_binomial_cpu(y: torch.Tensor, beta: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``Binomial(random_round(max(y, 0)), beta)`` for a float32 CPU tensor ``y`` and one probability ``beta``.

    Same distribution as rounding first (paper Sec. 3.5) and thinning after, without materialising the rounded
    pool: ``Binomial(floor y, beta) + Bernoulli(frac(y) beta)``.

    Parameters
    ----------
    y
        Float32 CPU tensor (negative entries count as 0).
    beta
        Scalar probability in ``[0, 1]``.
    generator
        Optional torch generator.

    Returns
    -------
    Float32 tensor shaped like ``y``.
    """
    v = np.ascontiguousarray(y.detach().numpy().reshape(-1), dtype=np.float32)
    b = np.asarray([float(beta)], dtype=np.float32)
    out = np.empty_like(v)
    if _launch(_rounded_kernel, v, b, _seed(generator), out):
        # large means: the floor part from torch's sampler; the Bernoulli part is already in -1 - out
        idx = np.flatnonzero(out < 0)
        whole = torch.from_numpy(np.floor(v[idx]))
        draw = torch.binomial(whole, torch.full_like(whole, float(b[0])), generator=generator).numpy()
        out[idx] = draw + (-1.0 - out[idx])
    return torch.from_numpy(out).reshape(y.shape)
