"""The alpha-beta divergence between teacher and student distributions."""

import math

import keras
from keras import ops

from keras_abkd.losses import alpha_beta_chunk
from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses import chunking
from keras_abkd.losses import compilation
from keras_abkd.losses import inputs
from keras_abkd.losses import validation


def _divergence_of_logits(
    teacher_logits,
    student_logits,
    alpha,
    beta,
    temperature,
    compute_dtype,
    chunk_size,
    jit_compile="auto",
):
    """Divergence of `[..., classes]` logits, chunk by chunk over positions.

    The forward pass computes the value and the gradient of each chunk
    together (see `alpha_beta_chunk`) and keeps only the gradient, cast to
    the input dtype, so the backward pass is one multiplication by the
    upstream gradient. Casting to `compute_dtype` and dividing by the
    temperature also happen per chunk, so bfloat16 logits never exist as a
    full float32 copy.
    """
    layout = alpha_beta_chunk.NodeLayout(alpha, beta)
    need_teacher = chunking.gradients_needed(teacher_logits)
    need_student = chunking.gradients_needed(student_logits)

    @ops.custom_gradient
    def divergence(teacher, student):
        batch_shape = tuple(teacher.shape[:-1])
        classes = teacher.shape[-1]
        if any(dim is None for dim in batch_shape):
            # NOTE: chunks need a static number of positions, so a traced
            # TensorFlow graph with an unknown batch size runs as one chunk.
            batch_shape = tuple(ops.shape(teacher)[:-1])
            positions = -1
        else:
            positions = math.prod(batch_shape)
        # A TensorFlow tape that watches the inputs would otherwise record
        # every operation below and keep its inputs until the tape is freed.
        teacher = ops.reshape(ops.stop_gradient(teacher), (positions, classes))
        student = ops.reshape(ops.stop_gradient(student), (positions, classes))

        def chunk_fn(teacher_chunk, student_chunk):
            return alpha_beta_chunk.chunk_value_and_gradients(
                teacher_chunk,
                student_chunk,
                alpha,
                beta,
                temperature,
                compute_dtype,
                teacher_gradient=need_teacher,
                student_gradient=need_student,
                layout=layout,
            )

        rows = positions if chunk_size is None else min(chunk_size, positions)
        if compilation.should_compile(jit_compile, teacher, rows * classes):
            key = (alpha, beta, temperature, compute_dtype, need_teacher, need_student)
            chunk_fn = compilation.compiled_kernel(key, chunk_fn)
        if positions == -1:
            value, grad_teacher, grad_student = chunk_fn(teacher, student)
        else:
            value, grad_teacher, grad_student = chunking.map_chunks(
                chunk_fn, teacher, student, chunk_size
            )
        value = ops.reshape(value, batch_shape)
        stored = {}
        if need_teacher:
            stored["teacher"] = grad_teacher
        if need_student:
            stored["student"] = grad_student
        del grad_teacher, grad_student
        consumed = set()

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.reshape(upstream, (-1,))
            results = []
            for name, logits in (("teacher", teacher), ("student", student)):
                if name in consumed:
                    raise RuntimeError(
                        "The alpha-beta divergence's gradient was requested "
                        "twice for one forward pass, but PyTorch scales the "
                        "stored gradient in place. Compute the loss again "
                        "before each backward pass."
                    )
                if name in stored:
                    gradient = chunking.scale_rows(stored[name], upstream)
                    if chunking.scales_in_place():
                        del stored[name]
                        consumed.add(name)
                elif keras.backend.backend() == "torch":
                    # PyTorch takes None for an input that needs no gradient,
                    # which saves a full-size array of zeros.
                    results.append(None)
                    continue
                else:
                    gradient = ops.zeros_like(logits)
                results.append(ops.reshape(gradient, batch_shape + (classes,)))
            return tuple(results)

        return value, grad

    return divergence(teacher_logits, student_logits)


