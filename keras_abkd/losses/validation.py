"""Argument checks shared by the divergences."""

import math
import numbers

from keras import backend


def check_finite_number(name, value):
    """Return `value` as a Python float, or raise if it is not finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a finite number, got {name}={value!r}. "
                f"Pass a Python float such as {name}=0.5."
            ) from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"{name} must be a finite number, got {name}={value}. "
            "Pass a finite float; the forward and reverse KL divergences are "
            "(alpha, beta) = (1, 0) and (0, 1)."
        )
    return value


def check_alpha_beta(alpha, beta):
    """Return `(alpha, beta)` as Python floats, or raise `ValueError`."""
    return check_finite_number("alpha", alpha), check_finite_number("beta", beta)


def check_temperature(temperature):
    """Return the temperature as a Python float, or raise `ValueError`."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(
            f"temperature must be a finite number > 0, got "
            f"temperature={temperature!r}. Use 1.0 for no softening."
        )
    return value


def check_matching_shapes(y_true, y_pred, axis):
    """Raise `ValueError` unless teacher and student agree along `axis`."""
    rank = len(y_pred.shape)
    if len(y_true.shape) != rank:
        raise ValueError(
            "Teacher and student outputs must have the same rank, got "
            f"y_true.shape={tuple(y_true.shape)} and "
            f"y_pred.shape={tuple(y_pred.shape)}."
        )
    if rank == 0 or not -rank <= axis < rank:
        raise ValueError(
            f"axis={axis} is out of range for inputs of shape "
            f"{tuple(y_pred.shape)}. Pass the index of the class axis."
        )
    true_classes = y_true.shape[axis]
    pred_classes = y_pred.shape[axis]
    if (
        true_classes is not None
        and pred_classes is not None
        and true_classes != pred_classes
    ):
        raise ValueError(
            "Teacher and student must have the same number of classes along "
            f"axis {axis}, got {true_classes} (y_true, shape "
            f"{tuple(y_true.shape)}) and {pred_classes} (y_pred, shape "
            f"{tuple(y_pred.shape)}). Slice both logits to a shared "
            "vocabulary before the loss."
        )


def compute_dtype(*tensors):
    """Return float64 if any input is float64, else float32.

    bfloat16 and float16 inputs are computed in float32.
    """
    for tensor in tensors:
        if backend.standardize_dtype(tensor.dtype) == "float64":
            return "float64"
    return "float32"
