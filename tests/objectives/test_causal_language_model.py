import collections
import dataclasses
import functools

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import SequencePacker
from kobjectives.objectives import CausalLanguageModel
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import fit
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

VOCAB, LENGTH = 64, 16

_gpt2 = functools.partial(tiny_backbone, "gpt2", VOCAB, LENGTH, hidden_dim=16)


def _llama(tie=True, num_layers=1):
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, dropout=0.0, tie_word_embeddings=tie,
    )


def _batches(count=16, batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(5, VOCAB, rng.integers(1, 12))) for _ in range(count * 6)]
    packer = SequencePacker(LENGTH, end_token_id=2, start_token_id=1)
    out = packer(tf.ragged.constant(docs))
    return tf.data.Dataset.from_tensor_slices(out).batch(batch_size, drop_remainder=True).take(count)


def _reference_loss(model, x):
    """Independent numpy loss: full logits, targets by an explicit loop."""
    hidden = model(x).numpy().astype(np.float64)
    emb = model.backbone.token_embedding.embeddings.numpy().astype(np.float64)
    logits = hidden @ emb.T
    ids, mask, seg = (np.asarray(x[k]) for k in ("token_ids", "padding_mask", "segment_ids"))
    total = count = 0.0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[b, t] and mask[b, t + 1] and seg[b, t] == seg[b, t + 1]:
                row = logits[b, t]
                lse = row.max() + np.log(np.exp(row - row.max()).sum())
                total += lse - row[ids[b, t + 1]]
                count += 1
    return total / count


def test_loss_is_next_token_cross_entropy_reset_at_boundaries():
    keras.utils.set_random_seed(0)
    model = CausalLanguageModel(_gpt2(), chunk_size=7)
    model.compile()
    x = next(iter(_batches()))
    assert int(x["segment_ids"].numpy().max()) >= 1  # windows hold several documents
    loss = model.compute_loss(x=x, y_pred=model(x))
    np.testing.assert_allclose(float(loss), _reference_loss(model, x), rtol=1e-5)


def test_kernel_is_tied_or_the_untied_reverse_embedding():
    tied = CausalLanguageModel(_gpt2())
    np.testing.assert_array_equal(
        tied.kernel().numpy(), tied.backbone.token_embedding.embeddings.numpy().T
    )
    untied = CausalLanguageModel(_llama(tie=False))
    embedding = untied.backbone.token_embedding
    np.testing.assert_array_equal(untied.kernel().numpy(), embedding.reverse_embeddings.numpy())
    x = next(iter(_batches()))
    with tf.GradientTape() as tape:
        loss = untied.compute_loss(x=x, y_pred=untied(x))
    grad = tape.gradient(loss, embedding.reverse_embeddings)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


