from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import countsdiff_sc as cds
from countsdiff_sc.baselines import GaussianDDPMGenerator

SMALL = {"n_hidden": 32, "n_layers": 1, "dim_emb": 16, "n_timesteps": 200}


@pytest.fixture(scope="module")
def two_groups() -> ad.AnnData:
    """Two well separated Poisson populations on 6 genes, labelled 'lo' / 'hi'."""
    rng = np.random.default_rng(0)
    lo = rng.poisson(0.5, size=(300, 6))
    hi = rng.poisson(8.0, size=(300, 6))
    obs = pd.DataFrame({"group": ["lo"] * 300 + ["hi"] * 300}, index=[f"c{i}" for i in range(600)])
    adata = ad.AnnData(X=sp.csr_matrix(np.vstack([lo, hi]).astype(np.float32)), obs=obs)
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture(scope="module")
def fitted(two_groups: ad.AnnData) -> GaussianDDPMGenerator:
    return GaussianDDPMGenerator(**SMALL).fit(two_groups, layer="counts", labels_key="group", max_steps=600,
                                             batch_size=128, lr=3e-3, warmup_steps=20, progress=False)


def test_sample_shape_dtype_nonnegative(fitted: GaussianDDPMGenerator, two_groups: ad.AnnData) -> None:
    gen = fitted.sample(50, labels="hi", n_steps=20, seed=0)
    assert gen.shape == (50, 6)
    x = gen.X.toarray()
    assert gen.X.dtype == np.float32
    assert np.all(x >= 0) and np.array_equal(x, np.round(x))
    assert list(gen.var_names) == list(two_groups.var_names)
    assert (gen.obs["group"] == "hi").all()
    assert gen.uns["countsdiff"]["sample"]["method"] == "gaussian_ddpm"
    assert not fitted.history_.empty and {"step", "train_loss"} <= set(fitted.history_.columns)


def test_sample_deterministic(fitted: GaussianDDPMGenerator) -> None:
    a = fitted.sample(labels=["lo", "hi", "hi"], n_steps=10, guidance=2.0, seed=3).X.toarray()
    b = fitted.sample(labels=["lo", "hi", "hi"], n_steps=10, guidance=2.0, seed=3).X.toarray()
    c = fitted.sample(labels=["lo", "hi", "hi"], n_steps=10, guidance=2.0, seed=4).X.toarray()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_deterministic(two_groups: ad.AnnData) -> None:
    kw = {"max_steps": 20, "batch_size": 64, "progress": False, "seed": 1}
    g1 = GaussianDDPMGenerator(**SMALL).fit(two_groups, **kw)
    g2 = GaussianDDPMGenerator(**SMALL).fit(two_groups, **kw)
    assert np.array_equal(g1.sample(10, n_steps=5, seed=0).X.toarray(), g2.sample(10, n_steps=5, seed=0).X.toarray())
    assert g1.history_.equals(g2.history_)


def test_learned_means_per_label(fitted: GaussianDDPMGenerator) -> None:
    lo = fitted.sample(300, labels="lo", n_steps=50, seed=1).X.toarray()
    hi = fitted.sample(300, labels="hi", n_steps=50, seed=2).X.toarray()
    # true means 0.5 and 8: the log1p-space model must put the groups at the right scale
    assert 4.0 < hi.mean() < 12.0
    assert lo.mean() < 1.5
    unc = fitted.sample(300, n_steps=50, seed=3).X.toarray()
    assert 1.5 < unc.mean() < 7.0  # a mixture of both groups


def test_unconditional_standardize_off_and_cosine() -> None:
    adata = cds.datasets.synthetic_nb(n_cells=400, seed=0)
    g = GaussianDDPMGenerator(**SMALL, beta_schedule="cosine", standardize=False)
    g.fit(adata, max_steps=200, batch_size=128, progress=False)
    out = g.sample(100, n_steps=25, seed=0, return_log=True)
    assert out.shape == (100, 10) and np.isfinite(out.layers["log1p_sample"]).all()
    assert np.all(out.X.toarray() >= 0)
    assert g.n_params == sum(p.numel() for p in g.model_.net.parameters()) > 0


def test_same_size_as_countsdiff_mlp() -> None:
    from countsdiff_sc.nn import ResidualMLPDenoiser

    adata = cds.datasets.synthetic_nb(n_cells=50, seed=0)
    g = GaussianDDPMGenerator().fit(adata, max_steps=1, progress=False)
    ref = ResidualMLPDenoiser(10)
    assert g.n_params == sum(p.numel() for p in ref.parameters())


def test_to_counts() -> None:
    y = np.array([-3.0, 0.0, np.log(1.4), np.log(1.6), np.log(101.0), 1e6])
    out = GaussianDDPMGenerator.to_counts(y, max_log=np.log(1001.0))
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 100, 1000])
    assert out.dtype == np.float32


