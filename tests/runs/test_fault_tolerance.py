"""Fault tolerance: resume after a kill (SIGKILL, one process or one of two
workers) without losing or repeating an epoch, and a stop on the first
non-finite loss that keeps the last good checkpoint."""

import json
import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import compat
from kobjectives.distribute import NonFiniteLossError
from kobjectives.distribute import RunBackup
from kobjectives.distribute import StopOnNonFiniteLoss
from kobjectives.distribute import read_run_log
from kobjectives.objectives.objective import Objective
from kobjectives.runs import callbacks as run_callbacks_lib
from tests.distribute import multi_worker_helpers as mw


class Regressor(Objective):
    trained_models = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


def _dataset(nan_at_batch=None):
    x = np.linspace(-1, 1, 8 * 40, dtype="float32").reshape(-1, 2)
    y = x.sum(1, keepdims=True)
    if nan_at_batch is not None:
        x[nan_at_batch * 4:(nan_at_batch + 1) * 4] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)


def _model():
    keras.utils.set_random_seed(0)
    model = Regressor()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


class Crash(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("simulated crash")


def test_run_backup_resumes_at_the_epoch_after_the_backup(tmp_path):
    backup, log = tmp_path / "backup", tmp_path / "history.csv"
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(_dataset(), epochs=4, steps_per_epoch=3, verbose=0,
                  callbacks=[RunBackup(str(backup), str(log)), Crash(epoch=2, batch=1)])
    assert [r["epoch"] for r in read_run_log(log)] == [1, 2]
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2

    # A fresh, unbuilt objective (as after a restart) restores and resumes.
    resumed = _model()
    assert not resumed.built
    callback = RunBackup(str(backup), str(log))
    assert callback.has_backup() and callback.restored_epoch() == 2
    history = resumed.fit(_dataset(), epochs=4, steps_per_epoch=3, verbose=0, callbacks=[callback])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    rows = read_run_log(log)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]  # optimizer state came back
    assert int(resumed.optimizer.iterations) == 12
    assert not backup.exists()  # deleted after a normal end

    # An uninterrupted run ends at the same step count.
    reference = _model()
    reference.fit(_dataset(), epochs=4, steps_per_epoch=3, verbose=0)
    assert int(reference.optimizer.iterations) == 12


def _lora_model():
    model = _model()
    model(np.zeros((1, 2), "float32"))
    model.dense.enable_lora(1)
    return model


def test_a_lora_run_resumes_exactly(tmp_path):
    # Keras checkpoints merge the adapters into the kernel and load zero
    # adapters; the backup keeps the unmerged kernel and both factors.
    backup, log = tmp_path / "backup", tmp_path / "history.csv"
    data = _dataset().take(3)  # every epoch the same batches
    with pytest.raises(KeyboardInterrupt):
        _lora_model().fit(data, epochs=3, verbose=0,
                          callbacks=[RunBackup(str(backup), str(log)), Crash(epoch=2, batch=1)])
    resumed = _lora_model()
    resumed.fit(data, epochs=3, verbose=0,
                callbacks=[RunBackup(str(backup), str(log))])
    uninterrupted = _lora_model()
    uninterrupted.fit(data, epochs=3, verbose=0)
    kernel, a, b = (np.array(v) for v in compat.lora_state(uninterrupted.dense))
    assert np.abs(b).min() > 0  # the adapters trained
    resumed_kernel, resumed_a, resumed_b = (np.array(v) for v in compat.lora_state(resumed.dense))
    np.testing.assert_array_equal(resumed_kernel, kernel)  # still the start
    np.testing.assert_allclose(resumed_a, a, rtol=1e-6)
    np.testing.assert_allclose(resumed_b, b, rtol=1e-6)


