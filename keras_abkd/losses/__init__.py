"""Divergences between teacher and student output distributions."""

from keras_abkd.losses.alpha_beta import ABDivergence
from keras_abkd.losses.alpha_beta import alpha_beta_divergence
