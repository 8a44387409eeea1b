"""The depth condition end to end: ``pp.library_condition`` at setup, ``sample(conditions="train")`` drawing each
generated cell's vector condition from training cells with its label and covariates."""

from __future__ import annotations

import numpy as np
import pytest

import countsdiff_sc as cds
from tests.conftest import make_counts

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "warmup_steps": 5}


@pytest.fixture(scope="module")
def depth_model():
    adata = make_counts(n_obs=120, n_vars=12, seed=6)
    cds.pp.library_condition(adata)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      condition_obsm_key="log_library")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_steps=10, **FAST)
    return adata, model


def test_train_conditions_come_from_cells_with_the_same_label_and_covariates(depth_model):
    adata, model = depth_model
    labels = ["type_0"] * 30 + ["type_2"] * 20
    gen = model.sample(labels=labels, covariates={"batch": "b1"}, conditions="train", n_steps=4, seed=0,
                       progress=False)
    drawn = gen.obsm["log_library"][:, 0]
    assert gen.uns["countsdiff"]["sample"]["conditions"] == "train"
    for lab in ("type_0", "type_2"):
        cells = ((adata.obs["cell_type"] == lab) & (adata.obs["batch"] == "b1")).to_numpy()
        pool = adata.obsm["log_library"][cells, 0]
        mine = drawn[(gen.obs["cell_type"] == lab).to_numpy()]
        assert np.isin(mine, pool).all() and len(np.unique(mine)) > 1
    again = model.sample(labels=labels, covariates={"batch": "b1"}, conditions="train", n_steps=4, seed=0,
                         progress=False)
    np.testing.assert_array_equal(again.obsm["log_library"], gen.obsm["log_library"])
    np.testing.assert_array_equal(again.X.toarray(), gen.X.toarray())
    # covariates not given are drawn from their co-occurrence first, then the depth from matching cells
    free = model.sample(labels=["type_1"] * 25, conditions="train", n_steps=4, seed=1, progress=False)
    for b in ("b0", "b1"):
        cells = ((adata.obs["cell_type"] == "type_1") & (adata.obs["batch"] == b)).to_numpy()
        pool = adata.obsm["log_library"][cells, 0]
        rows = (free.obs["batch"] == b).to_numpy()
        assert np.isin(free.obsm["log_library"][rows, 0], pool).all()
    given = model.sample(labels=["type_1"] * 3, conditions=np.zeros((3, 1), np.float32), n_steps=2, seed=0,
                         progress=False)
    assert given.uns["countsdiff"]["sample"]["conditions"] == "given" and (given.obsm["log_library"] == 0).all()


def test_train_conditions_errors(depth_model, tmp_path):
    _, model = depth_model
    with pytest.raises(ValueError, match="an array, 'train'"):
        model.sample(labels=["type_0"] * 2, conditions="random", n_steps=2, progress=False)
    model.save(tmp_path / "m", overwrite=True)
    bare = cds.CountsDiffModel.load(tmp_path / "m", adata=None)
    with pytest.raises(ValueError, match="training AnnData"):
        bare.sample(labels=["type_0"] * 2, conditions="train", n_steps=2, progress=False)
    plain = make_counts(n_obs=40, n_vars=6, seed=7)
    cds.CountsDiffModel.setup_anndata(plain, labels_key="cell_type")
    no_vec = cds.CountsDiffModel(plain, backbone_kwargs=TINY)
    no_vec.train(max_steps=2, **FAST)
    with pytest.raises(ValueError, match="condition_obsm_key"):
        no_vec.sample(labels=["type_0"] * 2, conditions="train", n_steps=2, progress=False)
