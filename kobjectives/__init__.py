"""kobjectives: training objectives for language models, for Keras 3 and TensorFlow.

Importing the package selects Keras' TensorFlow backend (unless the user already
chose one), so `KERAS_BACKEND` need not be exported. Subpackages (`ops`,
`layers`, `losses`, `metrics`, `objectives`, `data`, `distribute`, `export`,
`runs`, `tuning`)
load on first use.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_backend():
    keras = sys.modules.get("keras")
    backend = keras.backend.backend() if keras else os.environ["KERAS_BACKEND"]
    if backend != "tensorflow":
        raise ImportError(
            "kobjectives runs on Keras' TensorFlow backend, but Keras is set to "
            f"{backend!r}. Set KERAS_BACKEND=tensorflow (or import kobjectives "
            "before keras)."
        )


_check_backend()

_SUBPACKAGES = (
    "ops", "layers", "losses", "metrics", "objectives", "data", "distribute",
    "export", "runs", "tuning",
)


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"kobjectives.{name}")
    raise AttributeError(f"module 'kobjectives' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
