"""Tests for `kobjectives.layers.MaskedLMMasker`.

Statistics are checked on one big batch per strategy (>= 10^5 selectable
tokens, one vectorized call), so the file stays fast on two CPU cores.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
from kobjectives.layers import MaskedLMMasker

VOCAB = 5000
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
RATE = 0.15
STRATEGIES = ["token", "whole_word", "span"]

_rng = np.random.default_rng(1234)
# ~30% of the regular ids are WordPiece continuations ("##..."), scattered.
CONTINUATION_IDS = np.flatnonzero(_rng.random(VOCAB) < 0.3)
CONTINUATION_IDS = CONTINUATION_IDS[CONTINUATION_IDS > MASK].tolist()


def make_batch(rows, length, seed=0):
    """[CLS] a [SEP] b [SEP] [PAD]... rows with random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(MASK + 1, VOCAB, size=(rows, length)).astype("int32")
    n = rng.integers(length // 2, length + 1, size=rows)
    cut = rng.integers(2, n - 1)
    ids[:, 0] = CLS
    ids[np.arange(rows), cut] = SEP
    ids[np.arange(rows), n - 1] = SEP
    ids[np.arange(length)[None, :] >= n[:, None]] = PAD
    return ids


def make_masker(strategy="token", **kwargs):
    config = dict(
        vocabulary_size=VOCAB,
        mask_selection_rate=RATE,
        mask_token_id=MASK,
        mask_selection_length=32,
        unselectable_token_ids=SPECIALS,
        strategy=strategy,
        continuation_token_ids=CONTINUATION_IDS,
        seed=42,
    )
    config.update(kwargs)
    return MaskedLMMasker(**config)


def numpy_outputs(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def word_ids(ids, selectable):
    """Per-position word index (row-major unique), -1 off selectable."""
    continuation = np.isin(ids, CONTINUATION_IDS)
    previous = np.pad(selectable[:, :-1], [[0, 0], [1, 0]])
    starts = selectable & ~(continuation & previous)
    words = np.cumsum(starts.ravel()).reshape(ids.shape) - 1
    return np.where(selectable, words, -1)


def check_consistency(ids, out, slots):
    """Invariants that hold for every strategy and every row."""
    positions = out["mask_positions"]
    weights = out["mask_weights"]
    used = weights > 0
    rows = np.arange(ids.shape[0])[:, None]
    selectable = ~np.isin(ids, SPECIALS)
    assert positions.shape == weights.shape == out["mask_ids"].shape
    assert positions.shape == (ids.shape[0], slots)
    assert set(np.unique(weights)) <= {0.0, 1.0}
    # Used slots come first, unused slots hold zeros.
    assert np.all(np.diff(used.astype(int), axis=1) <= 0)
    assert np.all(positions[~used] == 0)
    assert np.all(out["mask_ids"][~used] == 0)
    # Positions strictly ascending, never special or padding.
    gaps = np.diff(positions, axis=1)
    assert np.all(gaps[used[:, 1:]] > 0)
    assert np.all(selectable[rows, positions][used])
    # mask_ids are the original ids at mask_positions.
    np.testing.assert_array_equal(
        out["mask_ids"][used], ids[rows, positions][used]
    )
    # Only selected positions changed.
    selected = np.zeros_like(selectable)
    selected[np.broadcast_to(rows, positions.shape)[used], positions[used]] = 1
    np.testing.assert_array_equal(
        out["token_ids"][~selected], ids[~selected]
    )
    np.testing.assert_array_equal(out["padding_mask"], ids != PAD)
    return selected, selectable


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_statistics(strategy):
    ids = make_batch(4096, 64, seed=1)
    out = numpy_outputs(make_masker(strategy)(tf.constant(ids)))
    selected, selectable = check_consistency(ids, out, 32)
    assert selectable.sum() >= 100_000
    # Unbiased selected fraction (the 32 slots never cap here).
    fraction = selected.sum() / selectable.sum()
    assert abs(fraction - RATE) < 0.003, fraction
    # 80/10/10 replacement split.
    before, after = ids[selected], out["token_ids"][selected]
    to_mask = np.mean(after == MASK)
    kept = np.mean(after == before)
    to_random = 1.0 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.01, to_mask
    assert abs(kept - 0.1) < 0.01, kept
    assert abs(to_random - 0.1) < 0.01, to_random
    # Random replacements are never special ids.
    random_ids = after[(after != MASK) & (after != before)]
    assert not np.isin(random_ids, SPECIALS).any()
    if strategy == "whole_word":
        words = word_ids(ids, selectable)
        pieces = np.bincount(words[selectable])
        picked = np.bincount(words[selected], minlength=len(pieces))
        assert np.all((picked == 0) | (picked == pieces))
        assert (pieces[picked > 0] > 1).any()  # multi-piece words do occur
    if strategy == "span":
        # Runs of consecutive selected tokens: SpanBERT-like mean length
        # (tiles average 3.8, cut at specials, adjacent tiles may merge).
        padded = np.pad(selected, [[0, 0], [1, 1]]).astype(int)
        edges = np.diff(padded, axis=1)
        runs = np.flatnonzero(edges.ravel() == -1) - np.flatnonzero(
            edges.ravel() == 1
        )
        assert 2.5 < runs.mean() < 5.5, runs.mean()


def test_random_replacements_are_uniform():
    ids = make_batch(4096, 64, seed=2)
    # Extra unselectable ids make the excluded set several ranges.
    extra = [100, 101, 2500]
    masker = make_masker(
        mask_token_rate=0.0,
        random_token_rate=1.0,
        unselectable_token_ids=SPECIALS + extra,
    )
    out = numpy_outputs(masker(tf.constant(ids)))
    selected, _ = check_consistency(ids, out, 32)
    assert not np.isin(ids[selected], extra).any()
    random_ids = out["token_ids"][selected]
    assert not np.isin(random_ids, SPECIALS + extra).any()
    assert random_ids.min() >= MASK + 1 and random_ids.max() < VOCAB
    # Ten equal-width bins of the allowed ids get about 10% each.
    bins = np.histogram(random_ids, bins=10, range=(MASK + 1, VOCAB))[0]
    assert np.all(np.abs(bins / bins.sum() - 0.1) < 0.015), bins


def test_whole_word_cap_drops_whole_words():
    ids = make_batch(2048, 64, seed=3)
    masker = make_masker(
        "whole_word", mask_selection_rate=0.5, mask_selection_length=5
    )
    out = numpy_outputs(masker(tf.constant(ids)))
    selected, selectable = check_consistency(ids, out, 5)
    words = word_ids(ids, selectable)
    pieces = np.bincount(words[selectable])
    picked = np.bincount(words[selected], minlength=len(pieces))
    assert np.all((picked == 0) | (picked == pieces))
    assert out["mask_weights"].sum(axis=1).max() == 5


def test_token_cap_fills_all_slots():
    ids = make_batch(256, 64, seed=4)
    out = numpy_outputs(
        make_masker(mask_selection_rate=0.5, mask_selection_length=4)(ids)
    )
    check_consistency(ids, out, 4)
    # 0.5 * (>= 29 selectable) always exceeds 4 slots.
    assert np.all(out["mask_weights"].sum(axis=1) == 4)


def test_word_starts_input():
    # Two rows; words are [5 6 7] [8] [9 10] in row 0.
    ids = np.array([[CLS, 5, 6, 7, 8, 9, 10, SEP, PAD]] * 64, "int32")
    starts = np.array([[0, 1, 0, 0, 1, 1, 0, 0, 0]] * 64, bool)
    masker = make_masker(
        "whole_word",
        continuation_token_ids=None,
        mask_selection_rate=0.3,
        mask_selection_length=6,
    )
    out = numpy_outputs(
        masker({"token_ids": ids, "word_starts": starts, "segment_ids": ids})
    )
    assert "word_starts" not in out
    np.testing.assert_array_equal(out["segment_ids"], ids)
    selected, _ = check_consistency(ids, out, 6)
    for a, b in [(1, 4), (5, 7)]:
        block = selected[:, a:b]
        assert np.all(block.all(axis=1) | ~block.any(axis=1))
    assert selected.any()


def test_whole_word_needs_boundaries():
    masker = make_masker("whole_word", continuation_token_ids=None)
    with pytest.raises(ValueError, match="continuation_token_ids"):
        masker(make_batch(2, 16))


def test_unbatched_and_dtypes():
    ids = make_batch(1, 24)[0]
    out = make_masker(mask_selection_length=5)(tf.constant(ids))
    assert out["token_ids"].shape == (24,)
    assert out["padding_mask"].dtype == tf.bool
    assert out["mask_positions"].shape == (5,)
    assert out["mask_positions"].dtype == tf.int32
    assert out["mask_weights"].dtype == tf.float32
    out64 = make_masker()(tf.constant(make_batch(3, 24), "int64"))
    assert out64["token_ids"].dtype == tf.int64
    assert out64["mask_ids"].dtype == tf.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_static_shapes_in_tf_data(strategy):
    masker = make_masker(strategy, mask_selection_length=7)
    ids = make_batch(12, 24)
    unbatched = tf.data.Dataset.from_tensor_slices(ids).map(masker)
    batched = tf.data.Dataset.from_tensor_slices(ids).batch(5).map(
        masker, num_parallel_calls=tf.data.AUTOTUNE
    )
    spec = unbatched.element_spec
    assert spec["token_ids"].shape == (24,)
    assert spec["mask_positions"].shape == (7,)
    spec = batched.element_spec
    assert spec["token_ids"].shape.as_list() == [None, 24]
    assert spec["padding_mask"].shape.as_list() == [None, 24]
    for key in ("mask_positions", "mask_ids", "mask_weights"):
        assert spec[key].shape.as_list() == [None, 7]
    sizes = [int(e["mask_weights"].shape[0]) for e in batched]
    assert sizes == [5, 5, 2]
    for i, element in enumerate(unbatched.take(3)):
        element = {k: np.asarray(v)[None] for k, v in element.items()}
        check_consistency(ids[i : i + 1], element, 7)


def test_ragged_input():
    rows = [[CLS, 5, 6, 7, SEP], [CLS, 8, SEP], [CLS] + list(range(10, 40))]
    ragged = tf.ragged.constant(rows, dtype="int32")
    masker = make_masker(sequence_length=16, mask_selection_rate=0.5)
    out = numpy_outputs(masker(ragged))
    assert out["token_ids"].shape == (3, 16)
    np.testing.assert_array_equal(
        out["padding_mask"].sum(axis=1), [5, 3, 16]
    )
    dense = np.zeros([3, 16], "int32")
    for i, row in enumerate(rows):
        dense[i, : min(len(row), 16)] = row[:16]
    check_consistency(dense, out, 32)
    # In tf.data too, with a static length.
    ds = tf.data.Dataset.from_tensor_slices(ragged).batch(2).map(masker)
    assert ds.element_spec["token_ids"].shape.as_list() == [None, 16]
    # Without `sequence_length`, ragged in gives ragged ids out (keras-hub's
    # layout; see test_keras_hub_* below).
    out = make_masker(mask_selection_rate=0.5)(ragged)
    assert isinstance(out["token_ids"], tf.RaggedTensor)
    np.testing.assert_array_equal(out["token_ids"].row_lengths(), [5, 3, 31])


def test_dict_input_padding_mask_and_passthrough():
    ids = make_batch(64, 32, seed=5)
    # Declare the second half padding although it holds regular ids.
    padding_mask = np.broadcast_to(np.arange(32) < 16, ids.shape)
    ids[:, 16:] = 7
    segment_ids = np.ones_like(ids)
    out = numpy_outputs(
        make_masker(mask_selection_rate=0.5)(
            {
                "token_ids": ids,
                "padding_mask": padding_mask,
                "segment_ids": segment_ids,
            }
        )
    )
    np.testing.assert_array_equal(out["segment_ids"], segment_ids)
    np.testing.assert_array_equal(out["padding_mask"], padding_mask)
    used = out["mask_weights"] > 0
    assert used.any()
    assert np.all(out["mask_positions"][used] < 16)


def test_too_few_maskable_tokens():
    ids = np.array(
        [[CLS, SEP, PAD, PAD], [CLS, 9, SEP, PAD], [PAD] * 4], "int32"
    )
    masker = make_masker(mask_selection_rate=1.0, mask_selection_length=3)
    out = numpy_outputs(masker(ids))
    np.testing.assert_array_equal(out["mask_weights"].sum(axis=1), [0, 1, 0])
    np.testing.assert_array_equal(out["mask_positions"][1], [1, 0, 0])
    assert np.all(np.isfinite(out["mask_weights"]))
    np.testing.assert_array_equal(out["token_ids"][[0, 2]], ids[[0, 2]])
    # Rate 0 selects nothing.
    out = numpy_outputs(make_masker(mask_selection_rate=0.0)(make_batch(8, 16)))
    assert out["mask_weights"].sum() == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_determinism_with_seed_argument(strategy):
    ids = tf.constant(make_batch(32, 40, seed=6))
    a, b = make_masker(strategy), make_masker(strategy, seed=None)
    seed = tf.constant([3, 9], "int64")
    first, second = numpy_outputs(a(ids, seed=seed)), numpy_outputs(
        b(ids, seed=seed)
    )
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other = numpy_outputs(a(ids, seed=tf.constant([3, 10], "int64")))
    assert not np.array_equal(other["mask_positions"], first["mask_positions"])


def test_seed_generator_same_seed_same_sequence():
    ids = make_batch(16, 32, seed=7)
    a, b = make_masker(seed=11), make_masker(seed=11)
    a1, a2 = numpy_outputs(a(ids)), numpy_outputs(a(ids))
    b1 = numpy_outputs(b(ids))
    np.testing.assert_array_equal(a1["token_ids"], b1["token_ids"])
    assert not np.array_equal(a1["mask_positions"], a2["mask_positions"])
    # Without a seed argument the layer also works inside tf.data, with new
    # masks for every batch (here all rows are the same sequence).
    same = np.repeat(ids[:1], 16, axis=0)
    ds = tf.data.Dataset.from_tensor_slices(same).batch(8).map(a)
    first, second = [e["mask_positions"].numpy() for e in ds]
    assert not np.array_equal(first, second)


def test_map_over_deterministic_and_new_each_epoch():
    ids = make_batch(64, 32, seed=8)

    def pipeline():
        ds = tf.data.Dataset.from_tensor_slices(ids).batch(8)
        masker = make_masker("span", seed=None)
        return masker.map_over(
            ds, seed=123, num_parallel_calls=tf.data.AUTOTUNE
        )

    def epoch(ds):
        return np.concatenate([e["token_ids"].numpy() for e in ds])

    one, two = pipeline(), pipeline()
    one_e1, one_e2 = epoch(one), epoch(one)
    two_e1, two_e2 = epoch(two), epoch(two)
    np.testing.assert_array_equal(one_e1, two_e1)
    np.testing.assert_array_equal(one_e2, two_e2)
    assert not np.array_equal(one_e1, one_e2)
    # Different elements get different masks within an epoch.
    assert not np.array_equal(one_e1[:8], one_e1[8:16])


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(mask_selection_rate=1.5), "mask_selection_rate"),
        (dict(mask_selection_rate=-0.1), "mask_selection_rate"),
        (dict(mask_token_rate=1.2), "mask_token_rate"),
        (dict(random_token_rate=-0.5), "random_token_rate"),
        (dict(mask_token_rate=0.8, random_token_rate=0.3), "mask_token_rate"),
        (dict(mask_selection_length=-1), "mask_selection_length"),
        (dict(strategy="random"), "strategy"),
        (dict(mask_token_id=VOCAB), "mask_token_id"),
        (dict(unselectable_token_ids=[VOCAB + 3]), "unselectable_token_ids"),
        (dict(span_geometric_p=0.0), "span_geometric_p"),
        (dict(max_span_length=0), "max_span_length"),
    ],
)
def test_construction_errors(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_masker(**kwargs)


@pytest.mark.parametrize("bad_id", [VOCAB, VOCAB + 77, -3])
def test_out_of_vocabulary_id(bad_id):
    ids = make_batch(4, 16)
    ids[2, 5] = bad_id
    masker = make_masker()
    # The message shows the offending id and the vocabulary size (eagerly
    # one item per line, in graph mode items in brackets).
    pattern = rf"token id\W+{bad_id}\W(.|\n)*vocabulary_size = {VOCAB}"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        masker(ids)
    ds = tf.data.Dataset.from_tensors(ids).map(masker)
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        next(iter(ds))


def test_keras_file_round_trip(tmp_path):
    masker = make_masker("whole_word", mask_selection_length=6)
    inputs = keras.Input(shape=(32,), dtype="int32")
    outputs = masker(inputs)
    assert outputs["mask_ids"].dtype == "int32"
    assert outputs["padding_mask"].dtype == "bool"
    model = keras.Model(inputs, outputs)
    path = tmp_path / "masker.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = [l for l in loaded.layers if isinstance(l, MaskedLMMasker)][0]
    assert layer.get_config() == masker.get_config()
    out = numpy_outputs(loaded(make_batch(4, 32)))
    assert out["mask_positions"].shape == (4, 6)
    check_consistency(make_batch(4, 32), out, 6)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_batched_element_spec_is_static(strategy, drop_remainder):
    # Static batches give fully static outputs (as TPU input needs); a
    # partial last batch leaves only the batch axis unknown.
    ds = tf.data.Dataset.from_tensor_slices(make_batch(10, 24))
    ds = ds.batch(4, drop_remainder=drop_remainder)
    masked = make_masker(strategy, mask_selection_length=5).map_over(ds)
    batch = 4 if drop_remainder else None
    for key, spec in masked.element_spec.items():
        width = 5 if key.startswith("mask_") else 24
        assert spec.shape.as_list() == [batch, width], key
    for element in masked:
        assert element["mask_positions"].shape[1] == 5


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_variable_length_examples_in_tf_data(strategy):
    # Unbatched examples of unknown length (no `sequence_length`).
    rows = [list(r[r != PAD]) for r in make_batch(6, 40, seed=9)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(rows), output_signature=tf.TensorSpec([None], tf.int32)
    )
    masker = make_masker(strategy, mask_selection_rate=0.3, seed=None)
    masked = masker.map_over(ds, seed=5)
    assert masked.element_spec["mask_positions"].shape == (32,)
    for row, element in zip(rows, masked):
        element = {k: np.asarray(v)[None] for k, v in element.items()}
        check_consistency(np.asarray(row, "int32")[None], element, 32)
        assert element["mask_weights"].sum() > 0


# ---------------------------------------------------------------------------
# keras-hub's own tests of `MaskedLMMaskGenerator` (keras-hub 0.32,
# keras_hub/src/layers/preprocessing/masked_lm_mask_generator_test.py),
# restated against MaskedLMMasker, which claims to be its drop-in: the same
# arguments and inputs must give keras-hub's results wherever they are
# determined (all tokens selected, or none).
# ---------------------------------------------------------------------------

KH_VOCAB = ["[UNK]", "[MASK]", "[RANDOM]", "[CLS]", "[SEP]", "do", "you", "like",
            "machine", "learning", "welcome", "to", "keras"]
KH_MASK = KH_VOCAB.index("[MASK]")


def keras_hub_masker(**kwargs):
    """keras-hub's test setup: every selectable token becomes [MASK]."""
    config = dict(
        vocabulary_size=len(KH_VOCAB), mask_selection_rate=1, mask_selection_length=4,
        mask_token_id=KH_MASK, mask_token_rate=1, random_token_rate=0,
    )
    config.update(kwargs)
    return MaskedLMMasker(**config)


def as_lists(x):
    return x.to_list() if isinstance(x, tf.RaggedTensor) else np.asarray(x).tolist()


@pytest.mark.parametrize("ragged", [False, True])
def test_keras_hub_mask_ragged(ragged):
    inputs = [[5, 3, 2], [1, 2, 3, 4]]
    if ragged:
        inputs = tf.ragged.constant(inputs)
    out = keras_hub_masker()(inputs)
    # Ragged in, ragged out (no `sequence_length` needed); slots dense.
    assert isinstance(out["token_ids"], tf.RaggedTensor)
    assert as_lists(out["token_ids"]) == [[1, 1, 1], [1, 1, 1, 1]]
    assert as_lists(out["mask_positions"]) == [[0, 1, 2, 0], [0, 1, 2, 3]]
    assert as_lists(out["mask_ids"]) == [[5, 3, 2, 0], [1, 2, 3, 4]]
    assert as_lists(out["mask_weights"]) == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert as_lists(out["padding_mask"]) == [[True] * 3, [True] * 4]


def test_keras_hub_mask_dense():
    out = keras_hub_masker()([[5, 3, 2, 4], [1, 2, 3, 4]])
    assert as_lists(out["token_ids"]) == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert as_lists(out["mask_positions"]) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert as_lists(out["mask_ids"]) == [[5, 3, 2, 4], [1, 2, 3, 4]]


def test_keras_hub_unbatched():
    out = keras_hub_masker()([5, 3, 2, 4])
    assert as_lists(out["token_ids"]) == [1, 1, 1, 1]
    assert as_lists(out["mask_positions"]) == [0, 1, 2, 3]
    assert as_lists(out["mask_ids"]) == [5, 3, 2, 4]


def test_keras_hub_random_replacement():
    out = keras_hub_masker(vocabulary_size=10_000, mask_token_rate=0, random_token_rate=1)(
        [5, 3, 2, 4]
    )
    assert as_lists(out["token_ids"]) != [1, 1, 1, 1]
    assert as_lists(out["mask_positions"]) == [0, 1, 2, 3]
    assert as_lists(out["mask_ids"]) == [5, 3, 2, 4]


def test_keras_hub_mask_selection_length_zero_selects_nothing():
    inputs = [[0, 1, 2], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4]]
    masker = keras_hub_masker(
        mask_selection_rate=0.5, mask_selection_length=0, mask_token_rate=0.8,
        random_token_rate=0.1,
    )
    out = masker(inputs)
    assert out["mask_positions"].shape == (3, 0)
    assert int(tf.reduce_sum(out["mask_positions"])) == 0
    assert as_lists(out["token_ids"]) == inputs
    # Dense and in tf.data too, with static shapes.
    ds = tf.data.Dataset.from_tensor_slices(np.ones((6, 5), "int32") * 7).batch(3).map(masker)
    assert ds.element_spec["mask_weights"].shape.as_list() == [None, 0]
    for element in ds:
        np.testing.assert_array_equal(element["token_ids"], np.full((3, 5), 7))


