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


def test_permutation_lm_batches_through_the_same_pipeline():
    from kobjectives.data.pipelines import PERMUTATION_LM_X_KEYS
    from kobjectives.layers import PermutationLMMasker

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    masker = PermutationLMMasker(num_predict=5, unselectable_token_ids=(0, 1, 2, 3, 4), seed=1)
    documents = [" ".join(WORDS[i:i + 12]) for i in range(20)]
    dataset = masked_lm_dataset(documents, tokenizer, masker, sequence_length=16, batch_size=4,
                                x_keys=PERMUTATION_LM_X_KEYS,
                                target_keys=("target_ids", "target_weights"))
    x, y, w = next(iter(dataset))
    assert sorted(x) == sorted(PERMUTATION_LM_X_KEYS)  # no target_positions in x
    assert x["perm_mask"].shape == (4, 16, 16) and x["target_mapping"].shape == (4, 5, 16)
    assert y.shape == (4, 5) and w.shape == (4, 5)
    # Every weighted target is the token at its mapped position.
    positions = np.argmax(x["target_mapping"].numpy(), axis=-1)
    tokens = np.take_along_axis(x["token_ids"].numpy(), positions, axis=1)
    real = w.numpy() > 0
    assert real.any() and (tokens[real] == y.numpy()[real]).all()


def test_electra_batches_are_x_alone_with_the_same_masks():
    from kobjectives.data.pipelines import ELECTRA_X_KEYS

    documents = [" ".join(WORDS[i:i + 10]) for i in range(30)]
    (x,) = [batch for batch in _dataset(documents, seed=3, x_keys=ELECTRA_X_KEYS,
                                        target_keys=None).take(1)]
    assert sorted(x) == sorted(ELECTRA_X_KEYS)
    # The targets in x are the masked-LM layout's (y, sample_weight), same draws.
    x_lm, y, w = next(iter(_dataset(documents, seed=3)))
    np.testing.assert_array_equal(x["mask_ids"], y)
    np.testing.assert_array_equal(x["mask_weights"], w)
    np.testing.assert_array_equal(x["mask_positions"], x_lm["mask_positions"])


def test_causal_lm_documents_alone_put_one_document_per_window():
    from kobjectives.data.pipelines import causal_lm_dataset
    from kobjectives.layers import SequencePacker

    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])
    packer = SequencePacker(sequence_length=4, end_token_id=3, start_token_id=2, pad_token_id=0)
    x = next(iter(causal_lm_dataset(["a b c a b", "c", "a a"], tokenizer, packer, batch_size=8,
                                    shuffle=False, drop_remainder=False, documents_per_group=1)))
    # [CLS] a b c a b [SEP] -> two windows; [CLS] c [SEP] and [CLS] a a [SEP] -> one each.
    np.testing.assert_array_equal(x["token_ids"].numpy(), [
        [2, 5, 6, 7], [5, 6, 3, 0], [2, 7, 3, 0], [2, 5, 5, 3]])
    np.testing.assert_array_equal(x["padding_mask"].numpy(), [
        [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert not x["segment_ids"].numpy().any()  # never two documents in a window
    # Packed together (the default), the same documents share windows.
    packed = next(iter(causal_lm_dataset(["a b c a b", "c", "a a"], tokenizer, packer,
                                         batch_size=8, shuffle=False, drop_remainder=False)))
    assert packed["segment_ids"].numpy().any()
    with pytest.raises(ValueError, match="documents_per_group"):
        causal_lm_dataset(["a"], tokenizer, packer, batch_size=1, documents_per_group=0)


def test_augmented_views_are_fixed_per_batch_and_seed():
    from kobjectives.data.pipelines import augmented_views
    from kobjectives.data.pipelines import tokenized_texts
    from kobjectives.layers import TextAugmenter

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    augmenter = TextAugmenter(len(VOCAB), deletion_rate=0.3, unselectable_token_ids=(0, 1, 2, 3, 4))
    texts = [" ".join(WORDS[i:i + 8]) for i in range(10)]
    views = augmented_views(texts, tokenizer, 12, augmenter, batch_size=4)
    assert [int(a["token_ids"].shape[0]) for a, _ in views] == [4, 4, 2]
    again = augmented_views(texts, tokenizer, 12, augmenter, batch_size=4)
    packed = list(tokenized_texts(texts, tokenizer, 12, 4))
    for index, ((anchor, positive), (anchor2, _), batch) in enumerate(zip(views, again, packed)):
        np.testing.assert_array_equal(anchor["token_ids"], anchor2["token_ids"])
        # Batch i is the augmenter's output for the seed [i, 7].
        expected = augmenter(batch, seed=tf.constant([index, 7]))
        np.testing.assert_array_equal(positive["token_ids"], expected["positive"]["token_ids"])
        # Deletion keeps [CLS] first and only drops words.
        assert (anchor["token_ids"].numpy()[:, 0] == 2).all()
        assert (anchor["padding_mask"].numpy().sum(1) <= batch["padding_mask"].numpy().sum(1)).all()
    other = augmented_views(texts, tokenizer, 12, augmenter, batch_size=4, seed=8)
    assert not np.array_equal(other[0][1]["token_ids"], views[0][1]["token_ids"])
