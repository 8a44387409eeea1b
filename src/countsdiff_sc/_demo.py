"""The main job: train CountsDiff on the bundled CBMC counts, impute held-out entries, generate cells, report."""

from __future__ import annotations

import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import _keys
from ._utils import to_dense

__all__ = ["run_demo"]

#: What the full demo gives (README.md, "What the demo prints": ``countsdiff-sc demo``, 3,000 training steps per model
#: on all 8,617 cells); printed by ``--quick``, whose own numbers are not meaningful. A test keeps these figures equal
#: to the README's.
FULL_RUN = (
    "The full demo (`countsdiff-sc demo`: 3,000 training steps per model on all 8,617 CBMC cells, about 9 minutes on "
    "one CPU thread) gives held-out RMSE 7.819 for CountsDiff against 15.71 for mean and 9.472 for conditional-mean "
    "imputation, and generated cells with 0.89-0.99x the real counts per cell (README.md, 'What the demo prints')."
)
SMOKE_TEST = (
    "This was --quick, a smoke test: {steps} training steps on {cells:,} cells check that training, imputation and "
    "generation run end to end, and the metrics above are not a result. A model this undertrained can lose to "
    "mean imputation and generate too many counts per cell."
)


def _generation_stats(real_x: np.ndarray, gen_x: np.ndarray) -> dict[str, float]:
    """Agreement of generated and real cells of one label: per-gene statistics (``metrics.gene_statistics_agreement``:
    means and variances of log-normalised expression, zero fractions on counts), sparsity, counts per cell."""
    from countsdiff_sc import metrics

    genes = metrics.gene_statistics_agreement(real_x, gen_x)
    sparsity = metrics.sparsity_fidelity(real_x, gen_x)
    return {
        **{name: genes[name] for name in ("gene_mean_pearson", "gene_var_pearson", "gene_zero_frac_pearson")},
        "sparsity_real": sparsity["sparsity_real"],
        "sparsity_generated": sparsity["sparsity_generated"],
        "counts_per_cell_real": float(real_x.sum(1).mean()),
        "counts_per_cell_generated": float(gen_x.sum(1).mean()),
    }


def run_demo(
    out: str | Path = "countsdiff_demo.h5ad",
    max_steps: int = 3000,
    n_samples: int = 5,
    n_steps: int = 10,
    mask_rate: float = 0.5,
    n_generate: int = 200,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    num_threads: int | str | None = "auto",
) -> dict[str, pd.DataFrame]:
    """Run the end-to-end demo on the bundled CBMC data and write the results to ``out``.

    1. mark suspected dropouts per cell type (scIDPMs Algorithm 1), split cells 80/10/10 (stratified), hold out
       ``mask_rate`` of the valid entries of the test cells (MCAR);
    2. train a CountsDiff model (residual MLP) on the valid entries of the training and validation cells;
    3. impute the test cells with RePaint (``n_samples`` draws) and compare with mean / conditional-mean imputation;
    4. train a second model on *all* entries (a model trained on valid entries only learns dropout-free expression:
       on CBMC every gene is expressed somewhere in each large cell type, so its valid entries are exactly its
       non-zero ones) and generate ``n_generate`` cells for the three largest cell types; compare per-gene
       statistics with the held-out real cells of that type;
    5. write the test cells (with masks, imputations, draws and metric tables) to ``out`` and the generated cells
       to ``<out stem>_generated.h5ad``.

    Parameters
    ----------
    out
        Output .h5ad path.
    max_steps
        Training steps.
    n_samples, n_steps
        Imputation draws and reverse steps (trapezoid steps, each run twice: ``impute``'s defaults).
    mask_rate
        Fraction of valid test entries held out.
    n_generate
        Cells generated per cell type.
    seed
        Seed of the split, masks, training and sampling.
    quick
        Tiny settings for a smoke test (200 training steps, 1,000 cells, 2 draws): it checks that every step runs;
        its metrics are not meaningful (an undertrained model can lose to mean imputation), and it says so in its
        output, next to what the full run gives.
    progress
        Print progress and show progress bars.
    num_threads
        CPU threads of torch and of the compiled sampler kernels for the run (restored afterwards); ``"auto"``
        (default) is ``countsdiff_sc.settings.default_num_threads()``: ``scvi.settings.num_threads``
        or ``OMP_NUM_THREADS`` when set, else the cores that are not busy. None keeps the current count.

    Returns
    -------
    ``{"imputation": DataFrame, "generation": DataFrame}``.
    """
    from ._settings import settings

    if num_threads is None:
        return _run_demo(out, max_steps, n_samples, n_steps, mask_rate, n_generate, seed, quick, progress)
    with settings.threads(num_threads):
        return _run_demo(out, max_steps, n_samples, n_steps, mask_rate, n_generate, seed, quick, progress)


