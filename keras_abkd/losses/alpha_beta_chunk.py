"""Value and gradient of the alpha-beta divergence for one chunk of positions.

Each class contributes `(log q - log p)^2 * exp[n0, n1, n2]`, the second
divided difference of `exp` at the log-space nodes

```
n0 = (a + b) log p,   n1 = a log p + b log q,   n2 = (a + b) log q,
```

and its derivatives are first divided differences of the same nodes:

```
d/d(log q) =  (log q - log p) * exp[n1, n2]
d/d(log p) = -(log q - log p) * exp[n0, n1]
```

With `d = log q - log p` the nodes sit at `n0 + {0, b, a + b} * d`, so their
order along the line is fixed by alpha and beta and the sign of `d`. That lets
one exponential of the highest node and two `expm1` of node spreads give the
value and both derivatives. Together with the two softmax exponentials, a
chunk costs five transcendental functions per class when alpha and beta are
non-negative, and six otherwise (see `divergence_terms`).
"""

import math

from keras import ops

from keras_abkd.losses import divided_differences

# The parameter that multiplies `d` in each node spread: n1 - n0 = b d,
# n2 - n1 = a d, n2 - n0 = (a + b) d.
_PAIR_PARAMETERS = {(0, 1): "beta", (1, 2): "alpha", (0, 2): "total"}


class NodeLayout:
    """Static order of the nodes `n0, n1, n2` for `d >= 0`, from alpha and beta.

    For `d >= 0`, node `k` sits at `n0 + c_k * d` with `c = (0, b, a + b)`,
    so sorting `c` sorts the nodes. For `d < 0` the order is reversed. The
    gaps between sorted nodes are `|a|`, `|b|` or `|a + b|` times `|d|`, taken
    from the parameters themselves so that no rounding enters them.
    """

    def __init__(self, alpha, beta):
        parameters = {"alpha": alpha, "beta": beta, "total": alpha + beta}
        offsets = (0.0, beta, alpha + beta)
        low, middle, high = sorted(range(3), key=lambda k: offsets[k])

        def gap(i, j):
            return abs(parameters[_PAIR_PARAMETERS[tuple(sorted((i, j)))]])

        self.low, self.middle, self.high = low, middle, high
        # Gap between the middle node and the high node (for d >= 0), the
        # middle node and the low node, and the low and the high node.
        self.gap_top = gap(middle, high)
        self.gap_bottom = gap(middle, low)
        self.gap_all = gap(low, high)


# Below this |log q - log p|, 1 / |d| could overflow float32, so the spreads
# are treated as 0. That changes `(1 - exp(-x)) / x` by about x / 2, below
# 1e-16 relative for any alpha and beta under 1e14 in magnitude.
_TINY_LOG_RATIO = 1e-30

# 1 / (n + 2)! for the terms of `_series_at_top`.
_SERIES_COEFFICIENTS = [
    1.0 / math.factorial(n + 2)
    for n in range(divided_differences.SERIES_TERMS + 1)
]


def _phi_negative(gap, expm1_negative, inverse_abs_d, separated):
    """Return `(1 - exp(-x)) / x` at `x = gap * |d|` from `expm1(-x)`, 1 at 0.

    `inverse_abs_d` is `1 / |d|` where `separated` is True. Multiplying by it
    replaces a division per spread.
    """
    if gap == 0.0:
        return ops.ones_like(expm1_negative)
    ratio = expm1_negative * inverse_abs_d * (-1.0 / gap)
    return ops.where(separated, ratio, ops.ones_like(ratio))


def _series_at_top(u, v):
    """Sum `exp[0, u, v]` for `u, v` in `[-SERIES_THRESHOLD, 0]`.

    The same series as `divided_differences`, with the factorials as
    precomputed reciprocals, because a multiplication is cheaper than a
    division.
    """
    homogeneous = ops.ones_like(u)
    u_power = ops.ones_like(u)
    total = homogeneous * _SERIES_COEFFICIENTS[0]
    for coefficient in _SERIES_COEFFICIENTS[1:]:
        u_power = u_power * u
        homogeneous = v * homogeneous + u_power
        total = total + homogeneous * coefficient
    return total


def _log_softmax_parts(logits):
    """Return `log softmax(logits)` and `softmax(logits)` from one `exp` pass."""
    shifted = logits - ops.max(logits, axis=-1, keepdims=True)
    exponentials = ops.exp(shifted)
    normalizer = ops.sum(exponentials, axis=-1, keepdims=True)
    return shifted - ops.log(normalizer), exponentials * (1.0 / normalizer)


