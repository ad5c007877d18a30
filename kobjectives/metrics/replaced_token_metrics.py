"""Metrics of replaced-token detection (ELECTRA): accuracy, precision, recall."""

import keras
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
