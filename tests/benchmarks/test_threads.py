"""The threads benchmark's tables (ratios of thread counts and loads) and its competing process."""

from __future__ import annotations

import pytest
from benchmarks.threads import competitor, headline_specs, tables


def test_tables_give_thread_load_and_headline_ratios():
    rows = []
    seconds = {("idle", 1): 10.0, ("idle", 2): 6.0, ("busy", 1): 12.0, ("busy", 2): 120.0}
    for (load, n), s in seconds.items():
        rows.append({"measure": "demo --quick (s)", "load": load, "threads": n, "seconds": s})
        rows.append({"measure": "train mlp (s/step)", "load": load, "threads": n, "seconds": s / 100})
        rows.append({"measure": "train scvi (s/step)", "load": load, "threads": n, "seconds": s / 50})
    rows.append({"measure": "impute mlp (s)", "load": "busy", "threads": 2, "error": "timeout"})
    out = tables(rows)
    ratio = out["Ratios of seconds (below 1: faster)"]
    assert ratio.loc["demo --quick (s)", "idle: 2 / 1 threads"] == pytest.approx(0.6)
    assert ratio.loc["demo --quick (s)", "busy: 2 / 1 threads"] == pytest.approx(10.0)
    assert ratio.loc["demo --quick (s)", "busy / idle, 2 thread(s)"] == pytest.approx(20.0)
    headline = out["Headline: MLP / scVI training throughput"]
    assert (headline.to_numpy() == pytest.approx(2.0))
    assert out["Seconds"].loc["demo --quick (s)", ("busy", 2)] == 120.0
    assert tables([]) == {}


def test_competitor_runs_for_the_block_only():
    with competitor("spin") as proc:
        assert proc.poll() is None
    assert proc.returncode is not None
    with competitor(None) as nothing:
        assert nothing is None
    assert [s["task"] for s in headline_specs(tiny=True)] == ["train", "train", "impute"]
