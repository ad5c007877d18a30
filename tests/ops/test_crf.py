"""`kobjectives.ops.crf`: the linear-chain CRF against brute force over every
tag path, with contiguous, non-contiguous and empty masks."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops.crf import crf_decode
from kobjectives.ops.crf import crf_log_likelihood
from kobjectives.ops.crf import crf_loss

T, L = 3, 4
# Every mask pattern of length 4: empty, full, prefixes, and non-contiguous.
MASKS = np.array(list(itertools.product([False, True], repeat=L)))
B = len(MASKS)


def problem(seed=0, batch=B, length=L, tags=T):
    rng = np.random.default_rng(seed)
    potentials = rng.normal(size=(batch, length, tags)).astype("float32")
    transitions = rng.normal(size=(tags, tags)).astype("float32")
    start = rng.normal(size=tags).astype("float32")
    end = rng.normal(size=tags).astype("float32")
    gold = rng.integers(0, tags, (batch, length)).astype("int32")
    return potentials, transitions, start, end, gold


def path_score(potentials, path, transitions, start, end):
    """score(path) of one row's unmasked positions (path over those only)."""
    if not len(path):
        return 0.0
    path = np.asarray(path)
    return (start[path[0]] + potentials[np.arange(len(path)), path].sum()
            + transitions[path[:-1], path[1:]].sum() + end[path[-1]])


def brute_force(potentials, transitions, mask, start, end):
    """Per row: `(log Z, {path over unmasked positions: score})`."""
    results = []
    for row, row_mask in zip(potentials.astype("float64"), mask):
        kept = row[row_mask]
        scores = {path: path_score(kept, path, transitions.astype("float64"),
                                   start.astype("float64"), end.astype("float64"))
                  for path in itertools.product(range(kept.shape[1]), repeat=len(kept))}
        values = np.array(list(scores.values()))
        log_z = values.max() + np.log(np.exp(values - values.max()).sum())
        results.append((log_z if len(kept) else 0.0, scores))
    return results


def brute_log_likelihood(potentials, tags, transitions, mask, start, end):
    out = []
    for (log_z, scores), row_tags, row_mask in zip(
            brute_force(potentials, transitions, mask, start, end), tags, mask):
        out.append(scores[tuple(row_tags[row_mask])] - log_z if row_mask.any() else 0.0)
    return np.array(out)


def test_log_likelihood_matches_brute_force_for_every_mask_pattern():
    potentials, transitions, start, end, gold = problem()
    got = crf_log_likelihood(potentials, gold, transitions, MASKS, start, end)
    assert got.dtype == tf.float32 and got.shape == (B,)
    want = brute_log_likelihood(potentials, gold, transitions, MASKS, start, end)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got[0] == 0.0  # the empty row
    np.testing.assert_array_equal(
        crf_loss(potentials, gold, transitions, MASKS, start, end), -got)
    assert np.all(crf_loss(potentials, gold, transitions, MASKS, start, end).numpy() >= 0)


def test_without_mask_or_edges_every_position_counts_and_edges_are_zero():
    potentials, transitions, _, _, gold = problem(seed=1)
    zeros = np.zeros(T, "float32")
    full = np.ones((B, L), bool)
    np.testing.assert_allclose(
        crf_log_likelihood(potentials, gold, transitions),
        brute_log_likelihood(potentials, gold, transitions, full, zeros, zeros), atol=1e-5)


def test_masked_positions_are_removed_from_the_sequence():
    """A non-contiguous mask equals the CRF on the compacted sequence."""
    potentials, transitions, start, end, gold = problem(seed=2, batch=B, length=L)
    compact_p = np.zeros_like(potentials)
    compact_t = np.zeros_like(gold)
    compact_m = np.zeros_like(MASKS)
    for b, row_mask in enumerate(MASKS):
        n = row_mask.sum()
        compact_p[b, :n] = potentials[b, row_mask]
        compact_t[b, :n] = gold[b, row_mask]
        compact_m[b, :n] = True
    masked = crf_log_likelihood(potentials, gold, transitions, MASKS, start, end)
    compact = crf_log_likelihood(compact_p, compact_t, transitions, compact_m, start, end)
    np.testing.assert_allclose(masked, compact, atol=1e-6)
    tags, scores = crf_decode(potentials, transitions, MASKS, start, end)
    compact_tags, compact_scores = crf_decode(compact_p, transitions, compact_m, start, end)
    for b, row_mask in enumerate(MASKS):
        np.testing.assert_array_equal(tags[b].numpy()[row_mask],
                                      compact_tags[b].numpy()[:row_mask.sum()])
    np.testing.assert_allclose(scores, compact_scores, atol=1e-6)


