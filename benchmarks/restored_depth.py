"""Which depth should ``impute`` restore a cell to? A sweep of the restored depth ``D`` with a truth and with biology.

The default ``impute`` (no mask) reads a cell of ``L`` counts as a binomial thinning, at ``f = L / D``, of a profile
of depth ``D``, and returns ``f * E[x_D | x]`` (CountsDiff's forward process, Eq. 4; the network's posterior mean of
the thinned molecules, Eq. 6). The share of the estimate the network supplies grows with ``1 - f``: a deep ``D``
denoises hard and lets shallow cells borrow most of their profile from the network; a shallow ``D`` keeps more of
what was measured. ``D`` is a quantile ``q`` of the training cells' depths: of the cell's own label's training cells
or, where that is deeper, of every training cell (``depth of = label, capped``; the default at ``q = 0.5``), of the
label's cells even where deeper (``label``), or of every training cell (``all cells``; at ``q = 0.5`` the default of
0.2.0, at ``q = 0.9`` that of 0.1); cells deeper than ``0.75 D`` are restored to ``L / 0.75``. This script trains
one default model per data set (``train()``'s default budget) and sweeps the rules of ``RULES`` at the default
guidance (2, capped at the conditional rate) and at guidance 1 (the conditional posterior mean, 0.2.0's default):

* **biology** (``markers.py``'s protocol): pbmc68k (700 cells, FACS labels) and Hao et al. 2021 (1,336 cells, 11
  types, 2,000 highly variable genes plus the markers), ``pp.mark_dropouts`` with its default rule, the model trained
  on the cells it imputes; per marker the off / on ratio's fold over the raw ratio (target at most 2), the largest
  fold, and the median library ratio (target within 10% of 1);
* **a truth** (``downstream.py``'s setting b): CBMC split 90 / 10, the model trained on the full-depth training
  cells, the test cells thinned to 10 / 25 / 50% depth with labels transferred by 15-NN; per-cell Pearson r with
  the truth (log-normalised), RMSE at the dropout entries (scaled to the true library) and over every entry
  observed as 0 (the dropouts picked by the truth reward filling high; every observed zero does not) and over every
  entry (dominated by the largest counts, e.g. the erythrocytes' dominant gene), the gene-gene
  correlation structure (r with the truth's, 200 most variable genes) and the false signal (mean scaled value on
  true zeros).
  The no-imputation row and the best baselines are in ``downstream.md``.

Usage::

    python -m benchmarks.restored_depth            # about 15 minutes on one CPU core
    python -m benchmarks.restored_depth --quick    # subsets and short training: a smoke test

Writes ``benchmarks/results[/quick]/restored_depth.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import _common as common

#: The rules of the sweep: ``(scope, quantile)``. ``"label, capped"``: each cell the quantile of its label's training
#: cells' depths or, where that is deeper, of every training cell's (the default at 0.5); ``"label"``: the label's
#: quantile even where it is deeper; ``"all cells"``: one depth, the quantile of every training cell's depth (at 0.5
#: the default of 0.2.0, at 0.9 that of 0.1). A label with fewer than ``MIN_LABEL_CELLS`` training cells takes the
#: quantile of every training cell in the ``"label, capped"`` rule, its own in the ``"label"`` rule.
RULES = (("label, capped", 0.5), ("label", 0.5), ("all cells", 0.5), ("all cells", 0.6), ("all cells", 0.75),
         ("all cells", 0.9))
#: Guidance strengths of the sweep; the denoising verbs cap every strength at the conditional rate by default.
GUIDANCE = (2.0, 1.0)


def _sweep(model: Any, impute: Any) -> dict[tuple[str, float, float], Any]:
    """``impute(guidance)`` for every (rule, guidance) of the sweep: the model's restored depths set by the rule (the
    module's settings restored afterwards)."""
    from countsdiff_sc.model import _expression

    depths = np.asarray(model.train_depths_, dtype=np.float64)
    saved = model.depth_, _expression.DEPTH_QUANTILE, _expression.MIN_LABEL_CELLS
    out = {}
    try:
        for scope, q in RULES:
            _expression.DEPTH_QUANTILE = q
            model.depth_ = float(np.quantile(depths, q))
            _expression.MIN_LABEL_CELLS = {"label, capped": saved[2], "label": 1}.get(scope, len(depths) + 1)
            if scope == "label":
                model.depth_ = float(np.inf)  # no cap; every label has a training cell, so no fallback is needed
            for g in GUIDANCE:
                out[(scope, q, g)] = impute(g)
    finally:
        model.depth_, _expression.DEPTH_QUANTILE, _expression.MIN_LABEL_CELLS = saved
    return out


