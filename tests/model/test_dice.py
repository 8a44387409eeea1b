"""DICEModel: setup validation, projection, training history, the Gibbs embedding, query mapping, save / load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from countsdiff_sc._utils import to_dense
from countsdiff_sc.model import DICEModel
from countsdiff_sc.module.dice import elbow_rank, fit_projection, project

EMBED = {"n_iter": 4, "rho": (5.0, 0.5), "n_chains": 3, "n_prior_steps": 10, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(pbmc):
    adata = pbmc.copy()
    DICEModel.setup_anndata(adata, labels_key="bulk_labels")
    model = DICEModel(adata, n_latent=6, n_hidden=32, n_blocks=1, dim_time=16, mixup_prob=0.5)
    model.train(max_epochs=4, batch_size=128, enable_progress_bar=False, enable_model_summary=False)
    return model, adata


# ---------------------------------------------------------------------- setup and input validation
def test_setup_rejects_bad_counts_and_keys(pbmc):
    adata = pbmc[:50].copy()
    neg = adata.copy()
    neg.X = neg.X.toarray()
    neg.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        DICEModel.setup_anndata(neg)
    frac = adata.copy()
    frac.X = frac.X.toarray() + 0.5
    with pytest.raises(ValueError, match="non-integer"):
        DICEModel.setup_anndata(frac)
    with pytest.raises(KeyError, match="nope"):
        DICEModel.setup_anndata(adata, layer="nope")
    with pytest.raises(KeyError, match="cell_type"):
        DICEModel.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(KeyError, match="donor"):
        DICEModel.setup_anndata(adata, batch_key="donor")
    # non-count data is accepted only when declared
    real = adata.copy()
    real.X = np.random.default_rng(0).normal(size=real.shape)
    DICEModel.setup_anndata(real, is_counts=False)
    real.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        DICEModel.setup_anndata(real, is_counts=False)


def test_mixup_needs_labels(pbmc):
    adata = pbmc[:100].copy()
    DICEModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="labels"):
        DICEModel(adata, n_latent=3, mixup_prob=0.9)


# ---------------------------------------------------------------------- projection
def test_elbow_choice_and_hvg_subset(pbmc):
    adata = pbmc.copy()
    DICEModel.setup_anndata(adata)
    model = DICEModel(adata, n_top_genes=300, max_components=30, n_hidden=16, n_blocks=1, dim_time=8)
    assert model.n_latent == elbow_rank(model.singular_values_[:30])
    assert model.init_params_["non_kwargs"]["n_latent"] == model.n_latent
    assert model.highly_variable_.sum() == 300
    # genes outside the subset do not enter the projection
    assert np.all(model.loadings[~model.highly_variable_] == 0)
    np.testing.assert_allclose(model.loadings.T @ model.loadings, np.eye(model.n_latent), atol=1e-5)


def test_query_projection_consistency(trained, pbmc):
    model, adata = trained
    full = model.project(adata, key_added=None)
    assert full.shape == (adata.n_obs, 6)
    # the model's float32 projection equals the float64 projection with a fresh fit of the same reference
    proj = fit_projection(adata.X, n_latent=6)
    stats = [torch.from_numpy(a) for a in (proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings)]
    ref = project(torch.from_numpy(to_dense(adata.X, np.float64)), *stats).numpy()
    np.testing.assert_allclose(np.abs(full), np.abs(ref), rtol=1e-4, atol=1e-3)
    # a query made of reference rows (without labels, genes shuffled, one extra gene) lands on the same coordinates
    idx = np.arange(0, adata.n_obs, 7)
    query = pbmc[idx].copy()
    del query.obs["bulk_labels"]
    perm = np.random.default_rng(0).permutation(query.n_vars)
    query = query[:, perm].copy()
    extra = sp.hstack([query.X, sp.csr_matrix(np.ones((query.n_obs, 1), dtype=np.float32))]).tocsr()
    import anndata as ad

    query = ad.AnnData(extra, obs=query.obs, var={"gene": [*query.var_names, "EXTRA"]})
    query.var_names = query.var["gene"].astype(str)
    out = model.project(query)
    np.testing.assert_allclose(out, full[idx], rtol=1e-5, atol=1e-5)
    assert "X_pca" in query.obsm and query.uns["countsdiff"]["X_pca"]["method"] == "dice_reference_pca"
    # genes missing from the query
    with pytest.raises(ValueError, match=r"5 of the model.s [0-9]+ genes are missing"):
        model.project(pbmc[:10, 5:].copy())
    with pytest.raises(ValueError, match="genes are missing"):
        model.embed(pbmc[:10, 5:].copy(), **EMBED)
    # counts checked on the query too
    bad = pbmc[:10].copy()
    bad.X = bad.X.toarray() * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        model.embed(bad, **EMBED)
    missing_layer = pbmc[:10].copy()
    missing_layer.X = None
    with pytest.raises(ValueError):
        model.project(missing_layer)


# ---------------------------------------------------------------------- training and mixup
def test_training_history(trained):
    model, _ = trained
    assert model.is_trained
    history = model.history
    assert {"train_loss", "validation_loss"} <= set(history)
    for key in ("train_loss", "validation_loss"):
        values = history[key].to_numpy(dtype=float).ravel()
        assert len(values) == 4 and np.all(np.isfinite(values)) and np.all(values > 0)
    assert not any("elbo" in k or "kl_" in k for k in history)


def test_mixup_stays_within_labels():
    from countsdiff_sc.module import DICEModule

    module = DICEModule(n_input=5, n_latent=3, n_labels=3, use_labels=True, mixup_prob=1.0, n_hidden=8,
                        n_blocks=1, dim_time=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 0])
    y = labels[:, None].float().repeat(1, 3) * 10  # every cell equals its label's constant
    torch.manual_seed(0)
    mixed = module.mixup(y, labels)
    torch.testing.assert_close(mixed, y)
    # with distinct rows, mixed rows are convex combinations of same-label rows (inside their bounding box)
    y = torch.randn(10, 3)
    mixed = module.mixup(y, labels)
    assert not torch.allclose(mixed, y)
    for lab in range(3):
        rows = y[labels == lab]
        sel = mixed[labels == lab]
        assert bool((sel >= rows.min(0).values - 1e-6).all() and (sel <= rows.max(0).values + 1e-6).all())


# ---------------------------------------------------------------------- the embedding
def test_embed_outputs_and_seed(trained, pbmc):
    model, _ = trained
    query = pbmc[:40].copy()
    mean, std = model.embed(query, seed=3, **EMBED)
    assert mean.shape == std.shape == (40, 6) and mean.dtype == np.float32
    np.testing.assert_array_equal(query.obsm["X_dice"], mean)
    np.testing.assert_array_equal(query.obsm["X_dice_std"], std)
    assert np.all(std > 0) and np.all(np.isfinite(mean))
    params = query.uns["countsdiff"]["X_dice"]
    assert params["seed"] == 3 and params["n_chains"] == 3 and params["rho_schedule"] == "linear"
    again, _ = model.embed(query, seed=3, key_added="X_again", **EMBED)
    np.testing.assert_array_equal(again, mean)
    other, _ = model.embed(query, seed=4, key_added="X_other", **EMBED)
    assert not np.allclose(other, mean)
    alias = model.get_latent_representation(query, seed=3, **EMBED)
    np.testing.assert_array_equal(alias, mean)
    # one chain has no spread; a constant rho is recorded as such
    _, std1 = model.embed(query, seed=3, key_added="X_one", n_iter=2, rho=1.0, n_chains=1, progress=False)
    assert np.all(std1 == 0) and query.uns["countsdiff"]["X_one"]["rho_schedule"] == "constant"
    with pytest.raises(ValueError):
        model.embed(query, n_chains=0, progress=False)
    with pytest.raises(ValueError):
        model.embed(query, rho=(5.0, -1.0), progress=False)


def test_embed_and_project_never_replace_a_users_obsm(trained, pbmc):
    model, _ = trained
    query = pbmc[:20].copy()
    # re-running with the same key replaces countsdiff-sc's own outputs, samples included
    model.embed(query, seed=0, store_samples=True, **EMBED)
    second, _ = model.embed(query, seed=1, store_samples=True, **EMBED)
    np.testing.assert_array_equal(query.obsm["X_dice"], second)
    model.project(query)
    model.project(query)
    # a user's own arrays (e.g. scanpy's X_pca) are left alone, with an error saying what to do
    for key in ("X_pca", "X_mine", "X_mine_std"):
        user = pbmc[:20].copy()
        user.obsm[key] = np.full((20, 3), 7.0)
        with pytest.raises(ValueError, match="refusing to overwrite"):
            if key == "X_pca":
                model.project(user)
            else:
                model.embed(user, key_added="X_mine", **EMBED)
        np.testing.assert_array_equal(user.obsm[key], 7.0)
        assert "X_mine" not in user.obsm or key == "X_mine"


def test_noise_var_auto_uses_the_residual_variance(trained, pbmc):
    model, _ = trained
    query = pbmc[:30].copy()
    sigma2 = model.residual_var
    assert 0 < sigma2 < 1.5  # scaled genes have unit variance, k axes explain part of it
    auto, _ = model.embed(query, seed=5, key_added="X_auto", **EMBED)
    explicit, _ = model.embed(query, seed=5, key_added="X_explicit", noise_var=sigma2, **EMBED)
    np.testing.assert_array_equal(auto, explicit)
    assert query.uns["countsdiff"]["X_auto"]["noise_var"] == pytest.approx(sigma2)
    assert query.uns["countsdiff"]["X_auto"]["noise_var_auto"] is True
    assert query.uns["countsdiff"]["X_explicit"]["noise_var_auto"] is False
    # the likelihood variance matters: a different value gives a different embedding
    other, _ = model.embed(query, seed=5, key_added="X_nv1", noise_var=4.0, **EMBED)
    assert not np.allclose(other, auto)
    for bad in ("Auto", "mle", 0.0, -1.0, float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match="noise_var"):
            model.embed(query, noise_var=bad, **EMBED)
        with pytest.raises(ValueError, match="noise_var"):
            model.get_latent_representation(query, noise_var=bad, **EMBED)


def test_embedding_is_batch_independent_given_rows(trained, pbmc):
    """LayerNorm (not BatchNorm): a network call on a chunk equals the same rows inside a larger batch."""
    model, _ = trained
    net = model.module.network(True)
    x = torch.randn(20, 6)
    with torch.inference_mode():
        torch.testing.assert_close(net(x, torch.tensor(0.4))[:5], net(x[:5], torch.tensor(0.4)))


def test_save_load_roundtrip(trained, pbmc, tmp_path):
    model, _ = trained
    query = pbmc[100:130].copy()
    before, _ = model.embed(query, seed=11, **EMBED)
    model.save(tmp_path / "dice", overwrite=True)
    loaded = DICEModel.load(tmp_path / "dice", adata=None)
    assert loaded.adata is None and loaded.n_latent == model.n_latent
    for name in ("gene_mean", "gene_std", "pca_mean", "loadings", "latent_scale", "residual_var"):
        torch.testing.assert_close(getattr(loaded.module, name), getattr(model.module, name), atol=0, rtol=0)
    np.testing.assert_array_equal(loaded.history["train_loss"], model.history["train_loss"])
    after, _ = loaded.embed(query, seed=11, **EMBED)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(loaded.project(query, key_added=None), model.project(query, key_added=None))
    # loading with a (small) query AnnData does not refit the projection on it
    q2 = pbmc[:20].copy()
    with_data = DICEModel.load(tmp_path / "dice", adata=q2)
    torch.testing.assert_close(with_data.module.loadings, model.module.loadings, atol=0, rtol=0)
    np.testing.assert_array_equal(with_data.embed(query, seed=11, **EMBED)[0], before)
    with pytest.raises(ValueError, match="without AnnData"):
        loaded_no_data = DICEModel.load(tmp_path / "dice", adata=None)
        loaded_no_data.embed(**EMBED)


def test_dice_separates_clusters_better_than_pca():
    """End to end on a small factor model (paper Eq. 1): the DICE embedding separates two clusters better."""
    import anndata as ad
    import scvi
    from sklearn.metrics import silhouette_score

    scvi.settings.seed = 0
    rng = np.random.default_rng(0)
    k, d = 4, 60
    v = rng.normal(size=(d, k))

    def make(n):
        lab = rng.integers(0, 2, n)
        u = lab[:, None] * 1.0 + 0.6 * rng.normal(size=(n, k))
        return ad.AnnData((u @ v.T + rng.normal(size=(n, d))).astype(np.float32)), lab

    ref, _ = make(800)
    query, labels = make(200)
    ref.var_names = query.var_names = [f"g{i}" for i in range(d)]
    DICEModel.setup_anndata(ref, is_counts=False)
    model = DICEModel(ref, n_latent=k, scale=False, n_hidden=64, n_blocks=2, dim_time=32)
    model.train(max_steps=400, batch_size=256, check_val_every_n_epoch=10, enable_progress_bar=False,
                enable_model_summary=False)
    pca = model.project(query, key_added=None)
    rho = float(model.module.latent_scale)  # coupling noise at the scale of the reference embedding
    mean, std = model.embed(query, n_iter=20, rho=rho, n_chains=8, seed=0, progress=False)
    assert silhouette_score(mean, labels) > silhouette_score(pca, labels) + 0.05
    assert np.all(std > 0)


def test_model_saved_without_residual_var_loads_and_falls_back(trained, pbmc, tmp_path):
    """A 0.1.0 model (no residual_var buffer) still loads; noise_var='auto' then warns and uses 1.0."""
    model, _ = trained
    model.save(tmp_path / "old", overwrite=True)
    path = tmp_path / "old" / "model.pt"
    saved = torch.load(path, weights_only=False)
    del saved["model_state_dict"]["residual_var"]
    torch.save(saved, path)
    old = DICEModel.load(tmp_path / "old", adata=None)
    assert np.isnan(old.residual_var)
    query = pbmc[:20].copy()
    with pytest.warns(UserWarning, match="noise_var=1.0"):
        fallback, _ = old.embed(query, seed=2, **EMBED)
    np.testing.assert_array_equal(fallback, model.embed(query, seed=2, noise_var=1.0, key_added="X_one", **EMBED)[0])


# ---------------------------------------------------------------------- issue 32: settings, loading, the resource guard
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n_latent": 2.5}, ValueError, "n_latent must be a whole number"),
    ({"n_latent": True}, TypeError, "n_latent must be an integer"),
    ({"n_latent": 0}, ValueError, "n_latent must be >= 1"),
    ({"n_hidden": 0}, ValueError, "n_hidden"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"beta_start": 0.1, "beta_end": 0.01}, ValueError, "beta_start must be below beta_end"),
    ({"target_sum": float("nan")}, ValueError, "target_sum"),
    ({"ema_decay": -0.1}, ValueError, "ema_decay"),
])
def test_model_settings_are_checked_not_truncated(pbmc, kwargs, error, match):
    adata = pbmc[:60].copy()
    DICEModel.setup_anndata(adata)
    with pytest.raises(error, match=match):
        DICEModel(adata, **{"n_latent": 3, **kwargs})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"n_iter": 2.5}, ValueError, "n_iter must be a whole number"),
    ({"n_chains": 2.5}, ValueError, "n_chains must be a whole number"),
    ({"n_chains": True}, TypeError, "n_chains must be an integer"),
    ({"n_chains": "3"}, TypeError, "n_chains must be an integer"),
    ({"n_chains": 0}, ValueError, "n_chains must be >= 1"),
    ({"batch_size": 0.5}, ValueError, "batch_size"),
    ({"n_prior_steps": 0}, ValueError, "n_prior_steps"),
    ({"seed": -1}, ValueError, "seed"),
    ({"key_added": ""}, ValueError, "key_added"),
])
def test_embed_settings_are_checked_not_truncated(trained, pbmc, kwargs, error, match):
    model, _ = trained
    query = pbmc[:20].copy()
    with pytest.raises(error, match=match):
        model.embed(query, **{**EMBED, **kwargs})
    assert "X_dice" not in query.obsm


@pytest.mark.parametrize("n_chains", [10**6, 10**7])
def test_huge_chain_counts_are_refused_before_allocating(trained, pbmc, n_chains):
    from countsdiff_sc._resources import ResourceError

    model, _ = trained
    query = pbmc[:30].copy()
    with pytest.raises(ResourceError, match=r"embed\(n_chains=.*GiB of memory") as info:
        model.embed(query, **{**EMBED, "n_chains": n_chains})
    assert "fewer chains" in str(info.value)
    with pytest.raises(ResourceError, match="entry-evaluations"):  # small batches fit the memory, not the work
        model.embed(query, **{**EMBED, "n_chains": n_chains, "batch_size": 1, "n_iter": 100})
    assert "X_dice" not in query.obsm


def test_guard_counts_samples_and_lets_ordinary_calls_through(trained, pbmc, monkeypatch):
    from countsdiff_sc import settings
    from countsdiff_sc._resources import ResourceError

    model, _ = trained
    monkeypatch.setattr(settings, "max_memory", 1_000_000)
    model.embed(pbmc[:30].copy(), **EMBED)  # 30 cells x 3 chains: far below the budget
    query = pbmc[:300].copy()
    rhos = np.linspace(5.0, 0.5, EMBED["n_iter"])
    model._check_resources(300, query.n_vars, rhos, 200, 1, 10, store_samples=False)  # fits: batches of 200 rows
    with pytest.raises(ResourceError, match="store_samples=False"):  # 300 x 200 x k stored states do not
        model.embed(query, **{**EMBED, "n_chains": 200, "batch_size": 1, "store_samples": True})
    assert "X_dice" not in query.obsm


def test_loading_another_model_or_a_corrupt_file_is_explained(trained, tmp_path):
    from countsdiff_sc.model import CountsDiffModel
    from tests.conftest import make_counts

    adata = make_counts(n_obs=30, n_vars=8)
    CountsDiffModel.setup_anndata(adata)
    CountsDiffModel(adata).save(tmp_path / "countsdiff", overwrite=True)
    with pytest.raises(ValueError, match="holds a saved CountsDiffModel, not a DICEModel"):
        DICEModel.load(tmp_path / "countsdiff", adata=None)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.pt").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="not a readable saved model"):
        DICEModel.load(tmp_path / "corrupt", adata=None)
    with pytest.raises(FileNotFoundError, match="No saved model"):
        DICEModel.load(tmp_path / "nothing", adata=None)
    with pytest.raises(ValueError, match="is a file"):
        DICEModel.load(tmp_path / "corrupt" / "model.pt", adata=None)


def test_rho_auto_is_the_papers_schedule_in_units_of_the_reference_spread(trained, pbmc):
    model, _ = trained
    c = model.embedding_scale
    assert np.isfinite(c) and c > 0
    settings = {k: v for k, v in EMBED.items() if k != "rho"}
    query = pbmc[:25].copy()
    auto, _ = model.embed(query, seed=5, **settings)
    record = query.uns["countsdiff"]["X_dice"]
    assert record["rho_start"] == pytest.approx(2 * c) and record["rho_end"] == pytest.approx(0.2 * c)
    assert record["rho_auto"] and record["rho_schedule"] == "linear"
    explicit, _ = model.embed(query.copy(), seed=5, rho=(2 * c, 0.2 * c), **settings)
    np.testing.assert_array_equal(auto, explicit)
    with pytest.raises(ValueError, match="rho must be 'auto'"):
        model.embed(query, rho="paper", **settings)


def test_rho_auto_of_a_model_without_its_spread_falls_back_with_a_warning(trained, pbmc, monkeypatch):
    model, _ = trained
    monkeypatch.setattr(model.module, "embedding_scale", torch.tensor(float("nan")))
    monkeypatch.setattr(model.module, "latent_scale", torch.tensor(1.0))
    query = pbmc[:10].copy()
    with pytest.warns(UserWarning, match="former default rho=\\(5.0, 0.5\\)"):
        model.embed(query, **{k: v for k, v in EMBED.items() if k != "rho"})
    assert query.uns["countsdiff"]["X_dice"]["rho_start"] == 5.0
