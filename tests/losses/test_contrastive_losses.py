import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives import ops
from kobjectives.losses import CoSENTLoss
from kobjectives.losses import ContrastiveMarginLoss
from kobjectives.losses import InfoNCELoss
from kobjectives.losses import TripletMarginLoss


# ---------------------------------------------------------------------------
# Independent numpy references (float64).
# ---------------------------------------------------------------------------


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cos(x, y):
    return (_normalize(x) * _normalize(y)).sum(-1)


def _distance(x, y, distance):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if distance == "cosine":
        return 1.0 - _cos(x, y)
    squared = ((x - y) ** 2).sum(-1)
    return squared if distance == "squared_euclidean" else np.sqrt(squared)


def _reference_info_nce(a, p, n, temperature, symmetric=False):
    a, p = _normalize(a), _normalize(p)
    candidates = p if n is None else np.concatenate([p, _normalize(n.reshape(-1, a.shape[-1]))])

    def ce(logits):
        m = logits.max(-1)
        log_z = m + np.log(np.exp(logits - m[:, None]).sum(-1))
        return log_z - np.diag(logits)

    forward = ce(a @ candidates.T / temperature)
    if symmetric:
        return (forward + ce(p @ a.T / temperature)) / 2
    return forward


def _reference_cosent(scores, u, v, scale):
    cos = _cos(u, v)
    terms = [0.0]  # the "1 +" inside the log
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] > scores[j]:
                terms.append(scale * (cos[j] - cos[i]))
    terms = np.array(terms)
    return terms.max() + np.log(np.exp(terms - terms.max()).sum())


def _reference_margin(labels, u, v, margin, distance):
    d = _distance(u, v, distance)
    return 0.5 * (labels * d**2 + (1 - labels) * np.maximum(0.0, margin - d) ** 2)


def _reference_triplet(a, p, n, margin, distance):
    return np.maximum(0.0, _distance(a, p, distance) - _distance(a, n, distance) + margin)


def _random(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype("float32") for s in shapes]


# ---------------------------------------------------------------------------
# InfoNCELoss.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_loss_stacked_matches_reference(k, symmetric):
    (y_pred,) = _random((6, 2 + k, 8), seed=k)
    loss = InfoNCELoss(temperature=0.07, symmetric=symmetric)(None, y_pred)
    negatives = y_pred[:, 2:] if k else None
    expected = _reference_info_nce(y_pred[:, 0], y_pred[:, 1], negatives, 0.07, symmetric)
    assert loss.shape == () and loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)


def test_info_nce_loss_dict_input_and_y_true_ignored():
    a, p, n = _random((5, 4), (5, 4), (5, 2, 4), seed=1)
    loss = InfoNCELoss(similarity="dot", temperature=3.0)
    from_dict = loss(np.arange(5), {"anchors": a, "positives": p, "negatives": n})
    from_stack = loss(None, np.concatenate([a[:, None], p[:, None], n], axis=1))
    np.testing.assert_allclose(float(from_dict), float(from_stack), rtol=1e-6)
    np.testing.assert_allclose(
        float(from_dict), float(tf.reduce_mean(ops.info_nce(a, p, n, 3.0, "dot"))), rtol=1e-6
    )


def test_info_nce_loss_sample_weight_and_reduction_none():
    (y_pred,) = _random((4, 2, 6), seed=2)
    weights = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    per_anchor = _reference_info_nce(y_pred[:, 0], y_pred[:, 1], None, 0.05)
    weighted = InfoNCELoss()(None, y_pred, sample_weight=weights)
    np.testing.assert_allclose(
        float(weighted), (per_anchor * weights).sum() / weights.sum(), rtol=1e-5
    )
    unreduced = InfoNCELoss(reduction="none")(None, y_pred)
    assert unreduced.shape == (4,)
    np.testing.assert_allclose(unreduced.numpy(), per_anchor, rtol=1e-5, atol=1e-6)


def test_info_nce_loss_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="similarity"):
        InfoNCELoss(similarity="euclidean")
    with pytest.raises(ValueError, match="reduction"):
        InfoNCELoss(reduction="sum")
    with pytest.raises(ValueError, match=r"\[batch, 2 \+ k, dim\]"):
        InfoNCELoss()(None, np.ones((4, 1, 3), "float32"))
    with pytest.raises(ValueError, match=r"\[batch, 2 \+ k, dim\]"):
        InfoNCELoss()(None, np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="'anchors'"):
        InfoNCELoss()(None, {"queries": np.ones((2, 3)), "positives": np.ones((2, 3))})


