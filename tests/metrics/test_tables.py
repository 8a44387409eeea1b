from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.metrics import (
    energy_distance,
    evaluate_imputation,
    metrics_table,
    mmd,
    pointwise_metrics,
    swd,
)


def make_adata(n_cells: int, seed: int = 0, n_genes: int = 30, noise: float = 1.0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    mu = rng.gamma(1.0, 3.0, size=n_genes)
    x = rng.poisson(rng.gamma(2.0, mu / 2.0, size=(n_cells, n_genes))).astype(np.float32)
    mask = rng.random(x.shape) < 0.5
    imputed = np.where(mask, np.clip(x + rng.normal(0, noise, x.shape), 0, None), x).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.layers["countsdiff_mask"] = mask
    adata.layers["countsdiff_imputed"] = imputed
    return adata


def test_perfect_imputation_gives_perfect_scores():
    adata = make_adata(80)
    adata.layers["countsdiff_imputed"] = adata.X.toarray()
    df = evaluate_imputation(adata, n_bootstrap=3).set_index("metric")
    for name in ("rmse", "mae", "bias", "energy_distance", "swd"):
        assert df.loc[name, "value"] == pytest.approx(0.0, abs=1e-12), name
    for name in ("r2", "spearman", "pearson"):
        assert df.loc[name, "value"] == pytest.approx(1.0), name
    assert abs(df.loc["mmd", "value"]) < 0.05  # unbiased U-statistic: slightly negative for identical samples
    assert (df["n_cells"] == 80).all() and (df["n_entries"] == adata.layers["countsdiff_mask"].sum()).all()


def test_values_match_the_low_level_functions():
    adata = make_adata(60, seed=1)
    x, imp, mask = adata.X.toarray(), adata.layers["countsdiff_imputed"], adata.layers["countsdiff_mask"]
    df = evaluate_imputation(adata, n_bootstrap=0).set_index("metric")
    for name, value in pointwise_metrics(x, imp, mask).items():
        assert df.loc[name, "value"] == pytest.approx(value, rel=1e-12)
    assert df.loc["energy_distance", "value"] == pytest.approx(energy_distance(x, imp, mask), rel=1e-10)
    composite = np.where(mask, imp, x)
    assert df.loc["mmd", "value"] == pytest.approx(mmd(x, composite), rel=1e-6)
    assert df.loc["swd", "value"] == pytest.approx(swd(x, composite), rel=1e-6)
    assert df["std_error"].isna().all()


def test_table_roundtrips_through_h5ad(tmp_path):
    adata = make_adata(50, seed=2)
    df = evaluate_imputation(adata, n_bootstrap=2, key_added="run1")
    path = tmp_path / "imp.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    table = metrics_table(back, "run1")
    assert list(table.columns) == list(df.columns)
    assert table["metric"].tolist() == df["metric"].tolist()
    np.testing.assert_allclose(table["value"].to_numpy(), df["value"].to_numpy())
    np.testing.assert_allclose(table["std_error"].to_numpy(), df["std_error"].to_numpy())
    assert back.uns["countsdiff"]["metrics_run1"]["n_bootstrap"] == 2
    with pytest.raises(KeyError, match="run2"):
        metrics_table(back, "run2")


def test_inputs_are_not_modified():
    adata = make_adata(40, seed=3)
    before = {k: adata.layers[k].copy() for k in adata.layers}
    x_before = adata.X.copy()
    evaluate_imputation(adata, n_bootstrap=1)
    assert (adata.X != x_before).nnz == 0
    for key, value in before.items():
        np.testing.assert_array_equal(adata.layers[key], value)


def test_valid_layer_intersects_the_mask():
    adata = make_adata(60, seed=4)
    rng = np.random.default_rng(0)
    adata.layers["countsdiff_valid"] = rng.random(adata.shape) < 0.7
    df = evaluate_imputation(adata, valid_layer="countsdiff_valid", metrics=["rmse", "spearman"], n_bootstrap=0)
    mask = adata.layers["countsdiff_mask"] & adata.layers["countsdiff_valid"]
    expected = pointwise_metrics(adata.X.toarray(), adata.layers["countsdiff_imputed"], mask)
    assert df["value"].tolist() == pytest.approx([expected["rmse"], expected["spearman"]])
    assert df["n_entries"].iloc[0] == mask.sum()


def test_bootstrap_standard_errors_shrink_with_more_cells_and_are_seeded():
    small = evaluate_imputation(make_adata(100, seed=5), n_bootstrap=20, metrics=["rmse", "bias", "mmd", "swd"])
    large = evaluate_imputation(make_adata(1600, seed=5), n_bootstrap=20, metrics=["rmse", "bias", "mmd", "swd"])
    for name in ("rmse", "bias", "mmd", "swd"):
        se_small = small.set_index("metric").loc[name, "std_error"]
        se_large = large.set_index("metric").loc[name, "std_error"]
        assert se_small > 1.5 * se_large, name
    again = evaluate_imputation(make_adata(100, seed=5), n_bootstrap=20, metrics=["rmse", "bias", "mmd", "swd"])
    np.testing.assert_array_equal(again["std_error"].to_numpy(), small["std_error"].to_numpy())


def test_only_cells_with_held_out_entries_are_evaluated():
    adata = make_adata(30, seed=6)
    mask = adata.layers["countsdiff_mask"].copy()
    mask[:10] = False
    adata.layers["countsdiff_mask"] = mask
    df = evaluate_imputation(adata, metrics=["rmse"], n_bootstrap=0)
    assert df["n_cells"].iloc[0] == 20


def test_scfid_row_names_its_embedder(pbmc, pbmc_embedder):
    adata = pbmc[:200].copy()
    rng = np.random.default_rng(0)
    x = adata.X.toarray()
    mask = rng.random(x.shape) < 0.3
    adata.layers["countsdiff_mask"] = mask
    adata.layers["countsdiff_imputed"] = np.where(mask, rng.poisson(x + 1.0), x).astype(np.float32)
    df = evaluate_imputation(adata, metrics=["rmse", "scfid"], embedder=pbmc_embedder, n_bootstrap=2)
    row = df.set_index("metric").loc["scfid"]
    assert row["value"] > 0 and np.isfinite(row["std_error"])
    assert "trained on the reference data" in row["note"]


def test_errors_are_explained():
    adata = make_adata(20, seed=7)
    with pytest.raises(KeyError, match="countsdiff_imputed_v2"):
        evaluate_imputation(adata, imputed_layer="countsdiff_imputed_v2")
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_imputation(adata, metrics=["rmse", "fid"])
    with pytest.raises(ValueError, match="transform"):
        evaluate_imputation(adata, transform="sqrt")
    adata.layers["countsdiff_mask"] = np.zeros(adata.shape, dtype=bool)
    with pytest.raises(ValueError, match="selects no entries"):
        evaluate_imputation(adata)


def test_views_get_the_table_but_a_warning_instead_of_storage():
    adata = make_adata(40, seed=8)
    view = adata[:30]
    with pytest.warns(UserWarning, match="view"):
        df = evaluate_imputation(view, metrics=["rmse"], n_bootstrap=0)
    assert len(df) == 1 and view.is_view
    assert "countsdiff_metrics" not in adata.uns
