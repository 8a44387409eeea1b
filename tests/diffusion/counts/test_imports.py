"""How the count diffusion loads its samplers: the torch samplers are a leaf module and the compiled CPU kernels are
loaded lazily, from one place (the package-wide rules, no import cycle included, are in tests/test_layering.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import countsdiff_sc as cds

from ...test_layering import import_graph

COUNTS = "countsdiff_sc.diffusion.counts"


def test_torch_samplers_are_a_leaf_and_the_cpu_kernels_load_from_one_place():
    graph = import_graph(Path(cds.__file__).parent)
    assert graph[f"{COUNTS}._kernels_torch"] == set()
    assert graph[f"{COUNTS}._kernels_cpu"] == {f"{COUNTS}._kernels_torch"}
    importers = {name for name, deps in graph.items() if f"{COUNTS}._kernels_cpu" in deps}
    assert importers == {f"{COUNTS}._process"}


def test_numba_is_imported_on_the_first_cpu_draw_only():
    code = (
        "import sys, torch, countsdiff_sc.diffusion as d; a = 'numba' in sys.modules; "
        "d.binomial(torch.ones(3), torch.tensor(0.5)); print(a, 'numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr[-2000:]
