"""Tests for kobjectives.data tokenizer training, saving and building.

Tokenizers are trained once per module on a small, evenly spread subset of
the embedded corpus to keep the suite fast.
"""

import os

import keras_hub
import pytest

from kobjectives import data as kdata

RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SENTENCE = "Return a new string representation of the object."


@pytest.fixture(scope="module")
def documents():
    return kdata.embedded_corpus()


@pytest.fixture(scope="module")
def wordpiece_vocabulary(documents):
    return kdata.train_wordpiece(
        documents, vocabulary_size=1000, max_training_documents=400
    )


@pytest.fixture(scope="module")
def sentencepiece_proto(documents):
    return kdata.train_sentencepiece(
        documents, vocabulary_size=800, max_training_documents=400
    )


# ---------------------------------------------------------------------------
# WordPiece.
# ---------------------------------------------------------------------------


def test_wordpiece_reserved_tokens_come_first(wordpiece_vocabulary):
    assert wordpiece_vocabulary[: len(RESERVED)] == RESERVED
    assert wordpiece_vocabulary.index("[PAD]") == 0
    assert len(set(wordpiece_vocabulary)) == len(wordpiece_vocabulary)
    assert 200 < len(wordpiece_vocabulary) <= 1000
    # Learned real subwords, continuation pieces, and no whitespace tokens.
    assert "the" in wordpiece_vocabulary
    assert any(t.startswith("##") for t in wordpiece_vocabulary)
    assert not any(
        any(char.isspace() for char in token) for token in wordpiece_vocabulary
    )


def test_wordpiece_tokenizer_round_trip(wordpiece_vocabulary):
    tokenizer = kdata.build_tokenizer("wordpiece", wordpiece_vocabulary)
    assert isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer)
    ids = [int(i) for i in tokenizer.tokenize(SENTENCE)]
    assert ids and tokenizer.token_to_id("[UNK]") not in ids
    assert 0 not in ids
    text = tokenizer.detokenize(ids)
    text = text.numpy() if hasattr(text, "numpy") else text
    text = text.decode() if isinstance(text, bytes) else str(text)
    # Lowercased, punctuation split off: WordPiece pre-tokenization is lossy
    # only in case and spacing.
    assert text == "return a new string representation of the object ."


def test_wordpiece_tokenizer_pads_to_sequence_length(wordpiece_vocabulary):
    tokenizer = kdata.build_tokenizer(
        "wordpiece", wordpiece_vocabulary, sequence_length=32
    )
    ids = [int(i) for i in tokenizer.tokenize(SENTENCE)]
    assert len(ids) == 32
    assert ids[-1] == 0  # padded with [PAD]


def test_continuation_token_ids_are_exactly_the_suffix_pieces(
    wordpiece_vocabulary,
):
    ids = kdata.continuation_token_ids(wordpiece_vocabulary)
    expected = [
        i for i, token in enumerate(wordpiece_vocabulary) if token[:2] == "##"
    ]
    assert ids == expected and ids
    # The pieces the tokenizer emits after the first piece of a word are
    # continuation ids.
    tokenizer = kdata.build_tokenizer("wordpiece", wordpiece_vocabulary)
    pieces = [int(i) for i in tokenizer.tokenize("representations")]
    assert len(pieces) > 1
    assert pieces[0] not in ids and set(pieces[1:]) <= set(ids)
    # Accepts a tokenizer too.
    assert kdata.continuation_token_ids(tokenizer) == ids


def test_continuation_token_ids_small_vocabulary():
    vocabulary = ["[PAD]", "[UNK]", "play", "##ing", "#", "###", "##", "a##"]
    assert kdata.continuation_token_ids(vocabulary) == [3, 5]


def test_wordpiece_save_load_round_trip(wordpiece_vocabulary, tmp_path):
    path = kdata.save_vocabulary(wordpiece_vocabulary, tmp_path / "run")
    assert os.path.basename(path) == kdata.WORDPIECE_FILENAME
    assert kdata.load_vocabulary(path) == ("wordpiece", wordpiece_vocabulary)
    kind, vocabulary = kdata.load_vocabulary(tmp_path / "run")
    assert (kind, vocabulary) == ("wordpiece", wordpiece_vocabulary)
    assert kdata.continuation_token_ids(path) == kdata.continuation_token_ids(
        wordpiece_vocabulary
    )
    from_file = kdata.build_tokenizer("wordpiece", path)
    assert from_file.get_vocabulary() == wordpiece_vocabulary


def test_wordpiece_case_sensitive_training(documents):
    vocabulary = kdata.train_wordpiece(
        documents,
        vocabulary_size=600,
        lowercase=False,
        max_training_documents=150,
    )
    assert vocabulary[: len(RESERVED)] == RESERVED
    assert any(token != token.lower() for token in vocabulary[len(RESERVED) :])
    tokenizer = kdata.build_tokenizer("wordpiece", vocabulary, lowercase=False)
    ids = [int(i) for i in tokenizer.tokenize("Return")]
    assert tokenizer.token_to_id("[UNK]") not in ids


def test_wordpiece_learns_each_vocabulary_once_per_process(documents):
    from kobjectives.data.tokenizers import _learn_wordpiece

    first = kdata.train_wordpiece(documents[:40], vocabulary_size=200)
    misses = _learn_wordpiece.cache_info().misses
    first.append("changed by the caller")
    again = kdata.train_wordpiece(list(documents[:40]), vocabulary_size=200)
    # Same documents and settings: no new learning, the same fresh list.
    assert _learn_wordpiece.cache_info().misses == misses
    assert again == first[:-1] and again is not first
    # Any other setting learns again.
    other = kdata.train_wordpiece(documents[:40], vocabulary_size=200, lowercase=False)
    assert _learn_wordpiece.cache_info().misses == misses + 1
    assert other != again


