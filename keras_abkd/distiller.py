"""`Distiller`: a Keras model that trains a student to match a frozen teacher."""

import logging
import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_abkd import replicas
from keras_abkd.losses import registry
from keras_abkd.losses.alpha_beta import ABDivergence

# Keys of `y` for a distiller without a teacher model, see `split_targets`.
TEACHER_TARGETS = "teacher_targets"
LABELS = "labels"

# Keras loss names that need `from_logits=True` when the student outputs
# logits, which is what a distillation student does.
_LOGIT_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
}


def _check_weight(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number >= 0, got {name}={value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"{name} must be a finite number >= 0, got {name}={value}. "
            "Use 0.0 to switch that term off."
        )
    return value


logger = logging.getLogger(__name__)


def _check_model(role, model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{role} must be a keras.Model, got {type(model).__name__}. Wrap "
            "a layer in a model with keras.Input, or load a saved model with "
            "keras.saving.load_model."
        )
    if not model.built:
        raise ValueError(
            f"The {role} model {model.name!r} is not built, so its weights do "
            "not exist yet. Start it with keras.Input(shape), or call "
            f"{role}.build(input_shape) before creating the Distiller."
        )


def _output_width(model):
    """Return the static size of the last output axis, or None."""
    try:
        shape = model.outputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return shape[-1] if len(shape) else None


def _check_sample_weight(sample_weight):
    """Reject negative or non-finite array weights before training starts."""
    if sample_weight is None or not isinstance(sample_weight, (np.ndarray, list, tuple)):
        return
    weights = np.asarray(sample_weight, dtype="float64")
    if not np.all(np.isfinite(weights)):
        raise ValueError(
            "sample_weight contains NaN or infinite values. Use finite "
            "weights >= 0, with 0 for positions to ignore."
        )
    if np.any(weights < 0):
        raise ValueError(
            f"sample_weight must be >= 0, got a minimum of {weights.min()}. "
            "Use 0 for positions to ignore."
        )


def split_targets(y, sample_weight):
    """Split `y` of a distiller without a teacher into targets and labels.

    `y` is the teacher targets alone, or a dict with the key
    `"teacher_targets"` and optionally `"labels"`. A dict `sample_weight`
    (Keras builds one per target when `y` is a dict) contains a weight for each.

    Returns:
        `(teacher_targets, labels, distillation_weight, label_weight)`.
    """
    if isinstance(y, dict):
        unknown = set(y) - {TEACHER_TARGETS, LABELS}
        if unknown or TEACHER_TARGETS not in y:
            raise ValueError(
                "A distiller without a teacher model reads the teacher's "
                f'outputs from y: pass y={{"{TEACHER_TARGETS}": ..., '
                f'"{LABELS}": ...}} (labels optional), got keys {sorted(y)}.'
            )
        teacher_targets, labels = y[TEACHER_TARGETS], y.get(LABELS)
    else:
        teacher_targets, labels = y, None
    if teacher_targets is None:
        raise ValueError(
            "A distiller without a teacher model needs the teacher's outputs "
            "as y, for example the batches of keras_abkd.cache.CachedTargets."
        )
    if isinstance(sample_weight, dict):
        return (
            teacher_targets,
            labels,
            sample_weight.get(TEACHER_TARGETS),
            sample_weight.get(LABELS),
        )
    return teacher_targets, labels, sample_weight, sample_weight


def _resolve_student_loss(loss):
    if loss is None:
        return None
    if isinstance(loss, str) and loss in _LOGIT_LOSSES:
        return _LOGIT_LOSSES[loss](from_logits=True)
    return keras.losses.get(loss)


def _serialize_uncompiled(model):
    """Serialize a model without its own compile settings.

    The distiller compiles itself; the nested models' compile settings are
    never used. Dropping them also avoids a misleading Keras warning on load
    for models whose `compile` is overridden, such as KerasHub tasks.
    """
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def weighted_mean(values, sample_weight=None):
    """Average `values` over every position, weighted by `sample_weight`.

    `sample_weight` may have fewer trailing axes than `values` (a weight per
    example for per-token values) and is broadcast over the missing ones. The
    result is `sum(w * values) / sum(w)`: with a padding mask as weight, the
    mean over the valid positions of the whole batch. When the weights sum to
    zero the result is 0 and its gradient is zero and finite.

    Under a `tf.distribute` strategy with several replicas, the denominator
    is summed over the replicas, so each replica returns its share of the
    global mean and the shares add up to it.

    Args:
        values: Float tensor, one value per position.
        sample_weight: Optional non-negative tensor broadcastable to `values`
            after trailing axes are added.

    Returns:
        A scalar float tensor.
    """
    replicas_in_sync = replicas.num_replicas_in_sync()
    if sample_weight is None and replicas_in_sync == 1:
        return ops.mean(values)
    if sample_weight is None:
        count = ops.cast(ops.size(values), values.dtype)
        return ops.sum(values) / replicas.sum_over_replicas(count)

    weight = ops.cast(sample_weight, values.dtype)
    while len(weight.shape) < len(values.shape):
        weight = ops.expand_dims(weight, axis=-1)
    weight = ops.broadcast_to(weight, ops.shape(values))

    # Positions with zero weight may hold non-finite values (padding logits),
    # so they are removed before the product rather than multiplied by 0.
    valid = ops.greater(weight, 0.0)
    values = ops.where(valid, values, ops.zeros_like(values))
    total_weight = replicas.sum_over_replicas(ops.sum(weight))
    has_weight = ops.greater(total_weight, 0.0)
    safe_total = ops.where(has_weight, total_weight, ops.ones_like(total_weight))
    mean = ops.sum(weight * values) / safe_total
    return ops.where(has_weight, mean, ops.zeros_like(mean))


@keras.saving.register_keras_serializable(package="keras_abkd")
class Distiller(keras.Model):
    """Train a student to match a frozen teacher, with `compile` and `fit`.

    Each training step runs the teacher on the batch (always with
    `training=False`, so dropout is off and BatchNorm statistics stay fixed),
    runs the student, and minimises

    ```
    loss = distillation_loss_weight * mean_w(D(teacher_logits, student_logits))
         + student_loss_weight * student_loss(y, student_logits)
         + the student's own losses (regularizers, `add_loss`)
    ```

    where `mean_w` is the mean over all positions of the batch weighted by
    `sample_weight` (for example a padding mask of shape `(batch, length)` for
    logits of shape `(batch, length, vocabulary)`). The teacher gets no
    gradient and is never in `trainable_weights`. Calling the distiller calls
    the student, so `predict` returns student logits.

    Keras masks (for example from `Embedding(mask_zero=True)`) are not read:
    pass the padding mask as `sample_weight`. The supervised loss keeps the
    reduction of the loss given to `compile`: Keras' default divides the
    weighted sum by the number of positions, not by the sum of the weights.
    `fit` and `evaluate` reject array weights that are negative or not
    finite.

    Inputs are passed unchanged to both models, so dict inputs work when
    teacher and student take the same keys. Teacher logits are cast to
    float32, so a bfloat16 teacher can teach a float32 student.

    With `teacher=None` the teacher's outputs come with the data instead of
    from a model: `y` is the teacher targets, or
    `{"teacher_targets": ..., "labels": ...}` to add labels, for example
    the batches of `keras_abkd.cache.CachedTargets`, which stream a cache
    written once by `keras_abkd.cache.cache_teacher`. The targets go to the
    distillation loss as they are: dense teacher logits, or packed top-k
    targets with a `keras_abkd.TopKDivergence` loss.

    Args:
        teacher: A built `keras.Model` that returns logits, or None to read
            the teacher's outputs from `y`.
        student: A built `keras.Model` that returns logits of the same shape.
        distillation_loss: A `keras.losses.Loss` (or a function) that takes
            teacher logits as `y_true` and student logits as `y_pred` and
            returns one value per position, or a registered name such as
            `"forward_kl"`. Defaults to `ABDivergence(alpha=0.2, beta=0.7)`,
            the setting of the ABKD paper for GPT-2.
        distillation_loss_weight: Weight of the distillation term. Defaults
            to 1.0.
        student_loss_weight: Weight of the supervised loss given to
            `compile(loss=...)`. Defaults to 0.0, which still computes and
            reports that loss when labels are given.
        name: Model name. Defaults to `"distiller"`.

    Example:

    ```python
    distiller = keras_abkd.Distiller(
        teacher=teacher,
        student=student,
        distillation_loss=keras_abkd.ABDivergence(alpha=0.2, beta=0.7),
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    distiller.fit(images, labels, epochs=3)
    distiller.student.save("student.keras")
    ```
    """

    # Whether the constructor requires equal static output widths. Subclasses
    # that slice the logits before the loss (see `keras_abkd.hub`) turn it off.
    check_output_widths = True

    def __init__(
        self,
        teacher,
        student,
        distillation_loss=None,
        distillation_loss_weight=1.0,
        student_loss_weight=0.0,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if teacher is not None:
            _check_model("teacher", teacher)
        _check_model("student", student)
        if teacher is student:
            raise ValueError(
                "teacher and student are the same object. Pass a separate "
                "student model; the teacher is frozen during distillation."
            )
        teacher_width = None if teacher is None else _output_width(teacher)
        student_width = _output_width(student)
        if (
            self.check_output_widths
            and teacher_width
            and student_width
            and teacher_width != student_width
        ):
            raise ValueError(
                f"The teacher outputs {teacher_width} logits per position and "
                f"the student {student_width}. Distillation compares "
                "distributions over the same classes: give both models the "
                "same output width."
            )

        self.teacher = teacher
        self.student = student
        if teacher is not None:
            self.teacher.trainable = False

        if distillation_loss is None:
            distillation_loss = ABDivergence(alpha=0.2, beta=0.7)
        self.distillation_loss = registry.get(distillation_loss)
        self.distillation_loss_weight = _check_weight(
            "distillation_loss_weight", distillation_loss_weight
        )
        self.student_loss_weight = _check_weight(
            "student_loss_weight", student_loss_weight
        )

        self._student_loss = None
        self._student_loss_identifier = None
        # Teacher logits computed outside the gradient tape (TensorFlow only).
        self._precomputed_teacher_logits = None
        # Whether the compiled train and test functions receive the sample
        # weights in the label slot, see `_route_sample_weight`.
        self._weights_as_labels = {"train_function": False, "test_function": False}
        self._labels_are_weights = False

        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.built = True

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configure the optimizer, the student's supervised loss and metrics.

        Args:
            optimizer: Optimizer for the student, as in `keras.Model.compile`.
            loss: Optional supervised loss between labels and student logits.
                The names `"sparse_categorical_crossentropy"`,
                `"categorical_crossentropy"` and `"binary_crossentropy"`
                resolve with `from_logits=True`.
            metrics: Metrics between labels and student logits.
            **kwargs: Passed to `keras.Model.compile`.
        """
        self._student_loss_identifier = loss
        self._student_loss = _resolve_student_loss(loss)
        automatic = getattr(self, "_student_loss_is_automatic", False)
        if self._student_loss is not None and self.student_loss_weight == 0.0 and not automatic:
            logger.warning(
                "compile() got loss=%r but student_loss_weight=0.0, so that "
                "loss is only logged as student_loss and does not train the "
                "student. Pass student_loss_weight > 0 to the distiller to "
                "mix it in.",
                loss,
            )
        if self._student_loss is None and self.student_loss_weight > 0.0:
            logger.warning(
                "student_loss_weight=%s but compile() got no loss, so the "
                "student is trained on the distillation loss alone. Pass "
                "loss='sparse_categorical_crossentropy' (or another loss) to "
                "use the labels.",
                self.student_loss_weight,
            )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self._student_loss is not None:
            config["loss"] = keras.saving.serialize_keras_object(self._student_loss)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _route_sample_weight(self, y, sample_weight, function_name):
        """Move `sample_weight` into the label slot when there are no labels.

        Keras data adapters drop `sample_weight` when `y` is None, but a
        distiller needs no labels and often needs a mask. The weights then
        travel as `y`, and `compute_loss` moves them back. The compiled
        function is rebuilt when this routing changes between calls.
        """
        _check_sample_weight(sample_weight)
        as_labels = y is None and sample_weight is not None
        if as_labels != self._weights_as_labels[function_name]:
            self._weights_as_labels[function_name] = as_labels
            setattr(self, function_name, None)
        if as_labels:
            return sample_weight, None
        return y, sample_weight

    def fit(self, x=None, y=None, sample_weight=None, **kwargs):
        y, sample_weight = self._route_sample_weight(y, sample_weight, "train_function")
        return super().fit(x, y, sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, sample_weight=None, **kwargs):
        y, sample_weight = self._route_sample_weight(y, sample_weight, "test_function")
        return super().evaluate(x, y, sample_weight=sample_weight, **kwargs)

    def teacher_logits(self, x):
        """Run the frozen teacher on `x` and return float32 logits."""
        if self.teacher is None:
            raise ValueError(
                "This distiller has no teacher model, so its teacher targets "
                "come with the data as y."
            )
        logits = self.teacher(x, training=False)
        return ops.stop_gradient(ops.cast(logits, "float32"))

    def train_step(self, *args, **kwargs):
        if keras.backend.backend() != "tensorflow" or self.teacher is None:
            return super().train_step(*args, **kwargs)

        # TensorFlow's GradientTape records every op run under it, the frozen
        # teacher's forward pass included. Running the teacher before the
        # tape opens keeps its activations out of the tape's memory.
        (data,) = args
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self._precomputed_teacher_logits = self.teacher_logits(x)
        try:
            return super().train_step(data)
        finally:
            self._precomputed_teacher_logits = None

    def compute_distillation_loss(self, teacher_logits, student_logits, sample_weight=None):
        """Return the weighted mean divergence over all positions of a batch."""
        student_logits = ops.cast(student_logits, "float32")
        loss_fn = self.distillation_loss
        if isinstance(loss_fn, keras.losses.Loss):
            values = loss_fn.call(teacher_logits, student_logits)
        else:
            values = loss_fn(teacher_logits, student_logits)
        return weighted_mean(values, sample_weight)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        function_name = "train_function" if training else "test_function"
        # Read by `compute_metrics`, which runs next in the same traced step.
        self._labels_are_weights = self._weights_as_labels[function_name]
        if self._labels_are_weights:
            y, sample_weight = None, y
        if y_pred is None:
            y_pred = self(x, training=training)
        label_weight = sample_weight
        if self.teacher is None:
            teacher_logits, y, sample_weight, label_weight = split_targets(
                y, sample_weight
            )
        elif self._precomputed_teacher_logits is not None:
            teacher_logits = self._precomputed_teacher_logits
        else:
            teacher_logits = self.teacher_logits(x)

        distillation_loss = self.compute_distillation_loss(
            teacher_logits, y_pred, sample_weight
        )
        total = self.distillation_loss_weight * distillation_loss

        student_loss = ops.zeros((), dtype="float32")
        if self._student_loss is not None and y is not None:
            student_loss = ops.cast(
                self._student_loss(y, y_pred, sample_weight=label_weight), "float32"
            )
            total = total + self.student_loss_weight * student_loss

        # The student's own losses: regularizers and `add_loss` terms. The
        # teacher is frozen, so none of its weight regularizers appear here.
        # Every replica adds them in full, so each adds its share, as Keras
        # does for `tf.distribute`.
        replicas_in_sync = replicas.num_replicas_in_sync()
        for extra_loss in self.losses:
            extra_loss = ops.cast(ops.sum(extra_loss), "float32")
            total = total + extra_loss / replicas_in_sync

        # Weighted by the batch size, like Keras' own `loss` metric, so that
        # the epoch values do not depend on how the last batch is cut. The
        # loss terms are each replica's share, so the reported value is
        # their sum.
        batch_size = ops.shape(keras.tree.flatten(x)[0])[0]
        self.distillation_loss_tracker.update_state(
            replicas.sum_over_replicas(distillation_loss), sample_weight=batch_size
        )
        self.student_loss_tracker.update_state(
            replicas.sum_over_replicas(student_loss), sample_weight=batch_size
        )
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if getattr(self, "_labels_are_weights", False):
            y, sample_weight = None, y
        if self.teacher is None:
            _, y, _, sample_weight = split_targets(y, sample_weight)
        if y is not None:
            return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        # Without labels the metrics given to `compile` cannot be updated, so
        # they are left out of the logs rather than reported as 0.
        compiled_metrics = getattr(self, "_compile_metrics", None)
        results = {}
        for metric in self.metrics:
            if metric is compiled_metrics:
                continue
            value = metric.result()
            if isinstance(value, dict):
                results.update(value)
            else:
                results[metric.name] = value
        return results

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": (
                    None if self.teacher is None else _serialize_uncompiled(self.teacher)
                ),
                "student": _serialize_uncompiled(self.student),
                "distillation_loss": keras.saving.serialize_keras_object(
                    self.distillation_loss
                ),
                "distillation_loss_weight": self.distillation_loss_weight,
                "student_loss_weight": self.student_loss_weight,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student", "distillation_loss"):
            if config[key] is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
