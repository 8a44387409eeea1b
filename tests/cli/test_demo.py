"""``countsdiff-sc demo --quick`` says it is a smoke test and quotes the full run, whose numbers match the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from countsdiff_sc import _demo

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.skipif(not README.exists(), reason="no README (installed from a wheel)")
def test_quoted_full_run_matches_the_readme_demo_output():
    text = README.read_text()
    block = text[text.index("## What the demo prints"):text.index("## Results")]
    rmse = {name: re.search(rf"^{name}\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)", block, re.M).group(1)
            for name in ("CountsDiff", "Mean", "Conditional mean")}  # as printed (4 significant digits)
    assert f"RMSE {rmse['CountsDiff']} for CountsDiff" in _demo.FULL_RUN
    assert f"{rmse['Mean']} for mean" in _demo.FULL_RUN
    assert f"{rmse['Conditional mean']} for conditional-mean" in _demo.FULL_RUN
    real = [float(v) for v in re.search(r"counts_per_cell_real\s+(.*)", block).group(1).split()]
    gen = [float(v) for v in re.search(r"counts_per_cell_generated\s+(.*)", block).group(1).split()]
    ratios = [g / r for g, r in zip(gen, real, strict=True)]
    assert f"{min(ratios):.2f}-{max(ratios):.2f}x the real counts" in _demo.FULL_RUN
    assert "smoke test" in text[text.index("demo --quick"):][:200]


@pytest.mark.slow
def test_quick_demo_prints_that_it_is_a_smoke_test(tmp_path, capsys, one_thread):
    _demo.run_demo(out=tmp_path / "demo.h5ad", max_steps=1, n_samples=1, n_steps=2, n_generate=5, quick=True,
                   progress=True, num_threads=None)
    out = capsys.readouterr().out
    assert out.startswith("Quick mode: a smoke test")
    assert "This was --quick, a smoke test" in out and "The full demo" in out
    assert "1 CPU thread(s)" in out
    assert (tmp_path / "demo.h5ad").exists()
