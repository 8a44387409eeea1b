"""With the Blackout schedule the default ("auto" = NLL) weighting trains the rate near t = 0; -p'(t) does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from countsdiff_sc.diffusion import thin
from countsdiff_sc.module import CountsDiffModule


def _counts(n=2000, seed=0):
    # sparse negative-binomial counts (means 0.05-0.5, shape 0.5), as the App. D.1 toy
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.uniform(np.log(0.05), np.log(0.5), 10))
    lam = rng.gamma(0.5, mu / 0.5, size=(n, 10))
    return torch.tensor(rng.poisson(lam), dtype=torch.float32)


def _rate_near_zero(weighting: str) -> float:
    x = _counts()
    torch.manual_seed(0)
    m = CountsDiffModule(10, schedule="blackout", loss_weighting=weighting, ema_decay=0.0,
                         backbone_kwargs={"n_hidden": 32, "n_layers": 1, "dim_emb": 16},
                         gene_stats=(x.mean(0), x.var(0)))
    opt = torch.optim.Adam(m.net.parameters(), 3e-3)
    for _ in range(300):
        idx = torch.randint(0, x.shape[0], (256,))
        loss = m({REGISTRY_KEYS.X_KEY: x[idx]})[2].loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    t = torch.linspace(0.0, 0.2, 5).repeat_interleave(400)
    x_t = thin(x, m.schedule.p(t)[:, None])
    # the true E[x0 - x_t] there is below 1.3e-4 * mean(x0) ~ 3e-5
    return float(m.rate(x_t, t).mean())


def test_module_resolves_auto():
    assert CountsDiffModule(5, schedule="blackout").loss_weighting == "nll"
    assert CountsDiffModule(5, schedule="blackout_discrete").loss_weighting == "nll"
    assert CountsDiffModule(5).loss_weighting == "neg_dp"
    assert CountsDiffModule(5, schedule="blackout", loss_weighting="neg_dp").loss_weighting == "neg_dp"
    with pytest.raises(ValueError, match="Unknown loss weighting"):
        CountsDiffModule(5, loss_weighting="snr")


def test_blackout_default_weighting_learns_the_rate_near_t0():
    # each 300-step reverse sampler step at t < 0.3 gives birth to ~30 dt of y_hat: y_hat must be ~0 there
    auto = _rate_near_zero("auto")
    neg_dp = _rate_near_zero("neg_dp")
    assert auto < 2e-3, auto
    assert neg_dp > 5e-3, neg_dp  # negative control: -p'(t) leaves t < 0.3 untrained (weight < 1e-2 of its peak)
    assert neg_dp > 10 * auto
