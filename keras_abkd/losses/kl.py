"""Forward and reverse KL divergences and their skew variants.

All four are computed with the alpha-beta divergence kernel at
`(alpha, beta) = (1, 0)`, whose value is exactly
`sum(p log(p / q) - p + q) = KL(p || q)` for normalised `p` and `q`. The
kernel's closed-form gradient handles classes of zero probability, so these
losses share its guarantees: no NaN for `-inf` logits, and a class where
`p > 0` but `q = 0` contributes `+inf` with a zero gradient.
"""

import math

import keras
from keras import ops

from keras_abkd.losses.alpha_beta import alpha_beta_divergence_from_scaled_logits
from keras_abkd.losses.inputs import prepare_logits
from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses.base import check_fraction
from keras_abkd.losses.base import normalised_log_probabilities
from keras_abkd.losses import validation


def kl_divergence_from_log_probabilities(log_p, log_q):
    """Compute KL(p || q) along the last axis from log-probabilities.

    Args:
        log_p: Float tensor `[..., classes]` of log-probabilities. Logits
            also work, because the kernel normalises its inputs.
        log_q: Float tensor of the same shape and dtype.

    Returns:
        Tensor `[...]`.
    """
    return alpha_beta_divergence_from_scaled_logits(log_p, log_q, 1.0, 0.0)


def log_mixture(log_p, log_q, weight):
    """Compute `log(weight * p + (1 - weight) * q)` in log space.

    A class that is zero in both distributions stays at `-inf` and gets a
    zero gradient.

    Args:
        log_p: Float tensor of log-probabilities.
        log_q: Float tensor of the same shape and dtype.
        weight: Python float in `[0, 1]`, the weight of `p`.

    Returns:
        Tensor of the shape of `log_p`.
    """
    if weight == 0.0:
        return log_q
    if weight == 1.0:
        return log_p

    neg_inf = -math.inf
    both_zero = ops.logical_and(ops.equal(log_p, neg_inf), ops.equal(log_q, neg_inf))
    # Finite placeholders where both sides are -inf, so that the log-sum-exp and its
    # gradient stay finite in the branch that `where` discards.
    safe_p = ops.where(both_zero, ops.zeros_like(log_p), log_p)
    safe_q = ops.where(both_zero, ops.zeros_like(log_q), log_q)
    weighted_p = safe_p + math.log(weight)
    weighted_q = safe_q + math.log1p(-weight)

    # logaddexp with the shift held constant: the shift cancels in the value,
    # so its gradient is exact, also where the two sides tie. (Keras 3.15's
    # ops.logaddexp casts float64 inputs to float32 under JAX.)
    shift = ops.stop_gradient(ops.maximum(weighted_p, weighted_q))
    mixed = shift + ops.log(ops.exp(weighted_p - shift) + ops.exp(weighted_q - shift))
    return ops.where(both_zero, ops.full_like(mixed, neg_inf), mixed)


@keras.saving.register_keras_serializable(package="keras_abkd")
def forward_kl(y_true, y_pred, temperature=1.0, from_logits=True, axis=-1):
    """Compute the forward KL divergence KL(p || q) of teacher p and student q.

    Formula: `KL(p || q) = sum(p * (log p - log q))` over classes, with
    `p = softmax(y_true / T)` and `q = softmax(y_pred / T)` and no `T^2`
    factor. The value is 0 when the student equals the teacher (this is not
    the cross-entropy, which differs by the teacher's entropy). It equals
    `alpha_beta_divergence` at `(alpha, beta) = (1, 0)`.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`),
            shape `[..., classes, ...]`.
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, in float32 (float64 for
        float64 inputs), one divergence per position.

    Example:

    >>> value = forward_kl([[2.0, 1.0, 0.1]], [[1.5, 1.2, 0.3]])
    >>> value.shape
    (1,)
    """
    temperature = validation.check_temperature(temperature)
    teacher, student = prepare_logits(y_true, y_pred, temperature, from_logits, axis)
    return alpha_beta_divergence_from_scaled_logits(teacher, student, 1.0, 0.0)


