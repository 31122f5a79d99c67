"""The `causal_lm` task of `keras-abkd sweep`: GPT-2 on WordNet definitions.

The teacher is a small KerasHub GPT-2 pretrained here on the Shakespeare
texts, then fine-tuned on `"Define X:"` -> `" gloss"` pairs of WordNet nouns
(see `keras_abkd.cli.offline_gpt2`); it is trained once and cached as a
KerasHub preset. The student is a smaller GPT-2 with the teacher's
tokenizer, distilled with `keras_abkd.hub.HubDistiller` on the response
tokens only. The tokenizer is a byte-level BPE vocabulary trained on the
same texts (2,048 tokens by default).

The WordNet pairs are split into train, validation and test sets; the
teacher is fine-tuned on the training pairs only. Each student reports:

- `val_rouge_l`, `test_rouge_l`: ROUGE-L F-measure (0 to 1) of greedy
  generations against the reference glosses,
- `val_kl`, `test_kl`: forward KL(teacher || student) in nats per response
  token, the teacher-forced divergence on the reference responses,
- `val_cross_entropy`, `test_cross_entropy`: the student's cross-entropy of
  the reference response tokens, in nats per token.

The labels-only student is the same student fine-tuned on the responses
with the cross-entropy alone.
"""

import hashlib
import json
import logging
import os
import time

import numpy as np

from keras_abkd.cli import offline_gpt2
from keras_abkd.sweep import MAXIMIZE
from keras_abkd.sweep import MINIMIZE
from keras_abkd.sweep import SweepTask
from keras_abkd.sweep import register_task

logger = logging.getLogger(__name__)

