"""Sentence splitting and the sentence-pair pretraining pipeline."""

import keras_hub
import numpy as np
import pytest

from kobjectives import data
from kobjectives.layers import MaskedLMMasker
from kobjectives.layers import SentencePairGenerator

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    f"w{i}" for i in range(40)
] + ["."]


def test_split_document_sentences():
    assert data.split_document_sentences("Open a file. Read it!\n\nThen close it") == [
        "Open a file.", "Read it!", "Then close it"]
    # wrapped lines join; abbreviations before lower case or digits do not split
    assert data.split_document_sentences("Return x, e.g. 3 or\n  more. (See y.) \"Done.\" Ok") == [
        "Return x, e.g. 3 or more.", "(See y.)", "\"Done.\"", "Ok"]
    assert data.split_document_sentences("  \n\n ") == []
    with pytest.raises(TypeError, match="document"):
        data.split_document_sentences(["not", "a", "str"])


def test_sentence_documents_keeps_documents_with_enough_sentences():
    documents = ["One. Two. Three.", "Alone here", "First. Second."]
    assert data.sentence_documents(documents) == [
        ["One.", "Two.", "Three."], ["Alone here"], ["First.", "Second."]]
    assert data.sentence_documents(documents, min_sentences=3) == [["One.", "Two.", "Three."]]
    with pytest.raises(ValueError, match="min_sentences"):
        data.sentence_documents(documents, min_sentences=0)
    with pytest.raises(ValueError, match="None of the 1 documents"):
        data.sentence_documents(["Alone"], min_sentences=2)


def test_sentence_pair_dataset_yields_static_masked_pairs():
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)
    rng = np.random.default_rng(0)
    documents = [
        [" ".join(f"w{k}" for k in rng.integers(0, 40, rng.integers(2, 7))) + " ."
         for _ in range(rng.integers(2, 5))]
        for _ in range(20)
    ]
    generator = SentencePairGenerator(
        task="nsp", sequence_length=24, start_value=2, end_value=3, pad_value=0, seed=0)
    masker = MaskedLMMasker(
        vocabulary_size=len(VOCABULARY), mask_selection_rate=0.15, mask_token_id=4,
        mask_selection_length=4, unselectable_token_ids=(0, 1, 2, 3, 4), seed=0)
    dataset = data.sentence_pair_dataset(documents, tokenizer, generator, masker, 4, seed=3)
    x_spec, y_spec = dataset.element_spec
    assert sorted(x_spec) == ["mask_positions", "padding_mask", "segment_ids", "token_ids"]
    assert sorted(y_spec) == ["mask_ids", "mask_weights", "pair_labels"]
    assert x_spec["token_ids"].shape == (4, 24) and y_spec["pair_labels"].shape == (4,)
    batches = list(dataset)
    assert len(batches) == 5  # 20 documents, drop_remainder
    x, y = batches[0]
    # the masked tokens are text tokens of the packed pair, never [CLS]/[SEP]
    weights = y["mask_weights"].numpy() > 0
    assert (y["mask_ids"].numpy()[weights] >= 5).all()
    assert ((x["token_ids"].numpy() == 2).sum(1) == 1).all()
    with pytest.raises(ValueError, match="batch_size"):
        data.sentence_pair_dataset(documents, tokenizer, generator, masker, 1)
    with pytest.raises(ValueError, match="empty"):
        data.sentence_pair_dataset([], tokenizer, generator, masker, 4)
