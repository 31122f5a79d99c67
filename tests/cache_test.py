"""Teacher cache: round trip, resume, corruption and alignment checks."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd import cache
from keras_abkd.cache import writer

CLASSES = 6
ROWS = 40
SHARD_SIZE = 16
BATCH_SIZE = 8


def _teacher(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(CLASSES)], name="tiny_teacher"
    )


def _inputs(rows=ROWS):
    return np.random.default_rng(0).normal(size=(rows, 5)).astype("float32") * 3


def _reference_targets(teacher, x, k, temperature):
    """Packed targets from the teacher's dense logits, computed in float64 numpy."""
    logits = np.asarray(teacher.predict(x, verbose=0), dtype="float64")
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, ids, -1)
    rest = logits.copy()
    np.put_along_axis(rest, ids, -np.inf, -1)
    with np.errstate(divide="ignore"):
        tail = temperature * np.log(np.exp(rest / temperature).sum(-1, keepdims=True))
    return np.concatenate([values, ids, tail], -1)


def _write(directory, teacher, x, k=3, temperature=2.0, **kwargs):
    kwargs.setdefault("shard_size", SHARD_SIZE)
    kwargs.setdefault("batch_size", BATCH_SIZE)
    return cache.cache_teacher(
        teacher, x, str(directory), k=k, temperature=temperature, verbose=0, **kwargs
    )


def _all_targets(directory, x, **kwargs):
    dataset = cache.CachedTargets(str(directory), x, batch_size=BATCH_SIZE, **kwargs)
    return np.concatenate([dataset[i][1] for i in range(len(dataset))])


def _shard_path(directory, index):
    manifest = cache.open_cache(str(directory))
    return os.path.join(str(directory), manifest.shard_entry(index)["file"])


def test_round_trip_matches_teacher(tmp_path):
    teacher, x = _teacher(), _inputs()
    manifest = _write(tmp_path, teacher, x)

    assert manifest["num_shards"] == 3
    assert manifest["classes"] == CLASSES
    assert manifest["ids_dtype"] == "uint16"
    assert manifest["teacher"]["parameters"] == 5 * CLASSES + CLASSES
    assert manifest["fingerprint"] == cache.fingerprint(x)
    assert sorted(os.listdir(tmp_path)) == [
        "manifest.json",
        "shard-00000-of-00003.safetensors",
        "shard-00001-of-00003.safetensors",
        "shard-00002-of-00003.safetensors",
    ]
    targets = _all_targets(tmp_path, x)
    expected = _reference_targets(teacher, x, 3, 2.0)
    assert targets.shape == (ROWS, 7)
    assert targets.dtype == np.float32
    np.testing.assert_allclose(targets, expected, rtol=1e-6, atol=1e-6)


def test_shuffled_batches_keep_rows_aligned(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)
    expected = _reference_targets(teacher, x, 3, 2.0)
    row_ids = np.arange(ROWS)

    dataset = cache.CachedTargets(
        str(tmp_path), x, labels=row_ids, batch_size=BATCH_SIZE, shuffle=True, seed=1
    )
    seen = []
    for index in range(len(dataset)):
        inputs, y = dataset[index]
        rows = y["labels"]
        np.testing.assert_array_equal(inputs, x[rows])
        np.testing.assert_allclose(y["teacher_targets"], expected[rows], rtol=1e-6, atol=1e-6)
        seen.extend(rows.tolist())

    assert sorted(seen) == list(range(ROWS))
    assert seen != list(range(ROWS))


def test_float16_logits_are_smaller(tmp_path):
    teacher, x = _teacher(), _inputs()
    full = _write(tmp_path / "float32", teacher, x)
    half = _write(tmp_path / "float16", teacher, x, dtype="float16")

    def size(manifest):
        return sum(manifest.shard_entry(i)["bytes"] for i in range(manifest.num_shards))

    assert size(half) < size(full)
    np.testing.assert_allclose(
        _all_targets(tmp_path / "float16", x),
        _all_targets(tmp_path / "float32", x),
        rtol=1e-3,
        atol=1e-3,
    )


