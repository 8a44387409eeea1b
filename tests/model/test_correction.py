"""``CountsDiffModel.correct_batches``: integer batch-corrected counts of a whole data set.

The data have a known batch effect: batch ``b1`` holds each gene at ``r_g`` times its level in ``b0`` (genes below 1
lose molecules, genes above 1 are inflated), within three cell types. The retention table must recover ``r_g``; every
observed molecule of a gene the source does not inflate must be kept; reference cells, genes the model does not know
and the user's own data must come back unchanged."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import countsdiff_sc as cds

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "plan_kwargs": {"warmup_steps": 5}}
N_GENES = 24


def _sampler(seed: int = 0, **kw) -> cds.Sampler:
    return cds.Sampler(n_steps=4, seed=seed, progress=False, **kw)


def _truth() -> np.ndarray:
    """The retention of b1 relative to b0: 0.25 to 2 over the genes."""
    return np.exp(np.linspace(np.log(0.25), np.log(2.0), N_GENES))


def _batched(n: int = 900, seed: int = 0, types_of_b1=(0, 1, 2)) -> ad.AnnData:
    """NB counts of three cell types in two batches; b1 = b0's means times the known retention."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 2.0, size=(3, N_GENES)) + 0.5
    batch = np.where(rng.random(n) < 0.5, "b0", "b1")
    kind = rng.integers(0, 3, n)
    in_b1 = batch == "b1"
    kind[in_b1] = rng.choice(np.asarray(types_of_b1), in_b1.sum())
    mu = base[kind] * np.where(in_b1[:, None], _truth()[None, :], 1.0)
    x = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{k}" for k in kind]),
                        "batch": pd.Categorical(batch)}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


def _train(adata: ad.AnnData, steps: int = 20, **setup) -> cds.CountsDiffModel:
    cds.CountsDiffModel.setup_anndata(adata, **setup)
    torch.manual_seed(0)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_steps=steps, **FAST)
    return model


@pytest.fixture(scope="module")
def trained():
    adata = _batched()
    model = _train(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    return adata, model


def _fresh(adata: ad.AnnData) -> ad.AnnData:
    """A copy of the cells without earlier outputs (the model's training AnnData stays as it is)."""
    return ad.AnnData(X=adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())


def _layer(adata: ad.AnnData, key: str = "countsdiff_corrected") -> np.ndarray:
    return adata.layers[key].toarray()


def _cell_ratios(adata: ad.AnnData, key: str = "countsdiff_corrected") -> np.ndarray:
    return cds.model.cell_retention(adata, key).astype(np.float64)


def test_integer_counts_that_keep_every_observed_molecule(trained, tmp_path):
    adata, model = trained
    query = _fresh(adata)
    before = query.X.copy()
    table = model.correct_batches(query, covariate="batch", reference="b0", sampler=_sampler())
    layer = query.layers["countsdiff_corrected"]
    assert isinstance(layer, sp.csr_matrix) and layer.dtype == np.int32 and layer.shape == query.shape
    x, y = query.X.toarray(), layer.toarray()
    assert (y >= 0).all()
    in_b0 = (query.obs["batch"] == "b0").to_numpy()
    np.testing.assert_array_equal(y[in_b0], x[in_b0])  # the reference's cells are unchanged
    r = _cell_ratios(query)[~in_b0]  # each moved cell's own ratios (its cell type's)
    lost, inflated = r <= 1, r > 1
    assert lost.any() and inflated.any()
    assert (y[~in_b0][lost] >= x[~in_b0][lost]).all()  # every observed molecule kept
    assert (y[~in_b0][inflated] <= x[~in_b0][inflated]).all()  # inflated genes thinned back
    assert y[~in_b0][lost].sum() > x[~in_b0][lost].sum()  # and the lost molecules restored
    assert (query.X != before).nnz == 0  # the user's counts untouched
    assert list(table.columns) == ["b1"] and list(table.index) == list(query.var_names)
    pd.testing.assert_frame_equal(query.uns["countsdiff_corrected_retention"], table)
    rec = query.uns["countsdiff"]["countsdiff_corrected"]
    assert rec["operation"] == "correct_batches" and rec["reference"] == "b0" and rec["covariate"] == "batch"
    assert rec["seed"] == 0 and rec["retention"] == "auto" and rec["cells_moved"] == {"b1": int((~in_b0).sum())}
    path = tmp_path / "corrected.h5ad"  # everything written is h5ad-serialisable
    query.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["countsdiff_corrected"].toarray(), y)
    pd.testing.assert_frame_equal(back.uns["countsdiff_corrected_retention"], table, check_freq=False)
    np.testing.assert_array_equal(cds.model.cell_retention(back), cds.model.cell_retention(query))  # read back
    assert (cds.model.cell_retention(query)[in_b0] == 1).all()  # the reference was not moved
    some = np.flatnonzero(~in_b0)[:5]
    np.testing.assert_array_equal(cds.model.cell_retention(query, cells=some), cds.model.cell_retention(query)[some])
    with pytest.raises(ValueError, match="no output of correct_batches under key_added='other'"):
        cds.model.cell_retention(query, "other")


