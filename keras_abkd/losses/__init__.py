"""Divergences between teacher and student output distributions."""

from keras_abkd.losses.alpha_beta import ABDivergence
from keras_abkd.losses.alpha_beta import alpha_beta_divergence
from keras_abkd.losses.adaptive_kl import AdaptiveKL
from keras_abkd.losses.adaptive_kl import adaptive_kl
from keras_abkd.losses.alpha_beta_lines import AlphaDivergence
from keras_abkd.losses.alpha_beta_lines import BetaDivergence
from keras_abkd.losses.alpha_beta_lines import alpha_divergence
from keras_abkd.losses.alpha_beta_lines import beta_divergence
from keras_abkd.losses.jsd import GeneralizedJSD
from keras_abkd.losses.jsd import generalized_jsd
from keras_abkd.losses.kl import ForwardKL
from keras_abkd.losses.kl import ReverseKL
from keras_abkd.losses.kl import SkewForwardKL
from keras_abkd.losses.kl import SkewReverseKL
from keras_abkd.losses.kl import forward_kl
from keras_abkd.losses.kl import reverse_kl
from keras_abkd.losses.kl import skew_forward_kl
from keras_abkd.losses.kl import skew_reverse_kl
from keras_abkd.losses.registry import get
from keras_abkd.losses.registry import names
from keras_abkd.losses.top_k import top_k_targets
from keras_abkd.losses.top_k_divergence import TopKDivergence
from keras_abkd.losses.total_variation import TotalVariation
from keras_abkd.losses.total_variation import total_variation