# ---------------------------------------------------------------------------
# CoSENTLoss.
# ---------------------------------------------------------------------------


def test_cosent_hand_computed():
    # cos = [1, 0, 0.6]; scores say pair 0 > pair 2 > pair 1.
    u = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], "float32")
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], "float32")
    scores = np.array([5.0, 1.0, 3.0])
    # Ordered pairs (i, j) with y_i > y_j: (0,1), (0,2), (2,1):
    # exp(cos_1 - cos_0) + exp(cos_2 - cos_0) + exp(cos_1 - cos_2), scale 1.
    expected = np.log(1 + np.exp(-1.0) + np.exp(-0.4) + np.exp(-0.6))
    loss = CoSENTLoss(scale=1.0)(scores, np.stack([u, v], axis=1))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 20.0, 200.0])
def test_cosent_matches_reference(scale):
    (y_pred,) = _random((7, 2, 5), seed=3)
    scores = np.array([0.5, 4.0, 2.5, 2.5, 1.0, 5.0, 0.0])  # ties contribute nothing
    loss = CoSENTLoss(scale=scale)(scores, y_pred)
    expected = _reference_cosent(scores, y_pred[:, 0], y_pred[:, 1], scale)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_cosent_equal_scores_give_zero_and_finite_gradients():
    y_pred = tf.constant(_random((3, 2, 4), seed=4)[0])
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = CoSENTLoss()(np.ones(3, "float32"), y_pred)
    assert float(loss) == 0.0
    grad = tape.gradient(loss, y_pred).numpy()
    assert np.isfinite(grad).all() and not grad.any()


def test_cosent_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        CoSENTLoss(scale=-1.0)
    with pytest.raises(ValueError, match=r"\[batch, 2, dim\]"):
        CoSENTLoss()(np.ones(2), np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="scores"):
        CoSENTLoss()(np.ones((2, 1)), np.ones((2, 2, 4), "float32"))
    with pytest.raises(ValueError, match="sample_weight"):
        CoSENTLoss()(np.ones(2), np.ones((2, 2, 4), "float32"), sample_weight=np.ones(2))


# ---------------------------------------------------------------------------
# ContrastiveMarginLoss and TripletMarginLoss.
# ---------------------------------------------------------------------------


def test_contrastive_margin_hand_computed():
    # Cosine distance 1 (orthogonal) for both pairs, margin 1.5.
    pairs = np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2, "float32")
    losses = ContrastiveMarginLoss(margin=1.5, reduction="none")(np.array([1, 0]), pairs)
    np.testing.assert_allclose(losses.numpy(), [0.5, 0.125], rtol=1e-6)


@pytest.mark.parametrize(
    "distance, margin", [("cosine", 0.5), ("euclidean", 2.0), ("squared_euclidean", 3.0)]
)
def test_contrastive_margin_matches_reference(distance, margin):
    (y_pred,) = _random((8, 2, 4), seed=5)
    labels = np.array([1, 0, 1, 0, 0, 1, 1, 0], "float32")
    weights = np.linspace(0.5, 2.0, 8).astype("float32")
    expected = _reference_margin(labels, y_pred[:, 0], y_pred[:, 1], margin, distance)
    loss = ContrastiveMarginLoss(margin=margin, distance=distance)
    np.testing.assert_allclose(float(loss(labels, y_pred)), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        float(loss(labels, y_pred, sample_weight=weights)),
        (expected * weights).sum() / weights.sum(),
        rtol=1e-5,
    )


def test_triplet_hand_computed():
    triplet = np.array([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]], "float32")  # d = 5, 10
    assert float(TripletMarginLoss(margin=1.0)(None, triplet)) == 0.0
    np.testing.assert_allclose(float(TripletMarginLoss(margin=6.0)(None, triplet)), 1.0)


