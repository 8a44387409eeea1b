"""The lever sweeps' one page is rebuilt from their JSON files alone: the committed page is what ``--assemble``
writes from the committed JSON files, one section per sweep in a stable order."""

from __future__ import annotations

import shutil

from benchmarks import _common as common
from benchmarks.generation_levers import assemble, sweep_order, sweep_stem


def test_sweeps_are_ordered_dataset_then_natural_suffix():
    names = [("generation_levers_pbmc68k", "pbmc68k"), ("generation_levers_depth10", "cbmc"),
             ("generation_levers_depth_seed1", "cbmc"), ("generation_levers", "cbmc"),
             ("generation_levers_depth2", "cbmc"), ("generation_levers_pbmc68k_depth3", "pbmc68k"),
             ("generation_levers_depth", "cbmc")]
    ordered = [stem for stem, ds in sorted(names, key=lambda n: sweep_order(*n))]
    assert ordered == ["generation_levers", "generation_levers_depth", "generation_levers_depth2",
                       "generation_levers_depth10", "generation_levers_depth_seed1", "generation_levers_pbmc68k",
                       "generation_levers_pbmc68k_depth3"]
    assert sweep_stem("cbmc", None) == "generation_levers"
    assert sweep_stem("pbmc68k", "_depth3") == "generation_levers_pbmc68k_depth3"


def test_committed_page_is_assembled_from_the_committed_sweeps(tmp_path):
    sweeps = sorted(common.RESULTS.glob("generation_levers*.json"))
    assert len(sweeps) >= 2
    for path in sweeps:
        shutil.copy(path, tmp_path / path.name)
    page = assemble(tmp_path).read_text()
    assert page == (common.RESULTS / "generation_levers.md").read_text()
    headings = [line for line in page.splitlines() if line.startswith("## ") and "sweep" in line]
    assert len(headings) == len(sweeps)
    assert headings[0].endswith("`generation_levers`")
    assert not list(common.RESULTS.glob("generation_levers_*.md")), "one page for every sweep, no per-sweep pages"
