"""What limits CountsDiff's generated cells: one lever at a time, against scVI, in one run (issue 23, item 1).

Protocol (same split, types and metrics as ``benchmarks/generation.py``):

1. cells split 80 / 20 (train / held-out), stratified by the label column, seed fixed; the evaluated types are the
   ``--top`` largest of the held-out cells;
2. one CountsDiff model per lever (all entries of the train cells, labels), each changing one setting of the
   default model (``baseline``): the training budget, the EMA decay, the width / depth of the residual MLP, the
   per-gene gamma-Poisson baseline rate, the loss weight ``w(t)`` (``nll`` instead of the paper's ``-p'(t)``),
   conditioning on the cell's depth (the standardised log library size as a vector condition, generated cells
   drawing it from random train cells of their type), and combinations (run with ``--levers``; the default set is
   the single levers): on top of the depth condition, a 2x budget, the ``nll`` loss weight, the Blackout schedule,
   ``p_uncond`` 0.2, importance-sampled training times (``time_sampling="importance"``), the EMA window
   (``ema_warmup``) and combinations of these (``generation_levers_depth2`` to ``_depth8``, ``_depth_seed1`` / ``2``
   with ``--seed``); the training wall time of each is recorded next to scVI's (same thread count, same run);
3. every model generates, for each type, as many cells as held out (capped by ``--max-cells``) with guidance 1 and
   no attrition under three reverse samplers: Euler 50 steps (today's default), trapezoid 5 steps and trapezoid 10
   steps (10 and 20 network evaluations; see ``benchmarks/steps.py``); so each model is also a replicate of the
   sampler comparison of issue 24;
4. baselines: scVI (NB, no labels, 200 epochs) posterior-predictive draws of random train cells of each type, and
   random train cells of the type (the floor: a second real sample);
5. metrics against the held-out cells of each type, averaged over types: MMD / SWD on 50 PCs, scFID (one scVI
   embedder), random-forest AUC, energy distance, per-gene variance correlation (``generation.set_metrics``); label
   accuracy of a logistic regression on 50 PCs trained on the real train cells; and the library-size ratio
   (median total counts of the generated cells / of the held-out cells of the type).

Every run is one sweep: its results go to ``benchmarks/results/generation_levers[_pbmc68k]<suffix>.json``, and the
one results page ``benchmarks/results/generation_levers.md`` is then rebuilt from all the sweeps' JSON files, one
section per sweep (CBMC before pbmc68k, the sweep without a suffix first, then the suffixes in natural order).
``--assemble`` only rebuilds that page from the JSON files, training nothing.

Usage::

    python -m benchmarks.generation_levers                       # CBMC, all levers (~60 min, one thread)
    python -m benchmarks.generation_levers --dataset pbmc68k     # the bundled pbmc68k subset
    python -m benchmarks.generation_levers --quick               # smoke test (~3 min; under benchmarks/results/quick/)
    python -m benchmarks.generation_levers --levers "depth + loss weight nll" "depth + nll + p_uncond 0.2" \
        --suffix _depth3                                         # chosen levers, a sweep of its own
    python -m benchmarks.generation_levers --assemble            # rebuild the page from the committed sweeps
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks._generation_common import library_draws, log_library_condition, set_metrics, split_held_out

# name -> (training-step multiplier of --max-steps, CountsDiffModel keyword arguments)
LEVERS: dict[str, tuple[float, dict[str, Any]]] = {
    "baseline": (1.0, {}),
    "budget x2.5": (2.5, {}),
    "EMA 0.9998": (1.0, {"ema_decay": 0.9998}),
    "no EMA": (1.0, {"ema_decay": 0.0}),
    "wide MLP 512 x 4": (1.0, {"backbone_kwargs": {"n_hidden": 512, "n_layers": 4}}),
    "gamma-Poisson baseline rate": (1.0, {"rate_baseline": "gamma_poisson"}),
    "loss weight nll": (1.0, {"loss_weighting": "nll"}),
    "depth-conditioned": (1.0, {}),
    "budget x2.5 + gamma-Poisson": (2.5, {"rate_baseline": "gamma_poisson"}),
    "budget x2.5 + wide": (2.5, {"backbone_kwargs": {"n_hidden": 512, "n_layers": 4}}),
    "depth + budget x2": (2.0, {}),
    "depth + loss weight nll": (1.0, {"loss_weighting": "nll"}),
    "depth + Blackout schedule": (1.0, {"schedule": "blackout"}),
    "depth + p_uncond 0.2": (1.0, {"p_uncond": 0.2}),
    "depth + nll + budget x2": (2.0, {"loss_weighting": "nll"}),
    "depth + nll + p_uncond 0.2": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2}),
    "depth + nll + importance times": (1.0, {"loss_weighting": "nll", "time_sampling": "importance"}),
    "depth + importance times": (1.0, {"time_sampling": "importance"}),
    "depth + nll + p_uncond 0.2 + EMA warm-up 4": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2,
                                                          "ema_decay": 0.9999, "ema_warmup": 4.0}),
    "depth + nll + p_uncond 0.2 + EMA warm-up 2.5": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2,
                                                            "ema_decay": 0.9999, "ema_warmup": 2.5}),
    "depth + nll + p_uncond 0.2 + EMA warm-up 20": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2,
                                                           "ema_decay": 0.9999, "ema_warmup": 20.0}),
    "depth + nll + p_uncond 0.2 + EMA warm-up 40": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2,
                                                           "ema_decay": 0.9999, "ema_warmup": 40.0}),
    "depth + nll + p_uncond 0.2 + EMA warm-up 100": (1.0, {"loss_weighting": "nll", "p_uncond": 0.2,
                                                            "ema_decay": 0.9999, "ema_warmup": 100.0}),
}
#: levers whose model is also conditioned on the cell's standardised log library size (a vector condition); their
#: cells are generated with the library sizes of random train cells of the type (the empirical depth distribution)
DEPTH_LEVERS = {"depth-conditioned", "depth + budget x2", "depth + loss weight nll", "depth + Blackout schedule",
                "depth + p_uncond 0.2", "depth + nll + budget x2", "depth + nll + p_uncond 0.2",
                "depth + nll + importance times", "depth + importance times",
                "depth + nll + p_uncond 0.2 + EMA warm-up 4", "depth + nll + p_uncond 0.2 + EMA warm-up 2.5",
                "depth + nll + p_uncond 0.2 + EMA warm-up 20", "depth + nll + p_uncond 0.2 + EMA warm-up 40",
                "depth + nll + p_uncond 0.2 + EMA warm-up 100"}
SAMPLERS = [("euler", 50), ("trapezoid", 5), ("trapezoid", 10)]
METRICS = ["mmd", "swd", "scfid", "rf_auc", "energy_distance", "var_pearson", "label_accuracy", "library_ratio"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--dataset", choices=["cbmc", "pbmc68k"], default="cbmc")
    p.add_argument("--levers", nargs="*", default=None, help=f"subset of {list(LEVERS)}")
    p.add_argument("--max-steps", type=int, default=6000, help="training steps of the baseline model")
    p.add_argument("--top", type=int, default=4, help="number of largest cell types evaluated")
    p.add_argument("--max-cells", type=int, default=500, help="cap on generated cells per type")
    p.add_argument("--scvi-epochs", type=int, default=None,
                   help="scVI epochs (default 200 on CBMC as in generation.py, 400 on pbmc68k: scvi-tools' heuristic)")
    p.add_argument("--suffix", default="", help="appended to the results' file names (a second run of other levers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--assemble", action="store_true",
                   help="only rebuild the results page from the sweeps' JSON files (with --quick: the quick ones)")
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.assemble:
        assemble(common.result_stem(PAGE, args.quick).parent, quick=args.quick)
        return
    import scvi
    import torch
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    import countsdiff_sc as cds
    from countsdiff_sc import metrics
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.pp import log_normalize

    common.start(args.seed, args.threads)
    levers = [k for k in LEVERS if "+" not in k] if args.levers is None else args.levers
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise SystemExit(f"unknown levers {unknown}; choose from {list(LEVERS)}")
    n_estimators, embedder_epochs, samplers = 1000, None, SAMPLERS
    if args.quick:
        args.max_steps, args.top, args.max_cells, args.scvi_epochs = 300, 2, 60, 10
        n_estimators, embedder_epochs = 100, 5
        levers = levers[:2]
    if args.scvi_epochs is None:
        args.scvi_epochs = 200 if args.dataset == "cbmc" else 400
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    if args.dataset == "cbmc":
        adata, label_key = cds.datasets.cbmc(), "cell_type"
    else:
        adata, label_key = cds.datasets.pbmc68k_reduced_counts(), "bulk_labels"
        adata.obs = adata.obs[[label_key]].copy()
    train, held, types, n_gen = split_held_out(adata, label_key, args.seed, args.top, args.max_cells)
    x_train, x_held = to_dense(train.X, np.float64), to_dense(held.X, np.float64)
    lab_train = train.obs[label_key].astype(str).to_numpy()
    lab_held = held.obs[label_key].astype(str).to_numpy()
    common.log(f"{args.dataset}: {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs}, held-out "
               f"{held.n_obs}; types {n_gen}")

    # ---------------------------------------------------------------- shared references
    t0 = time.perf_counter()
    scvi_data = train.copy()
    scvi.model.SCVI.setup_anndata(scvi_data)
    scvi_model = scvi.model.SCVI(scvi_data, gene_likelihood="nb")
    scvi_model.train(max_epochs=args.scvi_epochs, accelerator="cpu", enable_progress_bar=False)
    torch.set_num_threads(args.threads)
    timings["scvi_train_s"] = time.perf_counter() - t0
    common.log(f"scVI trained ({args.scvi_epochs} epochs) in {timings['scvi_train_s']:.0f} s")
    embedder = metrics.fit_scfid_embedder(train, max_epochs=embedder_epochs, seed=args.seed, accelerator="cpu")
    torch.set_num_threads(args.threads)
    pca = PCA(50, random_state=args.seed).fit(log_normalize(x_train))
    clf = LogisticRegression(max_iter=2000).fit(pca.transform(log_normalize(x_train)), lab_train)

    def score(name: str, sets: dict[str, np.ndarray], extra: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for t in types:
            real_t = x_held[lab_held == t]
            gen = sets[t].reshape(n_gen[t], -1)
            m = set_metrics(real_t, gen, embedder, n_estimators, args.seed)
            m["label_accuracy"] = float(np.mean(clf.predict(pca.transform(log_normalize(gen))) == t))
            m["library_ratio"] = float(np.median(gen.sum(1)) / np.median(real_t.sum(1)))
            out.append({"method": name, "cell_type": t, **extra, **m})
        return out

    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(args.seed)
    scvi_sets, floor_sets = {}, {}
    for t in types:
        idx = rng.choice(np.flatnonzero(lab_train == t), n_gen[t], replace=n_gen[t] > np.sum(lab_train == t))
        draw = scvi_model.posterior_predictive_sample(scvi_data, indices=idx.tolist(), n_samples=1)
        scvi_sets[t], floor_sets[t] = common.dense_draws(draw), x_train[idx]
    rows += score("scVI (train cells)", scvi_sets, {"lever": "-", "sampler": "-", "train_s": timings["scvi_train_s"]})
    rows += score("real train cells (floor)", floor_sets, {"lever": "-", "sampler": "-", "train_s": 0.0})
    # standardised log library sizes of the train cells, and draws of them per type for depth-conditioned levers
    log_lib = log_library_condition(x_train)
    depth_draws = library_draws(log_lib, lab_train, n_gen, args.seed + 1)
    real_acc = {t: float(np.mean(clf.predict(pca.transform(log_normalize(x_held[lab_held == t]))) == t))
                for t in types}

    # ---------------------------------------------------------------- one model per lever
    for lever in levers:
        mult, kwargs = LEVERS[lever]
        steps = round(args.max_steps * mult)
        data = train.copy()
        depth = lever in DEPTH_LEVERS
        if depth:
            data.obsm["log_library"] = log_lib
        cds.CountsDiffModel.setup_anndata(data, labels_key=label_key,
                                          condition_obsm_key="log_library" if depth else None)
        torch.manual_seed(args.seed)
        model = cds.CountsDiffModel(data, **kwargs)
        t0 = time.perf_counter()
        model.train(max_steps=steps, batch_size=256, train_size=0.95, accelerator="cpu",
                    enable_progress_bar=False, enable_model_summary=False)
        train_s = time.perf_counter() - t0
        timings[f"train_s {lever}"] = train_s
        n_params = sum(p.numel() for p in model.module.net.parameters())
        common.log(f"{lever}: {steps} steps, {n_params:,} parameters, trained in {train_s:.0f} s")
        for rule, n_steps in samplers:
            t0 = time.perf_counter()
            sets = {t: to_dense(model.sample(n_gen[t], labels=t, n_steps=n_steps, step_rule=rule, guidance=1.0,
                                             conditions=depth_draws[t] if depth else None,
                                             seed=args.seed, progress=False).X, np.float64) for t in types}
            sample_s = time.perf_counter() - t0
            rows += score(f"CountsDiff {lever}", sets, {
                "lever": lever, "sampler": f"{rule} {n_steps}", "train_s": train_s, "sample_s": sample_s,
                "train_steps": steps, "n_params": n_params,
            })
        common.log(f"{lever}: sampled and scored ({time.perf_counter() - t_all:.0f} s so far)")

    timings["total_s"] = time.perf_counter() - t_all
    _write(pd.DataFrame(rows), real_acc, timings, args, types, n_gen, levers)


PAGE = "generation_levers"


def _write(table: pd.DataFrame, real_acc: dict[str, float], timings: dict[str, float], args: argparse.Namespace,
           types: list[str], n_gen: dict[str, int], levers: list[str]) -> None:
    """Write this sweep's JSON file, then rebuild the one page from every sweep in its folder."""
    stem = common.result_stem(sweep_stem(args.dataset, args.suffix), args.quick)
    common.write_json(stem.with_suffix(".json"), {
        "args": {k: v for k, v in vars(args).items() if k != "assemble"}, "machine": common.machine_info(),
        "levers": {k: LEVERS[k] for k in levers}, "types": types, "n_generated": n_gen,
        "real_label_accuracy": real_acc, "timings": timings, "rows": table.to_dict(orient="records"),
    })
    print(f"wrote {stem}.json", flush=True)
    assemble(stem.parent, quick=args.quick)


