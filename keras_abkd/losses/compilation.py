"""Compiling the per-chunk kernel when operations would otherwise run one by one.

The fused kernel in `alpha_beta_chunk` is about 150 elementwise operations.
Inside `jax.jit`, a `tf.function` or `torch.compile`, the compiler fuses them
into a few passes over the logits. Run op by op (PyTorch's default, JAX and
TensorFlow outside a compiled step), each operation reads and writes the
whole chunk, which made the divergence about 7 times slower than the plain
formula on PyTorch. Compiling the kernel alone restores the fused speed.

`jit_compile` follows `keras.Model.compile`:

- `"auto"`: compile on JAX and TensorFlow when a chunk has at least
  `AUTO_MIN_ELEMENTS` values, where compiling pays off; never on PyTorch,
  where `torch.compile` takes tens of seconds on first use.
- `True`: compile on every backend, whatever the size.
- `False`: never compile.

Nothing is compiled when the caller is already being traced or compiled.
"""

import keras

JIT_COMPILE_MODES = ("auto", True, False)

# Below this many values per chunk the op-by-op kernel takes milliseconds,
# less than compiling it for a new shape.
AUTO_MIN_ELEMENTS = 1 << 20

_compiled_kernels = {}


def check_jit_compile(jit_compile):
    """Return `jit_compile` if it is `"auto"`, True or False, else raise."""
    if isinstance(jit_compile, bool) or jit_compile == "auto":
        return jit_compile
    raise ValueError(
        f"jit_compile must be 'auto', True or False, got "
        f"jit_compile={jit_compile!r}. 'auto' compiles the divergence's "
        "kernel on JAX and TensorFlow for large inputs; True also compiles "
        "it with torch.compile on PyTorch."
    )


def should_compile(jit_compile, tensor, elements):
    """Return whether to compile the kernel for a chunk of `elements` values.

    Args:
        jit_compile: `"auto"`, True or False.
        tensor: One input of the kernel, to tell whether it is traced.
        elements: Number of values in one chunk.
    """
    if jit_compile is False:
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if isinstance(tensor, jax.core.Tracer):
            return False
    elif backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return False
    elif backend == "torch":
        import torch

        if jit_compile == "auto" or torch.compiler.is_compiling():
            return False
    else:
        return False
    return jit_compile is True or elements >= AUTO_MIN_ELEMENTS


def compiled_kernel(key, kernel):
    """Return `kernel` compiled for the current backend, cached under `key`.

    Args:
        key: Hashable description of everything `kernel` closes over, such
            as `(alpha, beta, temperature)`. Kernels with equal keys must
            compute the same function.
        kernel: Function of tensors only.
    """
    backend = keras.backend.backend()
    key = (backend,) + tuple(key)
    if key not in _compiled_kernels:
        _compiled_kernels[key] = _compile(kernel, backend)
    return _compiled_kernels[key]


def _compile(kernel, backend):
    if backend == "jax":
        import jax

        return jax.jit(kernel)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(kernel, jit_compile=True)
    import torch

    # Positions come in at most two chunk shapes (full and remainder), so
    # static shapes give the fastest code at the cost of two compilations.
    return torch.compile(kernel, dynamic=False)
