import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "jax":
    import jax

    # Float64 references and gradients need 64-bit arrays; Keras layers still
    # compute in float32, their default float type.
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _seed():
    # clear_session() after every test cost up to 1.5 s each, so tests share
    # one Keras session; nothing here depends on layer name counters.
    keras.utils.set_random_seed(1234)
