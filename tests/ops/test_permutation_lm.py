import itertools

import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops import permutation_lm as plm


def runs(row):
    """Lengths of the maximal runs of True in a 1-D bool array, with a flag
    telling whether the run touches the row's end."""
    out, start = [], None
    for i, v in enumerate(list(row) + [False]):
        if v and start is None:
            start = i
        if not v and start is not None:
            out.append((i - start, i == len(row)))
            start = None
    return out


def test_context_lengths_match_huggingface_formula():
    assert plm.context_lengths(1 / 6, 5) == [6, 12, 18, 24, 30]
    assert plm.context_lengths(0.15, 3) == [int(1 / 0.15), int(2 / 0.15), int(3 / 0.15)]


def test_target_fraction_is_plm_probability():
    # 400 x 512 = 204,800 tokens, all selectable.
    selectable = tf.ones([400, 512], bool)
    targets = plm.span_targets(selectable, tf.constant([3, 4]), 1 / 6, 5).numpy()
    assert abs(targets.mean() - 1 / 6) < 0.01
    # Every run of targets is one span or two adjacent ones.
    lengths = [n for row in targets for n, _ in runs(row)]
    assert min(lengths) >= 1 and max(lengths) <= 10


def test_span_lengths_are_uniform_in_one_to_max():
    # With a small rate, spans are far apart, so runs are single spans.
    targets = plm.span_targets(tf.ones([300, 512], bool), tf.constant([1, 2]), 0.05, 5).numpy()
    lengths = np.array([n for row in targets for n, at_end in runs(row) if not at_end])
    assert lengths.min() >= 1 and lengths.max() <= 5
    freq = np.bincount(lengths, minlength=6)[1:] / len(lengths)
    np.testing.assert_allclose(freq, 0.2, atol=0.03)
    # Expected fraction: E[s] / E[c] with c = int(s / 0.05) = 20 s.
    assert abs(targets.mean() - 0.05) < 0.006


def test_targets_are_selectable_only():
    rng = np.random.default_rng(0)
    selectable = rng.random((64, 48)) < 0.7
    targets = plm.span_targets(tf.constant(selectable), tf.constant([5, 6]), 0.3, 4).numpy()
    assert not (targets & ~selectable).any()
    assert targets.any()


