"""Plots in the matplotlib / scanpy style: imputation accuracy, per-gene calibration, metric tables, real vs
generated cells, interpolation trajectories and DICE uncertainty.

Every function takes ``ax=None`` (draw into existing axes), ``show=None``, ``save=None`` (a path, or True for
``<function name>.png`` in the working directory) and ``return_fig=False``. It returns the Figure when
``return_fig`` is True, None after ``plt.show()``, and otherwise the Axes (a list of Axes for several panels).
``show=None`` shows the figure only with an interactive matplotlib backend (Jupyter, a GUI) and only when the
function created the figure: drawn into axes you passed (``ax=``), the plot is left for your own figure. With a file
backend such as Agg nothing is shown and the Axes are returned. Plots never modify the AnnData objects they read.
"""

from __future__ import annotations

from ._dice import dice_uncertainty
from ._generation import interpolation_trajectory, real_vs_generated_umap
from ._imputation import gene_calibration, imputed_vs_true
from ._metrics import metric_bars

__all__ = [
    "dice_uncertainty",
    "gene_calibration",
    "imputed_vs_true",
    "interpolation_trajectory",
    "metric_bars",
    "real_vs_generated_umap",
]
