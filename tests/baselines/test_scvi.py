from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.baselines import SCVIImputation, impute_scvi

pytestmark = pytest.mark.filterwarnings(
    "ignore:The number of training batches", "ignore:.*num_workers", "ignore:Category .* has fewer than 3 cells"
)

_FAST = {"max_epochs": 2, "n_latent": 4, "n_hidden": 32, "n_posterior_samples": 3, "progress_bar": False}


@pytest.fixture(scope="module")
def trained(_prepared):
    adata = _prepared.copy()
    res = impute_scvi(adata, ("countsdiff_split", "train"), labels_key="bulk_labels", seed=0, **_FAST)
    return adata, res


def test_outputs_shape_finite_nonnegative_observed_copied(trained):
    from scvi.model import SCVI

    adata, res = trained
    assert isinstance(res, SCVIImputation) and isinstance(res.model, SCVI)
    mask = adata.layers["countsdiff_mask"]
    x = adata.X.toarray()
    for arr, key in [(res.imputed, "scvi_imputed"), (res.sample, "scvi_sample")]:
        assert arr.shape == adata.shape and arr.dtype == np.float32
        assert np.isfinite(arr).all() and (arr >= 0).all()
        np.testing.assert_array_equal(arr[~mask], x[~mask])
        np.testing.assert_array_equal(adata.layers[key], arr)
    assert np.array_equal(res.sample, np.round(res.sample))
    assert res.imputed[mask].std() > 0  # not a constant fill
    rec = adata.uns["countsdiff"]["scvi_imputed"]
    assert rec["method"] == "scvi" and rec["labels_key"] == "bulk_labels" and rec["trained"] is True
    # the user's AnnData is not registered with scvi-tools
    assert "_scvi_uuid" not in adata.uns and "_scvi_manager_uuid" not in adata.uns


def test_library_correction_matches_observed_total(trained):
    """Step 3 of impute_scvi: on the observed genes the corrected expectation sums to the observed library."""
    from countsdiff_sc.baselines._scvi import _posterior_estimates

    adata, res = trained
    rng = np.random.default_rng(0)
    x = adata.X.toarray()[:40]
    observed = rng.random(x.shape) > 0.5
    q_input = np.where(observed, x, 0).astype(np.float32)
    lib = q_input.sum(1).astype(np.float64)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()[:40]
    est, draw = _posterior_estimates(res.model, q_input, lib, observed, labels, 4, 128, 0)
    np.testing.assert_allclose(np.where(observed, est, 0).sum(1), lib, rtol=1e-6)
    assert np.isfinite(draw).all() and (draw >= 0).all()
    # without the correction (plain decoder mean at the observed library) the held-out genes would be lower
    plain = res.model.get_likelihood_parameters(
        adata=_query(adata, q_input, labels, res.model), n_samples=4, give_mean=True
    )["mean"]
    assert est[~observed].sum() > plain[~observed].sum()


def _query(adata, q_input, labels, model):
    import anndata as ad
    import pandas as pd

    q = ad.AnnData(X=sp.csr_matrix(q_input), var=pd.DataFrame(index=model.adata.var_names))
    q.obs_names = [f"q{i}" for i in range(q.n_obs)]
    q.obs["_countsdiff_label"] = pd.Categorical(labels)
    return q


def test_reused_model_and_no_leak_of_held_out_truth(trained):
    adata, res = trained
    poisoned = adata.copy()
    x = poisoned.X.toarray()
    mask = poisoned.layers["countsdiff_mask"]
    x[mask] = 500
    poisoned.X = sp.csr_matrix(x)
    again = impute_scvi(
        poisoned, ("countsdiff_split", "train"), labels_key="bulk_labels", model=res.model, seed=0, **_FAST
    )
    assert again.model is res.model
    assert poisoned.uns["countsdiff"]["scvi_imputed"]["trained"] is False
    np.testing.assert_allclose(again.imputed[mask], res.imputed[mask], rtol=1e-5)
    np.testing.assert_array_equal(again.sample[mask], res.sample[mask])


def test_without_labels_reference_none_zinb(_prepared):
    adata = _prepared[:300, :200].copy()
    with pytest.warns(UserWarning, match="belong to reference cells"):
        res = impute_scvi(adata, None, seed=1, key_added="s", sample_key_added="t", gene_likelihood="zinb", **_FAST)
    mask = adata.layers["countsdiff_mask"]
    assert np.isfinite(res.imputed).all() and (res.imputed[mask] >= 0).all()
    assert adata.uns["countsdiff"]["s"]["gene_likelihood"] == "zinb"
    assert adata.uns["countsdiff"]["t"]["output"] == "posterior predictive draw"


def test_cell_without_observed_counts_gets_zero(trained):
    adata, res = trained
    adata = adata.copy()
    test_cell = int(np.flatnonzero(adata.layers["countsdiff_mask"].any(1))[0])
    adata.layers["countsdiff_mask"][test_cell] = True
    with pytest.warns(UserWarning, match="no observed counts"):
        again = impute_scvi(adata, None, labels_key="bulk_labels", model=res.model, **_FAST)
    assert (again.imputed[test_cell] == 0).all() and (again.sample[test_cell] == 0).all()
    assert adata.uns["countsdiff"]["scvi_imputed"]["n_cells_no_observed_counts"] == 1


def test_errors(trained, _prepared):
    adata, res = trained
    adata = adata.copy()
    with pytest.raises(ValueError, match="gene_likelihood"):
        impute_scvi(adata, ("countsdiff_split", "train"), gene_likelihood="normal")
    with pytest.raises(ValueError, match="n_posterior_samples"):
        impute_scvi(adata, ("countsdiff_split", "train"), n_posterior_samples=0)
    with pytest.raises(ValueError, match="sample_key_added"):
        impute_scvi(adata, ("countsdiff_split", "train"), sample_key_added="scvi_imputed")
    with pytest.raises(ValueError, match="label covariate"):
        impute_scvi(adata, ("countsdiff_split", "train"), model=res.model, **_FAST)
    with pytest.raises(KeyError, match="Available layers"):
        impute_scvi(adata, ("countsdiff_split", "train"), mask_layer="missing", **_FAST)
    # labels of cells to impute that the reference never saw
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    ref = (adata.obs["countsdiff_split"] == "train").to_numpy() & (labels != "CD14+ Monocyte")
    with pytest.raises(ValueError, match="do not occur in the reference"):
        impute_scvi(adata, ref, labels_key="bulk_labels", **_FAST)  # raised before any training
