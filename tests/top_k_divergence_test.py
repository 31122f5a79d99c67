"""Top-k teacher targets and `TopKDivergence` against dense and float64 references."""

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd import losses
from keras_abkd.losses import top_k
from tests.gradients import value_and_grad
from tests.reference import ab_divergence_float64

CLASSES = 9
# One shape for every test, so JAX compiles each eager operation once.
SHAPE = (4, CLASSES)

DIVERGENCES = {
    "ab_divergence": lambda t: losses.ABDivergence(0.2, 0.7, temperature=t),
    "ab_sum_zero": lambda t: losses.ABDivergence(0.6, -0.6, temperature=t),
    "forward_kl": lambda t: losses.ForwardKL(temperature=t),
    "reverse_kl": lambda t: losses.ReverseKL(temperature=t),
    "alpha_divergence": lambda t: losses.AlphaDivergence(0.5, temperature=t),
    "generalized_jsd": lambda t: losses.GeneralizedJSD(0.3, temperature=t),
    "skew_forward_kl": lambda t: losses.SkewForwardKL(0.1, temperature=t),
    "total_variation": lambda t: losses.TotalVariation(temperature=t),
}


def _logits(shape, seed, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def _packed(teacher_logits, k, temperature):
    return keras.ops.convert_to_numpy(
        top_k.top_k_targets(teacher_logits, k, temperature=temperature)
    )


def _bucketed_probabilities64(teacher_logits, student_logits, k, temperature):
    """Float64 bucketed teacher and student distributions, from sorted logits."""
    p = np.exp(teacher_logits / temperature)
    p /= p.sum(-1, keepdims=True)
    q = np.exp(student_logits / temperature)
    q /= q.sum(-1, keepdims=True)
    ids = np.argsort(-teacher_logits, axis=-1, kind="stable")[..., :k]
    p_top = np.take_along_axis(p, ids, -1)
    q_top = np.take_along_axis(q, ids, -1)
    in_top = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(in_top, ids, True, -1)
    # The remaining mass summed over the other classes, not 1 - sum(top-k).
    p_tail = np.where(in_top, 0.0, p).sum(-1, keepdims=True)
    q_tail = np.where(in_top, 0.0, q).sum(-1, keepdims=True)
    return np.concatenate([p_top, p_tail], -1), np.concatenate([q_top, q_tail], -1)


@pytest.mark.parametrize(
    "name,temperature",
    [(name, 2.0) for name in sorted(DIVERGENCES)] + [("ab_divergence", 1.0)],
)
def test_full_k_equals_dense_loss(name, temperature):
    teacher = _logits(SHAPE, seed=0)
    student = _logits(SHAPE, seed=1)
    divergence = DIVERGENCES[name](temperature)
    wrapped = losses.TopKDivergence(divergence)
    packed = _packed(teacher, CLASSES, temperature)

    dense_value, (dense_grad,) = value_and_grad(
        lambda s: divergence.call(keras.ops.convert_to_tensor(teacher), s), student
    )
    sparse_value, (sparse_grad,) = value_and_grad(
        lambda s: wrapped.call(keras.ops.convert_to_tensor(packed), s), student
    )

    assert sparse_value.dtype == np.float64
    np.testing.assert_allclose(sparse_value, dense_value, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sparse_grad, dense_grad, rtol=0, atol=1e-6)
    assert np.all(np.isfinite(sparse_grad))


@pytest.mark.parametrize(
    "k,alpha,beta", [(1, 0.2, 0.7), (4, 0.2, 0.7), (8, 0.2, 0.7), (4, 1.0, 0.0), (4, 0.0, 1.0)]
)
def test_partial_k_matches_bucketed_reference(k, alpha, beta):
    temperature = 1.5
    teacher = _logits(SHAPE, seed=4)
    student = _logits(SHAPE, seed=5)
    packed = _packed(teacher, k, temperature)
    loss = losses.TopKDivergence(losses.ABDivergence(alpha, beta, temperature=temperature))

    value = keras.ops.convert_to_numpy(loss.call(packed, student))

    p, q = _bucketed_probabilities64(teacher, student, k, temperature)
    expected = ab_divergence_float64(p, q, alpha, beta)
    # The textbook reference cancels near its special lines, hence 1e-7.
    np.testing.assert_allclose(value, expected, rtol=1e-7, atol=1e-12)


def test_bucket_logits_softmax_to_bucketed_distributions():
    teacher = _logits(SHAPE, seed=6)
    student = _logits(SHAPE, seed=7)
    packed = _packed(teacher, 4, 2.0)

    teacher_buckets, student_buckets = top_k.bucket_logits(packed, student, 2.0)
    p = keras.ops.convert_to_numpy(keras.ops.softmax(teacher_buckets / 2.0))
    q = keras.ops.convert_to_numpy(keras.ops.softmax(student_buckets / 2.0))

    expected_p, expected_q = _bucketed_probabilities64(teacher, student, 4, 2.0)
    assert teacher_buckets.shape == (4, 5)
    np.testing.assert_allclose(p, expected_p, rtol=1e-12)
    np.testing.assert_allclose(q, expected_q, rtol=1e-12)


def test_tail_exact_when_top_k_has_nearly_all_mass():
    # The two tail classes carry about 1e-40 of the mass, far below float32
    # and float64 rounding of 1 - sum(top-k).
    logits = np.array([[100.0, 99.0, 98.0, 8.0, 7.0]], dtype="float32")
    values, ids, tail = top_k.top_k_with_remainder(logits, 3)

    expected_tail = np.logaddexp(8.0, 7.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tail), [expected_tail], rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ids), [[0, 1, 2]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(values), [[100.0, 99.0, 98.0]])


