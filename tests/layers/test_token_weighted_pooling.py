import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import TokenWeightedPooling


def _case():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype("float32")
    ids = rng.integers(0, 10, (3, 5)).astype("int32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], bool)
    return hidden, ids, mask


def test_starts_as_mean_pooling():
    hidden, ids, mask = _case()
    pool = TokenWeightedPooling(10)
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(pool(hidden, ids, mask), expected, rtol=1e-6)


def test_weights_are_exp_of_scaled_parameters_and_get_gradients():
    hidden, ids, mask = _case()
    pool = TokenWeightedPooling(10, scale=2.0)
    v = np.linspace(-0.5, 0.5, 10).astype("float32")
    pool.log_weights.assign(v)
    w = np.exp(2.0 * v[ids]) * mask
    expected = (hidden * w[..., None]).sum(1) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(pool(hidden, ids, mask), expected, rtol=1e-5)
    jitted = tf.function(lambda h, i, m: pool(h, i, m), jit_compile=True)
    np.testing.assert_allclose(jitted(hidden, ids, mask), expected, rtol=1e-5)
    # Only ids at real positions get a gradient.
    target = np.ones((3, 4), "float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(pool(hidden, ids, mask) * target)
    grad = tf.convert_to_tensor(tape.gradient(loss, pool.log_weights)).numpy()
    real = np.unique(ids[mask])
    absent = np.setdiff1d(np.arange(10), real)
    assert np.abs(grad[real]).max() > 0
    np.testing.assert_array_equal(grad[absent], 0.0)


def test_config_round_trip_and_bad_arguments():
    pool = TokenWeightedPooling(10, scale=3.0, name="p")
    clone = TokenWeightedPooling.from_config(pool.get_config())
    assert (clone.vocabulary_size, clone.scale) == (10, 3.0)
    assert isinstance(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pool)),
                      TokenWeightedPooling)
    with pytest.raises(ValueError, match="vocabulary_size"):
        TokenWeightedPooling(0)
    with pytest.raises(ValueError, match="scale"):
        TokenWeightedPooling(10, scale=-1.0)


def test_out_of_range_ids_fail_eagerly_and_are_nan_under_xla_not_the_last_row():
    hidden, ids, mask = _case()
    pool = TokenWeightedPooling(10)
    bad = ids.copy()
    bad[0, 1] = 10
    with pytest.raises(ValueError, match=r"token_ids.*\[0, 10\)"):
        pool(hidden, bad, mask)
    xla = tf.function(lambda i: pool(hidden, i, mask), jit_compile=True)
    out = xla(tf.constant(bad)).numpy()
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()
    # A bad id at a padded position never counts.
    padded = ids.copy()
    padded[1, 4] = -1
    np.testing.assert_allclose(xla(tf.constant(padded)), pool(hidden, ids, mask), rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, padded, mask), pool(hidden, ids, mask), rtol=1e-6)
