"""`Splits`: train, validation and test data, and the validation carve."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train, validation and test data of a classification task.

    Args:
        train: `(x, y)` of the split the teacher and students train on.
        validation: `(x, y)` of the split that chooses (alpha, beta).
        test: `(x, y)` of the split whose numbers are reported.
    """

    train: tuple
    validation: tuple
    test: tuple

    def items(self):
        """Return `(name, (x, y))` for the three splits, train first."""
        return (
            ("train", self.train),
            ("validation", self.validation),
            ("test", self.test),
        )


def carve_validation(x, y, validation_size, seed=0):
    """Split `validation_size` examples off a training set, deterministically.

    The examples are drawn by a permutation from `numpy.random.default_rng
    (seed)`, so the same data, size and seed always give the same split. The
    remaining training examples keep their original order.

    Args:
        x: Training inputs, first axis the examples.
        y: Training labels, same length as `x`.
        validation_size: Number of validation examples, at least 1 and
            fewer than `len(x)`.
        seed: Integer seed of the permutation. Defaults to 0.

    Returns:
        `((x_train, y_train), (x_validation, y_validation))`.

    Raises:
        ValueError: when `validation_size` leaves no training or no
            validation example, or `x` and `y` differ in length.
    """
    if len(x) != len(y):
        raise ValueError(
            f"x and y must have the same length, got {len(x)} and {len(y)}."
        )
    if isinstance(validation_size, bool) or not isinstance(
        validation_size, (int, np.integer)
    ):
        raise ValueError(
            f"validation_size must be an integer, got {validation_size!r}."
        )
    if not 1 <= validation_size < len(x):
        raise ValueError(
            f"validation_size must be between 1 and {len(x) - 1} (the training "
            f"set has {len(x)} examples), got {validation_size}."
        )

    order = np.random.default_rng(seed).permutation(len(x))
    validation = np.sort(order[:validation_size])
    train = np.sort(order[validation_size:])
    return (x[train], y[train]), (x[validation], y[validation])
