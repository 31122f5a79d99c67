"""The per-class gradient and concentration effects of `keras_abkd.analysis`."""

import keras
import numpy as np
import pytest

from keras_abkd import analysis
from keras_abkd import losses
from tests.gradients import value_and_grad

# A teacher peaked on class 0 and a flatter student whose top class is 1: the
# student overestimates the teacher's tail, so the largest error is there.
TEACHER = np.array([[4.0, 2.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0]])
STUDENT = np.array([[2.0, 2.4, 1.0, 0.8, 0.5, 0.2, 0.0, -0.3]])


def _softmax64(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _ab64_unnormalised(p, q, alpha, beta):
    # The divergence as a function of independent entries of p and q.
    if (alpha, beta) == (1.0, 0.0):
        return np.sum(p * np.log(p / q) - p + q, axis=-1)
    if (alpha, beta) == (0.0, 1.0):
        return np.sum(q * np.log(q / p) - q + p, axis=-1)
    total = alpha + beta
    terms = p**alpha * q**beta - alpha / total * p**total - beta / total * q**total
    return -np.sum(terms, axis=-1) / (alpha * beta)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _for_each(cases, check):
    # One test runs every case, so a failure names the case that failed.
    for case in cases:
        try:
            check(*case)
        except AssertionError as error:
            raise AssertionError(f"case {case!r}: {error}") from error


def _analyze(teacher, student, alpha, beta, temperature=1.0):
    return analysis.analyze_gradients(teacher, student, alpha, beta, temperature=temperature)


GRID = [(1.0, 0.0), (0.0, 1.0), (0.2, 0.7), (1.5, -0.5), (-0.4, 1.2)]


def test_logit_gradient_matches_finite_differences():
    _for_each(GRID, _check_logit_gradient_matches_finite_differences)


def _check_logit_gradient_matches_finite_differences(alpha, beta):
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(3, 7)) * 2.0
    student = rng.normal(size=(3, 7)) * 2.0
    temperature = 2.0
    step = 1e-6

    expected = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[index] += step
        minus[index] -= step
        p = _softmax64(teacher, temperature)
        f_plus = _ab64_unnormalised(p, _softmax64(plus, temperature), alpha, beta)
        f_minus = _ab64_unnormalised(p, _softmax64(minus, temperature), alpha, beta)
        expected[index] = (f_plus - f_minus)[index[0]] / (2 * step)

    result = _analyze(teacher, student, alpha, beta, temperature)

    np.testing.assert_allclose(_numpy(result.logit_gradient), expected, rtol=1e-6, atol=1e-8)


def test_logit_gradient_matches_loss_autodiff():
    cases = [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, -0.5), (0.2, 0.7)]
    _for_each(cases, _check_logit_gradient_matches_loss_autodiff)


def _check_logit_gradient_matches_loss_autodiff(alpha, beta):
    rng = np.random.default_rng(2)
    teacher = (rng.normal(size=(3, 7)) * 2.0).astype("float32")
    student = (rng.normal(size=(3, 7)) * 2.0).astype("float32")

    def loss(t, s):
        return losses.alpha_beta_divergence(t, s, alpha, beta, temperature=1.5)

    _, (expected,) = value_and_grad(loss, teacher, student, argnums=(1,))
    result = _analyze(teacher, student, alpha, beta, temperature=1.5)

    np.testing.assert_allclose(_numpy(result.logit_gradient), expected, rtol=1e-4, atol=1e-6)


def test_weights_and_concentrations_match_numpy():
    _for_each(GRID, _check_weights_and_concentrations_match_numpy)


