import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.ops import cpc as cpc_ops


# ---------------------------------------------------------------------------
# Independent numpy reference: explicit loops over (b, t, k) and candidates.
# ---------------------------------------------------------------------------


def _reference(predictions, targets, mask, ids=None, temperature=1.0, similarity="dot"):
    p = np.asarray(predictions, np.float64)
    z = np.asarray(targets, np.float64)
    if similarity == "cosine":
        p = p / np.linalg.norm(p, axis=-1, keepdims=True)
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    B, T, K, _ = p.shape
    flat_z = z.reshape(B * T, -1)
    flat_valid = np.asarray(mask, bool).reshape(-1)
    flat_ids = None if ids is None else np.asarray(ids).reshape(-1)
    losses = np.zeros((B, T, K))
    correct = np.zeros((B, T, K))
    weights = np.zeros((B, T, K))
    candidates = np.zeros((B, T, K))
    for b in range(B):
        for t in range(T):
            for k in range(K):
                target = t + k + 1
                if target >= T or not mask[b][t] or not mask[b][target]:
                    continue
                positive = b * T + target
                negatives = [
                    n for n in range(B * T)
                    if n != positive and flat_valid[n]
                    and (flat_ids is None or flat_ids[n] != flat_ids[positive])
                ]
                logits = flat_z @ p[b, t, k] / temperature
                pos = logits[positive]
                neg = logits[negatives]
                both = np.concatenate([[pos], neg])
                m = both.max()
                losses[b, t, k] = m + np.log(np.exp(both - m).sum()) - pos
                correct[b, t, k] = float(len(neg) == 0 or pos > neg.max())
                weights[b, t, k] = 1.0
                candidates[b, t, k] = 1 + len(negatives)
    return losses, correct, weights, candidates


def _reference_loss(losses, weights):
    per_k = [
        (losses[..., k] * weights[..., k]).sum() / weights[..., k].sum()
        for k in range(losses.shape[-1]) if weights[..., k].sum() > 0
    ]
    return float(np.mean(per_k)) if per_k else 0.0


def _case(B=3, T=6, K=2, D=4, seed=0):
    rng = np.random.default_rng(seed)
    predictions = rng.normal(size=(B, T, K, D)).astype("float32")
    targets = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[1, T - 2:] = False  # right padding
    mask[-1, 2:] = False
    ids = rng.integers(0, 4, (B, T)).astype("int32")
    return predictions, targets, mask, ids


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def test_hand_sized_case_with_padding():
    # One sequence [a, b, PAD] and orthonormal encodings: the prediction of
    # position 0 for k=1 is exactly z_1. Candidates: z_0 and z_1 (z_2 is
    # padding), so loss = log(e^1 + e^0) - 1; the pairs (1, k=1) and
    # (0, k=2) target padding and do not count.
    z = np.eye(3, dtype="float32")[None]
    predictions = np.zeros((1, 3, 2, 3), "float32")
    predictions[0, 0, 0] = z[0, 1]
    predictions[0, 2, 0] = 100.0  # a padding position: must not count
    mask = np.array([[True, True, False]])
    terms = ops.cpc_info_nce(predictions, z, mask)
    np.testing.assert_array_equal(terms.weights.numpy()[0], [[1, 0], [0, 0], [0, 0]])
    np.testing.assert_allclose(terms.losses.numpy()[0, 0, 0], np.log(np.e + 1) - 1, rtol=1e-6)
    assert terms.num_candidates.numpy()[0, 0, 0] == 2  # padding is no candidate
    assert terms.correct.numpy()[0, 0, 0] == 1.0
    np.testing.assert_allclose(
        float(ops.cpc_loss(predictions, z, mask)), np.log(np.e + 1) - 1, rtol=1e-6)


@pytest.mark.parametrize("similarity,temperature", [("dot", 1.0), ("cosine", 0.1)])
@pytest.mark.parametrize("use_ids", [False, True], ids=["all_negatives", "exclude_same_token"])
def test_matches_numpy_reference(similarity, temperature, use_ids):
    predictions, targets, mask, ids = _case()
    ids = ids if use_ids else None
    terms = ops.cpc_info_nce(predictions, targets, mask, ids, temperature, similarity)
    ref = _reference(predictions, targets, mask, ids, temperature, similarity)
    for got, want in zip(terms, ref):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    loss = ops.cpc_loss(predictions, targets, mask, ids, temperature, similarity)
    np.testing.assert_allclose(float(loss), _reference_loss(ref[0], ref[2]), rtol=1e-5)


def test_same_token_candidates_are_not_negatives():
    # Every position holds the same token: no negatives remain, the loss is 0
    # and the positive counts as picked (chance is 1/1).
    predictions, targets, mask, _ = _case()
    ids = np.full(mask.shape, 7, "int32")
    terms = ops.cpc_info_nce(predictions, targets, mask, ids)
    w = terms.weights.numpy() > 0
    np.testing.assert_allclose(terms.losses.numpy()[w], 0.0, atol=1e-6)
    np.testing.assert_array_equal(terms.num_candidates.numpy()[w], 1.0)
    np.testing.assert_array_equal(terms.correct.numpy()[w], 1.0)


def test_offsets_are_averaged_with_equal_weight():
    values = np.zeros((1, 4, 2), "float32")
    values[..., 0] = 1.0
    values[..., 1] = 3.0
    weights = np.ones((1, 4, 2), "float32")
    weights[0, :3, 1] = 0.0  # k=2 has one pair, k=1 four
    np.testing.assert_allclose(float(ops.mean_over_offsets(values, weights)), 2.0)
    # An offset with no pair at all is left out of the average, and no pair
    # at all gives 0, not NaN.
    weights[..., 1] = 0.0
    np.testing.assert_allclose(float(ops.mean_over_offsets(values, weights)), 1.0)
    assert float(ops.mean_over_offsets(values, np.zeros_like(weights))) == 0.0


