"""Per-device memory of the divergence with logits split over 8 devices.

Compiles the forward and backward pass of
`keras_abkd.losses.alpha_beta_divergence` (gradient in the student logits)
under `jax.jit`, on 8 virtual CPU devices, for several `(batch, model)`
meshes and chunk sizes, and prints XLA's `memory_analysis()` of one device:
the arguments (teacher and student logits), the temporaries and the output
(the gradient). The logits are `[batch, length, vocabulary]`, split along the
batch over the mesh's batch axis and along the vocabulary over its model axis,
and the call runs under a `keras.distribution.ModelParallel` on that mesh, as
inside `fit`. The programs are compiled, not run, which takes seconds.

Usage:

    python benchmarks/sharded_divergence_memory.py
    python benchmarks/sharded_divergence_memory.py --shape 32x64x2048 --chunk-sizes 0,64,256
"""

import argparse
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402

from keras_abkd.losses import alpha_beta_divergence  # noqa: E402

MEBIBYTE = 2**20


def measure_memory(shape, mesh_shape, chunk_size):
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh(mesh_shape, ("batch", "model"), devices)
    layout = keras.distribution.TensorLayout(("batch", None, "model"), mesh)
    logits = jax.ShapeDtypeStruct(shape, "float32", sharding=layout.backend_layout)

    def total(teacher, student):
        return jax.numpy.sum(
            alpha_beta_divergence(teacher, student, 0.2, 0.7, chunk_size=chunk_size)
        )

    distribution = keras.distribution.ModelParallel(
        layout_map=keras.distribution.LayoutMap(mesh), batch_dim_name="batch"
    )
    with distribution.scope():
        step = jax.jit(jax.grad(total, argnums=1))
        analysis = step.lower(logits, logits).compile().memory_analysis()
    return (
        analysis.argument_size_in_bytes / MEBIBYTE,
        analysis.temp_size_in_bytes / MEBIBYTE,
        analysis.output_size_in_bytes / MEBIBYTE,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shape", default="32x64x2048",
        help="global logits shape BATCHxLENGTHxVOCABULARY (default: 32x64x2048)",
    )
    parser.add_argument(
        "--chunk-sizes", default="0,64,256",
        help="comma-separated chunk sizes in positions, 0 for None (default: 0,64,256)",
    )
    args = parser.parse_args()
    shape = tuple(int(size) for size in args.shape.split("x"))
    chunk_sizes = [int(size) or None for size in args.chunk_sizes.split(",")]

    print(f"logits {shape} float32, per device (MiB), jax {jax.__version__}")
    print("| mesh (batch, model) | chunk_size | logits | temporaries | gradient |")
    print("|---|---|---|---|---|")
    for mesh_shape in ((8, 1), (2, 4), (1, 8)):
        for chunk_size in chunk_sizes:
            arguments, temporaries, output = measure_memory(shape, mesh_shape, chunk_size)
            print(
                f"| {mesh_shape} | {chunk_size} | {arguments:.1f} | "
                f"{temporaries:.1f} | {output:.1f} |"
            )


if __name__ == "__main__":
    main()
