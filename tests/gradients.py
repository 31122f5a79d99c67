"""Gradients through the active Keras backend, returned as numpy arrays."""

import keras
import numpy as np


def value_and_grad(fn, *args, argnums=(0,)):
    """Evaluate `fn(*args)` and the gradient of its sum w.r.t. `args[argnums]`.

    Args:
        fn: Function of backend tensors returning a tensor.
        *args: numpy arrays, converted to backend tensors of their dtype.
        argnums: Indices of the arguments to differentiate.

    Returns:
        `(value, grads)`: the value as a numpy array and a tuple of numpy
        gradients, one per index in `argnums`.
    """
    backend = keras.backend.backend()
    tensors = [keras.ops.convert_to_tensor(a) for a in args]

    if backend == "jax":
        import jax

        def total(*xs):
            value = fn(*xs)
            return keras.ops.sum(value), value

        grad_fn = jax.grad(total, argnums=tuple(argnums), has_aux=True)
        grads, value = grad_fn(*tensors)
        return np.asarray(value), tuple(np.asarray(g) for g in grads)

    if backend == "tensorflow":
        import tensorflow as tf

        watched = [tensors[i] for i in argnums]
        with tf.GradientTape() as tape:
            for t in watched:
                tape.watch(t)
            value = fn(*tensors)
            total = tf.reduce_sum(value)
        grads = tape.gradient(total, watched)
        grads = [tf.zeros_like(w) if g is None else g for g, w in zip(grads, watched)]
        return value.numpy(), tuple(g.numpy() for g in grads)

    if backend == "torch":
        import torch

        tensors = [t.detach().clone() for t in tensors]
        for i in argnums:
            tensors[i].requires_grad_(True)
        value = fn(*tensors)
        grads = torch.autograd.grad(
            value.sum(), [tensors[i] for i in argnums], allow_unused=True
        )
        grads = [
            torch.zeros_like(tensors[i]) if g is None else g
            for g, i in zip(grads, argnums)
        ]
        return (
            value.detach().cpu().float().numpy()
            if value.dtype == torch.bfloat16
            else value.detach().cpu().numpy(),
            tuple(
                (g.float() if g.dtype == torch.bfloat16 else g).cpu().numpy()
                for g in grads
            ),
        )

    raise NotImplementedError(f"No gradient helper for backend {backend!r}.")
