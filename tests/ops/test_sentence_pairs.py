"""Sentence-pair sampling (NSP / SOP): provenance, balance, truncation, errors."""

import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.ops import sentence_pairs

STRIDE = 10_000  # token id = document * STRIDE + position in the document


def make_documents(num_documents, rng, min_sentences=2, max_sentences=6, max_length=12):
    """Documents whose token ids name their place: `d * STRIDE + position`.

    Returns the ragged `[documents, (sentences), (tokens)]` ids and, per
    document, the token offsets where its sentences start and end.
    """
    counts = rng.integers(min_sentences, max_sentences + 1, num_documents)
    lengths, starts, ends, ids = [], [], [], []
    for d, n in enumerate(counts):
        low = 2 if n == 1 else 1
        sentence_lengths = rng.integers(low, max_length + 1, n)
        offsets = np.cumsum(sentence_lengths)
        lengths.append(sentence_lengths)
        starts.append(set((offsets - sentence_lengths).tolist()))
        ends.append(set(offsets.tolist()))
        ids.append(d * STRIDE + np.arange(offsets[-1]))
    ragged = tf.RaggedTensor.from_nested_row_lengths(
        np.concatenate(ids).astype("int32"), [counts, np.concatenate(lengths)]
    )
    return ragged, starts, ends


def locate(segment):
    """(document, first position, last position + 1) of a contiguous segment."""
    segment = np.asarray(segment)
    documents = segment // STRIDE
    positions = segment % STRIDE
    assert len(segment) >= 1
    assert (documents == documents[0]).all(), "a segment spans documents"
    np.testing.assert_array_equal(np.diff(positions), 1)  # contiguous, in order
    return int(documents[0]), int(positions[0]), int(positions[-1]) + 1


def google_truncate(length_a, length_b, max_num_tokens):
    """Lengths after BERT's `truncate_seq_pair` loop, one token at a time."""
    while length_a + length_b > max_num_tokens:
        if length_a > length_b:
            length_a -= 1
        else:
            length_b -= 1
    return length_a, length_b


def test_truncated_lengths_match_bert_truncate_seq_pair():
    grid = np.array([(a, b) for a in range(0, 40) for b in range(0, 40)])
    for m in (2, 3, 7, 20, 61):
        new_a, new_b = ops.truncated_pair_lengths(grid[:, 0], grid[:, 1], m)
        expected = np.array([google_truncate(a, b, m) for a, b in grid])
        np.testing.assert_array_equal(new_a.numpy(), expected[:, 0])
        np.testing.assert_array_equal(new_b.numpy(), expected[:, 1])


@pytest.fixture(scope="module")
def nsp_sample():
    rng = np.random.default_rng(0)
    documents, starts, ends = make_documents(10_000, rng)
    sample = ops.sample_sentence_pairs(
        documents, tf.constant([3, 4]), max_num_tokens=30, task="nsp", short_seq_prob=0.1
    )
    return sample, starts, ends


def test_nsp_labels_are_balanced_over_ten_thousand_pairs(nsp_sample):
    sample, _, _ = nsp_sample
    labels = sample.labels.numpy()
    assert labels.shape == (10_000,) and set(np.unique(labels)) == {0, 1}
    assert abs(labels.mean() - 0.5) < 0.01


def test_nsp_segments_come_from_where_the_label_says(nsp_sample):
    sample, starts, ends = nsp_sample
    full_pairs = 0
    for i, (a, b, label) in enumerate(zip(
        sample.segment_a.to_list(), sample.segment_b.to_list(), sample.labels.numpy()
    )):
        doc_a, a0, a1 = locate(a)
        doc_b, b0, b1 = locate(b)
        assert doc_a == i  # A always comes from the pair's own document
        assert len(a) + len(b) <= 30
        if label == 0:  # actual next: B follows A in the same document
            assert doc_b == i and b0 >= a1
            if len(a) + len(b) < 30:  # not truncated: exactly the next sentences
                full_pairs += 1
                assert b0 == a1 and a1 in starts[i]
                assert a0 in starts[i] and b1 in ends[i]
        else:  # random next: B comes from another document
            assert doc_b != i
    assert full_pairs > 1000


def test_sop_swapped_pairs_are_the_in_order_pair_reversed():
    rng = np.random.default_rng(1)
    documents, starts, ends = make_documents(10_000, rng)
    sample = ops.sample_sentence_pairs(
        documents, tf.constant([5, 6]), max_num_tokens=30, task="sop"
    )
    labels = sample.labels.numpy()
    assert abs(labels.mean() - 0.5) < 0.01
    for i, (a, b, label) in enumerate(zip(
        sample.segment_a.to_list(), sample.segment_b.to_list(), labels
    )):
        doc_a, a0, a1 = locate(a)
        doc_b, b0, b1 = locate(b)
        assert doc_a == doc_b == i  # SOP never leaves the document
        first, second = ((a0, a1), (b0, b1)) if label == 0 else ((b0, b1), (a0, a1))
        assert second[0] >= first[1]  # in order, or the in-order pair reversed
        if len(a) + len(b) < 30:  # untruncated: adjacent at a sentence boundary
            assert second[0] == first[1] and first[1] in starts[i]


def test_same_seed_same_pairs_and_new_seed_new_pairs():
    documents, _, _ = make_documents(64, np.random.default_rng(2))

    def draw(seed):
        s = ops.sample_sentence_pairs(documents, tf.constant(seed), 20, "nsp")
        return s.segment_a.to_list(), s.segment_b.to_list(), s.labels.numpy().tolist()

    assert draw([1, 1]) == draw([1, 1])
    assert draw([1, 1]) != draw([1, 2])


