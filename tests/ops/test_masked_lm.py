import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops


def _reference_loss(labels, logits, weights):
    """Independent numpy reference: log-sum-exp by hand, float64."""
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, np.asarray(labels)[..., None], -1)[..., 0]
    ce = log_z - picked
    w = np.asarray(weights, np.float64)
    return (ce * w).sum() / w.sum()


def test_hand_computed_case():
    # Slot 1 has probability 0.25 on its label, slot 2 is an unused slot.
    logits = np.log(np.array([[[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]], "float32"))
    loss = ops.masked_lm_loss([[0, 1, 1]], logits, [[1.0, 1.0, 0.0]])
    expected = (-np.log(0.25) - np.log(0.5)) / 2  # divided by 2 weights, not 3 slots
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_matches_reference_on_random_case():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 50)).astype("float32") * 5
    labels = rng.integers(0, 50, (4, 7))
    weights = (rng.random((4, 7)) < 0.6).astype("float32")
    loss = ops.masked_lm_loss(labels, logits, weights)
    np.testing.assert_allclose(float(loss), _reference_loss(labels, logits, weights), rtol=1e-5)


def test_no_weights_means_plain_mean():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 9)).astype("float32")
    labels = rng.integers(0, 9, (3, 4))
    np.testing.assert_allclose(
        float(ops.masked_lm_loss(labels, logits)),
        _reference_loss(labels, logits, np.ones((3, 4))),
        rtol=1e-5,
    )


def test_zero_weights_give_zero_not_nan():
    logits = tf.random.normal((2, 3, 10))
    loss = ops.masked_lm_loss(tf.zeros((2, 3), tf.int32), logits, tf.zeros((2, 3)))
    assert float(loss) == 0.0


def test_bfloat16_logits_reduce_in_float32():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 300)).astype("float32") * 8
    labels = rng.integers(0, 300, (2, 5))
    loss = ops.masked_lm_loss(labels, tf.cast(logits, tf.bfloat16))
    assert loss.dtype == tf.float32
    rounded = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(float(loss), _reference_loss(labels, rounded, np.ones((2, 5))), rtol=1e-5)


def test_large_logits_are_stable():
    logits = tf.constant([[[1e4, -1e4, 0.0]]])
    loss = ops.masked_lm_loss([[1]], logits)
    np.testing.assert_allclose(float(loss), 2e4, rtol=1e-6)


def test_label_out_of_vocabulary_names_the_id():
    with pytest.raises(ValueError, match=r"\[0, 10\)(.|\n)*Received 12"):
        ops.masked_lm_loss([[12]], tf.zeros((1, 1, 10)))


def test_global_weighted_mean_under_mirrored_strategy_matches_one_device(mirrored_strategy):
    strategy = mirrored_strategy
    rng = np.random.default_rng(3)
    values = rng.random((8, 5)).astype("float32")
    weights = (rng.random((8, 5)) < 0.5).astype("float32")
    weights[:4] = 1.0  # very different total weight on the two replicas
    dataset = tf.data.Dataset.from_tensor_slices((values, weights)).batch(8)
    dist = strategy.experimental_distribute_dataset(dataset)
    per_replica = strategy.run(ops.global_weighted_mean, args=next(iter(dist)))
    total = strategy.reduce("SUM", per_replica, axis=None)
    expected = (values * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)


@pytest.mark.parametrize("bad_logit", [np.nan, -np.inf, np.inf])
def test_non_finite_logits_in_weight_zero_slots_are_ignored(bad_logit):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 4, 9)).astype("float32")
    labels = rng.integers(0, 9, (2, 4))
    weights = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    poisoned = logits.copy()
    poisoned[weights == 0] = bad_logit
    expected = _reference_loss(labels, logits, weights)
    np.testing.assert_allclose(float(ops.masked_lm_loss(labels, poisoned, weights)), expected, rtol=1e-5)
    # An ignored slot whose label logit is -inf (an infinite loss) too.
    poisoned = logits.copy()
    poisoned[0, 3, labels[0, 3]] = -np.inf
    np.testing.assert_allclose(float(ops.masked_lm_loss(labels, poisoned, weights)), expected, rtol=1e-5)


def test_invalid_labels_fail_eagerly_and_are_nan_under_xla():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 7)).astype("float32")
    labels = np.array([[1, 2, 3], [4, 5, 6]], "float32")
    ops.masked_lm_loss(labels, logits)  # whole-number floats are labels
    for bad in (2.7, 7.0, -1.0):
        wrong = labels.copy()
        wrong[0, 1] = bad
        with pytest.raises(ValueError, match=r"labels.*\[0, 7\)"):
            ops.masked_lm_loss(wrong, logits)
        xla = tf.function(ops.masked_lm_loss, jit_compile=True)
        assert np.isnan(float(xla(tf.constant(wrong), tf.constant(logits))))


def test_negative_and_mis_shaped_weights_are_rejected():
    logits = np.zeros((2, 3, 5), "float32")
    labels = np.zeros((2, 3), "int32")
    with pytest.raises(ValueError, match="sample_weight.*non-negative"):
        ops.masked_lm_loss(labels, logits, [[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"sample_weight.*\(2, 2\)"):
        ops.masked_lm_loss(labels, logits, np.ones((2, 2), "float32"))


@pytest.mark.parametrize("bad_logit", [np.nan, -np.inf, np.inf])
def test_non_finite_logits_in_weight_zero_slots_get_a_zero_gradient(bad_logit):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 4, 9)).astype("float32")
    labels = rng.integers(0, 9, (2, 4))
    weights = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], "float32")
    poisoned = logits.copy()
    poisoned[weights == 0] = bad_logit
    grads = []
    for value in (logits, poisoned):
        value = tf.constant(value)
        with tf.GradientTape() as tape:
            tape.watch(value)
            loss = ops.masked_lm_loss(labels, value, weights)
        grads.append(tape.gradient(loss, value).numpy())
    assert np.isfinite(grads[1]).all()
    assert (grads[1][weights == 0] == 0).all()
    np.testing.assert_allclose(grads[1], grads[0], atol=1e-7)


def test_nan_or_infinite_weights_are_rejected():
    labels, logits = np.zeros((1, 2), "int32"), np.zeros((1, 2, 3), "float32")
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="sample_weight` must be finite"):
            ops.masked_lm_loss(labels, logits, np.array([[1.0, bad]], "float32"))


def test_an_invalid_label_at_a_weight_zero_slot_leaves_the_gradient_finite_under_xla():
    rng = np.random.default_rng(5)
    logits = tf.constant(rng.normal(size=(2, 3, 7)).astype("float32"))
    labels = np.array([[1, 9, 2], [3, -1, 4]])
    weights = np.array([[1, 0, 1], [1, 0, 1]], "float32")
    clean = np.where(weights > 0, labels, 0)

    @tf.function(jit_compile=True)
    def grad(y):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = ops.masked_lm_loss(y, logits, weights)
        return loss, tape.gradient(loss, logits)

    loss, g = grad(tf.constant(labels))
    expected_loss, expected = grad(tf.constant(clean))
    assert np.isfinite(g.numpy()).all()
    np.testing.assert_allclose(g, expected, atol=1e-7)
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-6)
