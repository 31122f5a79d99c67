"""Heatmap of a sweep metric over the (alpha, beta) grid.

Needs matplotlib, the `[plot]` extra: `pip install "keras-abkd[plot]"`.
"""

import numpy as np

from keras_abkd.sweep.runner import DISTILLATION
from keras_abkd.sweep.runner import FORWARD_KL
from keras_abkd.sweep.runner import REVERSE_KL


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise ImportError(
            "The sweep heatmap needs matplotlib, which is not installed. "
            'Install it with: pip install "keras-abkd[plot]"'
        ) from None
    return pyplot


def metric_grid(summaries, metric):
    """Arrange the mean of `metric` of each distillation cell on an alpha × beta grid.

    Returns:
        `(alphas, betas, means)`: the sorted distinct alphas and betas, and
        a float array `[len(betas), len(alphas)]` with NaN where no cell
        was run (an alpha + beta grid fills only some of the entries).
    """
    cells = [s for s in summaries if s.kind == DISTILLATION and metric in s.values]
    if not cells:
        raise ValueError(f"No distillation run has the metric {metric!r} to draw.")
    alphas = sorted({s.alpha for s in cells})
    betas = sorted({s.beta for s in cells})
    means = np.full((len(betas), len(alphas)), np.nan)
    for s in cells:
        means[betas.index(s.beta), alphas.index(s.alpha)] = s.mean(metric)
    return alphas, betas, means


def plot_heatmap(summaries, metric, best=None, path=None, title=None):
    """Draw the mean of `metric` over the grid and mark FKL, RKL and the best cell.

    Each entry shows the mean over seeds. Forward KL (1, 0) and reverse KL
    (0, 1) are outlined and labelled where they were run, and the best cell
    gets a star. A few far-off cells (a diverged student) would flatten the
    colours of the rest, so the colour scale starts at
    `median - 2 * (max - median)` when the minimum lies below that. Cells
    under it take the lowest colour, and their printed values stay exact.

    Args:
        summaries: `CellSummary` list from `keras_abkd.sweep.summarize`.
        metric: Name of the metric to draw.
        best: Optional best `CellSummary` to mark.
        path: Optional path of the PNG to write.
        title: Optional figure title. Defaults to the metric's name.

    Returns:
        The matplotlib `Figure`.
    """
    pyplot = _pyplot()
    alphas, betas, means = metric_grid(summaries, metric)

    finite = means[np.isfinite(means)]
    median = float(np.median(finite))
    highest = float(finite.max())
    lowest = max(float(finite.min()), median - 2.0 * (highest - median))
    if lowest >= highest:
        # Half the cells or more tie for the top, so the clipping rule above
        # leaves no range: fall back to the full range of the values.
        lowest = float(finite.min())
    clipped = lowest > finite.min()
    if lowest >= highest:
        # Every cell has the same value; any non-empty range shows it.
        lowest, highest = lowest - 0.5, highest + 0.5

    figure, axes = pyplot.subplots(
        figsize=(max(5.0, 1.2 + 0.9 * len(alphas)), 1.0 + 0.7 * len(betas)),
        layout="constrained",
    )
    image = axes.imshow(
        np.ma.masked_invalid(means),
        origin="lower",
        cmap="viridis",
        aspect="auto",
        vmin=lowest,
        vmax=highest,
    )
    figure.colorbar(
        image, ax=axes, label=f"mean {metric}", extend="min" if clipped else "neither"
    )
    axes.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    axes.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    axes.set_xlabel("alpha")
    axes.set_ylabel("beta")
    axes.set_title(title or f"mean {metric} over seeds")

    middle = (lowest + highest) / 2
    for row, beta in enumerate(betas):
        for column, alpha in enumerate(alphas):
            value = means[row, column]
            if np.isnan(value):
                continue
            color = "black" if value > middle else "white"
            axes.text(
                column,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color=color,
            )

    def outline(cell, label, color):
        alpha, beta = cell
        if alpha not in alphas or beta not in betas:
            return
        column, row = alphas.index(alpha), betas.index(beta)
        if np.isnan(means[row, column]):
            return
        axes.add_patch(
            pyplot.Rectangle(
                (column - 0.5, row - 0.5),
                1,
                1,
                fill=False,
                edgecolor=color,
                linewidth=2,
            )
        )
        axes.text(
            column,
            row - 0.3,
            label,
            ha="center",
            va="center",
            fontsize=7,
            color=color,
            fontweight="bold",
        )

    outline(FORWARD_KL, "FKL", "tab:red")
    outline(REVERSE_KL, "RKL", "tab:orange")
    if best is not None:
        column, row = alphas.index(best.alpha), betas.index(best.beta)
        axes.plot(
            column,
            row + 0.3,
            marker="*",
            markersize=12,
            color="white",
            markeredgecolor="black",
            linestyle="none",
            label="best on validation",
        )
        axes.legend(
            loc="upper left", bbox_to_anchor=(0, -0.12), fontsize=8, frameon=False
        )

    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
