"""scvi-tools' expression API on CountsDiffModel: signatures, return types, the samplers, PosteriorPredictiveCheck."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import sparse
import torch
from scvi.model.base import RNASeqMixin

import countsdiff_sc as cds
from countsdiff_sc.model._denoise import F_MAX, predictive_draws, predictive_variance, restored_depths
from tests.conftest import make_counts

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
QUICK = {"sampler": cds.Sampler(n_steps=4, seed=0)}


@pytest.fixture(scope="module")
def model_and_data():
    adata = make_counts(n_obs=80, n_vars=12)
    x = adata.X.toarray()
    adata.layers["valid"] = ~((x == 0) & (np.random.default_rng(0).random(x.shape) < 0.5))
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      valid_layer="valid")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=3, accelerator="cpu", enable_progress_bar=False)
    return adata, model


def test_signatures_follow_scvi_tools():
    ours = inspect.signature(cds.CountsDiffModel.get_normalized_expression).parameters
    theirs = inspect.signature(RNASeqMixin.get_normalized_expression).parameters
    for name in ("adata", "indices", "transform_batch", "gene_list", "library_size", "n_samples", "batch_size",
                 "return_mean", "return_numpy"):
        assert name in ours and ours[name].default == theirs[name].default, name
    ours = inspect.signature(cds.CountsDiffModel.posterior_predictive_sample).parameters
    theirs = inspect.signature(RNASeqMixin.posterior_predictive_sample).parameters
    for name in ("adata", "indices", "transform_batch", "n_samples", "gene_list", "batch_size"):
        assert name in ours and ours[name].default == theirs[name].default, name


def test_normalized_expression_shapes_and_types(model_and_data):
    adata, model = model_and_data
    df = model.get_normalized_expression(adata, **QUICK)
    assert isinstance(df, pd.DataFrame) and df.shape == adata.shape
    assert list(df.index) == list(adata.obs_names) and list(df.columns) == list(adata.var_names)
    np.testing.assert_allclose(df.sum(axis=1), 1.0, rtol=1e-5)
    sub = model.get_normalized_expression(adata, indices=[3, 1], gene_list=["g5", "g2"], library_size=1e4,
                                          **QUICK)
    assert list(sub.index) == [adata.obs_names[3], adata.obs_names[1]] and list(sub.columns) == ["g5", "g2"]
    arr = model.get_normalized_expression(adata, n_samples=3, return_mean=False, **QUICK)  # auto: depth draws
    assert isinstance(arr, np.ndarray) and arr.shape == (3, adata.n_obs, adata.n_vars)
    assert not np.allclose(arr[0], arr[1])
    mean = model.get_normalized_expression(adata, n_samples=3, return_numpy=True, method="depth", **QUICK)
    np.testing.assert_allclose(mean, arr.mean(axis=0), rtol=1e-5, atol=1e-7)
    latent = model.get_normalized_expression(adata, library_size="latent", **QUICK)
    np.testing.assert_allclose(latent.sum(axis=1), adata.X.toarray().sum(axis=1), rtol=1e-4)
    with pytest.raises(ValueError, match="gene_list"):
        model.get_normalized_expression(adata, gene_list=["nope"], **QUICK)


def test_seeds_and_methods(model_and_data):
    adata, model = model_and_data
    a = model.get_normalized_expression(adata, **QUICK)
    b = model.get_normalized_expression(adata, **QUICK)
    pd.testing.assert_frame_equal(a, b)
    for method in ("posterior_mean", "depth"):
        df = model.get_normalized_expression(adata, method=method, **QUICK)
        assert np.isfinite(df.to_numpy()).all()
    with pytest.raises(ValueError, match="method must be"):
        model.get_normalized_expression(adata, method="magic", **QUICK)
    for removed in ("sdedit", "dropouts"):  # measured worse than depth restoration: removed in 0.2
        with pytest.raises(ValueError, match="removed"):
            model.get_normalized_expression(adata, method=removed, **QUICK)
    with pytest.raises(ValueError, match="depth restoration"):
        model.posterior_predictive_sample(adata, method="posterior_mean", **QUICK)
    with pytest.raises(ValueError, match="depth must be"):
        model.get_normalized_expression(adata, depth=-3, **QUICK)


def test_cells_at_the_restored_depth_are_unchanged(model_and_data):
    adata, model = model_and_data
    deep = model.get_normalized_expression(adata, depth=1.0, library_size="latent", return_numpy=True, **QUICK)
    np.testing.assert_allclose(deep, adata.X.toarray(), rtol=1e-6)  # every cell has >= 1 count: f = 1


def test_posterior_mean_is_the_networks_estimate(model_and_data):
    """method='posterior_mean' is x + y_hat(x, t_f) at the cell's exact entry time p(t_f) = L / D (by hand)."""
    adata, model = model_and_data
    depth = 500.0
    got = model.get_normalized_expression(adata, indices=[0], method="posterior_mean", depth=depth,
                                          library_size="latent", return_numpy=True, **QUICK)
    x = torch.from_numpy(adata.X[:1].toarray().astype(np.float32))
    library = float(x.sum())
    t = model.module.schedule.t_of_p(torch.tensor([library / depth], dtype=torch.float64)).float()
    cat = torch.tensor([[model.condition_space.label_categories.index(adata.obs["cell_type"].iloc[0]),
                         model.condition_space.covariate_categories["batch"].index(adata.obs["batch"].iloc[0])]])
    valid = torch.from_numpy(adata.layers["valid"][:1])
    vec = model.module.vector_condition(None, torch.tensor([depth]))
    with torch.inference_mode():
        restored = (x + model.module.rate(x, t, cat, vec, valid=valid, guidance=1.0)).numpy()
    np.testing.assert_allclose(got, restored / restored.sum() * library, rtol=1e-5)
    again = model.get_normalized_expression(adata, indices=[0], method="posterior_mean", depth=depth,
                                            library_size="latent", return_numpy=True,
                                            sampler=cds.Sampler(n_steps=4, seed=123))
    np.testing.assert_array_equal(got, again)  # one network pass: no randomness at all


