"""Baseline divergences against float64 numpy references, on every backend."""

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd import losses
from keras_abkd.losses.adaptive_kl import head_tail_gaps
from tests.gradients import value_and_grad


# ---- float64 references, written from the formulas ----------------------


def _softmax64(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _kl64(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return np.sum(terms, axis=-1)


def _jsd64(p, q, beta):
    m = beta * p + (1 - beta) * q
    return beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)


def _akl_weights64(p, q, mu):
    gap = np.abs(p - q)
    head_weight = np.empty(p.shape[:-1])
    for index in np.ndindex(p.shape[:-1]):
        order = np.argsort(-p[index], kind="stable")
        mass_before = np.concatenate([[0.0], np.cumsum(p[index][order])[:-1]])
        head = order[mass_before < mu]
        g_head = gap[index][head].sum()
        g_total = gap[index].sum()
        head_weight[index] = g_head / g_total if g_total > 0 else 0.5
    return head_weight, 1.0 - head_weight


def _akl64(p, q, mu):
    head_weight, tail_weight = _akl_weights64(p, q, mu)
    return head_weight * _kl64(p, q) + tail_weight * _kl64(q, p)


def _ab64(p, q, alpha, beta):
    # The general formula, valid off the lines alpha, beta, alpha + beta = 0.
    total = alpha + beta
    terms = p**alpha * q**beta - alpha / total * p**total - beta / total * q**total
    return -np.sum(terms, axis=-1) / (alpha * beta)


REFERENCES = {
    "forward_kl": lambda p, q: _kl64(p, q),
    "reverse_kl": lambda p, q: _kl64(q, p),
    "alpha_divergence": lambda p, q: _ab64(p, q, 0.3, 0.7),
    "beta_divergence": lambda p, q: _ab64(p, q, 1.0, 0.6),
    "generalized_jsd": lambda p, q: _jsd64(p, q, 0.3),
    "skew_forward_kl": lambda p, q: _kl64(p, 0.1 * p + 0.9 * q),
    "skew_reverse_kl": lambda p, q: _kl64(q, 0.1 * q + 0.9 * p),
    "total_variation": lambda p, q: 0.5 * np.sum(np.abs(p - q), axis=-1),
    "adaptive_kl": lambda p, q: _akl64(p, q, 0.5),
}

# The op and loss class of each name, with the arguments of its reference.
OPS = {
    "forward_kl": (losses.forward_kl, losses.ForwardKL, {}),
    "reverse_kl": (losses.reverse_kl, losses.ReverseKL, {}),
    "alpha_divergence": (losses.alpha_divergence, losses.AlphaDivergence, {"alpha": 0.3}),
    "beta_divergence": (losses.beta_divergence, losses.BetaDivergence, {"beta": 0.6}),
    "generalized_jsd": (losses.generalized_jsd, losses.GeneralizedJSD, {"beta": 0.3}),
    "skew_forward_kl": (losses.skew_forward_kl, losses.SkewForwardKL, {"skew": 0.1}),
    "skew_reverse_kl": (losses.skew_reverse_kl, losses.SkewReverseKL, {"skew": 0.1}),
    "total_variation": (losses.total_variation, losses.TotalVariation, {}),
    "adaptive_kl": (losses.adaptive_kl, losses.AdaptiveKL, {"mu": 0.5}),
}
NAMES = sorted(OPS)


def _logits(shape, seed, scale=2.0, dtype="float64"):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def _op(name, temperature=1.0):
    fn, _, kwargs = OPS[name]
    return lambda t, s: fn(t, s, temperature=temperature, **kwargs)


def _reference(name, teacher, student, temperature=1.0):
    return REFERENCES[name](_softmax64(teacher, temperature), _softmax64(student, temperature))


def _finite_difference(name, teacher, student, wrt, temperature=1.0, step=1e-6):
    args = [np.array(teacher, dtype=np.float64), np.array(student, dtype=np.float64)]
    grad = np.zeros_like(args[wrt])
    for index in np.ndindex(grad.shape):
        plus = [a.copy() for a in args]
        minus = [a.copy() for a in args]
        plus[wrt][index] += step
        minus[wrt][index] -= step
        row = index[:-1]
        f_plus = _reference(name, *plus, temperature)[row]
        f_minus = _reference(name, *minus, temperature)[row]
        grad[index] = (f_plus - f_minus) / (2 * step)
    return grad


def _for_each(cases, check):
    # One test runs every case, so a failure names the case that failed.
    for case in cases:
        arguments = case if isinstance(case, tuple) else (case,)
        try:
            check(*arguments)
        except AssertionError as error:
            raise AssertionError(f"case {case!r}: {error}") from error


# ---- values and gradients ------------------------------------------------


def test_value_matches_float64_reference():
    _for_each(NAMES, _check_value_matches_float64_reference)


def _check_value_matches_float64_reference(name):
    teacher = _logits((3, 7), seed=1)
    student = _logits((3, 7), seed=2)

    value64 = keras.ops.convert_to_numpy(_op(name)(teacher, student))
    value32 = keras.ops.convert_to_numpy(
        _op(name)(teacher.astype("float32"), student.astype("float32"))
    )
    expected = _reference(name, teacher, student)

    assert value64.dtype == np.float64
    assert value32.dtype == np.float32
    # The alpha-beta kernel sums a truncated series: about 1e-8 relative in float64.
    np.testing.assert_allclose(value64, expected, rtol=1e-7)
    np.testing.assert_allclose(value32, expected, rtol=2e-5)
    assert np.all(value64 > 0.0)


# AKL treats its weights as constants, so its gradient is not the derivative
# of its value; test_adaptive_kl_gradient_treats_weights_as_constants covers it.
def test_gradients_match_finite_differences():
    names = [name for name in NAMES if name != "adaptive_kl"]
    _for_each(names, _check_gradients_match_finite_differences)


def _check_gradients_match_finite_differences(name):
    temperature = 2.5
    teacher = _logits((3, 7), seed=3)
    student = _logits((3, 7), seed=4)

    _, (grad_teacher, grad_student) = value_and_grad(
        _op(name, temperature), teacher, student, argnums=(0, 1)
    )

    expected_student = _finite_difference(name, teacher, student, 1, temperature)
    expected_teacher = _finite_difference(name, teacher, student, 0, temperature)
    np.testing.assert_allclose(grad_student, expected_student, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(grad_teacher, expected_teacher, rtol=1e-5, atol=1e-8)


def test_zero_when_student_equals_teacher():
    _for_each(NAMES, _check_zero_when_student_equals_teacher)


def _check_zero_when_student_equals_teacher(name):
    logits = _logits((3, 7), seed=5, dtype="float32")

    value, (grad_student,) = value_and_grad(_op(name), logits, logits, argnums=(1,))

    np.testing.assert_allclose(value, np.zeros(3), atol=1e-6)
    np.testing.assert_allclose(grad_student, np.zeros((3, 7)), atol=1e-6)


# ---- equality with the alpha-beta divergence -----------------------------


def test_matches_alpha_beta_divergence():
    cases = [
        ("forward_kl", 1.0, 0.0),
        ("reverse_kl", 0.0, 1.0),
        ("alpha_divergence", 0.3, 0.7),
        ("beta_divergence", 1.0, 0.6),
    ]
    _for_each(cases, _check_matches_alpha_beta_divergence)


def _check_matches_alpha_beta_divergence(name, alpha, beta):
    teacher = _logits((3, 7), seed=8, dtype="float32")
    student = _logits((3, 7), seed=9, dtype="float32")

    def ab(t, s):
        return losses.alpha_beta_divergence(t, s, alpha, beta, temperature=1.7)

    value, grads = value_and_grad(_op(name, 1.7), teacher, student, argnums=(0, 1))
    ab_value, ab_grads = value_and_grad(ab, teacher, student, argnums=(0, 1))

    np.testing.assert_allclose(value, ab_value, rtol=1e-6)
    np.testing.assert_allclose(grads[0], ab_grads[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1], ab_grads[1], rtol=1e-5, atol=1e-7)


def test_beta_divergence_special_cases():
    teacher = _logits((3, 7), seed=14)
    student = _logits((3, 7), seed=15)
    p, q = _softmax64(teacher), _softmax64(student)

    squared = keras.ops.convert_to_numpy(losses.beta_divergence(teacher, student, 1.0))
    itakura_saito = keras.ops.convert_to_numpy(losses.beta_divergence(teacher, student, -1.0))

    np.testing.assert_allclose(squared, 0.5 * np.sum((p - q) ** 2, axis=-1), rtol=1e-7)
    np.testing.assert_allclose(
        itakura_saito, np.sum(p / q - np.log(p / q) - 1.0, axis=-1), rtol=1e-7
    )


def test_alpha_divergence_half_is_hellinger():
    teacher = _logits((3, 7), seed=16)
    student = _logits((3, 7), seed=17)
    p, q = _softmax64(teacher), _softmax64(student)

    value = keras.ops.convert_to_numpy(losses.alpha_divergence(teacher, student, 0.5))

    np.testing.assert_allclose(
        value, 2.0 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2, axis=-1), rtol=1e-7
    )


# ---- limits of the skew and Jensen-Shannon divergences -------------------


def test_skew_zero_is_plain_kl():
    teacher = _logits((3, 7), seed=18)
    student = _logits((3, 7), seed=19)

    skew_forward = losses.skew_forward_kl(teacher, student, skew=0.0)
    skew_reverse = losses.skew_reverse_kl(teacher, student, skew=0.0)

    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(skew_forward),
        keras.ops.convert_to_numpy(losses.forward_kl(teacher, student)),
        rtol=1e-7,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(skew_reverse),
        keras.ops.convert_to_numpy(losses.reverse_kl(teacher, student)),
        rtol=1e-7,
    )


