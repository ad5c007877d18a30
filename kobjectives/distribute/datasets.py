"""Datasets under a `tf.distribute` strategy: per-replica batches, sharded by
input context, static shapes."""

import tensorflow as tf


def is_distributed(strategy):
    """True when `strategy` runs more than one replica (devices or workers)."""
    return strategy is not None and strategy.num_replicas_in_sync > 1


def per_replica_batch_size(global_batch_size, strategy):
    """The per-replica batch of a global batch under `strategy`.

    Raises:
        ValueError: `global_batch_size` is not a positive multiple of the
            number of replicas (the error names both and the fix).
    """
    replicas = strategy.num_replicas_in_sync
    global_batch_size = int(global_batch_size)
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            f"training.batch_size (the global batch) must be a positive multiple of the "
            f"number of replicas ({replicas}) so every replica gets the same static batch. "
            f"Received: {global_batch_size}. Use e.g. --batch-size "
            f"{max(replicas, global_batch_size - global_batch_size % replicas)}."
        )
    return global_batch_size // replicas


def input_options(strategy):
    """`tf.distribute.InputOptions` for `distribute_datasets_from_function`.

    Under a single-worker `MirroredStrategy` the dataset function is called
    once per replica (`InputReplicationMode.PER_REPLICA`): each replica reads
    its own shard and Keras sees the true number of steps of a finite
    dataset. Other strategies (multi-worker, TPU) call it once per worker,
    the TensorFlow default.
    """
    if isinstance(strategy, tf.distribute.MirroredStrategy) and is_distributed(strategy):
        return tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA
        )
    return None


def _num_batches(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "A finite (validation) dataset was expected, but the dataset repeats forever."
        )
    return sum(1 for _ in dataset)


def distribute_datasets(strategy, dataset_fn, global_batch_size, finite=False):
    """A dataset for `model.fit` / `evaluate` under `strategy`.

    With one replica: `dataset_fn(global_batch_size)`. Otherwise
    `strategy.distribute_datasets_from_function`, calling
    `dataset_fn(per_replica_batch_size, input_context)` once per input
    pipeline; `dataset_fn` must shard its data by
    `input_context.input_pipeline_id` and batch with `drop_remainder=True`.

    A `finite` dataset (validation) is cut to the same number of batches on
    every input pipeline (the smallest shard's, rounded down to a multiple of
    the replicas a pipeline feeds), so no replica waits for a batch that
    never comes and every step has the same static shapes.

    Args:
        strategy: a `tf.distribute.Strategy`.
        dataset_fn: `(batch_size, input_context=None) -> tf.data.Dataset`.
        global_batch_size: int, the batch summed over all replicas.
        finite: bool, the dataset ends (validation) rather than repeats.

    Returns:
        A `tf.data.Dataset` or a distributed dataset.

    Raises:
        ValueError: the global batch is not divisible by the replicas; a
            dataset's batch dimension is not static.

    Example:

    >>> strategy = tf.distribute.get_strategy()
    >>> fn = lambda size, ctx=None: tf.data.Dataset.range(8).batch(size, drop_remainder=True)
    >>> ds = distribute_datasets(strategy, fn, 4, finite=True)
    >>> [int(x.shape[0]) for x in ds]
    [4, 4]
    """
    if not is_distributed(strategy):
        return _checked(dataset_fn(int(global_batch_size)), int(global_batch_size))
    batch_size = per_replica_batch_size(global_batch_size, strategy)
    lengths = {}

    def common_length(context):
        key = context.num_input_pipelines
        if key not in lengths:
            counts = [
                _num_batches(dataset_fn(batch_size, tf.distribute.InputContext(
                    context.num_input_pipelines, pipeline, context.num_replicas_in_sync)))
                for pipeline in range(context.num_input_pipelines)
            ]
            per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            lengths[key] = min(counts) // per_pipeline * per_pipeline
            if lengths[key] == 0:
                raise ValueError(
                    f"A validation shard has fewer batches ({min(counts)}) than the "
                    f"replicas it feeds ({per_pipeline}). Give more validation data or a "
                    f"smaller --batch-size."
                )
        return lengths[key]

    def fn(context):
        dataset = _checked(dataset_fn(batch_size, context), batch_size)
        if finite:
            length = common_length(context)
            dataset = dataset.take(length).apply(tf.data.experimental.assert_cardinality(length))
        return dataset

    return strategy.distribute_datasets_from_function(fn, input_options(strategy))


def _checked(dataset, batch_size):
    for spec in tf.nest.flatten(dataset.element_spec):
        shape = getattr(spec, "shape", None)
        if shape is not None and shape.rank == 0:
            continue
        if shape is None or shape.rank is None or shape[0] != batch_size:
            raise ValueError(
                f"The dataset must yield batches with a static batch dimension of "
                f"{batch_size} (batch with drop_remainder=True). Received element spec "
                f"{dataset.element_spec}."
            )
    return dataset
