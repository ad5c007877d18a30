"""`SentencePairGenerator`: packing, provenance, balance, tf.data, config, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kobjectives
from kobjectives.layers import SentencePairGenerator

CLS, SEP, PAD = 2, 3, 0
STRIDE = 10_000  # token id = document * STRIDE + position + 10


def documents_with_places(num_documents, seed=0, min_sentences=2):
    rng = np.random.default_rng(seed)
    counts = rng.integers(min_sentences, 6, num_documents)
    lengths = [rng.integers(1, 10, n) for n in counts]
    ids = [d * STRIDE + 10 + np.arange(l.sum()) for d, l in enumerate(lengths)]
    return tf.RaggedTensor.from_nested_row_lengths(
        np.concatenate(ids).astype("int32"), [counts, np.concatenate(lengths)]
    )


def generator(task="nsp", length=24, **kwargs):
    return SentencePairGenerator(
        task=task, sequence_length=length, start_value=CLS, end_value=SEP, pad_value=PAD,
        **kwargs,
    )


def unpack(token_ids, segment_ids, padding_mask):
    """Checks the `[CLS] A [SEP] B [SEP] [PAD]...` layout; returns (A, B)."""
    n = int(padding_mask.sum())
    assert padding_mask[:n].all() and not padding_mask[n:].any()
    assert (token_ids[n:] == PAD).all() and (segment_ids[n:] == 0).all()
    assert token_ids[0] == CLS and token_ids[n - 1] == SEP
    separators = np.flatnonzero(token_ids[:n] == SEP)
    assert len(separators) == 2
    first = separators[0]
    np.testing.assert_array_equal(segment_ids[: first + 1], 0)
    np.testing.assert_array_equal(segment_ids[first + 1 : n], 1)
    return token_ids[1:first], token_ids[first + 1 : n - 1]


def place(segment):
    documents = (segment - 10) // STRIDE
    positions = (segment - 10) % STRIDE
    assert (documents == documents[0]).all()
    np.testing.assert_array_equal(np.diff(positions), 1)
    return documents[0], positions[0], positions[-1] + 1


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_ten_thousand_pairs_are_balanced_and_come_from_where_the_label_says(task):
    outputs = generator(task)(documents_with_places(10_000), seed=tf.constant([1, 2]))
    labels = outputs["pair_labels"].numpy()
    assert abs(labels.mean() - 0.5) < 0.01
    token_ids = outputs["token_ids"].numpy()
    segment_ids = outputs["segment_ids"].numpy()
    padding_mask = outputs["padding_mask"].numpy()
    for i in range(len(labels)):
        a, b = unpack(token_ids[i], segment_ids[i], padding_mask[i])
        doc_a, a0, a1 = place(a)
        doc_b, b0, b1 = place(b)
        if task == "nsp":
            assert doc_a == i
            if labels[i] == 0:
                assert doc_b == i and b0 >= a1  # B follows A in the document
            else:
                assert doc_b != i  # B comes from another document
        else:
            assert doc_a == doc_b == i
            if labels[i] == 0:
                assert b0 >= a1  # in order
            else:
                assert a0 >= b1  # swapped: the in-order pair reversed


def test_outputs_are_static_and_typed():
    outputs = generator(length=16)(documents_with_places(8))
    assert outputs["token_ids"].shape == (8, 16) and outputs["token_ids"].dtype == tf.int32
    assert outputs["segment_ids"].shape == (8, 16) and outputs["segment_ids"].dtype == tf.int32
    assert outputs["padding_mask"].shape == (8, 16) and outputs["padding_mask"].dtype == tf.bool
    assert outputs["pair_labels"].shape == (8,) and outputs["pair_labels"].dtype == tf.int32
    # the budget: at most sequence_length - 3 tokens of text
    assert (outputs["padding_mask"].numpy().sum(1) <= 16).all()


def test_tf_data_batched_and_unbatched_reproducible_and_new_each_epoch():
    documents = documents_with_places(32, seed=3)
    layer = generator("sop", length=20, seed=5)

    def pipeline(batch):
        ds = tf.data.Dataset.from_tensor_slices(documents)
        ds = ds.ragged_batch(8, drop_remainder=True) if batch else ds
        return layer.map_over(ds, seed=11, num_parallel_calls=2)

    batched = pipeline(True)
    spec = batched.element_spec
    assert spec["token_ids"].shape == (8, 20) and spec["pair_labels"].shape == (8,)
    epoch_1 = [x["token_ids"].numpy() for x in batched]
    epoch_2 = [x["token_ids"].numpy() for x in batched]
    again = [x["token_ids"].numpy() for x in pipeline(True)]
    np.testing.assert_array_equal(np.stack(epoch_1), np.stack(again))  # reproducible
    assert not np.array_equal(np.stack(epoch_1), np.stack(epoch_2))  # new pairs each epoch

    unbatched = pipeline(False)
    assert unbatched.element_spec["token_ids"].shape == (20,)
    assert unbatched.element_spec["pair_labels"].shape == ()
    first = next(iter(unbatched))
    unpack(*(first[k].numpy() for k in ("token_ids", "segment_ids", "padding_mask")))


def test_nested_lists_and_equal_length_sentences_are_accepted():
    layer = generator("sop", length=10)
    outputs = layer([[[5, 6], [7, 8]], [[9, 10], [11, 12]]], seed=[0, 0])
    assert outputs["token_ids"].shape == (2, 10)
    one = layer(tf.ragged.constant([[5, 6, 7], [8]]), seed=[0, 0])  # unbatched
    assert one["token_ids"].shape == (10,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="mlm"), "task"),
        (dict(short_seq_prob=1.5), "short_seq_prob"),
        (dict(short_seq_prob=-0.1), "short_seq_prob"),
        (dict(negative_rate=2.0), "negative_rate"),
        (dict(length=4), "sequence_length"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_bad_arguments_fail_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator(**kwargs)


def test_bad_inputs_fail_with_a_message():
    with pytest.raises(ValueError, match="RaggedTensor"):
        generator()(tf.constant([[1, 2, 3]]))
    with pytest.raises(ValueError, match="integer token ids"):
        generator()(tf.ragged.constant([[["a"], ["b"]], [["c"], ["d"]]]))
    with pytest.raises(ValueError, match="batch of documents"):
        generator("nsp")(tf.ragged.constant([[5, 6], [7]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than 2 sentences"):
        generator("sop")(tf.ragged.constant([[[5, 6]], [[7], [8]]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty document"):
        generator("nsp")(tf.ragged.constant([[[5, 6]], []], ragged_rank=2))


@pytest.mark.parametrize(
    "ids, message",
    [
        (dict(start_value=SEP), "`start_value` and `end_value` are both 3"),
        (dict(pad_value=CLS), "`start_value` and `pad_value` are both 2"),
        (dict(end_value=PAD), "`end_value` and `pad_value` are both 0"),
        (dict(end_value=-1), "end_value"),
        (dict(start_value=np.int64(2)), None),  # NumPy ints are ids
        (dict(vocabulary_size=3), "end_value"),  # [SEP] = 3 is outside
        (dict(pad_value=7, vocabulary_size=5), "pad_value"),
    ],
)
def test_id_arguments_are_checked(ids, message):
    config = dict(task="nsp", sequence_length=24, start_value=CLS, end_value=SEP, pad_value=PAD)
    config.update(ids)
    if message is None:
        SentencePairGenerator(**config)
        return
    with pytest.raises(ValueError, match=message):
        SentencePairGenerator(**config)


@pytest.mark.parametrize("bad_id, vocabulary_size", [(-5, None), (-5, 100), (100, 100)])
def test_input_ids_outside_the_vocabulary_fail_naming_the_id(bad_id, vocabulary_size):
    layer = generator("sop", vocabulary_size=vocabulary_size)
    documents = tf.ragged.constant([[[15, 16], [17, bad_id]], [[20, 21], [22]]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"token id\W+{bad_id}\W"):
        layer(documents, seed=tf.constant([1, 2]))


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_an_empty_batch_gives_an_empty_batch(task):
    empty = tf.ragged.constant([[[5]]], ragged_rank=2)[:0]
    out = generator(task)(empty, seed=tf.constant([1, 2]))
    assert out["token_ids"].shape == out["padding_mask"].shape == (0, 24)
    assert out["pair_labels"].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        generator("nsp")(tf.ragged.constant([[[5, 6], [7]]]), seed=tf.constant([1, 2]))
