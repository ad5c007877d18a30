"""`SyncReferenceModel` (TR-DPO): one mix against `(1 - a) ref + a pol` on
known weights, the sync points of `fit` against the policy recorded at those
steps, the compiled (XLA) and mirrored steps reading the synced reference,
the backup written and restored, and every error."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.objectives import CausalLanguageModel
from kobjectives.objectives import DirectPreferenceOptimization
from kobjectives.objectives import KahnemanTverskyOptimization
from kobjectives.objectives import SyncReferenceModel
from tests.harness import tiny_backbone
from tests.objectives.test_preference_optimization import H
from tests.objectives.test_preference_optimization import L
from tests.objectives.test_preference_optimization import V
from tests.objectives.test_preference_optimization import copy_of
from tests.objectives.test_preference_optimization import kto_rows
from tests.objectives.test_preference_optimization import lm
from tests.objectives.test_preference_optimization import pairs

LOG_2 = float(np.log(2.0))


def weights(model):
    return [np.array(w) for w in model.get_weights()]


def callback_on(model, **kwargs):
    callback = SyncReferenceModel(**kwargs)
    callback.set_model(model)
    return callback


class PolicyAtStep(keras.callbacks.Callback):
    """Records the policy's weights after every step, keyed by the global step."""

    def __init__(self):
        super().__init__()
        self.at = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.at[step] = weights(self.model.policy)


