import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops


# ---------------------------------------------------------------------------
# Independent numpy references (float64, log-sum-exp by hand).
# ---------------------------------------------------------------------------


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cross_entropy_diagonal(logits, offset=0):
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    rows = np.arange(logits.shape[0])
    return log_z - logits[rows, rows + offset]


def _reference_info_nce(a, p, n=None, temperature=0.05, similarity="cosine", symmetric=False):
    a, p = np.asarray(a, np.float64), np.asarray(p, np.float64)
    if similarity == "cosine":
        a, p = _normalize(a), _normalize(p)
    candidates = p
    if n is not None:
        n = np.asarray(n, np.float64).reshape(-1, a.shape[-1])
        if similarity == "cosine":
            n = _normalize(n)
        # sentence-transformers' column order: all positives, then the negatives
        candidates = np.concatenate([p, n])
    forward = _cross_entropy_diagonal(a @ candidates.T / temperature)
    if not symmetric:
        return forward
    backward = _cross_entropy_diagonal(p @ a.T / temperature)
    return (forward + backward) / 2


def _random(*shapes, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=s) * scale).astype("float32") for s in shapes]


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def test_hand_computed_in_batch_case():
    # Orthonormal anchors equal to their positives: cos = 1 on the diagonal,
    # 0 off it, so each anchor's loss is -log(e / (e + 1)) = log(1 + 1/e).
    a = np.eye(2, dtype="float32")
    losses = ops.info_nce(a, a, temperature=1.0)
    np.testing.assert_allclose(losses.numpy(), [np.log1p(np.exp(-1.0))] * 2, rtol=1e-6)