def test_short_seq_prob_draws_uniform_target_lengths():
    # One-token sentences: a chunk holds exactly its target length (when the
    # document does not run out), so the in-order pair lengths are the targets.
    documents = tf.RaggedTensor.from_nested_row_lengths(
        np.arange(3000 * 100, dtype="int32") % 1000 + 5,
        [np.full(3000, 100), np.ones(3000 * 100, "int64")],
    )

    def lengths(short_seq_prob):
        s = ops.sample_sentence_pairs(
            documents, tf.constant([0, 9]), 30, "sop", short_seq_prob=short_seq_prob,
            negative_rate=0.0,
        )
        total = (s.segment_a.row_lengths() + s.segment_b.row_lengths()).numpy()
        chunk_start = ((s.segment_a.to_tensor()[:, 0].numpy() - 5) % 1000) % 100
        return total[chunk_start <= 60]  # chunks that cannot run out

    never, always, sometimes = lengths(0.0), lengths(1.0), lengths(0.1)
    assert (never == 30).all()
    # short targets: uniform over [2, 30] (mean 16, each value ~1/29)
    assert always.min() == 2 and always.max() == 30
    assert abs(always.mean() - 16) < 0.5
    assert np.abs(np.bincount(always, minlength=31)[2:] / len(always) - 1 / 29).max() < 0.015
    # short_seq_prob=0.1: about 10% short targets (29/30 of which are < 30)
    assert abs((sometimes < 30).mean() - 0.1 * 28 / 29) < 0.02


def test_truncation_drops_tokens_from_both_ends_at_random():
    # One long sentence per side: every pair is truncated.
    documents = tf.ragged.constant(
        [[[d * STRIDE + k for k in range(40)], [d * STRIDE + 40 + k for k in range(40)]]
         for d in range(1000)], dtype=tf.int32, ragged_rank=2,
    )
    s = ops.sample_sentence_pairs(
        documents, tf.constant([7, 7]), 20, "sop", short_seq_prob=0.0, negative_rate=0.0
    )
    trimmed_front = []
    for a, b in zip(s.segment_a.to_list(), s.segment_b.to_list()):
        (_, a0, a1), (_, b0, b1) = locate(a), locate(b)
        assert a1 - a0 == 10 and b1 - b0 == 10
        trimmed_front += [a0 / 30.0, (b0 - 40) / 30.0]  # 30 trimmed per segment
    # BERT drops each token from the front or the back with probability 1/2.
    assert abs(np.mean(trimmed_front) - 0.5) < 0.01  # 5 standard errors over 2000 segments
    assert 0.0 < np.min(trimmed_front) and np.max(trimmed_front) < 1.0


def test_single_sentence_documents_are_cut_inside_for_nsp():
    documents = tf.ragged.constant(
        [[[d * STRIDE + k for k in range(6)]] for d in range(2000)], dtype=tf.int32,
        ragged_rank=2,
    )
    s = ops.sample_sentence_pairs(documents, tf.constant([1, 0]), 30, "nsp")
    for i, (a, b, label) in enumerate(zip(
        s.segment_a.to_list(), s.segment_b.to_list(), s.labels.numpy()
    )):
        doc_a, a0, a1 = locate(a)
        doc_b, b0, b1 = locate(b)
        if label == 0:
            assert doc_b == i and a0 == 0 and b0 == a1 and b1 == 6 and 1 <= a1 <= 5
        else:
            assert doc_b != i
    assert abs(s.labels.numpy().mean() - 0.5) < 0.03


@pytest.mark.parametrize(
    "documents, task, message",
    [
        ([[[1, 2]], [[3, 4], [5]]], "sop", "fewer than 2 sentences"),
        ([[], [[3, 4], [5]]], "nsp", "empty document"),
        ([[[1, 2], []], [[3, 4], [5]]], "nsp", "sentence has no tokens"),
        ([[[1]], [[3, 4], [5]]], "nsp", "fewer than 2 tokens"),
        ([[[1, 2], [3]]], "nsp", "at least 2 documents"),
    ],
)
def test_bad_documents_fail_with_a_message(documents, task, message):
    ragged = tf.ragged.constant(documents, dtype=tf.int32, ragged_rank=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.sample_sentence_pairs(ragged, tf.constant([0, 0]), 10, task)


def test_bad_arguments_fail_statically():
    documents = tf.ragged.constant([[[1, 2], [3]], [[4], [5]]], ragged_rank=2)
    with pytest.raises(ValueError, match="task"):
        ops.sample_sentence_pairs(documents, [0, 0], 10, "mlm")
    with pytest.raises(ValueError, match="max_num_tokens"):
        ops.sample_sentence_pairs(documents, [0, 0], 1, "nsp")
    with pytest.raises(ValueError, match="RaggedTensor"):
        ops.sample_sentence_pairs(tf.constant([[1, 2]]), [0, 0], 10, "nsp")


def test_pair_loss_matches_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 2)).astype("float32")
    labels = rng.integers(0, 2, 6).astype("int32")
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    pair = -log_softmax[np.arange(6), labels].mean()
    np.testing.assert_allclose(ops.pair_classification_loss(labels, logits), pair, rtol=1e-6)
    # The weighted sum with the masked-LM loss is the objective's (named
    # losses): tests/objectives/test_sentence_pair_pretrainer.py.
    # bfloat16 logits: the loss is still computed (and returned) in float32.
    assert ops.pair_classification_loss(labels, tf.cast(logits, tf.bfloat16)).dtype == tf.float32


def test_tasks_constant():
    assert sentence_pairs.TASKS == ("nsp", "sop")
