import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.metrics import SpanF1

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
ID = {tag: i for i, tag in enumerate(TAGS)}


def ids(*sentences):
    return np.array([[ID[tag] for tag in sentence.split()] for sentence in sentences])


# Gold: PER 0-1, LOC 3-3 | LOC 0-2, PER 4-4 | ORG 1-2.
Y_TRUE = ids("B-PER I-PER O B-LOC O O",
             "B-LOC I-LOC I-LOC O B-PER O",
             "O B-ORG I-ORG O O O")
# Predicted (default mode): PER 0-1 (right), LOC 3-4 (wrong end) | LOC 0-2
# (right, from I-LOC), ORG 4-4 (wrong type) | ORG 1-2 (right), PER 4-4.
Y_PRED = ids("B-PER I-PER O B-LOC I-LOC O",
             "I-LOC I-LOC I-LOC O B-ORG O",
             "O B-ORG I-ORG O B-PER O")


def test_exact_micro_and_per_type_scores_on_a_hand_case():
    metric = SpanF1(TAGS)
    metric.update_state(Y_TRUE, Y_PRED)
    # tp 3 (PER 0-1, LOC 0-2, ORG 1-2), predicted 6, gold 5.
    assert float(metric.result()) == pytest.approx(6 / 11, abs=1e-7)
    report = metric.report()
    expected = {
        "LOC": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
        "ORG": {"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1},
        "PER": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
        "micro": {"precision": 1 / 2, "recall": 3 / 5, "f1": 6 / 11, "support": 5},
        "macro": {"precision": 1 / 2, "recall": 2 / 3, "f1": 5 / 9, "support": 5},
    }
    assert list(report) == list(expected)  # types sorted, then micro and macro
    for key, row in expected.items():
        assert report[key] == pytest.approx(row, abs=1e-12), key
    assert isinstance(report["micro"]["support"], int)

    # Strict mode: row 1's I-LOC I-LOC I-LOC is no entity.
    strict = SpanF1(TAGS, mode="strict")
    strict.update_state(Y_TRUE, Y_PRED)
    assert float(strict.result()) == pytest.approx(2 * 2 / (5 + 5), abs=1e-7)
    assert strict.report()["LOC"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2})


