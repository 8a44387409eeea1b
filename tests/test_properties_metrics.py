"""Property-based tests (hypothesis) of the public metrics (issue 32, item 4).

Every call ends in one of two ways: a ValueError (or KeyError / TypeError) whose message names the culprit, or a
result that keeps the metric's contract: finite, or NaN together with a RuntimeWarning that says why; non-negative
where the metric is a distance; the same result when the genes of an AnnData are given in another order (genes are
matched by name); the inputs unchanged. Each test plants defects (NaN, negative counts, empty masks, disjoint genes)
in some examples and knows which ones must be refused. The examples are derandomized (the same on every run).
"""

from __future__ import annotations

import math
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from countsdiff_sc import metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def prop(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def call(fn, *args, **kwargs):
    """``(result, error, warnings)`` of a call; every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(*args, **kwargs), None, caught
        except (ValueError, KeyError, TypeError) as err:
            return None, err, caught


def nan_warned(name: str, caught) -> bool:
    return any(issubclass(w.category, RuntimeWarning) and f"{name} is NaN" in str(w.message) for w in caught)


def as_adata(x: np.ndarray, genes: list[str]) -> ad.AnnData:
    out = ad.AnnData(np.asarray(x, dtype=np.float64))
    out.var_names = genes
    out.obs_names = [f"c{i}" for i in range(x.shape[0])]
    return out


@st.composite
def count_matrix(draw, min_rows=1, max_rows=7, min_cols=1, max_cols=6, zero_rows=True):
    n = draw(st.integers(min_rows, max_rows))
    g = draw(st.integers(min_cols, max_cols))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.poisson(draw(st.sampled_from([0.3, 2.0, 20.0])), (n, g)).astype(np.float64)
    if zero_rows and draw(st.booleans()):
        x[rng.random(n) < 0.5] = 0.0
    return x


# ------------------------------------------------------------------------------------------------ pointwise
@prop(60)
@given(true=count_matrix(), seed=st.integers(0, 1000), mask_kind=st.sampled_from(["random", "none", "empty", "one"]),
       defect=st.sampled_from(["clean", "clean", "nan_masked", "nan_outside", "bad_mask_shape"]),
       reorder=st.booleans())
def test_pointwise_contract(true, seed, mask_kind, defect, reorder):
    rng = np.random.default_rng(seed)
    imputed = np.clip(true + rng.normal(0, 1, true.shape), 0, None)
    mask = {"random": rng.random(true.shape) < 0.5, "none": None, "empty": np.zeros(true.shape, bool),
            "one": np.eye(*true.shape, dtype=bool) & (np.arange(true.shape[1]) == 0)}[mask_kind]
    must_fail = mask_kind == "empty" or (mask_kind == "random" and not mask.any())
    if defect == "nan_masked":
        sel = np.ones(true.shape, bool) if mask is None else mask
        if sel.any():
            imputed[np.argwhere(sel)[0][0], np.argwhere(sel)[0][1]] = np.nan
            must_fail = True
    elif defect == "nan_outside" and mask is not None and (~mask).any():
        r, c = np.argwhere(~mask)[0]
        true[r, c] = np.nan  # outside the evaluated entries: ignored
    elif defect == "bad_mask_shape":
        mask = np.ones((true.shape[0] + 1, true.shape[1]), bool)
        must_fail = True
    before = (true.copy(), imputed.copy(), None if mask is None else mask.copy())
    out, err, caught = call(metrics.pointwise_metrics, true, imputed, mask)
    np.testing.assert_array_equal(true, before[0])
    np.testing.assert_array_equal(imputed, before[1])
    if must_fail:
        assert err is not None, "a planted defect was accepted"
        assert isinstance(err, ValueError) and any(w in str(err) for w in ("mask", "NaN", "shape", "no entries"))
        return
    assert err is None, err
    for name in ("rmse", "mae", "bias"):
        assert math.isfinite(out[name])
    assert out["rmse"] >= 0 and out["mae"] >= 0 and out["mae"] <= out["rmse"] + 1e-9
    for name in ("r2", "spearman", "pearson"):
        assert math.isfinite(out[name]) or nan_warned(name, caught), (name, out[name])
        if math.isfinite(out[name]) and name != "r2":
            assert -1 - 1e-9 <= out[name] <= 1 + 1e-9
    if reorder and defect == "clean":
        genes = [f"g{j}" for j in range(true.shape[1])]
        perm = rng.permutation(true.shape[1])
        a, b = as_adata(true, genes), as_adata(imputed, genes)[:, [genes[j] for j in perm]].copy()
        again, err2, _ = call(metrics.pointwise_metrics, a, b, mask)
        assert err2 is None
        for name in out:
            assert (math.isnan(out[name]) and math.isnan(again[name])) or again[name] == pytest.approx(out[name])


# ------------------------------------------------------------------------------------------------ two samples
@prop(40)
@given(x=count_matrix(min_rows=2, max_rows=8, min_cols=2, max_cols=5, zero_rows=False), seed=st.integers(0, 1000),
       exponent=st.sampled_from([-20, -3, 0, 3, 20]), defect=st.sampled_from(["clean", "clean", "nan", "zero_cols"]))
def test_two_sample_distances_contract(x, seed, exponent, defect):
    rng = np.random.default_rng(seed)
    y = rng.poisson(x.mean() + 1.0, (int(rng.integers(2, 8)), x.shape[1])).astype(np.float64)
    scale = 10.0**exponent
    xs, ys = x * scale, y * scale
    if defect == "nan":
        ys[0, 0] = np.nan
    elif defect == "zero_cols":
        xs, ys = xs[:, :0], ys[:, :0]
    before = (xs.copy(), ys.copy())
    results = {}
    for name, fn in (("mmd", lambda a, b: metrics.mmd(a, b, dtype="float64")),
                     ("swd", lambda a, b: metrics.swd(a, b, n_projections=20)),
                     ("energy_distance", metrics.energy_distance),
                     ("frechet", metrics.frechet_distance_from_embeddings)):
        out, err, _ = call(fn, xs, ys)
        np.testing.assert_array_equal(xs, before[0])
        np.testing.assert_array_equal(ys, before[1])
        if defect != "clean" and not (name == "energy_distance" and defect == "zero_cols"):
            assert isinstance(err, ValueError), (name, defect, out)
            continue
        if name == "energy_distance" and defect == "zero_cols":
            assert isinstance(err, ValueError) and "empty" in str(err)
            continue
        assert err is None, (name, err)
        assert math.isfinite(out), (name, out, exponent)
        results[name] = out
        if name in ("swd", "energy_distance", "frechet"):
            assert out >= 0
        if name == "mmd":
            assert -2.0 <= out <= 2.0
    if defect == "clean":  # the MMD is scale-free (median-heuristic bandwidth), the SWD scales with the data
        base_mmd = metrics.mmd(x, y, dtype="float64")
        assert results["mmd"] == pytest.approx(base_mmd, abs=1e-6)
        assert results["swd"] == pytest.approx(scale * metrics.swd(x, y, n_projections=20), rel=1e-6)
        genes = [f"g{j}" for j in range(x.shape[1])]
        ax_, ay_ = as_adata(xs, genes), as_adata(ys, genes)
        perm = [genes[j] for j in rng.permutation(len(genes))]
        for name, fn in (("mmd", lambda a, b: metrics.mmd(a, b, dtype="float64")),
                         ("swd", lambda a, b: metrics.swd(a, b, n_projections=20))):
            assert fn(ax_, ay_[:, perm].copy()) == pytest.approx(results[name], rel=1e-9, abs=1e-12)


@prop(30)
@given(d=st.integers(1, 5), seed=st.integers(0, 1000), kind=st.sampled_from(["psd", "psd", "negative", "asymmetric"]))
def test_frechet_distance_of_covariances(d, seed, kind):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T, b @ b.T
    if kind == "negative":
        s1 = -s1 - np.eye(d)
    elif kind == "asymmetric" and d > 1:
        s1 = s1 + np.triu(np.ones((d, d)), 1)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    out, err, _ = call(metrics.frechet_distance, mu1, s1, mu2, s2)
    if kind == "negative" or (kind == "asymmetric" and d > 1):
        assert isinstance(err, ValueError) and ("positive semi-definite" in str(err) or "symmetric" in str(err))
        return
    assert err is None and math.isfinite(out) and out >= 0
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * (1 + np.trace(s1)))


# ------------------------------------------------------------------------------------------------ generation
@prop(25)
@given(real=count_matrix(min_rows=2, min_cols=2), seed=st.integers(0, 1000),
       defect=st.sampled_from(["clean", "clean", "all_zero_generated", "negative", "disjoint", "one_cell"]))
def test_generation_metrics_contract(real, seed, defect):
    rng = np.random.default_rng(seed)
    gen = rng.poisson(2.0, (int(rng.integers(2, 7)), real.shape[1])).astype(np.float64)
    genes = [f"g{j}" for j in range(real.shape[1])]
    if defect == "all_zero_generated":
        gen[:] = 0
    elif defect == "negative":
        gen[0, 0] = -1
    elif defect == "one_cell":
        gen = gen[:1]
    a = as_adata(real, genes)
    b = as_adata(gen, genes if defect != "disjoint" else [f"h{j}" for j in range(len(genes))])
    perm = [b.var_names[j] for j in rng.permutation(b.n_vars)]
    b_perm = b[:, perm].copy()
    before = (a.X.copy(), b.X.copy())
    for fn in (metrics.gene_statistics_agreement, metrics.sparsity_fidelity):
        out, err, caught = call(fn, a, b_perm)
        np.testing.assert_array_equal(a.X, before[0])
        if defect in ("negative", "disjoint", "one_cell"):
            assert isinstance(err, ValueError), (fn.__name__, defect)
            assert any(w in str(err) for w in ("negative", "missing", "at least 2"))
            continue
        assert err is None, err
        same, _, _ = call(fn, a, b)
        for name, value in out.items():
            assert math.isfinite(value) or nan_warned(name, caught), (name, value)
            assert (math.isnan(value) and math.isnan(same[name])) or value == pytest.approx(same[name], abs=1e-12)
            if name.startswith("sparsity"):
                assert 0 <= value <= 1
            if name.endswith("_mae"):
                assert value >= 0


@prop(12)
@given(real=count_matrix(min_rows=3, max_rows=8, min_cols=2, max_cols=5), seed=st.integers(0, 1000),
       metric_list=st.sampled_from([None, [], ["sparsity"], ["mmd", "swd"], ["gene_statistics", "sparsity"]]),
       n_bootstrap=st.sampled_from([0, 2, -1, 1.5]))
def test_evaluate_generation_matches_genes_by_name(real, seed, metric_list, n_bootstrap):
    rng = np.random.default_rng(seed)
    genes = [f"g{j}" for j in range(real.shape[1])]
    a = as_adata(real, genes)
    b = as_adata(rng.poisson(2.0, (5, real.shape[1])).astype(float), genes)
    b_rev = b[:, genes[::-1]].copy()
    kwargs = {"metrics": metric_list if metric_list is not None else ["mmd", "gene_statistics", "sparsity"],
              "n_bootstrap": n_bootstrap, "n_pcs": 3}
    out, err, _ = call(metrics.evaluate_generation, a, b_rev, **kwargs)
    if metric_list == [] or n_bootstrap in (-1, 1.5):
        assert isinstance(err, ValueError) and ("metrics" in str(err) or "n_bootstrap" in str(err))
        return
    assert err is None, err
    same, _, _ = call(metrics.evaluate_generation, a, b.copy(), **kwargs)
    pd.testing.assert_series_equal(out["metric"], same["metric"])
    np.testing.assert_allclose(out["value"].to_numpy(), same["value"].to_numpy(), rtol=1e-9, atol=1e-12)
    assert "generation" in b_rev.uns["countsdiff_metrics"]  # stored in the object given, not in a view of it


@prop(25)
@given(true=count_matrix(min_rows=1, min_cols=2), seed=st.integers(0, 1000),
       mask_kind=st.sampled_from(["random", "single_entry", "one_cell", "empty"]))
def test_evaluate_imputation_contract(true, seed, mask_kind):
    rng = np.random.default_rng(seed)
    mask = {"random": rng.random(true.shape) < 0.5, "empty": np.zeros(true.shape, bool)}.get(mask_kind)
    if mask_kind == "single_entry":
        mask = np.zeros(true.shape, bool)
        mask[0, 0] = True
    elif mask_kind == "one_cell":
        mask = np.zeros(true.shape, bool)
        mask[0] = True
    adata = ad.AnnData(true.astype(np.float32), layers={"countsdiff_imputed": (true + 1).astype(np.float32),
                                                         "countsdiff_mask": mask})
    before = {k: v.copy() for k, v in adata.layers.items()}
    out, err, caught = call(metrics.evaluate_imputation, adata, n_bootstrap=2, n_projections=10)
    for k, v in before.items():
        np.testing.assert_array_equal(adata.layers[k], v)
    if not mask.any():
        assert isinstance(err, ValueError) and "selects no entries" in str(err)
        return
    assert err is None, err
    for _, row in out.iterrows():
        assert math.isfinite(row["value"]) or nan_warned(row["metric"], caught), (row["metric"], row["value"])
        if row["metric"] in ("rmse", "mae", "energy_distance", "swd") and math.isfinite(row["value"]):
            assert row["value"] >= 0


# ------------------------------------------------------------------------------------------------ embeddings
@prop(25)
@given(n_per=st.integers(1, 12), seed=st.integers(0, 1000), n_neighbors=st.integers(-1, 12),
       degenerate=st.sampled_from(["none", "none", "duplicates", "zeros", "one_label"]))
def test_embedding_metrics_contract(n_per, seed, n_neighbors, degenerate):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n_per, 3)), rng.normal(3, 1, (n_per, 3))])
    labels = np.repeat(["a", "b"], n_per)
    if degenerate == "duplicates":
        x[:] = x[0]
    elif degenerate == "zeros":
        x[: n_per] = 0
    elif degenerate == "one_label":
        labels[:] = "a"
    before = x.copy()
    sil, err, _ = call(metrics.silhouette_cosine, x, labels)
    if degenerate == "one_label":
        assert isinstance(err, ValueError) and "2 distinct labels" in str(err)
        return
    assert err is None and 0.0 <= sil <= 1.0
    out, err, caught = call(metrics.clisi, x, labels, n_neighbors=n_neighbors)
    np.testing.assert_array_equal(x, before)
    if n_neighbors < 3:
        assert isinstance(err, ValueError) and "n_neighbors" in str(err)
        return
    if 2 * n_per < 4:
        assert isinstance(err, ValueError) and "cells" in str(err)
        return
    assert err is None, err
    assert (1.0 - 1e-6 <= out <= 2.0 + 1e-6) or (math.isnan(out) and nan_warned("clisi", caught))
