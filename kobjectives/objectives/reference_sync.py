"""`SyncReferenceModel`: TR-DPO's reference updates, a Keras callback that
mixes a preference objective's frozen reference toward its policy every few
optimizer steps (TRL's `DPOConfig(sync_ref_model=True)`)."""

import os
import pathlib
import re

import keras
import numpy as np
import tensorflow as tf

from kobjectives.objectives.frozen import FrozenModel


def _check_mixup_alpha(mixup_alpha):
    if isinstance(mixup_alpha, bool) or not isinstance(
            mixup_alpha, (int, float, np.floating, np.integer)) \
            or not np.isfinite(mixup_alpha) or not 0.0 < mixup_alpha <= 1.0:
        raise ValueError(
            "`mixup_alpha` must be a number in (0, 1]: the policy's share of each mix, "
            "`reference <- (1 - mixup_alpha) * reference + mixup_alpha * policy` (TRL's "
            "`ref_model_mixup_alpha`; 1 copies the policy). "
            f"Received: mixup_alpha={mixup_alpha!r}"
        )
    return float(mixup_alpha)


def _check_sync_steps(sync_steps):
    if isinstance(sync_steps, bool) or not isinstance(sync_steps, (int, np.integer)) \
            or sync_steps < 1:
        raise ValueError(
            "`sync_steps` must be an integer >= 1: the reference is mixed after every "
            "optimizer step whose number is a multiple of it (TRL's `ref_model_sync_steps`). "
            f"Received: sync_steps={sync_steps!r}"
        )
    return int(sync_steps)


def _check_backup_dir(backup_dir):
    if backup_dir is None:
        return None
    if not isinstance(backup_dir, (str, os.PathLike)) or not str(backup_dir):
        raise ValueError(
            "`backup_dir` must be None or a directory path (where the synced reference's "
            f"weights are written every epoch). Received: backup_dir={backup_dir!r}"
        )
    return str(backup_dir)


_BACKUP_NAME = re.compile(r"^reference_step_(\d+)\.weights\.h5$")


def _mix_dtype(dtype):
    """The dtype the mix is computed in: float32, or float64 for float64."""
    return tf.float64 if dtype == tf.float64 else tf.float32


