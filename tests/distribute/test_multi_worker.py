"""Multi-worker training for real: two worker processes on 127.0.0.1 with
`TF_CONFIG` and `MultiWorkerMirroredStrategy` (one CPU device each).

Slow (each test starts TensorFlow in two or three processes); run with
`python -m pytest -m slow tests/distribute/test_multi_worker.py`.
"""

import json

import h5py
import numpy as np
import pytest

from kobjectives.distribute import read_run_log
from tests.distribute import multi_worker_helpers as mw

pytestmark = pytest.mark.slow


def _weights(path):
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return values


def test_upstream_keras_multi_worker_bugs_and_the_objective_workaround(tmp_path):
    # Tells when upstream Keras changes: if `plain` or `build_fix_only` start
    # to train, the corresponding workaround in `Objective` can go
    # (docs/distributed.md, "Upstream Keras bugs").
    script = mw.REPO / "tests" / "distribute" / "upstream_multi_worker_probe.py"
    import subprocess
    import sys

    logs = [tmp_path / f"probe{i}.log" for i in range(2)]
    processes = [
        subprocess.Popen([sys.executable, str(script)], cwd=mw.REPO, env=mw.environment(config),
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        for log, config in zip(logs, mw.cluster(2))
    ]
    assert mw.wait(processes, 400) == [0, 0], mw.tail(logs[0]) + mw.tail(logs[1])
    results = []
    for log in logs:
        line = next(l for l in log.read_text().splitlines() if l.startswith("PROBE "))
        results.append(json.loads(line[len("PROBE "):]))
    for result in results:
        assert not result["plain"]["ok"], "upstream fixed _maybe_symbolic_build under MWMS"
        assert "PerReplica" in result["plain"]["error"]
        assert not result["build_fix_only"]["ok"], "upstream fixed reduce_per_replica under MWMS"
        assert "Invalid reduction dimension" in result["build_fix_only"]["error"]
        assert result["objective"]["ok"], result["objective"]
    # Both workers end with identical weights.
    for a, b in zip(results[0]["objective"]["weights"], results[1]["objective"]["weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_workers_train_masked_lm_like_one_process_with_the_same_global_batch(tmp_path):
    multi = tmp_path / "multi"
    workers = mw.launch_workers(mw.SMALL_MLM + ["--out", str(multi), "--strategy", "multiworker"],
                                tmp_path, tag="multi")
    codes = mw.wait(workers, 600)
    assert codes == [0, 0], mw.tail(tmp_path / "multi-worker0.log") + mw.tail(tmp_path / "multi-worker1.log")

    # One process, two replicas (logical CPUs), the same global batch of 8:
    # each replica reads the same shard as the corresponding worker.
    single = tmp_path / "single"
    process = mw.launch(mw.SMALL_MLM + ["--out", str(single), "--strategy", "mirrored"],
                        tmp_path / "single.log", logical_cpus=2)
    assert mw.wait([process], 600) == [0], mw.tail(tmp_path / "single.log")

    # At the end both workers hold identical weights (the chief's checkpoint
    # and the other worker's private copy).
    chief = _weights(multi / "checkpoints" / "epoch_003.weights.h5")
    other = _weights(multi / ".workers" / "worker-1" / "checkpoints" / "epoch_003.weights.h5")
    assert chief.keys() == other.keys() and len(chief) > 10
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)

    # The loss curve (per round, and the held-out loss) matches the
    # single-process run, and so do the final weights.
    multi_log, single_log = read_run_log(multi / "history.csv"), read_run_log(single / "history.csv")
    assert [r["epoch"] for r in multi_log] == [1, 2, 3]
    assert [r["step"] for r in multi_log] == [4, 8, 12]
    for key in ("loss", "val_loss", "masked_accuracy"):
        np.testing.assert_allclose([r[key] for r in multi_log], [r[key] for r in single_log],
                                   rtol=1e-4, atol=1e-5, err_msg=key)
    assert multi_log[-1]["loss"] < multi_log[0]["loss"]  # it trains
    reference = _weights(single / "checkpoints" / "epoch_003.weights.h5")
    for name in chief:
        np.testing.assert_allclose(chief[name], reference[name], atol=1e-4, err_msg=name)

    metrics = json.loads((multi / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert (multi / "saved_model").is_dir() and (multi / "model.keras").exists()