def test_skew_kl_bounded_by_log_inverse_skew():
    teacher = _logits((3, 7), seed=20, scale=20.0)
    student = -teacher

    value = keras.ops.convert_to_numpy(losses.skew_forward_kl(teacher, student, skew=0.1))

    # The kernel is accurate to about 1e-8 relative, see the value test.
    assert np.all(value <= np.log(10.0) * (1 + 1e-7))
    assert np.all(value > 0.5 * np.log(10.0))


def test_jsd_endpoints_tend_to_zero_not_kl():
    teacher = _logits((3, 7), seed=21)
    student = _logits((3, 7), seed=22)
    forward = keras.ops.convert_to_numpy(losses.forward_kl(teacher, student))
    reverse = keras.ops.convert_to_numpy(losses.reverse_kl(teacher, student))

    for eps in (1e-4, 1e-6):
        near_zero = keras.ops.convert_to_numpy(losses.generalized_jsd(teacher, student, eps))
        near_one = keras.ops.convert_to_numpy(losses.generalized_jsd(teacher, student, 1 - eps))
        assert np.all(near_zero < 10 * eps * forward)
        assert np.all(near_one < 10 * eps * reverse)
        # Divided by the weight of the dominant term, the value tends to KL.
        np.testing.assert_allclose(near_zero / eps, forward, rtol=100 * eps)
        np.testing.assert_allclose(near_one / eps, reverse, rtol=100 * eps)


