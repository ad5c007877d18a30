"""Fault tolerance for training runs: backup-and-resume, a run log that never
loses or repeats an epoch, and a stop on the first non-finite loss.

`kobjectives train` wires these through `kobjectives.runs.callbacks.run_callbacks`:
a run killed at any point (SIGKILL, preemption, a lost worker) and started
again with the same command resumes from the last completed epoch (round).
See `docs/distributed.md`.
"""

import csv
import json
import math
import os
import pathlib
import shutil

import keras
import numpy as np

from kobjectives import compat

# What a Keras checkpoint leaves out: dropout's seed-generator states and LoRA
# layers' unmerged kernels and factors.
UNSAVED_STATE_FILE = "unsaved_state.npz"
# The same, written by kobjectives before LoRA: the seed states alone (the
# layout of the file above for a model without LoRA).
LEGACY_STATE_FILE = "random_state.npz"


def task():
    """`(task_type, task_index, is_chief)` of this process from `TF_CONFIG`.

    Without a cluster in `TF_CONFIG` this process is the chief. In a cluster
    the chief is the `chief` task, or `worker` 0 where there is no `chief`
    job (the `MultiWorkerMirroredStrategy` convention).
    """
    raw = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None, 0, True
    cluster, spec = config.get("cluster") or {}, config.get("task") or {}
    if not cluster:
        return None, 0, True
    task_type, index = spec.get("type"), int(spec.get("index", 0))
    is_chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)
    return task_type, index, is_chief


def is_chief():
    """True for the process that writes a run's shared outputs."""
    return task()[2]


def worker_dir(out_dir):
    """Where this process writes run outputs: `out_dir` for the chief, a
    private `out_dir/.workers/TYPE-INDEX` for the other workers of a cluster
    (all workers hold the same model; only the chief's copy is kept)."""
    task_type, index, chief = task()
    out_dir = pathlib.Path(out_dir)
    return out_dir if chief else out_dir / ".workers" / f"{task_type}-{index}"


class CorruptedBackupError(ValueError):
    """A run folder's backup cannot be read, so the run cannot resume from it."""


def _corrupted(path, error):
    backup_dir = pathlib.Path(path).parent
    return CorruptedBackupError(
        f"The backup {path} cannot be read ({type(error).__name__}: {error}), so the run "
        f"cannot resume from it. Start the run over with --no-resume (or delete the folder "
        f"{backup_dir}); the checkpoints of completed rounds in the run folder are kept."
    )


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step's loss is NaN or infinite."""


