"""What the generation benchmarks share (``generation``, ``generation_levers``): the stratified held-out split, the
depth condition and its draws, and the metrics of one generated set against the held-out cells of its type."""

from __future__ import annotations

from typing import Any

import numpy as np


def split_held_out(adata: Any, label_key: str, seed: int, top: int, max_cells: int) -> tuple[Any, Any, list, dict]:
    """``(train, held, types, n_gen)``: copies of the 80 / 20 split stratified by ``label_key``
    (``pp.split_cells``), the ``top`` largest types of the held-out cells, and the cells to generate per type (as
    many as held out, at most ``max_cells``)."""
    from countsdiff_sc import pp

    pp.split_cells(adata, train=0.8, validation=0.0, test=0.2, seed=seed, stratify=label_key)
    train = adata[adata.obs["countsdiff_split"] == "train"].copy()
    held = adata[adata.obs["countsdiff_split"] == "test"].copy()
    types = list(held.obs[label_key].value_counts().index[:top])
    lab_held = held.obs[label_key].astype(str).to_numpy()
    return train, held, types, {t: int(min(max_cells, np.sum(lab_held == t))) for t in types}


def log_library_condition(x: np.ndarray) -> np.ndarray:
    """The vector condition of the depth-conditioned model: each cell's log library size, standardised over the
    cells of ``x``, as a float32 column ``(n, 1)``."""
    lib = np.log(x.sum(1))
    return ((lib - lib.mean()) / lib.std()).astype(np.float32)[:, None]


def library_draws(condition: np.ndarray, labels: np.ndarray, n_gen: dict[str, int], seed: int) -> dict:
    """Per type, the depth conditions of ``n_gen[type]`` random train cells of that type (with replacement): the
    library sizes the depth-conditioned model generates at."""
    rng = np.random.default_rng(seed)
    return {t: condition[rng.choice(np.flatnonzero(labels == t), n)] for t, n in n_gen.items()}


def set_metrics(real: np.ndarray, gen: np.ndarray, embedder: Any, n_estimators: int, seed: int) -> dict[str, float]:
    """All per-cell-type metrics of one generated set against the held-out cells."""
    from countsdiff_sc import metrics

    table = metrics.evaluate_generation(
        real, gen, metrics=["mmd", "swd", "scfid", "classifier_auc", "gene_statistics", "sparsity"],
        n_bootstrap=0, embedder=embedder, n_estimators=n_estimators, seed=seed,
    )
    v = dict(zip(table.metric, table.value, strict=True))
    return {
        "mmd": v["mmd"], "swd": v["swd"], "energy_distance": metrics.energy_distance(real, gen),
        "scfid": v["scfid"], "rf_auc": v["classifier_auc"], "zero_frac_mae": v["gene_zero_frac_mae"],
        "mean_pearson": v["gene_mean_pearson"], "var_pearson": v["gene_var_pearson"],
        "sparsity_abs_diff": v["sparsity_abs_diff"],
    }