def test_hand_computed_hard_negative_and_dot():
    # One anchor, its positive at dot 2 and a hard negative at dot 1:
    # loss = -log(e^(2/t) / (e^(2/t) + e^(1/t))) = log(1 + e^(-1/t)).
    a = np.array([[1.0, 1.0]], "float32")
    p = np.array([[2.0, 0.0]], "float32")
    n = np.array([[1.0, 0.0]], "float32")
    losses = ops.info_nce(a, p, n, temperature=0.5, similarity="dot")
    np.testing.assert_allclose(losses.numpy(), [np.log1p(np.exp(-2.0))], rtol=1e-6)
    # Cosine: cos(a, p) = cos(a, n) = 1/sqrt(2), so the loss is log 2.
    np.testing.assert_allclose(ops.info_nce(a, p, n).numpy(), [np.log(2.0)], rtol=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("negatives_shape", [None, (6, 8), (6, 3, 8)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_reference(similarity, negatives_shape, symmetric):
    a, p = _random((6, 8), (6, 8), seed=1)
    n = None if negatives_shape is None else _random(negatives_shape, seed=2)[0]
    temperature = 0.05 if similarity == "cosine" else 2.0
    losses = ops.info_nce(
        a, p, n, temperature=temperature, similarity=similarity, symmetric=symmetric
    )
    assert losses.shape == (6,) and losses.dtype == tf.float32
    expected = _reference_info_nce(a, p, n, temperature, similarity, symmetric)
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_symmetric_mean_is_mean_of_both_directions():
    a, p = _random((5, 4), (5, 4), seed=3)
    both = ops.info_nce(a, p, symmetric=True, temperature=0.1)
    forward = ops.info_nce(a, p, temperature=0.1)
    backward = ops.info_nce(p, a, temperature=0.1)  # positives -> all anchors
    np.testing.assert_allclose(both.numpy(), (forward + backward).numpy() / 2, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.02, 0.1, 1.0, 5.0])
def test_temperature_and_scale(temperature):
    a, p, n = _random((4, 6), (4, 6), (4, 6), seed=4)
    losses = ops.info_nce(a, p, n, temperature=temperature)
    np.testing.assert_allclose(
        losses.numpy(), _reference_info_nce(a, p, n, temperature), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        ops.info_nce(a, p, n, scale=1.0 / temperature).numpy(), losses.numpy(), rtol=1e-6
    )


def test_tensor_temperature_is_accepted_and_differentiable():
    a, p = _random((4, 6), (4, 6), seed=5)
    temperature = tf.Variable(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(ops.info_nce(a, p, temperature=temperature))
    np.testing.assert_allclose(
        float(loss), _reference_info_nce(a, p, temperature=0.1).mean(), rtol=1e-5
    )
    assert np.isfinite(tape.gradient(loss, temperature).numpy())


def test_stable_at_small_temperature_with_large_norms():
    a, p, n = _random((4, 16), (4, 16), (4, 2, 16), seed=6)
    # Cosine: norms of ~1e25 overflow a naive float32 sum of squares.
    big = [x * np.float32(1e25) for x in (a, p, n)]
    losses = ops.info_nce(*big, temperature=0.01)
    np.testing.assert_allclose(
        losses.numpy(), _reference_info_nce(a, p, n, 0.01), rtol=1e-4, atol=1e-4
    )
    # Dot: logits of order 1e6 / 0.01 would overflow a naive softmax.
    big_dot = [x * np.float32(30) for x in (a, p, n)]
    at = [tf.constant(x) for x in big_dot]
    with tf.GradientTape() as tape:
        tape.watch(at)
        losses = ops.info_nce(*at, temperature=0.01, similarity="dot")
    expected = _reference_info_nce(*big_dot, 0.01, "dot")
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5)
    assert all(np.isfinite(g.numpy()).all() for g in tape.gradient(losses, at))


def test_bfloat16_inputs_are_computed_in_float32():
    a, p, n = _random((6, 32), (6, 32), (6, 2, 32), seed=7)
    cast = [tf.cast(x, tf.bfloat16) for x in (a, p, n)]
    losses = ops.info_nce(*cast, temperature=0.01)
    assert losses.dtype == tf.float32
    rounded = [tf.cast(x, tf.float32).numpy() for x in cast]
    np.testing.assert_allclose(
        losses.numpy(), _reference_info_nce(*rounded, 0.01), rtol=1e-4, atol=1e-4
    )


def test_zero_vectors_give_no_nan():
    a, p = _random((3, 4), (3, 4), seed=8)
    a[0] = 0.0
    at = tf.constant(a)
    with tf.GradientTape() as tape:
        tape.watch(at)
        loss = tf.reduce_mean(ops.info_nce(at, p))
    assert np.isfinite(float(loss))
    assert np.isfinite(tape.gradient(loss, at).numpy()).all()


def test_empty_negatives_are_no_negatives():
    a, p = _random((4, 6), (4, 6), seed=9)
    np.testing.assert_allclose(
        ops.info_nce(a, p, np.zeros((4, 0, 6), "float32")).numpy(),
        ops.info_nce(a, p).numpy(),
    )


def test_jit_compile_gives_the_same_value():
    a, p, n = _random((6, 8), (6, 8), (6, 2, 8), seed=10)

    def fn(a, p, n):
        return ops.info_nce(a, p, n, temperature=0.02, symmetric=True)

    eager = fn(a, p, n)
    compiled = tf.function(fn, jit_compile=True)(a, p, n)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)


def test_dynamic_batch_of_one_gives_zero_not_nan():
    fn = tf.function(
        lambda a, p: ops.info_nce(a, p),
        input_signature=[tf.TensorSpec([None, 3])] * 2,
    )
    np.testing.assert_allclose(fn(np.ones((1, 3), "float32"), np.ones((1, 3), "float32")), [0.0])


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"scale": 0.0}, "scale"),
        ({"temperature": 0.1, "scale": 5.0}, "either"),
        ({"similarity": "l2"}, "similarity"),
        ({"symmetric": "yes"}, "symmetric"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    a, p = _random((4, 6), (4, 6))
    with pytest.raises(ValueError, match=match):
        ops.info_nce(a, p, **kwargs)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((4, 2, 6), (4, 6), None), "anchors"),
        (((4, 6), (4,), None), "positives"),
        (((4, 6), (3, 6), None), "batch size"),
        (((4, 6), (4, 5), None), "embedding size"),
        (((4, 6), (4, 6), (3, 6)), "negatives.*batch size"),
        (((4, 6), (4, 6), (4, 2, 5)), "negatives.*embedding size"),
        (((4, 6), (4, 6), (4, 1, 2, 6)), "negatives"),
        (((1, 6), (1, 6), None), "batch of one"),
    ],
)
def test_bad_shapes_are_rejected(shapes, match):
    arrays = [None if s is None else np.ones(s, "float32") for s in shapes]
    with pytest.raises(ValueError, match=match):
        ops.info_nce(*arrays)


