"""kobjectives: training objectives for language models, for Keras 3 and TensorFlow.

Importing the package selects Keras' TensorFlow backend (unless the user already
chose one), so `KERAS_BACKEND` need not be exported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "kobjectives runs on Keras' TensorFlow backend, but Keras was already "
        f"imported with backend {keras.backend.backend()!r}. Set "
        "KERAS_BACKEND=tensorflow (or import kobjectives before keras)."
    )

__version__ = "0.1.0"

from kobjectives import ops  # noqa: E402,F401
from kobjectives import layers  # noqa: E402,F401
from kobjectives import losses  # noqa: E402,F401
from kobjectives import metrics  # noqa: E402,F401
from kobjectives import objectives  # noqa: E402,F401
from kobjectives import data  # noqa: E402,F401
from kobjectives import distribute  # noqa: E402,F401
