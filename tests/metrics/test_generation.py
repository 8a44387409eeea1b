from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from countsdiff_sc.metrics import (
    classifier_auc,
    evaluate_generation,
    gene_statistics_agreement,
    marker_gene_preservation,
    metrics_table,
    sparsity_fidelity,
)


@pytest.fixture
def halves(pbmc):
    """Two random halves of the pbmc cells: same distribution, different cells."""
    perm = np.random.default_rng(0).permutation(pbmc.n_obs)
    return pbmc[np.sort(perm[:350])].copy(), pbmc[np.sort(perm[350:])].copy()


def test_classifier_auc_near_half_for_same_distribution_and_high_for_different(halves):
    real, other = halves
    auc_same = classifier_auc(real, other, n_estimators=30, seed=0)
    assert 0.3 < auc_same < 0.7
    x = real.X.toarray()
    fake = np.random.default_rng(1).poisson(x.mean(axis=0), size=x.shape)  # independent genes: no correlations
    assert classifier_auc(real, fake, n_estimators=30, seed=0) > 0.9
    assert classifier_auc(real, fake, n_estimators=20, features="log1p", seed=0) > 0.9


def test_gene_statistics_identical_and_hand_computed(counts):
    same = gene_statistics_agreement(counts, counts.copy())
    for name, value in same.items():
        assert value == pytest.approx(0.0 if name.endswith("mae") else 1.0, abs=1e-12), name
    real = np.array([[0, 2, 4], [0, 0, 8], [1, 2, 0]])
    gen = np.array([[0, 1, 4], [1, 1, 8]])
    out = gene_statistics_agreement(real, gen, normalize=False)
    mean_r, mean_g = real.mean(axis=0), gen.mean(axis=0)
    assert out["gene_mean_mae"] == pytest.approx(np.mean(np.abs(mean_r - mean_g)))
    assert out["gene_mean_pearson"] == pytest.approx(np.corrcoef(mean_r, mean_g)[0, 1])
    zero_r, zero_g = (real == 0).mean(axis=0), (gen == 0).mean(axis=0)
    assert out["gene_zero_frac_mae"] == pytest.approx(np.mean(np.abs(zero_r - zero_g)))
    assert out["gene_var_mae"] == pytest.approx(np.mean(np.abs(real.var(axis=0) - gen.var(axis=0))))


def test_sparsity_fidelity_values():
    real = np.array([[0, 0, 1, 1], [0, 0, 0, 1]])  # sparsities 0.5, 0.75
    gen = sp.csr_matrix(np.array([[1, 1, 1, 1], [0, 1, 1, 1]]))  # 0.0, 0.25
    out = sparsity_fidelity(real, gen)
    assert out["sparsity_real"] == pytest.approx(0.625)
    assert out["sparsity_generated"] == pytest.approx(0.125)
    assert out["sparsity_abs_diff"] == pytest.approx(0.5)
    assert out["sparsity_w1"] == pytest.approx(0.5)
    assert sparsity_fidelity(real, real)["sparsity_w1"] == 0.0


def test_marker_gene_preservation(pbmc):
    same = marker_gene_preservation(pbmc, pbmc, "bulk_labels", n_top=10)
    assert (same["jaccard"] == 1.0).all() and (same["overlap"] == 1.0).all()
    shuffled = np.random.default_rng(0).permutation(pbmc.obs["bulk_labels"].to_numpy())
    broken = marker_gene_preservation(pbmc, pbmc, "bulk_labels", shuffled, n_top=10)
    assert broken["jaccard"].mean() < 0.5
    with pytest.raises(ValueError, match="generated_labels"):
        marker_gene_preservation(pbmc, pbmc, pbmc.obs["bulk_labels"].to_numpy())


def test_evaluate_generation_table_storage_and_errors(halves, tmp_path):
    real, gen = halves[0][:, :300].copy(), halves[1][:, :300].copy()
    view = real[real.obs["bulk_labels"] != "Dendritic"]
    df = evaluate_generation(view, gen, "bulk_labels", n_estimators=20, n_bootstrap=3, n_top_markers=10)
    assert {"mmd", "swd", "classifier_auc", "gene_mean_pearson", "sparsity_w1", "marker_jaccard"} <= set(df["metric"])
    assert "scfid" not in set(df["metric"])
    assert df.loc[df.metric == "classifier_auc", "std_error"].isna().all()
    assert df.loc[df.metric == "mmd", "std_error"].gt(0).all()
    assert "countsdiff_metrics" not in real.uns  # the real data (a view here) is never written to
    path = tmp_path / "gen.h5ad"
    gen.write_h5ad(path)
    back = metrics_table(ad.read_h5ad(path), "generation")
    np.testing.assert_allclose(back["value"].to_numpy(), df["value"].to_numpy())
    with pytest.raises(ValueError, match="labels_key"):
        evaluate_generation(real, gen, metrics=["marker_genes"])
    with pytest.raises(ValueError, match="genes"):
        evaluate_generation(real, gen[:, :10], metrics=["mmd"])
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_generation(real, gen, metrics=["fid"])


def test_evaluate_generation_scfid_names_the_embedder(pbmc, pbmc_embedder, halves):
    real, gen = halves
    df = evaluate_generation(real, gen, metrics=["scfid", "mmd"], embedder=pbmc_embedder, n_bootstrap=2)
    row = df.set_index("metric").loc["scfid"]
    assert "trained on the reference data" in row["note"]
    assert row["value"] >= 0
