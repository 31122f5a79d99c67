"""`TopKDivergence`: any divergence loss, read from packed top-k teacher targets."""

import keras
from keras import ops

from keras_abkd.losses import registry
from keras_abkd.losses import top_k
from keras_abkd.losses import validation
from keras_abkd.losses.adaptive_kl import AdaptiveKL
from keras_abkd.losses.base import DivergenceLoss


def _check_divergence(divergence):
    if isinstance(divergence, TopKDivergence):
        raise ValueError(
            "The divergence is already a TopKDivergence. Wrap the plain "
            "divergence once."
        )
    if isinstance(divergence, AdaptiveKL):
        raise ValueError(
            "AdaptiveKL cannot read top-k targets: it splits the teacher's "
            "classes into head and tail by sorted probability, and the tail "
            "bucket would be sorted as one class. Use dense teacher logits "
            "for AdaptiveKL, or another divergence with top-k targets."
        )
    if isinstance(divergence, DivergenceLoss) and not divergence.from_logits:
        raise ValueError(
            f"The divergence {divergence.name!r} has from_logits=False, but "
            "top-k targets and the bucketed student are logits. Pass a "
            "divergence with from_logits=True."
        )


@keras.saving.register_keras_serializable(package="keras_abkd")
class TopKDivergence(keras.losses.Loss):
    """A divergence between packed top-k teacher targets and a dense student.

    `y_true` contains packed targets `[..., 2k + 1]` (from
    `keras_abkd.losses.top_k.top_k_targets` or a teacher cache written by
    `keras_abkd.cache.cache_teacher`) and `y_pred` the student logits
    `[..., classes]`. Both are turned into `k + 1` bucket logits (the
    teacher's top-k classes and one tail bucket with the remaining mass,
    see `keras_abkd.losses.top_k`), and the wrapped divergence compares the
    two bucketed distributions. With `k` equal to the number of classes the
    value and gradient equal those of the wrapped divergence on dense logits.

    Every divergence here works except `AdaptiveKL`, whose head/tail split
    needs the teacher's individual classes.

    Args:
        divergence: A `keras_abkd` divergence loss (such as `ABDivergence`),
            a registered name, or a function `fn(y_true, y_pred)` of two
            logit tensors returning one value per position.
        temperature: Temperature used for the student's tail bucket. Defaults
            to the divergence's own `temperature` (1.0 for a function); it
            must match when both are given. Use the temperature the targets
            were computed at, because the teacher's tail bucket is exact only
            there.
        reduction: Keras loss reduction. Defaults to the divergence's
            reduction (`"sum_over_batch_size"` for a function).
        name: Name of the loss. Defaults to `"top_k_"` + the divergence's
            name.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.

    Example:

    ```python
    divergence = keras_abkd.ABDivergence(alpha=0.2, beta=0.7, temperature=2.0)
    student.compile(optimizer="adam", loss=keras_abkd.TopKDivergence(divergence))
    student.fit(images, packed_top_k_targets)
    ```
    """

    def __init__(
        self, divergence, temperature=None, reduction=None, name=None, dtype=None
    ):
        divergence = registry.get(divergence)
        _check_divergence(divergence)
        own_temperature = getattr(divergence, "temperature", None)
        if temperature is None:
            temperature = 1.0 if own_temperature is None else own_temperature
        temperature = validation.check_temperature(temperature)
        if own_temperature is not None and own_temperature != temperature:
            raise ValueError(
                f"temperature={temperature} differs from the divergence's "
                f"temperature={own_temperature}. Leave temperature unset to "
                "use the divergence's."
            )
        if reduction is None:
            reduction = getattr(divergence, "reduction", "sum_over_batch_size")
        if name is None:
            inner_name = getattr(divergence, "name", None)
            inner_name = inner_name or getattr(divergence, "__name__", "divergence")
            name = f"top_k_{inner_name}"
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.divergence = divergence
        self.temperature = temperature
        self.axis = int(getattr(divergence, "axis", -1))

    def call(self, y_true, y_pred):
        teacher, student = top_k.bucket_logits(y_true, y_pred, self.temperature, self.axis)
        if self.axis not in (-1, len(teacher.shape) - 1):
            # The wrapped divergence reads its class axis at `self.axis`.
            teacher = ops.moveaxis(teacher, -1, self.axis)
            student = ops.moveaxis(student, -1, self.axis)
        if isinstance(self.divergence, keras.losses.Loss):
            return self.divergence.call(teacher, student)
        return self.divergence(teacher, student)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "divergence": keras.saving.serialize_keras_object(self.divergence),
                "temperature": self.temperature,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["divergence"] = keras.saving.deserialize_keras_object(
            config["divergence"]
        )
        return cls(**config)