def _spy_on_depths(monkeypatch, module) -> list[np.ndarray]:
    """Record the restored depths each call of ``module.restore_blocks`` is given (the chains still run)."""
    seen: list[np.ndarray] = []
    real = module.restore_blocks
    monkeypatch.setattr(module, "restore_blocks",
                        lambda m, x, r, d, *a: seen.append(np.array(d)) or real(m, x, r, d, *a))
    return seen


def test_default_restored_depth_is_the_median_of_the_cells_label(model_and_data, monkeypatch):
    """``depth="auto"`` restores each cell to the median depth of its label's training cells (cell types differ in
    depth ten-fold on real PBMCs) or, where that is deeper, of every training cell; to the median over every training
    cell at guidance 0 (the output then reads no label) and for a label with fewer than ``MIN_LABEL_CELLS`` training
    cells; never to a deep quantile (the 90th percentile of 0.1 let shallow cells borrow most of their profile from
    the network)."""
    import countsdiff_sc.model._expression as expression
    from countsdiff_sc.model._setup import training_depths

    adata, model = model_and_data
    depths = training_depths(model.adata_manager, model.module.prior_mean)
    assert model.depth_ == pytest.approx(float(np.median(depths)), rel=1e-6)
    assert model.depth_ < float(np.quantile(depths, 0.9))
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    table = model.restored_depth_table()
    for name in model.condition_space.label_categories:  # by hand: the median of the label's cells, at most depth_
        median = float(np.median(depths[labels == name]))
        assert table.loc[name, "label_median"] == pytest.approx(median, rel=1e-6)
        assert table.loc[name, "restored_depth"] == pytest.approx(min(median, model.depth_), rel=1e-6)
        assert table.loc[name, "training_cells"] == (labels == name).sum()
    assert table["restored_depth"].nunique() > 1  # the labels of this data differ in depth
    assert (table["label_median"] > model.depth_).any()  # ... and the cap binds for one of them

    seen = _spy_on_depths(monkeypatch, expression)
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    cells = np.arange(adata.n_obs)
    for guidance, expected in ((2.0, table.loc[labels, "restored_depth"].to_numpy()), (0.0, model.depth_)):
        model.get_normalized_expression(adata, method="posterior_mean", library_size="latent", return_numpy=True,
                                        sampler=cds.Sampler(n_steps=4, seed=0, guidance=guidance))
        np.testing.assert_allclose(seen[-1], np.maximum(expected, library[cells] / F_MAX), rtol=1e-6)
    assert not np.allclose(seen[0], seen[1])

    rare = table["training_cells"].min()  # a label below the minimum falls back to every training cell's median
    monkeypatch.setattr(expression, "MIN_LABEL_CELLS", int(rare) + 1)
    fallback = model.restored_depth_table()
    assert fallback.loc[table["training_cells"] == rare, "label_median"].isna().all()
    np.testing.assert_allclose(fallback.loc[table["training_cells"] == rare, "restored_depth"], model.depth_)


