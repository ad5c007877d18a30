"""Metrics of masked (and causal) language modeling: perplexity and accuracy."""

import keras
import tensorflow as tf

from kobjectives.ops import masked_lm as masked_lm_ops


class _WeightedMeanOverPositions(keras.metrics.Metric):
    """Accumulates `sum(w * value_fn(y_true, y_pred))` and `sum(w)`."""

    value_fn = None  # set by subclasses: (y_true, y_pred) -> [batch, positions]

    def __init__(self, name, dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.weight = self.add_variable(shape=(), initializer="zeros", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = type(self).value_fn(y_true, y_pred)
        if sample_weight is None:
            sample_weight = tf.ones_like(values)
        sample_weight = tf.broadcast_to(
            tf.cast(sample_weight, tf.float32), tf.shape(values)
        )
        self.total.assign_add(tf.reduce_sum(values * sample_weight))
        self.weight.assign_add(tf.reduce_sum(sample_weight))

    def _mean(self):
        return tf.math.divide_no_nan(self.total, self.weight)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)


@keras.saving.register_keras_serializable(package="kobjectives")
class Perplexity(_WeightedMeanOverPositions):
    """Perplexity: `exp` of the mean cross-entropy over weighted positions.

    The mean is over every position seen since the last reset, weighted by
    `sample_weight` (unused prediction slots with weight 0 do not count), so
    the value for an epoch is the corpus-level perplexity, not an average of
    per-batch perplexities. Logits are read in float32.

    Args:
        name: Name of the metric.
        dtype: dtype of the metric's state.

    Call arguments (`update_state`):
        y_true: int tensor `[batch, positions]` of target ids.
        y_pred: logits `[batch, positions, vocabulary_size]`.
        sample_weight: optional float tensor `[batch, positions]`.

    Reference:
        Jelinek et al., 1977, "Perplexity—a measure of the difficulty of
        speech recognition tasks".

    Example:

    >>> import numpy as np
    >>> metric = Perplexity()
    >>> logits = np.log(np.array([[[0.25, 0.75], [0.5, 0.5]]], "float32"))
    >>> metric.update_state([[1, 0]], logits, sample_weight=[[1.0, 0.0]])
    >>> round(float(metric.result()), 4)  # 1 / 0.75
    1.3333
    """

    def __init__(self, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    value_fn = staticmethod(masked_lm_ops.sparse_cross_entropy)

    def result(self):
        return tf.exp(self._mean())


@keras.saving.register_keras_serializable(package="kobjectives")
class MaskedAccuracy(_WeightedMeanOverPositions):
    """Accuracy of the arg-max prediction over weighted (masked) positions.

    The fraction of positions with non-zero weight where `argmax(y_pred)`
    equals `y_true`; unused prediction slots (weight 0) are ignored.

    Args:
        name: Name of the metric.
        dtype: dtype of the metric's state.

    Call arguments (`update_state`):
        y_true: int tensor `[batch, positions]` of target ids.
        y_pred: logits or probabilities `[batch, positions, vocabulary_size]`.
        sample_weight: optional float tensor `[batch, positions]`.

    Example:

    >>> import numpy as np
    >>> metric = MaskedAccuracy()
    >>> logits = np.array([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]], "float32")
    >>> metric.update_state([[1, 1, 0]], logits, sample_weight=[[1., 1., 0.]])
    >>> float(metric.result())
    0.5
    """

    def __init__(self, name="masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    value_fn = staticmethod(masked_lm_ops.correct_predictions)

    def result(self):
        return self._mean()
