"""Tests for the masking math in `kobjectives.ops.masking`."""

import numpy as np
import tensorflow as tf

from kobjectives.ops import masking


def test_id_ranges_and_ids_in():
    assert masking.id_ranges([5, 0, 3, 4, 9, 4]) == [(0, 0), (3, 5), (9, 9)]
    ids = tf.constant([[0, 1, 3, 5, 6, 9, 10]])
    np.testing.assert_array_equal(
        masking.ids_in(ids, [0, 3, 4, 5, 9]), [[1, 0, 1, 1, 0, 1, 0]]
    )
    np.testing.assert_array_equal(
        masking.ids_in(ids, [0, 3, 4, 5, 9], negate=True),
        [[0, 1, 0, 0, 1, 0, 1]],
    )
    # Many ranges: table path, ids beyond the table are not members.
    many = list(range(0, 40, 2))
    big = tf.constant([[0, 1, 2, 38, 39, 1000]])
    np.testing.assert_array_equal(
        masking.ids_in(big, many), [[1, 0, 1, 1, 0, 0]]
    )


def _splitmix64_words(start, count):
    """Reference: `count` SplitMix64 outputs from `start`, as int32 words
    (low half, then high half), in plain Python integers."""
    mask = 2**64 - 1
    words = []
    for j in range(1, count + 1):
        x = (start + j * 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        words += [x & 0xFFFFFFFF, x >> 32]
    return np.array(words, dtype="uint32").view("int32")


def test_random_words_are_a_splitmix64_stream_from_a_philox_start():
    seed = tf.constant([3, 14], "int64")
    start = tf.random.stateless_uniform(
        [], seed, minval=None, maxval=None, dtype="int64"
    )
    start = int(start.numpy()) % 2**64
    for batch, width in [(3, 7), (2, 8), (1, 1)]:
        pairs = (width + 1) // 2
        expected = _splitmix64_words(start, batch * pairs)
        expected = expected.reshape([batch, 2 * pairs])
        words = masking.random_words(batch, width, seed)
        np.testing.assert_array_equal(words.numpy(), expected)
        # Unknown shapes take the computed path: the same words.
        dynamic = tf.function(
            lambda b, w: masking.random_words(b, w, seed),
            input_signature=[tf.TensorSpec([], "int32")] * 2,
        )
        np.testing.assert_array_equal(dynamic(batch, width).numpy(), expected)
    # Beyond the constant's size cap the steps are computed: same words.
    big = masking.random_words(300, 500, seed).numpy()
    np.testing.assert_array_equal(
        big.ravel()[-6:], _splitmix64_words(start, 300 * 250)[-6:]
    )


def test_random_words_are_uniform_and_seed_dependent():
    words = masking.random_words(256, 512, tf.constant([5, 0])).numpy()
    bits = np.unpackbits(words.view("uint8")).reshape(-1, 32)
    # Every bit position is a fair coin (5 sigma over 131072 words).
    assert np.all(np.abs(bits.mean(0) - 0.5) < 5 * 0.5 / np.sqrt(len(bits)))
    # Bytes are uniform (chi-square, 255 degrees of freedom, p ~ 1e-6).
    counts = np.bincount(words.view("uint8").ravel(), minlength=256)
    expected = words.size * 4 / 256
    assert np.sum((counts - expected) ** 2 / expected) < 370
    # Neighbouring words are uncorrelated.
    u = words.astype("float64").ravel()
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02
    # Neighbouring seeds give unrelated streams, the same seed the same one.
    again = masking.random_words(256, 512, tf.constant([5, 0])).numpy()
    other = masking.random_words(256, 512, tf.constant([5, 1])).numpy()
    np.testing.assert_array_equal(words, again)
    assert np.mean(words == other) < 1e-3
    assert len(np.intersect1d(words, other)) < 0.01 * words.size


def test_truncated_geometric_lengths():
    u = tf.random.stateless_uniform([200_000], [1, 2])
    lengths = masking.truncated_geometric_lengths(u, 0.2, 10).numpy()
    assert lengths.min() == 1 and lengths.max() == 10
    q = 0.8
    pmf = 0.2 * q ** np.arange(10) / (1 - q**10)
    expected_mean = float(np.sum(np.arange(1, 11) * pmf))
    assert abs(expected_mean - 3.80) < 0.01  # SpanBERT's figure
    assert abs(lengths.mean() - expected_mean) < 0.03
    freq = np.bincount(lengths, minlength=11)[1:] / len(lengths)
    np.testing.assert_allclose(freq, pmf, atol=0.005)


def test_geometric_tile_starts():
    u = tf.random.stateless_uniform([64, 512], [3, 4], minval=1e-6)
    starts = masking.geometric_tile_starts(u, 0.2, 10).numpy()
    assert starts[:, 0].all()
    gaps = []
    for row in starts:
        positions = np.flatnonzero(row)
        gaps.extend(np.diff(positions))  # complete tiles only
    gaps = np.asarray(gaps)
    assert gaps.min() >= 1 and gaps.max() <= 10
    assert abs(gaps.mean() - 3.8) < 0.05


def test_chunk_keys_shared_within_chunks():
    starts = tf.constant(np.array([[1, 0, 0, 1, 1, 0, 1, 0]] * 4, bool))
    bits = tf.random.stateless_uniform(
        [4, 8], [5, 6], minval=None, maxval=None, dtype="int32"
    )
    keys = masking.chunk_keys(starts, bits, 17).numpy()
    assert keys.min() >= 0 and keys.max() < 2**17
    for a, b in [(0, 3), (4, 6), (6, 8)]:
        assert np.all(keys[:, a:b] == keys[:, a : a + 1])


def test_chunk_keys_are_uniform():
    starts = tf.ones([256, 128], "bool")
    bits = tf.random.stateless_uniform(
        [256, 128], [7, 8], minval=None, maxval=None, dtype="int32"
    )
    keys = masking.chunk_keys(starts, bits, 17).numpy() / 2**17
    counts = np.histogram(keys, bins=8, range=(0, 1))[0] / keys.size
    np.testing.assert_allclose(counts, 1 / 8, atol=0.005)


def test_sample_replacement_ids():
    values = tf.random.stateless_uniform(
        [100_000], [9, 10], minval=0, maxval=2**31, dtype="int64"
    )
    cases = [
        [0, 3, 4, 5, 11, 19],  # a few ranges: comparisons
        [1, 2, 7, 8, 9, 15],  # not starting at 0
        [0, 1] + list(range(4, 40, 3)),  # many ranges: searchsorted
    ]
    for excluded in cases:
        size = max(excluded) + 2
        ids = masking.sample_replacement_ids(
            values, 2**31, size, excluded
        ).numpy()
        allowed = sorted(set(range(size)) - set(excluded))
        assert set(np.unique(ids)) == set(allowed)
        freq = np.bincount(ids, minlength=size)[allowed] / len(ids)
        np.testing.assert_allclose(freq, 1 / len(allowed), rtol=0.15)


def test_mask_tokens_is_a_pure_function_of_the_seed():
    ids = tf.constant(np.random.default_rng(0).integers(5, 100, [8, 16]))
    kwargs = dict(
        vocabulary_size=100,
        mask_selection_rate=0.3,
        mask_token_id=4,
        mask_selection_length=6,
        unselectable_ids=[0, 1, 2, 3, 4],
        excluded_ids=[0, 1, 2, 3, 4],
    )
    padding = tf.ones_like(ids, "bool")
    a = masking.mask_tokens(ids, padding, [1, 2], **kwargs)
    seed = tf.constant([1, 2], "int32")
    b = masking.mask_tokens(ids, padding, seed, **kwargs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].shape[0] == 8


def test_word_starts():
    selectable = tf.constant(np.array([[0, 1, 1, 1, 0, 1, 1]], bool))
    continuation = tf.constant(np.array([[0, 0, 1, 0, 0, 1, 1]], bool))
    np.testing.assert_array_equal(
        masking.word_starts(selectable, continuation),
        [[0, 1, 0, 1, 0, 1, 0]],
    )


def test_kth_largest_per_row():
    scores = tf.constant([[5, -1, 9, 7, 3], [2, 8, -1, -1, 4]])
    k = tf.constant([[1.0], [3.0]])
    np.testing.assert_array_equal(
        masking.kth_largest(scores, k, 4), [[9], [2]]
    )
    # k = 0 gives the dtype's maximum (nothing is >= it); k beyond the
    # row's length its minimum.
    np.testing.assert_array_equal(
        masking.kth_largest(scores, tf.constant([[0.0], [2.0]]), 2),
        [[np.iinfo(np.int32).max], [4]],
    )
    np.testing.assert_array_equal(
        masking.kth_largest(scores, tf.constant([[6.0], [5.0]]), 6),
        [[np.iinfo(np.int32).min], [-1]],
    )
    # Same answer as a sort, on random rows and budgets.
    rng = np.random.default_rng(0)
    values = rng.permutation(64 * 30).reshape(64, 30).astype("int32")
    ks = rng.integers(1, 9, size=(64, 1)).astype("float32")
    ranks = ks[:, 0].astype(int) - 1
    expected = -np.sort(-values, axis=1)[np.arange(64), ranks]
    np.testing.assert_array_equal(
        masking.kth_largest(tf.constant(values), tf.constant(ks), 8)[:, 0],
        expected,
    )


def test_whole_chunk_selection_and_compaction():
    # Two chunks (keys 3 and 1, p=3) and an unselectable position.
    keys = tf.constant([[1, 1, 3, 3, 3, 0, 1, 1]])
    selectable = tf.constant(np.array([[1, 1, 1, 1, 1, 0, 1, 1]], bool))
    scores = masking.position_scores(keys, selectable, 3)

    def select(target, v):
        return masking.whole_chunk_selection(
            scores,
            target=tf.constant([[target]]),
            v=tf.constant([[v]]),
            position_bits=3,
            max_selections=5,
        )

    # Target 3: the key-3 chunk (line places [0, 3)) fills it exactly; the
    # next chunk (places [3, 7)) starts at place 3 and is dropped.
    selected, count = select(3.0, 0.0)
    np.testing.assert_array_equal(selected, [[0, 0, 1, 1, 1, 0, 0, 0]])
    assert float(count[0, 0]) == 3.0
    # Target 4: place 4 is in the key-1 chunk [3, 7), taken iff
    # 3 + v * 4 < 4 and 7 <= 5: never, it does not fit in 5 slots.
    selected, count = select(4.0, 0.0)
    np.testing.assert_array_equal(selected, [[0, 0, 1, 1, 1, 0, 0, 0]])
    # With 8 slots it fits and is taken iff v < 1/4.
    taken, _ = masking.whole_chunk_selection(
        scores, tf.constant([[4.0]]), tf.constant([[0.2]]), 3, 8
    )
    np.testing.assert_array_equal(taken, [[1, 1, 1, 1, 1, 0, 1, 1]])
    dropped, _ = masking.whole_chunk_selection(
        scores, tf.constant([[4.0]]), tf.constant([[0.3]]), 3, 8
    )
    np.testing.assert_array_equal(dropped, [[0, 0, 1, 1, 1, 0, 0, 0]])

    positions, used = masking.compact_positions(
        taken, tf.constant([[7.0]]), 8
    )
    np.testing.assert_array_equal(positions, [[0, 1, 2, 3, 4, 6, 7, 0]])
    np.testing.assert_array_equal(used, [[1, 1, 1, 1, 1, 1, 1, 0]])


def test_compact_positions_rows_and_empty_rows():
    selected = tf.constant(
        np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
    )
    positions, used = masking.compact_positions(
        selected, tf.constant([[2.0], [0.0], [3.0]]), 3
    )
    np.testing.assert_array_equal(positions, [[1, 3, 0], [0, 0, 0], [0, 1, 2]])
    np.testing.assert_array_equal(used, [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