class LossPerStep(keras.callbacks.Callback):
    """Each step's own loss (one batch per epoch: the epoch's logged loss)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(logs["loss"])


def test_sync_is_the_mix_of_reference_and_policy_and_keeps_dtypes():
    policy, reference = lm(0), lm(1)
    model = DirectPreferenceOptimization(policy, reference)
    ref0, pol0 = weights(model.reference.model), weights(policy)
    assert not all(np.array_equal(a, b) for a, b in zip(ref0, pol0))
    callback = callback_on(model, mixup_alpha=0.25, sync_steps=7)
    callback.sync()
    once = [np.float32(0.75) * r + np.float32(0.25) * p for r, p in zip(ref0, pol0)]
    for got, expected in zip(weights(model.reference.model), once):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    callback.sync()
    twice = [np.float32(0.75) * r + np.float32(0.25) * p for r, p in zip(once, pol0)]
    for got, expected in zip(weights(model.reference.model), twice):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    for got, expected in zip(weights(policy), pol0):  # the policy is untouched
        np.testing.assert_array_equal(got, expected)
    assert callback.syncs == 2

    # A bfloat16 reference stays bfloat16: the float32 mix, rounded once.
    low = CausalLanguageModel(tiny_backbone("gpt2", V, L, hidden_dim=H, dtype="bfloat16"))
    model = DirectPreferenceOptimization(lm(2), low)
    ref0 = [v.numpy().astype("float32") for v in model.reference.model.weights]
    pol0 = weights(model.policy)
    callback_on(model, mixup_alpha=0.6).sync()
    for variable, r, p in zip(model.reference.model.weights, ref0, pol0):
        assert variable.dtype == "bfloat16"
        expected = tf.cast(np.float32(0.4) * r + np.float32(0.6) * p, tf.bfloat16)
        np.testing.assert_array_equal(variable.numpy(), expected.numpy())


def test_sync_works_for_kto_and_the_config_round_trips():
    policy = lm(0)
    model = KahnemanTverskyOptimization(policy, reference=lm(1))
    callback_on(model, mixup_alpha=1.0).sync()
    for got, expected in zip(weights(model.reference.model), weights(policy)):
        np.testing.assert_array_equal(got, expected)
    callback = SyncReferenceModel(0.3, 4, backup_dir="backup")
    config = callback.get_config()
    assert config == {"mixup_alpha": 0.3, "sync_steps": 4, "backup_dir": "backup"}
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(restored) is SyncReferenceModel and restored.get_config() == config
    # Used in training too (KTO rows), at the step it names.
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    sync = SyncReferenceModel(mixup_alpha=1.0, sync_steps=2)
    model.fit(kto_rows(4), batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[sync])
    assert sync.syncs == 1
    for got, expected in zip(weights(model.reference.model), weights(policy)):
        np.testing.assert_array_equal(got, expected)


def test_fit_syncs_at_every_multiple_of_sync_steps():
    policy, reference = lm(0), lm(1)
    model = DirectPreferenceOptimization(policy, reference, beta=1.0, chunk_size=4)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    expected = weights(model.reference.model)
    recorder, sync = PolicyAtStep(), SyncReferenceModel(mixup_alpha=0.6, sync_steps=2)
    # 4 steps; the recorder runs first, so it sees each step's policy before the sync.
    model.fit(pairs(8), batch_size=2, epochs=1, shuffle=False, verbose=0,
              callbacks=[recorder, sync])
    assert sorted(recorder.at) == [1, 2, 3, 4] and sync.syncs == 2
    assert not all(np.array_equal(a, b) for a, b in zip(recorder.at[1], recorder.at[2]))
    for step in (2, 4):
        expected = [np.float32(0.4) * r + np.float32(0.6) * p
                    for r, p in zip(expected, recorder.at[step])]
    for got, want in zip(weights(model.reference.model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_sync_counts_optimizer_updates_under_gradient_accumulation():
    model = DirectPreferenceOptimization(lm(0), lm(1), chunk_size=4)
    model.compile(optimizer=keras.optimizers.SGD(0.5, gradient_accumulation_steps=2))
    sync = SyncReferenceModel(mixup_alpha=1.0, sync_steps=1)
    model.fit(pairs(8), batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[sync])
    assert sync.syncs == 2  # 4 batches, 2 optimizer updates
    for got, expected in zip(weights(model.reference.model), weights(model.policy)):
        np.testing.assert_array_equal(got, expected)


def assert_steps_read_the_synced_reference(model):
    """alpha = 1 every 2 steps, 4 one-batch epochs: the loss of a step right
    after a sync (1 and 3) is that of reference == policy (log 2); the others
    are not; after the last step the reference is the policy."""
    sync, losses = SyncReferenceModel(mixup_alpha=1.0, sync_steps=2), LossPerStep()
    # One iterator for every epoch (a new one per epoch costs more than the steps).
    batches = tf.data.Dataset.from_tensor_slices(pairs(4)).batch(4, drop_remainder=True)
    model.fit(batches.repeat(), steps_per_epoch=1, epochs=4, shuffle=False, verbose=0,
              callbacks=[sync, losses])
    assert sync.syncs == 2
    np.testing.assert_allclose([losses.losses[0], losses.losses[2]], LOG_2, atol=1e-6)
    assert abs(losses.losses[1] - LOG_2) > 1e-3 and abs(losses.losses[3] - LOG_2) > 1e-3, \
        losses.losses
    for got, expected in zip(weights(model.reference.model), weights(model.policy)):
        np.testing.assert_array_equal(got, expected)


def test_the_xla_compiled_step_reads_the_synced_reference():
    policy = lm(0)
    model = DirectPreferenceOptimization(policy, copy_of(policy), beta=1.0, chunk_size=4)
    model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=True)
    assert_steps_read_the_synced_reference(model)


def test_mirrored_strategy_syncs_every_replica(mirrored_strategy):
    with mirrored_strategy.scope():
        policy = lm(0)
        model = DirectPreferenceOptimization(policy, copy_of(policy), beta=1.0, chunk_size=4)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    assert_steps_read_the_synced_reference(model)
    for ref, pol in zip(model.reference.model.weights, model.policy.weights):
        copies = mirrored_strategy.experimental_local_results(ref.value)
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_array_equal(copy.numpy(), pol.numpy())


def test_backup_keeps_the_two_newest_steps_and_restores_the_matching_one(tmp_path):
    folder = tmp_path / "backup"
    model = DirectPreferenceOptimization(lm(0), lm(1), chunk_size=4)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    sync = SyncReferenceModel(mixup_alpha=0.5, sync_steps=1, backup_dir=str(folder))
    at_step = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            at_step[int(self.model.optimizer.iterations.numpy())] = weights(
                self.model.reference.model)

    model.fit(pairs(4), batch_size=2, epochs=3, shuffle=False, verbose=0,
              callbacks=[sync, Record()])
    assert sorted(p.name for p in folder.iterdir()) == [
        "reference_step_0000000004.weights.h5", "reference_step_0000000006.weights.h5"]

    def resumed_at(step):
        """A fresh objective (unsynced reference) whose optimizer is at `step`."""
        model = DirectPreferenceOptimization(lm(0), lm(1), chunk_size=4)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.optimizer.build(model.policy.trainable_variables)
        model.optimizer.iterations.assign(step)
        callback = callback_on(model, sync_steps=1, backup_dir=str(folder))
        callback.on_train_begin()
        return model, callback

    # The step is read at the first batch (a backup callback restores it in between).
    model, callback = resumed_at(4)
    assert not all(np.array_equal(a, b) for a, b in zip(weights(model.reference.model),
                                                         at_step[4]))
    callback.on_train_batch_begin(0)
    for got, expected in zip(weights(model.reference.model), at_step[4]):
        np.testing.assert_array_equal(got, expected)

    # A step with no backup, while others exist: an error, not the wrong reference.
    _, callback = resumed_at(2)
    with pytest.raises(ValueError, match=r"resumes at step 2.*steps \[4, 6\]"):
        callback.on_train_batch_begin(0)

    # A fresh start (step 0): the earlier run's backups are dropped, the reference kept.
    model, callback = resumed_at(0)
    before = weights(model.reference.model)
    callback.on_train_batch_begin(0)
    assert list(folder.iterdir()) == []
    for got, expected in zip(weights(model.reference.model), before):
        np.testing.assert_array_equal(got, expected)


def test_a_run_killed_mid_training_resumes_with_the_synced_reference(tmp_path):
    """With a run's backup (`RunBackup`) after the sync callback, a crash in
    epoch 3 resumes from epoch 2's model and reference, and ends where an
    uninterrupted run ends."""
    from kobjectives.distribute import RunBackup

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == 5:
                raise KeyboardInterrupt("simulated crash")

    def run(callbacks, model=None):
        model = model or DirectPreferenceOptimization(lm(0), lm(1), chunk_size=4)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        data = tf.data.Dataset.from_tensor_slices(pairs(4)).batch(2).repeat()
        model.fit(data, epochs=3, steps_per_epoch=2, verbose=0, callbacks=callbacks)
        return model

    def callbacks(folder):
        return [SyncReferenceModel(0.5, sync_steps=1, backup_dir=str(folder / "backup")),
                RunBackup(str(folder / "backup"))]

    whole = run([SyncReferenceModel(0.5, sync_steps=1)])
    with pytest.raises(KeyboardInterrupt):
        run([*callbacks(tmp_path), Crash()])
    resumed = run(callbacks(tmp_path))
    assert int(resumed.optimizer.iterations.numpy()) == 6
    assert not (tmp_path / "backup").exists()  # deleted with the run's backup
    for got, expected in zip(weights(resumed.reference.model), weights(whole.reference.model)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"mixup_alpha": 0.0}, "mixup_alpha"),
    ({"mixup_alpha": 1.5}, "mixup_alpha"),
    ({"mixup_alpha": float("nan")}, "mixup_alpha"),
    ({"mixup_alpha": True}, "mixup_alpha"),
    ({"mixup_alpha": "0.5"}, "mixup_alpha"),
    ({"sync_steps": 0}, "sync_steps"),
    ({"sync_steps": 2.0}, "sync_steps"),
    ({"sync_steps": True}, "sync_steps"),
    ({"backup_dir": ""}, "backup_dir"),
    ({"backup_dir": 3}, "backup_dir"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyncReferenceModel(**kwargs)


def test_errors_at_train_begin():
    # Not a preference objective.
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no `policy` and `reference`"):
        callback_on(plain).on_train_begin()

    # The reference precomputed into the data.
    precomputed = DirectPreferenceOptimization(lm(0))
    precomputed.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="online.*precomputed.*cannot be synced"):
        callback_on(precomputed).on_train_begin()

    # Weights that do not pair up: another count, another shape.
    deeper = CausalLanguageModel(tiny_backbone("gpt2", V, L, hidden_dim=H, num_layers=2))
    model = DirectPreferenceOptimization(lm(0), deeper)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="weights and the policy"):
        callback_on(model).on_train_begin()
    wider = CausalLanguageModel(tiny_backbone("gpt2", V, L, hidden_dim=2 * H))
    model = DirectPreferenceOptimization(lm(0), wider)
    with pytest.raises(ValueError, match="has shape"):
        callback_on(model).sync()

    # Sync points inside one execution.
    model = DirectPreferenceOptimization(lm(0), lm(1))
    model.compile(optimizer="sgd", steps_per_execution=2)
    with pytest.raises(ValueError, match="steps_per_execution"):
        callback_on(model, sync_steps=3).on_train_begin()
    callback_on(model, sync_steps=4).on_train_begin()  # a multiple is fine
