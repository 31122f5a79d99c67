import keras
import numpy as np
import pytest

import keras_abkd
from keras_abkd import Distiller
from keras_abkd.distiller import weighted_mean
from keras_abkd.losses import ABDivergence
from keras_abkd.losses import alpha_beta_divergence
from tests.gradients import value_and_grad


def _mlp(units, classes=5, name=None, regularizer=None, dropout=0.0, batch_norm=False):
    inputs = keras.Input((8,))
    x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer)(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name=name)


def _data(n=64, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = rng.integers(0, classes, size=(n,)).astype("int32")
    return x, y


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_teacher_is_frozen_and_excluded_from_training():
    teacher = _mlp(32, name="teacher", dropout=0.5, batch_norm=True)
    student = _mlp(4, name="student")
    x, y = _data()
    teacher_before = _weights(teacher)
    student_before = _weights(student)

    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="adam")
    distiller.fit(x, epochs=2, batch_size=16, verbose=0)

    # BatchNorm moving statistics are weights too: they must not move.
    for before, after in zip(teacher_before, _weights(teacher)):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.array_equal(before, after)
        for before, after in zip(student_before, _weights(student))
    )
    trainable_ids = {id(v) for v in distiller.trainable_weights}
    assert not any(id(v) in trainable_ids for v in teacher.weights)
    assert len(distiller.trainable_weights) == len(student.trainable_weights)


def test_teacher_runs_in_inference_mode():
    teacher = _mlp(32, name="teacher", dropout=0.9)
    student = _mlp(4, name="student")
    x, _ = _data(16)
    distiller = Distiller(teacher, student)

    first = keras.ops.convert_to_numpy(distiller.teacher_logits(x))
    second = keras.ops.convert_to_numpy(distiller.teacher_logits(x))
    expected = keras.ops.convert_to_numpy(teacher(x, training=False))

    # With dropout active two calls would differ almost surely.
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, expected, rtol=1e-6)


def test_loss_equals_mean_divergence():
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, _ = _data(32)
    distiller = Distiller(teacher, student, distillation_loss=ABDivergence(0.3, 0.5))
    distiller.compile(optimizer="sgd")

    result = distiller.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    expected = np.mean(
        keras.ops.convert_to_numpy(
            alpha_beta_divergence(teacher.predict(x, verbose=0), student.predict(x, verbose=0), 0.3, 0.5)
        )
    )

    np.testing.assert_allclose(result["distillation_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    assert result["student_loss"] == 0.0


def test_student_loss_is_mixed_with_its_weight():
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, y = _data(32)
    distiller = Distiller(
        teacher, student, distillation_loss_weight=0.25, student_loss_weight=2.0
    )
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")

    result = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    logits = student.predict(x, verbose=0)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)

    np.testing.assert_allclose(result["student_loss"], float(cross_entropy), rtol=1e-5)
    np.testing.assert_allclose(
        result["loss"],
        0.25 * result["distillation_loss"] + 2.0 * result["student_loss"],
        rtol=1e-5,
    )


def test_student_regularizers_are_kept():
    teacher = _mlp(16, name="teacher", regularizer=keras.regularizers.L2(10.0))
    student = _mlp(4, name="student", regularizer=keras.regularizers.L2(0.5))
    x, _ = _data(32)
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="sgd")

    result = distiller.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    student_penalty = 0.5 * float(np.sum(np.square(student.layers[1].get_weights()[0])))

    # The frozen teacher's much larger penalty is not part of the loss.
    np.testing.assert_allclose(
        result["loss"], result["distillation_loss"] + student_penalty, rtol=1e-5
    )


def test_add_loss_of_student_is_kept():
    class PenaltyLayer(keras.layers.Layer):
        def call(self, inputs):
            self.add_loss(3.0 * keras.ops.mean(keras.ops.square(inputs)))
            return inputs

    inputs = keras.Input((8,))
    hidden = PenaltyLayer()(keras.layers.Dense(4)(inputs))
    student = keras.Model(inputs, keras.layers.Dense(5)(hidden))
    teacher = _mlp(16, name="teacher")
    x, _ = _data(32)
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="sgd")

    result = distiller.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    hidden_values = student.layers[1](x)
    penalty = 3.0 * float(np.mean(np.square(keras.ops.convert_to_numpy(hidden_values))))

    np.testing.assert_allclose(result["loss"], result["distillation_loss"] + penalty, rtol=1e-5)


