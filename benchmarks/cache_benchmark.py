"""Measure the teacher cache: disk size, student epoch time and student quality.

Two parts, each printing a Markdown table:

- `size`: writes caches of a token-level teacher with a GPT-2-sized
  vocabulary (50,257 classes, `uint16` ids) and a Qwen2.5-sized one
  (151,936 classes, `int32` ids) for k in {8, 32, 128}, and reports the
  shard bytes per position scaled to one million tokens, against storing the
  dense logits. The teacher's weights do not matter for the size, so it is
  a random embedding followed by a vocabulary projection.
- `students`: the Fashion-MNIST setting of `keras-abkd demo` (its cached CNN
  teacher, 16-unit students, ABKD (1, 0.5) at temperature 2 mixed with the
  labels at weight 0.5, 5 epochs of batch 128). Each student trains once
  with the online teacher (`Distiller(teacher, ...)`) and once per k from a
  cache (`Distiller(None, ...)` on `CachedTargets`), from the same initial
  weights per seed. It reports test accuracy, agreement with the teacher's
  predictions and the median epoch time after the first epoch (which
  includes compilation).

`--tiny` runs both parts on a tiny shape (a small vocabulary, and 256
scikit-learn digits with an untrained teacher for one epoch) to check that
the script works.

Usage:

    python benchmarks/cache_benchmark.py size
    python benchmarks/cache_benchmark.py students --seeds 2
    python benchmarks/cache_benchmark.py size students --tiny
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _token_teacher(vocabulary, width=16):
    import keras

    tokens = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, width)(tokens)
    logits = keras.layers.Dense(vocabulary)(x)
    return keras.Model(tokens, logits, name=f"token_teacher_{vocabulary}")


def run_size(args, folder):
    import numpy as np

    from keras_abkd import cache

    if args.tiny:
        settings = [(1000, [8], 8, 32)]
    else:
        # (vocabulary, ks, rows, sequence length): 32,768 and 4,096 positions.
        settings = [(50257, [8, 32, 128], 256, 128), (151936, [8, 32, 128], 32, 128)]

    print("| vocabulary | k | logits dtype | bytes per token | MB per million tokens | dense float32 MB per million tokens |")
    print("|---|---|---|---|---|---|")
    for vocabulary, ks, rows, length in settings:
        teacher = _token_teacher(vocabulary)
        tokens = np.random.default_rng(0).integers(0, vocabulary, (rows, length)).astype("int32")
        positions = rows * length
        for k in ks:
            for dtype in ("float32", "float16"):
                directory = os.path.join(folder, f"size_{vocabulary}_{k}_{dtype}")
                manifest = cache.cache_teacher(
                    teacher, tokens, directory, k=k, batch_size=8, dtype=dtype, verbose=0
                )
                total = sum(
                    manifest.shard_entry(i)["bytes"] for i in range(manifest.num_shards)
                )
                per_token = total / positions
                print(
                    f"| {vocabulary:,} | {k} | {dtype} | {per_token:.1f} | "
                    f"{per_token:.0f} | {vocabulary * 4:,} |"
                )
                sys.stdout.flush()


class _EpochTimer:
    """Collects the wall time of every epoch as a Keras callback."""

    def __init__(self):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(inner, epoch, logs=None):
                inner.start = time.perf_counter()

            def on_epoch_end(inner, epoch, logs=None):
                self.times.append(time.perf_counter() - inner.start)

        self.times = []
        self.callback = Callback()

    def steady_epoch_seconds(self):
        """Median epoch time after the first, or the only epoch's time."""
        later = self.times[1:] or self.times
        return statistics.median(later)


