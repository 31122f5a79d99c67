"""Train teacher/student pairs on one device and under `keras.distribution`.

Run as `python -m tests.distribution_run OUTPUT_DIR` with `KERAS_BACKEND=jax`
and `XLA_FLAGS=--xla_force_host_platform_device_count=8`, which JAX reads
only when it starts, so `tests/distribution_test.py` runs this script in a
subprocess. It writes `arrays.npz` (losses and weights per run) and
`layouts.json` (the sharding of every variable, and error messages); the
test compares them.
"""

import contextlib
import json
import os
import sys

import keras
import numpy as np

import keras_abkd
from keras_abkd.distribution import DistillationParallel
from keras_abkd.losses import alpha_beta_divergence
from tests import reference

ALPHA, BETA, TEMPERATURE = 0.3, 0.6, 2.0
CLASSES = 16


class BatchLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append([logs["loss"], logs["distillation_loss"], logs["student_loss"]])


def set_numpy_weights(model, seed):
    """Draw every matrix with numpy, so that each run starts from the same point.

    Vectors (biases, norm scales) and integer states keep their constant
    initial values.
    """
    rng = np.random.default_rng(seed)
    weights = []
    for weight in model.get_weights():
        if weight.ndim >= 2 and weight.dtype.kind == "f":
            weight = rng.normal(scale=0.5, size=weight.shape).astype(weight.dtype)
        weights.append(weight)
    model.set_weights(weights)


def dense_model(units, role):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(units, activation="tanh", name=f"{role}_hidden")(inputs)
    logits = keras.layers.Dense(CLASSES, name=f"{role}_logits")(hidden)
    return keras.Model(inputs, logits, name=role)


def build_dense_distiller(model_fn=None):
    """Return a compiled Distiller of two seeded dense models from `model_fn`.

    The multi-process runs of TensorFlow and PyTorch build this same pair, so
    their results compare with a run in one process.
    """
    model_fn = model_fn or dense_model
    teacher = model_fn(32, "teacher")
    student = model_fn(8, "student")
    set_numpy_weights(teacher, seed=1)
    set_numpy_weights(student, seed=2)
    distiller = keras_abkd.Distiller(
        teacher,
        student,
        distillation_loss=keras_abkd.ABDivergence(alpha=0.3, beta=0.6, temperature=2.0),
        student_loss_weight=0.5,
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.05),
        loss="sparse_categorical_crossentropy",
    )
    return distiller


def variable_layouts(variables):
    """Return `{path: {"spec": [...], "shard_shape": [...]}}` of JAX arrays."""
    layouts = {}
    for variable in variables:
        value = variable.value
        spec = [list(a) if isinstance(a, tuple) else a for a in value.sharding.spec]
        layouts[variable.path] = {
            "spec": spec + [None] * (len(value.shape) - len(spec)),
            "shard_shape": list(value.addressable_shards[0].data.shape),
            "devices": len(value.sharding.device_set),
        }
    return layouts


def role_scope(distribution, role=None):
    """Return the scope in which to create the teacher, the student or the rest."""
    if distribution is None:
        return contextlib.nullcontext()
    if isinstance(distribution, DistillationParallel) and role == "teacher":
        return distribution.teacher_scope()
    if isinstance(distribution, DistillationParallel) and role == "student":
        return distribution.student_scope()
    return distribution.scope()


