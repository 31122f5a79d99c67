"""Per-class gradients of the alpha-beta divergence and its two concentration effects.

For teacher `p`, student `q` and `(alpha, beta)`, the derivative of the
alpha-beta divergence with respect to the student's log-probability of class
`i` is

```
u_i = d D / d(log q_i) = q_i^beta * (q_i^alpha - p_i^alpha) / alpha
```

with the limit `u_i = q_i^beta * (log q_i - log p_i)` at `alpha = 0`. Forward
KL gives `u_i = q_i - p_i` and reverse KL `u_i = q_i * (log q_i - log p_i)`.
The gradient with respect to the student logits `z` (divided by the
temperature `T`) is `dD/dz_i = (u_i - q_i * sum_j u_j) / T`.

The update weights `w_i = |u_i| / sum_j |u_j|` are the shares of the update
on each class. Two numbers summarise them:

- hardness concentration: the weight on the classes of largest error
  `|log p_i - log q_i|`;
- confidence concentration: the weight on the classes of largest student
  probability `q_i`.

Both are in `[0, 1]`. `beta` enters `w` only through the factor `q_i^beta`,
so raising `beta` tilts the weights towards confident classes and the
confidence concentration never decreases: its log-derivative in `beta` is
`log max(q) - E_w[log q] >= 0`. `alpha` enters through
`(q_i^alpha - p_i^alpha) / alpha`: lowering it raises the weight of classes
the student overestimates by a large factor (`q_i >> p_i`) and lowers that of
high-probability classes. When the classes of largest error are ones the
student overestimates, as on the teacher's tail for a student flatter than
its teacher, the hardness concentration therefore rises as `alpha` falls.

NOTE: where the class of largest error is one the student underestimates
(`p_i >> q_i`), lowering `alpha` can lower the hardness concentration. Only
the direction of `beta` on the confidence concentration is guaranteed.

References:
    Wang et al., "ABKD: Pursuing a Proper Allocation of the Probability Mass
    in Knowledge Distillation via alpha-beta-Divergence", ICML 2025,
    arXiv:2505.04560. It names the two effects. The two measures here are
    this module's own definitions.
"""

import dataclasses
import math

from keras import ops

from keras_abkd.losses import validation
from keras_abkd.losses.base import normalised_log_probabilities


@dataclasses.dataclass
class GradientAnalysis:
    """Per-class gradients and the concentration effects of one divergence.

    Every field is a tensor with the class axis last: `[..., classes]` for the
    per-class fields and `[...]` for the two concentrations.

    Attributes:
        teacher_probabilities: Tempered teacher distribution `p`.
        student_probabilities: Tempered student distribution `q`.
        log_probability_gradient: `u_i = dD / d(log q_i)`.
        logit_gradient: `dD / dz_i` for the student logits `z`, including
            the `1 / T` of the temperature.
        update_weights: `|u_i| / sum_j |u_j|`, 0 everywhere when `p == q`.
        hardness_concentration: Weight on the classes of largest error.
        confidence_concentration: Weight on the classes of largest `q`.
    """

    teacher_probabilities: object
    student_probabilities: object
    log_probability_gradient: object
    logit_gradient: object
    update_weights: object
    hardness_concentration: object
    confidence_concentration: object


def _phi_negative(t):
    # (1 - exp(-t)) / t for t >= 0, with the limit 1 at t = 0.
    positive = ops.greater(t, 0.0)
    safe_t = ops.where(positive, t, ops.ones_like(t))
    return ops.where(positive, -ops.expm1(-safe_t) / safe_t, ops.ones_like(t))


