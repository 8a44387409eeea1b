from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import countsdiff_sc as cds
from tests.conftest import make_counts

TINY = {"n_hidden": 32, "n_layers": 1, "dim_emb": 16}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "warmup_steps": 5}


@pytest.fixture(scope="module")
def trained():
    adata = make_counts(n_obs=300, n_vars=25)
    valid = np.ones(adata.shape, dtype=bool)
    x = adata.X.toarray()
    valid[(x == 0) & (np.arange(adata.n_vars)[None, :] % 5 == 0)] = False  # some suspected dropouts
    adata.layers["valid"] = valid
    cds.CountsDiffModel.setup_anndata(
        adata, labels_key="cell_type", categorical_covariate_keys=["batch"], valid_layer="valid"
    )
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_epochs=3, **FAST)
    return adata, model


def test_history_keys_and_finite_losses(trained):
    _, model = trained
    assert {"train_loss", "validation_loss"} <= set(model.history)
    assert not any(k.startswith("elbo") or k.startswith("kl_") for k in model.history)
    assert len(model.history["train_loss"]) == 3
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()
    assert model.is_trained


def test_ema_differs_from_live_weights_after_training(trained):
    _, model = trained
    live = dict(model.module.net.named_parameters())
    diffs = [float((p - live[n]).abs().max()) for n, p in model.module.ema_net.named_parameters()]
    assert max(diffs) > 0


def test_sample_by_label(trained):
    adata, model = trained
    gen = model.sample(labels=["type_1"] * 12, n_steps=8, seed=0, progress=False)
    assert gen.shape == (12, adata.n_vars)
    x = gen.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    assert list(gen.var_names) == list(adata.var_names)
    assert (gen.obs["cell_type"] == "type_1").all()
    assert set(gen.obs["batch"]) <= {"b0", "b1"}  # drawn from the training co-occurrence
    assert gen.uns["countsdiff"]["sample"]["n_steps"] == 8


def test_sample_reproducible_and_unconditional(trained):
    _, model = trained
    a = model.sample(n_samples=6, labels="type_0", covariates={"batch": "b1"}, n_steps=5, seed=3, progress=False)
    b = model.sample(n_samples=6, labels="type_0", covariates={"batch": "b1"}, n_steps=5, seed=3, progress=False)
    c = model.sample(n_samples=6, labels="type_0", covariates={"batch": "b1"}, n_steps=5, seed=4, progress=False)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    assert (a.obs["batch"] == "b1").all()
    u = model.sample(n_samples=5, n_steps=5, seed=0, progress=False, guidance=2.0, attrition=0.1)
    assert u.shape[0] == 5 and "cell_type" not in u.obs


def test_sample_errors(trained):
    _, model = trained
    with pytest.raises(ValueError, match="Known values"):
        model.sample(labels=["not_a_type"], progress=False)
    with pytest.raises(KeyError, match="Unknown covariates"):
        model.sample(n_samples=2, covariates={"donor": "d1"}, progress=False)
    with pytest.raises(ValueError, match="n_cells"):
        model.sample(progress=False)
    with pytest.raises(ValueError, match="3 values for 2"):
        model.sample(n_samples=2, labels=["type_0"] * 3, progress=False)
    with pytest.raises(ValueError, match="attrition"):
        model.sample(n_samples=2, attrition=1.5, progress=False)


def test_save_load_roundtrip(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "m", overwrite=True)
    loaded = cds.CountsDiffModel.load(tmp_path / "m", adata=None)
    for (n1, p1), (n2, p2) in zip(model.module.state_dict().items(), loaded.module.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1.cpu(), p2.cpu())
    assert loaded.module.ema_net is not None
    assert loaded.module.schedule.config() == model.module.schedule.config()
    assert loaded.init_params_ == model.init_params_
    kw = {"labels": ["type_2"] * 4, "covariates": {"batch": "b0"}, "n_steps": 6, "seed": 11, "progress": False}
    assert (model.sample(**kw).X != loaded.sample(**kw).X).nnz == 0
    # the loaded model can take a new AnnData with the same genes
    loaded2 = cds.CountsDiffModel.load(tmp_path / "m", adata=adata.copy())
    assert loaded2.is_trained


def test_constant_loss_normalisation_scale_and_save_load(trained, tmp_path):
    """loss_normalisation="constant": the scale is the mean number of trusted entries per cell, saved with the model
    and restored by load without data; the default model has no such buffer (former saves load unchanged)."""
    adata, model = trained
    assert "loss_scale" not in model.module.state_dict()
    # a fresh registration: other tests of the module read copies of the shared object, which scvi-tools tracks by
    # the uuid the copies share, so a model built on the shared object itself depends on the order of the tests
    data = adata.copy()
    cds.CountsDiffModel.setup_anndata(
        data, labels_key="cell_type", categorical_covariate_keys=["batch"], valid_layer="valid"
    )
    const = cds.CountsDiffModel(data, backbone_kwargs=TINY, loss_normalisation="constant")
    expected = np.asarray(adata.layers["valid"]).sum() / adata.n_obs
    assert float(const.module.loss_scale) == pytest.approx(expected, rel=1e-6)
    const.save(tmp_path / "c", overwrite=True)
    loaded = cds.CountsDiffModel.load(tmp_path / "c", adata=None)
    assert loaded.module.loss_normalisation == "constant"
    assert float(loaded.module.loss_scale) == pytest.approx(expected, rel=1e-6)


