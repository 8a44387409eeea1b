"""A careless user on CountsDiffModel, round two (issue 32): one test per finding of the audit; each failed before
its fix (a raw traceback, a silently wrong result, a user's object changed by a refused call, or a long run without
a word)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import countsdiff_sc as cds
from countsdiff_sc._resources import ResourceError
from countsdiff_sc.model._chains import ChainSettings
from countsdiff_sc.model._sampler import sampler_for
from tests.conftest import make_counts

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64}
Q = cds.Sampler(n_steps=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def trained():
    adata = make_counts(n_obs=96, n_vars=12, seed=3)
    del adata.layers["counts"]
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    torch.manual_seed(0)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_steps=10, **FAST)
    return adata, model


def _query(n: int = 30, seed: int = 4):
    q = make_counts(n_obs=n, n_vars=12, seed=seed)
    del q.layers["counts"]
    return q


def test_non_anndata_inputs_are_type_errors(trained):
    adata, model = trained
    with pytest.raises(TypeError, match="adata must be an AnnData"):
        cds.CountsDiffModel(np.zeros((3, 3)))
    frame = pd.DataFrame(adata.X.toarray(), columns=adata.var_names)  # was read as a MuData (DataFrame.mod)
    for verb in (lambda a: model.impute(a, sampler=Q), lambda a: model.transfer(a, covariates={"batch": "b0"}),
                 lambda a: model.correct_batches(a, sampler=Q), lambda a: model.get_normalized_expression(a)):
        with pytest.raises(TypeError, match="must be an AnnData"):
            verb(frame)
        with pytest.raises(TypeError, match="must be an AnnData"):
            verb(np.zeros((3, 12)))
    with pytest.raises(ValueError, match="has no cells"):
        model.impute(_query()[:0].copy(), sampler=Q)


def test_training_and_loading_settings_refused_before_lightning(trained, tmp_path):
    adata, model = trained
    with pytest.raises(ValueError, match=r"Unknown datasplitter_kwargs \['num_workerz'\]"):
        model.train(max_steps=1, datasplitter_kwargs={"num_workerz": 0}, **FAST)
    with pytest.raises(ValueError, match="arguments of train itself"):
        model.train(max_steps=1, datasplitter_kwargs={"batch_size": 8}, **FAST)
    with pytest.raises(TypeError, match="datasplitter_kwargs must be a dict"):
        model.train(max_steps=1, datasplitter_kwargs=[("num_workers", 0)], **FAST)
    model.save(tmp_path / "m", overwrite=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no GPU"):
            cds.CountsDiffModel.load(tmp_path / "m", adata=adata, accelerator="gpu")
    with pytest.raises(ValueError, match="accelerator must be one of"):
        cds.CountsDiffModel.load(tmp_path / "m", adata=adata, accelerator="tpu")


def test_impute_counts_beyond_float32(trained):
    _, model = trained
    q = _query()
    x = q.X.toarray().astype(np.float64)
    x[0, 0], x[1, 1] = 16_777_217, 3e9
    q.X = sp.csr_matrix(x)
    imputed, samples = model.impute(q, store_samples=True, sampler=Q)  # was a dtype crash in the network
    assert np.isfinite(imputed).all() and samples.dtype == np.int64
    q.layers["m"] = np.zeros(q.shape, bool)
    q.layers["m"][2:, 3] = True
    _, draws = model.impute(q, mask_layer="m", key_added="filled", store_samples=True, sampler=Q)
    assert q.layers["filled"].dtype == np.float64 and q.layers["filled"][0, 0] == 16_777_217  # copied exactly
    assert (draws[0, :, 0] == 16_777_217).all() and (draws[1, :, 1] == 3_000_000_000).all()  # the draws too


def test_query_condition_of_another_width_is_refused_by_the_package(trained):
    a = make_counts(n_obs=40, n_vars=12, seed=6)
    del a.layers["counts"]
    a.obsm["cond"] = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    cds.CountsDiffModel.setup_anndata(a, labels_key="cell_type", condition_obsm_key="cond")
    model = cds.CountsDiffModel(a, backbone_kwargs=TINY)
    model.train(max_steps=2, **FAST)
    q = _query(20)
    q.obsm["cond"] = np.zeros((20, 3), np.float32)
    for verb in (lambda: model.impute(q, sampler=Q), lambda: model.get_normalized_expression(q)):
        with pytest.raises(ValueError, match=r"obsm\['cond'\] has shape \(20, 3\).*2 columns"):
            verb()


def test_mark_dropouts_seed_is_checked():
    a = make_counts(n_obs=40, n_vars=12, seed=4)
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            cds.pp.mark_dropouts(a, groupby=None, seed=seed)
    assert "countsdiff_valid" not in a.layers


def test_output_keys_of_the_package_and_other_verbs_are_refused(trained):
    _, model = trained
    q = _query(n=40, seed=5)
    for key in ("countsdiff_valid", "countsdiff_mask"):
        with pytest.raises(ValueError, match="names an input of the model"):
            model.impute(q, key_added=key, sampler=Q)
        with pytest.raises(ValueError, match="an input of the model"):
            model.correct_batches(q, reference="b0", key_added=key, sampler=Q)
    model.correct_batches(q, reference="b0", sampler=Q)
    columns = list(q.obs.columns)
    with pytest.raises(ValueError, match="names an input of the model"):
        model.impute(q, key_added="countsdiff_corrected", sampler=Q)
    assert list(q.obs.columns) == columns  # the refused call registered nothing on the user's object
    model.impute(q, sampler=Q)
    with pytest.raises(ValueError, match="another countsdiff-sc step"):
        model.correct_batches(q, reference="b0", key_added="countsdiff_imputed", sampler=Q)
    model.correct_batches(q, reference="b0", n_samples=2, sampler=Q)  # a re-run replaces its own mean / sd
    model.correct_batches(q, reference="b0", n_samples=3, sampler=Q)
    assert "countsdiff_corrected_mean" in q.layers


def test_sample_arguments(trained, monkeypatch):
    _, model = trained
    with pytest.raises(TypeError, match="covariates must be a dict"):
        model.sample(n_cells=3, covariates=["batch"], sampler=Q)
    with pytest.raises(ValueError, match="depth must be"):
        model.sample(n_cells=3, depth=True, sampler=Q)
    with pytest.warns(UserWarning, match="extrapolates"):
        model.sample(n_cells=2, depth=1e12, sampler=Q)
    monkeypatch.setattr(cds.settings, "max_memory", 2**30)
    with pytest.raises(ResourceError, match="fewer cells"):  # the obs of 1e7 cells alone take GiBs
        model.sample(n_cells=10**7, sampler=Q)
    with pytest.raises(ResourceError, match="fewer weights"):
        model.interpolate(_query(), ("type_0", "type_1"), weights=np.linspace(0, 1, 10**7), sampler=Q)


def test_expression_switches_are_booleans(trained):
    _, model = trained
    q = _query()
    for name in ("silent", "return_mean", "return_numpy"):
        with pytest.raises(TypeError, match=f"{name} must be True, False or None"):
            model.get_normalized_expression(q, sampler=Q, **{name: "no"})
    with pytest.raises(TypeError, match="silent must be"):
        model.posterior_predictive_sample(q, silent=1, sampler=Q)
    with pytest.raises(ValueError, match="gene_list is empty"):
        model.get_normalized_expression(q, gene_list=[], sampler=Q)


def test_long_runs_on_little_data_show_progress(trained):
    _, model = trained
    run = ChainSettings(sampler_for("transfer", "default", cds.Sampler(n_steps=10_000)), "cpu")
    assert run.progress(work=1e6, steps=10_000) and not run.progress(work=1e6, steps=10)
    quiet = ChainSettings(sampler_for("transfer", "default", cds.Sampler(progress=False)), "cpu")
    assert not quiet.progress(work=1e12, steps=1e6)
    q = _query(n=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.transfer(q, covariates={"batch": "b0"}, n_samples=3, sampler=cds.Sampler(n_steps=2, seed=0,
                                                                                             progress=True))
    assert out.layers["transfer_mean"].shape == q.shape
