"""``sample``'s safeguards: the warning for models trained on valid entries only, and the opt-in guidance cap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import countsdiff_sc as cds
from tests.model._golden import load_models

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"sampler": cds.Sampler(n_steps=3, progress=False, seed=0)}


@pytest.fixture(scope="module")
def models():
    return load_models()  # a: set up with valid_layer="valid"; b: without a validity layer


def test_sampling_a_model_trained_on_valid_entries_warns_once_per_call(models):
    a, b = models
    labels = ["type_0"] * 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a.sample(labels=labels, conditions=np.ones((5, 2), np.float32),
                 sampler=cds.Sampler(n_steps=3, progress=False, seed=0, batch_size=2))  # 3 batches
    ours = [w for w in caught if "valid_layer" in str(w.message)]
    assert len(ours) == 1 and ours[0].category is UserWarning
    assert ours[0].filename == __file__  # points at the caller's line
    message = str(ours[0].message)
    assert "valid_layer='valid'" in message and "too few zeros" in message and "train on all entries" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model set up without a validity layer samples silently
        b.sample(labels=["type_1"] * 3, covariates={"batch": "b0"}, **QUIET)
    assert "too few zeros" in type(a).sample.__doc__


def test_guidance_cap_is_opt_in_and_recorded(models):
    _, b = models
    kw = {"labels": ["type_1"] * 6, "covariates": {"batch": "b0"}}
    base = cds.Sampler(n_steps=3, progress=False, seed=1, guidance=3.0)
    free = b.sample(sampler=base, **kw)
    assert free.uns["countsdiff"]["sample"]["guidance_cap"] == "None"  # stored h5ad-safe
    assert (b.sample(sampler=base.replace(guidance_cap=None), **kw).X != free.X).nnz == 0  # default: no cap
    loose = b.sample(sampler=base.replace(guidance_cap=1e30), **kw)  # a cap that never binds leaves the draws alone
    assert (loose.X != free.X).nnz == 0 and loose.uns["countsdiff"]["sample"]["guidance_cap"] == 1e30
    tight = b.sample(sampler=base.replace(guidance_cap=1.0), **kw)
    x = tight.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    with pytest.raises(ValueError, match="guidance_cap must be None, a number >= 1"):
        base.replace(guidance_cap=0.5)
    lifted = b.sample(sampler=base.replace(guidance_cap=float("inf")), **kw)  # inf: no cap, the same draws
    assert (lifted.X != free.X).nnz == 0
