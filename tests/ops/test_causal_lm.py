import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.layers import SequencePacker


def _numpy_mask(segment_ids, padding_mask):
    """Reference by explicit loops over (t, s)."""
    batch, length = segment_ids.shape
    mask = np.zeros((batch, length, length), bool)
    for b in range(batch):
        for t in range(length):
            if not padding_mask[b, t]:
                mask[b, t, t] = True  # padded queries see only themselves
                continue
            for s in range(t + 1):
                mask[b, t, s] = bool(padding_mask[b, s]) and segment_ids[b, s] == segment_ids[b, t]
    return mask


def _numpy_positions(segment_ids, padding_mask):
    batch, length = segment_ids.shape
    out = np.zeros((batch, length), int)
    for b in range(batch):
        seen = {}
        for t in range(length):
            if padding_mask[b, t]:
                out[b, t] = seen.get(segment_ids[b, t], 0)
                seen[segment_ids[b, t]] = out[b, t] + 1
    return out


def _packed(seed=0, count=40, length=12):
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(5, 50, rng.integers(1, 9))) for _ in range(count)]
    return SequencePacker(length, end_token_id=2, start_token_id=1)(tf.ragged.constant(docs))


def test_document_causal_mask_matches_numpy_reference_on_packed_windows():
    x = _packed()
    seg, pad = x["segment_ids"].numpy(), x["padding_mask"].numpy()
    assert seg.max() >= 2 and not pad.all()  # several documents, a padded tail
    mask = ops.document_causal_mask(x["segment_ids"], x["padding_mask"])
    assert mask.dtype == tf.bool and mask.shape == (seg.shape[0], 12, 12)
    np.testing.assert_array_equal(mask.numpy(), _numpy_mask(seg, pad))
    # Every row allows at least one key (no empty softmax row).
    assert mask.numpy().any(-1).all()


def test_document_causal_mask_by_equality_of_ids_random_and_unbatched():
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 3, (5, 9))  # ids need not be contiguous runs
    pad = rng.random((5, 9)) > 0.2
    np.testing.assert_array_equal(
        ops.document_causal_mask(seg, pad).numpy(), _numpy_mask(seg, pad))
    np.testing.assert_array_equal(
        ops.document_causal_mask(seg[0], pad[0]).numpy(), _numpy_mask(seg[:1], pad[:1])[0])
    # Without a padding mask: every position real; one segment = plain causal.
    np.testing.assert_array_equal(
        ops.document_causal_mask(np.zeros((2, 6), "int32")).numpy(),
        np.broadcast_to(np.tril(np.ones((6, 6), bool)), (2, 6, 6)))


def test_document_positions_restart_per_document():
    x = _packed(seed=2)
    seg, pad = x["segment_ids"].numpy(), x["padding_mask"].numpy()
    positions = ops.document_positions(x["segment_ids"], x["padding_mask"])
    assert positions.dtype == tf.int32
    np.testing.assert_array_equal(positions.numpy(), _numpy_positions(seg, pad))
    rng = np.random.default_rng(3)
    seg, pad = rng.integers(0, 4, (6, 10)), rng.random((6, 10)) > 0.3
    np.testing.assert_array_equal(
        ops.document_positions(seg, pad).numpy(), _numpy_positions(seg, pad))


def test_compiles_with_xla_and_in_tf_data():
    x = _packed(seed=4)
    compiled = tf.function(ops.document_causal_mask, jit_compile=True)
    np.testing.assert_array_equal(
        compiled(x["segment_ids"], x["padding_mask"]).numpy(),
        ops.document_causal_mask(x["segment_ids"], x["padding_mask"]).numpy())
    ds = tf.data.Dataset.from_tensor_slices(x).map(
        lambda w: ops.document_positions(w["segment_ids"], w["padding_mask"]))
    assert ds.element_spec.shape == (12,)


def test_bad_input_fails_loudly():
    with pytest.raises(TypeError, match="segment_ids.*int32"):
        ops.document_causal_mask(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match=r"segment_ids.*\[\.\.\., length\]"):
        ops.document_causal_mask(tf.constant(3))
    with pytest.raises(ValueError, match="padding_mask.*same shape"):
        ops.document_positions(np.zeros((2, 4), "int32"), np.ones((2, 5), bool))


