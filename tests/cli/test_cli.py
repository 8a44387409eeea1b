from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from countsdiff_sc.cli import main
from tests.conftest import make_counts


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """Call the CLI in-process (fast); exit codes of argparse's SystemExit are returned too."""

    def _run(*args, check=False):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(out.err[-3000:])
        return Result(code, out.out, out.err)

    return _run


def test_console_entry_point_subprocess():
    proc = subprocess.run([sys.executable, "-m", "countsdiff_sc", "--help"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0
    for cmd in ["demo", "train", "impute", "sample", "evaluate", "embed"]:
        assert cmd in proc.stdout


@pytest.mark.parametrize("cmd", ["demo", "train", "impute", "sample", "evaluate", "embed"])
def test_help(cmd, run):
    proc = run(cmd, "--help")
    assert proc.returncode == 0
    assert "usage: countsdiff-sc" in proc.stdout


def test_missing_file_and_bad_usage(tmp_path, run):
    proc = run("impute", str(tmp_path / "nope.h5ad"), "--model", str(tmp_path), "--out", str(tmp_path / "o.h5ad"))
    assert proc.returncode == 1
    assert "input file not found" in proc.stderr and proc.stderr.count("\n") == 1
    assert run("train").returncode == 2  # argparse usage error


def test_train_impute_sample_evaluate_roundtrip(tmp_path, run):
    adata = make_counts(n_obs=120, n_vars=15)
    rng = np.random.default_rng(0)
    adata.layers["countsdiff_mask"] = rng.random(adata.shape) < 0.2
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    model_dir = tmp_path / "model"
    run("train", str(path), "--model", str(model_dir), "--labels-key", "cell_type", "--max-steps", "3",
        "--accelerator", "cpu", "--quiet", check=True)
    out = tmp_path / "imputed.h5ad"
    no_valid = run("impute", str(path), "--model", str(model_dir), "--out", str(out), "--target", "dropouts",
                   "--quiet")
    assert no_valid.returncode == 1 and "valid_layer" in no_valid.stderr  # no validity layer: say what to pass
    run("impute", str(path), "--model", str(model_dir), "--out", str(out), "--n-samples", "2", "--n-steps", "3",
        "--mask-layer", "countsdiff_mask", "--quiet", check=True)
    res = ad.read_h5ad(out)
    assert res.layers["countsdiff_imputed"].shape == adata.shape
    assert res.obsm["countsdiff_samples"].shape == (120, 2, 15)
    denoised = tmp_path / "denoised.h5ad"  # every entry's expected count, the spread kept whatever its size
    run("impute", str(path), "--model", str(model_dir), "--out", str(denoised), "--target", "denoise", "--n-samples",
        "2", "--n-steps", "3", "--keep-spread", "--quiet", check=True)
    res = ad.read_h5ad(denoised)
    assert res.layers["countsdiff_imputed_std"].shape == adata.shape
    assert res.uns["countsdiff"]["countsdiff_imputed"]["std_key"] == "countsdiff_imputed_std"
    gen_path = tmp_path / "gen.h5ad"
    run("sample", "--model", str(model_dir), "--out", str(gen_path), "--labels", "type_0,type_1", "--n", "4",
        "--n-steps", "3", "--quiet", check=True)
    gen = ad.read_h5ad(gen_path)
    assert list(gen.obs["cell_type"]) == ["type_0", "type_1", "type_0", "type_1"]
    proc = run("evaluate", str(out), "--n-bootstrap", "2", "--csv", str(tmp_path / "m.csv"), check=True)
    assert "rmse" in proc.stdout
    bad = run("sample", "--model", str(model_dir), "--out", str(gen_path), "--labels", "nope", "--quiet")
    assert bad.returncode == 1 and "Known values" in bad.stderr
    # fp16 on a CPU: one line that names the fix, before any work
    half = run("sample", "--model", str(model_dir), "--out", str(gen_path), "--n", "2", "--precision", "16",
               "--accelerator", "cpu", "--quiet")
    assert half.returncode == 1 and "--precision 16 needs a GPU" in half.stderr and half.stderr.count("\n") == 1
    # an existing model directory is refused before training, not after
    again = run("train", str(path), "--model", str(model_dir), "--max-steps", "3", "--accelerator", "cpu", "--quiet")
    assert again.returncode == 1 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


def test_non_count_data_is_a_one_line_error(tmp_path, run):
    adata = make_counts(n_obs=20, n_vars=5)
    adata.X = adata.X.toarray() * 0.5 + 0.25
    path = tmp_path / "bad.h5ad"
    adata.write_h5ad(path)
    proc = run("train", str(path), "--model", str(tmp_path / "m"), "--quiet")
    assert proc.returncode == 1
    assert "non-integer" in proc.stderr


def test_embed_trains_saves_and_reuses_a_dice_model(tmp_path, run):
    adata = make_counts(n_obs=120, n_vars=15)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    model_dir, out = tmp_path / "dice", tmp_path / "emb.h5ad"
    args = ["--n-iter", "2", "--n-chains", "2", "--seed", "0", "--quiet"]
    run("embed", path, "--out", out, "--model", model_dir, "--n-latent", "3", "--max-epochs", "2", *args, check=True)
    res = ad.read_h5ad(out)
    assert res.obsm["X_dice"].shape == res.obsm["X_dice_std"].shape == (120, 3)
    params = res.uns["countsdiff"]["X_dice"]
    assert params["noise_var_auto"] and 0 < params["noise_var"] < 1.5
    # the saved model is reused; an explicit likelihood variance is recorded as given
    run("embed", path, "--out", out, "--model", model_dir, "--noise-var", "0.25", *args, check=True)
    params = ad.read_h5ad(out).uns["countsdiff"]["X_dice"]
    assert params["noise_var"] == 0.25 and not params["noise_var_auto"]
    for bad in ("0", "-1", "nan", "inf", "big"):
        proc = run("embed", path, "--out", out, "--model", model_dir, "--noise-var", bad, *args)
        assert proc.returncode == 2 and "noise-var" in proc.stderr


# issue 20, finding 9: every refusal is one line on stderr, before any work where it can be -----------------------
def _one_line_error(proc, cmd: str) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"countsdiff-sc {cmd}: error: "), proc.stderr
    return lines[0]


def test_gpu_on_a_machine_without_one_is_a_one_line_error(tmp_path, run, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    path = tmp_path / "data.h5ad"
    make_counts(n_obs=20, n_vars=5).write_h5ad(path)
    model_dir, out = tmp_path / "model", tmp_path / "out.h5ad"
    for args in (["train", path, "--model", model_dir, "--max-steps", "1"],
                 ["impute", path, "--model", model_dir, "--out", out],
                 ["sample", "--model", model_dir, "--out", out, "--n", "2"]):
        proc = run(*args, "--accelerator", "gpu", "--quiet")
        assert proc.returncode == 1
        line = _one_line_error(proc, args[0])
        assert "no usable GPU" in line and "--accelerator cpu" in line
    assert not model_dir.exists() and not out.exists()  # refused before any work


def test_lightning_device_errors_are_one_line(tmp_path, run, monkeypatch):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    import countsdiff_sc as cds

    def refuse(self, **kwargs):
        raise MisconfigurationException("No supported gpu backend found!")

    monkeypatch.setattr(cds.CountsDiffModel, "train", refuse)
    path = tmp_path / "data.h5ad"
    make_counts(n_obs=20, n_vars=5).write_h5ad(path)
    proc = run("train", path, "--model", tmp_path / "m", "--accelerator", "cpu", "--quiet")
    assert proc.returncode == 1
    assert "No supported gpu backend found! (check --accelerator" in _one_line_error(proc, "train")


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--max-steps", "0"), ("--max-epochs", "-1"),
                                               ("--batch-size", "x")])
