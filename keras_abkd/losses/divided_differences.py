"""Divided differences of `exp`, evaluated without cancellation.

The alpha-beta divergence and its gradient are, element by element, divided
differences of the exponential function at log-space nodes (see
`alpha_beta.py`). Writing them this way removes every division by alpha, beta
or alpha + beta, so the special lines of the family need no branch.

All functions take and return `keras.ops` tensors of one floating dtype.
"""

from keras import ops

# Below this node spread the second divided difference is summed as a power
# series. Above it the closed form loses at most a factor of about 7 to
# cancellation: its result is at least a seventh of its largest term there.
SERIES_THRESHOLD = 0.5

# Terms of the series after the constant one. With a spread of at most 0.5
# the first omitted term is below 1e-9 of the sum.
SERIES_TERMS = 8


def phi_negative(t):
    """Compute `(1 - exp(-t)) / t` for `t >= 0`, with the limit 1 at 0.

    This is the first divided difference `exp[-t, 0]`. `expm1` keeps it
    accurate for tiny `t`.

    Args:
        t: Non-negative tensor.

    Returns:
        A tensor of the shape of `t`, with values in `(0, 1]`.
    """
    positive = ops.greater(t, 0.0)
    safe_t = ops.where(positive, t, ops.ones_like(t))
    return ops.where(positive, -ops.expm1(-safe_t) / safe_t, ops.ones_like(t))


def exp_divided_difference_1(x, y):
    """Compute the first divided difference `exp[x, y]`.

    `exp[x, y] = (exp(y) - exp(x)) / (y - x)`, and `exp(x)` when `x == y`.

    Args:
        x: Tensor of finite nodes.
        y: Tensor of finite nodes, broadcastable with `x`.

    Returns:
        A positive tensor, the broadcast shape of `x` and `y`.
    """
    top = ops.maximum(x, y)
    spread = ops.abs(y - x)
    return ops.exp(top) * phi_negative(spread)


def _sort3(x0, x1, x2):
    low = ops.minimum(ops.minimum(x0, x1), x2)
    high = ops.maximum(ops.maximum(x0, x1), x2)
    middle = ops.maximum(ops.minimum(x0, x1), ops.minimum(ops.maximum(x0, x1), x2))
    return low, middle, high


def _series_at_top(u, v):
    """Sum `exp[0, u, v]` for `u, v` in `[-SERIES_THRESHOLD, 0]`.

    `exp[0, u, v] = sum_n h_n(u, v) / (n + 2)!`, where `h_n` is the complete
    homogeneous symmetric polynomial of degree `n`, built by the recurrence
    `h_n = v * h_{n-1} + u**n`.
    """
    homogeneous = ops.ones_like(u)
    u_power = ops.ones_like(u)
    factorial = 2.0
    total = homogeneous / factorial
    for n in range(1, SERIES_TERMS + 1):
        u_power = u_power * u
        homogeneous = v * homogeneous + u_power
        factorial *= n + 2
        total = total + homogeneous / factorial
    return total


def exp_divided_difference_2(x0, x1, x2):
    """Compute the second divided difference `exp[x0, x1, x2]`.

    The value is symmetric in the three nodes and equals `exp(xi) / 2` for
    some `xi` between the smallest and the largest node, so it is always
    positive. With the nodes sorted to `y0 <= y1 <= y2` and the spreads
    `d1 = y1 - y0`, `d2 = y2 - y1`, `D = y2 - y0`:

    ```
    exp[y0, y1, y2] = exp(y2) * (exp[-d2, 0] - exp(-d2) * exp[-d1, 0]) / D
    ```

    That closed form cancels when `D` is small, so below `SERIES_THRESHOLD`
    the power series of `exp[-D, -d2, 0]` is used instead. Both forms only
    exponentiate non-positive numbers after factoring out `exp(y2)`, so
    nothing overflows unless the result itself does.

    Args:
        x0, x1, x2: Tensors of finite nodes, broadcastable together.

    Returns:
        A positive tensor of the broadcast shape.
    """
    low, middle, high = _sort3(x0, x1, x2)
    spread = high - low
    spread_low = middle - low
    spread_high = high - middle

    # Closed form, used where the spread is at least SERIES_THRESHOLD.
    safe_spread = ops.maximum(spread, SERIES_THRESHOLD)
    closed = (
        phi_negative(spread_high)
        - ops.exp(-spread_high) * phi_negative(spread_low)
    ) / safe_spread

    # Power series, used below it. Inputs are clamped so that the unused
    # branch stays finite.
    series = _series_at_top(
        -ops.minimum(spread_high, SERIES_THRESHOLD),
        -ops.minimum(spread, SERIES_THRESHOLD),
    )

    scaled = ops.where(ops.less(spread, SERIES_THRESHOLD), series, closed)
    return ops.exp(high) * scaled
