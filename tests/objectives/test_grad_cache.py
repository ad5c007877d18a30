import dataclasses

import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives import ops
from kobjectives.objectives import CachedContrastiveEncoder
from kobjectives.objectives.grad_cache import cached_contrastive_gradients
from kobjectives.objectives.grad_cache import contrastive_gradients
from kobjectives.objectives.grad_cache import seed_generator_states
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import fit
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L = 120, 8


def bert_embedder(dropout=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = tiny_backbone("bert", V, L, hidden_dim=16, dropout=dropout)
    inputs = backbone.input
    pooled = keras.layers.GlobalAveragePooling1D()(
        backbone.output["sequence_output"], mask=inputs["padding_mask"])
    return keras.Model(inputs, pooled)


def dense_embedder(dropout=0.0, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = {"features": keras.Input((6,), name="features")}
    hidden = keras.layers.Dense(16, activation="tanh")(inputs["features"])
    hidden = keras.layers.Dropout(dropout)(hidden)
    return keras.Model(inputs, keras.layers.Dense(8)(keras.layers.Dropout(dropout)(hidden)))


def text_view(batch, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (batch, L)).astype("int32")
    for i, end in enumerate(rng.integers(L // 2, L + 1, batch)):
        ids[i, end:] = 0
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids),
            "padding_mask": (ids != 0).astype("int32")}


def dense_view(batch, seed):
    return {"features": np.random.default_rng(seed).normal(size=(batch, 6)).astype("float32")}


def info_nce_loss(symmetric=False, temperature=0.1):
    def loss_fn(e):
        negatives = e[2] if len(e) > 2 else None
        losses = ops.info_nce(e[0], e[1], negatives, temperature=temperature,
                              symmetric=symmetric)
        return ops.global_weighted_mean(losses, 1.0)
    return loss_fn


def assert_gradients_close(actual, expected, atol=1e-4):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a is None) == (e is None)
        if a is not None:
            np.testing.assert_allclose(np.asarray(a), np.asarray(tf.convert_to_tensor(e)),
                                       atol=atol, rtol=1e-4)


@pytest.mark.parametrize("batch,mini,num_views,symmetric", [
    (8, 1, 2, False), (8, 2, 3, True), (8, 8, 2, False), (12, 4, 3, False)])
def test_dense_embedder_gradients_equal_uncached(batch, mini, num_views, symmetric):
    model = dense_embedder()
    views = [dense_view(batch, s) for s in range(num_views)]
    embed = lambda x: model(x, training=True)  # noqa: E731
    loss_fn = info_nce_loss(symmetric)
    unused = keras.Variable(np.zeros(3, "float32"))
    variables = model.trainable_variables + [unused]
    loss, grads, embeddings = cached_contrastive_gradients(
        embed, loss_fn, views, mini, variables)
    ref_loss, ref_grads, ref_embeddings = contrastive_gradients(
        embed, loss_fn, views, variables)
    assert grads[-1] is None and ref_grads[-1] is None
    grads, ref_grads = grads[:-1], ref_grads[:-1]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_gradients_close(grads, ref_grads)
    for e, r in zip(embeddings, ref_embeddings):
        np.testing.assert_allclose(e, r, atol=1e-5)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_bert_embedder_gradients_equal_uncached():
    model = bert_embedder()
    views = [text_view(16, s) for s in range(3)]
    embed = lambda x: model(x, training=True)  # noqa: E731
    variables = model.trainable_variables
    loss, grads, _ = cached_contrastive_gradients(embed, info_nce_loss(), views, 4, variables)
    ref_loss, ref_grads, _ = contrastive_gradients(embed, info_nce_loss(), views, variables)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_gradients_close(grads, ref_grads)


def test_unrolled_loop_equals_while_loop():
    model = dense_embedder()
    views = [dense_view(8, s) for s in range(2)]
    embed = lambda x: model(x, training=True)  # noqa: E731
    args = (embed, info_nce_loss(), views, 2, model.trainable_variables)
    _, unrolled, _ = cached_contrastive_gradients(*args, unroll=True)
    _, looped, _ = cached_contrastive_gradients(*args)
    assert_gradients_close(unrolled, looped, atol=1e-6)


@pytest.mark.parametrize("make,view,jit_compile", [
    (bert_embedder, text_view, False), (dense_embedder, dense_view, True)])
def test_dropout_masks_are_replayed(make, view, jit_compile):
    # In a tf.function (on BERT) and XLA-compiled (on the dense embedder).
    model = make(dropout=0.3)
    states = seed_generator_states(model)
    assert len(states) >= 2  # BERT: embedding, attention and feed-forward dropout
    views = [view(16, s) for s in range(2)]
    embed = lambda x: model(x, training=True)  # noqa: E731
    variables = model.trainable_variables
    initial = [v.numpy() for v in states]

    cached = tf.function(lambda v: cached_contrastive_gradients(
        embed, info_nce_loss(symmetric=True), v, 4, variables, random_state=states),
        jit_compile=jit_compile, autograph=False)
    loss, grads, _ = cached(views)
    after_cached = [v.numpy() for v in states]

    # The uncached step drawing the same masks per mini-batch (compiled the
    # same way: XLA's stateless RNG draws other masks than TF's kernels).
    for v, value in zip(states, initial):
        v.assign(value)
    reference = lambda v: contrastive_gradients(  # noqa: E731
        embed, info_nce_loss(symmetric=True), v, variables, mini_batch_size=4)
    if jit_compile:
        reference = tf.function(reference, jit_compile=True, autograph=False)
    ref_loss, ref_grads, _ = reference(views)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_gradients_close(grads, ref_grads)
    # Both advanced the generators by the same draws.
    for a, b in zip(after_cached, states):
        np.testing.assert_array_equal(a, b.numpy())
    if jit_compile:
        return
    # Dropout is really active: without replaying, pass 3 draws new masks.
    for v, value in zip(states, initial):
        v.assign(value)
    _, unreplayed, _ = cached_contrastive_gradients(embed, info_nce_loss(), views, 4, variables)
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(unreplayed, grads))


