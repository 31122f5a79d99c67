"""Distillation on several devices: keras.distribution, tf.distribute, torch DDP.

A backend reads its device count only when it starts, so each multi-device
run is a subprocess, started from the test session of its own backend:

- JAX on 8 virtual CPU devices (`tests/distribution_run.py`),
- TensorFlow on 2 logical CPUs with `MirroredStrategy` (`tests/mirrored_run.py`),
- PyTorch in 2 processes joined by gloo over the loopback interface
  (`tests/torch_ddp_run.py`).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_abkd import distribution as abkd_distribution

BACKEND = keras.backend.backend()
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DENSE_RUNS = ["data_parallel", "model_parallel", "distillation_parallel"]


def _environment(backend, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = REPOSITORY + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_script(module, args, env, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{module} failed:\n{result.stderr[-4000:]}"


def _fake_mesh(shape=(2, 4)):
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)


def _weights(arrays, prefix):
    """Return the arrays named `prefix` + index, in index order."""
    indices = sorted(
        int(key[len(prefix) :])
        for key in arrays
        if key.startswith(prefix) and key[len(prefix) :].isdigit()
    )
    return [arrays[f"{prefix}{index}"] for index in indices]


# Layout checks and the generic rule: plain Python, the same on every backend.


def test_check_layout_accepts_dividing_layout():
    abkd_distribution.check_layout(
        "teacher", "dense/kernel", (6, 32), (None, "model"), _fake_mesh()
    )


def test_check_layout_names_weight_shape_axis():
    with pytest.raises(ValueError) as error:
        abkd_distribution.check_layout(
            "teacher", "logits/kernel", (32, 10), (None, "model"), _fake_mesh()
        )
    message = str(error.value)
    assert "'logits/kernel'" in message
    assert "(32, 10)" in message
    assert "mesh axis 'model' of 4 devices" in message
    assert "layout_map['logits/kernel'] = (None, None)" in message


def test_check_layout_counts_axis_tuples():
    mesh = _fake_mesh()
    # ("batch", "model") splits over all 8 devices, which do not divide 12.
    with pytest.raises(ValueError, match="of 8 devices"):
        abkd_distribution.check_layout(
            "student", "embedding/embeddings", (12, 4), (("batch", "model"), None), mesh
        )
    abkd_distribution.check_layout(
        "student", "embedding/embeddings", (16, 4), (("batch", "model"), None), mesh
    )


def test_check_layout_rejects_extra_axes():
    with pytest.raises(ValueError, match="names 2 axes, but the weight has shape"):
        abkd_distribution.check_layout(
            "teacher", "dense/bias", (32,), (None, "model"), _fake_mesh()
        )


def test_check_layout_rejects_unknown_axis():
    with pytest.raises(ValueError, match="mesh axis 'tensor'"):
        abkd_distribution.check_layout(
            "teacher", "dense/kernel", (6, 32), (None, "tensor"), _fake_mesh()
        )


@pytest.mark.parametrize(
    "path, shape, expected",
    [
        ("dense/kernel", (6, 32), (None, "model")),
        ("token_embedding/embeddings", (50, 8), ("model", None)),
        ("token_embedding/reverse_embeddings", (8, 50), (None, "model")),
        ("dense/bias", (32,), None),
        ("attention/query/kernel", (8, 2, 4), None),
        ("layer_norm/gamma", (8,), None),
        ("conv/kernel", (3, 3, 4, 8), None),
    ],
)
def test_generic_layout_axes(path, shape, expected):
    assert abkd_distribution.generic_layout_axes(path, shape) == expected


@pytest.mark.skipif(BACKEND == "jax", reason="checks the error on other backends")
def test_distillation_parallel_needs_jax():
    with pytest.raises(ValueError, match="needs the JAX backend"):
        abkd_distribution.DistillationParallel()


# JAX in this process: one CPU device, so only argument checks.


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_default_mesh_rejects_model_parallel():
    count = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match=f"divides the number of devices, {count}"):
        abkd_distribution.default_device_mesh(model_parallel=count + 1)
    with pytest.raises(ValueError, match="model_parallel=0"):
        abkd_distribution.default_device_mesh(model_parallel=0)
    mesh = abkd_distribution.default_device_mesh()
    assert tuple(mesh.shape) == (1, count)
    assert tuple(mesh.axis_names) == ("batch", "model")


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_distillation_parallel_argument_errors():
    mesh = abkd_distribution.default_device_mesh()
    with pytest.raises(ValueError, match="either device_mesh or model_parallel"):
        abkd_distribution.DistillationParallel(device_mesh=mesh, model_parallel=1)
    with pytest.raises(ValueError, match="teacher_layout must be"):
        abkd_distribution.DistillationParallel(teacher_layout="sharded")
    with pytest.raises(ValueError, match="student_layout must be"):
        abkd_distribution.DistillationParallel(student_layout=3)
    with pytest.raises(ValueError, match="batch_axis='data' is not an axis"):
        abkd_distribution.DistillationParallel(device_mesh=mesh, batch_axis="data")
    other_mesh = abkd_distribution.default_device_mesh()
    with pytest.raises(ValueError, match="LayoutMap was built on another"):
        abkd_distribution.DistillationParallel(
            device_mesh=mesh, teacher_layout=keras.distribution.LayoutMap(other_mesh)
        )
    batch_only = keras.distribution.DeviceMesh(
        (len(keras.distribution.list_devices()),), ("batch",),
        keras.distribution.list_devices(),
    )
    with pytest.raises(ValueError, match="model_axis='model', which is not an axis"):
        abkd_distribution.DistillationParallel(device_mesh=batch_only)
    # A batch-only mesh works when neither model is split.
    abkd_distribution.DistillationParallel(device_mesh=batch_only, teacher_layout=None)


class _Variable:
    """The attributes of a Keras variable that a layout rule reads."""

    def __init__(self, path, shape):
        self.path = path
        self.shape = shape
        self._layout = None


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")
def test_variable_layout_by_role(caplog):
    mesh = _fake_mesh()
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["logits/kernel"] = (None, "model")
    distribution = abkd_distribution.DistillationParallel(
        device_mesh=mesh, student_layout=layout_map
    )
    kernel = _Variable("logits/kernel", (32, 16))
    narrow_kernel = _Variable("logits/kernel", (32, 10))

    # Outside both scopes every new variable is replicated.
    assert distribution.get_variable_layout(kernel).axes == (None, None)
    current = keras.distribution.distribution()

    with distribution.teacher_scope():
        assert keras.distribution.distribution() is distribution
        assert distribution.get_variable_layout(kernel).axes == (None, "model")
        # The generic rule keeps a weight that 4 devices do not divide whole.
        with caplog.at_level("WARNING", logger="keras_abkd.distribution"):
            assert distribution.get_variable_layout(narrow_kernel).axes == (None, None)
        assert "Keeping the teacher weight 'logits/kernel' of shape (32, 10)" in caplog.text
    assert keras.distribution.distribution() is current

    with distribution.student_scope():
        assert distribution.get_variable_layout(kernel).axes == (None, "model")
        # A LayoutMap entry that does not divide the weight is an error.
        with pytest.raises(ValueError, match="student weight 'logits/kernel'"):
            distribution.get_variable_layout(narrow_kernel)


# JAX on 8 virtual CPU devices, in a subprocess.


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("distribution")
    env = _environment(
        "jax", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    _run_script("tests.distribution_run", [str(output_dir)], env)
    arrays = dict(np.load(output_dir / "arrays.npz"))
    with open(output_dir / "layouts.json") as file:
        layouts = json.load(file)
    return arrays, layouts


jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="keras.distribution lays out variables on JAX only"
)


@jax_only
def test_subprocess_has_eight_devices(jax_results):
    _, layouts = jax_results
    assert layouts["device_count"] == 8


@jax_only
@pytest.mark.parametrize("run", DENSE_RUNS)
def test_dense_pair_matches_one_device(jax_results, run):
    arrays, _ = jax_results
    reference = arrays["dense/single/losses"]
    assert reference.shape == (4, 3)
    # The losses must move, or the comparison proves nothing.
    assert reference[-1, 0] != reference[0, 0]
    np.testing.assert_allclose(arrays[f"dense/{run}/losses"], reference, rtol=1e-5)
    for single, distributed in zip(
        _weights(arrays, "dense/single/student_"), _weights(arrays, f"dense/{run}/student_")
    ):
        np.testing.assert_allclose(distributed, single, rtol=1e-5, atol=1e-5)


@jax_only
@pytest.mark.parametrize("family", ["dense", "gpt2"])
def test_teacher_stays_frozen(jax_results, family):
    arrays, _ = jax_results
    runs = ["single"] + (DENSE_RUNS if family == "dense" else ["distillation_parallel"])
    for run in runs:
        initial = _weights(arrays, f"{family}/{run}/teacher_initial_")
        final = _weights(arrays, f"{family}/{run}/teacher_")
        assert len(initial) == len(final) > 0
        for before, after in zip(initial, final):
            np.testing.assert_array_equal(after, before)


@jax_only
def test_data_parallel_replicates_weights(jax_results):
    _, layouts = jax_results
    for group in ("teacher", "student", "optimizer"):
        for path, layout in layouts["dense/data_parallel"][group].items():
            assert all(axis is None for axis in layout["spec"]), path
            assert layout["devices"] == 8, path


@jax_only
def test_model_parallel_follows_layout_map(jax_results):
    _, layouts = jax_results
    run = layouts["dense/model_parallel"]
    teacher_hidden = run["teacher"]["teacher_hidden/kernel"]
    assert teacher_hidden["spec"] == [None, "model"]
    # (6, 32) split 4 ways along its units.
    assert teacher_hidden["shard_shape"] == [6, 8]
    assert run["teacher"]["teacher_logits/kernel"]["shard_shape"] == [32, 4]
    assert run["student"]["student_logits/kernel"]["spec"] == [None, "model"]
    assert run["student"]["student_hidden/kernel"]["spec"] == [None, None]
    # Adam's slots take the layout of their weight.
    optimizer = run["optimizer"]
    momentum = next(v for k, v in optimizer.items() if "student_logits_kernel_momentum" in k)
    assert momentum["spec"] == [None, "model"]


@jax_only
def test_distillation_parallel_splits_teacher_only(jax_results):
    _, layouts = jax_results
    run = layouts["dense/distillation_parallel"]
    assert run["teacher"]["teacher_hidden/kernel"]["spec"] == [None, "model"]
    assert run["teacher"]["teacher_logits/kernel"]["spec"] == [None, "model"]
    assert run["teacher"]["teacher_logits/bias"]["spec"] == [None]
    for group in ("student", "optimizer"):
        for path, layout in run[group].items():
            assert all(axis is None for axis in layout["spec"]), path


@jax_only
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_vocabulary_sharded_divergence(jax_results, chunk_size):
    arrays, layouts = jax_results
    key = f"divergence/chunk_{chunk_size}"
    np.testing.assert_allclose(
        arrays[f"{key}/sharded_values"], arrays["divergence/reference"], rtol=1e-5
    )
    np.testing.assert_allclose(
        arrays[f"{key}/sharded_values"], arrays[f"{key}/values"], rtol=1e-6
    )
    np.testing.assert_allclose(
        arrays[f"{key}/sharded_gradient"], arrays[f"{key}/gradient"], rtol=1e-5, atol=1e-7
    )
    # The gradient keeps the layout of the logits: no device gathers the batch
    # or the vocabulary.
    assert layouts[key]["gradient_spec"] == ["batch", None, "model"]


@jax_only
def test_gpt2_matches_one_device(jax_results):
    arrays, _ = jax_results
    reference = arrays["gpt2/single/losses"]
    assert reference[-1, 0] != reference[0, 0]
    np.testing.assert_allclose(
        arrays["gpt2/distillation_parallel/losses"], reference, rtol=1e-5
    )
    for single, distributed in zip(
        _weights(arrays, "gpt2/single/student_"),
        _weights(arrays, "gpt2/distillation_parallel/student_"),
    ):
        np.testing.assert_allclose(distributed, single, rtol=1e-5, atol=1e-5)


@jax_only
def test_gpt2_layouts(jax_results):
    _, layouts = jax_results
    run = layouts["gpt2/distillation_parallel"]
    embedding = run["teacher"]["token_embedding/embeddings"]
    # GPT-2 has no KerasHub layout map, so the generic rule splits its
    # 10-token vocabulary over the 2 devices of the model axis. The output
    # layer reuses this embedding, so the logits are split along the
    # vocabulary too.
    assert embedding["spec"] == ["model", None]
    assert embedding["shard_shape"] == [5, 16]
    dense = run["teacher"]["transformer_layer_0/feedforward_intermediate_dense/kernel"]
    assert dense["spec"] == [None, "model"]
    for path, layout in run["student"].items():
        assert all(axis is None for axis in layout["spec"]), path


@jax_only
def test_llama3_uses_backbone_layout_map(jax_results):
    _, layouts = jax_results
    run = layouts["llama3"]
    # The layouts of keras-hub 0.32's LlamaBackbone.get_layout_map, on a
    # (batch=4, model=2) mesh.
    assert run["token_embedding/embeddings"]["spec"] == ["model", "batch"]
    assert run["token_embedding/embeddings"]["shard_shape"] == [7, 2]
    query = run["transformer_layer_0/self_attention/query/kernel"]
    assert query["spec"] == ["model", "batch", None]
    gate = run["transformer_layer_0/feedforward_gate_dense/kernel"]
    assert gate["spec"] == ["batch", "model"]
    assert run["sequence_output_layernorm/scale"]["spec"] == [None]


@jax_only
def test_llama3_indivisible_vocabulary_error(jax_results):
    _, layouts = jax_results
    message = layouts["llama3_error"]
    assert "teacher weight 'token_embedding/embeddings'" in message
    assert "shape (13, 16)" in message
    assert "mesh axis 'model' of 2 devices" in message


# TensorFlow: MirroredStrategy over 2 logical CPU devices, in a subprocess.


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_mirrored_strategy_matches_one_device(tmp_path):
    output = tmp_path / "mirrored.npz"
    _run_script("tests.mirrored_run", [str(output)], _environment("tensorflow"))
    arrays = dict(np.load(output))
    for case in ("unweighted", "weighted"):
        reference = arrays[f"{case}/single/losses"]
        assert reference[-1, 0] != reference[0, 0]
        np.testing.assert_allclose(
            arrays[f"{case}/mirrored/losses"], reference, rtol=1e-5,
            err_msg=f"{case} losses differ",
        )
        for single, mirrored in zip(
            _weights(arrays, f"{case}/single/student_"),
            _weights(arrays, f"{case}/mirrored/student_"),
        ):
            np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6)
        for before, after in zip(
            _weights(arrays, f"{case}/mirrored/teacher_initial_"),
            _weights(arrays, f"{case}/mirrored/teacher_"),
        ):
            np.testing.assert_array_equal(after, before)


# PyTorch: DistributedDataParallel in 2 processes over gloo on the loopback.


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed is PyTorch's")
def test_torch_ddp_matches_one_process(tmp_path):
    env = _environment("torch", GLOO_SOCKET_IFNAME="lo")
    rendezvous = tmp_path / "rendezvous"
    _run_script("tests.torch_ddp_run", [str(tmp_path), "single"], env)
    # Each rank writes to its own file: with pipes, a rank whose output
    # fills the pipe blocks while the other waits for it in an all-reduce.
    logs = [open(tmp_path / f"rank_{rank}.log", "w") for rank in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.torch_ddp_run", str(tmp_path), "ddp",
             str(rank), "2", str(rendezvous)],
            cwd=REPOSITORY, env=env, stdout=logs[rank], stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        for worker in workers:
            worker.wait(timeout=300)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    for rank, worker in enumerate(workers):
        output = (tmp_path / f"rank_{rank}.log").read_text()
        assert worker.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"

    single = dict(np.load(tmp_path / "single.npz"))
    assert single["losses"][-1, 0] != single["losses"][0, 0]
    for rank in range(2):
        ddp = dict(np.load(tmp_path / f"ddp_{rank}.npz"))
        np.testing.assert_allclose(ddp["losses"], single["losses"], rtol=1e-5)
        for single_weight, ddp_weight in zip(
            _weights(single, "student_"), _weights(ddp, "student_")
        ):
            np.testing.assert_allclose(ddp_weight, single_weight, rtol=1e-5, atol=1e-6)
        for before, after in zip(
            _weights(ddp, "teacher_initial_"), _weights(ddp, "teacher_")
        ):
            np.testing.assert_array_equal(after, before)
