"""Scale-out: DDP training on two CPU processes and backed (on-disk) AnnData for training, sampling, imputation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import countsdiff_sc as cds
from tests.conftest import make_counts

TINY = {"n_hidden": 32, "n_layers": 1, "dim_emb": 16}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64, "warmup_steps": 5}
SCRIPT = Path(__file__).with_name("_ddp_train.py")
ROOT = Path(__file__).parents[2]


def _run_script(out: Path, n_devices: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(n_devices)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_ddp_two_cpu_processes_matches_single_process(tmp_path):
    single = _run_script(tmp_path / "single.json", 1)
    ddp = _run_script(tmp_path / "ddp.json", 2)
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    # each process sees half of the cells (distributed sampler), so an epoch has about half the steps
    assert ddp["global_step"] < 0.7 * single["global_step"]
    final_ddp = ddp["train_loss"][-1]
    assert np.isfinite(final_ddp)
    # compared at the same number of optimizer steps: the single process's epoch of about as many steps
    same_steps = single["train_loss"][round(len(single["train_loss"]) * ddp["global_step"] / single["global_step"]) - 1]
    assert same_steps / 1.5 < final_ddp < same_steps * 1.5
    assert ddp["train_loss"][-1] < ddp["train_loss"][0]  # it learns


@pytest.fixture
def backed(tmp_path):
    adata = make_counts(n_obs=200, n_vars=20)
    del adata.layers["counts"]
    adata.layers["mask"] = np.random.default_rng(1).random(adata.shape) < 0.3
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    return adata, ad.read_h5ad(path, backed="r"), path


def test_backed_anndata_train_sample_impute(backed):
    memory, disk, path = backed
    assert disk.isbacked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cds.CountsDiffModel.setup_anndata(disk, labels_key="cell_type")
        model = cds.CountsDiffModel(disk, backbone_kwargs=TINY)
        model.train(max_epochs=2, **FAST)
    assert np.isfinite(np.asarray(model.history["train_loss"], dtype=float)).all()
    # the gene statistics read in blocks from disk equal those of the in-memory copy
    cds.CountsDiffModel.setup_anndata(memory, labels_key="cell_type")
    ref = cds.CountsDiffModel(memory, backbone_kwargs=TINY)
    np.testing.assert_allclose(model.module.prior_mean.numpy(), ref.module.prior_mean.numpy(), rtol=1e-6)

    gen = model.sample(labels=["type_0"] * 7, n_steps=4, seed=0, progress=False)
    assert gen.shape == (7, disk.n_vars)

    imputed, samples = model.impute(disk, mask_layer="mask", n_samples=2, n_steps=4, seed=3, progress=False)
    expected, expected_samples = model.impute(memory, mask_layer="mask", n_samples=2, n_steps=4, seed=3,
                                              progress=False)
    np.testing.assert_array_equal(imputed, expected)
    np.testing.assert_array_equal(samples, expected_samples)
    # results live in memory on the backed object; the file on disk is untouched
    np.testing.assert_array_equal(disk.layers["countsdiff_imputed"], imputed)
    assert "countsdiff_imputed" not in ad.read_h5ad(path).layers


def test_backed_counts_are_checked_in_blocks(tmp_path):
    adata = make_counts(n_obs=50, n_vars=10)
    del adata.layers["counts"]
    adata.X = adata.X * 0.5
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match="non-integer"):
        cds.CountsDiffModel.setup_anndata(ad.read_h5ad(path, backed="r"))


def test_guided_sampling_is_one_batched_network_pass_per_step():
    adata = make_counts(n_obs=120, n_vars=15)
    adata.layers["mask"] = np.random.default_rng(2).random(adata.shape) < 0.3
    cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type")
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    calls: list[tuple[int, bool]] = []
    net = model.module.network(True)
    net.register_forward_hook(lambda mod, args, out: calls.append((out.shape[0], out.is_inference())))
    model.impute(adata, mask_layer="mask", n_samples=2, n_steps=6, guidance=0.5, seed=0, progress=False,
                 step_rule="euler", resample_iters=1)
    n_rows = 2 * int((adata.layers["mask"].any(axis=1)).sum())
    assert len(calls) == 6  # conditional and unconditional rates in one pass of twice the rows
    assert all(rows == 2 * n_rows and inference for rows, inference in calls)
    calls.clear()
    model.sample(labels=["type_0"] * 10, n_steps=4, guidance=2.0, seed=0, progress=False)
    assert calls == [(20, True)] * 4


def test_train_without_validation_set():
    adata = make_counts(n_obs=100, n_vars=10)
    cds.CountsDiffModel.setup_anndata(adata)
    model = cds.CountsDiffModel(adata, backbone_kwargs=TINY)
    model.train(max_epochs=2, train_size=1.0, **FAST)  # used to fail on a missing validation dataloader
    assert "train_loss" in model.history and "validation_loss" not in model.history