def test_dynamic_batch_size_in_tf_function():
    model = dense_embedder()
    embed = lambda x: model(x, training=True)  # noqa: E731
    spec = {"features": tf.TensorSpec([None, 6], tf.float32)}
    fn = tf.function(lambda a, p: cached_contrastive_gradients(
        embed, info_nce_loss(), [a, p], 4, model.trainable_variables),
        input_signature=[spec, spec])
    views = [dense_view(12, s) for s in range(2)]
    loss, grads, _ = fn(*views)
    ref_loss, ref_grads, _ = contrastive_gradients(
        embed, info_nce_loss(), views, model.trainable_variables)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_gradients_close(grads, ref_grads)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible"):
        fn(*[dense_view(10, s) for s in range(2)])


def test_invalid_arguments_fail_loudly():
    model = dense_embedder()
    views = [dense_view(10, s) for s in range(2)]
    args = (model, info_nce_loss())
    with pytest.raises(ValueError, match=r"batch size \(10\) must be divisible.*\(4\)"):
        cached_contrastive_gradients(*args, views, 4, model.trainable_variables)
    for bad in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match="mini_batch_size"):
            cached_contrastive_gradients(*args, views, bad, model.trainable_variables)
    with pytest.raises(ValueError, match="same leading batch size"):
        cached_contrastive_gradients(
            *args, [dense_view(10, 0), dense_view(8, 1)], 2, model.trainable_variables)
    with pytest.raises(ValueError, match="non-empty list"):
        cached_contrastive_gradients(*args, [], 2, model.trainable_variables)
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedContrastiveEncoder(model, mini_batch_size=0)
    with pytest.raises(TypeError, match="embedder"):
        CachedContrastiveEncoder(lambda x: x)
    objective = CachedContrastiveEncoder(model, mini_batch_size=2)
    objective.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="'anchor'"):
        objective.fit({"query": dense_view(4, 0)["features"]}, epochs=1, verbose=0)


