"""Tests for the BART noising math in `kobjectives.ops.bart_noising`.

Statistics are checked against the published definitions (Lewis et al.,
2020; fairseq's `DenoisingDataset`) over >= 10^5 tokens; the assembly of the
noised rows against an independent numpy reference built from the plan.
"""

import math
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops import bart_noising as bn

PAD, BOS, EOS, MASK, PERIOD, SEP = 0, 1, 2, 3, 4, 5
SPECIAL = (PAD, BOS, EOS, SEP)
FIRST_WORD = 10


def unique_rows(batch, length, seed=0, min_fill=0.5):
    """`[BOS, distinct words..., EOS, PAD...]` rows of random length."""
    rng = np.random.RandomState(seed)
    ids = np.zeros([batch, length], "int32")
    for i in range(batch):
        real = rng.randint(int(min_fill * length), length + 1)
        ids[i, 0] = BOS
        ids[i, 1 : real - 1] = FIRST_WORD + np.arange(real - 2)
        ids[i, real - 1] = EOS
    return ids


def noise(ids, seed=(1, 2), **kwargs):
    ids = np.asarray(ids, "int32")
    options = dict(
        mask_token_id=MASK,
        sequence_length=ids.shape[1],
        text_infilling_rate=0.0,
        sentence_permutation_rate=0.0,
        sentence_end_ids=(PERIOD,),
        unselectable_ids=SPECIAL,
        return_plan=True,
    )
    options.update(kwargs)
    seeds = bn.row_seeds(tf.constant(seed, "int64"), ids.shape[0])
    out = bn.bart_noise(tf.constant(ids), ids != PAD, seeds, **options)
    plan = {k: v.numpy() for k, v in out.pop("plan").items()}
    return {k: v.numpy() for k, v in out.items()}, plan


def rows(out):
    """The real tokens of each output row, as lists."""
    return [
        list(r[m]) for r, m in zip(out["token_ids"], out["padding_mask"])
    ]


def reference_infilling(ids, selectable, starts, lengths, mask):
    """Numpy reference: one row with the spans of the plan applied."""
    n = int(selectable.sum())
    spans = {}
    for s, l in zip(starts, lengths):
        if s >= 0:
            spans.setdefault(int(s), []).append(int(l))
    out, index, covered_until = [], 0, 0
    last = np.flatnonzero(selectable)[-1] if n else -1
    for p, token in enumerate(ids):
        if not selectable[p]:
            if token != PAD:
                out.append(int(token))
            continue
        started = False
        for l in spans.get(index, []):
            out.append(mask)  # one mask per span, also for empty ones
            if l > 0:
                started, covered_until = True, index + l
        if not started and index >= covered_until:
            out.append(int(token))
        index += 1
        if p == last:
            out.extend([mask] * len(spans.get(n, [])))
    return out


def test_row_seeds_and_bits_do_not_depend_on_the_batch():
    seed = tf.constant([4, 5], "int64")
    small, large = bn.row_seeds(seed, 3).numpy(), bn.row_seeds(seed, 9).numpy()
    np.testing.assert_array_equal(small, large[:3])
    assert len({tuple(s) for s in large}) == 9
    bits = bn.random_bits(large, 50).numpy()
    alone = bn.random_bits(large[4:5], 50).numpy()
    np.testing.assert_array_equal(bits[4:5], alone)
    assert bits.dtype == np.int32 and len(np.unique(bits)) > 440


@pytest.mark.parametrize("lam", [3.0, 0.7, 12.0])
def test_poisson_lengths_match_the_pmf(lam):
    bits = tf.random.stateless_uniform(
        [200_000], [7, 8], minval=None, maxval=None, dtype="int32"
    )
    draws = bn.poisson_from_bits(bits, lam).numpy()
    assert abs(draws.mean() - lam) < 0.02 * lam
    assert abs(draws.var() - lam) < 0.04 * lam
    top = int(lam + 4 * math.sqrt(lam) + 2)
    pmf = [math.exp(-lam) * lam**j / math.factorial(j) for j in range(top)]
    freq = np.bincount(draws, minlength=top)[:top] / len(draws)
    np.testing.assert_allclose(freq, pmf, atol=0.004)
    table = bn.poisson_cdf_table(lam)
    assert 1.0 - table[-1] < 1e-12 and np.all(np.diff(table) >= 0)


