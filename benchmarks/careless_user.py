"""A careless user, round two (issue 32): every concrete input of the issue, run again and classified automatically.

The issue lists inputs across ``CountsDiffModel``'s verbs, ``cds.pp``, DICE, the metrics and the command line that
were silently wrong, overwrote user data, hung, or ended in a raw traceback or an unclear message. This script runs
each of them (one *case* per example of the issue, plus the deprecated keywords of the new API) and classifies the
outcome:

* **right result** - the call returned and its output holds the contract (finite, non-negative, integer where
  promised, observed counts kept exactly, the promised keys written and no stale ones); a metric that returns NaN on
  an input where it is undefined counts as right when it warns and says why;
* **clear error** - a ``ValueError`` / ``KeyError`` / ``TypeError`` / ``ResourceError`` / ``OSError`` raised by the
  package itself (the innermost frame is in ``countsdiff_sc``), or a command line that ends with exit code 1 / 2 and a
  one-line message, whose message names the argument (each case lists the words that count as naming it);
* **silently wrong** - the call returned, but the output breaks the contract, or a request that must be refused was
  accepted;
* **mutation** - the user's data changed (``X``, ``var``, ``obs`` columns, layers, ``obsm``, ``uns`` entries or an
  input file), compared with a snapshot taken before the call; the keys a verb owns (its output layers,
  ``uns["countsdiff"]``, scvi-tools' registration) may change on success, a refused call must add nothing;
* **hang** - no answer within the case's time limit (60 s; 20 s for the requests the resource guard must refuse at
  once; 5 s for a command-line input error, which must be reported before scvi-tools is imported); a worker process
  killed by the kernel counts as a hang too;
* **raw traceback** - any other exception (a type from torch / Lightning / scvi-tools / numpy, an exception raised
  inside a dependency, ``AttributeError`` / ``IndexError`` / ``MemoryError`` ...), or a message that does not name
  the argument.

The cases run in a worker subprocess (``--worker``), one after another, each under ``signal.alarm``; the parent
reads the worker's results as they come and kills it when a case runs far past its limit (a hang inside compiled
code), then starts a new worker at the next case. The worker's address space is capped at 12 GiB so that a request
the guard should have refused fails there instead of pushing other processes out of memory.

Fixtures (built on first use in each worker, trained on CPU with one thread): ``model`` - a tiny CountsDiff model
(MLP, 16 hidden units, 1 layer) trained 10 steps on 96 synthetic cells x 12 genes with ``labels_key="cell_type"``
(type_0..2) and ``categorical_covariate_keys=["batch"]`` (b0, b1); ``q`` - a fresh query of 20 such cells; ``wide`` -
the same on 800 genes (the resource cases: a request is oversized because of the genes a real model has);
``unused`` - trained with an extra, empty category ``type_unused``; ``cond`` - set up with
``condition_obsm_key="cond"`` (2 columns); ``dice`` - a tiny DICE model (3 latent dimensions). Chains use
``cds.Sampler(n_steps=3, seed=0, progress=False)`` unless the case is about the chain.

Usage, from the repository root: ``python -m benchmarks.careless_user [--quick]`` (about half a minute; every case
of the issue in the default run).

Writes ``benchmarks/results[/quick]/careless_user.md`` / ``.json``: the outcome counts per category and one row per
case (category, case, outcome, seconds, first line of the message). ``--quick`` runs the first two cases of each
category.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common

OUTCOMES = ("right result", "clear error", "silently wrong", "mutation", "hang", "raw traceback")
GOOD = ("right result", "clear error")
#: Per-case time limit (s) unless a case sets its own; the parent kills the worker at limit + GRACE.
LIMIT = 60.0
GRACE = 60.0
#: The worker's address-space cap (bytes).
ADDRESS_SPACE = 12 * 2**30
#: Keys a verb owns: they may change in a successful call (never in a refused one).
OWNED_LAYERS = {"countsdiff_imputed", "countsdiff_imputed_std", "countsdiff_corrected", "countsdiff_corrected_mean",
                "countsdiff_corrected_sd"}
OWNED_OBSM = {"countsdiff_samples"}
OWNED_UNS = {"countsdiff", "countsdiff_metrics"}
TINY = {"n_hidden": 16, "n_layers": 1, "dim_emb": 8}
FAST = {"accelerator": "cpu", "enable_progress_bar": False, "batch_size": 64}
PKG = str(Path(__file__).resolve().parent.parent / "src" / "countsdiff_sc")


# ============================================================================================================ the cases
@dataclass
class Trial:
    """What a case runs: ``call`` (timed), the AnnData objects (and files) it must leave alone, and the check of a
    returned value (None: right; a string: what is wrong). ``refuse=True``: accepting the call is itself wrong."""

    call: Callable[[], Any]
    watch: Sequence[Any] = ()
    files: Sequence[Path] = ()
    check: Callable[[Any, list[str]], str | None] | None = None
    refuse: bool = False
    owned: set[str] = field(default_factory=set)


@dataclass
class Case:
    category: str
    name: str
    build: Callable[[Any], Trial]
    names: tuple[str, ...] = ()
    limit: float = LIMIT


CASES: list[Case] = []


def case(category: str, name: str, names: Sequence[str] = (), limit: float = LIMIT):
    def register(build: Callable[[Any], Trial]) -> Callable[[Any], Trial]:
        CASES.append(Case(category, name, build, tuple(names), limit))
        return build

    return register


def add(category: str, name: str, build: Callable[[Any], Trial], names: Sequence[str] = (),
        limit: float = LIMIT) -> None:
    CASES.append(Case(category, name, build, tuple(names), limit))


# ---------------------------------------------------------------------------------------------------- helpers of checks
def dense(m: Any) -> np.ndarray:
    import scipy.sparse as sp

    if hasattr(m, "todense") and not sp.issparse(m) and not isinstance(m, np.ndarray):
        return np.asarray(m.todense())
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def counts_problem(values: Any, what: str, integer: bool = True) -> str | None:
    v = dense(values).astype(np.float64) if not isinstance(values, pd.DataFrame) else values.to_numpy(np.float64)
    if v.size and not np.isfinite(v).all():
        return f"{what} holds {int((~np.isfinite(v)).sum())} NaN / infinite values"
    if v.size and (v < 0).any():
        return f"{what} holds negative values (min {v.min():g})"
    if integer and v.size and not np.array_equal(v, np.round(v)):
        return f"{what} holds non-integer values"
    return None


def chain(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


def refused(result: Any, warns: list[str]) -> str:
    return "accepted without an error"


def warned(warns: list[str], *words: str) -> bool:
    return any(any(w.lower() in msg.lower() for w in words) for msg in warns) if words else bool(warns)


def metric_value(value: Any, warns: list[str], reference: float | None = None, rtol: float = 0.05) -> str | None:
    """A metric's value: finite (close to ``reference`` when given), or NaN / infinite with a warning."""
    v = float(value)
    if not np.isfinite(v):
        return None if warns else f"returned {v} without a warning"
    if reference is not None and not np.isclose(v, reference, rtol=rtol, atol=1e-12):
        return f"returned {v:.6g}, expected {reference:.6g}" + ("" if not warns else " (with a warning)")
    return None