def train_dense_pair(distribution, arrays, layouts, name):
    """Distil a Dense teacher into a Dense student for four steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, CLASSES, size=(32,)).astype("int32")
    weights = rng.uniform(0.1, 1.0, size=(32,)).astype("float32")

    with role_scope(distribution, "teacher"):
        teacher = dense_model(32, "teacher")
        set_numpy_weights(teacher, seed=1)
    with role_scope(distribution, "student"):
        student = dense_model(8, "student")
        set_numpy_weights(student, seed=2)
    arrays.update({f"{name}/teacher_initial_{i}": w for i, w in enumerate(teacher.get_weights())})

    with role_scope(distribution):
        distiller = keras_abkd.Distiller(
            teacher,
            student,
            # chunk_size=3 runs the chunk loop over the 8 positions per batch.
            distillation_loss=keras_abkd.ABDivergence(
                alpha=ALPHA, beta=BETA, temperature=TEMPERATURE, chunk_size=3
            ),
            student_loss_weight=0.5,
        )
        distiller.compile(
            optimizer=keras.optimizers.Adam(learning_rate=0.05),
            loss="sparse_categorical_crossentropy",
        )
        recorder = BatchLosses()
        distiller.fit(
            x, y, sample_weight=weights, batch_size=8, epochs=1,
            shuffle=False, verbose=0, callbacks=[recorder],
        )

    arrays[f"{name}/losses"] = np.array(recorder.losses, dtype="float64")
    arrays.update({f"{name}/student_{i}": w for i, w in enumerate(student.get_weights())})
    arrays.update({f"{name}/teacher_{i}": w for i, w in enumerate(teacher.get_weights())})
    if distribution is not None:
        layouts[name] = {
            "teacher": variable_layouts(teacher.variables),
            "student": variable_layouts(student.variables),
            "optimizer": variable_layouts(distiller.optimizer.variables),
        }


def sharded_divergence(arrays, layouts):
    """Value and student gradient of the divergence with vocabulary-sharded logits.

    The sharded call runs under a `ModelParallel` distribution, as in `fit`,
    so that the chunk loop reads the batch axis of the mesh.
    """
    import jax

    mesh = keras.distribution.DeviceMesh(
        (2, 4), ("batch", "model"), keras.distribution.list_devices()
    )
    distribution = keras.distribution.ModelParallel(
        layout_map=keras.distribution.LayoutMap(mesh), batch_dim_name="batch"
    )
    sharding = keras.distribution.TensorLayout(("batch", None, "model"), mesh)
    rng = np.random.default_rng(3)
    teacher = rng.normal(scale=2.0, size=(4, 5, 64)).astype("float32")
    student = rng.normal(scale=2.0, size=(4, 5, 64)).astype("float32")
    arrays["divergence/reference"] = reference.ab_divergence_logits_float64(
        teacher, student, ALPHA, BETA, TEMPERATURE
    )
    # chunk_size=3 splits each device's 10 positions into 3 + 3 + 3 + 1.
    for chunk_size in (None, 3):

        def total(teacher_logits, student_logits, chunk_size=chunk_size):
            values = alpha_beta_divergence(
                teacher_logits, student_logits, ALPHA, BETA,
                temperature=TEMPERATURE, chunk_size=chunk_size,
            )
            return jax.numpy.sum(values), values

        (_, values), gradient = jax.jit(
            jax.value_and_grad(total, argnums=1, has_aux=True)
        )(teacher, student)
        with distribution.scope():
            step = jax.jit(jax.value_and_grad(total, argnums=1, has_aux=True))
            (_, sharded_values), sharded_gradient = step(
                jax.device_put(teacher, sharding.backend_layout),
                jax.device_put(student, sharding.backend_layout),
            )
        key = f"divergence/chunk_{chunk_size}"
        arrays[f"{key}/values"] = np.asarray(values)
        arrays[f"{key}/gradient"] = np.asarray(gradient)
        arrays[f"{key}/sharded_values"] = np.asarray(sharded_values)
        arrays[f"{key}/sharded_gradient"] = np.asarray(sharded_gradient)
        spec = list(sharded_gradient.sharding.spec)
        layouts[key] = {"gradient_spec": spec + [None] * (3 - len(spec))}


def gpt2_causal_lm(hidden_dim):
    """Build a one-layer GPT-2 without dropout, so that every run draws alike."""
    import keras_hub

    from tests.hub_causal_lm_test import GPT2_MERGES
    from tests.hub_causal_lm_test import GPT2_VOCABULARY

    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=GPT2_VOCABULARY, merges=GPT2_MERGES
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=6
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(GPT2_VOCABULARY),
        num_layers=1,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        dropout=0.0,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def train_gpt2_pair(distribution, arrays, layouts, name, tmp_dir):
    """Distil a tiny KerasHub GPT-2 into a smaller one for two steps."""
    import keras_abkd.hub as abkd_hub

    texts = ["a b c ab", "b c a", "c ab ab", "a a b c", "ab c", "b b a", "c a", "a ab b"]
    with role_scope(distribution, "teacher"):
        teacher = gpt2_causal_lm(hidden_dim=16)
        set_numpy_weights(teacher, seed=4)
    with role_scope(distribution, "student"):
        student = gpt2_causal_lm(hidden_dim=8)
        set_numpy_weights(student, seed=5)
    arrays.update({f"{name}/teacher_initial_{i}": w for i, w in enumerate(teacher.get_weights())})

    with role_scope(distribution):
        distiller = abkd_hub.HubDistiller(
            teacher, student,
            distillation_loss=keras_abkd.ABDivergence(alpha=ALPHA, beta=BETA),
            student_loss_weight=0.5,
        )
        distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
        recorder = BatchLosses()
        distiller.fit(
            texts * 2, batch_size=8, epochs=1, shuffle=False, verbose=0,
            callbacks=[recorder],
        )

    arrays[f"{name}/losses"] = np.array(recorder.losses, dtype="float64")
    arrays.update({f"{name}/student_{i}": w for i, w in enumerate(student.get_weights())})
    arrays.update({f"{name}/teacher_{i}": w for i, w in enumerate(teacher.get_weights())})
    if distribution is not None:
        layouts[name] = {
            "teacher": variable_layouts(teacher.variables),
            "student": variable_layouts(student.variables),
        }


def llama3_layouts(layouts):
    """Lay out tiny Llama 3 teachers with the backbone's own layout map."""
    import keras_hub

    from tests.hub_causal_lm_test import llama3_causal_lm

    distribution = DistillationParallel(
        model_parallel=2, teacher_layout=keras_hub.models.Llama3CausalLM
    )
    with distribution.teacher_scope():
        # The test vocabulary has 13 tokens, so 14 logits split over 2 devices.
        backbone = keras_hub.models.Llama3Backbone(
            vocabulary_size=14, num_layers=1, num_query_heads=4,
            num_key_value_heads=4, hidden_dim=8, intermediate_dim=16,
        )
    layouts["llama3"] = variable_layouts(backbone.variables)

    try:
        with distribution.teacher_scope():
            llama3_causal_lm(num_layers=1, hidden_dim=16)
    except ValueError as error:
        layouts["llama3_error"] = str(error)


def main(output_dir):
    import jax

    keras.utils.set_random_seed(0)
    arrays, layouts = {}, {"device_count": len(jax.devices())}
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ("batch", "model"), keras.distribution.list_devices()
    )
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["teacher_.*/kernel"] = (None, "model")
    layout_map["student_logits/kernel"] = (None, "model")

    runs = {
        "single": None,
        "data_parallel": keras.distribution.DataParallel(),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        ),
        "distillation_parallel": DistillationParallel(model_parallel=4),
    }
    for name, distribution in runs.items():
        train_dense_pair(distribution, arrays, layouts, f"dense/{name}")

    sharded_divergence(arrays, layouts)

    train_gpt2_pair(None, arrays, layouts, "gpt2/single", output_dir)
    train_gpt2_pair(
        DistillationParallel(model_parallel=2), arrays, layouts,
        "gpt2/distillation_parallel", output_dir,
    )
    llama3_layouts(layouts)

    np.savez(os.path.join(output_dir, "arrays.npz"), **arrays)
    with open(os.path.join(output_dir, "layouts.json"), "w") as file:
        json.dump(layouts, file, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