CASE = ObjectiveCase(
    build=lambda: CausalLanguageModel(_gpt2(), chunk_size=24, reset_attention_at_boundaries=True),
    data=lambda: _batches(count=4), metrics=("perplexity",),
    optimizer=lambda: keras.optimizers.Adam(1e-3), seed=0)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph(one_device):
    assert_jit_matches_eager(CASE, atol=0, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    # Replicas hold different numbers of targets (packing, padding), so only
    # a global weighted mean gives one device's loss and updates.
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_mixed_bfloat16_trains_with_float32_loss():
    keras.utils.set_random_seed(0)
    reference = CausalLanguageModel(_gpt2(), reset_attention_at_boundaries=True)
    x = next(iter(_batches()))
    expected = float(reference.compute_loss(x=x, y_pred=reference(x)))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    backbone = _gpt2()
    backbone.set_weights(reference.backbone.get_weights())
    model = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)
    hidden = model(x)
    assert hidden.dtype == tf.bfloat16
    loss = model.compute_loss(x=x, y_pred=hidden)
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), expected, rtol=2e-2)
    model.compile(jit_compile=False)
    history = model.fit(_batches(count=4), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_keras_round_trip_continues_with_optimizer_state(tmp_path):
    loaded = assert_keras_round_trip_continues(CASE, tmp_path / "m.keras")
    assert isinstance(loaded, CausalLanguageModel) and loaded.chunk_size == 24
    assert loaded.reset_attention_at_boundaries and loaded.restart_positions


def test_trains_over_llama_and_learns():
    llama = dataclasses.replace(CASE, build=lambda: CausalLanguageModel(
        _llama(), chunk_size=24, reset_attention_at_boundaries=True))
    _, history = fit(llama, epochs=3)
    assert history["loss"][-1] < history["loss"][0]


def test_explicit_labels_and_export_outputs():
    keras.utils.set_random_seed(0)
    model = CausalLanguageModel(_gpt2())
    x = next(iter(_batches()))
    hidden = model(x)
    labels = np.zeros((4, LENGTH), "int32") + 7
    loss = model.compute_loss(x=x, y=labels, y_pred=hidden, sample_weight=np.ones((4, LENGTH)))
    logits = hidden.numpy() @ model.kernel().numpy()
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    mask = np.ones((2, LENGTH), "int32")
    mask[0, 5:] = 0
    out = model.export_outputs({"token_ids": x["token_ids"][:2], "padding_mask": mask})
    assert out["logits"].shape == (2, LENGTH, VOCAB)
    np.testing.assert_allclose(out["next_token_logits"][0], out["logits"][0, 4], rtol=1e-6)
    np.testing.assert_allclose(out["next_token_logits"][1], out["logits"][1, -1], rtol=1e-6)


def test_bad_input_fails_loudly():
    with pytest.raises(TypeError, match="backbone"):
        CausalLanguageModel("gpt2")
    encoder = tiny_backbone("bert", VOCAB, LENGTH, hidden_dim=16)
    with pytest.raises(ValueError, match="not causal"):
        CausalLanguageModel(encoder)
    with pytest.raises(ValueError, match="chunk_size"):
        CausalLanguageModel(_gpt2(), chunk_size=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        CausalLanguageModel(_gpt2(), label_smoothing=1.5)
    model = CausalLanguageModel(_gpt2())
    with pytest.raises(ValueError, match="own loss"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="token_ids"):
        model({"ids": np.zeros((1, 4), "int32")})
    x = next(iter(_batches()))
    with pytest.raises(ValueError, match=r"labels.*\[0, 64\)"):
        model.compute_loss(x=x, y=np.full((4, LENGTH), VOCAB), y_pred=model(x))


# --- attention reset at document boundaries ---------------------------------

_BACKBONES = {"gpt2": lambda: _gpt2(num_layers=2), "llama": lambda: _llama(num_layers=2)}


def _window(docs, length=LENGTH):
    """One packed row `[doc 0 | doc 1 | ... | pad]` with its segment ids."""
    ids, mask, seg = (np.zeros((1, length), "int32") for _ in range(3))
    start = 0
    for i, doc in enumerate(docs):
        ids[0, start:start + len(doc)] = doc
        mask[0, start:start + len(doc)] = 1
        seg[0, start:start + len(doc)] = i
        start += len(doc)
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": seg}


def _alone(backbone, doc):
    """The stock backbone on one document, right-padded to the window."""
    x = _window([doc])
    return backbone({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}).numpy()[0]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_reset_encodes_each_packed_document_as_if_alone(name):
    keras.utils.set_random_seed(0)
    backbone = _BACKBONES[name]()
    doc_a, doc_b = [1, 5, 9, 13, 17, 2], [1, 40, 41, 42, 43, 44, 2]
    x = _window([doc_a, doc_b])  # 13 real tokens, 3 padded
    reset = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)
    hidden = reset(x).numpy()[0]
    # GPT-2: positions restart at B (exact); Llama: rotary positions are
    # relative, equal up to rounding.
    np.testing.assert_allclose(hidden[6:13], _alone(backbone, doc_b)[:7], atol=1e-5)
    np.testing.assert_allclose(hidden[:6], _alone(backbone, doc_a)[:6], atol=1e-5)
    logits = reset.logits(tf.constant(hidden[None])).numpy()[0]
    alone_logits = reset.logits(tf.constant(_alone(backbone, doc_b)[None])).numpy()[0]
    np.testing.assert_allclose(logits[6:13], alone_logits[:7], atol=1e-5)
    # Without the reset B attends to A: its states differ from B alone.
    stock = CausalLanguageModel(backbone, reset_attention_at_boundaries=False)
    crossed = stock(x).numpy()[0]
    assert np.abs(crossed[6:13] - _alone(backbone, doc_b)[:7]).max() > 1e-2
    np.testing.assert_allclose(crossed[:6], hidden[:6], atol=1e-5)  # A is first either way


def test_gpt2_without_restarted_positions_keeps_window_positions():
    keras.utils.set_random_seed(0)
    backbone = _gpt2()
    doc_a, doc_b = [1, 5, 9, 2], [1, 40, 41, 42, 2]
    x = _window([doc_a, doc_b])
    model = CausalLanguageModel(
        backbone, reset_attention_at_boundaries=True, restart_positions=False)
    hidden = model(x).numpy()[0]
    # B attends only to itself but keeps the window's positions 4..8, so it
    # differs from B alone (positions 0..4) ...
    assert np.abs(hidden[4:9] - _alone(backbone, doc_b)[:5]).max() > 1e-3
    # ... and equals B alone with the position table shifted by 4.
    table = backbone.position_embedding.position_embeddings
    original = table.numpy()
    table.assign(np.concatenate([original[4:], original[:4]]))
    shifted = _alone(backbone, doc_b)[:5]
    table.assign(original)
    np.testing.assert_allclose(hidden[4:9], shifted, atol=1e-5)
    restarted = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)(x).numpy()[0]
    np.testing.assert_allclose(restarted[4:9], _alone(backbone, doc_b)[:5], atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_untied"])
def test_rewired_path_with_one_document_equals_the_stock_backbone(name):
    keras.utils.set_random_seed(1)
    backbone = _llama(tie=False, num_layers=2) if name == "llama_untied" else _BACKBONES[name]()
    model = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (3, LENGTH)).astype("int32")
    mask = np.ones((3, LENGTH), "int32")
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    rewired = model.encode_documents(
        {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}).numpy()
    stock = backbone({"token_ids": ids, "padding_mask": mask}).numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(rewired[real], stock[real], atol=1e-6)
    # Serving inputs (no segment ids) take the stock call.
    np.testing.assert_array_equal(
        model({"token_ids": ids, "padding_mask": mask}).numpy(), stock)


