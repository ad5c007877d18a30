import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops


def _data(batch=3, length=7, hidden=16, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(batch, length, hidden)).astype("float32")
    k = (rng.normal(size=(hidden, vocab)) * 0.3).astype("float32")
    y = rng.integers(0, vocab, (batch, length)).astype("int32")
    w = (rng.random((batch, length)) > 0.3).astype("float32")
    return h, k, y, w


def _numpy_loss(h, k, y, w, smoothing=0.0):
    logits = h.astype(np.float64) @ k.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    label_logit = np.take_along_axis(logits, y[..., None], -1)[..., 0]
    losses = (1 - smoothing) * (lse - label_logit) + smoothing * (lse - logits.mean(-1))
    return (losses * w).sum() / w.sum()


def _plain_loss(h, k, y, w, smoothing=0.0):
    """Independent autodiff reference: the full logits, Keras' smoothing."""
    logits = tf.matmul(h, k)
    onehot = tf.one_hot(y, k.shape[1])
    losses = tf.keras.losses.categorical_crossentropy(
        onehot, logits, from_logits=True, label_smoothing=smoothing
    )
    return tf.reduce_sum(losses * w) / tf.reduce_sum(w)


def _value_and_grads(fn, h, k):
    h, k = tf.constant(h), tf.constant(k)
    with tf.GradientTape() as tape:
        tape.watch([h, k])
        loss = fn(h, k)
    return loss, tape.gradient(loss, [h, k])


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 21, 1000])
def test_loss_and_gradients_match_full_logits(chunk_size):
    h, k, y, w = _data()
    loss, (dh, dk) = _value_and_grads(
        lambda a, b: ops.chunked_cross_entropy(a, b, y, w, chunk_size=chunk_size), h, k
    )
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(float(loss), _numpy_loss(h, k, y, w), rtol=1e-6, atol=1e-5)
    ref, (rh, rk) = _value_and_grads(lambda a, b: _plain_loss(a, b, y, w), h, k)
    np.testing.assert_allclose(dh.numpy(), rh.numpy(), atol=1e-6)
    np.testing.assert_allclose(dk.numpy(), rk.numpy(), atol=1e-6)
    # Positions of weight 0 get no gradient.
    assert np.all(dh.numpy()[w == 0] == 0)


def test_label_smoothing_matches_reference():
    h, k, y, w = _data(seed=1)
    loss, (dh, dk) = _value_and_grads(
        lambda a, b: ops.chunked_cross_entropy(a, b, y, w, chunk_size=4, label_smoothing=0.1), h, k
    )
    np.testing.assert_allclose(float(loss), _numpy_loss(h, k, y, w, 0.1), atol=1e-5)
    _, (rh, rk) = _value_and_grads(lambda a, b: _plain_loss(a, b, y, w, 0.1), h, k)
    np.testing.assert_allclose(dh.numpy(), rh.numpy(), atol=1e-6)
    np.testing.assert_allclose(dk.numpy(), rk.numpy(), atol=1e-6)


def test_token_losses_and_correct():
    h, k, y, _ = _data(batch=2, length=5)
    y[0, 0] = int(np.argmax(h[0, 0] @ k))
    losses, correct = ops.chunked_token_cross_entropy(h, k, y, chunk_size=3, return_correct=True)
    assert losses.shape == (2, 5) and correct.shape == (2, 5)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(y, h @ k)
    np.testing.assert_allclose(losses.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), (np.argmax(h @ k, -1) == y).astype("float32"))
    assert correct.numpy()[0, 0] == 1.0