class DropoutRegressor(Regressor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dropout = keras.layers.Dropout(0.5, seed=1)

    def call(self, x, training=False):
        return self.dense(self.dropout(x, training=training))


def _dropout_model():
    keras.utils.set_random_seed(0)
    model = DropoutRegressor()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


@pytest.mark.parametrize("state_file", ["unsaved_state.npz", "random_state.npz", None])
def test_dropout_states_resume_from_the_backup_or_an_earlier_versions(tmp_path, state_file):
    # random_state.npz: the file of backups written before LoRA backups.
    data = _dataset().take(3)
    backup = tmp_path / "backup"
    _dropout_model().fit(data, epochs=1, verbose=0,
                         callbacks=[RunBackup(str(backup), delete_checkpoint=False)])
    saved = backup / "unsaved_state.npz"
    if state_file is None:
        saved.unlink()
    else:
        saved.rename(backup / state_file)
    resumed = _dropout_model()
    resumed.fit(data, epochs=2, verbose=0, callbacks=[RunBackup(str(backup))])
    uninterrupted = _dropout_model()
    uninterrupted.fit(data, epochs=2, verbose=0)
    same = all(np.array_equal(a, b) for a, b in zip(resumed.get_weights(),
                                                    uninterrupted.get_weights()))
    assert same == (state_file is not None)  # without the states, epoch 1's masks again


def test_log_rows_written_after_the_backup_are_dropped_on_resume(tmp_path):
    backup, log = tmp_path / "backup", tmp_path / "history.csv"
    model = _model()
    model.fit(_dataset(), epochs=2, steps_per_epoch=3, verbose=0,
              callbacks=[RunBackup(str(backup), str(log), delete_checkpoint=False)])
    # A kill between the backup of epoch 2 and ... leaves the backup at epoch 1
    # while the log already has epoch 2: simulate it.
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    resumed = _model()
    resumed.fit(_dataset(), epochs=3, steps_per_epoch=3, verbose=0,
                callbacks=[RunBackup(str(backup), str(log))])
    assert [r["epoch"] for r in read_run_log(log)] == [1, 2, 3]


def test_non_finite_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _model()
    callbacks = run_callbacks_lib.run_callbacks(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"training step 8 \(epoch 3, batch 2\)"):
        # batch 7 (0-based) of the data = global step 8 = epoch 3, batch 2
        model.fit(_dataset(nan_at_batch=7), epochs=4, steps_per_epoch=3, verbose=0,
                  callbacks=callbacks)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    restored = _model()
    restored.build_from_dataset(_dataset())
    restored.load_weights(tmp_path / "checkpoints" / "epoch_002.weights.h5")
    assert all(np.isfinite(w).all() for w in restored.get_weights())
    # The backup is kept at the last completed epoch, and is finite.
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    assert [r["epoch"] for r in read_run_log(tmp_path / "history.csv")] == [1, 2]


def test_stop_on_non_finite_loss_config():
    callback = StopOnNonFiniteLoss(monitor="val_loss", checkpoint_hint="x")
    assert callback.get_config() == {"monitor": "val_loss", "checkpoint_hint": "x"}


def test_clear_backup_starts_over(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    (tmp_path / "history.csv").write_text("epoch,step\n1,3\n")
    run_callbacks_lib.clear_backup(tmp_path)
    assert not (tmp_path / "backup").exists() and not (tmp_path / "history.csv").exists()


# --- SIGKILL and rerun the same command (subprocesses; slow) -------------------

KILL_RUN = [a if a != "12" else "30" for a in mw.SMALL_MLM]  # 3 rounds of 10 steps


def _epochs_run(log_path):
    """The rounds a run's log reports finished (`RoundProgress`: one
    "round N/3 (step ...)" line per round where the output is a file)."""
    text = log_path.read_text(errors="replace").replace("\r", "\n")
    return [int(m) for m in re.findall(r"^round (\d+)/3 \(step", text, flags=re.M)]


def _assert_resumed(out, backed_up, second_logs):
    rows = read_run_log(out / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3], rows
    assert [r["step"] for r in rows] == [10, 20, 30], rows
    assert json.loads((out / "metrics.json").read_text())["steps"] == 30
    for second in second_logs:
        # The rerun trained exactly the epochs after the backup.
        assert _epochs_run(second) == list(range(backed_up + 1, 4)), _epochs_run(second)
        assert f"round {backed_up} of 3 done (step {10 * backed_up}); the training data " \
            f"continues at batch {10 * backed_up + 1}" in second.read_text(errors="replace")


def _kill_mid_epoch(out, processes, victim):
    """Kills `victim` a moment into the round after the first backup;
    returns the epoch the backup holds."""
    assert mw.wait_for(lambda: (out / "history.csv").exists(), 500, processes), "no round finished"
    time.sleep(0.5)  # into the next round's steps
    mw.kill(victim)
    metadata = out / "backup" / "training_metadata.json"
    backed_up = json.loads(metadata.read_text())["epoch"]
    assert 1 <= backed_up < 3, "killed too late to test a resume"
    return backed_up


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    args = KILL_RUN + ["--out", str(out)]
    first = mw.launch(args, tmp_path / "first.log")
    backed_up = _kill_mid_epoch(out, [first], first)
    assert (out / "backup" / "latest.weights.h5").exists()
    second = mw.launch(args, tmp_path / "second.log")
    assert mw.wait([second], 600) == [0], mw.tail(tmp_path / "second.log")
    _assert_resumed(out, backed_up, [tmp_path / "second.log"])
    assert not (out / "backup").exists()


@pytest.mark.slow
def test_one_of_two_workers_killed_then_both_rerun_and_resume(tmp_path):
    out = tmp_path / "run"
    args = KILL_RUN + ["--out", str(out), "--strategy", "multiworker"]
    workers = mw.launch_workers(args, tmp_path, tag="first")
    backed_up = _kill_mid_epoch(out, workers, workers[1])
    # The surviving worker fails (its peer is gone) or is stopped by the
    # operator; either way the whole job is restarted with the same command.
    mw.wait([workers[0]], 120)
    workers = mw.launch_workers(args, tmp_path, tag="second")
    codes = mw.wait(workers, 600)
    assert codes == [0, 0], mw.tail(tmp_path / "second-worker0.log") + mw.tail(tmp_path / "second-worker1.log")
    _assert_resumed(out, backed_up, [tmp_path / f"second-worker{i}.log" for i in range(2)])
