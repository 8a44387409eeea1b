"""Property-based tests (hypothesis) of the public verbs on random, unusual and bad inputs (issue 20, item 5).

Every call ends in one of two ways: a ``ValueError`` / ``KeyError`` / ``TypeError`` (``FileNotFoundError``) whose
message names the culprit (the argument, layer, column or obsm key), or a valid result: integer non-negative draws,
observed entries untouched, and nothing the user owns changed (``X``, every layer, obs / var columns, obsm entries,
uns entries are bit-identical; scvi-tools may add ``_scvi_*`` obs columns, obsm and uns keys). Each test builds an
oracle of the defects it planted: an input with a defect must be refused with a matching message, one without must
succeed. Half of the examples plant no defect at all ("clean"), so valid results are checked as often as refusals.

The examples are derandomized (the same ones on every run, in CI too); their numbers are set by ``EXAMPLES`` below.
The minimal inputs of the failures these tests found are kept as plain tests at the end of the file.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import countsdiff_sc as cds
from countsdiff_sc._utils import is_backed_matrix
from countsdiff_sc.cli import main as cli_main
from tests.conftest import make_counts

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Variable names are not unique")]  # planted duplicates

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False}
N_OBS, N_VARS = 48, 10

#: examples per property test (derandomized: the same examples on every run); COUNTSDIFF_PROPERTY_SCALE=k runs k times
#: as many, freshly drawn ones (a longer local hunt for bugs)
SCALE = int(os.environ.get("COUNTSDIFF_PROPERTY_SCALE", "1"))
EXAMPLES = {
    "setup": 40,
    "train": 30,
    "impute": 60,
    "sample": 60,
    "interpolate": 40,
    "cli": 30,
    "mark_dropouts": 30,
    "mask_mcar": 30,
    "mask_mnar": 30,
    "split_cells": 30,
}


def prop_settings(name: str) -> settings:
    """Settings of one property test: its number of examples, reproducible, no deadline (tiny Lightning runs)."""
    return settings(
        max_examples=EXAMPLES[name] * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        derandomize=SCALE == 1,
        database=None,
        print_blob=False,
    )


VE, KE, TE = ValueError, KeyError, TypeError
_COUNTER = itertools.count()

# ------------------------------------------------------------------------------------------------ helpers


def freeze(m) -> tuple | None:
    """Bit-exact fingerprint of a matrix (dense, sparse or a view of one)."""
    if m is None:
        return None
    if sp.issparse(m):
        return ("sparse", m.format, m.dtype.str, m.shape, m.data.tobytes(), m.indices.tobytes(), m.indptr.tobytes())
    if isinstance(m, pd.DataFrame):
        return ("frame", pickle.dumps(m))
    a = np.asarray(m)
    return ("dense", a.dtype.str, a.shape, a.tobytes())


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(adata: ad.AnnData) -> dict:
    """What the user owns in ``adata``, to compare after a call."""
    backed = adata.isbacked
    return {
        "backed": backed,
        "file": file_hash(adata.filename) if backed else None,
        "X": None if backed else freeze(adata.X),
        "layers": {k: freeze(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obs_names": list(adata.obs_names),
        "var_names": list(adata.var_names),
        "obsm": {k: freeze(v) for k, v in adata.obsm.items()},
        "uns": {k: pickle.dumps(v) for k, v in adata.uns.items()},
    }


def assert_untouched(before: dict, adata: ad.AnnData, layers=(), obs=(), obsm=(), uns=()) -> None:
    """Everything in ``before`` unchanged; new keys only those allowed (and scvi-tools' ``_scvi_*``)."""
    assert list(adata.obs_names) == before["obs_names"]
    assert list(adata.var_names) == before["var_names"]
    if before["backed"]:
        assert file_hash(adata.filename) == before["file"], "the backed file was modified"
    else:
        assert freeze(adata.X) == before["X"], "adata.X was modified"
    for k, v in before["layers"].items():
        assert k in adata.layers and freeze(adata.layers[k]) == v, f"user layer {k!r} was modified"
    assert set(adata.layers) - set(before["layers"]) <= set(layers), f"unexpected new layers {set(adata.layers)}"
    for k, v in before["obsm"].items():
        assert k in adata.obsm and freeze(adata.obsm[k]) == v, f"user obsm {k!r} was modified"
    new_obsm = {k for k in adata.obsm if k not in before["obsm"] and not k.startswith("_scvi_")}
    assert new_obsm <= set(obsm), f"unexpected new obsm {new_obsm}"
    for c in before["obs"].columns:
        assert c in adata.obs.columns, f"obs column {c!r} was removed"
        pd.testing.assert_series_equal(adata.obs[c], before["obs"][c], check_exact=True)
    new_obs = {c for c in adata.obs.columns if c not in before["obs"].columns and not c.startswith("_scvi_")}
    assert new_obs <= set(obs), f"unexpected new obs columns {new_obs}"
    pd.testing.assert_frame_equal(adata.var[before["var"].columns], before["var"], check_exact=True)
    for k, v in before["uns"].items():
        if k != "countsdiff" and not k.startswith("_scvi_"):
            assert k in adata.uns and pickle.dumps(adata.uns[k]) == v, f"user uns {k!r} was modified"
    new_uns = {k for k in adata.uns if k not in before["uns"] and not k.startswith("_scvi_")}
    assert new_uns <= set(uns), f"unexpected new uns keys {new_uns}"


def outcome(call, expected: list[tuple[type | tuple[type, ...], str]], maybe: tuple = ()):
    """Run ``call``: an error must match one of ``expected`` (type, message substring); no error if none is.
    ``maybe`` lists errors that may or may not occur (a bad value in cells a verb may not read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = call()
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            allowed = [*expected, *maybe]
            assert allowed, f"unexpected {type(err).__name__}: {msg}"
            assert any(isinstance(err, t) and s in msg for t, s in allowed), (
                f"{type(err).__name__}({msg!r}) matches none of {allowed}")
            _event("refused")
            return None, err
    assert not expected, f"no error, but expected one of {expected}"
    _event("valid result")
    return result, None


def _event(name: str) -> None:
    """Count outcomes (shown by ``pytest --hypothesis-show-statistics``); a no-op outside hypothesis."""
    if currently_in_test_context():
        event(name)


DEFECT_WORDS = {"fraction": "non-integer", "negative": "negative", "nan": "NaN or infinite", "inf": "NaN or infinite"}
DTYPES_FOR = {
    None: ["int32", "int64", "uint16", "float32", "float64", "bool"],
    "fraction": ["float32", "float64"],
    "negative": ["int32", "int64", "float32", "float64"],
    "nan": ["float32", "float64"],
    "inf": ["float32", "float64"],
}


@st.composite
def matrix_spec(draw, defects=True):
    """How to store a count matrix: dtype, format and an optional defect (non-integer, negative, NaN, inf value)."""
    defect = draw(st.sampled_from([None] * 5 + ["fraction", "negative", "nan", "inf"])) if defects else None
    return {"defect": defect, "dtype": draw(st.sampled_from(DTYPES_FOR[defect])),
            "fmt": draw(st.sampled_from(["dense", "csr", "csc"])), "where": draw(st.integers(0, 10**6))}


@st.composite
def cases(draw, choices: dict, matrix: str | None = "defects", **strategies) -> dict:
    """A test case: for half of the examples ("clean") every choice is drawn from its good values, for the other half
    from its good and bad values; ``choices`` maps a name to ``(good, bad)`` lists (or strategies). ``matrix`` adds
    the storage of a count matrix under "x" (with defects only in unclean examples when "defects")."""
    clean = draw(st.booleans())
    case = {"clean": clean}
    if matrix is not None:
        case["x"] = draw(matrix_spec(defects=matrix == "defects" and not clean))
    for name, strategy in strategies.items():
        case[name] = draw(strategy)
    for name, (good, bad) in choices.items():
        good = good if isinstance(good, st.SearchStrategy) else st.sampled_from(good)
        if clean or (isinstance(bad, list) and not bad):
            case[name] = draw(good)
        else:
            case[name] = draw(st.one_of(good, bad if isinstance(bad, st.SearchStrategy) else st.sampled_from(bad)))
    return case


def build_matrix(x: np.ndarray, spec: dict, cols: np.ndarray | None = None):
    """``x`` (float64 counts) with the defect planted in one entry of ``cols`` (all columns when None), stored as
    asked. Returns the matrix and the dense float64 values it holds."""
    x = np.array(x, dtype=np.float64)
    if spec["dtype"] == "bool":
        x = (x > 0).astype(np.float64)
    if spec["defect"] is not None and x.size:
        cols = np.arange(x.shape[1]) if cols is None else np.asarray(cols)
        i, j = spec["where"] % x.shape[0], cols[spec["where"] % len(cols)]
        x[i, j] = {"fraction": x[i, j] + 0.5, "negative": -2.0, "nan": np.nan, "inf": np.inf}[spec["defect"]]
    m = x.astype(spec["dtype"])
    if spec["fmt"] == "csr":
        m = sp.csr_matrix(m)
    elif spec["fmt"] == "csc":
        m = sp.csc_matrix(m)
    return m, x


def dense(m) -> np.ndarray:
    if is_backed_matrix(m):
        m = m[:]
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def write_backed(adata: ad.AnnData, folder: Path) -> ad.AnnData:
    path = folder / f"backed_{next(_COUNTER)}.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def close(adata) -> None:
    if getattr(adata, "isbacked", False):
        adata.file.close()


def base_obs(n_obs: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["type_0", "type_1", "type_2"], n_obs)),
         "batch": pd.Categorical(rng.choice(["b0", "b1"], n_obs)),
         "grp": pd.Categorical(rng.integers(0, 3, n_obs).astype(str))},
        index=[f"c{i}" for i in range(n_obs)],
    )


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


class Trained(NamedTuple):
    """The training data and the tiny model (a short repr: scvi-tools' model repr prints to stdout)."""

    adata: ad.AnnData
    model: cds.CountsDiffModel

    def __repr__(self) -> str:
        return f"Trained(tiny CountsDiffModel on {self.adata.n_obs} x {self.adata.n_vars} counts)"


@pytest.fixture(scope="module")
def trained():
    """One tiny model for all examples: labels, a covariate, a validity layer and a vector condition."""
    adata = make_counts(n_obs=N_OBS, n_vars=N_VARS, n_labels=3, seed=0)
    rng = np.random.default_rng(0)
    adata.layers["valid"] = (adata.X.toarray() > 0) | (rng.random(adata.shape) < 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                          valid_layer="valid", condition_obsm_key="cond")
        model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
        model.train(max_steps=2, **FAST)
    return Trained(adata, model)


# ------------------------------------------------------------------------------------------------ setup_anndata


@prop_settings("setup")
@given(case=cases(
    n_obs=st.integers(1, 25), n_vars=st.integers(1, 8), seed=st.integers(0, 1000),
    choices={
        "layer": ([None, None, "raw"], ["nope"]),
        "labels_key": ([None, "cell_type"], ["ct_nan", "nope"]),
        "covs": ([None, "batch", ["batch"], ("batch",)], [["batch", "nope"], ["ct_nan"], 7]),
        "valid": ([None, "v_bool", "v_int", "v_float", "v_csr"], ["v_half", "v_false", "nope"]),
        "cond": ([None, "cond"], ["cond_nan", "nope"]),
        "dup_names": ([False], [True]),
        "container": (["plain", "plain", "backed"], ["view"]),
    }))
def test_setup_anndata_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    n_obs, n_vars = case["n_obs"], case["n_vars"]
    counts = rng.negative_binomial(1, 0.4, size=(n_obs, n_vars)).astype(float)
    m, _ = build_matrix(counts, case["x"])
    other = np.log1p(counts).astype(np.float32)  # not counts: read only if the wrong matrix were used
    obs = base_obs(n_obs, rng)
    obs["ct_nan"] = obs["cell_type"].copy()
    obs.iloc[0, obs.columns.get_loc("ct_nan")] = np.nan
    in_layer = case["layer"] == "raw"
    adata = ad.AnnData(X=other if in_layer else m, obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))
    if in_layer:
        adata.layers["raw"] = m
    v = rng.random((n_obs, n_vars)) < 0.7
    adata.layers.update({"v_bool": v, "v_int": v.astype(np.int8), "v_float": v.astype(np.float32),
                         "v_csr": sp.csr_matrix(v), "v_half": np.where(v, 0.5, 0.0),
                         "v_false": np.zeros((n_obs, n_vars), bool)})
    adata.obsm["cond"] = rng.normal(size=(n_obs, 2))
    cond_nan = rng.normal(size=(n_obs, 2))
    cond_nan[-1, 0] = np.nan
    adata.obsm["cond_nan"] = cond_nan
    adata.uns["user_note"] = {"a": np.arange(3)}
    if case["dup_names"] and n_vars > 1:
        adata.var_names = ["g0", *[f"g{j}" for j in range(n_vars - 2)], "g0"]
    parent = adata
    if case["container"] == "view":
        adata = parent[rng.permutation(n_obs)]
    elif case["container"] == "backed":
        adata = parent = write_backed(parent, folder)

    expected = []
    if case["x"]["defect"] and case["layer"] != "nope":
        expected.append((VE, DEFECT_WORDS[case["x"]["defect"]]))
    if case["layer"] == "nope":
        expected.append((KE, "'nope'"))
    if case["labels_key"] == "nope":
        expected.append((KE, "'nope'"))
    if case["labels_key"] == "ct_nan" or case["covs"] == ["ct_nan"]:
        expected.append((VE, "'ct_nan'"))
    if case["covs"] == ["batch", "nope"]:
        expected.append((KE, "'nope'"))
    if case["covs"] == 7:
        expected.append((TE, "categorical_covariate_keys"))
    if case["valid"] in ("v_half", "v_false", "nope") or (case["valid"] and not v.any()):
        expected.append((KE if case["valid"] == "nope" else VE, repr(case["valid"])))
    if case["cond"] in ("cond_nan", "nope"):
        expected.append((KE if case["cond"] == "nope" else VE, repr(case["cond"])))
    if case["dup_names"] and n_vars > 1:
        expected.append((VE, "duplicated gene names"))
    if case["container"] == "view":
        expected.append((VE, "adata.copy()"))

    before = snapshot(parent)
    _, err = outcome(lambda: cds.CountsDiffModel.setup_anndata(
        adata, layer=case["layer"], labels_key=case["labels_key"], categorical_covariate_keys=case["covs"],
        valid_layer=case["valid"], condition_obsm_key=case["cond"]), expected)
    assert_untouched(before, parent)
    if err is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
        assert model.module.n_genes == n_vars
        assert list(model.var_names_) == list(adata.var_names)
        assert_untouched(before, parent)
    close(parent)


# ------------------------------------------------------------------------------------------------ train (tiny)


@prop_settings("train")
@given(case=cases(
    matrix="clean", n_obs=st.integers(1, 30), n_vars=st.integers(1, 6), seed=st.integers(0, 1000),
    choices={
        "labels": ([True, False], []),
        "valid": ([True, False], []),
        "mutate": ([None], ["normalise", "negative", "valid_false"]),
        "max_steps": ([1, 2, None], [0, 1.5, True]),
        "batch_size": ([1, 2, 4, 256], [0, 2.5]),
        "train_size": ([0.9, 0.5, 1.0, None], [0.0, 1.5]),
        "validation_size": ([None, 0.1, 0.0], [0.5, 1.0]),
        "container": (["plain", "plain", "backed"], []),
    }))
def test_train_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    n_obs, n_vars = case["n_obs"], case["n_vars"]
    m, values = build_matrix(rng.negative_binomial(1, 0.3, size=(n_obs, n_vars)), case["x"])
    adata = ad.AnnData(X=m, obs=base_obs(n_obs, rng), var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))
    adata.layers["valid"] = np.ones((n_obs, n_vars), bool)
    adata.layers["valid"][0, 0] = n_obs * n_vars == 1  # one suspected dropout (unless it is the only entry)
    if case["container"] == "backed":
        adata = write_backed(adata, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type" if case["labels"] else None,
                                          valid_layer="valid" if case["valid"] else None)
        model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    mutated = case["mutate"] if case["container"] == "plain" else None
    if mutated == "normalise" and np.any(values % 2.5 != 0):
        adata.X = (values / 2.5).astype(np.float32)
    elif mutated == "negative":
        adata.X = -(values + 1.0).astype(np.float32)
    elif mutated == "valid_false" and case["valid"]:
        adata.layers["valid"] = np.zeros((n_obs, n_vars), bool)
    else:
        mutated = None

    steps, bs, ts, vs = case["max_steps"], case["batch_size"], case["train_size"], case["validation_size"]
    kwargs = {"max_steps": steps, "batch_size": bs, "train_size": ts, "validation_size": vs, **FAST}
    if steps is None:
        kwargs["max_epochs"] = 1
    expected = []
    if steps is True or (steps is not None and (steps < 1 or steps != int(steps))):
        expected.append((TE if steps is True else VE, "max_steps"))
    if bs < 1 or bs != int(bs):
        expected.append((VE, "batch_size"))
    if ts is not None and not 0 < ts <= 1:
        expected.append((VE, "train_size"))
    if vs is not None and not 0 <= vs < 1:
        expected.append((VE, "validation_size"))
    if vs is not None and (ts if ts is not None else 0.9) + vs > 1:
        expected.append((VE, "at most 1"))
    if mutated:
        expected.append((VE, {"normalise": "non-integer", "negative": "negative", "valid_false": "'valid'"}[mutated]))
    if not expected and math.ceil((ts if ts is not None else 0.9) * n_obs) == 0:
        expected.append((VE, "train"))

    before = snapshot(adata)
    _, err = outcome(lambda: model.train(**kwargs), expected)
    assert_untouched(before, adata)
    if err is None:
        assert model.is_trained_
        assert np.isfinite(np.asarray(model.history["train_loss"], dtype=float)).all()
    close(adata)


