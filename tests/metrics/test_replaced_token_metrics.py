import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives.metrics import ReplacedPrecision
from kobjectives.metrics import ReplacedRecall
from kobjectives.metrics import RTDAccuracy


def batches(seed=0, n=3):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        labels = (rng.random((4, 10)) < 0.2).astype("float32")
        logits = rng.normal(size=(4, 10)).astype("float32") + 1.5 * (labels - 0.5)
        weights = (rng.random((4, 10)) < 0.8).astype("float32")
        yield labels, logits, weights


def reference(data, threshold=0.0):
    labels = np.concatenate([b[0] for b in data]).ravel() > 0.5
    predicted = np.concatenate([b[1] for b in data]).ravel() > threshold
    w = np.concatenate([b[2] for b in data]).ravel()
    tp = w[labels & predicted].sum()
    fp = w[~labels & predicted].sum()
    fn = w[labels & ~predicted].sum()
    tn = w[~labels & ~predicted].sum()
    return {
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
    }


@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_metrics_match_numpy_reference_over_batches(threshold):
    data = list(batches())
    metrics = {
        "accuracy": RTDAccuracy(threshold=threshold),
        "precision": ReplacedPrecision(threshold=threshold),
        "recall": ReplacedRecall(threshold=threshold),
    }
    for labels, logits, weights in data:
        for metric in metrics.values():
            metric.update_state(labels, logits, sample_weight=weights)
    expected = reference(data, threshold)
    for name, metric in metrics.items():
        np.testing.assert_allclose(float(metric.result()), expected[name], rtol=1e-6)
        metric.reset_state()
        assert float(metric.result()) == 0.0  # no NaN when empty


def test_names_and_all_original_predictions():
    assert (RTDAccuracy().name, ReplacedPrecision().name, ReplacedRecall().name) == (
        "rtd_accuracy", "replaced_precision", "replaced_recall")
    labels = np.array([[1, 0, 0, 0]], "float32")
    logits = np.full((1, 4), -5.0, "float32")  # everything called original
    accuracy, precision, recall = RTDAccuracy(), ReplacedPrecision(), ReplacedRecall()
    for metric in (accuracy, precision, recall):
        metric.update_state(labels, logits)
    assert float(accuracy.result()) == 0.75  # the all-original baseline
    assert float(precision.result()) == 0.0 and float(recall.result()) == 0.0


def test_serialization_round_trip():
    for cls in (RTDAccuracy, ReplacedPrecision, ReplacedRecall):
        metric = cls(threshold=0.3, name="custom")
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(clone) is cls and clone.threshold == 0.3 and clone.name == "custom"


def test_counts_are_global_under_mirrored_strategy(mirrored_strategy):
    data = list(batches(seed=1, n=2))
    with mirrored_strategy.scope():
        metric = RTDAccuracy()
    values = iter(data)

    def value_fn(context):
        return tuple(tf.constant(t) for t in next(values))

    per_replica = mirrored_strategy.experimental_distribute_values_from_function(value_fn)
    mirrored_strategy.run(tf.function(metric.update_state), args=per_replica)
    np.testing.assert_allclose(float(metric.result()), reference(data)["accuracy"], rtol=1e-6)