def test_batches_accumulate_and_reset():
    metric = SpanF1(TAGS)
    for row in range(3):
        metric.update_state(Y_TRUE[row:row + 1], Y_PRED[row:row + 1])
    assert float(metric.result()) == pytest.approx(6 / 11, abs=1e-7)
    metric.reset_state()
    assert float(metric.result()) == 0.0  # no NaN with nothing counted
    report = metric.report()
    assert list(report) == ["micro", "macro"]  # no type seen
    assert report["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_types_without_entities_are_left_out_of_the_report_and_macro():
    metric = SpanF1(TAGS)
    metric.update_state(ids("B-PER O"), ids("B-PER B-LOC"))
    report = metric.report()
    assert list(report) == ["LOC", "PER", "micro", "macro"]  # no ORG anywhere
    assert report["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro"]["f1"] == 0.5 and report["micro"]["f1"] == pytest.approx(2 / 3)


def test_sample_weight_removes_pieces_and_scores_take_the_arg_max():
    # The weight-0 piece (tag -100) between B-LOC and I-LOC is removed.
    y_true = np.array([[ID["B-LOC"], -100, ID["I-LOC"], ID["O"]]])
    pred_ids = np.array([[ID["B-LOC"], ID["O"], ID["I-LOC"], ID["O"]]])
    weight = np.array([[1.0, 0.0, 1.0, 1.0]])
    scores = tf.one_hot(pred_ids, len(TAGS)) * 3.0 - 1.0
    metric = SpanF1(TAGS, mode="strict")
    metric.update_state(y_true, scores, sample_weight=weight)
    assert metric.report()["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # A weight per sentence: 0 drops the second sentence.
    per_sentence = SpanF1(TAGS)
    per_sentence.update_state(Y_TRUE[:2], Y_PRED[:2], sample_weight=[1.0, 0.0])
    assert float(per_sentence.result()) == 0.5  # row 0: PER right, LOC 3-4 wrong
    with pytest.raises(ValueError, match="7 tags"):
        SpanF1(TAGS).update_state(Y_TRUE, tf.zeros([3, 6, 5]))


def test_out_of_range_ids_fail_eagerly():
    with pytest.raises(ValueError, match=r"`y_true` must hold tag ids in \[0, 7\)"):
        SpanF1(TAGS).update_state([[0, 7]], [[0, 0]])


def test_update_state_under_jit_compile():
    eager, compiled = SpanF1(TAGS), SpanF1(TAGS)
    update = tf.function(compiled.update_state, jit_compile=True)
    for metric, step in ((eager, eager.update_state), (compiled, update)):
        step(tf.constant(Y_TRUE), tf.constant(Y_PRED), tf.ones(Y_TRUE.shape))
        step(tf.constant(Y_TRUE), tf.constant(Y_TRUE), tf.constant([[1.0] * 6, [0.0] * 6, [1.0] * 6]))
    np.testing.assert_array_equal(compiled.counts.numpy(), eager.counts.numpy())
    assert compiled.report() == eager.report()


def test_construction_errors():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        SpanF1(TAGS, mode="IOB2")
    with pytest.raises(ValueError, match=r"'B-' \(tag id 1\)"):
        SpanF1(["O", "B-"])
    with pytest.raises(ValueError, match=r"'PER' \(tag id 1\)"):
        SpanF1(["O", "PER"])
    with pytest.raises(ValueError, match=r"duplicate"):
        SpanF1(["O", "B-PER", "B-PER"])
    with pytest.raises(ValueError, match=r'no "O" tag'):
        SpanF1(["B-PER", "I-PER"])


def test_config_round_trip_continues_counting():
    metric = SpanF1(TAGS, mode="strict", name="ner_f1")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(clone) is SpanF1 and clone.get_config() == metric.get_config()
    assert (clone.tags, clone.mode, clone.name) == (TAGS, "strict", "ner_f1")
    for m in (metric, clone):
        m.update_state(Y_TRUE, Y_PRED)
    assert clone.report() == metric.report()


def test_mirrored_strategy_sums_the_counts_of_the_replicas(mirrored_strategy):
    one_device = SpanF1(TAGS)
    one_device.update_state(Y_TRUE, Y_PRED)
    with mirrored_strategy.scope():
        metric = SpanF1(TAGS)
    halves = iter([(Y_TRUE[:2], Y_PRED[:2]), (Y_TRUE[2:], Y_PRED[2:])])

    def value_fn(context):
        return tuple(tf.constant(t) for t in next(halves))

    per_replica = mirrored_strategy.experimental_distribute_values_from_function(value_fn)
    mirrored_strategy.run(tf.function(metric.update_state), args=per_replica)
    np.testing.assert_array_equal(metric.counts.numpy(), one_device.counts.numpy())
    assert float(metric.result()) == pytest.approx(6 / 11, abs=1e-7)
    assert metric.report() == one_device.report()


def test_evaluate_logs_the_span_f1_under_xla_and_mirrored(mirrored_strategy):
    # A model whose logits are the one-hot predicted tags; XLA on one device,
    # MirroredStrategy without (as the harness' objective checks: XLA does not
    # reach the loss tracker's variables on the other logical CPU).
    def build(jit_compile):
        inputs = keras.Input([6], dtype="int32")
        logits = keras.layers.Lambda(lambda x: keras.ops.one_hot(x, len(TAGS)) * 4.0)(inputs)
        model = keras.Model(inputs, logits)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[SpanF1(TAGS)], jit_compile=jit_compile)
        return model

    y_true = np.tile(Y_TRUE, (2, 1))
    y_pred = np.tile(Y_PRED, (2, 1))
    weight = np.ones(y_true.shape, "float32")  # one batch of 6 (3 per replica)
    results = []
    for strategy, jit_compile in ((tf.distribute.get_strategy(), True),
                                  (mirrored_strategy, False)):
        with strategy.scope():
            model = build(jit_compile)
        logs = model.evaluate(y_pred, y_true, sample_weight=weight, batch_size=6,
                              verbose=0, return_dict=True)
        results.append(logs["span_f1"])
    np.testing.assert_allclose(results, [6 / 11, 6 / 11], atol=1e-6)