def alpha_beta_divergence_from_scaled_logits(
    teacher_logits, student_logits, alpha, beta, chunk_size=None, jit_compile="auto"
):
    """Divergence along the last axis of two logit tensors already divided by T.

    The value and the gradient are computed together in one pass over the
    logits, from five transcendental functions per class, and the gradient
    is stored for the backward pass.

    Args:
        teacher_logits: Float tensor `[..., classes]`.
        student_logits: Float tensor of the same shape and dtype.
        alpha: Python float.
        beta: Python float.
        chunk_size: Optional number of positions (product of the leading
            axes) processed at a time. None processes all at once.
        jit_compile: `"auto"`, True or False, see `alpha_beta_divergence`.

    Returns:
        Tensor `[...]`.
    """
    chunk_size = chunking.check_chunk_size(chunk_size)
    jit_compile = compilation.check_jit_compile(jit_compile)
    compute_dtype = validation.compute_dtype(teacher_logits, student_logits)
    return _divergence_of_logits(
        teacher_logits,
        student_logits,
        alpha,
        beta,
        1.0,
        compute_dtype,
        chunk_size,
        jit_compile,
    )


@keras.saving.register_keras_serializable(package="keras_abkd")
def alpha_beta_divergence(
    y_true,
    y_pred,
    alpha,
    beta,
    temperature=1.0,
    from_logits=True,
    axis=-1,
    chunk_size=None,
    jit_compile="auto",
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
        chunk_size: Optional positive int. The positions (all axes but
            `axis`, flattened) are processed this many at a time, so the
            temporaries beyond the inputs and their gradient grow with
            `chunk_size` rather than with the number of positions: about
            ten `[chunk_size, classes]` float32 arrays under `jax.jit`, and
            more when operations run one by one. Under a
            `keras.distribution` that splits the positions across devices,
            it counts the rows of each device's block. The result does not
            depend on it, up to float32 rounding. None (the default)
            processes all positions at once.
        jit_compile: `"auto"` (the default), True or False. When the
            divergence runs outside a compiled function (PyTorch's default,
            or JAX and TensorFlow run eagerly), its per-chunk kernel of about
            150 elementwise operations can be compiled on its own, which
            fuses them into a few passes. `"auto"` compiles on JAX and
            TensorFlow for chunks of at least 2^20 values; True also
            compiles on PyTorch with `torch.compile`, whose first call takes
            tens of seconds per chunk shape; False never compiles. Inside
            `jax.jit`, `tf.function` or `torch.compile` it has no effect.

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
    chunk_size = chunking.check_chunk_size(chunk_size)
    jit_compile = compilation.check_jit_compile(jit_compile)
    if not from_logits:
        y_true, y_pred = inputs.prepare_logits(y_true, y_pred, temperature, from_logits, axis)
        return alpha_beta_divergence_from_scaled_logits(
            y_true, y_pred, alpha, beta, chunk_size=chunk_size, jit_compile=jit_compile
        )

    # Logits keep their dtype here: each chunk is cast and divided by the
    # temperature on its own, so no full-size float32 copy is made.
    y_true, y_pred = inputs.logits_with_class_axis_last(y_true, y_pred, axis)
    compute_dtype = validation.compute_dtype(y_true, y_pred)
    return _divergence_of_logits(
        y_true, y_pred, alpha, beta, temperature, compute_dtype, chunk_size, jit_compile
    )


@keras.saving.register_keras_serializable(package="keras_abkd")
class ABDivergence(DivergenceLoss):
    """Alpha-beta divergence between teacher and student outputs.

    `y_true` contains the teacher's logits and `y_pred` the student's, so the
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
        chunk_size: Optional positive int, the number of positions
            processed at a time, see `alpha_beta_divergence`. Defaults to
            None, all positions at once.
        jit_compile: `"auto"`, True or False: whether to compile the
            divergence's kernel when it runs outside a compiled function,
            see `alpha_beta_divergence`. Set True on PyTorch for large
            vocabularies. Defaults to `"auto"`.
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

    fn = alpha_beta_divergence
    _divergence_arguments = ("alpha", "beta", "chunk_size", "jit_compile")

    def __init__(
        self,
        alpha,
        beta,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        chunk_size=None,
        jit_compile="auto",
        reduction="sum_over_batch_size",
        name="ab_divergence",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.alpha, self.beta = validation.check_alpha_beta(alpha, beta)
        self.chunk_size = chunking.check_chunk_size(chunk_size)
        self.jit_compile = compilation.check_jit_compile(jit_compile)
