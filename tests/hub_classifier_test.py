"""Distillation between tiny KerasHub image and text classifiers."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_abkd.hub as abkd_hub  # noqa: E402
from keras_abkd.losses import alpha_beta_divergence  # noqa: E402

BERT_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "ran"]


def resnet_classifier(image_size, scale, offset, num_classes=3, blocks=1):
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=image_size, scale=scale, offset=offset
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[blocks],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=num_classes, preprocessor=preprocessor
    )


def bert_classifier(num_layers=1, num_classes=2, vocabulary=None):
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocabulary or BERT_VOCABULARY, lowercase=True
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=8
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary or BERT_VOCABULARY),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=num_classes, preprocessor=preprocessor
    )


@pytest.fixture(scope="module")
def resnet_pair(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resnet")
    # Different input sizes and normalisations: [0, 1] for the teacher,
    # [-1, 1] for the student.
    teacher = resnet_classifier((16, 16), scale=1 / 255.0, offset=None, blocks=2)
    student = resnet_classifier((12, 12), scale=1 / 127.5, offset=-1.0)
    teacher.save_to_preset(str(directory / "teacher"))
    student.save_to_preset(str(directory / "student"))
    return str(directory / "teacher"), str(directory / "student")


def raw_images(count=6, size=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, size, size, 3)).astype("float32")


def test_image_inputs_use_each_converter(resnet_pair):
    distiller = abkd_hub.from_preset(*resnet_pair)
    images = raw_images()

    inputs = distiller.preprocess(images)

    teacher_images = keras.ops.convert_to_numpy(
        distiller.teacher.preprocessor.image_converter(images)
    )
    student_images = keras.ops.convert_to_numpy(
        distiller.student.preprocessor.image_converter(images)
    )
    assert inputs["teacher"].shape == (6, 16, 16, 3)
    assert inputs["student"].shape == (6, 12, 12, 3)
    np.testing.assert_allclose(inputs["teacher"], teacher_images, rtol=1e-6)
    np.testing.assert_allclose(inputs["student"], student_images, rtol=1e-6)
    assert inputs["teacher"].min() >= 0.0
    assert inputs["student"].min() < 0.0


def test_image_evaluate_and_fit(resnet_pair):
    distiller = abkd_hub.from_preset(*resnet_pair)
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate=0.002))
    images = raw_images()
    labels = np.array([0, 1, 2, 0, 1, 2])
    inputs, _ = distiller.preprocess(images, labels)

    teacher_logits = keras.ops.convert_to_numpy(distiller.teacher(inputs["teacher"]))
    student_logits = keras.ops.convert_to_numpy(distiller.student(inputs["student"]))
    divergence = keras.ops.convert_to_numpy(
        alpha_beta_divergence(teacher_logits, student_logits, alpha=0.2, beta=0.7)
    )
    log_probs = student_logits - np.log(
        np.sum(np.exp(student_logits), axis=-1, keepdims=True)
    )
    cross_entropy = -log_probs[np.arange(6), labels]

    result = distiller.evaluate(images, labels, batch_size=6, verbose=0, return_dict=True)
    assert result["distillation_loss"] == pytest.approx(np.mean(divergence), rel=1e-4)
    assert result["student_loss"] == pytest.approx(np.mean(cross_entropy), rel=1e-4)
    # With the default student_loss_weight=0 the labels are only reported.
    assert result["loss"] == pytest.approx(result["distillation_loss"], rel=1e-6)

    history = distiller.fit(images, labels, batch_size=6, epochs=12, verbose=0)
    losses = history.history["distillation_loss"]
    assert losses[-1] < losses[0]


def test_image_class_count_mismatch_raises():
    teacher = resnet_classifier((16, 16), scale=1 / 255.0, offset=None)
    student = resnet_classifier((16, 16), scale=1 / 255.0, offset=None, num_classes=4)

    with pytest.raises(ValueError, match="teacher predicts 3 classes but the student predicts 4"):
        abkd_hub.HubDistiller(teacher, student)


def test_task_kind_mismatch_raises():
    teacher = resnet_classifier((16, 16), scale=1 / 255.0, offset=None, num_classes=2)

    with pytest.raises(ValueError, match="image_classifier.*text_classifier"):
        abkd_hub.HubDistiller(teacher, bert_classifier())


def test_image_preset_kind_and_options(resnet_pair):
    assert abkd_hub.infer_task_kind(resnet_pair[0]) == "image_classifier"
    with pytest.raises(ValueError, match="no preprocessor with a sequence length"):
        abkd_hub.from_preset(*resnet_pair, sequence_length=8)


def test_text_classifier_fit(tmp_path):
    bert_classifier(num_layers=2).save_to_preset(str(tmp_path / "teacher"))
    bert_classifier().save_to_preset(str(tmp_path / "student"))
    distiller = abkd_hub.from_preset(
        str(tmp_path / "teacher"), str(tmp_path / "student"), student_loss_weight=1.0
    )
    distiller.compile(optimizer="adam")
    texts = ["the cat sat", "the dog ran", "cat ran", "dog sat"]
    labels = np.array([0, 1, 0, 1])

    inputs, _ = distiller.preprocess(texts, labels)
    for role in ("teacher", "student"):
        np.testing.assert_array_equal(inputs[role]["token_ids"][0], [2, 5, 6, 8, 3, 0, 0, 0])
        np.testing.assert_array_equal(inputs[role]["padding_mask"][0], [1, 1, 1, 1, 1, 0, 0, 0])
    history = distiller.fit(texts, labels, batch_size=4, epochs=1, verbose=0)

    assert distiller.task_kind == "text_classifier"
    assert np.isfinite(history.history["loss"][0])
    assert history.history["student_loss"][0] > 0.0


def test_text_classifier_vocabulary_mismatch_raises():
    other = BERT_VOCABULARY[:5] + ["a", "cat", "dog", "sat", "ran"]

    with pytest.raises(ValueError, match="different tokenizers") as error:
        abkd_hub.HubDistiller(bert_classifier(), bert_classifier(vocabulary=other))
    assert "same truncation point" in str(error.value)
    assert "Token-level" not in str(error.value)
