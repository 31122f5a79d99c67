"""Token-level distillation between tiny KerasHub causal LMs saved as presets."""

import json
import warnings

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_abkd.hub as abkd_hub  # noqa: E402
from keras_abkd.losses import alpha_beta_divergence  # noqa: E402

# A byte-pair vocabulary small enough to tokenize by hand. The end token has
# id 0 and is also the pad token, as in GPT-2.
GPT2_VOCABULARY = {
    "<|endoftext|>": 0,
    "a": 1,
    "b": 2,
    "c": 3,
    "Ġ": 4,
    "Ġa": 5,
    "Ġb": 6,
    "Ġc": 7,
    "ab": 8,
    "Ġab": 9,
}
GPT2_MERGES = ["a b", "Ġ a", "Ġ b", "Ġ c", "Ġa b"]

# Llama 3 pads with id 0, which is the real token "!".
LLAMA3_VOCABULARY = {
    "!": 0,
    "a": 1,
    "b": 2,
    "c": 3,
    "Ġ": 4,
    "Ġa": 5,
    "Ġb": 6,
    "Ġc": 7,
    "<|begin_of_text|>": 8,
    "<|end_of_text|>": 9,
    "<|eot_id|>": 10,
    "<|start_header_id|>": 11,
    "<|end_header_id|>": 12,
}
LLAMA3_MERGES = ["Ġ a", "Ġ b", "Ġ c"]

SEQUENCE_LENGTH = 6


def gpt2_causal_lm(
    num_layers=1,
    hidden_dim=8,
    vocabulary_size=10,
    vocabulary=None,
    merges=None,
    sequence_length=SEQUENCE_LENGTH,
):
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary=vocabulary or GPT2_VOCABULARY, merges=merges or GPT2_MERGES
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def llama3_causal_lm(num_layers=1, hidden_dim=8):
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=LLAMA3_VOCABULARY, merges=LLAMA3_MERGES
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=len(LLAMA3_VOCABULARY),
        num_layers=num_layers,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def save_preset(model, directory):
    model.save_to_preset(str(directory))
    return str(directory)


def gpt2_preprocessor():
    return gpt2_causal_lm().preprocessor


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    teacher = save_preset(gpt2_causal_lm(num_layers=2, hidden_dim=16), directory / "teacher")
    student = save_preset(gpt2_causal_lm(), directory / "student")
    return teacher, student


@pytest.fixture
def without_jax_x64():
    """Switch off 64-bit JAX types, which the test configuration turns on.

    KerasHub's GPT-2 generation loop fails under `jax_enable_x64` (keras-hub
    0.32: its cache index mixes int64 and int32), independently of this
    package.
    """
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    enabled = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", enabled)


def manual_divergence(distiller, batch, alpha=0.2, beta=0.7, width=None):
    """Mean ABKD divergence over the positions marked in `batch`'s weights."""
    inputs, _, weights = batch
    teacher = keras.ops.convert_to_numpy(
        keras.ops.cast(distiller.teacher(inputs["teacher"]), "float32")
    )
    student = keras.ops.convert_to_numpy(distiller.student(inputs["student"]))
    if width is not None:
        teacher = teacher[..., :width]
        student = student[..., :width]
    values = keras.ops.convert_to_numpy(
        alpha_beta_divergence(teacher, student, alpha=alpha, beta=beta)
    )
    return float(np.sum(values * weights) / np.sum(weights))


