"""The condition space is built from the registry alone (no training) and maps user arguments to codes."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import countsdiff_sc as cds
from countsdiff_sc.model._conditions import ConditionSpace
from countsdiff_sc.model._docs import PARAMS, fill_doc
from tests.conftest import make_counts


@pytest.fixture
def space_and_manager():
    adata = make_counts(n_obs=60, n_vars=8)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      condition_obsm_key="cond")
    manager = cds.CountsDiffModel._get_most_recent_anndata_manager(adata)
    registry = {"setup_args": manager._get_setup_method_args()["setup_args"],
                "field_registries": manager.registry["field_registries"]}
    return adata, ConditionSpace.from_registry(registry), manager


def test_space_from_registry_without_a_model(space_and_manager):
    adata, space, manager = space_and_manager
    assert space.labels_key == "cell_type" and space.use_labels
    assert space.label_categories == sorted(adata.obs["cell_type"].cat.categories)
    assert space.covariate_categories == {"batch": ["b0", "b1"]}
    assert space.n_continuous == 2 and space.n_cats_per_cov == [3, 2]
    assert space.names() == ["cell_type", "batch", "obsm['cond']"]
    assert space.slot_names()[-1] == ("cond", "obsm['cond']")
    codes = space.codes(manager)
    assert codes.shape == (60, 2)
    labels = np.asarray(space.label_categories)[codes[:, 0]]
    assert list(labels) == list(adata.obs["cell_type"].astype(str))  # codes follow the names, not positions
    table = space.table(manager)
    assert table[:, -1].sum() == 60 and len(np.unique(table[:, :-1], axis=0)) == len(table)


def test_resolve_fills_unspecified_slots_from_the_table(space_and_manager):
    _, space, manager = space_and_manager
    rng = np.random.default_rng(0)
    codes, obs = space.resolve(5, "type_1", None, rng, space.table(manager))
    assert (obs["cell_type"] == "type_1").all() and set(obs["batch"]) <= {"b0", "b1"}
    assert (codes[:, 0] == space.label_categories.index("type_1")).all()
    codes, obs = space.resolve(3, None, None, rng, None)
    assert codes is None and len(obs) == 3
    with pytest.raises(ValueError, match="Known values"):
        space.resolve(2, ["type_0", "nope"], None, rng, None)
    with pytest.raises(KeyError, match="Unknown covariates"):
        space.resolve(2, None, {"donor": "d"}, rng, None)
    with pytest.raises(ValueError, match="loaded without its condition table"):
        space.resolve(2, "type_0", None, rng, None)


def test_guidance_strengths_and_vector_condition(space_and_manager):
    _, space, _ = space_and_manager
    assert space.guidance_strengths(0.5) == 0.5
    assert space.guidance_strengths({"batch": 0.0, "obsm['cond']": 2.0}) == [1.0, 0.0, 2.0]
    assert space.guidance_strengths({"cond": 3.0}) == [1.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="unknown condition"):
        space.guidance_strengths({"donor": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        space.guidance_strengths(-1.0)
    assert space.vector_condition(np.zeros((4, 2)), 4).shape == (4, 2)
    with pytest.raises(ValueError, match="shape"):
        space.vector_condition(np.zeros((4, 3)), 4)
    assert ConditionSpace().guidance_strengths(1.0) == 1.0
    with pytest.raises(ValueError, match="conditional model"):
        ConditionSpace().guidance_strengths({"x": 1.0})
    with pytest.raises(ValueError, match="without condition_obsm_key"):
        ConditionSpace().vector_condition(np.zeros((1, 1)), 1)


def test_shared_parameter_docs_are_filled_everywhere():
    verbs = [cds.CountsDiffModel.sample, cds.CountsDiffModel.interpolate, cds.CountsDiffModel.impute,
             cds.CountsDiffModel.transfer, cds.CountsDiffModel.get_normalized_expression, cds.CountsDiffModel.train,
             cds.DICEModel.train]
    for verb in verbs:
        assert "%(" not in verb.__doc__, verb.__qualname__
    # the chain settings are documented once, on the Sampler; each verb points there
    for verb in verbs[:5]:
        assert "Sampler" in verb.__doc__, verb.__qualname__
    assert "Show a progress bar" in cds.Sampler.__doc__
    assert "scaled to the number of cells" in cds.CountsDiffModel.train.__doc__
    assert "x_t ~ Binomial" in cds.CountsDiffModel.interpolate.__doc__


def test_fill_doc_rejects_unknown_names():
    def f():
        """Doc.

        Parameters
        ----------
        %(no_such_entry)s
        """

    with pytest.raises(KeyError):
        fill_doc(f)
    assert set(PARAMS) >= {"precision", "progress", "seed", "attrition", "train"}


def test_train_is_one_method_with_lean_parameters():
    from countsdiff_sc.model._training import TrainingMixin

    assert cds.CountsDiffModel.train is TrainingMixin.train  # a method: "go to definition" finds it
    params = inspect.signature(cds.CountsDiffModel.train).parameters
    positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == ["self", "max_epochs", "max_steps"]
    assert len(params) - 1 <= 14


def test_guidance_dict_on_a_joint_model_says_what_to_pass():
    joint = ConditionSpace("cell_type", ["B", "T"], {"batch": ["b0", "b1"]}, independent=False)
    with pytest.raises(ValueError) as err:
        joint.guidance_strengths({"cell_type": 0.5})
    msg = str(err.value)
    assert "{'cell_type': 0.5, 'batch': 1}" in msg  # the strengths the dict meant
    assert "left out of a guidance dict keep strength 1.0" in msg
    assert "pass guidance=0.5" in msg and "uncond_mode='independent'" in msg
    with pytest.raises(ValueError, match="pass one strength for all conditions"):
        joint.guidance_strengths({"cell_type": 2.0, "batch": 0.0})
    # what the message offers is accepted: equal strengths, named or as one float
    assert joint.guidance_strengths({"cell_type": 0.5, "batch": 0.5}) == [0.5, 0.5]
    assert joint.guidance_strengths(0.5) == 0.5
    assert joint.guidance_strengths({"batch": 1.0}) == [1.0, 1.0]
    # a vector condition left out of the dict may not be given at all: it is checked only when named
    vec = ConditionSpace("cell_type", ["B", "T"], obsm_key="cond", n_continuous=2, independent=False)
    assert vec.guidance_strengths({"cell_type": 0.5}) == [0.5, 1.0]
    with pytest.raises(ValueError, match="'cond': 2"):
        vec.guidance_strengths({"cell_type": 0.5, "cond": 2.0})
    # a model with independent dropout takes the documented default of 1.0 for the others
    indep = ConditionSpace("cell_type", ["B", "T"], {"batch": ["b0", "b1"]})
    assert indep.guidance_strengths({"cell_type": 0.5}) == [0.5, 1.0]
