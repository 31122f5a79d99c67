"""Sums over the replicas of `tf.distribute`, the one backend that runs them.

Under a `tf.distribute` strategy such as `MirroredStrategy`, each replica
runs the training step on its own share of the batch, and the strategy sums
the replicas' gradients. A loss is therefore each replica's share of the
global loss. Under JAX with `keras.distribution`, arrays are global and XLA
partitions one program, and PyTorch runs one replica per process, so these
functions return their input unchanged there.
"""

import keras
from keras import ops


def _replica_context():
    """Return TensorFlow's replica context when more than one replica runs."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync <= 1:
        return None
    # In a cross-replica context values are not split across replicas.
    return tf.distribute.get_replica_context()


def num_replicas_in_sync():
    """Return the number of replicas whose gradients are summed, 1 if none."""
    if _replica_context() is None:
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def sum_over_replicas(value):
    """Sum `value` over the replicas, without a gradient through the sum.

    Args:
        value: A tensor computed by each replica.

    Returns:
        The sum over all replicas, the same on each replica, or `value`
        itself when one replica runs.
    """
    context = _replica_context()
    if context is None:
        return value
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, ops.stop_gradient(value))