def test_numbers_out_of_range_are_usage_errors(tmp_path, run, option, value):
    proc = run("train", tmp_path / "data.h5ad", "--model", tmp_path / "m", option, value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"argument {option}: " in proc.stderr.splitlines()[-1]


def test_library_errors_are_one_line(tmp_path, run, monkeypatch):
    import countsdiff_sc.cli as cli

    cases = [(TypeError("n_samples must be an integer,\n  got 'x'"), "n_samples must be an integer, got 'x'"),
             (KeyError("Layer 'x' not found"), "Layer 'x' not found"), (ValueError("two\nlines"), "two lines")]
    for err, shown in cases:
        def fail(args, err=err):
            raise err

        monkeypatch.setattr(cli, "_cmd_sample", fail)
        monkeypatch.setattr(cli, "_validate", lambda args: None)  # the error comes from the library, not the checks
        proc = run("sample", "--model", tmp_path, "--out", tmp_path / "o.h5ad")
        assert proc.returncode == 1
        assert _one_line_error(proc, "sample") == f"countsdiff-sc sample: error: {shown}"


def test_outputs_that_cannot_be_written_are_refused_first(tmp_path, run):
    adata = make_counts(n_obs=20, n_vars=5)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    proc = run("impute", path, "--model", tmp_path / "m", "--out", tmp_path, "--quiet")  # a directory
    assert proc.returncode == 1 and "is a directory" in _one_line_error(proc, "impute")
    proc = run("sample", "--model", tmp_path / "m", "--out", tmp_path / "o.h5ad", "--labels", ",")
    assert proc.returncode == 1 and "names no label" in _one_line_error(proc, "sample")
    (tmp_path / "empty").mkdir()
    proc = run("train", path, "--model", tmp_path / "empty", "--quiet")  # scvi-tools would refuse it after training
    assert proc.returncode == 1 and "--overwrite" in _one_line_error(proc, "train")
    proc = run("train", path, "--model", path, "--quiet")  # a file
    assert proc.returncode == 1 and "is a file" in _one_line_error(proc, "train")
