"""Checks that a KerasHub teacher and student can be distilled together.

Every check runs before training, on the loaded tasks, so a mismatched pair
fails with an error that names both models, not with a shape error or wrong
results in the middle of `fit`.
"""

import keras_hub

CAUSAL_LM = "causal_lm"
IMAGE_CLASSIFIER = "image_classifier"
TEXT_CLASSIFIER = "text_classifier"

# The task kinds this package distils, with the KerasHub base class of each.
TASK_KINDS = {
    CAUSAL_LM: keras_hub.models.CausalLM,
    IMAGE_CLASSIFIER: keras_hub.models.ImageClassifier,
    TEXT_CLASSIFIER: keras_hub.models.TextClassifier,
}

VOCABULARY_MODES = ("strict", "truncate")


def task_kind(task, role):
    """Return the task kind of a loaded KerasHub task, or raise."""
    for kind, base_class in TASK_KINDS.items():
        if isinstance(task, base_class):
            return kind
    names = ", ".join(cls.__name__ for cls in TASK_KINDS.values())
    raise ValueError(
        f"The {role} is a {type(task).__name__}, which keras_abkd.hub cannot "
        f"distil. Load the {role} as one of: {names}."
    )


def check_same_kind(teacher, student):
    """Return the shared task kind of teacher and student, or raise."""
    teacher_kind = task_kind(teacher, "teacher")
    student_kind = task_kind(student, "student")
    if teacher_kind != student_kind:
        raise ValueError(
            f"The teacher is a {teacher_kind} ({type(teacher).__name__}) but "
            f"the student is a {student_kind} ({type(student).__name__}). "
            "Load both models as the same task kind."
        )
    return teacher_kind


def _tokenizer(task, role):
    preprocessor = task.preprocessor
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"The {role} ({type(task).__name__}) has no preprocessor with a "
            "tokenizer, so its vocabulary cannot be checked. Load it with "
            "`from_preset`, which attaches the preprocessor, or set "
            f"`{role}.preprocessor`."
        )
    return tokenizer


def _vocabulary_mapping(tokenizer):
    """Return the vocabulary as a `{token: id}` dict.

    Byte-pair tokenizers store a dict whose key order need not follow the
    ids, so the dict is used as is. WordPiece and SentencePiece tokenizers
    list their tokens in id order.
    """
    vocabulary = getattr(tokenizer, "vocabulary", None)
    if isinstance(vocabulary, dict):
        return dict(vocabulary)
    return {token: index for index, token in enumerate(tokenizer.get_vocabulary())}


def _merge_rules(tokenizer):
    """Return a byte-pair tokenizer's merge rules, or None for other kinds.

    Hugging Face `merges.txt` files start with a `#version` line that
    KerasHub keeps as a rule when it reads the file (keras-hub 0.32), while
    a tokenizer built from a list has none, so that line is dropped here.
    """
    merges = getattr(tokenizer, "merges", None)
    if merges is None:
        return None
    return [rule for rule in merges if not rule.startswith("#version")]


def _first_difference(teacher_vocabulary, student_vocabulary):
    """Describe one token whose id differs, for the error message."""
    for token, teacher_id in teacher_vocabulary.items():
        student_id = student_vocabulary.get(token)
        if student_id != teacher_id:
            return (
                f"token {token!r} has id {teacher_id} for the teacher and "
                f"{student_id} for the student"
            )
    for token, student_id in student_vocabulary.items():
        if token not in teacher_vocabulary:
            return f"token {token!r} (id {student_id}) is only in the student"
    return "the vocabularies are equal"


# Reasons, per task kind, for needing one tokenizer, quoted in the error messages.
_TOKENIZER_REASONS = {
    CAUSAL_LM: (
        "Token-level distillation compares the two models token by token, "
        "so pick a student from the same model family or one that shares "
        "the teacher's tokenizer."
    ),
    TEXT_CLASSIFIER: (
        "Both classifiers must read the same token ids, so that they see "
        "the same text up to the same truncation point, so pick a student "
        "from the same model family or one that shares the teacher's "
        "tokenizer."
    ),
}


