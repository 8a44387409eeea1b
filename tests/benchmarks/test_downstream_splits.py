"""The downstream benchmark's split replicates: the entry metrics against their definitions, the mean / s.d. table
and the paired target check against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from benchmarks._truth import Truth
from benchmarks.downstream import SPLIT_COUNTSDIFF, split_by_label, split_summary, split_targets


def test_entry_scores_follow_their_definitions():
    rng = np.random.default_rng(0)
    truth = rng.poisson(3.0, (40, 25)).astype(float)
    observed = rng.binomial(truth.astype(int), 0.3).astype(float)
    dropout = (observed == 0) & (truth > 0)
    t = Truth(truth, dropout, np.repeat(["a", "b"], 20), n_top_genes=10, n_pcs=5)
    out = observed + rng.uniform(0, 1, observed.shape)
    got = t.entry_scores(out)
    scaled = out / out.sum(axis=1, keepdims=True) * truth.sum(axis=1, keepdims=True)
    assert got["rmse_dropouts"] == pytest.approx(np.sqrt(np.mean((scaled - truth)[dropout] ** 2)))
    assert got["false_signal"] == pytest.approx(scaled[truth == 0].mean())
    assert got["rmse_all"] == pytest.approx(np.sqrt(np.mean((scaled - truth) ** 2)))
    zeros = dropout | (truth == 0)
    assert got["rmse_zeros"] == pytest.approx(np.sqrt(np.mean((scaled - truth)[zeros] ** 2)))
    log_out = np.log1p(1e4 * out / out.sum(axis=1, keepdims=True))
    log_truth = np.log1p(1e4 * truth / truth.sum(axis=1, keepdims=True))
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(log_out, log_truth, strict=True)]
    assert got["cell_r"] == pytest.approx(np.mean(r))
    # the truth scores perfectly on every entry metric
    perfect = t.entry_scores(truth)
    assert perfect["rmse_all"] == pytest.approx(0.0, abs=1e-12) and perfect["cell_r"] == pytest.approx(1.0)
    # the per-label sums add up to the totals behind the RMSEs
    parts = pd.DataFrame(t.dropout_errors_by_label(out)).set_index("label")
    assert list(parts.index) == ["a", "b"] and parts.cells.tolist() == [20, 20]
    assert parts.dropouts.sum() == dropout.sum()
    assert np.sqrt(parts.sse_dropouts.sum() / parts.dropouts.sum()) == pytest.approx(got["rmse_dropouts"])
    assert np.sqrt(parts.sse_all.sum() / truth.size) == pytest.approx(got["rmse_all"])
    a = np.arange(20)
    assert parts.at["a", "sse_dropouts"] == pytest.approx(((scaled - truth)[a][dropout[a]] ** 2).sum())


def _table() -> pd.DataFrame:
    """Three splits, two conditions; CountsDiff's default beats scVI on RMSE in two splits of three but loses on the
    mean at 25% (one bad split), and wins every split at 10%."""
    rmse = {
        "depth 10%": {"No imputation": [3.0, 3.1, 3.2], "scVI normalised x library": [2.0, 2.1, 2.2],
                      SPLIT_COUNTSDIFF[0]: [1.8, 1.9, 2.0]},
        "depth 25%": {"No imputation": [2.0, 2.0, 2.0], "scVI normalised x library": [1.30, 1.30, 1.30],
                      SPLIT_COUNTSDIFF[0]: [1.29, 1.28, 1.40]},
    }
    rows = []
    for cond, methods in rmse.items():
        for name in ["No imputation", "scVI normalised x library", *SPLIT_COUNTSDIFF]:
            values = methods.get(name, methods[SPLIT_COUNTSDIFF[0]])
            for seed, v in enumerate(values):
                rows.append({"seed": seed, "condition": cond, "method": name, "cell_r": 0.8 - 0.1 * v,
                             "rmse_dropouts": v, "false_signal": 0.1, "rmse_zeros": v / 2, "rmse_all": v * 2})
    return pd.DataFrame(rows)


def test_split_summary_means_and_spread():
    table = _table()
    summary = split_summary(table)
    assert list(summary.method[summary.condition == "depth 25%"]) == list(dict.fromkeys(table.method))
    row = summary[(summary.condition == "depth 25%") & (summary.method == SPLIT_COUNTSDIFF[0])].iloc[0]
    assert row.rmse_dropouts_mean == pytest.approx(np.mean([1.29, 1.28, 1.40]))
    assert row.rmse_dropouts_std == pytest.approx(np.std([1.29, 1.28, 1.40], ddof=1))
    assert row.n_splits == 3


def test_split_targets_are_paired_and_on_the_mean():
    targets = split_targets(_table())
    pick = targets[(targets.variant == SPLIT_COUNTSDIFF[0]) & (targets.metric == "RMSE dropouts")
                   & (targets.rival == "scVI normalised x library")].set_index("condition")
    # 25%: two splits won, the mean lost (1.3233 > 1.30)
    assert pick.at["depth 25%", "splits won"] == "2 / 3"
    assert not pick.at["depth 25%", "met (mean)"]
    assert pick.at["depth 25%", "mean difference"] == pytest.approx(np.mean([-0.01, -0.02, 0.10]))
    assert pick.at["depth 25%", "s.d. of difference"] == pytest.approx(np.std([-0.01, -0.02, 0.10], ddof=1))
    # 10%: every split and the mean
    assert pick.at["depth 10%", "splits won"] == "3 / 3" and pick.at["depth 10%", "met (mean)"]
    # cell r is higher-is-better: lower RMSE gives higher r here, so the same verdicts
    r = targets[(targets.variant == SPLIT_COUNTSDIFF[0]) & (targets.metric == "cell r")
                & (targets.rival == "scVI normalised x library")].set_index("condition")
    assert r.at["depth 25%", "splits won"] == "2 / 3" and not r.at["depth 25%", "met (mean)"]
    # only the 10% / 25% conditions, every CountsDiff row against every rival on both metrics
    assert set(targets.condition) == {"depth 10%", "depth 25%"}
    assert len(targets) == 2 * len(SPLIT_COUNTSDIFF) * 2 * 2


def test_split_by_label_pools_splits_and_shares_the_difference():
    rows = []
    for seed in (0, 1):
        for method, sse in (("mine", {"x": 8.0, "y": 2.0}), ("theirs", {"x": 2.0, "y": 4.0})):
            for label in ("x", "y"):
                rows.append({"seed": seed, "condition": "depth 25%", "method": method, "label": label, "cells": 3,
                             "dropouts": 2, "sse_dropouts": sse[label] * (1 + seed), "sse_all": 0.0})
    rows.append({"seed": 0, "condition": "depth 10%", "method": "mine", "label": "x", "cells": 3, "dropouts": 2,
                 "sse_dropouts": 1e6, "sse_all": 0.0})  # another condition: ignored
    out = split_by_label(pd.DataFrame(rows), "depth 25%", "mine", "theirs")
    assert out.index.tolist() == ["x", "y"]  # the largest share first
    assert out.at["x", "RMSE mine"] == pytest.approx(np.sqrt((8 + 16) / 4))
    assert out.at["y", "RMSE theirs"] == pytest.approx(np.sqrt((4 + 8) / 4))
    assert out.at["x", "dropouts"] == 4 and out.at["x", "test cells (all splits)"] == 6
    # differences: x 24 - 6 = 18 more, y 6 - 12 = 6 less, 12 in all: shares 18 / 12 and -6 / 12
    assert out["share of the SSE difference"].tolist() == pytest.approx([1.5, -0.5])
