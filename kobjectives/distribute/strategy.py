"""Choosing a `tf.distribute` strategy by name."""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker", "tpu", "parameter_server")


def _tpu_resolver():
    """A connected `TPUClusterResolver`, or None when no TPU is reachable."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, tf.errors.NotFoundError, RuntimeError):
        return None


def _tf_config():
    raw = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Set it to "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}} '
            "or unset it."
        ) from None


def _has_tf_config_cluster():
    return bool(_tf_config().get("cluster"))


def _tpu_present():
    return bool(
        os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
        or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    )


# Strategies that may be created once per process (multi-worker collectives
# must be configured at program start-up; a TPU system is initialized once):
# name -> strategy, so resolving the same name again returns the same object.
_CREATED = {}


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
    - `"parameter_server"`: `tf.distribute.ParameterServerStrategy` from a
      `TF_CONFIG` with `ps` and `worker` jobs (error otherwise). Keras 3's
      `fit` does not drive this strategy (no `ClusterCoordinator` support),
      so `kobjectives train` refuses it; it is for custom training loops.

    Example:

    >>> strategy = resolve_strategy("cpu")
    >>> strategy.num_replicas_in_sync
    1

    Create the objective inside `strategy.scope()`.

    `MultiWorkerMirroredStrategy` must be created at program start-up, before
    TensorFlow runs any op ("Collective ops must be configured at program
    startup"): call `resolve_strategy` first thing in a multi-worker program
    (`kobjectives train ...` does). Multi-worker
    and TPU strategies are created once per process; resolving the same name
    again returns the same object.

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
    if name in _CREATED:
        return _CREATED[name]
    strategy = _resolve(name)
    if isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy)):
        _CREATED[name] = strategy
    return strategy


def _resolve(name):
    # Physical, not logical: listing logical devices initializes the runtime,
    # after which a multi-worker strategy can no longer be created.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        resolver = _tpu_resolver() if _tpu_present() else None
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
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        cluster = _tf_config().get("cluster") or {}
        if not cluster.get("ps") or not cluster.get("worker"):
            raise ValueError(
                "strategy='parameter_server' needs TF_CONFIG describing a cluster with 'ps' "
                "and 'worker' jobs (and usually a 'chief'). Received cluster jobs: "
                f"{sorted(cluster)}. Set TF_CONFIG, or use 'multiworker' for synchronous "
                "data-parallel training."
            )
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return tf.distribute.experimental.ParameterServerStrategy(resolver)
    resolver = _tpu_resolver()
    if resolver is None:
        raise ValueError("strategy='tpu' but no TPU is reachable (TPUClusterResolver found none).")
    return tf.distribute.TPUStrategy(resolver)