def test_pack_prompt_response_mask():
    inputs, targets, weights = abkd_hub.pack_causal_lm_batch(
        gpt2_preprocessor(), {"prompts": ["ab", "a b"], "responses": [" c", " b c"]}
    )

    # [start] prompt response [end] pad..., 7 tokens: "ab" = [8],
    # " c" = [7], "a b" = [1, 6], " b c" = [6, 7]. Start, end and pad are 0.
    expected_ids = np.array([[0, 8, 7, 0, 0, 0, 0], [0, 1, 6, 6, 7, 0, 0]])
    np.testing.assert_array_equal(inputs["token_ids"], expected_ids[:, :-1])
    np.testing.assert_array_equal(targets, expected_ids[:, 1:])
    np.testing.assert_array_equal(
        inputs["padding_mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    )
    # Weight i marks target i, the token at i + 1: response tokens and the
    # end token, which has the pad id 0 here and still counts.
    np.testing.assert_array_equal(weights, [[0, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]])


def test_pack_strings_matches_preprocessor():
    preprocessor = gpt2_preprocessor()
    texts = ["ab c", "a b c a b c a", "c"]
    inputs, targets, weights = abkd_hub.pack_causal_lm_batch(preprocessor, texts)
    expected_x, expected_y, expected_weights = preprocessor(texts)

    np.testing.assert_array_equal(
        inputs["token_ids"], keras.ops.convert_to_numpy(expected_x["token_ids"])
    )
    np.testing.assert_array_equal(
        inputs["padding_mask"], keras.ops.convert_to_numpy(expected_x["padding_mask"])
    )
    np.testing.assert_array_equal(targets, keras.ops.convert_to_numpy(expected_y))
    np.testing.assert_array_equal(weights, keras.ops.convert_to_numpy(expected_weights))


def test_pack_truncation_keeps_end_token():
    _, targets, weights = abkd_hub.pack_causal_lm_batch(
        gpt2_preprocessor(),
        {"prompts": ["a b c", "a b c a b c"], "responses": [" a b c a", " c"]},
    )

    # Row 0: 5 content tokens fit, [1, 6, 7] + [5, 6], then the end token.
    np.testing.assert_array_equal(targets[0], [1, 6, 7, 5, 6, 0])
    np.testing.assert_array_equal(weights[0], [0, 0, 0, 1, 1, 1])
    # Row 1: the prompt alone is cut, so no token is distilled.
    np.testing.assert_array_equal(weights[1], [0, 0, 0, 0, 0, 0])


def test_pack_example_weights():
    _, _, weights = abkd_hub.pack_causal_lm_batch(
        gpt2_preprocessor(),
        {"prompts": ["ab", "ab"], "responses": [" c", " c"]},
        sample_weight=[2.0, 0.0],
    )

    np.testing.assert_array_equal(weights, [[0, 2, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0]])


def test_pack_rejects_bad_inputs():
    preprocessor = gpt2_preprocessor()
    with pytest.raises(ValueError, match="same length"):
        abkd_hub.pack_causal_lm_batch(preprocessor, {"prompts": ["a", "b"], "responses": [" c"]})
    with pytest.raises(ValueError, match='"prompts" and'):
        abkd_hub.pack_causal_lm_batch(preprocessor, {"prompt": ["a"], "responses": [" c"]})
    with pytest.raises(ValueError, match="single string"):
        abkd_hub.pack_causal_lm_batch(preprocessor, "ab c")
    with pytest.raises(ValueError, match="one value per example"):
        abkd_hub.pack_causal_lm_batch(preprocessor, ["ab"], sample_weight=[1.0, 2.0])


def test_pack_llama3_pad_id_is_real_token():
    tokenizer = keras_hub.models.Llama3Tokenizer(
        vocabulary=LLAMA3_VOCABULARY, merges=LLAMA3_MERGES
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=SEQUENCE_LENGTH
    )

    inputs, targets, weights = abkd_hub.pack_causal_lm_batch(
        preprocessor, {"prompts": ["a!"], "responses": ["!b"]}
    )

    # "a!" = [1, 0] and "!b" = [0, 2]; Llama 3 also pads with 0, so only
    # the padding mask tells the "!" tokens from padding.
    np.testing.assert_array_equal(inputs["token_ids"], [[8, 1, 0, 0, 2, 9]])
    np.testing.assert_array_equal(targets, [[1, 0, 0, 2, 9, 0]])
    np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(inputs["padding_mask"], [[1, 1, 1, 1, 1, 1]])


def test_distiller_preprocess_shares_token_ids(gpt2_pair):
    distiller = abkd_hub.from_preset(*gpt2_pair)
    data = {"prompts": ["ab"], "responses": [" c"]}

    inputs, targets, weights = distiller.preprocess(data)

    expected_inputs, expected_targets, expected_weights = abkd_hub.pack_causal_lm_batch(
        distiller.student.preprocessor, data
    )
    for role in ("teacher", "student"):
        for key in ("token_ids", "padding_mask"):
            np.testing.assert_array_equal(inputs[role][key], expected_inputs[key])
    np.testing.assert_array_equal(targets, expected_targets)
    np.testing.assert_array_equal(weights, expected_weights)
    with pytest.raises(ValueError, match="y must be None"):
        distiller.preprocess(["ab"], y=[1])


def test_evaluate_matches_manual_losses(gpt2_pair):
    distiller = abkd_hub.from_preset(*gpt2_pair, student_loss_weight=0.5)
    distiller.compile(optimizer="sgd")
    data = {"prompts": ["ab", "a b", "c"], "responses": [" c", " b c", ""]}
    inputs, targets, weights = distiller.preprocess(data)

    logits = keras.ops.convert_to_numpy(distiller.student(inputs["student"]))
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    expected_student_loss = np.sum(token_losses * weights) / np.sum(weights)
    expected_distillation = manual_divergence(distiller, (inputs, targets, weights))

    result = distiller.evaluate(data, verbose=0, return_dict=True)

    assert result["distillation_loss"] == pytest.approx(expected_distillation, rel=1e-5)
    assert result["student_loss"] == pytest.approx(expected_student_loss, rel=1e-5)
    assert result["loss"] == pytest.approx(
        expected_distillation + 0.5 * expected_student_loss, rel=1e-5
    )


def test_fit_with_bfloat16_teacher(gpt2_pair):
    distiller = abkd_hub.from_preset(*gpt2_pair, teacher_dtype="bfloat16")
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate=0.02))
    data = {"prompts": ["ab", "a b", "c"] * 2, "responses": [" c", " b c", " a"] * 2}
    inputs, _, _ = distiller.preprocess(data)

    assert distiller.teacher.dtype_policy.compute_dtype == "bfloat16"
    assert distiller.student.dtype_policy.compute_dtype == "float32"
    teacher_logits = distiller.teacher_logits(inputs)
    assert keras.backend.standardize_dtype(teacher_logits.dtype) == "float32"

    # Every prompt is longer than the sequence, so no token is distilled:
    # the loss is 0 and the zero gradients leave the student unchanged.
    before = [keras.ops.convert_to_numpy(w) for w in distiller.student.trainable_weights]
    cut = {"prompts": ["a b c a b c", "c c c c c c"] * 3, "responses": [" a", " b"] * 3}
    history = distiller.fit(cut, batch_size=6, epochs=1, verbose=0)
    assert history.history["loss"][0] == 0.0
    assert history.history["distillation_loss"][0] == 0.0
    after = [keras.ops.convert_to_numpy(w) for w in distiller.student.trainable_weights]
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)

    history = distiller.fit(data, batch_size=6, epochs=12, verbose=0)
    losses = history.history["distillation_loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


def test_different_widths_raise(tmp_path):
    teacher = save_preset(gpt2_causal_lm(vocabulary_size=12), tmp_path / "t")
    student = save_preset(gpt2_causal_lm(vocabulary_size=11), tmp_path / "s")

    with pytest.raises(ValueError, match="outputs 12 logits.*outputs 11.*10 tokens"):
        abkd_hub.from_preset(teacher, student)
    with pytest.raises(ValueError, match="vocabulary must be one of"):
        abkd_hub.from_preset(teacher, student, vocabulary="pad")


def test_truncate_slices_before_softmax(tmp_path):
    teacher = save_preset(gpt2_causal_lm(num_layers=2, vocabulary_size=12), tmp_path / "t")
    student = save_preset(gpt2_causal_lm(vocabulary_size=11), tmp_path / "s")
    distiller = abkd_hub.from_preset(teacher, student, vocabulary="truncate")
    distiller.compile(optimizer="sgd", run_eagerly=True)
    data = {"prompts": ["ab", "a b"], "responses": [" c", " b c"]}
    batch = distiller.preprocess(data)

    assert distiller.kept_logits == 10
    assert distiller.predict(data, verbose=0).shape == (2, SEQUENCE_LENGTH, 10)
    expected = manual_divergence(distiller, batch, width=10)
    result = distiller.evaluate(data, verbose=0, return_dict=True)
    assert result["distillation_loss"] == pytest.approx(expected, rel=1e-5)


def test_truncate_needs_logit_per_token():
    tokenizer_vocabulary = dict(GPT2_VOCABULARY, extra=10, other=11)
    teacher = gpt2_causal_lm(vocabulary_size=13, vocabulary=tokenizer_vocabulary)
    student = gpt2_causal_lm(vocabulary_size=11, vocabulary=tokenizer_vocabulary)

    with pytest.raises(ValueError, match="first 12 logits.*13 and the student 11"):
        abkd_hub.HubDistiller(teacher, student, vocabulary="truncate")


def test_different_vocabulary_raises():
    swapped = dict(GPT2_VOCABULARY, b=3, c=2)

    # Same size, different ids: the check compares the mappings.
    with pytest.raises(ValueError, match="token 'b' has id 2 for the teacher and 3"):
        abkd_hub.HubDistiller(gpt2_causal_lm(), gpt2_causal_lm(vocabulary=swapped))


def test_different_merges_raise():
    student = gpt2_causal_lm(merges=GPT2_MERGES[:-1])

    with pytest.raises(ValueError, match="merge rules"):
        abkd_hub.HubDistiller(gpt2_causal_lm(), student)


def test_different_families_raise():
    with pytest.raises(ValueError, match="different tokenizers"):
        abkd_hub.HubDistiller(gpt2_causal_lm(), llama3_causal_lm())


def test_infer_task_kind(gpt2_pair):
    assert abkd_hub.infer_task_kind(gpt2_pair[0]) == "causal_lm"
    with pytest.raises(ValueError, match="task must be one of"):
        abkd_hub.from_preset(*gpt2_pair, task="seq2seq")


def write_hf_gpt2(directory, rng, num_layers=1, hidden_dim=8, vocabulary_size=10):
    """Write a Hugging Face GPT-2 checkpoint folder with random weights."""
    from safetensors.numpy import save_file

    directory.mkdir()
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocabulary_size,
        "n_layer": num_layers,
        "n_head": 2,
        "n_embd": hidden_dim,
        "n_positions": 16,
        "resid_pdrop": 0.0,
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "vocab.json").write_text(json.dumps(GPT2_VOCABULARY))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(GPT2_MERGES) + "\n")

    def weight(*shape):
        return (0.1 * rng.standard_normal(shape)).astype("float32")

    tensors = {
        "wte.weight": weight(vocabulary_size, hidden_dim),
        "wpe.weight": weight(16, hidden_dim),
        "ln_f.weight": np.ones(hidden_dim, "float32"),
        "ln_f.bias": np.zeros(hidden_dim, "float32"),
    }
    for index in range(num_layers):
        prefix = f"h.{index}."
        tensors.update(
            {
                prefix + "ln_1.weight": np.ones(hidden_dim, "float32"),
                prefix + "ln_1.bias": np.zeros(hidden_dim, "float32"),
                prefix + "ln_2.weight": np.ones(hidden_dim, "float32"),
                prefix + "ln_2.bias": np.zeros(hidden_dim, "float32"),
                prefix + "attn.c_attn.weight": weight(hidden_dim, 3 * hidden_dim),
                prefix + "attn.c_attn.bias": weight(3 * hidden_dim),
                prefix + "attn.c_proj.weight": weight(hidden_dim, hidden_dim),
                prefix + "attn.c_proj.bias": weight(hidden_dim),
                prefix + "mlp.c_fc.weight": weight(hidden_dim, 4 * hidden_dim),
                prefix + "mlp.c_fc.bias": weight(4 * hidden_dim),
                prefix + "mlp.c_proj.weight": weight(4 * hidden_dim, hidden_dim),
                prefix + "mlp.c_proj.bias": weight(hidden_dim),
            }
        )
    save_file(tensors, str(directory / "model.safetensors"))
    return tensors


