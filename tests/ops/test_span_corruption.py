import math

import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops.span_corruption import merge_span_corruption
from kobjectives.ops.span_corruption import noise_span_counts
from kobjectives.ops.span_corruption import random_segmentation
from kobjectives.ops.span_corruption import random_spans_noise_mask
from kobjectives.ops.span_corruption import raw_length_for_inputs_length
from kobjectives.ops.span_corruption import span_corruption
from kobjectives.ops.span_corruption import span_corruption_lengths

SENTINELS = list(range(999, 899, -1))


def t5_lengths(n, density=0.15, mean=3.0):
    """T5's `_tokens_length_to_inputs_length_targets_length`, written out."""
    noise = int(round(n * density))
    spans = int(round(noise / mean))
    return n - noise + spans + 1, noise + spans + 1


def spans_of(mask_row):
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(int)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    return ends - starts


def test_counts_and_lengths_match_t5():
    assert noise_span_counts(100, 0.15, 3.0) == (15, 5)
    assert span_corruption_lengths(100) == (91, 21, 5)
    assert span_corruption_lengths(100, add_eos=False) == (90, 20, 5)
    for n in (20, 57, 100, 114, 512):
        assert span_corruption_lengths(n)[:2] == t5_lengths(n)
    # T5's published default: 568 raw tokens -> 512 inputs, 114 targets.
    assert raw_length_for_inputs_length(512) == 568
    assert span_corruption_lengths(568)[:2] == (512, 114)


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.5, 1.0), (0.3, 8.0), (0.9, 2.0)])
def test_lengths_grow_with_the_sequence_so_the_longest_bounds_all(density, mean):
    previous = (0, 0, 0)
    for n in range(2, 300):
        lengths = span_corruption_lengths(n, density, mean)
        assert all(a >= b for a, b in zip(lengths, previous)), n
        previous = lengths


def test_raw_length_for_inputs_length_is_the_longest_that_fits():
    for inputs_length in (8, 31, 64, 100):
        raw = raw_length_for_inputs_length(inputs_length)
        assert span_corruption_lengths(raw)[0] <= inputs_length
        assert span_corruption_lengths(raw + 1)[0] > inputs_length
    with pytest.raises(ValueError, match="inputs_length"):
        raw_length_for_inputs_length(2)


def test_random_segmentation_is_a_uniform_composition():
    # 4 items in 2 segments: (1,3), (2,2), (3,1), each with probability 1/3.
    draws = 3000
    items = tf.fill([draws], 4)
    segments = random_segmentation(items, tf.fill([draws], 2), 6, tf.constant([3, 4])).numpy()
    assert segments.shape == (draws, 6)
    assert (segments.sum(1) == 4).all() and (segments[:, 2:] == 0).all()
    counts = np.bincount(segments[:, 0], minlength=4)[1:]
    chi2 = (((counts - draws / 3) ** 2) / (draws / 3)).sum()
    assert chi2 < 13.8  # p = 0.001 with 2 degrees of freedom


def test_random_segmentation_with_per_row_counts():
    rng = np.random.default_rng(0)
    items = rng.integers(1, 40, 200)
    segments = np.minimum(rng.integers(1, 40, 200), items)
    out = random_segmentation(tf.constant(items), tf.constant(segments), 40, tf.constant([1, 1])).numpy()
    np.testing.assert_array_equal(out.sum(1), items)
    np.testing.assert_array_equal((out > 0).sum(1), segments)
    for row, s in zip(out, segments):
        assert (row[:s] >= 1).all() and (row[s:] == 0).all()


def test_noise_density_and_mean_span_length_over_1e5_tokens():
    rows, length = 1000, 100
    mask, _ = random_spans_noise_mask(tf.fill([rows], length), length, 0.15, 3.0, tf.constant([5, 6]))
    mask = mask.numpy()
    assert mask.size == 10**5
    assert abs(mask.mean() - 0.15) <= 0.005
    spans = np.concatenate([spans_of(row) for row in mask])
    assert abs(spans.mean() - 3.0) <= 0.05 * 3.0
    # Every row has exactly T5's counts, starts kept and ends with noise.
    assert (mask.sum(1) == 15).all()
    assert all(len(spans_of(row)) == 5 for row in mask)
    assert not mask[:, 0].any() and mask[:, -1].all()