def test_weighted_mean_uses_total_weight():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype="float32")
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype="float32")

    result = float(weighted_mean(keras.ops.convert_to_tensor(values), mask))

    assert result == pytest.approx((1.0 + 2.0 + 4.0) / 3.0)


def test_weighted_mean_broadcasts_per_example_weights():
    values = np.array([[1.0, 3.0], [5.0, 7.0]], dtype="float32")
    weights = np.array([1.0, 3.0], dtype="float32")

    result = float(weighted_mean(keras.ops.convert_to_tensor(values), weights))

    assert result == pytest.approx((1.0 + 3.0 + 3 * 5.0 + 3 * 7.0) / 8.0)


def test_weighted_mean_ignores_non_finite_masked_values():
    values = np.array([[1.0, np.inf], [np.nan, 2.0]], dtype="float32")
    mask = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")

    assert float(weighted_mean(keras.ops.convert_to_tensor(values), mask)) == pytest.approx(1.5)


def _sequence_models(vocabulary=7, length=5):
    def model(units, name):
        inputs = keras.Input((length, 3))
        x = keras.layers.Dense(units, activation="tanh")(inputs)
        return keras.Model(inputs, keras.layers.Dense(vocabulary)(x), name=name)

    return model(16, "teacher"), model(4, "student")


def test_token_mask_weights_positions():
    teacher, student = _sequence_models()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 3)).astype("float32")
    mask = (rng.random((4, 5)) > 0.4).astype("float32")
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="sgd")

    loss = distiller.compute_loss(x=x, y_pred=student(x), sample_weight=mask)
    per_token = keras.ops.convert_to_numpy(
        alpha_beta_divergence(teacher(x), student(x), 0.2, 0.7)
    )

    np.testing.assert_allclose(
        float(loss), np.sum(per_token * mask) / np.sum(mask), rtol=1e-5
    )


def test_all_masked_batch_no_update():
    teacher, student = _sequence_models()
    x = np.random.default_rng(2).normal(size=(4, 5, 3)).astype("float32")
    mask = np.zeros((4, 5), dtype="float32")
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    before = _weights(student)

    history = distiller.fit(x, sample_weight=mask, batch_size=4, epochs=1, verbose=0)

    assert history.history["loss"][0] == 0.0
    for old, new in zip(before, _weights(student)):
        np.testing.assert_array_equal(old, new)


def test_all_masked_gradient_is_zero_and_finite():
    teacher_logits = np.random.default_rng(3).normal(size=(2, 4, 6)).astype("float32")
    student_logits = np.random.default_rng(4).normal(size=(2, 4, 6)).astype("float32")
    mask = np.zeros((2, 4), dtype="float32")
    distiller = Distiller(*_sequence_models(vocabulary=6, length=4))

    value, (grad,) = value_and_grad(
        lambda s: distiller.compute_distillation_loss(teacher_logits, s, mask),
        student_logits,
    )

    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_fit_without_labels_and_with_sample_weight():
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, _ = _data(48)
    weights = np.linspace(0.0, 1.0, 48).astype("float32")
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="adam")

    history = distiller.fit(x, sample_weight=weights, epochs=2, batch_size=16, verbose=0)

    assert set(history.history) >= {"loss", "distillation_loss", "student_loss"}
    assert history.history["loss"][1] < history.history["loss"][0]


def test_dict_inputs_pass_through():
    def model(units, name):
        a = keras.Input((4,), name="a")
        b = keras.Input((3,), name="b")
        x = keras.layers.Concatenate()([a, keras.layers.Dense(2)(b)])
        x = keras.layers.Dense(units, activation="relu")(x)
        return keras.Model({"a": a, "b": b}, keras.layers.Dense(5)(x), name=name)

    rng = np.random.default_rng(5)
    x = {"a": rng.normal(size=(32, 4)).astype("float32"), "b": rng.normal(size=(32, 3)).astype("float32")}
    distiller = Distiller(model(16, "teacher"), model(4, "student"))
    distiller.compile(optimizer="adam")

    history = distiller.fit(x, epochs=1, batch_size=8, verbose=0)

    assert np.isfinite(history.history["loss"][0])


