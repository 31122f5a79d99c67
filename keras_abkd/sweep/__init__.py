"""(alpha, beta) sweeps: grids, tasks, resumable runs, reports and heatmaps.

`run_sweep(task, grid, seeds, path)` trains one student per cell and seed
of a `Grid` on a registered `SweepTask` and appends each finished run to a
JSON lines `ResultsFile`. `summarize`, `choose_best` and `plot_heatmap`
turn the file into a report. The `keras-abkd sweep` command wraps all of it.
"""

from keras_abkd.sweep.classification import ClassificationTask
from keras_abkd.sweep.grid import Grid
from keras_abkd.sweep.grid import parse_values
from keras_abkd.sweep.heatmap import plot_heatmap
from keras_abkd.sweep.objective import StoredTeacherLoss
from keras_abkd.sweep.objective import pack_targets
from keras_abkd.sweep.registry import get_task
from keras_abkd.sweep.registry import register_task
from keras_abkd.sweep.registry import task_names
from keras_abkd.sweep.report import CellSummary
from keras_abkd.sweep.report import choose_best
from keras_abkd.sweep.report import summarize
from keras_abkd.sweep.results import ConfigMismatchError
from keras_abkd.sweep.results import ResultsFile
from keras_abkd.sweep.results import ResultsFileLockedError
from keras_abkd.sweep.results import read_results
from keras_abkd.sweep.runner import plan_runs
from keras_abkd.sweep.runner import run_sweep
from keras_abkd.sweep.splits import Splits
from keras_abkd.sweep.splits import carve_validation
from keras_abkd.sweep.task import MAXIMIZE
from keras_abkd.sweep.task import MINIMIZE
from keras_abkd.sweep.task import SweepTask
