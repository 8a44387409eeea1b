"""Property-based tests (hypothesis) of CountsDiffModel's verbs: each output keeps its contract (issue 32, item 4).

Queries are drawn at random: a few cells of the model's labels and batches, counts from zero to a million, dense /
CSR / CSC / integer storage, the genes in another order and with genes the model does not know. Some examples carry
one planted defect (NaN, negative or fractional counts, a missing model gene, an unseen label, a missing batch
column); those must be refused with a ValueError / KeyError / TypeError whose message names the culprit. Every other
call must give:

* finite, non-negative values (integer where the verb promises counts), of the documented shape and gene order;
* the same result when the query's genes come in another order (genes are matched by name), with the same seed;
* the user's data unchanged (``X``, pre-existing layers, obs, obsm, uns entries);
* no stale output after a re-run with other output options (only what the last call wrote, and the user's own keys);
* the verb's own guarantees: the observed molecules ``correct_batches`` keeps, the reference cells it leaves alone,
  the library size ``get_normalized_expression`` normalises to.

The tiny models are trained once per module; the examples are derandomized (the same on every run).
"""

from __future__ import annotations

import pickle
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import countsdiff_sc as cds

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
GENES = [f"g{j}" for j in range(10)]
LABELS = ["type_0", "type_1", "type_2"]
BATCHES = ["b0", "b1"]
FAST = cds.Sampler(n_steps=3, progress=False)
DEFECTS = [None, None, None, "nan", "negative", "fraction", "missing_gene", "unseen_label", "no_batch"]
#: What a refusal of each defect must name.
NAMES = {"nan": "NaN", "negative": "negative", "fraction": "non-integer", "missing_gene": "missing from",
         "unseen_label": "type_9", "no_batch": "batch"}


def prop(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model():
    """Labels and a batch covariate (depth-conditioned default preset); b1 holds fewer of the first genes."""
    rng = np.random.default_rng(0)
    n = 120
    kind = rng.integers(0, 3, n)
    batch = rng.integers(0, 2, n)
    base = rng.gamma(2.0, 1.5, size=(3, len(GENES)))
    keep = np.where(batch[:, None] == 1, np.linspace(0.3, 1.5, len(GENES))[None, :], 1.0)
    x = rng.poisson(base[kind] * keep).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([LABELS[k] for k in kind]),
                        "batch": pd.Categorical([BATCHES[b] for b in batch])}, index=[f"t{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=GENES))
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    torch.manual_seed(0)
    m = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    m.train(max_steps=15, accelerator="cpu", enable_progress_bar=False, batch_size=64,
            plan_kwargs={"warmup_steps": 3})
    return m


@st.composite
def queries(draw):
    """``(adata, order, defect)``: a query in the model's gene order, the permutation of its reordered twin, the
    planted defect (None for a clean query)."""
    n = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.0, 0.5, 3.0, 50.0]))
    x = rng.poisson(scale * rng.gamma(1.0, 1.0, size=(n, len(GENES)))).astype(np.float64)
    if draw(st.booleans()):
        x[rng.integers(0, n), rng.integers(0, len(GENES))] = draw(st.sampled_from([10**6, 2**24 + 1]))
    labels = [LABELS[i] for i in rng.integers(0, 3, n)]
    batches = [BATCHES[i] for i in rng.integers(0, 2, n)]
    defect = draw(st.sampled_from(DEFECTS))
    if defect in ("nan", "negative", "fraction"):
        x[rng.integers(0, n), rng.integers(0, len(GENES))] = {"nan": np.nan, "negative": -2.0, "fraction": 0.5}[defect]
    if defect == "unseen_label":
        labels[0] = "type_9"
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)},
                       index=[f"c{i}" for i in range(n)])
    if defect == "no_batch":
        del obs["batch"]
    storage = draw(st.sampled_from(["csr", "csc", "dense", "int"]))
    if storage == "int" and defect not in ("nan", "fraction"):
        mat = sp.csr_matrix(x.astype(np.int64))
    else:
        mat = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}.get(storage, np.asarray)(x)
    adata = ad.AnnData(X=mat, obs=obs, var=pd.DataFrame(index=list(GENES)))
    if defect == "missing_gene":
        adata = adata[:, 1:].copy()
    order = np.asarray(draw(st.permutations(range(adata.n_vars))))
    return adata, order, defect


