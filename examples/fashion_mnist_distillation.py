"""Distil a CNN teacher into a small perceptron on Fashion-MNIST with ABKD.

Run with `KERAS_BACKEND=jax python examples/fashion_mnist_distillation.py`.
The data comes from `keras.datasets` (offline: `apt-get install
dataset-fashion-mnist` and link /usr/share/datasets/fashion-mnist to
~/.keras/datasets/fashion-mnist).
"""

import keras
import numpy as np

import keras_abkd

(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train = (x_train.astype("float32") / 255.0)[..., None]
x_test = (x_test.astype("float32") / 255.0)[..., None]
keras.utils.set_random_seed(0)

# The teacher: a small CNN trained on the labels.
teacher = keras.Sequential(
    [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ],
    name="teacher",
)
teacher.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
teacher.fit(x_train, y_train, epochs=3, batch_size=128)

# The student: 33 times fewer parameters.
student = keras.Sequential(
    [
        keras.Input((28, 28, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10),
    ],
    name="student",
)

# Distil with the alpha-beta divergence, mixed with the label loss.
distiller = keras_abkd.Distiller(
    teacher=teacher,
    student=student,
    distillation_loss=keras_abkd.ABDivergence(alpha=1.0, beta=0.5, temperature=2.0),
    student_loss_weight=0.5,
)
distiller.compile(
    optimizer=keras.optimizers.Adam(3e-3),
    loss="sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
distiller.fit(x_train, y_train, epochs=5, batch_size=128)
results = distiller.evaluate(x_test, y_test, return_dict=True, verbose=0)

teacher_predictions = np.argmax(teacher.predict(x_test, verbose=0), axis=-1)
student_predictions = np.argmax(student.predict(x_test, verbose=0), axis=-1)
print(f"teacher test accuracy: {np.mean(teacher_predictions == y_test):.4f}")
print(f"student test accuracy: {results['accuracy']:.4f}")
print(f"agreement with teacher: {np.mean(student_predictions == teacher_predictions):.4f}")

distiller.student.save("fashion_mnist_student.keras")