def test_wordpiece_errors(documents):
    with pytest.raises(ValueError, match="empty"):
        kdata.train_wordpiece([], vocabulary_size=100)
    with pytest.raises(ValueError, match="empty"):
        kdata.train_wordpiece(["  ", "\n"], vocabulary_size=100)
    with pytest.raises(TypeError, match="single string"):
        kdata.train_wordpiece("just one string", vocabulary_size=100)
    for size in (5, 3, 0, 10.0, True):
        with pytest.raises(ValueError, match="vocabulary_size"):
            kdata.train_wordpiece(documents[:10], vocabulary_size=size)
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        kdata.train_wordpiece(
            documents[:10], 100, reserved_tokens=("[UNK]", "[PAD]")
        )
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        kdata.train_wordpiece(documents[:10], 100, reserved_tokens=("[PAD]",))
    with pytest.raises(ValueError, match="max_training_documents"):
        kdata.train_wordpiece(documents[:10], 100, max_training_documents=0)


# ---------------------------------------------------------------------------
# SentencePiece.
# ---------------------------------------------------------------------------


def test_sentencepiece_special_ids_and_size(sentencepiece_proto):
    assert isinstance(sentencepiece_proto, bytes)
    tokenizer = kdata.build_tokenizer("sentencepiece", sentencepiece_proto)
    assert isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer)
    assert tokenizer.vocabulary_size() == 800
    assert [tokenizer.id_to_token(i) for i in range(5)] == [
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
        "[MASK]",
    ]


def test_sentencepiece_mask_is_a_single_piece(sentencepiece_proto):
    tokenizer = kdata.build_tokenizer("sentencepiece", sentencepiece_proto)
    mask_id = tokenizer.token_to_id("[MASK]")
    ids = [int(i) for i in tokenizer.tokenize("Return the [MASK] of it.")]
    assert ids.count(mask_id) == 1
    ids = [int(i) for i in tokenizer.tokenize("[MASK][MASK]x[MASK]")]
    assert ids.count(mask_id) == 3


def test_sentencepiece_round_trip(sentencepiece_proto):
    tokenizer = kdata.build_tokenizer("sentencepiece", sentencepiece_proto)
    ids = [int(i) for i in tokenizer.tokenize(SENTENCE)]
    assert 1 not in ids  # no <unk>
    text = tokenizer.detokenize(ids)
    text = text.numpy() if hasattr(text, "numpy") else text
    text = text.decode() if isinstance(text, bytes) else str(text)
    assert text == SENTENCE


def test_sentencepiece_save_load_and_lowercase(sentencepiece_proto, tmp_path):
    path = kdata.save_vocabulary(sentencepiece_proto, tmp_path)
    assert os.path.basename(path) == kdata.SENTENCEPIECE_FILENAME
    assert kdata.load_vocabulary(tmp_path) == (
        "sentencepiece",
        sentencepiece_proto,
    )
    tokenizer = kdata.build_tokenizer(
        "sentencepiece", path, sequence_length=16, lowercase=False
    )
    ids = [int(i) for i in tokenizer.tokenize("Hello")]
    assert len(ids) == 16 and ids[-1] == 0
    # The model was trained cased; asking for lowercasing contradicts it.
    with pytest.raises(ValueError, match="lowercase"):
        kdata.build_tokenizer("sentencepiece", path, lowercase=True)


def test_sentencepiece_lowercase_bpe(documents):
    proto = kdata.train_sentencepiece(
        documents,
        vocabulary_size=400,
        model_type="bpe",
        lowercase=True,
        max_training_documents=150,
    )
    tokenizer = kdata.build_tokenizer("sentencepiece", proto, lowercase=True)
    assert tokenizer.vocabulary_size() == 400
    assert tokenizer.token_to_id("[MASK]") == 4
    upper = [int(i) for i in tokenizer.tokenize("RETURN The [MASK]")]
    lower = [int(i) for i in tokenizer.tokenize("return the [MASK]")]
    assert upper == lower and 4 in upper


def test_sentencepiece_errors(documents):
    with pytest.raises(ValueError, match="empty"):
        kdata.train_sentencepiece([], vocabulary_size=100)
    with pytest.raises(ValueError, match="vocabulary_size"):
        kdata.train_sentencepiece(documents[:10], vocabulary_size=5)
    # Too large for the corpus: SentencePiece's own limit, reworded.
    with pytest.raises(ValueError, match="vocabulary_size"):
        kdata.train_sentencepiece(documents[:5], vocabulary_size=50_000)


# ---------------------------------------------------------------------------
# Saving / building errors.
# ---------------------------------------------------------------------------


def test_save_load_build_errors(tmp_path):
    with pytest.raises(TypeError):
        kdata.save_vocabulary("not a list", tmp_path)
    with pytest.raises(ValueError, match="line"):
        kdata.save_vocabulary(["[PAD]", "a\nb"], tmp_path)
    with pytest.raises(FileNotFoundError):
        kdata.load_vocabulary(tmp_path / "empty_dir_that_is_missing")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError):
        kdata.load_vocabulary(tmp_path / "run")
    kdata.save_vocabulary(["[PAD]", "[UNK]"], tmp_path / "run")
    kdata.save_vocabulary(b"proto", tmp_path / "run")
    with pytest.raises(ValueError, match="both"):
        kdata.load_vocabulary(tmp_path / "run")
    with pytest.raises(ValueError, match="kind"):
        kdata.build_tokenizer("bpe", ["[PAD]", "[UNK]"])
