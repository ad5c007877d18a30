"""Metrics of causal language modeling from per-token losses, so that no
`[batch, length, vocabulary]` logits are needed to report them: the
`TokenPerplexity` and `TokenAccuracy` metrics, and `causal_lm_statistics`,
a run's token-level held-out pass next to the unigram baseline."""

import math

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops.causal_lm import causal_lm_targets


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


def causal_lm_statistics(model, dataset, unigram_log_probs):
    """Token-level held-out statistics of a causal LM and the unigram baselines.

    Every next-token target of `dataset` (`kobjectives.ops.causal_lm_targets`:
    reset at document boundaries, padding excluded) is scored by the model
    and by the unigram model; the means run over the targets (not over
    batches), summed in float64.

    Args:
        model: a causal-LM objective: `model(x, training=False)` gives the
            hidden states and `model.token_losses(hidden, labels)` the
            per-position `(losses, correct)` (e.g.
            `kobjectives.objectives.CausalLanguageModel`).
        dataset: yields packed `x` batches `{"token_ids", "padding_mask",
            "segment_ids"}` `[batch, length]` (`kobjectives.data.pipelines.
            causal_lm_dataset`).
        unigram_log_probs: float array `[vocabulary_size]`, the unigram
            model of the training targets
            (`kobjectives.metrics.baselines.unigram_log_probs`); its most
            probable id is the constant-prediction baseline.

    Returns:
        dict with `tokens` (targets scored), `loss` (mean cross-entropy,
        nats), `perplexity`, `next_token_accuracy`, `unigram_perplexity`
        and `unigram_accuracy` (always the most probable unigram token).

    Raises:
        ValueError: the data holds no next-token target.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> class Uniform:  # predicts each of 4 tokens with probability 1/4, argmax id 0
    ...     def __call__(self, x, training=False):
    ...         return tf.zeros(tf.shape(x["token_ids"]))
    ...     def token_losses(self, hidden, labels):
    ...         losses = tf.fill(tf.shape(labels), float(np.log(4.0)))
    ...         return losses, tf.cast(tf.equal(labels, 0), tf.float32)
    >>> x = {"token_ids": tf.constant([[2, 1, 1, 3]]), "padding_mask": tf.constant([[1, 1, 1, 1]]),
    ...      "segment_ids": tf.constant([[0, 0, 0, 0]])}
    >>> stats = causal_lm_statistics(Uniform(), [x], np.log([0.1, 0.6, 0.1, 0.2]))
    >>> stats["tokens"], round(stats["perplexity"], 4), round(stats["unigram_accuracy"], 4)
    (3, 4.0, 0.6667)
    """
    log_probs = tf.constant(unigram_log_probs, tf.float32)
    most_frequent = int(np.argmax(unigram_log_probs))

    @tf.function
    def sums(x):
        hidden = model(x, training=False)
        labels, weights = causal_lm_targets(x["token_ids"], x["padding_mask"], x["segment_ids"])
        losses, correct = model.token_losses(hidden, labels)
        unigram_losses = -tf.gather(log_probs, labels)
        hits = tf.cast(tf.equal(labels, most_frequent), tf.float32)
        return tf.stack([
            tf.reduce_sum(weights),
            tf.reduce_sum(weights * losses),
            tf.reduce_sum(weights * correct),
            tf.reduce_sum(weights * unigram_losses),
            tf.reduce_sum(weights * hits),
        ])

    total = np.zeros(5, np.float64)
    for x in dataset:
        total += sums(x).numpy().astype(np.float64)
    count, loss, correct, unigram_loss, hits = total
    if count == 0:
        raise ValueError("The held-out data has no next-token target to score.")
    return {
        "tokens": int(count),
        "loss": float(loss / count),
        "perplexity": math.exp(loss / count),
        "next_token_accuracy": float(correct / count),
        "unigram_perplexity": math.exp(unigram_loss / count),
        "unigram_accuracy": float(hits / count),
    }
