import math

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd.losses import ABDivergence
from keras_abkd.losses import alpha_beta_divergence
from tests import reference
from tests.gradients import value_and_grad

# Every special line, points near each of them, and generic points.
ALPHA_BETA_GRID = [
    (1.0, 0.0),
    (0.0, 1.0),
    (0.0, 0.0),
    (0.5, -0.5),
    (-0.5, 0.5),
    (2.0, 0.0),
    (0.0, -1.5),
    (1.0, 1e-7),
    (1e-7, 1.0),
    (1e-4, 1e-4),
    (0.1 + 0.2, -0.3),
    (1.0, -1.0 + 1e-6),
    (0.2, 0.7),
    (0.5, 0.5),
    (2.0, -1.0),
    (-1.0, 3.0),
    (3.0, 2.0),
    (-2.0, -1.0),
    (-0.3, -0.4),
    (5.0, 5.0),
]


def _logits(shape, seed, scale=3.0, dtype="float32"):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_value_matches_high_precision_reference(alpha, beta):
    teacher = _logits((6, 11), seed=1)
    student = _logits((6, 11), seed=2)

    value = keras.ops.convert_to_numpy(
        alpha_beta_divergence(teacher, student, alpha, beta)
    )
    expected = reference.ab_divergence_mpmath(teacher, student, alpha, beta)

    assert value.dtype == np.float32
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "alpha,beta", [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, -0.5), (0.2, 0.7), (2.0, -1.0)]
)
def test_float64_reference_agrees_with_mpmath(alpha, beta):
    # The textbook float64 reference and the 50-digit one are two independent
    # evaluations; agreement on exact lines checks the reference itself.
    teacher = _logits((3, 7), seed=3)
    student = _logits((3, 7), seed=4)
    np.testing.assert_allclose(
        reference.ab_divergence_logits_float64(teacher, student, alpha, beta),
        reference.ab_divergence_mpmath(teacher, student, alpha, beta),
        rtol=1e-10,
    )


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0), (0.2, 0.7), (0.5, -0.5), (-1.0, 2.0)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_temperature_softens_both_sides_without_scaling(alpha, beta, temperature):
    teacher = _logits((4, 9), seed=5)
    student = _logits((4, 9), seed=6)

    value = keras.ops.convert_to_numpy(
        alpha_beta_divergence(teacher, student, alpha, beta, temperature=temperature)
    )
    expected = reference.ab_divergence_mpmath(teacher, student, alpha, beta, temperature)

    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_forward_and_reverse_kl_are_true_kl():
    teacher = _logits((5, 8), seed=7)
    student = _logits((5, 8), seed=8)
    p = reference.softmax64(teacher)
    q = reference.softmax64(student)

    forward = keras.ops.convert_to_numpy(alpha_beta_divergence(teacher, student, 1.0, 0.0))
    reverse = keras.ops.convert_to_numpy(alpha_beta_divergence(teacher, student, 0.0, 1.0))

    np.testing.assert_allclose(forward, np.sum(p * np.log(p / q), axis=-1), rtol=1e-5)
    np.testing.assert_allclose(reverse, np.sum(q * np.log(q / p), axis=-1), rtol=1e-5)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_zero_for_identical_and_positive_otherwise(alpha, beta):
    logits = _logits((4, 10), seed=9)
    other = _logits((4, 10), seed=10)

    same = keras.ops.convert_to_numpy(alpha_beta_divergence(logits, logits, alpha, beta))
    different = keras.ops.convert_to_numpy(alpha_beta_divergence(logits, other, alpha, beta))

    np.testing.assert_array_equal(same, np.zeros(4, dtype=np.float32))
    assert np.all(different > 0.0)


