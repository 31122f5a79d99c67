"""The `cifar10` task of `keras-abkd sweep`: a pretrained teacher, a small CNN.

The data are the 10,000 BIG-bench CIFAR-10 images (`make setup-cifar10`),
split by class into train, validation and test sets. The teacher is
EfficientNet-Lite0 with ImageNet weights and a frozen backbone: its pooled
features of the training images are computed once and cached, and a
classifier head is trained on them. The student is a small CNN that reads
the 32x32 images.
"""

import hashlib
import json
import logging
import os
import pathlib

import numpy as np

from keras_abkd.cli import datasets
from keras_abkd.sweep import ClassificationTask, Splits, register_task

logger = logging.getLogger(__name__)

# Seed of the stratified shuffle that splits the 10,000 images.
SPLIT_SEED = 0
# Seed of the teacher head's initialisation and data order.
TEACHER_SEED = 0


def build_cnn_student(input_shape, num_classes, units=64):
    """Build the student: two convolution blocks and a hidden dense layer.

    It reads images with pixel values in `[0, 255]`.
    """
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="student")


def build_feature_extractor(input_shape, resolution):
    """Build the frozen EfficientNet-Lite0 backbone behind a resize to `resolution`."""
    import keras

    from keras_abkd.models import EfficientNetLite0

    inputs = keras.Input(input_shape)
    resized = keras.layers.Resizing(resolution, resolution, interpolation="bilinear")(inputs)
    backbone = EfficientNetLite0(include_top=False, input_shape=(resolution, resolution, 3))
    backbone.trainable = False
    return keras.Model(inputs, backbone(resized), name="efficientnet_lite0_features")


def build_head(num_features, num_classes, units=256, dropout=0.2):
    """Build the teacher's classifier head on the pooled features."""
    import keras

    inputs = keras.Input((num_features,))
    x = keras.layers.Dropout(dropout)(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="teacher_head")


@register_task("cifar10")
class CIFAR10Task(ClassificationTask):
    """CIFAR-10: EfficientNet-Lite0 (ImageNet) teacher, small CNN student.

    With the defaults the 10,000 images split into 7,000 training, 1,000
    validation and 2,000 test images, equal per class. The teacher's head
    trains on the training split only.

    Args:
        teacher_epochs: Epochs of the teacher's head (once, then cached).
            Defaults to 30.
        student_units: Hidden units of the student's dense layer. Defaults
            to 64.
        validation_size: Validation images, a multiple of 10 (equal per
            class). Defaults to 1,000.
        test_size: Test images, a multiple of 10. Defaults to 2,000.
        teacher_resolution: Side in pixels the teacher resizes the 32x32
            images to. Defaults to 96.
        cache_dir: Folder of the cached data, features and teacher head.
            Defaults to `$KERAS_ABKD_CACHE` or `~/.cache/keras_abkd`.
        **kwargs: Settings of `keras_abkd.sweep.ClassificationTask`.
    """

    def __init__(
        self,
        teacher_epochs=30,
        student_units=64,
        validation_size=1000,
        test_size=2000,
        teacher_resolution=96,
        cache_dir=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for option, value in (
            ("teacher_epochs", teacher_epochs),
            ("student_units", student_units),
            ("validation_size", validation_size),
            ("test_size", test_size),
            ("teacher_resolution", teacher_resolution),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an integer >= 1, got {value!r}.")
        for option, value in (("validation_size", validation_size), ("test_size", test_size)):
            if value % 10:
                raise ValueError(
                    f"{option} must be a multiple of 10 (the same number of "
                    f"images per class), got {value}."
                )
        self.teacher_epochs = teacher_epochs
        self.student_units = student_units
        self.validation_size = validation_size
        self.test_size = test_size
        self.teacher_resolution = teacher_resolution
        self.teacher_head = None
        if cache_dir is None:
            from keras_abkd.cli.demo import default_cache_dir

            cache_dir = default_cache_dir()
        self.cache_dir = str(cache_dir)

    def config(self):
        config = super().config()
        config.update(
            {
                "dataset": "cifar10_bigbench",
                "teacher": "efficientnet_lite0_imagenet_frozen",
                "teacher_epochs": self.teacher_epochs,
                "teacher_seed": TEACHER_SEED,
                "teacher_resolution": self.teacher_resolution,
                "student_units": self.student_units,
                "validation_size": self.validation_size,
                "test_size": self.test_size,
                "split_seed": SPLIT_SEED,
            }
        )
        return config

    def load_splits(self):
        try:
            images, labels = datasets.load_cifar10_bigbench(cache_dir=self.cache_dir)
        except datasets.DatasetNotFoundError as error:
            # The sweep command reports FileNotFoundError without a traceback.
            raise FileNotFoundError(str(error)) from error
        train, validation, test = datasets.split_cifar10(
            images.astype("float32"),
            labels.astype("int32"),
            validation_per_class=self.validation_size // 10,
            test_per_class=self.test_size // 10,
            seed=SPLIT_SEED,
        )
        return Splits(train=train, validation=validation, test=test)

    def _teacher_cache_path(self, x_train, y_train):
        key = json.dumps(
            {
                "teacher_epochs": self.teacher_epochs,
                "teacher_resolution": self.teacher_resolution,
                "train_images": hashlib.sha256(np.ascontiguousarray(x_train).tobytes()).hexdigest(),
                "train_labels": hashlib.sha256(np.ascontiguousarray(y_train).tobytes()).hexdigest(),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return pathlib.Path(self.cache_dir) / "cifar10" / f"teacher_head_{digest}.weights.h5"

    def load_teacher(self, splits):
        import keras

        x_train, y_train = splits.train
        num_classes = int(y_train.max()) + 1
        extractor = build_feature_extractor(x_train.shape[1:], self.teacher_resolution)
        head = build_head(extractor.output_shape[-1], num_classes)
        path = self._teacher_cache_path(x_train, y_train)

        if path.is_file():
            logger.info("Loading the cached teacher head from %s", path)
            head.load_weights(path)
        else:
            features = extractor.predict(x_train, batch_size=self.batch_size, verbose=self.verbose)
            keras.utils.set_random_seed(TEACHER_SEED)
            head = build_head(extractor.output_shape[-1], num_classes)
            head.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            head.fit(
                features,
                y_train,
                batch_size=128,
                epochs=self.teacher_epochs,
                verbose=self.verbose,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{os.getpid()}.{path.name}")
            head.save_weights(temporary)
            os.replace(temporary, path)

        self.teacher_head = head
        inputs = keras.Input(x_train.shape[1:])
        return keras.Model(inputs, head(extractor(inputs)), name="teacher")

    def build_student(self, input_shape, num_classes):
        return build_cnn_student(input_shape, num_classes, self.student_units)
