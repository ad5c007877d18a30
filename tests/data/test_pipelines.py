import numpy as np
import pytest
import keras_hub
import tensorflow as tf

from kobjectives.data.pipelines import chunk_token_ids
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.layers import MaskedLMMasker

WORDS = [f"w{i}" for i in range(40)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def test_chunking_keeps_every_token_in_order():
    ids = tf.ragged.constant([[1, 2, 3, 4, 5, 6, 7], [], [8], [9, 10, 11]])
    chunks = chunk_token_ids(ids, 3)
    assert chunks.to_list() == [[1, 2, 3], [4, 5, 6], [7], [8], [9, 10, 11]]
    assert max(len(c) for c in chunks.to_list()) <= 3


def _dataset(documents, **kwargs):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    masker = MaskedLMMasker(
        vocabulary_size=len(VOCAB), mask_selection_rate=0.3, mask_token_id=4,
        mask_selection_length=6, unselectable_token_ids=(0, 1, 2, 3, 4), seed=1,
    )
    return masked_lm_dataset(documents, tokenizer, masker, sequence_length=16,
                             batch_size=4, **kwargs)


def test_batches_are_static_packed_and_masked():
    rng = np.random.default_rng(0)
    documents = [" ".join(rng.choice(WORDS, rng.integers(1, 40))) for _ in range(50)]
    dataset = _dataset(documents)
    x_spec, y_spec, w_spec = dataset.element_spec
    assert x_spec["token_ids"].shape == (4, 16)
    assert x_spec["mask_positions"].shape == (4, 6)
    assert y_spec.shape == (4, 6) and w_spec.shape == (4, 6)
    n_tokens = 0
    for x, y, w in dataset:
        ids = x["token_ids"].numpy()
        assert (ids[:, 0] == 2).all()  # [CLS] first
        lengths = x["padding_mask"].numpy().sum(1)
        assert (ids[np.arange(4), lengths - 1] == 3).all()  # [SEP] last
        n_tokens += int((lengths - 2).sum())
        # Labels are real word ids, never special tokens, where weighted.
        assert (y.numpy()[w.numpy() > 0] >= 5).all()
    # Long documents are split into windows, not truncated: no token is lost
    # except the < batch_size windows dropped by drop_remainder.
    total = sum(len(d.split()) for d in documents)
    assert total - n_tokens < 4 * 14


def test_same_seed_same_batches_and_new_masks_each_epoch():
    documents = [" ".join(WORDS[i:i + 10]) for i in range(30)]
    first = [x["token_ids"].numpy() for x, _, _ in _dataset(documents, seed=3)]
    again = [x["token_ids"].numpy() for x, _, _ in _dataset(documents, seed=3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    dataset = _dataset(documents, seed=3, shuffle=False)
    epoch1 = np.stack([x["mask_positions"].numpy() for x, _, _ in dataset])
    epoch2 = np.stack([x["mask_positions"].numpy() for x, _, _ in dataset])
    assert (epoch1 != epoch2).any()
    cached = _dataset(documents, seed=3, shuffle=False, cache=True)
    pass1 = np.stack([x["mask_positions"].numpy() for x, _, _ in cached])
    pass2 = np.stack([x["mask_positions"].numpy() for x, _, _ in cached])
    np.testing.assert_array_equal(pass1, pass2)


def test_empty_documents_are_an_error():
    with pytest.raises(ValueError, match="documents"):
        _dataset([])
