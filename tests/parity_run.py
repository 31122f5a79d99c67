"""Train a fixed teacher/student pair for a few steps on the active backend.

Run as `KERAS_BACKEND=... python -m tests.parity_run OUTPUT.npz`. The models
start from weights drawn with numpy, so every backend starts from the same
point. The script saves the per-batch losses and the final student weights.
"""

import sys

import keras
import numpy as np

from keras_abkd import ABDivergence
from keras_abkd import Distiller


def build(units, name):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(units, activation="tanh")(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(4)(x)
    return keras.Model(inputs, outputs, name=name)


def set_numpy_weights(model, seed):
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim == 2:
            weights.append(rng.normal(scale=0.5, size=w.shape).astype("float32"))
        else:
            weights.append(w)
    model.set_weights(weights)


class BatchLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append([logs["loss"], logs["distillation_loss"], logs["student_loss"]])


def main(output_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 4, size=(48,)).astype("int32")
    weights = rng.uniform(0.0, 1.0, size=(48,)).astype("float32")

    teacher = build(16, "teacher")
    student = build(5, "student")
    set_numpy_weights(teacher, seed=1)
    set_numpy_weights(student, seed=2)

    distiller = Distiller(
        teacher,
        student,
        distillation_loss=ABDivergence(alpha=0.3, beta=0.6, temperature=2.0),
        student_loss_weight=0.5,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    recorder = BatchLosses()
    distiller.fit(
        x, y, sample_weight=weights, batch_size=12, epochs=2,
        shuffle=False, verbose=0, callbacks=[recorder],
    )
    np.savez(
        output_path,
        losses=np.array(recorder.losses, dtype="float64"),
        **{f"student_{i}": w for i, w in enumerate(student.get_weights())},
    )


if __name__ == "__main__":
    main(sys.argv[1])
