"""Markdown tables for the benchmark scripts (no dependency on ``tabulate``)."""

from __future__ import annotations

import pandas as pd


def frame_to_markdown(df: pd.DataFrame, index: bool = True, float_format: str = "{:.4g}") -> str:
    """Render a DataFrame as a GitHub markdown table."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]

    def fmt(v: object) -> str:
        return float_format.format(v) if isinstance(v, float) else str(v)

    rows = [[fmt(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
