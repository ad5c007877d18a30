"""The callbacks of a run: backup and resume, checkpoints, TensorBoard, the
stop on a non-finite loss, and progress output that suits where it goes."""

import pathlib
import sys
import time

import keras


def run_callbacks(out_dir):
    """The run's callbacks, writing into the run folder `out_dir`:

    - `kobjectives.distribute.RunBackup` in `backup/` (model and optimizer
      state after every round; rerunning the same command resumes from the
      last completed round) with the round log `history.csv`. Deleted when
      training ends.
    - `ModelCheckpoint`: `checkpoints/epoch_NNN.weights.h5` every round.
    - `TensorBoard` logs in `logs/`.
    - `kobjectives.distribute.StopOnNonFiniteLoss`: the first NaN/inf loss
      stops training with an error naming the step; the last good checkpoint
      and the backup are kept.

    In a multi-worker cluster only the chief writes `checkpoints/` and
    `logs/`; the other workers write into `out_dir/.workers/`.
    """
    from kobjectives.distribute import fault_tolerance

    out_dir = pathlib.Path(out_dir)
    own_dir = fault_tolerance.worker_dir(out_dir)
    backup_dir = out_dir / "backup"
    return [
        fault_tolerance.RunBackup(str(backup_dir), log_path=str(out_dir / "history.csv")),
        keras.callbacks.ModelCheckpoint(
            str(own_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(log_dir=str(own_dir / "logs")),
        fault_tolerance.StopOnNonFiniteLoss(
            checkpoint_hint=f"{out_dir / 'checkpoints'} (last completed round) and {backup_dir}"
        ),
    ]


def restored_round(out_dir):
    """The rounds a backup in `out_dir/backup` has completed (0 without one).

    Raises:
        kobjectives.distribute.CorruptedBackupError: the backup is unreadable.
    """
    from kobjectives.distribute import RunBackup

    backup = RunBackup(str(pathlib.Path(out_dir) / "backup"))
    return backup.restored_epoch() if backup.has_backup() else 0


def check_resumed_step(out_dir, resumed, step):
    """Checks that the backup's last round, `resumed`, ended at `step`, the
    step this recipe's rounds put it at (`Run.rounds`).

    A backup written by an earlier kobjectives, which split `training.steps`
    into rounds of `steps // epochs` steps (now `ceil(steps / epochs)`),
    ended its rounds elsewhere where the epochs do not divide the steps: its
    data and learning-rate schedule would resume off by the difference. The
    round log `out_dir/history.csv` records each round's step (the
    optimizer's iterations); without the log, or without the round in it,
    nothing is checked.

    Raises:
        ValueError: the round ended at another step; the message names both
            and the fix (`--no-resume`).

    Example:

    >>> import tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "history.csv").write_text("epoch,step,loss\\n1,3,2.0\\n")
    >>> check_resumed_step(folder, 1, 3)  # as this recipe's rounds put it
    >>> check_resumed_step(folder, 1, 4)
    Traceback (most recent call last):
    ...
    ValueError: ...backup ended round 1 at step 3, but this recipe's rounds end it at step 4...
    """
    from kobjectives.distribute.fault_tolerance import read_run_log

    path = pathlib.Path(out_dir) / "history.csv"
    if not resumed or not path.is_file():
        return
    rows = [row for row in read_run_log(path) if row["epoch"] == resumed]
    if rows and rows[-1]["step"] != step:
        raise ValueError(
            f"{pathlib.Path(out_dir) / 'backup'}: the backup ended round {resumed} at step "
            f"{rows[-1]['step']}, but this recipe's rounds end it at step {step} (rounds of "
            "ceil(training.steps / training.epochs) steps; an earlier kobjectives made them "
            "training.steps // training.epochs). Resuming would continue its data and schedule "
            "at the wrong step. Rerun with --no-resume to train from the start, or finish the "
            "run with the kobjectives that began it.")


def clear_backup(out_dir):
    """Deletes a run folder's `backup/`, `history.csv` and `metrics.json`:
    the next run starts over (without `metrics.json` the folder no longer
    holds a finished run, which `Run.train` would leave as it is).
    `kobjectives train --no-resume`."""
    import shutil

    out_dir = pathlib.Path(out_dir)
    shutil.rmtree(out_dir / "backup", ignore_errors=True)
    (out_dir / "history.csv").unlink(missing_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)


class RoundProgress(keras.callbacks.Callback):
    """One log line per round: its step, its logs and its time.

    For output that is not a terminal (a log file, CI, a notebook capture),
    where the Keras progress bar would write every step's update into one
    endless line.

    Args:
        rounds: int, the rounds of the run.
        steps_per_round: int.
        log: a print-like function.
        steps: int, the steps of the run (default `rounds * steps_per_round`;
            fewer when the last round is shorter).

    Example:

    >>> progress = RoundProgress(rounds=2, steps_per_round=10, log=print)
    >>> progress.on_epoch_begin(0)
    >>> progress.on_epoch_end(0, {"loss": 1.25, "val_loss": 1.5})  # doctest: +ELLIPSIS
    round 1/2 (step 10/20): loss 1.2500, val_loss 1.5000 (... s)
    """

    def __init__(self, rounds, steps_per_round, log=print, steps=None):
        super().__init__()
        self.rounds = rounds
        self.steps_per_round = steps_per_round
        self.steps = rounds * steps_per_round if steps is None else steps
        self.log = log
        self._started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        values = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        step = min((epoch + 1) * self.steps_per_round, self.steps)
        self.log(f"round {epoch + 1}/{self.rounds} (step {step}/{self.steps}): {values} "
                 f"({time.time() - self._started:.0f} s)")


class StopAfterSteps(keras.callbacks.Callback):
    """Ends `fit` after exactly `steps` training steps: where the rounds
    (epochs of `steps_per_round` steps) do not divide them, the last round
    stops early; Keras still evaluates it and calls `on_epoch_end` (the
    backup, the round log) as for any round.

    Args:
        steps: int, the steps of the whole run (counted from round 0, so a
            resumed `fit`, which starts at a later round, stops at the same
            step).
        steps_per_round: int, `fit`'s `steps_per_epoch`.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32")
    >>> history = model.fit(x, y, batch_size=2, epochs=3, steps_per_epoch=2, verbose=0,
    ...                     callbacks=[StopAfterSteps(steps=5, steps_per_round=2)])
    >>> int(model.optimizer.iterations), len(history.history["loss"])
    (5, 3)
    """

    def __init__(self, steps, steps_per_round):
        super().__init__()
        self.steps = int(steps)
        self.steps_per_round = int(steps_per_round)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch * self.steps_per_round + batch + 1 >= self.steps:
            self.model.stop_training = True


def progress_callbacks(rounds, steps_per_round, log=print, stream=None, steps=None):
    """`(verbose, callbacks)` for `model.fit`: the Keras progress bar on a
    terminal, else no bar and one `RoundProgress` line per round (`steps`:
    the run's steps, when its last round is shorter)."""
    stream = stream or sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return 1, []
    return 0, [RoundProgress(rounds, steps_per_round, log, steps=steps)]
