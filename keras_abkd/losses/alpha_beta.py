"""The alpha-beta divergence between teacher and student distributions."""

import math

import keras
from keras import ops

from keras_abkd.losses import divided_differences
from keras_abkd.losses import validation


def _log_space_nodes(log_p, log_q, alpha, beta):
    """Return the nodes `log p^(a+b)`, `log p^a q^b` and `log q^(a+b)`."""
    total = alpha + beta
    return total * log_p, alpha * log_p + beta * log_q, total * log_q


def _zero_probability_limit(log_other, own_exponent, total):
    """Value of one term when one side's probability is exactly zero.

    With `p = 0` and `q > 0`, the term tends to `q^(a+b) / (a (a+b))` when
    `a > 0` and `a + b > 0`, and to `+inf` otherwise. The case `q = 0`,
    `p > 0` is the same with `a` and `b` swapped (`own_exponent` is the
    exponent of the side that is zero).
    """
    if own_exponent > 0.0 and total > 0.0:
        return ops.exp(total * log_other) / (own_exponent * total)
    return ops.full_like(log_other, math.inf)


def _masks(log_p, log_q):
    neg_inf = -math.inf
    teacher_zero = ops.equal(log_p, neg_inf)
    student_zero = ops.equal(log_q, neg_inf)
    return teacher_zero, student_zero


def _pointwise_divergence(log_p, log_q, alpha, beta):
    """Terms of the divergence, one per class, from log-probabilities.

    Each term equals `(log q - log p)^2 * exp[n0, n1, n2]`, the second
    divided difference of `exp` at the three log-space nodes. Expanding the
    divided difference gives back the textbook formula, and its limits give
    the special cases on the lines alpha = 0, beta = 0 and alpha + beta = 0.
    """
    teacher_zero, student_zero = _masks(log_p, log_q)
    any_zero = ops.logical_or(teacher_zero, student_zero)
    safe_p = ops.where(any_zero, ops.zeros_like(log_p), log_p)
    safe_q = ops.where(any_zero, ops.zeros_like(log_q), log_q)

    log_ratio = safe_q - safe_p
    nodes = _log_space_nodes(safe_p, safe_q, alpha, beta)
    terms = ops.square(log_ratio) * divided_differences.exp_divided_difference_2(*nodes)

    total = alpha + beta
    teacher_limit = _zero_probability_limit(safe_q, alpha, total)
    student_limit = _zero_probability_limit(safe_p, beta, total)
    terms = ops.where(teacher_zero, teacher_limit, terms)
    terms = ops.where(student_zero, student_limit, terms)
    both_zero = ops.logical_and(teacher_zero, student_zero)
    return ops.where(both_zero, ops.zeros_like(terms), terms)


def _pointwise_gradients(log_p, log_q, alpha, beta):
    """Derivatives of each term with respect to `log p` and `log q`.

    `d/d(log q) = (log q - log p) * exp[n1, n2]` and
    `d/d(log p) = -(log q - log p) * exp[n0, n1]`. A class where either
    probability is zero gets the limit where it is finite and 0 otherwise.
    """
    teacher_zero, student_zero = _masks(log_p, log_q)
    any_zero = ops.logical_or(teacher_zero, student_zero)
    safe_p = ops.where(any_zero, ops.zeros_like(log_p), log_p)
    safe_q = ops.where(any_zero, ops.zeros_like(log_q), log_q)

    log_ratio = safe_q - safe_p
    node0, node1, node2 = _log_space_nodes(safe_p, safe_q, alpha, beta)
    grad_q = log_ratio * divided_differences.exp_divided_difference_1(node1, node2)
    grad_p = -log_ratio * divided_differences.exp_divided_difference_1(node0, node1)

    # As p -> 0 with alpha > 0, d/d(log q) tends to q^(a+b) / alpha. For
    # alpha <= 0 the divergence itself is +inf there.
    # NOTE: the gradient of such an infinite term is reported as 0, so that
    # the other classes keep finite gradients.
    total = alpha + beta
    if alpha > 0.0:
        teacher_zero_grad_q = ops.exp(total * safe_q) / alpha
    else:
        teacher_zero_grad_q = ops.zeros_like(safe_q)
    grad_q = ops.where(teacher_zero, teacher_zero_grad_q, grad_q)
    grad_q = ops.where(student_zero, ops.zeros_like(grad_q), grad_q)

    if beta > 0.0:
        student_zero_grad_p = ops.exp(total * safe_p) / beta
    else:
        student_zero_grad_p = ops.zeros_like(safe_p)
    grad_p = ops.where(student_zero, student_zero_grad_p, grad_p)
    grad_p = ops.where(teacher_zero, ops.zeros_like(grad_p), grad_p)
    return grad_p, grad_q


