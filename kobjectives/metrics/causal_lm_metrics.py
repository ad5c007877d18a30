"""Metrics of causal language modeling from per-token losses, so that no
`[batch, length, vocabulary]` logits are needed to report them."""

import keras
import tensorflow as tf


class _WeightedTokenMean(keras.metrics.Metric):
    """Accumulates `sum(w * values)` and `sum(w)` over every update."""

    def __init__(self, name, dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.weight = self.add_variable(shape=(), initializer="zeros", name="weight")

    def update_state(self, values, sample_weight=None):
        values = tf.cast(values, tf.float32)
        if sample_weight is None:
            sample_weight = tf.ones_like(values)
        sample_weight = tf.broadcast_to(tf.cast(sample_weight, tf.float32), tf.shape(values))
        self.total.assign_add(tf.reduce_sum(values * sample_weight))
        self.weight.assign_add(tf.reduce_sum(sample_weight))

    def _mean(self):
        return tf.math.divide_no_nan(self.total, self.weight)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)


@keras.saving.register_keras_serializable(package="kobjectives")
class TokenPerplexity(_WeightedTokenMean):
    """Perplexity from per-token cross-entropies: `exp(sum(w * loss) / sum(w))`.

    Corpus-level: the mean runs over every weighted token since the last
    reset (not a mean of per-batch perplexities). Under `tf.distribute` the
    sums are summed over the replicas, so the value is exact.

    Args:
        name: Name of the metric.
        dtype: dtype of the metric's state.

    Call arguments (`update_state`):
        values: float tensor `[...]` of per-token cross-entropies (nats),
            e.g. from `kobjectives.ops.chunked_token_cross_entropy`.
        sample_weight: optional float tensor broadcastable to `values`.

    Reference:
        Jelinek et al., 1977, "Perplexity—a measure of the difficulty of
        speech recognition tasks".

    Example:

    >>> import numpy as np
    >>> metric = TokenPerplexity()
    >>> metric.update_state(np.log([[2.0, 8.0, 100.0]]), [[1.0, 1.0, 0.0]])
    >>> round(float(metric.result()), 4)  # exp(mean(log 2, log 8)) = 4
    4.0
    """

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return tf.exp(self._mean())


@keras.saving.register_keras_serializable(package="kobjectives")
class TokenAccuracy(_WeightedTokenMean):
    """Weighted mean of per-token hits (1.0 where the arg-max is the target).

    Args:
        name: Name of the metric.
        dtype: dtype of the metric's state.

    Call arguments (`update_state`):
        values: float tensor `[...]` of 1.0/0.0 hits, e.g. the `correct`
            output of `kobjectives.ops.chunked_token_cross_entropy`.
        sample_weight: optional float tensor broadcastable to `values`.

    Example:

    >>> metric = TokenAccuracy()
    >>> metric.update_state([[1.0, 0.0, 1.0]], [[1.0, 1.0, 0.0]])
    >>> float(metric.result())
    0.5
    """

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return self._mean()
