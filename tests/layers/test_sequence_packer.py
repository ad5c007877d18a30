import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import SequencePacker

END, START, PAD = 2, 1, 0


def _documents(seed=0, count=40):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(5, 100, rng.integers(0, 30))) for _ in range(count)]


def test_docstring_example():
    packer = SequencePacker(sequence_length=4, end_token_id=END)
    out = packer(tf.ragged.constant([[5, 6, 7], [8], [9, 10]]))
    assert out["token_ids"].numpy().tolist() == [[5, 6, 7, 2], [8, 2, 9, 10], [2, 0, 0, 0]]
    assert out["segment_ids"].numpy().tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert out["padding_mask"].numpy().tolist() == [[True] * 4, [True] * 4, [True, False, False, False]]


@pytest.mark.parametrize("start", [None, START])
def test_packs_every_token_once_without_padding_waste(start):
    docs = _documents()
    length = 16
    out = SequencePacker(length, END, start_token_id=start, pad_token_id=PAD)(tf.ragged.constant(docs))
    ids, mask, seg = (out[k].numpy() for k in ("token_ids", "padding_mask", "segment_ids"))
    stream = [t for d in docs if d for t in ([start] if start else []) + d + [END]]
    assert ids.shape == (-(-len(stream) // length), length)
    # The real tokens, read in order, are exactly the documents with separators.
    assert ids[mask].tolist() == stream
    # Only the last window is padded.
    assert mask[:-1].all() and (ids[-1][~mask[-1]] == PAD).all()
    # Segment ids: a new document starts right after each end token.
    for w in range(ids.shape[0]):
        expected, current = [], 0
        for t in range(length):
            if not mask[w, t]:
                expected.append(0)
                continue
            expected.append(current)
            if ids[w, t] == END:
                current += 1
        assert seg[w].tolist() == expected


def test_drop_remainder_and_empty_documents():
    packer = SequencePacker(4, END, drop_remainder=True)
    out = packer(tf.ragged.constant([[5, 6, 7], [], [8], [9, 10]], dtype=tf.int32))
    assert out["token_ids"].numpy().tolist() == [[5, 6, 7, 2], [8, 2, 9, 10]]
    assert out["padding_mask"].numpy().all()
    empty = SequencePacker(4, END)(tf.ragged.constant([[], []], dtype=tf.int32))
    assert empty["token_ids"].shape == (0, 4)


def test_single_document_and_dense_inputs():
    packer = SequencePacker(3, END, start_token_id=START)
    one = packer(tf.constant([7, 8, 9]))
    assert one["token_ids"].numpy().tolist() == [[1, 7, 8], [9, 2, 0]]
    dense = packer(tf.constant([[7, 8], [9, 9]]))
    assert dense["token_ids"].numpy().tolist() == [[1, 7, 8], [2, 1, 9], [9, 2, 0]]
    assert dense["segment_ids"].numpy().tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_runs_in_tf_data_batched_and_unbatched_with_static_length():
    docs = _documents(seed=1)
    packer = SequencePacker(8, END, start_token_id=START)
    source = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(docs))
    batched = source.batch(10).map(packer).unbatch().batch(4, drop_remainder=True)
    assert batched.element_spec["token_ids"].shape == (4, 8)
    unbatched = source.map(packer)
    assert unbatched.element_spec["token_ids"].shape.as_list() == [None, 8]
    # Packing per element pads each document's tail; both keep all tokens.
    total = sum(len(d) + 2 for d in docs if d)
    assert sum(int(x["padding_mask"].numpy().sum()) for x in unbatched) == total
    eager = packer(tf.ragged.constant(docs))
    per_batch = sum(int(x["padding_mask"].numpy().sum()) for x in source.batch(10).map(packer))
    assert per_batch == total == int(eager["padding_mask"].numpy().sum())


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match="sequence_length"):
        SequencePacker(1, END)
    with pytest.raises(ValueError, match="end_token_id"):
        SequencePacker(8, -1)
    with pytest.raises(ValueError, match="start_token_id"):
        SequencePacker(8, END, start_token_id=1.5)
    with pytest.raises(ValueError, match="int token ids"):
        SequencePacker(8, END)(tf.constant([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="Tokenize"):
        SequencePacker(8, END)(tf.ragged.constant([["a", "b"]]))


def test_causal_lm_dataset_pipeline():
    import keras_hub

    from kobjectives.data.pipelines import causal_lm_dataset

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    packer = SequencePacker(
        6, tokenizer.end_token_id, start_token_id=tokenizer.start_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    docs = ["a b c", "b", "", "c c a b"] * 5
    dataset = causal_lm_dataset(docs, tokenizer, packer, batch_size=2, shuffle=False)
    assert dataset.element_spec["token_ids"].shape == (2, 6)
    batches = list(dataset)
    real = np.concatenate([b["token_ids"].numpy()[b["padding_mask"].numpy()] for b in batches])
    # 15 non-empty documents: [CLS] + tokens + [SEP] each = 5 * (5 + 3 + 6) tokens
    # in 70 / 6 -> 11 full windows + 1 partial; 6 batches of 2 keep all of them.
    assert len(real) == 70 and len(batches) == 6
    with pytest.raises(ValueError, match="empty"):
        causal_lm_dataset(["", "  "], tokenizer, packer, batch_size=2)


def test_id_arguments_are_checked_against_the_vocabulary():
    assert SequencePacker(8, np.int64(END)).end_token_id == END  # NumPy ints are ids
    with pytest.raises(ValueError, match="end_token_id"):
        SequencePacker(8, 50, vocabulary_size=50)
    with pytest.raises(ValueError, match="start_token_id"):
        SequencePacker(8, END, start_token_id=-2, vocabulary_size=50)
    with pytest.raises(ValueError, match="pad_token_id"):
        SequencePacker(8, END, pad_token_id=60, vocabulary_size=50)
    with pytest.raises(ValueError, match="vocabulary_size"):
        SequencePacker(8, END, vocabulary_size=0)
    # GPT-2 style: one id for start, end and padding is allowed.
    SequencePacker(8, 7, start_token_id=7, pad_token_id=7, vocabulary_size=50)


@pytest.mark.parametrize("bad_id, vocabulary_size", [(-4, None), (-4, 50), (50, 50), (99, 50)])
def test_input_ids_outside_the_vocabulary_fail_naming_the_id(bad_id, vocabulary_size):
    packer = SequencePacker(4, END, vocabulary_size=vocabulary_size)
    docs = tf.ragged.constant([[5, 6, 7], [8, bad_id]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"token id\W+{bad_id}\W"):
        packer(docs)
    ds = tf.data.Dataset.from_tensors(docs).map(packer)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"token id\W+{bad_id}\W"):
        next(iter(ds))
    assert packer(tf.ragged.constant([[5, 6, 7], [8, 9]]))["token_ids"].shape == (2, 4)


def test_empty_inputs_give_no_windows():
    packer = SequencePacker(4, END)
    assert packer(tf.zeros([0, 3], tf.int32))["token_ids"].shape == (0, 4)
    assert packer(tf.zeros([2, 0], tf.int32))["token_ids"].shape == (0, 4)
