"""Names for the divergences, so that strings work wherever a loss does."""

import keras

from keras_abkd.losses.alpha_beta import ABDivergence

# Each name maps to a factory taking no argument.
_FACTORIES = {
    "ab_divergence": lambda: ABDivergence(alpha=0.2, beta=0.7),
    "forward_kl": lambda: ABDivergence(alpha=1.0, beta=0.0, name="forward_kl"),
    "reverse_kl": lambda: ABDivergence(alpha=0.0, beta=1.0, name="reverse_kl"),
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
