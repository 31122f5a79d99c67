"""Names for the divergences, for `Distiller(distillation_loss=...)` and `get`.

`keras.losses.get` (Keras 3.15) resolves a string only among Keras' own
losses, and `compile(loss=...)` goes through it, so a plain name such as
`"reverse_kl"` cannot be passed to `compile`. Pass the object instead:
`model.compile(loss=keras_abkd.losses.get("reverse_kl"))`. The registered
class names (`"keras_abkd>ReverseKL"`) resolve in `keras.losses.get` only
inside a config dict, and `compile` reads a dict as one loss per output.
"""

import keras

from keras_abkd.losses.adaptive_kl import AdaptiveKL
from keras_abkd.losses.alpha_beta import ABDivergence
from keras_abkd.losses.alpha_beta_lines import AlphaDivergence
from keras_abkd.losses.alpha_beta_lines import BetaDivergence
from keras_abkd.losses.jsd import GeneralizedJSD
from keras_abkd.losses.kl import ForwardKL
from keras_abkd.losses.kl import ReverseKL
from keras_abkd.losses.kl import SkewForwardKL
from keras_abkd.losses.kl import SkewReverseKL
from keras_abkd.losses.total_variation import TotalVariation

# Each name maps to a factory taking no argument. Parameters without a
# default in their class get the midpoint of their usual range here.
_FACTORIES = {
    "ab_divergence": lambda: ABDivergence(alpha=0.2, beta=0.7),
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "alpha_divergence": lambda: AlphaDivergence(alpha=0.5),
    "beta_divergence": lambda: BetaDivergence(beta=0.5),
    "generalized_jsd": GeneralizedJSD,
    "skew_forward_kl": SkewForwardKL,
    "skew_reverse_kl": SkewReverseKL,
    "total_variation": TotalVariation,
    "adaptive_kl": AdaptiveKL,
}


def register(name, factory):
    """Register `factory` (a callable with no arguments) under `name`."""
    _FACTORIES[name] = factory


def names():
    """Return the registered names, sorted."""
    return sorted(_FACTORIES)


def get(identifier):
    """Return a divergence for a name, a config dict, a `Loss` or a function.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(identifier, str):
        if identifier not in _FACTORIES:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}. Valid names: "
                f"{', '.join(names())}. Or pass a keras.losses.Loss instance."
            )
        return _FACTORIES[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(
        "distillation_loss must be a name, a keras.losses.Loss or a function, "
        f"got {identifier!r}."
    )