@pytest.mark.parametrize(
    "distance, margin", [("euclidean", 1.0), ("squared_euclidean", 2.0), ("cosine", 0.3)]
)
def test_triplet_matches_reference(distance, margin):
    (y_pred,) = _random((9, 3, 4), seed=6)
    expected = _reference_triplet(y_pred[:, 0], y_pred[:, 1], y_pred[:, 2], margin, distance)
    loss = TripletMarginLoss(margin=margin, distance=distance, reduction="none")
    np.testing.assert_allclose(loss(None, y_pred).numpy(), expected, rtol=1e-5, atol=1e-6)
    as_dict = {"anchors": y_pred[:, 0], "positives": y_pred[:, 1], "negatives": y_pred[:, 2]}
    np.testing.assert_allclose(
        float(TripletMarginLoss(margin=margin, distance=distance)(None, as_dict)),
        expected.mean(),
        rtol=1e-5,
    )


def test_margin_losses_bad_inputs():
    with pytest.raises(ValueError, match="margin"):
        ContrastiveMarginLoss(margin=-1.0)
    with pytest.raises(ValueError, match="distance"):
        TripletMarginLoss(distance="l1")
    with pytest.raises(ValueError, match=r"\[batch, 3, dim\]"):
        TripletMarginLoss()(None, np.ones((2, 2, 4), "float32"))
    with pytest.raises(ValueError, match="labels"):
        ContrastiveMarginLoss()(np.ones((2, 2)), np.ones((2, 2, 4), "float32"))
    with pytest.raises(ValueError, match="'negatives'"):
        TripletMarginLoss()(None, {"anchors": np.ones((2, 3)), "positives": np.ones((2, 3))})


# ---------------------------------------------------------------------------
# All losses: serialization, jit_compile, bfloat16, distribution.
# ---------------------------------------------------------------------------

_LOSSES = [
    InfoNCELoss(temperature=0.02, similarity="dot", symmetric=True, reduction="none", name="a"),
    CoSENTLoss(scale=10.0, name="b"),
    ContrastiveMarginLoss(margin=0.3, distance="euclidean", reduction="none", name="c"),
    TripletMarginLoss(margin=0.2, distance="cosine", name="d"),
]


@pytest.mark.parametrize("loss", _LOSSES, ids=lambda x: type(x).__name__)
def test_config_round_trip(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert type(loss).from_config(loss.get_config()).get_config() == loss.get_config()


def _inputs_for(loss, seed=7):
    rng = np.random.default_rng(seed)
    n = 3 if isinstance(loss, (TripletMarginLoss, InfoNCELoss)) else 2
    y_pred = rng.normal(size=(6, n, 8)).astype("float32")
    y_true = rng.integers(0, 2, 6).astype("float32")
    return y_true, y_pred


@pytest.mark.parametrize("loss", _LOSSES, ids=lambda x: type(x).__name__)
def test_jit_compile_gives_the_same_value(loss):
    y_true, y_pred = _inputs_for(loss)
    eager = loss(y_true, y_pred)
    compiled = tf.function(lambda t, p: loss(t, p), jit_compile=True)(y_true, y_pred)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", _LOSSES, ids=lambda x: type(x).__name__)
def test_bfloat16_embeddings_give_float32(loss):
    y_true, y_pred = _inputs_for(loss)
    rounded = tf.cast(tf.cast(y_pred, tf.bfloat16), tf.float32)
    value = loss(y_true, tf.cast(y_pred, tf.bfloat16))
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), loss(y_true, rounded).numpy(), rtol=1e-5, atol=1e-6)


def _mirrored_share_and_grads(strategy, loss, y_true, y_pred):
    dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred)).batch(len(y_true))
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    def replica_fn(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            share = loss(t, p)
        return share, tape.gradient(share, p)

    share, grads = tf.function(lambda b: strategy.run(replica_fn, args=b))(batch)
    total = float(strategy.reduce("SUM", share, axis=None))
    return total, np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])


@pytest.mark.parametrize(
    "loss",
    [InfoNCELoss(temperature=0.1, symmetric=True), CoSENTLoss(), ContrastiveMarginLoss()],
    ids=lambda x: type(x).__name__,
)
def test_replica_shares_sum_to_the_global_loss_and_gradients(mirrored_strategy, loss):
    y_true, y_pred = _inputs_for(loss, seed=8)
    # 8 examples split 4 + 4; the extra scores break the ties for CoSENT.
    y_true = np.concatenate([y_true, y_true[:2] + 0.5])
    y_pred = np.concatenate([y_pred, y_pred[:2]])
    total, grads = _mirrored_share_and_grads(mirrored_strategy, loss, y_true, y_pred)
    y_pred_t = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(y_pred_t)
        expected = loss(y_true, y_pred_t)
    np.testing.assert_allclose(total, float(expected), atol=1e-5)
    np.testing.assert_allclose(grads, tape.gradient(expected, y_pred_t).numpy(), atol=1e-5)


