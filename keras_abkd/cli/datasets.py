"""Image datasets for the demo, loaded without a network where possible."""

import gzip
import logging
import os
import pathlib

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
