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


def clear_backup(out_dir):
    """Deletes a run folder's `backup/` and `history.csv`: the next run starts over."""
    import shutil

    out_dir = pathlib.Path(out_dir)
    shutil.rmtree(out_dir / "backup", ignore_errors=True)
    (out_dir / "history.csv").unlink(missing_ok=True)


class RoundProgress(keras.callbacks.Callback):
    """One log line per round: its step, its logs and its time.

    For output that is not a terminal (a log file, CI, a notebook capture),
    where the Keras progress bar would write every step's update into one
    endless line.

    Args:
        rounds: int, the rounds of the run.
        steps_per_round: int.
        log: a print-like function.

    Example:

    >>> progress = RoundProgress(rounds=2, steps_per_round=10, log=print)
    >>> progress.on_epoch_begin(0)
    >>> progress.on_epoch_end(0, {"loss": 1.25, "val_loss": 1.5})  # doctest: +ELLIPSIS
    round 1/2 (step 10/20): loss 1.2500, val_loss 1.5000 (... s)
    """

    def __init__(self, rounds, steps_per_round, log=print):
        super().__init__()
        self.rounds = rounds
        self.steps_per_round = steps_per_round
        self.log = log
        self._started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        values = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        total = self.rounds * self.steps_per_round
        self.log(f"round {epoch + 1}/{self.rounds} (step {(epoch + 1) * self.steps_per_round}/"
                 f"{total}): {values} ({time.time() - self._started:.0f} s)")


def progress_callbacks(rounds, steps_per_round, log=print, stream=None):
    """`(verbose, callbacks)` for `model.fit`: the Keras progress bar on a
    terminal, else no bar and one `RoundProgress` line per round."""
    stream = stream or sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return 1, []
    return 0, [RoundProgress(rounds, steps_per_round, log)]