@pytest.mark.parametrize(
    "line", ["beta=0", "alpha=0", "alpha+beta=0", "origin"]
)
def test_continuous_across_special_lines(line):
    teacher = _logits((3, 12), seed=11)
    student = _logits((3, 12), seed=12)
    points = {
        "beta=0": lambda e: (0.7, e),
        "alpha=0": lambda e: (e, 0.6),
        "alpha+beta=0": lambda e: (0.8, -0.8 + e),
        "origin": lambda e: (e, e),
    }[line]

    def value(eps):
        alpha, beta = points(eps)
        return keras.ops.convert_to_numpy(alpha_beta_divergence(teacher, student, alpha, beta))

    on_line = value(0.0)
    for eps in (1e-3, 1e-5, 1e-7, -1e-7, -1e-5, -1e-3):
        # The divergence is smooth in (alpha, beta): its change is O(eps).
        np.testing.assert_allclose(value(eps), on_line, rtol=50 * abs(eps) + 2e-6)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_gradient_matches_finite_differences_float64(alpha, beta):
    teacher = _logits((3, 6), seed=13, scale=1.5, dtype="float64")
    student = _logits((3, 6), seed=14, scale=1.5, dtype="float64")

    def fn(t, s):
        return alpha_beta_divergence(t, s, alpha, beta, temperature=1.3)

    value, (grad_teacher, grad_student) = value_and_grad(fn, teacher, student, argnums=(0, 1))
    expected = reference.numerical_student_gradient(teacher, student, alpha, beta, 1.3)

    assert value.dtype == np.float64
    np.testing.assert_allclose(grad_student, expected, rtol=1e-5, atol=1e-8)
    # The gradient w.r.t. the teacher logits also comes from the closed form.
    expected_teacher = -reference.numerical_student_gradient(student, teacher, beta, alpha, 1.3)
    np.testing.assert_allclose(-grad_teacher, expected_teacher, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0), (0.2, 0.7), (1e-4, 1e-4), (0.5, -0.5)])
def test_float32_gradient_close_to_float64(alpha, beta):
    teacher = _logits((4, 16), seed=15)
    student = _logits((4, 16), seed=16)

    _, (grad32,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher, s, alpha, beta), student, argnums=(0,)
    )
    _, (grad64,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher.astype("float64"), s, alpha, beta),
        student.astype("float64"),
        argnums=(0,),
    )

    assert grad32.dtype == np.float32
    scale = np.max(np.abs(grad64))
    np.testing.assert_allclose(grad32, grad64, rtol=1e-4, atol=1e-6 * scale)


def test_gradient_sums_to_zero_over_classes():
    # Softmax is invariant to adding a constant to all logits.
    teacher = _logits((5, 7), seed=17)
    student = _logits((5, 7), seed=18)
    _, (grad,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher, s, 0.3, 0.4), student, argnums=(0,)
    )
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-6)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_column_minus_inf_on_both_sides_contributes_zero(alpha, beta):
    teacher = _logits((3, 8), seed=19)
    student = _logits((3, 8), seed=20)
    teacher_masked = teacher.copy()
    student_masked = student.copy()
    teacher_masked[:, 2] = -np.inf
    student_masked[:, 2] = -np.inf

    def fn(s):
        return alpha_beta_divergence(teacher_masked, s, alpha, beta)

    value, (grad,) = value_and_grad(fn, student_masked)
    without_column = keras.ops.convert_to_numpy(
        alpha_beta_divergence(
            np.delete(teacher, 2, axis=1), np.delete(student, 2, axis=1), alpha, beta
        )
    )

    np.testing.assert_allclose(value, without_column, rtol=1e-5)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[:, 2], 0.0)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.2, 0.7), (2.0, -0.5), (0.5, 0.5)])
def test_teacher_minus_inf_equals_limit_when_finite(alpha, beta):
    teacher = _logits((3, 6), seed=21)
    student = _logits((3, 6), seed=22)
    teacher[:, 0] = -np.inf
    very_negative = teacher.copy()
    very_negative[:, 0] = -500.0

    value, (grad,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher, s, alpha, beta), student
    )
    expected = reference.ab_divergence_mpmath(very_negative, student, alpha, beta)
    _, (grad_finite,) = value_and_grad(
        lambda s: alpha_beta_divergence(very_negative, s, alpha, beta), student
    )

    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad, grad_finite, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha,beta", [(0.0, 1.0), (-0.5, 1.0), (0.5, -0.7), (0.0, 0.0)])
