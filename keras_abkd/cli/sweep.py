"""`keras-abkd sweep`: distil students over an (alpha, beta) grid and report.

Trains one student per (alpha, beta) cell and seed, plus labels-only,
forward KL (1, 0) and reverse KL (0, 1) baselines, on a registered task. Each
finished run is appended to a JSON lines file, so a killed sweep resumes
where it stopped. At the end it prints mean ± std per cell, the cell with
the best validation metric and its test numbers next to the baselines, and
writes a heatmap PNG. `keras-abkd sweep report RUNS.jsonl` redraws the
report from a results file.
"""

import argparse
import importlib
import pathlib

from keras_abkd.cli import datasets
from keras_abkd.sweep import results as sweep_results

# Modules that register sweep tasks when imported.
TASK_MODULES = [
    "keras_abkd.cli.sweep_tasks",
    "keras_abkd.cli.sweep_cifar10",
    "keras_abkd.cli.sweep_causal_lm",
]

DEFAULT_METRIC = "val_accuracy"

# Errors caused by the arguments, the data or the results file, printed
# without a traceback.
_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    sweep_results.ResultsFileLockedError,
    datasets.DatasetNotFoundError,
)


def _load_tasks():
    for module_name in TASK_MODULES:
        importlib.import_module(module_name)
    from keras_abkd import sweep

    return sweep.task_names()


def _add_report_options(parser):
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="Validation metric that chooses the best (alpha, beta) and that "
        f"the heatmap shows. Defaults to {DEFAULT_METRIC}.",
    )
    parser.add_argument(
        "--heatmap",
        default=None,
        help="Path of the heatmap PNG. Defaults to the results file's path "
        "with the suffix .png.",
    )


def add_parser(subparsers):
    task_names = _load_tasks()
    parser = subparsers.add_parser(
        "sweep",
        help="Distil students over an (alpha, beta) grid with several seeds.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: keras-abkd sweep --task digits --alphas 0.5,1 "
        "--betas 0,0.5 --seeds 2 --output runs.jsonl",
    )
    parser.add_argument(
        "--task",
        choices=task_names,
        default=None,
        help="Task to sweep: " + ", ".join(task_names) + ".",
    )
    parser.add_argument(
        "--alphas",
        help="alpha values: comma-separated numbers and start:stop:step "
        "ranges (stop included), such as 0,0.5,1 or 0:1:0.25.",
    )
    parser.add_argument(
        "--betas",
        help="beta values, combined with every alpha. Same syntax as --alphas.",
    )
    parser.add_argument(
        "--alpha-plus-beta",
        help="Values of alpha + beta, combined with every alpha (beta = sum - "
        "alpha), instead of --betas. Same syntax as --alphas.",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="Students per cell, with seeds 0 to N-1. Defaults to 3.",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON lines results file, created or resumed. Defaults to "
        "sweep_TASK.jsonl in the current folder.",
    )
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="Skip the labels-only, forward KL and reverse KL students.",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Print the report and draw the heatmap of --output without training.",
    )
    _add_report_options(parser)

    settings = parser.add_argument_group(
        "task settings", "Left out, each takes the task's default."
    )
    settings.add_argument("--student-epochs", type=int, help="Epochs of each student.")
    settings.add_argument("--batch-size", type=int, help="Batch size of the students.")
    settings.add_argument("--temperature", type=float, help="Distillation temperature.")
    settings.add_argument(
        "--student-loss-weight",
        type=float,
        help="Weight of the label crossentropy next to the divergence (weight 1).",
    )
    settings.add_argument("--learning-rate", type=float, help="Adam learning rate.")
    settings.add_argument("--teacher-epochs", type=int, help="Epochs of the teacher.")
    settings.add_argument(
        "--student-units", type=int, help="Hidden units of the student."
    )
    settings.add_argument(
        "--validation-size",
        type=int,
        help="Training examples moved to the validation split.",
    )
    settings.add_argument(
        "--cache-dir",
        help="Folder of the cached teacher. Defaults to $KERAS_ABKD_CACHE or "
        "~/.cache/keras_abkd.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Show Keras progress bars while teacher and students train.",
    )
    parser.set_defaults(func=_main)

    actions = parser.add_subparsers(dest="sweep_action", metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="Print the report and draw the heatmap of a results file.",
        description="Print mean ± std per cell, the best (alpha, beta) on a "
        "validation metric with its test numbers, and draw the heatmap.",
    )
    report.add_argument("results", help="JSON lines results file of a sweep.")
    _add_report_options(report)
    report.set_defaults(func=_report_main)


