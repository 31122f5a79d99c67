import json
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_abkd import Distiller
from keras_abkd import sweep
from keras_abkd.cli import main as cli_main
from keras_abkd.losses import ABDivergence
from keras_abkd.sweep import report as reporting
from tests import reference


def _tiny_sweep(alphas="0.5"):
    # A digits sweep with the fewest epochs, so that a run costs about a
    # second and the file still contains real metrics.
    return [
        "sweep",
        "--task",
        "digits",
        "--alphas",
        alphas,
        "--betas",
        "0.5",
        "--seeds",
        "1",
        "--student-epochs",
        "1",
        "--teacher-epochs",
        "1",
    ]


# (kind, alpha, beta) of the cells of `_tiny_sweep()`: labels only, forward KL,
# reverse KL and (0.5, 0.5).
TINY_CELLS = {
    ("labels_only", None, None),
    ("distillation", 1.0, 0.0),
    ("distillation", 0.0, 1.0),
    ("distillation", 0.5, 0.5),
}


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    # Shared by the tests of this file, so the digits teacher trains once.
    return tmp_path_factory.mktemp("teacher_cache")


def _run_rows(path):
    # Only complete lines: a sweep running in another process may be
    # writing the last one.
    complete = pathlib.Path(path).read_text().split("\n")[:-1]
    records = [json.loads(line) for line in complete]
    return [record for record in records if record["type"] == "run"]


# Grid


def test_parse_values_range_includes_stop():
    assert sweep.parse_values("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    values = sweep.parse_values("0:1:0.1")
    assert len(values) == 11
    assert values[3] == 0.3


def test_parse_values_mixes_items():
    assert sweep.parse_values("-1, 0.2:0.6:0.2,2") == (-1.0, 0.2, 0.4, 0.6, 2.0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("0,,1", "empty item"),
        ("0,a", "'a' is not a number"),
        ("0,nan", "finite"),
        ("inf", "finite"),
        ("0:1", "start:stop:step"),
        ("0:1:0", "step of '0:1:0' must be > 0"),
        ("0:1:-0.5", "must be > 0"),
        ("1:0:0.5", "ends before it starts"),
        ("0.5,0:1:0.5", "0.5 given more than once"),
    ],
)
def test_parse_values_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_values(text, "--alphas")


def test_grid_product_order():
    grid = sweep.Grid.parse(alphas="0,1", betas="0.5,1")
    assert grid.cells == ((0.0, 0.5), (0.0, 1.0), (1.0, 0.5), (1.0, 1.0))


def test_grid_alpha_plus_beta():
    grid = sweep.Grid.parse(alphas="0.2,0.5", alpha_plus_beta="1")
    assert grid.cells == ((0.2, 0.8), (0.5, 0.5))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(betas="0"), "--alphas is missing"),
        (dict(alphas="0"), "got neither"),
        (dict(alphas="0", betas="0", alpha_plus_beta="1"), "got both"),
    ],
)
def test_grid_parse_rejects_option_mix(arguments, message):
    with pytest.raises(ValueError, match=message):
        sweep.Grid.parse(**arguments)


def test_grid_rejects_repeated_cells():
    with pytest.raises(ValueError, match="more than once"):
        sweep.Grid(((1.0, 0.0), (1.0, 0.0)))


def test_sweep_cli_rejects_bad_grid(tmp_path):
    output = tmp_path / "runs.jsonl"
    base = ["sweep", "--task", "digits", "--output", str(output)]
    with pytest.raises(SystemExit, match="step of '0:1:0' must be > 0"):
        cli_main.main(base + ["--alphas", "0:1:0", "--betas", "0"])
    with pytest.raises(SystemExit, match="got neither"):
        cli_main.main(base + ["--alphas", "0,1"])
    with pytest.raises(SystemExit, match="--seeds must be at least 1"):
        cli_main.main(base + ["--alphas", "1", "--betas", "0", "--seeds", "0"])
    with pytest.raises(SystemExit, match="student_epochs must be an integer >= 1"):
        cli_main.main(base + ["--alphas", "1", "--betas", "0", "--student-epochs", "0"])
    with pytest.raises(SystemExit, match="not a metric of task 'digits'"):
        cli_main.main(base + ["--alphas", "1", "--betas", "0", "--metric", "bleu"])
    assert not output.exists()