def test_resume_after_error_keeps_finished_shards(tmp_path, monkeypatch):
    teacher, x = _teacher(), _inputs()
    original = writer._run_batch
    calls = []

    def failing_run_batch(*args):
        calls.append(args[3])
        if len(calls) == 4:
            raise RuntimeError("interrupted")
        return original(*args)

    monkeypatch.setattr(writer, "_run_batch", failing_run_batch)
    with pytest.raises(RuntimeError, match="interrupted"):
        _write(tmp_path, teacher, x)
    with pytest.raises(cache.CacheError, match="incomplete: 1 of 3 shards"):
        cache.CachedTargets(str(tmp_path), x)

    calls.clear()
    _write(tmp_path, teacher, x)

    # Shard 0 (rows 0-15) is kept, and shards 1 and 2 are computed again.
    assert calls == [16, 24, 32]
    np.testing.assert_allclose(
        _all_targets(tmp_path, x), _reference_targets(teacher, x, 3, 2.0), atol=1e-6
    )


def test_resume_after_killed_process(tmp_path):
    teacher, x = _teacher(), _inputs()
    teacher.save(tmp_path / "teacher.keras")
    np.save(tmp_path / "x.npy", x)
    directory = tmp_path / "cache"
    # The child process dies halfway through writing shard 1, as under
    # SIGKILL: a partial temporary file remains and the manifest lists shard 0.
    script = textwrap.dedent(
        f"""
        import os
        import keras
        import numpy as np
        from keras_abkd.cache import manifest, writer

        def dying_write(path, data):
            if "shard-00001" in path:
                with open(path + ".tmp-1", "wb") as file:
                    file.write(data[: len(data) // 2])
                os._exit(9)
            original(path, data)

        original = manifest.write_atomically
        writer.shards.write_atomically = dying_write
        teacher = keras.saving.load_model({str(tmp_path / "teacher.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        writer.cache_teacher(teacher, x, {str(directory)!r}, k=3, temperature=2.0,
                             batch_size={BATCH_SIZE}, shard_size={SHARD_SIZE}, verbose=0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == 9, result.stderr.decode()[-2000:]
    with open(directory / "manifest.json") as file:
        assert sorted(json.load(file)["shards"]) == ["0"]
    assert os.path.exists(directory / "shard-00001-of-00003.safetensors.tmp-1")

    _write(directory, keras.saving.load_model(tmp_path / "teacher.keras"), x)

    assert not [name for name in os.listdir(directory) if ".tmp-" in name]
    np.testing.assert_allclose(
        _all_targets(directory, x), _reference_targets(teacher, x, 3, 2.0), atol=1e-6
    )


def test_corrupt_shard_rejected_then_rewritten(tmp_path, caplog):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)
    path = _shard_path(tmp_path, 1)
    with open(path, "r+b") as file:
        file.seek(-5, os.SEEK_END)
        byte = file.read(1)
        file.seek(-5, os.SEEK_END)
        file.write(bytes([byte[0] ^ 0xFF]))

    dataset = cache.CachedTargets(str(tmp_path), x, batch_size=BATCH_SIZE)
    dataset[0]
    with pytest.raises(cache.CacheError, match="shard-00001-of-00003.safetensors is corrupt"):
        dataset[2]

    with caplog.at_level("WARNING", logger="keras_abkd.cache.writer"):
        _write(tmp_path, teacher, x)
    assert "Rewriting shard 1" in caplog.text
    np.testing.assert_allclose(
        _all_targets(tmp_path, x), _reference_targets(teacher, x, 3, 2.0), atol=1e-6
    )


def test_truncated_or_missing_shard_rejected(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)
    path = _shard_path(tmp_path, 2)
    with open(path, "r+b") as file:
        file.truncate(100)

    dataset = cache.CachedTargets(str(tmp_path), x, batch_size=BATCH_SIZE)
    with pytest.raises(cache.CacheError, match="has 100 bytes, but the manifest records"):
        dataset[len(dataset) - 1]
    os.remove(path)
    with pytest.raises(cache.CacheError, match="cannot be read"):
        dataset[len(dataset) - 1]


def test_shard_of_wrong_position_rejected(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)
    manifest_path = tmp_path / "manifest.json"
    fields = json.loads(manifest_path.read_text())
    fields["shards"]["0"], fields["shards"]["1"] = fields["shards"]["1"], fields["shards"]["0"]
    fields["shards"]["0"]["start"], fields["shards"]["1"]["start"] = 0, SHARD_SIZE
    manifest_path.write_text(json.dumps(fields))

    dataset = cache.CachedTargets(str(tmp_path), x, batch_size=BATCH_SIZE)
    with pytest.raises(cache.CacheError, match="but the manifest expects shard 0"):
        dataset[0]


def test_misaligned_dataset_rejected(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)

    with pytest.raises(cache.CacheError, match="has 40 rows, but the dataset has 39"):
        cache.CachedTargets(str(tmp_path), x[:-1])
    with pytest.raises(cache.CacheError, match="The dataset does not match the cache"):
        cache.CachedTargets(str(tmp_path), x[::-1])
    with pytest.raises(cache.CacheError, match="The dataset does not match the cache"):
        cache.CachedTargets(str(tmp_path), x.astype("float64"))
    with pytest.raises(ValueError, match="labels has 3 entries"):
        cache.CachedTargets(str(tmp_path), x, labels=np.zeros(3))
    with pytest.raises(cache.CacheError, match="manifest.json is missing"):
        cache.CachedTargets(str(tmp_path / "absent"), x)


def test_resume_with_other_settings_rejected(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)

    with pytest.raises(cache.CacheError, match="written with k=3, but k=4 was given"):
        _write(tmp_path, teacher, x, k=4)
    with pytest.raises(cache.CacheError, match="temperature=2.0, but temperature=1.0"):
        _write(tmp_path, teacher, x, temperature=1.0)
    with pytest.raises(cache.CacheError, match="written with teacher="):
        _write(tmp_path, _teacher(seed=1), x)
    with pytest.raises(cache.CacheError, match="written with fingerprint="):
        _write(tmp_path, teacher, x + 1.0)
    with pytest.raises(cache.CacheError, match="shard_size=16, but shard_size=8"):
        _write(tmp_path, teacher, x, shard_size=8)


def test_writer_rejects_bad_arguments(tmp_path):
    teacher, x = _teacher(), _inputs()
    with pytest.raises(ValueError, match="teacher must be a keras.Model"):
        _write(tmp_path, "teacher.keras", x)
    with pytest.raises(ValueError, match="dtype must be one of"):
        _write(tmp_path, teacher, x, dtype="bfloat16")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _write(tmp_path, teacher, x, batch_size=0)
    with pytest.raises(ValueError, match="k=7 is larger than the number of classes"):
        _write(tmp_path / "large_k", teacher, x, k=7)
    with pytest.raises(ValueError, match="The dataset contains no examples"):
        _write(tmp_path / "empty", teacher, x[:0])
    with pytest.raises(ValueError, match="same number of rows"):
        _write(tmp_path / "ragged", teacher, {"a": x, "b": x[:3]})


def test_loss_temperature_must_match_cache(tmp_path):
    teacher, x = _teacher(), _inputs()
    _write(tmp_path, teacher, x)
    dataset = cache.CachedTargets(str(tmp_path), x)

    loss = dataset.top_k_divergence(keras_abkd.ABDivergence(0.2, 0.7, temperature=2.0))

    assert isinstance(loss, keras_abkd.TopKDivergence)
    with pytest.raises(ValueError, match="written at temperature=2.0"):
        dataset.top_k_divergence(keras_abkd.ABDivergence(0.2, 0.7, temperature=1.0))


def test_distiller_from_full_cache_equals_online(tmp_path):
    teacher, x = _teacher(), _inputs()
    labels = np.arange(ROWS) % CLASSES
    weights = np.linspace(0.5, 1.5, ROWS)
    _write(tmp_path, teacher, x, k=CLASSES)
    divergence = keras_abkd.ABDivergence(1.0, 0.5, temperature=2.0)
    keras.utils.set_random_seed(3)
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(CLASSES)])

    online = keras_abkd.Distiller(teacher, student, divergence, student_loss_weight=0.5)
    online.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = online.evaluate(
        x, labels, sample_weight=weights, batch_size=BATCH_SIZE, verbose=0, return_dict=True
    )

    dataset = cache.CachedTargets(
        str(tmp_path), x, labels=labels, sample_weight=weights, batch_size=BATCH_SIZE
    )
    offline = keras_abkd.Distiller(
        None, student, dataset.top_k_divergence(divergence), student_loss_weight=0.5
    )
    offline.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = offline.evaluate(dataset, verbose=0, return_dict=True)

    for key in ("distillation_loss", "student_loss", "loss", "accuracy"):
        assert result[key] == pytest.approx(expected[key], abs=1e-5), key
    history = offline.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_distiller_without_teacher_rejects_bad_targets():
    student = keras.Sequential([keras.Input((5,)), keras.layers.Dense(CLASSES)])
    distiller = keras_abkd.Distiller(None, student, keras_abkd.ForwardKL())
    distiller.compile()
    with pytest.raises(ValueError, match="got keys \\['targets'\\]"):
        distiller.evaluate(_inputs(8), {"targets": np.zeros((8, CLASSES))}, verbose=0)
    with pytest.raises(ValueError, match="has no teacher model"):
        distiller.teacher_logits(_inputs(8))