def twin(adata: ad.AnnData, order: np.ndarray, extra: bool = True) -> ad.AnnData:
    """The same cells with the genes in ``order`` and, with ``extra``, one gene the model does not know at the end."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x[:, order].astype(np.float64)
    names = list(adata.var_names[order])
    if extra:
        x = np.hstack([x, np.arange(adata.n_obs, dtype=np.float64)[:, None] % 4])
        names.append("not_a_model_gene")
    return ad.AnnData(X=sp.csr_matrix(x), obs=adata.obs.copy(), var=pd.DataFrame(index=names))


def snapshot(adata: ad.AnnData) -> dict:
    def freeze(m):
        if sp.issparse(m):
            return (m.format, m.dtype.str, m.data.tobytes(), m.indices.tobytes(), m.indptr.tobytes())
        a = np.asarray(m)
        return (a.dtype.str, a.shape, a.tobytes())

    return {"X": freeze(adata.X), "layers": {k: freeze(v) for k, v in adata.layers.items()},
            "obs": adata.obs.copy(), "obsm": {k: freeze(v) for k, v in adata.obsm.items()},
            "uns": {k: pickle.dumps(v) for k, v in adata.uns.items()}}


def assert_untouched(before: dict, adata: ad.AnnData) -> None:
    after = snapshot(adata)
    assert after["X"] == before["X"], "X was modified"
    for k, v in before["layers"].items():
        assert after["layers"].get(k) == v, f"layer {k!r} was modified"
    for k, v in before["obsm"].items():
        assert after["obsm"].get(k) == v, f"obsm {k!r} was modified"
    for k, v in before["uns"].items():
        assert after["uns"].get(k) == v, f"uns {k!r} was modified"
    cols = [c for c in adata.obs.columns if not c.startswith("_scvi")]
    assert cols == list(before["obs"].columns)
    pd.testing.assert_frame_equal(adata.obs[cols], before["obs"])


def call(fn, *args, **kwargs):
    """``(result, error)``; warnings of the package are allowed (recorded, not raised)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs), None
        except (ValueError, KeyError, TypeError) as err:
            return None, err


def check_refusal(defect, err, extra_ok=()) -> bool:
    """True when the call was refused as it must be; the test stops there."""
    event(f"defect={defect}")
    if defect is None or defect in extra_ok:
        assert err is None, f"a clean query was refused: {err!r}"
        return False
    assert err is not None, f"the defect {defect!r} was not refused"
    assert NAMES[defect] in str(err), f"the refusal of {defect!r} does not name it: {err}"
    return True


def dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


@prop(12)
@given(case=queries(), target=st.sampled_from(["denoise", "mask"]))
def test_impute(model, case, target):
    adata, order, defect = case
    if target == "mask":
        adata.layers["m"] = np.random.default_rng(adata.n_obs).random(adata.shape) < 0.3
    before = snapshot(adata)
    kw = {"n_samples": 2, "sampler": FAST.replace(seed=1), "mask_layer": "m" if target == "mask" else None,
          "target": target}
    # no batch column: impute reads the batch of each cell, so it is a defect here too
    _, err = call(model.impute, adata, **kw)
    if check_refusal(defect, err):
        assert "countsdiff_imputed" not in adata.layers
        return
    imputed = adata.layers["countsdiff_imputed"]
    assert imputed.shape == adata.shape and np.isfinite(imputed).all() and (imputed >= 0).all()
    x = dense(adata.X).astype(np.float64)
    if target == "mask":
        keep = ~adata.layers["m"]
        np.testing.assert_array_equal(imputed[keep].astype(np.float64), x[keep])  # observed entries kept exactly
    std = dense(adata.layers["countsdiff_imputed_std"])
    assert np.isfinite(std).all() and (std >= 0).all()
    assert_untouched(before, adata)
    other = twin(adata, order, extra=target == "denoise")
    if target == "mask":
        other.layers["m"] = adata.layers["m"][:, order]
    call(model.impute, other, **kw)
    np.testing.assert_allclose(other.layers["countsdiff_imputed"][:, :len(order)], imputed[:, order], rtol=1e-5)