# Data and objective


def test_carve_validation_is_deterministic_and_disjoint():
    x = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    (x_train, y_train), (x_val, y_val) = sweep.carve_validation(x, y, 30, seed=0)
    (_, again_train), (_, again_val) = sweep.carve_validation(x, y, 30, seed=0)

    assert len(y_val) == 30
    assert len(y_train) == 70
    assert not set(y_train) & set(y_val)
    np.testing.assert_array_equal(y_val, again_val)
    np.testing.assert_array_equal(y_train, again_train)
    np.testing.assert_array_equal(x_val[:, 0], y_val)


@pytest.mark.parametrize("size", [0, 100, 2.5])
def test_carve_validation_rejects_size(size):
    with pytest.raises(ValueError, match="validation_size"):
        sweep.carve_validation(np.zeros((100, 1)), np.zeros(100), size)


def test_stored_teacher_loss_matches_float64_reference():
    rng = np.random.default_rng(0)
    teacher_logits = rng.normal(size=(6, 5)) * 2
    student_logits = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    loss = sweep.StoredTeacherLoss(ABDivergence(1.0, 0.0), student_loss_weight=0.5)

    value = loss(
        sweep.pack_targets(labels, teacher_logits), student_logits.astype("float32")
    )

    divergence = reference.ab_divergence_logits_float64(
        teacher_logits, student_logits, 1.0, 0.0
    )
    log_probabilities = np.log(reference.softmax64(student_logits))
    crossentropy = -log_probabilities[np.arange(6), labels]
    expected = np.mean(divergence + 0.5 * crossentropy)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_stored_teacher_loss_matches_distiller():
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    divergence = ABDivergence(0.3, 0.8, temperature=2.0)
    distiller = Distiller(teacher, student, divergence, student_loss_weight=0.5)
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    expected = distiller.compute_loss(x, y, student(x), training=False)
    stored = sweep.StoredTeacherLoss(divergence, student_loss_weight=0.5)
    value = stored(sweep.pack_targets(y, teacher.predict(x, verbose=0)), student(x))

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(value),
        keras.ops.convert_to_numpy(expected),
        rtol=1e-5,
    )


# Results file


CONFIG = {
    "task": "toy",
    "task_config": {"epochs": 1},
    "metrics": {"val_accuracy": "max"},
}


def _row(alpha, seed, accuracy=50.0):
    return {
        "kind": "distillation",
        "alpha": alpha,
        "beta": 0.0,
        "seed": seed,
        "metrics": {"val_accuracy": accuracy},
        "seconds": 1.0,
    }


def test_results_file_resumes_rows(tmp_path):
    path = tmp_path / "runs.jsonl"
    with sweep.ResultsFile(path, CONFIG) as results:
        results.append(_row(1.0, 0))

    with sweep.ResultsFile(path, CONFIG) as results:
        assert [row["alpha"] for row in results.runs] == [1.0]
        results.append(_row(0.5, 0))

    header, runs, _ = sweep.read_results(path)
    assert header["config"] == CONFIG
    assert [row["alpha"] for row in runs] == [1.0, 0.5]


def test_results_file_drops_truncated_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    with sweep.ResultsFile(path, CONFIG) as results:
        results.append(_row(1.0, 0))
    with open(path, "ab") as f:
        f.write(b'{"type": "run", "kind": "distil')

    with sweep.ResultsFile(path, CONFIG) as results:
        assert len(results.runs) == 1
        results.append(_row(0.5, 0))

    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line) for line in lines)