# ------------------------------------------------------------------------------------------------ impute


@prop_settings("impute")
@given(case=cases(
    rows=st.lists(st.integers(0, N_OBS - 1), min_size=1, max_size=10, unique=True),
    seed=st.integers(0, 2**31 - 1), density=st.floats(0.05, 0.9), store=st.booleans(),
    choices={
        "genes": (["same", "same", "permuted", "extra"], ["missing", "duplicated"]),
        "mask": (["bool", "bool", "int", "float", "csr", "csc", "none", "all"], ["half", "absent"]),
        "valid": (["carried"], ["absent"]),
        "labels": (["ok"], ["unseen", "nan"]),
        "cond": (["ok"], ["nan", "absent"]),
        "container": (["copy", "copy", "view", "backed"], []),
        "key_added": (["countsdiff_imputed", "mine"], ["counts"]),
        "n_samples": ([1, 2, 2.0], [0, 1.5, True]),
    }))
def test_impute_properties(case, trained, folder):
    train_adata, model = trained
    rng = np.random.default_rng(case["seed"])
    q = train_adata[case["rows"]].copy()
    for k in [c for c in q.obs.columns if c.startswith("_scvi_")]:
        del q.obs[k]
    q.uns = {"user_note": "keep me"}
    n = q.n_obs
    genes = case["genes"]
    if genes == "extra":
        extra = ad.AnnData(X=sp.csr_matrix(rng.integers(0, 4, (n, 2)).astype(np.float32)), obs=q.obs[[]],
                           var=pd.DataFrame(index=["e0", "e1"]))
        extra.layers["valid"] = np.ones((n, 2), bool)
        extra.layers["counts"] = extra.X.copy()
        q = ad.concat([q, extra], axis=1, merge="first", uns_merge="first")
        q.obs = train_adata.obs.iloc[case["rows"]][["cell_type", "batch"]].copy()
        q.obsm["cond"] = train_adata.obsm["cond"][case["rows"]].copy()
        q.uns = {"user_note": "keep me"}
    if genes in ("permuted", "extra", "duplicated"):
        q = q[:, rng.permutation(q.n_vars)].copy()
    elif genes == "missing":
        q = q[:, np.sort(rng.choice(N_VARS, N_VARS - 1, replace=False))].copy()
    if genes == "duplicated":
        names = list(q.var_names)
        names[-1] = names[0]
        q.var_names = names
    model_cols = np.flatnonzero(np.isin(q.var_names, model.var_names_))
    x, values = build_matrix(dense(q.X), case["x"], cols=model_cols)
    q.X = x
    mask = rng.random(q.shape) < case["density"]
    kind = case["mask"]
    if kind == "none":
        mask[:] = False
    elif kind == "all":
        mask[:] = True
    stored = {"bool": mask, "int": mask.astype(np.int8), "float": mask.astype(np.float32), "none": mask,
              "all": mask, "csr": sp.csr_matrix(mask), "csc": sp.csc_matrix(mask), "half": np.where(mask, 0.5, 0.0)}
    if kind != "absent":
        q.layers["mask"] = stored[kind]
    if case["valid"] == "absent":
        del q.layers["valid"]
    if case["labels"] == "unseen":
        q.obs["cell_type"] = q.obs["cell_type"].cat.add_categories(["type_new"])
        q.obs.iloc[0, q.obs.columns.get_loc("cell_type")] = "type_new"
    elif case["labels"] == "nan":
        q.obs.iloc[0, q.obs.columns.get_loc("cell_type")] = np.nan
    if case["cond"] == "nan":
        q.obsm["cond"][0, 1] = np.nan
    elif case["cond"] == "absent":
        del q.obsm["cond"]

    parent, target, order = q, q, np.arange(n)
    if case["container"] == "view":
        order = rng.permutation(n)
        target = parent[order]
    elif case["container"] == "backed":
        parent = target = write_backed(q, folder)

    expected = []
    if genes == "missing":
        expected.append((VE, "missing from adata"))
    if genes == "duplicated":
        expected += [(VE, "duplicated gene names"), (VE, "missing from adata")]
    if case["x"]["defect"]:
        expected.append((VE, DEFECT_WORDS[case["x"]["defect"]]))
    if kind == "absent":
        expected.append((KE, "'mask'"))
    if kind == "half" and mask.any():
        expected.append((VE, "'mask'"))
    if case["labels"] != "ok":
        expected.append((VE, "'cell_type'"))
    if case["cond"] != "ok":
        expected.append((KE if case["cond"] == "absent" else VE, "'cond'"))
    if case["key_added"] == "counts":
        expected.append((VE, "'counts'"))
    ns = case["n_samples"]
    if ns is True:
        expected.append((TE, "n_samples"))
    elif ns < 1 or ns != int(ns):
        expected.append((VE, "n_samples"))

    before = snapshot(parent)
    key = case["key_added"]
    call_kwargs = {"mask_layer": "mask", "n_samples": ns, "n_steps": 2, "progress": False, "seed": 7,
                   "key_added": key, "store_samples": case["store"]}
    result, err = outcome(lambda: model.impute(target, **call_kwargs), expected)
    if target is not parent:
        assert_untouched(before, parent)  # a view: the parent is never touched
    elif err is None:
        assert_untouched(before, parent, layers={key, f"{key}_std"}, obsm={"countsdiff_samples"}, uns={"countsdiff"})
    else:
        assert_untouched(before, parent)
    if err is not None:
        close(parent)
        return

    imp, samples = result
    x_user = values[order]
    m_user = dense(stored[kind])[order].astype(bool)
    # a query without the model's validity layer: every entry is trusted
    valid_user = dense(q.layers["valid"])[order].astype(bool) if "valid" in q.layers else np.ones(q.shape, bool)
    eff = m_user & valid_user
    eff[:, np.setdiff1d(np.arange(q.n_vars), model_cols)] = False  # genes the model does not know
    assert imp.dtype == np.float32 and imp.shape == (n, q.n_vars)
    np.testing.assert_array_equal(target.layers[key], imp)
    np.testing.assert_array_equal(imp[~eff], x_user[~eff].astype(np.float32))  # observed entries untouched
    assert np.isfinite(imp).all() and (imp >= 0).all()
    assert key in target.uns["countsdiff"]
    spread = target.layers[f"{key}_std"]  # the spread of the draws: on the filled entries only
    assert sp.issparse(spread) and spread.shape == imp.shape and spread.dtype == np.float32
    spread = spread.toarray()
    assert (spread[~eff] == 0).all() and np.isfinite(spread).all() and (spread >= 0).all()
    if case["store"]:
        assert samples.dtype == np.int32 and samples.shape == (n, int(ns), q.n_vars)
        assert (samples >= 0).all()
        for k in range(int(ns)):
            np.testing.assert_array_equal(samples[:, k][~eff], x_user[~eff])
        np.testing.assert_allclose(imp[eff], samples.mean(axis=1)[eff], rtol=1e-6)
        np.testing.assert_allclose(spread[eff], samples.std(axis=1)[eff], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(target.obsm["countsdiff_samples"], samples)
    else:
        assert samples is None and "countsdiff_samples" not in target.obsm

    # genes are matched by name: the same draws as on the model's genes in the model's order
    pos = pd.Index(q.var_names).get_indexer(model.var_names_)
    ref = ad.AnnData(X=x_user[:, pos].astype(np.float32), obs=q.obs.iloc[order][["cell_type", "batch"]].copy(),
                     var=pd.DataFrame(index=model.var_names_))
    ref.obsm["cond"] = np.asarray(q.obsm["cond"])[order]
    ref.layers["mask"] = m_user[:, pos]
    ref.layers["valid"] = valid_user[:, pos]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp_ref, _ = model.impute(ref, **call_kwargs)
    np.testing.assert_array_equal(imp[:, pos], imp_ref)
    close(parent)


# ------------------------------------------------------------------------------------------------ sample

LABELS = ["type_0", "type_1", "type_2"]


@prop_settings("sample")
@given(case=cases(
    matrix=None, n_list=st.integers(1, 4), seed=st.integers(0, 1000),
    choices={
        "n_samples": ([None, 1, 3, 2.0], [0, -1, 2.5, True, "3"]),  # the number of cells (n_cells)
        "labels": ([None, "type_1", "list", "array"], ["nope", "list_bad", "list_nan", "empty"]),
        "covariates": ([None, {"batch": "b0"}, {"batch": "list"}], [{"batch": "b9"}, {"nope": "x"}]),
        "conditions": ([None, "ok"], ["shape", "nan"]),
        "guidance": ([1.0, 0.0, 2.5, {"cell_type": 1.5, "batch": 1.5, "cond": 1.5}],
                     [-1.0, float("nan"), {"nope": 1.0}, {"cell_type": -1.0}, {"cell_type": 2.0}]),
        "attrition": ([0.0, 0.02, 0.5], [-0.1, 1.5, float("nan")]),
        "attrition_kind": (["rescale", "cap", "constant", "none"], ["bogus"]),
        "batch_size": ([1, 2, 1024], [0, 1.5]),
        "n_steps": ([1, 2], [0, 2.5]),
    }))
def test_sample_properties(case, trained):
    train_adata, model = trained
    before = snapshot(train_adata)
    k = case["n_list"]
    rng = np.random.default_rng(case["seed"])
    labels = {None: None, "type_1": "type_1", "nope": "nope", "empty": [],
              "list": list(rng.choice(LABELS, k)), "list_bad": [*rng.choice(LABELS, k - 1), "nope"],
              "list_nan": [np.nan] * k, "array": rng.choice(LABELS, k)}[case["labels"]]
    covariates = None
    if case["covariates"] is not None:
        covariates = {key: (list(rng.choice(["b0", "b1"], k)) if val == "list" else val)
                      for key, val in case["covariates"].items()}
    ns = case["n_samples"]
    sized = [v for v in [labels, *(covariates or {}).values()] if v is not None and not isinstance(v, str)]

    expected = []
    g = case["guidance"]
    if isinstance(g, dict):
        strengths = {**dict.fromkeys(["cell_type", "batch", "cond"], 1.0), **g}
        # unknown names, negative strengths; unequal strengths need a model trained with uncond_mode='independent'
        if "nope" in g or any(val < 0 for val in g.values()) or len(set(strengths.values())) > 1:
            expected.append((VE, "guidance"))
    elif not g >= 0:
        expected.append((VE, "guidance"))
    kind, att = case["attrition_kind"], case["attrition"]
    if kind == "bogus":
        expected.append((VE, "attrition_kind"))
    elif not att >= 0 or (kind == "rescale" and att > 1):
        expected.append((VE, "attrition"))
    steps = case["n_steps"]
    if steps < 1 or steps != int(steps):
        expected.append((VE, "n_steps"))
    n = None
    if ns is None:
        if not sized:
            expected.append((VE, "n_cells"))
        else:
            n = len(sized[0]) or None
            if n is None:
                expected.append((VE, "n_cells"))
    elif ns is True or isinstance(ns, str):
        expected.append((TE, "n_cells"))
    elif ns < 1 or ns != int(ns):
        expected.append((VE, "n_cells"))
    else:
        n = int(ns)
    bs = case["batch_size"]
    if bs < 1 or bs != int(bs):
        expected.append((VE, "batch_size"))
    if covariates and "nope" in covariates:
        expected.append((KE, "nope"))
    if n is not None:
        if not isinstance(labels, str) and labels is not None and len(labels) != n:
            expected.append((VE, "cell_type"))
        if (isinstance(labels, str) and labels == "nope") or case["labels"] in ("list_bad", "list_nan"):
            expected.append((VE, "cell_type"))
        batch = (covariates or {}).get("batch")
        if batch is not None and not isinstance(batch, str) and len(batch) != n:
            expected.append((VE, "batch"))
        if batch == "b9":
            expected.append((VE, "batch"))
    conditions = None
    if case["conditions"] is not None and n is not None:
        conditions = rng.normal(size=(n, 2) if case["conditions"] != "shape" else (n, 3))
        if case["conditions"] == "nan":
            conditions[0, 0] = np.nan
            expected.append((VE, "conditions"))
        if case["conditions"] == "shape":
            expected.append((VE, "conditions"))
    no_codes = labels is None and not covariates
    if conditions is not None and no_codes:
        expected.append((VE, "labels"))
    if isinstance(g, dict) and no_codes and conditions is None:
        expected.append((VE, "guidance"))

    gen, err = outcome(lambda: model.sample(
        n_cells=ns, labels=labels, covariates=covariates, conditions=conditions, n_steps=steps, guidance=g,
        attrition=att, attrition_kind=kind, seed=case["seed"], batch_size=bs, progress=False), expected)
    assert_untouched(before, train_adata)
    if err is not None:
        return
    assert gen.shape == (n, N_VARS)
    assert list(gen.var_names) == list(model.var_names_)
    xg = dense(gen.X)
    assert np.isfinite(xg).all() and (xg >= 0).all() and (xg == np.rint(xg)).all()
    if labels is not None:
        want = [labels] * n if isinstance(labels, str) else [str(v) for v in labels]
        assert list(gen.obs["cell_type"].astype(str)) == want
    if covariates:
        want = [covariates["batch"]] * n if isinstance(covariates["batch"], str) else list(covariates["batch"])
        assert list(gen.obs["batch"].astype(str)) == want


# ------------------------------------------------------------------------------------------------ interpolate


@prop_settings("interpolate")
@given(case=cases(
    rows=st.lists(st.integers(0, N_OBS - 1), min_size=3, max_size=12, unique=True), seed=st.integers(0, 1000),
    choices={
        "genes": (["same", "permuted", "extra"], ["missing", "duplicated"]),
        "source": (["type_0", "type_1", "type_2"], ["nope"]),
        "target": (["type_0", "type_1", "type_2"], ["nope"]),
        "obs": (["ok", "ok", "no_batch"], ["no_labels", "batch_unseen"]),
        "cond": (["ok"], ["nan", "absent"]),
        "weights": ([[0.0, 1.0], [0.5], [0.0, 0.25, 1.0]], [[], [-0.1, 0.5], [1.5], [float("nan")]]),
        "t_start": ([0.6, 1.0, 0.05], [0.0, 1.5, float("nan")]),
        "n_cells": ([None, 1, 2], [0, 100, 1.5]),
        "n_steps": ([1, 2], [0]),
        "batch_size": ([1, 3, 1024], [0]),
        "container": (["plain", "plain", "view", "backed"], []),
    }))
def test_interpolate_properties(case, trained, folder):
    train_adata, model = trained
    rng = np.random.default_rng(case["seed"])
    src = train_adata[case["rows"]].copy()
    src.uns = {"user_note": "keep me"}
    genes = case["genes"]
    if genes == "extra":
        extra = ad.AnnData(X=sp.csr_matrix(rng.integers(0, 4, (src.n_obs, 2)).astype(np.float32)),
                           obs=src.obs[[]], var=pd.DataFrame(index=["e0", "e1"]))
        obs, cond = src.obs.copy(), src.obsm["cond"].copy()
        src = ad.concat([src, extra], axis=1)
        src.obs, src.obsm["cond"] = obs, cond
    if genes in ("permuted", "extra", "duplicated"):
        src = src[:, rng.permutation(src.n_vars)].copy()
    elif genes == "missing":
        src = src[:, 1:].copy()
    if genes == "duplicated":
        names = list(src.var_names)
        names[-1] = names[0]
        src.var_names = names
    model_cols = np.flatnonzero(np.isin(src.var_names, model.var_names_))
    src.X, _ = build_matrix(dense(src.X), case["x"], cols=model_cols)
    if case["obs"] == "no_labels":
        del src.obs["cell_type"]
    elif case["obs"] == "no_batch":
        del src.obs["batch"]
    elif case["obs"] == "batch_unseen":
        src.obs["batch"] = pd.Categorical(["b9"] * src.n_obs)
    if case["cond"] == "nan":
        src.obsm["cond"][:, 0] = np.nan
    elif case["cond"] == "absent":
        del src.obsm["cond"]
    parent = source = src
    if case["container"] == "view":
        source = parent[rng.permutation(parent.n_obs)]
    elif case["container"] == "backed":
        parent = source = write_backed(src, folder)

    labels = np.asarray(train_adata.obs["cell_type"].astype(str))[case["rows"]]
    n_src = int((labels == case["source"]).sum())
    w, t0, n_cells = case["weights"], case["t_start"], case["n_cells"]
    expected = []
    if not 0 < t0 <= 1:
        expected.append((VE, "t_start"))
    if not w or not all(0 <= a <= 1 for a in w):
        expected.append((VE, "weights"))
    for name in ("source", "target"):
        if case[name] == "nope":
            expected.append((VE, f"{name}_label"))
    if case["obs"] == "no_labels":
        expected.append((KE, "'cell_type'"))
    elif case["source"] != "nope" and n_src == 0:
        expected.append((VE, "adata_source"))
    if case["n_steps"] < 1:
        expected.append((VE, "n_steps"))
    if case["batch_size"] < 1:
        expected.append((VE, "batch_size"))
    if n_cells is not None and (n_cells < 1 or n_cells != int(n_cells) or n_cells > n_src):
        expected.append((VE, "n_cells"))
    if genes == "missing":
        expected.append((VE, "missing from adata_source"))
    if genes == "duplicated":
        expected += [(VE, "duplicated gene names"), (VE, "missing from adata_source")]
    maybe = []
    if case["x"]["defect"] and labels[case["x"]["where"] % len(labels)] == case["source"]:
        # only the source cells are read: a bad value in one of them is refused (it may not be drawn by n_cells)
        (expected if n_cells is None else maybe).append((VE, DEFECT_WORDS[case["x"]["defect"]]))
    if case["obs"] == "batch_unseen":
        expected.append((VE, "batch"))
    if case["cond"] == "nan":
        expected.append((VE, "cond"))
    elif case["cond"] == "absent":
        expected.append((KE, "'cond'"))

    before = snapshot(parent)
    path, err = outcome(lambda: model.interpolate(
        source, case["source"], case["target"], weights=w, t_start=t0, n_steps=case["n_steps"], n_cells=n_cells,
        batch_size=case["batch_size"], seed=case["seed"], progress=False), expected, maybe)
    assert_untouched(before, parent)
    close(parent)
    if err is not None:
        return
    n_out = (n_cells or n_src) * len(w)
    assert path.shape == (n_out, N_VARS)
    assert list(path.var_names) == list(model.var_names_)
    xp = dense(path.X)
    assert np.isfinite(xp).all() and (xp >= 0).all() and (xp == np.rint(xp)).all()
    np.testing.assert_allclose(np.unique(path.obs["interpolation_weight"]), np.unique(w))
    assert set(path.obs["source_cell"].astype(str)) <= set(parent.obs_names)


# ------------------------------------------------------------------------------------------------ pp functions


def pp_adata(case: dict, rng: np.random.Generator, folder: Path, counts_in: str = "X"):
    """A small AnnData for the pp functions: counts (as asked) in X or layers['raw'], a user layer 'user',
    validity layers, obs columns (with a NaN column), a user uns entry; as a plain object, a view or backed."""
    n_obs, n_vars = case["n_obs"], case["n_vars"]
    counts = rng.negative_binomial(1, 0.5, size=(n_obs, n_vars)).astype(float)
    counts[:, rng.random(n_vars) < 0.3] = 0  # some genes never expressed
    m, values = build_matrix(counts, case["x"])
    obs = base_obs(n_obs, rng)
    obs["grp_nan"] = obs["grp"].copy()
    obs.iloc[-1, obs.columns.get_loc("grp_nan")] = np.nan
    obs["is_test"] = rng.random(n_obs) < 0.5
    adata = ad.AnnData(X=m if counts_in == "X" else np.log1p(counts).astype(np.float32), obs=obs,
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))
    if counts_in != "X":
        adata.layers["raw"] = m
    adata.layers["user"] = rng.random((n_obs, n_vars)).astype(np.float32)
    valid = rng.random((n_obs, n_vars)) < 0.8
    adata.layers.update({"v_bool": valid, "v_int": valid.astype(np.int8), "v_csr": sp.csr_matrix(valid),
                         "v_half": np.where(valid, 0.5, 0.0)})
    adata.uns["user_note"] = {"keep": np.arange(2)}
    parent, target, rows = adata, adata, np.arange(n_obs)
    if case["container"] == "view":
        rows = np.sort(rng.choice(n_obs, size=max(1, n_obs - 2), replace=False))
        target = parent[rows]
    elif case["container"] == "backed":
        parent = target = write_backed(adata, folder)
    return parent, target, rows, values[rows], valid[rows]


