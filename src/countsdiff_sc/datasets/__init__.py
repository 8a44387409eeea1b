"""Bundled real data and the synthetic generators of the papers."""

from __future__ import annotations

from ._hao import hao_pbmc
from ._real import cbmc, pbmc68k_reduced_counts
from ._synthetic import simulate_counts, synthetic_nb

__all__ = ["cbmc", "hao_pbmc", "pbmc68k_reduced_counts", "simulate_counts", "synthetic_nb"]