def test_results_file_rejects_other_config(tmp_path):
    path = tmp_path / "runs.jsonl"
    sweep.ResultsFile(path, CONFIG).close()
    other = {**CONFIG, "task_config": {"epochs": 2}}

    with pytest.raises(sweep.ConfigMismatchError, match="task_config.*--output"):
        sweep.ResultsFile(path, other)


def test_results_file_rejects_corrupt_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    with sweep.ResultsFile(path, CONFIG) as results:
        results.append(_row(1.0, 0))
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "not json", text[1]]) + "\n")

    with pytest.raises(ValueError, match="line 2, is not valid JSON"):
        sweep.read_results(path)


def test_results_file_locked_while_open(tmp_path):
    path = tmp_path / "runs.jsonl"
    with sweep.ResultsFile(path, CONFIG):
        with pytest.raises(sweep.ResultsFileLockedError, match="open in another"):
            sweep.ResultsFile(path, CONFIG)


def test_read_results_rejects_foreign_header(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"type": "header", "format": 1}\n')

    with pytest.raises(ValueError, match="not written by keras-abkd sweep"):
        sweep.read_results(path)


# Report


def test_summarize_and_choose_best():
    runs = [
        _row(1.0, 0, 80.0),
        _row(1.0, 1, 82.0),
        _row(0.5, 0, 85.0),
        _row(0.5, 1, 83.0),
        _row(0.2, 0, float("nan")),
    ]
    summaries = sweep.summarize(runs)
    by_alpha = {summary.alpha: summary for summary in summaries}

    assert by_alpha[1.0].mean("val_accuracy") == pytest.approx(81.0)
    assert by_alpha[1.0].std("val_accuracy") == pytest.approx(np.sqrt(2.0))
    assert sweep.choose_best(summaries, "val_accuracy", "max").alpha == 0.5
    assert sweep.choose_best(summaries, "val_accuracy", "min").alpha == 1.0
    assert reporting.format_mean_std(by_alpha[0.5], "val_accuracy") == "84.00 ± 1.41"


def test_paired_difference_uses_shared_seeds():
    best = sweep.summarize(
        [_row(0.5, 0, 85.0), _row(0.5, 1, 83.0), _row(0.5, 2, 90.0)]
    )[0]
    baseline = sweep.summarize([_row(1.0, 0, 84.0), _row(1.0, 1, 81.0)])[0]

    mean, std, count = reporting.paired_difference(best, baseline, "val_accuracy")

    assert count == 2
    assert mean == pytest.approx(1.5)
    assert std == pytest.approx(np.std([1.0, 2.0], ddof=1))


@pytest.mark.parametrize(
    "values", [[92.8, 93.2, 93.3, 93.3, 93.3], [90.0, 90.0, 90.0]]
)
def test_heatmap_color_range_with_tied_top(values):
    runs = [{**_row(float(i), 0, value), "beta": 0.0} for i, value in enumerate(values)]
    figure = sweep.plot_heatmap(sweep.summarize(runs), "val_accuracy")

    low, high = figure.axes[0].images[0].get_clim()

    assert low < high
    assert low <= min(values)
    assert high >= max(values)
    figure.clf()


def test_heatmap_leaves_missing_cells_empty(tmp_path):
    from keras_abkd.sweep import heatmap

    runs = [
        {**_row(alpha, 0, 80.0 + alpha), "beta": 1.0 - alpha}
        for alpha in (0.0, 0.5, 1.0)
    ]
    summaries = sweep.summarize(runs)

    alphas, betas, means = heatmap.metric_grid(summaries, "val_accuracy")
    figure = sweep.plot_heatmap(
        summaries, "val_accuracy", best=summaries[-1], path=tmp_path / "map.png"
    )

    assert alphas == [0.0, 0.5, 1.0]
    assert betas == [0.0, 0.5, 1.0]
    np.testing.assert_array_equal(np.isnan(means), ~np.eye(3, dtype=bool)[::-1])
    assert means[0, 2] == 81.0
    assert (tmp_path / "map.png").stat().st_size > 0
    figure.clf()


