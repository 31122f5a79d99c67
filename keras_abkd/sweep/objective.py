"""`StoredTeacherLoss`: the Distiller's objective on stored teacher logits."""

import keras
from keras import ops


def pack_targets(labels, teacher_logits):
    """Pack integer labels and teacher logits into one float32 target array.

    Args:
        labels: Integer class labels, shape `[N]`.
        teacher_logits: Teacher logits, shape `[N, classes]`.

    Returns:
        A float32 array `[N, 1 + classes]`: the label, then the logits.
        Labels are exact in float32 up to 2**24 classes.
    """
    import numpy as np

    labels = np.asarray(labels)
    teacher_logits = np.asarray(teacher_logits, dtype="float32")
    if (
        labels.ndim != 1
        or teacher_logits.ndim != 2
        or len(labels) != len(teacher_logits)
    ):
        raise ValueError(
            "pack_targets expects labels of shape [N] and teacher logits of "
            f"shape [N, classes], got {labels.shape} and {teacher_logits.shape}."
        )
    return np.concatenate([labels[:, None].astype("float32"), teacher_logits], axis=1)


@keras.saving.register_keras_serializable(package="keras_abkd")
class StoredTeacherLoss(keras.losses.Loss):
    """Distillation loss plus label loss, with the teacher logits stored in `y_true`.

    Per example it returns

    ```
    distillation_loss_weight * D(teacher_logits, student_logits)
        + student_loss_weight * crossentropy(label, student_logits)
    ```

    With the default `"sum_over_batch_size"` reduction this is, batch for
    batch, the loss that `keras_abkd.Distiller` minimises with a sparse
    categorical crossentropy student loss and no sample weights. The teacher
    runs once on the whole data set instead of once per batch, which gives
    the same logits because a Distiller always runs its teacher with
    `training=False`.

    Args:
        distillation_loss: A `keras_abkd.losses.DivergenceLoss` such as
            `ABDivergence`, with teacher logits as `y_true`.
        student_loss_weight: Weight of the crossentropy with the labels.
            Defaults to 0.5.
        distillation_loss_weight: Weight of the divergence. Defaults to 1.0.
        name: Name of the loss. Defaults to `"stored_teacher_loss"`.

    Example:

    ```python
    loss = StoredTeacherLoss(ABDivergence(1.0, 0.5, temperature=2.0))
    student.compile(optimizer="adam", loss=loss)
    student.fit(images, pack_targets(labels, teacher_logits))
    ```
    """

    def __init__(
        self,
        distillation_loss,
        student_loss_weight=0.5,
        distillation_loss_weight=1.0,
        reduction="sum_over_batch_size",
        name="stored_teacher_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(distillation_loss, dict):
            distillation_loss = keras.saving.deserialize_keras_object(distillation_loss)
        self.distillation_loss = distillation_loss
        self.student_loss_weight = float(student_loss_weight)
        self.distillation_loss_weight = float(distillation_loss_weight)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        labels = ops.cast(y_true[:, 0], "int32")
        teacher_logits = y_true[:, 1:]

        divergence = self.distillation_loss.call(teacher_logits, y_pred)
        crossentropy = keras.losses.sparse_categorical_crossentropy(
            labels, y_pred, from_logits=True
        )
        return (
            self.distillation_loss_weight * divergence
            + self.student_loss_weight * crossentropy
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "distillation_loss": keras.saving.serialize_keras_object(
                    self.distillation_loss
                ),
                "student_loss_weight": self.student_loss_weight,
                "distillation_loss_weight": self.distillation_loss_weight,
            }
        )
        return config
