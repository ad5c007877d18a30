import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.objectives import ContrastiveEncoder
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, B, H = 60, 8, 8, 16

bert = functools.partial(tiny_backbone, "bert", V, L, hidden_dim=H, dropout=0.1)


def texts(n=2 * B, seed=0, length=L):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, length)).astype("int32")
    lengths = rng.integers(2, length + 1, n)
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids = np.where(mask, ids, 0).astype("int32")
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}


def triples(n=2 * B):
    return {"anchor": texts(n, 0), "positive": texts(n, 1), "negative": texts(n, 2)}


def test_unsupervised_dropout_views_differ_in_training_only():
    keras.utils.set_random_seed(0)
    model = ContrastiveEncoder(bert(), pooling="cls")
    x = {"anchor": texts(B)}
    train = model(x, training=True)
    assert train["anchor"].shape == (B, H) and train["positive"].shape == (B, H)
    assert np.abs(train["anchor"] - train["positive"]).max() > 1e-4
    infer = model(x, training=False)
    np.testing.assert_allclose(infer["anchor"], infer["positive"], atol=1e-6)
    # A plain text batch is embedded (pooled, pre-projection).
    np.testing.assert_allclose(model(x["anchor"]), model.embed(x["anchor"]), atol=1e-6)
    np.testing.assert_allclose(infer["anchor"], model.project(model.embed(x["anchor"])), atol=1e-5)


@pytest.mark.parametrize("k", [None, 2])
def test_loss_equals_info_nce_on_embeddings(k):
    keras.utils.set_random_seed(1)
    model = ContrastiveEncoder(bert(dropout=0.0), pooling="mean", temperature=0.1)
    x = triples(B)
    if k:
        x["negative"] = {n: np.stack([v, v[::-1]], axis=1) for n, v in x["negative"].items()}
    y_pred = model(x, training=True)
    loss = model.compute_loss(x=x, y_pred=y_pred)
    embed = lambda t: model.project(model.embed({n: v.reshape((-1, L)) for n, v in t.items()}))  # noqa: E731
    negatives = embed(x["negative"])
    if k:
        negatives = tf.reshape(negatives, [B, k, H])
        assert y_pred["negative"].shape == (B, k, H)
    expected = ops.info_nce(embed(x["anchor"]), embed(x["positive"]), negatives, temperature=0.1)
    np.testing.assert_allclose(float(loss), float(tf.reduce_mean(expected)), rtol=1e-5)


def _case(pooling="mean", **kwargs):
    return ObjectiveCase(
        build=lambda: ContrastiveEncoder(bert(dropout=0.0), pooling=pooling, **kwargs),
        data=lambda: tf.data.Dataset.from_tensor_slices(triples(4 * B)).batch(
            2 * B, drop_remainder=True),
        optimizer=lambda: keras.optimizers.SGD(0.5), seed=7)


CASE = _case()

one_device = one_device_fixture(CASE)


@pytest.mark.slow
def test_jit_compile_trains_and_matches(one_device):
    assert_jit_matches_eager(CASE, rtol=1e-4, atol=0, one_device=one_device)


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean"])
def test_mirrored_strategy_matches_one_device(mirrored_strategy, pooling, request):
    # Negatives are gathered across replicas, so the loss and the updates
    # equal one device on the global batch.
    reference = request.getfixturevalue("one_device") if pooling == "mean" else None
    assert_mirrored_matches_one_device(_case(pooling), mirrored_strategy, one_device=reference)