def test_the_known_retention_is_recovered(trained):
    adata, model = trained
    table = model.correct_batches(_fresh(adata), reference="b0", sampler=_sampler())
    est = np.log(table["b1"].to_numpy())
    assert np.corrcoef(est, np.log(_truth()))[0, 1] > 0.9
    assert np.abs(est - np.log(_truth())).max() < 0.35
    back = model.correct_batches(_fresh(adata), reference="b1", sampler=_sampler())  # the other way round
    np.testing.assert_allclose(np.log(back["b0"].to_numpy()), -est, atol=0.1)


def test_defaults_seed_and_training_data(trained):
    adata, model = trained
    a, b, c = _fresh(adata), _fresh(adata), _fresh(adata)
    model.correct_batches(a, sampler=_sampler(3))  # first covariate; the batch with the most training cells
    model.correct_batches(b, covariate="batch", sampler=_sampler(3))
    model.correct_batches(c, sampler=_sampler(4))
    ref = adata.obs["batch"].value_counts().idxmax()
    assert a.uns["countsdiff"]["countsdiff_corrected"]["reference"] == ref
    np.testing.assert_array_equal(_layer(a), _layer(b))
    assert not np.array_equal(_layer(a), _layer(c))
    own = adata.copy()  # adata=None: the model's training data
    model.adata.layers.pop("countsdiff_corrected", None)
    model.correct_batches(sampler=_sampler(3))
    np.testing.assert_array_equal(_layer(model.adata), _layer(a))
    del model.adata.layers["countsdiff_corrected"], model.adata.uns["countsdiff_corrected_retention"]
    model.adata.uns.pop("countsdiff", None)
    np.testing.assert_array_equal(model.adata.X.toarray(), own.X.toarray())


def test_reordered_genes_and_unknown_genes(trained):
    adata, model = trained
    plain = _fresh(adata)
    model.correct_batches(plain, reference="b0", sampler=_sampler(5))
    rng = np.random.default_rng(1)
    order = rng.permutation(N_GENES)
    extra = rng.poisson(3.0, size=(adata.n_obs, 2)).astype(np.float32)
    shuffled = ad.AnnData(X=sp.csr_matrix(np.hstack([adata.X.toarray()[:, order], extra])), obs=adata.obs.copy(),
                          var=pd.DataFrame(index=[*adata.var_names[order], "new_1", "new_2"]))
    table = model.correct_batches(shuffled, reference="b0", sampler=_sampler(5))
    y = _layer(shuffled)
    np.testing.assert_array_equal(y[:, :N_GENES], _layer(plain)[:, order])
    np.testing.assert_array_equal(y[:, N_GENES:], extra)  # genes the model does not know keep their counts
    assert list(table.index) == list(adata.var_names)  # the table is in the model's gene order
    with pytest.raises(ValueError, match=r"2 of the model's 24 genes are missing from adata"):
        model.correct_batches(_fresh(adata)[:, 2:].copy(), reference="b0")


def test_backed_input_equals_in_memory(trained, tmp_path):
    adata, model = trained
    memory = _fresh(adata)
    model.correct_batches(memory, reference="b0", block_size=128, sampler=_sampler(2))
    path = tmp_path / "cells.h5ad"
    _fresh(adata).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    model.correct_batches(backed, reference="b0", block_size=128, sampler=_sampler(2))
    np.testing.assert_array_equal(_layer(backed), _layer(memory))
    backed.file.close()