def test_report_rejects_empty_results(tmp_path):
    path = tmp_path / "runs.jsonl"
    sweep.ResultsFile(path, CONFIG).close()

    with pytest.raises(SystemExit, match="contains no finished run"):
        cli_main.main(["sweep", "report", str(path)])
    with pytest.raises(SystemExit, match="No such file"):
        cli_main.main(["sweep", "--report-only", "--output", str(tmp_path / "x.jsonl")])


def test_selection_metric_must_be_validation():
    directions = {"val_accuracy": "max", "test_accuracy": "max"}
    with pytest.raises(ValueError, match="validation metric"):
        reporting.check_selection_metric("test_accuracy", directions)
    with pytest.raises(ValueError, match="no metric 'val_bleu'"):
        reporting.check_selection_metric("val_bleu", directions)


def test_plan_runs_shares_baseline_cells():
    grid = sweep.Grid.parse(alphas="1,0.5", betas="0")
    runs = sweep.plan_runs(grid, seeds=[0, 1])
    keys = [run.key for run in runs]

    assert len(keys) == len(set(keys)) == 8
    assert keys[:4] == [
        ("labels_only", None, None, 0),
        ("distillation", 0.0, 1.0, 0),
        ("distillation", 1.0, 0.0, 0),
        ("distillation", 0.5, 0.0, 0),
    ]


# End to end


def test_sweep_cli_on_digits_writes_rows_and_heatmap(tmp_path, teacher_cache, capsys):
    output = tmp_path / "runs.jsonl"
    argv = _tiny_sweep() + ["--output", str(output), "--cache-dir", str(teacher_cache)]

    assert cli_main.main(argv) == 0
    printed = capsys.readouterr().out
    rows = _run_rows(output)

    assert {(r["kind"], r["alpha"], r["beta"]) for r in rows} == TINY_CELLS
    for row in rows:
        assert 0.0 <= row["metrics"]["test_accuracy"] <= 100.0
        assert row["seconds"] > 0
    assert (tmp_path / "runs.png").stat().st_size > 0
    assert "| labels only | 1 |" in printed
    assert "Best on val_accuracy" in printed

    assert cli_main.main(argv) == 0
    assert "All 4 runs are in" in capsys.readouterr().out
    assert len(_run_rows(output)) == 4

    with pytest.raises(SystemExit, match="student_epochs.*--output"):
        cli_main.main(argv + ["--student-epochs", "2"])
    assert len(_run_rows(output)) == 4

    (tmp_path / "runs.png").unlink()
    assert (
        cli_main.main(
            ["sweep", "report", str(output), "--heatmap", str(tmp_path / "again.png")]
        )
        == 0
    )
    assert "forward KL (1, 0)" in capsys.readouterr().out
    assert (tmp_path / "again.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="validation metric"):
        cli_main.main(["sweep", "report", str(output), "--metric", "test_accuracy"])


def test_sweep_resumes_after_kill(tmp_path, teacher_cache):
    output = tmp_path / "runs.jsonl"
    # Four cells, so that some remain when the first row is seen: on a fast
    # backend a second run can finish before the kill lands.
    argv = _tiny_sweep("0.5,1,1.5,2") + [
        "--no-baselines",
        "--output",
        str(output),
        "--cache-dir",
        str(teacher_cache),
    ]
    log = tmp_path / "sweep.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_abkd.cli", *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not (output.exists() and _run_rows(output)):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no run finished within 120 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_rows = len(_run_rows(output))

    assert cli_main.main(argv) == 0
    rows = _run_rows(output)
    keys = [(r["kind"], r["alpha"], r["beta"], r["seed"]) for r in rows]

    assert 1 <= killed_rows < 4
    assert len(keys) == len(set(keys)) == 4
    assert {key[1:3] for key in keys} == {(0.5, 0.5), (1.0, 0.5), (1.5, 0.5), (2.0, 0.5)}
