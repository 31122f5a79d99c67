"""Time and peak memory of the alpha-beta divergence, forward plus backward.

Each measurement runs in a fresh subprocess with `KERAS_BACKEND` set, so
backends do not share a process and `ru_maxrss` (the peak resident memory of
that process, from `resource.getrusage`) belongs to that measurement alone.
The methods, side by side:

- `plain`: the textbook formula written from the math, softmax
  probabilities and the three powers `p^a q^b`, `p^(a+b)`, `q^(a+b)`, with
  the backend's automatic gradient.
- `keras_kl`: `keras.distillation.LogitsDistillation` with
  `keras.losses.KLDivergence()`, the forward KL divergence. Only run for
  `(alpha, beta) = (1, 0)`, where it computes the same divergence.
- `abkd`: `keras_abkd.losses.alpha_beta_divergence` with `--chunk-size`
  and the default `jit_compile="auto"`.
- `abkd_unchunked`: the same with `chunk_size=None`.
- `abkd_compiled`: `abkd` with `jit_compile=True`, which on PyTorch compiles
  the per-chunk kernel with `torch.compile`. The first call, reported as
  `first_seconds`, includes the compilation.
- `exp_floor`: `ops.exp` over a `[positions, classes]` array, run as many
  times as the number of transcendental passes that `abkd` needs, each a
  separate pass that reads and writes the full array.

The gradient is taken with respect to the student logits only, as in
distillation, where the teacher is frozen. Times are the median of
`--repeats` runs after one warm-up run, which includes compilation.

Usage:

    python benchmarks/divergence_benchmark.py --tiny
    python benchmarks/divergence_benchmark.py --backends jax --shapes 1024x50257
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_SHAPES = ["1024x50257", "512x128256", "256x256000"]
TINY_SHAPES = ["16x64"]
METHODS = ["exp_floor", "plain", "keras_kl", "abkd_unchunked", "abkd", "abkd_compiled"]
JIT_MODES = {"jax": ["jit", "eager"], "tensorflow": ["xla", "eager"], "torch": ["eager"]}


def transcendental_passes(alpha, beta):
    """Return the transcendental functions per class that `abkd` evaluates.

    Two softmax exponentials, the exponential of the top node and two
    `expm1`, plus one exponential when alpha or beta is negative.
    """
    return 5 if min(alpha, beta) >= 0.0 else 6


# ---------------------------------------------------------------------------
# Worker: one measurement in this process.
# ---------------------------------------------------------------------------


def _max_rss_bytes():
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# From this many elements on, inputs come from a fixed formula computed in one
# fused pass under jax.jit: random normal draws keep several full-size
# temporaries (12.6 GB for one 4096 x 256,000 float32 array on JAX 0.10).
LARGE_INPUT_ELEMENTS = 2**30


def _pattern_logits(positions, classes, dtype, phase):
    """Build deterministic logits in [-3, 3] that vary along both axes."""
    from keras import ops

    rows = ops.expand_dims(ops.arange(positions, dtype="float32"), 1)
    columns = ops.expand_dims(ops.arange(classes, dtype="float32"), 0)
    angle = 0.7071 * rows + 1.618 * columns + phase
    return ops.cast(3.0 * ops.sin(angle) * ops.cos(0.37 * angle), dtype)


def _make_inputs(positions, classes, dtype):
    import keras

    if positions * classes >= LARGE_INPUT_ELEMENTS and keras.backend.backend() == "jax":
        import jax

        make = jax.jit(_pattern_logits, static_argnums=(0, 1, 2, 3))
        return make(positions, classes, dtype, 0.0), make(positions, classes, dtype, 1.0)

    # Drawn in the logit dtype itself, so that no float32 copy of bfloat16
    # logits inflates the peak memory.
    keras.utils.set_random_seed(0)
    teacher = keras.random.normal((positions, classes), stddev=3.0, dtype=dtype)
    student = keras.random.normal((positions, classes), stddev=3.0, dtype=dtype)
    return teacher, student


def _plain_formula(alpha, beta):
    """Build the textbook alpha-beta divergence, averaged over positions."""
    from keras import ops

    total = alpha + beta

    def loss(teacher, student):
        p = ops.softmax(ops.cast(teacher, "float32"), axis=-1)
        q = ops.softmax(ops.cast(student, "float32"), axis=-1)
        terms = (
            ops.power(p, alpha) * ops.power(q, beta)
            - alpha / total * ops.power(p, total)
            - beta / total * ops.power(q, total)
        )
        return ops.mean(-ops.sum(terms, axis=-1) / (alpha * beta))

    return loss


def _loss_function(method, alpha, beta, chunk_size):
    import keras
    from keras import ops

    from keras_abkd.losses import alpha_beta_divergence

    if method == "plain":
        return _plain_formula(alpha, beta)
    if method == "keras_kl":
        distillation = keras.distillation.LogitsDistillation(
            temperature=1.0, loss=keras.losses.KLDivergence()
        )
        return lambda teacher, student: distillation.compute_loss(teacher, student)
    size = None if method == "abkd_unchunked" else chunk_size
    jit_compile = True if method == "abkd_compiled" else "auto"

    def loss(teacher, student):
        return ops.mean(
            alpha_beta_divergence(
                teacher, student, alpha, beta, chunk_size=size, jit_compile=jit_compile
            )
        )

    return loss


def _step_function(backend, loss, mode):
    """Return a function of (teacher, student) computing the loss and its gradient."""
    if backend == "jax":
        import jax

        step = jax.value_and_grad(loss, argnums=1)
        if mode == "jit":
            step = jax.jit(step)

        def run(teacher, student):
            value, grad = step(teacher, student)
            jax.block_until_ready(grad)
            return value, grad

        return run

    if backend == "tensorflow":
        import tensorflow as tf

        def step(teacher, student):
            with tf.GradientTape() as tape:
                tape.watch(student)
                value = loss(teacher, student)
            return value, tape.gradient(value, student)

        if mode == "xla":
            step = tf.function(step, jit_compile=True)

        def run(teacher, student):
            value, grad = step(teacher, student)
            _ = grad.numpy()[0, 0]
            return value, grad

        return run

    import torch

    def run(teacher, student):
        student = student.detach().requires_grad_(True)
        value = loss(teacher, student)
        (grad,) = torch.autograd.grad(value, [student])
        return value, grad

    return run


def _exp_floor_function(backend, mode, passes):
    from keras import ops

    def one_pass(x):
        return ops.exp(ops.cast(x, "float32"))

    if backend == "jax" and mode == "jit":
        import jax

        one_pass = jax.jit(one_pass)
    if backend == "tensorflow" and mode == "xla":
        import tensorflow as tf

        one_pass = tf.function(one_pass, jit_compile=True)

    def run(teacher, student):
        for _ in range(passes):
            result = one_pass(student)
            _ = ops.convert_to_numpy(result[0, 0])
        return None, None

    return run


def run_worker(args):
    """Measure each method and mode in `args` and print one JSON line each.

    Peak memory is only meaningful with one method and mode per process.
    """
    import keras

    backend = keras.backend.backend()
    positions, classes = (int(n) for n in args.shape.split("x"))
    teacher, student = _make_inputs(positions, classes, args.dtype)
    # JAX computes asynchronously, so the inputs may not exist yet.
    _ = keras.ops.convert_to_numpy(teacher[0, 0] + student[0, 0])
    rss_with_inputs = _max_rss_bytes()

    for mode in args.mode.split(","):
        for method in args.method.split(","):
            if method == "exp_floor":
                run = _exp_floor_function(
                    backend, mode, transcendental_passes(args.alpha, args.beta)
                )
            else:
                loss = _loss_function(method, args.alpha, args.beta, args.chunk_size)
                run = _step_function(backend, loss, mode)

            start = time.perf_counter()
            run(teacher, student)
            first_seconds = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(teacher, student)
                times.append(time.perf_counter() - start)

            record = {
                "backend": backend,
                "method": method,
                "mode": mode,
                "shape": args.shape,
                "dtype": args.dtype,
                "alpha": args.alpha,
                "beta": args.beta,
                "chunk_size": args.chunk_size,
                "seconds": statistics.median(times),
                "first_seconds": first_seconds,
                "peak_rss_bytes": _max_rss_bytes(),
                "rss_with_inputs_bytes": rss_with_inputs,
            }
            print("RESULT " + json.dumps(record), flush=True)


# ---------------------------------------------------------------------------
# Driver: one subprocess per measurement, then a Markdown table.
# ---------------------------------------------------------------------------


def _measure(backend, methods, modes, shape, args):
    """Run one worker subprocess and return its records."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--method", ",".join(methods),
        "--mode", ",".join(modes),
        "--shape", shape,
        "--dtype", args.dtype,
        "--alpha", str(args.alpha),
        "--beta", str(args.beta),
        "--chunk-size", str(args.chunk_size),
        "--repeats", str(args.repeats),
    ]
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        completed = None
    records = []
    if completed is not None:
        for line in completed.stdout.splitlines():
            if line.startswith("RESULT "):
                records.append(json.loads(line[len("RESULT "):]))
    if len(records) < len(methods) * len(modes):
        if completed is None:
            message = f"timed out after {args.timeout} s"
        else:
            last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
            message = f"exit status {completed.returncode}: {last}"
        done = {(r["method"], r["mode"]) for r in records}
        for mode in modes:
            for method in methods:
                if (method, mode) not in done:
                    records.append({
                        "backend": backend, "method": method, "mode": mode,
                        "shape": shape, "error": message,
                    })
    return records


