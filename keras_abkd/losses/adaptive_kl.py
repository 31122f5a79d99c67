"""The adaptive KL divergence (AKL): forward and reverse KL weighted by gaps."""

import keras
from keras import ops

from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses.base import check_fraction
from keras_abkd.losses.base import normalised_log_probabilities
from keras_abkd.losses.kl import kl_divergence_from_log_probabilities


def _check_mu(mu):
    return check_fraction(
        "mu",
        mu,
        allow_zero=False,
        hint="mu is the teacher probability mass of the head, and AKL uses mu=0.5.",
    )


def head_tail_gaps(log_p, log_q, mu):
    """Compute the head and tail gaps `g_head` and `g_tail` along the last axis.

    The head is the smallest set of classes, taken in descending order of the
    teacher probability, whose teacher mass reaches `mu`. These are the
    classes whose preceding mass is below `mu`. `g_head` sums `|p - q|` over
    the head and `g_tail` over the other classes.

    NOTE: classes of equal teacher probability at the head boundary are
    ordered by `argsort`, whose order among ties may differ between backends.

    Args:
        log_p: Teacher log-probabilities `[..., classes]`.
        log_q: Student log-probabilities of the same shape.
        mu: Python float in `(0, 1)`.

    Returns:
        `(g_head, g_tail)`, two tensors `[...]` without gradient.
    """
    p = ops.exp(log_p)
    gap = ops.abs(p - ops.exp(log_q))

    order = ops.argsort(-p, axis=-1)
    sorted_p = ops.take_along_axis(p, order, axis=-1)
    sorted_gap = ops.take_along_axis(gap, order, axis=-1)
    # Shifted rather than `cumsum - sorted_p`, which can round a mass equal
    # to `mu` down below it.
    cumulative_mass = ops.cumsum(sorted_p, axis=-1)
    preceding_mass = ops.concatenate(
        [ops.zeros_like(cumulative_mass[..., :1]), cumulative_mass[..., :-1]], axis=-1
    )
    head = ops.less(preceding_mass, mu)

    zeros = ops.zeros_like(sorted_gap)
    g_head = ops.sum(ops.where(head, sorted_gap, zeros), axis=-1)
    g_tail = ops.sum(ops.where(head, zeros, sorted_gap), axis=-1)
    return ops.stop_gradient(g_head), ops.stop_gradient(g_tail)


def _weighted(weight, value):
    # A zero weight removes the term even where the KL divergence is +inf.
    return ops.where(ops.greater(weight, 0.0), weight * value, ops.zeros_like(value))


@keras.saving.register_keras_serializable(package="keras_abkd")
def adaptive_kl(y_true, y_pred, mu=0.5, temperature=1.0, from_logits=True, axis=-1):
    """Compute the adaptive KL divergence (AKL) of teacher p and student q.

    Formula, with `g_head` and `g_tail` from `head_tail_gaps`:

    ```
    AKL = g_head / (g_head + g_tail) * KL(p || q) + g_tail / (g_head + g_tail) * KL(q || p)
    ```

    Forward KL gets the weight of the error on the teacher's head, and
    reverse KL the weight of the error on its tail. The two weights are
    constants for the gradient. When `p == q` both gaps are 0 and both
    weights are set to 0.5 (the divergences are then 0). A term whose weight
    is 0 contributes 0 even where its KL divergence is `+inf`.

    References:
        Wu et al., "Rethinking Kullback-Leibler Divergence in Knowledge
        Distillation for Large Language Models", COLING 2025,
        arXiv:2404.02657.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        mu: Float in `(0, 1)`, the teacher mass of the head. Defaults to 0.5.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    mu = _check_mu(mu)
    log_p, log_q = normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis)

    g_head, g_tail = head_tail_gaps(log_p, log_q, mu)
    total = g_head + g_tail
    has_gap = ops.greater(total, 0.0)
    safe_total = ops.where(has_gap, total, ops.ones_like(total))
    half = ops.full_like(total, 0.5)
    head_weight = ops.where(has_gap, g_head / safe_total, half)
    tail_weight = ops.where(has_gap, g_tail / safe_total, half)

    forward = kl_divergence_from_log_probabilities(log_p, log_q)
    reverse = kl_divergence_from_log_probabilities(log_q, log_p)
    return _weighted(head_weight, forward) + _weighted(tail_weight, reverse)


@keras.saving.register_keras_serializable(package="keras_abkd")
class AdaptiveKL(DivergenceLoss):
    """Adaptive KL divergence (AKL) of Wu et al., see `adaptive_kl`.

    Args:
        mu: Float in `(0, 1)`, the teacher mass of the head. Defaults to 0.5.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"adaptive_kl"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = adaptive_kl
    _divergence_arguments = ("mu",)

    def __init__(
        self,
        mu=0.5,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="adaptive_kl",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.mu = _check_mu(mu)
