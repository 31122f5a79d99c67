"""The image classification tasks of `keras-abkd sweep`: Fashion-MNIST and digits.

Both reuse the demo's convolutional teacher, its on-disk teacher cache and
its one-hidden-layer student. The validation split is carved from the
training images with a fixed seed, and the teacher trains on the remaining
training images only, so it has seen neither validation nor test images.
"""

from keras_abkd.cli import datasets
from keras_abkd.cli import demo
from keras_abkd.sweep import ClassificationTask
from keras_abkd.sweep import Splits
from keras_abkd.sweep import carve_validation
from keras_abkd.sweep import register_task

# Seed of the permutation that carves the validation split.
SPLIT_SEED = 0


class ImageClassificationTask(ClassificationTask):
    """A dataset of `keras_abkd.cli.datasets`, the demo's teacher and student.

    The teacher trains with the students' batch size.

    Args:
        teacher_epochs: Epochs of the teacher's training (once, then
            cached). Defaults to 4.
        student_units: Hidden units of the student perceptron. Defaults
            to 16.
        validation_size: Training images moved to the validation split.
            Defaults to the class's `default_validation_size`.
        cache_dir: Folder of the cached teacher. Defaults to the demo's
            (`$KERAS_ABKD_CACHE` or `~/.cache/keras_abkd`).
        **kwargs: Settings of `keras_abkd.sweep.ClassificationTask`.
    """

    dataset = None
    default_validation_size = None

    def __init__(
        self,
        teacher_epochs=4,
        student_units=16,
        validation_size=None,
        cache_dir=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for option, value in (
            ("teacher_epochs", teacher_epochs),
            ("student_units", student_units),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be an integer >= 1, got {value!r}.")
        self.teacher_epochs = teacher_epochs
        self.student_units = student_units
        if validation_size is None:
            validation_size = self.default_validation_size
        self.validation_size = validation_size
        self.cache_dir = str(cache_dir or demo.default_cache_dir())

    def config(self):
        config = super().config()
        config.update(
            {
                "dataset": self.dataset,
                "teacher_epochs": self.teacher_epochs,
                "student_units": self.student_units,
                "validation_size": self.validation_size,
                "split_seed": SPLIT_SEED,
            }
        )
        return config

    def load_splits(self):
        (x_train, y_train), test = datasets.load(self.dataset)
        train, validation = carve_validation(
            x_train, y_train, self.validation_size, seed=SPLIT_SEED
        )
        return Splits(train=train, validation=validation, test=test)

    def load_teacher(self, splits):
        # The cache key of the demo's teacher covers the dataset name, so
        # the name states the split: this teacher never sees validation.
        teacher_config = demo.DemoConfig(
            dataset=f"{self.dataset}_minus_{self.validation_size}_validation",
            teacher_epochs=self.teacher_epochs,
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            verbose=self.verbose,
        )
        x_train, y_train = splits.train
        return demo.load_or_train_teacher(teacher_config, x_train, y_train)

    def build_student(self, input_shape, num_classes):
        return demo.build_student(input_shape, num_classes, self.student_units)


@register_task("fashion_mnist")
class FashionMNISTTask(ImageClassificationTask):
    """Fashion-MNIST: 50,000 training, 10,000 validation and 10,000 test images."""

    dataset = "fashion_mnist"
    default_validation_size = 10_000


@register_task("digits")
class DigitsTask(ImageClassificationTask):
    """scikit-learn's 8x8 digits: 1,048 training, 300 validation, 449 test images.

    Small enough for tests, so its defaults train longer on smaller batches
    than Fashion-MNIST's: 20 teacher and 20 student epochs, batch size 32.
    """

    dataset = "digits"
    default_validation_size = 300

    def __init__(self, teacher_epochs=20, student_epochs=20, batch_size=32, **kwargs):
        super().__init__(
            teacher_epochs=teacher_epochs,
            student_epochs=student_epochs,
            batch_size=batch_size,
            **kwargs,
        )