def test_batch_of_one_with_hard_negatives_is_fine():
    a, p, n = _random((1, 4), (1, 4), (1, 3, 4), seed=11)
    np.testing.assert_allclose(
        ops.info_nce(a, p, n).numpy(), _reference_info_nce(a, p, n), rtol=1e-5
    )


def test_integer_embeddings_are_rejected():
    with pytest.raises(ValueError, match="float"):
        ops.info_nce(np.ones((2, 3), "int32"), np.ones((2, 3), "int32"))


def test_dynamic_batch_mismatch_fails_at_run_time():
    fn = tf.function(
        lambda a, p: ops.info_nce(a, p),
        input_signature=[tf.TensorSpec([None, 3])] * 2,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        fn(np.ones((4, 3), "float32"), np.ones((3, 3), "float32"))


# ---------------------------------------------------------------------------
# Cross-replica negatives.
# ---------------------------------------------------------------------------


def _single_device(a, p, n, w, symmetric):
    """Global-batch mean loss and gradients (embeddings and Dense kernel)."""
    variables = [tf.Variable(w)]
    inputs = [tf.constant(x) for x in (a, p, n)]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_mean(_encode_and_loss(variables[0], *inputs, symmetric))
    grads = tape.gradient(loss, inputs + variables)
    return float(loss), [g.numpy() for g in grads]


def _encode_and_loss(kernel, a, p, n, symmetric):
    # A tiny linear encoder, so the gradients w.r.t. its weights are checked.
    encode = lambda x: tf.tensordot(x, kernel, axes=1)  # noqa: E731
    return ops.info_nce(encode(a), encode(p), encode(n), temperature=0.1, symmetric=symmetric)


def _run_mirrored(strategy, a, p, n, w, symmetric, gather=None):
    with strategy.scope():
        kernel = tf.Variable(w)
    dataset = tf.data.Dataset.from_tensor_slices((a, p, n)).batch(a.shape[0])
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    def replica_fn(a, p, n):
        with tf.GradientTape() as tape:
            tape.watch([a, p, n])
            if gather is None:
                losses = _encode_and_loss(kernel, a, p, n, symmetric)
            else:
                losses = gather(kernel, a, p, n)
            # Each replica returns its share: sum(local losses) / global batch.
            share = ops.global_weighted_mean(losses, 1.0)
        grads = tape.gradient(share, [a, p, n, kernel])
        return share, tf.shape(losses)[0], grads

    share, local_batch, grads = tf.function(lambda b: strategy.run(replica_fn, args=b))(batch)
    local = strategy.experimental_local_results
    total = float(strategy.reduce("SUM", share, axis=None))
    embedding_grads = [np.concatenate([g.numpy() for g in local(x)]) for x in grads[:3]]
    kernel_grad = strategy.reduce("SUM", grads[3], axis=None).numpy()
    return total, [int(b) for b in local(local_batch)], embedding_grads + [kernel_grad]


@pytest.mark.parametrize("symmetric", [False, True])
def test_cross_replica_loss_and_gradients_match_one_device(mirrored_strategy, symmetric):
    a, p, n = _random((8, 5), (8, 5), (8, 2, 5), seed=12)
    (w,) = _random((5, 4), seed=13)
    total, local_batches, grads = _run_mirrored(mirrored_strategy, a, p, n, w, symmetric)
    assert local_batches == [4, 4]  # the global batch of 8 split 4 + 4
    expected_loss, expected_grads = _single_device(a, p, n, w, symmetric)
    # Every local anchor saw the global candidates: matches the global reference.
    np.testing.assert_allclose(total, expected_loss, atol=1e-5)
    np.testing.assert_allclose(
        total, _reference_info_nce(a @ w, p @ w, n @ w, 0.1, symmetric=symmetric).mean(), atol=1e-5
    )
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_stop_gradient_gather_would_be_wrong(mirrored_strategy):
    """Why the op relies on all_gather's gradient instead of a stop-gradient copy.

    With the local tensor in its own slot of a stop-gradient gather, a
    replica's positives get no gradient from the other replicas' anchors, and
    the summed gradients are not the global ones.
    """
    a, p, n = _random((8, 5), (8, 5), (8, 1, 5), seed=14)
    (w,) = _random((5, 4), seed=15)

    def stop_gradient_gather(kernel, a, p, n):
        context = tf.distribute.get_replica_context()
        encode = lambda x: tf.tensordot(x, kernel, axes=1)  # noqa: E731
        ea, ep = ops.l2_normalize(encode(a)), ops.l2_normalize(encode(p))
        en = ops.l2_normalize(tf.reshape(encode(n), [-1, 4]))
        rid = context.replica_id_in_sync_group

        def local_in_its_slot(x):
            rows = x.shape[0]
            others = tf.stop_gradient(context.all_gather(x, axis=0))
            return tf.concat([others[: rid * rows], x, others[(rid + 1) * rows :]], axis=0)

        candidates = tf.concat([local_in_its_slot(ep), local_in_its_slot(en)], axis=0)
        logits = tf.matmul(ea, candidates, transpose_b=True) / 0.1
        labels = rid * 4 + tf.range(4)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    total, _, grads = _run_mirrored(mirrored_strategy, a, p, n, w, False, stop_gradient_gather)
    expected_loss, expected_grads = _single_device(a, p, n, w, False)
    np.testing.assert_allclose(total, expected_loss, atol=1e-5)  # same value...
    assert np.abs(grads[1] - expected_grads[1]).max() > 1e-3  # ...wrong gradients
    assert np.abs(grads[3] - expected_grads[3]).max() > 1e-3


def test_uneven_replica_batches_use_row_offsets(mirrored_strategy):
    strategy = mirrored_strategy
    a, p = _random((5, 4), (5, 4), seed=16)
    splits = {0: slice(0, 3), 1: slice(3, 5)}  # 3 + 2 rows

    def values(context):
        rows = splits[context.replica_id_in_sync_group]
        return tf.constant(a[rows]), tf.constant(p[rows])

    dist = strategy.experimental_distribute_values_from_function(values)
    losses = tf.function(lambda d: strategy.run(lambda x, y: ops.info_nce(x, y), args=d))(dist)
    got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(losses)])
    np.testing.assert_allclose(got, _reference_info_nce(a, p), rtol=1e-5)


