import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data import contrastive_dataset
from kobjectives.data import read_nli_triples
from kobjectives.data import read_sick
from kobjectives.data import read_stsb
from kobjectives.data import split_nli_triples
from kobjectives.data import split_sentences


def test_read_stsb_quoting_off_and_extra_columns(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text(
        'main-news\tfile\t2012\t0001\t4.250\tHe said "yes.\tShe said "no".\n'
        "main-news\tfile\t2012\t0002\t0.000\tA b\tC d\tlicense\tnote\n"
    )
    pairs = read_stsb(path)
    assert pairs.sentences1 == ['He said "yes.', "A b"]
    assert pairs.sentences2 == ['She said "no".', "C d"]
    np.testing.assert_array_equal(pairs.scores, [4.25, 0.0])
    bad = tmp_path / "bad.csv"
    bad.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match="7 tab-separated"):
        read_stsb(bad)


def test_reserved_splits_are_refused(tmp_path):
    path = tmp_path / "sts-test.csv"
    path.write_text("g\tf\t2012\t1\t1.0\ta\tb\n")
    with pytest.raises(ValueError, match="reserved"):
        read_stsb(path)
    assert len(read_stsb(path, allow_reserved=True)) == 1
    sick = tmp_path / "SICK.txt"
    sick.write_text(
        "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\r\n"
        "1\ta b\tc d\tNEUTRAL\t4.5\tTRAIN\r\n2\te\tf\tENTAILMENT\t3.0\tTRIAL\r\n"
        "3\tg\th\tNEUTRAL\t1.0\tTEST\r\n"
    )
    pairs = read_sick(sick)
    assert pairs.sentences1 == ["a b", "e"] and pairs.labels == ["NEUTRAL", "ENTAILMENT"]
    with pytest.raises(ValueError, match="reserved"):
        read_sick(sick, splits=("TEST",))
    assert read_sick(sick, splits="TEST", allow_reserved=True).sentences2 == ["h"]


def test_shared_files(shared_data):
    dev = read_stsb(shared_data / "stsb" / "sts-dev.csv")
    assert len(dev) == 1500 and dev.scores.min() >= 0 and dev.scores.max() <= 5
    assert dev.sentences1[0] == "A man with a hard hat is dancing."
    sick = read_sick(shared_data / "sick" / "SICK.txt")
    assert len(sick) > 4000 and 1 <= sick.scores.min()
    triples = read_nli_triples(shared_data / "nli" / "nli_triples_dev.tsv")
    assert len(triples["anchor"]) == len(triples["positive"]) == len(triples["negative"]) > 5000


def test_split_sentences():
    docs = ["First sentence here. Second one follows!\nwrapped line\n\nA new paragraph?  Yes it is.", "tiny"]
    assert split_sentences(docs, min_characters=5) == [
        "First sentence here.", "Second one follows! wrapped line", "A new paragraph?", "Yes it is."]
    assert split_sentences(docs * 2, min_characters=5) == split_sentences(docs, min_characters=5)


class _Tokenizer:
    start_token_id, end_token_id, pad_token_id = 2, 3, 0

    def __call__(self, texts):
        return tf.strings.to_number(tf.strings.split(texts), tf.int32)


def test_contrastive_dataset_forms():
    texts = [" ".join(str(10 + i + j) for j in range(i % 5 + 1)) for i in range(20)]
    ds = contrastive_dataset(texts, _Tokenizer(), 6, 4, shuffle=False)
    x = next(iter(ds))
    assert set(x) == {"anchor"} and x["anchor"]["token_ids"].shape == (4, 6)
    assert x["anchor"]["token_ids"][0].numpy().tolist() == [2, 10, 3, 0, 0, 0]
    supervised = contrastive_dataset({"anchor": texts, "positive": texts, "negative": texts[::-1]},
                                     _Tokenizer(), 6, 4, seed=1)
    x = next(iter(supervised))
    assert set(x) == {"anchor", "positive", "negative"}
    np.testing.assert_array_equal(x["anchor"]["token_ids"], x["positive"]["token_ids"])  # rows stay aligned
    with pytest.raises(ValueError, match=">= 2"):
        contrastive_dataset(texts, _Tokenizer(), 6, 1)
    with pytest.raises(ValueError, match="equal lengths"):
        contrastive_dataset({"anchor": texts, "positive": texts[:3]}, _Tokenizer(), 6, 2)


def test_split_sentences_keeps_a_seeded_subset_in_order():
    docs = [f"Sentence number {i} is here." for i in range(50)]
    every = split_sentences(docs, min_characters=5)
    subset = split_sentences(docs, min_characters=5, max_sentences=10, seed=3)
    assert len(subset) == 10 and subset == [s for s in every if s in subset]
    assert subset == split_sentences(docs, min_characters=5, max_sentences=10, seed=3)
    assert subset != split_sentences(docs, min_characters=5, max_sentences=10, seed=4)
    assert split_sentences(docs, min_characters=5, max_sentences=0) == every


def test_split_nli_triples_keeps_triples_whole():
    triples = {"anchor": [f"a{i}" for i in range(40)], "positive": [f"p{i}" for i in range(40)],
               "negative": [f"n{i}" for i in range(40)]}
    train, validation = split_nli_triples(triples, 0.25, seed=0)
    assert len(train["anchor"]) == 30 and len(validation["anchor"]) == 10
    for side in (train, validation):
        assert [(a[1:], p[1:], n[1:]) for a, p, n in zip(*side.values())] == [
            (a[1:],) * 3 for a in side["anchor"]]
        # Each side keeps the file's order.
        assert side["anchor"] == sorted(side["anchor"], key=lambda a: int(a[1:]))
    assert sorted(train["anchor"] + validation["anchor"]) == sorted(triples["anchor"])
    # The split depends on a triple's content, not its position.
    reversed_triples = {k: v[::-1] for k, v in triples.items()}
    assert set(split_nli_triples(reversed_triples, 0.25, seed=0)[1]["anchor"]) == set(
        validation["anchor"])
    assert split_nli_triples(triples, 0.25, seed=1)[1] != validation
    with pytest.raises(ValueError, match="missing"):
        split_nli_triples({"anchor": ["a"], "positive": ["b"]})
    with pytest.raises(ValueError, match="equal lengths"):
        split_nli_triples({**triples, "negative": triples["negative"][:5]})