def _speedup(baseline, record):
    """Format how many times faster `record` is than `baseline`."""
    if baseline is None or "error" in baseline or baseline is record:
        return ""
    return f"{baseline['seconds'] / record['seconds']:.2f}"


def _slowdown(record, floor):
    """Format how many times slower `record` is than the floor."""
    if floor is None or "error" in floor or floor is record:
        return ""
    return f"{record['seconds'] / floor['seconds']:.2f}"


def _format_table(records):
    lines = [
        "| backend | mode | shape | method | time (s) | first call (s) | x plain "
        "| x floor | peak RSS (GB) | beyond inputs (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["backend"], r["mode"], r["shape"], r["method"]): r for r in records}
    for record in records:
        if "error" in record:
            lines.append(
                f"| {record['backend']} | {record['mode']} | {record['shape']} | "
                f"{record['method']} | failed: {record['error']} | | | | | |"
            )
            continue
        key = (record["backend"], record["mode"], record["shape"])
        plain = by_key.get(key + ("plain",))
        floor = by_key.get(key + ("exp_floor",))

        beyond = record["peak_rss_bytes"] - record["rss_with_inputs_bytes"]
        lines.append(
            f"| {record['backend']} | {record['mode']} | {record['shape']} | "
            f"{record['method']} | {record['seconds']:.3f} | "
            f"{record['first_seconds']:.3f} | {_speedup(plain, record)} | {_slowdown(record, floor)} | "
            f"{record['peak_rss_bytes'] / 1e9:.2f} | {beyond / 1e9:.2f} |"
        )
    return "\n".join(lines)


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"],
                        help="Keras backends to measure.")
    parser.add_argument("--shapes", nargs="+", default=None,
                        help="POSITIONSxCLASSES shapes, such as 1024x50257.")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                        help="Methods to measure.")
    parser.add_argument("--modes", nargs="+", default=None,
                        help="Limit to these modes: jit, eager (JAX), xla, eager "
                             "(TensorFlow), eager (PyTorch).")
    parser.add_argument("--alpha", type=float, default=0.2, help="Alpha. Defaults to 0.2.")
    parser.add_argument("--beta", type=float, default=0.7, help="Beta. Defaults to 0.7.")
    parser.add_argument("--dtype", default="float32", help="Logit dtype. Defaults to float32.")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="Positions per chunk for the abkd method. Defaults to 256.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Timed runs after the warm-up run. Defaults to 3.")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="Seconds before one measurement is stopped. Defaults to 1800.")
    parser.add_argument("--tiny", action="store_true",
                        help="Measure one tiny shape once, to check that the script runs.")
    parser.add_argument("--json", help="Also write the records to this JSON file.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _methods_for(args):
    """Return the requested methods that apply to this (alpha, beta)."""
    methods = []
    for method in args.methods:
        if method == "keras_kl" and (args.alpha, args.beta) != (1.0, 0.0):
            continue
        if method == "plain" and 0.0 in (args.alpha, args.beta, args.alpha + args.beta):
            continue
        methods.append(method)
    return methods


def main(argv=None):
    args = _parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    if args.tiny:
        # One subprocess for everything on the current backend: a check that
        # the script runs, with numbers that mean nothing.
        backend = os.environ.get("KERAS_BACKEND", "jax")
        args.repeats = 1
        args.chunk_size = min(args.chunk_size, 4)
        records = _measure(
            backend, _methods_for(args), JIT_MODES[backend][:1], TINY_SHAPES[0], args
        )
    else:
        records = []
        for backend in args.backends:
            modes = [m for m in JIT_MODES[backend] if args.modes is None or m in args.modes]
            for mode in modes:
                for shape in args.shapes or DEFAULT_SHAPES:
                    for method in _methods_for(args):
                        for record in _measure(backend, [method], [mode], shape, args):
                            records.append(record)
                            print(json.dumps(record), file=sys.stderr, flush=True)

    print(
        f"alpha={args.alpha}, beta={args.beta}, dtype={args.dtype}, "
        f"chunk_size={args.chunk_size}, floor passes="
        f"{transcendental_passes(args.alpha, args.beta)}, repeats={args.repeats}"
    )
    print(_format_table(records))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(records, file, indent=1)
    failed = [r for r in records if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
