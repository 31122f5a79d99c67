"""Chunked evaluation of the alpha-beta divergence: same values, same gradients."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_abkd
from keras_abkd.losses import alpha_beta_divergence
from keras_abkd.losses import chunking

# Points on, near and away from the lines alpha = 0, beta = 0 and
# alpha + beta = 0, where the textbook formula divides by zero.
ALPHA_BETA_GRID = [
    (1.0, 0.0),
    (0.0, 1.0),
    (0.0, 0.0),
    (0.5, -0.5),
    (1.0, 1e-7),
    (1e-4, 1e-4),
    (0.1 + 0.2, -0.3),
    (0.2, 0.7),
    (2.0, -1.0),
    (-2.0, -1.0),
    (5.0, 5.0),
]

# 3 x 4 = 12 positions: 1 and 4 divide 12, 5 does not, and 50 covers a
# single chunk.
CHUNK_SIZES = [1, 4, 5, 50]


def _logits(seed, shape=(3, 4, 9), scale=3.0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype(dtype)


def _value_and_gradients(fn, teacher, student, upstream):
    """Return `fn(teacher, student)` and the gradients of `sum(upstream * fn)`.

    A non-constant `upstream` checks that each position's gradient is scaled
    by its own upstream value.
    """
    backend = keras.backend.backend()
    teacher = ops.convert_to_tensor(teacher)
    student = ops.convert_to_tensor(student)
    upstream = ops.convert_to_tensor(upstream)

    if backend == "jax":
        import jax

        def weighted_sum(t, s):
            value = fn(t, s)
            return ops.sum(ops.cast(upstream, value.dtype) * value), value

        grads, value = jax.grad(weighted_sum, argnums=(0, 1), has_aux=True)(
            teacher, student
        )
        return np.asarray(value), [np.asarray(g) for g in grads]

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(teacher)
            tape.watch(student)
            value = fn(teacher, student)
            total = tf.reduce_sum(tf.cast(upstream, value.dtype) * value)
        grads = tape.gradient(total, [teacher, student])
        return value.numpy(), [g.numpy() for g in grads]

    import torch

    teacher = teacher.detach().requires_grad_(True)
    student = student.detach().requires_grad_(True)
    value = fn(teacher, student)
    total = torch.sum(upstream.to(value.dtype) * value)
    grads = torch.autograd.grad(total, [teacher, student])
    return (
        value.detach().cpu().float().numpy()
        if value.dtype == torch.bfloat16
        else value.detach().cpu().numpy(),
        [
            g.detach().cpu().float().numpy()
            if g.dtype == torch.bfloat16
            else g.detach().cpu().numpy()
            for g in grads
        ],
    )


def _softmax64(logits, temperature):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference_gradients64(teacher, student, alpha, beta, temperature, upstream):
    """Gradients of `sum(upstream * D)` in float64 from the analytic derivatives.

    Per class, `dD/d(log q) = -q^(a+b) expm1(-a d) / a` and
    `dD/d(log p) = -p^(a+b) expm1(b d) / b` with `d = log q - log p`, and
    `expm1(x c) / c` tends to `x` as `c -> 0`.
    """
    log_p = _softmax64(teacher, temperature)
    log_q = _softmax64(student, temperature)
    d = log_q - log_p
    total = alpha + beta

    def expm1_over(x, c):
        return x if c == 0.0 else np.expm1(c * x) / c

    grad_log_q = -np.exp(total * log_q) * expm1_over(-d, alpha)
    grad_log_p = -np.exp(total * log_p) * expm1_over(d, beta)

    weights = np.asarray(upstream, dtype=np.float64)[..., None]
    grads = []
    for grad_log, log_probs in ((grad_log_p, log_p), (grad_log_q, log_q)):
        chained = grad_log - np.exp(log_probs) * grad_log.sum(axis=-1, keepdims=True)
        grads.append(weights * chained / temperature)
    return grads


def _divergence(alpha, beta, temperature, chunk_size):
    def fn(teacher, student):
        return alpha_beta_divergence(
            teacher, student, alpha, beta, temperature=temperature, chunk_size=chunk_size
        )

    return fn


def _identity_rtol(teacher, student, alpha, beta, temperature):
    """Relative tolerance between two float32 evaluations of the same value.

    Chunks of another shape may round `exp` differently by an ulp (Eigen, used
    by TensorFlow, does). A one-ulp change in a node `x` changes `exp(x)` by
    `|x|` ulps, so the tolerance grows with the largest node magnitude above
    the 1e-6 floor.
    """
    log_probs = np.concatenate(
        [_softmax64(teacher, temperature), _softmax64(student, temperature)]
    )
    largest_node = (abs(alpha) + abs(beta)) * np.abs(log_probs).max()
    return max(1e-6, 4 * np.finfo(np.float32).eps * largest_node)


def _assert_chunked_matches_unchunked(alpha, beta, temperature, chunk_sizes):
    teacher, student = _logits(0), _logits(1)
    upstream = np.linspace(0.5, 2.0, 12).reshape(3, 4).astype("float32")
    value, grads = _value_and_gradients(
        _divergence(alpha, beta, temperature, None), teacher, student, upstream
    )

    rtol = _identity_rtol(teacher, student, alpha, beta, temperature)
    for chunk_size in chunk_sizes:
        chunked_value, chunked_grads = _value_and_gradients(
            _divergence(alpha, beta, temperature, chunk_size), teacher, student, upstream
        )
        np.testing.assert_allclose(chunked_value, value, rtol=rtol, atol=0)
        for chunked_grad, grad in zip(chunked_grads, grads):
            scale = np.abs(grad).max()
            np.testing.assert_allclose(chunked_grad, grad, rtol=rtol, atol=rtol * scale)


# Each point of the grid with both temperatures. The chunk size 5 leaves a
# remainder of 2 of the 12 positions, so the loop and the last partial chunk
# both run.
@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_chunked_matches_unchunked(alpha, beta, temperature):
    _assert_chunked_matches_unchunked(alpha, beta, temperature, [5])


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.7), (-2.0, -1.0)])
def test_every_chunk_size_matches_unchunked(alpha, beta):
    _assert_chunked_matches_unchunked(alpha, beta, 2.0, CHUNK_SIZES)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_chunked_gradient_matches_float64(alpha, beta):
    teacher, student = _logits(2), _logits(3)
    temperature = 1.5
    upstream = np.linspace(0.5, 2.0, 12).reshape(3, 4)
    _, grads = _value_and_gradients(
        _divergence(alpha, beta, temperature, 5), teacher, student, upstream
    )
    expected = _reference_gradients64(teacher, student, alpha, beta, temperature, upstream)

    for grad, reference in zip(grads, expected):
        # Float32 rounding of the logits and of exp(log p) bounds what can
        # agree, so the tolerance is relative to the largest entry.
        scale = np.abs(reference).max()
        np.testing.assert_allclose(grad, reference, rtol=1e-4, atol=1e-5 * scale)


def test_float64_reference_gradient_matches_finite_differences():
    teacher = _logits(4, shape=(2, 5)).astype("float64")
    student = _logits(5, shape=(2, 5)).astype("float64")
    alpha, beta, temperature = 0.2, 0.7, 1.5
    upstream = np.array([1.0, 2.0])
    _, grad_student = _reference_gradients64(
        teacher, student, alpha, beta, temperature, upstream
    )

    def weighted_value(student_logits):
        log_p = _softmax64(teacher, temperature)
        log_q = _softmax64(student_logits, temperature)
        p, q, total = np.exp(log_p), np.exp(log_q), alpha + beta
        terms = -(
            p**alpha * q**beta - alpha / total * p**total - beta / total * q**total
        ) / (alpha * beta)
        return float(np.sum(upstream * terms.sum(axis=-1)))

    step = 1e-6
    numeric = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        shifted_up, shifted_down = student.copy(), student.copy()
        shifted_up[index] += step
        shifted_down[index] -= step
        numeric[index] = (weighted_value(shifted_up) - weighted_value(shifted_down)) / (
            2 * step
        )
    np.testing.assert_allclose(grad_student, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("chunk_size", [2, 5])
def test_loss_with_sample_weight_matches_unchunked(chunk_size):
    teacher, student = _logits(6), _logits(7)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype="float32")

    unchunked = keras_abkd.ABDivergence(alpha=0.2, beta=0.7, temperature=2.0)
    chunked = keras_abkd.ABDivergence(
        alpha=0.2, beta=0.7, temperature=2.0, chunk_size=chunk_size
    )
    expected = unchunked(teacher, student, sample_weight=mask)
    actual = chunked(teacher, student, sample_weight=mask)
    np.testing.assert_allclose(
        ops.convert_to_numpy(actual), ops.convert_to_numpy(expected), rtol=1e-6
    )


def test_chunked_with_class_axis_first():
    teacher = np.moveaxis(_logits(8), -1, 0)
    student = np.moveaxis(_logits(9), -1, 0)

    expected = alpha_beta_divergence(teacher, student, 0.5, 0.5, axis=0)
    actual = alpha_beta_divergence(teacher, student, 0.5, 0.5, axis=0, chunk_size=5)
    assert tuple(actual.shape) == (3, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(actual), ops.convert_to_numpy(expected), rtol=1e-6
    )


def test_chunked_bfloat16_matches_unchunked():
    teacher = ops.cast(_logits(10), "bfloat16")
    student = ops.cast(_logits(11), "bfloat16")
    upstream = np.ones((3, 4), dtype="float32")

    value, grads = _value_and_gradients(
        _divergence(0.2, 0.7, 1.0, None), teacher, student, upstream
    )
    chunked_value, chunked_grads = _value_and_gradients(
        _divergence(0.2, 0.7, 1.0, 5), teacher, student, upstream
    )
    assert keras.backend.standardize_dtype(
        alpha_beta_divergence(teacher, student, 0.2, 0.7, chunk_size=5).dtype
    ) == "float32"
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    for chunked_grad, grad in zip(chunked_grads, grads):
        np.testing.assert_array_equal(chunked_grad, grad)


def test_chunked_float64_stays_float64():
    teacher = _logits(12, dtype="float64")
    student = _logits(13, dtype="float64")
    value = alpha_beta_divergence(teacher, student, 0.2, 0.7, chunk_size=5)
    assert keras.backend.standardize_dtype(value.dtype) == "float64"


def test_chunked_zero_teacher_probability_uses_limit():
    # p = (1, 0), q = (1/2, 1/2): forward KL(p || q) = log 2, where the class
    # with p = 0 contributes its limit q^(a+b) / (a (a+b)) = 1/2.
    teacher = np.array([[0.0, -np.inf], [0.0, -np.inf]], dtype="float32")
    student = np.zeros((2, 2), dtype="float32")
    value, grads = _value_and_gradients(
        _divergence(1.0, 0.0, 1.0, 1), teacher, student, np.ones(2, "float32")
    )
    np.testing.assert_allclose(value, [math.log(2.0)] * 2, rtol=1e-6)
    # d KL(p || q) / d student logits = q - p.
    np.testing.assert_allclose(grads[1], [[-0.5, 0.5], [-0.5, 0.5]], atol=1e-6)
    assert np.all(np.isfinite(grads[0]))


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "8", True])
def test_invalid_chunk_size_raises(chunk_size):
    teacher, student = _logits(14), _logits(15)
    with pytest.raises(ValueError, match=f"chunk_size={chunk_size!r}"):
        alpha_beta_divergence(teacher, student, 0.2, 0.7, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="positive integer"):
        keras_abkd.ABDivergence(alpha=0.2, beta=0.7, chunk_size=chunk_size)


def test_chunk_size_round_trips_through_config():
    loss = keras_abkd.ABDivergence(alpha=0.2, beta=0.7, chunk_size=128)
    config = loss.get_config()
    assert config["chunk_size"] == 128
    restored = keras_abkd.ABDivergence.from_config(config)
    assert restored.chunk_size == 128
    assert keras_abkd.ABDivergence(alpha=0.2, beta=0.7).get_config()["chunk_size"] is None


def test_chunk_bounds_cover_positions_in_order():
    assert chunking.chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunking.chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert chunking.chunk_bounds(3, None) == [(0, 3)]
    assert chunking.chunk_bounds(3, 8) == [(0, 3)]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.jit only")
@pytest.mark.parametrize("alpha,beta", [(0.2, 0.7), (2.0, -1.0)])
def test_chunked_under_jit_matches_unchunked(alpha, beta):
    # Under jax.jit the chunks run in ops.fori_loop rather than a Python loop.
    import jax

    teacher, student = _logits(16), _logits(17)
    upstream = np.linspace(0.5, 2.0, 12).reshape(3, 4).astype("float32")

    def weighted_sum(t, s, chunk_size):
        value = alpha_beta_divergence(t, s, alpha, beta, chunk_size=chunk_size)
        return ops.sum(upstream * value)

    expected, expected_grads = jax.value_and_grad(weighted_sum, argnums=(0, 1))(
        teacher, student, None
    )
    for chunk_size in (4, 5):
        step = jax.jit(jax.value_and_grad(weighted_sum, argnums=(0, 1)), static_argnums=2)
        actual, grads = step(teacher, student, chunk_size)
        np.testing.assert_allclose(actual, expected, rtol=1e-6)
        for grad, expected_grad in zip(grads, expected_grads):
            scale = np.abs(expected_grad).max()
            np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6 * scale)


def test_second_backward_pass_is_rejected_or_repeatable():
    teacher, student = _logits(18), _logits(19)
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        student = torch.tensor(student, requires_grad=True)
        loss = torch.sum(alpha_beta_divergence(teacher, student, 0.2, 0.7, chunk_size=5))
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="Compute the loss again"):
            loss.backward()
    elif backend == "jax":
        import jax

        def divergence_sum(s):
            return ops.sum(alpha_beta_divergence(teacher, s, 0.2, 0.7, chunk_size=5))

        _, vjp = jax.vjp(divergence_sum, student)
        (first,) = vjp(np.float32(1.0))
        (second,) = vjp(np.float32(1.0))
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
        assert np.abs(np.asarray(first)).max() > 0
    else:
        pytest.skip("TensorFlow tapes run the gradient once")
