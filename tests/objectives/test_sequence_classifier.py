"""`SequenceClassifier`: the loss of each mode, pooling, keras-hub's head,
learning, strategies, saving, export and errors."""

import dataclasses
import functools

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.objectives import SequenceClassifier
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, B, H, C = 50, 8, 8, 16, 3

bert = functools.partial(tiny_backbone, "bert", V, L, hidden_dim=H)


def inputs(n=B, seed=0, pairs=False):
    rng = np.random.default_rng(seed)
    ids = rng.integers(8, V, (n, L)).astype("int32")
    lengths = rng.integers(3, L + 1, n)
    mask = np.arange(L)[None, :] < lengths[:, None]
    ids[:, 0] = 2
    ids = np.where(mask, ids, 0).astype("int32")
    x = {"token_ids": ids, "padding_mask": mask}
    if pairs:
        x["segment_ids"] = ((np.arange(L)[None, :] >= lengths[:, None] // 2) & mask).astype("int32")
    return x


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def test_single_label_loss_is_smoothed_cross_entropy_with_pytorch_class_weight_mean():
    keras.utils.set_random_seed(0)
    model = SequenceClassifier(bert(), C, label_smoothing=0.2, class_weights=[1.0, 3.0, 0.5])
    x = inputs()
    y = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    sample_weight = np.array([1, 1, 0, 2, 1, 1, 0.5, 1], "float32")
    logits = model(x).numpy()
    assert logits.shape == (B, C) and logits.dtype == np.float32
    logp = log_softmax(logits.astype("float64"))
    ce = 0.8 * -logp[np.arange(B), y] + 0.2 * -logp.mean(-1)
    w = sample_weight * np.array([1.0, 3.0, 0.5])[y]
    expected = (w * ce).sum() / w.sum()
    loss = model.compute_loss(x, y, model(x), sample_weight)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    model.compile()
    result = model.evaluate(x, y, sample_weight=sample_weight, batch_size=B, verbose=0,
                            return_dict=True)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    # Keras' `metrics` are unweighted (`weighted_metrics` take sample_weight).
    np.testing.assert_allclose(result["accuracy"], (logits.argmax(-1) == y).mean(), rtol=1e-6)
    # Ids as [batch, 1] (as Keras often feeds them) give the same loss.
    np.testing.assert_allclose(float(model.compute_loss(x, y[:, None], model(x), sample_weight)),
                               expected, rtol=1e-6)


def test_multi_label_loss_is_mean_sigmoid_cross_entropy_over_classes():
    keras.utils.set_random_seed(1)
    model = SequenceClassifier(bert(), C, mode="multi_label", label_smoothing=0.1,
                               positive_weights=[2.0, 1.0, 0.5])
    x = inputs()
    y = np.random.default_rng(1).integers(0, 2, (B, C))
    z = model(x).numpy().astype("float64")
    t = y * 0.9 + 0.05
    q = np.array([2.0, 1.0, 0.5])
    expected = (q * t * softplus(-z) + (1 - t) * softplus(z)).mean(-1).mean()
    np.testing.assert_allclose(float(model.compute_loss(x, y, model(x))), expected, rtol=1e-5)
    (accuracy,) = model.default_metrics()  # compile(metrics="auto")
    assert accuracy.name == "binary_accuracy"
    accuracy.update_state(y, model(x))
    np.testing.assert_allclose(float(accuracy.result()), ((z > 0) == y).mean(), rtol=1e-6)


def test_regression_loss_is_squared_error_and_metric_is_whole_set_pearson():
    keras.utils.set_random_seed(2)
    model = SequenceClassifier(bert(), 1, mode="regression", dropout=0.0)
    rng = np.random.default_rng(2)
    model.output_dense.kernel.assign(rng.normal(size=(H, 1)))  # scores that vary
    x = inputs(2 * B)
    y = rng.uniform(0, 5, 2 * B).astype("float32")  # STS-B scores
    scores = model(x).numpy()
    assert scores.shape == (2 * B, 1)
    expected = ((scores[:, 0] - y) ** 2).mean()
    np.testing.assert_allclose(float(model.compute_loss(x, y, model(x))), expected, rtol=1e-5)
    model.compile()
    # Two batches: the metric is the correlation of all 16, not a mean of two.
    result = model.evaluate(x, y, batch_size=B, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["pearson"], np.corrcoef(scores[:, 0], y)[0, 1], atol=1e-5)


def test_head_is_keras_hubs_text_classifier_head_on_sentence_pairs():
    keras.utils.set_random_seed(3)
    backbone = bert()
    ours = SequenceClassifier(backbone, C)
    theirs = keras_hub.models.BertTextClassifier(backbone, C, preprocessor=None)
    # The same layers on top of the backbone: dropout and one dense layer.
    extra = {id(v) for v in ours.trainable_variables} - {id(v) for v in backbone.trainable_variables}
    assert len(extra) == 2 and ours.output_dense.kernel.shape == (H, C)
    assert len(theirs.trainable_variables) == len(ours.trainable_variables)
    ours.output_dense.set_weights(theirs.get_layer("logits").get_weights())
    x = inputs(pairs=True)
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-6)
    # The segment ids reach the backbone; missing ones are zeros.
    single = {k: x[k] for k in ("token_ids", "padding_mask")}
    assert np.abs(ours.pool(x) - ours.pool(single)).max() > 1e-4
    np.testing.assert_allclose(ours.pool(single),
                               ours.pool({**single, "segment_ids": np.zeros((B, L), "int32")}),
                               atol=1e-7)


class TinyEncoder(keras.Model):
    """A subclassed backbone with no pooled output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(V, H)

    def call(self, inputs):
        return self.embed(inputs["token_ids"])


def test_pooling_modes():
    keras.utils.set_random_seed(4)
    backbone = bert()
    x = inputs()
    outputs = backbone({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"],
                        "segment_ids": np.zeros((B, L), "int32")})
    hidden = outputs["sequence_output"].numpy()
    assert SequenceClassifier(backbone, C).resolved_pooling == "pooled"
    np.testing.assert_allclose(SequenceClassifier(backbone, C).pool(x), outputs["pooled_output"],
                               atol=1e-6)
    np.testing.assert_allclose(SequenceClassifier(backbone, C, pooling="first").pool(x),
                               hidden[:, 0], atol=1e-6)
    mask = x["padding_mask"][..., None]
    np.testing.assert_allclose(SequenceClassifier(backbone, C, pooling="mean").pool(x),
                               (hidden * mask).sum(1) / mask.sum(1), atol=1e-5)
    last = x["padding_mask"].sum(1) - 1
    np.testing.assert_allclose(SequenceClassifier(backbone, C, pooling="last").pool(x),
                               hidden[np.arange(B), last], atol=1e-6)
    # Without a pooled output, "auto" is the first token and "pooled" is refused.
    encoder = TinyEncoder()
    model = SequenceClassifier(encoder, C, hidden_dim=H)
    assert model.resolved_pooling == "first" and model.get_config()["pooling"] == "auto"
    np.testing.assert_allclose(model.pool(x), encoder(x).numpy()[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="pooled_output"):
        SequenceClassifier(encoder, C, pooling="pooled", hidden_dim=H)


def contains_seven(n, seed):
    """The class is whether token 7 appears (anywhere after [CLS])."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(8, V, (n, L)).astype("int32")
    y = rng.integers(0, 2, n)
    where = rng.integers(1, L, n)
    ids[y == 1, where[y == 1]] = 7
    ids[:, 0] = 2
    return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}, y