def test_importance_time_sampling_trains_and_survives_save_load(trained, tmp_path):
    adata, _ = trained
    data = adata.copy()
    cds.CountsDiffModel.setup_anndata(data, labels_key="cell_type")
    model = cds.CountsDiffModel(data, backbone_kwargs=TINY, loss_weighting="nll", time_sampling="importance")
    assert "time_sampling=importance" in model._model_summary_string
    model.train(max_steps=3, accelerator="cpu", enable_progress_bar=False, batch_size=32, warmup_steps=1)
    losses = [v for k, v in model.history.items() if k.startswith("train_loss")]
    assert losses and all(np.isfinite(h.to_numpy(dtype=float)).all() for h in losses)
    model.save(tmp_path / "i", overwrite=True)
    loaded = cds.CountsDiffModel.load(tmp_path / "i", adata=None)
    assert loaded.module.time_sampling == "importance" and loaded.module._times is not None


def test_impute_invariants(trained):
    adata, model = trained
    bdata = adata.copy()
    rng = np.random.default_rng(0)
    mask = (rng.random(bdata.shape) < 0.3) & bdata.layers["valid"]
    mask[5:, :] &= rng.random((bdata.n_obs - 5, 1)) < 0.5  # some cells without masked entries
    bdata.layers["countsdiff_mask"] = mask
    x_before = bdata.X.copy()
    imputed, samples = model.impute(bdata, mask_layer="countsdiff_mask", n_samples=3, n_steps=6, seed=0, progress=False)
    x = bdata.X.toarray()
    assert (bdata.X != x_before).nnz == 0
    np.testing.assert_array_equal(imputed[~mask], x[~mask])
    assert samples.dtype == np.int32 and samples.shape == (bdata.n_obs, 3, bdata.n_vars)
    assert (samples >= 0).all()
    for s in range(3):
        np.testing.assert_array_equal(samples[:, s, :][~mask], x[~mask].astype(np.int32))
    np.testing.assert_allclose(imputed[mask], samples.mean(axis=1)[mask], rtol=1e-6)
    assert imputed.dtype == np.float32
    np.testing.assert_array_equal(bdata.layers["countsdiff_imputed"], imputed)
    np.testing.assert_array_equal(bdata.obsm["countsdiff_samples"], samples)
    assert bdata.uns["countsdiff"]["countsdiff_imputed"]["n_entries_imputed"] == int(mask.sum())
    again, _ = model.impute(bdata, mask_layer="countsdiff_mask",
                            n_samples=3, n_steps=6, seed=0, progress=False, key_added="again",
                            store_samples=False)
    np.testing.assert_array_equal(again, imputed)
    med, _ = model.impute(bdata, mask_layer="countsdiff_mask",
                          n_samples=3, n_steps=4, seed=1, progress=False, point_estimate="median",
                          key_added="med", resample_jump=2, resample_iters=2, store_samples=False)
    assert np.array_equal(med[mask], np.round(med[mask]))
    # re-running with the default keys replaces the earlier outputs (layer and stored draws)
    rerun, _ = model.impute(bdata, mask_layer="countsdiff_mask", n_samples=2, n_steps=4, seed=2, progress=False)
    np.testing.assert_array_equal(bdata.layers["countsdiff_imputed"], rerun)
    assert bdata.obsm["countsdiff_samples"].shape == (bdata.n_obs, 2, bdata.n_vars)


def test_impute_errors_and_warnings(trained):
    adata, model = trained
    bdata = adata.copy()
    with pytest.raises(KeyError, match="Mask layer"):
        model.impute(bdata, mask_layer="countsdiff_mask", progress=False)
    bdata.layers["countsdiff_mask"] = np.full(bdata.shape, 2, dtype=np.int8)
    with pytest.raises(ValueError, match="not boolean-like"):
        model.impute(bdata, mask_layer="countsdiff_mask", progress=False)
    mask = np.zeros(bdata.shape, dtype=bool)
    mask[0, :] = True  # covers invalid entries and the whole cell
    bdata.layers["countsdiff_mask"] = mask
    with pytest.warns(UserWarning) as record:
        imputed, _ = model.impute(bdata, mask_layer="countsdiff_mask", n_samples=1, n_steps=3, seed=0, progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "marked invalid" in messages and "no trusted entry left" in messages
    invalid = ~bdata.layers["valid"][0]
    np.testing.assert_array_equal(imputed[0, invalid], bdata.X.toarray()[0, invalid])
    bdata.layers["mine"] = np.zeros(bdata.shape, dtype=np.float32)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        model.impute(bdata, mask_layer="countsdiff_mask", key_added="mine", progress=False)
    np.testing.assert_array_equal(bdata.layers["mine"], 0)
    other = adata[:, :-1].copy()
    other.layers["countsdiff_mask"] = np.zeros(other.shape, dtype=bool)
    with pytest.raises(ValueError):
        model.impute(other, mask_layer="countsdiff_mask", progress=False)


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "int"])
def test_setup_accepts_formats_and_never_changes_values(fmt):
    adata = make_counts(n_obs=60, n_vars=10)
    x = adata.X.toarray()
    adata.X = {"dense": x.copy(), "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x), "int": x.astype(np.int64)}[fmt]
    cds.CountsDiffModel.setup_anndata(adata)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=2, **FAST)
    after = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    np.testing.assert_array_equal(after, x)


