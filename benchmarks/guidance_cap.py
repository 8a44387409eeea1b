"""Guidance above 1 on CBMC, with and without ``guidance_cap``: does the uncapped rate explode?

The guided rate ``y_C^g y_u^(1-g)`` (CountsDiff Sec. 3.4) multiplies ``y_C`` by ``(y_C / y_u)^(g-1)``, which has no
bound where the unconditional rate ``y_u`` is far below the conditional one. ``sample(guidance_cap=c)`` bounds the
guided rate by ``c`` times the conditional rate. This script trains one CountsDiffModel (default MLP, labels, all
entries) on 90% of the CBMC cells and generates, for the 3 largest cell types, as many cells as there are held-out
cells of the type, at guidance 1, 2 and 3, uncapped and capped at 2 and 5 (50 steps, no attrition). Scores against
the held-out cells of the type, mean over types: generated / real counts per cell, the share of entries above the
largest held-out count of their gene (a direct sign of a rate that ran away), the fraction of zeros (generated -
real) and ``cds.metrics.mmd`` on 50 PCs of log-normalised training cells.

Usage::

    python -m benchmarks.guidance_cap            # about 5 minutes on 2 idle CPU cores
    python -m benchmarks.guidance_cap --quick    # 1,500 cells, 300 training steps, 10 sampling steps

Writes ``benchmarks/results[/quick]/guidance_cap.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from benchmarks import _common as common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import scvi
    from sklearn.decomposition import PCA

    import countsdiff_sc as cds
    from countsdiff_sc._utils import to_dense
    from countsdiff_sc.pp import log_normalize

    common.quiet()
    scvi.settings.verbosity = 40
    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    adata = common.cbmc(1500 if args.quick else None, args.seed)
    n_steps, max_steps = (10, 300) if args.quick else (50, args.max_steps)
    cds.pp.split_cells(adata, train=0.9, validation=0.0, test=0.1, seed=args.seed, stratify="cell_type")
    split = adata.obs["countsdiff_split"]
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    cds.CountsDiffModel.setup_anndata(train, labels_key="cell_type")
    model = cds.CountsDiffModel(train, preset="paper")
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
    t_train = time.perf_counter() - t0
    common.log(f"trained {max_steps} steps in {t_train:.0f} s")

    x_train = to_dense(train.X, np.float64)
    target = float(np.median(x_train.sum(axis=1)))
    pca = PCA(n_components=50, random_state=args.seed).fit(log_normalize(x_train, target))
    types = test.obs["cell_type"].value_counts().index[:3].tolist()
    rows = []
    for g in (1.0, 2.0, 3.0):
        for cap in (None, 2.0, 5.0):
            if g == 1.0 and cap is not None:
                continue  # at g = 1 the guided rate is the conditional rate: a cap >= 1 never binds
            for i, label in enumerate(types):
                real = to_dense(test[test.obs["cell_type"] == label].X, np.float64)
                gen = model.sample(labels=[label] * real.shape[0], guidance=g, guidance_cap=cap, n_steps=n_steps,
                                   seed=args.seed + i, progress=False)
                x = to_dense(gen.X, np.float64)
                emb_r = pca.transform(log_normalize(real, target))
                emb_g = pca.transform(log_normalize(x, target))
                rows.append({
                    "guidance": g, "cap": "none" if cap is None else cap, "cell_type": label,
                    "counts_ratio": float(x.sum(axis=1).mean() / real.sum(axis=1).mean()),
                    "above_real_max": float((x > real.max(axis=0, keepdims=True)).mean()),
                    "zero_frac_diff": float((x == 0).mean() - (real == 0).mean()),
                    "mmd": float(cds.metrics.mmd(emb_g, emb_r, seed=args.seed)),
                })
                common.log(f"g={g} cap={cap} {label}: " + ", ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()
                                                                   if isinstance(v, float) and k != "guidance"))
    frame = pd.DataFrame(rows)
    table = frame.groupby(["guidance", "cap"], sort=False)[["counts_ratio", "above_real_max", "zero_frac_diff",
                                                            "mmd"]].mean()
    total = time.perf_counter() - t_all
    md = ["# Guidance above 1, with and without guidance_cap" + (" (quick mode)" if args.quick else ""), "",
          common.machine_header("guidance_cap", args.quick, total), "",
          f"CBMC, {train.n_obs} training cells (labels, all entries), {max_steps} training steps ({t_train:.0f} s); "
          f"generated as many cells as held-out cells of each of the 3 largest types ({', '.join(types)}), "
          f"{n_steps} steps, no attrition; mean over the types. counts_ratio: generated / real counts per cell; "
          "above_real_max: share of entries above the largest held-out count of their gene; zero_frac_diff: "
          "fraction of zeros, generated minus real; mmd: `cds.metrics.mmd` on 50 PCs of log-normalised training "
          "cells (lower is better).", "", common.frame_to_markdown(table), "", "Per type:", "",
          common.frame_to_markdown(frame.set_index(["guidance", "cap", "cell_type"]))]
    common.write_results(common.result_stem("guidance_cap", args.quick), md,
                         {"rows": rows, "total_s": total, "train_s": t_train, **common.machine_info()})


if __name__ == "__main__":
    main()