def test_several_draws_mean_sd_and_rerun(trained):
    adata, model = trained
    query = _fresh(adata)
    model.correct_batches(query, reference="b0", sampler=_sampler(7))
    first = _layer(query)
    model.correct_batches(query, reference="b0", n_samples=4, sampler=_sampler(7))
    np.testing.assert_array_equal(_layer(query), first)  # the layer is the first draw whatever n_samples
    mean, sd = query.layers["countsdiff_corrected_mean"], query.layers["countsdiff_corrected_sd"]
    assert sp.issparse(mean) and mean.dtype == np.float32 and sd.dtype == np.float32
    mean, sd = mean.toarray(), sd.toarray()
    in_b0 = (query.obs["batch"] == "b0").to_numpy()
    np.testing.assert_array_equal(mean[in_b0], query.X.toarray()[in_b0])
    assert (sd[in_b0] == 0).all() and (sd[~in_b0] > 0).any() and (sd >= 0).all()
    total = mean.astype(np.float64) * 4  # a sum of four integer draws
    np.testing.assert_allclose(total, np.round(total), atol=1e-3)
    model.correct_batches(query, reference="b0", sampler=_sampler(7))  # a re-run without draws leaves no stale layer
    assert "countsdiff_corrected_mean" not in query.layers and "countsdiff_corrected_sd" not in query.layers


def test_pooled_reference(trained):
    adata, model = trained
    query = _fresh(adata)
    table = model.correct_batches(query, reference="pooled", sampler=_sampler(1))
    assert list(table.columns) == ["b0", "b1"]
    np.testing.assert_allclose(np.log(table).sum(axis=1), 0.0, atol=1e-9)  # the geometric mean of the batches
    est = np.log(table["b1"] / table["b0"]).to_numpy()
    assert np.corrcoef(est, np.log(_truth()))[0, 1] > 0.9
    y, x = _layer(query), query.X.toarray()
    assert (y >= 0).all()
    for b in ("b0", "b1"):  # every cell moved; the molecules of genes its batch holds fewer of are kept
        rows = (query.obs["batch"] == b).to_numpy()
        lost = table[b].to_numpy() <= 1
        assert (y[rows][:, lost] >= x[rows][:, lost]).all()
    assert query.uns["countsdiff"]["countsdiff_corrected"]["reference"] == "pooled"
    with pytest.raises(ValueError, match="one guidance strength"):
        model.correct_batches(_fresh(adata), reference="pooled", sampler=_sampler(guidance={"batch": 1.0}))
    with pytest.raises(ValueError, match="no single conditional rate to cap"):
        model.correct_batches(_fresh(adata), reference="pooled", sampler=_sampler(guidance_cap=2.0))


def test_every_verb_hands_the_samplers_guidance_cap_to_the_network(trained, monkeypatch):
    """A ``guidance_cap`` set on the sampler reaches the network's rate in every verb that runs a chain (none drops
    it silently); the denoising verbs cap at 1 by default, the others do not cap."""
    import math

    adata, model = trained
    seen: list = []
    rate = model.module.rate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("guidance_cap"))
        return rate(*args, **kwargs)

    monkeypatch.setattr(model.module, "rate", spy)
    small = _fresh(adata)[:40].copy()

    def held_out():
        query = _fresh(small)
        query.layers["hold"] = np.zeros(query.shape, dtype=bool)
        query.layers["hold"][:, :3] = True
        return query
    calls = {
        "correct_batches": lambda s: model.correct_batches(_fresh(small), reference="b0", sampler=s),
        "transfer": lambda s: model.transfer(_fresh(small), covariates={"batch": "b0"}, sampler=s),
        "transfer retention": lambda s: model.transfer(_fresh(small), covariates={"batch": "b0"},
                                                       retention="auto", sampler=s),
        "impute mask": lambda s: model.impute(held_out(), mask_layer="hold", n_samples=1, sampler=s),
        "impute denoise": lambda s: model.impute(_fresh(small), n_samples=1, sampler=s),
        "expression": lambda s: model.get_normalized_expression(_fresh(small), sampler=s),
        "sample": lambda s: model.sample(labels=["type_0"] * 4, covariates={"batch": "b0"}, sampler=s),
    }
    for name, call in calls.items():
        seen.clear()
        call(_sampler(guidance=2.0, guidance_cap=3.0))
        assert seen and set(seen) == {3.0}, name
        seen.clear()
        call(_sampler(guidance=2.0, guidance_cap=math.inf))  # inf: no cap, whatever the verb's default
        assert seen and all(c is None or c == math.inf for c in seen), name
        seen.clear()
        call(_sampler(guidance=2.0))
        default = {1.0} if name in ("impute denoise", "expression") else {None}
        assert set(seen) == default, name