def test_noise_statistics_with_mixed_lengths_and_other_rates():
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 257, 800)
    mask, _ = random_spans_noise_mask(tf.constant(lengths), 256, 0.3, 5.0, tf.constant([0, 9]))
    mask = mask.numpy()
    real = np.arange(256)[None] < lengths[:, None]
    assert not (mask & ~real).any()  # padding is never noise
    assert abs(mask.sum() / real.sum() - 0.3) <= 0.005
    spans = np.concatenate([spans_of(row) for row in mask])
    assert abs(spans.mean() - 5.0) <= 0.05 * 5.0
    for row, n in zip(mask[:50], lengths[:50]):
        noise, count = noise_span_counts(int(n), 0.3, 5.0)
        assert row.sum() == noise and len(spans_of(row)) == count
        assert not row[0]
        if count > 1:  # several spans: T5's layout, ending with noise
            assert row[n - 1]


def test_noise_span_lengths_follow_the_random_segmentation_law():
    # 15 noise tokens in 5 spans: P(span = k) = C(15-k-1, 3) / C(14, 4).
    mask, _ = random_spans_noise_mask(tf.fill([2000], 100), 100, 0.15, 3.0, tf.constant([7, 7]))
    spans = np.concatenate([spans_of(row) for row in mask.numpy()])
    observed = np.bincount(spans, minlength=12)[1:12] / len(spans)
    expected = np.array([math.comb(15 - k - 1, 3) / math.comb(14, 4) for k in range(1, 12)])
    np.testing.assert_allclose(observed, expected, atol=0.015)


def test_span_index_numbers_the_kept_and_noise_spans():
    mask, span = random_spans_noise_mask(tf.constant([40]), 40, 0.25, 2.0, tf.constant([1, 2]))
    mask, span = mask.numpy()[0], span.numpy()[0]
    # Kept span k is followed by noise span k; indices only grow.
    assert (np.diff(span) >= 0).all()
    starts_noise = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    np.testing.assert_array_equal(span[starts_noise], np.arange(len(starts_noise)))