def test_probabilities_of_all_paths_sum_to_one():
    potentials, transitions, start, end, _ = problem(seed=3, batch=1)
    for row_mask in MASKS[[5, 9, 15, 10]]:  # non-contiguous and full masks
        kept = np.nonzero(row_mask)[0]
        paths = np.array(list(itertools.product(range(T), repeat=len(kept))))
        tags = np.full((len(paths), L), 99, "int32")  # masked tags: ignored
        tags[:, kept] = paths
        ll = crf_log_likelihood(np.repeat(potentials, len(paths), 0), tags, transitions,
                                np.repeat(row_mask[None], len(paths), 0), start, end)
        np.testing.assert_allclose(np.exp(ll.numpy().astype("float64")).sum(), 1.0, rtol=1e-5)


def test_decode_returns_the_highest_scoring_path():
    potentials, transitions, start, end, _ = problem(seed=4)
    tags, scores = crf_decode(potentials, transitions, MASKS, start, end)
    assert tags.dtype == tf.int32 and tags.shape == (B, L) and scores.dtype == tf.float32
    for b, (_, paths) in enumerate(brute_force(potentials, transitions, MASKS, start, end)):
        best = max(paths, key=paths.get)
        np.testing.assert_array_equal(tags[b].numpy()[MASKS[b]], best)
        np.testing.assert_array_equal(tags[b].numpy()[~MASKS[b]], 0)
        np.testing.assert_allclose(scores[b], paths[best], atol=1e-5)
    assert scores[0] == 0.0 and not tags[0].numpy().any()  # the empty row
    # The decoded path's log-likelihood is the largest of all paths'.
    ll = crf_log_likelihood(potentials, tags, transitions, MASKS, start, end)
    for b, (log_z, paths) in enumerate(brute_force(potentials, transitions, MASKS, start, end)):
        if MASKS[b].any():
            np.testing.assert_allclose(ll[b], max(paths.values()) - log_z, atol=1e-5)


def test_length_one_and_many_tags():
    potentials, transitions, start, end, gold = problem(seed=5, batch=3, length=1, tags=5)
    mask = np.array([[True], [False], [True]])
    tags, scores = crf_decode(potentials, transitions, mask, start, end)
    want = (potentials[:, 0] + start + end).argmax(-1) * mask[:, 0]
    np.testing.assert_array_equal(tags[:, 0], want)
    np.testing.assert_allclose(
        crf_log_likelihood(potentials, gold, transitions, mask, start, end),
        brute_log_likelihood(potentials, gold, transitions, mask, start, end), atol=1e-5)


def _all(potentials, tags, transitions, mask, start, end):
    with tf.GradientTape() as tape:
        tape.watch([potentials, transitions, start, end])
        ll = crf_log_likelihood(potentials, tags, transitions, mask, start, end)
        total = tf.reduce_sum(ll)
    grads = tape.gradient(total, [potentials, transitions, start, end])
    return ll, grads, crf_decode(potentials, transitions, mask, start, end)


def dirty_copies(potentials, gold):
    """NaN / -inf potentials and out-of-range tags (-100, 99) in the masked slots."""
    dirty, dirty_tags = potentials.copy(), gold.copy()
    hidden = ~MASKS
    dirty[hidden] = np.where(np.arange(T) % 2, np.nan, -np.inf)
    dirty_tags[hidden] = -100  # an "ignore" id
    dirty_tags[hidden & (np.arange(L) % 2 == 1)] = 99
    return dirty, dirty_tags


def assert_clean(got, clean):
    for value in tf.nest.flatten(got):
        assert np.all(np.isfinite(value.numpy())), value
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(clean)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1][0].numpy()[~MASKS], 0.0)  # masked potentials
    # The empty row: log-likelihood 0, no gradient, all-zero tags.
    assert got[0][0] == 0.0 and not got[1][0][0].numpy().any() and not got[2][0][0].numpy().any()


def test_nan_and_inf_in_masked_slots_reach_neither_values_nor_gradients():
    potentials, transitions, start, end, gold = problem(seed=7)
    dirty, dirty_tags = dirty_copies(potentials, gold)
    clean = _all(*map(tf.constant, (potentials, gold, transitions, MASKS, start, end)))
    assert_clean(_all(*map(tf.constant, (dirty, dirty_tags, transitions, MASKS, start, end))),
                 clean)