def test_full_k_tail_is_negative_infinity():
    logits = _logits(SHAPE, seed=8)
    _, _, tail = top_k.top_k_with_remainder(logits, CLASSES)
    assert np.all(keras.ops.convert_to_numpy(tail) == -np.inf)


def test_minus_infinity_logits_stay_finite():
    teacher = _logits(SHAPE, seed=9)
    teacher[:, -2:] = -np.inf
    student = _logits(SHAPE, seed=10)
    student[:, -1] = -np.inf
    packed = _packed(teacher, CLASSES, 1.0)
    loss = losses.TopKDivergence(losses.ABDivergence(0.2, 0.7))

    value, (grad,) = value_and_grad(lambda s: loss.call(packed, s), student)
    dense_value, (dense_grad,) = value_and_grad(
        lambda s: losses.ABDivergence(0.2, 0.7).call(keras.ops.convert_to_tensor(teacher), s),
        student,
    )

    assert np.all(np.isfinite(value))
    assert not np.any(np.isnan(grad))
    np.testing.assert_allclose(value, dense_value, atol=1e-6)
    np.testing.assert_allclose(grad, dense_grad, atol=1e-6)


def test_class_axis_first():
    teacher = _logits(SHAPE, seed=11)
    student = _logits(SHAPE, seed=12)
    packed = _packed(teacher, 4, 1.0)
    last = losses.TopKDivergence(losses.ForwardKL())
    first = losses.TopKDivergence(losses.ForwardKL(axis=0))

    expected = keras.ops.convert_to_numpy(last.call(packed, student))
    value = keras.ops.convert_to_numpy(first.call(packed.T, student.T))

    np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_function_divergence_and_registered_name():
    teacher = _logits(SHAPE, seed=13)
    student = _logits(SHAPE, seed=14)
    packed = _packed(teacher, 4, 1.0)

    by_name = losses.TopKDivergence("reverse_kl")
    by_function = losses.TopKDivergence(losses.reverse_kl)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(by_name.call(packed, student)),
        keras.ops.convert_to_numpy(by_function.call(packed, student)),
    )
    assert by_function.name == "top_k_reverse_kl"


def test_config_round_trip():
    loss = losses.TopKDivergence(losses.ABDivergence(0.3, 0.4, temperature=2.0))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))

    assert isinstance(restored, losses.TopKDivergence)
    assert isinstance(restored.divergence, losses.ABDivergence)
    assert restored.divergence.alpha == 0.3
    assert restored.temperature == 2.0
    assert restored.name == "top_k_ab_divergence"


def test_rejects_unsupported_divergences():
    with pytest.raises(ValueError, match="AdaptiveKL cannot read top-k targets"):
        losses.TopKDivergence(losses.AdaptiveKL())
    with pytest.raises(ValueError, match="from_logits=False"):
        losses.TopKDivergence(losses.ForwardKL(from_logits=False))
    with pytest.raises(ValueError, match="already a TopKDivergence"):
        losses.TopKDivergence(losses.TopKDivergence(losses.ForwardKL()))
    with pytest.raises(ValueError, match="differs from the divergence's temperature"):
        losses.TopKDivergence(losses.ForwardKL(temperature=2.0), temperature=1.0)


def test_rejects_bad_targets():
    student = _logits(SHAPE, seed=15)
    loss = losses.TopKDivergence(losses.ForwardKL())
    with pytest.raises(ValueError, match="odd last axis"):
        loss.call(np.zeros((4, 6)), student)
    with pytest.raises(ValueError, match="larger than the number of classes"):
        loss.call(np.zeros((4, 2 * CLASSES + 3)), student)
    with pytest.raises(ValueError, match="agree on every axis"):
        loss.call(np.zeros((5, 7)), student)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k.top_k_targets(student, 0)
    with pytest.raises(ValueError, match="k=10 is larger"):
        top_k.top_k_targets(student, 10)


def test_student_compile_fits_on_packed_targets():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(64, 5)).astype("float32")
    teacher = keras.Sequential([keras.Input((5,)), keras.layers.Dense(CLASSES)])
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(CLASSES)])
    packed = _packed(teacher.predict(x, verbose=0), 3, 2.0).astype("float32")

    loss = keras_abkd.TopKDivergence(keras_abkd.ABDivergence(0.2, 0.7, temperature=2.0))
    student.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    history = student.fit(x, packed, batch_size=16, epochs=4, verbose=0)

    losses_per_epoch = history.history["loss"]
    assert np.all(np.isfinite(losses_per_epoch))
    assert losses_per_epoch[-1] < losses_per_epoch[0]
