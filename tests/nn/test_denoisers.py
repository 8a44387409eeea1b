from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from countsdiff_sc.nn import ConditionEncoder, GeneTransformerDenoiser, ResidualMLPDenoiser, SinusoidalTimeEmbedding


def _inputs(n=5, g=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((n, g), 3.0), generator=gen)
    return x, torch.rand(n, generator=gen)


BACKBONES = [(ResidualMLPDenoiser, {"n_hidden": 16, "n_layers": 2, "dim_emb": 8}),
             (GeneTransformerDenoiser, {"d_model": 8, "n_heads": 2, "n_layers": 1})]


def _perturbed(cls, kw):
    # a small backbone for 12 genes and 3 labels, its zero-initialised head perturbed so raw outputs are non-trivial
    torch.manual_seed(0)
    net = cls(12, n_cats_per_cov=[3], **kw)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("cls,kw", BACKBONES)
def test_softplus_applied_exactly_once(cls, kw):
    net = _perturbed(cls, kw)
    x, t = _inputs()
    cat = torch.randint(0, 3, (5, 1))
    raw = net.raw(x, t, cat)
    y = net(x, t, cat)
    torch.testing.assert_close(y, F.softplus(raw))
    assert not torch.allclose(y, F.softplus(F.softplus(raw)))
    scale = torch.rand(5, 12) + 0.5
    torch.testing.assert_close(net(x, t, cat, scale=scale), F.softplus(raw) * scale)
    assert (y > 0).all()


@pytest.mark.parametrize("cls,kw", BACKBONES)
def test_variants_pass_equals_repeated_cells(cls, kw):
    # the same cells under three condition sets in one call (the MLP computes its input layer once per cell) give
    # what the repeated cells give, variant-major, with the baseline scale repeated too
    net = _perturbed(cls, kw)
    x, t = _inputs()
    cat = torch.randint(0, 3, (15, 1))
    drop = torch.rand(15, 1) < 0.3
    valid = torch.rand(5, 12) < 0.8
    scale = torch.rand(5, 12) + 0.5
    y = net(x, t, cat, drop=drop, valid=valid, scale=scale, n_variants=3)
    expected = net(x.repeat(3, 1), t.repeat(3), cat, drop=drop, valid=valid.repeat(3, 1), scale=scale.repeat(3, 1))
    assert y.shape == (15, 12)
    torch.testing.assert_close(y, expected)
    # each block of rows is the single-variant prediction of its conditions
    torch.testing.assert_close(y[5:10], net(x, t, cat[5:10], drop=drop[5:10], valid=valid, scale=scale))


def test_transformer_key_padding_isolates_invalid_genes():
    torch.manual_seed(0)
    net = GeneTransformerDenoiser(10, d_model=8, n_heads=2, n_layers=2).eval()
    x, t = _inputs(n=3, g=10)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[:, [2, 7]] = False
    x2 = x.clone()
    x2[:, [2, 7]] = 50.0  # change only padded genes
    with torch.no_grad():
        y1, y2 = net(x, t, valid=valid), net(x2, t, valid=valid)
        keep = valid[0]
        torch.testing.assert_close(y1[:, keep], y2[:, keep])
        # without padding the same change does propagate
        assert not torch.allclose(net(x, t)[:, keep], net(x2, t)[:, keep])


def test_condition_encoder_null_tokens_and_drop():
    enc = ConditionEncoder([3, 2], n_continuous=4, dim=6)
    assert enc.n_conditions == 3
    cat = torch.tensor([[0, 1], [2, 0]])
    cont = torch.randn(2, 4)
    e = enc(cat, cont)
    assert e.shape == (2, 3, 6)
    drop = torch.tensor([[True, True, True], [False, False, False]])
    d = enc(cat, cont, drop)
    torch.testing.assert_close(d[0, 0], enc.cat_embeddings[0].weight[3])  # null row of covariate 0
    torch.testing.assert_close(d[0, 1], enc.cat_embeddings[1].weight[2])
    torch.testing.assert_close(d[0, 2], enc.cont_null)
    torch.testing.assert_close(d[1], e[1])
    assert ConditionEncoder([], 0, 4)(None, None).shape[1] == 0


def test_time_embedding_distinguishes_times():
    emb = SinusoidalTimeEmbedding(16)
    out = emb(torch.tensor([0.0, 0.001, 0.5, 1.0]))
    assert out.shape == (4, 16)
    assert torch.cdist(out, out)[0, 1] > 0
    with pytest.raises(ValueError):
        SinusoidalTimeEmbedding(7)


def test_mlp_output_bias_init_gives_requested_rate():
    net = ResidualMLPDenoiser(4, n_hidden=8, n_layers=1, dim_emb=8)
    means = torch.tensor([0.5, 1.0, 3.0, 40.0])
    net.init_output_bias(means)
    x, t = _inputs(n=2, g=4)
    torch.testing.assert_close(net(x, t), means.expand(2, 4), rtol=1e-4, atol=1e-4)
