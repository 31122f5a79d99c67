"""`ClassificationTask`: a sweep task for classifiers distilled on stored logits."""

import math
import numbers

import keras
import numpy as np

from keras_abkd.losses import ABDivergence
from keras_abkd.sweep.objective import StoredTeacherLoss
from keras_abkd.sweep.objective import pack_targets
from keras_abkd.sweep.task import MAXIMIZE
from keras_abkd.sweep.task import MINIMIZE
from keras_abkd.sweep.task import SweepTask


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}.")
    return int(value)


def _check_positive_float(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {name}={value!r}.")
    value = float(value)
    smallest_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and smallest_ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value}.")
    return value


class ClassificationTask(SweepTask):
    """A sweep task that distils a classifier teacher into a student.

    `prepare` loads the splits and the teacher and runs the teacher once on
    every split. Each student then trains on the stored teacher logits with
    `StoredTeacherLoss`: the alpha-beta divergence at `temperature` (weight
    1) plus `student_loss_weight` times the crossentropy with the labels,
    which is the objective of `keras_abkd.Distiller` with the same weights.
    A labels-only student trains on the crossentropy alone (weight 1). Every
    student uses Adam and is evaluated on the validation and test splits.

    Subclasses implement `load_splits`, `load_teacher` and `build_student`,
    and add their own settings to `config`.

    Reported metrics, in percent: `val_accuracy`, `test_accuracy`, and
    `val_agreement`, `test_agreement` (the share of examples where the
    student's top class is the teacher's), and `train_loss`, the training
    loss of the last epoch.

    Args:
        student_epochs: Epochs of each student. Defaults to 5.
        batch_size: Batch size of the students. Defaults to 128.
        temperature: Distillation temperature. Defaults to 2.0.
        student_loss_weight: Weight of the label crossentropy next to the
            divergence. Defaults to 0.5.
        learning_rate: Adam learning rate of the students. Defaults to 3e-3.
        verbose: Keras `verbose` of `fit` (0 silent, 1 progress bars).
            Defaults to 0.
    """

    metrics = {
        "val_accuracy": MAXIMIZE,
        "test_accuracy": MAXIMIZE,
        "val_agreement": MAXIMIZE,
        "test_agreement": MAXIMIZE,
        "train_loss": MINIMIZE,
    }

    def __init__(
        self,
        student_epochs=5,
        batch_size=128,
        temperature=2.0,
        student_loss_weight=0.5,
        learning_rate=3e-3,
        verbose=0,
    ):
        self.student_epochs = _check_positive_int("student_epochs", student_epochs)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.temperature = _check_positive_float("temperature", temperature)
        self.student_loss_weight = _check_positive_float(
            "student_loss_weight", student_loss_weight, allow_zero=True
        )
        self.learning_rate = _check_positive_float("learning_rate", learning_rate)
        self.verbose = int(verbose)
        self.splits = None
        self.num_classes = None
        self.teacher_logits = None
        self.teacher_predictions = None

    def config(self):
        return {
            "student_epochs": self.student_epochs,
            "batch_size": self.batch_size,
            "temperature": self.temperature,
            "student_loss_weight": self.student_loss_weight,
            "learning_rate": self.learning_rate,
        }

    def load_splits(self):
        """Return the task's `keras_abkd.sweep.Splits`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement load_splits()."
        )

    def load_teacher(self, splits):
        """Return the trained teacher (a `keras.Model` returning logits).

        Train it on `splits.train` only, so that validation and test
        examples stay unseen, and cache it on disk so that a sweep trains it
        once.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement load_teacher()."
        )

    def build_student(self, input_shape, num_classes):
        """Return a new, untrained student `keras.Model` returning logits."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_student()."
        )

    def prepare(self):
        splits = self.load_splits()
        num_classes = int(splits.train[1].max()) + 1
        teacher = self.load_teacher(splits)

        self.splits = splits
        self.num_classes = num_classes
        self.teacher_logits = {}
        self.teacher_predictions = {}
        info = {"teacher_parameters": int(teacher.count_params())}
        for name, (x, y) in splits.items():
            logits = teacher.predict(x, batch_size=self.batch_size, verbose=0)
            predictions = np.argmax(logits, axis=-1)
            self.teacher_logits[name] = np.asarray(logits, dtype="float32")
            self.teacher_predictions[name] = predictions
            info[f"{name}_examples"] = int(len(x))
            info[f"teacher_{name}_accuracy"] = _percent(predictions == y)
        return info

    def distillation_loss(self, alpha, beta):
        """Return the divergence of a run: `ABDivergence` at the task's temperature."""
        return ABDivergence(alpha, beta, temperature=self.temperature)

    def train_student(self, alpha, beta, seed):
        if self.splits is None:
            raise RuntimeError("Call prepare() before train_student().")

        keras.utils.set_random_seed(seed)
        x_train, y_train = self.splits.train
        student = self.build_student(x_train.shape[1:], self.num_classes)
        optimizer = keras.optimizers.Adam(self.learning_rate)

        if alpha is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            targets = y_train
        else:
            loss = StoredTeacherLoss(
                self.distillation_loss(alpha, beta),
                student_loss_weight=self.student_loss_weight,
            )
            targets = pack_targets(y_train, self.teacher_logits["train"])
        student.compile(optimizer=optimizer, loss=loss)
        history = student.fit(
            x_train,
            targets,
            epochs=self.student_epochs,
            batch_size=self.batch_size,
            verbose=self.verbose,
        )
        metrics = self.evaluate(student)
        # A NaN here flags a diverged student, whose accuracy alone can look
        # like a poor but valid run.
        metrics["train_loss"] = float(history.history["loss"][-1])
        return metrics

    def evaluate(self, student):
        """Return the student's accuracy and agreement with the teacher, in percent."""
        x_validation, y_validation = self.splits.validation
        x_test, y_test = self.splits.test
        # One predict call for both splits, so the predict function is
        # traced once per student rather than once per split.
        logits = student.predict(
            np.concatenate([x_validation, x_test]),
            batch_size=self.batch_size,
            verbose=0,
        )
        predictions = np.argmax(logits, axis=-1)
        by_split = {
            "val": (predictions[: len(y_validation)], y_validation, "validation"),
            "test": (predictions[len(y_validation) :], y_test, "test"),
        }

        metrics = {}
        for prefix, (split_predictions, labels, split) in by_split.items():
            metrics[f"{prefix}_accuracy"] = _percent(split_predictions == labels)
            metrics[f"{prefix}_agreement"] = _percent(
                split_predictions == self.teacher_predictions[split]
            )
        return metrics


def _percent(matches):
    return float(100.0 * np.mean(matches))
