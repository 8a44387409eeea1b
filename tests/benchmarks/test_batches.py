"""Pure helpers of the batch benchmark: the marker annotation rule, the reference choice, the marker log-fold
changes and the count-fidelity scores, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks import _common as common
from benchmarks import _data
from benchmarks.batches import fidelity, marker_lfc, marker_preservation


def test_clusters_take_the_type_of_their_highest_mean_marker_score():
    genes = ["CD3D", "CD3E", "MS4A1", "CD79A", "LYZ"]
    markers = {"T cells": ["CD3D", "CD3E", "NOT_A_GENE"], "B cells": ["MS4A1", "CD79A"], "Myeloid": ["LYZ"],
               "Absent": ["NOPE"]}
    logx = np.array([[3.0, 2.0, 0, 0, 0], [2.0, 3.0, 0, 0, 0], [0, 0, 2.0, 2.0, 0], [0, 0, 0, 0, 4.0],
                     [0, 0, 1.0, 0, 0]])
    scores = _data.marker_scores(logx, genes, markers)
    assert list(scores.columns) == ["T cells", "B cells", "Myeloid"]  # a type without markers in the data is left out
    # by hand: z of CD3D over cells = (x - 1) / sd
    z = (logx[:, :2] - logx[:, :2].mean(0)) / logx[:, :2].std(0)
    np.testing.assert_allclose(scores["T cells"], z.mean(1))
    names = _data.name_clusters(scores, ["a", "a", "b", "c", "b"])
    assert names == {"a": "T cells", "b": "B cells", "c": "Myeloid"}


def test_reference_is_the_batch_with_the_largest_median_library():
    x = np.array([[1, 1], [2, 2], [10, 0], [4, 4], [5, 5]])
    assert _data.reference_batch(x, np.array(["a", "a", "b", "c", "c"])) == "b"  # medians: a 3, b 10, c 9


def test_marker_lfc_by_hand():
    logx = np.array([[2.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 1.0, 1.0]])
    labels = np.array(["t1", "t1", "t2", "t2"])
    top = marker_lfc(logx, labels, np.arange(4), n_top=1, min_cells=2)
    assert top["t1"].index.tolist() == [0] and top["t1"].iloc[0] == pytest.approx(3.0)  # (2 + 4) / 2 - 0
    assert top["t2"].index.tolist() == [1] and top["t2"].iloc[0] == pytest.approx(2.0)
    at = marker_lfc(logx, labels, np.arange(4), genes={"t1": np.array([1, 2])}, min_cells=2)
    assert list(at) == ["t1"]
    np.testing.assert_allclose(at["t1"].to_numpy(), [-2.0, 0.0])
    assert marker_lfc(logx, labels, np.arange(4), min_cells=3) == {}  # too few cells of each type


def test_fidelity_scores():
    rng = np.random.default_rng(0)
    labels = np.repeat(["t1", "t2"], 40)
    batch = np.tile(["ref", "other"], 40)
    mean = np.where(labels[:, None] == "t1", np.r_[20.0, 1, 5, 5, 5, 5], np.r_[1.0, 20, 5, 5, 5, 5])
    x = rng.poisson(mean).astype(float)
    same = fidelity(x, x, labels, batch, "ref", truth=x)
    assert same["integer"] and same["non-negative"]
    assert same["library ratio median"] == 1.0 and same["marker LFC r"] == pytest.approx(1.0)
    assert same["per-cell r with truth"] == pytest.approx(1.0)
    doubled = fidelity(x, 2 * x, labels, batch, "ref", truth=x)  # a per-gene scale keeps log-fold changes
    assert doubled["library ratio median"] == 2.0 and doubled["library / true library"] == 2.0
    assert doubled["marker LFC r"] > 0.99
    real = fidelity(x, x + 0.5, labels, batch, "ref", truth=None)
    assert not real["integer"] and "per-cell r with truth" not in real
    flat = x.copy()
    flat[batch == "other"] = rng.poisson(8.0, ((batch == "other").sum(), 6))  # types erased in the other batch
    assert marker_preservation(x, flat, labels, batch, ["other"])["other"] < 0.5


def test_fold_changes_against_the_truth_reward_restoring_it_not_doing_nothing():
    rng = np.random.default_rng(3)
    labels = np.repeat(["t1", "t2", "t3"], 60)
    batch = np.tile(["ref", "other"], 90)
    mean = np.full((180, 40), 4.0)
    for k, t in enumerate(["t1", "t2", "t3"]):
        mean[labels == t, 10 * k:10 * k + 10] = 30.0  # ten markers per type
    truth = rng.poisson(mean).astype(float)
    # the effect: the other batch loses most molecules of the markers of t1 (a type-blind per-gene thinning)
    keep = np.ones(40)
    keep[:10] = 0.1
    observed = truth.copy()
    other = batch == "other"
    observed[other] = rng.binomial(truth[other].astype(int), keep).astype(float)
    left = fidelity(observed, observed, labels, batch, "ref", truth=truth)
    restored = fidelity(observed, truth, labels, batch, "ref", truth=truth)
    assert restored["marker LFC r with truth"] == pytest.approx(1.0)
    assert left["marker LFC r"] == pytest.approx(1.0)  # against the uncorrected counts, doing nothing is perfect
    assert left["marker LFC r with truth"] < restored["marker LFC r with truth"] - 0.01  # against the truth it is not


def test_reused_rows_join_an_earlier_runs_baselines_and_refuse_other_data():
    import pandas as pd
    from benchmarks.batches import reused_rows

    info = {"cells": 10, "genes": 5, "reference": "a", "batches": {"a": 5, "b": 5}}
    old = {"info": dict(info, note="paused"),
           "scib": {"ComBat-seq": {"Total": 0.6}, "Harmony": {"Total": 0.7}, "CountsDiff": {"Total": 0.1}},
           "fidelity": {"ComBat-seq": {"marker LFC r": 0.9}, "CountsDiff": {"marker LFC r": 0.1}},
           "timings": {"load": 9.0, "ComBat-seq": 50.0, "CountsDiff train": 99.0, "scores": 7.0}}
    scib = pd.DataFrame({"Total": [0.8]}, index=["CountsDiff"])
    fid = pd.DataFrame({"marker LFC r": [0.95]}, index=["CountsDiff"])
    timings = {"load": 1.0, "CountsDiff train": 2.0, "scores": 3.0}
    ours = dict(info)
    s, f = reused_rows(old, scib, fid, timings, ours, {"cpu": "Old CPU"})
    assert s["Total"].to_dict() == {"ComBat-seq": 0.6, "Harmony": 0.7, "CountsDiff": 0.8}  # the old CountsDiff row goes
    assert f["marker LFC r"].to_dict() == {"ComBat-seq": 0.9, "CountsDiff": 0.95}
    assert list(timings) == ["load", "ComBat-seq", "CountsDiff train", "scores"]
    assert timings["load"] == 1.0 and timings["ComBat-seq"] == 50.0 and timings["CountsDiff train"] == 2.0
    assert ours["reused_baselines"] == "Old CPU" and ours["note"] == "paused"
    with pytest.raises(SystemExit, match="genes"):
        reused_rows(old, scib, fid, {"load": 1.0}, dict(info, genes=6), {})


def test_synthetic_effect_keeps_integers_and_its_truth():
    rng = np.random.default_rng(1)
    original = rng.poisson(3.0, (200, 30)).astype(float)
    effect = common.synthetic_batch_effect(original, np.random.default_rng(2), n_boosted=3)
    obs, in_b = effect["observed"], effect["in_b"]
    assert np.array_equal(obs[~in_b], original[~in_b])  # batch a untouched
    assert np.all(obs == np.round(obs)) and obs.min() >= 0
    plain = np.setdiff1d(np.arange(30), effect["boosted"])
    assert np.all(obs[in_b][:, plain] <= original[in_b][:, plain])  # thinning only removes molecules
    assert np.all((effect["keep"] >= 0.3) & (effect["keep"] <= 1.0))


def test_resampled_cells_are_thinned_copies_of_real_cells_with_their_batch_and_type():
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from benchmarks.batches_scale import resampled

    rng = np.random.default_rng(1)
    x = rng.poisson(3.0, (30, 12)).astype(np.float32)
    x[0] = 0  # an empty source cell: its copies are dropped
    obs = pd.DataFrame({"batch": pd.Categorical(np.repeat(["a", "b"], 15)),
                        "cell_type": pd.Categorical(np.tile(["t1", "t2", "t3"], 10))},
                       index=[f"c{i}" for i in range(30)])
    source = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(12)]))
    out = resampled(source, 500, seed=0)
    assert out.n_obs <= 500 and list(out.var_names) == list(source.var_names)
    assert out.obs_names.is_unique and np.all(np.asarray(out.X.sum(axis=1)).ravel() > 0)
    new = out.X.toarray()
    assert np.all(new == np.rint(new)) and new.min() >= 0
    # each new cell is a thinning of a source cell of its own batch and type: no count above that cell's
    fits = [(new[i] <= x[j]).all() and out.obs["batch"].iloc[i] == obs["batch"].iloc[j]
            and out.obs["cell_type"].iloc[i] == obs["cell_type"].iloc[j] for i in range(50) for j in range(30)]
    assert np.reshape(fits, (50, 30)).any(axis=1).all()
    kept = new.sum() / (x[1:].sum() * out.n_obs / 29)  # about 0.75 of the molecules on average
    assert 0.6 < kept < 0.9
