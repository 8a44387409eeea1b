"""The machinery shared by the metric tables: metric specifications, name resolution, rows and storage in ``uns``.

A metric table (:func:`evaluate_imputation`, :func:`evaluate_generation`, :func:`evaluate_embedding`) is driven by a
registry: a dict from the names accepted by its ``metrics=`` argument to :class:`MetricSpec` entries. Each entry
says how to compute its rows from the table's shared inputs (an object with the evaluated data and the
intermediates several metrics share, computed once on first use) and what it needs. Adding a metric to a table is
one entry in its registry.

Every table is also written to ``adata.uns["countsdiff_metrics"][key_added]`` as a dict of equally long 1-D arrays
(one per column), which h5ad can store; :func:`metrics_table` turns it back into a DataFrame. The parameters of the
call are recorded in ``adata.uns["countsdiff"]["metrics_<key_added>"]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import METRICS_UNS_KEY, record_params
from ._bootstrap import standard_error

#: Column order of the tables (h5ad stores dict keys sorted, so metrics_table restores this order).
COLUMN_ORDER = [
    "embedding", "metric", "value", "std_error", "n_bootstrap", "resolution", "n_cells", "n_entries", "n_real",
    "n_generated", "note",
]  # fmt: skip


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a metric table.

    Parameters
    ----------
    name
        The name accepted by the table's ``metrics=`` argument.
    compute
        Function of the table's shared inputs returning ``{row name: result}`` for the rows of this metric. The
        result is ``(values, note)`` for the imputation and generation tables (``values``: the estimate followed by
        one value per bootstrap resample) and ``(value, resolution, note)`` for the embedding table.
    rows
        The row names ``compute`` returns (``metric`` column of the table); empty means ``(name,)``.
    needs
        Inputs beyond the matrices: ``"labels"`` (an obs column of labels) or ``"embedder"`` (an scFID embedder,
        given or trained on request). Metrics whose needs are not available are left out of the default selection.
    higher_is_better
        Direction of the rows: True, False, or None (no single direction: a descriptive value, a value best at 0,
        or a group whose rows differ).
    """

    name: str
    compute: Callable[[Any], dict[str, tuple[Any, ...]]]
    rows: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    higher_is_better: bool | None = False

    def __post_init__(self) -> None:
        if not self.rows:
            object.__setattr__(self, "rows", (self.name,))


def registry(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    """A table's registry: its metric specifications by name, in table order (names must be unique)."""
    out: dict[str, MetricSpec] = {}
    for spec in specs:
        if spec.name in out:
            raise ValueError(f"Metric {spec.name!r} is registered twice.")
        out[spec.name] = spec
    return out


def resolve_metrics(
    metrics: str | Sequence[str] | None, specs: Mapping[str, MetricSpec], available: Collection[str] = ()
) -> list[str]:
    """The metrics a table computes: ``metrics`` as given (checked against ``specs``), or by default every metric
    whose needs are ``available``."""
    if metrics is None:
        return [name for name, spec in specs.items() if spec.needs <= set(available)]
    if isinstance(metrics, str):
        chosen = [metrics]
    else:
        try:
            chosen = list(metrics)
        except TypeError:
            raise ValueError(f"metrics must be a metric name or a list of names from {list(specs)}, got "
                             f"{metrics!r}.") from None
    if not chosen:
        raise ValueError(f"metrics=[] selects no metric; name at least one of {list(specs)}, or pass None for the "
                         "default selection.")
    unknown = [m for m in chosen if not isinstance(m, str) or m not in specs]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(specs)}.")
    return list(dict.fromkeys(chosen))


def compute_metrics(specs: Mapping[str, MetricSpec], chosen: Collection[str], inputs: Any) -> dict[str, tuple]:
    """Rows of the ``chosen`` metrics, computed once each in registry order: ``{row name: result}``."""
    results: dict[str, tuple] = {}
    for name, spec in specs.items():
        if name in chosen:
            results.update(spec.compute(inputs))
    return results


def rows_from_values(results: Mapping[str, tuple[np.ndarray, str]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows from ``{row name: (values, note)}``: the estimate, its bootstrap standard error and ``extra``."""
    rows = []
    for name, (vals, note) in results.items():
        rows.append(
            {
                "metric": name,
                "value": float(vals[0]),
                "std_error": standard_error(vals[1:]),
                "n_bootstrap": int(np.isfinite(vals[1:]).sum()),
                **extra,
                "note": note,
            }
        )
    return rows


def warn_nan_rows(df: pd.DataFrame, reasons: Mapping[str, str], stacklevel: int = 3) -> None:
    """One RuntimeWarning per NaN value of a table, with the reason ``reasons[metric]`` (or a generic one)."""
    for _, row in df[df["value"].isna()].iterrows():
        where = f" of {row['embedding']!r}" if "embedding" in row else ""
        reason = reasons.get(str(row["metric"]), "it is undefined for this input (see the metric's documentation)")
        warnings.warn(f"{row['metric']}{where} is NaN: {reason}", RuntimeWarning, stacklevel=stacklevel)


def store_table(adata: ad.AnnData, key_added: str, df: pd.DataFrame, params: dict[str, Any]) -> None:
    """Write ``df`` to ``adata.uns["countsdiff_metrics"][key_added]`` (a view only gets a warning)."""
    if adata.is_view:
        warnings.warn(
            f"The AnnData is a view; the {key_added!r} metric table is returned but not stored in its uns. Pass a "
            "copy (adata[...].copy()) to keep it.",
            UserWarning,
            stacklevel=3,
        )
        return
    columns: dict[str, np.ndarray] = {}
    for col in df.columns:
        values = df[col].to_numpy()
        if values.dtype.kind in "biuf":
            columns[col] = values
        else:
            columns[col] = np.asarray([str(v) for v in values], dtype=str)
    adata.uns.setdefault(METRICS_UNS_KEY, {})[key_added] = columns
    record_params(adata, f"metrics_{key_added}", params)


def metrics_table(adata: ad.AnnData, key: str = "imputation") -> pd.DataFrame:
    """Read a metric table stored by :func:`evaluate_imputation`, :func:`evaluate_generation` or
    :func:`evaluate_embedding` (also after a write_h5ad / read_h5ad round trip).

    Parameters
    ----------
    adata
        The AnnData object holding ``uns["countsdiff_metrics"][key]``.
    key
        The ``key_added`` of the evaluation.

    Returns
    -------
    The table as a DataFrame.

    Examples
    --------
    >>> import anndata as ad, numpy as np
    >>> a = ad.AnnData(np.zeros((1, 1)))
    >>> a.uns["countsdiff_metrics"] = {"imputation": {"metric": np.array(["rmse"]), "value": np.array([0.5])}}
    >>> metrics_table(a)["value"].tolist()
    [0.5]
    """
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    store = adata.uns.get(METRICS_UNS_KEY, {})
    if key not in store:
        raise KeyError(
            f"No metric table {key!r} in adata.uns[{METRICS_UNS_KEY!r}]. Available: {sorted(store) or 'none'}. "
            "Run evaluate_imputation / evaluate_generation / evaluate_embedding first."
        )
    table = store[key]
    columns = sorted(table, key=lambda c: (COLUMN_ORDER.index(c) if c in COLUMN_ORDER else len(COLUMN_ORDER), c))
    return pd.DataFrame({col: np.asarray(table[col]) for col in columns})
