"""Summaries of a sweep's runs: mean ± std per cell, the best cell, tables."""

import dataclasses
import math

import numpy as np

from keras_abkd.sweep.runner import DISTILLATION
from keras_abkd.sweep.runner import FORWARD_KL
from keras_abkd.sweep.runner import LABELS_ONLY
from keras_abkd.sweep.runner import REVERSE_KL
from keras_abkd.sweep.task import MAXIMIZE
from keras_abkd.sweep.task import MINIMIZE

# (kind, alpha, beta) of the baselines, in the order of the report's tables.
BASELINE_CELLS = (
    (LABELS_ONLY, None, None),
    (DISTILLATION, *FORWARD_KL),
    (DISTILLATION, *REVERSE_KL),
)


@dataclasses.dataclass(frozen=True)
class CellSummary:
    """The runs of one cell (labels only, or one (alpha, beta)) over seeds.

    Attributes:
        kind: `"labels_only"` or `"distillation"`.
        alpha: alpha of the cell, None for labels only.
        beta: beta of the cell, None for labels only.
        seeds: Sorted tuple of the seeds run.
        values: Dict from metric name to the tuple of values, in seed order.
    """

    kind: str
    alpha: object
    beta: object
    seeds: tuple
    values: dict

    @property
    def label(self):
        if self.kind == LABELS_ONLY:
            return "labels only"
        cell = (self.alpha, self.beta)
        if cell == FORWARD_KL:
            return "forward KL (1, 0)"
        if cell == REVERSE_KL:
            return "reverse KL (0, 1)"
        return f"ABKD ({self.alpha:g}, {self.beta:g})"

    def mean(self, metric):
        return float(np.mean(self.values[metric]))

    def std(self, metric):
        """Return the sample standard deviation (ddof=1), NaN for one seed."""
        values = self.values[metric]
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarize(runs):
    """Group run rows by cell.

    Args:
        runs: Run rows as `read_results` returns them.

    Returns:
        A list of `CellSummary`: labels only first, then the distillation
        cells sorted by (alpha, beta).
    """
    groups = {}
    for row in runs:
        key = (row["kind"], row["alpha"], row["beta"])
        groups.setdefault(key, []).append(row)

    summaries = []
    for (kind, alpha, beta), rows in groups.items():
        rows = sorted(rows, key=lambda row: row["seed"])
        names = [
            name
            for name in rows[0]["metrics"]
            if all(name in r["metrics"] for r in rows)
        ]
        values = {
            name: tuple(float(r["metrics"][name]) for r in rows) for name in names
        }
        seeds = tuple(row["seed"] for row in rows)
        summaries.append(CellSummary(kind, alpha, beta, seeds, values))

    def order(summary):
        if summary.kind == LABELS_ONLY:
            return (0, 0.0, 0.0)
        return (1, summary.alpha, summary.beta)

    return sorted(summaries, key=order)


def check_selection_metric(metric, directions):
    """Raise unless `metric` is a validation metric the sweep recorded.

    Args:
        metric: Metric name, such as `"val_accuracy"`.
        directions: Dict from metric name to `"max"` or `"min"`, from the
            results header.
    """
    if metric not in directions:
        available = ", ".join(sorted(directions)) or "none"
        raise ValueError(
            f"The runs have no metric {metric!r}. Recorded metrics: {available}."
        )
    if not metric.startswith("val_"):
        raise ValueError(
            f"(alpha, beta) must be chosen on a validation metric (a name "
            f"starting with 'val_'), got {metric!r}. Test metrics are reported "
            "for the chosen cell."
        )
    if directions[metric] not in (MAXIMIZE, MINIMIZE):
        raise ValueError(
            f"The direction of {metric!r} must be 'max' or 'min', got "
            f"{directions[metric]!r}."
        )


