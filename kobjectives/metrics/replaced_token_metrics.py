"""Metrics of replaced-token detection (ELECTRA): accuracy, precision,
recall, and the threshold-free held-out statistics (`rtd_statistics`)."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops import replaced_token_detection as rtd_ops


class _RTDConfusionMetric(keras.metrics.Metric):
    """Accumulates the weighted confusion counts of `ops.rtd_confusion`.

    The counts are metric variables, which Keras sums over replicas when the
    result is read, so under `tf.distribute` the value is the global one.
    """

    def __init__(self, name, threshold=0.0, dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.threshold = float(threshold)
        self.counts = self.add_variable(shape=(4,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch.

        Args:
            y_true: `[batch, length]`, 1 for replaced, 0 for original tokens.
            y_pred: float `[batch, length]`, the discriminator's logits.
            sample_weight: optional `[batch, length]`, e.g. the padding mask.
        """
        self.counts.assign_add(
            rtd_ops.rtd_confusion(y_true, y_pred, sample_weight, self.threshold)
        )

    def _counts(self):
        tp, fp, fn, tn = tf.unstack(tf.convert_to_tensor(self.counts))
        return tp, fp, fn, tn

    def confusion_counts(self):
        """The weighted counts `[tp, fp, fn, tn]` seen since the last reset
        (summed over replicas), as Python floats; *replaced* is positive."""
        return [float(v) for v in np.asarray(self.counts.numpy(), np.float64)]

    def reset_state(self):
        self.counts.assign(tf.zeros([4]))

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="kobjectives")
class RTDAccuracy(_RTDConfusionMetric):
    """Replaced-token detection accuracy over weighted (non-padding) tokens.

    The fraction of tokens whose original/replaced call (logit above
    `threshold`) is right, weighted by `sample_weight` (the padding mask),
    over everything seen since the last reset. Compare it with the
    all-"original" baseline, `1 - replaced fraction`.

    Args:
        name: Name of the metric.
        threshold: float, the logit above which a token is called replaced.
            Defaults to 0.0 (probability 1/2).

    Call arguments (`update_state`):
        y_true: `[batch, length]`, 1 for replaced, 0 for original tokens.
        y_pred: float `[batch, length]`, logits.
        sample_weight: optional `[batch, length]`.

    Reference:
        Clark et al., 2020, "ELECTRA: Pre-training Text Encoders as
        Discriminators Rather Than Generators", https://arxiv.org/abs/2003.10555

    Example:

    >>> metric = RTDAccuracy()
    >>> metric.update_state([[1, 0, 0, 1]], [[2.0, -1.0, 0.5, -3.0]],
    ...                     sample_weight=[[1, 1, 1, 0]])
    >>> round(float(metric.result()), 4)  # right on 2 of 3 real tokens
    0.6667
    >>> metric.confusion_counts()  # [tp, fp, fn, tn]
    [1.0, 1.0, 0.0, 1.0]
    """

    def __init__(self, name="rtd_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        tp, fp, fn, tn = self._counts()
        return tf.math.divide_no_nan(tp + tn, tp + fp + fn + tn)


@keras.saving.register_keras_serializable(package="kobjectives")
class ReplacedPrecision(_RTDConfusionMetric):
    """Precision of the *replaced* calls: `TP / (TP + FP)` (0 when none).

    Args:
        name: Name of the metric.
        threshold: float, the logit above which a token is called replaced.

    Call arguments (`update_state`): as `RTDAccuracy`.

    Reference:
        Clark et al., 2020, ELECTRA, https://arxiv.org/abs/2003.10555

    Example:

    >>> metric = ReplacedPrecision()
    >>> metric.update_state([[1, 0, 0]], [[2.0, 1.0, -1.0]])
    >>> float(metric.result())  # 1 of 2 replaced calls is right
    0.5
    """

    def __init__(self, name="replaced_precision", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        tp, fp, _, _ = self._counts()
        return tf.math.divide_no_nan(tp, tp + fp)


@keras.saving.register_keras_serializable(package="kobjectives")
class ReplacedRecall(_RTDConfusionMetric):
    """Recall of the replaced tokens: `TP / (TP + FN)` (0 when none).

    Args:
        name: Name of the metric.
        threshold: float, the logit above which a token is called replaced.

    Call arguments (`update_state`): as `RTDAccuracy`.

    Reference:
        Clark et al., 2020, ELECTRA, https://arxiv.org/abs/2003.10555

    Example:

    >>> metric = ReplacedRecall()
    >>> metric.update_state([[1, 1, 0]], [[2.0, -1.0, 3.0]])
    >>> float(metric.result())  # 1 of 2 replaced tokens found
    0.5
    """

    def __init__(self, name="replaced_recall", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        tp, _, fn, _ = self._counts()
        return tf.math.divide_no_nan(tp, tp + fn)


def rtd_statistics(model, dataset):
    """Threshold-free held-out statistics of an ELECTRA discriminator.

    Runs the objective (generator samples, discriminator logits) over the
    `x` batches of `dataset` and scores every non-padding token.

    Args:
        model: an ELECTRA objective: `model(x, training=False)` gives
            `rtd_logits` and `rtd_labels` `[batch, length]` (e.g.
            `kobjectives.objectives.ElectraPretrainer`; each call draws new
            generator samples).
        dataset: yields `x` batches with `padding_mask` `[batch, length]`.

    Returns:
        dict with `rtd_auc`, the ROC AUC of the replaced logit (the
        probability that a replaced token scores above an original one; 0.5
        is chance, ties count half), `rtd_loss` (the discriminator's mean
        sigmoid cross-entropy), `prior_rtd_loss`, the loss of the best
        constant prediction (the entropy of the replaced fraction), and
        `replaced_fraction`.

    Raises:
        ValueError: the tokens are all original or all replaced (no AUC).

    Reference:
        Clark et al., 2020, ELECTRA, https://arxiv.org/abs/2003.10555;
        Hanley & McNeil, 1982 (the AUC as the Mann-Whitney statistic).

    Example:

    >>> class Fixed:  # two replaced tokens scored 2 and 0, two original 1 and -1
    ...     def __call__(self, x, training=False):
    ...         return {"rtd_logits": tf.constant([[2.0, 0.0, 1.0, -1.0]]),
    ...                 "rtd_labels": tf.constant([[1.0, 1.0, 0.0, 0.0]])}
    >>> stats = rtd_statistics(Fixed(), [{"padding_mask": tf.constant([[1, 1, 1, 1]])}])
    >>> stats["rtd_auc"], stats["replaced_fraction"]  # 3 of the 4 pairs ranked right
    (0.75, 0.5)
    """

    @tf.function
    def run(x):
        outputs = model(x, training=False)
        return outputs["rtd_logits"], outputs["rtd_labels"]

    logits, labels = [], []
    for x in dataset:
        batch_logits, batch_labels = run(x)
        real = np.asarray(x["padding_mask"]).astype(bool)
        logits.append(batch_logits.numpy()[real])
        labels.append(batch_labels.numpy()[real] > 0.5)
    logits = np.concatenate(logits).astype(np.float64)
    labels = np.concatenate(labels)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("The validation tokens are all original or all replaced; no AUC.")
    order = np.argsort(logits, kind="mergesort")
    ranks = np.empty(len(logits))
    sorted_logits = logits[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_logits, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    auc = (ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives)
    p = positives / len(labels)
    loss = np.logaddexp(0.0, -logits) * labels + np.logaddexp(0.0, logits) * ~labels
    return {
        "rtd_auc": float(auc),
        "rtd_loss": float(loss.mean()),
        "prior_rtd_loss": float(-(p * np.log(p) + (1 - p) * np.log(1 - p))),
        "replaced_fraction": float(p),
    }