def test_jsd_half_bounded_by_log_two():
    teacher = _logits((3, 7), seed=23, scale=30.0)

    value = keras.ops.convert_to_numpy(losses.generalized_jsd(teacher, -teacher, 0.5))

    assert np.all(value <= np.log(2.0) + 1e-12)
    np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)


# ---- total variation and adaptive KL -------------------------------------


def test_total_variation_subgradient_zero_at_ties():
    teacher = np.array([[1.0, 2.0, 3.0, 0.5]])
    student = np.array([[1.0, 2.0, 3.0, 0.5]])

    _, (grad_student,) = value_and_grad(losses.total_variation, teacher, student, argnums=(1,))

    np.testing.assert_array_equal(grad_student, np.zeros_like(student))


def test_adaptive_kl_head_is_smallest_prefix_reaching_mu():
    # Teacher (0.4, 0.3, 0.2, 0.1): class 0 alone reaches mu=0.39, and
    # classes 0 and 1 are needed to reach mu=0.41.
    p = np.array([[0.4, 0.3, 0.2, 0.1]])
    q = np.array([[0.1, 0.2, 0.3, 0.4]])
    log_p, log_q = keras.ops.log(p), keras.ops.log(q)

    g_head_low, g_tail_low = head_tail_gaps(log_p, log_q, 0.39)
    g_head_high, g_tail_high = head_tail_gaps(log_p, log_q, 0.41)

    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_head_low), [0.3], rtol=1e-12)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_tail_low), [0.5], rtol=1e-12)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_head_high), [0.4], rtol=1e-12)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_tail_high), [0.4], rtol=1e-12)


