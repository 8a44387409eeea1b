"""Package settings: the number of CPU threads the package computes with.

One number governs both kinds of CPU work of countsdiff-sc: torch's intra-op threads (the network, the losses, every
tensor operation) and the compiled binomial kernels of the samplers (``diffusion/counts/_kernels_cpu``), which split
large tensors over as many plain Python threads as ``torch.get_num_threads()``. Setting the torch count therefore
sets both; numba's own thread pool is never started (``numba.set_num_threads`` would launch it, and the kernels avoid
it on purpose, see their module docstring), so ``NUMBA_NUM_THREADS`` does not matter.

Why a setting at all: torch's default is one thread per core, and its OpenMP workers spin-wait between operations. Two
such processes on the same cores slow each other down by an order of magnitude, not by half (the documentation's
threads page has the measurements). Fewer threads than cores costs at most the idle cores' share; more threads than
free cores costs much more. The automatic default (:meth:`Settings.default_num_threads`) therefore counts only the
cores that are free when it is asked.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Settings", "set_num_threads", "settings"]


def available_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask where the platform has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _check(n: object) -> int | None:
    """``n`` as a thread count (a positive integer), or None for "auto"; anything else is refused with its value."""
    if n is None or (isinstance(n, str) and n.strip().lower() == "auto"):
        return None
    if isinstance(n, str):
        try:
            n = int(n)
        except ValueError:
            raise ValueError(f"num_threads must be a positive integer or 'auto', got {n!r}.") from None
    if isinstance(n, bool):
        raise ValueError(f"num_threads must be a positive integer or 'auto', got {n!r}.")
    if not isinstance(n, numbers.Integral):
        if isinstance(n, numbers.Real) and math.isfinite(n) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"num_threads must be a positive integer or 'auto', got {n!r}.")
    if n < 1:
        raise ValueError(f"num_threads must be a positive integer or 'auto', got {n}; use 1 for one thread.")
    return int(n)


class Settings:
    """Settings of countsdiff-sc (the instance is ``countsdiff_sc.settings``).

    Besides the threads, two budgets of the resource guard (:mod:`countsdiff_sc._resources`): ``max_memory``
    (bytes a call may hold at once; None = 90% of the memory available at the call) and ``max_work`` (entry-
    evaluations of the network a call may run; default ``2e11``). A request beyond either is refused before it
    starts, with its estimate and the ways out.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> cds.settings.num_threads = 1          # torch intra-op threads and the compiled kernels' threads
    >>> cds.settings.num_threads
    1
    >>> with cds.settings.threads(2):         # for one block, restored afterwards
    ...     pass
    >>> cds.settings.num_threads = "auto"     # scvi.settings.num_threads if set, else the free cores
    """

    def __init__(self) -> None:
        self._max_memory: int | None = None
        self._max_work: float = 2e11

    @property
    def max_memory(self) -> int | None:
        """Memory budget of one call in bytes (None: 90% of the memory available when the call starts)."""
        return self._max_memory

    @max_memory.setter
    def max_memory(self, value: int | float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"max_memory must be a positive number of bytes or None, got {value!r}.")
        self._max_memory = None if value is None else int(value)

    @property
    def max_work(self) -> float:
        """Work budget of one call: rows x genes x network evaluations (default 2e11)."""
        return self._max_work

    @max_work.setter
    def max_work(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"max_work must be a positive number (entry-evaluations), got {value!r}.")
        self._max_work = float(value)

    @property
    def num_threads(self) -> int:
        """Threads of torch's intra-op pool and of the compiled sampler kernels (they always agree).

        Set it to a positive integer, or to ``"auto"`` / None for :meth:`default_num_threads`. A count above the
        cores this process may use is accepted with a warning (it oversubscribes them). Reading it returns
        ``torch.get_num_threads()``, so a call of ``torch.set_num_threads`` or ``scvi.settings.num_threads = n``
        is seen here too.
        """
        import torch

        return torch.get_num_threads()

    @num_threads.setter
    def num_threads(self, n: int | str | None) -> None:
        _apply(n, stacklevel=3)

    @staticmethod
    def default_num_threads() -> int:
        """The thread count that ``"auto"`` means.

        1. ``scvi.settings.num_threads``, when the user set it (scvi-tools sets torch's count with it; the package
           keeps that choice);
        2. else, when ``OMP_NUM_THREADS`` is set in the environment, torch's count (torch reads that variable);
        3. else the cores that are free now: ``min(torch's default, cores available to this process - the load
           average of the last minute, rounded)``, at least 1. On an idle machine this is torch's default; next to
           one busy process on 2 cores it is 1 (two threads there run many times slower, see the module docstring).

        Returns
        -------
        A positive thread count.
        """
        import sys

        import torch

        scvi = sys.modules.get("scvi")  # imported by whoever set scvi.settings; never imported here for a default
        user_scvi = getattr(getattr(scvi, "settings", None), "num_threads", None)
        if user_scvi is not None:
            return _check(user_scvi)
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return torch.get_num_threads()
        cores = available_cores()
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - Windows
            busy = 0.0
        free = math.floor(cores - busy + 0.5)
        return max(1, min(torch.get_num_threads(), cores, free))

    @contextmanager
    def threads(self, n: int | str | None) -> Iterator[int]:
        """Use ``n`` threads inside a ``with`` block and restore the previous count afterwards.

        Parameters
        ----------
        n
            A positive integer, or ``"auto"`` / None (:meth:`default_num_threads`).

        Yields
        ------
        The thread count in use inside the block.
        """
        import torch

        previous = _apply(n, stacklevel=4)
        try:
            yield torch.get_num_threads()
        finally:
            torch.set_num_threads(previous)


def set_num_threads(n: int | str | None) -> int:
    """Set the threads of torch's intra-op pool and of the compiled sampler kernels; returns the previous count.

    Parameters
    ----------
    n
        A positive integer, or ``"auto"`` / None for :meth:`Settings.default_num_threads` (``scvi.settings.num_threads``
        when set, else the cores that are free now).

    Returns
    -------
    The thread count before the call (pass it back to restore it).

    Raises
    ------
    ValueError
        ``n`` is not a positive integer, ``"auto"`` or None.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> previous = cds.set_num_threads(1)
    >>> _ = cds.set_num_threads(previous)
    """
    return _apply(n, stacklevel=3)


def _apply(n: int | str | None, stacklevel: int) -> int:
    """:func:`set_num_threads`, warning at ``stacklevel`` (the user's line) when ``n`` oversubscribes the cores."""
    import torch

    count = _check(n)
    if count is None:
        count = Settings.default_num_threads()
    elif count > available_cores():
        warnings.warn(f"num_threads={count} is more than the {available_cores()} cores this process may use: "
                      "threads that share a core slow each other down (torch's OpenMP workers spin while waiting).",
                      UserWarning, stacklevel=stacklevel)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    return previous


settings = Settings()