@prop(12)
@given(case=queries(), retention=st.sampled_from([None, "auto"]), n_samples=st.integers(1, 2))
def test_transfer(model, case, retention, n_samples):
    adata, order, defect = case
    before = snapshot(adata)
    kw = {"covariates": {"batch": "b0"}, "retention": retention, "n_samples": n_samples,
          "sampler": FAST.replace(seed=2)}
    out, err = call(model.transfer, adata, **kw)
    # the batch is the target: a cell without its own batch is fine in the uniform mode, not with retention
    if check_refusal(defect, err, extra_ok=("no_batch",) if retention is None else ()):
        return
    y = dense(out.X)
    assert out.shape == (adata.n_obs, len(GENES)) and list(out.var_names) == GENES
    assert list(out.obs_names) == list(adata.obs_names)
    assert (y >= 0).all() and np.array_equal(y, np.round(y)) and (out.obs["batch"] == "b0").all()
    if n_samples > 1:
        assert (out.layers["transfer_sd"] >= 0).all() and np.isfinite(out.layers["transfer_mean"]).all()
    assert_untouched(before, adata)
    moved, _ = call(model.transfer, twin(adata, order), **kw)
    np.testing.assert_array_equal(dense(moved.X), y)


@prop(14)
@given(case=queries(), reference=st.sampled_from(["b0", "b1", "pooled"]), n_samples=st.integers(1, 2),
       block=st.sampled_from([None, 2]))
def test_correct_batches(model, case, reference, n_samples, block):
    adata, order, defect = case
    before = snapshot(adata)
    kw = {"reference": reference, "n_samples": n_samples, "block_size": block, "sampler": FAST.replace(seed=3)}
    table, err = call(model.correct_batches, adata, **kw)
    if check_refusal(defect, err):
        assert "countsdiff_corrected" not in adata.layers  # nothing half-written
        return
    layer = adata.layers["countsdiff_corrected"]
    assert sp.isspmatrix_csr(layer) and layer.dtype.kind == "i" and layer.shape == adata.shape
    y, x = layer.toarray(), dense(adata.X).astype(np.float64)
    assert (y >= 0).all()
    assert (y.max(initial=0) > np.iinfo(np.int32).max) == (layer.dtype == np.int64)
    own = adata.obs["batch"].astype(str).to_numpy()
    if reference != "pooled":
        np.testing.assert_array_equal(y[own == reference], x[own == reference])  # the reference's cells unchanged
    for b in table.columns:  # every observed molecule of a gene its batch does not inflate is kept
        lost = table[b].to_numpy() <= 1
        rows = own == b
        assert (y[rows][:, lost] >= x[rows][:, lost]).all()
    if n_samples > 1:
        mean = adata.layers["countsdiff_corrected_mean"].toarray()
        sd = adata.layers["countsdiff_corrected_sd"].toarray()
        assert np.isfinite(mean).all() and (mean >= 0).all() and (sd >= 0).all()
    assert_untouched(before, adata)
    other = twin(adata, order)
    call(model.correct_batches, other, **kw)
    z = other.layers["countsdiff_corrected"].toarray()
    np.testing.assert_array_equal(z[:, :len(order)], y[:, order])
    np.testing.assert_array_equal(z[:, -1], dense(other.X)[:, -1])  # the unknown gene keeps its counts