@pytest.mark.parametrize("rate, lam", [(0.3, 3.0), (0.15, 1.0), (0.5, 6.0)])
def test_text_infilling_statistics(rate, lam):
    ids = unique_rows(1024, 160, seed=1)
    # Room for rows that zero-length spans make longer than their input.
    out, plan = noise(
        ids, text_infilling_rate=rate, poisson_lambda=lam, sequence_length=180
    )
    n = plan["num_selectable"]
    assert n.sum() > 100_000
    # Exactly t = floor(rate * n + u) tokens covered per row; unbiased.
    np.testing.assert_array_equal(plan["num_covered"], plan["target"])
    assert np.all(np.abs(plan["target"] - rate * n) < 1)
    np.testing.assert_array_equal(plan["covered"].sum(1), plan["num_covered"])
    assert abs(plan["covered"].sum() / n.sum() - rate) < 0.005
    # Span lengths ~ Poisson(lambda): the drawn lengths of the taken spans,
    # zeros included, before the last span of a row is cut to the budget
    # (Wald: the taken spans are a stopping time, so their mean is lambda).
    drawn = plan["drawn_lengths"][plan["drawn_lengths"] >= 0]
    assert len(drawn) == plan["num_spans"].sum()
    assert abs(drawn.mean() - lam) < 0.05 * lam
    assert abs(np.mean(drawn == 0) - math.exp(-lam)) < 0.01
    # Only the last span of a row is cut (the multisets of drawn and final
    # lengths differ in at most one span, by a shortening).
    lengths = plan["span_lengths"]
    np.testing.assert_array_equal(lengths.sum(1), plan["num_covered"])
    for row_drawn, row_final, k in zip(
        plan["drawn_lengths"], lengths, plan["num_spans"]
    ):
        drawn_k, final_k = list(row_drawn[:k]), list(row_final[:k])
        assert sum((Counter(drawn_k) - Counter(final_k)).values()) <= 1
        assert sum(drawn_k) >= sum(final_k)
    # One mask per span: every span (empty ones too) is one mask.
    assert np.all((out["token_ids"] == MASK).sum(1) == plan["num_spans"])


def test_spans_are_disjoint_ordered_and_inside_the_text():
    ids = unique_rows(256, 64, seed=2)
    _, plan = noise(ids, text_infilling_rate=0.4)
    for starts, lengths, n, k in zip(
        plan["span_starts"], plan["span_lengths"], plan["num_selectable"],
        plan["num_spans"],
    ):
        assert np.all(starts[:k] >= 0) and np.all(starts[k:] == -1)
        ends = starts[:k] + lengths[:k]
        assert np.all(ends <= n)
        assert np.all(starts[1:k] >= ends[: k - 1])  # no overlap, in order
    # Specials and padding are never covered.
    assert not plan["covered"][np.isin(ids, SPECIAL)].any()
    assert not plan["replaced"][np.isin(ids, SPECIAL)].any()


def test_coverage_over_positions_and_at_the_edges():
    ids = np.zeros([4096, 34], "int32")
    ids[:, 0], ids[:, 1:33], ids[:, 33] = BOS, FIRST_WORD + np.arange(32), EOS
    _, plan = noise(ids, text_infilling_rate=0.3)
    per_position = plan["covered"][:, 1:33].mean(0)
    assert abs(per_position.mean() - 0.3) < 0.005
    # Away from the edges every position is covered at about the rate ...
    assert np.all(np.abs(per_position[4:-4] - 0.3) < 0.05), per_position
    # ... and the edges less (spans never reach past the text): every
    # interleaving of the k spans and n - t uncovered tokens is equally
    # likely, so the first (last) item is a span with probability
    # k / (k + n - t), about 0.13 here.
    k, t = plan["num_spans"], plan["num_covered"]
    expected = np.mean(k / (k + 32 - t))
    assert 0.1 < expected < 0.16
    first_is_span = np.mean(plan["span_starts"][:, 0] == 0)
    assert abs(first_is_span - expected) < 0.02
    # The last selectable token is covered iff the last item is a non-empty
    # span; the last item is an (empty) span iff masks come after it.
    last_is_span = np.mean(
        plan["covered"][:, 32] | (plan["inserts_after"][:, 32] > 0)
    )
    assert abs(last_is_span - expected) < 0.02


