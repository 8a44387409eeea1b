"""Train / validation / test split of cells (CountsDiff paper, App. D.3.1: 80/10/10)."""

from __future__ import annotations

import numbers
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from .._keys import SPLIT
from .._utils import check_obs_key, check_seed, check_writable, record_params

SPLITS = ("train", "validation", "test")


def split_cells(
    adata: ad.AnnData,
    train: float = 0.8,
    validation: float = 0.1,
    test: float = 0.1,
    *,
    seed: int = 0,
    stratify: str | None = None,
    key_added: str = SPLIT,
) -> None:
    """Assign every cell to ``"train"``, ``"validation"`` or ``"test"``.

    The CountsDiff paper (App. D.3.1) uses an 80/10/10 split: models are trained on the training cells, tuned on
    the validation cells and evaluated on the test cells.

    Counts per split: for ``n`` cells (per group when stratified) each split gets ``floor(n * fraction)`` cells, and
    the remaining one or two cells are given to splits by systematic sampling with probabilities equal to the
    fractional parts. Every split therefore receives ``n * fraction`` cells in expectation *for every group*,
    including tiny ones (a group of one cell lands in "test" with probability ``test``), and never more than one
    cell away from it. Without stratification the overall counts are within one cell of ``n * fraction``; with
    stratification within one cell per group. Which cells go where is a uniform random permutation.

    Parameters
    ----------
    adata
        AnnData object; only ``obs[key_added]`` and ``uns["countsdiff"][key_added]`` are written.
    train, validation, test
        Fractions of cells, each in ``[0, 1]``, summing to 1. A fraction of 0 gives an empty split.
    seed
        Random seed; the same seed and data give the same split.
    stratify
        Column of ``adata.obs`` (e.g. cell type) whose groups are each split with the given fractions. Groups too
        small to appear in every split with a positive fraction are reported in a ``UserWarning``.
    key_added
        ``obs`` column to write (categorical with categories ``["train", "validation", "test"]``). An existing
        column is replaced only if countsdiff-sc wrote it; a user's own raises ``ValueError``.

    Returns
    -------
    ``None``. Writes ``adata.obs[key_added]`` and records fractions, seed, stratification and realised counts in
    ``adata.uns["countsdiff"][key_added]``.

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> adata = cds.datasets.pbmc68k_reduced_counts()
    >>> cds.pp.split_cells(adata, stratify="bulk_labels", seed=0)
    >>> adata.obs["countsdiff_split"].value_counts().to_dict()  # doctest: +SKIP
    {'train': 560, 'validation': 70, 'test': 70}
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0:
        raise ValueError("adata has no cells to split.")
    check_seed(seed)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string (the obs column to write); got {key_added!r}.")
    fractions = np.array([_check_fraction(name, f) for name, f in zip(SPLITS, (train, validation, test), strict=True)])
    if abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"train + validation + test must sum to 1; got {train} + {validation} + {test} = {fractions.sum():.6g}."
        )
    fractions = fractions / fractions.sum()
    check_writable(adata, key_added, "obs")
    if stratify is not None:
        check_obs_key(adata, stratify)
        if stratify == key_added:
            raise ValueError(f"key_added={key_added!r} equals stratify=; choose another name for the split column.")
        groups = adata.obs[stratify]
        n_missing = int(pd.isna(groups).sum())
        if n_missing:
            raise ValueError(
                f"adata.obs[{stratify!r}] has {n_missing} missing values; fill them (e.g. with 'unknown') to stratify."
            )
        codes, uniques = pd.factorize(groups, sort=True)
    else:
        codes, uniques = np.zeros(adata.n_obs, dtype=np.intp), np.array(["all"])

    rng = np.random.default_rng(seed)
    assignment = np.empty(adata.n_obs, dtype=np.int8)
    missing_from_split: list[str] = []
    for g in range(len(uniques)):
        members = rng.permutation(np.flatnonzero(codes == g))
        counts = _round_counts(members.size, fractions, rng)
        assignment[members] = np.repeat(np.arange(3, dtype=np.int8), counts)
        absent = [SPLITS[s] for s in range(3) if fractions[s] > 0 and counts[s] == 0]
        if absent and stratify is not None:
            missing_from_split.append(f"{uniques[g]!s} ({members.size} cells; none in {', '.join(absent)})")
    if missing_from_split:
        shown = "; ".join(missing_from_split[:10]) + (" ..." if len(missing_from_split) > 10 else "")
        warnings.warn(
            f"{len(missing_from_split)} groups of adata.obs[{stratify!r}] are too small to appear in every split: "
            f"{shown}.",
            UserWarning,
            stacklevel=2,
        )
    adata.obs[key_added] = pd.Categorical.from_codes(assignment, categories=list(SPLITS))
    realised = np.bincount(assignment, minlength=3)
    record_params(
        adata,
        key_added,
        {
            "train": float(fractions[0]),
            "validation": float(fractions[1]),
            "test": float(fractions[2]),
            "seed": int(seed),
            "stratify": stratify,
            "n_train": int(realised[0]),
            "n_validation": int(realised[1]),
            "n_test": int(realised[2]),
        },
    )


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1]; got {value!r}.")
    return float(value)


def _round_counts(n: int, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n`` with expectation ``n * fractions`` and each within one of it."""
    raw = n * fractions
    counts = np.floor(raw + 1e-9).astype(np.int64)
    leftover = int(n - counts.sum())
    if leftover > 0:
        remainders = np.clip(raw - counts, 0.0, None)
        cum = np.concatenate([[0.0], np.cumsum(remainders)])
        cum *= leftover / cum[-1]
        points = rng.random() + np.arange(leftover)  # systematic sampling: inclusion probability = remainder
        hits = np.searchsorted(cum, points, side="right") - 1
        np.add.at(counts, np.clip(hits, 0, fractions.size - 1), 1)
    return counts
