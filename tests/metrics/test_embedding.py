from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

from countsdiff_sc.metrics import clisi, evaluate_embedding, leiden_nmi_ari, metrics_table, silhouette_cosine


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, size=(3, 8))
    x = np.vstack([c + rng.normal(size=(80, 8)) for c in centers])
    return x, np.repeat(["a", "b", "c"], 80)


def test_silhouette_cosine_matches_sklearn(blobs):
    x, labels = blobs
    raw = silhouette_score(x, labels, metric="cosine")
    assert silhouette_cosine(x, labels, rescale=False) == pytest.approx(raw)
    assert silhouette_cosine(x, labels) == pytest.approx((raw + 1) / 2)


def test_clisi_pure_and_mixed(blobs):
    x, labels = blobs
    assert clisi(x, labels, n_neighbors=30) == pytest.approx(1.0, abs=1e-3)
    assert clisi(x, labels, n_neighbors=30, scale=True) == pytest.approx(1.0, abs=1e-3)
    mixed = np.random.default_rng(1).permutation(labels)
    assert clisi(x, mixed, n_neighbors=30) > 2.0


def test_lisi_matches_scib_metrics():
    import scib_metrics

    from countsdiff_sc.metrics._embedding import _knn, lisi_per_cell

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(60, 4)), rng.normal(0.8, 1.0, size=(60, 4)), 3 * rng.normal(size=(40, 4))])
    labels = np.repeat(["a", "b", "c"], [60, 60, 40])
    dist, idx = _knn(x, 45)
    nn = scib_metrics.nearest_neighbors.NeighborsResults(indices=idx, distances=dist)
    ours = lisi_per_cell(dist, idx, labels, perplexity=15.0)
    np.testing.assert_allclose(ours, np.asarray(scib_metrics.lisi_knn(nn, labels)), rtol=1e-4)
    assert clisi(x, labels, n_neighbors=45, scale=True) == pytest.approx(
        float(scib_metrics.clisi_knn(nn, labels)), rel=1e-4
    )


def test_leiden_sweep_and_rules(blobs):
    x, labels = blobs
    out = leiden_nmi_ari(x, labels, resolutions=[0.05, 0.3, 1.0, 3.0])
    assert out["ari"] == pytest.approx(1.0) and out["nmi"] == pytest.approx(1.0)
    assert list(out["sweep"]["resolution"]) == [0.05, 0.3, 1.0, 3.0]
    noisy = np.random.default_rng(2).normal(size=(240, 5))
    sep = leiden_nmi_ari(noisy, labels, resolutions=[0.2, 1.0, 2.0], rule="separate")
    by_ari = leiden_nmi_ari(noisy, labels, resolutions=[0.2, 1.0, 2.0], rule="max_ari")
    by_nmi = leiden_nmi_ari(noisy, labels, resolutions=[0.2, 1.0, 2.0], rule="max_nmi")
    assert sep["ari"] == by_ari["ari"] == sep["sweep"]["ari"].max()
    assert sep["nmi"] == by_nmi["nmi"] == sep["sweep"]["nmi"].max()
    assert by_ari["nmi"] <= sep["nmi"] and by_nmi["ari"] <= sep["ari"]
    with pytest.raises(ValueError, match="rule"):
        leiden_nmi_ari(x, labels, rule="best")


def test_evaluate_embedding_table(blobs, tmp_path):
    x, labels = blobs
    obs = pd.DataFrame({"ct": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    obs.loc["c0", "ct"] = np.nan
    adata = ad.AnnData(np.zeros((len(labels), 2), dtype=np.float32), obs=obs)
    adata.obsm["X_good"] = x
    adata.obsm["X_noise"] = np.random.default_rng(3).normal(size=x.shape)
    df = evaluate_embedding(adata, ["X_good", "X_noise"], "ct", resolutions=[0.1, 0.5, 1.0], lisi_neighbors=30)
    assert len(df) == 2 * 5 and (df["n_cells"] == len(labels) - 1).all()
    good = df[df.embedding == "X_good"].set_index("metric")["value"]
    noise = df[df.embedding == "X_noise"].set_index("metric")["value"]
    assert good["ari"] > noise["ari"] and good["silhouette_cosine"] > noise["silhouette_cosine"]
    assert good["clisi"] < noise["clisi"]
    assert df.loc[df.metric == "ari", "resolution"].notna().all()
    path = tmp_path / "emb.h5ad"
    adata.write_h5ad(path)
    back = metrics_table(ad.read_h5ad(path), "embedding")
    assert list(back.columns[:3]) == ["embedding", "metric", "value"]
    np.testing.assert_allclose(back["value"].to_numpy(), df["value"].to_numpy())
    with pytest.raises(KeyError, match="X_dice"):
        evaluate_embedding(adata, "X_dice", "ct")
    with pytest.raises(KeyError, match="cell_type"):
        evaluate_embedding(adata, "X_good", "cell_type")