def undefined_metric(value: Any, warns: list[str]) -> str | None:
    """A metric undefined for its input: NaN with a warning, or any value with a warning that says why."""
    v = float(value)
    return None if warns else f"returned {v} without a warning (the metric is undefined here)"


# ------------------------------------------------------------------------------------------------------------- fixtures
def make_counts(n_obs: int = 96, n_vars: int = 12, n_labels: int = 3, seed: int = 0) -> Any:
    """Synthetic NB counts with label-specific means, a batch column and a 2-d obsm condition (tests' make_counts)."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n_obs)
    base = rng.gamma(1.0, 2.0, size=(n_labels, n_vars))
    counts = rng.negative_binomial(2, 2 / (2 + base[labels])).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type_{i}" for i in labels]),
                        "batch": pd.Categorical(rng.choice(["b0", "b1"], n_obs))},
                       index=[f"c{i}" for i in range(n_obs)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))
    adata.obsm["cond"] = rng.normal(size=(n_obs, 2)).astype(np.float32)
    return adata


class Ctx:
    """The fixtures of a worker, built on first use."""

    def __init__(self, tmp: Path):
        import countsdiff_sc as cds

        self.cds = cds
        self.tmp = tmp
        self.Q = cds.Sampler(n_steps=3, seed=0, progress=False)
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _train(self, adata: Any, steps: int = 10, **setup: Any) -> Any:
        import torch

        self.cds.CountsDiffModel.setup_anndata(adata, **setup)
        torch.manual_seed(0)
        model = self.cds.CountsDiffModel(adata, backbone_kwargs=TINY, ema_decay=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train(max_steps=steps, **FAST)
        return model

    @property
    def model(self) -> Any:
        def build():
            adata = make_counts(seed=3)
            return adata, self._train(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])

        return self._once("model", build)[1]

    @property
    def train_adata(self) -> Any:
        self.model  # noqa: B018 - builds it
        return self._cache["model"][0]

    def fresh(self, **kwargs: Any) -> Any:
        """An untrained model on the training data (for the training cases)."""
        return self.cds.CountsDiffModel(self.train_adata, backbone_kwargs=TINY, **kwargs)

    @property
    def wide(self) -> Any:
        def build():
            adata = make_counts(n_obs=64, n_vars=800, seed=3)
            return self._train(adata, steps=2, labels_key="cell_type", categorical_covariate_keys=["batch"])

        return self._once("wide", build)

    @property
    def unused(self) -> Any:
        def build():
            adata = make_counts(seed=5)
            adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories(["type_unused"])
            return self._train(adata, labels_key="cell_type", categorical_covariate_keys=["batch"])

        return self._once("unused", build)

    @property
    def cond(self) -> Any:
        return self._once("cond", lambda: self._train(make_counts(seed=6), labels_key="cell_type",
                                                      condition_obsm_key="cond"))

    @property
    def saved(self) -> Path:
        def build():
            path = self.tmp / "saved_model"
            self.model.save(str(path), overwrite=True)
            return path

        return self._once("saved", build)

    def loaded(self) -> Any:
        """The saved model loaded without data (a fresh object each time)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.cds.CountsDiffModel.load(str(self.saved), adata=None, accelerator="cpu")

    @property
    def dice(self) -> Any:
        def build():
            adata = make_counts(seed=7)
            self.cds.DICEModel.setup_anndata(adata, labels_key="cell_type")
            model = self.cds.DICEModel(adata, n_latent=3, n_hidden=16, n_blocks=1, dim_time=8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.train(max_steps=5, batch_size=64, accelerator="cpu", enable_progress_bar=False,
                            enable_model_summary=False)
            return model

        return self._once("dice", build)

    @property
    def dice_dir(self) -> Path:
        def build():
            path = self.tmp / "saved_dice"
            self.dice.save(str(path), overwrite=True)
            return path

        return self._once("dice_dir", build)

    def query(self, n: int = 20, seed: int = 4, n_vars: int = 12) -> Any:
        return make_counts(n_obs=n, n_vars=n_vars, seed=seed)

    def with_x(self, q: Any, x: np.ndarray) -> Any:
        import scipy.sparse as sp

        q.X = sp.csr_matrix(x)
        return q

    def h5ad(self, name: str = "input.h5ad", valid: bool = False) -> Path:
        path = self.tmp / name
        q = self.query()
        if valid:
            q.layers["countsdiff_valid"] = np.ones(q.shape, bool)
        q.write_h5ad(path)
        return path


# ------------------------------------------------------------------------------------------------------ checks of verbs
def impute_ok(q: Any, key: str = "countsdiff_imputed") -> Callable[[Any, list[str]], str | None]:
    def check(result: Any, warns: list[str]) -> str | None:
        imputed, samples = result
        return chain(counts_problem(imputed, "the imputation", integer=False),
                     None if samples is None else counts_problem(samples, "the draws"),
                     None if key in q.layers else f"layer {key!r} not written")

    return check


def expression_ok(n_cells: int, n_genes: int = 12) -> Callable[[Any, list[str]], str | None]:
    def check(result: Any, warns: list[str]) -> str | None:
        values = result.to_numpy() if isinstance(result, pd.DataFrame) else dense(result)
        if values.shape[-1] != n_genes or values.shape[0] != n_cells:
            return f"shape {values.shape}, expected ({n_cells}, {n_genes})"
        return counts_problem(values, "the expression", integer=False)

    return check


def cells_ok(n_cells: int, label: str | None = None) -> Callable[[Any, list[str]], str | None]:
    def check(out: Any, warns: list[str]) -> str | None:
        if out.n_obs != n_cells:
            return f"{out.n_obs} cells, expected {n_cells}"
        if label is not None and not (out.obs["cell_type"].astype(str) == label).all():
            return f"labels {sorted(set(out.obs['cell_type'].astype(str)))}, expected {label}"
        return counts_problem(out.X, "the generated counts")

    return check


# ================================================================================================== 1. expression verbs
CAT = "expression verbs: non-counts, library_size, n_samples"


def _non_counts(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if kind == "log1p":
            return np.log1p(x)
        if kind == "x1.5":
            return x * 1.5
        if kind == "negative":
            x[0, 0] = -3.0
            return x
        x[0, 0] = np.nan
        return x

    return change


for _verb in ("get_normalized_expression", "posterior_predictive_sample"):
    for _kind in (("log1p", "x1.5", "negative", "nan") if _verb == "get_normalized_expression" else ("log1p", "nan")):
        def _build(c: Ctx, verb: str = _verb, kind: str = _kind) -> Trial:
            q = c.query()
            c.with_x(q, _non_counts(kind)(q.X.toarray()))
            return Trial(lambda: getattr(c.model, verb)(q, sampler=c.Q), watch=[q], refuse=True)

        add(CAT, f"{_verb} on {_kind} input", _build, names=("count", "integer", "negative", "nan"))

for _lib in (0, -5, float("nan"), float("inf")):
    def _build(c: Ctx, lib: float = _lib) -> Trial:
        q = c.query()
        return Trial(lambda: c.model.get_normalized_expression(q, library_size=lib, sampler=c.Q), watch=[q],
                     refuse=True)

    add(CAT, f"get_normalized_expression(library_size={_lib})", _build, names=("library_size",))

for _verb in ("get_normalized_expression", "posterior_predictive_sample"):
    for _n in (0, -1, 2.5, True):
        def _build(c: Ctx, verb: str = _verb, n: Any = _n) -> Trial:
            q = c.query()
            return Trial(lambda: getattr(c.model, verb)(q, n_samples=n, sampler=c.Q), watch=[q], refuse=True)

        add(CAT, f"{_verb}(n_samples={_n})", _build, names=("n_samples",))


# =============================================================================================== 2. loaded without data
CAT = "model loaded with adata=None"


@case(CAT, "load(adata=None); impute(q): q not adopted as training data")
def _(c: Ctx) -> Trial:
    m, q = c.loaded(), c.query()

    def check(result: Any, warns: list[str]) -> str | None:
        adopted = getattr(m, "adata", None) is not None
        return chain(impute_ok(q)(result, warns), "the model adopted the query as its training data (model.adata "
                     "is the query)" if adopted else None)

    return Trial(lambda: m.impute(q, sampler=c.Q), watch=[q], check=check)


@case(CAT, "load(adata=None); impute(q); transfer(q2, retention='auto')",
      names=("retention", "training data", "adata"))
def _(c: Ctx) -> Trial:
    m, q, q2 = c.loaded(), c.query(), c.query(seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.impute(q, sampler=c.Q)
    return Trial(lambda: m.transfer(q2, covariates={"batch": "b0"}, retention="auto", sampler=c.Q), watch=[q, q2],
                 refuse=True)


@case(CAT, "load(adata=None); impute(q); train()", names=("adata", "training data"))
def _(c: Ctx) -> Trial:
    m, q = c.loaded(), c.query()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.impute(q, sampler=c.Q)
    return Trial(lambda: m.train(max_steps=2, **FAST), watch=[q], refuse=True)


# ===================================================================================================== 3. unseen labels
CAT = "labels never seen in training (empty category at setup)"
_UNSEEN = ("type_unused",)


@case(CAT, "sample(3, labels='type_unused')", names=_UNSEEN)
def _(c: Ctx) -> Trial:
    return Trial(lambda: c.unused.sample(3, "type_unused", sampler=c.Q), refuse=True)


@case(CAT, "transfer(q, labels='type_unused')", names=_UNSEEN)
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.unused.transfer(q, labels="type_unused", sampler=c.Q), watch=[q], refuse=True)


@case(CAT, "impute(q) with a cell labelled type_unused", names=_UNSEEN)
def _(c: Ctx) -> Trial:
    q = c.query()
    q.obs["cell_type"] = q.obs["cell_type"].cat.add_categories(["type_unused"])
    q.obs.iloc[0, q.obs.columns.get_loc("cell_type")] = "type_unused"
    return Trial(lambda: c.unused.impute(q, sampler=c.Q), watch=[q], refuse=True)


@case(CAT, "interpolate(q, labels=('type_0', 'type_unused'))", names=_UNSEEN)
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.unused.interpolate(q, labels=("type_0", "type_unused"), sampler=c.Q), watch=[q],
                 refuse=True)


# =========================================================================================================== 4. outputs
CAT = "outputs: stale keys, key collisions, exact counts, overwrites"


@case(CAT, "impute(store_samples=True) then impute(store_samples=False): no stale draws")
def _(c: Ctx) -> Trial:
    q = c.query()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.model.impute(q, n_samples=2, store_samples=True, sampler=c.Q)

    def check(result: Any, warns: list[str]) -> str | None:
        stale = "countsdiff_samples" in q.obsm
        return chain(impute_ok(q)(result, warns), "the previous run's draws are left in obsm['countsdiff_samples']"
                     if stale else None)

    return Trial(lambda: c.model.impute(q, n_samples=2, store_samples=False, sampler=c.Q), watch=[q], check=check)


@case(CAT, "impute() then impute(std_key=None): no stale spread")
def _(c: Ctx) -> Trial:
    q = c.query()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.model.impute(q, n_samples=2, sampler=c.Q)

    def check(result: Any, warns: list[str]) -> str | None:
        stale = "countsdiff_imputed_std" in q.layers
        return chain(impute_ok(q)(result, warns), "the previous run's spread is left in layers['countsdiff_imputed_"
                     "std']" if stale else None)

    return Trial(lambda: c.model.impute(q, n_samples=2, std_key=None, sampler=c.Q), watch=[q], check=check)


@case(CAT, "impute(key_added='countsdiff_valid') on data with a validity layer", names=("key_added",))
def _(c: Ctx) -> Trial:
    q = c.query()
    q.layers["countsdiff_valid"] = np.ones(q.shape, bool)
    return Trial(lambda: c.model.impute(q, key_added="countsdiff_valid", sampler=c.Q), watch=[q], refuse=True)


@case(CAT, "correct_batches(key_added='countsdiff_valid')", names=("key_added",))
def _(c: Ctx) -> Trial:
    q = c.query()
    q.layers["countsdiff_valid"] = np.ones(q.shape, bool)
    return Trial(lambda: c.model.correct_batches(q, reference="b0", key_added="countsdiff_valid", sampler=c.Q),
                 watch=[q], refuse=True)


@case(CAT, "impute(key_added='x', std_key='x')", names=("key_added", "std_key"))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.impute(q, n_samples=2, key_added="x", std_key="x", sampler=c.Q), watch=[q],
                 refuse=True)


