"""Property-based tests (hypothesis) of the command line's input checks (issue 32, items 4 and 5).

Each example builds the arguments of one subcommand from good and planted-bad choices (missing files, layers, obs
columns and model directories, outputs that are directories or the input itself, keys the imputation does not own,
numbers out of range) and runs the checks that precede any import of scvi-tools or torch: a planted defect must be
refused (exit code 1 with one line that names the option or file, or argparse's exit code 2 naming the option), a
clean set of arguments must pass, and the input file must be unchanged either way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from countsdiff_sc.cli import CLIError, _parser, _validate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_props")
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2, (10, 4)).astype(np.float32),
                       obs=pd.DataFrame({"cell_type": rng.choice(["a", "b"], 10), "batch": "b1"},
                                        index=[f"c{i}" for i in range(10)]))
    adata.layers["counts"] = adata.X.copy()
    adata.layers["countsdiff_mask"] = rng.random(adata.shape) < 0.3
    adata.layers["countsdiff_imputed"] = adata.X.copy()
    adata.uns["countsdiff"] = {"countsdiff_imputed": {"key_added": "countsdiff_imputed"}}
    path = folder / "in.h5ad"
    adata.write_h5ad(path)
    model = folder / "model"
    model.mkdir()
    (model / "model.pt").write_bytes(b"x")
    (folder / "not_h5ad.txt").write_text("text\n")
    (folder / "existing_model").mkdir()
    return {"in": str(path), "model": str(model), "dir": str(folder),
            "hash": hashlib.sha256(path.read_bytes()).hexdigest()}


def choice(good: list, bad: list) -> tuple[list, list]:
    """The good and the bad values of one argument (None: the option left out)."""
    return good, bad


OPTIONS = {
    "train": {
        "input": choice(["{in}"], ["{dir}/missing.h5ad", "{dir}/not_h5ad.txt", "{dir}"]),
        "--model": choice(["{dir}/new_model"], ["{dir}/existing_model", "{in}"]),
        "--layer": choice([None, "counts"], ["nope"]),
        "--labels-key": choice([None, "cell_type"], ["nope"]),
        "--covariate-keys": choice([None, "batch"], ["nope"]),
        "--valid-layer": choice([None, "countsdiff_mask"], ["nope"]),
        "--lr": choice([None, "0.001"], ["nan", "-1", "0", "x"]),
        "--batch-size": choice([None, "8"], ["0", "2.5"]),
        "--seed": choice([None, "3"], ["-1"]),
    },
    "impute": {
        "input": choice(["{in}"], ["{dir}/missing.h5ad", "{dir}/not_h5ad.txt"]),
        "--model": choice(["{model}"], ["{dir}/missing_model", "{dir}/existing_model"]),
        "--out": choice(["{dir}/out.h5ad"], ["{dir}", "{in}"]),
        "--mask-layer": choice([None, "countsdiff_mask"], ["nope"]),
        "--key-added": choice([None, "countsdiff_imputed", "fresh"], ["countsdiff_valid", "counts", ""]),
        "--guidance": choice([None, "0", "1.5"], ["-1", "inf"]),
        "--attrition": choice([None, "0.1"], ["2", "-0.5"]),
        "--n-steps": choice([None, "3"], ["0"]),
        "--precision": choice([None, "32"], []),
    },
    "sample": {
        "--model": choice(["{model}"], ["{dir}/missing_model"]),
        "--out": choice(["{dir}/gen.h5ad"], ["{dir}"]),
        "--n": choice(["2"], ["0", "-3"]),
        "--labels": choice([None, "a,b"], [","]),
        "--guidance": choice([None, "2"], ["nan"]),
    },
    "evaluate": {
        "input": choice(["{in}"], ["{dir}/missing.h5ad", "{dir}/not_h5ad.txt"]),
        "--imputed-layer": choice([None, "countsdiff_imputed"], ["nope"]),
        "--mask-layer": choice([None, "countsdiff_mask"], ["nope"]),
        "--truth-layer": choice([None, "counts"], ["nope"]),
        "--out": choice([None, "{dir}/eval.h5ad"], ["{in}", "{dir}"]),
        "--csv": choice([None, "{dir}/t.csv"], ["{in}", "{dir}"]),
        "--n-bootstrap": choice([None, "0", "2"], ["-1"]),
    },
    "embed": {
        "input": choice(["{in}"], ["{dir}/missing.h5ad"]),
        "--out": choice(["{dir}/emb.h5ad"], ["{in}", "{dir}"]),
        "--layer": choice([None, "counts"], ["nope"]),
        "--labels-key": choice([None, "cell_type"], ["nope"]),
        "--noise-var": choice([None, "auto", "0.5"], ["0", "-2", "nan"]),
        "--n-chains": choice([None, "4"], ["0"]),
    },
}


@st.composite
def command_line(draw):
    """A subcommand and ``{argument: (value, is_bad)}``: all good (half of the examples), exactly one planted defect,
    or each argument bad with probability 1/3."""
    command = draw(st.sampled_from(sorted(OPTIONS)))
    mode = draw(st.sampled_from(["clean", "clean", "one", "any"]))
    can_fail = [name for name, (_, bad) in OPTIONS[command].items() if bad]
    culprit = draw(st.sampled_from(can_fail)) if mode == "one" else None
    picked = {}
    for name, (good, bad) in OPTIONS[command].items():
        planted = bool(bad) and (name == culprit or (mode == "any" and draw(st.integers(0, 2)) == 0))
        picked[name] = (draw(st.sampled_from(bad if planted else good)), planted)
    return command, picked


@settings(max_examples=120, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=command_line())
def test_cli_checks_refuse_exactly_the_planted_defects(case, files, capsys):
    command, picked = case
    args = [command]
    bad_options = []
    for name, (value, is_bad) in picked.items():
        if value is None:
            continue
        value = value.format(**files)
        args += [value] if name == "input" else [name, value]
        if is_bad:
            bad_options.append((name, value))
    try:
        _validate(_parser().parse_args(args))
        outcome, message = 0, ""
    except SystemExit as exc:
        outcome, message = exc.code, capsys.readouterr().err.strip().splitlines()[-1]
    except CLIError as err:
        outcome, message = 1, str(err)
    if not bad_options:
        assert outcome == 0, (args, message)
    else:
        assert outcome in (1, 2), f"a planted defect passed the checks: {bad_options} in {args}"
        assert "\n" not in message
        named = [name for name, value in bad_options
                 if (name in message or value in message or (name == "input" and "input" in message))]
        assert named, (bad_options, message)
    assert hashlib.sha256(Path(files["in"]).read_bytes()).hexdigest() == files["hash"]