def test_jit_compiled_equals_eager_even_with_nan_in_masked_slots():
    potentials, transitions, start, end, gold = problem(seed=6)
    dirty, dirty_tags = dirty_copies(potentials, gold)
    eager = _all(*map(tf.constant, (potentials, gold, transitions, MASKS, start, end)))
    jitted = tf.function(_all, jit_compile=True)(
        *map(tf.constant, (dirty, dirty_tags, transitions, MASKS, start, end)))
    assert_clean(jitted, eager)


def test_gradients_match_finite_differences_of_brute_force():
    potentials, transitions, start, end, gold = problem(seed=8, batch=6)
    mask = MASKS[[15, 5, 9, 13, 6, 0]]
    _, grads, _ = _all(*map(tf.constant, (potentials, gold, transitions, mask, start, end)))

    def total(p, tr, s, e):
        return brute_log_likelihood(p, gold, tr, mask, s, e).sum()

    arrays = [potentials.astype("float64"), transitions.astype("float64"),
              start.astype("float64"), end.astype("float64")]
    for index, grad in enumerate(grads):
        numeric = np.zeros_like(arrays[index])
        for position in np.ndindex(arrays[index].shape):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[index][position] += 1e-4
            minus[index][position] -= 1e-4
            numeric[position] = (total(*plus) - total(*minus)) / 2e-4
        np.testing.assert_allclose(grad, numeric, atol=1e-4)
    # The transitions' gradient is observed minus expected transition counts:
    # it sums to (number of links in the gold paths) - (the same, expected) = 0.
    assert abs(float(tf.reduce_sum(grads[1]))) < 1e-5


def test_invalid_tags_at_unmasked_positions_fail_or_poison_their_row():
    potentials, transitions, start, end, gold = problem(seed=9, batch=3)
    mask = np.ones((3, L), bool)
    bad = gold.copy()
    bad[1, 2] = T
    with pytest.raises(ValueError, match="`tags` must be integer ids in \\[0, 3\\)"):
        crf_log_likelihood(potentials, bad, transitions, mask)
    # Traced without XLA: the assert fails.
    graph = tf.function(lambda t: crf_log_likelihood(potentials, t, transitions, mask))
    with pytest.raises(tf.errors.InvalidArgumentError, match="tags"):
        graph(tf.constant(bad))
    # Under XLA (no asserts) the row is NaN, never a finite wrong value.
    jitted = tf.function(lambda t: crf_log_likelihood(potentials, t, transitions, mask),
                         jit_compile=True)
    for value in (T, -1, 7):
        bad[1, 2] = value
        got = jitted(tf.constant(bad)).numpy()
        assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2]])), got
    # The same tag at a masked position is ignored.
    mask[1, 2] = False
    assert np.isfinite(crf_log_likelihood(potentials, bad, transitions, mask).numpy()).all()


def test_bad_arguments_are_named():
    potentials, transitions, start, _, gold = problem(seed=10, batch=2)
    with pytest.raises(ValueError, match="transitions"):
        crf_log_likelihood(potentials, gold, transitions[:2])
    with pytest.raises(ValueError, match="potentials"):
        crf_decode(potentials[0], transitions)
    with pytest.raises(ValueError, match="potentials.*float"):
        crf_decode(gold[..., None], transitions)
    with pytest.raises(ValueError, match="mask"):
        crf_decode(potentials, transitions, mask=np.ones((2, L + 1), bool))
    with pytest.raises(ValueError, match="tags"):
        crf_log_likelihood(potentials, gold[:, :2], transitions)
    with pytest.raises(ValueError, match="start_transitions"):
        crf_decode(potentials, transitions, start_transitions=start[:2])
    with pytest.raises(ValueError, match="static number of tags"):
        tf.function(lambda p: crf_decode(p, transitions),
                    input_signature=[tf.TensorSpec([None, None, None])]).get_concrete_function()


def test_bfloat16_potentials_accumulate_in_float32():
    potentials, transitions, start, end, gold = problem(seed=11)
    half = tf.cast(potentials, tf.bfloat16)
    ll = crf_log_likelihood(half, gold, tf.cast(transitions, tf.bfloat16), MASKS, start, end)
    assert ll.dtype == tf.float32
    want = crf_log_likelihood(tf.cast(half, tf.float32), gold,
                              tf.cast(tf.cast(transitions, tf.bfloat16), tf.float32),
                              MASKS, start, end)
    np.testing.assert_allclose(ll, want, atol=1e-6)
