"""The report's line plots keep their legend off the curves."""

from __future__ import annotations

import numpy as np

from lilaw_med.audit import plots


def test_the_validation_plot_legend_lies_below_the_axes_and_covers_no_curve():
    x = list(range(1, 13))
    series = {"validation loss (meta step's forwards)": np.linspace(1, 0.4, 12),
              "validation accuracy (end-of-epoch evaluation)": np.linspace(0.5, 0.9, 12)}
    plt, fig, ax = plots._lines_figure(x, series, "noisy validation curve", "epoch", span=(0.5, 4.5, "scoring window"))
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes.y0  # entirely under the plotting area
    assert len(ax.get_legend().get_texts()) == 3
    plt.close(fig)
    png = plots.lines_png(x, series, "noisy validation curve", "epoch", span=(0.5, 4.5, "scoring window"))
    assert png.startswith(b"\x89PNG")