def test_hugging_face_teacher_folder(tmp_path):
    pytest.importorskip("safetensors")
    tensors = write_hf_gpt2(tmp_path / "hf_teacher", np.random.default_rng(0), num_layers=2)
    student = save_preset(gpt2_causal_lm(), tmp_path / "student")

    distiller = abkd_hub.from_preset(
        str(tmp_path / "hf_teacher"), student, sequence_length=SEQUENCE_LENGTH
    )

    assert isinstance(distiller.teacher, keras_hub.models.GPT2CausalLM)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(distiller.teacher.backbone.token_embedding.embeddings),
        tensors["wte.weight"],
    )
    assert distiller.teacher.preprocessor.sequence_length == SEQUENCE_LENGTH
    inputs, _, _ = distiller.preprocess(["ab c", "a b"])
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(distiller.teacher_logits(inputs))))


def test_save_and_load(gpt2_pair, tmp_path):
    distiller = abkd_hub.from_preset(*gpt2_pair, vocabulary="truncate", student_loss_weight=0.25)
    distiller.compile(optimizer="adam")
    data = {"prompts": ["ab", "a b"], "responses": [" c", " b c"]}
    path = str(tmp_path / "distiller.keras")

    distiller.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = keras.saving.load_model(path)

    assert not [w for w in caught if "compile()" in str(w.message)]
    assert isinstance(restored, abkd_hub.HubDistiller)
    assert restored.vocabulary == "truncate"
    assert restored.kept_logits == 10
    assert restored.student_loss_weight == 0.25
    assert isinstance(restored._student_loss, abkd_hub.TokenCrossEntropy)
    inputs, _, _ = distiller.preprocess(data)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(inputs)),
        keras.ops.convert_to_numpy(distiller(inputs)),
        atol=1e-6,
    )