def test_adaptive_kl_gradient_treats_weights_as_constants():
    teacher = _logits((3, 7), seed=24)
    student = _logits((3, 7), seed=25)
    head_weight, tail_weight = _akl_weights64(_softmax64(teacher), _softmax64(student), 0.5)
    head_weight, tail_weight = head_weight[:, None], tail_weight[:, None]

    _, grads = value_and_grad(losses.adaptive_kl, teacher, student, argnums=(0, 1))
    _, forward_grads = value_and_grad(losses.forward_kl, teacher, student, argnums=(0, 1))
    _, reverse_grads = value_and_grad(losses.reverse_kl, teacher, student, argnums=(0, 1))

    for grad, forward_grad, reverse_grad in zip(grads, forward_grads, reverse_grads):
        expected = head_weight * forward_grad + tail_weight * reverse_grad
        np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-12)


def test_adaptive_kl_zero_weight_removes_infinite_term():
    # The head (class 0) has no gap, so forward KL gets weight 0, although it
    # is +inf because the student gives class 2 no probability. Classes 3 to
    # 6 are zero on both sides, and the rows repeat to reuse the (3, 7) shape.
    p = np.tile([[0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0]], (3, 1))
    q = np.tile([[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]], (3, 1))

    value, (grad_student,) = value_and_grad(
        lambda t, s: losses.adaptive_kl(t, s, from_logits=False), p, q, argnums=(1,)
    )

    np.testing.assert_allclose(value, _kl64(q, p), rtol=1e-7)
    assert np.all(np.isfinite(grad_student))


# ---- numerics: -inf columns, extreme logits, bfloat16 --------------------


def _extreme_pair():
    teacher = _logits((3, 7), seed=26, dtype="float32")
    student = _logits((3, 7), seed=27, dtype="float32")
    teacher[0, 2] = student[0, 2] = -np.inf  # a class masked on both sides
    teacher[0, 0] = 1e4
    student[1, 4] = -np.inf  # a class only the teacher has
    student[1, 1] = -1e4
    teacher[2, 5] = -np.inf  # a class only the student has
    student[2, 3] = 1e4
    return teacher, student


def test_no_nan_for_masked_and_extreme_logits():
    _for_each(NAMES, _check_no_nan_for_masked_and_extreme_logits)


def _check_no_nan_for_masked_and_extreme_logits(name):
    teacher, student = _extreme_pair()

    value, grads = value_and_grad(_op(name), teacher, student, argnums=(0, 1))

    assert not np.any(np.isnan(value))
    assert np.all(np.isfinite(grads[0]))
    assert np.all(np.isfinite(grads[1]))
    # A class masked on both sides changes nothing.
    unmasked = _op(name)(teacher[:1, [0, 1, 3, 4, 5, 6]], student[:1, [0, 1, 3, 4, 5, 6]])
    np.testing.assert_allclose(value[0], keras.ops.convert_to_numpy(unmasked)[0], rtol=1e-6)


def test_bfloat16_inputs_computed_in_float32():
    _for_each(NAMES, _check_bfloat16_inputs_computed_in_float32)


def _check_bfloat16_inputs_computed_in_float32(name):
    teacher = _logits((3, 7), seed=28, dtype="float32")
    student = _logits((3, 7), seed=29, dtype="float32")
    rounded_teacher = keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.cast(teacher, "bfloat16"), "float32")
    )
    rounded_student = keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.cast(student, "bfloat16"), "float32")
    )

    def on_bfloat16(t, s):
        value = _op(name)(keras.ops.cast(t, "bfloat16"), keras.ops.cast(s, "bfloat16"))
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        return value

    value, grads = value_and_grad(on_bfloat16, teacher, student, argnums=(0, 1))

    np.testing.assert_allclose(
        value, _reference(name, rounded_teacher, rounded_student), rtol=2e-5
    )
    assert np.all(np.isfinite(grads[0]))
    assert np.all(np.isfinite(grads[1]))


# ---- the Loss classes ----------------------------------------------------


def test_loss_class_weights_and_round_trips():
    _for_each(NAMES, _check_loss_class_weights_and_round_trips)


def _check_loss_class_weights_and_round_trips(name):
    fn, loss_class, kwargs = OPS[name]
    teacher = _logits((3, 7), seed=30, dtype="float32")
    student = _logits((3, 7), seed=31, dtype="float32")
    weight = np.array([1.0, 0.0, 2.5], dtype="float32")
    loss = loss_class(temperature=2.0, **kwargs)

    value = keras.ops.convert_to_numpy(loss(teacher, student, sample_weight=weight))
    per_position = keras.ops.convert_to_numpy(fn(teacher, student, temperature=2.0, **kwargs))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    restored_value = keras.ops.convert_to_numpy(restored(teacher, student, sample_weight=weight))

    np.testing.assert_allclose(value, np.sum(weight * per_position) / weight.size, rtol=1e-5)
    assert type(restored) is loss_class
    assert restored.get_config() == loss.get_config()
    np.testing.assert_allclose(restored_value, value, rtol=1e-6)