def check_same_tokenizer(teacher, student, kind=CAUSAL_LM):
    """Raise unless teacher and student tokenize text into the same ids.

    Compares the token-to-id mappings (not only their sizes), the byte-pair
    merge rules where the tokenizers have them, and the start, end and pad
    token ids. Returns the student's tokenizer.

    Args:
        teacher: The teacher task.
        student: The student task.
        kind: The task kind, `"causal_lm"` or `"text_classifier"`, which
            selects the reason given in the error message.
    """
    teacher_tokenizer = _tokenizer(teacher, "teacher")
    student_tokenizer = _tokenizer(student, "student")

    teacher_vocabulary = _vocabulary_mapping(teacher_tokenizer)
    student_vocabulary = _vocabulary_mapping(student_tokenizer)
    if teacher_vocabulary != student_vocabulary:
        raise ValueError(
            "The teacher and the student use different tokenizers: the "
            f"teacher's vocabulary has {len(teacher_vocabulary)} tokens, the "
            f"student's {len(student_vocabulary)}, and "
            f"{_first_difference(teacher_vocabulary, student_vocabulary)}. "
            f"{_TOKENIZER_REASONS[kind]}"
        )

    teacher_merges = _merge_rules(teacher_tokenizer)
    student_merges = _merge_rules(student_tokenizer)
    if teacher_merges is not None and student_merges is not None:
        if teacher_merges != student_merges:
            raise ValueError(
                "The teacher and the student have the same vocabulary but "
                f"different byte-pair merge rules ({len(teacher_merges)} and "
                f"{len(student_merges)} rules), so they split the same text "
                "into different tokens. Use a student that shares the "
                "teacher's tokenizer."
            )

    for attribute in ("start_token_id", "end_token_id", "pad_token_id"):
        teacher_id = getattr(teacher_tokenizer, attribute, None)
        student_id = getattr(student_tokenizer, attribute, None)
        if teacher_id != student_id:
            raise ValueError(
                f"The teacher's tokenizer has {attribute}={teacher_id} but "
                f"the student's has {attribute}={student_id}. Use a student "
                "that shares the teacher's tokenizer and special tokens."
            )
    return student_tokenizer


def logit_width(causal_lm):
    """Return the number of logits a KerasHub causal LM outputs per token."""
    backbone = causal_lm.backbone
    width = getattr(backbone, "vocabulary_size", None)
    if width is None:
        width = backbone.token_embedding.input_dim
    return int(width)


def check_logit_widths(teacher, student, tokenizer, vocabulary):
    """Check the logit widths of two causal LMs and return the kept width.

    Returns None when the logits are used as they are (`"strict"`), or the
    tokenizer's vocabulary size when both logits are to be sliced to it
    (`"truncate"`).
    """
    if vocabulary not in VOCABULARY_MODES:
        raise ValueError(
            f"vocabulary must be one of {VOCABULARY_MODES}, got "
            f"vocabulary={vocabulary!r}."
        )
    teacher_width = logit_width(teacher)
    student_width = logit_width(student)
    tokenizer_size = int(tokenizer.vocabulary_size())

    if vocabulary == "strict":
        if teacher_width != student_width:
            raise ValueError(
                f"The teacher outputs {teacher_width} logits per token but "
                f"the student outputs {student_width}, and the shared "
                f"tokenizer has {tokenizer_size} tokens. Model families pad "
                "their output layers to different sizes. Pass "
                '`vocabulary="truncate"` to compare both models on the '
                f"first {tokenizer_size} logits, the tokenizer's vocabulary."
            )
        if tokenizer_size > student_width:
            raise ValueError(
                f"The tokenizer has {tokenizer_size} tokens but the models "
                f"output only {student_width} logits per token, so some "
                "token ids have no logit. Use a model whose output layer "
                "covers the tokenizer's vocabulary."
            )
        return None

    narrowest = min(teacher_width, student_width)
    if tokenizer_size > narrowest:
        raise ValueError(
            f'vocabulary="truncate" keeps the first {tokenizer_size} logits '
            f"(the tokenizer's vocabulary), but the teacher outputs "
            f"{teacher_width} and the student {student_width} logits per "
            "token. Both models must output at least one logit per token "
            "of the tokenizer."
        )
    return tokenizer_size


def num_classes(classifier):
    """Return the number of classes a KerasHub classifier predicts."""
    classes = getattr(classifier, "num_classes", None)
    if classes is None:
        classes = classifier.output_shape[-1]
    return int(classes)


def check_same_classes(teacher, student):
    """Raise unless both classifiers predict the same number of classes."""
    teacher_classes = num_classes(teacher)
    student_classes = num_classes(student)
    if teacher_classes != student_classes:
        raise ValueError(
            f"The teacher predicts {teacher_classes} classes but the student "
            f"predicts {student_classes}. Load the student with "
            f"`num_classes={teacher_classes}` (a new classification head) or "
            "use a teacher trained on the student's classes."
        )
    return teacher_classes
