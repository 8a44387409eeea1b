from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from countsdiff_sc.diffusion import CosineSchedule
from countsdiff_sc.module import CountsDiffModule, DiffusionTrainingPlan, gene_prior


def _module(**kw):
    torch.manual_seed(0)
    defaults = {"backbone_kwargs": {"n_hidden": 32, "n_layers": 1, "dim_emb": 16}}
    defaults.update(kw)
    return CountsDiffModule(20, n_cats_per_cov=[3], use_labels=True, **defaults)


def _batch(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(1, 20, generator=gen).expand(n, 20) * 10, generator=gen)
    labels = torch.randint(0, 3, (n, 1), generator=gen).float()
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.LABELS_KEY: labels}


def test_gene_prior_method_of_moments():
    mu, a = gene_prior(torch.tensor([2.0, 2.0, 0.0]), torch.tensor([6.0, 1.0, 0.0]))
    assert float(a[0]) == pytest.approx(4.0 / 4.0)  # mu^2 / (v - mu)
    assert float(a[1]) == 100.0  # under-dispersed: Poisson limit
    assert float(mu[2]) == pytest.approx(1e-3)


def test_baseline_is_gamma_poisson_posterior_mean():
    m = _module(rate_baseline="gamma_poisson", gene_stats=(torch.full((20,), 4.0), torch.full((20,), 12.0)))  # a = 2
    s = CosineSchedule()
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = torch.tensor([3.0]).expand(3, 20)
    b = m.baseline(x_t, t)
    p = s.p(t)[:, None]
    expected = (1 - p) * (2 + 3.0) / (2 / 4.0 + p)
    torch.testing.assert_close(b, expected.expand(3, 20))
    assert float(b[0].abs().max()) < 1e-6  # no births at t = 0
    # Monte-Carlo check of the posterior mean E[x0 - x_t | x_t] under the Gamma-Poisson prior at p = 0.5
    gen = torch.Generator().manual_seed(0)
    lam = torch.distributions.Gamma(2.0, 0.5).sample((400000,))
    x0 = torch.poisson(lam, generator=gen)
    pt = 0.5
    xt = torch.binomial(x0, torch.full_like(x0, pt), generator=gen)
    sel = xt == 3
    mc = float((x0 - xt)[sel].mean())
    analytic = (1 - pt) * (2 + 3) / (2 / 4 + pt)
    assert mc == pytest.approx(analytic, rel=0.03)


def test_loss_decreases_with_training_and_ema_tracks():
    m = _module(ema_decay=0.9)
    opt = torch.optim.Adam(m.net.parameters(), 3e-3)
    batch = _batch()
    torch.manual_seed(1)
    first = float(m(batch)[2].loss)
    for _ in range(150):
        loss = m(batch)[2].loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_ema()
    torch.manual_seed(1)
    assert float(m(batch)[2].loss) < first
    assert int(m.ema_updates) == 150
    live = dict(m.net.named_parameters())
    assert any(not torch.equal(p, live[n]) for n, p in m.ema_net.named_parameters())


def test_ema_warmup_first_update_moves_far():
    m = _module(ema_decay=0.999)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in m.ema_net.named_parameters()}
    m.update_ema()  # effective decay min(0.999, 1/10) = 0.1
    live = dict(m.net.named_parameters())
    for name, p in m.ema_net.named_parameters():  # every tensor of the multi-tensor update
        torch.testing.assert_close(p, 0.1 * before[name] + 0.9 * live[name])


@pytest.mark.parametrize("warmup", [2.5, 4.0])
def test_ema_warmup_sets_the_decay_schedule(warmup):
    m = _module(ema_decay=0.9999, ema_warmup=warmup)
    first = {n: p.clone() for n, p in m.ema_net.named_parameters()}
    for k in range(3):  # decay after k updates: (1 + k) / (warmup + k); the live weights move by 1 each time
        with torch.no_grad():
            for p in m.net.parameters():
                p.add_(1.0)
        before = {n: p.clone() for n, p in m.ema_net.named_parameters()}
        m.update_ema()
        d = (1.0 + k) / (warmup + k)
        live = dict(m.net.named_parameters())
        for name, p in m.ema_net.named_parameters():
            torch.testing.assert_close(p, d * before[name] + (1 - d) * live[name])
    assert not torch.equal(next(iter(first.values())), next(iter(m.ema_net.parameters())))
    with pytest.raises(ValueError, match="ema_warmup must be greater than 1"):
        _module(ema_warmup=1.0)