PP_BASE = {"n_obs": st.integers(1, 15), "n_vars": st.integers(1, 8), "seed": st.integers(0, 10**6)}
PP_CONTAINERS = {"container": (["plain", "plain", "view", "backed"], [])}


@prop_settings("mark_dropouts")
@given(case=cases(
    **PP_BASE,
    choices={
        "layer": ([None, "raw"], ["nope"]),
        "groupby": (["grp", "cell_type", None], ["grp_nan", "nope"]),
        "key_added": (["countsdiff_valid", "valid2"], ["user", "raw"]),
        "copy": ([False, True], []),
        "preset": (["default", "paper"], []),
        **PP_CONTAINERS,
    }))
def test_mark_dropouts_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    parent, target, rows, values, _ = pp_adata(case, rng, folder, counts_in="raw" if case["layer"] else "X")
    layer, key, groupby = case["layer"], case["key_added"], case["groupby"]
    n_obs, n_vars = len(rows), case["n_vars"]
    expected = []
    if key == layer:
        expected.append((VE, "key_added"))
    if case["copy"] and case["container"] == "backed":
        expected.append((VE, "backed"))
    if layer == "nope":
        expected.append((KE, "'nope'"))
    elif case["x"]["defect"]:
        expected.append((VE, DEFECT_WORDS[case["x"]["defect"]]))
    if key == "user" or (key == "raw" and layer == "raw"):
        expected.append((VE, repr(key)))
    if groupby == "nope":
        expected.append((KE, "'nope'"))
    if groupby == "grp_nan" and rows[-1] == case["n_obs"] - 1:
        expected.append((VE, "'grp_nan'"))
    if groupby is None and (n_obs < 3 or n_vars < 2):
        expected.append((VE, "groupby"))
    before = snapshot(parent)
    out, err = outcome(lambda: cds.pp.mark_dropouts(target, groupby=groupby, layer=layer, key_added=key,
                                                    copy=case["copy"], n_pcs=5, preset=case["preset"]), expected)
    if case["copy"] or target is not parent or err is not None:
        assert_untouched(before, parent)
    else:
        assert_untouched(before, parent, layers={key}, obs={"countsdiff_leiden"}, uns={"countsdiff"})
    if err is None:
        res = out if case["copy"] else target
        valid = res.layers[key]
        assert isinstance(valid, np.ndarray) and valid.dtype == bool and valid.shape == (n_obs, n_vars)
        groups = np.asarray(res.obs[groupby if groupby else "countsdiff_leiden"].astype(str))
        nonzero = values != 0
        ref = np.empty_like(nonzero)
        counts = np.asarray(values, dtype=np.float64)
        library = counts.sum(axis=1)
        for g in np.unique(groups):
            in_g = groups == g
            if case["preset"] == "paper":  # scIDPMs Algorithm 1: every zero of a gene the group expresses
                ref[in_g] = nonzero[in_g] | ~nonzero[in_g].any(axis=0)
            else:  # the default rule: a zero is suspected when the group's profile predicts >= 3 counts here
                sums = counts[in_g].sum(axis=0)
                share = sums / sums.sum() if sums.sum() > 0 else np.zeros_like(sums)
                ref[in_g] = nonzero[in_g] | (library[in_g, None] * share[None, :] < 3.0)
        np.testing.assert_array_equal(valid, ref)
        assert res.uns["countsdiff"]["mark_dropouts"]["key_added"] == key
    close(parent)


