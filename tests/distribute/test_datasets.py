import numpy as np
import pytest
import tensorflow as tf

from kobjectives.distribute import distribute_datasets
from kobjectives.distribute import per_replica_batch_size


def _fn(num_items, repeat=False, calls=None):
    def fn(batch_size, context=None):
        if calls is not None:
            calls.append((batch_size, context and (context.input_pipeline_id, context.num_input_pipelines)))
        ds = tf.data.Dataset.range(num_items)
        if context is not None:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size, drop_remainder=True)

    return fn


def test_one_replica_is_the_plain_dataset_at_the_global_batch():
    ds = distribute_datasets(tf.distribute.get_strategy(), _fn(10), 4, finite=True)
    assert isinstance(ds, tf.data.Dataset)
    assert [b.numpy().tolist() for b in ds] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_per_replica_batches_sharded_by_input_context(mirrored_strategy):
    calls = []
    ds = distribute_datasets(mirrored_strategy, _fn(20, calls=calls), 4, finite=True)
    assert isinstance(ds, tf.distribute.DistributedDataset)
    # Each shard holds 10 items: 5 batches of 2 per replica, 5 steps.
    assert int(ds.cardinality) == 5
    steps = [[v.numpy().tolist() for v in mirrored_strategy.experimental_local_results(b)]
             for b in ds]
    assert steps[:2] == [[[0, 2], [1, 3]], [[4, 6], [5, 7]]] and len(steps) == 5
    assert all(size == 2 for size, _ in calls)
    assert {c for _, c in calls} == {(0, 2), (1, 2)}


def test_uneven_validation_shards_are_cut_to_a_common_length(mirrored_strategy):
    # 7 items: shard 0 = [0, 2, 4, 6] (2 batches), shard 1 = [1, 3, 5] (1 batch).
    ds = distribute_datasets(mirrored_strategy, _fn(7), 4, finite=True)
    assert int(ds.cardinality) == 1
    assert len(list(ds)) == 1


def test_global_batch_must_divide_by_replicas(mirrored_strategy):
    assert per_replica_batch_size(8, mirrored_strategy) == 4
    with pytest.raises(ValueError, match="multiple of the number of replicas \\(2\\).*--batch-size 4"):
        distribute_datasets(mirrored_strategy, _fn(10), 5)


def test_dynamic_batch_dimension_is_refused():
    def fn(batch_size, context=None):
        return tf.data.Dataset.range(10).batch(batch_size)  # no drop_remainder

    with pytest.raises(ValueError, match="drop_remainder=True"):
        distribute_datasets(tf.distribute.get_strategy(), fn, 4)


def test_a_repeating_validation_set_is_refused(mirrored_strategy):
    with pytest.raises(ValueError, match="repeats forever"):
        distribute_datasets(mirrored_strategy, _fn(10, repeat=True), 4, finite=True)


def test_fit_and_evaluate_on_distributed_datasets(mirrored_strategy):
    import keras

    def fn(batch_size, context=None):
        x = np.linspace(0, 1, 64, dtype="float32").reshape(32, 2)
        ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True)))
        if context is not None:
            ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.batch(batch_size, drop_remainder=True)

    with mirrored_strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    train = distribute_datasets(mirrored_strategy, lambda b, c=None: fn(b, c).repeat(), 8)
    val = distribute_datasets(mirrored_strategy, fn, 8, finite=True)
    history = model.fit(train, epochs=1, steps_per_epoch=3, validation_data=val, verbose=0)
    # The validation loss is the mean over all 32 examples, as on one device.
    x = np.linspace(0, 1, 64, dtype="float32").reshape(32, 2)
    expected = np.mean((model.predict(x, verbose=0) - x.sum(1, keepdims=True)) ** 2)
    np.testing.assert_allclose(history.history["val_loss"][0], expected, rtol=1e-5)
