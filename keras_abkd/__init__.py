"""Knowledge distillation for Keras 3 with the alpha-beta divergence."""

from keras_abkd import losses
from keras_abkd.distiller import Distiller
from keras_abkd.losses import ABDivergence

__version__ = "0.1.0"