def _subset(kind: str, n_obs: int, rng: np.random.Generator, obs_names) -> object:
    if kind == "bool":
        return rng.random(n_obs) < 0.6
    if kind == "series":
        return pd.Series(rng.random(n_obs) < 0.6, index=obs_names)[rng.permutation(n_obs)]
    return {"none": None, "tuple": ("batch", "b0"), "tuple_list": ("batch", ["b0", "b1"]),
            "tuple_absent": ("batch", "zz"), "column": "is_test", "not_bool": "batch", "missing": "nope",
            "length": np.ones(n_obs + 1, bool), "all_false": np.zeros(n_obs, bool)}[kind]


def _subset_rows(subset, target, expected: list) -> np.ndarray | None:
    """The cells a subset selects (None when it is refused; the expected error is appended)."""
    n_obs = target.n_obs
    if subset is None:
        return np.ones(n_obs, bool)
    if isinstance(subset, str):
        if subset == "nope":
            expected.append((KE, "'nope'"))
            return None
        if subset == "batch":
            expected.append((VE, "subset"))
            return None
        rows = target.obs[subset].to_numpy(bool)
    elif isinstance(subset, tuple):
        rows = target.obs[subset[0]].isin(subset[1] if isinstance(subset[1], list) else [subset[1]]).to_numpy()
    elif isinstance(subset, pd.Series):
        rows = subset.reindex(target.obs_names).to_numpy(bool)
    else:
        if len(subset) != n_obs:
            expected.append((VE, "subset"))
            return None
        rows = np.asarray(subset)
    if not rows.any():
        expected.append((VE, "subset"))
        return None
    return rows