@keras.saving.register_keras_serializable(package="keras_abkd")
def reverse_kl(y_true, y_pred, temperature=1.0, from_logits=True, axis=-1):
    """Compute the reverse KL divergence KL(q || p) of teacher p and student q.

    Formula: `KL(q || p) = sum(q * (log q - log p))` over classes, with the
    tempered softmax of `forward_kl`. The value is 0 when the student equals
    the teacher, and `+inf` when the student puts mass on a class the teacher
    gives probability 0. It equals `alpha_beta_divergence` at
    `(alpha, beta) = (0, 1)`.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`),
            shape `[..., classes, ...]`.
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    temperature = validation.check_temperature(temperature)
    teacher, student = prepare_logits(y_true, y_pred, temperature, from_logits, axis)
    return alpha_beta_divergence_from_scaled_logits(student, teacher, 1.0, 0.0)


def _check_skew(skew):
    return check_fraction(
        "skew",
        skew,
        allow_zero=True,
        hint="skew=0 is the plain KL divergence and skew=1 makes the loss "
        "identically 0. DistiLLM uses skew=0.1.",
    )


@keras.saving.register_keras_serializable(package="keras_abkd")
def skew_forward_kl(y_true, y_pred, skew=0.1, temperature=1.0, from_logits=True, axis=-1):
    """Compute the skew forward KL divergence KL(p || skew p + (1 - skew) q).

    Mixing a share `skew` of the teacher into the student keeps the second
    argument positive wherever the teacher is, so the value is finite and
    bounded by `log(1 / skew)`. `skew=0` gives `forward_kl`. The gradient
    flows through the mixture, which depends on the student.

    References:
        Ko et al., "DistiLLM: Towards Streamlined Distillation for Large
        Language Models", ICML 2024, arXiv:2402.03898.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        skew: Float in `[0, 1)`, the teacher's share of the mixture.
            Defaults to 0.1.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    skew = _check_skew(skew)
    log_p, log_q = normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis)
    return kl_divergence_from_log_probabilities(log_p, log_mixture(log_p, log_q, skew))


@keras.saving.register_keras_serializable(package="keras_abkd")
def skew_reverse_kl(y_true, y_pred, skew=0.1, temperature=1.0, from_logits=True, axis=-1):
    """Compute the skew reverse KL divergence KL(q || skew q + (1 - skew) p).

    The mirror image of `skew_forward_kl`: a share `skew` of the student is
    mixed into the teacher. `skew=0` gives `reverse_kl`.

    References:
        Ko et al., "DistiLLM: Towards Streamlined Distillation for Large
        Language Models", ICML 2024, arXiv:2402.03898.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        skew: Float in `[0, 1)`, the student's share of the mixture.
            Defaults to 0.1.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    skew = _check_skew(skew)
    log_p, log_q = normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis)
    return kl_divergence_from_log_probabilities(log_q, log_mixture(log_q, log_p, skew))


@keras.saving.register_keras_serializable(package="keras_abkd")
class ForwardKL(DivergenceLoss):
    """Forward KL divergence KL(teacher || student), see `forward_kl`.

    Args:
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"forward_kl"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = forward_kl

    def __init__(
        self,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="forward_kl",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)


@keras.saving.register_keras_serializable(package="keras_abkd")
class ReverseKL(DivergenceLoss):
    """Reverse KL divergence KL(student || teacher), see `reverse_kl`.

    Args:
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"reverse_kl"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = reverse_kl

    def __init__(
        self,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="reverse_kl",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)


@keras.saving.register_keras_serializable(package="keras_abkd")
class SkewForwardKL(DivergenceLoss):
    """Skew forward KL divergence of DistiLLM, see `skew_forward_kl`.

    Args:
        skew: Float in `[0, 1)`, the teacher's share of the mixture.
            Defaults to 0.1.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"skew_forward_kl"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = skew_forward_kl
    _divergence_arguments = ("skew",)

    def __init__(
        self,
        skew=0.1,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="skew_forward_kl",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.skew = _check_skew(skew)


@keras.saving.register_keras_serializable(package="keras_abkd")
class SkewReverseKL(DivergenceLoss):
    """Skew reverse KL divergence of DistiLLM, see `skew_reverse_kl`.

    Args:
        skew: Float in `[0, 1)`, the student's share of the mixture.
            Defaults to 0.1.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"skew_reverse_kl"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = skew_reverse_kl
    _divergence_arguments = ("skew",)

    def __init__(
        self,
        skew=0.1,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="skew_reverse_kl",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.skew = _check_skew(skew)