def _depth_of(model: Any, scope: str, q: float) -> str:
    """The restored depth of a rule, for the tables: one number, or the range over the labels."""
    depths = np.asarray(model.train_depths_, dtype=np.float64)
    overall = float(np.quantile(depths, q))
    if scope == "all cells":
        return f"{overall:.0f}"
    from countsdiff_sc.model._expression import MIN_LABEL_CELLS, label_depths

    n_labels = len(model.condition_space.label_categories)
    codes = np.asarray(model.train_codes_)[:, 0]
    if scope == "label":
        per = label_depths(depths, codes, n_labels, q, 1)
    else:
        per = np.fmin(label_depths(depths, codes, n_labels, q, MIN_LABEL_CELLS), overall)
    per = per[~np.isnan(per)]
    return f"{per.min():.0f}-{per.max():.0f}"


def markers_part(name: str, quick: bool, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    import torch

    import countsdiff_sc as cds
    from benchmarks import _markers as mk

    adata = mk.load(name, quick)
    label = mk.LABELS[name]
    raw = adata.X.toarray().astype(np.float64)
    data = adata.copy()
    cds.pp.mark_dropouts(data, groupby=label)
    cds.CountsDiffModel.setup_anndata(data, labels_key=label, valid_layer="countsdiff_valid")
    torch.manual_seed(seed)
    model = cds.CountsDiffModel(data)
    t0 = time.perf_counter()
    model.train(enable_progress_bar=False, **({"max_steps": 60} if quick else {}))
    t_train = time.perf_counter() - t0
    r0 = mk.ratios(raw, adata, name)

    def impute(g: float) -> dict[str, float]:
        imp, _ = model.impute(data.copy(), n_samples=1, store_samples=False, sampler=cds.Sampler(seed=seed, guidance=g))
        fold = mk.ratios(imp, adata, name) / r0.clip(lower=mk.RATIO_FLOOR)
        return {**fold.to_dict(), "largest fold": float(fold.max()),
                "library ratio": mk.library_stats(imp, raw)["library_ratio"]}

    rows = _sweep(model, impute)
    table = pd.DataFrame([{"depth of": scope, "quantile": q, "D": _depth_of(model, scope, q), "guidance": g, **v}
                          for (scope, q, g), v in rows.items()])
    common.log(f"{name}: trained in {t_train:.0f} s; largest folds {table['largest fold'].round(2).tolist()}")
    return table, {"train_s": t_train, "steps": model.train_budget_.get("steps_run")}


def cbmc_part(quick: bool, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    import anndata as ad
    import scipy.sparse as sp
    import torch

    import countsdiff_sc as cds
    from benchmarks import _truth
    from countsdiff_sc import pp

    adata = common.cbmc(1500 if quick else None, seed)
    pp.split_cells(adata, train=0.9, validation=0.0, test=0.1, seed=seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    pp.mark_dropouts(train, groupby="cell_type", seed=seed)
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type", valid_layer="countsdiff_valid")
    torch.manual_seed(seed)
    model = cds.CountsDiffModel(train)  # the plain call: the default budget with early stopping
    t0 = time.perf_counter()
    model.train(accelerator="cpu", enable_progress_bar=False, **({"max_steps": 60} if quick else {}))
    t_train = time.perf_counter() - t0
    x_true, x_train = _truth.dense(test.X), _truth.dense(train.X)
    true_labels = test.obs["cell_type"].astype(str).to_numpy()
    categories = train.obs["cell_type"].cat.categories
    truth, rows = None, []
    for i, f in enumerate((0.1, 0.25, 0.5)):
        x_thin = _truth.thin_counts(x_true, f, seed + 1000 + i)  # the same thinned cells as downstream.py
        predicted = _truth.transfer_labels(x_train, train.obs["cell_type"], x_thin, seed=seed)
        obs = ad.AnnData(X=sp.csr_matrix(x_thin), var=pd.DataFrame(index=test.var_names),
                         obs=pd.DataFrame({"cell_type": pd.Categorical(predicted, categories=categories)},
                                          index=test.obs_names))
        pp.mark_dropouts(obs, groupby="cell_type", seed=seed)
        dropout = (x_thin == 0) & (x_true > 0)
        if truth is None:
            truth = _truth.Truth(x_true, dropout, true_labels, seed=seed)
        else:
            truth.dropout = dropout

        def impute(g: float, obs: Any = obs, x_thin: np.ndarray = x_thin, truth: Any = truth) -> dict[str, float]:
            imp, _ = model.impute(obs.copy(), n_samples=5, sampler=cds.Sampler(seed=seed, guidance=g))
            s = truth.score(np.asarray(imp, dtype=np.float64))
            return {"cell r": s["cell_r"], "RMSE dropouts": s["rmse_dropouts"],
                    "RMSE observed zeros": s["rmse_zeros"], "RMSE all": s["rmse_all"], "gene-gene r": s["gene_r"],
                    "false signal": s["false_signal"],
                    "library ratio": float(np.median(imp.sum(1) / np.maximum(x_thin.sum(1), 1)))}

        none = truth.score(x_thin)
        rows.append({"depth": f"{f:.0%}", "depth of": "no imputation", "quantile": np.nan, "D": "-",
                     "guidance": np.nan,
                     "cell r": none["cell_r"], "RMSE dropouts": none["rmse_dropouts"],
                     "RMSE observed zeros": none["rmse_zeros"], "RMSE all": none["rmse_all"],
                     "gene-gene r": none["gene_r"],
                     "false signal": none["false_signal"], "library ratio": 1.0})
        for (scope, q, g), v in _sweep(model, impute).items():
            rows.append({"depth": f"{f:.0%}", "depth of": scope, "quantile": q, "D": _depth_of(model, scope, q),
                         "guidance": g, **v})
        common.log(f"cbmc {f:.0%}: done")
    return pd.DataFrame(rows), {"train_s": t_train, "steps": model.train_budget_.get("steps_run")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    common.start(args.seed, args.threads)
    t_start = time.perf_counter()
    parts = {name: markers_part(name, args.quick, args.seed) for name in ("pbmc68k", "hao")}
    parts["cbmc"] = cbmc_part(args.quick, args.seed)
    lines = [f"# Restored depth of `impute` ({'quick' if args.quick else 'full'} mode)", "",
             common.command_header("restored_depth", args.quick, time.perf_counter() - t_start), "",
             "Protocol: the docstring of `benchmarks/restored_depth.py`. One default model per data set; `depth of` "
             "/ `quantile`: the restored depth `D` is that quantile of the depths of the cell's label's training "
             "cells, at most the same quantile of every training cell (`label, capped`; at 0.5 the default), of the "
             "label's cells even where deeper (`label`), or of every training cell (`all cells`; at 0.5 the default "
             "of 0.2.0, at 0.9 that of 0.1); `D`: its value, or its range over the labels; "
             "`guidance` 2: the default, capped at the conditional rate; 1: the "
             "conditional posterior mean (0.2.0's default). Folds over the raw off / on ratio of known markers "
             "(target at most 2); "
             "CBMC: thinned test cells scored against the full-depth truth (the no-imputation and baseline rows of "
             "the same cells are in `downstream.md`).", ""]
    payload: dict[str, Any] = {}
    for name, (table, info) in parts.items():
        lines += [f"## {name}", "", f"Training: {info['steps']} steps in {info['train_s']:.0f} s.", "",
                  common.frame_to_markdown(table, index=False, float_format="{:.3g}"), ""]
        payload[name] = {"table": table.to_dict(orient="records"), "info": info}
    common.write_results(common.result_stem("restored_depth", args.quick), lines, payload)


if __name__ == "__main__":
    main()