SUBSETS = (["none", "none", "bool", "series", "tuple", "tuple_list", "column"],
           ["tuple_absent", "not_bool", "missing", "length", "all_false"])
RATES = (st.one_of(st.sampled_from([0.0, 0.5]), st.floats(0.0, 0.95)),
         st.sampled_from([1.0, -0.1, float("nan"), True, "0.5"]))


def _rate_ok(rate) -> bool:
    return not isinstance(rate, (bool, str)) and 0 <= rate < 1


def _valid_for(name, values_valid, expected, shape):
    """The validity the mask functions use for ``valid_layer=name`` (None when refused)."""
    if name is None or name == "countsdiff_valid":  # the default layer is absent here: all entries valid
        return np.ones(shape, bool)
    if name == "nope":
        expected.append((KE, "'nope'"))
        return None
    if name == "v_half":
        if values_valid.any():
            expected.append((VE, "'v_half'"))
            return None
        return np.zeros(shape, bool)
    return values_valid


@prop_settings("mask_mcar")
@given(case=cases(
    matrix="clean", **PP_BASE,
    choices={
        "rate": RATES,
        "valid_layer": (["countsdiff_valid", None, "v_bool", "v_int", "v_csr"], ["v_half", "nope"]),
        "key_added": (["countsdiff_mask", "m2"], ["user", "v_bool"]),
        "subset": SUBSETS,
        **PP_CONTAINERS,
    }))