def test_learns_whether_a_token_appears():
    keras.utils.set_random_seed(0)
    model = SequenceClassifier(bert(), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = contains_seven(128, 0)
    model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    held_out = model.evaluate(*contains_seven(128, 1), batch_size=128, verbose=0,
                              return_dict=True)
    assert held_out["accuracy"] > 0.9, held_out


X = inputs(4 * B, seed=5, pairs=True)
Y = np.random.default_rng(5).integers(0, C, 4 * B)
CASE = ObjectiveCase(
    build=lambda: SequenceClassifier(bert(), C, dropout=0.0, label_smoothing=0.1,
                                     class_weights=[1.0, 2.0, 0.5]),
    data=dict(x=X, y=Y, batch_size=2 * B), metrics=("accuracy",),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_and_learns(one_device):
    assert_jit_matches_eager(CASE, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_keras_round_trip_continues_training(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: SequenceClassifier(bert(), C, mode="multi_label", pooling="mean",
                                               dropout=0.0, positive_weights=[1.0, 2.0, 3.0]),
        data=dict(x=X, y=np.eye(C, dtype="float32")[Y], batch_size=2 * B),
        optimizer=lambda: keras.optimizers.SGD(0.5, momentum=0.9))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    config = restored.get_config()
    assert (config["mode"], config["pooling"], config["positive_weights"]) == (
        "multi_label", "mean", [1.0, 2.0, 3.0])
    assert [m.name for m in restored.metrics[1].metrics] == ["binary_accuracy"]


def test_mixed_bfloat16_gives_float32_logits_and_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = SequenceClassifier(bert(), C)
    x = inputs()
    assert model.pool(x).dtype == tf.bfloat16
    logits = model(x)
    assert logits.dtype == tf.float32
    assert model.compute_loss(x, Y[:B], logits).dtype == tf.float32


def test_export_outputs_per_mode():
    x = inputs(pairs=True)
    model = SequenceClassifier(bert(), C)
    outputs = model.export_outputs(x)
    np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(model(x)), atol=1e-6)
    assert outputs["logits"].shape == (B, C)
    model = SequenceClassifier(bert(), C, mode="multi_label")
    np.testing.assert_allclose(model.export_outputs(x)["probabilities"], tf.sigmoid(model(x)),
                               atol=1e-6)
    model = SequenceClassifier(bert(), 1, mode="regression")
    outputs = model.export_outputs(x)
    assert outputs["probabilities"].shape == (B, 1)
    np.testing.assert_allclose(outputs["probabilities"], outputs["logits"])


def test_invalid_labels_are_named():
    model = SequenceClassifier(bert(), C)
    x = inputs()
    logits = model(x)
    with pytest.raises(ValueError, match=r"integer ids in \[0, 3\)"):
        model.compute_loss(x, np.full(B, 3), logits)
    with pytest.raises(ValueError, match="one-hot"):
        model.compute_loss(x, np.eye(C)[np.zeros(B, int)], logits)
    with pytest.raises(ValueError, match="needs targets"):
        model.compute_loss(x, None, logits)
    multi = SequenceClassifier(bert(), C, mode="multi_label")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        multi.compute_loss(x, np.full((B, C), 2.0), logits)
    with pytest.raises(ValueError, match="multi-hot"):
        multi.compute_loss(x, np.zeros(B), logits)


def test_bad_arguments_are_named():
    backbone = bert()
    cases = [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=0, mode="multi_label"), "num_classes"),
        (dict(num_classes=2.0), "num_classes"),
        (dict(num_classes=2, mode="binary"), "mode"),
        (dict(num_classes=2, pooling="cls"), "pooling"),
        (dict(num_classes=2, dropout=1.0), "dropout"),
        (dict(num_classes=2, label_smoothing=1.0), "label_smoothing"),
        (dict(num_classes=2, label_smoothing=-0.1), "label_smoothing"),
        (dict(num_classes=1, mode="regression", label_smoothing=0.1), "label_smoothing"),
        (dict(num_classes=3, class_weights=[1.0, 2.0]), "class_weights"),
        (dict(num_classes=2, class_weights=[1.0, -2.0]), "class_weights"),
        (dict(num_classes=2, class_weights=[0.0, 0.0]), "class_weights"),
        (dict(num_classes=2, mode="multi_label", class_weights=[1.0, 1.0]), "class_weights"),
        (dict(num_classes=2, positive_weights=[1.0, 1.0]), "positive_weights"),
        (dict(num_classes=2, mode="multi_label", positive_weights=[1.0]), "positive_weights"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            SequenceClassifier(backbone, **kwargs)
    with pytest.raises(TypeError, match="backbone"):
        SequenceClassifier("bert", 2)
    model = SequenceClassifier(backbone, 2)
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="token_ids"):
        model({"padding_mask": np.ones((2, L), bool)})