def test_given_retention_and_huge_counts(trained):
    adata, model = trained
    query = _fresh(adata)
    ones = pd.DataFrame({"b1": 1.0}, index=adata.var_names[::-1])  # matched by name
    model.correct_batches(query, reference="b0", retention=ones, sampler=_sampler())
    np.testing.assert_array_equal(_layer(query), query.X.toarray())  # nothing lost, nothing to restore
    assert query.uns["countsdiff"]["countsdiff_corrected"]["retention"] == "given"
    big = _fresh(adata)
    x = big.X.toarray().astype(np.float64)
    b1 = int(np.flatnonzero(big.obs["batch"] == "b1")[0])
    b0 = int(np.flatnonzero(big.obs["batch"] == "b0")[0])
    x[b1, 0] = 3_000_000_017.0  # gene 0 loses molecules in b1: every observed one is kept, exactly
    x[b0, 1] = 2**24 + 1
    big.X = sp.csr_matrix(x)
    model.correct_batches(big, reference="b0", sampler=_sampler())
    layer = big.layers["countsdiff_corrected"]
    assert layer.dtype == np.int64
    assert layer[b0, 1] == 2**24 + 1 and layer[b1, 0] >= 3_000_000_017
    with pytest.raises(ValueError, match=r"no column for the batch\(es\) \['b1'\]"):
        model.correct_batches(_fresh(adata), reference="b0", retention=ones.rename(columns={"b1": "b9"}))
    with pytest.raises(ValueError, match="no value for 1 of the model's genes"):
        model.correct_batches(_fresh(adata), reference="b0", retention=ones.iloc[1:])
    with pytest.raises(TypeError, match="DataFrame"):
        model.correct_batches(_fresh(adata), reference="b0", retention=ones["b1"])


def test_errors(trained, tmp_path):
    adata, model = trained
    q = _fresh(adata)
    with pytest.raises(KeyError, match=r"Unknown covariate 'donor'.*\['batch'\]"):
        model.correct_batches(q, covariate="donor")
    with pytest.raises(KeyError, match="labels_key"):
        model.correct_batches(q, covariate="cell_type")
    with pytest.raises(ValueError, match=r"Unknown reference 'b9'.*\['b0', 'b1'\]"):
        model.correct_batches(q, reference="b9")
    unseen = _fresh(adata)
    unseen.obs["batch"] = unseen.obs["batch"].cat.rename_categories({"b1": "b7"})
    with pytest.raises(ValueError, match=r"values the model was not trained on: \['b7'\]"):
        model.correct_batches(unseen, reference="b0")
    for bad, match in ((0, "n_samples must be >= 1"), (2.5, "whole number"), (True, "integer")):
        with pytest.raises((ValueError, TypeError), match=match):
            model.correct_batches(q, reference="b0", n_samples=bad)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        model.correct_batches(q, reference="b0", block_size=0)
    for key in ("", None):
        with pytest.raises(ValueError, match="key_added must be a non-empty string"):
            model.correct_batches(q, reference="b0", key_added=key)
    q.layers["mine"] = q.X.copy()
    with pytest.raises(ValueError, match=r"adata.layers\['mine'\] already exists and was not written"):
        model.correct_batches(q, reference="b0", key_added="mine")
    q.uns["mine2_retention"] = {"a": 1}
    with pytest.raises(ValueError, match=r"uns\['mine2_retention'\] already exists"):
        model.correct_batches(q, reference="b0", key_added="mine2")
    np.testing.assert_array_equal(q.layers["mine"].toarray(), q.X.toarray())
    logged = _fresh(adata)
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray()))
    with pytest.raises(ValueError, match="non-integer entries"):
        model.correct_batches(logged, reference="b0")
    assert "countsdiff_corrected" not in logged.layers  # nothing half-written
    model.save(tmp_path / "m", overwrite=True)
    bare = cds.CountsDiffModel.load(tmp_path / "m", adata=None)
    with pytest.raises(ValueError, match=r"was loaded without.*retention= as a DataFrame"):
        bare.correct_batches(_fresh(adata), reference="b0")
    with pytest.raises(ValueError, match="no default cells"):
        bare.correct_batches(reference="b0")
    given = _fresh(adata)  # given ratios need no training data
    bare.correct_batches(given, reference="b0", retention=pd.DataFrame({"b1": 1.0}, index=adata.var_names))
    np.testing.assert_array_equal(_layer(given), given.X.toarray())