def test_setup_errors():
    adata = make_counts(n_obs=20, n_vars=5)
    bad = adata.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = -1
    with pytest.raises(ValueError, match="1 negative entries"):
        cds.CountsDiffModel.setup_anndata(bad)
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cds.CountsDiffModel.setup_anndata(bad)
    bad.X[0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        cds.CountsDiffModel.setup_anndata(bad)
    with pytest.raises(KeyError, match="Available layers"):
        cds.CountsDiffModel.setup_anndata(adata, layer="raw")
    with pytest.raises(KeyError, match="Available columns"):
        cds.CountsDiffModel.setup_anndata(adata, labels_key="celltype")
    adata.layers["v"] = np.full(adata.shape, 3)
    with pytest.raises(ValueError, match="boolean"):
        cds.CountsDiffModel.setup_anndata(adata, valid_layer="v")
    with pytest.raises(KeyError, match="obsm"):
        cds.CountsDiffModel.setup_anndata(adata, condition_obsm_key="X_missing")


def test_obsm_condition_and_transformer_backbone():
    adata = make_counts(n_obs=80, n_vars=12)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", condition_obsm_key="cond")
    model = cds.CountsDiffModel(adata, backbone="transformer",
                                backbone_kwargs={"d_model": 16, "n_heads": 2, "n_layers": 1})
    model.train(max_epochs=1, **FAST)
    gen = model.sample(labels=["type_0"] * 3, conditions=np.zeros((3, 2)), n_steps=3, seed=0, progress=False)
    assert gen.shape == (3, 12)
    with pytest.raises(ValueError, match="shape"):
        model.sample(labels=["type_0"] * 3, conditions=np.zeros((3, 5)), progress=False)


def test_setup_mudata():
    rna = make_counts(n_obs=50, n_vars=10)
    prot = ad.AnnData(np.ones((50, 3), dtype=np.float32), obs=rna.obs[[]].copy())
    mdata = md.MuData({"rna": rna, "prot": prot})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.CountsDiffModel.setup_mudata(mdata, labels_key="cell_type", modalities={"rna_layer": "rna",
                                                                                    "labels_key": "rna"})
    model = cds.CountsDiffModel(mdata, backbone_kwargs=TINY)
    model.train(max_steps=2, **FAST)
    gen = model.sample(labels=["type_1"] * 2, n_steps=2, seed=0, progress=False)
    assert gen.shape == (2, 10)
    assert list(gen.var_names) == list(rna.var_names)
    with pytest.raises(ValueError, match="modalities"):
        cds.CountsDiffModel.setup_mudata(mdata)


def test_reduced_precision_rates_and_paths(trained):
    adata, model = trained
    module = model.module.eval()
    x = torch.from_numpy(adata.X[:64].toarray()).float()
    t = torch.full((64,), 0.5)
    cat = torch.zeros(64, 2, dtype=torch.long)
    rate = lambda x_, t_: module.rate(x_, t_, cat, guidance=1.5)  # noqa: E731
    full = rate(x, t)
    half = cds.diffusion.with_precision(rate, "bf16", "cpu")(x, t)
    assert half.dtype == torch.float32 and half.shape == full.shape
    rel = ((half - full).abs() / full.clamp_min(1e-3)).median()
    assert float(rel) < 0.05, f"bf16 rates differ from float32 by a median {float(rel):.3f}"
    assert not torch.equal(half, full)  # the network did run in bfloat16
    assert cds.diffusion.with_precision(rate, "32", "cpu") is rate
    gen = model.sample(n_samples=20, labels="type_0", n_steps=4, seed=0, precision="bf16", progress=False)
    counts = gen.X.toarray()
    assert np.array_equal(counts, np.round(counts)) and (counts >= 0).all()
    bdata = adata.copy()
    mask = np.zeros(bdata.shape, dtype=bool)
    mask[:50, ::3] = True
    bdata.layers["countsdiff_mask"] = mask & bdata.layers["valid"]
    imputed, _ = model.impute(bdata, mask_layer="countsdiff_mask",
                              n_samples=2, n_steps=4, seed=0, precision="bf16", progress=False,
                              store_samples=False)
    np.testing.assert_array_equal(imputed[~mask], bdata.X.toarray()[~mask])
    with pytest.raises(ValueError, match="needs a GPU"):
        model.sample(n_samples=2, labels="type_0", n_steps=2, precision="16", progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        model.impute(bdata, mask_layer="countsdiff_mask",
                     n_samples=1, n_steps=2, precision="8", progress=False, key_added="p8")
    assert "p8" not in bdata.layers