@keras.saving.register_keras_serializable(package="kobjectives")
class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch end (so
    checkpoint callbacks then save the broken weights), this raises
    `NonFiniteLossError` from the batch that diverged: no epoch-end callback
    runs, the checkpoints and the backup of the last completed epoch are kept
    untouched, and the message names the step.

    Args:
        monitor: str, the log to watch (default `"loss"`).
        checkpoint_hint: str or None, where the last good state lies, quoted in
            the error.

    Example:

    >>> callback = StopOnNonFiniteLoss()
    >>> callback.get_config()["monitor"]
    'loss'
    """

    def __init__(self, monitor="loss", checkpoint_hint=None):
        super().__init__()
        self.monitor = monitor
        self.checkpoint_hint = checkpoint_hint
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if math.isfinite(value):
            return
        step = None
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        where = f"training step {step}" if step is not None else "a training step"
        hint = f" The last good state is kept: {self.checkpoint_hint}." if self.checkpoint_hint else ""
        raise NonFiniteLossError(
            f"Non-finite {self.monitor} ({value}) at {where} (epoch {self._epoch + 1}, "
            f"batch {batch + 1}); training stopped.{hint} Lower training.learning_rate, "
            f"check the data for empty or degenerate batches, or use float32."
        )

    def get_config(self):
        return {"monitor": self.monitor, "checkpoint_hint": self.checkpoint_hint}


@keras.saving.register_keras_serializable(package="kobjectives")
class RunBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` for a run folder, multi-worker safe,
    with an epoch log that matches the backup.

    At the end of every epoch (round) the chief saves the model and optimizer
    state to `backup_dir` and appends one row to `log_path` (`epoch`, `step`
    = optimizer iterations, and the epoch's logs). When `fit` starts and a
    backup exists, the model is restored from it, `fit` resumes at the epoch
    after the backup, and log rows of later epochs (written after the backup,
    before a kill) are dropped: every epoch appears exactly once.

    Workers other than the chief back up into a private folder (their state is
    identical) and restore from the chief's backup when it is readable (a
    shared file system), otherwise from their own. The backup is deleted when
    training ends normally; it is kept when training fails (e.g.
    `StopOnNonFiniteLoss`).

    Beside the Keras checkpoint, each epoch's backup holds what Keras leaves
    out (`unsaved_state.npz`): the dropout seed generators' states and, for
    layers with LoRA, the kernels without the adapters and both factors
    (Keras saves merged kernels and restores zero adapters). A resumed run
    therefore continues exactly where the backup was taken. With an int
    `save_freq` only the Keras checkpoint is written mid-epoch.

    The model must be built before `fit` restores it; `Objective.fit` builds
    an objective from the first batch when a backup is waiting.

    Args:
        backup_dir: str, the backup folder (the chief's, shared by workers).
        log_path: str or None, the CSV epoch log (chief only).
        save_freq: `"epoch"` or an int number of batches (see
            `keras.callbacks.BackupAndRestore`).
        delete_checkpoint: bool, delete the backup when training ends.

    Example:

    >>> import tempfile
    >>> backup = RunBackup(tempfile.mkdtemp() + "/backup")
    >>> backup.has_backup()
    False
    """

    def __init__(self, backup_dir, log_path=None, save_freq="epoch", delete_checkpoint=True):
        backup_dir = str(backup_dir)
        task_type, index, chief = task()
        own_dir = backup_dir if chief else os.path.join(backup_dir, f".{task_type}-{index}")
        super().__init__(own_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.shared_backup_dir = backup_dir
        self.log_path = str(log_path) if log_path else None
        self._chief = chief
        self._config = {
            "backup_dir": backup_dir, "log_path": self.log_path,
            "save_freq": save_freq, "delete_checkpoint": delete_checkpoint,
        }

    def _restore_dir(self):
        shared = os.path.join(self.shared_backup_dir, "training_metadata.json")
        return self.shared_backup_dir if os.path.exists(shared) else self.backup_dir

    def has_backup(self):
        """True when a backup waits to be restored."""
        return os.path.exists(os.path.join(self._restore_dir(), "latest.weights.h5"))

    def restored_epoch(self):
        """The epoch `fit` resumes at (0 without a backup)."""
        path = os.path.join(self._restore_dir(), "training_metadata.json")
        if not os.path.exists(path):
            return 0
        try:
            with open(path) as f:
                return int(json.load(f)["epoch"])
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise _corrupted(path, error) from None

    def on_train_begin(self, logs=None):
        if not self.has_backup():
            self._truncate_log(0)
            return
        restore = self._restore_dir()
        own = (self._weights_path, self._training_metadata_path)
        self._weights_path = os.path.join(restore, "latest.weights.h5")
        self._training_metadata_path = os.path.join(restore, "training_metadata.json")
        try:
            super().on_train_begin(logs)
        except (ValueError, KeyError, TypeError, OSError) as error:
            raise _corrupted(self._weights_path, error) from None
        finally:
            self._weights_path, self._training_metadata_path = own
        self._current_epoch = self.restored_epoch()
        path = os.path.join(restore, UNSAVED_STATE_FILE)
        if not os.path.exists(path):
            path = os.path.join(restore, LEGACY_STATE_FILE)
        self._restore_unsaved_state(path)
        self._truncate_log(self._current_epoch)

    def _unsaved_state(self):
        """The variables Keras checkpoints leave out or change: the seed
        generators' states (without them a resumed run would draw the first
        rounds' dropout masks again) and LoRA layers' unmerged kernels and
        factors (Keras saves the merged kernel and loads zero adapters)."""
        layers = compat.flatten_layers(self.model)
        return ([generator.state for layer in layers
                 for generator in compat.seed_generators(layer)]
                + [variable for layer in layers for variable in compat.lora_state(layer)])

    def _restore_unsaved_state(self, path):
        if not os.path.exists(path):
            return
        try:
            with np.load(path) as saved:
                values = [saved[f"state_{i}"] for i in range(len(saved.files))]
        except (ValueError, OSError, KeyError) as error:
            raise _corrupted(path, error) from None
        variables = self._unsaved_state()
        if len(values) != len(variables) or any(
                tuple(v.shape) != value.shape for v, value in zip(variables, values)):
            raise _corrupted(path, ValueError(
                f"{len(values)} states saved, the model has {len(variables)} "
                "(random states, LoRA kernels and factors) of other shapes"))
        for variable, value in zip(variables, values):
            variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq == "epoch":
            states = {f"state_{i}": keras.ops.convert_to_numpy(variable)
                      for i, variable in enumerate(self._unsaved_state())}
            path = os.path.join(self.backup_dir, UNSAVED_STATE_FILE)
            temporary = path + ".tmp.npz"
            np.savez(temporary, **states)
            os.replace(temporary, path)
        if self._chief and self.log_path:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self._append_log({"epoch": epoch + 1, "step": step, **{
                k: float(v) for k, v in (logs or {}).items()}})

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if not self._chief and self.delete_checkpoint and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def _read_log(self):
        if not self.log_path or not os.path.exists(self.log_path):
            return None, []
        with open(self.log_path, newline="") as f:
            reader = csv.DictReader(f)
            return reader.fieldnames, list(reader)

    def _truncate_log(self, epoch):
        if not (self._chief and self.log_path):
            return
        fields, rows = self._read_log()
        if fields is None:
            return
        kept = [row for row in rows if int(row["epoch"]) <= epoch]
        if len(kept) != len(rows):
            self._write_log(fields, kept)

    def _append_log(self, row):
        fields, rows = self._read_log()
        fields = list(fields or [])
        fields += [k for k in row if k not in fields]
        self._write_log(fields, rows + [{k: row.get(k, "") for k in row}])

    def _write_log(self, fields, rows):
        path = pathlib.Path(self.log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)  # atomic: a kill never leaves half a log

    def get_config(self):
        return dict(self._config)


def read_run_log(path):
    """The rows of a `RunBackup` epoch log as dicts of floats (`epoch` and
    `step` as ints)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {k: float(v) for k, v in row.items() if v not in ("", None)}
        parsed["epoch"], parsed["step"] = int(parsed["epoch"]), int(parsed["step"])
        out.append(parsed)
    return out
