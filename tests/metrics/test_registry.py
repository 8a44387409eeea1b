"""The metric tables are driven by registries of metric specifications: every entry is computed, names are checked."""

from __future__ import annotations

import numpy as np
import pytest

from countsdiff_sc.metrics import evaluate_embedding, evaluate_generation, evaluate_imputation
from countsdiff_sc.metrics._embedding_table import EMBEDDING_REGISTRY
from countsdiff_sc.metrics._generation_table import GENERATION_REGISTRY
from countsdiff_sc.metrics._imputation_table import IMPUTATION_REGISTRY
from countsdiff_sc.metrics._tables import MetricSpec, registry, resolve_metrics

REGISTRIES = {"imputation": IMPUTATION_REGISTRY, "generation": GENERATION_REGISTRY, "embedding": EMBEDDING_REGISTRY}


@pytest.fixture(scope="module")
def imputation_data(pbmc):
    adata = pbmc[:150].copy()
    rng = np.random.default_rng(0)
    x = adata.X.toarray()
    mask = rng.random(x.shape) < 0.3
    adata.layers["countsdiff_mask"] = mask
    adata.layers["countsdiff_imputed"] = np.where(mask, rng.poisson(x + 0.5), x).astype(np.float32)
    return adata


@pytest.fixture(scope="module")
def embedding_data(pbmc):
    adata = pbmc[:200].copy()
    adata.obsm["X_rand"] = np.random.default_rng(1).normal(size=(adata.n_obs, 5))
    return adata


@pytest.mark.parametrize("name", list(IMPUTATION_REGISTRY))
def test_every_imputation_metric_is_computed(name, imputation_data, pbmc_embedder):
    df = evaluate_imputation(imputation_data, metrics=[name], embedder=pbmc_embedder, n_bootstrap=2)
    assert df["metric"].tolist() == list(IMPUTATION_REGISTRY[name].rows)
    assert np.isfinite(df["value"]).all()


@pytest.mark.parametrize("name", list(GENERATION_REGISTRY))
def test_every_generation_metric_is_computed(name, pbmc, pbmc_embedder):
    real, gen = pbmc[:350].copy(), pbmc[350:].copy()
    df = evaluate_generation(
        real, gen, "bulk_labels", metrics=[name], embedder=pbmc_embedder, n_estimators=10, n_bootstrap=2
    )
    assert df["metric"].tolist() == list(GENERATION_REGISTRY[name].rows)
    assert df["value"].notna().all()


@pytest.mark.parametrize("name", list(EMBEDDING_REGISTRY))
def test_every_embedding_metric_is_computed(name, embedding_data):
    df = evaluate_embedding(embedding_data, "X_rand", "bulk_labels", metrics=[name], resolutions=[0.5])
    assert df["metric"].tolist() == list(EMBEDDING_REGISTRY[name].rows)
    assert np.isfinite(df["value"]).all()


def test_unknown_metric_names_the_known_ones(imputation_data, pbmc, embedding_data):
    calls = {
        "imputation": lambda m: evaluate_imputation(imputation_data, metrics=m),
        "generation": lambda m: evaluate_generation(pbmc[:100], pbmc[100:200], metrics=m),
        "embedding": lambda m: evaluate_embedding(embedding_data, "X_rand", "bulk_labels", metrics=m),
    }
    for kind, call in calls.items():
        with pytest.raises(ValueError, match=r"Unknown metric\(s\) \['fid'\]; choose from") as err:
            call(["fid"])
        for name in REGISTRIES[kind]:
            assert repr(name) in str(err.value), (kind, name)


def test_registry_entries_are_consistent():
    for kind, specs in REGISTRIES.items():
        for name, spec in specs.items():
            assert spec.name == name and spec.rows, (kind, name)
            assert spec.higher_is_better in (True, False, None)
            assert spec.needs <= {"labels", "embedder"}
        rows = [row for spec in specs.values() for row in spec.rows]
        assert len(rows) == len(set(rows)), kind  # no two metrics write the same row


def test_default_selection_follows_the_needs():
    def nothing(_):
        return {}

    specs = registry([MetricSpec("a", nothing), MetricSpec("b", nothing, needs=frozenset({"labels"}))])
    assert specs["a"].rows == ("a",)
    assert resolve_metrics(None, specs) == ["a"]
    assert resolve_metrics(None, specs, {"labels"}) == ["a", "b"]
    assert resolve_metrics("b", specs) == ["b"]
    with pytest.raises(ValueError, match="twice"):
        registry([MetricSpec("a", nothing), MetricSpec("a", nothing)])