# Seed of the WordNet shuffle that orders, then splits, the pairs.
SPLIT_SEED = 0
# Seed of the teacher's initialisation, its windows and data order.
TEACHER_SEED = 0
# Fraction of the Shakespeare tokens held out from pretraining, at the end.
HELD_OUT_TEXT_FRACTION = 0.05
# Held-out text windows that measure the teacher's pretraining loss.
HELD_OUT_WINDOWS = 256


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_float(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")


def default_cache_dir():
    """Return `$KERAS_ABKD_CACHE/causal_lm` or `~/.cache/keras_abkd/causal_lm`."""
    root = os.environ.get("KERAS_ABKD_CACHE") or os.path.expanduser(
        "~/.cache/keras_abkd"
    )
    return os.path.join(root, "causal_lm")


def _log_softmax(logits):
    logits = np.asarray(logits, dtype="float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def token_statistics(student_log_probs, teacher_log_probs, targets, weights):
    """Return forward KL(teacher || student) and cross-entropy per weighted token.

    Args:
        student_log_probs: float array `(batch, length, vocabulary)`.
        teacher_log_probs: float array of the same shape, or None.
        targets: int array `(batch, length)` of next token ids.
        weights: float array `(batch, length)`; the means are weighted by it.

    Returns:
        `(kl, cross_entropy)` in nats per token; `kl` is None without
        teacher log-probabilities.
    """
    weights = np.asarray(weights, dtype="float64")
    total = weights.sum()
    if total <= 0:
        raise ValueError("No weighted token to measure: every weight is 0.")
    picked = np.take_along_axis(student_log_probs, targets[..., None], axis=-1)[..., 0]
    cross_entropy = float(-(picked * weights).sum() / total)
    if teacher_log_probs is None:
        return None, cross_entropy
    per_token = (
        np.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs)
    ).sum(-1)
    return float((per_token * weights).sum() / total), cross_entropy


@register_task("causal_lm")
class CausalLMTask(SweepTask):
    """GPT-2 teacher pretrained on Shakespeare, smaller GPT-2 student, WordNet pairs.

    The defaults are the settings of the study in `docs/reproduction.md`,
    sized for about an hour on 2 CPU cores.

    Args:
        train_examples: WordNet pairs that teacher and students train on.
            Defaults to 8000.
        validation_size: Pairs of the validation split, which chooses
            (alpha, beta). Defaults to 200.
        test_examples: Pairs of the test split. Defaults to 200.
        sequence_length: Tokens per packed example, and the maximum length
            (prompt plus completion) of greedy generations. Defaults to 32.
        vocabulary_size: Size of the byte-level BPE vocabulary trained on
            the Shakespeare texts. Defaults to 2048.
        pretrain_steps: Teacher pretraining steps on Shakespeare windows.
            Defaults to 1000.
        teacher_epochs: Epochs of the teacher's fine-tuning on the training
            pairs. Defaults to 6.
        teacher_layers: Transformer layers of the teacher. Defaults to 4.
        teacher_units: Hidden width of the teacher. Defaults to 128.
        student_layers: Transformer layers of the student. Defaults to 2.
        student_units: Hidden width of the student. Defaults to 64.
        student_epochs: Epochs of each student. Defaults to 3.
        batch_size: Batch size of teacher and students. Defaults to 32.
        learning_rate: AdamW learning rate of the students. Defaults to 1e-3.
        temperature: Distillation temperature. Defaults to 1.
        student_loss_weight: Weight of the response cross-entropy next to
            the divergence (weight 1) for distilled students. Defaults to 0.
        text_characters: Use only the first this many characters of the
            Shakespeare texts (for tests). Defaults to None: all 5.1 MB.
        cache_dir: Folder of the Shakespeare texts and cached teachers.
            Defaults to `$KERAS_ABKD_CACHE/causal_lm` or
            `~/.cache/keras_abkd/causal_lm`.
        verbose: Keras verbosity of the training loops. Defaults to 0.

    Example:

    ```python
    from keras_abkd.cli import sweep_causal_lm

    task = sweep_causal_lm.CausalLMTask(train_examples=64, pretrain_steps=10)
    print(task.prepare())
    print(task.train_student(0.2, 0.7, seed=0))
    ```
    """

    metrics = {
        "val_rouge_l": MAXIMIZE,
        "test_rouge_l": MAXIMIZE,
        "val_kl": MINIMIZE,
        "test_kl": MINIMIZE,
        "val_cross_entropy": MINIMIZE,
        "test_cross_entropy": MINIMIZE,
        "train_loss": MINIMIZE,
    }

    def __init__(
        self,
        train_examples=8000,
        validation_size=200,
        test_examples=200,
        sequence_length=32,
        vocabulary_size=2048,
        pretrain_steps=1000,
        teacher_epochs=6,
        teacher_layers=4,
        teacher_units=128,
        student_layers=2,
        student_units=64,
        student_epochs=3,
        batch_size=32,
        learning_rate=1e-3,
        temperature=1.0,
        student_loss_weight=0.0,
        text_characters=None,
        cache_dir=None,
        verbose=0,
    ):
        for name, value, minimum in (
            ("train_examples", train_examples, 1),
            ("validation_size", validation_size, 1),
            ("test_examples", test_examples, 1),
            ("sequence_length", sequence_length, 8),
            ("vocabulary_size", vocabulary_size, 300),
            ("pretrain_steps", pretrain_steps, 0),
            ("teacher_epochs", teacher_epochs, 0),
            ("teacher_layers", teacher_layers, 1),
            ("teacher_units", teacher_units, 2),
            ("student_layers", student_layers, 1),
            ("student_units", student_units, 2),
            ("student_epochs", student_epochs, 1),
            ("batch_size", batch_size, 1),
        ):
            _check_int(name, value, minimum)
        for name, value in (
            ("teacher_units", teacher_units),
            ("student_units", student_units),
        ):
            if value % 2:
                raise ValueError(
                    f"{name} must be even (the model has 2 attention heads of "
                    f"width {name} / 2), got {value}."
                )
        if text_characters is not None:
            _check_int("text_characters", text_characters, 1000)
        _check_float("learning_rate", learning_rate)
        _check_float("temperature", temperature)
        _check_float("student_loss_weight", student_loss_weight, allow_zero=True)
        self.train_examples = train_examples
        self.validation_size = validation_size
        self.test_examples = test_examples
        self.sequence_length = sequence_length
        self.vocabulary_size = vocabulary_size
        self.pretrain_steps = pretrain_steps
        self.teacher_epochs = teacher_epochs
        self.teacher_layers = teacher_layers
        self.teacher_units = teacher_units
        self.student_layers = student_layers
        self.student_units = student_units
        self.student_epochs = student_epochs
        self.batch_size = batch_size
        self.learning_rate = float(learning_rate)
        self.temperature = float(temperature)
        self.student_loss_weight = float(student_loss_weight)
        self.text_characters = text_characters
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.verbose = verbose
        self.teacher = None

    def teacher_config(self):
        """Return the settings that define the teacher (its cache key)."""
        return {
            "train_examples": self.train_examples,
            "sequence_length": self.sequence_length,
            "vocabulary_size": self.vocabulary_size,
            "pretrain_steps": self.pretrain_steps,
            "teacher_epochs": self.teacher_epochs,
            "teacher_layers": self.teacher_layers,
            "teacher_units": self.teacher_units,
            "batch_size": self.batch_size,
            "text_characters": self.text_characters,
            "split_seed": SPLIT_SEED,
            "teacher_seed": TEACHER_SEED,
        }

    def config(self):
        config = self.teacher_config()
        config.update(
            {
                "validation_size": self.validation_size,
                "test_examples": self.test_examples,
                "student_layers": self.student_layers,
                "student_units": self.student_units,
                "student_epochs": self.student_epochs,
                "learning_rate": self.learning_rate,
                "temperature": self.temperature,
                "student_loss_weight": self.student_loss_weight,
            }
        )
        return config

    def _teacher_dir(self):
        key = json.dumps(self.teacher_config(), sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return os.path.join(self.cache_dir, f"teacher_{digest}")

    def _train_teacher(self, preset_dir, prompts, responses):
        import keras
        import keras_hub

        keras.utils.set_random_seed(TEACHER_SEED)
        text = offline_gpt2.load_shakespeare(self.cache_dir)
        if self.text_characters is not None:
            text = text[: self.text_characters]
        vocabulary, merges = offline_gpt2.train_vocabulary(
            text, self.vocabulary_size, os.path.join(preset_dir + "_bpe")
        )
        tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
        teacher = offline_gpt2.build_gpt2(
            tokenizer, self.sequence_length, self.teacher_layers, self.teacher_units, 2
        )
        logger.info("Teacher: %d parameters", teacher.count_params())

        # Pretraining on the first 95% of the tokens; the rest measures it.
        token_ids = offline_gpt2.token_stream(tokenizer, text)
        split = int(len(token_ids) * (1 - HELD_OUT_TEXT_FRACTION))
        window = self.sequence_length + 1
        started = time.time()
        if self.pretrain_steps:
            windows = offline_gpt2.random_windows(
                token_ids[:split],
                self.pretrain_steps * self.batch_size,
                window,
                TEACHER_SEED,
            )
            offline_gpt2.pretrain(
                teacher, windows, self.batch_size, verbose=self.verbose
            )
        pretrain_seconds = time.time() - started
        held_out = offline_gpt2.random_windows(
            token_ids[split:], HELD_OUT_WINDOWS, window, TEACHER_SEED + 1
        )
        logits = _predict_logits(
            teacher,
            {
                "token_ids": held_out[:, :-1],
                "padding_mask": np.ones_like(held_out[:, :-1], bool),
            },
            self.batch_size,
        )
        _, text_nats = token_statistics(
            _log_softmax(logits), None, held_out[:, 1:], np.ones(held_out[:, 1:].shape)
        )
        logger.info("Teacher held-out Shakespeare loss: %.3f nats per token", text_nats)

        started = time.time()
        if self.teacher_epochs:
            offline_gpt2.fine_tune(
                teacher,
                prompts,
                responses,
                self.teacher_epochs,
                self.batch_size,
                5e-4,
                verbose=self.verbose,
            )
        facts = {
            "teacher_text_tokens": int(len(token_ids)),
            "teacher_held_out_text_nats": round(text_nats, 4),
            "teacher_pretrain_seconds": round(pretrain_seconds, 1),
            "teacher_finetune_seconds": round(time.time() - started, 1),
        }
        teacher.save_to_preset(preset_dir)
        with open(os.path.join(preset_dir, "abkd_teacher_facts.json"), "w") as file:
            json.dump(facts, file)
        return facts

    def prepare(self):
        import keras_hub

        import keras_abkd.hub as abkd_hub

        total = self.train_examples + self.validation_size + self.test_examples
        prompts, responses = offline_gpt2.load_wordnet_pairs(total, seed=SPLIT_SEED)
        train_end = self.train_examples
        validation_end = train_end + self.validation_size
        self.splits = {
            "train": (prompts[:train_end], responses[:train_end]),
            "validation": (
                prompts[train_end:validation_end],
                responses[train_end:validation_end],
            ),
            "test": (prompts[validation_end:], responses[validation_end:]),
        }

        preset_dir = self._teacher_dir()
        facts_path = os.path.join(preset_dir, "abkd_teacher_facts.json")
        if os.path.exists(facts_path):
            logger.info("Loading the cached teacher from %s", preset_dir)
            with open(facts_path) as file:
                facts = json.load(file)
        else:
            facts = self._train_teacher(preset_dir, *self.splits["train"])
        teacher = keras_hub.models.CausalLM.from_preset(preset_dir)
        teacher.preprocessor.sequence_length = self.sequence_length
        self.teacher = teacher
        self.tokenizer = teacher.preprocessor.tokenizer

        self.packed = {
            name: abkd_hub.pack_causal_lm_batch(
                teacher.preprocessor, {"prompts": split[0], "responses": split[1]}
            )
            for name, split in self.splits.items()
        }
        self.teacher_log_probs = {}
        info = {
            "teacher_parameters": int(teacher.count_params()),
            "train_examples": self.train_examples,
            "validation_examples": self.validation_size,
            "test_examples": self.test_examples,
        }
        info.update(facts)
        rouge = self._rouge_l(teacher)
        for name, prefix in (("validation", "val"), ("test", "test")):
            inputs, targets, weights = self.packed[name]
            log_probs = _log_softmax(_predict_logits(teacher, inputs, self.batch_size))
            self.teacher_log_probs[name] = log_probs.astype("float32")
            _, nats = token_statistics(log_probs, None, targets, weights)
            info[f"teacher_{prefix}_cross_entropy"] = round(nats, 4)
            info[f"teacher_{prefix}_rouge_l"] = round(rouge[prefix], 4)
        return info

    def _rouge_l(self, causal_lm):
        """Return `{"val": ..., "test": ...}` ROUGE-L of greedy generations."""
        import keras_abkd.hub as abkd_hub

        prompts = self.splits["validation"][0] + self.splits["test"][0]
        references = [
            r.strip() for r in self.splits["validation"][1] + self.splits["test"][1]
        ]
        # One batch shape for every batch, so generation compiles once.
        batch_size = max(d for d in range(1, 65) if len(prompts) % d == 0)
        completions = abkd_hub.generate_greedy(
            causal_lm, prompts, self.sequence_length, batch_size=batch_size
        )
        split = self.validation_size
        return {
            "val": abkd_hub.rouge_l(completions[:split], references[:split]),
            "test": abkd_hub.rouge_l(completions[split:], references[split:]),
        }

    def train_student(self, alpha, beta, seed):
        import keras

        import keras_abkd
        import keras_abkd.hub as abkd_hub

        if self.teacher is None:
            raise RuntimeError("Call prepare() before train_student().")
        keras.utils.set_random_seed(seed)
        student = offline_gpt2.build_gpt2(
            self.tokenizer,
            self.sequence_length,
            self.student_layers,
            self.student_units,
            2,
        )
        inputs, targets, weights = self.packed["train"]
        optimizer = keras.optimizers.AdamW(self.learning_rate)
        if alpha is None:
            student.compile(optimizer=optimizer, loss=abkd_hub.TokenCrossEntropy())
            # KerasHub's fit turns arrays into an unshuffled tf.data pipeline,
            # so each epoch gets its own permutation here, drawn from the seed
            # as the distillers' shuffling is.
            rng = np.random.default_rng(seed)
            for _ in range(self.student_epochs):
                order = rng.permutation(len(targets))
                history = offline_gpt2.fit_token_ids(
                    student,
                    {key: value[order] for key, value in inputs.items()},
                    targets[order],
                    weights[order],
                    self.batch_size,
                    1,
                    self.verbose,
                )
        else:
            distiller = abkd_hub.HubDistiller(
                self.teacher,
                student,
                distillation_loss=keras_abkd.ABDivergence(
                    alpha=alpha, beta=beta, temperature=self.temperature
                ),
                student_loss_weight=self.student_loss_weight,
            )
            distiller.compile(optimizer=optimizer)
            history = distiller.fit(
                {"teacher": inputs, "student": inputs},
                targets,
                sample_weight=weights,
                batch_size=self.batch_size,
                epochs=self.student_epochs,
                verbose=self.verbose,
            )
        metrics = {"train_loss": float(history.history["loss"][-1])}
        rouge = self._rouge_l(student)
        for name, prefix in (("validation", "val"), ("test", "test")):
            split_inputs, split_targets, split_weights = self.packed[name]
            log_probs = _log_softmax(
                _predict_logits(student, split_inputs, self.batch_size)
            )
            kl, nats = token_statistics(
                log_probs,
                self.teacher_log_probs[name].astype("float64"),
                split_targets,
                split_weights,
            )
            metrics[f"{prefix}_rouge_l"] = float(rouge[prefix])
            metrics[f"{prefix}_kl"] = kl
            metrics[f"{prefix}_cross_entropy"] = nats
        return metrics


def _predict_logits(causal_lm, inputs, batch_size):
    """Return a causal LM's logits for token id inputs, as a NumPy array."""
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        logits = causal_lm.predict(inputs, batch_size=batch_size, verbose=0)
    finally:
        causal_lm.preprocessor = preprocessor
    return np.asarray(logits, dtype="float32")