def divergence_terms(log_p, log_q, alpha, beta, layout=None):
    """Compute each class's term and its derivatives in `log p` and `log q`.

    Args:
        log_p: Teacher log-probabilities `[..., classes]`, `-inf` allowed.
        log_q: Student log-probabilities, same shape and dtype.
        alpha: Python float.
        beta: Python float.
        layout: Optional `NodeLayout(alpha, beta)`, to reuse across chunks.

    Returns:
        `(terms, grad_log_p, grad_log_q)`, each of the input shape.
    """
    if layout is None:
        layout = NodeLayout(alpha, beta)
    total = alpha + beta

    # A class with a zero probability on one side gets that side's log
    # replaced by the other side's, which makes d = 0 and all three nodes
    # equal to (a + b) times the finite log. The exponential of the high node
    # is then exactly the power that the limit needs.
    teacher_zero = ops.equal(log_p, -math.inf)
    student_zero = ops.equal(log_q, -math.inf)
    both_zero = ops.logical_and(teacher_zero, student_zero)
    zeros = ops.zeros_like(log_p)
    safe_p = ops.where(teacher_zero, ops.where(student_zero, zeros, log_q), log_p)
    safe_q = ops.where(student_zero, ops.where(teacher_zero, zeros, log_p), log_q)

    d = safe_q - safe_p
    abs_d = ops.abs(d)
    rising = ops.greater_equal(d, 0.0)
    nodes = (total * safe_p, alpha * safe_p + beta * safe_q, total * safe_q)
    top_node = ops.where(rising, nodes[layout.high], nodes[layout.low])
    exp_top = ops.exp(top_node)

    spread_top = layout.gap_top * abs_d
    spread_bottom = layout.gap_bottom * abs_d
    spread_all = layout.gap_all * abs_d
    expm1_top = ops.expm1(-spread_top)
    expm1_bottom = ops.expm1(-spread_bottom)
    # exp(-x - y) - 1 from the two expm1 values. The sum is at least as large
    # in magnitude as either expm1 value, so it loses nothing to cancellation.
    expm1_all = expm1_top + expm1_bottom + expm1_top * expm1_bottom

    separated = ops.greater(abs_d, _TINY_LOG_RATIO)
    inverse_abs_d = 1.0 / ops.where(separated, abs_d, ops.ones_like(abs_d))
    phi_top = _phi_negative(layout.gap_top, expm1_top, inverse_abs_d, separated)
    phi_bottom = _phi_negative(layout.gap_bottom, expm1_bottom, inverse_abs_d, separated)
    phi_all = _phi_negative(layout.gap_all, expm1_all, inverse_abs_d, separated)

    # First divided differences of the three node pairs, as multiples of
    # exp(top). For d >= 0 the top node is `layout.high`, so the top pair's
    # larger node is the top node and the bottom pair's is the middle node,
    # at exp(top) * exp(-spread_top). For d < 0 top and bottom swap roles.
    upper_phi = ops.where(rising, phi_top, phi_bottom)
    lower_phi = ops.where(rising, phi_bottom, phi_top)
    spread_upper = ops.where(rising, spread_top, spread_bottom)
    exp_drop = 1.0 + ops.where(rising, expm1_top, expm1_bottom)
    upper_pair = exp_top * upper_phi
    if min(alpha, beta) < 0.0:
        # A negative coefficient lets exp(top) overflow while the middle
        # node stays finite, and inf * exp(-spread) would give NaN, so the
        # middle exponential gets its own pass here.
        lower_pair = ops.exp(nodes[layout.middle]) * lower_phi
    else:
        lower_pair = exp_top * (exp_drop * lower_phi)
    pair_top = ops.where(rising, upper_pair, lower_pair)
    pair_bottom = ops.where(rising, lower_pair, upper_pair)
    pairs = {
        tuple(sorted((layout.middle, layout.high))): pair_top,
        tuple(sorted((layout.middle, layout.low))): pair_bottom,
        tuple(sorted((layout.low, layout.high))): exp_top * phi_all,
    }
    grad_log_q = d * pairs[(1, 2)]
    grad_log_p = -d * pairs[(0, 1)]

    # Second divided difference: the closed form divides the difference of
    # the two pairs that meet at the middle node by the full spread, and
    # cancels below SERIES_THRESHOLD, where the power series takes over.
    # exp(top) is factored out so that an infinite value stays +inf.
    threshold = divided_differences.SERIES_THRESHOLD
    series = _series_at_top(
        -ops.minimum(spread_upper, threshold),
        -ops.minimum(spread_all, threshold),
    )
    if layout.gap_all == 0.0:
        scaled_second = series
    else:
        # Where spread_all >= threshold, |d| > 0 and inverse_abs_d is 1 / |d|.
        closed = (upper_phi - exp_drop * lower_phi) * inverse_abs_d * (1.0 / layout.gap_all)
        scaled_second = ops.where(ops.less(spread_all, threshold), series, closed)
    second = exp_top * scaled_second
    terms = ops.square(d) * second
    if min(alpha, beta) < 0.0:
        # A negative coefficient can push exp(top) to +inf, and where p = q
        # (d = 0) the products above are then 0 * inf = NaN. The term and its
        # derivatives are exactly 0 there.
        equal = ops.equal(d, 0.0)
        terms = ops.where(equal, zeros, terms)
        grad_log_p = ops.where(equal, zeros, grad_log_p)
        grad_log_q = ops.where(equal, zeros, grad_log_q)

    terms, grad_log_p, grad_log_q = _apply_zero_limits(
        terms, grad_log_p, grad_log_q, exp_top, teacher_zero, student_zero,
        both_zero, alpha, beta,
    )
    return terms, grad_log_p, grad_log_q