def test_batch_of_one_per_replica_is_allowed_with_several_replicas(mirrored_strategy):
    strategy = mirrored_strategy
    a, p = _random((2, 4), (2, 4), seed=17)
    dataset = tf.data.Dataset.from_tensor_slices((a, p)).batch(2)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    losses = tf.function(lambda b: strategy.run(lambda x, y: ops.info_nce(x, y), args=b))(batch)
    got = np.concatenate([x.numpy() for x in strategy.experimental_local_results(losses)])
    np.testing.assert_allclose(got, _reference_info_nce(a, p), rtol=1e-5)


def test_cross_replica_concat_is_identity_on_one_device():
    value, offset = ops.cross_replica_concat(tf.ones((3, 2)))
    assert value.shape == (3, 2) and int(offset) == 0


# ---------------------------------------------------------------------------
# Distances.
# ---------------------------------------------------------------------------


def test_pair_distance_against_numpy():
    x, y = _random((5, 3), (5, 3), seed=18)
    np.testing.assert_allclose(
        ops.pair_distance(x, y, "euclidean").numpy(), np.linalg.norm(x - y, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(
        ops.pair_distance(x, y, "squared_euclidean").numpy(),
        ((x - y) ** 2).sum(-1),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        ops.pair_distance(x, y, "cosine").numpy(),
        1 - (_normalize(x) * _normalize(y)).sum(-1),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="distance"):
        ops.pair_distance(x, y, "manhattan")


def test_euclidean_distance_of_identical_vectors_has_finite_gradient():
    x = tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = ops.pair_distance(x, x, "euclidean")
    assert float(d[0]) == 0.0
    assert np.isfinite(tape.gradient(d, x).numpy()).all()