def sweep_stem(dataset: str, suffix: str | None) -> str:
    """File stem of one sweep's JSON: ``generation_levers[_<dataset> unless cbmc]<suffix>``."""
    return PAGE + ("" if dataset == "cbmc" else f"_{dataset}") + (suffix or "")


def sweep_order(stem: str, dataset: str) -> tuple:
    """Stable order of the sweeps on the page: CBMC first, the sweep without a suffix first, then natural order of
    the suffixes (``_depth`` < ``_depth2`` < ``_depth10`` < ``_depth_seed1``)."""
    rest = stem.removeprefix(PAGE).removeprefix("" if dataset == "cbmc" else f"_{dataset}")
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", rest) if part)
    return (dataset != "cbmc", dataset, rest != "", natural)


def _command(args: dict[str, Any]) -> str:
    """The command line that reproduces a sweep: the options whose value differs from the parser's default."""
    defaults = vars(_parser().parse_args([]))
    parts = ["python", "-m", "benchmarks.generation_levers"]
    for key, value in args.items():
        if key not in defaults or value == defaults[key] or key == "assemble":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *(shlex.quote(str(v)) for v in value)]
        else:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def sweep_section(stem: str, payload: dict[str, Any]) -> list[str]:
    """The page section of one sweep, built from its JSON payload alone."""
    args, timings = payload["args"], payload["timings"]
    table = pd.DataFrame(payload["rows"])
    keys = ["method", "lever", "sampler"]
    mean = table.groupby(keys, sort=False)[[*METRICS, "train_s"]].mean().reset_index()
    mean["train_s / scVI"] = mean["train_s"] / timings["scvi_train_s"]
    ref = mean[mean["method"] == "scVI (train cells)"].iloc[0]
    beats = [(mean[m] <= ref[m]) for m in ["mmd", "swd", "scfid", "rf_auc"]]
    mean["<= scVI on MMD, SWD, scFID, RF AUC"] = np.logical_and.reduce(beats).astype(object)
    mean.loc[mean["method"].isin(["scVI (train cells)", "real train cells (floor)"]),
             "<= scVI on MMD, SWD, scFID, RF AUC"] = np.nan
    per_type_acc = table.pivot_table(index=keys, columns="cell_type", values="label_accuracy", sort=False)
    real_mean = float(np.mean(list(payload["real_label_accuracy"].values())))
    machine = payload.get("machine", {})
    where = (f" on {machine['machine']} ({machine['cpus']} CPUs, torch threads: {machine['torch_threads']})"
             if machine else "")
    levers = list(payload["levers"])
    return [
        f"## {args['dataset'].upper()}, sweep `{stem}`{' (quick mode)' if args.get('quick') else ''}", "",
        f"Levers: {', '.join(f'`{lv}`' for lv in levers)}. Run as `{_command(args)}`{where}; total "
        f"{timings['total_s'] / 60:.1f} min. Data: `{stem}.json`.", "",
        f"- train / held-out split 80 / 20 stratified by label, seed {args['seed']}; types and generated cells: "
        + ", ".join(f"{t} ({n})" for t, n in payload["n_generated"].items()),
        f"- baseline: the default CountsDiffModel (residual MLP, cosine schedule, EMA 0.999) trained "
        f"{args['max_steps']} steps, batch 256; each lever changes one setting (training steps scaled by its "
        f"multiplier); scVI: NB, no labels, {args['scvi_epochs']} epochs",
        f"- real held-out label accuracy {real_mean:.3f}",
        "", "### Mean over cell types", "",
        common.frame_to_markdown(mean, index=False), "",
        "### Label accuracy per type", "",
        common.frame_to_markdown(per_type_acc.reset_index(), index=False), "",
        "### Timings (s)", "",
        common.frame_to_markdown(pd.Series(timings, name="seconds").to_frame()), "",
    ]