def test_all_padding_gives_zero_loss_and_finite_gradient():
    predictions, targets, _, _ = _case()
    mask = np.zeros((3, 6), bool)
    p = tf.Variable(predictions)
    with tf.GradientTape() as tape:
        loss = ops.cpc_loss(p, targets, mask)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(tape.gradient(loss, p).numpy()))


def test_stable_with_large_logits_and_bfloat16():
    predictions, targets, mask, ids = _case()
    big = ops.cpc_loss(predictions * 1e3, targets * 1e3, mask, ids, temperature=0.01)
    assert np.isfinite(float(big))
    bf16 = ops.cpc_loss(
        tf.cast(predictions, tf.bfloat16), tf.cast(targets, tf.bfloat16), mask, ids)
    ref = ops.cpc_loss(
        tf.cast(tf.cast(predictions, tf.bfloat16), tf.float32),
        tf.cast(tf.cast(targets, tf.bfloat16), tf.float32), mask, ids)
    assert bf16.dtype == tf.float32
    np.testing.assert_allclose(float(bf16), float(ref), rtol=1e-6)


def test_gradient_matches_finite_differences():
    predictions, targets, mask, ids = _case(B=2, T=4, K=2, D=3)
    p = tf.Variable(predictions.astype("float64").astype("float32"))
    with tf.GradientTape() as tape:
        loss = ops.cpc_loss(p, targets, mask, ids)
    grad = tape.gradient(loss, p).numpy()
    eps = 1e-2
    i = (0, 1, 0, 2)
    plus, minus = predictions.copy(), predictions.copy()
    plus[i] += eps
    minus[i] -= eps
    numeric = (float(ops.cpc_loss(plus, targets, mask, ids))
               - float(ops.cpc_loss(minus, targets, mask, ids))) / (2 * eps)
    np.testing.assert_allclose(grad[i], numeric, rtol=2e-2, atol=1e-4)


def test_jit_compile_gives_the_same_value():
    predictions, targets, mask, ids = _case()
    eager = ops.cpc_loss(predictions, targets, mask, ids)
    jit = tf.function(ops.cpc_loss, jit_compile=True)(predictions, targets, mask, ids)
    np.testing.assert_allclose(float(jit), float(eager), rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"similarity": "l2"}, "similarity"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    predictions, targets, mask, _ = _case()
    with pytest.raises(ValueError, match=match):
        ops.cpc_loss(predictions, targets, mask, **kwargs)


def test_bad_shapes_are_rejected():
    predictions, targets, mask, ids = _case(T=6, K=2)
    with pytest.raises(ValueError, match="max_offset"):  # K >= length
        ops.cpc_loss(np.zeros((3, 2, 2, 4), "float32"), targets[:, :2], mask[:, :2])
    with pytest.raises(ValueError, match="max_offset >= 1"):
        ops.cpc_loss(predictions[:, :, :0], targets, mask)
    with pytest.raises(ValueError, match=r"\[batch, length, max_offset, dim\]"):
        ops.cpc_loss(predictions[:, :, 0], targets, mask)
    with pytest.raises(ValueError, match="sequence length"):
        ops.cpc_loss(predictions, targets[:, :5], mask)
    with pytest.raises(ValueError, match="encoding size"):
        ops.cpc_loss(predictions, targets[..., :3], mask)
    with pytest.raises(ValueError, match="target_ids"):
        ops.cpc_loss(predictions, targets, mask, ids.astype("float32"))
    with pytest.raises(ValueError, match="float"):
        ops.cpc_loss(predictions.astype("int32"), targets, mask)


# ---------------------------------------------------------------------------
# Distribution: cross-replica negatives give one device's loss and gradients.
# ---------------------------------------------------------------------------


def test_cross_replica_loss_and_gradients_match_one_device(mirrored_strategy):
    strategy = mirrored_strategy
    predictions, targets, mask, ids = _case(B=4, T=5, K=2, D=3, seed=3)
    mask[3, 1:] = False  # uneven valid pairs across the replicas

    def loss_and_grads(p, z, m, i):
        p, z = tf.convert_to_tensor(p), tf.convert_to_tensor(z)
        with tf.GradientTape() as tape:
            tape.watch([p, z])
            loss = cpc_ops.cpc_loss(p, z, m, i)
        return loss, tape.gradient(loss, [p, z])

    one_loss, (one_gp, one_gz) = loss_and_grads(predictions, targets, mask, ids)

    def split(value):
        return lambda ctx: value[2 * ctx.replica_id_in_sync_group: 2 * ctx.replica_id_in_sync_group + 2]

    inputs = [
        strategy.experimental_distribute_values_from_function(split(v))
        for v in (predictions, targets, mask, ids)
    ]
    result = strategy.run(tf.function(loss_and_grads), args=inputs)
    loss, (gp, gz) = result
    total = sum(float(v) for v in strategy.experimental_local_results(loss))
    np.testing.assert_allclose(total, float(one_loss), atol=1e-5)
    # Each replica's gradient w.r.t. its own rows is the full gradient of the
    # global loss (the all-gather's backward sums the other replicas' pulls).
    np.testing.assert_allclose(
        np.concatenate(strategy.experimental_local_results(gp)), one_gp.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate(strategy.experimental_local_results(gz)), one_gz.numpy(), atol=1e-5)
