from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from countsdiff_sc.pp import split_cells


def _labelled(sizes: dict[str, int]) -> ad.AnnData:
    labels = np.concatenate([[k] * n for k, n in sizes.items()])
    obs = pd.DataFrame({"ct": pd.Categorical(labels)}, index=[f"c{i}" for i in range(labels.size)])
    return ad.AnnData(X=np.zeros((labels.size, 2), dtype=np.float32), obs=obs)


def test_default_fractions(pbmc):
    split_cells(pbmc, seed=0)
    col = pbmc.obs["countsdiff_split"]
    assert list(col.cat.categories) == ["train", "validation", "test"]
    counts = col.value_counts()
    assert counts["train"] == 560 and counts["validation"] == 70 and counts["test"] == 70
    rec = pbmc.uns["countsdiff"]["countsdiff_split"]
    assert rec["n_train"] == 560 and rec["seed"] == 0 and rec["stratify"] == "None"


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.1), (0.9, 0.0, 0.1), (1 / 3, 1 / 3, 1 / 3)])
def test_other_fractions_within_one_cell(fractions):
    adata = _labelled({"a": 101})
    split_cells(adata, *fractions, seed=1)
    counts = adata.obs["countsdiff_split"].value_counts()
    for name, f in zip(["train", "validation", "test"], fractions, strict=True):
        assert abs(counts[name] - 101 * f) < 1
        if f == 0:
            assert counts[name] == 0


def test_stratified_groups_proportional(pbmc):
    split_cells(pbmc, seed=0, stratify="bulk_labels")
    table = pd.crosstab(pbmc.obs["bulk_labels"], pbmc.obs["countsdiff_split"])
    sizes = table.sum(axis=1)
    for name, f in [("train", 0.8), ("validation", 0.1), ("test", 0.1)]:
        assert (np.abs(table[name] - sizes * f) < 1).all()


def test_reproducible_and_seed_dependent(pbmc):
    split_cells(pbmc, seed=0, key_added="a")
    split_cells(pbmc, seed=0, key_added="b")
    split_cells(pbmc, seed=1, key_added="c")
    assert (pbmc.obs["a"] == pbmc.obs["b"]).all()
    assert (pbmc.obs["a"] != pbmc.obs["c"]).any()


def test_tiny_groups_warn_and_are_unbiased_over_seeds():
    adata = _labelled({"big": 200, "one": 1, "two": 2})
    with pytest.warns(UserWarning, match="too small"):
        split_cells(adata, seed=0, stratify="ct")
    in_test = 0
    n_seeds = 400
    for seed in range(n_seeds):
        with pytest.warns(UserWarning):
            split_cells(adata, seed=seed, stratify="ct")
        in_test += int(adata.obs.loc[adata.obs["ct"] == "one", "countsdiff_split"].iloc[0] == "test")
    # the singleton lands in "test" with probability 0.1
    assert abs(in_test / n_seeds - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n_seeds)


def test_errors(pbmc):
    with pytest.raises(ValueError, match="sum to 1"):
        split_cells(pbmc, 0.8, 0.1, 0.2)
    with pytest.raises(ValueError, match="train must be"):
        split_cells(pbmc, -0.1, 0.6, 0.5)
    with pytest.raises(KeyError, match="Available columns"):
        split_cells(pbmc, stratify="cell_type")
    pbmc.obs["with_nan"] = pbmc.obs["bulk_labels"].astype(object)
    pbmc.obs.iloc[0, pbmc.obs.columns.get_loc("with_nan")] = None
    with pytest.raises(ValueError, match="missing values"):
        split_cells(pbmc, stratify="with_nan")
    with pytest.raises(ValueError, match="key_added"):
        split_cells(pbmc, stratify="bulk_labels", key_added="bulk_labels")
    assert "countsdiff_split" not in pbmc.obs


def test_user_obs_column_is_never_overwritten(pbmc):
    pbmc.obs["split"] = "mine"
    with pytest.raises(ValueError, match="not written by countsdiff-sc"):
        split_cells(pbmc, key_added="split")
    assert (pbmc.obs["split"] == "mine").all()
    split_cells(pbmc, seed=0)
    split_cells(pbmc, seed=1)  # its own column: replaced
    assert pbmc.uns["countsdiff"]["countsdiff_split"]["seed"] == 1


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, ValueError, "seed"),
    ({"key_added": ""}, ValueError, "key_added"),
    ({"train": float("nan")}, ValueError, "train"),
    ({"train": True}, ValueError, "train"),
])
def test_bad_split_settings_are_refused(pbmc, kwargs, error, match):
    adata = pbmc[:40].copy()
    with pytest.raises(error, match=match):
        split_cells(adata, **kwargs)
    assert "countsdiff_split" not in adata.obs


def test_split_of_nothing_is_refused(pbmc):
    with pytest.raises(ValueError, match="no cells"):
        split_cells(pbmc[:0].copy())
    with pytest.raises(TypeError, match="AnnData"):
        split_cells(np.zeros((3, 3)))
