"""`kobjectives.ops.classification`: the losses of the three modes against
NumPy, their gradients, XLA, invalid labels; the confusion matrix and its
scores against scikit-learn's definitions; the streaming Pearson sums."""

import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.ops.embedding_metrics import pearson

RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(6, 4)) * 3).astype("float32")
IDS = np.array([0, 3, 1, 1, 2, 0])


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_softmax_cross_entropy_is_cross_entropy_with_smoothed_one_hot(smoothing):
    logp = log_softmax(LOGITS.astype("float64"))
    target = np.eye(4)[IDS] * (1 - smoothing) + smoothing / 4
    expected = -(target * logp).sum(-1)
    logits = tf.constant(LOGITS)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        losses = ops.softmax_cross_entropy(IDS, logits, label_smoothing=smoothing)
        total = tf.reduce_sum(losses)
    assert losses.dtype == tf.float32 and losses.shape == (6,)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    # d loss / d logits = softmax - target.
    np.testing.assert_allclose(tape.gradient(total, logits), np.exp(logp) - target, atol=1e-6)
    # Ids as [batch, 1] and bfloat16 logits (mixed precision) are read in float32.
    np.testing.assert_allclose(ops.softmax_cross_entropy(IDS[:, None], LOGITS, smoothing),
                               expected, rtol=1e-5)
    bf16 = tf.cast(LOGITS, tf.bfloat16)
    assert ops.softmax_cross_entropy(IDS, bf16, smoothing).dtype == tf.float32


def test_extreme_logits_stay_finite():
    logits = tf.constant([[1e4, -1e4, 0.0], [-3e4, 3e4, 3e4]])
    losses = ops.softmax_cross_entropy([1, 0], logits, label_smoothing=0.1)
    np.testing.assert_allclose(losses, [0.9 * 2e4 + 0.1 * (2e4 + 1e4) / 3,
                                        0.9 * (6e4 + np.log(2)) + 0.1 * (6e4 + 2 * np.log(2)) / 3],
                               rtol=1e-6)
    multi = ops.multi_label_cross_entropy([[1.0, 0.0, 1.0]], [[-1e4, 1e4, 50.0]])
    np.testing.assert_allclose(multi, [(1e4 + 1e4 + softplus(-50.0)) / 3], rtol=1e-6)


def test_class_weights_give_pytorchs_weighted_mean():
    class_weights = np.array([1.0, 2.0, 0.5, 4.0])
    sample_weight = np.array([1.0, 1.0, 0.0, 2.0, 1.0, 1.0])
    values = ops.softmax_cross_entropy(IDS, LOGITS)
    weights = sample_weight * ops.true_class_weights(IDS, class_weights)
    # torch.nn.CrossEntropyLoss(weight=w)(logits, ids) = sum w[y] l / sum w[y].
    ce = -log_softmax(LOGITS.astype("float64"))[np.arange(6), IDS]
    w = sample_weight * class_weights[IDS]
    np.testing.assert_allclose(ops.global_weighted_mean(values, weights),
                               (w * ce).sum() / w.sum(), rtol=1e-6)


@pytest.mark.parametrize("smoothing,positive_weights", [(0.0, None), (0.2, [3.0, 1.0, 0.0, 0.5])])
def test_multi_label_cross_entropy_against_numpy(smoothing, positive_weights):
    labels = RNG.integers(0, 2, (6, 4)).astype("float32")
    t = labels * (1 - smoothing) + smoothing / 2
    q = np.ones(4) if positive_weights is None else np.array(positive_weights)
    z = LOGITS.astype("float64")
    expected = (q * t * softplus(-z) + (1 - t) * softplus(z)).mean(-1)
    logits = tf.constant(LOGITS)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        losses = ops.multi_label_cross_entropy(labels.astype("int32"), logits, smoothing,
                                               positive_weights)
        total = tf.reduce_sum(losses)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    sigmoid = 1 / (1 + np.exp(-z))
    gradient = (q * t * (sigmoid - 1) + (1 - t) * sigmoid) / 4
    np.testing.assert_allclose(tape.gradient(total, logits), gradient, atol=1e-6)


def test_squared_error():
    scores = np.array([[0.5], [2.0], [4.0]], "float32")
    np.testing.assert_allclose(ops.squared_error([1.0, 2.0, 5.0], scores), [0.25, 0.0, 1.0])
    np.testing.assert_allclose(ops.squared_error([[1.0, 2.0]], [[2.0, 5.0]]), [5.0])
    with pytest.raises(ValueError, match="one score per example"):
        ops.squared_error(np.zeros((3, 2)), scores)


