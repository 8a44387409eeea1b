from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import countsdiff_sc as cds
from tests.conftest import make_counts


# ---------------------------------------------------------------------------------------------------- imputed_vs_true
def test_imputed_vs_true_axes_and_title(imputed_adata):
    ax = cds.pl.imputed_vs_true(imputed_adata, show=False)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "true (log1p X)" and ax.get_ylabel() == "imputed (log1p countsdiff_imputed)"
    assert "RMSE" in ax.get_title() and "Spearman" in ax.get_title()
    n = int(imputed_adata.layers["countsdiff_mask"].sum())
    assert f"{n:,} held-out entries" in ax.get_title()


def test_imputed_vs_true_return_fig_save_and_given_ax(imputed_adata, tmp_path):
    import matplotlib.pyplot as plt

    fig = cds.pl.imputed_vs_true(imputed_adata, true_layer="counts", log1p=False, return_fig=True,
                                 save=tmp_path / "sub" / "fig")
    assert isinstance(fig, Figure)
    assert (tmp_path / "sub" / "fig.png").stat().st_size > 0
    _, ax = plt.subplots()
    assert cds.pl.imputed_vs_true(imputed_adata, ax=ax, show=False) is ax


def test_imputed_vs_true_errors(imputed_adata):
    with pytest.raises(KeyError, match="impute"):
        cds.pl.imputed_vs_true(imputed_adata, layer="nope", show=False)
    with pytest.raises(KeyError, match="mask_mcar"):
        cds.pl.imputed_vs_true(imputed_adata, mask_layer="nope", show=False)
    with pytest.raises(KeyError, match="Layer 'raw' not found"):
        cds.pl.imputed_vs_true(imputed_adata, true_layer="raw", show=False)
    imputed_adata.layers["countsdiff_mask"] = np.zeros(imputed_adata.shape, dtype=bool)
    with pytest.raises(ValueError, match="no True entry"):
        cds.pl.imputed_vs_true(imputed_adata, show=False)