def test_unsupervised_fit_with_jit():
    data = tf.data.Dataset.from_tensor_slices({"anchor": texts(4 * B)}).batch(B, drop_remainder=True)
    keras.utils.set_random_seed(3)
    model = ContrastiveEncoder(bert(), pooling="last", projection=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    history = model.fit(data, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert model.projection is None


def test_keras_round_trip(tmp_path):
    case = _case(temperature=0.07, projection_dim=12)
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    assert isinstance(restored, ContrastiveEncoder)
    assert restored.temperature == 0.07 and restored.pooling == "mean"
    assert restored.project(restored.embed(texts(B))).shape == (B, 12)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveEncoder(bert(), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveEncoder(bert(), temperature=-1)
    with pytest.raises(ValueError, match="pooling"):
        ContrastiveEncoder(bert(), pooling="max")
    with pytest.raises(TypeError, match="backbone"):
        ContrastiveEncoder("bert")
    model = ContrastiveEncoder(bert())
    # A batch of one without hard negatives: nothing to contrast with.
    one = {"anchor": texts(1)}
    with pytest.raises(ValueError, match="batch of one"):
        model.compute_loss(x=one, y_pred=model(one, training=True))
    with pytest.raises(ValueError, match="exactly one positive"):
        model({"anchor": texts(4), "positive": texts(3)})
    with pytest.raises(ValueError, match="hard negatives"):
        model({"anchor": texts(4), "positive": texts(4),
               "negative": {"token_ids": np.zeros((4, 2, 3, L), "int32"),
                            "padding_mask": np.ones((4, 2, 3, L), bool)}})
    with pytest.raises(ValueError, match="batch size"):
        model({"anchor": texts(4), "positive": texts(4), "negative": texts(3)})
    with pytest.raises(ValueError, match="Unknown keys"):
        model({"anchor": texts(4), "labels": texts(4)})
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")


def test_freeze_token_embedding_trains_the_rest_and_round_trips(tmp_path):
    data = tf.data.Dataset.from_tensor_slices({"anchor": texts(4 * B)}).batch(B, drop_remainder=True)
    keras.utils.set_random_seed(4)
    model = ContrastiveEncoder(bert(dropout=0.0), pooling="mean", freeze_token_embedding=True)
    # Graph mode: XLA is covered by the jit tests above (its compile time dominates here).
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1), jit_compile=False)
    frozen = model.backbone.token_embedding.embeddings
    assert not any(v is frozen for v in model.trainable_variables)
    before = {v.path: np.array(v) for v in model.variables}
    model.fit(data, epochs=1, verbose=0)
    # The token vectors stay exactly as initialized (weight decay included);
    # position embeddings, attention and the projection move.
    np.testing.assert_array_equal(np.array(frozen), before[frozen.path])
    moved = [v.path for v in model.trainable_variables
             if np.abs(np.array(v) - before[v.path]).max() > 1e-6]
    assert any("position_embedding" in p for p in moved)
    assert any("projection" in p for p in moved)
    # .keras round trip: still frozen, same optimizer state, same next loss.
    path = tmp_path / "frozen.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.freeze_token_embedding
    assert not restored.backbone.token_embedding.trainable
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    batch = next(iter(data))
    expected = model.train_on_batch(batch)
    np.testing.assert_allclose(restored.train_on_batch(batch), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.array(restored.backbone.token_embedding.embeddings),
                                  before[frozen.path])


def test_freeze_token_embedding_needs_a_token_embedding():
    inputs = {"token_ids": keras.Input((L,), dtype="int32"),
              "padding_mask": keras.Input((L,), dtype="bool")}
    hidden = keras.layers.Embedding(V, H)(inputs["token_ids"])
    plain = keras.Model(inputs, hidden)
    with pytest.raises(ValueError, match="freeze_token_embedding=True"):
        ContrastiveEncoder(plain, hidden_dim=H, freeze_token_embedding=True)
    with pytest.raises(ValueError, match="freeze_token_embedding"):
        ContrastiveEncoder(bert(), freeze_token_embedding="yes")
    # Without the flag such a backbone is fine.
    assert not ContrastiveEncoder(plain, hidden_dim=H).freeze_token_embedding


def test_weighted_mean_pooling_starts_as_mean_learns_token_weights_and_round_trips(tmp_path):
    keras.utils.set_random_seed(5)
    backbone = bert(dropout=0.0)
    model = ContrastiveEncoder(backbone, pooling="weighted_mean", freeze_token_embedding=True)
    x = texts(4 * B)
    # Untrained, it is exactly mean pooling of the same backbone.
    mean = ops.pool_sequence(model.encode(x), x["padding_mask"], "mean")
    np.testing.assert_allclose(model.embed(x), mean, atol=1e-6)
    data = tf.data.Dataset.from_tensor_slices({"anchor": x}).batch(B, drop_remainder=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)  # XLA: see above
    model.fit(data, epochs=2, verbose=0)
    log_weights = np.array(model.pooler.log_weights)
    seen = np.unique(x["token_ids"][x["padding_mask"]])
    unseen = np.setdiff1d(np.arange(V), np.append(seen, 0))
    assert np.abs(log_weights[seen]).min() > 0  # every id in the data got a gradient
    np.testing.assert_array_equal(log_weights[unseen], 0.0)
    # The embedding is the weighted mean with w = exp(scale * v).
    hidden = model.encode(x).numpy()
    w = np.exp(50.0 * log_weights[x["token_ids"]]) * x["padding_mask"]
    expected = (hidden * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(model.embed(x), expected, rtol=1e-4, atol=1e-5)
    path = tmp_path / "weighted.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.pooling == "weighted_mean"
    np.testing.assert_allclose(restored.embed(x), model.embed(x), atol=1e-5)
    batch = next(iter(data))
    np.testing.assert_allclose(restored.train_on_batch(batch), model.train_on_batch(batch), rtol=1e-5)


def test_weighted_mean_pooling_needs_a_token_embedding():
    inputs = {"token_ids": keras.Input((L,), dtype="int32"),
              "padding_mask": keras.Input((L,), dtype="bool")}
    plain = keras.Model(inputs, keras.layers.Embedding(V, H)(inputs["token_ids"]))
    with pytest.raises(ValueError, match="weighted_mean"):
        ContrastiveEncoder(plain, hidden_dim=H, pooling="weighted_mean")
    with pytest.raises(ValueError, match="weighted_mean"):
        ContrastiveEncoder(bert(), pooling="max")  # the message lists the modes