def _random_batch(rows=64, length=60, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, rows)
    lengths[0] = length
    ids = np.zeros((rows, length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 800, n)
    return ids, lengths


def test_merging_inputs_and_targets_gives_back_the_original_exactly():
    ids, lengths = _random_batch()
    inputs_length, targets_length, _ = span_corruption_lengths(60)
    out = span_corruption(ids, lengths, tf.constant([3, 1]), SENTINELS, inputs_length,
                          targets_length, eos_token_id=1)
    encoder, target = out["encoder_token_ids"].numpy(), out["target_ids"].numpy()
    assert encoder.shape == (64, inputs_length) and target.shape == (64, targets_length)
    for i, n in enumerate(lengths):
        merged = merge_span_corruption(encoder[i], target[i], SENTINELS, eos_token_id=1)
        assert merged == ids[i, :n].tolist()


def test_inputs_and_targets_layout():
    ids, lengths = _random_batch(rows=16)
    inputs_length, targets_length, _ = span_corruption_lengths(60)
    out = {k: v.numpy() for k, v in span_corruption(
        ids, lengths, tf.constant([0, 1]), SENTINELS, inputs_length + 3, targets_length + 2,
        eos_token_id=1, padding_token_id=0).items()}
    for i, n in enumerate(lengths):
        noise, spans = noise_span_counts(int(n), 0.15, 3.0)
        enc_len = out["encoder_padding_mask"][i].sum()
        tgt_len = out["target_padding_mask"][i].sum()
        assert enc_len == n - noise + spans + 1 and tgt_len == noise + spans + 1
        enc, tgt = out["encoder_token_ids"][i], out["target_ids"][i]
        assert enc[enc_len - 1] == 1 and tgt[tgt_len - 1] == 1  # EOS ends both
        assert (enc[enc_len:] == 0).all() and (tgt[tgt_len:] == 0).all()
        # Sentinels count down from the top, in order, in both sequences.
        np.testing.assert_array_equal(enc[np.isin(enc, SENTINELS)], SENTINELS[:spans])
        np.testing.assert_array_equal(tgt[np.isin(tgt, SENTINELS)], SENTINELS[:spans])
        assert tgt[0] == SENTINELS[0]  # a sequence starts with kept tokens
        if spans > 1:  # ... and ends with noise (one span: anywhere after)
            assert enc[enc_len - 2] == SENTINELS[spans - 1]
        # The noise mask marks exactly the tokens the targets hold.
        noise_tokens = ids[i][out["noise_mask"][i]]
        np.testing.assert_array_equal(noise_tokens, tgt[:tgt_len - 1][~np.isin(tgt[:tgt_len - 1], SENTINELS)])


def test_same_seed_same_corruption_other_seed_other():
    ids, lengths = _random_batch(rows=8)
    a = span_corruption(ids, lengths, tf.constant([1, 2]), SENTINELS, 64, 40)
    b = span_corruption(ids, lengths, tf.constant([1, 2]), SENTINELS, 64, 40)
    c = span_corruption(ids, lengths, tf.constant([2, 2]), SENTINELS, 64, 40)
    np.testing.assert_array_equal(a["target_ids"], b["target_ids"])
    assert not np.array_equal(a["noise_mask"], c["noise_mask"])


def test_merge_span_corruption():
    assert merge_span_corruption([5, 99, 8, 98, 1], [99, 6, 7, 98, 9, 1], [99, 98], 1) == [5, 6, 7, 8, 9]
    # Padding ends a sequence; a sentinel without a span is dropped.
    assert merge_span_corruption([5, 99, 8, 98, 0, 0], [99, 6, 0], [99, 98]) == [5, 6, 8]


def test_a_single_noise_span_is_placed_by_the_seed():
    # 20 tokens: 3 noise tokens in one span. T5 always puts it at the end,
    # so the seed would not matter; here each seed places it anywhere after
    # the first token, the same seed in the same place.
    lengths = tf.fill([400], 20)

    def starts(seed):
        mask, _ = random_spans_noise_mask(lengths, 20, 0.15, 3.0, tf.constant(seed))
        mask = mask.numpy()
        assert (mask.sum(1) == 3).all()
        assert all(len(spans_of(row)) == 1 for row in mask)
        return mask.argmax(1)

    first, again, other = starts([1, 2]), starts([1, 2]), starts([3, 4])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Uniform over the 17 possible starts 1 .. 17 (never 0: a kept token first).
    counts = np.bincount(np.concatenate([first, other]), minlength=18)
    assert counts[0] == 0 and (counts[1:] > 0).all()
    chi2 = (((counts[1:] - 800 / 17) ** 2) / (800 / 17)).sum()
    assert chi2 < 39.3  # p = 0.001 with 16 degrees of freedom


def test_short_rows_merge_back_wherever_their_span_is():
    ids = np.arange(5, 25, dtype=np.int32)[None].repeat(64, 0)
    inputs_length, targets_length, _ = span_corruption_lengths(20)
    out = span_corruption(ids, tf.fill([64], 20), tf.constant([5, 5]), SENTINELS, inputs_length,
                          targets_length, eos_token_id=1)
    encoder, target = out["encoder_token_ids"].numpy(), out["target_ids"].numpy()
    assert (out["encoder_padding_mask"].numpy().sum(1) == inputs_length).all()
    assert (out["target_padding_mask"].numpy().sum(1) == targets_length).all()
    for i in range(64):
        assert merge_span_corruption(encoder[i], target[i], SENTINELS, eos_token_id=1) == ids[i].tolist()
        assert target[i].tolist()[0] == SENTINELS[0] and target[i].tolist().count(SENTINELS[1]) == 0
    assert len({tuple(row) for row in encoder}) > 1  # not always the same corruption