def _apply_zero_limits(
    terms, grad_log_p, grad_log_q, power, teacher_zero, student_zero, both_zero,
    alpha, beta,
):
    """Replace classes with a zero probability by the limits of the term.

    `power` is `q^(a+b)` where only the teacher is zero and `p^(a+b)` where
    only the student is. With `p = 0`, the term tends to `q^(a+b) / (a (a+b))`
    and its `log q` derivative to `q^(a+b) / a` when `a > 0` and `a + b > 0`.
    Otherwise the term is `+inf`.
    NOTE: the derivative of an infinite term is reported as 0, so that the
    other classes keep finite gradients.
    """
    total = alpha + beta
    zeros = ops.zeros_like(terms)
    infinite = ops.full_like(terms, math.inf)

    def limits(own_exponent):
        if own_exponent > 0.0 and total > 0.0:
            return power / (own_exponent * total), power / own_exponent
        if own_exponent > 0.0:
            return infinite, power / own_exponent
        return infinite, zeros

    teacher_term, teacher_grad_q = limits(alpha)
    terms = ops.where(teacher_zero, teacher_term, terms)
    grad_log_q = ops.where(teacher_zero, teacher_grad_q, grad_log_q)
    grad_log_p = ops.where(teacher_zero, zeros, grad_log_p)

    student_term, student_grad_p = limits(beta)
    terms = ops.where(student_zero, student_term, terms)
    grad_log_p = ops.where(student_zero, student_grad_p, grad_log_p)
    grad_log_q = ops.where(student_zero, zeros, grad_log_q)

    terms = ops.where(both_zero, zeros, terms)
    grad_log_p = ops.where(both_zero, zeros, grad_log_p)
    grad_log_q = ops.where(both_zero, zeros, grad_log_q)
    return terms, grad_log_p, grad_log_q


def chunk_value_and_gradients(
    teacher_logits, student_logits, alpha, beta, temperature, compute_dtype,
    teacher_gradient=True, student_gradient=True, layout=None,
):
    """Divergence per position of one chunk, and its gradients in the logits.

    Args:
        teacher_logits: Teacher logits `[positions, classes]`, not yet divided
            by the temperature, in any float dtype.
        student_logits: Student logits, same shape and dtype.
        alpha: Python float.
        beta: Python float.
        temperature: Python float dividing both logits.
        compute_dtype: `"float32"` or `"float64"`.
        teacher_gradient: Whether to compute the teacher gradient.
        student_gradient: Whether to compute the student gradient.
        layout: Optional `NodeLayout(alpha, beta)`.

    Returns:
        `(value, grad_teacher, grad_student)`: `value` is `[positions]` in
        `compute_dtype`. The gradients of `sum(value)` with respect to the
        two logit inputs are in the dtype of each input, or None where not
        requested.
    """
    teacher = ops.cast(teacher_logits, compute_dtype)
    student = ops.cast(student_logits, compute_dtype)
    if temperature != 1.0:
        teacher = teacher / temperature
        student = student / temperature

    log_p, p = _log_softmax_parts(teacher)
    log_q, q = _log_softmax_parts(student)
    terms, grad_log_p, grad_log_q = divergence_terms(log_p, log_q, alpha, beta, layout)
    value = ops.sum(terms, axis=-1)
    grad_teacher = None
    if teacher_gradient:
        grad_teacher = _logit_gradient(grad_log_p, p, temperature, teacher_logits.dtype)
    grad_student = None
    if student_gradient:
        grad_student = _logit_gradient(grad_log_q, q, temperature, student_logits.dtype)
    return value, grad_teacher, grad_student


def _logit_gradient(grad_log_probs, probs, temperature, dtype):
    """Chain `d/d(log softmax(z / T))` back to `d/dz`, cast to `dtype`."""
    grad = grad_log_probs - probs * ops.sum(grad_log_probs, axis=-1, keepdims=True)
    if temperature != 1.0:
        grad = grad / temperature
    return ops.cast(grad, dtype)
