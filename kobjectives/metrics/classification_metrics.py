"""Metrics of sequence classification: the confusion matrix with macro-F1
and a per-class report (`ClassificationReport`), and the whole-set Pearson
correlation of a regression head (`PearsonCorrelation`, STS-B)."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops import classification as classification_ops


@keras.saving.register_keras_serializable(package="kobjectives")
class ClassificationReport(keras.metrics.Metric):
    """Accumulates a weighted confusion matrix; its result is macro-F1.

    Every `update_state` adds the batch's `[num_classes, num_classes]`
    confusion matrix (`kobjectives.ops.confusion_matrix`: rows true, columns
    predicted) to a variable with `aggregation="sum"`, so under
    `tf.distribute` the matrix, and everything read from it, is exactly the
    one of the global data. `result()` is macro-F1 over the classes seen
    (scikit-learn's `f1_score(average="macro")`); `report()` gives the whole
    picture as plain Python values. `keras.metrics.F1Score` takes one-hot
    labels and thresholded probabilities and keeps no matrix, so it is not
    used here.

    Args:
        num_classes: int >= 2.
        class_names: optional sequence of `num_classes` distinct strings,
            the keys of the report's `classes`; defaults to `"0"`, `"1"`, ...
        name: Name of the metric. Defaults to `"macro_f1"`.
        dtype: dtype of the result.

    Call arguments (`update_state`):
        y_true: int `[batch]` (or `[batch, 1]`) class ids.
        y_pred: float logits or probabilities `[batch, num_classes]` (their
            argmax is the prediction), or int predicted ids `[batch]`.
        sample_weight: optional float `[batch]`, >= 0.

    Example:

    >>> metric = ClassificationReport(3, class_names=["neg", "neu", "pos"])
    >>> metric.update_state([0, 1, 1, 2], [[2.0, 0.0, 0.0], [0.0, 0.0, 1.0],
    ...                                    [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    >>> round(float(metric.result()), 4)  # macro-F1
    0.7778
    >>> report = metric.report()
    >>> report["accuracy"], report["classes"]["neu"]
    (0.75, {'precision': 1.0, 'recall': 0.5, 'f1': 0.6667, 'support': 2.0})
    >>> report["confusion_matrix"]
    [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    """

    def __init__(self, num_classes, class_names=None, name="macro_f1", dtype="float32", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or \
                num_classes < 2:
            raise ValueError(
                f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}"
            )
        self.num_classes = int(num_classes)
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != self.num_classes or len(set(class_names)) != len(class_names):
                raise ValueError(
                    f"`class_names` must be {self.num_classes} distinct names, one per class. "
                    f"Received: class_names={class_names!r}"
                )
        self.class_names = class_names
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            aggregation="sum",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the batch's weighted confusion matrix."""
        self.confusion.assign_add(
            classification_ops.confusion_matrix(y_true, y_pred, self.num_classes, sample_weight)
        )

    def result(self):
        return classification_ops.classification_scores(self.confusion)["macro_f1"]

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def report(self, digits=4):
        """The scores of everything seen since the last reset, as a plain dict.

        Args:
            digits: int, round the scores (not the counts) to this many
                decimals; None keeps them unrounded.

        Returns:
            `{"accuracy", "macro_f1", "classes": {name: {"precision",
            "recall", "f1", "support"}}, "confusion_matrix": [[...]]}`:
            Python floats; `support` and the matrix hold summed weights
            (counts without sample weights), the matrix rows true, columns
            predicted classes.
        """
        confusion = np.asarray(keras.ops.convert_to_numpy(self.confusion), np.float64)
        scores = {
            k: np.asarray(v, np.float64)
            for k, v in classification_ops.classification_scores(confusion).items()
        }

        def score(value):
            value = float(value)
            return value if digits is None else round(value, digits)

        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {
            "accuracy": score(scores["accuracy"]),
            "macro_f1": score(scores["macro_f1"]),
            "classes": {
                name: {
                    "precision": score(scores["precision"][i]),
                    "recall": score(scores["recall"][i]),
                    "f1": score(scores["f1"][i]),
                    "support": float(scores["support"][i]),
                }
                for i, name in enumerate(names)
            },
            "confusion_matrix": confusion.tolist(),
        }

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package="kobjectives")
class PearsonCorrelation(keras.metrics.Metric):
    """Pearson's correlation of predictions and targets over the whole set.

    Accumulates the weighted sums of `kobjectives.ops.correlation_sums` in a
    variable with `aggregation="sum"` and reads the correlation from their
    total (`kobjectives.ops.pearson_from_sums`), so the value is the
    correlation of everything seen since the last reset, exact under
    `tf.distribute`: what STS-B reports. The sums are float64 (the
    metric's `dtype`); pass `dtype="float32"` on TPUs. `keras.metrics.PearsonCorrelation`
    averages per-batch (per-row by default) correlations instead. All
    values are pooled: use it on one score per example.

    Args:
        name: Name of the metric. Defaults to `"pearson"`.
        dtype: dtype of the sums and the result. Defaults to float64.

    Call arguments (`update_state`):
        y_true: float `[batch]` (or `[batch, 1]`), the gold scores.
        y_pred: float `[batch, 1]` or `[batch]`, the predicted scores.
        sample_weight: optional float `[batch]`, >= 0.

    Example:

    >>> metric = PearsonCorrelation()
    >>> metric.update_state([1.0, 3.0], [[1.0], [2.0]])
    >>> metric.update_state([2.0], [[4.0]])
    >>> round(float(metric.result()), 4)
    0.3273
    """

    def __init__(self, name="pearson", dtype="float64", **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.sums = self.add_variable(shape=(6,), initializer="zeros", aggregation="sum",
                                      name="sums")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the batch's weighted sums."""
        self.sums.assign_add(
            classification_ops.correlation_sums(y_pred, y_true, sample_weight, dtype=self.dtype))

    def result(self):
        return classification_ops.pearson_from_sums(self.sums)

    def reset_state(self):
        self.sums.assign(tf.zeros_like(self.sums))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
