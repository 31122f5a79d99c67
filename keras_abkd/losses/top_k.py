"""Top-k teacher targets: the packed format and the bucketed distributions.

A teacher position is stored as its `k` largest logits, their class ids and
one tail logit, packed along the last axis into a float tensor
`[..., 2k + 1]`:

```
[z_1, ..., z_k, id_1, ..., id_k, t]
t = T * logsumexp_{j not in ids}(z_j / T)
```

where `z` are the teacher logits, `T` is the temperature the targets were
computed at, and `t` is `-inf` when the ids cover every class. The ids are
stored as floats, which is exact for ids below 2^24 in float32.

A divergence between a dense student and such targets is computed over
`k + 1` buckets: the `k` teacher classes, and one tail bucket that contains the
mass of every other class. The teacher's buckets are
`softmax([z_1, ..., z_k, t] / T)`, which are exactly its probabilities at
temperature `T` on the top-k classes and its remaining mass. The student's
buckets are formed from its own logits `y` in the same way, with the tail
logit `T * logsumexp_{j not in ids}(y_j / T)` computed from the logits left
out, not as `1 - sum` of the top-k probabilities. When `k` equals the number
of classes the tail bucket is empty on both sides and the divergence equals
the dense one.
"""

import math
import numbers

from keras import ops

from keras_abkd.losses import validation

# Largest class id that a float32 stores exactly.
MAX_EXACT_FLOAT32_ID = 2**24


