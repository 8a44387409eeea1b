"""Bad or unusual inputs: never a silently wrong result, always an error that names the cause and the fix.

One test per finding of the input audit (issue 20); each failed before the fix.
"""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

import countsdiff_sc as cds
from tests.conftest import make_counts

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False}
QUICK = {"n_samples": 2, "n_steps": 3, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def trained():
    adata = make_counts(n_obs=120, n_vars=20)
    adata.layers["mask"] = np.random.default_rng(0).random(adata.shape) < 0.2
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", condition_obsm_key="cond")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=3, **FAST)
    return adata, model


# 1. genes are matched by name -------------------------------------------------------------------------------------
def test_impute_matches_genes_by_name_not_position(trained):
    adata, model = trained
    ref = adata.copy()
    imp_ref, s_ref = model.impute(ref, mask_layer="mask", **QUICK)
    order = np.random.default_rng(1).permutation(adata.n_vars)
    shuffled = adata[:, order].copy()
    imp, s = model.impute(shuffled, mask_layer="mask", **QUICK)
    # the same draws, in the user's gene order
    np.testing.assert_array_equal(imp, imp_ref[:, order])
    np.testing.assert_array_equal(s, s_ref[:, :, order])
    np.testing.assert_array_equal(shuffled.layers["countsdiff_imputed"], imp)


def test_impute_ignores_extra_genes_and_keeps_their_counts(trained):
    adata, model = trained
    extra = ad.AnnData(sp.random(adata.n_obs, 3, density=0.5, format="csr", random_state=0) * 5)
    extra.X.data = np.rint(extra.X.data)
    wide = ad.concat([adata, ad.AnnData(extra.X, obs=adata.obs[[]], var={"x": [0, 0, 0]})], axis=1, merge="first")
    wide.var_names = [*adata.var_names, "e1", "e2", "e3"]
    wide.obs = adata.obs.copy()
    wide.obsm["cond"] = adata.obsm["cond"]
    wide.layers["mask"] = np.hstack([adata.layers["mask"], np.ones((adata.n_obs, 3), bool)])
    imp, s = model.impute(wide, mask_layer="mask", **QUICK)
    assert imp.shape == wide.shape and s.shape == (adata.n_obs, 2, wide.n_vars)
    np.testing.assert_array_equal(imp[:, -3:], wide.X[:, -3:].toarray())  # unknown genes keep their counts
    ref, _ = model.impute(adata.copy(), mask_layer="mask", **QUICK)
    np.testing.assert_array_equal(imp[:, :-3], ref)


def test_impute_refuses_missing_genes_and_duplicates(trained):
    adata, model = trained
    renamed = adata.copy()
    renamed.var_names = [f"x{i}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match=r"20 of the model's 20 genes are missing from adata \(e.g. \['g0'"):
        model.impute(renamed, mask_layer="mask", **QUICK)
    dup = adata.copy()
    dup.var_names = ["g1", *adata.var_names[1:]]
    with pytest.raises(ValueError, match=r"duplicated gene names.*var_names_make_unique"):
        model.impute(dup, mask_layer="mask", **QUICK)


def test_load_refuses_reordered_training_data(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "m", overwrite=True)
    with pytest.raises(ValueError, match="another order"):
        cds.CountsDiffModel.load(str(tmp_path / "m"), adata=adata[:, adata.var_names[::-1]].copy())
    with pytest.raises(FileNotFoundError, match="No saved model"):
        cds.CountsDiffModel.load(str(tmp_path / "nonexistent"))


def test_setup_refuses_duplicated_gene_names():
    adata = make_counts(n_obs=30, n_vars=6)
    adata.var_names = ["a", "b", "a", "c", "d", "e"]
    with pytest.raises(ValueError, match="1 duplicated gene names"):
        cds.CountsDiffModel.setup_anndata(adata)


# 2. counts are checked wherever they are read -----------------------------------------------------------------------
@pytest.mark.parametrize("change", ["half", "negative", "nan"])
def test_impute_refuses_non_counts(trained, change):
    adata, model = trained
    bad = adata.copy()
    x = bad.X.toarray()
    if change == "half":
        x = x * 0.5 + 0.25
    elif change == "negative":
        x[0, 0] = -3
    else:
        x[0, 0] = np.nan
    bad.X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match="counts"):
        model.impute(bad, mask_layer="mask", **QUICK)


def test_train_refuses_counts_normalised_after_setup():
    adata = make_counts(n_obs=40, n_vars=8)
    cds.CountsDiffModel.setup_anndata(adata)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    adata.X = adata.X / 2.5  # normalised in place after setup
    with pytest.raises(ValueError, match="non-integer"):
        model.train(max_steps=1, **FAST)


# 3. non-finite conditions ---------------------------------------------------------------------------------------------
def test_nan_conditions_are_refused(trained):
    adata, model = trained
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.sample(labels="type_0", n_samples=2, conditions=np.full((2, 2), np.nan), n_steps=2, progress=False)
    bad = adata.copy()
    bad.obsm["cond"][0, 1] = np.inf
    with pytest.raises(ValueError, match=r"obsm\['cond'\] must hold finite numbers"):
        model.impute(bad, mask_layer="mask", **QUICK)


# 4. a validity layer that trusts nothing ------------------------------------------------------------------------------
def test_all_false_validity_layer_is_refused():
    adata = make_counts(n_obs=30, n_vars=6)
    adata.layers["v"] = np.zeros(adata.shape, bool)
    with pytest.raises(ValueError, match="no entry as trusted"):
        cds.CountsDiffModel.setup_anndata(adata, valid_layer="v")
    adata.layers["v"] = sp.csr_matrix(adata.shape, dtype=bool)
    with pytest.raises(ValueError, match="no entry as trusted"):
        cds.CountsDiffModel.setup_anndata(adata, valid_layer="v")


# 5. and 8. numbers that used to be truncated, replaced or divided by ----------------------------------------------
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"train_size": 0.0}, ValueError, "train_size"),
    ({"train_size": 1.5}, ValueError, "train_size"),
    ({"max_steps": 0}, ValueError, "max_steps"),
    ({"max_epochs": 0}, ValueError, "max_epochs"),
    ({"max_steps": 2.5}, ValueError, "max_steps"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"validation_size": 0.5, "train_size": 0.9}, ValueError, "at most 1"),
])
def test_train_argument_errors(trained, kwargs, error, match):
    _, model = trained
    args = {"max_steps": 1, **FAST, **kwargs}
    with pytest.raises(error, match=match):
        model.train(**args)


