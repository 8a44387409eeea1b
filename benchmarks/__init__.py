"""countsdiff-sc's benchmark harness: scripts that reproduce the results pages under ``benchmarks/results/``.

Run each from the repository root as ``python -m benchmarks.<name> [--quick]``. Scripts share code only through the
underscore modules of this package (``_common``, ``_generation_common``, ...); no script imports another.
``--quick`` smoke tests write under ``benchmarks/results/quick/``, which git ignores. This package is not part of
the installed ``countsdiff_sc`` distribution.
"""
