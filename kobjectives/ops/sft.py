"""Loss normalization of supervised fine-tuning: per token or per example.

A token-normalized loss (`kobjectives.ops.global_weighted_mean`) weights
every target token alike, so a long completion counts more than a short
one. An example-normalized loss first averages each example's token losses
and then averages the examples, so every example counts alike whatever its
length. In a window packed with several examples (`segment_ids`), an
example is a packed document, not a row.

Both reductions return a replica's *share* of the global-batch value, so
the sum over the replicas (what Keras does with the loss and the gradients
under `tf.distribute`) is exactly the value over the global batch.
"""

import tensorflow as tf

from kobjectives.ops.reduction import apply_weights
from kobjectives.ops.reduction import global_weighted_mean


def _check_segment_ids(segment_ids, values):
    segment_ids = tf.convert_to_tensor(segment_ids)
    if segment_ids.dtype.is_floating or segment_ids.dtype.is_complex:
        raise TypeError(
            "`segment_ids` must be integer example ids (one per position, as "
            "kobjectives.data.sft_dataset or kobjectives.layers.SequencePacker emit). "
            f"Received dtype {segment_ids.dtype.name}; cast them to int32."
        )
    if not segment_ids.shape.is_compatible_with(values.shape):
        raise ValueError(
            f"`segment_ids` {segment_ids.shape} must have the shape of the losses "
            f"{values.shape}: one example id per position."
        )
    return tf.cast(segment_ids, tf.int32)


def _example_runs(segment_ids):
    """Run index of every position of a `[rows, length]` layout: 0 at the
    first position of a row, +1 wherever the segment id changes."""
    changed = tf.cast(tf.not_equal(segment_ids[:, 1:], segment_ids[:, :-1]), tf.int32)
    return tf.concat([tf.zeros_like(segment_ids[:, :1]), tf.cumsum(changed, axis=1)], axis=1)


def example_token_means(values, weights, segment_ids=None):
    """Each example's weighted mean of its token values.

    An example is a maximal run of equal `segment_ids` inside a row (a
    document packed into a window: `kobjectives.data.sft_dataset`,
    `kobjectives.layers.SequencePacker`); without `segment_ids` every row is
    one example. Slot `j` of a row holds the row's `j`-th example, so the
    outputs have the static shape of the inputs (a row of `length`
    positions holds at most `length` examples); unused slots and examples
    without weight have `example_weights` 0. Entries of weight 0 never
    contribute, whatever their value (`kobjectives.ops.apply_weights`), and
    an example of total weight 0 has mean 0, not NaN (`divide_no_nan`).

    Args:
        values: float tensor `[..., length]`, e.g. per-token losses (cast to
            float32).
        weights: float tensor broadcastable to `values`, non-negative, e.g.
            the completion-only target weights.
        segment_ids: optional int tensor of `values`' shape, the example of
            each position. None means one example per row.

    Returns:
        `(means, example_weights)`: float32 tensors `[..., length]`.
        `means[..., j]` is the weighted mean of the `j`-th example of the
        row, `example_weights[..., j]` is 1 where that example exists and
        has positive total weight, else 0.

    Raises:
        ValueError: weights that do not broadcast, known negative weights,
            or `segment_ids` of another shape.
        TypeError: float `segment_ids`.

    Example:

    >>> means, present = example_token_means(
    ...     [[1.0, 3.0, 5.0, 9.0, 0.0]], [[1.0, 1.0, 1.0, 1.0, 0.0]],
    ...     segment_ids=[[1, 1, 2, 2, 0]])
    >>> means.numpy().tolist(), present.numpy().tolist()
    ([[2.0, 7.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0, 0.0, 0.0]])
    """
    weighted, weights = apply_weights(values, weights)
    if weighted.shape.rank is not None and weighted.shape.rank < 1:
        raise ValueError(f"`values` must be `[..., length]`. Received shape {weighted.shape}.")
    if segment_ids is not None:
        segment_ids = _check_segment_ids(segment_ids, weighted)
    static_shape = weighted.shape
    shape = tf.shape(weighted)
    length = shape[-1]
    weighted = tf.reshape(weighted, [-1, length])
    weights = tf.reshape(weights, [-1, length])
    if segment_ids is None:
        runs = tf.zeros(tf.shape(weighted), tf.int32)
    else:
        runs = _example_runs(tf.reshape(segment_ids, [-1, length]))
    rows = tf.shape(weighted)[0]
    keys = runs + tf.range(rows)[:, None] * length
    count = rows * length
    total_weight = tf.math.unsorted_segment_sum(weights, keys, count)
    total = tf.math.unsorted_segment_sum(weighted, keys, count)
    means = tf.math.divide_no_nan(total, total_weight)
    present = tf.cast(total_weight > 0.0, tf.float32)
    means = tf.ensure_shape(tf.reshape(means, shape), static_shape)
    present = tf.ensure_shape(tf.reshape(present, shape), static_shape)
    return means, present


def global_example_mean(values, weights, segment_ids=None):
    """This replica's share of the mean over examples of each example's
    weighted mean token value, over the global batch.

    `sum_e mean_e / E`, where `mean_e` is example `e`'s weighted mean
    (`example_token_means`) and `E` the number of examples of positive
    weight summed over all replicas: summing the result over the replicas
    gives the exact global value (Keras sums the replicas' losses and
    gradients), as `kobjectives.ops.global_weighted_mean` does for the
    token mean. With one example per row of equal weight it equals the
    token mean. No example of positive weight gives 0, never NaN.

    Args:
        values: float tensor `[..., length]`, e.g. per-token losses.
        weights: float tensor broadcastable to `values`, non-negative.
        segment_ids: optional int tensor of `values`' shape (a packed
            example per run of equal ids); None means one example per row.

    Returns:
        A float32 scalar.

    Raises:
        ValueError, TypeError: as `example_token_means`.

    Example (two examples: `mean(1, 3) = 2` and `mean(5, 9, 13) = 9`, so
    `(2 + 9) / 2`):

    >>> float(global_example_mean(
    ...     [[1.0, 3.0, 5.0, 9.0, 13.0, 0.0]], [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]],
    ...     segment_ids=[[1, 1, 2, 2, 2, 0]]))
    5.5
    """
    means, example_weights = example_token_means(values, weights, segment_ids)
    return global_weighted_mean(means, example_weights)