def test_save_true_writes_default_name(imputed_adata, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cds.pl.imputed_vs_true(imputed_adata, save=True, show=False)
    assert (tmp_path / "imputed_vs_true.png").exists()


# --------------------------------------------------------------------------------------------------- gene_calibration
@pytest.mark.parametrize("stat", ["zero_fraction", "mean", "variance"])
def test_gene_calibration_generated(stat):
    real, gen = make_counts(n_obs=50, n_vars=10, seed=0), make_counts(n_obs=40, n_vars=10, seed=1)
    ax = cds.pl.gene_calibration(real, gen, stat=stat, show=False)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel().startswith("real") and ax.get_ylabel().startswith("generated")
    assert ("log1p" in ax.get_xlabel()) == (stat != "zero_fraction")
    assert len(ax.collections[0].get_offsets()) == 10  # one point per gene


def test_gene_calibration_imputed_layer_and_errors(imputed_adata, tmp_path):
    ax = cds.pl.gene_calibration(imputed_adata, stat="mean", save=tmp_path / "c.pdf", show=False)
    assert ax.get_ylabel().startswith("imputed")
    assert (tmp_path / "c.pdf").exists()
    with pytest.raises(ValueError, match="stat must be one of"):
        cds.pl.gene_calibration(imputed_adata, stat="median", show=False)
    with pytest.raises(KeyError, match="countsdiff_other"):
        cds.pl.gene_calibration(imputed_adata, pred_layer="countsdiff_other", show=False)
    with pytest.raises(ValueError, match="same genes"):
        cds.pl.gene_calibration(imputed_adata, imputed_adata[:, :5], show=False)


# ------------------------------------------------------------------------------------------------------- metric_bars
def _table(scale: float) -> pd.DataFrame:
    return pd.DataFrame({"metric": ["rmse", "mmd", "spearman"], "value": [7.0 * scale, 0.001, 0.7],
                         "std_error": [0.5, np.nan, 0.01], "n_bootstrap": 10})


def test_metric_bars_dict_of_tables_panels():
    axs = cds.pl.metric_bars({"CountsDiff": _table(1.0), "Mean": _table(2.0)}, show=False)
    assert isinstance(axs, list) and len(axs) == 3
    assert [a.get_title() for a in axs] == ["rmse", "mmd", "spearman"]
    heights = [p.get_height() for p in axs[0].patches]
    assert heights == [7.0, 14.0]
    assert [t.get_text() for t in axs[-1].get_legend().get_texts()] == ["CountsDiff", "Mean"]


def test_metric_bars_uns_form_single_axes_and_method_column():
    imputed = make_counts(n_obs=30, n_vars=8)
    imputed.layers["countsdiff_imputed"] = imputed.X.toarray()
    imputed.layers["countsdiff_mask"] = np.random.default_rng(0).random(imputed.shape) < 0.5
    cds.metrics.evaluate_imputation(imputed, metrics=["rmse", "bias"], n_bootstrap=2)
    stored = imputed.uns["countsdiff_metrics"]["imputation"]
    ax = cds.pl.metric_bars(stored, panels=False, show=False)
    assert isinstance(ax, Axes)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["rmse", "bias"]
    both = pd.concat([_table(1.0).assign(method="a"), _table(1.0).assign(method="b")])
    axs = cds.pl.metric_bars(both, metrics=["spearman"], show=False)
    assert len(axs.patches) == 2  # one panel -> a single Axes


def test_metric_bars_list_names_and_errors(tmp_path):
    fig = cds.pl.metric_bars([_table(1.0), _table(1.5)], names=["x", "y"], metrics="rmse", return_fig=True,
                             save=tmp_path / "bars.svg")
    assert isinstance(fig, Figure) and (tmp_path / "bars.svg").exists()
    with pytest.raises(ValueError, match="not in the table"):
        cds.pl.metric_bars(_table(1.0), metrics=["auc"], show=False)
    with pytest.raises(ValueError, match="no value column"):
        cds.pl.metric_bars(pd.DataFrame({"metric": ["a"]}), show=False)
    dup = pd.concat([_table(1.0).assign(regime="mcar"), _table(1.0).assign(regime="mnar")])
    with pytest.raises(ValueError, match="regime"):
        cds.pl.metric_bars(dup, show=False)
    with pytest.raises(TypeError, match="DataFrame"):
        cds.pl.metric_bars([1, 2], show=False)


def test_metric_bars_embedding_table_groups_by_embedding():
    df = pd.DataFrame({"embedding": ["X_pca", "X_dice"], "metric": ["ari", "ari"], "value": [0.5, 0.7],
                       "std_error": [np.nan, np.nan]})
    ax = cds.pl.metric_bars(df, show=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["X_pca", "X_dice"]


# ---------------------------------------------------------------------------------------------------------- umap
def test_real_vs_generated_umap(tmp_path):
    real, gen = make_counts(n_obs=40, n_vars=12, seed=0), make_counts(n_obs=30, n_vars=12, seed=1)
    axs = cds.pl.real_vs_generated_umap(real, gen, color="cell_type", n_pcs=5, save=tmp_path / "u.png", show=False)
    assert len(axs) == 2 and [a.get_title() for a in axs] == ["source", "cell_type"]
    assert axs[0].get_xlabel() == "UMAP1"
    assert [t.get_text() for t in axs[0].get_legend().get_texts()] == ["real", "generated"]
    assert (tmp_path / "u.png").exists()
    assert "X_umap" not in real.obsm and "X_umap" not in gen.obsm  # inputs untouched
    ax = cds.pl.real_vs_generated_umap(real, gen, n_pcs=5, show=False)
    assert isinstance(ax, Axes)
    with pytest.raises(KeyError, match="nope"):
        cds.pl.real_vs_generated_umap(real, gen, color="nope", show=False)
    with pytest.raises(ValueError, match="same genes"):
        cds.pl.real_vs_generated_umap(real, gen[:, :4], show=False)
    # genes are matched by name: the same genes in another order give the same picture
    same = cds.pl.real_vs_generated_umap(real, gen, n_pcs=5, show=False, return_fig=True)
    again = cds.pl.real_vs_generated_umap(real, gen[:, list(gen.var_names[::-1])].copy(), n_pcs=5, show=False,
                                          return_fig=True)
    np.testing.assert_allclose(again.axes[0].collections[0].get_offsets(),
                               same.axes[0].collections[0].get_offsets(), rtol=1e-4, atol=1e-4)
    negative = gen.copy()
    negative.X = negative.X.toarray() if hasattr(negative.X, "toarray") else negative.X.copy()
    negative.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        cds.pl.real_vs_generated_umap(real, negative, show=False)


# ------------------------------------------------------------------------------------------------ interpolation
def test_interpolation_trajectory(interp_adata, tmp_path):
    interp, ref = interp_adata
    ax = cds.pl.interpolation_trajectory(interp, ref, "cell_type", n_pcs=5, show=False)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel().startswith("interpolation weight") and "PCs" in ax.get_ylabel()
    assert ax.get_title() == "type_0 \u2192 type_1"
    to_source, to_target = ax.lines[0].get_ydata(), ax.lines[2].get_ydata()
    assert len(to_source) == 5
    assert to_source[-1] > to_source[0] and to_target[-1] < to_target[0]  # moves from source to target
    fig = cds.pl.interpolation_trajectory(interp, ref, "cell_type", "type_0", "type_1", band="iqr",
                                          return_fig=True, save=tmp_path / "t.png")
    assert isinstance(fig, Figure) and (tmp_path / "t.png").exists()


def test_interpolation_trajectory_errors(interp_adata):
    interp, ref = interp_adata
    with pytest.raises(KeyError, match="interpolation_weight"):
        cds.pl.interpolation_trajectory(interp, ref, "cell_type", weight_key="interpolation_weight_", show=False)
    with pytest.raises(ValueError, match="no cell in reference"):
        cds.pl.interpolation_trajectory(interp, ref, "cell_type", target_label="type_9", show=False)
    with pytest.raises(ValueError, match="No row"):
        cds.pl.interpolation_trajectory(interp, ref, "cell_type", source_label="type_1", show=False)
    mixed = interp.copy()
    mixed.obs["target_label"] = ["type_1", "type_0"] * (mixed.n_obs // 2)
    with pytest.raises(ValueError, match="several labels"):
        cds.pl.interpolation_trajectory(mixed, ref, "cell_type", show=False)
    bare = ad.AnnData(interp.X, obs=interp.obs[["interpolation_weight"]], var=interp.var)
    with pytest.raises(KeyError, match="source_label"):
        cds.pl.interpolation_trajectory(bare, ref, "cell_type", show=False)
    with pytest.raises(ValueError, match="band"):
        cds.pl.interpolation_trajectory(interp, ref, "cell_type", band="ci", show=False)


# ------------------------------------------------------------------------------------------------ dice_uncertainty
def test_dice_uncertainty(tmp_path):
    adata = make_counts(n_obs=50, n_vars=5)
    rng = np.random.default_rng(0)
    adata.obsm["X_dice"] = rng.normal(size=(50, 4))
    adata.obsm["X_dice_std"] = np.abs(rng.normal(size=(50, 4)))
    adata.obsm["X_umap"] = rng.normal(size=(50, 2))
    axs = cds.pl.dice_uncertainty(adata, labels_key="cell_type", show=False)
    assert len(axs) == 2
    assert axs[0].get_xlabel() == "UMAP1" and axs[1].get_ylabel() == "cells"
    assert "X_dice_std" in axs[1].get_xlabel()
    expected = np.linalg.norm(adata.obsm["X_dice_std"], axis=1)
    np.testing.assert_allclose(np.sort(axs[0].collections[0].get_array()), np.sort(expected))
    legend = [t.get_text() for t in axs[1].get_legend().get_texts()]
    assert legend == list(adata.obs["cell_type"].cat.categories)  # the categorical's order
    fig = cds.pl.dice_uncertainty(adata, basis="umap", return_fig=True, save=tmp_path / "d.png")
    assert isinstance(fig, Figure) and (tmp_path / "d.png").exists()


def test_dice_uncertainty_errors():
    adata = make_counts(n_obs=20, n_vars=5)
    with pytest.raises(KeyError, match=r"DICEModel\.embed"):
        cds.pl.dice_uncertainty(adata, show=False)
    adata.obsm["X_dice_std"] = np.ones((20, 3))
    with pytest.raises(KeyError, match=r"sc\.tl\.umap"):
        cds.pl.dice_uncertainty(adata, show=False)
    adata.obsm["X_umap"] = np.ones((20, 2))
    with pytest.raises(KeyError, match="nope"):
        cds.pl.dice_uncertainty(adata, labels_key="nope", show=False)
    with pytest.raises(ValueError, match="sequence of 2 Axes"):
        import matplotlib.pyplot as plt

        cds.pl.dice_uncertainty(adata, ax=plt.subplots()[1], show=False)


def test_pl_is_lazy_and_respects_layering():
    import re
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, countsdiff_sc; print('matplotlib' in sys.modules); import countsdiff_sc.pl; "
        "print('torch' in sys.modules, 'scvi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["False", "False", "False"]  # pl loads matplotlib, but not torch / scvi-tools
    root = Path(cds.__file__).parent / "pl"
    for f in root.glob("*.py"):
        for mod in re.findall(r"^\s*(?:from|import)\s+(\S+)", f.read_text(), re.MULTILINE):
            assert not mod.startswith(("..model", "..module", "countsdiff_sc.model", "countsdiff_sc.module", "torch",
                                       "scvi")), (f, mod)