def test_teacher_minus_inf_infinite_no_nan(alpha, beta):
    teacher = _logits((2, 5), seed=23)
    student = _logits((2, 5), seed=24)
    teacher[:, 1] = -np.inf

    value, (grad,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher, s, alpha, beta), student
    )

    np.testing.assert_array_equal(value, np.inf)
    assert not np.any(np.isnan(grad))


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA_GRID)
def test_extreme_logits_have_no_nan(alpha, beta):
    teacher = np.array([[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, 1e4, 1e4]], dtype="float32")
    student = np.array([[-1e4, 1e4, 3.0, 0.0], [1e4, -1e4, -1e4, 1e4]], dtype="float32")

    value, (grad,) = value_and_grad(
        lambda s: alpha_beta_divergence(teacher, s, alpha, beta), student
    )
    expected = reference.ab_divergence_mpmath(teacher, student, alpha, beta)

    assert not np.any(np.isnan(value))
    finite = np.isfinite(expected) & (np.abs(expected) < 1e30)
    np.testing.assert_allclose(value[finite], expected[finite], rtol=1e-5)
    if np.all(np.isfinite(value)):
        assert not np.any(np.isnan(grad))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    teacher = _logits((4, 10), seed=25)
    student = _logits((4, 10), seed=26)
    teacher_half = keras.ops.cast(teacher, dtype)
    student_half = keras.ops.cast(student, dtype)
    rounded_teacher = keras.ops.convert_to_numpy(keras.ops.cast(teacher_half, "float32"))
    rounded_student = keras.ops.convert_to_numpy(keras.ops.cast(student_half, "float32"))

    value = alpha_beta_divergence(teacher_half, student_half, 0.2, 0.7)
    expected = reference.ab_divergence_mpmath(rounded_teacher, rounded_student, 0.2, 0.7)

    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), expected, rtol=1e-5)


def test_probabilities_match_logits():
    teacher = _logits((3, 5), seed=27)
    student = _logits((3, 5), seed=28)
    p = reference.softmax64(teacher).astype("float32")
    q = reference.softmax64(student).astype("float32")

    from_probs = alpha_beta_divergence(p, q, 0.3, 0.6, from_logits=False)
    from_logits = alpha_beta_divergence(teacher, student, 0.3, 0.6)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(from_probs),
        keras.ops.convert_to_numpy(from_logits),
        rtol=1e-5,
    )


