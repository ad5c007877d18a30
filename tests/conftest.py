"""Test configuration shared by the whole suite.

Two logical CPU devices are configured before TensorFlow initializes its
devices, so `MirroredStrategy` tests can run on a CPU-only machine.
"""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# CPU memory statistics (`tf.config.experimental.get_memory_info("CPU:0")`,
# used by the memory tests) exist only with the BFC allocator.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import kobjectives  # noqa: E402,F401

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to `../shared/data`; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One `MirroredStrategy` over the two logical CPUs for the whole session.

    Several strategies over the same devices in one process can mix up their
    collective instance keys ("Shape mismatch in the collective instance"),
    so tests share this one.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Keras' global state (layer names, the dtype policy) fresh for each test.

    Without `clear_session`'s `gc.collect()`: a full collection walks every
    object TensorFlow keeps (traced graphs, caches), about a quarter of a
    second per test, a fifth of the suite's time; Python's own generational
    collection still runs.
    """
    import keras

    keras.utils.clear_session(free_memory=False)
    keras.mixed_precision.set_global_policy("float32")
    yield
