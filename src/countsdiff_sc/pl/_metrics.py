"""Bar charts of the metric tables of :mod:`countsdiff_sc.metrics`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import finish, new_axes, palette
from ._docs import fill_doc

_GROUP_COLUMNS = ("method", "embedding")


def _as_frame(table: Any, what: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        df = table.copy()
    elif isinstance(table, Mapping):  # the uns form: a dict of equally long column arrays
        try:
            df = pd.DataFrame({k: np.asarray(v) for k, v in table.items()})
        except ValueError as err:
            raise ValueError(f"{what} is a dict but not a table of equally long columns: {err}") from None
    else:
        raise TypeError(
            f"{what} must be a DataFrame or a dict of columns (adata.uns['countsdiff_metrics'][key]), got "
            f"{type(table).__name__}."
        )
    missing = [c for c in ("metric", "value") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} has no {' / '.join(missing)} column (columns: {list(df.columns)}); expected a table of "
            "countsdiff_sc.metrics.evaluate_* or metrics_table."
        )
    return df


def _is_table_of_columns(obj: Mapping) -> bool:
    return not any(isinstance(v, (pd.DataFrame, Mapping)) for v in obj.values())


def _combine(tables: Any, names: Sequence[str] | None) -> tuple[pd.DataFrame, str]:
    """One long DataFrame and the name of the column that identifies the bars of a group."""
    if isinstance(tables, Mapping) and not _is_table_of_columns(tables):
        if names is not None:
            raise ValueError("names cannot be combined with a dict of tables: the dict keys are the names.")
        names, tables = list(tables.keys()), list(tables.values())
    if isinstance(tables, (pd.DataFrame, Mapping)):
        df = _as_frame(tables, "table")
        if names is not None:
            raise ValueError("names needs a list of tables (one name per table).")
        group = next((c for c in _GROUP_COLUMNS if c in df.columns), None)
        if group is None:
            df = df.assign(method="")
            group = "method"
        return df, group
    tables = list(tables)
    if not tables:
        raise ValueError("No metric table given.")
    if names is not None and len(names) != len(tables):
        raise ValueError(f"Got {len(names)} names for {len(tables)} tables.")
    frames = []
    for i, t in enumerate(tables):
        df = _as_frame(t, f"table {i}")
        if names is not None:
            df = df.assign(method=str(names[i]))
        elif "method" not in df.columns:
            if "embedding" in df.columns:
                df = df.assign(method=df["embedding"].astype(str))
            else:
                df = df.assign(method=f"table {i}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True), "method"


@fill_doc
def metric_bars(
    tables: Any,
    metrics: str | Sequence[str] | None = None,
    *,
    names: Sequence[str] | None = None,
    panels: bool | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Bars of a metric table (one bar per method), with the bootstrap standard errors as error bars.

    Accepts the tables of :func:`countsdiff_sc.metrics.evaluate_imputation`, ``evaluate_generation`` and
    ``evaluate_embedding`` (DataFrames, or the dicts of columns stored in ``adata.uns["countsdiff_metrics"]``), and
    concatenations of them with a ``method`` column. The bars of one metric are the values of the ``method``
    column (else of the ``embedding`` column of an embedding table, else one bar per table). Rows with a NaN
    ``std_error`` get no error bar; a NaN or infinite ``value`` gets no bar, with a RuntimeWarning naming it.

    Metrics live on very different scales (an RMSE of 7 next to an MMD of 0.0006), so by default each metric gets
    its own panel; ``panels=False`` (or a single ``ax``) draws all of them as groups of bars on one axes.

    Parameters
    ----------
    tables
        A table, a list of tables (named by ``names``, by their ``method`` column or by position) or a dict
        ``{name: table}``.
    metrics
        Metrics to plot, in this order; None = all, in order of appearance.
    names
        One name per table of a list (becomes the ``method`` column).
    panels
        One panel per metric; None = True unless a single ``ax`` is given.
    ax
        Axes to draw into: one Axes (``panels=False``) or one per metric; None creates a figure.
    %(show_save)s

    Returns
    -------
    The Figure if ``return_fig``, None if shown, otherwise the Axes (a list with one Axes per metric for panels).

    Examples
    --------
    >>> import countsdiff_sc as cds
    >>> tables = {"CountsDiff": cds.metrics.evaluate_imputation(adata)}  # doctest: +SKIP
    >>> cds.pl.metric_bars(tables, metrics=["rmse", "spearman"])  # doctest: +SKIP
    """
    df, group = _combine(tables, names)
    available = list(dict.fromkeys(df["metric"].astype(str)))
    if metrics is None:
        chosen = available
    else:
        chosen = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise ValueError(f"Metric(s) {unknown} not in the table(s); available: {available}.")
    df = df[df["metric"].astype(str).isin(chosen)]
    df = df.assign(metric=df["metric"].astype(str), **{group: df[group].astype(str)})
    numeric = pd.to_numeric(df["value"], errors="coerce")
    if numeric.isna().any() and df["value"][numeric.isna()].notna().any():
        raise ValueError(f"The value column holds non-numbers (e.g. {df['value'][numeric.isna()].iloc[0]!r}).")
    df = df.assign(value=numeric.astype(float))
    missing = df[~np.isfinite(df["value"].to_numpy())]
    for _, row in missing.iterrows():
        warnings.warn(f"{row['metric']} of {row[group] or 'the table'} is {row['value']}; its bar is left out.",
                      RuntimeWarning, stacklevel=2)
    dup = df.duplicated(["metric", group], keep=False)
    if dup.any():
        others = [c for c in df.columns if c not in ("metric", "value", "std_error", group)]
        extra = [c for c in others if df.loc[dup, c].nunique() > 1]
        raise ValueError(
            f"Several rows share a ({group}, metric) pair, e.g. {df.loc[dup, [group, 'metric']].iloc[0].tolist()}; "
            f"they differ in {extra or 'no other column'}. Filter the table first (e.g. df[df.regime == ...]) or "
            f"put the distinguishing value into a {group!r} column."
        )
    groups = list(dict.fromkeys(df[group]))
    colors = palette(groups)
    values = df.pivot(index="metric", columns=group, values="value").reindex(index=chosen, columns=groups)
    if "std_error" in df.columns:
        errors = df.pivot(index="metric", columns=group, values="std_error").reindex(index=chosen, columns=groups)
    else:
        errors = values * np.nan
    errors = errors.astype(float)

    if panels is None:
        panels = not isinstance(ax, Axes)
    n_panels = len(chosen) if panels else 1
    fig, axs = new_axes(
        ax,
        n_panels,
        panel_size=(max(2.2, 0.55 * len(groups) + 1.2), 3.6)
        if panels
        else (max(5.0, 0.35 * len(groups) * len(chosen) + 1.5), 3.8),
    )
    width = 0.8 / len(groups)
    for p, a in enumerate(axs):
        names_here = [chosen[p]] if panels else chosen
        x = np.arange(len(names_here))
        for j, g in enumerate(groups):
            v = values.loc[names_here, g].to_numpy(dtype=float)
            e = errors.loc[names_here, g].to_numpy(dtype=float)
            offset = (j - (len(groups) - 1) / 2) * width
            a.bar(
                x + offset,
                v,
                width=width * 0.95,
                color=colors[g],
                label=g or None,
                yerr=np.where(np.isfinite(e), e, 0.0),
                capsize=2,
                error_kw={"lw": 1},
            )
        a.set_xticks(x)
        a.set_xticklabels(names_here)
        a.axhline(0, color="0.3", lw=0.8)
        if panels:
            a.set_title(chosen[p], fontsize="medium")
            a.set_xticks([])
    axs[0].set_ylabel("value")
    if any(groups):
        axs[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small", title=group)
    if panels:
        fig.tight_layout()
    return finish(fig, axs, show=show, save=save, return_fig=return_fig, name="metric_bars",
                  user_ax=ax is not None)