def test_reset_blocks_gradients_across_documents_and_trains_every_weight():
    keras.utils.set_random_seed(0)
    doc_a, doc_b = [1, 5, 6, 7, 2], [1, 40, 41, 42, 2]  # A's tokens 5-7 not in B
    x = _window([doc_a, doc_b])
    for reset, crosses in ((True, False), (False, True)):
        model = CausalLanguageModel(_gpt2(num_layers=2), reset_attention_at_boundaries=reset)
        embeddings = model.backbone.token_embedding.embeddings
        with tf.GradientTape() as tape:
            hidden_b = model(x)[:, 5:10]
            score = tf.reduce_sum(hidden_b * tf.random.stateless_normal(hidden_b.shape, [0, 1]))
        grad = tf.convert_to_tensor(tape.gradient(score, embeddings)).numpy()
        assert (np.abs(grad[[5, 6, 7]]).max() > 1e-6) == crosses
        assert np.abs(grad[[40, 41, 42]]).max() > 1e-6
    model = CausalLanguageModel(_gpt2(), reset_attention_at_boundaries=True)
    batch = next(iter(_batches()))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=batch, y_pred=model(batch, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    grads = [tf.convert_to_tensor(g) for g in grads]
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_reset_loss_is_the_sum_of_each_document_scored_alone():
    keras.utils.set_random_seed(0)
    backbone = _gpt2(num_layers=2)
    model = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)
    docs = [[1, 5, 9, 13, 2], [1, 40, 41, 42, 43, 2], [1, 7, 8, 2]]
    x = _window(docs)
    packed = float(model.compute_loss(x=x, y_pred=model(x)))
    total = count = 0.0
    for doc in docs:  # independent reference: each document alone, numpy loss
        logits = _alone(backbone, doc).astype(np.float64) @ model.kernel().numpy()
        for t in range(len(doc) - 1):
            row = logits[t]
            total += row.max() + np.log(np.exp(row - row.max()).sum()) - row[doc[t + 1]]
            count += 1
    np.testing.assert_allclose(packed, total / count, rtol=1e-5)


