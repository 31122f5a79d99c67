"""The generalized Jensen-Shannon divergence of GKD."""

import keras

from keras_abkd.losses.base import DivergenceLoss
from keras_abkd.losses.base import normalised_log_probabilities
from keras_abkd.losses.base import check_fraction
from keras_abkd.losses.kl import kl_divergence_from_log_probabilities
from keras_abkd.losses.kl import log_mixture


def _check_jsd_beta(beta):
    return check_fraction(
        "beta",
        beta,
        allow_zero=False,
        hint="The divergence is identically 0 at beta=0 and beta=1. Pass a "
        "beta in between, such as 0.5 for the Jensen-Shannon divergence, or "
        "use ForwardKL or ReverseKL.",
    )


@keras.saving.register_keras_serializable(package="keras_abkd")
def generalized_jsd(y_true, y_pred, beta=0.5, temperature=1.0, from_logits=True, axis=-1):
    """Compute the generalized Jensen-Shannon divergence of teacher p and student q.

    Formula, with the mixture `m = beta * p + (1 - beta) * q` formed in log
    space with a shifted log-sum-exp:

    ```
    JSD_beta(p, q) = beta * KL(p || m) + (1 - beta) * KL(q || m)
    ```

    `beta = 0.5` is the Jensen-Shannon divergence, bounded by `log 2`. The
    value tends to 0 as `beta -> 0` and as `beta -> 1`, because the mixture
    then tends to the distribution that carries the full weight, so the
    endpoints are not forward and reverse KL. Divided by its weight, it
    tends to them: `JSD_beta / beta -> KL(p || q)` as `beta -> 0` and
    `JSD_beta / (1 - beta) -> KL(q || p)` as `beta -> 1`.

    References:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", arXiv:2306.13649.

    Args:
        y_true: Teacher logits (or probabilities if `from_logits=False`).
        y_pred: Student logits (or probabilities), same shape as `y_true`.
        beta: Float in `(0, 1)`, the teacher's weight in the mixture.
            Defaults to 0.5.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.

    Returns:
        Tensor with the input shape without `axis`, one divergence per
        position.

    Example:

    >>> value = generalized_jsd([[2.0, 1.0, 0.1]], [[1.5, 1.2, 0.3]], beta=0.5)
    >>> value.shape
    (1,)
    """
    beta = _check_jsd_beta(beta)
    log_p, log_q = normalised_log_probabilities(y_true, y_pred, temperature, from_logits, axis)

    log_m = log_mixture(log_p, log_q, beta)
    teacher_term = kl_divergence_from_log_probabilities(log_p, log_m)
    student_term = kl_divergence_from_log_probabilities(log_q, log_m)
    return beta * teacher_term + (1.0 - beta) * student_term


@keras.saving.register_keras_serializable(package="keras_abkd")
class GeneralizedJSD(DivergenceLoss):
    """Generalized Jensen-Shannon divergence of GKD, see `generalized_jsd`.

    Args:
        beta: Float in `(0, 1)`, the teacher's weight in the mixture.
            Defaults to 0.5. The value tends to 0 at both ends of the
            interval, so they are not forward and reverse KL.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        from_logits: Whether the inputs are logits. Defaults to True.
        axis: The class axis. Defaults to -1.
        reduction: Keras loss reduction. Defaults to
            `"sum_over_batch_size"`.
        name: Name of the loss. Defaults to `"generalized_jsd"`.
        dtype: Dtype of the loss computation, as in `keras.losses.Loss`.
    """

    fn = generalized_jsd
    _divergence_arguments = ("beta",)

    def __init__(
        self,
        beta=0.5,
        temperature=1.0,
        from_logits=True,
        axis=-1,
        reduction="sum_over_batch_size",
        name="generalized_jsd",
        dtype=None,
    ):
        super().__init__(temperature, from_logits, axis, reduction, name, dtype)
        self.beta = _check_jsd_beta(beta)