def test_mask_mcar_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    parent, target, rows, _, valid_all = pp_adata(case, rng, folder)
    key, vl, rate = case["key_added"], case["valid_layer"], case["rate"]
    subset = _subset(case["subset"], len(rows), rng, target.obs_names)
    expected = []
    if not _rate_ok(rate):
        expected.append((VE, "rate"))
    if vl is not None and key == vl:
        expected.append((VE, "key_added"))
    if key in ("user", "v_bool"):
        expected.append((VE, repr(key)))
    selected = _subset_rows(subset, target, expected)
    valid = _valid_for(vl, valid_all, expected, (len(rows), case["n_vars"]))
    before = snapshot(parent)
    _, err = outcome(lambda: cds.pp.mask_mcar(target, rate, seed=case["seed"], valid_layer=vl, key_added=key,
                                              subset=subset), expected)
    if target is parent and err is None:
        assert_untouched(before, parent, layers={key}, uns={"countsdiff"})
    else:
        assert_untouched(before, parent)
    if err is None:
        mask = target.layers[key]
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (len(rows), case["n_vars"])
        assert not (mask & ~(valid & selected[:, None])).any()  # only valid entries of selected cells
        if rate == 0:
            assert not mask.any()
        rec = target.uns["countsdiff"][key]
        assert rec["n_masked"] == int(mask.sum())
    close(parent)


@prop_settings("mask_mnar")
@given(case=cases(
    **PP_BASE,
    choices={
        "rate": RATES,
        "bias": (["low", "high"], ["middle"]),
        "pool_extra": ([0, 2, 5000], [-1, 2.5, True]),
        "layer": ([None, "raw"], ["nope"]),
        "valid_layer": (["countsdiff_valid", None, "v_bool", "v_csr"], ["v_half", "nope"]),
        "key_added": (["countsdiff_mask"], ["user", "raw"]),
        "subset": SUBSETS,
        **PP_CONTAINERS,
    }))