def test_reset_refuses_backbones_it_cannot_rewire():
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, head_dim=8)
    CausalLanguageModel(gemma)  # the stock path still works
    with pytest.raises(ValueError, match="GemmaDecoderBlock.*padding_mask"):
        CausalLanguageModel(gemma, reset_attention_at_boundaries=True)

    class Decoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(VOCAB, 8)

        def call(self, inputs):
            return tf.cumsum(self.embed(inputs["token_ids"]), axis=1)

    with pytest.raises(ValueError, match="GPT2Backbone and LlamaBackbone"):
        CausalLanguageModel(Decoder(), vocabulary_size=VOCAB, hidden_dim=8,
                            reset_attention_at_boundaries=True)
    model = CausalLanguageModel(_gpt2(), reset_attention_at_boundaries=True)
    x = _window([[1, 5, 2]])
    with pytest.raises(ValueError, match="segment_ids.*shape of `token_ids`"):
        model(dict(x, segment_ids=x["segment_ids"][:, :4]))
    with pytest.raises(TypeError, match="segment_ids.*int32"):
        model(dict(x, segment_ids=x["segment_ids"].astype("float32")))


# --- loss normalization: per token or per example ---------------------------


def test_example_normalization_is_the_mean_of_per_example_means():
    keras.utils.set_random_seed(0)
    model = CausalLanguageModel(_gpt2(), reset_attention_at_boundaries=True,
                                loss_normalization="example")
    rows = [_window([[1, 5, 9, 13, 2], [1, 40, 41, 2], [1, 7, 8, 9, 10, 2]]), _window([[1, 20, 2]])]
    x = {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}
    rng = np.random.default_rng(0)
    sample_weight = (rng.random(x["token_ids"].shape) < 0.7).astype("float32")
    hidden = model(x)
    loss = float(model.compute_loss(x=x, y_pred=hidden, sample_weight=sample_weight))
    # Independent reference: numpy logits, examples and targets by explicit loops.
    logits = hidden.numpy().astype(np.float64) @ model.kernel().numpy().astype(np.float64)
    ids, mask, seg = x["token_ids"], x["padding_mask"], x["segment_ids"]
    sums = collections.defaultdict(lambda: [0.0, 0.0])
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[b, t] and mask[b, t + 1] and seg[b, t] == seg[b, t + 1]:
                row = logits[b, t]
                token_loss = row.max() + np.log(np.exp(row - row.max()).sum()) - row[ids[b, t + 1]]
                sums[b, seg[b, t]][0] += sample_weight[b, t] * token_loss
                sums[b, seg[b, t]][1] += sample_weight[b, t]
    means = [total / weight for total, weight in sums.values() if weight > 0]
    assert len(means) == 4
    np.testing.assert_allclose(loss, np.mean(means), rtol=1e-5)
    token = sum(total for total, _ in sums.values()) / sum(weight for _, weight in sums.values())
    model.loss_normalization = "token"
    np.testing.assert_allclose(
        float(model.compute_loss(x=x, y_pred=hidden, sample_weight=sample_weight)), token,
        rtol=1e-5)
    assert abs(token - np.mean(means)) > 1e-3  # the two normalizations differ here


def test_loss_normalization_config_and_bad_value():
    model = CausalLanguageModel(_gpt2(), loss_normalization="example")
    config = model.get_config()
    assert config["loss_normalization"] == "example"
    assert CausalLanguageModel(_gpt2()).get_config()["loss_normalization"] == "token"
    restored = CausalLanguageModel.from_config(config)
    assert restored.loss_normalization == "example"
    with pytest.raises(ValueError, match=r"loss_normalization.*'token', 'example'.*'row'"):
        CausalLanguageModel(_gpt2(), loss_normalization="row")
