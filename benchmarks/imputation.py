"""Imputation benchmark on the bundled CBMC counts with the CountsDiff paper's scRNA-seq protocol.

Protocol (CountsDiff paper, Sec. 4.3 and App. D.3; dropouts as in scIDPMs, Zhang & Liu 2024, Algorithm 1), run
through the package's paper preset (``mark_dropouts(preset="paper")``, ``CountsDiffModel(preset="paper")``: the
paper's loss weight, condition dropout and EMA; RePaint with attrition 0.02 and guidance 0.5):

1. suspected dropouts marked per cell type (scIDPMs Algorithm 1); they are never held out nor scored;
2. cells split 80/10/10 (train / validation / test), stratified by cell type;
3. CountsDiff and the learned baselines are trained on the train + validation cells only;
4. on the test cells, two missingness regimes: 50% MCAR and 25% MNAR-low (per gene, the held-out entries are drawn
   from the lowest values; the candidate pool ``k + pool_extra`` is scaled to the test-set size, see below);
5. every method imputes the same masked entries; all metrics of ``countsdiff_sc.metrics.evaluate_imputation`` with
   10 bootstrap resamples of cells for the standard errors.

Each baseline runs in its best honest setting (none sees a held-out value):

- kNN (``baselines.impute_knn``, default ``distance="observed"``): cells compared on their observed genes only
  (masked PCA projection, 30 PCs), 15 neighbours from the train + validation cells;
- scVI (``baselines.impute_scvi``) with the cell type as a categorical covariate (``labels_key="cell_type"``, as
  CountsDiff and the conditional mean get it) and scvi-tools' own epoch heuristic
  (``scvi.model._utils.get_max_epochs_heuristic``: 400 epochs below 20,000 cells) unless ``--scvi-epochs`` is given;
- MAGIC (``baselines.impute_magic``, needs ``magic-impute``) on the train + validation cells and the test cells
  together, as in the CountsDiff paper (App. D.3.2).

The paper's MNAR code draws from the ``k + 5000`` lowest values of a gene; on ~860 test cells that pool covers every
valid entry and the mask would be MCAR in disguise, so the pool here is ``k + n_test_cells // 10``.

Usage::

    python -m benchmarks.imputation            # full run (tens of minutes on 2 CPU cores)
    python -m benchmarks.imputation --quick    # smoke test (a few minutes)

Writes ``benchmarks/results[/quick]/imputation.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import _common as common


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings for a smoke test")
    p.add_argument("--max-steps", type=int, default=6000, help="CountsDiff training steps (full mode)")
    p.add_argument("--n-steps", type=int, default=20, help="reverse steps of the RePaint imputation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scfid", action="store_true", help="also compute scFID (trains an scVI embedder)")
    p.add_argument("--no-scvi", action="store_true", help="skip the scVI baseline")
    p.add_argument("--scvi-epochs", type=int, default=None,
                   help="scVI training epochs (default: scvi-tools' heuristic, 400 below 20,000 cells)")
    return p.parse_args()


def main() -> None:
    args = _parse()
    import scvi

    import countsdiff_sc as cds
    from countsdiff_sc import baselines, metrics, pp

    common.quiet()
    scvi.settings.verbosity = 30
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    adata = common.cbmc(2500 if args.quick else None, args.seed)
    max_steps, n_bootstrap = args.max_steps, 10
    if args.quick:
        max_steps, n_bootstrap = 400, 3
    pp.mark_dropouts(adata, groupby="cell_type", preset="paper")  # scIDPMs Algorithm 1, as the paper
    pp.split_cells(adata, seed=args.seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train = adata[split != "test"].copy()
    test = adata[split == "test"].copy()
    from scvi.model._utils import get_max_epochs_heuristic

    scvi_epochs = args.scvi_epochs if args.scvi_epochs is not None else get_max_epochs_heuristic(train.n_obs)
    common.log(f"CBMC {adata.n_obs} cells; train+validation {train.n_obs}, test {test.n_obs}; max_steps={max_steps}; "
               f"scVI epochs {scvi_epochs}")
    args.scvi_epochs_used = scvi_epochs
    magic_reference = train.copy()  # MAGIC's graph holds the training cells too, with nothing held out

    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type", valid_layer="countsdiff_valid")
    model = cds.CountsDiffModel(train, preset="paper")  # the paper's settings: its tables reproduce
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, train_size=8 / 9, accelerator="cpu", enable_progress_bar=False)
    timings = {"countsdiff_train_s": time.perf_counter() - t0}
    common.log(f"CountsDiff trained in {timings['countsdiff_train_s']:.0f} s")

    regimes = {
        "MCAR 50%": lambda a: pp.mask_mcar(a, rate=0.5, seed=args.seed),
        "MNAR-low 25%": lambda a: pp.mask_mnar(a, rate=0.25, bias="low", seed=args.seed,
                                               pool_extra=max(1, a.n_obs // 10)),
    }
    scvi_model = None
    tables = []
    for regime, make_mask in regimes.items():
        data = test.copy()
        make_mask(data)
        mask = data.layers["countsdiff_mask"]
        common.log(f"== {regime}: {int(mask.sum())} held-out entries, mean held-out count "
            f"{float(data.X.toarray()[mask].mean()):.3f}")
        methods: dict[str, str] = {}
        t0 = time.perf_counter()
        model.impute(data, mask_layer="countsdiff_mask", n_samples=5, key_added="cd5", store_samples=True,
                     sampler=cds.Sampler(n_steps=args.n_steps, step_rule="euler", resample_iters=1, seed=args.seed,
                                         progress=False))
        timings[f"{regime} countsdiff_5draw_s"] = time.perf_counter() - t0
        methods["CountsDiff, 5-sample"] = "cd5"
        data.layers["cd1"] = np.where(mask, data.obsm["countsdiff_samples"][:, 0, :], data.layers["cd5"])
        methods["CountsDiff, 1-sample"] = "cd1"
        baselines.impute_zero(data)
        methods["Zero"] = "zero_imputed"
        baselines.impute_mean(data, reference=train, valid_layer="countsdiff_valid")
        methods["Mean"] = "mean_imputed"
        baselines.impute_conditional_mean(data, "cell_type", reference=train, valid_layer="countsdiff_valid")
        methods["Conditional mean"] = "conditional_mean_imputed"
        t0 = time.perf_counter()
        baselines.impute_knn(data, reference=train, valid_layer="countsdiff_valid", n_neighbors=15, n_pcs=30,
                             seed=args.seed)
        timings[f"{regime} knn_s"] = time.perf_counter() - t0
        methods["kNN (k=15, 30 PCs)"] = "knn_imputed"
        if not args.no_scvi:
            t0 = time.perf_counter()
            res = baselines.impute_scvi(data, train, labels_key="cell_type", max_epochs=scvi_epochs, seed=args.seed,
                                        model=scvi_model, progress_bar=False)
            scvi_model = res.model
            timings[f"{regime} scvi_s"] = time.perf_counter() - t0
            methods["scVI (posterior mean)"] = "scvi_imputed"
            methods["scVI (1 posterior sample)"] = "scvi_sample"
        try:
            t0 = time.perf_counter()
            _impute_magic_with_reference(data, magic_reference, seed=args.seed)
            timings[f"{regime} magic_s"] = time.perf_counter() - t0
            methods["MAGIC"] = "magic_imputed"
        except ImportError as err:
            common.log(f"MAGIC skipped: {str(err).splitlines()[0]}")
        for name, layer in methods.items():
            df = metrics.evaluate_imputation(
                data, imputed_layer=layer, n_bootstrap=n_bootstrap, seed=args.seed, scfid=args.scfid,
                key_added=f"{regime}:{name}",
            )
            tables.append(df.assign(regime=regime, method=name))
            common.log(f"  {name:28s} " + "  ".join(f"{m}={v:.4g}" for m, v in zip(df.metric, df.value, strict=True)))
    table = pd.concat(tables, ignore_index=True)
    timings["total_s"] = time.perf_counter() - t_all
    _write(table, timings, args)


def _impute_magic_with_reference(data, reference, seed: int) -> None:
    """MAGIC on the reference and the test cells together (its graph needs all cells); writes
    ``data.layers["magic_imputed"]``. Only the test cells' held-out entries are imputed."""
    import anndata as ad

    from countsdiff_sc import baselines

    ref = reference.copy()
    ref.layers["countsdiff_mask"] = np.zeros(ref.shape, dtype=bool)
    query = data.copy()
    keep = ["countsdiff_mask", "countsdiff_valid"]
    for a in (ref, query):
        for key in [k for k in a.layers if k not in keep]:
            del a.layers[key]
    both = ad.concat([ref, query], merge="same", index_unique="-")
    baselines.impute_magic(both, valid_layer="countsdiff_valid", seed=seed)
    data.layers["magic_imputed"] = np.asarray(both.layers["magic_imputed"][ref.n_obs:])


