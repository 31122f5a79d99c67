"""Turn raw strings, prompt/response pairs and images into model inputs.

Every function here runs eagerly in Python on one batch and returns numpy
arrays, so the same code feeds all three Keras backends.
"""

import math

import keras
import numpy as np

PROMPTS = "prompts"
RESPONSES = "responses"


def _as_string_list(values, name):
    if isinstance(values, (str, bytes)):
        raise ValueError(
            f"{name} must be a batch (a list or array of strings), got a "
            f"single string {values!r}. Wrap it in a list."
        )
    strings = []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise ValueError(
                f"{name} must contain strings, got {type(value).__name__} "
                f"{value!r}."
            )
        strings.append(value)
    return strings


def _token_id_list(value):
    """Normalise a special token id (None, an int or a list) to a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _tokenize(tokenizer, strings):
    if not strings:
        return []
    token_ids = tokenizer(strings)
    if hasattr(token_ids, "to_list"):
        token_ids = token_ids.to_list()
    elif not isinstance(token_ids, list):
        token_ids = keras.ops.convert_to_numpy(token_ids).tolist()
    return [[int(token) for token in row] for row in token_ids]


def pack_causal_lm_batch(preprocessor, x, sample_weight=None):
    """Tokenize and pack one batch for next-token distillation.

    `x` is a list of strings, or a dict with the string lists `"prompts"` and
    `"responses"`. Each example becomes `[start] prompt response [end]`,
    truncated from the right to `preprocessor.sequence_length + 1` tokens and
    padded on the right, with the start and end tokens added as the
    preprocessor adds them (`add_start_token`, `add_end_token`). Prompt and
    response are tokenized separately, so the boundary between them is a
    token boundary.

    The model reads positions `0 .. L-1` and position `i` predicts token
    `i + 1`, so the returned weight at `i` says whether token `i + 1` is
    distilled: a real token (from the padding mask, never from comparing ids
    with the pad id, which is a real token for GPT-2, Llama 3 and Qwen) that
    belongs to the response. The end token counts as part of the response,
    also when it has the same id as the pad token, unless truncation cut
    into the prompt.

    Args:
        preprocessor: The student's `keras_hub.models.CausalLMPreprocessor`.
        x: A batch of strings or a `{"prompts": ..., "responses": ...}` dict.
        sample_weight: Optional weight per example, multiplied into the
            weight of each of its tokens.

    Returns:
        `(inputs, targets, weights)`: `inputs` is a dict with `"token_ids"`
        and `"padding_mask"` of shape `(batch, L)`, `targets` the next token
        ids `(batch, L)` and `weights` float32 `(batch, L)`.
    """
    tokenizer = preprocessor.tokenizer
    sequence_length = int(preprocessor.sequence_length)

    if isinstance(x, dict):
        unknown = set(x) - {PROMPTS, RESPONSES}
        if unknown or PROMPTS not in x or RESPONSES not in x:
            raise ValueError(
                'A dict input must have exactly the keys "prompts" and '
                f'"responses", got keys {sorted(x)}.'
            )
        prompts = _as_string_list(x[PROMPTS], PROMPTS)
        responses = _as_string_list(x[RESPONSES], RESPONSES)
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses must have the same length, got "
                f"{len(prompts)} prompts and {len(responses)} responses."
            )
        prompt_ids = _tokenize(tokenizer, prompts)
        response_ids = _tokenize(tokenizer, responses)
    else:
        response_ids = _tokenize(tokenizer, _as_string_list(x, "x"))
        prompt_ids = [[] for _ in response_ids]

    start = []
    if preprocessor.add_start_token:
        start = _token_id_list(tokenizer.start_token_id)
    end = []
    if preprocessor.add_end_token:
        end = _token_id_list(tokenizer.end_token_id)
    pad_id = tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)

    # One extra position, because the targets are the inputs shifted by one.
    total_length = sequence_length + 1
    content_length = total_length - len(start) - len(end)
    if content_length < 1:
        raise ValueError(
            f"sequence_length={sequence_length} leaves no room for text "
            f"next to {len(start) + len(end)} start and end tokens. Use a "
            "larger `sequence_length`."
        )

    batch_size = len(response_ids)
    token_ids = np.full((batch_size, total_length), pad_id, dtype="int32")
    padding_mask = np.zeros((batch_size, total_length), dtype=bool)
    response_mask = np.zeros((batch_size, total_length), dtype=bool)
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        content = (prompt + response)[:content_length]
        in_response = ([False] * len(prompt) + [True] * len(response))[
            :content_length
        ]
        # The end token is distilled unless truncation cut into the prompt,
        # where no response token is left for it to end.
        # NOTE: when truncation cuts a response, the end token follows the
        # cut (as in KerasHub's own preprocessors), so the student's
        # cross-entropy term learns to stop there. The distillation term is
        # unaffected: it compares the two models' distributions at that
        # position, not the target token.
        end_in_response = len(prompt) <= content_length
        sequence = start + content + end
        length = len(sequence)
        token_ids[row, :length] = sequence
        padding_mask[row, :length] = True
        response_mask[row, :length] = (
            [False] * len(start) + in_response + [end_in_response] * len(end)
        )

    weights = (padding_mask & response_mask)[:, 1:].astype("float32")
    if sample_weight is not None:
        example_weight = np.asarray(sample_weight, dtype="float32")
        if example_weight.shape != (batch_size,):
            raise ValueError(
                "sample_weight for a causal LM must have one value per "
                f"example, shape ({batch_size},), got shape "
                f"{example_weight.shape}."
            )
        weights = weights * example_weight[:, None]

    inputs = {
        "token_ids": token_ids[:, :-1],
        "padding_mask": padding_mask[:, :-1],
    }
    return inputs, token_ids[:, 1:], weights


def apply_task_preprocessor(task, x):
    """Run a classifier's own preprocessor on raw inputs, returning numpy.

    Image classifiers resize and normalise with their image converter, text
    classifiers tokenize and pack. A task without a preprocessor gets `x`
    unchanged.
    """
    preprocessor = task.preprocessor
    if preprocessor is None:
        return x
    outputs = preprocessor(x)
    outputs, _, _ = keras.utils.unpack_x_y_sample_weight(outputs)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _leaves(x):
    """List the per-example arrays in `x`. A list is one leaf, not a nest."""
    if isinstance(x, dict):
        return [leaf for value in x.values() for leaf in _leaves(value)]
    if isinstance(x, tuple):
        return [leaf for value in x for leaf in _leaves(value)]
    return [x]


def _batch_size_of(x):
    sizes = {len(leaf) for leaf in _leaves(x)}
    if len(sizes) != 1:
        raise ValueError(
            f"All inputs must have the same number of examples, got sizes "
            f"{sorted(sizes)}."
        )
    return sizes.pop()


def _take(values, indices):
    """Select `indices` along the first axis of a list, array or dict."""
    if values is None:
        return None
    if isinstance(values, dict):
        return {key: _take(value, indices) for key, value in values.items()}
    if isinstance(values, tuple):
        return tuple(_take(value, indices) for value in values)
    if isinstance(values, list):
        return [values[i] for i in indices]
    return np.asarray(values)[indices]


class RawBatches(keras.utils.PyDataset):
    """Batches of raw examples, preprocessed one batch at a time.

    Args:
        x: Raw inputs: a list or array, a dict of them, or a tuple of them.
        y: Optional labels, one per example.
        sample_weight: Optional weights, one per example.
        batch_size: Examples per batch.
        shuffle: Whether to visit the examples in a new random order each
            epoch.
        preprocess: Function `(x, y, sample_weight) -> batch` applied to the
            raw slice of each batch.
    """

    def __init__(self, x, y, sample_weight, batch_size, shuffle, preprocess):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got "
                f"batch_size={batch_size!r}."
            )
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.preprocess = preprocess
        self.size = _batch_size_of(x)
        if self.size == 0:
            raise ValueError("The inputs contain no examples.")
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None and len(values) != self.size:
                raise ValueError(
                    f"{name} has {len(values)} entries but x has "
                    f"{self.size} examples."
                )
        self.order = np.arange(self.size)
        if shuffle:
            np.random.shuffle(self.order)

    def __len__(self):
        return math.ceil(self.size / self.batch_size)

    def __getitem__(self, index):
        indices = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.preprocess(
            _take(self.x, indices),
            _take(self.y, indices),
            _take(self.sample_weight, indices),
        )

    def on_epoch_end(self):
        if self.shuffle:
            np.random.shuffle(self.order)


def split_for_validation(x, y, sample_weight, validation_split):
    """Split off the last `validation_split` fraction of the examples."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(
            "validation_split must be a number between 0 and 1, got "
            f"validation_split={validation_split!r}."
        )
    size = _batch_size_of(x)
    split_at = int(math.floor(size * (1.0 - validation_split)))
    if split_at in (0, size):
        raise ValueError(
            f"validation_split={validation_split} of {size} examples leaves "
            "an empty training or validation set. Pass more examples or "
            "another split."
        )
    train = np.arange(split_at)
    validation = np.arange(split_at, size)
    return (
        (_take(x, train), _take(y, train), _take(sample_weight, train)),
        (_take(x, validation), _take(y, validation), _take(sample_weight, validation)),
    )
