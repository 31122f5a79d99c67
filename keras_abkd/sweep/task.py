"""`SweepTask`: what a sweep needs from a task (data, teacher, one student)."""

# Directions of the metrics a task may report: the report ranks cells by
# `max` metrics from high to low and by `min` metrics from low to high.
MAXIMIZE = "max"
MINIMIZE = "min"


class SweepTask:
    """Base class of a task that `keras_abkd.sweep.run_sweep` can sweep.

    A task owns its data (with train, validation and test splits), its
    teacher and the student it trains. The runner calls `prepare` once,
    before the first student, then `train_student` once per
    `(alpha, beta, seed)`. `prepare` is where the teacher is loaded or
    trained and where its logits are computed, so a sweep runs the teacher
    only once. `keras_abkd.sweep.ClassificationTask` implements all of it for
    image or feature classifiers.

    Subclasses set `name` and `metrics` and implement `config`, `prepare`
    and `train_student`.

    Attributes:
        name: Name the task is registered under.
        metrics: Dict from each metric name `train_student` returns to
            `MAXIMIZE` or `MINIMIZE`. Names of metrics measured on the
            validation split start with `val_`, those on the test split with
            `test_`. The best (alpha, beta) is chosen on a `val_` metric.

    Example:

    ```python
    @keras_abkd.sweep.register_task("my_task")
    class MyTask(keras_abkd.sweep.SweepTask):
        metrics = {"val_accuracy": "max", "test_accuracy": "max"}

        def config(self):
            return {"student_epochs": 3}

        def prepare(self):
            ...  # load the data and the teacher, compute teacher logits

        def train_student(self, alpha, beta, seed):
            ...  # train one student, return {"val_accuracy": ..., ...}
    ```
    """

    name = None
    metrics = {}

    def config(self):
        """Return the settings that change a run's results, as a JSON-able dict.

        The results file stores them, and a sweep raises an error rather
        than resume a file written with different settings. Leave out
        settings that only change the output, such as verbosity.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement config().")

    def prepare(self):
        """Load the data and the teacher, and compute what every run shares.

        Returns:
            A dict of facts about the prepared task to print, such as split
            sizes and the teacher's accuracy. May be empty.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement prepare().")

    def train_student(self, alpha, beta, seed):
        """Train one student and return its metrics.

        Args:
            alpha: alpha of the alpha-beta divergence, or None for a student
                trained on the labels alone.
            beta: beta of the alpha-beta divergence, or None with
                `alpha=None`.
            seed: Integer seed of the student's initialisation and data
                order.

        Returns:
            A dict from each name in `metrics` to a float.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement train_student()."
        )