# The shared input handling, through each of the four code paths: the
# alpha-beta kernel, the log-space mixture, the sort of AKL and plain ops.
def test_class_axis_and_probabilities():
    names = ["beta_divergence", "generalized_jsd", "adaptive_kl", "total_variation"]
    _for_each(names, _check_class_axis_and_probabilities)


def _check_class_axis_and_probabilities(name):
    fn, _, kwargs = OPS[name]
    teacher = _logits((1, 7, 3), seed=32)
    student = _logits((1, 7, 3), seed=33)
    expected = keras.ops.convert_to_numpy(
        fn(np.moveaxis(teacher, 1, -1), np.moveaxis(student, 1, -1), **kwargs)
    )

    on_axis = fn(teacher, student, axis=1, **kwargs)
    from_probabilities = fn(
        _softmax64(np.moveaxis(teacher, 1, -1)),
        _softmax64(np.moveaxis(student, 1, -1)),
        from_logits=False,
        **kwargs,
    )

    np.testing.assert_allclose(keras.ops.convert_to_numpy(on_axis), expected, rtol=1e-7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(from_probabilities), expected, rtol=1e-7
    )


def test_compiled_model_saves_and_loads_loss(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    model.compile(optimizer="sgd", loss=losses.SkewReverseKL(skew=0.2, temperature=2.0))
    model.fit(np.ones((4, 4)), np.ones((4, 5)), epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")

    model.save(path)
    restored = keras.saving.load_model(path)

    assert isinstance(restored.loss, losses.SkewReverseKL)
    assert restored.loss.skew == 0.2
    assert restored.loss.temperature == 2.0


# ---- argument checks -----------------------------------------------------


INVALID_ARGUMENTS = [
    (lambda: losses.SkewForwardKL(skew=1.0), r"skew must be in \[0, 1\), got skew=1.0"),
    (lambda: losses.SkewReverseKL(skew=-0.1), r"skew must be in \[0, 1\)"),
    (lambda: losses.SkewForwardKL(skew=float("nan")), "skew must be a finite number"),
    (lambda: losses.GeneralizedJSD(beta=0.0), r"beta must be in \(0, 1\), got beta=0.0"),
    (lambda: losses.GeneralizedJSD(beta=1.0), "or use ForwardKL or ReverseKL"),
    (lambda: losses.AdaptiveKL(mu=0.0), r"mu must be in \(0, 1\), got mu=0.0"),
    (lambda: losses.AdaptiveKL(mu=1.0), r"mu must be in \(0, 1\)"),
    (lambda: losses.AlphaDivergence(alpha=float("inf")), "alpha must be a finite number"),
    (lambda: losses.BetaDivergence(beta="x"), "beta must be a finite number"),
    (lambda: losses.ForwardKL(temperature=0.0), "temperature must be"),
    (lambda: losses.skew_forward_kl([[1.0, 2.0]], [[1.0, 2.0]], skew=2.0), "skew must be in"),
    (lambda: losses.adaptive_kl([[1.0, 2.0]], [[1.0, 2.0]], mu=1.5), "mu must be in"),
    (lambda: losses.generalized_jsd([[1.0, 2.0]], [[1.0, 2.0]], beta=-1), "beta must be in"),
]


def test_invalid_arguments_raise():
    for make, match in INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            make()


def test_mismatched_class_counts_raise():
    with pytest.raises(ValueError, match="same number of classes"):
        losses.total_variation(np.zeros((2, 5)), np.zeros((2, 4)))


# ---- names ---------------------------------------------------------------


def test_registry_knows_every_baseline():
    for name in NAMES + ["ab_divergence"]:
        assert name in losses.names()
        assert isinstance(losses.get(name), keras.losses.Loss)
    assert isinstance(losses.get("reverse_kl"), losses.ReverseKL)


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="Valid names: ab_divergence, adaptive_kl"):
        losses.get("kl")


def test_distiller_accepts_baseline_name():
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])

    distiller = keras_abkd.Distiller(teacher, student, distillation_loss="reverse_kl")

    assert isinstance(distiller.distillation_loss, keras_abkd.ReverseKL)
