from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.metrics import ScFIDResult, clear_scfid_cache, embed_cells, fit_scfid_embedder, scfid


def _dense(adata) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def test_scfid_zero_against_itself_and_larger_for_corrupted_data(pbmc, pbmc_embedder):
    rng = np.random.default_rng(0)
    x = _dense(pbmc)
    same = scfid(pbmc, pbmc, embedder=pbmc_embedder)
    assert isinstance(same, ScFIDResult)
    assert same.value == pytest.approx(0.0, abs=1e-8)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in x])  # genes permuted within each cell
    noised = rng.poisson(x + 2.0).astype(np.float32)
    half = scfid(pbmc[:350], pbmc[350:], embedder=pbmc_embedder).value
    v_shuffled = scfid(pbmc, shuffled, embedder=pbmc_embedder).value
    v_noised = scfid(pbmc, noised, embedder=pbmc_embedder).value
    assert v_shuffled > 5 * max(half, 1e-3)
    assert v_noised > 2 * max(half, 1e-3)
    assert float(scfid(pbmc, noised, embedder=pbmc_embedder)) == v_noised


def test_default_embedder_is_cached_and_described(pbmc, pbmc_embedder):
    first = fit_scfid_embedder(pbmc, max_epochs=3, accelerator="cpu", seed=0)
    assert fit_scfid_embedder(pbmc, max_epochs=3, accelerator="cpu", seed=0) is first
    res = scfid(pbmc, pbmc, max_epochs=3, accelerator="cpu")  # same settings -> cached model, no training
    assert "trained on the reference data" in res.embedder
    assert "n_latent=20" in res.embedder and "max_epochs=3" in res.embedder
    assert res.n_latent == 20 and res.n_real == res.n_other == pbmc.n_obs


def test_embeddings_are_posterior_means(pbmc, pbmc_embedder):
    z = embed_cells(pbmc_embedder, pbmc[:50])
    assert z.shape == (50, 20)
    np.testing.assert_allclose(z, embed_cells(pbmc_embedder, _dense(pbmc[:50])), rtol=1e-5, atol=1e-6)


def test_gene_mismatch_is_explained(pbmc, pbmc_embedder):
    with pytest.raises(ValueError, match="load_query_data"):
        scfid(pbmc, pbmc[:, :100], embedder=pbmc_embedder)
    renamed = pbmc[:50].copy()
    renamed.var_names = [f"other_{g}" for g in renamed.var_names]
    with pytest.raises(ValueError, match="differ"):
        scfid(pbmc, renamed, embedder=pbmc_embedder)


def test_genes_in_another_order_are_matched_by_name(pbmc, pbmc_embedder):
    reordered = pbmc[:, ::-1]
    assert float(scfid(pbmc, reordered, embedder=pbmc_embedder)) == pytest.approx(
        float(scfid(pbmc, pbmc, embedder=pbmc_embedder)), abs=1e-6)
    np.testing.assert_allclose(embed_cells(pbmc_embedder, reordered[:30]), embed_cells(pbmc_embedder, pbmc[:30]),
                               rtol=1e-5, atol=1e-6)


def test_embedder_cache_is_bounded(monkeypatch):
    from countsdiff_sc.metrics import _scfid

    monkeypatch.setattr(_scfid, "_EMBEDDER_CACHE", type(_scfid._EMBEDDER_CACHE)())
    for i in range(_scfid.SCFID_CACHE_SIZE + 2):
        _scfid._cache_put(f"k{i}", object())
    assert list(_scfid._EMBEDDER_CACHE) == [f"k{i}" for i in range(2, _scfid.SCFID_CACHE_SIZE + 2)]
    assert _scfid._cache_get("k2") is not None  # used: now the most recent, the next eviction takes k3
    _scfid._cache_put("new", object())
    assert "k3" not in _scfid._EMBEDDER_CACHE and "k2" in _scfid._EMBEDDER_CACHE


def test_user_supplied_embedder_is_named(pbmc, pbmc_embedder):
    from scvi.model import SCVI

    user = pbmc[:200].copy()
    SCVI.setup_anndata(user)
    model = SCVI(user, n_latent=5)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    res = scfid(pbmc[:100], pbmc[100:200], embedder=model)
    assert res.embedder.startswith("user-supplied SCVI(n_latent=5")
    assert res.n_latent == 5


def test_cache_dir_roundtrip_and_global_rng_untouched(pbmc, tmp_path):
    small = pbmc[:150].copy()
    np.random.seed(7)  # noqa: NPY002 - checking that the legacy global state is restored
    expected_next = np.random.random()  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    first = fit_scfid_embedder(small, max_epochs=1, accelerator="cpu", cache_dir=tmp_path)
    assert np.random.random() == expected_next  # noqa: NPY002
    assert any(p.name.startswith("scfid_scvi_") for p in tmp_path.iterdir())
    z1 = embed_cells(first, small)
    clear_scfid_cache()
    second = fit_scfid_embedder(small, max_epochs=1, accelerator="cpu", cache_dir=tmp_path)
    assert second is not first
    np.testing.assert_allclose(embed_cells(second, small), z1, rtol=1e-5, atol=1e-6)


def test_reference_must_be_counts(pbmc):
    with pytest.raises(ValueError, match="non-integer"):
        fit_scfid_embedder(_dense(pbmc[:50]) + 0.5, max_epochs=1)
