"""Thread settings under load: ``countsdiff-sc demo --quick`` and ``perf.py``'s headline measurements with 1 and 2
threads, on idle cores and next to one competing busy process.

Why: torch's default is one intra-op thread per core, and its OpenMP workers spin while they wait. On the project's
2-core machine, next to one other busy process, ``demo --quick`` took 336 s with the default threads and 23.5 s with
``OMP_NUM_THREADS=1``. This script measures that trade-off for the package's own setting
(``countsdiff_sc.settings.num_threads``, the CLI's ``--threads``), so the defaults can be checked on any machine.

* **demo**: the wall time of ``countsdiff-sc demo --quick --threads N`` in a fresh process (``OMP_NUM_THREADS`` and
  ``MKL_NUM_THREADS`` removed from its environment, so that ``--threads`` alone decides);
* **perf headline**: ``perf.py``'s workers (a fresh process each, ``N`` OMP / MKL / torch threads) for the numbers the
  README quotes: training seconds per step of the MLP and of scVI (and their throughput ratio, the headline), and
  the imputation time of an untrained MLP (20 steps, 50% MCAR mask, one draw);
* **load**: ``idle``, or ``busy``: one competing process started before the measurement and stopped after it, by
  default a torch matrix-product loop with torch's default threads (``--competitor torch``: another job like ours),
  or a one-thread pure-Python loop (``--competitor spin``).

Every condition is a fresh process, so the order of the runs matters little; on a shared machine other load changes
the numbers (the page records the load average before each run). Usage::

    python -m benchmarks.threads                 # full run (about 10 minutes on 2 idle cores; longer when busy)
    python -m benchmarks.threads --tiny          # seconds-long settings that only check the script runs

Writes ``benchmarks/results/threads.md`` / ``.json`` (``benchmarks/results/quick/threads_tiny.*`` with ``--tiny``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from benchmarks import _common as common

ROOT = Path(__file__).resolve().parent.parent
COMPETITORS = {
    # another job like ours: torch's default threads (one per core), OpenMP workers that spin between operations
    "torch": "import torch\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n",
    # one busy core, nothing else
    "spin": "while True:\n    pass\n",
}


def headline_specs(tiny: bool) -> list[dict]:
    """The perf.py measurements behind the README's headline: MLP and scVI training steps, one imputation."""
    if tiny:
        train = {"n_cells": 300, "n_genes": 500, "warmup": 1, "steps": 2}
        impute = {"n_cells": 50, "n_genes": 500, "n_samples": 1, "n_steps": 2}
    else:
        train = {"n_cells": 3000, "n_genes": 500, "warmup": 10, "steps": 50}
        impute = {"n_cells": 1000, "n_genes": 500, "n_samples": 1, "n_steps": 20}
    return [{"task": "train", "model": "mlp", **train}, {"task": "train", "model": "scvi", **train},
            {"task": "impute", "model": "mlp", "store_samples": False, **impute}]


@contextmanager
def competitor(kind: str | None) -> Iterator[subprocess.Popen | None]:
    """Run one competing busy process (``COMPETITORS[kind]``) for the duration of the block; None: nothing."""
    if kind is None:
        yield None
        return
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # let it start (torch's import) before the measurement
        yield proc
    finally:
        proc.kill()
        proc.wait()


