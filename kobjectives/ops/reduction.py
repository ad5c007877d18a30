"""Reductions that stay correct under `tf.distribute`.

Keras computes the loss once per replica, divides it by the number of replicas
and sums the gradients. A weighted mean computed per replica and then averaged
equals the global weighted mean only when every replica holds the same total
weight, which masked positions do not guarantee. The functions here return a
replica's *share* of the global loss (its weighted sum divided by the weight
summed over all replicas), so the summed gradients are exactly those of the
global weighted mean, as `tf.nn.compute_average_loss` does for plain means.
"""

import tensorflow as tf


def cross_replica_sum(value):
    """Sums `value` over the replicas when called in a replica context.

    Outside `strategy.run` (or with a single replica) the value is returned
    unchanged. Gradients flow to every replica's contribution.

    Args:
        value: A tensor, the same shape on every replica.

    Returns:
        The element-wise sum of `value` over all replicas in sync.
    """
    if tf.distribute.in_cross_replica_context():
        return value
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def global_weighted_mean(values, weights):
    """This replica's share of the weighted mean over the global batch.

    Computes `sum(values * weights) / sum(weights)` where the denominator is
    summed over all replicas. The result is already scaled for distribution:
    summing it over the replicas (as Keras does for gradients, and for the loss
    metric after `unscale_loss_for_distribution`) gives the exact global
    weighted mean, so callers must not divide it by the number of replicas
    again. With one replica it is the plain weighted mean. A total weight of
    zero gives zero (`divide_no_nan`), never NaN.

    Args:
        values: float tensor of any shape (cast to float32).
        weights: float tensor broadcastable to `values`.

    Returns:
        A float32 scalar.
    """
    values = tf.cast(values, tf.float32)
    weights = tf.broadcast_to(tf.cast(weights, tf.float32), tf.shape(values))
    numerator = tf.reduce_sum(values * weights)
    denominator = cross_replica_sum(tf.reduce_sum(weights))
    return tf.math.divide_no_nan(numerator, denominator)
