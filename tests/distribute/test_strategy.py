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


def test_parameter_server_needs_ps_and_worker_jobs(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    with pytest.raises(ValueError, match="'ps' and 'worker' jobs"):
        resolve_strategy("parameter_server")


def test_invalid_tf_config_names_the_variable(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        resolve_strategy("auto")


def test_run_accepts_a_strategy_object_and_turns_off_xla_on_cpu_replicas(mirrored_strategy):
    from kobjectives.runs import run_class

    run = run_class("mlm")({"training": {"jit_compile": True}}, strategy=mirrored_strategy,
                           log=lambda *_: None)
    assert run.resolve_strategy() is mirrored_strategy
    assert run.jit_compile(mirrored_strategy) is False  # logical CPU replicas: no XLA


def test_chief_and_worker_dirs(monkeypatch, tmp_path):
    from kobjectives.distribute import fault_tolerance

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert fault_tolerance.is_chief() and fault_tolerance.worker_dir(tmp_path) == tmp_path
    cluster = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": %d}}'
    monkeypatch.setenv("TF_CONFIG", cluster % 0)
    assert fault_tolerance.is_chief()
    monkeypatch.setenv("TF_CONFIG", cluster % 1)
    assert not fault_tolerance.is_chief()
    assert fault_tolerance.worker_dir(tmp_path) == tmp_path / ".workers" / "worker-1"