def check_k(k, classes):
    """Return `k` as an int in `[1, classes]`, or raise `ValueError`."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(
            f"k must be a positive integer, got k={k!r}. Pass the number of "
            "teacher classes to keep per position, such as k=32."
        )
    if classes is not None and k > classes:
        raise ValueError(
            f"k={k} is larger than the number of classes ({classes}). Pass "
            f"k <= {classes}; k={classes} keeps the full distribution."
        )
    return int(k)


def _safe_masked_logsumexp(scaled, keep):
    """Compute `logsumexp` of `scaled` over the entries where `keep` is True.

    Rows with no kept entry (or only `-inf` ones) give `-inf` with a zero,
    finite gradient.
    """
    neg_inf = ops.full_like(scaled, -math.inf)
    masked = ops.where(keep, scaled, neg_inf)
    row_max = ops.max(masked, axis=-1, keepdims=True)
    # The shift cancels in the value, so holding it constant keeps the
    # gradient exact. A row of -inf gets the finite shift 0.
    shift = ops.stop_gradient(
        ops.where(ops.isfinite(row_max), row_max, ops.zeros_like(row_max))
    )
    total = ops.sum(ops.exp(masked - shift), axis=-1)
    has_mass = ops.greater(total, 0.0)
    safe_total = ops.where(has_mass, total, ops.ones_like(total))
    value = ops.log(safe_total) + ops.squeeze(shift, axis=-1)
    return ops.where(has_mass, value, ops.full_like(value, -math.inf))


def remaining_logit(logits, ids, temperature=1.0):
    """Compute the tail logit `T * logsumexp_{j not in ids}(logits_j / T)`.

    Args:
        logits: Float tensor `[..., classes]`.
        ids: Integer tensor `[..., k]` of distinct class ids in
            `[0, classes)`.
        temperature: Positive float `T`.

    Returns:
        Tensor `[...]`, `-inf` where `ids` covers every class.
    """
    classes = ops.shape(logits)[-1]
    k = ops.shape(ids)[-1]
    batch_shape = ops.shape(logits)[:-1]
    flat_logits = ops.reshape(logits, (-1, classes))
    flat_ids = ops.reshape(ops.cast(ids, "int32"), (-1,))

    # A 2-D scatter of [position, id] pairs builds the mask of the top-k
    # classes in memory of the logits' size, where a one-hot of the ids would
    # need k times that.
    positions = ops.shape(flat_logits)[0]
    rows = ops.repeat(ops.arange(positions, dtype="int32"), k)
    indices = ops.stack([rows, flat_ids], axis=-1)
    in_top_k = ops.scatter_update(
        ops.zeros_like(flat_logits),
        indices,
        ops.ones((ops.shape(indices)[0],), dtype=flat_logits.dtype),
    )
    keep = ops.less(ops.stop_gradient(in_top_k), 0.5)

    scaled = flat_logits if temperature == 1.0 else flat_logits / temperature
    tail = _safe_masked_logsumexp(scaled, keep)
    if temperature != 1.0:
        tail = tail * temperature
    return ops.reshape(tail, batch_shape)


def top_k_with_remainder(logits, k, temperature=1.0):
    """Return the `k` largest logits, their ids and the tail logit.

    Args:
        logits: Float tensor `[..., classes]` of teacher logits.
        k: Integer in `[1, classes]`.
        temperature: Positive float at which the tail logit is computed.

    Returns:
        `(values, ids, tail)`: `values` `[..., k]` in descending order, in
        float32 (float64 for float64 inputs), `ids` int32 `[..., k]`, and
        `tail` `[...]`, see `remaining_logit`.
    """
    temperature = validation.check_temperature(temperature)
    logits = ops.convert_to_tensor(logits)
    classes = logits.shape[-1]
    k = check_k(k, classes)
    logits = ops.cast(logits, validation.compute_dtype(logits))

    values, ids = ops.top_k(logits, k, sorted=True)
    ids = ops.cast(ids, "int32")
    tail = remaining_logit(logits, ids, temperature)
    return values, ids, tail


def pack_top_k_targets(values, ids, tail, dtype="float32"):
    """Pack top-k logits, ids and tail logits into one `[..., 2k + 1]` tensor.

    Args:
        values: Float tensor `[..., k]` of teacher logits.
        ids: Integer tensor `[..., k]` of their class ids, below 2^24.
        tail: Float tensor `[...]` of tail logits.
        dtype: Float dtype of the result, `"float32"` or `"float64"`.

    Returns:
        Tensor `[..., 2k + 1]` in `dtype`.
    """
    values = ops.cast(values, dtype)
    ids = ops.cast(ids, dtype)
    tail = ops.expand_dims(ops.cast(tail, dtype), axis=-1)
    return ops.concatenate([values, ids, tail], axis=-1)


def top_k_targets(logits, k, temperature=1.0):
    """Compute packed top-k targets `[..., 2k + 1]` from dense teacher logits.

    Args:
        logits: Float tensor `[..., classes]` of teacher logits.
        k: Integer in `[1, classes]`.
        temperature: Positive float at which the tail logit is computed. Use
            the temperature of the divergence that will read the targets.

    Returns:
        Float32 tensor `[..., 2k + 1]` (float64 for float64 logits), see
        the module docstring for the layout.

    Example:

    >>> targets = top_k_targets([[3.0, 1.0, 0.5, -1.0]], k=2)
    >>> targets.shape
    (1, 5)
    """
    logits = ops.convert_to_tensor(logits)
    if logits.shape[-1] is not None and logits.shape[-1] > MAX_EXACT_FLOAT32_ID:
        raise ValueError(
            f"{logits.shape[-1]} classes have ids above 2^24, which float32 "
            "does not store exactly. Packed top-k targets support at most "
            f"{MAX_EXACT_FLOAT32_ID} classes."
        )
    values, ids, tail = top_k_with_remainder(logits, k, temperature)
    return pack_top_k_targets(values, ids, tail, dtype=values.dtype)


def split_top_k_targets(targets):
    """Split packed targets `[..., 2k + 1]` into `(values, ids, tail)`.

    Returns:
        `values` `[..., k]`, int32 `ids` `[..., k]` and `tail` `[..., 1]`.
    """
    width = targets.shape[-1]
    if width is None or width < 3 or width % 2 != 1:
        raise ValueError(
            "Packed top-k targets have an odd last axis of size 2k + 1 >= 3 "
            f"(k logits, k ids, one tail logit), got shape "
            f"{tuple(targets.shape)}. Build them with top_k_targets or read "
            "them from a teacher cache."
        )
    k = (width - 1) // 2
    values = targets[..., :k]
    ids = ops.cast(ops.round(ops.stop_gradient(targets[..., k : 2 * k])), "int32")
    tail = targets[..., 2 * k :]
    return values, ids, tail


def bucket_logits(y_true, y_pred, temperature=1.0, axis=-1):
    """Turn packed teacher targets and dense student logits into bucket logits.

    Both results have `k + 1` entries along the class axis, moved last: the
    `k` teacher classes in the targets' order, then the tail bucket. Their
    softmax at temperature `T` is the bucketed teacher and student
    distribution (see the module docstring), so any divergence of two logit
    tensors applies to them unchanged.

    Args:
        y_true: Packed targets `[..., 2k + 1, ...]`, see `top_k_targets`.
        y_pred: Student logits `[..., classes, ...]` with the class axis at
            the same position as the packed axis of `y_true`.
        temperature: Positive float `T` of the divergence. The teacher's
            tail is exact only at the temperature the targets were computed
            at.
        axis: The class axis. Defaults to -1.

    Returns:
        `(teacher_buckets, student_buckets)`, two float tensors
        `[..., k + 1]` in float32 (float64 when an input is float64).
    """
    temperature = validation.check_temperature(temperature)
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    rank = len(y_pred.shape)
    if len(y_true.shape) != rank or rank == 0 or not -rank <= axis < rank:
        raise ValueError(
            "Packed top-k targets and student logits must have the same rank "
            f"and contain axis={axis}, got y_true.shape={tuple(y_true.shape)} "
            f"and y_pred.shape={tuple(y_pred.shape)}."
        )
    dtype = validation.compute_dtype(y_true, y_pred)
    y_true = ops.cast(y_true, dtype)
    y_pred = ops.cast(y_pred, dtype)
    if axis not in (-1, rank - 1):
        y_true = ops.moveaxis(y_true, axis, -1)
        y_pred = ops.moveaxis(y_pred, axis, -1)

    values, ids, teacher_tail = split_top_k_targets(y_true)
    classes = y_pred.shape[-1]
    check_k(values.shape[-1], classes)
    for true_dim, pred_dim in zip(y_true.shape[:-1], y_pred.shape[:-1]):
        if true_dim is not None and pred_dim is not None and true_dim != pred_dim:
            raise ValueError(
                "Packed top-k targets and student logits must agree on every "
                f"axis but the class axis, got y_true.shape="
                f"{tuple(y_true.shape)} and y_pred.shape={tuple(y_pred.shape)}."
            )

    student_top = ops.take_along_axis(y_pred, ids, axis=-1)
    student_tail = ops.expand_dims(remaining_logit(y_pred, ids, temperature), -1)
    teacher_buckets = ops.concatenate([values, teacher_tail], axis=-1)
    student_buckets = ops.concatenate([student_top, student_tail], axis=-1)
    return teacher_buckets, student_buckets
