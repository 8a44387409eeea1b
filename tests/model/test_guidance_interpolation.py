"""Conditioning paths of CountsDiffModel: labels, covariates, vector conditions, per-covariate guidance,
attrition kinds and cell-state interpolation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from scipy import stats

import countsdiff_sc as cds
from tests.conftest import make_counts

TINY = {"n_hidden": 32, "n_layers": 1, "dim_emb": 16}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "warmup_steps": 5}
QUIET = {"n_steps": 4, "progress": False}


@pytest.fixture(scope="module")
def indep():
    """Labels + batch + obsm condition, trained with independent condition dropout."""
    adata = make_counts(n_obs=160, n_vars=15, seed=1)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      condition_obsm_key="cond")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9, uncond_mode="independent", p_uncond=0.3)
    model.train(max_steps=30, **FAST)
    return adata, model


@pytest.fixture(scope="module")
def joint():
    """Labels + batch, trained with the default joint dropout."""
    adata = make_counts(n_obs=120, n_vars=12, seed=2)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_steps=5, **FAST)
    return adata, model


def _is_counts(gen: ad.AnnData) -> bool:
    x = gen.X.toarray()
    return bool((x >= 0).all() and np.array_equal(x, np.round(x)))


def test_independent_dropout_trains(indep):
    _, model = indep
    assert model.module.uncond_mode == "independent"
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert "independent dropout" in model._model_summary_string
    other = make_counts(n_obs=20, n_vars=5)
    cds.CountsDiffModel.setup_anndata(other, labels_key="cell_type")
    with pytest.raises(ValueError, match="uncond_mode"):
        cds.CountsDiffModel(other, uncond_mode="sometimes")


def test_conditioning_paths(indep):
    adata, model = indep
    single = model.sample(labels="type_1", n_samples=4, conditions=np.zeros((4, 2)), seed=0, **QUIET)
    assert single.shape == (4, adata.n_vars) and _is_counts(single)
    assert (single.obs["cell_type"] == "type_1").all()
    both = model.sample(labels=["type_0", "type_2", "type_1"], covariates={"batch": ["b1", "b0", "b1"]},
                        conditions=np.ones((3, 2)), seed=0, **QUIET)
    assert list(both.obs["batch"]) == ["b1", "b0", "b1"] and list(both.obs["cell_type"])[1] == "type_2"
    # the vector condition enters the rate, and leaving it out (null token) is allowed
    x, t = torch.ones(3, adata.n_vars), torch.full((3,), 0.5)
    cat = torch.tensor([[0, 1], [2, 0], [1, 1]])
    depth = torch.full((3,), 100.0)  # the default preset's module also reads the depth in the vector slot
    y0 = model.module.rate(x, t, cat, model.module.vector_condition(torch.zeros(3, 2), depth))
    y5 = model.module.rate(x, t, cat, model.module.vector_condition(torch.full((3, 2), 5.0), depth))
    assert float((y0 - y5).abs().max()) > 0
    assert model.sample(labels="type_0", n_samples=2, seed=0, **QUIET).shape == (2, adata.n_vars)
    unconditional = model.sample(n_samples=3, seed=0, guidance=3.0, **QUIET)
    assert unconditional.shape == (3, adata.n_vars) and len(unconditional.obs.columns) == 0
    with pytest.raises(ValueError, match="Known values"):
        model.sample(labels=["type_9"], **QUIET)


def test_dict_guidance_shape_integer_deterministic(indep, tmp_path):
    adata, model = indep
    kw = {"labels": ["type_0"] * 5, "covariates": {"batch": "b0"}, "conditions": np.zeros((5, 2)), "seed": 7}
    g = {"cell_type": 2.0, "batch": 0.0, "cond": 0.5}
    a = model.sample(guidance=g, **kw, **QUIET)
    b = model.sample(guidance=g, **kw, **QUIET)
    assert a.shape == (5, adata.n_vars) and _is_counts(a)
    assert (a.X != b.X).nnz == 0
    assert dict(a.uns["countsdiff"]["sample"]["guidance"]) == g
    a.write_h5ad(tmp_path / "a.h5ad")
    # the obsm condition can also be named as it is printed in the model summary
    c = model.sample(guidance={"cell_type": 2.0, "batch": 0.0, "obsm['cond']": 0.5}, **kw, **QUIET)
    assert (a.X != c.X).nnz == 0
    # equal strengths are exactly the single-strength rule
    eq = model.sample(guidance={"cell_type": 1.5, "batch": 1.5, "cond": 1.5}, **kw, **QUIET)
    fl = model.sample(guidance=1.5, **kw, **QUIET)
    assert (eq.X != fl.X).nnz == 0
    imputed_dict = adata.copy()
    imputed_dict.layers["countsdiff_mask"] = np.random.default_rng(0).random(adata.shape) < 0.2
    imputed, _ = model.impute(imputed_dict, mask_layer="countsdiff_mask",
                              n_samples=2, n_steps=3, seed=0, progress=False, store_samples=False,
                              guidance={"cell_type": 1.0, "batch": 0.0})
    assert np.isfinite(imputed).all()


def test_dict_guidance_errors(indep):
    _, model = indep
    kw = {"labels": ["type_0"] * 2, "conditions": np.zeros((2, 2)), **QUIET}
    with pytest.raises(ValueError, match=r"unknown condition\(s\) \['donor'\].*\['cell_type', 'batch', 'cond'\]"):
        model.sample(guidance={"donor": 1.0}, **kw)
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(guidance={"cell_type": -1.0}, **kw)
    with pytest.raises(ValueError, match="needs conditions"):
        model.sample(n_samples=2, guidance={"cell_type": 2.0}, depth=None, **QUIET)


def test_joint_model_rejects_unequal_strengths(joint):
    _, model = joint
    kw = {"labels": ["type_0"] * 3, "covariates": {"batch": "b1"}, "seed": 0, **QUIET}
    with pytest.raises(ValueError, match="uncond_mode='independent'"):
        model.sample(guidance={"cell_type": 2.0, "batch": 0.0}, **kw)
    with pytest.raises(ValueError, match=r"keep strength 1\.0.*pass guidance=2 .*uncond_mode='independent'"):
        model.sample(guidance={"cell_type": 2.0}, **kw)  # batch defaults to 1.0
    same = model.sample(guidance={"cell_type": 2.0, "batch": 2.0}, **kw)
    assert (same.X != model.sample(guidance=2.0, **kw).X).nnz == 0


@pytest.mark.parametrize("kind", ["none", "rescale", "cap", "constant"])
def test_attrition_kinds_in_sample_and_impute(joint, kind):
    adata, model = joint
    eta = {"none": 0.0, "rescale": 0.3, "cap": 0.05, "constant": 2.0}[kind]
    gen = model.sample(labels=["type_1"] * 3, attrition=eta, attrition_kind=kind, seed=0, **QUIET)
    assert _is_counts(gen) and gen.uns["countsdiff"]["sample"]["attrition_kind"] == kind
    bdata = adata[:20].copy()
    bdata.layers["countsdiff_mask"] = np.random.default_rng(0).random(bdata.shape) < 0.3
    imputed, _ = model.impute(bdata, mask_layer="countsdiff_mask",
                              n_samples=1, n_steps=3, attrition=eta, attrition_kind=kind, seed=0,
                              progress=False, store_samples=False)
    assert bdata.uns["countsdiff"]["countsdiff_imputed"]["attrition_kind"] == kind
    assert np.isfinite(imputed).all()


def test_attrition_argument_errors(joint):
    adata, model = joint
    with pytest.raises(ValueError, match=r"Unknown attrition_kind 'remask'.*'rescale'"):
        model.sample(labels=["type_1"], attrition_kind="remask", **QUIET)
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(labels=["type_1"], attrition=-0.1, attrition_kind="cap", **QUIET)
    with pytest.raises(ValueError, match=r"\[0, 1\] for attrition_kind='rescale'"):
        model.sample(labels=["type_1"], attrition=2.0, **QUIET)
    bdata = adata[:5].copy()
    bdata.layers["countsdiff_mask"] = np.ones(bdata.shape, dtype=bool)
    with pytest.raises(ValueError, match="Unknown attrition_kind"):
        model.impute(bdata, mask_layer="countsdiff_mask", attrition_kind="ReMDM", progress=False)


def test_interpolate_shape_metadata_determinism(indep, tmp_path):
    adata, model = indep
    weights = [0.0, 0.5, 1.0]
    kw = {"weights": weights, "t_start": 0.8, "n_steps": 5, "n_cells": 6, "progress": False}
    path = model.interpolate(adata, "type_0", "type_2", seed=3, **kw)
    assert path.shape == (18, adata.n_vars) and _is_counts(path)
    assert list(path.var_names) == list(adata.var_names)
    assert path.obs["interpolation_weight"].tolist() == [0.0] * 6 + [0.5] * 6 + [1.0] * 6
    src = path.obs["source_cell"].to_numpy()
    assert (src[:6] == src[6:12]).all() and set(src) <= set(adata.obs_names)
    assert (adata.obs.loc[src, "cell_type"] == "type_0").all()
    assert (path.obs["source_label"] == "type_0").all() and (path.obs["target_label"] == "type_2").all()
    np.testing.assert_array_equal(path.obs["batch"].astype(str), adata.obs.loc[src, "batch"].astype(str))
    rec = path.uns["countsdiff"]["interpolation"]
    assert rec["t_start"] == pytest.approx(0.8) and rec["n_cells"] == 6 and list(rec["weights"]) == weights
    path.write_h5ad(tmp_path / "path.h5ad")  # the record and obs are h5ad-serialisable
    assert ad.read_h5ad(tmp_path / "path.h5ad").obs["interpolation_weight"].tolist() == path.obs[
        "interpolation_weight"].tolist()
    again = model.interpolate(adata, "type_0", "type_2", seed=3, **kw)
    assert (path.X != again.X).nnz == 0 and path.obs.equals(again.obs)
    x = path.X.toarray()
    assert not np.array_equal(x[:6], x[12:])  # weight 0 and weight 1 differ
    guided = model.interpolate(adata, "type_0", "type_2", seed=3, guidance=2.0, batch_size=7, **kw)
    assert guided.shape == path.shape
    # covariates missing from adata_source are drawn from the training co-occurrence
    nobatch = adata.copy()
    del nobatch.obs["batch"]
    assert model.interpolate(nobatch, "type_0", "type_1", seed=0, **kw).obs["batch"].isin(["b0", "b1"]).all()


def test_interpolate_errors(indep, joint):
    adata, model = indep
    kw = {"n_steps": 2, "n_cells": 2, "progress": False}
    with pytest.raises(ValueError, match=r"Unknown target_label 'type_7'.*type_0"):
        model.interpolate(adata, "type_0", "type_7", **kw)
    with pytest.raises(ValueError, match=r"No cell of adata_source has cell_type == 'type_1'"):
        model.interpolate(adata[adata.obs["cell_type"] != "type_1"].copy(), "type_1", "type_0", **kw)
    with pytest.raises(ValueError, match="weights"):
        model.interpolate(adata, "type_0", "type_1", weights=[0.0, 1.5], **kw)
    with pytest.raises(ValueError, match="t_start"):
        model.interpolate(adata, "type_0", "type_1", t_start=0.0, **kw)
    with pytest.raises(ValueError, match="genes"):
        model.interpolate(adata[:, :5].copy(), "type_0", "type_1", **kw)
    with pytest.raises(KeyError, match="obsm"):
        nocond = adata.copy()
        del nocond.obsm["cond"]
        model.interpolate(nocond, "type_0", "type_1", **kw)
    plain = make_counts(n_obs=30, n_vars=5)
    cds.CountsDiffModel.setup_anndata(plain)
    unlabelled = cds.CountsDiffModel(plain, backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="no labels"):
        unlabelled.interpolate(plain, "type_0", "type_1", **kw)


def _two_populations(n_per: int = 100, n_vars: int = 8, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    mu_a = np.where(np.arange(n_vars) < n_vars // 2, 25.0, 1.0)
    mu_b = mu_a[::-1].copy()
    x = np.vstack([rng.poisson(mu_a, (n_per, n_vars)), rng.poisson(mu_b, (n_per, n_vars))]).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(["A"] * n_per + ["B"] * n_per)},
                       index=[f"c{i}" for i in range(2 * n_per)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))


def test_interpolation_moves_monotonically_towards_target():
    """Two labels with swapped high / low genes: the mean distance to the target centroid falls with the weight."""
    scvi.settings.seed = 0
    adata = _two_populations()
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    # the paper's loss weight: with the default preset's w = -p'/(1 - p) the rates near t = 1, where this path
    # starts, need more than 300 steps of this toy to depend on the label
    model = cds.CountsDiffModel(adata, preset="paper", backbone_kwargs=TINY, ema_decay=0.95)
    model.train(max_steps=300, **{**FAST, "batch_size": 90})
    weights = np.linspace(0, 1, 6)
    path = model.interpolate(adata, "A", "B", weights=weights, t_start=0.9, n_steps=12, n_cells=40, seed=0,
                             progress=False)
    x = np.log1p(path.X.toarray())
    target = np.log1p(adata[adata.obs["cell_type"] == "B"].X.toarray()).mean(axis=0)
    source = np.log1p(adata[adata.obs["cell_type"] == "A"].X.toarray()).mean(axis=0)
    w = path.obs["interpolation_weight"].to_numpy()
    dist = np.array([np.linalg.norm(x[w == a] - target, axis=1).mean() for a in weights])
    rho = stats.spearmanr(weights, dist).statistic
    assert rho < -0.9, dist
    # the end points are close to their own population
    assert np.linalg.norm(x[w == 0] - source, axis=1).mean() < dist[0]
    assert dist[-1] < 0.6 * dist[0]