def test_call_rejects_unpaired_inputs(gpt2_pair):
    distiller = abkd_hub.from_preset(*gpt2_pair)
    inputs, _, _ = distiller.preprocess(["ab c"])

    with pytest.raises(ValueError, match='"teacher": ..., "student"'):
        distiller(inputs["student"])


def test_rouge_l_values():
    assert abkd_hub.rouge_l(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)
    # LCS 2 of 2 predicted and 4 reference words: F = 2 * 1 * 0.5 / 1.5.
    assert abkd_hub.rouge_l(["the cat"], ["the cat sat down"]) == pytest.approx(2 / 3)
    assert abkd_hub.rouge_l(["dog"], ["the cat"]) == 0.0
    with pytest.raises(ValueError, match="one reference per prediction"):
        abkd_hub.rouge_l(["a", "b"], ["a"])


def test_rouge_l_callback_logs_score(gpt2_pair, without_jax_x64):
    distiller = abkd_hub.from_preset(*gpt2_pair)
    prompts = ["ab", "a b"]
    references = ["c", "b c"]
    callback = abkd_hub.RougeLCallback(prompts, references, max_length=SEQUENCE_LENGTH)
    callback.set_model(distiller)
    sampler = distiller.student.sampler

    logs = {}
    callback.on_epoch_end(0, logs)

    completions = abkd_hub.generate_greedy(distiller, prompts, max_length=SEQUENCE_LENGTH)
    assert len(completions) == 2
    assert logs["rouge_l"] == pytest.approx(abkd_hub.rouge_l(completions, references))
    assert distiller.student.sampler is sampler
