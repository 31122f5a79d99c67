"""Pretrained models that install offline, as Keras functional models."""

from keras_abkd.models.efficientnet_lite import EfficientNetLite0