def test_bfloat16_teacher_with_float32_student():
    teacher = _mlp(16, name="teacher")
    bf16_teacher = keras.models.clone_model(teacher)
    x, _ = _data(32)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", dtype="bfloat16")(inputs)
    bf16_teacher = keras.Model(inputs, keras.layers.Dense(5, dtype="bfloat16")(h))
    student = _mlp(4, name="student")
    distiller = Distiller(bf16_teacher, student)
    distiller.compile(optimizer="adam")

    logits = distiller.teacher_logits(x)
    history = distiller.fit(x, epochs=1, batch_size=16, verbose=0)

    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(history.history["loss"][0])


def test_string_losses_resolve_with_logits():
    distiller = Distiller(_mlp(16, name="teacher"), _mlp(4, name="student"), distillation_loss="reverse_kl")
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert distiller._student_loss.get_config()["from_logits"] is True
    assert isinstance(distiller.distillation_loss, keras.losses.Loss)


def test_unknown_distillation_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown distillation loss 'kl'.*forward_kl"):
        Distiller(_mlp(16), _mlp(4), distillation_loss="kl")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(student_loss_weight=-1.0), "student_loss_weight must be a finite number >= 0"),
        (dict(distillation_loss_weight=float("nan")), "distillation_loss_weight"),
        (dict(student_loss_weight="0.5"), "student_loss_weight must be a number"),
    ],
)
def test_invalid_weights_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Distiller(_mlp(16), _mlp(4), **kwargs)


def test_same_model_as_teacher_and_student_raises():
    model = _mlp(4)
    with pytest.raises(ValueError, match="same object"):
        Distiller(model, model)


def test_non_model_teacher_raises():
    with pytest.raises(ValueError, match="teacher must be a keras.Model"):
        Distiller("teacher.keras", _mlp(4))


def test_save_load_and_continue_training(tmp_path):
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, y = _data(64)
    distiller = Distiller(
        teacher, student, distillation_loss=ABDivergence(0.4, 0.4, temperature=2.0), student_loss_weight=0.5
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)

    restored = keras.saving.load_model(path)
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = restored.evaluate(x, y, verbose=0, return_dict=True)

    assert isinstance(restored, Distiller)
    assert restored.distillation_loss.temperature == 2.0
    assert restored.student_loss_weight == 0.5
    assert not restored.teacher.trainable
    for key in ("loss", "distillation_loss", "student_loss", "accuracy"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5)

    # Continue training without compile; the optimizer state came back too.
    assert int(restored.optimizer.iterations) == int(distiller.optimizer.iterations)
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    restored.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for original, loaded in zip(_weights(distiller.student), _weights(restored.student)):
        np.testing.assert_allclose(loaded, original, rtol=1e-5, atol=1e-6)


def test_trained_student_saves_alone(tmp_path):
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, _ = _data(32)
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer="adam")
    distiller.fit(x, epochs=1, verbose=0)

    distiller.student.save(tmp_path / "student.keras")
    restored = keras.saving.load_model(tmp_path / "student.keras")

    np.testing.assert_allclose(
        restored.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6
    )
    assert len(restored.weights) == len(student.weights)


def test_predict_returns_student_logits():
    teacher = _mlp(16, name="teacher")
    student = _mlp(4, name="student")
    x, _ = _data(8)
    distiller = Distiller(teacher, student)
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6
    )


def test_config_round_trip():
    distiller = Distiller(
        _mlp(16, name="teacher"),
        _mlp(4, name="student"),
        distillation_loss=ABDivergence(1.0, 0.0),
        distillation_loss_weight=0.5,
        student_loss_weight=0.1,
    )
    restored = Distiller.from_config(distiller.get_config())
    assert restored.distillation_loss.get_config() == distiller.distillation_loss.get_config()
    assert restored.distillation_loss_weight == 0.5
    assert restored.student_loss_weight == 0.1
    assert restored.student.count_params() == distiller.student.count_params()