def run_students(args, folder):
    import keras
    import numpy as np

    import keras_abkd
    from keras_abkd import cache
    from keras_abkd.cli import datasets
    from keras_abkd.cli import demo

    name = "digits" if args.tiny else "fashion_mnist"
    epochs = 1 if args.tiny else args.epochs
    config = demo.DemoConfig(
        dataset=name,
        cache_dir=str(demo.default_cache_dir()),
        verbose=0,
    )
    (x_train, y_train), (x_test, y_test) = datasets.load(name)
    if args.tiny:
        # An untrained teacher on 256 images: enough to run every step.
        x_train, y_train = x_train[:256], y_train[:256]
        teacher = demo.build_teacher(x_train.shape[1:], int(y_train.max()) + 1)
    else:
        teacher = demo.load_or_train_teacher(config, x_train, y_train)
    teacher_predictions = np.argmax(teacher.predict(x_test, verbose=0), axis=-1)
    teacher_accuracy = float(np.mean(teacher_predictions == y_test))
    num_classes = int(y_train.max()) + 1
    temperature = config.temperature

    def divergence():
        return keras_abkd.ABDivergence(config.alpha, config.beta, temperature=temperature)

    def train(targets, seed, cache_targets):
        keras.utils.set_random_seed(seed)
        student = demo.build_student(x_train.shape[1:], num_classes, config.student_units)
        timer = _EpochTimer()
        if cache_targets is None:
            distiller = keras_abkd.Distiller(
                teacher, student, divergence(), student_loss_weight=0.5
            )
            fit_data = dict(x=x_train, y=y_train, batch_size=config.batch_size)
        else:
            distiller = keras_abkd.Distiller(
                None,
                student,
                cache_targets.top_k_divergence(divergence()),
                student_loss_weight=0.5,
            )
            fit_data = dict(x=cache_targets)
        distiller.compile(
            optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy"
        )
        distiller.fit(**fit_data, epochs=epochs, verbose=0, callbacks=[timer.callback])
        accuracy, agreement = demo.evaluate(
            student, teacher_predictions, x_test, y_test, config.batch_size
        )
        return accuracy, agreement, timer.steady_epoch_seconds()

    ks = [k for k in args.ks if k <= num_classes]
    write_seconds = {}
    for k in ks:
        start = time.perf_counter()
        cache.cache_teacher(
            teacher, x_train, os.path.join(folder, f"students_k{k}"), k=k,
            temperature=temperature, batch_size=512, verbose=0,
        )
        write_seconds[k] = time.perf_counter() - start

    rows = [("online teacher (dense)", None, [train(None, seed, None) for seed in range(args.seeds)])]
    for k in ks:
        results = []
        for seed in range(args.seeds):
            targets = cache.CachedTargets(
                os.path.join(folder, f"students_k{k}"), x_train, labels=y_train,
                batch_size=config.batch_size, shuffle=True, seed=seed,
            )
            results.append(train(None, seed, targets))
        rows.append((f"cache, k={k}", k, results))

    online_epoch = statistics.mean(r[2] for r in rows[0][2])
    print(
        f"Teacher: {teacher.count_params():,} parameters, test accuracy "
        f"{100 * teacher_accuracy:.2f}%. Student runs: {args.seeds} seeds, {epochs} epochs."
    )
    print("| targets | cache write s | test accuracy % | agreement with teacher % | epoch s | speed-up |")
    print("|---|---|---|---|---|---|")
    for label, k, results in rows:
        accuracy = [100 * r[0] for r in results]
        agreement = [100 * r[1] for r in results]
        epoch = statistics.mean(r[2] for r in results)

        def cell(values):
            if len(values) == 1:
                return f"{values[0]:.2f}"
            return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

        written = "" if k is None else f"{write_seconds[k]:.1f}"
        print(
            f"| {label} | {written} | {cell(accuracy)} | {cell(agreement)} | "
            f"{epoch:.2f} | {online_epoch / epoch:.1f}x |"
        )
        sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=["size", "students"])
    parser.add_argument("--tiny", action="store_true", help="Run on a tiny shape.")
    parser.add_argument("--seeds", type=int, default=2, help="Seeds per student. Defaults to 2.")
    parser.add_argument("--epochs", type=int, default=5, help="Student epochs. Defaults to 5.")
    parser.add_argument(
        "--ks", type=lambda text: [int(v) for v in text.split(",")], default=[1, 3, 5, 10],
        help="Comma-separated k of the student caches. Defaults to 1,3,5,10.",
    )
    parser.add_argument(
        "--folder", default=None,
        help="Folder for the caches. Defaults to a temporary folder, removed at the end.",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1.")

    import keras

    print(f"backend: {keras.backend.backend()}, keras {keras.__version__}, {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.folder or temporary
        if "size" in args.parts:
            run_size(args, folder)
        if "students" in args.parts:
            run_students(args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