def test_causal_lm_loss_with_an_out_of_vocabulary_token_is_nan_under_xla():
    # The causal-LM loss path (targets -> chunked cross-entropy -> weighted
    # mean) compiled by XLA: a token id outside the vocabulary becomes a
    # label, and its loss must not be a clamped, finite value.
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(1, 6, 8)).astype("float32")
    kernel = rng.normal(size=(8, 20)).astype("float32")

    @tf.function(jit_compile=True)
    def loss(token_ids):
        labels, weights = ops.causal_lm_targets(token_ids)
        return ops.chunked_cross_entropy(hidden, kernel, labels, weights, chunk_size=4)

    assert np.isfinite(float(loss(tf.constant([[3, 4, 5, 6, 7, 8]]))))
    assert np.isnan(float(loss(tf.constant([[3, 4, 25, 6, 7, 8]]))))
    assert np.isnan(float(loss(tf.constant([[3, 4, -2, 6, 7, 8]]))))


def _numpy_segment_mask(q_seg, k_seg, q_pad, k_pad, causal):
    """Reference by explicit loops over (q, k), with the fallback key."""
    batch, q_len = q_seg.shape
    k_len = k_seg.shape[1]
    mask = np.zeros((batch, q_len, k_len), bool)
    for b in range(batch):
        for q in range(q_len):
            for k in range(k_len):
                mask[b, q, k] = bool(q_pad[b, q] and k_pad[b, k] and q_seg[b, q] == k_seg[b, k]
                                     and (k <= q or not causal))
            if not mask[b, q].any():
                mask[b, q, min(q, k_len - 1)] = True
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("q_len,k_len", [(7, 7), (5, 9), (9, 4)])
def test_segment_attention_mask_matches_numpy_reference(causal, q_len, k_len):
    rng = np.random.default_rng(q_len * 10 + k_len)
    q_seg, k_seg = rng.integers(1, 4, (4, q_len)), rng.integers(1, 4, (4, k_len))
    q_pad, k_pad = rng.random((4, q_len)) > 0.25, rng.random((4, k_len)) > 0.25
    k_pad[0] = False  # a row with no real key at all: every query falls back
    mask = ops.segment_attention_mask(q_seg, k_seg, q_pad, k_pad, causal=causal)
    assert mask.dtype == tf.bool and mask.shape == (4, q_len, k_len)
    np.testing.assert_array_equal(mask.numpy(), _numpy_segment_mask(q_seg, k_seg, q_pad, k_pad,
                                                                    causal))
    assert mask.numpy().any(-1).all()  # no empty softmax row, padding queries included
    compiled = tf.function(ops.segment_attention_mask, jit_compile=True)
    np.testing.assert_array_equal(
        compiled(q_seg, k_seg, q_pad, k_pad, causal=causal).numpy(), mask.numpy())


def test_document_causal_mask_is_the_causal_self_case_and_cross_rows_are_finite():
    rng = np.random.default_rng(7)
    seg, pad = rng.integers(0, 3, (3, 8)), rng.random((3, 8)) > 0.2
    np.testing.assert_array_equal(
        ops.document_causal_mask(seg, pad).numpy(),
        ops.segment_attention_mask(seg, seg, pad, pad, causal=True).numpy())
    # A cross-attention softmax under the mask (as keras' masked softmax:
    # -1e9 on masked keys) is finite on every row, padded queries included.
    q_seg, k_seg = np.array([[1, 1, 2, 0, 0]]), np.array([[1, 2, 2, 0]])
    mask = ops.segment_attention_mask(q_seg, k_seg, q_seg > 0, k_seg > 0)
    scores = tf.where(mask, tf.zeros(mask.shape), -np.inf)
    assert np.isfinite(tf.nn.softmax(scores).numpy()).all()
    assert mask.numpy().astype(int)[0].tolist() == [
        [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]]


def test_segment_attention_mask_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="leading .batch. dimensions"):
        ops.segment_attention_mask(np.zeros((2, 4), "int32"), np.zeros((3, 4), "int32"))
    with pytest.raises(TypeError, match="segment_ids.*int32"):
        ops.segment_attention_mask(np.zeros((2, 4), "int32"), np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="padding_mask.*same shape"):
        ops.segment_attention_mask(np.zeros((2, 4), "int32"), np.zeros((2, 3), "int32"),
                                   key_padding_mask=np.ones((2, 4), bool))
