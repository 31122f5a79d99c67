import gzip

import numpy as np
import pytest

from keras_abkd.cli import datasets
from keras_abkd.cli import main as cli_main


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    _write_idx(tmp_path / "images.gz", images)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "images.gz"), images)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)


def test_fashion_mnist_read_from_keras_cache(tmp_path, monkeypatch):
    folder = tmp_path / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (6, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(6) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (2, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([3, 4]))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    (x_train, y_train), (x_test, y_test) = datasets.load_fashion_mnist()

    assert x_train.shape == (6, 28, 28)
    np.testing.assert_array_equal(y_test, [3, 4])


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")

    def no_network():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", no_network)
    with pytest.raises(datasets.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist()


def test_demo_on_digits_prints_table_and_caches_teacher(tmp_path, capsys):
    from keras_abkd.cli import demo

    argv = [
        "demo", "--dataset", "digits", "--teacher-epochs", "2", "--student-epochs", "1",
        "--quiet", "--cache-dir", str(tmp_path),
    ]

    assert cli_main.main(argv) == 0
    first = capsys.readouterr().out
    config = demo.DemoConfig(
        dataset="digits", teacher_epochs=2, cache_dir=str(tmp_path), verbose=0
    )
    (x_train, y_train), _ = datasets.load("digits")
    demo.load_or_train_teacher(config, x_train, y_train)
    second = capsys.readouterr().out

    assert "Training the teacher" in first
    for row in ("labels only", "forward KL (1, 0)", "reverse KL (0, 1)", "ABKD (1, 0.5)"):
        assert row in first
    assert "Using the cached teacher" in second
    assert len(list(tmp_path.glob("teacher_digits_*.keras"))) == 1
    assert not list(tmp_path.glob("*.partial.keras"))


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit, match="--seeds must be at least 1, got 0"):
        cli_main.main(["demo", "--seeds", "0"])
    with pytest.raises(SystemExit, match="temperature must be a finite number > 0"):
        cli_main.main(["demo", "--dataset", "digits", "--temperature", "-1", "--quiet"])


def test_format_table_shows_spread_for_several_seeds():
    from keras_abkd.cli import demo

    table = demo.format_table([("labels only", [0.8, 0.9], [0.7, 0.8])], seeds=2)
    assert "85.00 ± 7.07" in table