def test_assembly_matches_the_numpy_reference():
    ids = unique_rows(300, 48, seed=3)
    # Special tokens inside the text too.
    ids[::3, 20] = SEP
    out, plan = noise(ids, text_infilling_rate=0.35, poisson_lambda=2.0)
    selectable = (ids != PAD) & ~np.isin(ids, SPECIAL)
    got = rows(out)
    zero_spans = 0
    for i in range(len(ids)):
        expected = reference_infilling(
            ids[i], selectable[i], plan["span_starts"][i],
            plan["span_lengths"][i], MASK,
        )
        assert got[i] == expected, i
        zero_spans += int(
            np.sum((plan["span_lengths"][i] == 0) & (plan["span_starts"][i] >= 0))
        )
    assert zero_spans > 10  # insertions were exercised
    # The special tokens, inside the text too, are all still there.
    for i in range(len(ids)):
        assert [t for t in got[i] if t in SPECIAL] == [
            t for t in ids[i] if t in SPECIAL and t != PAD
        ]


def test_token_deletion_fraction_and_order():
    ids = unique_rows(1024, 160, seed=4)
    for rate in (0.1, 0.35):
        out, plan = noise(ids, token_deletion_rate=rate, seed=(5, int(rate * 100)))
        n = plan["num_selectable"]
        deleted = plan["deleted"]
        assert abs(deleted.sum() / n.sum() - rate) < 0.005
        assert not deleted[np.isin(ids, SPECIAL)].any()
        # The output is the input without the deleted tokens, in order.
        for i in range(0, 1024, 97):
            expected = [t for t, d in zip(ids[i], deleted[i]) if t and not d]
            assert rows(out)[i] == expected
    # With infilling, deletion only takes uncovered tokens; both rates hold.
    out, plan = noise(
        ids, text_infilling_rate=0.3, token_deletion_rate=0.2, seed=(6, 0)
    )
    assert not (plan["deleted"] & plan["covered"]).any()
    n = plan["num_selectable"].sum()
    assert abs(plan["covered"].sum() / n - 0.3) < 0.005
    assert abs(plan["deleted"].sum() / n - 0.2) < 0.005


def sentence_rows(batch, seed=0, length=96):
    """Rows of sentences `w w ... .` with distinct words, BOS/EOS."""
    rng = np.random.RandomState(seed)
    ids = np.zeros([batch, length], "int32")
    for i in range(batch):
        tokens, word = [BOS], FIRST_WORD
        for _ in range(rng.randint(1, 9)):
            n = rng.randint(1, 8)
            tokens += list(range(word, word + n)) + [PERIOD]
            word += n
        if rng.rand() < 0.3:
            tokens = tokens[:-1]  # last sentence without a period
        tokens.append(EOS)
        ids[i, : len(tokens)] = tokens
    return ids


def split_sentences(tokens):
    """The body of `[BOS, ..., EOS]` cut after each run of periods."""
    body = tokens[1:-1]
    sentences, current = [], []
    for j, t in enumerate(body):
        current.append(t)
        if t == PERIOD and (j + 1 == len(body) or body[j + 1] != PERIOD):
            sentences.append(tuple(current))
            current = []
    if current:
        sentences.append(tuple(current))
    return sentences


def parse_sentences(tokens, sentences):
    """Cuts the body of `tokens` into the given sentences (each starts with
    a distinct word), failing if it is not a concatenation of them."""
    by_first = {s[0]: s for s in sentences}
    body, order, j = tokens[1:-1], [], 0
    while j < len(body):
        sentence = by_first[body[j]]
        assert tuple(body[j : j + len(sentence)]) == sentence
        order.append(sentence)
        j += len(sentence)
    return order


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_sentence_permutation(rate):
    ids = sentence_rows(2000, seed=5)
    out, plan = noise(ids, sentence_permutation_rate=rate)
    moved = total = 0
    expected_moved = 0.0
    for i, got in enumerate(rows(out)):
        original = [int(t) for t in ids[i] if t]
        assert got[0] == BOS and got[-1] == EOS and len(got) == len(original)
        before = split_sentences(original)
        # A last sentence without a period may now run into the next one.
        after = parse_sentences(got, before)
        assert sorted(before) == sorted(after)
        assert plan["num_sentences"][i] == len(before)
        moved += sum(a != b for a, b in zip(before, after))
        total += len(before)
        # c ~ floor(rate * N + u) sentences shuffled; a uniform permutation
        # of c has one fixed point on average (none when c = 0).
        n = len(before)
        c_low = math.floor(rate * n)
        frac = rate * n - c_low
        for c, prob in ((c_low, 1 - frac), (c_low + 1, frac)):
            if c >= 2:
                expected_moved += prob * (c - 1)
    assert abs(moved - expected_moved) < 0.05 * total