def test_keep_first_targets_caps_and_never_starves_a_row():
    targets = tf.constant(np.array(
        [[0, 1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], bool))
    padding = tf.constant(np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] * 7], bool))
    kept = plm.keep_first_targets(targets, padding, num_predict=3).numpy().astype(int)
    np.testing.assert_array_equal(kept[0], [0, 1, 1, 0, 1, 0, 0])  # first 3 kept
    # Row 1: every real token was a target: the first is dropped.
    np.testing.assert_array_equal(kept[1], [0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(kept[2], [0] * 7)


def test_factorization_ranks_full_and_local_permutation():
    targets = tf.constant(np.array([[1, 0, 1, 1, 0, 1, 1, 1]] * 50, bool))
    ranks = plm.factorization_ranks(targets, tf.constant([0, 1])).numpy()
    t = targets.numpy()
    assert (ranks[~t] == -1).all()
    for row in ranks:
        kept = row[row >= 0]
        assert len(set(kept)) == len(kept) and kept.max() < 8
    local = plm.factorization_ranks(targets, tf.constant([0, 1]), permutation_size=4).numpy()
    block = np.arange(8) // 4
    assert ((local[:, t[0]] // 4) == block[t[0]]).all()  # each block keeps its ranks
    # One permutation shared by the blocks (XLNet's _local_perm).
    full = plm.factorization_ranks(tf.ones([50, 8], bool), tf.constant([0, 1]), 4).numpy()
    np.testing.assert_array_equal(full[:, :4] + 4, full[:, 4:])
    with pytest.raises(ValueError, match="not a multiple of permutation_size=4"):
        plm.factorization_ranks(tf.ones([2, 6], bool), tf.constant([0, 1]), 4)


def test_factorization_order_is_uniform():
    ranks = plm.factorization_ranks(tf.ones([24000, 4], bool), tf.constant([9, 9])).numpy()
    orders = {p: 0 for p in itertools.permutations(range(4))}
    for row in ranks:
        orders[tuple(row)] += 1
    freq = np.array(list(orders.values())) / len(ranks)
    np.testing.assert_allclose(freq, 1 / 24, atol=0.008)


def test_permutation_mask_matches_huggingface_formula():
    rng = np.random.default_rng(1)
    targets = rng.random((8, 10)) < 0.4
    ranks = np.where(targets, np.argsort(rng.random((8, 10)), axis=1), -1).astype("int32")
    got = plm.permutation_mask(tf.constant(ranks), tf.constant(targets)).numpy()
    # HF: perm_mask = (perm_index[:, None] <= perm_index[None, :]) & masked_indices
    want = (ranks[:, :, None] <= ranks[:, None, :]) & targets[:, None, :]
    np.testing.assert_array_equal(got, want.astype("float32"))


def test_target_slots_in_position_order():
    targets = tf.constant(np.array([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]], bool))
    ids = tf.constant([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
    out = plm.target_slots(targets, ids, num_predict=4)
    np.testing.assert_array_equal(out["target_positions"], [[1, 3, 4, 0], [5, 0, 0, 0]])
    np.testing.assert_array_equal(out["target_ids"], [[11, 13, 14, 0], [25, 0, 0, 0]])
    np.testing.assert_array_equal(out["target_weights"], [[1, 1, 1, 0], [1, 0, 0, 0]])
    mapping = out["target_mapping"].numpy()
    assert mapping.shape == (2, 4, 6)
    np.testing.assert_array_equal(mapping[0, 2], np.eye(6)[4])
    np.testing.assert_array_equal(mapping[0, 3], np.zeros(6))
    # More slots than positions.
    wide = plm.target_slots(targets, ids, num_predict=8)
    assert wide["target_mapping"].shape == (2, 8, 6)
    np.testing.assert_array_equal(wide["target_weights"].numpy().sum(1), [3, 1])


def visibility_checks(out, padding, selectable):
    """Asserts XLNet's visibility rules on one batch of outputs."""
    perm = out["perm_mask"].numpy().astype(bool)
    mapping = out["target_mapping"].numpy()
    w = out["target_weights"].numpy()
    targets = mapping.sum(1) > 0
    assert (np.diagonal(perm, axis1=1, axis2=2) == targets).all()  # a target never sees itself
    assert not (targets & ~selectable).any()  # padding / specials never targets
    assert not (targets & ~padding).any()
    for b in range(perm.shape[0]):
        t = np.flatnonzero(targets[b])
        nt = np.flatnonzero(~targets[b])
        # Everyone sees every non-target.
        assert not perm[b][:, nt].any()
        # Non-targets see no target.
        assert perm[b][np.ix_(nt, t)].all()
        # Among targets, "i sees j" is a strict total order (the factorization
        # order): the number of targets each target sees is 0, 1, ..., n - 1,
        # and a target sees exactly the targets that see fewer.
        sees = ~perm[b][np.ix_(t, t)]
        counts = sees.sum(1)
        assert sorted(counts) == list(range(len(t)))
        np.testing.assert_array_equal(sees, counts[None, :] < counts[:, None])
        # Later targets are never seen: if i sees j then j does not see i.
        assert not (sees & sees.T).any()
        # Labels are the ids at the targets, in position order.
        assert w[b].sum() == len(t)


def test_permutation_lm_inputs_visibility_rules():
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 50, (32, 40)).astype("int32")
    ids[:, 0] = 1  # [CLS]
    lengths = rng.integers(3, 41, 32)
    for b, n in enumerate(lengths):
        ids[b, n - 1] = 2  # [SEP]
        ids[b, n:] = 0
    padding = ids != 0
    out = plm.permutation_lm_inputs(
        tf.constant(ids), tf.constant(padding), tf.constant([7, 7]), plm_probability=0.3,
        max_span_length=3, num_predict=20, unselectable_ids=(0, 1, 2),
    )
    selectable = padding & (ids > 2)
    visibility_checks(out, padding, selectable)
    positions, labels, w = (
        out[k].numpy() for k in ("target_positions", "target_ids", "target_weights"))
    np.testing.assert_array_equal(np.take_along_axis(ids, positions, 1) * w, labels)


def test_same_seed_same_outputs_other_seed_differs():
    ids = tf.random.stateless_uniform([16, 32], [0, 0], minval=3, maxval=99, dtype=tf.int32)
    mask = tf.ones_like(ids, bool)
    a = plm.permutation_lm_inputs(ids, mask, tf.constant([1, 2]), num_predict=12)
    b = plm.permutation_lm_inputs(ids, mask, tf.constant([1, 2]), num_predict=12)
    c = plm.permutation_lm_inputs(ids, mask, tf.constant([1, 3]), num_predict=12)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["perm_mask"], c["perm_mask"])


@pytest.mark.slow  # XLA compilation: ~10 s idle
def test_xla_compiles_with_static_shapes():
    fn = tf.function(
        lambda ids, seed: plm.permutation_lm_inputs(ids, ids > 0, seed, num_predict=8),
        jit_compile=True,
    )
    ids = tf.random.stateless_uniform([4, 24], [0, 1], minval=0, maxval=99, dtype=tf.int32)
    out = fn(ids, tf.constant([3, 3]))
    again = fn(ids, tf.constant([3, 3]))
    for key in out:  # deterministic (XLA draws other numbers than eager TF)
        np.testing.assert_array_equal(out[key], again[key])
    assert out["perm_mask"].shape == (4, 24, 24)
    assert out["target_mapping"].shape == (4, 8, 24)
    padding = ids.numpy() > 0
    visibility_checks(out, padding, padding)


def test_two_stream_attention_masks():
    perm = tf.constant([[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]], "float32")
    padding = tf.constant(np.array([[1, 1, 1, 0]], bool))
    content, query = plm.two_stream_attention_masks(perm, padding)
    # Query: 1 - perm, padding column hidden.
    np.testing.assert_array_equal(
        query[0], [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    # Content additionally sees itself (the padding row sees only itself... and
    # what perm allows of the real tokens).
    np.testing.assert_array_equal(
        content[0], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_inference_permutation_mask_hides_the_positions():
    hidden = tf.constant([[False, True, False]])
    np.testing.assert_array_equal(
        plm.inference_permutation_mask(hidden)[0], [[0, 1, 0], [0, 1, 0], [0, 1, 0]])
