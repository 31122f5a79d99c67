"""`run_sweep`: train one student per (alpha, beta, seed) and record each run."""

import dataclasses
import logging
import time

import keras

from keras_abkd.sweep.results import ResultsFile
from keras_abkd.sweep.results import run_key

logger = logging.getLogger(__name__)

# Kinds of run rows.
LABELS_ONLY = "labels_only"
DISTILLATION = "distillation"

# (alpha, beta) of the baselines run next to every grid.
FORWARD_KL = (1.0, 0.0)
REVERSE_KL = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Run:
    """One student to train: a kind, (alpha, beta) or None, and a seed."""

    kind: str
    alpha: object
    beta: object
    seed: int

    @property
    def key(self):
        return (self.kind, self.alpha, self.beta, self.seed)

    def describe(self):
        if self.kind == LABELS_ONLY:
            return f"labels only, seed {self.seed}"
        return f"alpha={self.alpha:g} beta={self.beta:g}, seed {self.seed}"


def plan_runs(grid, seeds, baselines=True):
    """Return the runs of a sweep, seed by seed, so that early results cover the grid.

    Args:
        grid: A `keras_abkd.sweep.Grid`.
        seeds: Sequence of integer seeds.
        baselines: Whether to add, for each seed, a labels-only student and
            forward KL (1, 0) and reverse KL (0, 1) students. A baseline that
            is also a grid cell runs once. Defaults to True.

    Returns:
        A list of `Run`, baselines first within each seed.
    """
    cells = list(grid.cells)
    if baselines:
        cells = [cell for cell in (FORWARD_KL, REVERSE_KL) if cell not in cells] + cells
    runs = []
    for seed in seeds:
        if baselines:
            runs.append(Run(LABELS_ONLY, None, None, int(seed)))
        runs.extend(Run(DISTILLATION, alpha, beta, int(seed)) for alpha, beta in cells)
    return runs


def sweep_config(task):
    """Return the fingerprinted configuration of a sweep over `task`."""
    return {
        "task": task.name,
        "backend": keras.backend.backend(),
        "task_config": task.config(),
        "metrics": dict(task.metrics),
    }


def sweep_metadata():
    """Return the library versions of this process, stored in a new results file."""
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    backend = keras.backend.backend()
    package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if package is not None:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"versions": versions}


def _report(progress, message):
    if progress is None:
        logger.info("%s", message)
    else:
        progress(message)


def format_info(info):
    """Format a dict of facts as `key=value` pairs, floats with 2 decimals."""
    items = []
    for key, value in info.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        items.append(f"{key}={shown}")
    return ", ".join(items)


def run_sweep(task, grid, seeds, path, baselines=True, progress=None):
    """Run the students of a sweep that are not yet in the results file.

    Opens (or creates) the results file at `path`, skips the runs it already
    contains, prepares the task only when a run remains, then trains the
    remaining students one by one, appending each finished run to the file.
    A sweep that is killed resumes where it stopped when called again with
    the same arguments.

    Args:
        task: A `keras_abkd.sweep.SweepTask`.
        grid: A `keras_abkd.sweep.Grid`.
        seeds: Sequence of integer seeds.
        path: Path of the JSON lines results file.
        baselines: Whether to run the labels-only, forward KL and reverse KL
            baselines. Defaults to True.
        progress: Optional function called with one line of text per event
            (start, skipped runs, each finished run). Defaults to logging at
            INFO level.

    Returns:
        The list of all run rows in the file, including earlier ones.

    Raises:
        keras_abkd.sweep.ConfigMismatchError: when the file was written with
            other task settings.
    """
    runs = plan_runs(grid, seeds, baselines=baselines)

    with ResultsFile(path, sweep_config(task), sweep_metadata()) as results:
        finished = {run_key(row) for row in results.runs}
        remaining = [run for run in runs if run.key not in finished]
        skipped = len(runs) - len(remaining)
        if skipped:
            _report(
                progress,
                f"Resuming {path}: {skipped} of {len(runs)} runs already done.",
            )
        if not remaining:
            _report(progress, f"All {len(runs)} runs are in {path}.")
            return list(results.runs)

        _report(progress, f"Preparing task {task.name!r}")
        info = task.prepare() or {}
        results.append({"task": task.name, "info": info}, record_type="prepared")
        if info:
            _report(progress, format_info(info))

        start = time.perf_counter()
        for index, run in enumerate(remaining, start=1):
            run_start = time.perf_counter()
            metrics = task.train_student(run.alpha, run.beta, run.seed)
            seconds = time.perf_counter() - run_start
            results.append(
                {
                    "kind": run.kind,
                    "alpha": run.alpha,
                    "beta": run.beta,
                    "seed": run.seed,
                    "metrics": metrics,
                    "seconds": round(seconds, 3),
                }
            )
            elapsed = time.perf_counter() - start
            left = elapsed / index * (len(remaining) - index)
            shown = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items())
            _report(
                progress,
                f"[{skipped + index}/{len(runs)}] {run.describe()}: {shown} "
                f"({seconds:.1f} s, about {left / 60:.0f} min left)",
            )
        return list(results.runs)