for _key in ("", None):
    def _build(c: Ctx, key: Any = _key) -> Trial:
        q = c.query()
        return Trial(lambda: c.model.impute(q, key_added=key, sampler=c.Q), watch=[q], refuse=True)

    add(CAT, f"impute(key_added={_key!r})", _build, names=("key_added",))


def _big_count(value: float, row: int, col: int) -> Callable[[Ctx], Trial]:
    def build(c: Ctx) -> Trial:
        q = c.query()
        x = q.X.toarray().astype(np.float64)
        x[row, col] = value
        c.with_x(q, x)
        q.layers["m"] = np.zeros(q.shape, bool)
        q.layers["m"][:, (col + 3) % q.n_vars] = True  # other entries held out; (row, col) observed

        def check(result: Any, warns: list[str]) -> str | None:
            imputed, samples = result
            layer = np.asarray(q.layers["countsdiff_imputed"])
            problems = [impute_ok(q)(result, warns)]
            if float(imputed[row, col]) != value:
                problems.append(f"returned imputation holds {imputed[row, col]!r} instead of {value:.0f}")
            if float(layer[row, col]) != value:
                problems.append(f"layer holds {layer[row, col]!r} ({layer.dtype}) instead of {value:.0f}")
            if samples is not None and not (np.asarray(samples)[row, :, col].astype(np.float64) == value).all():
                problems.append(f"draws hold {np.asarray(samples)[row, :, col]!r} ({samples.dtype}) instead of "
                                f"{value:.0f}")
            return chain(*problems)

        return Trial(lambda: c.model.impute(q, mask_layer="m", n_samples=2, store_samples=True, sampler=c.Q),
                     watch=[q], check=check)

    return build


add(CAT, "impute(mask) keeps an observed count of 16,777,217 exactly", _big_count(16_777_217, 0, 0))
add(CAT, "impute(mask) keeps an observed count of 3e9 exactly", _big_count(3e9, 1, 1))


