import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.ops import replaced_token_detection as rtd


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_counter_uniform_is_uniform_and_the_same_under_xla():
    seed = tf.constant([2**40 + 3, -7], tf.int64)
    u = rtd.counter_uniform([100_000], seed).numpy()
    assert 0.0 < u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    chi2 = ((counts - 5000) ** 2 / 5000).sum()
    assert chi2 < 50  # 19 degrees of freedom: p ~ 1e-4
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02  # neighbours uncorrelated
    xla = tf.function(lambda s: rtd.counter_uniform([100_000], s), jit_compile=True)(seed)
    np.testing.assert_array_equal(u, xla.numpy())


def test_gumbel_noise_is_seeded_and_standard_gumbel():
    seed = tf.constant([3, 4], tf.int64)
    a = rtd.gumbel_noise([200_000], seed).numpy()
    np.testing.assert_array_equal(a, rtd.gumbel_noise([200_000], seed).numpy())
    assert not np.array_equal(a, rtd.gumbel_noise([200_000], tf.constant([3, 5], tf.int64)).numpy())
    assert np.isfinite(a).all()
    assert abs(a.mean() - np.euler_gamma) < 0.01          # E = 0.5772
    assert abs(a.var() - np.pi ** 2 / 6) < 0.03           # Var = pi^2 / 6


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_gumbel_max_sample_follows_the_tempered_softmax(temperature):
    logits = np.array([2.0, 1.0, 0.0, -1.0, 0.5], "float32")
    n = 40_000
    samples = rtd.gumbel_max_sample(
        np.tile(logits, (n, 1)), tf.constant([0, 1], tf.int64), temperature
    ).numpy()
    assert samples.dtype == np.int32 and samples.shape == (n,)
    frequencies = np.bincount(samples, minlength=5) / n
    expected = softmax(logits / temperature)
    # 4.5 standard errors per class.
    assert np.all(np.abs(frequencies - expected) < 4.5 * np.sqrt(expected * (1 - expected) / n))


def test_gumbel_max_sample_disallows_ids_and_stops_gradients():
    logits = tf.Variable(np.zeros((64, 3, 4), "float32"))
    disallowed = np.random.default_rng(0).integers(0, 4, (64, 3))
    with tf.GradientTape() as tape:
        samples = rtd.gumbel_max_sample(logits, tf.constant([1, 2], tf.int64), 1.0, disallowed)
        total = tf.reduce_sum(tf.cast(samples, tf.float32))
    assert tape.gradient(total, logits) is None
    assert not np.any(samples.numpy() == disallowed)
    with pytest.raises(ValueError, match="temperature"):
        rtd.gumbel_max_sample(logits, tf.constant([1, 2], tf.int64), 0.0)


def test_sampling_compiles_with_xla_and_matches_graph_mode():
    logits = np.random.default_rng(1).normal(size=(4, 3, 50)).astype("float32")
    seed = tf.constant([5, 6], tf.int64)
    fn = lambda l, s: rtd.gumbel_max_sample(l, s, 0.7)  # noqa: E731
    graph = tf.function(fn)(logits, seed)
    xla = tf.function(fn, jit_compile=True)(logits, seed)
    np.testing.assert_array_equal(graph.numpy(), xla.numpy())


def test_replica_noise_is_the_global_batch_noise(mirrored_strategy):
    seed = tf.constant([7, 8], tf.int64)
    shape = (3, 2, 5)  # per replica
    per_replica = mirrored_strategy.run(
        tf.function(lambda: rtd.replica_gumbel_noise(shape, seed))
    )
    parts = [p.numpy() for p in mirrored_strategy.experimental_local_results(per_replica)]
    global_noise = rtd.gumbel_noise((6, 2, 5), seed).numpy()
    # Same values up to float rounding of the logs in another graph.
    np.testing.assert_allclose(np.concatenate(parts), global_noise, rtol=1e-6, atol=1e-6)
    # One replica (no strategy): the plain noise.
    np.testing.assert_array_equal(rtd.replica_gumbel_noise(shape, seed).numpy(),
                                  rtd.gumbel_noise(shape, seed).numpy())
    # An offset draw is the slice of the larger draw.
    np.testing.assert_array_equal(rtd.counter_uniform((3, 2, 5), seed, offset=30).numpy(),
                                  rtd.counter_uniform((6, 2, 5), seed).numpy()[3:])


