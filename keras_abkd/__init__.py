"""Knowledge distillation for Keras 3 with the alpha-beta divergence."""

from keras_abkd import losses
from keras_abkd.distiller import Distiller
from keras_abkd.losses import ABDivergence
from keras_abkd.losses import AdaptiveKL
from keras_abkd.losses import AlphaDivergence
from keras_abkd.losses import BetaDivergence
from keras_abkd.losses import ForwardKL
from keras_abkd.losses import GeneralizedJSD
from keras_abkd.losses import ReverseKL
from keras_abkd.losses import SkewForwardKL
from keras_abkd.losses import SkewReverseKL
from keras_abkd.losses import TopKDivergence
from keras_abkd.losses import TotalVariation

__version__ = "0.1.0"