def test_sentence_permutation_of_runs_of_periods_and_unfinished_text():
    ids = np.zeros([2000, 16], "int32")
    ids[:, :11] = [BOS, 10, PERIOD, PERIOD, 11, 12, PERIOD, 13, 14, 15, EOS]
    out, _ = noise(ids, sentence_permutation_rate=1.0)
    sentences = [(10, PERIOD, PERIOD), (11, 12, PERIOD), (13, 14, 15)]
    seen = set()
    for got in rows(out):
        assert sorted(parse_sentences(got, sentences)) == sorted(sentences)
        seen.add(tuple(got))
    assert len(seen) == 6  # all 3! orders occur


def test_rotation():
    ids = unique_rows(2000, 40, seed=6)
    out, plan = noise(ids, document_rotation_rate=0.4)
    offsets = plan["rotation_offset"]
    assert abs(np.mean(offsets > 0) - 0.4) < 0.03
    for i, got in enumerate(rows(out)):
        original = [int(t) for t in ids[i] if t]
        body = original[1:-1]
        assert got[0] == BOS and got[-1] == EOS
        assert sorted(got) == sorted(original)
        k = offsets[i]
        assert 0 <= k < max(len(body), 1)
        assert got[1:-1] == body[k:] + body[:k]
    rotated = offsets > 0
    # The start is uniform over the other tokens: offset / (len - 1) ~ U.
    lengths = (ids != PAD).sum(1) - 2
    u = (offsets[rotated] - 0.5) / (lengths[rotated] - 1)
    assert abs(u.mean() - 0.5) < 0.03


def test_all_rates_zero_is_the_identity():
    ids = unique_rows(64, 40, seed=7)
    ids[::2, 15] = PERIOD
    out, _ = noise(
        ids, text_infilling_rate=0.0, token_deletion_rate=0.0,
        sentence_permutation_rate=0.0, document_rotation_rate=0.0,
    )
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["padding_mask"], ids != PAD)
    # Into a longer sequence: padded.
    out, _ = noise(ids, sequence_length=50)
    np.testing.assert_array_equal(out["token_ids"][:, :40], ids)
    assert not out["token_ids"][:, 40:].any()


def test_rows_without_text_and_overflow_keep_the_specials():
    ids = np.zeros([3, 12], "int32")
    ids[0, :2] = [BOS, EOS]  # no selectable token
    ids[1, :1] = [BOS]
    ids[2, :12] = [BOS] + list(range(10, 20)) + [EOS]
    out, _ = noise(
        ids, text_infilling_rate=1.0, poisson_lambda=0.3,
        document_rotation_rate=1.0, sentence_permutation_rate=1.0,
    )
    got = rows(out)
    assert got[0] == [BOS, EOS] and got[1] == [BOS]
    # Mostly empty spans: the row overflows; it is cut to the sequence
    # length and EOS still ends it.
    assert len(got[2]) == 12 and got[2][0] == BOS and got[2][-1] == EOS
    assert set(got[2][1:-1]) == {MASK}


def test_batch_size_independence():
    ids = sentence_rows(12, seed=8, length=64)
    options = dict(
        mask_token_id=MASK, sequence_length=64, text_infilling_rate=0.3,
        token_deletion_rate=0.1, sentence_permutation_rate=1.0,
        document_rotation_rate=0.5, sentence_end_ids=(PERIOD,),
        unselectable_ids=SPECIAL,
    )
    seeds = bn.row_seeds(tf.constant([3, 3], "int64"), 12)
    full = bn.bart_noise(ids, ids != PAD, seeds, **options)["token_ids"]
    for i in (0, 5, 11):
        alone = bn.bart_noise(
            ids[i : i + 1], ids[i : i + 1] != PAD, seeds[i : i + 1], **options
        )["token_ids"]
        np.testing.assert_array_equal(full[i : i + 1], alone)


@pytest.mark.slow
def test_xla_gives_the_same_noise():
    ids = sentence_rows(12, seed=8, length=64)
    options = dict(
        mask_token_id=MASK, sequence_length=64, text_infilling_rate=0.3,
        token_deletion_rate=0.1, sentence_permutation_rate=1.0,
        document_rotation_rate=0.5, sentence_end_ids=(PERIOD,),
        unselectable_ids=SPECIAL,
    )
    seeds = bn.row_seeds(tf.constant([3, 3], "int64"), 12)
    full = bn.bart_noise(ids, ids != PAD, seeds, **options)["token_ids"]
    jitted = tf.function(
        lambda x, s: bn.bart_noise(x, x != PAD, s, **options)["token_ids"],
        jit_compile=True,
    )
    np.testing.assert_array_equal(jitted(tf.constant(ids), seeds), full)
