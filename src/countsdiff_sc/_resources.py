"""The resource guard: every verb estimates what a request needs before starting and refuses what the machine
cannot hold.

Two budgets, both settable (``countsdiff_sc.settings``):

* **memory**: the bytes a call will hold at once (its outputs and its largest working arrays), against
  ``settings.max_memory`` (bytes; None, the default, means 90% of the memory available now);
* **work**: the number of network evaluations times the entries they see (rows x genes x evaluations), against
  ``settings.max_work`` (default ``2e11``: ten times an atlas job of 100,000 cells x 2,000 genes x 5 draws x 40
  evaluations, about two hours on one CPU core). Work has no natural bound from the machine, so the limit is a
  number a user can raise on purpose.

A refusal is a :class:`ResourceError` (a ``ValueError``) whose message gives the estimate, the budget and the ways out.
"""

from __future__ import annotations

import math
import os

__all__ = ["DEFAULT_MAX_WORK", "ResourceError", "available_memory", "check_memory", "check_work", "format_bytes"]

#: Default work budget (entry-evaluations), see the module docstring.
DEFAULT_MAX_WORK = 2e11


class ResourceError(ValueError):
    """A request that would exceed the memory or work budget (see :mod:`countsdiff_sc._resources`)."""


def format_bytes(n: float) -> str:
    """A byte count in human units.

    Examples
    --------
    >>> format_bytes(3 * 2**30)
    '3.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes of memory available to new allocations now (``psutil`` when installed, else ``/proc/meminfo``)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency; kept for stripped environments
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _memory_budget() -> tuple[int, str]:
    from ._settings import settings

    limit = settings.max_memory
    if limit is not None:
        return int(limit), "settings.max_memory"
    return int(0.9 * available_memory()), "90% of the memory available now"


def check_memory(what: str, n_bytes: float, ways_out: str) -> None:
    """Refuse a request whose estimated memory exceeds the budget.

    Parameters
    ----------
    what
        The request, as the user would say it (e.g. ``"impute(n_samples=1000000) of 20 cells x 765 genes"``).
    n_bytes
        Estimated bytes held at once.
    ways_out
        What to change (e.g. ``"store_samples=False, fewer draws or a smaller batch_size"``).

    Raises
    ------
    ResourceError
        When ``n_bytes`` exceeds ``settings.max_memory`` (or 90% of the available memory).
    """
    budget, source = _memory_budget()
    if not math.isfinite(n_bytes) or n_bytes > budget:
        raise ResourceError(
            f"{what} needs about {format_bytes(n_bytes)} of memory at once, more than the budget of "
            f"{format_bytes(budget)} ({source}). Ways out: {ways_out}; or raise countsdiff_sc.settings.max_memory "
            "(bytes) if the estimate is wrong for your machine.")


def check_work(what: str, n_work: float, ways_out: str) -> None:
    """Refuse a request whose work (rows x genes x network evaluations) exceeds ``settings.max_work``.

    Parameters
    ----------
    what
        The request, as the user would say it.
    n_work
        Estimated entry-evaluations: rows of the chains x genes x network evaluations per row.
    ways_out
        What to change.

    Raises
    ------
    ResourceError
        When ``n_work`` exceeds ``settings.max_work``.
    """
    from ._settings import settings

    budget = settings.max_work
    if not math.isfinite(n_work) or n_work > budget:
        raise ResourceError(
            f"{what} needs about {n_work:.2g} entry-evaluations of the network (rows x genes x evaluations), more "
            f"than settings.max_work = {budget:.2g} (about ten times an atlas job of 100,000 cells x 2,000 genes x 5 "
            f"draws). Ways out: {ways_out}; or raise countsdiff_sc.settings.max_work to run it anyway.")