def _softmax_backward(grad_log_probs, log_probs):
    """Chain `d/d(log softmax(z))` back to `d/dz` along the last axis."""
    probs = ops.exp(log_probs)
    total = ops.sum(grad_log_probs, axis=-1, keepdims=True)
    return grad_log_probs - probs * total


def alpha_beta_divergence_from_scaled_logits(teacher_logits, student_logits, alpha, beta):
    """Divergence along the last axis of two logit tensors already divided by T.

    The gradient is written in closed form and recomputed from the logits in
    the backward pass, so no vocabulary-sized intermediate is kept between
    the two passes.

    Args:
        teacher_logits: Float tensor `[..., classes]`.
        student_logits: Float tensor of the same shape and dtype.
        alpha: Python float.
        beta: Python float.

    Returns:
        Tensor `[...]`.
    """

    @ops.custom_gradient
    def divergence(teacher, student):
        log_p = ops.log_softmax(teacher, axis=-1)
        log_q = ops.log_softmax(student, axis=-1)
        value = ops.sum(_pointwise_divergence(log_p, log_q, alpha, beta), axis=-1)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            log_p = ops.log_softmax(teacher, axis=-1)
            log_q = ops.log_softmax(student, axis=-1)
            grad_p, grad_q = _pointwise_gradients(log_p, log_q, alpha, beta)
            upstream = ops.expand_dims(upstream, axis=-1)
            grad_teacher = upstream * _softmax_backward(grad_p, log_p)
            grad_student = upstream * _softmax_backward(grad_q, log_q)
            return grad_teacher, grad_student

        return value, grad

    return divergence(teacher_logits, student_logits)


def _log_probabilities_as_logits(probabilities):
    """Take the log of probabilities, mapping 0 to -inf with a zero gradient."""
    positive = ops.greater(probabilities, 0.0)
    safe = ops.where(positive, probabilities, ops.ones_like(probabilities))
    neg_inf = ops.full_like(probabilities, -math.inf)
    return ops.where(positive, ops.log(safe), neg_inf)


def prepare_logits(y_true, y_pred, temperature, from_logits, axis):
    """Cast, move `axis` last and divide by the temperature.

    Shared by every divergence in this package: the result is a pair of
    float32 (or float64) tensors `[..., classes]` whose softmax is the
    tempered teacher and student distribution.
    """
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    validation.check_matching_shapes(y_true, y_pred, axis)

    dtype = validation.compute_dtype(y_true, y_pred)
    y_true = ops.cast(y_true, dtype)
    y_pred = ops.cast(y_pred, dtype)
    if axis not in (-1, len(y_pred.shape) - 1):
        y_true = ops.moveaxis(y_true, axis, -1)
        y_pred = ops.moveaxis(y_pred, axis, -1)

    if not from_logits:
        y_true = _log_probabilities_as_logits(y_true)
        y_pred = _log_probabilities_as_logits(y_pred)
    if temperature != 1.0:
        y_true = y_true / temperature
        y_pred = y_pred / temperature
    return y_true, y_pred