def log_probability_gradient_from_log_probabilities(log_p, log_q, alpha, beta):
    """Compute `u_i = d D / d(log q_i)` of the alpha-beta divergence.

    Evaluated as `(log q - log p) * exp[n1, n2]`, the first divided
    difference of `exp` at `n1 = alpha log p + beta log q` and
    `n2 = (alpha + beta) log q`, which equals the closed form of the module
    docstring without dividing by `alpha`. A class with `p = 0 < q` gets the
    limit `q^(alpha + beta) / alpha` when `alpha > 0` and 0 otherwise (the
    divergence is then infinite). A class with `q = 0` gets 0.

    Args:
        log_p: Teacher log-probabilities `[..., classes]`.
        log_q: Student log-probabilities of the same shape.
        alpha: Python float.
        beta: Python float.

    Returns:
        Tensor `[..., classes]`.
    """
    neg_inf = -math.inf
    teacher_zero = ops.equal(log_p, neg_inf)
    student_zero = ops.equal(log_q, neg_inf)
    any_zero = ops.logical_or(teacher_zero, student_zero)
    safe_p = ops.where(any_zero, ops.zeros_like(log_p), log_p)
    safe_q = ops.where(any_zero, ops.zeros_like(log_q), log_q)

    log_ratio = safe_q - safe_p
    node1 = alpha * safe_p + beta * safe_q
    node2 = (alpha + beta) * safe_q
    divided_difference = ops.exp(ops.maximum(node1, node2)) * _phi_negative(
        ops.abs(node2 - node1)
    )
    gradient = log_ratio * divided_difference

    if alpha > 0.0:
        teacher_zero_limit = ops.exp((alpha + beta) * safe_q) / alpha
    else:
        teacher_zero_limit = ops.zeros_like(safe_q)
    gradient = ops.where(teacher_zero, teacher_zero_limit, gradient)
    return ops.where(student_zero, ops.zeros_like(gradient), gradient)


def _share_of_largest(weights, score):
    # Sum of `weights` over the classes where `score` is at its maximum.
    largest = ops.equal(score, ops.max(score, axis=-1, keepdims=True))
    return ops.sum(ops.where(largest, weights, ops.zeros_like(weights)), axis=-1)


def analyze_gradients(
    teacher_logits,
    student_logits,
    alpha,
    beta,
    temperature=1.0,
    from_logits=True,
    axis=-1,
):
    """Compute the per-class gradient of the alpha-beta divergence and its effects.

    See the module docstring for the formulas. Forward KL is
    `(alpha, beta) = (1, 0)` and reverse KL `(0, 1)`.

    Args:
        teacher_logits: Teacher logits (or probabilities if
            `from_logits=False`), shape `[..., classes, ...]`.
        student_logits: Student logits (or probabilities), same shape.
        alpha: Finite float.
        beta: Finite float.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        A `GradientAnalysis`, with the class axis moved last.

    Example:

    >>> result = analyze_gradients([[3.0, 1.0, 0.0]], [[1.0, 1.5, 0.5]], 0.0, 1.0)
    >>> result.logit_gradient.shape
    (1, 3)
    """
    alpha, beta = validation.check_alpha_beta(alpha, beta)
    temperature = validation.check_temperature(temperature)
    log_p, log_q = normalised_log_probabilities(
        teacher_logits, student_logits, temperature, from_logits, axis
    )
    p = ops.exp(log_p)
    q = ops.exp(log_q)

    gradient = log_probability_gradient_from_log_probabilities(log_p, log_q, alpha, beta)
    total = ops.sum(gradient, axis=-1, keepdims=True)
    logit_gradient = (gradient - q * total) / temperature

    magnitude = ops.abs(gradient)
    magnitude_sum = ops.sum(magnitude, axis=-1, keepdims=True)
    has_update = ops.greater(magnitude_sum, 0.0)
    safe_sum = ops.where(has_update, magnitude_sum, ops.ones_like(magnitude_sum))
    weights = ops.where(has_update, magnitude / safe_sum, ops.zeros_like(magnitude))

    # A class that is zero on both sides has no error rather than NaN.
    both_zero = ops.logical_and(ops.equal(p, 0.0), ops.equal(q, 0.0))
    error = ops.where(both_zero, ops.zeros_like(log_p), ops.abs(log_p - log_q))

    return GradientAnalysis(
        teacher_probabilities=p,
        student_probabilities=q,
        log_probability_gradient=gradient,
        logit_gradient=logit_gradient,
        update_weights=weights,
        hardness_concentration=_share_of_largest(weights, error),
        confidence_concentration=_share_of_largest(weights, q),
    )
