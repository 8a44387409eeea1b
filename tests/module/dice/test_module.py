"""DICEModule: frozen projection buffers, the training forward pass and loss, and that the prior is learnable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from countsdiff_sc.module import DICEModule
from countsdiff_sc.module.dice import fit_projection, project

SMALL = {"n_hidden": 16, "n_blocks": 1, "dim_time": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


def counts(n=300, g=40, seed=0):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(1.0, 2.0, size=(1, g)) * rng.uniform(0.5, 2.0, size=(n, 1))
    x = rng.poisson(rates).astype(np.float32)
    x[0] = 0  # an empty cell must stay finite
    return x


def test_unfitted_module_refuses_to_sample():
    module = DICEModule(n_input=10, n_latent=3, **SMALL)
    with pytest.raises(ValueError, match="not been fitted"):
        module.gibbs(torch.zeros(2, 3), np.array([1.0]), n_chains=1)
    with pytest.raises(ValueError, match="shape"):
        module.set_projection(np.zeros(9), np.ones(10), np.zeros(10), np.zeros((10, 3)), 1.0)


@pytest.mark.parametrize(("scale", "max_value"), [(True, 10.0), (True, 1.0), (False, None)])
def test_module_projection_is_the_fitted_projection(scale, max_value):
    """The float32 buffers reproduce the float64 projection of the fit."""
    x = counts()
    proj = fit_projection(x, n_latent=4, scale=scale, max_value=max_value)
    module = DICEModule(n_input=x.shape[1], n_latent=4, scale=scale, max_value=max_value, **SMALL)
    module.set_projection(proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings, proj.latent_scale)
    ours = module.project(torch.from_numpy(x)).numpy()
    assert ours.dtype == np.float32 and np.all(np.isfinite(ours))
    stats = [torch.from_numpy(a) for a in (proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings)]
    ref = project(torch.from_numpy(x.astype(np.float64)), *stats, scale=scale, max_value=max_value).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    z = module.transform(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose((z - proj.pca_mean) @ proj.loadings, ref, rtol=1e-4, atol=1e-4)
    var = ours.var(0, ddof=1)
    assert float(module.latent_scale) == pytest.approx(math.sqrt(var.mean()), rel=1e-4)


def test_forward_and_loss():
    x = counts()
    proj = fit_projection(x, n_latent=4)
    module = DICEModule(n_input=x.shape[1], n_latent=4, n_labels=2, use_labels=True, mixup_prob=0.9, **SMALL)
    module.set_projection(proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings, proj.latent_scale)
    tensors = {REGISTRY_KEYS.X_KEY: torch.from_numpy(x[:64]),
               REGISTRY_KEYS.LABELS_KEY: torch.randint(0, 2, (64, 1)).float()}
    module.train()
    inference, generative, loss = module(tensors)
    assert inference["y_t"].shape == (64, 4) and generative["eps_hat"].shape == (64, 4)
    t = inference["t"]
    assert int(t.min()) >= 1 and int(t.max()) <= 512
    # untrained net predicts eps = 0 (zero-initialised head): the loss is the noise power, about 1
    assert loss.loss.ndim == 0 and 0.5 < float(loss.loss.detach()) < 1.6
    loss.loss.backward()
    assert module.net.head.weight.grad is not None
    # EMA copy is used for validation and starts equal to the live network
    module.eval()
    _, gen_ema, _ = module(tensors, generative_kwargs={"use_ema": True})
    assert gen_ema["eps_hat"].shape == (64, 4)


def test_prior_training_reaches_the_bayes_loss():
    """On 2-d Gaussian data the trained noise predictor gets close to the oracle's (Bayes-optimal) loss."""
    torch.manual_seed(0)
    k, s = 2, 0.6
    m = torch.tensor([1.0, -0.5])
    module = DICEModule(n_input=k, n_latent=k, log_normalize=False, scale=False, n_hidden=64, n_blocks=2,
                        dim_time=16, ema_decay=0.0)
    module.set_projection(np.zeros(k), np.ones(k), np.zeros(k), np.eye(k), 1.0)
    opt = torch.optim.Adam(module.net.parameters(), lr=3e-3)
    module.train()
    for _ in range(600):
        batch = {REGISTRY_KEYS.X_KEY: m + s * torch.randn(256, k)}
        _, _, out = module(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    module.eval()
    n = 20_000
    y = m + s * torch.randn(n, k)
    t = torch.randint(1, 513, (n,))
    eps = torch.randn(n, k)
    y_t = module.diffusion.q_sample(y, t, eps)
    ab = module.diffusion.alpha_bars[t].float()[:, None]
    oracle = (1 - ab).sqrt() * (y_t - ab.sqrt() * m) / (ab * s * s + 1 - ab)
    with torch.inference_mode():
        pred = module.network(False)(y_t, t.float() / 512)
    model_loss = float((pred - eps).pow(2).mean())
    oracle_loss = float((oracle - eps).pow(2).mean())
    assert oracle_loss < 0.5  # the task is far from trivial ...
    assert model_loss < oracle_loss + 0.03  # ... and the network nearly solves it


def test_embedding_scale_is_the_spread_of_the_scores_and_old_states_load():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8)) * np.array([5.0, 3.0, 1, 1, 1, 1, 1, 1])
    for standardize in (True, False):
        proj = fit_projection(x, log_normalize=False, scale=False, n_latent=2, standardize_latent=standardize)
        scores = (x - x.mean(0)) @ proj.loadings
        assert proj.embedding_scale == pytest.approx(np.sqrt(scores.var(0, ddof=1).mean()), rel=1e-6)
        assert proj.latent_scale == (pytest.approx(proj.embedding_scale) if standardize else 1.0)
    module = DICEModule(n_input=8, n_latent=2, log_normalize=False, scale=False, n_hidden=8, n_blocks=1)
    module.set_projection(proj.gene_mean, proj.gene_std, proj.pca_mean, proj.loadings, proj.latent_scale,
                          proj.residual_var, proj.embedding_scale)
    state = {k: v for k, v in module.state_dict().items() if k != "embedding_scale"}  # saved before the buffer
    fresh = DICEModule(n_input=8, n_latent=2, log_normalize=False, scale=False, n_hidden=8, n_blocks=1)
    fresh.load_state_dict(state)
    assert torch.isnan(fresh.embedding_scale)
