"""`keras-abkd demo`: distil a CNN teacher into a small student on real images.

The demo trains (or loads from its cache) a convolutional teacher, then trains
one small student per objective and seed: labels alone, forward KL, reverse KL
and ABKD. It prints test accuracy and agreement with the teacher for each.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time

import numpy as np

from keras_abkd.cli import datasets

logger = logging.getLogger(__name__)

# (alpha, beta) of the ABKD row. In the Fashion-MNIST sweep of
# docs/reproduction.md (16 cells, 3 seeds, best cell chosen on validation),
# (1, 0.5) is within the seed spread of the best cell.
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.5


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    dataset: str = "fashion_mnist"
    seeds: int = 1
    teacher_epochs: int = 4
    student_epochs: int = 5
    batch_size: int = 128
    temperature: float = 2.0
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    student_units: int = 16
    cache_dir: str = ""
    verbose: int = 1


def default_cache_dir():
    root = os.environ.get("KERAS_ABKD_CACHE")
    if root:
        return pathlib.Path(root)
    return pathlib.Path(os.path.expanduser("~")) / ".cache" / "keras_abkd"


def build_teacher(input_shape, num_classes):
    """Build the teacher, a small convolutional network."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="teacher")


def build_student(input_shape, num_classes, units):
    """Build the student, a one-hidden-layer perceptron."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="student")


def _teacher_cache_path(config, input_shape, num_classes):
    import keras

    key = json.dumps(
        {
            "dataset": config.dataset,
            "epochs": config.teacher_epochs,
            "batch_size": config.batch_size,
            "input_shape": list(input_shape),
            "classes": num_classes,
            "backend": keras.backend.backend(),
            "architecture": 1,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return pathlib.Path(config.cache_dir) / f"teacher_{config.dataset}_{digest}.keras"


def load_or_train_teacher(config, x_train, y_train):
    """Return a trained teacher, from the cache when a matching one exists."""
    import keras

    num_classes = int(y_train.max()) + 1
    path = _teacher_cache_path(config, x_train.shape[1:], num_classes)
    if path.is_file():
        logger.info("Loading the cached teacher from %s", path)
        print(f"Using the cached teacher {path}")
        return keras.saving.load_model(path)

    print(f"Training the teacher ({config.teacher_epochs} epochs)")
    keras.utils.set_random_seed(0)
    teacher = build_teacher(x_train.shape[1:], num_classes)
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(
        x_train,
        y_train,
        epochs=config.teacher_epochs,
        batch_size=config.batch_size,
        verbose=config.verbose,
    )

    # Written to a temporary name first, so an interrupted save never leaves
    # a truncated file that a later run would load.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.keras")
    teacher.save(partial)
    os.replace(partial, path)
    print(f"Saved the teacher to {path}")
    return teacher


def objectives(config):
    """Return `(row name, distillation loss or None)` for each trained student."""
    from keras_abkd.losses import ABDivergence

    temperature = config.temperature
    return [
        ("labels only", None),
        ("forward KL (1, 0)", ABDivergence(1.0, 0.0, temperature=temperature)),
        ("reverse KL (0, 1)", ABDivergence(0.0, 1.0, temperature=temperature)),
        (
            f"ABKD ({config.alpha:g}, {config.beta:g})",
            ABDivergence(config.alpha, config.beta, temperature=temperature),
        ),
    ]


def train_student(config, distillation_loss, teacher, x_train, y_train, seed):
    """Train one student and return it."""
    import keras

    from keras_abkd import Distiller

    keras.utils.set_random_seed(seed)
    num_classes = int(y_train.max()) + 1
    student = build_student(x_train.shape[1:], num_classes, config.student_units)
    optimizer = keras.optimizers.Adam(3e-3)
    fit_args = dict(
        epochs=config.student_epochs,
        batch_size=config.batch_size,
        verbose=config.verbose,
    )

    if distillation_loss is None:
        student.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        student.fit(x_train, y_train, **fit_args)
        return student

    distiller = Distiller(
        teacher=teacher,
        student=student,
        distillation_loss=distillation_loss,
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    distiller.fit(x_train, y_train, **fit_args)
    return student


def evaluate(student, teacher_predictions, x_test, y_test, batch_size):
    logits = student.predict(x_test, batch_size=batch_size, verbose=0)
    predictions = np.argmax(logits, axis=-1)
    accuracy = float(np.mean(predictions == y_test))
    agreement = float(np.mean(predictions == teacher_predictions))
    return accuracy, agreement


def format_table(rows, seeds):
    """Format `(name, accuracies, agreements)` rows as a plain-text table."""

    def cell(values):
        values = 100.0 * np.asarray(values)
        if seeds > 1:
            return f"{values.mean():6.2f} ± {values.std(ddof=1):4.2f}"
        return f"{values.mean():6.2f}"

    name_width = max(len("student objective"), *(len(row[0]) for row in rows))
    header = f"{'student objective':<{name_width}}  {'test accuracy %':>15}  {'agreement %':>15}"
    lines = [header, "-" * len(header)]
    for name, accuracies, agreements in rows:
        lines.append(f"{name:<{name_width}}  {cell(accuracies):>15}  {cell(agreements):>15}")
    return "\n".join(lines)


def run(config):
    """Run the whole demo and return the printed table."""
    import keras

    start = time.perf_counter()
    # Built first, so that invalid alpha, beta or temperature fail before training.
    student_objectives = objectives(config)
    (x_train, y_train), (x_test, y_test) = datasets.load(config.dataset)
    print(
        f"{config.dataset}: {len(x_train)} training and {len(x_test)} test images, "
        f"backend {keras.backend.backend()}"
    )

    teacher = load_or_train_teacher(config, x_train, y_train)
    teacher_logits = teacher.predict(x_test, batch_size=config.batch_size, verbose=0)
    teacher_predictions = np.argmax(teacher_logits, axis=-1)
    teacher_accuracy = float(np.mean(teacher_predictions == y_test))
    print(
        f"Teacher: {teacher.count_params():,} parameters, test accuracy "
        f"{100 * teacher_accuracy:.2f}%"
    )

    rows = []
    student_parameters = None
    for name, distillation_loss in student_objectives:
        accuracies, agreements = [], []
        for seed in range(config.seeds):
            print(f"Student: {name}, seed {seed}")
            student = train_student(
                config, distillation_loss, teacher, x_train, y_train, seed
            )
            student_parameters = student.count_params()
            accuracy, agreement = evaluate(
                student, teacher_predictions, x_test, y_test, config.batch_size
            )
            accuracies.append(accuracy)
            agreements.append(agreement)
        rows.append((name, accuracies, agreements))

    table = format_table(rows, config.seeds)
    print()
    print(
        f"Teacher {teacher.count_params():,} parameters ({100 * teacher_accuracy:.2f}% "
        f"test accuracy), students {student_parameters:,} parameters, "
        f"T={config.temperature:g}, {config.seeds} seed(s), "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(table)
    return table


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="Distil a CNN teacher into a small student on Fashion-MNIST.",
        description=__doc__,
    )
    defaults = DemoConfig()
    parser.add_argument(
        "--dataset",
        choices=["fashion_mnist", "digits"],
        default=defaults.dataset,
        help="Dataset: fashion_mnist (60k/10k images) or scikit-learn's digits. "
        f"Defaults to {defaults.dataset}.",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=defaults.seeds,
        help="Students trained per objective; with more than one the table "
        "shows mean ± standard deviation. Defaults to 1.",
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=defaults.teacher_epochs,
        help=f"Epochs of teacher training. Defaults to {defaults.teacher_epochs}.",
    )
    parser.add_argument(
        "--student-epochs", type=int, default=defaults.student_epochs,
        help=f"Epochs of each student. Defaults to {defaults.student_epochs}.",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size,
        help=f"Batch size. Defaults to {defaults.batch_size}.",
    )
    parser.add_argument(
        "--temperature", type=float, default=defaults.temperature,
        help=f"Distillation temperature. Defaults to {defaults.temperature}.",
    )
    parser.add_argument(
        "--alpha", type=float, default=defaults.alpha,
        help=f"alpha of the ABKD row. Defaults to {defaults.alpha}.",
    )
    parser.add_argument(
        "--beta", type=float, default=defaults.beta,
        help=f"beta of the ABKD row. Defaults to {defaults.beta}.",
    )
    parser.add_argument(
        "--student-units", type=int, default=defaults.student_units,
        help="Hidden units of the student perceptron. "
        f"Defaults to {defaults.student_units}.",
    )
    parser.add_argument(
        "--cache-dir", default=None,
        help="Folder of the cached teacher. Defaults to $KERAS_ABKD_CACHE or "
        "~/.cache/keras_abkd.",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="Hide the Keras progress bars."
    )
    parser.set_defaults(func=_main)


def _main(args):
    for name in ("seeds", "teacher_epochs", "student_epochs", "batch_size", "student_units"):
        value = getattr(args, name)
        if value < 1:
            option = "--" + name.replace("_", "-")
            raise SystemExit(f"error: {option} must be at least 1, got {value}.")
    config = DemoConfig(
        dataset=args.dataset,
        seeds=args.seeds,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        batch_size=args.batch_size,
        temperature=args.temperature,
        alpha=args.alpha,
        beta=args.beta,
        student_units=args.student_units,
        cache_dir=str(args.cache_dir or default_cache_dir()),
        verbose=0 if args.quiet else 1,
    )
    try:
        run(config)
    except (datasets.DatasetNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    return 0