def choose_best(summaries, metric, direction):
    """Return the distillation cell with the best mean `metric`.

    Every (alpha, beta) run is a candidate, forward KL (1, 0) and reverse KL
    (0, 1) included. Ties keep the first cell in `summaries` order. Cells
    whose mean is NaN (a diverged student) never win.

    Args:
        summaries: `CellSummary` list from `summarize`.
        metric: Name of the validation metric.
        direction: `"max"` or `"min"`.

    Returns:
        The best `CellSummary`, or None when no distillation cell has a
        finite mean.
    """
    sign = 1.0 if direction == MAXIMIZE else -1.0
    best, best_score = None, -math.inf
    for summary in summaries:
        if summary.kind != DISTILLATION or metric not in summary.values:
            continue
        score = sign * summary.mean(metric)
        if math.isfinite(score) and score > best_score:
            best, best_score = summary, score
    return best


def format_mean_std(summary, metric):
    """Format a metric of a cell as `mean ± std`, or `mean` for one seed."""
    if metric not in summary.values:
        return "—"
    mean, std = summary.mean(metric), summary.std(metric)
    if math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def reported_metrics(directions):
    """Return the validation and test metrics in the order of the header."""
    return [name for name in directions if name.startswith(("val_", "test_"))]


def format_comparison_table(summaries, best, metrics):
    """Format labels only, forward KL, reverse KL and the best cell as Markdown.

    Args:
        summaries: `CellSummary` list from `summarize`.
        best: The chosen `CellSummary` (or None).
        metrics: Metric names for the columns.

    Returns:
        A Markdown table with one `mean ± std` column per metric and the
        number of seeds.
    """
    by_cell = {(s.kind, s.alpha, s.beta): s for s in summaries}
    rows = []
    for key in BASELINE_CELLS:
        if key in by_cell:
            rows.append((by_cell[key].label, by_cell[key]))
    if best is not None:
        rows.append((f"best: {best.label}", best))

    header = "| student | seeds | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for name, summary in rows:
        cells = " | ".join(format_mean_std(summary, metric) for metric in metrics)
        lines.append(f"| {name} | {len(summary.seeds)} | {cells} |")
    return "\n".join(lines)


def format_grid_table(summaries, metric, test_metric=None):
    """Format every distillation cell's `metric` (and `test_metric`) as Markdown."""
    columns = [metric] + ([test_metric] if test_metric else [])
    lines = [
        "| alpha | beta | seeds | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 3),
    ]
    for summary in summaries:
        if summary.kind != DISTILLATION:
            continue
        cells = " | ".join(format_mean_std(summary, name) for name in columns)
        lines.append(
            f"| {summary.alpha:g} | {summary.beta:g} | {len(summary.seeds)} | {cells} |"
        )
    return "\n".join(lines)


def paired_difference(summary, baseline, metric):
    """Return the mean and std of `summary - baseline` over the seeds both ran.

    Each seed fixes a student's initialisation and data order in every cell
    of a `ClassificationTask` sweep, so the per-seed difference removes the
    part of the spread that the two cells share.

    Returns:
        `(mean, std, count)`, with std NaN for fewer than 2 shared seeds
        and mean NaN for none.
    """
    first = dict(zip(summary.seeds, summary.values.get(metric, ())))
    second = dict(zip(baseline.seeds, baseline.values.get(metric, ())))
    differences = [first[seed] - second[seed] for seed in first if seed in second]
    if not differences:
        return math.nan, math.nan, 0
    std = float(np.std(differences, ddof=1)) if len(differences) > 1 else math.nan
    return float(np.mean(differences)), std, len(differences)


def format_paired_table(summaries, best, metrics):
    """Format the best cell minus each baseline, per seed, as a Markdown table."""
    by_cell = {(s.kind, s.alpha, s.beta): s for s in summaries}
    baselines = [
        by_cell[key]
        for key in BASELINE_CELLS
        if key in by_cell and by_cell[key] is not best
    ]
    lines = [
        "| difference | seeds | " + " | ".join(metrics) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    for baseline in baselines:
        cells, count = [], 0
        for metric in metrics:
            mean, std, count = paired_difference(best, baseline, metric)
            shown = f"{mean:+.2f}" if math.isnan(std) else f"{mean:+.2f} ± {std:.2f}"
            cells.append(shown)
        lines.append(
            f"| {best.label} − {baseline.label} | {count} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