@case(CAT, "pp.library_condition on data with the user's own obsm['log_library']", names=("overwrite",))
def _(c: Ctx) -> Trial:
    q = c.query()
    q.obsm["log_library"] = np.full((q.n_obs, 1), 7.0)
    return Trial(lambda: c.cds.pp.library_condition(q), watch=[q], refuse=True)


# ----------------------------------------------------------------------------------------------------- the command line
def cli_command() -> list[str]:
    exe = Path(sys.executable).with_name("countsdiff-sc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "countsdiff_sc"]


class CLIExit(Exception):
    """A command line that ended with a non-zero exit code and a one-line message (judged by its message)."""


class CLITraceback(Exception):
    """A command line that ended with a Python traceback."""


def run_cli(args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([*cli_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if "Traceback (most recent call last)" in err:
            raise CLITraceback(last)
        raise CLIExit(f"exit {proc.returncode}: {last}")
    return proc


@case(CAT, "CLI: countsdiff-sc impute IN --out IN (the input itself)", names=("--out",))
def _(c: Ctx) -> Trial:
    path = c.h5ad("cli_same.h5ad")
    return Trial(lambda: run_cli(["impute", path, "--model", c.saved, "--out", path, "--n-samples", "1",
                                  "--n-steps", "2", "--quiet"]), files=[path], refuse=True)


@case(CAT, "CLI: countsdiff-sc impute --key-added countsdiff_valid", names=("--key-added",))
def _(c: Ctx) -> Trial:
    path = c.h5ad("cli_valid.h5ad", valid=True)
    out = c.tmp / "cli_valid_out.h5ad"
    return Trial(lambda: run_cli(["impute", path, "--model", c.saved, "--out", out, "--key-added",
                                  "countsdiff_valid", "--quiet"]), files=[path], refuse=True)


# ================================================================================================ 5. oversized requests
CAT = "requests the machine cannot hold (resource guard)"
QUICK_REFUSAL = 20.0


def _oversized(name: str, names: Sequence[str], run: Callable[[Ctx, Any], Any], wide: bool = True) -> None:
    def build(c: Ctx) -> Trial:
        q = c.query(n_vars=800 if wide else 12)
        return Trial(lambda: run(c, q), watch=[q], refuse=True)

    add(CAT, name, build, names=names, limit=QUICK_REFUSAL)


_oversized("impute(q, n_samples=10**6), 20 cells x 800 genes", ("n_samples",),
           lambda c, q: c.wide.impute(q, n_samples=10**6))
_oversized("transfer(q, n_samples=10**6)", ("n_samples",),
           lambda c, q: c.wide.transfer(q, covariates={"batch": "b0"}, n_samples=10**6))
_oversized("sample(20, 'type_0', sampler=Sampler(n_steps=10**8))", ("n_steps",),
           lambda c, q: c.wide.sample(20, "type_0", sampler=c.cds.Sampler(n_steps=10**8)))
_oversized("sample(10**5, 'type_0', sampler=Sampler(n_steps=10_000)) (the step cap; 8e11 entry-evaluations)",
           ("n_steps",), lambda c, q: c.wide.sample(10**5, "type_0", sampler=c.cds.Sampler(n_steps=10_000)))
_oversized("sample(n_cells=10**8, labels='type_0')", ("n_cells",),
           lambda c, q: c.wide.sample(10**8, "type_0"))
_oversized("sample(labels='type_0', n_samples=10**8) (deprecated keyword)", ("n_cells", "n_samples"),
           lambda c, q: c.wide.sample(labels="type_0", n_samples=10**8))


@case(CAT, "get_normalized_expression(q, n_samples=10**6, return_mean=True) (the exact posterior mean: no draws)",
      names=("n_samples",), limit=QUICK_REFUSAL)
def _(c: Ctx) -> Trial:
    q = c.query(n_vars=800)
    return Trial(lambda: c.wide.get_normalized_expression(q, n_samples=10**6, return_mean=True), watch=[q],
                 check=expression_ok(20, 800))


_oversized("get_normalized_expression(q, n_samples=10**6, return_mean=True, method='depth')", ("n_samples",),
           lambda c, q: c.wide.get_normalized_expression(q, n_samples=10**6, return_mean=True, method="depth"))
_oversized("posterior_predictive_sample(q, n_samples=10**6)", ("n_samples",),
           lambda c, q: c.wide.posterior_predictive_sample(q, n_samples=10**6))
_oversized("correct_batches(q, n_samples=10**6)", ("n_samples",),
           lambda c, q: c.wide.correct_batches(q, reference="b0", n_samples=10**6))
_oversized("interpolate(q, labels=('type_0', 'type_1'), n_cells=10**8)", ("n_cells",),
           lambda c, q: c.wide.interpolate(q, labels=("type_0", "type_1"), n_cells=10**8))
_oversized("DICE embed(q, n_chains=10**6)", ("n_chains",),
           lambda c, q: c.dice.embed(q, n_chains=10**6, progress=False), wide=False)
_oversized("DICE embed(q, n_chains=10**7)", ("n_chains",),
           lambda c, q: c.dice.embed(q, n_chains=10**7, progress=False), wide=False)


# =========================================================================================================== 6. metrics
CAT = "metrics"


def _pair(seed: int = 0, n_genes: int = 12, shift: float = 0.0) -> tuple[Any, Any]:
    import anndata as ad

    rng = np.random.default_rng(seed)
    genes = [f"g{j}" for j in range(n_genes)]
    mean = rng.gamma(2.0, 2.0, n_genes)
    real = ad.AnnData(rng.poisson(mean, (60, n_genes)).astype(np.float32), var=pd.DataFrame(index=genes))
    gen = ad.AnnData(rng.poisson(mean * (1 + shift), (50, n_genes)).astype(np.float32), var=pd.DataFrame(index=genes))
    return real, gen


EG = {"metrics": ["mmd", "gene_statistics", "sparsity"], "n_bootstrap": 0, "space": "log1p"}


@case(CAT, "evaluate_generation with the generated genes in reversed order (data reordered with them)",
      names=("gene",))
def _(c: Ctx) -> Trial:
    real, gen = _pair(shift=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = c.cds.metrics.evaluate_generation(real.copy(), gen.copy(), **EG)
    rev = gen[:, ::-1].copy()

    def check(df: Any, warns: list[str]) -> str | None:
        a = expected.set_index("metric")["value"].astype(float)
        b = df.set_index("metric")["value"].astype(float).reindex(a.index)
        bad = ~np.isclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-8, equal_nan=True)
        return f"differs from the same-order result on {list(a.index[bad])}" if bad.any() else None

    return Trial(lambda: c.cds.metrics.evaluate_generation(real, rev, **EG), watch=[real, rev], check=check)


@case(CAT, "evaluate_generation with disjoint gene names", names=("gene",))
def _(c: Ctx) -> Trial:
    real, gen = _pair()
    gen.var_names = [f"x{j}" for j in range(gen.n_vars)]
    return Trial(lambda: c.cds.metrics.evaluate_generation(real, gen, **EG), watch=[real, gen], refuse=True)


@case(CAT, "frechet_distance with a non-PSD covariance", names=("sigma", "semi-definite", "semidefinite", "psd"))
def _(c: Ctx) -> Trial:
    s = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    mu = np.zeros(2)
    return Trial(lambda: c.cds.metrics.frechet_distance(mu, s, mu + 1.0, s), check=undefined_metric)


@case(CAT, "mmd on values of scale 1e20 (the same as at scale 1)", names=("scale", "finite", "overflow"))
def _(c: Ctx) -> Trial:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(0.5, 1.0, size=(50, 5))
    ref = float(c.cds.metrics.mmd(x, y))
    return Trial(lambda: c.cds.metrics.mmd(x * 1e20, y * 1e20), check=lambda v, w: metric_value(v, w, ref, 0.02))


@case(CAT, "r2 with a constant truth", names=("true", "constant", "variance"))
def _(c: Ctx) -> Trial:
    rng = np.random.default_rng(0)
    true, imp = np.full((10, 5), 3.0), rng.poisson(3.0, (10, 5)).astype(float)
    return Trial(lambda: c.cds.metrics.r2(true, imp), check=undefined_metric)


for _metric in ("r2", "pearson"):
    def _build(c: Ctx, metric: str = _metric) -> Trial:
        rng = np.random.default_rng(0)
        true, imp = rng.poisson(3.0, (10, 5)).astype(float), rng.poisson(3.0, (10, 5)).astype(float)
        mask = np.zeros((10, 5), bool)
        mask[2, 3] = True
        return Trial(lambda: getattr(c.cds.metrics, metric)(true, imp, mask), check=undefined_metric)

    add(CAT, f"{_metric} with a single-entry mask", _build, names=("mask", "entry", "entries"))


@case(CAT, "evaluate_generation with all-zero generated cells: NaN only with a warning", names=("zero", "generated"))
def _(c: Ctx) -> Trial:
    real, gen = _pair()
    gen.X = np.zeros_like(gen.X)

    def check(df: Any, warns: list[str]) -> str | None:
        nan = df.loc[~np.isfinite(df["value"].astype(float)), "metric"].tolist()
        return f"NaN for {nan} without a warning" if nan and not warns else None

    return Trial(lambda: c.cds.metrics.evaluate_generation(real, gen, **EG), watch=[real], check=check)


@case(CAT, "evaluate_generation(metrics=[])", names=("metrics",))
def _(c: Ctx) -> Trial:
    real, gen = _pair()
    return Trial(lambda: c.cds.metrics.evaluate_generation(real, gen, metrics=[]), watch=[real, gen], refuse=True)


# ================================================================================================== 7. ignored settings
CAT = "settings accepted and ignored"


@case(CAT, "train(plan_kwargs={'learning_rate': 0.5})", names=("learning_rate",))
def _(c: Ctx) -> Trial:
    m = c.fresh()
    return Trial(lambda: m.train(max_steps=2, plan_kwargs={"learning_rate": 0.5}, **FAST), watch=[c.train_adata],
                 refuse=True)


@case(CAT, "train(plan_kwargs={'nonsense': 1})", names=("nonsense",))
def _(c: Ctx) -> Trial:
    m = c.fresh()
    return Trial(lambda: m.train(max_steps=2, plan_kwargs={"nonsense": 1}, **FAST), watch=[c.train_adata],
                 refuse=True)


@case(CAT, "CountsDiffModel(adata, backbone_kwargs={'n_hidden': 0})", names=("n_hidden",))
def _(c: Ctx) -> Trial:
    adata = c.train_adata
    return Trial(lambda: c.cds.CountsDiffModel(adata, backbone_kwargs={"n_hidden": 0}), watch=[adata], refuse=True)


@case(CAT, "DICEModel(adata, n_latent=2.5)", names=("n_latent",))
def _(c: Ctx) -> Trial:
    adata = make_counts(seed=7)
    c.cds.DICEModel.setup_anndata(adata, labels_key="cell_type")
    return Trial(lambda: c.cds.DICEModel(adata, n_latent=2.5, n_hidden=16, n_blocks=1, dim_time=8), watch=[adata],
                 refuse=True)


@case(CAT, "DICE embed(q, n_iter=2.5)", names=("n_iter",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.dice.embed(q, n_iter=2.5, n_chains=2, progress=False), watch=[q], refuse=True)


@case(CAT, "pp.mark_dropouts(adata, groupby='cell_type', n_pcs=0)", names=("n_pcs",))
def _(c: Ctx) -> Trial:
    q = c.query(n=60)
    return Trial(lambda: c.cds.pp.mark_dropouts(q, groupby="cell_type", n_pcs=0), watch=[q], refuse=True)


@case(CAT, "get_normalized_expression(q, indices=<boolean of n_obs - 1>)", names=("indices",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.get_normalized_expression(q, indices=np.ones(q.n_obs - 1, bool), sampler=c.Q),
                 watch=[q], refuse=True)


@case(CAT, "transfer(q, indices=<boolean of n_obs + 1>)", names=("indices",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.transfer(q, covariates={"batch": "b0"}, indices=np.ones(q.n_obs + 1, bool),
                                          sampler=c.Q), watch=[q], refuse=True)


# ==================================================================================================== 8. raw tracebacks
CAT = "raw tracebacks of the first audit"

for _acc in ("gpu", "tpu", "foo"):
    def _build(c: Ctx, acc: str = _acc) -> Trial:
        import torch

        m = c.fresh()
        if acc == "gpu" and torch.cuda.is_available():  # pragma: no cover - a GPU machine: valid, must train
            return Trial(lambda: m.train(max_steps=2, accelerator="gpu", enable_progress_bar=False),
                         watch=[c.train_adata], check=lambda r, w: None)
        return Trial(lambda: m.train(max_steps=2, accelerator=acc, enable_progress_bar=False), watch=[c.train_adata],
                     refuse=True)

    add(CAT, f"train(accelerator={_acc!r}) on CPU", _build, names=("accelerator",))


@case(CAT, "load(dir, adata, accelerator='gpu') on CPU", names=("accelerator",))
def _(c: Ctx) -> Trial:
    import torch

    adata = c.train_adata
    if torch.cuda.is_available():  # pragma: no cover
        return Trial(lambda: c.cds.CountsDiffModel.load(str(c.saved), adata=adata, accelerator="gpu"),
                     check=lambda r, w: None)
    return Trial(lambda: c.cds.CountsDiffModel.load(str(c.saved), adata=adata, accelerator="gpu"), watch=[adata],
                 refuse=True)


@case(CAT, "impute(q, sampler=Sampler(seed=-1))", names=("seed",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.impute(q, sampler=c.cds.Sampler(n_steps=3, seed=-1, progress=False)), watch=[q],
                 refuse=True)


@case(CAT, "pp.mark_dropouts(adata, groupby=None, seed=-1) (the seed of the clustering)", names=("seed",))
def _(c: Ctx) -> Trial:
    q = c.query(n=60)
    return Trial(lambda: c.cds.pp.mark_dropouts(q, groupby=None, seed=-1), watch=[q], refuse=True)


@case(CAT, "pp.mask_mcar(adata, rate=0.2, seed=-1)", names=("seed",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.cds.pp.mask_mcar(q, rate=0.2, seed=-1), watch=[q], refuse=True)


@case(CAT, "DICE embed(q, seed=-1)", names=("seed",))
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.dice.embed(q, n_iter=2, n_chains=2, seed=-1, progress=False), watch=[q], refuse=True)


for _label, _kw in (("train(lr=nan) (deprecated keyword)", {"lr": float("nan")}),
                    ("train(plan_kwargs={'lr': nan})", {"plan_kwargs": {"lr": float("nan")}}),
                    ("train(optimizer='SGD') (deprecated keyword)", {"optimizer": "SGD"}),
                    ("train(plan_kwargs={'optimizer': 'SGD'})", {"plan_kwargs": {"optimizer": "SGD"}})):
    def _build(c: Ctx, kw: dict = _kw) -> Trial:
        m = c.fresh()
        return Trial(lambda: m.train(max_steps=2, **FAST, **kw), watch=[c.train_adata], refuse=True)

    add(CAT, _label, _build, names=("lr",) if "lr" in _label else ("optimizer",))


@case(CAT, "train(early_stopping=True, train_size=1.0)", names=("early_stopping", "train_size"))
def _(c: Ctx) -> Trial:
    m = c.fresh()
    return Trial(lambda: m.train(max_steps=2, early_stopping=True, train_size=1.0, **FAST), watch=[c.train_adata],
                 refuse=True)


@case(CAT, "setup_anndata(categorical_covariate_keys=['batch', 'batch'])",
      names=("categorical_covariate_keys", "twice", "duplicat", "repeated", "more than once"))
def _(c: Ctx) -> Trial:
    adata = make_counts(n_obs=30)
    return Trial(lambda: c.cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type",
                                                              categorical_covariate_keys=["batch", "batch"]),
                 watch=[adata], refuse=True)


@case(CAT, "setup_anndata on a 0-cell AnnData", names=("no cells", "0 cells", "zero cells", "empty"))
def _(c: Ctx) -> Trial:
    adata = make_counts(n_obs=30)[:0].copy()
    return Trial(lambda: c.cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type"), watch=[adata],
                 refuse=True)


@case(CAT, "impute on a 0-cell query", names=("no cells", "0 cells", "zero cells", "empty"))
def _(c: Ctx) -> Trial:
    q = c.query()[:0].copy()
    return Trial(lambda: c.model.impute(q, sampler=c.Q), watch=[q], refuse=True)


@case(CAT, "get_normalized_expression on a 0-cell query", names=("no cells", "0 cells", "zero cells", "empty"))
def _(c: Ctx) -> Trial:
    q = c.query()[:0].copy()
    return Trial(lambda: c.model.get_normalized_expression(q, sampler=c.Q), watch=[q], refuse=True)


@case(CAT, "save() to an existing directory without overwrite", names=("overwrite",))
def _(c: Ctx) -> Trial:
    path = c.tmp / "exists"
    path.mkdir(exist_ok=True)
    (path / "keep.txt").write_text("the user's file")
    return Trial(lambda: c.model.save(str(path)), files=[path / "keep.txt"], refuse=True)


@case(CAT, "save() to a path that is a file", names=("file", "dir_path", "directory"))
def _(c: Ctx) -> Trial:
    path = c.tmp / "a_file.txt"
    path.write_text("the user's file")
    return Trial(lambda: c.model.save(str(path), overwrite=True), files=[path], refuse=True)


@case(CAT, "load() of a directory with a corrupt model.pt", names=("model.pt",))
def _(c: Ctx) -> Trial:
    path = c.tmp / "corrupt"
    shutil.copytree(c.saved, path, dirs_exist_ok=True)
    (path / "model.pt").write_bytes(b"not a torch file" * 10)
    return Trial(lambda: c.cds.CountsDiffModel.load(str(path), adata=None, accelerator="cpu"), refuse=True)


@case(CAT, "CountsDiffModel.load() of a saved DICE model", names=("DICE",))
def _(c: Ctx) -> Trial:
    path = c.dice_dir
    return Trial(lambda: c.cds.CountsDiffModel.load(str(path), adata=None, accelerator="cpu"), refuse=True)


@case(CAT, "impute(q) with a label the model never saw ('type_9')", names=("type_9",))
def _(c: Ctx) -> Trial:
    q = c.query()
    q.obs["cell_type"] = q.obs["cell_type"].cat.add_categories(["type_9"])
    q.obs.iloc[0, q.obs.columns.get_loc("cell_type")] = "type_9"
    return Trial(lambda: c.model.impute(q, sampler=c.Q), watch=[q], refuse=True)


for _verb in ("get_normalized_expression", "impute"):
    def _build(c: Ctx, verb: str = _verb) -> Trial:
        q = c.query()
        q.obsm["cond"] = np.random.default_rng(0).normal(size=(q.n_obs, 3)).astype(np.float32)
        return Trial(lambda: getattr(c.cond, verb)(q, sampler=c.Q), watch=[q], refuse=True)

    add(CAT, f"{_verb} with a 3-column obsm condition (model: 2)", _build, names=("cond",))


@case(CAT, "get_normalized_expression(q, indices=slice(0, 5))")
def _(c: Ctx) -> Trial:
    q = c.query()

    def check(df: Any, warns: list[str]) -> str | None:
        if isinstance(df, pd.DataFrame) and list(df.index) != list(q.obs_names[:5]):
            return f"rows {list(df.index)[:6]}, expected the first 5 cells"
        return expression_ok(5)(df, warns)

    return Trial(lambda: c.model.get_normalized_expression(q, indices=slice(0, 5), sampler=c.Q), watch=[q],
                 check=check)


# ================================================================================================== 9. unclear messages
CAT = "unclear messages of the first audit"


@case(CAT, "metrics.clisi(x, labels, n_neighbors=0)", names=("n_neighbors",))
def _(c: Ctx) -> Trial:
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(60, 5)), np.repeat(["a", "b", "c"], 20)
    return Trial(lambda: c.cds.metrics.clisi(x, labels, n_neighbors=0), refuse=True)


@case(CAT, "setup_anndata on a 0-gene AnnData", names=("no genes", "0 genes", "zero genes", "genes"))
def _(c: Ctx) -> Trial:
    adata = make_counts(n_obs=30)[:, :0].copy()
    return Trial(lambda: c.cds.CountsDiffModel.setup_anndata(adata, labels_key="cell_type"), watch=[adata],
                 refuse=True)


@case(CAT, "pp.mark_dropouts on a 0-gene AnnData (an empty layer or a refusal)",
      names=("no genes", "0 genes", "zero genes", "genes"))
def _(c: Ctx) -> Trial:
    adata = make_counts(n_obs=30)[:, :0].copy()

    def check(result: Any, warns: list[str]) -> str | None:
        layer = adata.layers.get("countsdiff_valid")
        ok = layer is not None and layer.shape == (30, 0) and np.asarray(dense(layer)).dtype == bool
        return None if ok else f"validity layer {None if layer is None else (layer.shape, layer.dtype)}"

    return Trial(lambda: c.cds.pp.mark_dropouts(adata, groupby="cell_type"), watch=[adata], check=check,
                 owned={"countsdiff_valid"})


@case(CAT, "impute(None) on a model loaded without data", names=("adata",))
def _(c: Ctx) -> Trial:
    m = c.loaded()
    return Trial(lambda: m.impute(None, sampler=c.Q), refuse=True)


# ========================================================================================================= 10. friction
CAT = "friction"


@case(CAT, "CLI: countsdiff-sc impute missing.h5ad reports within 5 s (before importing scvi-tools)",
      names=("missing.h5ad",), limit=5.0)
def _(c: Ctx) -> Trial:
    missing = c.tmp / "missing.h5ad"
    return Trial(lambda: run_cli(["impute", missing, "--model", c.tmp / "no_model", "--out", c.tmp / "o.h5ad"]),
                 refuse=True)


@case(CAT, "train(devices=3) on CPU", names=("devices", "strategy"))
def _(c: Ctx) -> Trial:
    m = c.fresh()
    return Trial(lambda: m.train(max_steps=2, accelerator="cpu", devices=3, enable_progress_bar=False),
                 watch=[c.train_adata], refuse=True)


# ============================================================================================== 11. deprecated keywords
CAT = "deprecated keywords of the new API (FutureWarning, same result)"


def _future(check: Callable[[Any, list[str]], str | None]) -> Callable[[Any, list[str]], str | None]:
    def wrapped(result: Any, warns: list[str]) -> str | None:
        return chain(check(result, warns), None if warned(warns, "deprecated", "FutureWarning")
                     else "no FutureWarning")

    return wrapped


@case(CAT, "impute(q, n_steps=3, seed=0, progress=False)")
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.impute(q, n_samples=2, n_steps=3, seed=0, progress=False), watch=[q],
                 check=_future(impute_ok(q)))


@case(CAT, "sample(labels='type_0', n_samples=4)")
def _(c: Ctx) -> Trial:
    return Trial(lambda: c.model.sample(labels="type_0", n_samples=4, sampler=c.Q),
                 check=_future(cells_ok(4, "type_0")))


@case(CAT, "interpolate(q, 'type_0', 'type_1')")
def _(c: Ctx) -> Trial:
    q = c.query()
    return Trial(lambda: c.model.interpolate(q, "type_0", "type_1", sampler=c.Q), watch=[q],
                 check=_future(lambda out, w: counts_problem(out.X, "the interpolated counts")))


# ===================================================================================================== running one case
class CaseTimeout(BaseException):
    """Raised by the alarm in a case that ran past its limit (a BaseException: ``except Exception`` cannot eat it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def _freeze(m: Any) -> Any:
    import scipy.sparse as sp

    if sp.issparse(m):
        m = m.tocsr()
        return ("sparse", m.dtype.str, m.shape, m.data.tobytes(), m.indices.tobytes(), m.indptr.tobytes())
    if isinstance(m, pd.DataFrame):
        return ("frame", pickle.dumps(m))
    a = np.asarray(m)
    return (a.dtype.str, a.shape, a.tobytes() if a.dtype != object else pickle.dumps(a))


def _uns_value(v: Any) -> Any:
    try:
        return pickle.dumps(v)
    except Exception:  # an unpicklable entry: compared by repr
        return repr(v)


def snapshot(adata: Any) -> dict[str, Any]:
    return {"X": _freeze(adata.X) if adata.X is not None else None, "shape": adata.shape,
            "var": pickle.dumps(adata.var), "obs_names": list(adata.obs_names),
            "obs": {k: pickle.dumps(adata.obs[k]) for k in adata.obs.columns},
            "layers": {k: _freeze(v) for k, v in adata.layers.items()},
            "obsm": {k: _freeze(v) for k, v in adata.obsm.items()},
            "uns": {k: _uns_value(v) for k, v in adata.uns.items()}}


def _internal(key: str) -> bool:
    return key.startswith("_scvi")


def compare(before: dict[str, Any], adata: Any, strict: bool, owned: set[str]) -> str | None:
    """What changed in the user's object (None: nothing that must not)."""
    after = snapshot(adata)
    for part in ("X", "shape", "var", "obs_names"):
        if after[part] != before[part]:
            return f"{part} changed"
    for part in ("obs", "layers", "obsm", "uns"):
        allowed = owned | {"layers": OWNED_LAYERS, "obsm": OWNED_OBSM, "uns": OWNED_UNS, "obs": set()}[part]
        for k, v in before[part].items():
            if _internal(k) or (not strict and k in allowed):
                continue
            if k not in after[part]:
                return f"{part}[{k!r}] removed"
            if after[part][k] != v:
                return f"{part}[{k!r}] changed"
        if strict:
            new = [k for k in after[part] if k not in before[part] and not _internal(k)]
            if new:
                return f"a refused call added {part} {new}"
    return None


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def judge_error(err: BaseException, names: Sequence[str]) -> tuple[str, str]:
    """``(outcome, message)`` of an exception."""
    message = _first_line(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
    label = f"{type(err).__name__}: {message}"
    names_it = any(n.lower() in str(err).lower() for n in names)
    if isinstance(err, CLITraceback):
        return "raw traceback", f"CLI traceback: {message}"
    if isinstance(err, CLIExit):
        return ("clear error" if names_it else "raw traceback"), f"CLI {message}"
    frames = traceback.extract_tb(err.__traceback__)
    where = frames[-1].filename if frames else ""
    own_type = type(err).__module__ == "builtins" or type(err).__module__.startswith("countsdiff_sc")
    bug = isinstance(err, (AttributeError, IndexError, AssertionError, ZeroDivisionError, MemoryError,
                           RecursionError, NameError, UnboundLocalError, NotImplementedError))
    if not own_type or bug or not where.startswith(PKG):
        origin = Path(where).parts[-3:] if where else ()
        return "raw traceback", f"{label} [raised in {'/'.join(origin)}]"
    if not names_it:
        return "raw traceback", f"{label} [does not name {' / '.join(names)}]"
    return "clear error", label


def run_case(c: Any, spec: Case) -> dict[str, Any]:
    """Build, run and classify one case."""
    record: dict[str, Any] = {"category": spec.category, "case": spec.name, "seconds": 0.0}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(max(1, spec.limit + 240)))  # building the fixtures has its own, generous limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = spec.build(c)
    except CaseTimeout:
        return {**record, "outcome": "hang", "message": "building the case's fixtures ran out of time"}
    except Exception as err:  # a setup failure is reported, not raised
        return {**record, "outcome": "raw traceback",
                "message": f"in the case's setup: {type(err).__name__}: {_first_line(str(err))}"}
    finally:
        signal.alarm(0)
    before = [snapshot(a) for a in trial.watch]
    digests = [_digest(p) for p in trial.files]
    warns: list[str] = []
    result, error = None, None
    t0 = time.perf_counter()
    signal.alarm(int(np.ceil(spec.limit)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trial.call()
    except CaseTimeout:
        error = "timeout"
    except BaseException as err:  # everything a call raises is classified
        if isinstance(err, KeyboardInterrupt):
            raise
        error = err
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - t0
    record["seconds"] = round(seconds, 3)
    warns = [f"{w.category.__name__}: {w.message}" for w in caught] if error != "timeout" else []
    if error == "timeout":
        return {**record, "outcome": "hang", "message": f"no answer within {spec.limit:.0f} s"}
    changed = next((f"{p.name}: {'changed' if d else 'created'}" for p, d in zip(trial.files, digests, strict=True)
                    if _digest(p) != d), None)
    if changed is None:
        changed = next((m for a, b in zip(trial.watch, before, strict=True)
                        if (m := compare(b, a, strict=error is not None, owned=trial.owned))), None)
    if error is not None:
        outcome, message = judge_error(error, spec.names)
        if changed:
            outcome, message = "mutation", f"{changed} (then {message})"
    else:
        problem = refused(result, warns) if trial.refuse else (trial.check(result, warns) if trial.check else None)
        if changed:
            outcome, message = "mutation", changed + (f"; also {problem}" if problem else "")
        elif problem:
            outcome, message = "silently wrong", problem
        else:
            useful = [w for w in warns if "lightning" not in w.lower() and "GPU available" not in w]
            outcome, message = "right result", (_first_line(useful[0]) if useful else "")
    if seconds > spec.limit and outcome in GOOD:  # a CLI run that answered, but too late
        outcome, message = "hang", f"answered after {seconds:.1f} s (limit {spec.limit:.0f} s): {message}"
    return {**record, "outcome": outcome, "message": message}


# ==================================================================================================== worker and parent
def selected(quick: bool) -> list[Case]:
    if not quick:
        return list(CASES)
    seen: dict[str, int] = {}
    out = []
    for spec in CASES:
        seen[spec.category] = seen.get(spec.category, 0) + 1
        if seen[spec.category] <= 2:
            out.append(spec)
    return out


def worker(start: int, quick: bool) -> None:
    """Run the selected cases from ``start`` on, printing ``@@BEGIN i`` and ``@@CASE {json}`` lines."""
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:  # a DDP child re-running this script: stop at once
        sys.exit(0)
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(ADDRESS_SPACE, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    common.start(0, 1)
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cases = selected(quick)
    with tempfile.TemporaryDirectory(prefix="careless_") as tmp:
        ctx = Ctx(Path(tmp))
        for i in range(start, len(cases)):
            print(f"@@BEGIN {i}", flush=True)
            rec = run_case(ctx, cases[i])
            rec["message"] = rec["message"].replace(str(tmp), "$TMP")  # the same page on every run
            print("@@CASE " + json.dumps({"index": i, **rec}, default=str), flush=True)


def run_all(quick: bool) -> list[dict[str, Any]]:
    """Run every selected case in worker subprocesses; a worker that hangs or dies is replaced at the next case."""
    cases = selected(quick)
    results: dict[int, dict[str, Any]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(common.ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    i = 0
    while i < len(cases):
        with tempfile.TemporaryFile("w+") as errlog:
            cmd = [sys.executable, "-m", "benchmarks.careless_user", "--worker", str(i)] + (["--quick"] if quick
                                                                                          else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errlog, cwd=common.ROOT, env=env)
            fd = proc.stdout.fileno()
            buf, current, started = b"", None, time.monotonic()
            while True:
                budget = (cases[current].limit + 240 + GRACE) if current is not None else 600.0
                wait = budget - (time.monotonic() - started)
                ready = select.select([fd], [], [], max(wait, 0.0))[0] if wait > 0 else []
                if not ready:  # far past the limit: killed
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError("the worker did not start")
                    results[current] = {"index": current, "category": cases[current].category,
                                        "case": cases[current].name, "outcome": "hang",
                                        "seconds": round(time.monotonic() - started, 1),
                                        "message": "killed: no answer (not even to the alarm) within "
                                                   f"{budget:.0f} s"}
                    common.log(f"[{current}] hang (worker killed): {cases[current].name}")
                    i = current + 1
                    break
                chunk = os.read(fd, 65536)
                if not chunk:  # the worker ended
                    rc = proc.wait()
                    if current is not None:
                        errlog.seek(0)
                        tail = [ln for ln in errlog.read().splitlines() if ln.strip()][-1:]
                        results[current] = {"index": current, "category": cases[current].category,
                                            "case": cases[current].name, "outcome": "hang",
                                            "seconds": round(time.monotonic() - started, 1),
                                            "message": f"the worker process died (exit code {rc}): "
                                                       f"{tail[0] if tail else ''}"}
                        common.log(f"[{current}] worker died ({rc}): {cases[current].name}")
                        i = current + 1
                    else:
                        if rc != 0 and i < len(cases) and i not in results:
                            errlog.seek(0)
                            raise RuntimeError(f"worker failed at start (exit {rc}):\n{errlog.read()[-3000:]}")
                        i = len(cases)
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    if line.startswith("@@BEGIN "):
                        current, started = int(line.split()[1]), time.monotonic()
                    elif line.startswith("@@CASE "):
                        rec = json.loads(line[7:])
                        results[rec["index"]] = rec
                        common.log(f"[{rec['index']:3d}] {rec['outcome']:14s} {rec['seconds']:7.2f} s  "
                                   f"{rec['case']}  | {rec['message'][:110]}")
                        current, started, i = None, time.monotonic(), rec["index"] + 1
    return [results[k] for k in sorted(results)]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def page(rows: list[dict[str, Any]], quick: bool, total_s: float) -> tuple[list[str], dict[str, Any]]:
    df = pd.DataFrame(rows)
    cats = list(dict.fromkeys(df["category"]))
    summary = pd.crosstab(pd.Categorical(df["category"], categories=cats),
                          pd.Categorical(df["outcome"], categories=list(OUTCOMES)), dropna=False)
    summary.loc["total"] = summary.sum()
    summary["cases"] = summary.sum(axis=1)
    summary.index.name = "category"
    bad = df[~df["outcome"].isin(GOOD)]
    lines = [f"# A careless user, round two: the inputs of issue 32 ({'quick' if quick else 'full'} mode)", "",
             common.machine_header("careless_user", quick, total_s), "",
             "Every concrete input named in issue 32 (and the deprecated keywords of the new API), run on tiny models "
             "and classified automatically; protocol, fixtures and the outcome definitions: the docstring of "
             "`benchmarks/careless_user.py`. Right result and clear error are the two acceptable outcomes.", "",
             f"**{len(df)} cases: " + ", ".join(f"{int((df['outcome'] == o).sum())} {o}" for o in OUTCOMES) + ".**",
             "", "## Outcomes per category", "", common.frame_to_markdown(summary), ""]
    if len(bad):
        lines += ["## Cases that are neither a right result nor a clear error", ""]
        lines += [f"- **{r.outcome}** ({r.category}): `{r.case}` - {_cell(r.message)}" for r in bad.itertuples()]
        lines += [""]
    lines += ["## Every case", "", "| category | case | outcome | s | message |", "|---|---|---|---|---|"]
    lines += [f"| {_cell(r.category)} | {_cell(r.case)} | {r.outcome} | {r.seconds:.2f} | {_cell(r.message)} |"
              for r in df.itertuples()]
    payload = {"machine": common.machine_info(), "total_s": total_s, "n_cases": len(df),
               "totals": {o: int((df["outcome"] == o).sum()) for o in OUTCOMES},
               "summary": {str(k): {str(c): int(v) for c, v in row.items()} for k, row in summary.iterrows()},
               "cases": rows}
    return lines, payload


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the first two cases of each category")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        worker(args.worker, args.quick)
        return
    common.quiet()
    t0 = time.perf_counter()
    common.log(f"{len(selected(args.quick))} cases")
    rows = run_all(args.quick)
    lines, payload = page(rows, args.quick, time.perf_counter() - t0)
    common.write_results(common.result_stem("careless_user", args.quick), lines, payload)


if __name__ == "__main__":
    main()
