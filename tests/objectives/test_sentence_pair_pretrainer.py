"""`SentencePairPretrainer`: MLM + NSP/SOP loss, heads, strategies, saving."""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.objectives import MaskedLanguageModel
from kobjectives.objectives import SentencePairPretrainer
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, P, B = 200, 16, 4, 8

bert = functools.partial(tiny_backbone, "bert", V, L)


def make_data(n=4 * B, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, L)).astype("int32")
    segment_ids = np.zeros((n, L), "int32")
    for i, (sep, end) in enumerate(zip(rng.integers(3, 7, n), rng.integers(9, L, n))):
        segment_ids[i, sep + 1 : end] = 1
        ids[i, end:] = 0
    positions = np.sort(rng.integers(1, 8, (n, P)), axis=1).astype("int32")
    x = {"token_ids": ids, "segment_ids": segment_ids, "padding_mask": ids != 0,
         "mask_positions": positions}
    y = {"mask_ids": np.take_along_axis(ids, positions, 1),
         "mask_weights": (rng.random((n, P)) < 0.7).astype("float32"),
         "pair_labels": rng.integers(0, 2, n).astype("int32")}
    return x, y


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_is_weighted_sum_of_masked_lm_and_pair_cross_entropy():
    model = SentencePairPretrainer(bert(), task="sop", mlm_weight=0.7, pair_weight=1.9)
    # Named losses: the base weights, sums and tracks them (`NAME_loss`, unweighted).
    assert model.loss_names == ("mlm", "pair")
    assert model.loss_weights == {"mlm": 0.7, "pair": 1.9}
    model.compile()
    x, y = make_data(n=B)
    outputs = model(x)
    assert outputs["mlm_logits"].shape == (B, P, V) and outputs["pair_logits"].shape == (B, 2)
    mlm_ce = -np.take_along_axis(
        log_softmax(outputs["mlm_logits"].numpy()), y["mask_ids"][..., None], -1)[..., 0]
    mlm = (mlm_ce * y["mask_weights"]).sum() / y["mask_weights"].sum()
    pair = -log_softmax(outputs["pair_logits"].numpy())[np.arange(B), y["pair_labels"]].mean()
    result = model.evaluate(x, y, batch_size=B, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], 0.7 * mlm + 1.9 * pair, rtol=1e-5)
    np.testing.assert_allclose(result["mlm_loss"], mlm, rtol=1e-5)
    np.testing.assert_allclose(result["pair_loss"], pair, rtol=1e-5)
    predicted = outputs["pair_logits"].numpy().argmax(-1)
    np.testing.assert_allclose(result["pair_accuracy"], (predicted == y["pair_labels"]).mean())
    np.testing.assert_allclose(result["perplexity"], np.exp(mlm), rtol=1e-4)
    # The same numbers as the ops the objective used before named losses.
    from kobjectives import ops

    reference = (0.7 * ops.masked_lm_loss(y["mask_ids"], outputs["mlm_logits"], y["mask_weights"])
                 + 1.9 * ops.pair_classification_loss(y["pair_labels"], outputs["pair_logits"]))
    assert float(model.compute_loss(x, y, outputs)) == float(reference)


def test_config_holds_the_weights_once_and_round_trips():
    model = SentencePairPretrainer(bert(), task="sop", mlm_weight=0.5, pair_weight=2.0)
    config = model.get_config()
    assert "loss_weights" not in config
    assert (config["mlm_weight"], config["pair_weight"]) == (0.5, 2.0)
    clone = SentencePairPretrainer.from_config(config)
    assert clone.loss_weights == {"mlm": 0.5, "pair": 2.0} and clone.task == "sop"
    with pytest.raises(ValueError, match="mlm_weight"):
        SentencePairPretrainer(bert(), loss_weights={"mlm": 1.0})


def test_reuses_the_masked_lm_head_and_the_backbone_pooler():
    backbone = bert()
    model = SentencePairPretrainer(backbone)
    assert isinstance(model, MaskedLanguageModel)
    assert model.head.token_embedding is backbone.token_embedding  # tied MLM head
    assert model.pooler is None  # BERT's own pooler feeds the pair head
    x, y = make_data(n=B)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, model(x, training=True))
    pooler = backbone.get_layer("pooled_dense").kernel
    gradient = tape.gradient(loss, [pooler, model.pair_head.kernel])
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradient)


class TinyEncoder(keras.Model):
    """A subclassed backbone without a pooled output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(V, 16)
        self.dense = keras.layers.Dense(16, activation="tanh")

    def call(self, inputs):
        mask = keras.ops.cast(inputs["padding_mask"], "float32")[..., None]
        return self.dense(self.embed(inputs["token_ids"])) * mask


def test_backbone_without_pooler_gets_one_and_trains():
    model = SentencePairPretrainer(TinyEncoder(), vocabulary_size=V, hidden_dim=16)
    assert model.pooler is not None
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = make_data()
    history = model.fit(x, y, batch_size=B, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


X, Y = make_data()
CASE = ObjectiveCase(
    build=lambda: SentencePairPretrainer(bert()), data=dict(x=X, y=Y, batch_size=B),
    metrics=("pair_accuracy", "masked_accuracy", "pair_loss"),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_and_learns(one_device):
    assert_jit_matches_eager(CASE, atol=0, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_mixed_bfloat16_trains_with_float32_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = SentencePairPretrainer(bert())
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = make_data()
    assert model.encode(x).dtype == tf.bfloat16
    outputs = model(x)
    assert outputs["pair_logits"].dtype == tf.float32
    assert outputs["mlm_logits"].dtype == tf.float32
    assert model.compute_loss(x, y, outputs).dtype == tf.float32
    history = model.fit(x, y, batch_size=B, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))


def test_keras_round_trip_continues_training_with_optimizer_state(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: SentencePairPretrainer(bert(), task="sop", pair_weight=0.5),
        optimizer=lambda: keras.optimizers.Adam(1e-2))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    assert isinstance(restored, SentencePairPretrainer)
    assert restored.get_config()["task"] == "sop" and restored.pair_weight == 0.5


def test_export_outputs_hold_encoder_and_pair_head():
    model = SentencePairPretrainer(bert())
    x, _ = make_data(n=2)
    inputs = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    outputs = model.export_outputs(inputs)
    assert outputs["sequence_output"].shape == (2, L, 32)
    assert outputs["pooled_output"].shape == (2, 32)
    assert outputs["mlm_logits"].shape == (2, L, V)
    np.testing.assert_allclose(outputs["pair_probabilities"].numpy().sum(-1), 1.0, rtol=1e-6)
    full = model({**inputs, "mask_positions": x["mask_positions"]})
    np.testing.assert_allclose(outputs["pair_logits"], full["pair_logits"], atol=1e-5)


def test_bad_arguments_and_inputs_are_named():
    with pytest.raises(ValueError, match="task"):
        SentencePairPretrainer(bert(), task="mlm")
    with pytest.raises(ValueError, match="pair_weight"):
        SentencePairPretrainer(bert(), pair_weight=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        SentencePairPretrainer(bert(), mlm_weight=0.0, pair_weight=0)
    model = SentencePairPretrainer(bert())
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")
    x, y = make_data(n=2)
    with pytest.raises(ValueError, match="mask_positions"):
        model({k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    with pytest.raises(ValueError, match="segment_ids"):
        model({k: x[k] for k in ("token_ids", "padding_mask", "mask_positions")})
    with pytest.raises(ValueError, match="pair_labels"):
        model.compute_loss(x, {"mask_ids": y["mask_ids"]}, model(x))