# Global batch 16 = 2 replicas x 8 rows = 2 x 2 mini-batches of 4; negatives,
# the symmetric loss and anchor weights all span the mini-batches (and replicas).
CASE = ObjectiveCase(
    build=lambda: CachedContrastiveEncoder(dense_embedder(), mini_batch_size=4,
                                           temperature=0.1, symmetric=True),
    data=dict(x={"anchor": dense_view(32, 0), "positive": dense_view(32, 1),
                 "negative": dense_view(32, 2)},
              sample_weight=np.random.default_rng(3).uniform(0.2, 1.0, 32).astype("float32"),
              batch_size=16),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=0)
UNCACHED = dataclasses.replace(CASE, build=lambda: CachedContrastiveEncoder(
    dense_embedder(), mini_batch_size=None, temperature=0.1, symmetric=True))

# The reference of the cached fits: the uncached step on one device.
one_device = one_device_fixture(UNCACHED)


def test_objective_trains_like_the_uncached_step(one_device):
    (uncached, uncached_history), (cached, cached_history) = one_device, fit(CASE)
    np.testing.assert_allclose(cached_history["loss"], uncached_history["loss"], rtol=1e-5)
    for a, b in zip(cached.get_weights(), uncached.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert cached_history["loss"][-1] < cached_history["loss"][0]


def test_objective_jit_compile_matches_uncached(one_device):
    assert_jit_matches_eager(CASE, atol=0, one_device=one_device, weights_atol=1e-4)


def test_objective_unrolled_matches_uncached():
    # Unrolling needs a static batch: a tf.data pipeline with drop_remainder.
    x = {"anchor": dense_view(32, 0), "positive": dense_view(32, 1)}
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16, drop_remainder=True)
    weights = []
    for mini_batch_size, unroll in ((4, True), (None, False)):
        model = CachedContrastiveEncoder(dense_embedder(), mini_batch_size, unroll=unroll)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device,
                                       atol=1e-4)


def test_keras_round_trip_continues_and_evaluates_like_uncached(tmp_path):
    restored = assert_keras_round_trip_continues(CASE, tmp_path / "m.keras")
    assert isinstance(restored, CachedContrastiveEncoder)
    config = restored.get_config()
    assert (config["mini_batch_size"], config["temperature"], config["symmetric"],
            config["unroll"]) == (4, 0.1, True, False)
    x = {"anchor": dense_view(16, 5), "positive": dense_view(16, 6)}
    uncached = CachedContrastiveEncoder.from_config({**config, "mini_batch_size": None})
    uncached.set_weights(restored.get_weights())
    uncached.compile(optimizer="sgd")
    np.testing.assert_allclose(uncached.evaluate(x, batch_size=16, verbose=0),
                               restored.evaluate(x, batch_size=16, verbose=0), rtol=1e-5)


def test_named_loss_and_weight_regularizers_through_the_base_step():
    # The contrastive loss is logged as `contrastive_loss`; an L2 kernel
    # regularizer joins as the base's "layer_losses" share, in the logged
    # `loss` and in the gradients, cached or not.
    def regularized():
        keras.utils.set_random_seed(0)
        inputs = {"features": keras.Input((6,), name="features")}
        dense = keras.layers.Dense(16, activation="tanh",
                                   kernel_regularizer=keras.regularizers.L2(0.1))
        hidden = dense(inputs["features"])
        return keras.Model(inputs, keras.layers.Dense(8)(hidden))

    x = {"anchor": dense_view(16, 0), "positive": dense_view(16, 1)}
    reference = regularized()
    with tf.GradientTape() as tape:
        embeddings = [reference(x[k]) for k in ("anchor", "positive")]
        contrastive = info_nce_loss(temperature=0.1)(embeddings)
        total = contrastive + tf.add_n(reference.losses)
    grads = tape.gradient(total, reference.trainable_variables)
    for mini_batch_size in (None, 4):
        model = CachedContrastiveEncoder(regularized(), mini_batch_size, temperature=0.1)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        logs = model.train_on_batch(x, return_dict=True)
        np.testing.assert_allclose(logs["contrastive_loss"], contrastive, rtol=1e-5)
        np.testing.assert_allclose(logs["loss"], total, rtol=1e-5)
        for variable, before, grad in zip(model.trainable_variables,
                                          reference.trainable_variables, grads):
            np.testing.assert_allclose(variable, before - 0.5 * grad, atol=1e-5)