def run_demo(threads: int, tiny: bool, timeout: float) -> dict:
    """Wall time of ``countsdiff-sc demo --quick --threads N`` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="cds_threads_") as tmp:
        cmd = [sys.executable, "-m", "countsdiff_sc", "demo", "--quick", "--quiet", "--threads", str(threads),
               "--out", str(Path(tmp) / "demo.h5ad")]
        if tiny:
            cmd += ["--max-steps", "1", "--n-steps", "2", "--n-samples", "1"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f} s"}
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"seconds": seconds}


def measure(threads: list[int], loads: list[str], kind: str, tiny: bool, timeout: float) -> list[dict]:
    """Every (load, threads) condition: the demo and the perf headline; one row per measurement."""
    rows: list[dict] = []
    for load in loads:
        for n in threads:
            with competitor(kind if load == "busy" else None):
                load_avg = os.getloadavg()[0]
                common.log(f"{load} ({kind if load == 'busy' else 'no competitor'}), {n} thread(s): demo --quick")
                rows.append({"measure": "demo --quick (s)", "load": load, "threads": n, "load_average": load_avg,
                             **run_demo(n, tiny, timeout)})
                for spec in headline_specs(tiny):
                    worker_spec = {**spec, "threads": n, "device": "cpu", "precision": "32"}
                    out = common.run_worker("benchmarks.perf", worker_spec, timeout)
                    name = f"{spec['task']} {spec['model']} ({'s/step' if spec['task'] == 'train' else 's'})"
                    value = out.get("s_per_step") if spec["task"] == "train" else out.get("total_s")
                    row = {"measure": name, "load": load, "threads": n, "load_average": load_avg}
                    rows.append({**row, "seconds": value} if value is not None else {**row, "error": out.get("error")})
    return rows


def tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Seconds per condition, the thread ratio (each count against the first), the load ratio (busy / idle) and
    the headline (MLP / scVI training throughput) per condition."""
    df = pd.DataFrame([r for r in rows if r.get("seconds") is not None])
    if df.empty:
        return {}
    wide = df.pivot_table(index="measure", columns=["load", "threads"], values="seconds", sort=False)
    out = {"Seconds": wide}
    loads = list(dict.fromkeys(df["load"]))
    counts = sorted(set(df["threads"]))
    ratio = pd.DataFrame(index=wide.index)
    for load in loads:
        for n in counts[1:]:
            if (load, n) in wide.columns and (load, counts[0]) in wide.columns:
                ratio[f"{load}: {n} / {counts[0]} threads"] = wide[(load, n)] / wide[(load, counts[0])]
    if "idle" in loads and "busy" in loads:
        for n in counts:
            if ("busy", n) in wide.columns and ("idle", n) in wide.columns:
                ratio[f"busy / idle, {n} thread(s)"] = wide[("busy", n)] / wide[("idle", n)]
    if len(ratio.columns):
        out["Ratios of seconds (below 1: faster)"] = ratio
    mlp, scvi = "train mlp (s/step)", "train scvi (s/step)"
    if mlp in wide.index and scvi in wide.index:
        out["Headline: MLP / scVI training throughput"] = (wide.loc[scvi] / wide.loc[mlp]).to_frame("ratio").T
    return out


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """Column tuples ``(load, threads)`` as ``"load, N thread(s)"`` for markdown."""
    frame = table.copy()
    frame.columns = [f"{c[0]}, {c[1]} thread(s)" if isinstance(c, tuple) else str(c) for c in frame.columns]
    return frame


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="seconds-long settings: checks the script, measures nothing")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--loads", default="idle,busy", help="comma-separated: idle, busy (default both)")
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch",
                   help="the busy process of the 'busy' load (default torch: a matrix-product loop, default threads)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement before it is skipped")
    p.add_argument("--out", help="results folder (default benchmarks/results; --tiny: its quick/ subfolder)")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    if not threads or min(threads) < 1 or not set(loads) <= {"idle", "busy"} or not loads:
        p.error("--threads takes positive integers and --loads idle and / or busy")
    t0 = time.perf_counter()
    rows = measure(threads, loads, args.competitor, args.tiny, args.timeout)
    elapsed = time.perf_counter() - t0
    info = common.machine_info()
    train, _, impute = headline_specs(args.tiny)
    command = "python -m benchmarks.threads" + " ".join(["", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"# Threads under load ({'tiny: a check of the script, not a measurement' if args.tiny else 'full'})",
             "", f"Generated by `{command.strip()}` on {info['machine']}; total {elapsed / 60:.1f} min.", "",
             f"- {info['cpu']}, {info['cpus']} logical CPUs; torch {info['torch']}",
             f"- busy: one competing process ({args.competitor}: "
             + ("torch matrix products with torch's default threads" if args.competitor == "torch"
                else "a one-thread Python loop") + ") for the duration of each measurement",
             "- demo: `countsdiff-sc demo --quick --threads N` (OMP_NUM_THREADS unset)"
             + (" with 1 training step" if args.tiny else "") + "; perf: `benchmarks/perf.py` workers with N OMP / MKL "
             f"/ torch threads, training {train['steps']} steps after {train['warmup']} warm-up steps on "
             f"{train['n_cells']:,} CBMC cells, imputation of {impute['n_cells']:,} cells ({impute['n_steps']} steps, "
             "untrained MLP, 50% MCAR mask)",
             "- load average (1 min) before each condition: "
             + ", ".join(f"{r['load']} {r['threads']}: {r['load_average']:.2f}" for r in rows
                         if r["measure"].startswith("demo")), ""]
    for name, table in tables(rows).items():
        lines += [f"## {name}", "", common.frame_to_markdown(_flat(table)), ""]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["## Skipped", ""] + [f"- {r['measure']}, {r['load']}, {r['threads']} thread(s): {r['error']}"
                                       for r in errors] + [""]
    folder = Path(args.out) if args.out else None
    stem = common.result_stem("threads", args.tiny, "_tiny" if args.tiny else "", folder)
    common.write_results(stem, lines, {"settings": vars(args), **info, "elapsed_s": elapsed, "rows": rows})


if __name__ == "__main__":
    main()
