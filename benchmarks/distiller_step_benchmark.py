"""Time a `keras_abkd.Distiller` training step against what it must run anyway.

A distillation step runs the frozen teacher forward and the student forward
and backward, so its unavoidable cost is about one student training step plus
one teacher forward pass. This script times the three on the same batch of a
small token-level language model (embedding, MLP, vocabulary projection) and
reports the overhead:

```
overhead = distiller step / (student step + teacher forward) - 1
```

The student's own step uses sparse categorical cross-entropy on the labels.
The Distiller step uses `ABDivergence(alpha=0.2, beta=0.7)` plus the same
cross-entropy with `student_loss_weight=0.5`, so the overhead contains the
cost of the divergence itself. Times are medians of `--steps` calls to
`train_on_batch` and `predict_on_batch` after warm-up calls, which include
compilation. Each backend runs in its own subprocess.

Usage:

    python benchmarks/distiller_step_benchmark.py --tiny
    python benchmarks/distiller_step_benchmark.py --backends jax torch
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _token_model(vocabulary, width, hidden, name):
    import keras

    tokens = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, width)(tokens)
    x = keras.layers.Dense(hidden, activation="gelu")(x)
    x = keras.layers.Dense(width)(x)
    logits = keras.layers.Dense(vocabulary)(x)
    return keras.Model(tokens, logits, name=name)


def _median_seconds(function, steps, warmup):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_worker(args):
    """Time the three steps on the current backend and print a JSON line."""
    import keras
    import numpy as np

    import keras_abkd

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocabulary, size=(args.batch, args.length)).astype("int32")
    labels = rng.integers(0, args.vocabulary, size=(args.batch, args.length)).astype("int32")

    teacher = _token_model(args.vocabulary, args.width, 2 * args.hidden, "teacher")
    student = _token_model(args.vocabulary, args.width, args.hidden, "student")
    student.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    distiller_student = _token_model(args.vocabulary, args.width, args.hidden, "student")
    distiller = keras_abkd.Distiller(
        teacher=teacher,
        student=distiller_student,
        distillation_loss=keras_abkd.ABDivergence(
            alpha=0.2, beta=0.7, chunk_size=args.chunk_size, jit_compile=args.jit_compile
        ),
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    student_step = _median_seconds(
        lambda: student.train_on_batch(tokens, labels), args.steps, args.warmup
    )
    teacher_forward = _median_seconds(
        lambda: teacher.predict_on_batch(tokens), args.steps, args.warmup
    )
    distiller_step = _median_seconds(
        lambda: distiller.train_on_batch(tokens, labels), args.steps, args.warmup
    )

    record = {
        "backend": keras.backend.backend(),
        "positions": args.batch * args.length,
        "vocabulary": args.vocabulary,
        "student_step": student_step,
        "teacher_forward": teacher_forward,
        "distiller_step": distiller_step,
        "overhead": distiller_step / (student_step + teacher_forward) - 1.0,
    }
    print("RESULT " + json.dumps(record), flush=True)


def _measure(backend, args, argv):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    command = [sys.executable, os.path.abspath(__file__), "--worker"] + argv
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=args.timeout
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return {"backend": backend, "error": f"exit status {completed.returncode}: {last}"}


def _format_table(records):
    lines = [
        "| backend | positions x vocabulary | student step (s) | teacher forward (s) "
        "| distiller step (s) | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for record in records:
        if "error" in record:
            lines.append(f"| {record['backend']} | failed: {record['error']} | | | | |")
            continue
        lines.append(
            f"| {record['backend']} | {record['positions']} x {record['vocabulary']} | "
            f"{record['student_step']:.4f} | {record['teacher_forward']:.4f} | "
            f"{record['distiller_step']:.4f} | {100 * record['overhead']:+.1f}% |"
        )
    return "\n".join(lines)


def _jit_compile(text):
    values = {"auto": "auto", "true": True, "false": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(
            f"--jit-compile must be auto, true or false, got {text!r}."
        )
    return values[text.lower()]


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="Keras backends to measure. Defaults to KERAS_BACKEND "
                             "or jax.")
    parser.add_argument("--batch", type=int, default=8, help="Sequences per batch. Defaults to 8.")
    parser.add_argument("--length", type=int, default=128,
                        help="Tokens per sequence. Defaults to 128.")
    parser.add_argument("--vocabulary", type=int, default=32000,
                        help="Vocabulary size. Defaults to 32000.")
    parser.add_argument("--width", type=int, default=512,
                        help="Embedding width. Defaults to 512.")
    parser.add_argument("--hidden", type=int, default=2048,
                        help="Student MLP width; the teacher's is twice this. "
                             "Defaults to 2048.")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="chunk_size of the divergence. Defaults to None.")
    parser.add_argument("--jit-compile", default="auto", type=_jit_compile,
                        help="jit_compile of the divergence: auto, true or false. "
                             "Defaults to auto.")
    parser.add_argument("--steps", type=int, default=10,
                        help="Timed calls per measurement. Defaults to 10.")
    parser.add_argument("--warmup", type=int, default=2,
                        help="Untimed calls before timing. Defaults to 2.")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="Seconds before one backend's run is stopped. "
                             "Defaults to 1800.")
    parser.add_argument("--tiny", action="store_true",
                        help="Use a tiny model and batch, to check that the script runs.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    if args.tiny:
        args.batch, args.length, args.vocabulary = 2, 8, 64
        args.width, args.hidden, args.steps, args.warmup = 8, 16, 1, 1
    if args.worker:
        run_worker(args)
        return 0

    backends = args.backends or [os.environ.get("KERAS_BACKEND", "jax")]
    worker_argv = [a for a in argv if a not in ("--backends",) and a not in backends]
    records = [_measure(backend, args, worker_argv) for backend in backends]
    print(
        f"batch={args.batch}, length={args.length}, vocabulary={args.vocabulary}, "
        f"width={args.width}, hidden={args.hidden}, chunk_size={args.chunk_size}, "
        f"jit_compile={args.jit_compile}, steps={args.steps}"
    )
    print(_format_table(records))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
