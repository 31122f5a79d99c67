"""`keras-abkd cache-teacher` end to end, on a .keras file and a KerasHub preset."""

import re

import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd import cache
from keras_abkd.cli import main as cli_main
from keras_abkd.cli.cache_teacher import load_teacher

CLASSES = 6


@pytest.fixture
def teacher_files(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(CLASSES)], name="cli_teacher")
    teacher.save(tmp_path / "teacher.keras")
    x = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(30) % CLASSES)
    return tmp_path, teacher, x


def _run(*argv):
    return cli_main.main(["cache-teacher", *argv])


def test_cli_writes_and_resumes_cache(teacher_files, capsys):
    folder, teacher, x = teacher_files
    argv = [
        "--teacher", str(folder / "teacher.keras"), "--data", str(folder / "x.npy"),
        "--output", str(folder / "cache"), "--k", "2", "--temperature", "2",
        "--batch-size", "8", "--shard-size", "16", "--dtype", "float16", "--quiet",
    ]

    assert _run(*argv) == 0
    assert _run(*argv) == 0

    output = capsys.readouterr().out
    assert output.count("Cached 30 examples (6 classes, k=2, temperature=2) in 2 shards") == 2
    manifest = cache.open_cache(str(folder / "cache"))
    assert manifest["logits_dtype"] == "float16"
    dataset = cache.CachedTargets(str(folder / "cache"), x, batch_size=30)
    # A batch never spans two shards, so the 30 rows come in two batches.
    targets = np.concatenate([dataset[0][1], dataset[1][1]])
    logits = teacher.predict(x, verbose=0)
    np.testing.assert_array_equal(targets[:, 2:4], np.argsort(-logits, axis=-1)[:, :2])


def test_cli_reads_selected_npz_arrays(teacher_files):
    folder, _, x = teacher_files

    code = _run(
        "--teacher", str(folder / "teacher.keras"), "--data", str(folder / "data.npz"),
        "--keys", "x", "--output", str(folder / "cache"), "--k", "3", "--quiet",
    )

    assert code == 0
    assert cache.open_cache(str(folder / "cache"))["fingerprint"] == cache.fingerprint(x)
    assert cache.load_data_file(folder / "data.npz", keys=["x"]).shape == (30, 4)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--teacher": "absent.keras"}, "The teacher file .*absent.keras does not exist"),
        ({"--data": "x.csv"}, "Unsupported dataset file"),
        ({"--data": "lines.txt"}, "cannot read text"),
        ({"--data": "data.npz", "--keys": "z"}, "has no arrays named \\['z'\\]"),
        ({"--k": "7"}, "k=7 is larger than the number of classes"),
    ],
)
def test_cli_rejects_bad_input(teacher_files, capsys, change, message):
    folder, _, _ = teacher_files
    (folder / "lines.txt").write_text("one line\nanother line\n")
    (folder / "x.csv").write_text("1,2,3,4\n")
    arguments = {
        "--teacher": "teacher.keras",
        "--data": "x.npy",
        "--output": "cache",
        "--k": "3",
    }
    arguments.update(change)
    argv = ["--quiet"]
    for flag, value in arguments.items():
        argv += [flag, value if flag in ("--k", "--keys") else str(folder / value)]

    assert _run(*argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert re.search(message, error), error


def test_cli_rejects_non_positive_k(teacher_files):
    folder, _, _ = teacher_files
    with pytest.raises(SystemExit):
        _run("--teacher", str(folder / "teacher.keras"), "--data", str(folder / "x.npy"),
             "--output", str(folder / "cache"), "--k", "0")


@pytest.mark.slow
def test_cli_caches_causal_lm_preset(tmp_path, capsys):
    pytest.importorskip("keras_hub")
    from tests.hub_causal_lm_test import gpt2_causal_lm
    from tests.hub_causal_lm_test import save_preset

    keras.utils.set_random_seed(1)
    preset = save_preset(gpt2_causal_lm(num_layers=2, hidden_dim=16), tmp_path / "teacher")
    lines = ["a b c", "ab ab", "c a", "b", "a a a a a a a", "c c b"]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n\n")

    code = _run(
        "--teacher", preset, "--data", str(tmp_path / "lines.txt"),
        "--output", str(tmp_path / "cache"), "--k", "4", "--batch-size", "4", "--quiet",
    )

    assert code == 0, capsys.readouterr().err
    manifest = cache.open_cache(str(tmp_path / "cache"))
    assert manifest["position_shape"] == [6]
    assert manifest["has_weights"] is True
    assert manifest["classes"] == 10

    student = gpt2_causal_lm()
    texts = cache.load_data_file(tmp_path / "lines.txt")
    assert texts == lines
    dataset = cache.CachedTargets(
        str(tmp_path / "cache"), texts, batch_size=6,
        preprocess=cache.task_preprocessor(student),
    )
    x, y, weights = dataset[0]
    assert y["teacher_targets"].shape == (6, 6, 9)
    assert weights.shape == (6, 6)

    teacher = load_teacher(preset)
    logits = keras.ops.convert_to_numpy(teacher(x))
    expected = np.sort(logits, axis=-1)[..., ::-1][..., :4]
    np.testing.assert_allclose(y["teacher_targets"][..., :4], expected, rtol=1e-5, atol=1e-5)

    distiller = keras_abkd.Distiller(
        None,
        student,
        dataset.top_k_divergence(keras_abkd.ABDivergence(0.2, 0.7)),
        student_loss_weight=0.5,
    )
    distiller.compile(loss=keras_abkd.hub.TokenCrossEntropy())
    result = distiller.evaluate(dataset, verbose=0, return_dict=True)
    assert np.isfinite(result["distillation_loss"])
    assert result["student_loss"] > 0

    student.preprocessor.sequence_length = 5
    misaligned = cache.CachedTargets(
        str(tmp_path / "cache"), texts, preprocess=cache.task_preprocessor(student)
    )
    with pytest.raises(cache.CacheError, match="marks other positions than the cache"):
        misaligned[0]
