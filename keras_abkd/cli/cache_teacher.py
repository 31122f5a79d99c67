"""`keras-abkd cache-teacher`: store a teacher's top-k logits for offline distillation.

Runs the teacher once over a dataset file and writes, per position, its k
largest logits, their class ids and one tail logit for the remaining mass, in
safetensors shards with a manifest.json. Running the command again with the
same arguments resumes an interrupted cache. Train students from the cache
with `keras_abkd.cache.CachedTargets`.
"""

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _keys(text):
    keys = [key.strip() for key in text.split(",") if key.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated array names such as x or token_ids,padding_mask, got {text!r}"
        )
    return keys


def load_teacher(handle, task=None, sequence_length=None):
    """Load a teacher from a `.keras` file or a KerasHub preset handle or folder.

    Args:
        handle: Path of a `.keras` file, or a preset for
            `keras_hub.models.<Task>.from_preset`: a built-in name, a
            `kaggle://` or `hf://` handle, or a local preset folder.
        task: Optional KerasHub task kind (`"causal_lm"`, ...) of a preset.
            Defaults to the kind its backbone supports.
        sequence_length: Optional sequence length set on the task's
            preprocessor.

    Returns:
        A built `keras.Model`.
    """
    import keras

    if handle.endswith(".keras"):
        if not os.path.isfile(handle):
            raise ValueError(f"The teacher file {handle} does not exist.")
        if task is not None:
            raise ValueError("--task applies to KerasHub presets, not to a .keras file.")
        teacher = keras.saving.load_model(handle, compile=False)
    else:
        try:
            from keras_abkd.hub import compatibility
            from keras_abkd.hub import infer_task_kind
        except ImportError:
            raise ValueError(
                f"{handle} is not a .keras file, and loading it as a KerasHub "
                'preset needs keras-hub: pip install "keras-abkd[hub]".'
            ) from None
        kind = task or infer_task_kind(handle)
        if kind not in compatibility.TASK_KINDS:
            raise ValueError(
                f"--task must be one of {sorted(compatibility.TASK_KINDS)}, got {kind!r}."
            )
        teacher = compatibility.TASK_KINDS[kind].from_preset(handle)

    if sequence_length is not None:
        preprocessor = getattr(teacher, "preprocessor", None)
        if preprocessor is None or not hasattr(preprocessor, "sequence_length"):
            raise ValueError(
                "--sequence-length needs a KerasHub teacher whose preprocessor "
                "has a sequence length."
            )
        preprocessor.sequence_length = sequence_length
    return teacher


def run(args):
    from keras_abkd import cache

    try:
        data = cache.load_data_file(args.data, keys=args.keys)
        teacher = load_teacher(args.teacher, args.task, args.sequence_length)
        if isinstance(data, list) and cache.preprocessing.default_preprocessor(teacher) is None:
            raise ValueError(
                f"{args.data} is a text file, but the teacher {teacher.name!r} is "
                "not a KerasHub task with a preprocessor, so it cannot read text. "
                "Pass a KerasHub causal LM preset, or an .npy/.npz file of inputs."
            )
        manifest = cache.cache_teacher(
            teacher,
            data,
            args.output,
            k=args.k,
            temperature=args.temperature,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            dtype=args.dtype,
            verbose=0 if args.quiet else 1,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    total_bytes = sum(
        manifest.shard_entry(index)["bytes"] for index in range(manifest.num_shards)
    )
    print(
        f"Cached {manifest['rows']} examples ({manifest['classes']} classes, "
        f"k={manifest['k']}, temperature={manifest['temperature']:g}) in "
        f"{manifest.num_shards} shards, {total_bytes / 2**20:.2f} MiB, in {args.output}"
    )
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "cache-teacher",
        help="Store a teacher's top-k logits over a dataset, for offline distillation.",
        description=__doc__,
    )
    parser.add_argument(
        "--teacher", required=True,
        help="The teacher: a .keras file, or a KerasHub preset name, handle or folder.",
    )
    parser.add_argument(
        "--data", required=True,
        help="Dataset file: .npy or .npz inputs, or a .txt file with one text per "
        "line for a KerasHub causal LM teacher.",
    )
    parser.add_argument(
        "--keys", type=_keys, default=None,
        help="Comma-separated names of the .npz arrays that are model inputs. "
        "Defaults to every array.",
    )
    parser.add_argument("--output", required=True, help="Folder of the cache, created if missing.")
    parser.add_argument(
        "--k", type=_positive_int, required=True,
        help="Number of logits kept per position, at most the number of classes.",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0,
        help="Temperature of the tail logit, the one the student's divergence "
        "will use. Defaults to 1.0.",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32,
        help="Examples per teacher call. Defaults to 32.",
    )
    parser.add_argument(
        "--shard-size", type=_positive_int, default=None,
        help="Examples per shard file. Defaults to about 256 MiB per shard.",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32",
        help="Storage dtype of the top-k logits. Defaults to float32.",
    )
    parser.add_argument(
        "--task", default=None,
        help="KerasHub task of a preset teacher (causal_lm, image_classifier, "
        "text_classifier). Defaults to the one its backbone supports.",
    )
    parser.add_argument(
        "--sequence-length", type=_positive_int, default=None,
        help="Sequence length of a KerasHub teacher's preprocessor.",
    )
    parser.add_argument("--quiet", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(func=run)
