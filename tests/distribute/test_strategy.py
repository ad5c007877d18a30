import pytest
import tensorflow as tf

from kobjectives.distribute import resolve_strategy


def test_auto_without_accelerators_or_cluster_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    assert resolve_strategy("auto") is tf.distribute.get_strategy()


def test_cpu_is_one_device():
    strategy = resolve_strategy("cpu")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_missing_hardware_and_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="no GPU"):
        resolve_strategy("gpu")
    with pytest.raises(ValueError, match="Valid strategies"):
        resolve_strategy("quantum")