@pytest.mark.parametrize(("value", "error"),
                         [(2.7, ValueError), (True, TypeError), (0, ValueError), ("3", TypeError)])
def test_n_samples_is_never_truncated(trained, value, error):
    adata, model = trained
    with pytest.raises(error, match="n_samples"):
        model.impute(adata.copy(), mask_layer="mask", n_samples=value, n_steps=2, progress=False)
    with pytest.raises(error, match="n_cells"):
        model.sample(n_cells=value, sampler=cds.Sampler(n_steps=2, progress=False))


def test_batch_size_zero_is_refused_everywhere(trained):
    adata, model = trained
    with pytest.raises(ValueError, match="batch_size"):
        model.sample(labels="type_0", n_samples=2, n_steps=2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        model.impute(adata.copy(), mask_layer="mask", n_samples=1, n_steps=2, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        model.interpolate(adata, "type_0", "type_1", n_steps=2, batch_size=0, progress=False)


# 6. MuData: whole round trip ------------------------------------------------------------------------------------------
def test_mudata_setup_train_save_load_impute_sample(tmp_path):
    rna = make_counts(n_obs=60, n_vars=10)
    rna.layers["mask"] = np.random.default_rng(0).random(rna.shape) < 0.2
    mdata = md.MuData({"rna": rna})
    cds.CountsDiffModel.setup_mudata(mdata, labels_key="cell_type", modalities={"rna_layer": "rna"})
    model = cds.CountsDiffModel(mdata, backbone_kwargs=TINY)
    model.train(max_steps=2, **FAST)
    model.save(tmp_path / "mu", overwrite=True)  # failed: local function pickled into the registry
    loaded = cds.CountsDiffModel.load(str(tmp_path / "mu"), adata=mdata, accelerator="cpu")
    imp, _ = loaded.impute(mdata, mask_layer="mask", **QUICK)
    assert imp.shape == rna.shape and "countsdiff_imputed" in mdata.mod["rna"].layers
    x = rna.X.toarray()
    np.testing.assert_array_equal(imp[~rna.layers["mask"]], x[~rna.layers["mask"]])
    alone = rna.copy()  # the AnnData of the RNA modality alone
    imp2, _ = loaded.impute(alone, mask_layer="mask", **QUICK)
    np.testing.assert_array_equal(imp2, imp)
    gen = loaded.sample(labels="type_1", n_samples=3, n_steps=2, progress=False)
    assert gen.shape == (3, 10)


def test_setup_records_only_its_arguments():
    adata = make_counts(n_obs=30, n_vars=6)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    assert "key" not in model.registry_["setup_args"]  # the loop variable used to leak into the registry


# 10. messages that name the cause ------------------------------------------------------------------------------------
def test_nan_label_message_names_the_missing_values():
    adata = make_counts(n_obs=30, n_vars=6)
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(ValueError, match=r"1 missing values \(NaN\)"):
        cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")


def test_a_single_covariate_name_is_a_list_of_one():
    adata = make_counts(n_obs=30, n_vars=6)
    cds.CountsDiffModel.setup_anndata(adata, categorical_covariate_keys="batch")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    assert model.condition_space.covariate_categories == {"batch": ["b0", "b1"]}


def test_unseen_label_at_impute_names_it(trained):
    adata, model = trained
    other = adata.copy()
    other.obs["cell_type"] = other.obs["cell_type"].cat.add_categories(["new_type"])
    other.obs.iloc[0, other.obs.columns.get_loc("cell_type")] = "new_type"
    with pytest.raises(ValueError, match=r"not trained on: \['new_type'\]"):
        model.impute(other, mask_layer="mask", **QUICK)


def test_users_data_is_never_modified(trained):
    adata, model = trained
    shuffled = adata[:, adata.var_names[::-1]].copy()
    before = {k: v.copy() for k, v in shuffled.layers.items()}
    x_before = shuffled.X.copy()
    model.impute(shuffled, mask_layer="mask", **QUICK)
    assert (shuffled.X != x_before).nnz == 0
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(shuffled.layers[k].toarray() if sp.issparse(v) else
                                                 shuffled.layers[k]), np.asarray(v.toarray() if sp.issparse(v) else v))


def test_setup_on_a_view_names_it():
    adata = make_counts(n_obs=30, n_vars=6)
    with pytest.raises(ValueError, match=r"adata is a view.*copy"):
        cds.CountsDiffModel.setup_anndata(adata[:10])