@pytest.mark.parametrize("name, cls", [("AdamW", torch.optim.AdamW), ("Adam", torch.optim.Adam)])
def test_training_plan_builds_the_fused_optimizer(name, cls):
    m = _module()
    plan = DiffusionTrainingPlan(m, optimizer=name, lr=2e-3, weight_decay=1e-4, warmup_steps=0)
    opt = plan.configure_optimizers()["optimizer"]
    assert type(opt) is cls and opt.defaults["fused"]
    assert opt.defaults["lr"] == 2e-3 and opt.defaults["weight_decay"] == 1e-4 and opt.defaults["eps"] == 1e-8
    # the optimizer sees the live network only (the EMA copy is frozen)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in m.net.parameters())
    # a user's own creator is used as it is
    custom = DiffusionTrainingPlan(m, optimizer="Custom", optimizer_creator=lambda ps: torch.optim.SGD(ps, lr=0.1),
                                   warmup_steps=0)
    assert type(custom.configure_optimizers()["optimizer"]) is torch.optim.SGD


def test_condition_dropout_only_in_training():
    m = _module(p_uncond=1.0)
    batch = _batch(8)
    m.train()
    inf = m.inference(batch[REGISTRY_KEYS.X_KEY], m._conditions_from_tensors(batch))
    assert inf["drop"].all()
    m.eval()
    inf = m.inference(batch[REGISTRY_KEYS.X_KEY], m._conditions_from_tensors(batch))
    assert inf["drop"] is None


def test_rate_guidance_batches_cond_and_uncond():
    m = _module().eval()
    x = torch.poisson(torch.full((4, 20), 2.0))
    t = torch.full((4,), 0.5)
    cat = torch.tensor([[0], [1], [2], [0]])
    y_c = m.rate(x, t, cat, guidance=1.0)
    y_u = m.rate(x, t)
    y_half = m.rate(x, t, cat, guidance=0.5)
    torch.testing.assert_close(y_half, (y_c * y_u).sqrt(), rtol=1e-5, atol=1e-6)


def test_module_argument_errors():
    with pytest.raises(ValueError, match="backbone"):
        CountsDiffModule(5, backbone="unet")
    with pytest.raises(ValueError, match="p_uncond"):
        CountsDiffModule(5, p_uncond=1.5)
    with pytest.raises(ValueError, match="rate_baseline"):
        CountsDiffModule(5, rate_baseline="poisson")
    with pytest.raises(ValueError, match="ema_decay"):
        CountsDiffModule(5, ema_decay=1.0)


def test_default_is_the_papers_plain_softplus():
    m = _module()
    assert m.rate_baseline == "none"
    assert m.baseline(torch.ones(2, 20), torch.rand(2)) is None


def _module2(**kw):
    """Two categorical conditions (labels with 3 values, a covariate with 2) and a 2-d vector condition."""
    torch.manual_seed(0)
    return CountsDiffModule(20, n_cats_per_cov=[3, 2], n_continuous=2, use_labels=True,
                            backbone_kwargs={"n_hidden": 32, "n_layers": 1, "dim_emb": 16}, **kw)


def test_independent_condition_dropout_frequencies():
    n = 20000
    x = torch.ones(n, 20)
    conds = {"cat": torch.zeros(n, 2, dtype=torch.long), "cont": torch.zeros(n, 2)}
    joint = _module2(p_uncond=0.5).train()
    drop = joint.inference(x, conds)["drop"]
    assert bool((drop == drop[:, :1]).all())  # all conditions together
    indep = _module2(p_uncond=0.5, uncond_mode="independent").train()
    drop = indep.inference(x, conds)["drop"].float()
    # each slot: p + (1 - p) p = 0.75; all three dropped: p + (1 - p) p^3 = 0.5625; only slot 0 kept: (1 - p)^2 p^2
    assert drop.mean(0).sub(0.75).abs().max() < 0.02
    assert abs(float(drop.all(1).float().mean()) - 0.5625) < 0.02
    only_first = (drop[:, 0] == 0) & (drop[:, 1:] == 1).all(1)
    assert abs(float(only_first.float().mean()) - 0.0625) < 0.01
    with pytest.raises(ValueError, match="uncond_mode"):
        _module2(uncond_mode="partial")


