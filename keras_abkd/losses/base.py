"""`DivergenceLoss`: the `keras.losses.Loss` base of the divergences here."""

import keras
from keras import ops

from keras_abkd.losses import validation
from keras_abkd.losses.inputs import prepare_logits


class DivergenceLoss(keras.losses.Loss):
    """Base of the divergence losses: teacher `y_true`, student `y_pred`.

    A subclass sets `fn` to its functional op and lists the op's own
    arguments (such as `alpha` or `skew`) in `_divergence_arguments`. The
    base stores the arguments every divergence shares, passes them on in
    `call` and writes all of them to `get_config`.

    Args:
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = None
    _divergence_arguments = ()

    def __init__(
        self,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = validation.check_temperature(temperature)
        self.from_logits = bool(from_logits)
        self.axis = int(axis)

    def call(self, y_true, y_pred):
        arguments = {key: getattr(self, key) for key in self._divergence_arguments}
        return type(self).fn(
            y_true,
            y_pred,
            temperature=self.temperature,
            from_logits=self.from_logits,
            axis=self.axis,
            **arguments,
        )

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._divergence_arguments})
        config.update(
            {
                "temperature": self.temperature,
                "from_logits": self.from_logits,
                "axis": self.axis,
            }
        )
        return config


def check_fraction(name, value, allow_zero, hint):
    """Return `value` as a float in `(0, 1)` (or `[0, 1)`), else raise.

    Args:
        name: Argument name used in the message.
        value: The value to check.
        allow_zero: Whether 0 is accepted.
        hint: Sentence appended to the message, saying what to pass.

    Raises:
        ValueError: if `value` is not a finite number in the interval.
    """
    value = validation.check_finite_number(name, value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {name}={value}. {hint}")
    return value


def normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis):
    """Return the tempered teacher and student log-probabilities `[..., classes]`.

    Validates the temperature, then applies `prepare_logits` and
    `log_softmax`, so the math runs in float32 for bf16 and fp16 inputs.
    """
    temperature = validation.check_temperature(temperature)
    teacher, student = prepare_logits(y_true, y_pred, temperature, from_logits, axis)
    return ops.log_softmax(teacher, axis=-1), ops.log_softmax(student, axis=-1)