def test_errors(fitted: GaussianDDPMGenerator, two_groups: ad.AnnData) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianDDPMGenerator().sample(5)
    with pytest.raises(ValueError, match="beta_schedule"):
        GaussianDDPMGenerator(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="p_uncond"):
        GaussianDDPMGenerator(p_uncond=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        GaussianDDPMGenerator(**SMALL).fit(two_groups, max_steps=0)
    with pytest.raises(KeyError, match="nope"):
        GaussianDDPMGenerator(**SMALL).fit(two_groups, labels_key="nope", max_steps=1)
    with pytest.raises(KeyError, match="missing_layer"):
        GaussianDDPMGenerator(**SMALL).fit(two_groups, layer="missing_layer", max_steps=1)
    bad = two_groups.copy()
    bad.X = np.log1p(bad.X.toarray())
    with pytest.raises(ValueError, match="non-integer"):
        GaussianDDPMGenerator(**SMALL).fit(bad, max_steps=1)
    with pytest.raises(ValueError, match="Unknown group"):
        fitted.sample(3, labels="mid")
    with pytest.raises(ValueError, match="3 cells"):
        fitted.sample(3, labels=["lo", "hi"])
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample()
    with pytest.raises(ValueError, match="guidance"):
        fitted.sample(3, labels="lo", guidance=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        fitted.sample(3, n_steps=0)
    unlabelled = GaussianDDPMGenerator(**SMALL).fit(two_groups, max_steps=2, progress=False)
    with pytest.raises(ValueError, match="without labels_key"):
        unlabelled.sample(3, labels="lo")


@pytest.fixture(scope="module")
def correlated() -> ad.AnnData:
    """200 genes (more than the hidden width) with a rank-3 log-rate structure and two labels 'a' / 'b' that raise
    the first and the second half of the genes, respectively."""
    rng = np.random.default_rng(0)
    n, g = 600, 200
    z = rng.normal(size=(n, 3))
    w = rng.normal(scale=0.4, size=(3, g))
    base = rng.uniform(-1.0, 1.5, size=g)
    lab = np.repeat(["a", "b"], n // 2)
    shift = np.zeros((n, g))
    shift[lab == "a", : g // 2] = 1.0
    shift[lab == "b", g // 2:] = 1.0
    x = rng.poisson(np.exp(base + z @ w + shift)).astype(np.float32)
    return ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame({"group": lab}, index=[f"c{i}" for i in range(n)]))


def test_more_genes_than_hidden_units(correlated: ad.AnnData) -> None:
    """Regression: with n_genes > n_hidden the noise could not pass the hidden layers (loss stalled at about
    1 - n_hidden / n_genes, samples pinned to the x0-clipping bounds, ~2.4x too many counts, no label effect)."""
    import torch

    g = GaussianDDPMGenerator(**SMALL).fit(correlated, labels_key="group", max_steps=300, batch_size=128, lr=3e-3,
                                          warmup_steps=20, progress=False)
    x = correlated.X.toarray()
    lab = correlated.obs["group"].to_numpy()
    # one-step denoising: never worse than the independent-Gaussian predictor eps_lin = sqrt(1 - abar) y_t
    y0 = torch.as_tensor((np.log1p(x) - g.mean_) / g.std_)
    codes = torch.as_tensor((lab == "b").astype(np.int64))[:, None]
    net = g.model_.network(use_ema=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (50, 100, 200):
            ab = float(g.diffusion.alpha_bars[t])
            eps = torch.randn(y0.shape, generator=gen)
            y_t = ab**0.5 * y0 + (1 - ab) ** 0.5 * eps
            mse = float(((net(y_t, torch.full((len(y_t),), t), codes) - eps) ** 2).mean())
            assert mse < float((((1 - ab) ** 0.5 * y_t - eps) ** 2).mean()) + 0.02, t
    half = x.shape[1] // 2
    contrast = {}
    for label in ("a", "b"):
        s = g.sample(300, labels=label, n_steps=50, seed=1).X.toarray()
        r = x[lab == label]
        assert s.sum(1).mean() == pytest.approx(r.sum(1).mean(), rel=0.25)
        assert abs((s == 0).mean() - (r == 0).mean()) < 0.05
        d = np.abs(np.log1p(s.mean(0)) - np.log1p(r.mean(0)))
        assert d.mean() < 0.2 and d.max() < 0.6
        m = np.log1p(s.mean(0))
        contrast[label] = m[:half].mean() - m[half:].mean()  # real: +0.72 for 'a', -0.69 for 'b'
    assert contrast["a"] > 0.4 and contrast["b"] < -0.4


def test_untrained_network_is_gaussian_model() -> None:
    """The zero-initialised head leaves the parameter-free skip: the posterior-mean noise of Gaussian genes."""
    import torch

    from countsdiff_sc.baselines._gaussian_ddpm import _NoiseMLP
    from countsdiff_sc.diffusion import GaussianDiffusion, linear_beta_schedule

    abar = GaussianDiffusion(linear_beta_schedule(100)).alpha_bars
    mu, var = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 4.0, 0.25])
    net = _NoiseMLP(3, abar, mu, var, n_hidden=8, n_layers=1, dim_emb=4)
    y_t, t = torch.randn(5, 3), torch.tensor([1, 10, 50, 99, 100])
    ab = abar[t].float()[:, None]
    expected = (1 - ab).sqrt() * (y_t - ab.sqrt() * mu) / (ab * var + 1 - ab)
    torch.testing.assert_close(net(y_t, t), expected)
