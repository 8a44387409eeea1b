"""``time_grid=`` and ``step_rule=`` of the sampling verbs: passed down, recorded, defaults unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from countsdiff_sc.diffusion import n_evaluations
from tests.model._golden import golden_adata, load_models

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"n_steps": 4, "progress": False}


@pytest.fixture(scope="module")
def models():
    return load_models()


def _count_rate_calls(model, monkeypatch) -> list:
    calls = []
    rate = model.module.rate

    def counting(*args, **kwargs):
        calls.append(1)
        return rate(*args, **kwargs)

    monkeypatch.setattr(model.module, "rate", counting)
    return calls


def test_sample_passes_grid_and_rule_down_and_records_them(models, monkeypatch):
    a, _ = models
    kw = {"labels": ["type_0"] * 4, "conditions": np.ones((4, 2), np.float32), "seed": 3, **QUIET}
    default = a.sample(**kw)
    explicit = a.sample(time_grid="uniform", step_rule="euler", **kw)
    assert np.array_equal(default.X.toarray(), explicit.X.toarray())
    assert default.uns["countsdiff"]["sample"]["time_grid"] == "uniform"
    assert default.uns["countsdiff"]["sample"]["step_rule"] == "euler"
    calls = _count_rate_calls(a, monkeypatch)
    gen = a.sample(time_grid="logit", step_rule="trapezoid", **kw)
    assert len(calls) == n_evaluations(4, a.module.schedule, grid="logit", step_rule="trapezoid") == 8
    params = gen.uns["countsdiff"]["sample"]
    assert params["time_grid"] == "logit" and params["step_rule"] == "trapezoid"
    x = gen.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))


def test_impute_passes_grid_and_rule_down_and_keeps_observed_entries(models, monkeypatch):
    _, b = models  # discrete Blackout schedule: snapped midpoints
    adata = golden_adata()
    mask = adata.layers["mask"]
    calls = _count_rate_calls(b, monkeypatch)
    imp, _ = b.impute(adata, mask_layer="mask", n_samples=2, seed=0, time_grid="p", step_rule="trapezoid",
                      resample_iters=1, batch_size=10_000, **QUIET)
    assert len(calls) == n_evaluations(4, b.module.schedule, grid="p", step_rule="trapezoid")
    x = adata.X.toarray()
    assert np.array_equal(imp[~mask], x[~mask])
    assert np.isfinite(imp).all() and (imp >= 0).all()
    params = adata.uns["countsdiff"]["countsdiff_imputed"]
    assert params["time_grid"] == "p" and params["step_rule"] == "trapezoid"


def test_impute_defaults_follow_the_preset(models, monkeypatch):
    # default preset: RePaint with 10 trapezoid steps run twice (40 evaluations per chain, measured in
    # repaint_budget.md); a model of 0.1 loads with preset="paper": the paper's 19 Euler steps
    import countsdiff_sc as cds
    from tests.conftest import make_counts

    a, _ = models
    assert a.preset == "paper"
    adata = golden_adata()
    calls = _count_rate_calls(a, monkeypatch)
    a.impute(adata, mask_layer="mask", n_samples=2, sampler=cds.Sampler(seed=0, progress=False))
    params = adata.uns["countsdiff"]["countsdiff_imputed"]
    assert (params["n_steps"], params["step_rule"], params["resample_iters"], params["guidance"]) == (
        19, "euler", 1, 0.5)
    assert len(calls) == 19
    data = make_counts(n_obs=30, n_vars=6)
    data.layers["mask"] = np.random.default_rng(0).random(data.shape) < 0.2
    cds.CountsDiffModel.setup_anndata(data, labels_key="cell_type")
    fresh = cds.CountsDiffModel(data, backbone_kwargs={"n_hidden": 8, "n_layers": 1, "dim_emb": 4})
    calls = _count_rate_calls(fresh, monkeypatch)
    fresh.impute(data, mask_layer="mask", n_samples=2, sampler=cds.Sampler(seed=0, progress=False))
    params = data.uns["countsdiff"]["countsdiff_imputed"]
    assert (params["n_steps"], params["step_rule"], params["resample_iters"]) == (10, "trapezoid", 2)
    assert params["time_grid"] == "uniform"
    assert len(calls) == 2 * n_evaluations(10, fresh.module.schedule, step_rule="trapezoid") == 40



def test_interpolate_takes_the_options(models):
    a, _ = models
    path = a.interpolate(golden_adata(), "type_0", "type_1", weights=[0.0, 1.0], n_cells=3, seed=0,
                         time_grid="power", step_rule="trapezoid", **QUIET)
    assert path.uns["countsdiff"]["interpolation"]["step_rule"] == "trapezoid"


def test_unknown_options_are_refused(models):
    a, _ = models
    with pytest.raises(ValueError, match="time_grid"):
        a.sample(n_samples=2, time_grid="cosine", **QUIET)
    with pytest.raises(ValueError, match="step_rule"):
        a.sample(n_samples=2, step_rule="heun", **QUIET)


def test_impute_known_is_passed_down_recorded_and_checked(models):
    a, _ = models
    out = {}
    for known in ("path", "redraw"):
        adata = golden_adata()
        kw = {"known": known} if known == "redraw" else {}
        out[known], _ = a.impute(adata, mask_layer="mask", n_samples=2, seed=0, **kw, **QUIET)
        assert adata.uns["countsdiff"]["countsdiff_imputed"]["known"] == known
        mask, x = adata.layers["mask"], adata.X.toarray()
        assert np.array_equal(out[known][~mask], x[~mask])
    assert not np.array_equal(out["path"], out["redraw"])  # the redraw consumes its own draws: it reached repaint
    with pytest.raises(ValueError, match="known"):
        a.impute(golden_adata(), mask_layer="mask", known="fresh", **QUIET)
