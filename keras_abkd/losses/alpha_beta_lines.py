"""The alpha-divergence and beta-divergence lines of the alpha-beta family."""

import keras

from keras_abkd.losses.alpha_beta import alpha_beta_divergence
from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses import validation


@keras.saving.register_keras_serializable(package="keras_abkd")
def alpha_divergence(y_true, y_pred, alpha, temperature=1.0, from_logits=True, axis=-1):
    """Compute the alpha-divergence of teacher p and student q.

    The alpha-divergence (Amari) is the line `beta = 1 - alpha` of
    `alpha_beta_divergence`:

    ```
    D = 1 / (alpha (alpha - 1)) * sum(p^alpha q^(1 - alpha) - alpha p - (1 - alpha) q)
    ```

    `alpha = 1` is KL(p || q), `alpha = 0` is KL(q || p) and `alpha = 0.5`
    is `2 * sum((sqrt(p) - sqrt(q))^2)`, four times the squared Hellinger
    distance. Amari's original parameter `a`, with `a = -1` for KL(p || q),
    is `a = 1 - 2 * alpha`.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        alpha: Finite float.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    alpha = validation.check_finite_number("alpha", alpha)
    return alpha_beta_divergence(
        y_true, y_pred, alpha, 1.0 - alpha, temperature, from_logits, axis
    )


@keras.saving.register_keras_serializable(package="keras_abkd")
def beta_divergence(y_true, y_pred, beta, temperature=1.0, from_logits=True, axis=-1):
    """Compute the beta-divergence of teacher p and student q.

    The line `alpha = 1` of `alpha_beta_divergence`:

    ```
    D = -1 / beta * sum(p q^beta - p^(1 + beta) / (1 + beta) - beta q^(1 + beta) / (1 + beta))
    ```

    `beta = 0` is KL(p || q) and `beta = 1` is `sum((p - q)^2) / 2`. This
    `beta` is the alpha-beta family's parameter. The common form of the
    beta-divergence, with parameter `b` (`b = 0` Itakura-Saito, `b = 1` KL,
    `b = 2` half the squared Euclidean distance), is `beta = b - 1` here.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        beta: Finite float.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.
    """
    beta = validation.check_finite_number("beta", beta)
    return alpha_beta_divergence(y_true, y_pred, 1.0, beta, temperature, from_logits, axis)


@keras.saving.register_keras_serializable(package="keras_abkd")
class AlphaDivergence(DivergenceLoss):
    """Alpha-divergence between teacher and student, see `alpha_divergence`.

    Args:
        alpha: Finite float. 1 is forward KL and 0 reverse KL.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"alpha_divergence"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = alpha_divergence
    _divergence_arguments = ("alpha",)

    def __init__(
        self,
        alpha,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="alpha_divergence",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.alpha = validation.check_finite_number("alpha", alpha)


@keras.saving.register_keras_serializable(package="keras_abkd")
class BetaDivergence(DivergenceLoss):
    """Beta-divergence between teacher and student, see `beta_divergence`.

    Args:
        beta: Finite float, the alpha-beta family's parameter. 0 is forward
            KL.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"beta_divergence"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = beta_divergence
    _divergence_arguments = ("beta",)

    def __init__(
        self,
        beta,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="beta_divergence",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.beta = validation.check_finite_number("beta", beta)
