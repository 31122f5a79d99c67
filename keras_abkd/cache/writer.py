"""`cache_teacher`: run a teacher over a dataset once and store its top-k logits."""

import glob
import hashlib
import logging
import os

import keras
import numpy as np

from keras_abkd.cache import dataset as dataset_lib
from keras_abkd.cache import preprocessing
from keras_abkd.cache import shards
from keras_abkd.cache.manifest import CacheError
from keras_abkd.cache.manifest import Manifest
from keras_abkd.cache.manifest import shard_file_name
from keras_abkd.losses import top_k
from keras_abkd.losses import validation

logger = logging.getLogger(__name__)

LOGITS_DTYPES = ("float32", "float16")

# Size of a shard when `shard_size` is not given: large enough that the
# per-file overhead is small, small enough to hold one shard in memory.
DEFAULT_SHARD_BYTES = 256 * 2**20


class _TopKTeacher(keras.Model):
    """The teacher followed by the top-k selection, as one model.

    `predict_on_batch` compiles both together, so only the top-k logits, not
    the full logits, are copied from the device to the host.
    """

    def __init__(self, teacher, k, temperature):
        super().__init__(name="top_k_teacher")
        self.teacher = teacher
        self.k = k
        self.temperature = temperature
        # The number of classes, set when the first batch is traced.
        self.classes = None
        self.built = True

    def call(self, inputs):
        logits = self.teacher(inputs, training=False)
        classes = logits.shape[-1]
        if classes is None:
            raise ValueError(
                f"The teacher {self.teacher.name!r} returns logits without a "
                "static number of classes. Give its output layer a fixed width."
            )
        if classes > top_k.MAX_EXACT_FLOAT32_ID:
            raise ValueError(
                f"The teacher returns {classes} classes, but packed top-k targets "
                f"store ids as float32, exact only up to {top_k.MAX_EXACT_FLOAT32_ID}."
            )
        top_k.check_k(self.k, classes)
        self.classes = int(classes)
        return top_k.top_k_with_remainder(logits, self.k, self.temperature)


def teacher_description(teacher):
    """Return the manifest's record of a teacher: name, class, size and weights hash.

    The SHA-256 covers every weight in order (names, shapes, dtypes and
    values), so resuming with another teacher of the same architecture is
    rejected.
    """
    digest = hashlib.sha256()
    for weight in teacher.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{weight.path}:{value.dtype.str}:{value.shape}".encode("utf-8"))
        digest.update(value.reshape(-1).view(np.uint8))
    return {
        "name": teacher.name,
        "class": f"{type(teacher).__module__}.{type(teacher).__name__}",
        "parameters": int(teacher.count_params()),
        "weights_sha256": digest.hexdigest(),
    }


def _check_arguments(teacher, k, batch_size, shard_size, dtype):
    if not isinstance(teacher, keras.Model):
        raise ValueError(
            f"teacher must be a keras.Model, got {type(teacher).__name__}. Load "
            "a saved model with keras.saving.load_model."
        )
    top_k.check_k(k, None)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value is None and name == "shard_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}.")
    if dtype not in LOGITS_DTYPES:
        raise ValueError(
            f"dtype must be one of {LOGITS_DTYPES}, got dtype={dtype!r}. float16 "
            "halves the size of the logits at about 3 significant digits."
        )


def _run_batch(model, data, preprocess, start, stop, dtype):
    """Run the teacher on rows `[start, stop)` and return the shard arrays."""
    raw = dataset_lib.take_rows(data, slice(start, stop))
    inputs, _, weights = preprocessing.apply(preprocess, raw)
    values, ids, tail = model.predict_on_batch(inputs)
    values = np.asarray(values)
    if np.isnan(values).any():
        raise ValueError(
            f"The teacher returned NaN logits for rows {start} to {stop - 1}. "
            "Check the teacher and these inputs before caching."
        )
    arrays = {
        "logits": values.astype(dtype),
        "ids": np.asarray(ids),
        "tail": np.asarray(tail, dtype="float32"),
    }
    if weights is not None:
        arrays[shards.WEIGHTS] = np.broadcast_to(
            np.asarray(weights, dtype="float32"), arrays["tail"].shape
        )
    return arrays


