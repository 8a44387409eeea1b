"""countsdiff-sc's benchmark harness: scripts that reproduce the results pages under ``benchmarks/results/``.

Run each from the repository root as ``python -m benchmarks.<name> [--quick]``. Scripts share code only through the
underscore modules of this package (``_common``, ``_generation_common``, ...); no script imports another.
``--quick`` smoke tests write under ``benchmarks/results/quick/``, which git ignores. This package is not part of
the installed ``countsdiff_sc`` distribution.
"""

import os as _os
import sys as _sys

# numba's OpenMP threading layer, started by scanpy's first parallel kernel (``normalize_total``), sets the OpenMP
# pool it shares with torch to every core: a run started with ``--threads 1`` then trained on two threads from its
# first scanpy call on (the pages of such runs say "torch threads: 2"). One numba thread keeps torch's count as set;
# set NUMBA_NUM_THREADS yourself to override. Only before numba is imported: once it is (the test suite imports
# these modules after scanpy), a changed variable makes numba's next compilation refuse to run ("Cannot set
# NUMBA_NUM_THREADS ... once the threads have been launched") whenever a kernel loaded from numba's cache has
# already started the pool at its default size.
if "numba" not in _sys.modules:
    _os.environ.setdefault("NUMBA_NUM_THREADS", "1")
