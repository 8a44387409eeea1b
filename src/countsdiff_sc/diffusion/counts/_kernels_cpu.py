"""Compiled CPU kernels for the binomial draws of the count diffusion (numba, compiled on first use).

``torch.binomial`` on CPU draws one entry at a time through a general-purpose sampler and was the costliest op of a
sampler step, ahead of the network (the documentation's benchmark pages have the sampler's timings). UMI counts are
sparse and the per-step probabilities small, so almost every draw has a small mean ``n q`` and sequential inversion, one
uniform and about ``n q + 1`` multiply-adds, is exact and cheap. The kernels below run it in one pass over the tensor,
with the uniforms from a counter-based generator (the SplitMix64 output for counter ``i``), so a draw depends only on
the seed and the entry's position, never on how the work is split. Large tensors are split into contiguous chunks
run on plain Python threads (the kernels release the GIL), as many as ``torch.get_num_threads()`` (so
``countsdiff_sc.settings.num_threads`` sets the kernels' threads with torch's); numba's own
threading layers are avoided on purpose, since they hang in a process forked after a threaded launch (OpenMP) or
abort on concurrent launches (workqueue), and a sampler must be safe in notebooks, data-loader workers and
multiprocessing pools. Entries with ``n q >= INVERSION_MAX_MEAN`` (rare on UMI data) are flagged by the kernels
and redrawn with ``torch.binomial`` by the Python wrappers.

The seed is drawn from the caller's torch generator (or torch's global one), so ``torch.manual_seed`` and
``generator=`` keep their meaning.
"""

from __future__ import annotations

import itertools
import threading

import numba
import numpy as np
import torch

from ._kernels_torch import rounded_binomial_torch

INVERSION_MAX_MEAN = 40.0
_MIN_ENTRIES_PER_THREAD = 1 << 17
_CHUNK = 1 << 16  # entries per work item of a threaded launch
_TABLE = 128  # counts below this take P(0) = (1 - q)^n from a table
_NO_FLOATS = np.empty(0, dtype=np.float32)  # "no RePaint arrays" for the step kernel
_NO_BOOLS = np.empty(0, dtype=np.bool_)

__all__ = ["INVERSION_MAX_MEAN", "binomial_cpu", "launch_threads", "reverse_step_cpu"]


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
    return np.float64(np.int64(z >> _S11)) * _INV53  # via int64: the value fits, and the signed convert is one op


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
def _pmf0(n, log1m_q, table):
    # P(0) = (1 - q)^n, looked up for small integer n (``table[j] = (1 - q)^j``) and computed beyond the table
    j = int(n)
    return table[j] if j < table.size else np.exp(n * log1m_q)


@numba.njit(inline="always", cache=True)
def _coefs(p):
    # inversion constants of Binomial(., p): q = min(p, 1 - p), log(1 - q), q / (1 - q) and whether p was flipped
    q = min(p, 1.0 - p)
    if q <= 0.0:
        return q, 0.0, 0.0, q != p
    return q, np.log1p(-q), q / (1.0 - q), q != p


@numba.njit(inline="always", cache=True)
def _draw(n, p, u):
    # Binomial(n, p) for any p in [0, 1]: trivial cases, then inversion of the smaller of p and 1 - p
    if n <= 0.0 or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return n
    q, log1m_q, ratio, flip = _coefs(p)
    k = _invert(n, q, np.exp(n * log1m_q), ratio, u)
    return n - k if (flip and k >= 0.0) else k


@numba.njit(cache=True, nogil=True)
def _binomial_kernel(count, prob, seed, out, start, stop):
    if prob.size > 1:  # per-entry probabilities
        n_big = 0
        for i in range(start, stop):
            n = np.float64(count[i])
            out[i] = _draw(n, np.float64(prob[i]), _uniform(seed, i)) if n > 0.0 else 0.0
            n_big += out[i] < 0.0
        return n_big
    # one probability: the inversion constants and a table of P(0) are computed once, and the loop has no branch
    # on the count (a zero count inverts to 0), which on sparse data would be mispredicted half of the time
    p = np.float64(prob[0])
    if p <= 0.0 or p >= 1.0:
        for i in range(start, stop):
            out[i] = count[i] if p >= 1.0 else 0.0
        return 0
    q, log1m_q, ratio, flip = _coefs(p)
    table = np.exp(np.arange(_TABLE) * log1m_q)
    n_big = 0
    for i in range(start, stop):
        n = max(np.float64(count[i]), 0.0)
        k = _invert(n, q, _pmf0(n, log1m_q, table), ratio, _uniform(seed, i))
        out[i] = n - k if (flip and k >= 0.0) else k
        n_big += k < 0.0
    return n_big


