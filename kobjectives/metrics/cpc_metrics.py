"""Held-out statistics of Contrastive Predictive Coding: the accuracy per
offset next to the chance baseline of its candidates."""

import numpy as np
import tensorflow as tf


def cpc_statistics(model, dataset):
    """Per-offset held-out CPC accuracy and the chance baseline.

    The chance accuracy of a pair is `1 / num_candidates` (a uniform guess
    among the positive and its negatives) and the chance loss
    `log(num_candidates)`; like the objective's `cpc_accuracy`, each is
    averaged over the counted pairs of an offset, then over the offsets
    that have pairs.

    Args:
        model: a CPC objective: `model(x, training=False)` gives its outputs
            and `model.cpc_terms(x, outputs)` the per-pair terms with
            `correct`, `weights` and `num_candidates`, each
            `[batch, length, max_offset]` (`kobjectives.ops.cpc_info_nce`;
            e.g. `kobjectives.objectives.ContrastivePredictiveCoding`).
        dataset: yields the objective's `x` batches.

    Returns:
        dict with `accuracy_per_offset` (a list, `None` for an offset without
        pairs), `accuracy`, `chance_accuracy`, `chance_loss`.

    Raises:
        ValueError: the data holds no pair to score.

    Reference:
        van den Oord et al., 2018, "Representation Learning with
        Contrastive Predictive Coding", https://arxiv.org/abs/1807.03748

    Example:

    >>> import collections
    >>> Terms = collections.namedtuple("Terms", "correct weights num_candidates")
    >>> class Guess:  # right on every pair at offset 1, never at offset 2; 4 candidates
    ...     def __call__(self, x, training=False):
    ...         return x
    ...     def cpc_terms(self, x, outputs):
    ...         ones = tf.ones([1, 3, 2])
    ...         return Terms(ones * [1.0, 0.0], ones, ones * 4.0)
    >>> stats = cpc_statistics(Guess(), [{"token_ids": tf.zeros([1, 3], tf.int32)}])
    >>> stats["accuracy_per_offset"], stats["accuracy"], stats["chance_accuracy"]
    ([1.0, 0.0], 0.5, 0.25)
    """

    @tf.function
    def terms(x):
        outputs = model(x, training=False)
        t = model.cpc_terms(x, outputs)
        weights = t.weights
        candidates = tf.maximum(t.num_candidates, 1.0)
        return tf.stack([
            tf.reduce_sum(t.correct, axis=[0, 1]),
            tf.reduce_sum(weights, axis=[0, 1]),
            tf.reduce_sum(weights / candidates, axis=[0, 1]),
            tf.reduce_sum(weights * tf.math.log(candidates), axis=[0, 1]),
        ])

    sums = None
    for x in dataset:
        batch = terms(x).numpy().astype(np.float64)
        sums = batch if sums is None else sums + batch
    if sums is None or not (sums[1] > 0).any():
        raise ValueError("The held-out data has no pair to score (no batch, or all padding).")
    correct, count, chance, chance_loss = sums
    present = count > 0

    def mean(values):
        return float((values[present] / count[present]).mean())

    return {
        "accuracy_per_offset": [float(c / n) if n else None for c, n in zip(correct, count)],
        "accuracy": mean(correct),
        "chance_accuracy": mean(chance),
        "chance_loss": mean(chance_loss),
    }
