"""Script run by test_scaling.py: train a tiny CountsDiffModel in one or two CPU processes (DDP, gloo).

Usage: ``python _ddp_train.py OUT.json N_DEVICES``. Lightning's "ddp" strategy re-launches this script for the
other ranks; only rank 0 writes the result.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import scvi

import countsdiff_sc as cds


def main(out: str, n_devices: int) -> None:
    warnings.filterwarnings("ignore")
    scvi.settings.verbosity = 30
    scvi.settings.seed = 0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 512)
    mu = rng.gamma(1.0, 2.0, size=(3, 20))[labels]
    counts = rng.negative_binomial(2, 2 / (2 + mu)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{i}" for i in labels])}, index=[f"c{i}" for i in range(512)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs)
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    model = cds.CountsDiffModel(adata, preset="paper", backbone_kwargs={"n_hidden": 32, "n_layers": 1, "dim_emb": 16})
    kwargs = {"strategy": "ddp"} if n_devices > 1 else {}
    model.train(max_epochs=8, batch_size=32, warmup_steps=5, accelerator="cpu", devices=n_devices,
                enable_progress_bar=False, enable_model_summary=False, **kwargs)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        result = {
            "train_loss": [float(v) for v in np.asarray(model.history["train_loss"]).ravel()],
            "world_size": int(model.trainer.world_size),
            "global_step": int(model.trainer.global_step),
        }
        with open(out, "w") as fh:
            json.dump(result, fh)

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