def test_model_fit_under_mirrored_strategy_matches_one_device(mirrored_strategy):
    """One SGD step of a Dense encoder: the mirrored run equals one device."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(8, 3, 5)).astype("float32")  # anchor, positive, negative
    kernel = rng.normal(size=(5, 4)).astype("float32")

    def build():
        inputs = keras.Input((3, 5))
        model = keras.Model(inputs, keras.layers.Dense(4, use_bias=False)(inputs))
        model.layers[-1].kernel.assign(kernel)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=InfoNCELoss(temperature=0.1))
        return model

    results = []
    for strategy in (None, mirrored_strategy):
        if strategy is None:
            model = build()
        else:
            with strategy.scope():
                model = build()
        history = model.fit(x, np.zeros(8), batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append((history.history["loss"][0], model.layers[-1].kernel.numpy()))
    (loss_one, kernel_one), (loss_mirrored, kernel_mirrored) = results
    np.testing.assert_allclose(loss_mirrored, loss_one, atol=1e-5)
    np.testing.assert_allclose(kernel_mirrored, kernel_one, atol=1e-5)
    assert np.abs(kernel_one - kernel).max() > 1e-2  # the step did move the weights


@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_triplet_nan_distance_stays_nan(distance):
    triplet = np.array([[[0.0, 0.0], [3.0, 4.0], [np.nan, 8.0]]], "float32")
    loss = TripletMarginLoss(margin=1.0, distance=distance, reduction="none")
    assert np.isnan(loss(None, triplet).numpy()).all()
    assert np.isnan(float(TripletMarginLoss(distance=distance)(None, triplet)))


def test_cosent_nan_score_is_not_dropped():
    pairs = np.array(
        [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]], "float32"
    )
    assert np.isfinite(float(CoSENTLoss()(np.array([5.0, 2.0, 1.0]), pairs)))
    assert np.isnan(float(CoSENTLoss()(np.array([5.0, np.nan, 1.0]), pairs)))


def test_weight_zero_examples_never_count_and_negative_weights_fail():
    (y_pred,) = _random((4, 3, 5), seed=9)
    weights = np.array([1.0, 0.0, 1.0, 0.0], "float32")
    poisoned = y_pred.copy()
    poisoned[weights == 0] = np.nan
    loss = TripletMarginLoss(margin=2.0)
    np.testing.assert_allclose(
        float(loss(None, poisoned, sample_weight=weights)),
        float(loss(None, y_pred, sample_weight=weights)),
    )
    per_example = TripletMarginLoss(margin=2.0, reduction="none")(None, poisoned, sample_weight=weights)
    np.testing.assert_array_equal(per_example.numpy()[weights == 0], [0.0, 0.0])
    with pytest.raises(ValueError, match="sample_weight.*non-negative"):
        loss(None, y_pred, sample_weight=-weights)
    with pytest.raises(ValueError, match="sample_weight"):
        loss(None, y_pred, sample_weight=np.ones((3,), "float32"))


@pytest.mark.parametrize(
    "loss, y_true, y_pred",
    [
        (InfoNCELoss(), None, np.zeros((0, 2, 4), "float32")),
        (InfoNCELoss(reduction="none"), None, np.zeros((0, 3, 4), "float32")),
        (CoSENTLoss(), np.zeros((0,), "float32"), np.zeros((0, 2, 4), "float32")),
        (ContrastiveMarginLoss(), np.zeros((0,), "float32"), np.zeros((0, 2, 4), "float32")),
        (TripletMarginLoss(), None, np.zeros((0, 3, 4), "float32")),
    ],
)
def test_an_empty_batch_gives_zero_or_an_empty_result(loss, y_true, y_pred):
    value = loss(y_true, y_pred).numpy()
    assert value.shape in ((), (0,)) and np.all(value == 0.0)
