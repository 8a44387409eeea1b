"""The command line checks its inputs before importing scvi-tools or torch (issue 32, item 5): each bad input is one
line on stderr with exit code 1 (2 for argparse's usage errors), and the input file is never modified."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from countsdiff_sc.cli import main


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    """An input .h5ad (layers counts / countsdiff_mask / a user's 'mine', an obs column), a fake model directory."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2, (20, 6)).astype(np.float32),
                       obs=pd.DataFrame({"cell_type": rng.choice(["a", "b"], 20)}, index=[f"c{i}" for i in range(20)]))
    adata.var_names = [f"g{i}" for i in range(6)]
    adata.layers["counts"] = adata.X.copy()
    adata.layers["countsdiff_mask"] = rng.random(adata.shape) < 0.3
    adata.layers["mine"] = adata.X.copy()
    adata.layers["countsdiff_imputed"] = adata.X.copy()
    adata.uns["countsdiff"] = {"countsdiff_imputed": {"key_added": "countsdiff_imputed"}}
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"not read by the checks")
    return path, model, tmp_path


BAD = [  # (arguments with {in}, {model}, {dir} placeholders, a fragment of the one-line error)
    (["evaluate", "{dir}/nope.h5ad"], "input file not found"),
    (["evaluate", "{model}/model.pt"], "cannot read"),
    (["evaluate", "{dir}"], "is a directory"),
    (["evaluate", "{in}", "--imputed-layer", "nope"], "--imputed-layer nope"),
    (["evaluate", "{in}", "--mask-layer", "nope"], "--mask-layer nope"),
    (["evaluate", "{in}", "--truth-layer", "nope"], "--truth-layer nope"),
    (["evaluate", "{in}", "--out", "{in}"], "is the input file"),
    (["evaluate", "{in}", "--csv", "{in}"], "is the input file"),
    (["train", "{in}", "--model", "{dir}/m", "--labels-key", "nope"], "--labels-key nope"),
    (["train", "{in}", "--model", "{dir}/m", "--covariate-keys", "nope"], "--covariate-keys nope"),
    (["train", "{in}", "--model", "{dir}/m", "--covariate-keys", "cell_type", "cell_type"], "twice"),
    (["train", "{in}", "--model", "{dir}/m", "--layer", "nope"], "--layer nope"),
    (["train", "{in}", "--model", "{dir}/m", "--valid-layer", "nope"], "--valid-layer nope"),
    (["train", "{in}", "--model", "{model}"], "--overwrite"),
    (["train", "{in}", "--model", "{in}"], "is a file"),
    (["impute", "{in}", "--model", "{model}", "--out", "{in}"], "is the input file"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--key-added", "countsdiff_valid"],
     "validity marks"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--key-added", "countsdiff_mask"],
     "held-out mask"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--key-added", "mine"], "did not write"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--key-added", ""], "is empty"),
    (["impute", "{in}", "--model", "{dir}/nomodel", "--out", "{dir}/o.h5ad"], "does not exist"),
    (["impute", "{in}", "--model", "{dir}", "--out", "{dir}/o.h5ad"], "model.pt"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--mask-layer", "nope"], "--mask-layer nope"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--precision", "16", "--accelerator", "cpu"],
     "--precision 16 needs a GPU"),
    (["sample", "--model", "{model}", "--out", "{dir}/o.h5ad"], "give --n"),
    (["sample", "--model", "{model}", "--out", "{dir}/o.h5ad", "--labels", ","], "names no label"),
    (["sample", "--model", "{model}", "--out", "{dir}", "--n", "2"], "is a directory"),
    (["embed", "{in}", "--out", "{in}"], "is the input file"),
    (["embed", "{in}", "--out", "{dir}/o.h5ad", "--layer", "nope"], "--layer nope"),
    (["embed", "{in}", "--out", "{dir}/o.h5ad", "--labels-key", "nope"], "--labels-key nope"),
    (["embed", "{in}", "--out", "{dir}/o.h5ad", "--model", "{in}"], "is a file"),
    (["demo", "--out", "{dir}"], "is a directory"),
]
USAGE = [  # argparse refuses these (exit code 2), naming the option
    (["train", "{in}", "--model", "{dir}/m", "--lr", "nan"], "--lr"),
    (["train", "{in}", "--model", "{dir}/m", "--lr", "0"], "--lr"),
    (["train", "{in}", "--model", "{dir}/m", "--seed", "-1"], "--seed"),
    (["sample", "--model", "{model}", "--out", "{dir}/o.h5ad", "--n", "2", "--guidance", "-1"], "--guidance"),
    (["sample", "--model", "{model}", "--out", "{dir}/o.h5ad", "--n", "2", "--attrition", "1.5"], "--attrition"),
    (["impute", "{in}", "--model", "{model}", "--out", "{dir}/o.h5ad", "--guidance", "inf"], "--guidance"),
    (["embed", "{in}", "--out", "{dir}/o.h5ad", "--noise-var", "-1"], "--noise-var"),
]


def _fill(args: list[str], files) -> list[str]:
    path, model, folder = files
    return [a.format(**{"in": path, "model": model, "dir": folder}) for a in args]


def _run(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[f"{a[0]}: {f}" for a, f in BAD])
def test_bad_input_is_one_line_before_any_work(files, capsys, args, fragment):
    before = _digest(files[0])
    code, err = _run(capsys, _fill(args, files))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"countsdiff-sc {args[0]}: error: ") and fragment in lines[0], lines[0]
    assert _digest(files[0]) == before


@pytest.mark.parametrize(("args", "option"), USAGE, ids=[f"{a[0]}: {o}" for a, o in USAGE])
def test_numbers_out_of_range_name_the_option(files, capsys, args, option):
    code, err = _run(capsys, _fill(args, files))
    assert code == 2 and f"argument {option}" in err.strip().splitlines()[-1]


def test_owned_key_and_overwrite_pass_the_checks(files):
    import argparse

    from countsdiff_sc.cli import _parser, _validate

    path, model, folder = files
    for args in (["impute", str(path), "--model", str(model), "--out", str(folder / "o.h5ad")],  # owned: uns record
                 ["impute", str(path), "--model", str(model), "--out", str(path), "--overwrite"],
                 ["evaluate", str(path), "--out", str(path), "--overwrite"]):
        parsed = _parser().parse_args(args)
        assert isinstance(parsed, argparse.Namespace)
        _validate(parsed)  # no error


def test_input_errors_import_neither_torch_nor_scvi(files):
    """The error path in a fresh interpreter: every refusal above without torch / scvi-tools in sys.modules."""
    cases = [_fill(args, files) for args, _ in BAD]
    code = textwrap.dedent(f"""
        import sys, contextlib, io
        from countsdiff_sc.cli import main
        for args in {cases!r}:
            with contextlib.redirect_stderr(io.StringIO()):
                assert main(args) == 1, args
        heavy = sorted(m for m in ("torch", "scvi", "anndata", "lightning") if m in sys.modules)
        assert not heavy, heavy
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