def test_default_distillation_loss_is_paper_setting():
    distiller = keras_abkd.Distiller(_mlp(16), _mlp(4))
    assert isinstance(distiller.distillation_loss, ABDivergence)
    assert (distiller.distillation_loss.alpha, distiller.distillation_loss.beta) == (0.2, 0.7)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow train step")
def test_tensorflow_runs_teacher_outside_tape():
    from tensorflow.python.eager import record

    seen = []

    class RecordingLayer(keras.layers.Layer):
        def call(self, inputs):
            # True when a GradientTape would record this op.
            seen.append(record.could_possibly_record())
            return inputs

    inputs = keras.Input((8,))
    teacher = keras.Model(inputs, keras.layers.Dense(5)(RecordingLayer()(inputs)))
    distiller = Distiller(teacher, _mlp(4, name="student"))
    distiller.compile(optimizer="sgd", run_eagerly=True)
    x, _ = _data(16)

    distiller.fit(x, epochs=1, batch_size=16, verbose=0)

    # Keras also runs the loss once symbolically to build metrics.
    assert seen
    assert not any(seen)


def test_different_output_widths_raise():
    with pytest.raises(ValueError, match="teacher outputs 5 logits per position and the student 7"):
        Distiller(_mlp(16, classes=5), _mlp(4, classes=7))


def test_unbuilt_model_raises():
    unbuilt = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="student model .* is not built"):
        Distiller(_mlp(16), unbuilt)


def test_layer_as_teacher_raises():
    with pytest.raises(ValueError, match="teacher must be a keras.Model, got Dense"):
        Distiller(keras.layers.Dense(5), _mlp(4))


@pytest.mark.parametrize(
    "weights,message",
    [(-np.ones(32), "sample_weight must be >= 0, got a minimum of -1.0"), (np.full(32, np.nan), "NaN or infinite")],
)
def test_invalid_sample_weight_raises(weights, message):
    distiller = Distiller(_mlp(16), _mlp(4))
    distiller.compile(optimizer="sgd")
    x, y = _data(32)
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, y, sample_weight=weights, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.evaluate(x, sample_weight=weights, verbose=0)


def test_epoch_metrics_do_not_depend_on_batch_size():
    distiller = Distiller(_mlp(16, name="teacher"), _mlp(4, name="student"))
    distiller.compile(optimizer="sgd")
    x, _ = _data(40)

    whole = distiller.evaluate(x, batch_size=40, verbose=0, return_dict=True)
    uneven = distiller.evaluate(x, batch_size=16, verbose=0, return_dict=True)

    np.testing.assert_allclose(uneven["distillation_loss"], whole["distillation_loss"], rtol=1e-5)
    np.testing.assert_allclose(uneven["loss"], uneven["distillation_loss"], rtol=1e-5)


def test_student_loss_weight_without_loss_warns(caplog):
    distiller = Distiller(_mlp(16), _mlp(4), student_loss_weight=0.5)
    with caplog.at_level("WARNING", logger="keras_abkd.distiller"):
        distiller.compile(optimizer="sgd")
    assert "compile() got no loss" in caplog.text


def test_loss_with_zero_weight_warns(caplog):
    distiller = Distiller(_mlp(16), _mlp(4))
    with caplog.at_level("WARNING", logger="keras_abkd.distiller"):
        distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert "student_loss_weight=0.0" in caplog.text


def test_fit_without_labels_skips_compiled_metrics():
    distiller = Distiller(_mlp(16, name="teacher"), _mlp(4, name="student"))
    distiller.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    x, y = _data(32)
    mask = np.ones(32, dtype="float32")

    labelled = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    unlabelled = distiller.fit(x, epochs=1, batch_size=16, verbose=0)
    masked = distiller.evaluate(x, sample_weight=mask, verbose=0, return_dict=True)

    assert "accuracy" in labelled.history
    assert "accuracy" not in unlabelled.history
    assert np.isfinite(unlabelled.history["loss"][0])
    assert "accuracy" not in masked
    assert masked["student_loss"] == 0.0