def assemble(folder: Path, quick: bool = False) -> Path:
    """Rebuild ``<folder>/generation_levers.md`` from every sweep's JSON file in ``folder`` (one section each)."""
    sweeps = []
    for path in sorted(Path(folder).glob(f"{PAGE}*.json")):
        payload = json.loads(path.read_text())
        sweeps.append((sweep_order(path.stem, payload["args"]["dataset"]), path.stem, payload))
    if not sweeps:
        raise SystemExit(f"no {PAGE}*.json in {folder}: run a sweep first")
    sweeps.sort(key=lambda item: item[0])
    lines = [
        f"# Generation levers: what limits CountsDiff's cells{' (quick mode)' if quick else ''}", "",
        f"Assembled by `python -m benchmarks.generation_levers --assemble{' --quick' if quick else ''}` from the "
        f"JSON files of {len(sweeps)} sweeps (one section each; the command of each sweep is given in its section). "
        "Each sweep trains one CountsDiff model per lever on the same split and compares its generated cells with "
        "the held-out cells of each type, next to scVI posterior-predictive draws and random train cells (the floor).",
        "",
        "- guidance 1, no attrition; samplers: Euler 50 steps, trapezoid 5 and 10 steps (10 / 20 network "
        "evaluations)",
        "- metrics: mean over types; lower is better except var_pearson and label_accuracy; library_ratio: median "
        "generated / held-out total counts (1 is right)", "",
        "## Sweeps", "",
        *(f"- `{stem}`: {payload['args']['dataset']}, seed {payload['args']['seed']}, "
          f"{len(payload['levers'])} lever(s)" for _, stem, payload in sweeps), "",
    ]
    for _, stem, payload in sweeps:
        lines += sweep_section(stem, payload)
    page = Path(folder) / f"{PAGE}.md"
    page.write_text("\n".join(lines))
    print(f"wrote {page} ({len(sweeps)} sweeps)", flush=True)
    return page


if __name__ == "__main__":
    main()