def test_a_batch_without_shared_labels_is_named():
    adata = _batched(n=300, seed=2, types_of_b1=(2,))  # b1 has only type_2 cells ...
    keep = ~((adata.obs["batch"] == "b0") & (adata.obs["cell_type"] == "type_2")).to_numpy()
    adata = adata[keep].copy()  # ... and b0 has none
    model = _train(adata, steps=2, labels_key="cell_type", categorical_covariate_keys=["batch"])
    with pytest.raises(ValueError, match=r"batch 'b1' shares no cell_type with the reference 'b0' in the model's "
                                         r"training data \('b1' has \['type_2'\], 'b0' has \['type_0', 'type_1'\]\)"):
        model.correct_batches(_fresh(adata), reference="b0")
    with pytest.raises(ValueError, match="anchor of the pooled reference"):
        model.correct_batches(_fresh(adata), reference="pooled")
    ones = pd.DataFrame({"b1": 1.0}, index=adata.var_names)  # given ratios: the cells move, with a warning
    with pytest.warns(UserWarning, match=r"conditions no training cell had \(e.g. cell_type='type_2', batch='b0'\)"):
        model.correct_batches(_fresh(adata), reference="b0", retention=ones, sampler=_sampler())
    plain = _batched(n=120, seed=3)
    no_batch = _train(plain, steps=2, labels_key="cell_type")
    with pytest.raises(ValueError, match="needs a batch covariate"):
        no_batch.correct_batches(_fresh(plain))


def test_the_resource_guard_refuses_before_work(trained, monkeypatch):
    adata, model = trained
    monkeypatch.setattr(cds.settings, "max_work", 1e3)
    with pytest.raises(ValueError, match="entry-evaluations"):
        model.correct_batches(_fresh(adata), reference="b0", n_samples=10**6)
    monkeypatch.setattr(cds.settings, "max_work", 2e11)
    monkeypatch.setattr(cds.settings, "max_memory", 10_000)
    query = _fresh(adata)
    with pytest.raises(ValueError, match="block_size"):
        model.correct_batches(query, reference="b0")
    assert "countsdiff_corrected" not in query.layers


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_other_models_vector_condition_and_guidance(preset):
    from tests.conftest import make_counts

    adata = make_counts(n_obs=90, n_vars=10, seed=6)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      condition_obsm_key="cond")
    torch.manual_seed(0)
    model = cds.CountsDiffModel(adata, preset=preset, backbone_kwargs=TINY, ema_decay=0.9)
    model.train(max_steps=4, **FAST)
    for reference, guidance in (("b1", 1.0), ("pooled", 0.5), ("b0", 2.0)):
        query = _fresh(adata)
        query.obsm["cond"] = adata.obsm["cond"].copy()
        model.correct_batches(query, reference=reference, sampler=_sampler(guidance=guidance))
        y, x = _layer(query), query.X.toarray()
        assert (y >= 0).all() and y.dtype == np.int32
        moved = query.obs["batch"].astype(str).to_numpy() != reference
        lost = (_cell_ratios(query) <= 1) & moved[:, None]
        assert (y[lost] >= x[lost]).all()
    no_cond = _fresh(adata)
    with pytest.raises(KeyError, match="cond"):
        model.correct_batches(no_cond, reference="b0")


