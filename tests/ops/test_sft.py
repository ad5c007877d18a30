import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops.sft import example_token_means
from kobjectives.ops.sft import global_example_mean


def _reference(values, weights, segment_ids):
    """Brute force: every maximal run of equal ids in a row is an example."""
    means = []
    for v, w, s in zip(values, weights, segment_ids):
        start = 0
        for t in range(1, len(s) + 1):
            if t == len(s) or s[t] != s[t - 1]:
                total = w[start:t].sum()
                if total > 0:
                    means.append((v[start:t] * w[start:t]).sum() / total)
                start = t
    return np.asarray(means)


def _random_case(seed, rows=5, length=12):
    rng = np.random.default_rng(seed)
    values = rng.random((rows, length)).astype("float32") * 4
    weights = (rng.random((rows, length)) < 0.6).astype("float32")
    segment_ids = np.zeros((rows, length), "int32")
    for r in range(rows):
        t, k = 0, 1
        while t < length:
            n = int(rng.integers(1, 5))
            segment_ids[r, t:t + n] = k
            t, k = t + n, k + 1
        pad = rng.integers(0, 4)
        if pad:
            segment_ids[r, -pad:] = 0
            weights[r, -pad:] = 0
    return values, weights, segment_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_example_mean_matches_brute_force(seed):
    values, weights, segment_ids = _random_case(seed)
    expected = _reference(values, weights, segment_ids)
    means, present = example_token_means(values, weights, segment_ids)
    got = means.numpy()[present.numpy() > 0]
    np.testing.assert_allclose(np.sort(got), np.sort(expected), rtol=1e-6)
    # slot j of a row is its j-th example, in order
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(
        float(global_example_mean(values, weights, segment_ids)), expected.mean(), rtol=1e-6)


def test_hand_case_and_one_example_per_row():
    values = np.array([[1.0, 3.0, 5.0, 9.0, 13.0, 7.0], [2.0, 4.0, 6.0, 0.0, 0.0, 0.0]])
    weights = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    segment_ids = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0]])
    # (mean(1, 3) + mean(5, 9, 13) + mean(2, 4, 6)) / 3 = (2 + 9 + 4) / 3
    assert float(global_example_mean(values, weights, segment_ids)) == pytest.approx(5.0)
    # Without segment ids every row is one example: (mean(1..13) + 4) / 2
    assert float(global_example_mean(values, weights)) == pytest.approx((31 / 5 + 4) / 2)
    equal = np.ones((2, 3))
    assert float(global_example_mean(values[:, :3], equal)) == pytest.approx(
        values[:, :3].mean())  # equal-length rows: example mean == token mean


def test_masked_nan_is_ignored_and_gradients_stay_finite():
    values = tf.Variable([[1.0, np.nan, 2.0, np.inf]])
    weights = tf.constant([[1.0, 0.0, 1.0, 0.0]])
    segment_ids = tf.constant([[1, 1, 2, 2]])
    with tf.GradientTape() as tape:
        loss = global_example_mean(values, weights, segment_ids)
    assert float(loss) == pytest.approx(1.5)
    grad = tape.gradient(loss, values).numpy()
    np.testing.assert_array_equal(grad, [[0.5, 0.0, 0.5, 0.0]])
    # No weight at all: 0, not NaN.
    assert float(global_example_mean([[1.0, 2.0]], [[0.0, 0.0]], [[1, 1]])) == 0.0


def test_jit_matches_eager_with_static_shapes():
    values, weights, segment_ids = _random_case(3)
    eager = global_example_mean(values, weights, segment_ids)
    jit = tf.function(global_example_mean, jit_compile=True)(
        tf.constant(values), tf.constant(weights), tf.constant(segment_ids))
    np.testing.assert_allclose(float(jit), float(eager), rtol=1e-6)
    spec = tf.TensorSpec([None, 12])
    traced = tf.function(lambda v, w, s: example_token_means(v, w, s)).get_concrete_function(
        spec, spec, tf.TensorSpec([None, 12], tf.int32))
    assert [tuple(o.shape) for o in traced.outputs] == [(None, 12), (None, 12)]


def test_mirrored_replica_shares_sum_to_the_global_example_mean(mirrored_strategy):
    # Replica 0 holds 3 examples, replica 1 holds 1: a per-replica mean
    # averaged over replicas would be wrong.
    values = np.array([[1.0, 3.0, 5.0, 7.0], [2.0, 4.0, 6.0, 8.0]], "float32")
    weights = np.ones((2, 4), "float32")
    segment_ids = np.array([[1, 2, 2, 3], [1, 1, 1, 1]], "int32")
    expected = _reference(values, weights, segment_ids).mean()  # (1 + 4 + 7 + 5) / 4

    def replica_fn():
        index = tf.distribute.get_replica_context().replica_id_in_sync_group
        row = lambda a: tf.gather(tf.constant(a), [index])  # noqa: E731
        return global_example_mean(row(values), row(weights), row(segment_ids))

    shares = mirrored_strategy.experimental_local_results(mirrored_strategy.run(replica_fn))
    np.testing.assert_allclose(sum(float(s) for s in shares), expected, rtol=1e-6)


def test_bad_input_fails_clearly():
    with pytest.raises(TypeError, match="segment_ids.*int32"):
        example_token_means([[1.0, 2.0]], [[1.0, 1.0]], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="segment_ids.*shape of the losses"):
        example_token_means([[1.0, 2.0]], [[1.0, 1.0]], [[1, 1, 1]])
    with pytest.raises(ValueError, match="non-negative"):
        global_example_mean([[1.0, 2.0]], [[1.0, -1.0]], [[1, 1]])
