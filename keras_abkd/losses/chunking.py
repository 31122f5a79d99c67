"""Loops over chunks of positions, and the steps where backends differ in memory.

The divergence itself is written once in `keras.ops`, and `map_chunks` runs it
chunk by chunk. The Python loop with `concatenate_rows` is the reference. Two
backends get their own path:

- JAX under `jax.jit`: XLA merges a Python loop over static slices back into
  full-size operations, so the chunks no longer bound memory.
  `ops.fori_loop` with `ops.slice` and `ops.slice_update` keeps one chunk
  live, because XLA updates the loop's output buffers in place. Under a
  `keras.distribution` that splits the batch over devices, each step takes
  `chunk_size` rows from every device's block of positions, so `chunk_size`
  bounds the rows per device.
- PyTorch: tensors can be written in place, so per-chunk gradients are copied
  into one preallocated tensor and scaled by the upstream gradient in place.
"""

import numbers

import keras
from keras import ops


def check_chunk_size(chunk_size):
    """Return `chunk_size` as a positive int or None, or raise `ValueError`."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(
            f"chunk_size must be a positive integer or None, got "
            f"chunk_size={chunk_size!r}. Pass the number of positions per "
            "chunk, such as chunk_size=256, or None for a single chunk."
        )
    if chunk_size <= 0:
        raise ValueError(
            f"chunk_size must be a positive integer or None, got "
            f"chunk_size={chunk_size}. Pass the number of positions per "
            "chunk, such as chunk_size=256, or None for a single chunk."
        )
    return int(chunk_size)


def chunk_bounds(positions, chunk_size):
    """Return `(start, stop)` pairs covering `range(positions)` in order."""
    if chunk_size is None or chunk_size >= positions:
        return [(0, positions)]
    return [
        (start, min(start + chunk_size, positions))
        for start in range(0, positions, chunk_size)
    ]


def gradients_needed(tensor):
    """Return whether a gradient with respect to `tensor` may be requested.

    Only PyTorch records this on the tensor. Elsewhere this returns True, and
    under `jax.jit` XLA removes the gradient computation if nothing uses it.

    NOTE: with bfloat16 inputs, XLA (JAX 0.10.2, CPU) keeps the unused
    teacher gradient of the chunk loop, one full-size 16-bit buffer, per
    `memory_analysis()` of the compiled training step.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.is_grad_enabled() and tensor.requires_grad
    return True