def _type_specific(n: int = 900, seed: int = 1) -> ad.AnnData:
    """Batch b1 thins type_0 by the known retention and type_1 by its mirror image; b1 has no type_2 cells."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 2.0, size=(3, N_GENES)) + 1.0
    batch = np.where(rng.random(n) < 0.5, "b0", "b1")
    kind = rng.integers(0, 3, n)
    kind[batch == "b1"] = rng.integers(0, 2, int((batch == "b1").sum()))
    effect = np.stack([_truth(), _truth()[::-1], np.ones(N_GENES)])
    mu = base[kind] * np.where((batch == "b1")[:, None], effect[kind], 1.0)
    x = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{k}" for k in kind]),
                        "batch": pd.Categorical(batch)}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


def test_a_retention_that_differs_by_cell_type_is_recovered_and_used(monkeypatch):
    import countsdiff_sc.model._correction as correction

    adata = _type_specific()
    model = _train(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    seen = []
    real = correction.retention_levels

    def spy(x, r, *args, **kw):
        seen.append(np.asarray(r, np.float64).copy())
        return real(x, r, *args, **kw)

    monkeypatch.setattr(correction, "retention_levels", spy)
    query = _fresh(adata)
    table = model.correct_batches(query, reference="b0", sampler=_sampler())
    by = query.uns["countsdiff_corrected_retention_by_stratum"]
    strata = by["strata"]
    assert list(strata.columns) == ["batch", "cell_type", "cells", "reference cells", "depth change"]
    for i, t in enumerate(strata["cell_type"]):  # the depth its own ratios give the type's average b1 cell
        mean = query.X.toarray()[(query.obs["batch"] == "b1").to_numpy() & (query.obs["cell_type"] == t).to_numpy()]
        mean = mean.mean(axis=0)
        assert strata["depth change"].iloc[i] == pytest.approx((mean / by["ratios"][i]).sum() / mean.sum())
    assert sorted(strata["cell_type"]) == ["type_0", "type_1"] and set(strata["batch"]) == {"b1"}
    own = {t: np.log(by["ratios"][i]) for i, t in enumerate(strata["cell_type"])}
    truth = {"type_0": np.log(_truth()), "type_1": np.log(_truth()[::-1])}
    for t in truth:  # each type's own effect, opposite in the two types
        assert np.corrcoef(own[t], truth[t])[0, 1] > 0.95
        assert np.abs(own[t] - truth[t]).max() < 0.45
    shared = np.log(table["b1"].to_numpy())  # the per-gene ratio averages the two: flat, far from both
    assert all(np.abs(shared - truth[t]).mean() > 2 * np.abs(own[t] - truth[t]).mean() for t in truth)
    in_b1 = query.obs["batch"].to_numpy() == "b1"
    np.testing.assert_allclose(np.vstack(seen), _cell_ratios(query)[in_b1], rtol=1e-6)  # what the chains used
    rec = query.uns["countsdiff"]["countsdiff_corrected"]
    assert rec["retention"] == "auto" and rec["cells_with_own_stratum_ratio"] == int(in_b1.sum())
    # the corrected b1 cells of each type sit at b0's level of that type, which one ratio per gene cannot do
    per_gene = _fresh(adata)
    model.correct_batches(per_gene, reference="b0", retention="per_gene", sampler=_sampler())
    x = query.X.toarray()
    for t in truth:
        rows_b1 = in_b1 & (query.obs["cell_type"].to_numpy() == t)
        rows_b0 = ~in_b1 & (query.obs["cell_type"].to_numpy() == t)
        target = np.log1p(x[rows_b0].mean(0))
        err_auto = np.abs(np.log1p(_layer(query)[rows_b1].mean(0)) - target).mean()
        err_gene = np.abs(np.log1p(_layer(per_gene)[rows_b1].mean(0)) - target).mean()
        assert err_auto < 0.7 * err_gene, (t, err_auto, err_gene)


def test_per_gene_retention_and_cell_types_the_reference_lacks(trained, monkeypatch):
    adata, model = trained
    a, b = _fresh(adata), _fresh(adata)
    a.uns["countsdiff_corrected_retention_by_stratum"] = None  # an earlier run's table ...
    a.uns.setdefault("countsdiff", {})["countsdiff_corrected"] = {"operation": "correct_batches"}
    table = model.correct_batches(a, reference="b0", retention="per_gene", sampler=_sampler(2))
    assert "countsdiff_corrected_retention_by_stratum" not in a.uns  # ... is not left to describe this one
    assert a.uns["countsdiff"]["countsdiff_corrected"]["retention"] == "per_gene"
    model.correct_batches(b, reference="b0", retention=table, sampler=_sampler(2))
    np.testing.assert_array_equal(_layer(a), _layer(b))  # per_gene = the per-gene table applied to every cell
    with pytest.raises(TypeError, match=r"'auto'.*'per_gene'.*got 'per-gene'"):
        model.correct_batches(_fresh(adata), reference="b0", retention="per-gene")

    lacking = _batched(types_of_b1=(0, 1))  # b1 has no type_2: moving b0 to b1 leaves b0's type_2 without a pair
    other = _train(lacking, labels_key="cell_type", categorical_covariate_keys=["batch"])
    q = _fresh(lacking)
    with pytest.warns(UserWarning, match="no training cell had"):
        table = other.correct_batches(q, reference="b1", sampler=_sampler())
    rec = q.uns["countsdiff"]["countsdiff_corrected"]
    in_b0 = q.obs["batch"].to_numpy() == "b0"
    t2 = in_b0 & (q.obs["cell_type"].to_numpy() == "type_2")
    assert rec["cells_with_batch_ratio"] == int(t2.sum()) > 0
    assert rec["cells_with_own_stratum_ratio"] == int((in_b0 & ~t2).sum())
    np.testing.assert_allclose(_cell_ratios(q)[t2], np.broadcast_to(table["b0"].to_numpy(), (t2.sum(), N_GENES)))


def test_a_cell_type_moved_far_in_depth_is_named():
    rng = np.random.default_rng(3)
    adata = _batched(n=600, seed=3)
    x = adata.X.toarray()
    shallow = (adata.obs["batch"] == "b1").to_numpy() & (adata.obs["cell_type"] == "type_1").to_numpy()
    x[shallow] = rng.binomial(x[shallow].astype(np.int64), 0.08)  # one type of b1 at a twelfth of its depth
    adata.X = sp.csr_matrix(x.astype(np.float32))
    model = _train(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])
    query = _fresh(adata)
    with pytest.warns(UserWarning, match=r"1 cell type\(s\).*cell_type='type_1'.*drawn by the model.*per_gene"):
        model.correct_batches(query, reference="b0", sampler=_sampler())
    strata = query.uns["countsdiff_corrected_retention_by_stratum"]["strata"].set_index("cell_type")
    assert strata.loc["type_1", "depth change"] > 4 > strata.loc["type_0", "depth change"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one ratio per gene: nothing to name
        model.correct_batches(_fresh(adata), reference="b0", retention="per_gene", sampler=_sampler())
    shallow_b1 = _batched(n=600, seed=4)
    x = shallow_b1.X.toarray()
    in_b1 = (shallow_b1.obs["batch"] == "b1").to_numpy()
    x[in_b1] = rng.binomial(x[in_b1].astype(np.int64), 0.05)  # the whole batch: one ratio per gene moves it too
    shallow_b1.X = sp.csr_matrix(x.astype(np.float32))
    other = _train(shallow_b1, labels_key="cell_type", categorical_covariate_keys=["batch"])
    with pytest.warns(UserWarning, match=r"3 cell type\(s\).*more than 4x"):
        other.correct_batches(_fresh(shallow_b1), reference="b0", retention="per_gene", sampler=_sampler())


def test_a_model_without_labels_uses_one_ratio_per_gene():
    adata = _batched(n=300, seed=5)
    model = _train(adata, categorical_covariate_keys=["batch"])  # no labels, no other covariate: no strata
    query = _fresh(adata)
    table = model.correct_batches(query, reference="b0", sampler=_sampler())
    assert query.uns["countsdiff"]["countsdiff_corrected"]["retention"] == "per_gene"
    assert "countsdiff_corrected_retention_by_stratum" not in query.uns
    in_b1 = (query.obs["batch"] == "b1").to_numpy()
    np.testing.assert_allclose(cds.model.cell_retention(query)[in_b1],
                               np.broadcast_to(table["b1"].to_numpy(), (in_b1.sum(), N_GENES)), rtol=1e-6)
