"""Choosing a `tf.distribute` strategy by name."""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker", "tpu")


def _tpu_resolver():
    """A connected `TPUClusterResolver`, or None when no TPU is reachable."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, tf.errors.NotFoundError, RuntimeError):
        return None


def _has_tf_config_cluster():
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return bool(config.get("cluster"))


def resolve_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` for a name.

    - `"auto"`: a TPU when `TPUClusterResolver` finds one, else
      `MultiWorkerMirroredStrategy` when `TF_CONFIG` describes a cluster, else
      `MirroredStrategy` over several GPUs, else the default strategy.
    - `"cpu"`: `OneDeviceStrategy` on the first CPU.
    - `"gpu"`: `OneDeviceStrategy` on the first GPU (error if none).
    - `"mirrored"`: `MirroredStrategy` over the local GPUs (or the CPU).
    - `"multiworker"`: `MultiWorkerMirroredStrategy` from `TF_CONFIG`.
    - `"tpu"`: `TPUStrategy` (error if no TPU is reachable).

    Create the objective inside `strategy.scope()`.

    Args:
        name: one of `STRATEGIES`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: unknown name, or the hardware the name asks for is absent.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy {name!r}. Valid strategies: {', '.join(STRATEGIES)}."
        )
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        resolver = _tpu_resolver() if os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0") else None
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
        if _has_tf_config_cluster():
            return tf.distribute.MultiWorkerMirroredStrategy()
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name == "gpu":
        if not gpus:
            raise ValueError("strategy='gpu' but TensorFlow sees no GPU. Use 'cpu' or 'auto'.")
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = _tpu_resolver()
    if resolver is None:
        raise ValueError("strategy='tpu' but no TPU is reachable (TPUClusterResolver found none).")
    return tf.distribute.TPUStrategy(resolver)
