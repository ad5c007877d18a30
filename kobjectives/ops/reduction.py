"""Reductions that stay correct under `tf.distribute`.

Keras computes the loss once per replica, divides it by the number of replicas
and sums the gradients. A weighted mean computed per replica and then averaged
equals the global weighted mean only when every replica holds the same total
weight, which masked positions do not guarantee. The functions here return a
replica's *share* of the global loss (its weighted sum divided by the weight
summed over all replicas), so the summed gradients are exactly those of the
global weighted mean, as `tf.nn.compute_average_loss` does for plain means.

Weights are applied in one place, `apply_weights`: an entry of weight 0 is
ignored, so a NaN or infinite value there (an unused prediction slot, a
padded position) never reaches the sum (`0 * nan` would be NaN).
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops.labels import known_values


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


def apply_weights(values, weights, name="sample_weight"):
    """`values * weights` in float32, with weight-0 entries exactly 0.

    An entry of weight 0 is ignored whatever its value: a NaN or infinite
    value there gives 0, not NaN. Weights must be non-negative and
    broadcastable to `values`, finite and non-negative; all of it is
    checked where they are known (eager values, constants, static shapes).
    Traced weights are not checked (under XLA nothing can fail): a negative
    one multiplies as given, a NaN one makes the sum NaN.

    Args:
        values: float tensor of any shape (cast to float32).
        weights: float tensor broadcastable to `values` (for example
            `[batch]` weights of `[batch]` values, `[batch, slots]` of
            `[batch, slots]`).
        name: the argument name used in error messages.

    Returns:
        `(weighted_values, weights)`: float32 tensors of `values`' shape.

    Raises:
        ValueError: weights that do not broadcast to `values`, or known
            negative, NaN or infinite weights.

    Example:

    >>> weighted, _ = apply_weights([1.0, float("nan")], [2.0, 0.0])
    >>> weighted.numpy()
    array([2., 0.], dtype=float32)
    """
    values = tf.cast(values, tf.float32)
    weights = tf.cast(weights, tf.float32)
    broadcast = None
    try:
        broadcast = tf.broadcast_static_shape(weights.shape, values.shape)
    except ValueError:
        pass
    if broadcast is None or (
        broadcast.rank is not None
        and values.shape.rank is not None
        and not broadcast.is_compatible_with(values.shape)
    ):
        raise ValueError(
            f"`{name}` of shape {weights.shape} does not broadcast to the "
            f"losses' shape {values.shape}. Give one weight per loss value "
            "(the same shape), or a shape that broadcasts to it."
        )
    known = known_values(weights)
    if known is not None and not np.all(np.isfinite(known)):
        raise ValueError(
            f"`{name}` must be finite. Received a weight of "
            f"{float(np.asarray(known)[~np.isfinite(known)].ravel()[0])}: give "
            "ignored entries weight 0."
        )
    if known is not None and np.any(np.asarray(known) < 0):
        raise ValueError(
            f"`{name}` must be non-negative (0 ignores an entry). Received a "
            f"weight of {float(np.min(known)):g}."
        )
    weights = tf.broadcast_to(weights, tf.shape(values))
    ignored = tf.equal(weights, 0.0)
    return tf.where(ignored, tf.zeros_like(values), values) * weights, weights


def global_weighted_mean(values, weights):
    """This replica's share of the weighted mean over the global batch.

    Computes `sum(values * weights) / sum(weights)` where the denominator is
    summed over all replicas. The result is already scaled for distribution:
    summing it over the replicas (as Keras does for gradients, and for the loss
    metric after `unscale_loss_for_distribution`) gives the exact global
    weighted mean, so callers must not divide it by the number of replicas
    again. With one replica it is the plain weighted mean. A total weight of
    zero gives zero (`divide_no_nan`), never NaN, and an entry of weight 0
    never contributes, whatever its value (a NaN or infinite loss in an
    unused slot is ignored; `apply_weights`). A NaN in an entry of positive
    weight (for example an invalid label, `kobjectives.ops.labels`) makes the
    mean NaN.

    Args:
        values: float tensor of any shape (cast to float32).
        weights: float tensor broadcastable to `values`, non-negative.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: weights that do not broadcast to `values`, or known
            negative weights.
    """
    weighted, weights = apply_weights(values, weights)
    numerator = tf.reduce_sum(weighted)
    denominator = cross_replica_sum(tf.reduce_sum(weights))
    return tf.math.divide_no_nan(numerator, denominator)