def _write(table: pd.DataFrame, timings: dict, args: argparse.Namespace) -> None:
    stem = common.result_stem("imputation", args.quick)
    info = common.machine_info()
    lines = [f"# Imputation benchmark on CBMC ({'quick' if args.quick else 'full'} mode)", "",
             common.machine_header("imputation", args.quick, timings["total_s"], info), "",
             "Mean (bootstrap standard error over cells). Lower is better except spearman / pearson / r2; "
             "bias closest to 0 is best.", "",
             "Baselines (none sees a held-out value): kNN compares cells on their observed genes only "
             "(`impute_knn(distance=\"observed\")`, 30 PCs, 15 neighbours); scVI with the cell type as covariate "
             f"(`labels_key=\"cell_type\"`) and {getattr(args, 'scvi_epochs_used', '?')} epochs; "
             + ("MAGIC on the training and test cells together." if "MAGIC" in set(table.method) else
                "MAGIC not run (`magic-impute` is not installed: its `scprep` dependency pins a pandas older than "
                "anndata accepts)."), ""]
    for regime, sub in table.groupby("regime", sort=False):
        cell = sub.assign(txt=[f"{v:.4g} ({s:.2g})" for v, s in zip(sub.value, sub.std_error, strict=True)])
        wide = cell.pivot(index="method", columns="metric", values="txt")
        wide = wide.loc[list(dict.fromkeys(sub.method))]
        lines += [f"## {regime}", "", common.frame_to_markdown(wide), ""]
    lines += ["## Timings (s)", "", common.frame_to_markdown(pd.Series(timings).round(1).to_frame("seconds")), ""]
    _plot(table, stem.with_suffix(".png"))
    common.write_results(stem, lines, {"settings": vars(args), **info, "timings": timings,
                                "table": table.to_dict(orient="records")}, also=[stem.with_suffix(".png").name])


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["rmse", "bias", "spearman", "energy_distance", "mmd", "swd"]
    regimes = list(dict.fromkeys(table.regime))
    fig, axes = plt.subplots(len(regimes), len(shown), figsize=(3.2 * len(shown), 3.4 * len(regimes)), squeeze=False)
    for i, regime in enumerate(regimes):
        sub = table[table.regime == regime]
        for j, metric in enumerate(shown):
            ax = axes[i, j]
            m = sub[sub.metric == metric]
            ax.barh(m.method, m.value, xerr=m.std_error, color="tab:blue", alpha=0.8)
            ax.set_title(f"{regime}: {metric}", fontsize=9)
            ax.tick_params(labelsize=7)
            if j:
                ax.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
