import dataclasses
import functools

import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives import ops
from kobjectives.objectives import MaskedLanguageModel
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, P, B = 300, 24, 5, 8

bert = functools.partial(tiny_backbone, "bert", V, L)


def make_data(n=4 * B, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, L)).astype("int32")
    for i, end in enumerate(rng.integers(L // 2, L, n)):
        ids[i, end:] = 0
    positions = np.sort(rng.integers(0, L // 2, (n, P)), axis=1).astype("int32")
    labels = np.take_along_axis(ids, positions, 1)
    weights = (rng.random((n, P)) < 0.7).astype("float32")
    x = {"token_ids": ids, "padding_mask": ids != 0, "mask_positions": positions}
    return x, labels, weights


class TinyEncoder(keras.Model):
    """A subclassed backbone: token ids + padding mask -> hidden states."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(V, 16)
        self.dense = keras.layers.Dense(16, activation="tanh")

    def call(self, inputs):
        mask = keras.ops.cast(inputs["padding_mask"], "float32")[..., None]
        return self.dense(self.embed(inputs["token_ids"])) * mask


def test_logits_shape_and_head_gathers_masked_positions():
    model = MaskedLanguageModel(bert())
    x, _, _ = make_data(n=2)
    logits = model(x)
    assert logits.shape == (2, P, V)
    # The logits of a slot depend only on the hidden state at its position.
    hidden = model.encode(x)
    gathered = tf.gather(hidden, x["mask_positions"], batch_dims=1)
    direct = model.head(gathered, mask_positions=tf.tile(tf.range(P)[None], [2, 1]))
    np.testing.assert_allclose(logits.numpy(), direct.numpy(), atol=1e-5)


def test_head_is_tied_to_token_embedding():
    backbone = bert()
    model = MaskedLanguageModel(backbone)
    assert model.head.token_embedding is backbone.token_embedding
    head_kernels = [w for w in model.head.weights if "kernel" in w.path and w.shape[-1] == V]
    assert head_kernels == []  # no separate [hidden, vocab] projection
    untied = MaskedLanguageModel(bert(), tie_weights=False)
    assert untied.count_params() == model.count_params() + 32 * V


def test_loss_is_weighted_mean_over_real_positions():
    model = MaskedLanguageModel(bert())
    model.compile()
    x, y, w = make_data(n=B)
    logits = model(x)
    loss = model.compute_loss(x=x, y=y, y_pred=logits, sample_weight=w)
    np.testing.assert_allclose(float(loss), float(ops.masked_lm_loss(y, logits, w)), rtol=1e-6)


@pytest.mark.parametrize("kind", ["roberta", "albert", "distilbert", "electra", "subclassed"])
def test_trains_over_other_backbones(kind):
    backbone = TinyEncoder() if kind == "subclassed" else tiny_backbone(kind, V, L)
    kwargs = {"vocabulary_size": V, "hidden_dim": 16} if isinstance(backbone, TinyEncoder) else {}
    model = MaskedLanguageModel(backbone, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = make_data()
    history = model.fit(x, y, sample_weight=w, batch_size=B, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert np.isfinite(history["perplexity"][-1])


X, Y, W = make_data()
CASE = ObjectiveCase(
    build=lambda: MaskedLanguageModel(bert()),
    data=dict(x=X, y=Y, sample_weight=W, batch_size=B), metrics=("masked_accuracy",),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_eager_graph(one_device):
    assert_jit_matches_eager(CASE, atol=0, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    # Per-replica weight sums differ (random weights), so only a global
    # weighted mean gives the same loss and updates as one device.
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_mixed_bfloat16_trains_with_float32_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = MaskedLanguageModel(bert())
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = make_data()
    assert model.encode(x).dtype == tf.bfloat16
    assert model(x).dtype == tf.float32  # float32 logits, bf16 backbone
    history = model.fit(x, y, sample_weight=w, batch_size=B, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert model.backbone.token_embedding.embeddings.dtype == "float32"


def test_no_masked_positions_gives_finite_zero_loss():
    model = MaskedLanguageModel(bert())
    model.compile()
    x, y, w = make_data(n=B)
    result = model.evaluate(x, y, sample_weight=np.zeros_like(w), verbose=0, return_dict=True)
    assert result["loss"] == 0.0


def test_keras_round_trip_continues_with_its_optimizer_state(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: MaskedLanguageModel(bert(), intermediate_activation="relu"),
        optimizer=lambda: keras.optimizers.Adam(1e-2))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    assert isinstance(restored, MaskedLanguageModel)
    assert restored.get_config()["intermediate_activation"] == "relu"
    # Tying survives the round trip.
    assert restored.head.token_embedding is restored.backbone.token_embedding


def test_missing_inputs_are_named():
    model = MaskedLanguageModel(bert())
    x, _, _ = make_data(n=2)
    with pytest.raises(ValueError, match="mask_positions"):
        model({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]})
    with pytest.raises(TypeError, match="backbone"):
        MaskedLanguageModel("bert")
