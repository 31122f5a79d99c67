"""The compiled per-chunk kernel gives the op-by-op kernel's values and gradients."""

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd.losses import alpha_beta_divergence
from keras_abkd.losses import compilation
from tests.gradients import value_and_grad

# On the special lines, near them and away from them.
ALPHA_BETA = [(0.2, 0.7), (1.0, 0.0), (0.5, -0.5), (-2.0, -1.0)]


def _logits(seed, shape):
    rng = np.random.default_rng(seed)
    return (3.0 * rng.normal(size=shape)).astype("float32")


@pytest.mark.parametrize("alpha, beta", ALPHA_BETA)
def test_compiled_kernel_matches_op_by_op(alpha, beta):
    if keras.backend.backend() == "torch" and (alpha, beta) != ALPHA_BETA[0]:
        # Each (alpha, beta) costs torch.compile about 25 s per chunk shape.
        pytest.skip("PyTorch compiles one (alpha, beta) pair only, to save time")
    # 10 positions in chunks of 4: a full chunk shape and a remainder shape.
    teacher, student = _logits(0, (2, 5, 33)), _logits(1, (2, 5, 33))
    teacher[0, 0, 3] = -np.inf

    def divergence(jit_compile):
        def fn(y_true, y_pred):
            return alpha_beta_divergence(
                y_true, y_pred, alpha, beta, 2.0, chunk_size=4, jit_compile=jit_compile
            )

        return fn

    value, (grad_teacher, grad_student) = value_and_grad(
        divergence(True), teacher, student, argnums=(0, 1)
    )
    expected, (expected_teacher, expected_student) = value_and_grad(
        divergence(False), teacher, student, argnums=(0, 1)
    )

    # Fused code rounds differently: at (-2, -1) the gradients reach 1e7 and
    # differ from the op-by-op ones by 4e-5 relative.
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_teacher, expected_teacher, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_student, expected_student, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "jit_compile, traced, elements, backends",
    [
        (False, False, 1 << 30, ()),
        ("auto", False, 1 << 20, ("jax", "tensorflow")),
        ("auto", False, (1 << 20) - 1, ()),
        (True, False, 1, ("jax", "tensorflow", "torch")),
    ],
)
def test_should_compile_follows_the_mode(jit_compile, traced, elements, backends):
    tensor = keras.ops.zeros((2, 3))
    expected = keras.backend.backend() in backends

    assert compilation.should_compile(jit_compile, tensor, elements) == expected


def test_nothing_is_compiled_inside_a_traced_function():
    if keras.backend.backend() == "jax":
        import jax

        decisions = []

        def traced(x):
            decisions.append(compilation.should_compile(True, x, 1 << 30))
            return x

        jax.jit(traced)(np.zeros((2, 3), "float32"))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        decisions = []

        @tf.function
        def traced(x):
            decisions.append(compilation.should_compile(True, x, 1 << 30))
            return x

        traced(np.zeros((2, 3), "float32"))
    else:
        pytest.skip("torch.compile tracing is not exercised here: it takes too long")

    assert decisions == [False]


def test_jit_compile_is_validated_and_serialized():
    with pytest.raises(ValueError, match="jit_compile='yes'"):
        keras_abkd.ABDivergence(0.2, 0.7, jit_compile="yes")

    loss = keras_abkd.ABDivergence(0.2, 0.7, jit_compile=True)
    restored = keras_abkd.ABDivergence.from_config(loss.get_config())

    assert restored.jit_compile is True