def test_impute_restores_each_label_to_its_median_and_records_it(model_and_data, monkeypatch):
    import countsdiff_sc.model._imputation as imputation

    adata, model = model_and_data
    seen = _spy_on_depths(monkeypatch, imputation)
    data = adata.copy()
    model.impute(data, n_samples=1, store_samples=False, sampler=cds.Sampler(n_steps=4, seed=0))
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    expected = model.restored_depth_table().loc[labels, "restored_depth"].to_numpy()
    np.testing.assert_allclose(seen[-1], np.maximum(expected, library / F_MAX), rtol=1e-6)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["restored_depth"] == (
        "median of the cell's label, at most that of all cells")
    model.impute(data, n_samples=1, store_samples=False, sampler=cds.Sampler(n_steps=4, seed=0, guidance=0.0))
    np.testing.assert_allclose(seen[-1], np.maximum(model.depth_, library / F_MAX), rtol=1e-6)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["restored_depth"] == "median of the training cells"


def test_label_depths_are_quantiles_of_each_labels_cells():
    from countsdiff_sc.model._expression import label_depths

    rng = np.random.default_rng(3)
    depths = rng.lognormal(6, 1, 500)
    labels = rng.integers(0, 4, 500)
    labels[labels == 3] = 2  # label 3 has no cell
    labels[:4] = 3  # ... but four
    got = label_depths(depths, labels, 5, quantile=0.6, min_cells=5)
    for code in range(3):
        assert got[code] == pytest.approx(np.quantile(depths[labels == code], 0.6))
    assert np.isnan(got[3]) and np.isnan(got[4])  # too few cells; none at all


def test_restored_depths_floor_deep_cells():
    depths = restored_depths(np.array([10.0, 80.0, 200.0]), 100.0)
    np.testing.assert_allclose(depths, [100.0, 80.0 / F_MAX, 200.0 / F_MAX])  # every cell restored at f <= F_MAX
    np.testing.assert_allclose(restored_depths(np.array([10.0, 200.0]), 100.0, floor=False), [100.0, 200.0])


def test_transform_batch_is_a_counterfactual(model_and_data):
    adata, model = model_and_data
    a = model.get_normalized_expression(adata, transform_batch="b0", **QUICK)
    b = model.get_normalized_expression(adata, transform_batch={"batch": "b1"}, **QUICK)
    assert a.shape == b.shape
    both = model.get_normalized_expression(adata, transform_batch=["b0", "b1"], **QUICK)
    np.testing.assert_allclose(both.to_numpy(), (a.to_numpy() + b.to_numpy()) / 2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="Unknown batch value"):
        model.get_normalized_expression(adata, transform_batch="b9", **QUICK)


def test_posterior_predictive_sample(model_and_data):
    adata, model = model_and_data
    one = model.posterior_predictive_sample(adata, **QUICK)
    assert isinstance(one, sparse.GCXS) and one.shape == adata.shape
    many = model.posterior_predictive_sample(adata, n_samples=3, gene_list=["g1", "g4"], **QUICK)
    assert many.shape == (adata.n_obs, 2, 3)
    dense = many.todense()
    assert (dense >= 0).all() and np.array_equal(dense, np.round(dense))
    # every cell at the restored depth already (f = 1): x_D is the cell, and a new measurement is Poisson(x)
    x = adata.X.toarray()
    new = model.posterior_predictive_sample(adata, depth=1.0, n_samples=400, **QUICK).todense()
    assert new.shape == (*x.shape, 400)
    np.testing.assert_allclose(new.mean(axis=2), x, atol=5 * np.sqrt(x.max() / 400))
    assert abs(new.var(axis=2).sum() / x.sum() - 1) < 0.1  # Poisson: variance = mean (a thinning would give 0)