@numba.njit(cache=True, nogil=True)
def _binomial_rows_kernel(count, prob, n_cols, seed, out, start, stop):
    # one probability per row of a row-major (n_rows, n_cols) matrix (the forward thinning of a training batch, one
    # time per cell): the inversion constants and the P(0) table are made once per row, and the loop over a row has
    # no branch on the count. The uniforms are those of the per-entry path (counter = flat position).
    table = np.empty(_TABLE if n_cols >= _TABLE // 2 else 0)  # a table pays off only on rows of some length
    n_big = 0
    i = start
    while i < stop:
        r = i // n_cols
        end = min(stop, (r + 1) * n_cols)
        p = np.float64(prob[r])
        if p <= 0.0 or p >= 1.0:
            for j in range(i, end):
                out[j] = count[j] if p >= 1.0 else 0.0
        else:
            q, log1m_q, ratio, flip = _coefs(p)
            if table.size:
                table[0] = 1.0
                for j in range(1, table.size):
                    table[j] = table[j - 1] * (1.0 - q)
            for j in range(i, end):
                n = max(np.float64(count[j]), 0.0)
                k = _invert(n, q, _pmf0(n, log1m_q, table), ratio, _uniform(seed, j))
                out[j] = n - k if (flip and k >= 0.0) else k
                n_big += k < 0.0
        i = end
    return n_big


@numba.njit(cache=True, nogil=True)
def _step_kernel(x, y, x_obs, target, params, seed, out, start, stop):
    # One reverse step (Prop. 3.2) per entry, three uniforms each (counters 3i, 3i + 1, 3i + 2):
    #   x_s = (x_t - Binomial(x_t, sigma)) + Binomial(floor y, beta) + Bernoulli(frac(y) beta),
    # the last two terms being Binomial(random_round(y), beta) without materialising the rounded pool. An entry
    # with a mean too large for inversion is left as -1 - x for the caller to redraw with torch (``out`` may be
    # ``x`` itself, so the count is kept in the flag). The loop does not
    # branch on whether x or floor y is zero (about half of the entries of sparse data, so such a branch is
    # mispredicted often and cost more than the draw): a zero count inverts to 0 through P(0) = 1, and P(0) comes
    # from a table instead of an exp.
    # RePaint (``x_obs`` non-empty): entries where ``target`` is False take their known missing count
    # ``x_obs - x`` (an integer, so the fused rounding leaves it alone) instead of ``y``; the choice is arithmetic,
    # since a branch on a random mask would be mispredicted half of the time (the ``if repaint`` test is the same for
    # every entry, so it costs nothing).
    sigma, b = params[0], params[1]
    repaint = x_obs.size > 0
    qs, log1m_qs, ratio_s, flip_s = _coefs(sigma)
    qb, log1m_qb, ratio_b, flip_b = _coefs(b)
    table_s = np.exp(np.arange(_TABLE) * log1m_qs)
    table_b = np.exp(np.arange(_TABLE) * log1m_qb)
    n_big = 0
    for i in range(start, stop):
        n = max(np.float64(x[i]), 0.0)
        survivors = n
        if sigma >= 1.0:
            survivors = 0.0
        elif sigma > 0.0:
            d = _invert(n, qs, _pmf0(n, log1m_qs, table_s), ratio_s, _uniform(seed, 3 * i))
            if d < 0.0:
                out[i] = -1.0 - n
                n_big += 1
                continue
            survivors = d if flip_s else n - d  # deaths are d, or n - d when 1 - sigma was inverted
        v = np.float64(y[i])
        if repaint:
            m = np.float64(target[i])
            v = m * v + (1.0 - m) * (np.float64(x_obs[i]) - n)
        v = max(v, 0.0)
        whole = np.floor(v)
        births = 1.0 if _uniform(seed, 3 * i + 2) < (v - whole) * b else 0.0
        if b >= 1.0:
            births += whole
        elif b > 0.0:
            k = _invert(whole, qb, _pmf0(whole, log1m_qb, table_b), ratio_b, _uniform(seed, 3 * i + 1))
            if k < 0.0:
                out[i] = -1.0 - n
                n_big += 1
                continue
            births += whole - k if flip_b else k
        out[i] = survivors + births
    return n_big


def _seed(generator: torch.Generator | None) -> np.uint64:
    return np.uint64(int(torch.randint(0, 2**62, (1,), generator=generator)))


def launch_threads(size: int) -> int:
    """Threads a launch over ``size`` entries uses: ``torch.get_num_threads()`` (``countsdiff_sc.settings.num_threads``
    sets it), fewer for tensors too small to pay for a thread (``_MIN_ENTRIES_PER_THREAD`` entries each), at least 1."""
    return max(1, min(torch.get_num_threads(), size // _MIN_ENTRIES_PER_THREAD))


def _launch(kernel, *args) -> int:
    """Run ``kernel(*args, start, stop)`` over the entries and return the number flagged as large-mean.

    A large tensor is cut into chunks of ``_CHUNK`` entries that up to ``torch.get_num_threads()`` Python threads
    (the kernels release the GIL) take from a shared counter, so a thread slowed down by other work on its core
    (such as the OpenMP workers that keep spinning for a few milliseconds after torch's last parallel operation)
    takes fewer chunks instead of holding the others up. The draws depend on the entry's position only, never on
    which thread drew it.
    """
    size = args[0].size
    n_threads = launch_threads(size)
    if n_threads <= 1:
        return int(kernel(*args, 0, size))
    n_chunks = -(-size // _CHUNK)
    next_chunk = itertools.count().__next__  # atomic under the GIL
    flagged = [0] * n_threads

    def work(j: int) -> None:
        total = 0
        for c in iter(next_chunk, None):
            if c >= n_chunks:
                break
            total += int(kernel(*args, c * _CHUNK, min(size, (c + 1) * _CHUNK)))
        flagged[j] = total

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
        Float32 probabilities in ``[0, 1]``: a scalar, one per row (``(n, 1)`` for a ``(n, g)`` count; the constants
        of the inversion are then made once per row), or a tensor broadcastable to ``count``.
    generator
        Optional torch generator (one integer is drawn from it for the seed).

    Returns
    -------
    Float32 tensor shaped like ``count``.
    """
    c = np.ascontiguousarray(count.detach().numpy().reshape(-1), dtype=np.float32)
    out = np.empty_like(c)
    per_row = count.dim() == 2 and prob.dim() == 2 and prob.shape == (count.shape[0], 1) and count.shape[1] > 1
    if per_row:  # one probability per row (thinning with one time per cell)
        p_np = np.ascontiguousarray(prob.detach().numpy().reshape(-1), dtype=np.float32)
        flagged = _launch(_binomial_rows_kernel, c, p_np, count.shape[1], _seed(generator), out)
    else:
        p = prob.reshape(-1) if prob.numel() == 1 else prob.expand(count.shape).reshape(-1)
        p_np = np.ascontiguousarray(p.detach().numpy(), dtype=np.float32)
        flagged = _launch(_binomial_kernel, c, p_np, _seed(generator), out)
    if flagged:  # large means: torch's sampler on those few
        idx = np.flatnonzero(out < 0)
        if per_row:
            p_big = torch.from_numpy(p_np[idx // count.shape[1]])
        else:
            p_big = torch.from_numpy(p_np[idx] if p_np.size > 1 else np.full(idx.size, p_np[0], dtype=np.float32))
        out[idx] = torch.binomial(torch.from_numpy(c[idx]), p_big, generator=generator).numpy()
    return torch.from_numpy(out).reshape(count.shape)


def reverse_step_cpu(
    x_t: torch.Tensor,
    y_hat: torch.Tensor,
    sigma: float,
    beta: float,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    x_obs: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step ``Binomial(x_t, 1 - sigma) + Binomial(random_round(max(y, 0)), beta)`` on CPU tensors.

    The death draw, the random rounding and the birth draw of CountsDiff (Soatto et al., 2026, Sec. 3.5 and Prop. 3.2)
    in one pass: ``Binomial(random_round(y), beta) = Binomial(floor y, beta) + Bernoulli(frac(y) beta)`` in
    distribution, so the rounded pool is never materialised. Entries whose draws have a large mean are redrawn with
    torch. The rate ``y`` is ``y_hat``, or for RePaint (``x_obs`` and ``target`` given) ``y_hat`` where ``target`` is
    True and the known missing count ``x_obs - x_t`` elsewhere, chosen inside the same pass.

    Parameters
    ----------
    x_t
        Float32 CPU tensor of current counts (non-negative integers).
    y_hat
        Float32 CPU tensor of rates, shaped like ``x_t`` (negative entries count as 0).
    sigma, beta
        Death and birth probabilities in ``[0, 1]``, shared by all entries.
    generator
        Optional torch generator.
    out
        Optional contiguous float32 CPU tensor shaped like ``x_t`` to write ``x_s`` into; may be ``x_t`` itself (a
        sampler that owns its state saves an allocation, and the page faults of a fresh buffer, per step).
    x_obs, target
        RePaint's observed counts (float32) and the boolean mask of the entries to impute, both shaped like ``x_t``;
        give both or neither.

    Returns
    -------
    Float32 tensor ``x_s`` shaped like ``x_t`` (``out`` when given).
    """
    x = np.ascontiguousarray(x_t.detach().numpy().reshape(-1), dtype=np.float32)
    v = np.ascontiguousarray(y_hat.detach().numpy().reshape(-1), dtype=np.float32)
    if x.shape != v.shape:
        raise ValueError(f"x_t and y_hat must have the same shape, got {tuple(x_t.shape)} and {tuple(y_hat.shape)}.")
    if (x_obs is None) != (target is None):
        raise ValueError("Give both x_obs and target (RePaint), or neither.")
    if x_obs is None:
        obs, tgt = _NO_FLOATS, _NO_BOOLS
    else:
        if x_obs.shape != x_t.shape or target.shape != x_t.shape:
            raise ValueError(
                f"x_obs and target must be shaped like x_t {tuple(x_t.shape)}, got {tuple(x_obs.shape)} and "
                f"{tuple(target.shape)}."
            )
        obs = np.ascontiguousarray(x_obs.detach().numpy().reshape(-1), dtype=np.float32)
        tgt = np.ascontiguousarray(target.detach().numpy().reshape(-1), dtype=np.bool_)
    if out is None:
        out = torch.empty(x_t.shape, dtype=torch.float32)
    elif out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous() or out.shape != x_t.shape:
        raise ValueError("out must be a contiguous float32 CPU tensor shaped like x_t.")
    o = out.detach().numpy().reshape(-1)
    sigma, beta = min(max(float(sigma), 0.0), 1.0), min(max(float(beta), 0.0), 1.0)
    if _launch(_step_kernel, x, v, obs, tgt, np.asarray([sigma, beta]), _seed(generator), o):
        # large means: redraw those entries (deaths and births) with torch's sampler, the path GPUs take; the
        # kernel left -1 - x_t there, so the counts are known even when out is x_t
        idx = np.flatnonzero(o < 0)
        counts = -1.0 - o[idx]
        rate = v[idx] if x_obs is None else np.where(tgt[idx], v[idx], obs[idx] - counts)
        n = torch.from_numpy(counts)
        survivors = torch.binomial(n, torch.full_like(n, 1.0 - sigma), generator=generator) if sigma > 0 else n
        births = rounded_binomial_torch(torch.from_numpy(rate), torch.tensor(beta), generator)
        o[idx] = (survivors + births).numpy()
    return out