def test_keras_hub_invalid_mask_token():
    with pytest.raises(ValueError, match="mask_token_id"):
        keras_hub_masker(mask_selection_rate=0.5, mask_token_id=len(KH_VOCAB), mask_selection_length=5)


def test_keras_hub_unselectable_tokens():
    unselectable = [len(KH_VOCAB) - 1, len(KH_VOCAB) - 2]
    masker = keras_hub_masker(mask_selection_length=5, unselectable_token_ids=unselectable)
    out = masker([unselectable])
    assert float(tf.reduce_sum(out["mask_weights"])) == 0.0


def test_keras_hub_config():
    unselectable = [len(KH_VOCAB) - 1, len(KH_VOCAB) - 2]
    masker = MaskedLMMasker(
        vocabulary_size=len(KH_VOCAB), mask_selection_rate=0.5, mask_token_id=KH_MASK,
        mask_selection_length=5, unselectable_token_ids=unselectable,
    )
    config = masker.get_config()
    assert config["vocabulary_size"] == len(KH_VOCAB)
    assert config["unselectable_token_ids"] == unselectable
    out = MaskedLMMasker.from_config(config)([[5, 3, 2], [1, 2, 3, 4]])
    assert out["token_ids"].row_lengths().numpy().tolist() == [3, 4]