def test_predictive_draws_are_poisson_captures():
    """A new measurement is Poisson(f x_D): its moments against the closed form, over a posterior of x_D."""
    rng = np.random.default_rng(0)
    x_d = rng.poisson(20.0, size=(3, 4000, 5)).astype(np.float32)  # draws of x_D: Var[x_D] = E[x_D] = 20
    f = np.array([0.1, 0.5, 1.0])
    new = predictive_draws(x_d, f, torch.Generator().manual_seed(1))
    assert new.dtype == np.float32 and (new >= 0).all() and np.array_equal(new, np.round(new))
    expected_var = f * 20.0 + f ** 2 * 20.0  # law of total variance: Poisson noise + the posterior's spread
    np.testing.assert_allclose(new.mean(axis=(1, 2)), f * 20.0, rtol=0.03)
    np.testing.assert_allclose(new.var(axis=(1, 2)), expected_var, rtol=0.06)
    np.testing.assert_allclose(predictive_variance(x_d, f).mean(axis=1), expected_var, rtol=0.03)
    with_seed = [predictive_draws(x_d[:, :3], f, torch.Generator().manual_seed(7)) for _ in range(2)]
    np.testing.assert_array_equal(*with_seed)


def test_posterior_predictive_check_runs(model_and_data):
    from scvi.criticism import PosteriorPredictiveCheck

    adata, model = model_and_data
    torch.manual_seed(0)
    raw = adata.copy()
    raw.X = raw.X.astype(np.int64)  # scvi-tools' check of float sparse counts fails; integer counts as usual
    ppc = PosteriorPredictiveCheck(raw, {"countsdiff": model}, n_samples=2)
    ppc.coefficient_of_variation("cells")  # per gene, over the cells
    cv = ppc.metrics["cv_gene"]
    assert "countsdiff" in cv.columns and np.isfinite(cv["countsdiff"]).all()
    ppc.zero_fraction()
    assert "countsdiff" in ppc.metrics["zero_fraction"].columns


def test_restored_depths_survive_save_and_load_without_data(model_and_data, tmp_path):
    """A model loaded without its training data restores each label to the same depth (the training cells' depths
    and labels are saved with it), so ``impute`` on new cells gives the same values."""
    adata, model = model_and_data
    model.save(tmp_path / "m", overwrite=True)
    bare = cds.CountsDiffModel.load(tmp_path / "m", adata=None)
    pd.testing.assert_frame_equal(bare.restored_depth_table(), model.restored_depth_table())
    query = adata[:10].copy()
    a, _ = model.impute(query.copy(), n_samples=1, store_samples=False, sampler=cds.Sampler(n_steps=4, seed=0))
    b, _ = bare.impute(query.copy(), n_samples=1, store_samples=False, sampler=cds.Sampler(n_steps=4, seed=0))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_a_model_without_labels_restores_every_cell_to_the_overall_median(monkeypatch):
    import countsdiff_sc.model._imputation as imputation

    adata = make_counts(n_obs=60, n_vars=10)
    cds.CountsDiffModel.setup_anndata(adata)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=2, accelerator="cpu", enable_progress_bar=False)
    table = model.restored_depth_table()
    assert list(table.index) == ["all cells"] and table["restored_depth"].iloc[0] == pytest.approx(model.depth_)
    seen = _spy_on_depths(monkeypatch, imputation)
    data = adata.copy()
    model.impute(data, n_samples=1, store_samples=False, sampler=cds.Sampler(n_steps=4, seed=0))
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(seen[-1], np.maximum(model.depth_, library / F_MAX), rtol=1e-6)
    assert data.uns["countsdiff"]["countsdiff_imputed"]["restored_depth"] == "median of the training cells"