def test_invalid_labels_raise_when_known_and_give_nan_under_xla():
    with pytest.raises(ValueError, match=r"integer ids in \[0, 4\)"):
        ops.softmax_cross_entropy([0, 4], LOGITS[:2])
    with pytest.raises(ValueError, match="one-hot"):
        ops.softmax_cross_entropy(np.eye(4)[IDS], LOGITS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ops.multi_label_cross_entropy([[0.0, 1.5, 0.0, 0.0]], LOGITS[:1])
    with pytest.raises(ValueError, match="multi-hot"):
        ops.multi_label_cross_entropy(IDS, LOGITS)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.softmax_cross_entropy(IDS, LOGITS, label_smoothing=1.0)

    @tf.function(jit_compile=True)
    def losses(ids, multi_hot, predicted):
        return (ops.softmax_cross_entropy(ids, LOGITS, 0.1),
                ops.multi_label_cross_entropy(multi_hot, LOGITS),
                ops.confusion_matrix(ids, predicted, 4))

    multi_hot = np.zeros((6, 4), "float32")
    multi_hot[1, 2] = 2.0
    ids = tf.constant([0, 4, 1, -1, 2, 0])
    predicted = tf.constant([0, 1, 1, 5, 2, 0])
    single, multi, confusion = (t.numpy() for t in losses(ids, multi_hot, predicted))
    assert np.isnan(single[[1, 3]]).all() and np.isfinite(single[[0, 2, 4, 5]]).all()
    assert np.isnan(multi[1]) and np.isfinite(np.delete(multi, 1)).all()
    assert np.isnan(confusion).any()
    # Valid inputs: XLA equals eager.
    valid = losses(tf.constant(IDS), np.eye(4, dtype="float32")[IDS], tf.constant(IDS))
    np.testing.assert_allclose(valid[0], ops.softmax_cross_entropy(IDS, LOGITS, 0.1), rtol=1e-6)
    np.testing.assert_allclose(valid[2], np.diag(np.bincount(IDS, minlength=4)))


def test_ignored_invalid_label_has_no_nan_gradient():
    @tf.function(jit_compile=True)  # no asserts: the label reaches the loss
    def loss_and_gradient(ids, weights):
        logits = tf.constant(LOGITS)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            values = ops.softmax_cross_entropy(ids, logits, 0.1)
            loss = ops.global_weighted_mean(values, weights)
        return loss, tape.gradient(loss, logits)

    ids = tf.constant([0, 9, 1, 1, 2, 0])
    loss, gradient = loss_and_gradient(ids, tf.constant([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    assert np.isfinite(float(loss)) and np.isfinite(gradient).all()
    assert (gradient.numpy()[1] == 0).all()
    loss, _ = loss_and_gradient(ids, tf.ones([6]))
    assert np.isnan(float(loss))


def test_confusion_matrix_and_scores_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3, 0, 1])
    predicted = np.array([0, 1, 1, 1, 2, 2, 0, 1, 0, 1])  # class 4 never occurs
    weights = np.array([1, 2, 1, 0.5, 1, 1, 3, 1, 1, 0.0])
    logits = np.eye(5)[predicted] * 2.0 - 1.0
    confusion = ops.confusion_matrix(labels, logits, 5, weights)
    np.testing.assert_array_equal(confusion, sklearn_metrics.confusion_matrix(
        labels, predicted, labels=range(5), sample_weight=weights))
    np.testing.assert_array_equal(ops.confusion_matrix(labels, predicted, 5, weights), confusion)
    scores = ops.classification_scores(confusion)
    precision, recall, f1, _ = sklearn_metrics.precision_recall_fscore_support(
        labels, predicted, labels=range(5), sample_weight=weights, zero_division=0)
    np.testing.assert_allclose(scores["precision"], precision, rtol=1e-6)
    np.testing.assert_allclose(scores["recall"], recall, rtol=1e-6)
    np.testing.assert_allclose(scores["f1"], f1, rtol=1e-6)
    np.testing.assert_allclose(scores["support"], [4, 2.5, 4, 1, 0])
    np.testing.assert_allclose(scores["macro_f1"], sklearn_metrics.f1_score(
        labels, predicted, average="macro", sample_weight=weights, zero_division=0), rtol=1e-6)
    np.testing.assert_allclose(scores["accuracy"], sklearn_metrics.accuracy_score(
        labels, predicted, sample_weight=weights), rtol=1e-6)
    # By hand: class 3 is never predicted (F1 0, counted); class 4 never seen (not counted).
    np.testing.assert_allclose(scores["f1"][3], 0.0)
    np.testing.assert_allclose(float(scores["macro_f1"]), float(np.mean(f1[:4])), rtol=1e-6)
    empty = ops.classification_scores(tf.zeros([3, 3]))
    assert float(empty["macro_f1"]) == 0.0 and float(empty["accuracy"]) == 0.0


def test_pearson_sums_add_over_batches_and_stay_exact_for_small_spread():
    x = (3 + 1e-3 * RNG.normal(size=1000)).astype("float32")  # scores close together
    y = (x + 1e-3 * RNG.normal(size=1000)).astype("float32")
    total = sum(ops.correlation_sums(x[i:i + 100], y[i:i + 100]) for i in range(0, 1000, 100))
    assert total.dtype == tf.float64
    expected = float(pearson(x, y))
    np.testing.assert_allclose(float(ops.pearson_from_sums(total)), expected, rtol=1e-7)
    np.testing.assert_allclose(expected, np.corrcoef(x.astype("float64"), y)[0, 1], rtol=1e-7)
    # Integer weights equal repeated examples; weight 0 ignores even NaN.
    weights = RNG.integers(0, 3, 1000)
    weighted = ops.correlation_sums(np.append(x, np.nan), np.append(y, 1.0), np.append(weights, 0))
    np.testing.assert_allclose(float(ops.pearson_from_sums(weighted)),
                               float(pearson(np.repeat(x, weights), np.repeat(y, weights))),
                               rtol=1e-7)
    assert float(ops.pearson_from_sums(ops.correlation_sums([1.0, 1.0], [0.0, 2.0]))) == 0.0
    assert float(ops.pearson_from_sums(tf.zeros([6], tf.float64))) == 0.0