def test_keras_hub_with_tf_data():
    ds = tf.data.Dataset.from_tensor_slices(tf.ones((100, 10), dtype="int32"))
    masker = MaskedLMMasker(
        vocabulary_size=len(KH_VOCAB), mask_selection_rate=0.5, mask_token_id=KH_MASK,
        mask_selection_length=5,
    )
    batch_first = ds.batch(8).map(masker).take(1).get_single_element()
    batch_second = ds.map(masker).batch(8).take(1).get_single_element()
    assert batch_first["token_ids"].shape == batch_second["token_ids"].shape == (8, 10)


def test_ragged_batches_in_tf_data_without_sequence_length():
    rows = tf.ragged.constant([[5, 6, 7], [8], [9, 10, 11, 12]])
    masker = keras_hub_masker()
    ds = tf.data.Dataset.from_tensor_slices(rows).ragged_batch(2).map(masker)
    assert isinstance(ds.element_spec["token_ids"], tf.RaggedTensorSpec)
    assert ds.element_spec["mask_positions"].shape.as_list() == [None, 4]
    assert [as_lists(e["token_ids"]) for e in ds] == [[[1, 1, 1], [1]], [[1, 1, 1, 1]]]


# ---------------------------------------------------------------------------
# Edge inputs and argument checks.
# ---------------------------------------------------------------------------