def test_log_sum_squared_probs_in_the_same_pass():
    h, k, y, _ = _data(batch=2, length=5)
    losses, correct, log_sum_squares = ops.chunked_token_cross_entropy(
        h, k, y, chunk_size=3, return_correct=True, return_log_sum_squared_probs=True)
    logits = (h @ k).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(log_sum_squares.numpy(), np.log((probs ** 2).sum(-1)), atol=1e-5)
    assert np.all(log_sum_squares.numpy() <= 0.0) and log_sum_squares.shape == (2, 5)
    np.testing.assert_array_equal(correct.numpy(), (np.argmax(h @ k, -1) == y).astype("float32"))
    # Alone (without `correct`), and the losses' gradients unchanged by the extra output.
    hv, kv = tf.Variable(h), tf.Variable(k)
    grads = []
    for extra in (False, True):
        with tf.GradientTape() as tape:
            out = ops.chunked_token_cross_entropy(hv, kv, y, chunk_size=3,
                                                  return_log_sum_squared_probs=extra)
            total = tf.reduce_sum(out[0] if extra else out)
            if extra:  # no gradient reaches the hidden states or kernel through it
                total += 5.0 * tf.reduce_sum(out[1])
        grads.append([g.numpy() for g in tape.gradient(total, [hv, kv])])
    np.testing.assert_allclose(out[1].numpy(), log_sum_squares.numpy(), atol=1e-6)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_xla_matches_eager():
    h, k, y, w = _data(batch=2, length=9)

    def step(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = ops.chunked_cross_entropy(a, b, y, w, chunk_size=4)
        return loss, tape.gradient(loss, [a, b])

    eager = step(tf.constant(h), tf.constant(k))
    xla = tf.function(step, jit_compile=True)(tf.constant(h), tf.constant(k))
    np.testing.assert_allclose(float(xla[0]), float(eager[0]), atol=1e-5)
    for a, b in zip(xla[1], eager[1]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_bfloat16_hidden_gives_float32_loss_and_kernel_gradient():
    h, k, y, w = _data(batch=2, length=16, hidden=32, vocab=64)
    hb = tf.cast(h, tf.bfloat16)
    with tf.GradientTape() as tape:
        tape.watch([hb])
        kt = tf.constant(k)
        tape.watch(kt)
        loss = ops.chunked_cross_entropy(hb, kt, y, w, chunk_size=8)
    dh, dk = tape.gradient(loss, [hb, kt])
    assert loss.dtype == tf.float32 and dh.dtype == tf.bfloat16 and dk.dtype == tf.float32
    np.testing.assert_allclose(float(loss), _numpy_loss(h, k, y, w), rtol=2e-2)


def test_zero_weight_is_zero_not_nan():
    h, k, y, _ = _data()
    loss, (dh, dk) = _value_and_grads(
        lambda a, b: ops.chunked_cross_entropy(a, b, y, np.zeros_like(y, "float32")), h, k
    )
    assert float(loss) == 0.0
    assert np.all(dh.numpy() == 0) and np.all(dk.numpy() == 0)


def test_mirrored_shares_sum_to_global_weighted_mean(mirrored_strategy):
    h, k, y, w = _data(batch=4, length=6)
    w[:2] = 0.0
    w[2:, :2] = 1.0  # replica 0 has no weight, replica 1 all of it
    dataset = tf.data.Dataset.from_tensor_slices((h, y, w)).batch(4)
    batch = next(iter(mirrored_strategy.experimental_distribute_dataset(dataset)))

    def replica_fn(hh, yy, ww):
        return ops.chunked_cross_entropy(hh, k, yy, ww, chunk_size=5)

    shares = mirrored_strategy.run(replica_fn, args=batch)
    total = mirrored_strategy.reduce("SUM", shares, axis=None)
    np.testing.assert_allclose(float(total), _numpy_loss(h, k, y, w), atol=1e-5)


def test_never_holds_the_full_logits():
    # Peak TensorFlow allocation of loss + gradients: chunked vs full logits.
    # Full logits are 2 x 512 x 4000 floats (16 MB); a chunk of 128 is 2 MB.
    h, k, y, w = _data(batch=2, length=512, hidden=32, vocab=4000, seed=2)
    h, k = tf.constant(h), tf.constant(k)

    def peak(fn):
        fn(h, k)  # trace
        tf.config.experimental.reset_memory_stats("CPU:0")
        base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        fn(h, k)[0].numpy()
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base

    def grads(loss_fn):
        @tf.function
        def fn(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                loss = loss_fn(a, b)
            return loss, tape.gradient(loss, [a, b])
        return fn

    chunked = grads(lambda a, b: ops.chunked_cross_entropy(a, b, y, w, chunk_size=128))
    plain = grads(lambda a, b: ops.masked_lm_loss(y, tf.matmul(a, b), w))
    np.testing.assert_allclose(float(chunked(h, k)[0]), float(plain(h, k)[0]), atol=1e-5)
    full_logits_bytes = 2 * 512 * 4000 * 4
    chunk_logits_bytes = 128 * 4000 * 4
    plain_peak, chunked_peak = peak(plain), peak(chunked)
    assert plain_peak >= full_logits_bytes
    # A few chunk-sized buffers (logits, softmax, gradient), never the full logits.
    assert chunked_peak < 4 * chunk_logits_bytes
    assert chunked_peak < 0.4 * plain_peak


def test_bad_input_fails_loudly():
    h, k, y, w = _data()
    with pytest.raises(ValueError, match=r"labels.*\[0, 50\)"):
        ops.chunked_cross_entropy(h, k, y + 50, w)
    with pytest.raises(ValueError, match="labels"):
        ops.chunked_cross_entropy(h, k, y - 100, w)

    @tf.function
    def graph(labels):
        return ops.chunked_cross_entropy(h, k, labels, w)

    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        graph(tf.constant(y + 50))
    with pytest.raises(ValueError, match="chunk_size"):
        ops.chunked_cross_entropy(h, k, y, chunk_size=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.chunked_cross_entropy(h, k, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match="hidden_dim"):
        ops.chunked_cross_entropy(h, k[:5], y)
    with pytest.raises(ValueError, match="leading shape"):
        ops.chunked_cross_entropy(h, k, y[:, :3])
    with pytest.raises(ValueError, match="transpose"):
        ops.chunked_cross_entropy(h, k[None], y)


def test_causal_lm_targets_reset_at_document_boundaries():
    token_ids = np.array([[1, 5, 6, 2, 1, 7, 2, 0], [9, 8, 2, 1, 4, 4, 4, 4]])
    padding = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])
    segments = np.array([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1, 1]])
    labels, weights = ops.causal_lm_targets(token_ids, padding, segments)
    # Independent loop reference.
    exp_labels = np.zeros_like(token_ids)
    exp_weights = np.zeros(token_ids.shape, "float32")
    for b in range(2):
        for t in range(7):
            if padding[b, t] and padding[b, t + 1] and segments[b, t] == segments[b, t + 1]:
                exp_labels[b, t] = token_ids[b, t + 1]
                exp_weights[b, t] = 1.0
    np.testing.assert_array_equal(labels.numpy(), exp_labels)
    np.testing.assert_array_equal(weights.numpy(), exp_weights)
    # The end token of a document never predicts the next document's start.
    assert weights.numpy()[0, 3] == 0 and weights.numpy()[1, 2] == 0
    # Without segment ids only padding and the last position are excluded.
    _, weights = ops.causal_lm_targets(token_ids, padding)
    assert weights.numpy()[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


def test_out_of_range_label_under_xla_is_nan_not_a_clamped_loss():
    # XLA drops the asserts and clamps the gather: without the poison the
    # label 50 would score as id 49, a finite wrong loss.
    h, k, y, w = _data(batch=2, length=5)
    step = tf.function(
        lambda labels: ops.chunked_cross_entropy(h, k, labels, w, chunk_size=4), jit_compile=True
    )
    assert np.isfinite(float(step(tf.constant(y))))
    for bad in (50, -1):
        labels = y.copy()
        labels[np.nonzero(w)[0][0], np.nonzero(w)[1][0]] = bad
        assert np.isnan(float(step(tf.constant(labels))))
    # At a position of weight 0 an invalid label does not count.
    labels = y.copy()
    labels[w == 0] = 50
    np.testing.assert_allclose(float(step(tf.constant(labels))), float(step(tf.constant(y))))


def test_nan_hidden_at_a_weight_zero_position_is_ignored():
    h, k, y, w = _data()
    poisoned = h.copy()
    poisoned[w == 0] = np.nan
    loss = ops.chunked_cross_entropy(poisoned, k, y, w, chunk_size=4)
    np.testing.assert_allclose(float(loss), _numpy_loss(h, k, y, w), rtol=1e-5)


def test_negative_and_mis_shaped_weights_are_rejected():
    h, k, y, w = _data()
    with pytest.raises(ValueError, match="sample_weight.*non-negative"):
        ops.chunked_cross_entropy(h, k, y, -w)
    with pytest.raises(ValueError, match=r"sample_weight.*\(3, 2\).*\(3, 7\)"):
        ops.chunked_cross_entropy(h, k, y, w[:, :2])


def test_nan_hidden_at_a_weight_zero_position_gets_finite_gradients():
    h, k, y, w = _data()
    poisoned = h.copy()
    poisoned[w == 0] = np.nan
    grads = []
    for hidden in (h, poisoned):
        hidden, kernel = tf.constant(hidden), tf.constant(k)
        with tf.GradientTape() as tape:
            tape.watch([hidden, kernel])
            loss = ops.chunked_cross_entropy(hidden, kernel, y, w, chunk_size=4)
        grads.append([g.numpy() for g in tape.gradient(loss, [hidden, kernel])])
    (_, clean_kernel), (poisoned_hidden, poisoned_kernel) = grads
    assert np.isfinite(poisoned_hidden).all() and (poisoned_hidden[w == 0] == 0).all()
    np.testing.assert_allclose(poisoned_kernel, clean_kernel, atol=1e-6)
    np.testing.assert_allclose(poisoned_hidden, grads[0][0], atol=1e-6)
