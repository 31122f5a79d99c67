"""Turn raw dataset rows into model inputs for the cache writer and reader.

A preprocessing function takes one batch of raw rows and returns the model
inputs `x`, or a tuple `(x, y, sample_weight)` in the layout of
`keras.utils.pack_x_y_sample_weight`. KerasHub tasks get one built from their
own preprocessor, so the same raw text or images feed teacher and student.
"""

import keras


def is_keras_hub_task(model):
    """Return whether `model` is a KerasHub task, without importing keras_hub."""
    return any(
        cls.__module__.startswith("keras_hub.") and cls.__name__ == "Task"
        for cls in type(model).__mro__
    )


def task_preprocessor(task):
    """Return the function that preprocesses raw rows for a KerasHub task.

    - `CausalLM`: a batch of strings, or `{"prompts": ..., "responses": ...}`,
      is packed by `keras_abkd.hub.pack_causal_lm_batch` with the task's
      preprocessor into `(inputs, next_token_ids, weights)`, where the weights
      mark the distilled (response) tokens.
    - Other tasks: the task's own preprocessor (image converter, tokenizer)
      is applied, see `keras_abkd.hub.preprocessing.apply_task_preprocessor`.

    Args:
        task: A `keras_hub.models.Task` with a preprocessor.

    Returns:
        A function of one batch of raw rows.
    """
    if not is_keras_hub_task(task):
        raise ValueError(
            f"task_preprocessor needs a KerasHub task, got "
            f"{type(task).__name__}. Pass your own preprocess function instead."
        )
    import keras_hub

    from keras_abkd.hub import preprocessing

    if isinstance(task, keras_hub.models.CausalLM):

        def pack(batch):
            return preprocessing.pack_causal_lm_batch(task.preprocessor, batch)

        return pack

    def apply(batch):
        return preprocessing.apply_task_preprocessor(task, batch)

    return apply


def default_preprocessor(model):
    """Return `task_preprocessor(model)` for a KerasHub task, else None."""
    if is_keras_hub_task(model) and getattr(model, "preprocessor", None) is not None:
        return task_preprocessor(model)
    return None


def apply(preprocess, batch):
    """Run `preprocess` (or nothing) on a raw batch; return `(x, y, sample_weight)`."""
    if preprocess is None:
        return batch, None, None
    outputs = preprocess(batch)
    if isinstance(outputs, tuple):
        return keras.utils.unpack_x_y_sample_weight(outputs)
    return outputs, None, None
