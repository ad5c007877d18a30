import numpy as np
import pytest
import keras
import keras_hub
import tensorflow as tf

from kobjectives import ops
from kobjectives.objectives import MaskedLanguageModel

V, L, P, B = 300, 24, 5, 8


def bert(**kwargs):
    config = dict(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=L, dropout=0.0)
    config.update(kwargs)
    return keras_hub.models.BertBackbone(**config)


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


@pytest.mark.parametrize(
    "make_backbone",
    [
        lambda: keras_hub.models.RobertaBackbone(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=L),
        lambda: keras_hub.models.AlbertBackbone(vocabulary_size=V, num_layers=1, num_heads=2, embedding_dim=16, hidden_dim=32, intermediate_dim=64, max_sequence_length=L),
        lambda: keras_hub.models.DistilBertBackbone(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=L),
        lambda: keras_hub.models.ElectraBackbone(vocab_size=V, num_layers=1, num_heads=2, embedding_dim=16, hidden_dim=32, intermediate_dim=64, max_sequence_length=L),
        lambda: TinyEncoder(),
    ],
    ids=["roberta", "albert", "distilbert", "electra", "subclassed"],
)
def test_trains_over_other_backbones(make_backbone):
    backbone = make_backbone()
    kwargs = {"vocabulary_size": V, "hidden_dim": 16} if isinstance(backbone, TinyEncoder) else {}
    model = MaskedLanguageModel(backbone, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = make_data()
    history = model.fit(x, y, sample_weight=w, batch_size=B, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert np.isfinite(history["perplexity"][-1])


def _fit(strategy=None, jit_compile=False, epochs=2):
    x, y, w = make_data()
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(7)
        model = MaskedLanguageModel(bert())
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit_compile)
    history = model.fit(x, y, sample_weight=w, batch_size=B, epochs=epochs,
                        shuffle=False, verbose=0).history
    return model, history


def test_jit_compile_matches_eager_graph():
    plain, h_plain = _fit()
    jit, h_jit = _fit(jit_compile=True)
    np.testing.assert_allclose(h_jit["loss"], h_plain["loss"], rtol=1e-5)
    assert h_jit["loss"][-1] < h_jit["loss"][0]


def test_mirrored_strategy_matches_one_device(mirrored_strategy):
    # Per-replica weight sums differ (random weights), so only a global
    # weighted mean gives the same loss and updates as one device.
    single, h_single = _fit()
    mirrored, h_mirrored = _fit(mirrored_strategy)
    np.testing.assert_allclose(h_mirrored["loss"], h_single["loss"], atol=1e-5)
    np.testing.assert_allclose(h_mirrored["masked_accuracy"], h_single["masked_accuracy"], atol=1e-5)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


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


def test_keras_round_trip(tmp_path):
    model = MaskedLanguageModel(bert(), intermediate_activation="relu")
    model.compile()
    x, y, w = make_data(n=B)
    model.fit(x, y, sample_weight=w, epochs=1, verbose=0)
    path = tmp_path / "mlm.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, MaskedLanguageModel)
    assert restored.get_config()["intermediate_activation"] == "relu"
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # Tying survives the round trip.
    assert restored.head.token_embedding is restored.backbone.token_embedding


def test_missing_inputs_are_named():
    model = MaskedLanguageModel(bert())
    x, _, _ = make_data(n=2)
    with pytest.raises(ValueError, match="mask_positions"):
        model({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]})
    with pytest.raises(TypeError, match="backbone"):
        MaskedLanguageModel("bert")


def test_loaded_objective_continues_training_with_its_optimizer_state(tmp_path):
    x, y, w = make_data(n=B)
    model = MaskedLanguageModel(bert())
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(x, y, sample_weight=w, batch_size=B, epochs=2, verbose=0)
    model.save(tmp_path / "mlm.keras")
    restored = keras.saving.load_model(tmp_path / "mlm.keras")
    assert restored.compiled and restored.optimizer.iterations.numpy() == 2
    next_loss = model.fit(x, y, sample_weight=w, batch_size=B, epochs=1, verbose=0, shuffle=False)
    restored_loss = restored.fit(x, y, sample_weight=w, batch_size=B, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(restored_loss.history["loss"], next_loss.history["loss"], rtol=1e-5)
