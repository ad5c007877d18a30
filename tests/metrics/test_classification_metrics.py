"""`ClassificationReport` and `PearsonCorrelation`: exact values on hand
cases, accumulation over batches, sample weights, serialization, and the
global values under `MirroredStrategy`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.metrics import ClassificationReport
from kobjectives.metrics import PearsonCorrelation

# 3 classes; true 0 0 0 1 1 2, predicted 0 1 0 1 2 2 (by logits), weights.
LABELS = np.array([0, 0, 0, 1, 1, 2])
LOGITS = np.array([[2, 0, 0], [0, 1, 0], [3, 1, 1], [0, 2, 1], [0, 1, 4], [1, 0, 2]], "float32")
WEIGHTS = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 0.5])


def test_report_of_a_hand_case():
    metric = ClassificationReport(3, class_names=["a", "b", "c"])
    metric.update_state(LABELS[:4], LOGITS[:4], WEIGHTS[:4])  # two batches add up
    metric.update_state(LABELS[4:], LOGITS[4:], WEIGHTS[4:])
    # confusion (rows true): a: 3 right (weights 1 + 2), 1 as b; b: 1 right, 1 as c; c: 0.5 right.
    # precision a 3/3, b 1/2, c 0.5/1.5; recall a 3/4, b 1/2, c 1;
    # F1 a 6/7, b 1/2, c 1/2 -> macro (6/7 + 1/2 + 1/2) / 3 = 13/21.
    exact = metric.report(digits=None)
    assert exact["confusion_matrix"] == [[3.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.5]]
    assert exact["accuracy"] == pytest.approx(4.5 / 6.5, rel=1e-6)
    assert exact["macro_f1"] == pytest.approx(13 / 21, rel=1e-6)
    expected = {"a": {"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4.0},
                "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0},
                "c": {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 0.5}}
    assert list(exact["classes"]) == ["a", "b", "c"]
    for name, scores in expected.items():
        assert exact["classes"][name] == pytest.approx(scores, rel=1e-6)
    np.testing.assert_allclose(float(metric.result()), 13 / 21, rtol=1e-6)
    report = metric.report()
    assert report["classes"]["a"]["f1"] == 0.8571 and report["macro_f1"] == 0.619
    # Predicted ids give the same matrix; reset clears it.
    ids = ClassificationReport(3)
    ids.update_state(LABELS[:, None], LOGITS.argmax(-1), WEIGHTS)
    assert ids.report()["confusion_matrix"] == report["confusion_matrix"]
    assert list(ids.report()["classes"]) == ["0", "1", "2"]
    ids.reset_state()
    assert float(ids.result()) == 0.0 and ids.report()["accuracy"] == 0.0


def test_tracks_a_compiled_model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, inputs)  # the logits are the inputs
    model.compile(loss="sparse_categorical_crossentropy",
                  weighted_metrics=[ClassificationReport(3)])
    result = model.evaluate(LOGITS, LABELS, sample_weight=WEIGHTS, batch_size=4, verbose=0,
                            return_dict=True)
    np.testing.assert_allclose(result["macro_f1"], 13 / 21, rtol=1e-6)


def test_pearson_is_the_correlation_of_the_whole_set():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 40)
    predicted = gold + rng.normal(size=40)
    weights = rng.integers(0, 3, 40).astype("float64")
    metric = PearsonCorrelation()
    for i in range(0, 40, 8):
        metric.update_state(gold[i:i + 8], predicted[i:i + 8, None], weights[i:i + 8])
    repeated = np.repeat(np.arange(40), weights.astype(int))
    np.testing.assert_allclose(float(metric.result()),
                               np.corrcoef(gold[repeated], predicted[repeated])[0, 1], rtol=1e-6)
    # Keras' PearsonCorrelation averages per-batch values: a different number.
    keras_metric = keras.metrics.PearsonCorrelation(axis=0)
    for i in range(0, 40, 8):
        keras_metric.update_state(gold[i:i + 8], predicted[i:i + 8])
    assert abs(float(keras_metric.result()) - np.corrcoef(gold, predicted)[0, 1]) > 1e-3
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_serialization_round_trip_and_errors():
    for metric in (ClassificationReport(3, class_names=["x", "y", "z"], name="f1"),
                   PearsonCorrelation(name="r", dtype="float32")):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(clone) is type(metric) and clone.get_config() == metric.get_config()
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationReport(1)
    with pytest.raises(ValueError, match="class_names"):
        ClassificationReport(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names"):
        ClassificationReport(2, class_names=["a", "a"])
    with pytest.raises(ValueError, match=r"ids in \[0, 3\)"):
        ClassificationReport(3).update_state([3], [[1.0, 0.0, 0.0]])


def test_values_are_global_under_mirrored_strategy(mirrored_strategy):
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, 8).astype("float32")
    predicted = (gold + rng.normal(size=8)).astype("float32")
    with mirrored_strategy.scope():
        report = ClassificationReport(3)
        pearson = PearsonCorrelation()

    def replica_batch(context):  # replica r holds rows 3r .. 3r+2 (and 4r .. 4r+3)
        r = context.replica_id_in_sync_group
        rows = slice(3 * r, 3 * r + 3)
        scores = slice(4 * r, 4 * r + 4)
        return (tf.constant(LABELS[rows]), tf.constant(LOGITS[rows]), tf.constant(WEIGHTS[rows]),
                tf.constant(gold[scores]), tf.constant(predicted[scores]))

    @tf.function
    def update(labels, logits, weights, gold, predicted):
        report.update_state(labels, logits, weights)
        pearson.update_state(gold, predicted)

    mirrored_strategy.run(
        update, args=mirrored_strategy.experimental_distribute_values_from_function(replica_batch))
    np.testing.assert_allclose(float(report.result()), 13 / 21, rtol=1e-6)
    assert report.report()["confusion_matrix"] == [[3.0, 1.0, 0.0], [0.0, 1.0, 1.0],
                                                   [0.0, 0.0, 0.5]]
    np.testing.assert_allclose(float(pearson.result()), np.corrcoef(gold, predicted)[0, 1],
                               rtol=1e-6)