def test_mask_mnar_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    parent, target, rows, values, valid_all = pp_adata(case, rng, folder, counts_in="raw" if case["layer"] else "X")
    key, vl, rate, layer, pool = case["key_added"], case["valid_layer"], case["rate"], case["layer"], case["pool_extra"]
    subset = _subset(case["subset"], len(rows), rng, target.obs_names)
    expected = []
    if not _rate_ok(rate):
        expected.append((VE, "rate"))
    if case["bias"] not in ("low", "high"):
        expected.append((VE, "bias"))
    if pool is True or pool < 0 or pool != int(pool):
        expected.append((VE, "pool_extra"))
    if layer is not None and key == layer:
        expected.append((VE, "key_added"))
    if layer == "nope":
        expected.append((KE, "'nope'"))
    elif case["x"]["defect"]:
        expected.append((VE, DEFECT_WORDS[case["x"]["defect"]]))
    if vl is not None and key == vl:
        expected.append((VE, "key_added"))
    if key == "user" or (key == "raw" and layer == "raw"):
        expected.append((VE, repr(key)))
    selected = _subset_rows(subset, target, expected)
    valid = _valid_for(vl, valid_all, expected, (len(rows), case["n_vars"]))
    before = snapshot(parent)
    _, err = outcome(lambda: cds.pp.mask_mnar(target, rate, case["bias"], seed=case["seed"], layer=layer,
                                              valid_layer=vl, key_added=key, pool_extra=pool, subset=subset),
                     expected)
    if target is parent and err is None:
        assert_untouched(before, parent, layers={key}, uns={"countsdiff"})
    else:
        assert_untouched(before, parent)
    if err is None:
        mask = target.layers[key]
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (len(rows), case["n_vars"])
        cand = valid & selected[:, None]
        assert not (mask & ~cand).any()
        for j in range(case["n_vars"]):
            n_cand = int(cand[:, j].sum())
            assert mask[:, j].sum() == math.floor(rate * n_cand + 1e-9)  # k = floor(rate * n_valid) per gene
            held, kept = values[mask[:, j], j], values[cand[:, j] & ~mask[:, j], j]
            if pool == 0 and held.size and kept.size:  # exactly the k lowest (highest) values
                assert held.max() <= kept.min() if case["bias"] == "low" else held.min() >= kept.max()
    close(parent)


@prop_settings("split_cells")
@given(case=cases(
    matrix="clean", n_obs=st.integers(1, 30), n_vars=st.just(2), seed=st.integers(0, 10**6),
    choices={
        "fractions": (st.tuples(st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).map(
            lambda t: t if any(t) else (1, 0, 0)),
                      st.sampled_from([(0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5), (True, 0, 0),
                                       ("0.8", 0.1, 0.1), (1.2, -0.1, -0.1)])),
        "stratify": ([None, "cell_type", "grp"], ["grp_nan", "nope", "countsdiff_split"]),
        "key_added": (["countsdiff_split", "split2"], ["batch"]),
        **PP_CONTAINERS,
    }))
def test_split_cells_properties(case, folder):
    rng = np.random.default_rng(case["seed"])
    parent, target, rows, _, _ = pp_adata(case, rng, folder)
    fr = case["fractions"]
    if all(isinstance(f, int) and not isinstance(f, bool) for f in fr):
        fr = tuple(f / sum(fr) for f in fr)
    key, strat = case["key_added"], case["stratify"]
    expected = []
    bad = [name for name, f in zip(("train", "validation", "test"), fr, strict=True)
           if isinstance(f, (bool, str)) or not 0 <= f <= 1]
    if bad:
        expected.append((VE, f"{bad[0]} must be a fraction"))
    elif abs(sum(fr) - 1) > 1e-6:
        expected.append((VE, "sum to 1"))
    if key == "batch":
        expected.append((VE, "'batch'"))
    if strat == "nope":
        expected.append((KE, "'nope'"))
    if strat == key:
        expected.append((VE, "key_added"))
    if strat == "countsdiff_split":
        expected.append((KE, "'countsdiff_split'"))
    if strat == "grp_nan" and rows[-1] == case["n_obs"] - 1:
        expected.append((VE, "'grp_nan'"))
    before = snapshot(parent)
    _, err = outcome(lambda: cds.pp.split_cells(target, *fr, seed=case["seed"], stratify=strat, key_added=key),
                     expected)
    if target is parent and err is None:
        assert_untouched(before, parent, obs={key}, uns={"countsdiff"})
    else:
        assert_untouched(before, parent)
    if err is None:
        col = target.obs[key]
        assert list(col.cat.categories) == ["train", "validation", "test"] and not col.isna().any()
        groups = np.zeros(len(rows)) if strat is None else np.asarray(target.obs[strat].astype(str))
        for g in np.unique(groups):
            sizes = col[groups == g].value_counts().reindex(["train", "validation", "test"]).to_numpy()
            n_g = int((groups == g).sum())
            for size, f in zip(sizes, fr, strict=True):
                assert abs(size - n_g * f) < 1 + 1e-9, (size, n_g, f)  # within one cell of n * fraction
                if f == 0:
                    assert size == 0
    close(parent)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_model(trained, folder) -> Path:
    _, model = trained
    path = folder / "cli_model"
    model.save(path, overwrite=True)
    return path


def _cli(capsys, args: list) -> tuple[int, str, str]:
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@prop_settings("cli")
@given(case=cases(
    matrix=None, seed=st.integers(0, 1000),
    choices={
        "cmd": (["impute", "impute", "impute", "sample", "sample", "evaluate", "train"], []),
        "input": (["good", "good", "permuted"], ["missing", "not_h5ad", "bad_counts", "missing_gene"]),
        "model": (["good"], ["missing", "empty"]),
        "out": (["fresh", "nested"], ["is_dir"]),
        "mask_layer": (["countsdiff_mask"], ["nope"]),
        "key_added": ([None, "mine"], ["counts"]),
        "n": ([None, "1", "3"], ["0", "-2", "x"]),
        "labels": ([None, "type_0", "type_0,type_1"], ["nope", ","]),
        "n_steps": (["1", "2"], ["0"]),
        "guidance": (["1"], ["-1"]),
        "train_opts": ([[], ["--labels-key", "cell_type"], ["--layer", "counts"], ["--valid-layer", "valid"],
                        ["--covariate-keys", "batch"], ["--batch-size", "8"]],
                       [["--labels-key", "nope"], ["--layer", "nope"], ["--batch-size", "0"],
                        ["--accelerator", "tpu"]]),
        "eval_opts": ([[], ["--truth-layer", "counts"], ["--n-bootstrap", "0"]],
                      [["--truth-layer", "nope"], ["--imputed-layer", "nope"], ["--n-bootstrap", "-1"]]),
    }))
