"""`CachedTargets`: stream a teacher cache as training batches for a student."""

import keras
import numpy as np

from keras_abkd.cache import dataset as dataset_lib
from keras_abkd.cache import preprocessing
from keras_abkd.cache import shards
from keras_abkd.cache.manifest import CacheError
from keras_abkd.cache.manifest import Manifest
from keras_abkd.distiller import LABELS
from keras_abkd.distiller import TEACHER_TARGETS
from keras_abkd.losses.top_k_divergence import TopKDivergence


def open_cache(directory):
    """Read the manifest of a complete cache, or raise `CacheError`."""
    manifest = Manifest.load(directory)
    if manifest is None:
        raise CacheError(
            f"No teacher cache found in {directory}: manifest.json is missing. "
            "Write one with keras_abkd.cache.cache_teacher or "
            "`keras-abkd cache-teacher`."
        )
    if not manifest.complete:
        raise CacheError(
            f"The cache in {directory} is incomplete: {manifest.finished_shards} "
            f"of {manifest.num_shards} shards are written. Run cache_teacher "
            "again with the same arguments to finish it."
        )
    return manifest


def _per_example(values, name, rows):
    if values is None:
        return None
    values = np.asarray(values)
    if len(values) != rows:
        raise ValueError(
            f"{name} has {len(values)} entries but the dataset has {rows} examples."
        )
    return values


