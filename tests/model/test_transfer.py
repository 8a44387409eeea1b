"""Count-space counterfactual transfer (``CountsDiffModel.transfer``) and ``transform_batch`` of the expression API."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import countsdiff_sc as cds
from tests.conftest import make_counts

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "warmup_steps": 5}
QUIET = {"n_steps": 4, "progress": False}


@pytest.fixture(scope="module")
def trained():
    """Labels, a batch covariate and a vector condition, trained briefly."""
    adata = make_counts(n_obs=96, n_vars=12, seed=3)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      condition_obsm_key="cond")
    torch.manual_seed(0)  # the same network whichever tests ran before in this worker
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_steps=20, **FAST)
    return adata, model


def _counts(a: ad.AnnData) -> np.ndarray:
    return a.X.toarray()


def test_transfer_shapes_obs_and_record(trained):
    adata, model = trained
    out = model.transfer(adata, covariates={"batch": "b1"}, t_start=0.5, seed=0, **QUIET)
    x = _counts(out)
    assert out.shape == adata.shape and isinstance(out.X, sp.csr_matrix) and out.X.dtype == np.float32
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    assert list(out.obs_names) == list(adata.obs_names) and list(out.var_names) == list(adata.var_names)
    assert (out.obs["batch"] == "b1").all() and list(out.obs["batch"].cat.categories) == ["b0", "b1"]
    assert list(out.obs["transfer_source_batch"].astype(str)) == list(adata.obs["batch"].astype(str))
    assert list(out.obs["cell_type"].astype(str)) == list(adata.obs["cell_type"].astype(str))  # kept
    assert "transfer_source_cell_type" not in out.obs.columns
    rec = out.uns["countsdiff"]["transfer"]
    assert rec["targets"] == {"batch": "b1"} and rec["seed"] == 0 and rec["n_cells"] == adata.n_obs
    assert 0.45 < rec["t_start"] <= 0.5 and rec["n_steps"] == 4
    both = model.transfer(adata, labels="type_2", covariates={"batch": "b0"}, seed=0, **QUIET)
    assert (both.obs["cell_type"] == "type_2").all() and (both.obs["batch"] == "b0").all()
    assert list(both.obs["transfer_source_cell_type"].astype(str)) == list(adata.obs["cell_type"].astype(str))
    assert "countsdiff" not in adata.uns and "transfer_source_batch" not in adata.obs  # the input is untouched


def test_transfer_seed_determinism(trained):
    adata, model = trained
    a = model.transfer(adata, covariates={"batch": "b0"}, seed=7, **QUIET)
    b = model.transfer(adata, covariates={"batch": "b0"}, seed=7, batch_size=1024, **QUIET)
    c = model.transfer(adata, covariates={"batch": "b0"}, seed=8, **QUIET)
    np.testing.assert_array_equal(_counts(a), _counts(b))
    assert not np.array_equal(_counts(a), _counts(c))
    moved = model.transfer(adata, covariates={"batch": "b0"}, seed=7, guidance=4.0, **QUIET)
    assert not np.array_equal(_counts(a), _counts(moved))


def test_transfer_errors(trained):
    adata, model = trained
    with pytest.raises(ValueError, match="needs a target"):
        model.transfer(adata, **QUIET)
    with pytest.raises(ValueError, match=r"Unknown batch value.*Known values: \['b0', 'b1'\]"):
        model.transfer(adata, covariates={"batch": "b9"}, **QUIET)
    with pytest.raises(ValueError, match="Unknown cell_type value"):
        model.transfer(adata, labels="type_9", **QUIET)
    with pytest.raises(KeyError, match=r"Unknown covariate\(s\) \['donor'\].*\['batch'\]"):
        model.transfer(adata, covariates={"donor": "d1"}, **QUIET)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"t_start must be a number in \(0, 1\]"):
            model.transfer(adata, labels="type_0", t_start=bad, **QUIET)
    with pytest.raises(ValueError, match="indices"):
        model.transfer(adata, labels="type_0", indices=[0, adata.n_obs], **QUIET)
    with pytest.raises(ValueError, match="3 values for 2 cells"):
        model.transfer(adata, labels=["type_0"] * 3, indices=[0, 1], **QUIET)
    with pytest.raises(ValueError, match="missing from adata"):
        model.transfer(adata[:, 2:].copy(), labels="type_0", **QUIET)
    no_batch = adata.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="no column 'batch'"):
        model.transfer(no_batch, labels="type_0", **QUIET)
    out = model.transfer(no_batch, covariates={"batch": "b1"}, seed=0, **QUIET)  # the missing one is the target
    assert (out.obs["batch"] == "b1").all() and "transfer_source_batch" not in out.obs.columns
    no_cond = adata.copy()
    del no_cond.obsm["cond"]
    with pytest.raises(KeyError, match="obsm"):
        model.transfer(no_cond, labels="type_0", **QUIET)


def test_transfer_matches_genes_by_name(trained):
    adata, model = trained
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_vars)
    x = adata.X.toarray()[:, order]
    extra = rng.poisson(2.0, size=(adata.n_obs, 1)).astype(np.float32)
    shuffled = ad.AnnData(X=sp.csr_matrix(np.hstack([x, extra])), obs=adata.obs.copy(),
                          var=pd.DataFrame(index=[*adata.var_names[order], "extra_gene"]))
    shuffled.obsm["cond"] = adata.obsm["cond"].copy()
    a = model.transfer(adata, covariates={"batch": "b1"}, seed=3, **QUIET)
    b = model.transfer(shuffled, covariates={"batch": "b1"}, seed=3, **QUIET)
    assert list(b.var_names) == list(adata.var_names)
    np.testing.assert_array_equal(_counts(a), _counts(b))


def test_transfer_near_zero_keeps_the_cells(trained, monkeypatch):
    adata, model = trained
    x = adata.X.toarray()
    out = _counts(model.transfer(adata, covariates={"batch": "b1"}, t_start=1e-3, seed=0, **QUIET))
    # without attrition the chain only adds molecules: the thinning to p(1e-3) ~ 1 keeps almost every one
    assert np.minimum(out, x).sum() / x.sum() > 0.995
    # what the chain adds is the network's estimate of the missing molecules (Prop. 3.2); with a network that knows
    # nothing is missing near t = 0 (the trained limit), the cell comes back almost unchanged
    monkeypatch.setattr(model.module, "rate", lambda x_t, t, *args, **kwargs: torch.zeros_like(x_t))
    kept = _counts(model.transfer(adata, covariates={"batch": "b1"}, t_start=1e-3, seed=0, **QUIET))
    assert np.mean(kept == x) > 0.99 and kept.sum() / x.sum() > 0.995 and (kept <= x).all()
    assert _counts(model.transfer(adata, covariates={"batch": "b1"}, t_start=1.0, seed=0, **QUIET)).sum() == 0


def test_transfer_per_cell_targets_and_indices(trained):
    adata, model = trained
    idx = np.array([5, 0, 17, 3])
    targets = ["b1", "b0", "b1", "b1"]
    out = model.transfer(adata, covariates={"batch": targets}, indices=idx, seed=2, **QUIET)
    assert list(out.obs_names) == list(adata.obs_names[idx]) and out.shape == (4, adata.n_vars)
    assert list(out.obs["batch"].astype(str)) == targets
    assert list(out.obs["transfer_source_batch"].astype(str)) == list(adata.obs["batch"].astype(str)[idx])
    sub = model.transfer(adata[idx].copy(), covariates={"batch": targets}, seed=2, **QUIET)
    np.testing.assert_array_equal(_counts(out), _counts(sub))
    mask = np.zeros(adata.n_obs, bool)
    mask[idx] = True
    by_mask = model.transfer(adata, labels="type_1", indices=mask, seed=2, **QUIET)
    assert list(by_mask.obs_names) == list(adata.obs_names[np.sort(idx)])
    labels = ["type_0", "type_1", "type_2", "type_0"]
    per_label = model.transfer(adata, labels=labels, indices=idx, seed=2, **QUIET)
    assert list(per_label.obs["cell_type"].astype(str)) == labels


def test_transform_batch(trained):
    adata, model = trained
    kw = {"n_steps": 4, "seed": 0}
    own = model.get_normalized_expression(adata, **kw)
    b0 = model.get_normalized_expression(adata, transform_batch="b0", **kw)
    b1 = model.get_normalized_expression(adata, transform_batch="b1", **kw)
    assert b0.shape == adata.shape and list(b0.index) == list(adata.obs_names)
    assert not np.allclose(b0.to_numpy(), b1.to_numpy())
    in_b0 = (adata.obs["batch"] == "b0").to_numpy()  # cells already in b0 are unchanged by transform_batch="b0"
    np.testing.assert_allclose(b0.to_numpy()[in_b0], own.to_numpy()[in_b0], rtol=1e-6)
    for both in (["b0", "b1"], np.array(["b0", "b1"]), pd.Index(["b0", "b1"])):
        avg = model.get_normalized_expression(adata, transform_batch=both, **kw)
        np.testing.assert_allclose(avg.to_numpy(), (b0.to_numpy() + b1.to_numpy()) / 2, rtol=1e-5, atol=1e-7)
    with_own = model.get_normalized_expression(adata, transform_batch=[None, "b1"], **kw)
    np.testing.assert_allclose(with_own.to_numpy(), (own.to_numpy() + b1.to_numpy()) / 2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="Unknown batch value 'b9'"):
        model.get_normalized_expression(adata, transform_batch="b9", **kw)
    with pytest.raises(ValueError, match="one transform_batch category"):
        model.posterior_predictive_sample(adata, transform_batch=["b0", "b1"], **kw)

    plain = make_counts(n_obs=40, n_vars=8, seed=4)
    cds.CountsDiffModel.setup_anndata(plain, labels_key="cell_type")
    no_batch = cds.CountsDiffModel(plain, backbone_kwargs=TINY)
    no_batch.train(max_steps=2, **FAST)
    with pytest.raises(ValueError, match="needs a batch covariate"):
        no_batch.get_normalized_expression(plain, transform_batch="b0", **kw)
    nothing = make_counts(n_obs=40, n_vars=8, seed=5)
    cds.CountsDiffModel.setup_anndata(nothing)
    unconditional = cds.CountsDiffModel(nothing, backbone_kwargs=TINY)
    unconditional.train(max_steps=2, **FAST)
    with pytest.raises(ValueError, match="needs a batch covariate"):
        unconditional.get_normalized_expression(nothing, transform_batch="b0", **kw)
    with pytest.raises(ValueError, match="needs a target"):
        unconditional.transfer(nothing, **QUIET)


# --- per-gene retention (retention="auto" / a Series): restore under the target condition --------------------------


def test_retention_auto_keeps_molecules_and_records_the_moves(trained):
    adata, model = trained
    x = adata.X.toarray()
    out = model.transfer(adata, covariates={"batch": "b1"}, retention="auto", seed=0, **QUIET)
    y = _counts(out)
    assert out.shape == adata.shape and (y >= 0).all() and np.array_equal(y, np.round(y))
    moves = out.obs["transfer_move"].astype(str).to_numpy()
    in_b1 = (adata.obs["batch"] == "b1").to_numpy()
    assert set(moves[in_b1]) == {"batch: b1 -> b1"} and set(moves[~in_b1]) == {"batch: b0 -> b1"}
    np.testing.assert_array_equal(y[in_b1], x[in_b1])  # already in the target, no cap: every level is 1
    table = out.uns["transfer_retention"]
    assert list(table.index) == list(adata.var_names) and set(table.columns) == set(moves)
    r = table["batch: b0 -> b1"].to_numpy()
    # genes the source holds fewer of keep every molecule and gain some; genes it inflates are thinned back
    assert (y[~in_b1][:, r <= 1] >= x[~in_b1][:, r <= 1]).all()
    assert (y[~in_b1][:, r > 1] <= x[~in_b1][:, r > 1]).all()
    rec = out.uns["countsdiff"]["transfer"]
    assert rec["retention"] == "auto" and rec["targets"] == {"batch": "b1"}
    again = model.transfer(adata, covariates={"batch": "b1"}, retention="auto", seed=0, **QUIET)
    np.testing.assert_array_equal(y, _counts(again))
    other = model.transfer(adata, covariates={"batch": "b1"}, retention="auto", seed=1, **QUIET)
    assert not np.array_equal(y, _counts(other))


def test_retention_series_is_matched_by_name_and_checked(trained):
    adata, model = trained
    x = adata.X.toarray()
    ones = pd.Series(1.0, index=adata.var_names)
    same = model.transfer(adata, covariates={"batch": "b0"}, retention=ones, seed=0, **QUIET)
    np.testing.assert_array_equal(_counts(same), x)  # every gene at level 1: nothing to restore
    rng = np.random.default_rng(1)
    r = pd.Series(rng.uniform(0.2, 1.6, adata.n_vars), index=adata.var_names)
    a = model.transfer(adata, covariates={"batch": "b0"}, retention=r, seed=4, **QUIET)
    b = model.transfer(adata, covariates={"batch": "b0"}, retention=r.iloc[rng.permutation(adata.n_vars)], seed=4,
                       **QUIET)
    np.testing.assert_array_equal(_counts(a), _counts(b))
    assert a.uns["countsdiff"]["transfer"]["retention"] == "given"
    capped = model.transfer(adata, covariates={"batch": "b0"}, retention=ones, t_start=0.5, seed=0, **QUIET)
    assert capped.uns["countsdiff"]["transfer"]["t_start"] == 0.5 and not np.array_equal(_counts(capped), x)
    with pytest.raises(ValueError, match="no value for 1 of the model's genes"):
        model.transfer(adata, covariates={"batch": "b0"}, retention=r.iloc[1:], **QUIET)
    with pytest.raises(ValueError, match="non-negative"):
        model.transfer(adata, covariates={"batch": "b0"}, retention=-r, **QUIET)
    with pytest.raises(ValueError, match="duplicated"):
        model.transfer(adata, covariates={"batch": "b0"}, retention=pd.concat([r, r.iloc[:1]]), **QUIET)
    with pytest.raises(TypeError, match="'auto'"):
        model.transfer(adata, covariates={"batch": "b0"}, retention="oracle", **QUIET)
    with pytest.raises(TypeError, match="'auto'"):
        model.transfer(adata, covariates={"batch": "b0"}, retention=r.to_numpy(), **QUIET)
    no_batch = adata.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="own 'batch'"):
        model.transfer(no_batch, covariates={"batch": "b0"}, retention="auto", **QUIET)


def test_retention_auto_needs_the_training_data(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "m", overwrite=True)
    bare = cds.CountsDiffModel.load(tmp_path / "m", adata=None)
    with pytest.raises(ValueError, match="loaded without"):
        bare.transfer(adata, covariates={"batch": "b0"}, retention="auto", **QUIET)
    ones = pd.Series(1.0, index=adata.var_names)  # given ratios need no training data
    out = bare.transfer(adata, covariates={"batch": "b0"}, retention=ones, seed=0, **QUIET)
    np.testing.assert_array_equal(_counts(out), adata.X.toarray())


@pytest.mark.parametrize("retention", [None, "auto"])
def test_transfer_n_samples_mean_and_sd(trained, retention):
    adata, model = trained
    one = model.transfer(adata, covariates={"batch": "b1"}, retention=retention, seed=5, **QUIET)
    five = model.transfer(adata, covariates={"batch": "b1"}, retention=retention, seed=5, n_samples=5, **QUIET)
    np.testing.assert_array_equal(_counts(one), _counts(five))  # X is the first draw either way
    assert "transfer_mean" not in one.layers and five.uns["countsdiff"]["transfer"]["n_samples"] == 5
    mean, sd = five.layers["transfer_mean"], five.layers["transfer_sd"]
    assert mean.shape == sd.shape == adata.shape and (sd >= 0).all() and (mean >= 0).all()
    assert not np.array_equal(mean, _counts(five))  # the draws differ
    total = mean.astype(np.float64) * 5  # a sum of five integer draws
    np.testing.assert_allclose(total, np.round(total), atol=1e-3)
    if retention == "auto":  # cells already in b1 come back unchanged in every draw: mean = input, sd = 0
        in_b1 = (adata.obs["batch"] == "b1").to_numpy()
        np.testing.assert_allclose(mean[in_b1], adata.X.toarray()[in_b1], atol=1e-5)
        assert (sd[in_b1] == 0).all() and (sd[~in_b1] > 0).any()
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        model.transfer(adata, covariates={"batch": "b1"}, n_samples=0, **QUIET)