def test_cli_properties(case, trained, cli_model, folder, capsys):
    train_adata, _ = trained
    rng = np.random.default_rng(case["seed"])
    work = folder / f"cli_{next(_COUNTER)}"
    work.mkdir()
    cmd = case["cmd"]
    expected_fail = False  # a planted defect: the CLI must end with exit code 1 or 2

    # the input file
    adata = train_adata[rng.choice(N_OBS, 12, replace=False)].copy()
    for k in [c for c in adata.obs.columns if c.startswith("_scvi_")]:
        del adata.obs[k]
    adata.uns = {}
    adata.layers["countsdiff_mask"] = rng.random(adata.shape) < 0.3
    if cmd == "evaluate":
        adata.layers["countsdiff_imputed"] = rng.integers(0, 5, adata.shape).astype(np.float32)
    path = work / "in.h5ad"
    kind = case["input"]
    if kind == "permuted":
        adata = adata[:, rng.permutation(N_VARS)].copy()
    elif kind == "missing_gene":
        adata = adata[:, 1:].copy()
        expected_fail |= cmd == "impute"
    elif kind == "bad_counts":
        adata.X = adata.X.toarray() * 0.5 + 0.25
        expected_fail |= cmd in ("impute", "train") and not (cmd == "train" and "--layer" in case["train_opts"]
                                                                and "counts" in case["train_opts"])
    if kind == "not_h5ad":
        path.write_text("not an h5ad file\n")
        expected_fail |= cmd != "sample"
    elif kind == "missing":
        expected_fail |= cmd != "sample"
    else:
        adata.write_h5ad(path)
    input_hash = file_hash(path) if path.exists() else None

    out = {"fresh": work / "out.h5ad", "nested": work / "a" / "b" / "out.h5ad", "is_dir": work}[case["out"]]
    model_dir = {"good": cli_model, "missing": work / "no_model", "empty": work / "empty"}[case["model"]]
    if case["model"] == "empty":
        model_dir.mkdir()

    if cmd == "impute":
        args = ["impute", path, "--model", model_dir, "--out", out, "--mask-layer", case["mask_layer"],
                "--n-samples", "2", "--n-steps", case["n_steps"], "--guidance", case["guidance"], "--quiet",
                "--accelerator", "cpu"]
        if case["key_added"]:
            args += ["--key-added", case["key_added"]]
        expected_fail |= (case["model"] != "good" or case["out"] == "is_dir" or case["mask_layer"] == "nope"
                          or case["key_added"] == "counts" or case["n_steps"] == "0" or case["guidance"] == "-1")
    elif cmd == "sample":
        args = ["sample", "--model", model_dir, "--out", out, "--n-steps", case["n_steps"], "--guidance",
                case["guidance"], "--quiet", "--accelerator", "cpu"]
        if case["n"] is not None:
            args += ["--n", case["n"]]
        if case["labels"] is not None:
            args += ["--labels", case["labels"]]
        labels_given = case["labels"] is not None
        expected_fail |= (case["model"] != "good" or case["out"] == "is_dir" or case["n_steps"] == "0"
                          or case["guidance"] == "-1" or case["n"] in ("0", "-2", "x")
                          or case["labels"] in ("nope", ",") or (case["n"] is None and not labels_given))
    elif cmd == "evaluate":
        args = ["evaluate", path, "--n-bootstrap", "2", *case["eval_opts"], "--out", out, "--csv", work / "t.csv"]
        expected_fail |= case["out"] == "is_dir" or any(o in ("nope", "-1") for o in case["eval_opts"])
    else:
        target = {"good": work / "trained", "missing": work / "trained", "empty": model_dir}[case["model"]]
        args = ["train", path, "--model", target, "--max-steps", "1", "--quiet", *case["train_opts"]]
        if "--accelerator" not in case["train_opts"]:
            args += ["--accelerator", "cpu"]
        expected_fail |= (case["model"] == "empty" or any(o in ("nope", "0", "tpu") for o in case["train_opts"]))

    code, stdout, stderr = _cli(capsys, args)
    _event(f"exit code {code}")
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0:
        assert not expected_fail, f"exit code 0 for a bad input: {args}"
        if cmd == "impute":
            res = ad.read_h5ad(out)
            imp = res.layers[case["key_added"] or "countsdiff_imputed"]
            x = dense(res.X)
            mask = dense(res.layers["countsdiff_mask"]).astype(bool)
            np.testing.assert_array_equal(imp[~mask], x[~mask])
            assert (imp >= 0).all() and np.isfinite(imp).all()
            draws = res.obsm["countsdiff_samples"]
            assert draws.dtype == np.int32 and (draws >= 0).all()
        elif cmd == "sample":
            res = ad.read_h5ad(out)
            x = dense(res.X)
            assert (x >= 0).all() and (x == np.rint(x)).all() and res.n_vars == N_VARS
            if case["n"] is not None:
                assert res.n_obs == int(case["n"])
        elif cmd == "evaluate":
            assert "rmse" in stdout and (work / "t.csv").exists() and ad.read_h5ad(out).n_obs == 12
        else:
            assert (work / "trained" / "model.pt").exists()
    else:
        assert code in (1, 2), code
        assert expected_fail, f"exit code {code} for a good input: {args}\n{stderr}"
        if code == 1:
            assert len(lines) == 1, stderr
            assert lines[0].startswith(f"countsdiff-sc {cmd}: error: "), stderr
        else:  # argparse: usage, then one error line
            assert lines[-1].startswith(f"countsdiff-sc {cmd}: error: "), stderr
            assert sum("error:" in line for line in lines) == 1
    if input_hash is not None:
        assert file_hash(path) == input_hash  # the input file is never modified


# ------------------------------------------------------------------------------------------------ findings
# Minimal inputs of failures the property tests found in model/ (fixed; regression tests).


def test_impute_backed_dense_query_in_another_gene_order(trained, folder):
    adata, model = trained
    q = adata[:5, adata.var_names[::-1]].copy()
    q.X = q.X.toarray()  # dense X: an h5py.Dataset once backed
    q.layers["mask"] = np.eye(5, N_VARS, dtype=bool)
    path = folder / "backed_reversed.h5ad"
    q.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp, _ = model.impute(backed, mask_layer="mask", n_samples=1, n_steps=2, progress=False, seed=0)
        ref, _ = model.impute(q, mask_layer="mask", n_samples=1, n_steps=2, progress=False, seed=0)
    np.testing.assert_array_equal(imp, ref)


def test_interpolate_duplicated_gene_names(trained):
    adata, model = trained
    src = adata.copy()
    src.var_names = [*adata.var_names[:-1], adata.var_names[0]]  # the last gene's name repeats the first
    with pytest.raises(ValueError, match="duplicated gene names"):
        model.interpolate(src, "type_1", "type_2", weights=[0.0, 1.0], n_steps=2, progress=False, seed=0)


def test_train_size_none_on_tiny_data():
    adata = make_counts(n_obs=1, n_vars=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.CountsDiffModel.setup_anndata(adata)
        model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
        try:
            model.train(max_steps=1, train_size=None, **FAST)  # trains (as train_size=0.9 does) ...
        except ValueError as err:  # ... or refuses with a message that names train_size
            assert "train_size" in str(err)


# Minimal inputs of failures the property tests found in pp/ (fixed)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_pp_on_a_backed_sparse_matrix(fmt, folder):
    """mark_dropouts raised 'matmul: dimension mismatch', mask_mnar an IndexError on a backed sparse X."""
    adata = make_counts(n_obs=12, n_vars=4)
    adata.X = sp.csr_matrix(adata.X) if fmt == "csr" else sp.csc_matrix(adata.X)
    backed = write_backed(adata, folder)
    cds.pp.mark_dropouts(backed, groupby="cell_type")
    cds.pp.mark_dropouts(adata, groupby="cell_type")
    np.testing.assert_array_equal(backed.layers["countsdiff_valid"], adata.layers["countsdiff_valid"])
    cds.pp.mask_mnar(backed, 0.3, valid_layer=None, pool_extra=0, seed=1)
    cds.pp.mask_mnar(adata, 0.3, valid_layer=None, pool_extra=0, seed=1)
    np.testing.assert_array_equal(backed.layers["countsdiff_mask"], adata.layers["countsdiff_mask"])
    close(backed)


@pytest.mark.parametrize("x", [np.zeros((4, 3)), [[1, 0, 0], [1, 0, 0], [2, 0, 0]], [[1, 2], [2, 4], [3, 6], [1, 2]]])
def test_mark_dropouts_clusters_degenerate_data(x):
    """Leiden clustering (groupby=None) of cells without counts ('Input X contains NaN') or with one normalised profile
    (ARPACK error -9): one cluster, so a zero is a dropout exactly when its gene is expressed somewhere."""
    adata = ad.AnnData(np.asarray(x, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.pp.mark_dropouts(adata, n_pcs=5)
    assert adata.obs["countsdiff_leiden"].nunique() == 1
    nonzero = adata.X != 0
    np.testing.assert_array_equal(adata.layers["countsdiff_valid"], nonzero | ~nonzero.any(axis=0))