def test_sequence_length_cuts_per_token_pass_through_keys_too():
    ids = make_batch(4, 20, seed=10)
    segment_ids = np.repeat(np.arange(20)[None] // 10, 4, axis=0).astype("int32")
    labels = np.arange(4, dtype="int32")
    for length in (12, 24):
        out = make_masker(sequence_length=length)(
            {"token_ids": tf.constant(ids), "segment_ids": tf.constant(segment_ids),
             "labels": tf.constant(labels)}
        )
        assert out["token_ids"].shape == out["segment_ids"].shape == (4, length)
        kept = min(length, 20)
        np.testing.assert_array_equal(out["segment_ids"][:, :kept], segment_ids[:, :kept])
        assert np.all(np.asarray(out["segment_ids"])[:, kept:] == 0)
        np.testing.assert_array_equal(out["labels"], labels)  # not per-token
    # Unbatched, and in tf.data with the static length.
    out = make_masker(sequence_length=12)(
        {"token_ids": tf.constant(ids[0]), "segment_ids": tf.constant(segment_ids[0])}
    )
    assert out["segment_ids"].shape == (12,)
    ds = tf.data.Dataset.from_tensor_slices({"token_ids": ids, "segment_ids": segment_ids})
    ds = ds.batch(2).map(make_masker(sequence_length=12))
    assert ds.element_spec["segment_ids"].shape.as_list() == [None, 12]


def test_zero_length_rows_and_empty_batches_give_unused_slots():
    masker = make_masker(mask_selection_length=3)
    out = masker(tf.zeros([2, 0], tf.int32))
    assert out["token_ids"].shape == (2, 0) and out["mask_weights"].shape == (2, 3)
    assert float(tf.reduce_sum(out["mask_weights"])) == 0.0
    out = masker(tf.zeros([0, 8], tf.int32))
    assert out["token_ids"].shape == (0, 8) and out["mask_positions"].shape == (0, 3)
    out = masker(tf.ragged.constant([[], [CLS, 9, 10]], dtype="int32"))
    assert out["token_ids"].row_lengths().numpy().tolist() == [0, 3]
    # A row of length 0 at run time (dynamic length in tf.data).
    rows = [[CLS, 9, 10, SEP], [], [CLS, 11, SEP]]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(rows), output_signature=tf.TensorSpec([None], tf.int32)
    )
    lengths = [int(e["token_ids"].shape[0]) for e in masker.map_over(ds, seed=3)]
    assert lengths == [4, 0, 3]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(padding_token_id=VOCAB), "padding_token_id"),
        (dict(padding_token_id=-1), "padding_token_id"),
        (dict(mask_token_id=PAD), "mask_token_id"),
        (dict(mask_token_id=-2), "mask_token_id"),
    ],
)
def test_id_arguments_are_checked(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_masker(**kwargs)