def _run_demo(out, max_steps, n_samples, n_steps, mask_rate, n_generate, seed, quick, progress):
    import scvi
    import torch

    from countsdiff_sc import baselines, datasets, metrics, pp
    from countsdiff_sc.model import CountsDiffModel, Sampler

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    if quick:
        say("Quick mode: a smoke test of every step on a tiny model, not a result (the full run's numbers are "
            "printed at the end).")
    t_start = time.perf_counter()
    scvi.settings.seed = seed
    scvi.settings.verbosity = 30
    adata = datasets.cbmc()
    if quick:
        rng = np.random.default_rng(seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, 1000, replace=False))].copy()
        max_steps, n_samples, n_generate = min(max_steps, 200), min(n_samples, 2), min(n_generate, 50)
    say(f"[1/5] CBMC: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['cell_type'].nunique()} cell types; "
        f"{torch.get_num_threads()} CPU thread(s) (--threads)")
    pp.mark_dropouts(adata, groupby="cell_type")
    pp.split_cells(adata, train=0.8, validation=0.1, test=0.1, seed=seed, stratify="cell_type")
    split = adata.obs[_keys.SPLIT]
    train = adata[split != "test"].copy()
    test = adata[split == "test"].copy()
    pp.mask_mcar(test, rate=mask_rate, seed=seed)
    say(f"      valid entries {adata.layers[_keys.VALID].mean():.1%}; test cells {test.n_obs}, "
        f"held-out entries {int(test.layers[_keys.MASK].sum())}")

    say(f"[2/5] training CountsDiff (MLP) for {max_steps} steps on {train.n_obs} cells")
    CountsDiffModel.setup_anndata(train, labels_key="cell_type", valid_layer=_keys.VALID)
    model = CountsDiffModel(train)
    t0 = time.perf_counter()
    model.train(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                train_size=0.9 if not quick else 0.8)
    t_train = time.perf_counter() - t0
    losses = [f"{name.replace('_', ' ')} {float(model.history[name].iloc[-1, 0]):.4f}"
              for name in ("train_loss", "validation_loss") if name in model.history]  # none before a first epoch
    say(f"      {t_train:.0f} s; final " + (", ".join(losses) or "losses not logged yet (no full epoch)"))

    say(f"[3/5] RePaint imputation of the test cells ({n_samples} draws x {n_steps} trapezoid steps, resampled "
        "twice) and baselines")
    t0 = time.perf_counter()
    model.impute(test, mask_layer=_keys.MASK, n_samples=n_samples,
                 sampler=Sampler(n_steps=n_steps, seed=seed, progress=progress))
    t_impute = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        baselines.impute_mean(test, reference=train, valid_layer=_keys.VALID)
        baselines.impute_conditional_mean(test, "cell_type", reference=train, valid_layer=_keys.VALID)
    rows = []
    for name, layer in [("CountsDiff", _keys.IMPUTED), ("Mean", "mean_imputed"),
                        ("Conditional mean", "conditional_mean_imputed")]:
        df = metrics.evaluate_imputation(
            test, imputed_layer=layer, n_bootstrap=10, seed=seed, key_added=f"imputation_{layer}",
            metrics=["rmse", "mae", "bias", "spearman", "energy_distance", "mmd", "swd"],
        )
        rows.append(df.assign(method=name))
    imputation = pd.concat(rows, ignore_index=True)
    wide = imputation.pivot(index="method", columns="metric", values="value")
    wide = wide.loc[["CountsDiff", "Mean", "Conditional mean"]]

    say(f"[4/5] training a generative model on all entries ({max_steps} steps), generating {n_generate} cells for "
        "each of the three largest cell types")
    gen_train = train.copy()
    CountsDiffModel.setup_anndata(gen_train, labels_key="cell_type")
    gen_model = CountsDiffModel(gen_train)
    t0 = time.perf_counter()
    gen_model.train(max_steps=max_steps, accelerator="cpu", enable_progress_bar=False,
                    train_size=0.9 if not quick else 0.8)
    t_train_gen = time.perf_counter() - t0
    top = test.obs["cell_type"].value_counts().index[:3].tolist()
    gens, gen_rows = [], []
    for i, label in enumerate(top):
        gen = gen_model.sample(labels=[label] * n_generate,
                               sampler=Sampler(n_steps=50, guidance=1.0, seed=seed + i, progress=False))
        real = test[test.obs["cell_type"] == label]
        stats = _generation_stats(to_dense(real.X), to_dense(gen.X))
        gen_rows.append({"cell_type": label, "n_real": real.n_obs, **stats})
        gens.append(gen)
    generation = pd.DataFrame(gen_rows).set_index("cell_type")

    say("[5/5] writing results")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    test.uns[_keys.DEMO_PREFIX] = {"train_seconds": t_train, "impute_seconds": t_impute,
                                   "train_generative_seconds": t_train_gen, "max_steps": max_steps}
    test.write_h5ad(out, compression="gzip")
    import anndata as ad

    gen_path = out.with_name(out.stem + "_generated.h5ad")
    ad.concat(gens, index_unique=None).write_h5ad(gen_path, compression="gzip")

    with pd.option_context("display.width", 140, "display.max_columns", 20, "display.precision", 3):
        print("\nImputation of held-out test entries (50% MCAR; lower is better except spearman):")
        print(wide.to_string(float_format=lambda v: f"{v:.4g}"))
        print("\nGenerated (guidance 1, 50 steps) vs held-out real cells of the same type (per-gene Pearson "
              "correlations of log-normalised means / variances and of zero fractions; sparsity = share of zeros):")
        print(generation.T.to_string(float_format=lambda v: f"{v:.3f}"))
    draws = f", obsm {_keys.SAMPLES}" if _keys.SAMPLES in test.obsm else ""
    print(f"\nWrote {out} (test cells with layers {_keys.IMPUTED} / {_keys.MASK}{draws}, uns countsdiff_metrics) "
          f"and {gen_path}.")
    print(f"Total time {time.perf_counter() - t_start:.0f} s (training {t_train:.0f} + {t_train_gen:.0f} s, "
          f"imputation {t_impute:.0f} s).")
    if quick:
        smoke = SMOKE_TEST.format(steps=max_steps, cells=adata.n_obs)
        print("\n" + textwrap.fill(smoke, 120) + "\n" + textwrap.fill(FULL_RUN, 120))
    return {"imputation": imputation, "generation": generation}
