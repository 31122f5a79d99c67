"""Train a teacher/student pair on one device and under `MirroredStrategy`.

Run as `KERAS_BACKEND=tensorflow python -m tests.mirrored_run OUTPUT.npz`.
TensorFlow splits its one CPU into 2 logical devices only before it starts,
so `tests/distribution_test.py` runs this script in a subprocess. The script
saves the per-batch losses and the final weights of each run, with and
without sample weights.
"""

import contextlib
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests.distribution_run import BatchLosses  # noqa: E402
from tests.distribution_run import build_dense_distiller  # noqa: E402


def dense_model(units, role):
    inputs = keras.Input((6,))
    # The student's L2 penalty checks that regularizers count once per step.
    regularizer = keras.regularizers.L2(0.01) if role == "student" else None
    hidden = keras.layers.Dense(
        units, activation="tanh", kernel_regularizer=regularizer, name=f"{role}_hidden"
    )(inputs)
    logits = keras.layers.Dense(16, name=f"{role}_logits")(hidden)
    return keras.Model(inputs, logits, name=role)


def train(strategy, sample_weight, arrays, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 16, size=(32,)).astype("int32")

    scope = contextlib.nullcontext() if strategy is None else strategy.scope()
    with scope:
        distiller = build_dense_distiller(dense_model)
    teacher, student = distiller.teacher, distiller.student
    arrays.update({f"{name}/teacher_initial_{i}": w for i, w in enumerate(teacher.get_weights())})

    recorder = BatchLosses()
    distiller.fit(
        x, y, sample_weight=sample_weight, batch_size=8, epochs=1,
        shuffle=False, verbose=0, callbacks=[recorder],
    )
    arrays[f"{name}/losses"] = np.array(recorder.losses, dtype="float64")
    arrays.update({f"{name}/student_{i}": w for i, w in enumerate(student.get_weights())})
    arrays.update({f"{name}/teacher_{i}": w for i, w in enumerate(teacher.get_weights())})


def main(output_path):
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    weights = np.random.default_rng(1).uniform(0.1, 1.0, size=(32,)).astype("float32")
    arrays = {}
    for case, sample_weight in (("unweighted", None), ("weighted", weights)):
        train(None, sample_weight, arrays, f"{case}/single")
        train(tf.distribute.MirroredStrategy(devices), sample_weight, arrays, f"{case}/mirrored")
    np.savez(output_path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