# Command-line options passed to the task, by task keyword.
_TASK_SETTINGS = (
    "student_epochs",
    "batch_size",
    "temperature",
    "student_loss_weight",
    "learning_rate",
    "teacher_epochs",
    "student_units",
    "validation_size",
    "cache_dir",
)


def _default_heatmap(results_path):
    return pathlib.Path(results_path).with_suffix(".png")


def report(results_path, metric=DEFAULT_METRIC, heatmap_path=None):
    """Print the report of a results file, write its heatmap and return the text."""
    from keras_abkd import sweep
    from keras_abkd.sweep import report as reporting
    from keras_abkd.sweep.runner import format_info

    header, runs, prepared = sweep.read_results(results_path)
    if not runs:
        raise ValueError(f"{results_path} contains no finished run yet.")
    directions = header["config"]["metrics"]
    reporting.check_selection_metric(metric, directions)

    summaries = sweep.summarize(runs)
    best = sweep.choose_best(summaries, metric, directions[metric])
    metrics = reporting.reported_metrics(directions)
    test_metric = "test_" + metric[len("val_") :]
    if test_metric not in directions:
        test_metric = None

    config = header["config"]
    lines = [
        f"Task {config['task']} on {config['backend']}, "
        f"{len(runs)} runs. Settings: "
        + ", ".join(f"{key}={value}" for key, value in config["task_config"].items()),
    ]
    if prepared:
        lines.append("Prepared task: " + format_info(prepared[-1]["info"]))
    lines += ["", "Every (alpha, beta) cell, mean ± std over seeds:", ""]
    lines.append(reporting.format_grid_table(summaries, metric, test_metric))
    lines += ["", f"Baselines and the best cell on {metric}:", ""]
    lines.append(reporting.format_comparison_table(summaries, best, metrics))
    if best is None:
        lines.append(f"No distillation cell has a finite {metric}.")
    else:
        lines.append("")
        lines.append(
            f"Best on {metric}: {best.label}, alpha={best.alpha:g}, beta={best.beta:g}."
        )
        lines += [
            "",
            "The best cell minus each baseline, seed by seed (mean ± std):",
            "",
        ]
        lines.append(reporting.format_paired_table(summaries, best, metrics))

    heatmap_path = heatmap_path or _default_heatmap(results_path)
    try:
        figure = sweep.plot_heatmap(
            summaries,
            metric,
            best=best,
            path=heatmap_path,
            title=f"{config['task']}: mean {metric} over seeds",
        )
    except ImportError as error:
        lines.append(f"No heatmap: {error}")
    else:
        import matplotlib.pyplot as pyplot

        pyplot.close(figure)
        lines.append(f"Heatmap: {heatmap_path}")

    text = "\n".join(lines)
    print(text)
    return text


def _task_settings(args):
    settings = {
        name: getattr(args, name)
        for name in _TASK_SETTINGS
        if getattr(args, name) is not None
    }
    settings["verbose"] = 1 if args.verbose else 0
    return settings


def _main(args):
    from keras_abkd import sweep

    output = args.output or (f"sweep_{args.task}.jsonl" if args.task else None)
    try:
        if args.report_only:
            if output is None:
                raise ValueError("--report-only needs --output (the results file).")
            report(output, args.metric, args.heatmap)
            return 0

        if args.task is None:
            raise ValueError(
                "--task is missing. Choose one of: "
                + ", ".join(sweep.task_names())
                + "."
            )
        if args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {args.seeds}.")
        grid = sweep.Grid.parse(args.alphas, args.betas, args.alpha_plus_beta)
        task = sweep.get_task(args.task, **_task_settings(args))
        if args.metric not in task.metrics:
            raise ValueError(
                f"--metric {args.metric!r} is not a metric of task {args.task!r}. "
                "Its metrics: " + ", ".join(task.metrics) + "."
            )

        sweep.run_sweep(
            task,
            grid,
            range(args.seeds),
            output,
            baselines=not args.no_baselines,
            progress=_print_now,
        )
        print()
        report(output, args.metric, args.heatmap)
    except _USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
    return 0


def _report_main(args):
    try:
        report(args.results, args.metric, args.heatmap)
    except _USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
    return 0


def _print_now(message):
    print(message, flush=True)