@prop(10)
@given(case=queries(), library=st.sampled_from([1.0, 1e4, "latent"]), n_samples=st.integers(1, 2))
def test_expression(model, case, library, n_samples):
    adata, order, defect = case
    before = snapshot(adata)
    kw = {"library_size": library, "n_samples": n_samples, "sampler": FAST.replace(seed=4)}
    expr, err = call(model.get_normalized_expression, adata, **kw)
    if check_refusal(defect, err):
        return
    values = expr.to_numpy()
    assert expr.shape == (adata.n_obs, len(GENES)) and list(expr.columns) == GENES
    assert np.isfinite(values).all() and (values >= 0).all()
    totals = values.sum(axis=1)
    target = dense(adata.X).sum(axis=1) if library == "latent" else np.full(adata.n_obs, float(library))
    has = totals > 0
    np.testing.assert_allclose(totals[has], target[has], rtol=1e-3)
    pp, err = call(model.posterior_predictive_sample, adata, n_samples=n_samples, sampler=FAST.replace(seed=4))
    assert err is None
    draws = pp.todense()
    assert draws.shape[:2] == (adata.n_obs, len(GENES))
    assert (draws >= 0).all() and np.array_equal(draws, np.round(draws))
    assert_untouched(before, adata)
    again, _ = call(model.get_normalized_expression, twin(adata, order), **kw)
    np.testing.assert_allclose(again.to_numpy(), values, rtol=1e-4, atol=1e-6)


@prop(8)
@given(n=st.integers(1, 6), labels=st.sampled_from([None, "type_1", "list"]), depth=st.sampled_from(["train", 50.0]),
       seed=st.integers(0, 100))
def test_sample(model, n, labels, depth, seed):
    lab = [LABELS[i % 3] for i in range(n)] if labels == "list" else labels
    out, err = call(model.sample, n_cells=n, labels=lab, depth=depth, sampler=FAST.replace(seed=seed))
    assert err is None, err
    y = dense(out.X)
    assert out.shape == (n, len(GENES)) and list(out.var_names) == GENES
    assert (y >= 0).all() and np.array_equal(y, np.round(y)) and np.isfinite(y).all()
    if labels is not None:
        expected = lab if isinstance(lab, list) else [lab] * n
        assert list(out.obs["cell_type"].astype(str)) == expected
    again, _ = call(model.sample, n_cells=n, labels=lab, depth=depth, sampler=FAST.replace(seed=seed))
    np.testing.assert_array_equal(dense(again.X), y)  # the same seed, the same cells


RUNS = st.lists(st.tuples(st.sampled_from(["impute", "correct"]), st.integers(1, 3), st.sampled_from(["auto", None]),
                          st.booleans()), min_size=2, max_size=4)


@prop(8)
@given(runs=RUNS, seed=st.integers(0, 100))
def test_reruns_leave_no_stale_output(model, runs, seed):
    """Calls with other output options, one after another: afterwards the object holds exactly what the last call of
    each verb wrote, the user's own layers unchanged."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, size=(6, len(GENES))).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([LABELS[i % 3] for i in range(6)]),
                        "batch": pd.Categorical([BATCHES[i % 2] for i in range(6)])}, index=[f"c{i}" for i in range(6)])
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=GENES))
    adata.layers["mine"] = adata.X.copy() * 2
    expected: dict[str, set[str]] = {"impute": set(), "correct": set()}
    for verb, n, std, store in runs:
        if verb == "impute":
            _, err = call(model.impute, adata, n_samples=n, std_key=std, store_samples=store, sampler=FAST)
            written = {"layers:countsdiff_imputed"} | ({"layers:countsdiff_imputed_std"} if std else set()) | (
                {"obsm:countsdiff_samples"} if store else set())
        else:
            _, err = call(model.correct_batches, adata, reference="b0", n_samples=n, sampler=FAST)
            written = {"layers:countsdiff_corrected"} | ({"layers:countsdiff_corrected_mean",
                                                           "layers:countsdiff_corrected_sd"} if n > 1 else set())
        assert err is None, err
        expected[verb] = written
        present = {f"layers:{k}" for k in adata.layers if k != "mine"} | {
            f"obsm:{k}" for k in adata.obsm if not k.startswith("_scvi")}  # (scvi-tools' registration keys)
        assert present == expected["impute"] | expected["correct"]
        np.testing.assert_array_equal(adata.layers["mine"].toarray(), x * 2)
