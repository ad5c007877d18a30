import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data.seq2seq import bart_noising_dataset
from kobjectives.data.seq2seq import pack_token_ids
from kobjectives.data.seq2seq import span_corruption_dataset
from kobjectives.data.seq2seq import token_windows
from kobjectives.layers import BartNoising
from kobjectives.layers import SpanCorruption
from kobjectives.ops.span_corruption import merge_span_corruption

WORDS = [f"w{i}" for i in range(40)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
SENTINELS = (len(VOCAB) + 1, len(VOCAB))  # <extra_id_0>, <extra_id_1> on top
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def _tokenizer():
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCAB, oov_token="[UNK]")


def _documents(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 30))) + " ." for _ in range(n)]


def test_pack_token_ids_concatenates_documents_into_full_windows():
    ids = tf.ragged.constant([[1, 2, 3], [4], [], [5, 6, 7, 8, 9]], dtype=tf.int32)
    assert pack_token_ids(ids, 4).to_list() == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert pack_token_ids(ids, 9).to_list() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]


def test_token_windows_keep_every_token_but_one_token_leftovers():
    documents = ["w1 w2 w3 w4 w5", "w6", "w7 w8"]
    tokenizer = _tokenizer()
    ids = [VOCAB.index(f"w{i}") for i in range(1, 9)]
    windows = token_windows(documents, tokenizer, 2, shuffle=False)
    split = [w.tolist() for w in windows.as_numpy_iterator()]
    assert split == [ids[0:2], ids[2:4], ids[6:8]]  # "w5" and "w6" alone are dropped
    windows = token_windows(documents, tokenizer, 3, shuffle=False, pack=True)
    packed = [w.tolist() for w in windows.as_numpy_iterator()]
    assert packed == [ids[0:3], ids[3:6], ids[6:8]]
    with pytest.raises(ValueError, match="no documents"):
        token_windows([], tokenizer, 3)


def test_span_corruption_batches_are_static_and_merge_back_into_the_text():
    corruption = SpanCorruption(
        vocabulary_size=len(VOCAB) + 2, sentinel_ids=SENTINELS, sequence_length=14,
        inputs_length=14, eos_token_id=SEP, padding_token_id=PAD, seed=1)
    documents = _documents()
    dataset = span_corruption_dataset(documents, _tokenizer(), corruption, 4, shuffle=False,
                                      pack_documents=True)
    x_spec, y_spec, w_spec = dataset.element_spec
    targets_length = corruption.output_lengths()[1]
    assert x_spec["encoder_token_ids"].shape == (4, 14)
    assert y_spec.shape == (4, targets_length) and w_spec.shape == (4, targets_length)
    stream = [i for ids in _tokenizer()(documents) for i in ids]  # eager: lists
    merged = []
    for x, y, w in dataset:
        np.testing.assert_array_equal(x["target_ids"], y)
        np.testing.assert_array_equal(tf.cast(x["target_padding_mask"], tf.float32), w)
        for encoder, target in zip(x["encoder_token_ids"].numpy(), y.numpy()):
            merged += merge_span_corruption(encoder, target, SENTINELS, SEP, PAD)
    # Packed windows of the unshuffled stream: merging undoes the corruption.
    assert merged == stream[:len(merged)] and len(merged) >= 14 * 4


def test_bart_targets_are_packed_windows_and_the_encoder_their_noised_copy():
    def batches(**rates):
        noising = BartNoising(mask_token_id=MASK, sequence_length=12,
                              sentence_end_token_ids=[VOCAB.index(".")],
                              unselectable_token_ids=(PAD, CLS, SEP, MASK), seed=0, **rates)
        return list(bart_noising_dataset(
            _documents(), _tokenizer(), noising, 4, start_token_id=CLS, end_token_id=SEP,
            shuffle=False, seed=3))

    clean = batches(text_infilling_rate=0.0, sentence_permutation_rate=0.0)
    for x, y, w in clean:
        assert y.shape == (4, 12) and x["encoder_token_ids"].shape == (4, 12)
        np.testing.assert_array_equal(y[:, 0], CLS)
        lengths = w.numpy().sum(axis=1).astype(int)
        np.testing.assert_array_equal(y.numpy()[np.arange(4), lengths - 1], SEP)
        # Without noise the encoder reads the target itself.
        np.testing.assert_array_equal(x["encoder_token_ids"], y)
    noised = batches()
    assert any((x["encoder_token_ids"].numpy() == MASK).any() for x, _, _ in noised)
    for (_, y_clean, _), (_, y_noised, _) in zip(clean, noised):
        np.testing.assert_array_equal(y_clean, y_noised)  # the noise leaves the targets
    again = batches()
    for (a, _, _), (b, _, _) in zip(noised, again):  # the same seed, the same noise
        np.testing.assert_array_equal(a["encoder_token_ids"], b["encoder_token_ids"])