class CachedTargets(keras.utils.PyDataset):
    """Batches of student inputs with the cached teacher targets as `y`.

    Each batch is `(x, y, sample_weight)`. `x` is the student's inputs for
    the batch's rows of `data`, after `preprocess`. `y` is the packed top-k
    targets `[batch, ..., 2k + 1]` (see `keras_abkd.losses.top_k`), or
    `{"teacher_targets": ..., "labels": ...}` when labels are given, the
    layout `keras_abkd.Distiller(teacher=None)` reads. `sample_weight` is
    the product of the cached per-position weights (the distilled tokens of
    a causal LM) and `sample_weight`, or None when neither exists.

    The cache must be complete, and `data` must be the dataset the cache was
    written from, in the same order: its row count and fingerprint are
    checked when the dataset is created. Every shard's SHA-256 is checked
    the first time it is read.

    Shuffling visits the shards in a random order and the rows of each shard
    in a random order, so one shard is in memory at a time. A batch never
    spans two shards, so the last batch of each shard may be smaller.

    Args:
        directory: Folder written by `cache_teacher`.
        data: The raw dataset passed to `cache_teacher`.
        labels: Optional labels, one per example, for a supervised loss.
        sample_weight: Optional weights, one per example.
        batch_size: Examples per batch. Defaults to 32.
        shuffle: Whether to visit the rows in a new random order each epoch.
            Defaults to False.
        preprocess: Function from a batch of raw rows to the student's
            inputs `x`, or to `(x, y, sample_weight)`, as in
            `cache_teacher`. Its `y` is used as labels and its weights must
            equal the cached weights. Defaults to None, rows unchanged; use
            `keras_abkd.cache.task_preprocessor(student)` for a KerasHub
            student.
        seed: Optional seed of the shuffling.
        **kwargs: Passed to `keras.utils.PyDataset` (`workers`,
            `use_multiprocessing`, `max_queue_size`).

    Example:

    ```python
    targets = keras_abkd.cache.CachedTargets(
        "teacher_cache", x_train, labels=y_train, batch_size=128, shuffle=True
    )
    distiller = keras_abkd.Distiller(
        teacher=None,
        student=student,
        distillation_loss=targets.top_k_divergence(
            keras_abkd.ABDivergence(alpha=1.0, beta=0.5, temperature=2.0)
        ),
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    distiller.fit(targets, epochs=5)
    ```
    """

    def __init__(
        self,
        directory,
        data,
        labels=None,
        sample_weight=None,
        batch_size=32,
        shuffle=False,
        preprocess=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got batch_size={batch_size!r}."
            )
        self.directory = str(directory)
        self.manifest = open_cache(self.directory)
        rows = dataset_lib.count_rows(data)
        if rows != self.manifest["rows"]:
            raise CacheError(
                f"The cache in {self.directory} has {self.manifest['rows']} rows, "
                f"but the dataset has {rows} examples. Pass the dataset the cache "
                "was written from."
            )
        data_fingerprint = dataset_lib.fingerprint(data)
        if data_fingerprint != self.manifest["fingerprint"]:
            raise CacheError(
                f"The dataset does not match the cache in {self.directory}: its "
                f"fingerprint is {data_fingerprint}, the cache was written from "
                f"{self.manifest['fingerprint']}. Pass the same inputs, with the "
                "same dtype and order, that cache_teacher read."
            )

        self.data = data
        self.labels = _per_example(labels, "labels", rows)
        self.sample_weight = _per_example(sample_weight, "sample_weight", rows)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.preprocess = preprocess
        self._rng = np.random.default_rng(seed)
        self._verified = set()
        self._loaded_index = None
        self._loaded_arrays = None
        self._plan = self._make_plan()

    @property
    def k(self):
        return self.manifest["k"]

    @property
    def temperature(self):
        return self.manifest["temperature"]

    def top_k_divergence(self, divergence):
        """Wrap `divergence` in a `TopKDivergence` at the cache's temperature.

        Raises:
            ValueError: if the divergence has another temperature, because
                the cached tail bucket is exact only at the cache's.
        """
        own_temperature = getattr(divergence, "temperature", None)
        if own_temperature is not None and own_temperature != self.temperature:
            raise ValueError(
                f"The cache in {self.directory} was written at temperature="
                f"{self.temperature}, but the divergence has temperature="
                f"{own_temperature}. Use the cache's temperature, or write a "
                "cache at the divergence's."
            )
        return TopKDivergence(divergence, temperature=self.temperature)

    def _make_plan(self):
        """List `(shard_index, rows)` per batch; rows are relative to the shard."""
        order = np.arange(self.manifest.num_shards)
        if self.shuffle:
            self._rng.shuffle(order)
        plan = []
        for index in order:
            start, stop = self.manifest.shard_rows(int(index))
            rows = np.arange(stop - start)
            if self.shuffle:
                self._rng.shuffle(rows)
            for offset in range(0, len(rows), self.batch_size):
                plan.append((int(index), rows[offset : offset + self.batch_size]))
        return plan

    def _shard(self, index):
        if self._loaded_index != index:
            self._loaded_arrays = None
            arrays = shards.read_shard(
                self.directory,
                self.manifest,
                index,
                verify=index not in self._verified,
            )
            self._verified.add(index)
            self._loaded_index, self._loaded_arrays = index, arrays
        return self._loaded_arrays

    def __len__(self):
        return len(self._plan)

    def __getitem__(self, batch_index):
        index, shard_rows = self._plan[batch_index]
        arrays = self._shard(index)
        start, _ = self.manifest.shard_rows(index)
        rows = start + shard_rows

        x, labels, weights = preprocessing.apply(
            self.preprocess, dataset_lib.take_rows(self.data, rows)
        )
        # The layout of `keras_abkd.losses.top_k.pack_top_k_targets`, built
        # in numpy because batches are assembled on the host.
        targets = np.concatenate(
            [
                arrays["logits"][shard_rows].astype("float32"),
                arrays["ids"][shard_rows].astype("float32"),
                arrays["tail"][shard_rows][..., None],
            ],
            axis=-1,
        )
        weights = self._combined_weights(arrays, shard_rows, rows, weights)

        if self.labels is not None:
            if labels is not None:
                raise ValueError(
                    "Labels were given both to CachedTargets and by preprocess. "
                    "Pass only one of them."
                )
            labels = self.labels[rows]
        y = targets if labels is None else {TEACHER_TARGETS: targets, LABELS: labels}
        return keras.utils.pack_x_y_sample_weight(x, y, weights)

    def _combined_weights(self, arrays, shard_rows, rows, student_weights):
        cached = arrays.get(shards.WEIGHTS)
        if cached is not None:
            cached = cached[shard_rows]
        if cached is not None and student_weights is not None:
            student_weights = np.asarray(student_weights, dtype="float32")
            if student_weights.shape != cached.shape or not np.array_equal(
                student_weights, cached
            ):
                raise CacheError(
                    "The student's preprocessing marks other positions than the "
                    f"cache for rows {rows[0]} to {rows[-1]} (weights of shape "
                    f"{student_weights.shape} against {cached.shape}). Teacher "
                    "and student must pack the text the same way: same "
                    "tokenizer, sequence length and start and end tokens."
                )
        weights = cached if cached is not None else student_weights
        if self.sample_weight is not None:
            example_weight = self.sample_weight[rows].astype("float32")
            if weights is None:
                weights = example_weight
            else:
                weights = weights * example_weight.reshape(
                    example_weight.shape + (1,) * (weights.ndim - 1)
                )
        return weights

    def on_epoch_end(self):
        if self.shuffle:
            self._plan = self._make_plan()
