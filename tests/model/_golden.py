"""Fixed-seed draws of the sampling verbs, recorded before the model-layer redesign (0.1.0).

``python -m tests.model._golden record`` trains two tiny models (saved under ``tests/model/golden/``) and stores their
draws for fixed seeds in ``golden/draws.npz``. ``test_golden_draws.py`` loads the saved models and requires the same
draws bit for bit: it proves that a refactoring changed no behaviour and that models saved by 0.1.0 still load.
Re-record only on a deliberate change of the sampler, and say so in CHANGELOG.md. The imputation cases name the
0.1.0 sampler (Euler steps, no resampling) explicitly since ``impute``'s defaults changed to trapezoid steps with
resampling (issue 24); the draws are those recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import countsdiff_sc as cds
from tests.conftest import make_counts

HERE = Path(__file__).parent / "golden"


def golden_adata():
    """The AnnData the golden models were trained on and the verbs run on (regenerated from a seed)."""
    adata = make_counts(n_obs=160, n_vars=24, seed=7)
    x = adata.X.toarray()
    valid = np.ones(adata.shape, dtype=bool)
    valid[(x == 0) & (np.arange(adata.n_vars)[None, :] % 4 == 0)] = False
    adata.layers["valid"] = valid
    rng = np.random.default_rng(11)
    adata.layers["mask"] = (rng.random(adata.shape) < 0.3) & valid
    return adata


def run_cases(model_a, model_b, adata) -> dict[str, np.ndarray]:
    """Every verb and option path whose draws are pinned: returns name -> array."""
    out: dict[str, np.ndarray] = {}
    quiet = {"progress": False}
    g = model_a.sample(labels=["type_0"] * 5 + ["type_2"] * 4, conditions=np.ones((9, 2), np.float32),
                       n_steps=7, guidance=1.5, attrition=0.05, seed=0, batch_size=4, **quiet)
    out["sample_labels"] = g.X.toarray()
    out["sample_labels_batch"] = np.asarray(g.obs["batch"].cat.codes)
    out["sample_uncond"] = model_a.sample(n_samples=6, n_steps=5, seed=1, **quiet).X.toarray()
    out["sample_cov"] = model_a.sample(covariates={"batch": "b1"}, n_samples=5, n_steps=5, seed=5,
                                       attrition=0.1, attrition_kind="cap", **quiet).X.toarray()
    g = model_b.sample(labels=["type_1"] * 6, covariates={"batch": ["b0", "b1"] * 3},
                       guidance={"cell_type": 2.0, "batch": 0.5}, n_steps=6, seed=2, **quiet)
    out["sample_dict_guidance"] = g.X.toarray()
    p = model_a.interpolate(adata, "type_0", "type_1", weights=[0.0, 0.5, 1.0], t_start=0.7, n_steps=6,
                            guidance=1.2, n_cells=5, seed=3, batch_size=7, **quiet)
    out["interpolate_a"] = p.X.toarray()
    p = model_b.interpolate(adata, "type_2", "type_0", weights=[0.25, 1.0], t_start=0.5, n_steps=4,
                            attrition=0.02, n_cells=4, seed=4, **quiet)
    out["interpolate_b"] = p.X.toarray()
    a = adata.copy()
    imp, s = model_a.impute(a, mask_layer="mask", n_samples=3, n_steps=6, seed=6, batch_size=30,
                            resample_jump=2, resample_iters=2, step_rule="euler", **quiet)
    out["impute_a"], out["impute_a_samples"] = imp, s
    a = adata.copy()
    imp, s = model_b.impute(a, mask_layer="mask", n_samples=2, n_steps=5, seed=8, point_estimate="median",
                            guidance={"cell_type": 1.0, "batch": 0.0}, attrition_kind="constant", attrition=0.3,
                            resample_iters=1, step_rule="euler", **quiet)
    out["impute_b"], out["impute_b_samples"] = imp, s
    return out


def record() -> None:
    import scvi

    HERE.mkdir(exist_ok=True)
    fast = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 32, "warmup_steps": 2}
    scvi.settings.seed = 0
    adata = golden_adata()
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type", categorical_covariate_keys=["batch"],
                                      valid_layer="valid", condition_obsm_key="cond")
    model_a = cds.CountsDiffModel(adata, backbone_kwargs={"n_hidden": 32, "n_layers": 1, "dim_emb": 8},
                                  ema_decay=0.5)
    model_a.train(max_steps=25, **fast)
    model_a.save(HERE / "model_a", overwrite=True)
    adata_b = golden_adata()
    cds.CountsDiffModel.setup_anndata(adata_b, labels_key="cell_type", categorical_covariate_keys=["batch"])
    model_b = cds.CountsDiffModel(adata_b, backbone="transformer",
                                  backbone_kwargs={"d_model": 8, "n_heads": 2, "n_layers": 1, "dim_feedforward": 16},
                                  schedule="blackout_discrete", uncond_mode="independent", ema_decay=0.5)
    model_b.train(max_steps=15, **fast)
    model_b.save(HERE / "model_b", overwrite=True)
    a, b = load_models()
    np.savez_compressed(HERE / "draws.npz", **run_cases(a, b, golden_adata()))


def load_models():
    a = cds.CountsDiffModel.load(str(HERE / "model_a"), adata=None, accelerator="cpu")
    b = cds.CountsDiffModel.load(str(HERE / "model_b"), adata=None, accelerator="cpu")
    return a, b


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