def test_per_condition_guidance_formula_in_one_batched_pass():
    m = _module2(uncond_mode="independent").eval()
    n = 5
    x = torch.poisson(torch.full((n, 20), 3.0), generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), 0.4)
    cat = torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1]])
    cont = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))

    def single(keep):
        return m.mixed_rate(x, t, [(cat, cont, m.drop_mask(n, x.device, np.array(keep)))], [1.0])

    log_u, log_c = single([False] * 3).log(), single([True] * 3).log()
    log_k = [single([k == j for j in range(3)]).log() for k in range(3)]
    g = [2.0, 0.0, 0.5]
    g_bar = sum(g) / 3
    expected = log_u + g_bar * (log_c - log_u) + sum((g[k] - g_bar) * (log_k[k] - log_u) for k in range(3))
    calls = []
    hook = m.ema_net.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    y = m.rate(x, t, cat, cont, guidance=g)
    hook.remove()
    torch.testing.assert_close(y.log(), expected, rtol=1e-4, atol=1e-4)
    assert calls == [5 * n]  # u, C and the three single-condition passes: one forward with 5 n output rows
    # equal strengths reduce to the single-strength rule; a vector condition that is not given is dropped
    torch.testing.assert_close(m.rate(x, t, cat, cont, guidance=[1.5] * 3), m.rate(x, t, cat, cont, guidance=1.5))
    no_cont = m.mixed_rate(x, t, [(cat, torch.zeros(n, 2), m.drop_mask(n, x.device, np.array([True, True, False])))],
                           [1.0])
    torch.testing.assert_close(m.rate(x, t, cat), no_cont)
    with pytest.raises(ValueError, match="3 strengths"):
        m.rate(x, t, cat, cont, guidance=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        m.rate(x, t, cat, cont, guidance=[1.0, -2.0, 1.0])


def test_joint_module_rejects_unequal_strengths():
    m = _module2().eval()
    x, t = torch.ones(3, 20), torch.full((3,), 0.5)
    cat = torch.tensor([[0, 1], [1, 0], [2, 1]])
    with pytest.raises(ValueError, match="uncond_mode='independent'"):
        m.rate(x, t, cat, torch.zeros(3, 2), guidance=[2.0, 1.0, 1.0])
    # strengths of conditions that are not given do not count
    torch.testing.assert_close(m.rate(x, t, cat, guidance=[2.0, 2.0, 0.0]), m.rate(x, t, cat, guidance=2.0))


def test_loss_normalisation_constant_is_the_hand_computed_formula():
    """issue 22, item 3: "constant" divides each cell's sum over trusted entries by loss_scale; "cell" averages."""
    from countsdiff_sc.diffusion import loss_weight
    from countsdiff_sc.module import MASK_KEY, VALID_KEY

    batch = _batch(n=6)
    gen = torch.Generator().manual_seed(1)
    batch[VALID_KEY] = torch.rand(6, 20, generator=gen) < 0.7
    batch[MASK_KEY] = torch.rand(6, 20, generator=gen) < 0.2
    batch[VALID_KEY][0] = False  # a cell without trusted entries contributes 0
    for norm, scale in [("cell", None), ("constant", 7.5)]:
        m = _module(loss_normalisation=norm, loss_scale=scale).eval()
        torch.manual_seed(3)
        inf, gen_out, out = m(batch)
        y_hat, y = gen_out["y_hat"].double(), (inf["x0"] - inf["x_t"]).double()
        keep = (batch[VALID_KEY] & ~batch[MASK_KEY]).double()
        total = ((y_hat - y * torch.log(y_hat + 1e-8)) * keep).sum(1)
        per_cell = total / (keep.sum(1).clamp_min(1.0) if norm == "cell" else 7.5)
        expected = (loss_weight(inf["t"], m.schedule, m.loss_weighting).double() * per_cell).mean()
        assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    assert "loss_scale" not in _module().state_dict()  # "cell" modules keep their former state dict
    assert float(_module(loss_normalisation="constant").loss_scale) == 20.0  # default: n_genes
    with pytest.raises(ValueError, match="loss_normalisation"):
        _module(loss_normalisation="gene")
    with pytest.raises(ValueError, match="loss_scale"):
        _module(loss_normalisation="constant", loss_scale=0.0)


def test_importance_time_sampling_weights_every_cell_by_the_integral():
    """time_sampling="importance": times from the weight's density, each cell's loss weighted by its integral."""
    from countsdiff_sc.diffusion import ImportanceTimes

    batch = _batch(n=256)
    m = _module(loss_weighting="nll", time_sampling="importance").eval()
    torch.manual_seed(4)
    inf, gen_out, out = m(batch)
    y_hat, y = gen_out["y_hat"].double(), (inf["x0"] - inf["x_t"]).double()
    per_cell = (y_hat - y * torch.log(y_hat + 1e-8)).mean(1)
    z = ImportanceTimes(m.schedule, "nll").weight
    assert float(out.loss) == pytest.approx(z * float(per_cell.mean()), rel=1e-5)
    assert float((inf["t"] < 0.1).float().mean()) > 0.5  # the nll weight's mass is near t = 0
    assert _module().time_sampling == "uniform" and _module()._times is None
    with pytest.raises(ValueError, match="time_sampling"):
        _module(time_sampling="beta")
    with pytest.raises(ValueError, match="continuous schedule"):
        _module(schedule="blackout_discrete", time_sampling="importance")
