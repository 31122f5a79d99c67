"""Chunk bounds and the few steps where backends differ in memory use.

The divergence itself is written once in `keras.ops`. Only two steps have a
backend-specific path, both for PyTorch, where tensors can be written in
place: gathering per-chunk gradients into one tensor, and scaling the stored
gradient by the upstream gradient. The `keras.ops` path is the reference and
is what the other backends run.
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
    """Whether a gradient with respect to `tensor` may be requested.

    Only PyTorch records this on the tensor. Elsewhere the answer is True, and
    under `jax.jit` XLA removes the gradient computation if nothing uses it.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.is_grad_enabled() and tensor.requires_grad
    return True


def concatenate_rows(chunks):
    """Stack `[rows, classes]` chunks along the first axis.

    PyTorch writes each chunk into one preallocated tensor, so the peak is the
    result plus one chunk. `ops.concatenate` holds the chunks and the result
    at once on eager backends.
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


def scale_rows(gradient, upstream):
    """Multiply `[rows, classes]` by a per-row `upstream` gradient.

    PyTorch scales `gradient` in place, which is safe because the caller owns
    it and drops it afterwards.
    """
    upstream = ops.expand_dims(ops.cast(upstream, gradient.dtype), axis=-1)
    if keras.backend.backend() == "torch":
        return gradient.mul_(upstream)
    return gradient * upstream
