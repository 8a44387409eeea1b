"""``estimate_retention``: per-gene ratios of mean counts between two conditions, within strata of the others.

Checked on data whose retention is known: a binomial thinning with set per-gene fractions is recovered, and a
difference in cell-type composition with no batch effect at all gives ratios of 1 once the comparison is stratified
(and visibly not without the strata)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from countsdiff_sc.model._retention import estimate_retention


def _two_batches(n=6000, g=40, seed=0, keep=None, frac_type1=(0.5, 0.5)):
    rng = np.random.default_rng(seed)
    batch = np.where(rng.random(n) < 0.5, "b", "a")
    p1 = np.where(batch == "b", frac_type1[1], frac_type1[0])
    cell_type = np.where(rng.random(n) < p1, "t1", "t0")
    means = np.stack([rng.gamma(2.0, 3.0, g), rng.gamma(2.0, 3.0, g)])
    means[1, : g // 2] *= 8.0  # type t1 is very different on half of the genes
    x = rng.poisson(means[(cell_type == "t1").astype(int)])
    if keep is not None:
        x[batch == "b"] = rng.binomial(x[batch == "b"], keep)
    obs = pd.DataFrame({"batch": batch, "cell_type": cell_type}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


def test_a_known_thinning_is_recovered():
    keep = np.linspace(0.2, 1.0, 40)
    adata = _two_batches(keep=keep)
    r, info = estimate_retention(adata, None, list(adata.var_names), 40, ["cell_type"], {"batch": "b"},
                                 {"batch": "a"})
    np.testing.assert_allclose(r, keep, rtol=0.08)
    assert info["strata"] == 2 and info["source_cells"] + info["target_cells"] == adata.n_obs
    # genes matched by name: a reference in another gene order gives the same ratios
    order = np.random.default_rng(0).permutation(40)
    r2, _ = estimate_retention(adata[:, order].copy(), None, list(adata.var_names), 40, ["cell_type"],
                               {"batch": "b"}, {"batch": "a"})
    np.testing.assert_allclose(r2, r)


def test_composition_is_not_taken_for_a_batch_effect():
    adata = _two_batches(frac_type1=(0.2, 0.8), seed=1)  # no effect: batch b just has more t1 cells
    strat, _ = estimate_retention(adata, None, list(adata.var_names), 40, ["cell_type"], {"batch": "b"},
                                  {"batch": "a"})
    pooled, _ = estimate_retention(adata, None, list(adata.var_names), 40, [], {"batch": "b"}, {"batch": "a"})
    assert np.abs(np.log(strat)).max() < 0.1
    assert np.log(pooled[:20]).min() > 0.3  # the genes t1 over-expresses look inflated when pooled


def test_unseen_genes_get_one_and_no_overlap_is_an_error():
    adata = _two_batches(n=400)
    x = adata.X.toarray()
    x[:, 0] = 0
    adata.X = sp.csr_matrix(x)
    r, _ = estimate_retention(adata, None, list(adata.var_names), 40, ["cell_type"], {"batch": "b"},
                              {"batch": "a"})
    assert r[0] == 1.0
    only_b = adata[adata.obs["batch"] == "b"].copy()
    with pytest.raises(ValueError, match="retention= as a pandas Series"):
        estimate_retention(only_b, None, list(adata.var_names), 40, [], {"batch": "b"}, {"batch": "a"})
    with pytest.raises(KeyError, match="no obs column 'donor'"):
        estimate_retention(adata, None, list(adata.var_names), 40, ["donor"], {"batch": "b"}, {"batch": "a"})


def test_stratum_ratios_closed_form_shrinkage_and_missing_strata():
    from countsdiff_sc.model._retention import STRATUM_PRIOR, GroupSums

    # groups b (source) and a (target); strata t0 (both), t1 (both, tiny), t2 (b only)
    sums = np.array([[200.0, 0.0, 10.0],   # b, t0: 100 cells
                     [400.0, 0.0, 10.0],   # a, t0: 100 cells
                     [2.0, 0.0, 0.0],      # b, t1: 2 cells
                     [8.0, 0.0, 0.0],      # a, t1: 2 cells
                     [50.0, 5.0, 5.0]])    # b, t2: 10 cells
    gs = GroupSums(["batch"], ["cell_type"], [("b",), ("a",), ("b",), ("a",), ("b",)],
                   [("t0",), ("t0",), ("t1",), ("t1",), ("t2",)], np.array([100.0, 100.0, 2.0, 2.0, 10.0]), sums,
                   "test")
    base = np.array([0.5, 0.8, 1.5])
    out = gs.stratum_ratios(("b",), ("a",), base)
    assert set(out) == {("t0",), ("t1",)}  # t2 has no cells in a: no ratio of its own
    a0 = STRATUM_PRIOR * 200 / 100**2
    np.testing.assert_allclose(out[("t0",)], [(2 + a0 * 0.5) / (4 + a0), 0.8, (0.1 + a0 * 1.5) / (0.1 + a0)])
    assert out[("t0",)][1] == pytest.approx(0.8)  # a gene seen in neither group: the shared ratio
    # a large stratum gets nearly its own ratio; a tiny one stays near the shared ratio
    assert abs(out[("t0",)][0] - 0.5) < 0.01
    a1 = STRATUM_PRIOR * 4 / 4
    assert out[("t1",)][0] == pytest.approx((1 + a1 * 0.5) / (4 + a1))
    big = gs.stratum_ratios(("b",), ("a",), base, prior=1e-9)
    np.testing.assert_allclose(big[("t0",)][[0, 2]], [0.5, 1.0], rtol=1e-6)  # prior -> 0: the raw ratio
    huge = gs.stratum_ratios(("b",), ("a",), base, prior=1e9)
    np.testing.assert_allclose(huge[("t1",)], base, rtol=1e-6)  # prior -> inf: the shared ratio
    assert gs.cells_in(("b",), ("t1",)) == 2 and gs.cells_in(("a",), ("t2",)) == 0