def _default_shard_size(first, batch_size):
    rows = len(first["logits"])
    bytes_per_row = sum(array.nbytes for array in first.values()) / rows
    batches = max(1, int(DEFAULT_SHARD_BYTES // (bytes_per_row * batch_size)))
    return batches * batch_size


def _new_manifest(first, settings, shard_size, batch_size):
    classes = settings["classes"]
    return Manifest.create(
        teacher=settings["teacher"],
        k=settings["k"],
        temperature=settings["temperature"],
        logits_dtype=settings["logits_dtype"],
        ids_dtype="uint16" if classes <= 2**16 else "int32",
        rows=settings["rows"],
        fingerprint=settings["fingerprint"],
        shard_size=shard_size or _default_shard_size(first, batch_size),
        classes=classes,
        position_shape=first["tail"].shape[1:],
        has_weights=shards.WEIGHTS in first,
    )


def _verified_shards(directory, manifest):
    """Drop manifest entries whose shard file fails its checks; return the rest."""
    finished = set()
    for index in range(manifest.num_shards):
        if manifest.shard_entry(index) is None:
            continue
        try:
            shards.read_shard(directory, manifest, index)
        except CacheError as error:
            logger.warning("Rewriting shard %d of %s: %s", index, directory, error)
            manifest.remove_shard_entry(index)
            continue
        finished.add(index)
    return finished


def _remove_temporary_files(directory):
    for path in glob.glob(os.path.join(directory, "*.tmp-*")):
        os.remove(path)


def cache_teacher(
    teacher,
    data,
    directory,
    k,
    temperature=1.0,
    batch_size=32,
    shard_size=None,
    dtype="float32",
    preprocess="auto",
    verbose="auto",
):
    """Run a teacher over a dataset once and write its top-k logits to a cache.

    For every position of every example the cache stores the `k` largest
    teacher logits, their class ids and the tail logit
    `T * logsumexp(z_j / T)` over the other classes, in safetensors shards
    with a `manifest.json` (see `keras_abkd.cache` for the layout). Students
    then train from the cache with `CachedTargets`, so a sweep over
    divergences runs the teacher once.

    The call resumes an interrupted cache: shards recorded in the manifest
    whose file passes its size and SHA-256 check are kept, a shard that
    fails them is written again, and the rest are computed. Each shard and
    the manifest are written to a temporary file and renamed, so a killed
    run leaves no partial shard in the manifest. A cache written with
    another teacher, `k`, temperature, dtype or dataset raises `CacheError`.

    NOTE: nothing locks the folder, so two processes writing the same cache
    at once can overwrite each other's shards and manifest entries.

    Args:
        teacher: A built `keras.Model` returning logits `[batch, ..., classes]`,
            for example a KerasHub task.
        data: The raw dataset: an array, a list of strings, or a dict or
            tuple of them, one row per example. Its order is the cache's
            order, and its fingerprint is stored to check the reader's data.
        directory: Folder of the cache, created if missing.
        k: Number of logits kept per position, at most the number of
            classes. `k` equal to the number of classes keeps everything.
        temperature: Temperature `T` of the tail logit, the temperature of
            the divergence that will read the cache. Defaults to 1.0.
        batch_size: Examples per teacher call. Defaults to 32.
        shard_size: Examples per shard, a multiple of `batch_size` works
            best. Defaults to the number that makes a shard about 256 MiB.
        dtype: Storage dtype of the top-k logits, `"float32"` (the default)
            or `"float16"`.
        preprocess: Function from a batch of raw rows to the teacher's
            inputs `x`, or to `(x, y, sample_weight)`, whose `sample_weight`
            is stored as per-position weights. `"auto"` (the default) uses
            the task's preprocessor for a KerasHub task (packing text for a
            causal LM) and passes rows unchanged otherwise. None passes rows
            unchanged.
        verbose: `"auto"`, 0 or 1: whether to show a `keras.utils.Progbar`.
            `"auto"` shows one.

    Returns:
        The `Manifest` of the complete cache.

    Example:

    ```python
    keras_abkd.cache.cache_teacher(teacher, x_train, "teacher_cache", k=5, temperature=2.0)
    targets = keras_abkd.cache.CachedTargets("teacher_cache", x_train, labels=y_train)
    ```
    """
    _check_arguments(teacher, k, batch_size, shard_size, dtype)
    temperature = validation.check_temperature(temperature)
    if preprocess == "auto":
        preprocess = preprocessing.default_preprocessor(teacher)
    rows = dataset_lib.count_rows(data)
    if rows == 0:
        raise ValueError("The dataset contains no examples.")
    settings = {
        "teacher": teacher_description(teacher),
        "k": int(k),
        "temperature": temperature,
        "logits_dtype": dtype,
        "rows": rows,
        "fingerprint": dataset_lib.fingerprint(data),
    }
    os.makedirs(directory, exist_ok=True)
    _remove_temporary_files(directory)
    model = _TopKTeacher(teacher, int(k), temperature)

    manifest = Manifest.load(directory)
    pending = None
    if manifest is None:
        # The first batch also sizes the default shard, and must lie within
        # shard 0 whatever its size.
        first_rows = min(batch_size, shard_size or batch_size, rows)
        pending = _run_batch(model, data, preprocess, 0, first_rows, dtype)
        settings["classes"] = model.classes
        manifest = _new_manifest(pending, settings, shard_size, batch_size)
        manifest.save(directory)
        finished = set()
    else:
        manifest.check_matches(directory, settings)
        if shard_size is not None and shard_size != manifest["shard_size"]:
            raise CacheError(
                f"The cache in {directory} has shard_size={manifest['shard_size']}, "
                f"but shard_size={shard_size} was given. Leave shard_size unset "
                "to resume it."
            )
        finished = _verified_shards(directory, manifest)
        manifest.save(directory)
        if finished:
            logger.info("Resuming %s: %d shards already written", directory, len(finished))

    progress = None
    if verbose in ("auto", 1, True):
        progress = keras.utils.Progbar(rows, unit_name="example")
    for index in range(manifest.num_shards):
        start, stop = manifest.shard_rows(index)
        if index in finished:
            if progress is not None:
                progress.add(stop - start)
            continue

        parts = []
        position = start
        while position < stop:
            batch_stop = min(position + batch_size, stop)
            if pending is not None and index == 0 and position == 0:
                batch = pending
                batch_stop = position + len(pending["logits"])
                pending = None
            else:
                batch = _run_batch(model, data, preprocess, position, batch_stop, dtype)
            batch["ids"] = batch["ids"].astype(manifest["ids_dtype"])
            source = f"The teacher output for rows {position} to {batch_stop - 1}"
            shards.check_arrays(batch, manifest, batch_stop - position, source)
            parts.append(batch)
            if progress is not None:
                progress.add(batch_stop - position)
            position = batch_stop

        arrays = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        path = os.path.join(directory, shard_file_name(index, manifest.num_shards))
        entry = shards.write_shard(path, arrays, index, start)
        manifest.set_shard_entry(index, entry)
        manifest.save(directory)
        logger.info("Wrote %s (%d rows)", path, entry["rows"])
    return manifest