def test_probabilities_with_zeros_have_finite_gradient():
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype="float32")
    q = np.array([[0.4, 0.6, 0.0], [0.1, 0.1, 0.8]], dtype="float32")

    value, (grad,) = value_and_grad(
        lambda y: alpha_beta_divergence(p, y, 0.5, 0.5, from_logits=False), q
    )

    expected = reference.ab_divergence_float64(p[:, :2], q[:, :2], 0.5, 0.5)
    np.testing.assert_allclose(value[0], expected[0], rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_axis_argument_moves_class_axis():
    teacher = _logits((2, 7, 3), seed=29)
    student = _logits((2, 7, 3), seed=30)

    along_axis_1 = alpha_beta_divergence(teacher, student, 0.2, 0.7, axis=1)
    moved = alpha_beta_divergence(
        np.moveaxis(teacher, 1, -1), np.moveaxis(student, 1, -1), 0.2, 0.7
    )

    assert tuple(along_axis_1.shape) == (2, 3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(along_axis_1),
        keras.ops.convert_to_numpy(moved),
        rtol=1e-6,
    )


def test_per_position_shape_for_sequences():
    teacher = _logits((2, 5, 13), seed=31)
    student = _logits((2, 5, 13), seed=32)
    value = alpha_beta_divergence(teacher, student, 0.2, 0.7)
    assert tuple(value.shape) == (2, 5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(alpha=math.nan, beta=0.5), "alpha must be a finite number, got alpha=nan"),
        (dict(alpha=0.5, beta=math.inf), "beta must be a finite number, got beta=inf"),
        (dict(alpha="x", beta=0.5), "alpha must be a finite number"),
        (dict(alpha=0.5, beta=0.5, temperature=0.0), "temperature must be a finite number > 0"),
        (dict(alpha=0.5, beta=0.5, temperature=-1.0), "temperature=-1.0"),
        (dict(alpha=0.5, beta=0.5, temperature=math.nan), "temperature must be"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    logits = _logits((2, 4), seed=33)
    with pytest.raises(ValueError, match=message):
        alpha_beta_divergence(logits, logits, **kwargs)
    with pytest.raises(ValueError, match=message):
        ABDivergence(**kwargs)


def test_mismatched_class_counts_raise():
    with pytest.raises(ValueError, match=r"same number of classes.*got 5.*and 4"):
        alpha_beta_divergence(_logits((2, 5), 0), _logits((2, 4), 1), 0.2, 0.7)


def test_mismatched_ranks_raise():
    with pytest.raises(ValueError, match="same rank"):
        alpha_beta_divergence(_logits((2, 3, 5), 0), _logits((2, 5), 1), 0.2, 0.7)


def test_loss_class_reduces_with_sample_weight():
    teacher = _logits((4, 6), seed=34)
    student = _logits((4, 6), seed=35)
    weights = np.array([1.0, 0.0, 2.0, 1.0], dtype="float32")
    per_row = reference.ab_divergence_mpmath(teacher, student, 0.2, 0.7)

    loss = ABDivergence(alpha=0.2, beta=0.7)
    value = float(keras.ops.convert_to_numpy(loss(teacher, student, sample_weight=weights)))

    # Keras' default reduction divides the weighted sum by the batch size.
    np.testing.assert_allclose(value, np.sum(weights * per_row) / 4, rtol=1e-5)


def test_loss_class_config_round_trip():
    loss = ABDivergence(alpha=0.3, beta=-0.2, temperature=2.0, reduction="sum", name="kd")
    restored = ABDivergence.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()

    restored_by_keras = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored_by_keras, ABDivergence)
    assert restored_by_keras.alpha == 0.3
    assert restored_by_keras.temperature == 2.0


def test_loss_class_is_exported_twice():
    assert keras_abkd.ABDivergence is keras_abkd.losses.ABDivergence


def test_offline_distillation_with_compile_and_save(tmp_path):
    # Teacher logits stored as targets: the loss works in plain compile/fit.
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    teacher_logits = _logits((64, 5), seed=36)
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)])
    student.compile(optimizer="adam", loss=ABDivergence(alpha=0.2, beta=0.7, temperature=2.0))

    before = student.evaluate(x, teacher_logits, verbose=0)
    student.fit(x, teacher_logits, epochs=3, batch_size=16, verbose=0)
    after = student.evaluate(x, teacher_logits, verbose=0)
    path = tmp_path / "student.keras"
    student.save(path)
    restored = keras.saving.load_model(path)

    assert after < before
    assert isinstance(restored.loss, ABDivergence)
    assert restored.loss.temperature == 2.0
    np.testing.assert_allclose(restored.evaluate(x, teacher_logits, verbose=0), after, rtol=1e-5)


def test_teacher_zero_probability_uses_limit():
    # KL(p || q) with p = (1, 0), q = (1/2, 1/2) is log 2; reverse KL is +inf.
    p = np.array([[1.0, 0.0]], dtype="float32")
    q = np.array([[0.5, 0.5]], dtype="float32")

    forward = alpha_beta_divergence(p, q, 1.0, 0.0, from_logits=False)
    reverse = alpha_beta_divergence(p, q, 0.0, 1.0, from_logits=False)

    np.testing.assert_allclose(keras.ops.convert_to_numpy(forward), [math.log(2.0)], rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reverse), [np.inf])
