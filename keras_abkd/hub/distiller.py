"""`HubDistiller`: distil one KerasHub task into another from raw data."""

import keras
import numpy as np
from keras import ops

from keras_abkd.distiller import Distiller
from keras_abkd.distiller import weighted_mean
from keras_abkd.hub import compatibility
from keras_abkd.hub import preprocessing

_NOT_RESTORED = object()

TEACHER = "teacher"
STUDENT = "student"


@keras.saving.register_keras_serializable(package="keras_abkd")
class TokenCrossEntropy(keras.losses.Loss):
    """Next-token cross-entropy from logits, averaged over weighted tokens.

    Keras' `"sum_over_batch_size"` reduction divides by every position,
    padding included. This loss divides by the sum of the weights instead,
    so with a padding mask as weight it is the mean over the real tokens of
    the batch, the same normalisation as the distillation term. A batch
    without weighted tokens gives 0.
    """

    def __init__(self, name="token_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        return weighted_mean(self.call(y_true, y_pred), sample_weight)


def _is_paired(x):
    return isinstance(x, dict) and set(x) == {TEACHER, STUDENT}


def _is_raw(x):
    """Whether `x` holds raw examples (strings, images) to preprocess here."""
    if _is_paired(x):
        return False
    if isinstance(x, (list, tuple, dict, np.ndarray)):
        return True
    return ops.is_tensor(x)


@keras.saving.register_keras_serializable(package="keras_abkd")
class HubDistiller(Distiller):
    """Distil a KerasHub task into another KerasHub task of the same kind.

    Supports `keras_hub.models.CausalLM` (token-level distillation),
    `ImageClassifier` and `TextClassifier` (one distribution per example).
    The pair is checked when the distiller is built: same task kind; for
    language models the same tokenizer (vocabulary, merge rules and special
    tokens); for classifiers the same number of classes.

    `fit`, `evaluate` and `predict` take raw data and preprocess it one batch
    at a time:

    - causal LMs: a list of strings, or `{"prompts": [...], "responses":
      [...]}`. The student's preprocessor settings (tokenizer,
      `sequence_length`, start and end tokens) pack the text, and teacher and
      student read the same token ids. Only response tokens are distilled
      when prompts are given, padding never counts, and the loss is the mean
      over the distilled tokens of the batch. See
      `keras_abkd.hub.preprocessing.pack_causal_lm_batch` for the layout.
    - image classifiers: a batch of images. Teacher and student each apply
      their own image converter, so they may expect different image sizes
      and normalisation.
    - text classifiers: strings (or a tuple of string lists for pairs),
      packed by each model's own preprocessor.

    Already preprocessed data, for example from `preprocess` mapped over a
    `tf.data.Dataset`, is passed through: inputs of the form
    `{"teacher": ..., "student": ...}`.

    Args:
        teacher: A KerasHub task, frozen during distillation. It may run in
            another dtype (for example `"bfloat16"`) than the student.
        student: A KerasHub task of the same kind.
        vocabulary: How to handle causal LMs whose logit widths differ.
            `"strict"` (the default) raises when they differ.
            `"truncate"` slices both models' logits to the tokenizer's
            vocabulary before the softmax. Model families pad their output
            layers differently: Qwen2.5 7B outputs 152064 logits and 0.5B
            151936, with the same tokenizer.
        distillation_loss: As in `keras_abkd.Distiller`.
        distillation_loss_weight: As in `keras_abkd.Distiller`.
        student_loss_weight: As in `keras_abkd.Distiller`. With
            `student_loss_weight > 0` a causal LM student also learns the
            next-token cross-entropy of the data.
        name: Name of the model. Defaults to `"hub_distiller"`.
        **kwargs: Passed to `keras_abkd.Distiller`.

    Example:

    ```python
    distiller = keras_abkd.hub.from_preset(
        "gpt2_medium_en", "gpt2_base_en", sequence_length=256
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-5))
    distiller.fit({"prompts": prompts, "responses": responses}, epochs=1)
    distiller.student.generate("Define crane:")
    ```
    """

    # The pair checks below compare logit widths themselves and allow a
    # difference that `vocabulary="truncate"` slices away.
    check_output_widths = False

    def __init__(
        self,
        teacher,
        student,
        vocabulary="strict",
        distillation_loss=None,
        distillation_loss_weight=1.0,
        student_loss_weight=0.0,
        name="hub_distiller",
        **kwargs,
    ):
        # Set only by `from_config`: the saved tokenizers get their vocabulary
        # after the model is built, so the checks that ran when the distiller
        # was first created are not repeated, and their result is restored.
        restored_kept_logits = kwargs.pop("kept_logits", _NOT_RESTORED)
        if vocabulary not in compatibility.VOCABULARY_MODES:
            raise ValueError(
                f"vocabulary must be one of {compatibility.VOCABULARY_MODES}, "
                f"got vocabulary={vocabulary!r}."
            )
        kind = compatibility.check_same_kind(teacher, student)
        kept_logits = None
        if restored_kept_logits is not _NOT_RESTORED:
            kept_logits = restored_kept_logits
        elif kind == compatibility.CAUSAL_LM:
            tokenizer = compatibility.check_same_tokenizer(teacher, student)
            kept_logits = compatibility.check_logit_widths(
                teacher, student, tokenizer, vocabulary
            )
        elif kind == compatibility.TEXT_CLASSIFIER:
            compatibility.check_same_tokenizer(teacher, student, kind)
            compatibility.check_same_classes(teacher, student)
        else:
            compatibility.check_same_classes(teacher, student)

        super().__init__(
            teacher=teacher,
            student=student,
            distillation_loss=distillation_loss,
            distillation_loss_weight=distillation_loss_weight,
            student_loss_weight=student_loss_weight,
            name=name,
            **kwargs,
        )
        self.task_kind = kind
        self.vocabulary = vocabulary
        # Number of leading logits compared, or None for all of them.
        self.kept_logits = kept_logits

    def _role_inputs(self, inputs, role):
        if not _is_paired(inputs):
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                'HubDistiller models take inputs {"teacher": ..., "student": '
                f"...}} as built by `preprocess`, got {keys}. Pass raw data "
                "to `fit`, `evaluate` or `predict`, or call "
                "`distiller.preprocess(x)` first."
            )
        return inputs[role]

    def _keep_logits(self, logits):
        if self.kept_logits is None:
            return logits
        return logits[..., : self.kept_logits]

    def call(self, inputs, training=None):
        logits = self.student(self._role_inputs(inputs, STUDENT), training=training)
        return self._keep_logits(logits)

    def teacher_logits(self, x):
        """Run the frozen teacher on its inputs and return float32 logits."""
        logits = self.teacher(self._role_inputs(x, TEACHER), training=False)
        logits = self._keep_logits(ops.cast(logits, "float32"))
        return ops.stop_gradient(logits)

    def compile(self, optimizer="adam", loss="auto", metrics=None, **kwargs):
        """Configure the optimizer, the student's own loss and metrics.

        Args:
            optimizer: Optimizer for the student.
            loss: The student's supervised loss. `"auto"` (the default) is
                the next-token cross-entropy averaged over the distilled
                tokens (`TokenCrossEntropy`) for causal LMs, and the sparse
                categorical cross-entropy from logits for classifiers, which
                is computed only when labels are given. `None` turns it off.
            metrics: Metrics between labels and student logits.
            **kwargs: Passed to `keras.Model.compile`.
        """
        automatic = loss == "auto"
        if self.task_kind == compatibility.CAUSAL_LM:
            if loss in ("auto", "sparse_categorical_crossentropy"):
                loss = TokenCrossEntropy()
        elif loss == "auto":
            loss = "sparse_categorical_crossentropy"
        # The default loss is only logged unless student_loss_weight > 0,
        # which needs no warning.
        self._student_loss_is_automatic = automatic
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def preprocess(self, x, y=None, sample_weight=None):
        """Turn one batch of raw data into `(inputs, targets, weights)`.

        For causal LMs the targets are the next token ids and the weights
        mark the distilled tokens, so `y` must be None. For classifiers `y`
        holds optional labels and `sample_weight` optional weights per
        example. The inputs are `{"teacher": ..., "student": ...}`.
        """
        if self.task_kind == compatibility.CAUSAL_LM:
            if y is not None:
                raise ValueError(
                    "A causal LM learns the next token of its own text, so "
                    "y must be None. Put the text to learn in "
                    '{"prompts": ..., "responses": ...}.'
                )
            inputs, targets, weights = preprocessing.pack_causal_lm_batch(
                self.student.preprocessor, x, sample_weight
            )
            return {TEACHER: inputs, STUDENT: inputs}, targets, weights

        inputs = {
            TEACHER: preprocessing.apply_task_preprocessor(self.teacher, x),
            STUDENT: preprocessing.apply_task_preprocessor(self.student, x),
        }
        if y is not None:
            y = np.asarray(y)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype="float32")
        return keras.utils.pack_x_y_sample_weight(inputs, y, sample_weight)

    def _raw_batches(self, data, batch_size, shuffle):
        x, y, sample_weight = data
        return preprocessing.RawBatches(
            x,
            y,
            sample_weight,
            batch_size=batch_size or 32,
            shuffle=shuffle,
            preprocess=self.preprocess,
        )

    def _unpack_validation(self, validation_data):
        if isinstance(validation_data, tuple):
            return keras.utils.unpack_x_y_sample_weight(validation_data)
        return validation_data, None, None

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        sample_weight=None,
        validation_data=None,
        validation_split=0.0,
        shuffle=True,
        **kwargs,
    ):
        """Train the student on raw data; see the class docstring for formats.

        Raw `x` is wrapped in a `keras.utils.PyDataset` that preprocesses one
        batch at a time (default `batch_size` 32). Raw `validation_data` is
        `x` alone or a tuple `(x, y)` / `(x, y, sample_weight)`.
        `validation_split` takes the last fraction of raw `x`. Other data
        (datasets of preprocessed batches) goes to `keras.Model.fit`.
        """
        if not _is_raw(x):
            return super().fit(
                x=x,
                y=y,
                batch_size=batch_size,
                sample_weight=sample_weight,
                validation_data=validation_data,
                validation_split=validation_split,
                shuffle=shuffle,
                **kwargs,
            )

        data = (x, y, sample_weight)
        if validation_split:
            if validation_data is not None:
                raise ValueError(
                    "Pass either validation_data or validation_split, not both."
                )
            data, validation = preprocessing.split_for_validation(
                x, y, sample_weight, validation_split
            )
            validation_data = self._raw_batches(validation, batch_size, False)
        elif validation_data is not None:
            validation = self._unpack_validation(validation_data)
            if _is_raw(validation[0]):
                validation_data = self._raw_batches(validation, batch_size, False)

        return super().fit(
            x=self._raw_batches(data, batch_size, shuffle),
            validation_data=validation_data,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """Evaluate on raw data (or preprocessed batches), as `fit` takes it."""
        if _is_raw(x):
            batches = self._raw_batches((x, y, sample_weight), batch_size, False)
            return super().evaluate(x=batches, **kwargs)
        return super().evaluate(
            x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs
        )

    def predict(self, x, batch_size=None, **kwargs):
        """Return student logits for raw data (or preprocessed batches)."""
        if _is_raw(x):
            batches = self._raw_batches((x, None, None), batch_size, False)
            return super().predict(batches, **kwargs)
        return super().predict(x, batch_size=batch_size, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["vocabulary"] = self.vocabulary
        config["kept_logits"] = self.kept_logits
        return config