@keras.saving.register_keras_serializable(package="keras_abkd")
def alpha_beta_divergence(
    y_true, y_pred, alpha, beta, temperature=1.0, from_logits=True, axis=-1
):
    """Compute the alpha-beta divergence D(p || q) of teacher p and student q.

    Formula (Cichocki, Cruces and Amari, 2011), summed over classes:

    ```
    D = -1 / (a b) * sum(p^a q^b - a / (a + b) p^(a + b) - b / (a + b) q^(a + b))
    ```

    with the continuous limits

    ```
    b = 0:       1 / a^2 * sum(p^a log(p^a / q^a) - p^a + q^a)
    a = 0:       1 / b^2 * sum(q^b log(q^b / p^b) - q^b + p^b)
    a + b = 0:   1 / a^2 * sum(log(q^a / p^a) + (q^a / p^a)^(-1) - 1)
    a = b = 0:   1 / 2 * sum((log p - log q)^2)
    ```

    `(alpha, beta) = (1, 0)` is the forward KL divergence KL(p || q),
    `(0, 1)` the reverse KL divergence KL(q || p), and `alpha + beta = 1` the
    alpha-divergence. Each term is evaluated as
    `(log q - log p)^2 * exp[(a+b) log p, a log p + b log q, (a+b) log q]`,
    the second divided difference of `exp`, which contains no division by
    `a`, `b` or `a + b`. The value is therefore continuous across the special
    lines and accurate to float32 rounding near them, with no branch on
    `alpha` or `beta`.

    The temperature `T` softens both sides, `p = softmax(y_true / T)` and
    `q = softmax(y_pred / T)`, and the result is not multiplied by `T^2`.

    A class where the teacher probability is exactly zero (logit `-inf`) and
    the student's is not contributes the limit of the term, which is finite
    when `alpha > 0` and `alpha + beta > 0` and `+inf` otherwise. A class
    that is zero on both sides contributes 0.

    References:
        Wang et al., "ABKD: Pursuing a Proper Allocation of the Probability
        Mass in Knowledge Distillation via alpha-beta-Divergence", ICML 2025,
        arXiv:2505.04560.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`),
            shape `[..., classes, ...]`.
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        alpha: Finite float. Larger values spread the update towards classes
            where the student is far from the teacher (hardness
            concentration).
        beta: Finite float. Larger values concentrate the update on classes
            the student already believes (confidence concentration).
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Probabilities given with
            `from_logits=False` are normalised along `axis`. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, in float32 (float64 for
        float64 inputs), one divergence per position.

    Example:

    >>> teacher = [[2.0, 1.0, 0.1]]
    >>> student = [[1.5, 1.2, 0.3]]
    >>> value = alpha_beta_divergence(teacher, student, alpha=0.2, beta=0.7)
    >>> value.shape
    (1,)
    """
    alpha, beta = validation.check_alpha_beta(alpha, beta)
    temperature = validation.check_temperature(temperature)
    y_true, y_pred = prepare_logits(y_true, y_pred, temperature, from_logits, axis)
    return alpha_beta_divergence_from_scaled_logits(y_true, y_pred, alpha, beta)


@keras.saving.register_keras_serializable(package="keras_abkd")
class ABDivergence(keras.losses.Loss):
    """Alpha-beta divergence between teacher and student outputs.

    `y_true` holds the teacher's logits and `y_pred` the student's, so the
    loss works in `model.compile(loss=...)` for offline distillation from
    stored teacher logits, and as the `distillation_loss` of
    `keras_abkd.Distiller`. See `keras_abkd.losses.alpha_beta_divergence`
    for the formula and its special cases.

    Args:
        alpha: Finite float, see `alpha_beta_divergence`.
        beta: Finite float, see `alpha_beta_divergence`.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"ab_divergence"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.

    Example:

    ```python
    student.compile(
        optimizer="adam",
        loss=keras_abkd.ABDivergence(alpha=0.2, beta=0.7, temperature=2.0),
    )
    student.fit(images, teacher_logits)
    ```
    """

    def __init__(
        self,
        alpha,
        beta,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="ab_divergence",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha, self.beta = validation.check_alpha_beta(alpha, beta)
        self.temperature = validation.check_temperature(temperature)
        self.from_logits = bool(from_logits)
        self.axis = int(axis)

    def call(self, y_true, y_pred):
        return alpha_beta_divergence(
            y_true,
            y_pred,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            from_logits=self.from_logits,
            axis=self.axis,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "temperature": self.temperature,
                "from_logits": self.from_logits,
                "axis": self.axis,
            }
        )
        return config