def test_corrupt_tokens_matches_electra_semantics():
    mask = 9
    token_ids = np.array([[1, 10, mask, 12, mask, 2, 0, 0],
                          [1, mask, 21, 22, 2, 0, 0, 0]], "int32")
    positions = np.array([[2, 4, 0], [1, 2, 0]], "int32")
    originals = np.array([[11, 13, 0], [20, 21, 0]], "int32")
    weights = np.array([[1, 1, 0], [1, 1, 0]], "float32")
    sampled = np.array([[11, 30, 40], [25, 21, 40]], "int32")  # slot 3 unused
    corrupted, labels = rtd.corrupt_tokens(token_ids, positions, originals, weights, sampled)
    np.testing.assert_array_equal(
        corrupted.numpy(),
        [[1, 10, 11, 12, 30, 2, 0, 0],  # [CLS] untouched by the unused slot at 0
         [1, 25, 21, 22, 2, 0, 0, 0]],
    )
    # Replaced iff masked and sampled != original (a correct sample is original).
    np.testing.assert_array_equal(
        labels.numpy(),
        [[0, 0, 0, 0, 1, 0, 0, 0],
         [0, 1, 0, 0, 0, 0, 0, 0]],
    )
    assert labels.dtype == tf.float32 and corrupted.dtype == tf.int32


def test_corrupt_tokens_random_against_numpy_reference():
    rng = np.random.default_rng(3)
    b, length, slots, v = 16, 20, 5, 30
    token_ids = rng.integers(5, v, (b, length)).astype("int32")
    positions = np.stack([np.sort(rng.choice(length, slots, replace=False)) for _ in range(b)]).astype("int32")
    weights = (rng.random((b, slots)) < 0.7).astype("float32")
    originals = np.take_along_axis(token_ids, positions, 1)
    masked = token_ids.copy()
    np.put_along_axis(masked, positions, 4, 1)
    sampled = np.where(rng.random((b, slots)) < 0.3, originals, rng.integers(5, v, (b, slots))).astype("int32")
    corrupted, labels = rtd.corrupt_tokens(masked, positions, originals, weights, sampled)
    expected_ids = masked.copy()
    expected_labels = np.zeros((b, length), "float32")
    for i in range(b):
        for j in range(slots):
            p = positions[i, j]
            if weights[i, j] > 0:
                expected_ids[i, p] = sampled[i, j]
                expected_labels[i, p] = float(sampled[i, j] != token_ids[i, p])
    np.testing.assert_array_equal(corrupted.numpy(), expected_ids)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)


def test_rtd_loss_is_sigmoid_cross_entropy_over_real_tokens():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(4, 6)).astype("float32") * 3
    labels = (rng.random((4, 6)) < 0.3).astype("float32")
    weights = np.ones((4, 6), bool)
    weights[:, 4:] = False
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    per_token = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = (per_token * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(rtd.rtd_loss(labels, logits, weights)), expected, rtol=1e-5)
    assert float(rtd.rtd_loss(labels, logits, np.zeros_like(weights))) == 0.0
    # bfloat16 logits are read in float32.
    value = rtd.rtd_loss(labels, tf.cast(logits, tf.bfloat16), weights)
    assert value.dtype == tf.float32


def test_rtd_loss_replica_shares_sum_to_the_global_mean(mirrored_strategy):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 4, 6)).astype("float32")
    labels = (rng.random((2, 4, 6)) < 0.3).astype("float32")
    weights = np.ones((2, 4, 6), "float32")
    weights[0, :, 2:] = 0  # replicas hold different token counts
    values = iter([(labels[i], logits[i], weights[i]) for i in range(2)])

    def value_fn(context):
        return tuple(tf.constant(t) for t in next(values))

    per_replica = mirrored_strategy.experimental_distribute_values_from_function(value_fn)
    shares = mirrored_strategy.run(tf.function(rtd.rtd_loss), args=per_replica)
    total = sum(float(s) for s in mirrored_strategy.experimental_local_results(shares))
    expected = float(rtd.rtd_loss(labels.reshape(8, 6), logits.reshape(8, 6), weights.reshape(8, 6)))
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_rtd_confusion_counts():
    labels = np.array([[1, 0, 1, 0, 1]], "float32")
    logits = np.array([[2.0, 1.0, -1.0, -2.0, 3.0]], "float32")
    weights = np.array([[1, 1, 1, 1, 0]], "float32")
    np.testing.assert_array_equal(rtd.rtd_confusion(labels, logits, weights).numpy(), [1, 1, 1, 1])
    np.testing.assert_array_equal(rtd.rtd_confusion(labels, logits).numpy(), [2, 1, 1, 1])
    np.testing.assert_array_equal(
        rtd.rtd_confusion(labels, logits, weights, threshold=1.5).numpy(), [1, 0, 1, 2])


def test_exported_from_ops_package():
    for name in ("gumbel_max_sample", "corrupt_tokens", "rtd_loss", "rtd_confusion"):
        assert getattr(ops, name) is getattr(rtd, name)
