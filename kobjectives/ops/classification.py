"""Sequence classification math: the per-example losses of the three modes,
the confusion matrix and its scores, and a streaming Pearson correlation.

Losses (float32 `[batch]`, from logits in any float dtype, XLA-safe):

- `softmax_cross_entropy`: single-label, with label smoothing. With
  `label_smoothing=0` its values are those of
  `kobjectives.ops.sparse_cross_entropy` (the masked-LM and NSP / SOP
  loss), and an ignored (weight-0) invalid label gets a zero gradient, not
  a NaN one, under XLA too.
- `true_class_weights`: the per-class weights of single-label training as
  per-example weights (the weight of each example's true class).
- `multi_label_cross_entropy`: sigmoid binary cross-entropy over multi-hot
  labels, averaged over the classes, with optional positive weights.
- `squared_error`: regression (e.g. STS-B scores).

Reduce them with `kobjectives.ops.global_weighted_mean(values, weights)`:
`sum_i w_i l_i / sum_i w_i` over the global batch. With class weights the
weight of an example is `sample_weight_i * class_weights[y_i]`, so the mean
divides by the summed weights, as PyTorch's `CrossEntropyLoss(weight=...,
reduction="mean")` does (Keras' `class_weight` divides by the count instead).

Invalid labels never give a finite, wrong loss: class ids outside
`[0, num_classes)` and multi-hot labels outside `[0, 1]` raise where their
values are known and give NaN under XLA (`kobjectives.ops.labels`).

Evaluation (`confusion_matrix`, `classification_scores`, `correlation_sums`,
`pearson_from_sums`) works on sums that add over batches and replicas, which
`kobjectives.metrics.ClassificationReport` and
`kobjectives.metrics.PearsonCorrelation` accumulate.
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import known_values
from kobjectives.ops.labels import poison_invalid_labels
from kobjectives.ops.replaced_token_detection import sigmoid_cross_entropy


def _squeeze_last_unit_axis(labels, target_rank):
    """`labels` `[..., 1]` as `[...]` when that makes its rank `target_rank`."""
    rank = labels.shape.rank
    if rank is not None and rank == target_rank + 1 and labels.shape[-1] == 1:
        return tf.squeeze(labels, -1)
    return labels


def _check_class_ids_shape(labels, logits):
    expected = logits.shape[:-1]
    if labels.shape.rank is not None and expected.rank is not None and (
        labels.shape.rank != expected.rank or not labels.shape.is_compatible_with(expected)
    ):
        raise ValueError(
            f"`labels` must be class ids of shape {expected} (one id per example) for "
            f"logits of shape {logits.shape}. Received labels of shape {labels.shape}"
            + (": one-hot labels? Pass their argmax." if labels.shape == logits.shape else ".")
        )


def softmax_cross_entropy(labels, logits, label_smoothing=0.0):
    """Per-example softmax cross-entropy with label smoothing, in float32.

    The target is `(1 - label_smoothing) * one_hot(label) + label_smoothing /
    num_classes` (Szegedy et al.; Keras' `CategoricalCrossentropy(
    label_smoothing=...)`), so the loss is

        (1 - s) * -log p[label] + s * mean_c(-log p[c]),   p = softmax(logits)

    computed from `log_softmax` of float32 logits (stable for any logits,
    bfloat16 / float16 included).

    Args:
        labels: int tensor `[...]` (or `[..., 1]`) of class ids in
            `[0, num_classes)`; float tensors must hold whole numbers.
        logits: float tensor `[..., num_classes]`.
        label_smoothing: float in `[0, 1)`. Defaults to 0 (plain
            cross-entropy).

    Returns:
        float32 tensor `[...]`. An invalid label gives NaN under XLA (see
        `kobjectives.ops.labels`), with a zero gradient: reduced with weight
        0 it leaves the loss and the gradients finite.

    Raises:
        ValueError: labels not shaped `logits.shape[:-1]` (e.g. one-hot),
            known labels out of range, or `label_smoothing` outside `[0, 1)`.

    Reference:
        Szegedy et al., 2016, "Rethinking the Inception Architecture for
        Computer Vision" (label smoothing), https://arxiv.org/abs/1512.00567

    Example:

    >>> logits = [[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    >>> softmax_cross_entropy([0, 2], logits).numpy().round(4)
    array([0.2395, 1.0986], dtype=float32)
    >>> softmax_cross_entropy([0, 2], logits, label_smoothing=0.3).numpy().round(4)
    array([0.6395, 1.0986], dtype=float32)
    """
    label_smoothing = check_label_smoothing(label_smoothing)
    logits = tf.cast(logits, tf.float32)
    labels = _squeeze_last_unit_axis(tf.convert_to_tensor(labels), logits.shape.rank - 1)
    _check_class_ids_shape(labels, logits)
    num_classes = logits.shape[-1]
    if num_classes is None:
        raise ValueError(f"`logits` need a static number of classes. Received shape {logits.shape}.")
    # In range for the kernel: under XLA an out-of-range id gives a NaN
    # gradient row even where the example's weight is 0. Its loss is NaN
    # instead (`poison_invalid_labels`), never the clipped class's.
    ids = tf.clip_by_value(check_labels(labels, num_classes), 0, num_classes - 1)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits)
    if label_smoothing:
        uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=-1)
        losses = (1.0 - label_smoothing) * losses + label_smoothing * uniform
    return poison_invalid_labels(losses, labels, num_classes)


def true_class_weights(labels, class_weights):
    """The weight of each example's true class: `class_weights[labels]`.

    Multiply it into the sample weights of `softmax_cross_entropy` and reduce
    with `global_weighted_mean`: the mean then divides by the summed weights
    of the batch's true classes (PyTorch's `weight=` convention). An
    out-of-range label reads a clipped index here; its loss is NaN already.

    Args:
        labels: int tensor `[...]` of class ids.
        class_weights: float sequence or tensor `[num_classes]`, >= 0.

    Returns:
        float32 tensor `[...]`.

    Example:

    >>> true_class_weights([0, 2, 2], [1.0, 2.0, 0.5]).numpy()
    array([1. , 0.5, 0.5], dtype=float32)
    """
    class_weights = tf.cast(tf.convert_to_tensor(class_weights), tf.float32)
    labels = tf.convert_to_tensor(labels)
    num_classes = tf.shape(class_weights)[0]
    ids = tf.clip_by_value(tf.cast(labels, tf.int32), 0, num_classes - 1)
    return tf.gather(class_weights, ids)


def multi_label_cross_entropy(labels, logits, label_smoothing=0.0, positive_weights=None):
    """Per-example sigmoid binary cross-entropy, averaged over the classes.

    For logit `z` and target `t` of class `c` (after smoothing,
    `t = y * (1 - s) + s / 2`, as Keras' `BinaryCrossentropy`):

        loss_c = -(q_c * t * log sigmoid(z) + (1 - t) * log(1 - sigmoid(z)))

    with `q_c = positive_weights[c]` (1 without them; PyTorch's
    `BCEWithLogitsLoss(pos_weight=...)`: above 1 raises recall on rare
    classes). Computed stably from float32 logits
    (`tf.nn.weighted_cross_entropy_with_logits`).

    Args:
        labels: float or int tensor `[batch, num_classes]`, multi-hot (1 for
            each class the example has) or soft targets in `[0, 1]`.
        logits: float tensor `[batch, num_classes]`.
        label_smoothing: float in `[0, 1)`. Defaults to 0.
        positive_weights: optional float sequence `[num_classes]`, >= 0.

    Returns:
        float32 tensor `[batch]`: the mean of `loss_c` over the classes. An
        example with a label outside `[0, 1]` gets NaN (under XLA; known
        values raise).

    Raises:
        ValueError: labels of another shape than the logits, known labels
            outside `[0, 1]`, or `label_smoothing` outside `[0, 1)`.

    Example:

    >>> logits = [[3.0, -1.0], [0.0, 0.0]]
    >>> multi_label_cross_entropy([[1, 0], [1, 1]], logits).numpy().round(4)
    array([0.1809, 0.6931], dtype=float32)
    >>> multi_label_cross_entropy([[1, 0], [1, 1]], logits,
    ...                           positive_weights=[1.0, 3.0]).numpy().round(4)
    array([0.1809, 1.3863], dtype=float32)
    """
    label_smoothing = check_label_smoothing(label_smoothing)
    logits = tf.cast(logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank is not None and logits.shape.rank is not None and (
        labels.shape.rank != logits.shape.rank or not labels.shape.is_compatible_with(logits.shape)
    ):
        raise ValueError(
            f"Multi-label `labels` must be multi-hot of the logits' shape {logits.shape} "
            f"([batch, num_classes], 1 for each class an example has). Received shape "
            f"{labels.shape}."
        )
    labels = tf.cast(labels, tf.float32)
    known = known_values(labels)
    if known is not None and known.size and not np.all((known >= 0) & (known <= 1)):
        bad = known[~((known >= 0) & (known <= 1))].ravel()[0]
        raise ValueError(
            f"Multi-label `labels` must lie in [0, 1] (multi-hot, or soft targets). "
            f"Received {bad:g}."
        )
    targets = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if positive_weights is None:
        losses = sigmoid_cross_entropy(targets, logits)
    else:
        losses = tf.nn.weighted_cross_entropy_with_logits(
            targets, logits, tf.cast(positive_weights, tf.float32)
        )
    losses = tf.reduce_mean(losses, axis=-1)
    valid = tf.reduce_all((labels >= 0.0) & (labels <= 1.0), axis=-1)
    return tf.where(valid, losses, tf.constant(float("nan")))


def squared_error(targets, predictions):
    """Per-example squared error of a regression head, in float32.

    Args:
        targets: float tensor `[batch]` or `[batch, outputs]` (e.g. STS-B
            similarity scores).
        predictions: float tensor `[batch, outputs]` (`[batch, 1]` for one
            score) or `[batch]`.

    Returns:
        float32 tensor `[batch]`: the mean over the outputs of
        `(predictions - targets) ** 2`.

    Raises:
        ValueError: shapes that do not match.

    Example:

    >>> squared_error([1.0, 3.0], [[1.5], [1.0]]).numpy()
    array([0.25, 4.  ], dtype=float32)
    """
    predictions = tf.cast(predictions, tf.float32)
    targets = tf.cast(targets, tf.float32)
    if predictions.shape.rank == 1:
        predictions = predictions[:, None]
    if targets.shape.rank == 1:
        targets = targets[:, None]
    if not targets.shape.is_compatible_with(predictions.shape):
        raise ValueError(
            f"Regression targets of shape {targets.shape} do not match the predictions' "
            f"shape {predictions.shape}: give one score per example ([batch]) for one "
            "output, or [batch, outputs]."
        )
    return tf.reduce_mean(tf.square(predictions - targets), axis=-1)


# -- evaluation ------------------------------------------------------------------------


def _predicted_classes(predictions, num_classes):
    """Class ids from logits `[batch, num_classes]` (argmax) or ids `[batch]`."""
    predictions = tf.convert_to_tensor(predictions)
    if predictions.shape.rank == 2 and predictions.shape[-1] == num_classes and (
        predictions.dtype.is_floating
    ):
        return tf.argmax(predictions, axis=-1, output_type=tf.int32)
    return tf.cast(predictions, tf.int32)


def confusion_matrix(labels, predictions, num_classes, sample_weight=None):
    """The weighted confusion matrix of a batch, in float32.

    Entry `[i, j]` sums the weights of the examples of true class `i`
    predicted as `j` (scikit-learn's layout). Sums of these matrices over
    batches and replicas give the matrix of the whole set.

    Args:
        labels: int tensor `[batch]` (or `[batch, 1]`) of true class ids.
        predictions: float logits / probabilities `[batch, num_classes]`
            (their argmax is predicted) or int predicted ids `[batch]`.
        num_classes: int >= 1.
        sample_weight: optional float `[batch]`, >= 0; None weighs 1.

    Returns:
        float32 `[num_classes, num_classes]`. A true or predicted id outside
        `[0, num_classes)` makes the matrix NaN (known labels raise).

    Example:

    >>> confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3).numpy()
    array([[1., 0., 0.],
           [0., 1., 1.],
           [0., 0., 1.]], dtype=float32)
    """
    labels = _squeeze_last_unit_axis(tf.convert_to_tensor(labels), 1)
    labels = tf.reshape(labels, [-1])
    predicted = tf.reshape(_predicted_classes(predictions, num_classes), [-1])
    ids = check_labels(labels, num_classes)
    weights = tf.ones_like(labels, tf.float32) if sample_weight is None else tf.reshape(
        tf.cast(sample_weight, tf.float32), [-1]
    )
    weights = poison_invalid_labels(weights, labels, num_classes)
    weights = poison_invalid_labels(weights, predicted, num_classes)
    true_one_hot = tf.one_hot(ids, num_classes, dtype=tf.float32)
    predicted_one_hot = tf.one_hot(predicted, num_classes, dtype=tf.float32)
    # A weight-0 example adds exactly 0, whatever else it holds.
    predicted_one_hot = tf.where(
        tf.equal(weights, 0.0)[:, None], 0.0, predicted_one_hot * weights[:, None]
    )
    return tf.matmul(true_one_hot, predicted_one_hot, transpose_a=True)


def classification_scores(confusion):
    """Accuracy, per-class precision / recall / F1 / support, and macro-F1
    from a confusion matrix.

    Precision, recall or F1 that would divide by zero are 0 (scikit-learn's
    `zero_division=0`). Macro-F1 averages the F1 of the classes that occur
    (as a true or a predicted class), which equals scikit-learn's
    `f1_score(y_true, y_pred, average="macro")`, whose label set is the
    classes present; a class never seen does not pull it down.

    Args:
        confusion: float `[num_classes, num_classes]`, rows true, columns
            predicted (`confusion_matrix`).

    Returns:
        A dict of float32 tensors: `accuracy`, `macro_f1` (scalars),
        `precision`, `recall`, `f1`, `support` (`[num_classes]`, support the
        summed weight of the true class).

    Example:

    >>> scores = classification_scores(confusion_matrix([0, 1, 1, 2], [0, 2, 1, 2], 3))
    >>> scores["f1"].numpy().round(4)
    array([1.    , 0.6667, 0.6667], dtype=float32)
    >>> round(float(scores["macro_f1"]), 4), float(scores["accuracy"])
    (0.7778, 0.75)
    """
    confusion = tf.cast(confusion, tf.float32)
    true_positive = tf.linalg.diag_part(confusion)
    support = tf.reduce_sum(confusion, axis=1)
    predicted = tf.reduce_sum(confusion, axis=0)
    precision = tf.math.divide_no_nan(true_positive, predicted)
    recall = tf.math.divide_no_nan(true_positive, support)
    f1 = tf.math.divide_no_nan(2.0 * true_positive, support + predicted)
    present = tf.cast((support + predicted) > 0.0, tf.float32)
    return {
        "accuracy": tf.math.divide_no_nan(tf.reduce_sum(true_positive), tf.reduce_sum(support)),
        "macro_f1": tf.math.divide_no_nan(tf.reduce_sum(f1 * present), tf.reduce_sum(present)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
    }


def correlation_sums(predictions, targets, sample_weight=None, dtype="float64"):
    """The weighted sums behind a Pearson correlation.

    `[sum w, sum w x, sum w y, sum w x^2, sum w y^2, sum w x y]` for
    `x = predictions`, `y = targets`: they add over batches and replicas, so
    `pearson_from_sums` of their total is the correlation of the whole set
    (Keras' `PearsonCorrelation` instead averages per-batch correlations).
    They are summed in float64 by default: the correlation subtracts
    products of these sums, which in float32 loses the variance of scores
    that vary little around their mean (an untrained head's). Pass
    `dtype="float32"` where float64 is not available (TPU).

    Args:
        predictions: float `[n]` or `[n, 1]`.
        targets: float, the same number of values.
        sample_weight: optional float `[n]`, >= 0; None weighs 1. An entry
            of weight 0 adds nothing, whatever its values.
        dtype: the dtype of the sums. Defaults to float64.

    Returns:
        `[6]` of `dtype`.

    Example:

    >>> correlation_sums([1.0, 2.0], [2.0, 4.0]).numpy()
    array([ 2.,  3.,  6.,  5., 20., 10.])
    """
    x = tf.reshape(tf.cast(predictions, dtype), [-1])
    y = tf.reshape(tf.cast(targets, dtype), [-1])
    w = tf.ones_like(x) if sample_weight is None else tf.reshape(tf.cast(sample_weight, dtype), [-1])
    ignored = tf.equal(w, 0.0)
    x = tf.where(ignored, tf.zeros_like(x), x)
    y = tf.where(ignored, tf.zeros_like(y), y)
    return tf.stack([tf.reduce_sum(v) for v in (w, w * x, w * y, w * x * x, w * y * y, w * x * y)])


def pearson_from_sums(sums):
    """Pearson's correlation from `correlation_sums` (summed over batches).

        r = (n Sxy - Sx Sy) / sqrt((n Sxx - Sx^2) (n Syy - Sy^2))

    A constant input (zero variance) or no data gives 0, not NaN. For the
    whole-set correlation of values at hand,
    `kobjectives.ops.embedding_metrics.pearson` centres them first.

    Args:
        sums: float `[6]`, `correlation_sums` or their sum.

    Returns:
        A scalar in `[-1, 1]`, of the sums' dtype.

    Example:

    >>> round(float(pearson_from_sums(correlation_sums([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]))), 4)
    0.3273
    """
    sums = tf.convert_to_tensor(sums)
    n, sx, sy, sxx, syy, sxy = tf.unstack(sums)
    covariance = n * sxy - sx * sy
    zero = tf.zeros_like(n)
    variance_x = tf.maximum(n * sxx - sx * sx, zero)
    variance_y = tf.maximum(n * syy - sy * sy, zero)
    r = tf.math.divide_no_nan(covariance, tf.sqrt(variance_x * variance_y))
    return tf.clip_by_value(r, -1.0, 1.0)


def check_label_smoothing(label_smoothing):
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, (int, float, np.floating, np.integer)
    ) or not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(
            "`label_smoothing` must be a float in [0, 1) (0 turns it off; 0.1 is "
            f"usual). Received: label_smoothing={label_smoothing!r}"
        )
    return float(label_smoothing)