def concatenate_rows(chunks):
    """Stack `[rows, classes]` chunks along the first axis.

    PyTorch writes each chunk into one preallocated tensor, so the peak is the
    result plus one chunk. `ops.concatenate` keeps the chunks and the result
    alive at once on eager backends.
    """
    if len(chunks) == 1:
        return chunks[0]
    if keras.backend.backend() == "torch":
        import torch

        rows = sum(chunk.shape[0] for chunk in chunks)
        first = chunks[0]
        result = torch.empty(
            (rows,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device
        )
        start = 0
        for index in range(len(chunks)):
            chunk = chunks[index]
            result[start : start + chunk.shape[0]].copy_(chunk)
            start += chunk.shape[0]
            chunks[index] = None
        return result
    return ops.concatenate(chunks, axis=0)


def scales_in_place():
    """Return whether `scale_rows` overwrites its `gradient` argument."""
    return keras.backend.backend() == "torch"


def scale_rows(gradient, upstream):
    """Multiply `[rows, classes]` by a per-row `upstream` gradient.

    PyTorch scales `gradient` in place, so the caller must not use it again.
    """
    upstream = ops.expand_dims(ops.cast(upstream, gradient.dtype), axis=-1)
    if keras.backend.backend() == "torch":
        return gradient.mul_(upstream)
    return gradient * upstream


def map_chunks(chunk_fn, teacher, student, chunk_size):
    """Apply `chunk_fn` to row chunks of two `[positions, classes]` tensors.

    Args:
        chunk_fn: Function of a teacher chunk and a student chunk returning
            `(value, grad_teacher, grad_student)`, with `value` of shape
            `[rows]` and each gradient `[rows, classes]` or None.
        teacher: Tensor `[positions, classes]` with a static first dimension.
        student: Tensor of the same shape.
        chunk_size: Positive int or None.

    Returns:
        `(value, grad_teacher, grad_student)` for all positions, in order.
    """
    positions = teacher.shape[0]
    bounds = chunk_bounds(positions, chunk_size)
    if len(bounds) > 1 and _is_traced_by_jax(teacher):
        return _map_chunks_in_loop(chunk_fn, teacher, student, chunk_size)

    results = [
        chunk_fn(teacher[start:stop], student[start:stop]) for start, stop in bounds
    ]
    columns = []
    for index in range(3):
        parts = [result[index] for result in results]
        columns.append(None if parts[0] is None else parts)
    del results
    return tuple(
        None if parts is None else concatenate_rows(parts) for parts in columns
    )


def _is_traced_by_jax(tensor):
    """Whether `tensor` is a JAX tracer, as under `jax.jit`.

    Eager JAX runs each operation on its own, so the Python loop already
    bounds memory there and avoids compiling a loop on every call.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(tensor, jax.core.Tracer)


def _to_bits(tensor):
    """View a 16-bit float tensor as uint16, and leave other tensors alone.

    XLA on CPU slices and updates 16-bit floats by converting the whole
    tensor to float32 first, which it then hoists out of the loop. Slicing
    and updating the bits as uint16 keeps each tensor at its own size.
    """
    import jax

    if tensor.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(tensor, "uint16")
    return tensor


def _from_bits(tensor, dtype):
    import jax

    if tensor.dtype != dtype:
        return jax.lax.bitcast_convert_type(tensor, dtype)
    return tensor


def _batch_groups(positions):
    """Return `(mesh, batch axis name, devices along it)`, or None.

    None means no active `keras.distribution` splits the batch into blocks
    of equal size.

    Under a `keras.distribution` with a batch axis, each device holds a
    contiguous block of the flattened positions, because the batch is the
    leading axis of the logits. Looping over the rows of each block, rather
    than over the global rows, keeps every chunk on its own device: a loop
    over a split axis would gather all positions onto every device.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or distribution.batch_dim_name is None:
        return None
    mesh = distribution.device_mesh
    groups = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    if groups <= 1 or positions % groups:
        return None
    return mesh, distribution.batch_dim_name, groups


def _map_chunks_in_loop(chunk_fn, teacher, student, chunk_size):
    """`map_chunks` with `ops.fori_loop`, writing each chunk into its output.

    The rows are viewed as `[groups, rows per group, classes]`, with one
    group per device along the batch axis of an active `keras.distribution`
    (one group otherwise), and each step handles `chunk_size` rows of every
    group.
    """
    import jax

    positions = teacher.shape[0]
    classes = teacher.shape[1]
    batch_split = _batch_groups(positions)
    groups = 1 if batch_split is None else batch_split[2]
    rows = positions // groups
    chunk_size = min(chunk_size, rows)
    full_chunks = rows // chunk_size

    def keep_groups_apart(tensor):
        """Pin axis 0 of a `[groups, rows, ...]` tensor to the batch axis."""
        if batch_split is None:
            return tensor
        mesh, batch_axis, _ = batch_split
        free = jax.sharding.PartitionSpec.UNCONSTRAINED
        spec = jax.sharding.PartitionSpec(batch_axis, None, *[free] * (tensor.ndim - 2))
        sharding = jax.sharding.NamedSharding(mesh.backend_mesh, spec)
        return jax.lax.with_sharding_constraint(tensor, sharding)

    def grouped(tensor):
        return keep_groups_apart(ops.reshape(tensor, (groups, rows, classes)))

    teacher_bits, student_bits = grouped(_to_bits(teacher)), grouped(_to_bits(student))

    def run_chunk(start, size):
        def read(bits, dtype):
            part = ops.slice(bits, [0, start, 0], [groups, size, classes])
            return _from_bits(ops.reshape(part, (groups * size, classes)), dtype)

        results = chunk_fn(
            read(teacher_bits, teacher.dtype), read(student_bits, student.dtype)
        )
        return [
            None
            if part is None
            else ops.reshape(part, (groups, size) + tuple(part.shape[1:]))
            for part in results
        ]

    def write(outputs, results, start):
        updated = []
        for output, part in zip(outputs, results):
            if part is None:
                updated.append(output)
                continue
            starts = [0, start] + [0] * (len(part.shape) - 2)
            updated.append(ops.slice_update(output, starts, _to_bits(part)))
        return updated

    # The first chunk runs outside the loop to fix the output dtypes. fori_loop
    # carries must be tensors, so absent gradients travel as empty arrays.
    first = run_chunk(0, chunk_size)
    dtypes = [None if part is None else part.dtype for part in first]
    outputs = []
    for part in first:
        if part is None:
            outputs.append(ops.zeros((0,)))
            continue
        shape = (groups, rows) + tuple(part.shape[2:])
        outputs.append(keep_groups_apart(ops.zeros(shape, dtype=_to_bits(part).dtype)))
    outputs = write(outputs, first, 0)

    def body(chunk, outputs):
        start = chunk * chunk_size
        return tuple(write(outputs, run_chunk(start, chunk_size), start))

    outputs = list(ops.fori_loop(1, full_chunks, body, tuple(outputs)))

    remainder_start = full_chunks * chunk_size
    if remainder_start < rows:
        results = run_chunk(remainder_start, rows - remainder_start)
        outputs = write(outputs, results, remainder_start)
    return tuple(
        None
        if dtype is None
        else _from_bits(
            ops.reshape(output, (positions,) + tuple(output.shape[2:])), dtype
        )
        for output, dtype in zip(outputs, dtypes)
    )
