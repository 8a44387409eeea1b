"""Property-based tests (hypothesis) of the plotting functions (issue 32, item 4).

Each plot either draws (and returns its Axes, leaving every input unchanged: X, layers, obs, obsm, uns) or refuses a
bad input with a ValueError / KeyError / TypeError naming it. Genes are matched by name: the same genes in another
order plot the same data. The examples are derandomized and small (the Agg backend, figures closed after each).
"""

from __future__ import annotations

import pickle
import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from countsdiff_sc import pl

pytestmark = pytest.mark.usefixtures("one_thread")


def prop(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def fingerprint(adata: ad.AnnData) -> bytes:
    """Everything a plot must leave alone."""
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return pickle.dumps((x, {k: np.asarray(v) for k, v in adata.layers.items()}, adata.obs,
                         {k: np.asarray(v) for k, v in adata.obsm.items()}, dict(adata.uns), list(adata.var_names)))


def plot(fn, *args, **kwargs):
    """``(result, error)``; the figure is closed either way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN titles of degenerate inputs are documented
        try:
            return fn(*args, **kwargs), None
        except (ValueError, KeyError, TypeError) as err:
            return None, err
        finally:
            plt.close("all")


@st.composite
def counts(draw, n_min=2, n_max=12, g_min=2, g_max=6):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n, g = draw(st.integers(n_min, n_max)), draw(st.integers(g_min, g_max))
    x = rng.poisson(draw(st.sampled_from([0.5, 3.0])), (n, g)).astype(np.float32)
    obs = pd.DataFrame({"label": rng.choice(["a", "b"], n)}, index=[f"c{i}" for i in range(n)])
    out = ad.AnnData(x, obs=obs)
    out.var_names = [f"g{j}" for j in range(g)]
    return out


def plant(adata: ad.AnnData, defect: str) -> bool:
    """Put ``defect`` into ``adata.X``; True when the plot must refuse it."""
    target = adata.X
    if defect == "nan":
        target[0, 0] = np.nan
    elif defect == "negative":
        target[0, 0] = -3
    return defect in ("nan", "negative")


@prop(20)
@given(adata=counts(), seed=st.integers(0, 1000), defect=st.sampled_from(["clean", "clean", "nan", "negative",
                                                                        "empty_mask"]),
       log1p=st.booleans())
def test_imputed_vs_true(adata, seed, defect, log1p):
    rng = np.random.default_rng(seed)
    adata.layers["countsdiff_imputed"] = adata.X + rng.random(adata.shape).astype(np.float32)
    mask = rng.random(adata.shape) < 0.5
    mask[0, 0] = True
    adata.layers["countsdiff_mask"] = mask if defect != "empty_mask" else np.zeros(adata.shape, bool)
    must_fail = defect == "empty_mask" or (defect == "nan") or (defect == "negative" and log1p)
    if defect in ("nan", "negative"):  # at a held-out entry: plotted
        adata.layers["countsdiff_imputed"][0, 0] = -3 if defect == "negative" else np.nan
    before = fingerprint(adata)
    out, err = plot(pl.imputed_vs_true, adata, log1p=log1p)
    assert fingerprint(adata) == before
    if must_fail:
        assert err is not None and any(w in str(err) for w in ("NaN", "log1p", "no True entry")), err
    else:
        assert err is None, err
        assert isinstance(out, matplotlib.axes.Axes)


@prop(20)
@given(real=counts(), seed=st.integers(0, 1000), stat=st.sampled_from(["zero_fraction", "mean", "variance"]),
       defect=st.sampled_from(["clean", "clean", "reordered", "nan", "negative", "other_genes"]))
def test_gene_calibration(real, seed, stat, defect):
    rng = np.random.default_rng(seed)
    gen = real.copy()
    gen.X = rng.poisson(2.0, gen.shape).astype(np.float32)
    must_fail = plant(gen, defect)
    if defect == "other_genes":
        gen.var_names = [f"h{j}" for j in range(gen.n_vars)]
        must_fail = True
    given_gen = gen[:, list(gen.var_names[::-1])].copy() if defect == "reordered" else gen
    before_r, before_g = fingerprint(real), fingerprint(given_gen)
    _, err = plot(pl.gene_calibration, real, given_gen, stat=stat)
    assert fingerprint(real) == before_r and fingerprint(given_gen) == before_g
    if must_fail:
        assert err is not None and any(w in str(err) for w in ("NaN", "negative", "missing")), err
        return
    assert err is None, err
    if defect == "reordered":  # the same points as with the genes in the real order
        same, _ = plot(pl.gene_calibration, real, gen, stat=stat, return_fig=True)
        again, _ = plot(pl.gene_calibration, real, given_gen, stat=stat, return_fig=True)
        np.testing.assert_allclose(again.axes[0].collections[0].get_offsets(),
                                   same.axes[0].collections[0].get_offsets())


@prop(15)
@given(values=st.lists(st.one_of(st.floats(-5, 5), st.just(float("nan"))), min_size=1, max_size=4),
       with_errors=st.booleans())
def test_metric_bars(values, with_errors):
    table = pd.DataFrame({"metric": [f"m{i}" for i in range(len(values))], "value": values,
                          "std_error": [0.1 if with_errors else np.nan] * len(values)})
    before = table.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pl.metric_bars(table)
        plt.close("all")
    pd.testing.assert_frame_equal(table, before)
    assert len(out if isinstance(out, list) else [out]) == len(values)
    n_nan = int(np.isnan(values).sum())
    assert sum("its bar is left out" in str(w.message) for w in caught) == n_nan


@prop(12)
@given(adata=counts(n_min=3), seed=st.integers(0, 1000),
       defect=st.sampled_from(["clean", "clean", "nan_std", "negative_std", "no_std", "bins0"]))
def test_dice_uncertainty(adata, seed, defect):
    rng = np.random.default_rng(seed)
    adata.obsm["X_umap"] = rng.normal(size=(adata.n_obs, 2))
    adata.obsm["X_dice_std"] = rng.random((adata.n_obs, 3))
    if defect == "nan_std":
        adata.obsm["X_dice_std"][0, 0] = np.nan
    elif defect == "negative_std":
        adata.obsm["X_dice_std"][0, 0] = -1
    elif defect == "no_std":
        del adata.obsm["X_dice_std"]
    before = fingerprint(adata)
    out, err = plot(pl.dice_uncertainty, adata, labels_key="label", bins=0 if defect == "bins0" else 5)
    assert fingerprint(adata) == before
    if defect != "clean":
        assert err is not None and any(w in str(err) for w in ("NaN", "negative", "X_dice_std", "bins")), err
    else:
        assert err is None and len(out) == 2


@prop(10)
@given(reference=counts(n_min=6, n_max=12), seed=st.integers(0, 1000),
       defect=st.sampled_from(["clean", "reordered", "nan_weight", "other_genes"]))
def test_interpolation_trajectory(reference, seed, defect):
    rng = np.random.default_rng(seed)
    reference.obs["label"] = np.repeat(["a", "b"], [reference.n_obs // 2, reference.n_obs - reference.n_obs // 2])
    interp = ad.AnnData(rng.poisson(2.0, (6, reference.n_vars)).astype(np.float32),
                        obs=pd.DataFrame({"interpolation_weight": np.repeat([0.0, 0.5, 1.0], 2)},
                                         index=[f"i{i}" for i in range(6)]))
    interp.var_names = list(reference.var_names)
    if defect == "reordered":
        interp = interp[:, list(interp.var_names[::-1])].copy()
    elif defect == "nan_weight":
        interp.obs["interpolation_weight"] = [0.0, np.nan, 0.5, 0.5, 1.0, 1.0]
    elif defect == "other_genes":
        interp.var_names = [f"h{j}" for j in range(interp.n_vars)]
    before = fingerprint(interp), fingerprint(reference)
    _, err = plot(pl.interpolation_trajectory, interp, reference, "label", "a", "b", n_pcs=2)
    assert (fingerprint(interp), fingerprint(reference)) == before
    if defect in ("nan_weight", "other_genes"):
        assert err is not None and any(w in str(err) for w in ("weights", "missing")), err
    else:
        assert err is None, err