def _check_weights_and_concentrations_match_numpy(alpha, beta):
    rng = np.random.default_rng(3)
    teacher = rng.normal(size=(4, 6)) * 2.0
    student = rng.normal(size=(4, 6)) * 2.0
    p, q = _softmax64(teacher), _softmax64(student)
    step = 1e-6

    # d D / d(log q_i) by finite differences in log q_i, entries independent.
    gradient = np.zeros_like(q)
    for index in np.ndindex(q.shape):
        plus, minus = q.copy(), q.copy()
        plus[index] *= np.exp(step)
        minus[index] *= np.exp(-step)
        row = index[0]
        difference = _ab64_unnormalised(p, plus, alpha, beta) - _ab64_unnormalised(
            p, minus, alpha, beta
        )
        gradient[index] = difference[row] / (2 * step)
    weights = np.abs(gradient) / np.sum(np.abs(gradient), axis=-1, keepdims=True)
    error = np.abs(np.log(p) - np.log(q))
    rows = np.arange(4)
    hardness = weights[rows, np.argmax(error, axis=-1)]
    confidence = weights[rows, np.argmax(q, axis=-1)]

    result = _analyze(teacher, student, alpha, beta)

    np.testing.assert_allclose(_numpy(result.log_probability_gradient), gradient, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(_numpy(result.update_weights), weights, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(_numpy(result.hardness_concentration), hardness, rtol=1e-6)
    np.testing.assert_allclose(_numpy(result.confidence_concentration), confidence, rtol=1e-6)


def test_confidence_concentration_grows_with_beta():
    alphas = [(-0.5,), (0.0,), (0.5,), (1.0,)]
    _for_each(alphas, _check_confidence_concentration_grows_with_beta)


def _check_confidence_concentration_grows_with_beta(alpha):
    # Guaranteed for every pair: check it on 30 random rows at once.
    rng = np.random.default_rng(4)
    teacher = rng.normal(size=(30, 8)) * 3.0
    student = rng.normal(size=(30, 8)) * 2.0
    betas = [-0.5, 0.0, 0.5, 1.0, 1.5]

    values = np.stack(
        [_numpy(_analyze(teacher, student, alpha, beta).confidence_concentration) for beta in betas]
    )

    assert np.all(np.diff(values, axis=0) >= -1e-12)
    assert np.all(values[-1] > values[0])


def test_hardness_concentration_falls_with_alpha():
    betas = [(0.0,), (0.5,), (1.0,)]
    _for_each(betas, _check_hardness_concentration_falls_with_alpha)


def _check_hardness_concentration_falls_with_alpha(beta):
    alphas = [-0.5, 0.0, 0.3, 0.6, 1.0, 1.5]

    values = [
        float(_numpy(_analyze(TEACHER, STUDENT, alpha, beta).hardness_concentration)[0])
        for alpha in alphas
    ]

    assert np.all(np.diff(values) < 0.0), values


def test_reverse_kl_concentrates_more_than_forward_kl():
    forward = _analyze(TEACHER, STUDENT, 1.0, 0.0)
    reverse = _analyze(TEACHER, STUDENT, 0.0, 1.0)

    assert _numpy(reverse.hardness_concentration)[0] > _numpy(forward.hardness_concentration)[0]
    assert _numpy(reverse.confidence_concentration)[0] > _numpy(forward.confidence_concentration)[0]


def test_no_update_when_student_equals_teacher():
    result = _analyze(TEACHER, TEACHER, 0.2, 0.7)

    np.testing.assert_allclose(_numpy(result.logit_gradient), np.zeros((1, 8)), atol=1e-7)
    np.testing.assert_array_equal(_numpy(result.update_weights), np.zeros((1, 8)))
    np.testing.assert_array_equal(_numpy(result.hardness_concentration), [0.0])
    np.testing.assert_array_equal(_numpy(result.confidence_concentration), [0.0])


def test_zero_probability_classes_stay_finite():
    teacher = np.array([[2.0, -np.inf, 0.5, -np.inf, 1.0]], dtype="float32")
    student = np.array([[1.0, 0.3, -np.inf, -np.inf, 1e4]], dtype="float32")

    for alpha, beta in [(1.0, 0.0), (0.0, 1.0), (0.2, 0.7)]:
        result = _analyze(teacher, student, alpha, beta)
        assert np.all(np.isfinite(_numpy(result.logit_gradient)))
        assert np.all(np.isfinite(_numpy(result.update_weights)))
        assert np.isfinite(_numpy(result.hardness_concentration)[0])


def test_probabilities_and_class_axis():
    p = _softmax64(TEACHER)
    q = _softmax64(STUDENT)

    from_logits = _analyze(TEACHER, STUDENT, 0.2, 0.7)
    from_probabilities = analysis.analyze_gradients(
        p.T[None], q.T[None], 0.2, 0.7, from_logits=False, axis=1
    )

    np.testing.assert_allclose(
        _numpy(from_probabilities.logit_gradient)[0, 0],
        _numpy(from_logits.logit_gradient)[0],
        rtol=1e-10,
        atol=1e-14,
    )


def test_invalid_alpha_raises():
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        analysis.analyze_gradients(TEACHER, STUDENT, float("nan"), 0.5)