@keras.saving.register_keras_serializable(package="kobjectives")
class SyncReferenceModel(keras.callbacks.Callback):
    """TR-DPO: updates the frozen reference of a preference objective toward
    its policy during training.

    At the end of every optimizer step whose number (the global step,
    `model.optimizer.iterations`) is a positive multiple of `sync_steps`,
    every weight of the objective's frozen `reference` becomes
    `(1 - mixup_alpha) * reference + mixup_alpha * policy` (a soft update;
    `mixup_alpha=1` is a hard copy). Works with any objective holding a
    trained `policy` and a `kobjectives.objectives.FrozenModel` `reference`
    of the same architecture: `DirectPreferenceOptimization` (every loss
    type) and `KahnemanTverskyOptimization`.

    The mix is assigned in place (`Variable.assign`), so a compiled train
    step (`jit_compile=True` included) reads the new reference at its next
    step, and under `tf.distribute` (from the callback, in the cross-replica
    context) every replica's copy is updated. It is computed in float32
    (float64 for float64 weights) and cast to the reference weight's own
    dtype. The global step counts optimizer updates, as TRL's
    `global_step`: with `gradient_accumulation_steps=n` on the optimizer,
    one per `n` batches (Keras' `iterations` counts so).

    **The reference must be online.** Values precomputed into the data
    (`precompute_reference_log_probs`, the objective built with
    `reference=None`, a recipe's `preference.reference = "precomputed"`)
    are those of the starting policy and cannot be synced: `on_train_begin`
    raises (TRL refuses `sync_ref_model` with `precompute_ref_log_probs`
    too).

    **Resuming.** Saving the objective stores only where its frozen
    reference comes from (its starting weights), so a run killed and resumed
    would train against the unsynced reference. With `backup_dir`, the
    reference's weights are written there at the end of every epoch, as
    `reference_step_N.weights.h5` (`N` the global step; written to a
    temporary file, then renamed; the two newest kept), and at the first
    batch of `fit`, after a backup callback (`keras.callbacks.
    BackupAndRestore`, a run's backup) has restored the optimizer's step,
    the file of that step is loaded (at step 0, a fresh start, older
    files are deleted). Place this callback *before* the
    backup callback: a kill between the two epoch-end writes then leaves a
    reference file matching the model's backup. Backups of other steps only
    (the model restored to a step with no reference file) raise rather than
    train against the wrong reference. Under a multi-worker strategy give
    each worker its own directory (every worker holds the same values).

    Args:
        mixup_alpha: float in `(0, 1]`, the policy's share of each mix
            (TRL's `ref_model_mixup_alpha`). Defaults to 0.6.
        sync_steps: int >= 1, mix after every `sync_steps` optimizer steps
            (TRL's `ref_model_sync_steps`). `sync_steps` times the
            optimizer's `gradient_accumulation_steps` must be a multiple of
            the model's `steps_per_execution`, else sync points would fall
            inside one execution. Defaults to 512.
        backup_dir: None or a directory: where the synced reference is
            backed up every epoch and restored from (above).

    Attributes:
        syncs: int, the mixes done since the callback was made (by `sync()`
            or by training).

    Raises:
        ValueError: at construction, a bad argument; at `on_train_begin`, a
            model without `policy` and `reference`, a reference precomputed
            into the data (`reference=None`), weights that do not pair up
            (number, shapes, floating dtypes), or a `sync_steps` that is not
            a multiple of `steps_per_execution`; at the first batch,
            reference backups in `backup_dir` none of which is of the step
            training resumes at.

    Reference:
        Gorbatovski et al., 2024, "Learn Your Reference Model for Real Good
        Alignment" (TR-DPO), https://arxiv.org/abs/2404.09656; TRL's
        `DPOConfig(sync_ref_model=True, ref_model_mixup_alpha=0.6,
        ref_model_sync_steps=512)` (its `SyncRefModelCallback`).

    Example:

    >>> import keras_hub, numpy as np
    >>> from kobjectives.objectives import DirectPreferenceOptimization
    >>> policy = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> reference = keras_hub.models.GPT2Backbone.from_config(policy.get_config())
    >>> model = DirectPreferenceOptimization(policy, reference)  # other initial weights
    >>> def same():
    ...     return all(np.array_equal(r, p) for r, p in zip(
    ...         model.reference.model.get_weights(), model.policy.get_weights()))
    >>> sync = SyncReferenceModel(mixup_alpha=1.0, sync_steps=1)
    >>> sync.set_model(model)  # fit(..., callbacks=[sync]) syncs every sync_steps steps
    >>> same(), sync.syncs
    (False, 0)
    >>> sync.sync()
    >>> same(), sync.syncs
    (True, 1)
    """

    def __init__(self, mixup_alpha=0.6, sync_steps=512, backup_dir=None):
        super().__init__()
        self.mixup_alpha = _check_mixup_alpha(mixup_alpha)
        self.sync_steps = _check_sync_steps(sync_steps)
        self.backup_dir = _check_backup_dir(backup_dir)
        self.syncs = 0
        self._last_step = None
        self._restore_pending = False

    # -- the pairs of weights ---------------------------------------------------------

    def _reference(self):
        """The model's `FrozenModel` reference, checked."""
        model = self.model
        name = type(model).__name__
        if model is None or not hasattr(model, "policy") or not hasattr(model, "reference"):
            raise ValueError(
                "SyncReferenceModel mixes the frozen `reference` of an objective toward its "
                "trained `policy` (DirectPreferenceOptimization, KahnemanTverskyOptimization); "
                f"{name} has no `policy` and `reference`."
            )
        reference = model.reference
        if reference is None:
            raise ValueError(
                f"SyncReferenceModel needs the reference online, but this {name} has none: its "
                "reference log-probabilities are precomputed into the data, which hold the "
                "starting policy's values and cannot be synced. Pass a reference model "
                f"({name}(policy, reference=...), a copy of the starting policy) or set "
                "`preference.reference = 'online'` in the recipe, or train without syncing."
            )
        if not isinstance(reference, FrozenModel):
            raise ValueError(
                f"The `reference` of {name} must be a kobjectives.objectives.FrozenModel. "
                f"Received: {type(reference).__name__}"
            )
        return reference

    def _pairs(self):
        """`[(reference variable, policy variable)]`, checked to pair up."""
        reference = self._reference().model.weights
        policy = self.model.policy.weights
        if len(reference) != len(policy):
            raise ValueError(
                f"The reference has {len(reference)} weights and the policy {len(policy)}: "
                "SyncReferenceModel mixes them one by one, so the reference must be a copy of "
                "the policy's architecture (same layers, same order; e.g. no LoRA on one side "
                "only)."
            )
        for ref, pol in zip(reference, policy):
            if tuple(ref.shape) != tuple(pol.shape):
                raise ValueError(
                    f"Reference weight {ref.path!r} has shape {tuple(ref.shape)} but the "
                    f"policy's weight in its place, {pol.path!r}, has {tuple(pol.shape)}: the "
                    "reference must be a copy of the policy's architecture (same config)."
                )
            for variable in (ref, pol):
                if not tf.as_dtype(variable.dtype).is_floating:
                    raise ValueError(
                        f"Weight {variable.path!r} is {variable.dtype}: SyncReferenceModel "
                        "mixes floating weights only (no quantized reference or policy)."
                    )
        return list(zip(reference, policy))

    def _batches_per_sync(self):
        """Batches between syncs: `sync_steps` times the optimizer's
        gradient accumulation steps."""
        optimizer = self.model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        accumulation = getattr(inner, "gradient_accumulation_steps", None) or 1
        return self.sync_steps * int(accumulation)

    # -- syncing ------------------------------------------------------------------------

    def sync(self):
        """Mixes the reference toward the policy once: every reference weight
        becomes `(1 - mixup_alpha) * reference + mixup_alpha * policy`, in
        place (its dtype kept); counts it in `syncs`."""
        alpha = self.mixup_alpha
        for ref, pol in self._pairs():
            dtype = _mix_dtype(tf.as_dtype(ref.dtype))
            policy_value = tf.cast(tf.convert_to_tensor(pol.value), dtype)
            if alpha == 1.0:
                mixed = policy_value
            else:
                reference_value = tf.cast(tf.convert_to_tensor(ref.value), dtype)
                mixed = (1.0 - alpha) * reference_value + alpha * policy_value
            ref.assign(tf.cast(mixed, ref.dtype))
        self.syncs += 1

    def on_train_begin(self, logs=None):
        self._pairs()
        steps_per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        batches = self._batches_per_sync()
        if batches % steps_per_execution:
            raise ValueError(
                f"`sync_steps={self.sync_steps}` (batches between syncs: {batches}) "
                f"is not a multiple of the model's `steps_per_execution={steps_per_execution}`: "
                "the callback runs once per execution, so it would miss sync points. Make "
                "sync_steps a multiple of steps_per_execution (or lower steps_per_execution)."
            )
        self._last_step = self._global_step()
        # The step is read at the first batch: a backup callback restores it in
        # its own on_train_begin, which may run after this one.
        self._restore_pending = self.backup_dir is not None

    def _backups(self):
        """`{step: path}` of the reference backups in `backup_dir`."""
        folder = pathlib.Path(self.backup_dir)
        if not folder.is_dir():
            return {}
        found = (_BACKUP_NAME.match(path.name) for path in folder.iterdir())
        return {int(match.group(1)): folder / match.group(0) for match in found if match}

    def _restore(self):
        """Loads the reference backed up at the current step, if any backup exists."""
        self._restore_pending = False
        step = self._last_step = self._global_step()
        backups = self._backups()
        if step in backups:
            self._reference().model.load_weights(str(backups[step]))
        elif step == 0:  # a fresh start: backups of an earlier run do not apply
            for path in backups.values():
                path.unlink(missing_ok=True)
        elif backups:
            raise ValueError(
                f"SyncReferenceModel: training resumes at step {step}, but the reference "
                f"backups in {self.backup_dir} are of steps {sorted(backups)}: the synced "
                "reference of this step is lost, and training on would use another one. "
                f"Delete {self.backup_dir} and the model's backup to start over."
            )

    def on_train_batch_begin(self, batch, logs=None):
        if self._restore_pending:
            self._restore()

    def _global_step(self):
        """The optimizer updates done (`optimizer.iterations`)."""
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        step = self._global_step()
        # Under gradient accumulation a batch may end without an update.
        if step != self._last_step and step > 0 and step % self.sync_steps == 0:
            self.sync()
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        if self.backup_dir is None:
            return
        step = self._global_step()
        folder = pathlib.Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"reference_step_{step:010d}.weights.h5"
        partial = folder / "reference_partial.weights.h5"
        self._reference().model.save_weights(str(partial))
        os.replace(partial, path)  # a kill mid-write leaves the earlier files whole
        backups = self._backups()
        for old in sorted(backups)[:-2]:
            backups[old].unlink(missing_ok=True)

    def get_config(self):
        return {"mixup_alpha": self.mixup_alpha, "sync_steps": self.sync_steps,
                "backup_dir": self.backup_dir}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
