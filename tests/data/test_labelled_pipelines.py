import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.layers import WordLabelAligner

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film",
              "eu", "rejects", "germ", "##an", "call"]


def preprocessor(length=5):
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=length)


def test_classification_dataset_packs_texts_with_static_batches():
    texts = ["good film", "bad", "bad bad bad bad", "film"]
    ds = pipelines.classification_dataset(texts, [1, 0, 0, 1], preprocessor(), batch_size=2)
    x_spec, y_spec = ds.element_spec
    assert x_spec["token_ids"].shape == (2, 5) and y_spec.shape == (2,)
    batches = list(ds)
    assert len(batches) == 2
    (x0, y0), (x1, y1) = batches
    # [CLS] good film [SEP] [PAD]; [CLS] bad [SEP] [PAD] [PAD]
    assert x0["token_ids"].numpy().tolist() == [[2, 5, 7, 3, 0], [2, 6, 3, 0, 0]]
    assert x0["padding_mask"].numpy().astype(int).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    # Truncated to 5 tokens, the end token kept.
    assert x1["token_ids"].numpy().tolist() == [[2, 6, 6, 6, 3], [2, 7, 3, 0, 0]]
    assert y0.numpy().tolist() == [1, 0] and y1.numpy().tolist() == [0, 1]


def test_classification_dataset_shuffles_by_seed_and_keeps_pairs():
    texts = [f"{'good ' * (i % 3 + 1)}".strip() for i in range(12)]
    labels = [i % 3 for i in range(12)]
    ds = pipelines.classification_dataset(texts, labels, preprocessor(), 4, shuffle=True,
                                          seed=3)
    again = pipelines.classification_dataset(texts, labels, preprocessor(), 4, shuffle=True,
                                             seed=3)
    first = [(x["token_ids"].numpy(), y.numpy()) for x, y in ds]
    second = [y.numpy() for _, y in again]
    # The same seed gives the same order; the order is not the input order.
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]), np.concatenate(second))
    assert np.concatenate(second).tolist() != labels
    for ids, y in first:  # each text still carries its own label: label + 1 "good" tokens
        np.testing.assert_array_equal((ids == 5).sum(axis=1), y + 1)
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == sorted(labels)


def test_classification_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match="one label per text"):
        pipelines.classification_dataset(["a", "b"], [0], preprocessor(), 1)
    with pytest.raises(ValueError, match=r"labels\[1\] = -1"):
        pipelines.classification_dataset(["a", "b"], [0, -1], preprocessor(), 1)
    with pytest.raises(ValueError, match="no full batch"):
        pipelines.classification_dataset(["a", "b"], [0, 1], preprocessor(), 3)
    # Without drop_remainder the last batch may be smaller.
    ds = pipelines.classification_dataset(["a", "b"], [0, 1], preprocessor(), 3,
                                          drop_remainder=False)
    assert [y.numpy().tolist() for _, y in ds] == [[0, 1]]


def test_encode_tags_maps_names_and_refuses_unknown_tags():
    tags = ["O", "B-ORG", "I-ORG"]
    assert pipelines.encode_tags([(["EU", "rejects"], ["B-ORG", "O"])], tags) == [
        (["EU", "rejects"], [1, 0])]
    with pytest.raises(ValueError, match="B-PER"):
        pipelines.encode_tags([(["Peter"], ["B-PER"])], tags)


def test_tagged_sentence_dataset_aligns_first_pieces():
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY, lowercase=True)
    aligner = WordLabelAligner(tokenizer, 7, start_token_id=2, end_token_id=3, num_tags=3)
    sentences = [(["EU", "rejects", "German", "call"], [1, 0, 2, 0]), (["call"], [0]),
                 (["German"], [2])]
    ds = pipelines.tagged_sentence_dataset(sentences, aligner, batch_size=2)
    for spec in tf.nest.flatten(ds.element_spec):
        assert spec.shape == (2, 7)
    batches = list(ds)
    assert len(batches) == 1  # the third sentence makes no full batch
    x, y, weights = batches[0]
    assert x["token_ids"].numpy().tolist() == [[2, 8, 9, 10, 11, 12, 3], [2, 12, 3, 0, 0, 0, 0]]
    assert y.numpy().tolist() == [[0, 1, 0, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]
    assert weights.numpy().tolist() == [[0, 1, 1, 1, 0, 1, 0], [0, 1, 0, 0, 0, 0, 0]]
    features = list(pipelines.tagged_sentence_dataset(
        sentences, aligner, 2, drop_remainder=False, features=True))
    assert [f["num_words"].numpy().tolist() for f in features] == [[4, 1], [1]]
    assert features[0]["word_ids"].numpy()[0].tolist() == [-1, 0, 1, 2, 2, 3, -1]
    with pytest.raises(ValueError, match=r"sentences\[0\] has 2 words and 1 tags"):
        pipelines.tagged_sentence_dataset([(["a", "b"], [0])], aligner, 1)


def test_majority_class_and_dictionary_tagger():
    assert pipelines.majority_class([1, 1, 0, 2, 2], 3) == (1, 0.4)  # tie: the lower id
    assert pipelines.majority_class([0, 2], 3) == (0, 0.5)
    tagger = pipelines.dictionary_tagger([
        (["Paris", "is", "big"], ["B-LOC", "O", "O"]),
        (["Paris", "Hilton"], ["B-PER", "I-PER"]),
        (["Paris"], ["B-PER"]),
    ])
    # "Paris" is B-PER twice and B-LOC once; unknown words get O.
    assert tagger(["Paris", "Hilton", "is", "new"]) == ["B-PER", "I-PER", "O", "O"]
    ids = pipelines.dictionary_tagger([(["a"], [3])], outside=0)
    assert ids(["a", "b"]) == [3, 0]


def test_shared_dataset_files(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("label\tsentence\n1\tgood\n")
    with pytest.raises(FileNotFoundError, match="dev.tsv is missing"):
        pipelines.shared_dataset_files("sst2", pipelines.CLASSIFICATION_DATASETS, tmp_path)
    (tmp_path / "sst2" / "dev.tsv").write_text("label\tsentence\n1\tgood\n")
    train, heldout = pipelines.shared_dataset_files(
        "sst2", pipelines.CLASSIFICATION_DATASETS, tmp_path)
    assert (train.name, heldout.name) == ("train.tsv", "dev.tsv")
    with pytest.raises(FileNotFoundError, match="data.shared_dir"):
        pipelines.shared_dataset_files("sst2", pipelines.CLASSIFICATION_DATASETS,
                                       tmp_path / "absent")
    with pytest.raises(ValueError, match="Unknown dataset 'imdb'"):
        pipelines.shared_dataset_files("imdb", pipelines.CLASSIFICATION_DATASETS, tmp_path)
    # No reserved split is ever named.
    named = [p for pair in (*pipelines.CLASSIFICATION_DATASETS.values(),
                            *pipelines.TAGGING_DATASETS.values()) for p in pair if p]
    assert not any(p.endswith(("test.tsv", "test.txt", "cluener2020/dev.txt")) for p in named)
