"""The total variation distance between teacher and student."""

import keras
from keras import ops

from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses.base import normalised_log_probabilities


@keras.saving.register_keras_serializable(package="keras_abkd")
def total_variation(y_true, y_pred, temperature=1.0, from_logits=True, axis=-1):
    """Compute the total variation distance of teacher p and student q.

    Formula: `TV(p, q) = 0.5 * sum(|p - q|)` over classes, in `[0, 1]`. The
    gradient uses the subgradient `sign(q - p)`, which is 0 on a class where
    the two probabilities are equal.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one distance per
        position.
    """
    log_p, log_q = normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis)

    difference = ops.exp(log_q) - ops.exp(log_p)
    # sign() is constant almost everywhere, so stopping its gradient changes
    # nothing but makes the subgradient at a tie 0 on every backend.
    sign = ops.stop_gradient(ops.sign(difference))
    return 0.5 * ops.sum(sign * difference, axis=-1)


@keras.saving.register_keras_serializable(package="keras_abkd")
class TotalVariation(DivergenceLoss):
    """Total variation distance between teacher and student.

    See `total_variation`.

    Args:
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"total_variation"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = total_variation

    def __init__(
        self,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="total_variation",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
