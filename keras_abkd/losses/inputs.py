"""Input preparation shared by every divergence: dtypes, class axis, temperature."""

import math

import keras
from keras import ops

from keras_abkd.losses import validation


def _is_float(tensor):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(tensor.dtype))


def logits_with_class_axis_last(y_true, y_pred, axis):
    """Convert to float tensors with the class axis last, without casting floats."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    validation.check_matching_shapes(y_true, y_pred, axis)

    compute_dtype = validation.compute_dtype(y_true, y_pred)
    if not _is_float(y_true) or not _is_float(y_pred):
        y_true = ops.cast(y_true, compute_dtype)
        y_pred = ops.cast(y_pred, compute_dtype)
    if axis not in (-1, len(y_pred.shape) - 1):
        y_true = ops.moveaxis(y_true, axis, -1)
        y_pred = ops.moveaxis(y_pred, axis, -1)
    return y_true, y_pred


def _log_probabilities_as_logits(probabilities):
    """Take the log of probabilities, mapping 0 to -inf with a zero gradient."""
    positive = ops.greater(probabilities, 0.0)
    safe = ops.where(positive, probabilities, ops.ones_like(probabilities))
    neg_inf = ops.full_like(probabilities, -math.inf)
    return ops.where(positive, ops.log(safe), neg_inf)


def prepare_logits(y_true, y_pred, temperature, from_logits, axis):
    """Cast, move `axis` last and divide by the temperature.

    The result is a pair of float32 (or float64) tensors `[..., classes]`
    whose softmax is the tempered teacher and student distribution.
    """
    y_true, y_pred = logits_with_class_axis_last(y_true, y_pred, axis)
    dtype = validation.compute_dtype(y_true, y_pred)
    y_true = ops.cast(y_true, dtype)
    y_pred = ops.cast(y_pred, dtype)

    if not from_logits:
        y_true = _log_probabilities_as_logits(y_true)
        y_pred = _log_probabilities_as_logits(y_pred)
    if temperature != 1.0:
        y_true = y_true / temperature
        y_pred = y_pred / temperature
    return y_true, y_pred
