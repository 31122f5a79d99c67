"""Load a KerasHub teacher and student from presets into a `HubDistiller`."""

import os

import keras_hub

from keras_abkd.hub import compatibility
from keras_abkd.hub.distiller import HubDistiller


def _subclasses(cls):
    found = []
    for subclass in cls.__subclasses__():
        found.append(subclass)
        found.extend(_subclasses(subclass))
    return found


def infer_task_kind(preset):
    """Return the task kind (`"causal_lm"`, ...) a preset's backbone supports.

    Reads only the preset's config, never its weights. Raises when the
    backbone supports none of the task kinds or more than one.
    """
    # NOTE: `get_preset_loader` is not part of KerasHub's public API
    # (checked against keras-hub 0.32); if it moves, pass `task=` to
    # `from_preset`, which skips this inference.
    from keras_hub.src.utils.preset_utils import get_preset_loader

    backbone_class = get_preset_loader(preset).check_backbone_class()
    kinds = [
        kind
        for kind, base_class in compatibility.TASK_KINDS.items()
        if any(
            getattr(subclass, "backbone_cls", None) is backbone_class
            for subclass in _subclasses(base_class)
        )
    ]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none of them"
        raise ValueError(
            f"Cannot tell which task to load from preset {preset!r} "
            f"(backbone {backbone_class.__name__} supports {found}). Pass "
            f"task= with one of {sorted(compatibility.TASK_KINDS)}."
        )
    return kinds[0]


def _load_task(preset, kind, role, dtype, task_kwargs):
    if isinstance(preset, keras_hub.models.Task):
        if dtype is not None or task_kwargs:
            raise ValueError(
                f"The {role} is an already loaded {type(preset).__name__}, so "
                f"{role}_dtype and {role}_kwargs cannot apply. Pass a preset "
                "handle to load it with them, or leave them unset."
            )
        return preset
    if isinstance(preset, os.PathLike):
        preset = os.fspath(preset)
    if not isinstance(preset, str):
        raise ValueError(
            f"The {role} must be a preset handle (a name, kaggle://, hf:// or "
            f"a local folder) or a loaded KerasHub task, got "
            f"{type(preset).__name__} {preset!r}."
        )

    if kind is None:
        kind = infer_task_kind(preset)
    if kind not in compatibility.TASK_KINDS:
        raise ValueError(
            f"task must be one of {sorted(compatibility.TASK_KINDS)}, got "
            f"task={kind!r}."
        )
    kwargs = dict(task_kwargs or {})
    if dtype is not None:
        kwargs["dtype"] = dtype
    return compatibility.TASK_KINDS[kind].from_preset(preset, **kwargs)


def _set_sequence_length(task, sequence_length):
    preprocessor = task.preprocessor
    if preprocessor is None or not hasattr(preprocessor, "sequence_length"):
        raise ValueError(
            f"sequence_length was given but the {type(task).__name__} has no "
            "preprocessor with a sequence length."
        )
    preprocessor.sequence_length = sequence_length


def from_preset(
    teacher,
    student,
    task=None,
    teacher_dtype=None,
    student_dtype=None,
    sequence_length=None,
    vocabulary="strict",
    teacher_kwargs=None,
    student_kwargs=None,
    **distiller_kwargs,
):
    """Load a teacher and a student with KerasHub and return a `HubDistiller`.

    The pair is checked before it is returned (same task kind, same tokenizer
    for text, same number of classes for classifiers, matching logit widths
    for causal LMs), so a mismatch fails before any training.

    Args:
        teacher: A preset handle for `keras_hub.models.<Task>.from_preset`: a
            built-in name such as `"gpt2_medium_en"`, a `kaggle://` or
            `hf://` handle, a folder written by `save_to_preset`, or a local
            Hugging Face checkpoint folder that KerasHub can convert. A
            loaded KerasHub task is used as it is.
        student: The same, for the student.
        task: `"causal_lm"`, `"image_classifier"` or `"text_classifier"`.
            Defaults to the kind each preset's backbone supports.
        teacher_dtype: Optional dtype policy for the teacher, for example
            `"bfloat16"` to halve its memory.
        student_dtype: Optional dtype policy for the student.
        sequence_length: Optional sequence length set on both
            preprocessors (the student's packs causal LM text).
        vocabulary: `"strict"` or `"truncate"`, see `HubDistiller`.
        teacher_kwargs: Extra keyword arguments for the teacher's
            `from_preset`, for example `{"num_classes": 10}`.
        student_kwargs: The same for the student.
        **distiller_kwargs: Passed to `HubDistiller`, for example
            `distillation_loss` or `student_loss_weight`.

    Returns:
        A `HubDistiller`, ready for `compile` and `fit`.
    """
    teacher_task = _load_task(teacher, task, "teacher", teacher_dtype, teacher_kwargs)
    student_task = _load_task(student, task, "student", student_dtype, student_kwargs)

    if sequence_length is not None:
        for model in (teacher_task, student_task):
            if model.preprocessor is not None:
                _set_sequence_length(model, sequence_length)

    return HubDistiller(
        teacher=teacher_task,
        student=student_task,
        vocabulary=vocabulary,
        **distiller_kwargs,
    )
