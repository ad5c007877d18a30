"""Tokenizer training, saving and loading (WordPiece and SentencePiece).

Vocabularies are always trained locally, from the run's own documents:

- WordPiece with `keras_hub.tokenizers.compute_word_piece_vocabulary`
  (tf-text's WordPiece learner underneath); the vocabulary is a
  `list[str]`, saved one token a line as `vocab.txt`.
- SentencePiece with `keras_hub.tokenizers.compute_sentence_piece_proto`;
  the model is a serialized `ModelProto` (`bytes`), saved as `spm.model`.

`build_tokenizer` turns either into the matching keras-hub tokenizer layer.
Special-token conventions, relied on by the masking and packing layers:

| | pad | unk | bos / cls | eos / sep | mask |
|---|---|---|---|---|---|
| WordPiece | `[PAD]`=0 | `[UNK]`=1 | `[CLS]`=2 | `[SEP]`=3 | `[MASK]`=4 |
| SentencePiece | `<pad>`=0 | `<unk>`=1 | `<s>`=2 | `</s>`=3 | `[MASK]`=4 |

(WordPiece ids are those of the default `reserved_tokens`.)
"""

import functools
import os

from kobjectives.data.split import check_documents

WORDPIECE_RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Default WordPiece reserved tokens; they take ids 0..4 in this order."""

SENTENCEPIECE_CONTROL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
"""SentencePiece ids 0..3 (pad, unk, bos, eos), as keras-hub trains them."""

SENTENCEPIECE_USER_DEFINED_SYMBOLS = ("[MASK]",)
"""Default SentencePiece user-defined symbols; they take ids 4, 5, ..."""

WORDPIECE_FILENAME = "vocab.txt"
SENTENCEPIECE_FILENAME = "spm.model"
SUFFIX_INDICATOR = "##"
TOKENIZER_KINDS = ("wordpiece", "sentencepiece")


# ---------------------------------------------------------------------------
# Argument checks shared by both trainers.
# ---------------------------------------------------------------------------


def _check_documents(documents):
    documents = [document for document in check_documents(documents) if document.strip()]
    if not documents:
        raise ValueError(
            "`documents` is empty (or holds only whitespace): a tokenizer "
            "needs text to train on."
        )
    return documents


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive int. Received: {name}={value!r}"
        )
    return value


def _subsample(documents, max_training_documents):
    """Keeps `max_training_documents` documents evenly spread over the
    corpus (a deterministic stride, so every part of the corpus is seen)."""
    if max_training_documents is None:
        return documents
    _check_positive_int(max_training_documents, "max_training_documents")
    count = len(documents)
    if count <= max_training_documents:
        return documents
    return [
        documents[(index * count) // max_training_documents]
        for index in range(max_training_documents)
    ]


# ---------------------------------------------------------------------------
# WordPiece.
# ---------------------------------------------------------------------------


def train_wordpiece(
    documents,
    vocabulary_size,
    lowercase=True,
    reserved_tokens=WORDPIECE_RESERVED_TOKENS,
    strip_accents=False,
    split_on_cjk=True,
    max_training_documents=None,
):
    """Trains a WordPiece vocabulary on documents.

    Uses `keras_hub.tokenizers.compute_word_piece_vocabulary`, so the
    pre-tokenization (whitespace and punctuation split, optional lowercasing
    and accent stripping, CJK split) is exactly the one
    `keras_hub.tokenizers.WordPieceTokenizer` applies: build the tokenizer
    with the same `lowercase` / `strip_accents` (`build_tokenizer` does).

    The vocabulary is the reserved tokens (ids `0..len(reserved_tokens)-1`,
    in order, so `[PAD]` is 0), every character seen (alone and as a `##`
    continuation), then subwords by decreasing frequency. tf-text's learner
    (whose settings keras-hub does not expose) keeps only pieces seen about
    10 times or more and aims within 5% below `vocabulary_size`, so a small
    corpus yields fewer entries than asked for: use `len(vocabulary)` as the
    model's vocabulary size. On the embedded corpus `vocabulary_size=8000`
    yields about 3,700 entries in about 25 s on 2 CPU cores; the time grows
    with the number of distinct words (see `max_training_documents`). Entries containing whitespace (artefacts of
    combining marks after a space) are dropped, since they cannot be matched
    and do not survive a `vocab.txt` round trip.

    Args:
        documents: a list of `str`.
        vocabulary_size: int, the maximum vocabulary size (reserved tokens
            included).
        lowercase: bool, case-fold the text before learning.
        reserved_tokens: the special tokens, placed first; must start with
            `"[PAD]"` (id 0) and contain `"[UNK]"` (the tokenizer's
            out-of-vocabulary token).
        strip_accents: bool, remove accent marks before learning.
        split_on_cjk: bool, split CJK characters into their own words.
        max_training_documents: optional positive int: train on this many
            documents, picked with an even deterministic stride over the
            corpus, to bound the time on large corpora.

    Returns:
        The vocabulary as a `list[str]`.

    Raises:
        ValueError: `documents` is empty or whitespace only;
            `vocabulary_size` is not an int larger than the number of
            reserved tokens; `reserved_tokens` does not start with `[PAD]`,
            lacks `[UNK]` or repeats a token.
        TypeError: `documents` is a single string or holds a non-string.

    Example:

    >>> vocabulary = train_wordpiece(
    ...     ["the cat sat on the mat"] * 20, vocabulary_size=60
    ... )
    >>> vocabulary[:5]
    ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    >>> "cat" in vocabulary
    True
    """

    documents = _check_documents(documents)
    reserved_tokens = list(reserved_tokens)
    if not reserved_tokens or reserved_tokens[0] != "[PAD]":
        raise ValueError(
            "`reserved_tokens` must start with '[PAD]' so that padding is id "
            f"0. Received: reserved_tokens={reserved_tokens!r}"
        )
    if "[UNK]" not in reserved_tokens:
        raise ValueError(
            "`reserved_tokens` must contain '[UNK]', the tokenizer's "
            f"out-of-vocabulary token. Received: {reserved_tokens!r}"
        )
    if len(set(reserved_tokens)) != len(reserved_tokens):
        raise ValueError(
            f"`reserved_tokens` repeats a token: {reserved_tokens!r}"
        )
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, int)
        or vocabulary_size <= len(reserved_tokens)
    ):
        raise ValueError(
            f"`vocabulary_size` must be an int larger than the "
            f"{len(reserved_tokens)} reserved tokens (and in practice large "
            "enough for every character of the corpus, twice). Received: "
            f"vocabulary_size={vocabulary_size!r}"
        )
    documents = _subsample(documents, max_training_documents)
    return list(_learn_wordpiece(
        tuple(documents), vocabulary_size, bool(lowercase),
        bool(strip_accents), bool(split_on_cjk), tuple(reserved_tokens)))


@functools.lru_cache(maxsize=4)
def _learn_wordpiece(documents, vocabulary_size, lowercase, strip_accents,
                     split_on_cjk, reserved_tokens):
    """tf-text's learner, cached by the documents and the settings: it is
    deterministic, and slow enough (seconds even on a few hundred documents)
    that runs repeated in one process (KerasTuner trials, tests) should
    learn each vocabulary once. The last few document tuples stay
    referenced while cached."""
    import tensorflow as tf
    from keras_hub.tokenizers import compute_word_piece_vocabulary

    dataset = tf.data.Dataset.from_tensor_slices(list(documents)).batch(512)
    vocabulary = compute_word_piece_vocabulary(
        dataset,
        vocabulary_size,
        lowercase=lowercase,
        strip_accents=strip_accents,
        split=True,
        split_on_cjk=split_on_cjk,
        suffix_indicator=SUFFIX_INDICATOR,
        reserved_tokens=list(reserved_tokens),
    )
    reserved = set(reserved_tokens)
    return tuple(
        token
        for token in vocabulary
        if token in reserved or not any(char.isspace() for char in token)
    )


def continuation_token_ids(vocabulary, suffix_indicator=SUFFIX_INDICATOR):
    """Ids of the WordPiece continuation pieces (entries starting `##`).

    Whole-word masking needs them: a token whose id is in this list
    continues the word of the token before it.

    Args:
        vocabulary: a WordPiece vocabulary (`list[str]`), a path to a
            `vocab.txt`, or a `keras_hub.tokenizers.WordPieceTokenizer`.
        suffix_indicator: the continuation prefix.

    Returns:
        A sorted `list[int]` of the ids whose token starts with
        `suffix_indicator` (and is longer than it).

    Example:

    >>> continuation_token_ids(["[PAD]", "[UNK]", "play", "##ing", "##s"])
    [3, 4]
    """
    if isinstance(vocabulary, (str, os.PathLike)):
        vocabulary = _read_wordpiece_vocabulary(vocabulary)
    elif hasattr(vocabulary, "get_vocabulary"):
        vocabulary = vocabulary.get_vocabulary()
    return [
        index
        for index, token in enumerate(vocabulary)
        if token.startswith(suffix_indicator)
        and len(token) > len(suffix_indicator)
    ]


# ---------------------------------------------------------------------------
# SentencePiece.
# ---------------------------------------------------------------------------


def _add_user_defined_symbols(proto, symbols):
    """Inserts user-defined symbols after the control tokens of a model.

    This is where `spm_train --user_defined_symbols` puts them; pieces are
    matched by string and scored explicitly, so shifting the ids of the
    learned pieces does not change how text is segmented.
    """
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    # A learned piece spelled like a symbol would be a duplicate: drop it.
    pieces = [piece for piece in model.pieces if piece.piece not in symbols]
    position = len(SENTENCEPIECE_CONTROL_TOKENS)
    new_pieces = [
        piece_type(piece=symbol, score=0.0, type=piece_type.USER_DEFINED)
        for symbol in symbols
    ]
    del model.pieces[:]
    model.pieces.extend(pieces[:position] + new_pieces + pieces[position:])
    model.trainer_spec.user_defined_symbols.extend(symbols)
    model.trainer_spec.vocab_size = len(model.pieces)
    return model.SerializeToString()


def train_sentencepiece(
    documents,
    vocabulary_size,
    model_type="unigram",
    lowercase=False,
    user_defined_symbols=SENTENCEPIECE_USER_DEFINED_SYMBOLS,
    max_training_documents=None,
):
    """Trains a SentencePiece model on documents.

    Uses `keras_hub.tokenizers.compute_sentence_piece_proto`, which fixes
    `<pad>`=0, `<unk>`=1, `<s>`=2 (bos) and `</s>`=3 (eos). The
    `user_defined_symbols` (by default `[MASK]`) are then added as
    user-defined pieces with ids 4, 5, ...: they are never split, so
    `"a [MASK] b"` tokenizes `[MASK]` as one id. The keras-hub trainer
    does not expose SentencePiece's `user_defined_symbols` option, so they
    are inserted into the trained model proto, where SentencePiece's own
    trainer would put them; the model is trained with
    `vocabulary_size - len(user_defined_symbols)` pieces so the total is
    exactly `vocabulary_size`.

    Each non-empty line of each document is one training sentence
    (SentencePiece skips sentences longer than 4192 bytes, which whole
    documents often are). Lowercasing (`lowercase=True`, the `nmt_nfkc_cf`
    normalization) is stored in the model, so the tokenizer applies it too.
    On the embedded corpus `vocabulary_size=8000` trains in about 7 s.

    Args:
        documents: a list of `str`.
        vocabulary_size: int, the exact vocabulary size (control tokens and
            user-defined symbols included).
        model_type: `"unigram"`, `"bpe"`, `"word"` or `"char"`.
        lowercase: bool, case-fold the text (in the model's normalizer).
        user_defined_symbols: strings that are always single pieces.
        max_training_documents: optional positive int: train on this many
            documents, picked with an even deterministic stride.

    Returns:
        The serialized SentencePiece model proto (`bytes`).

    Raises:
        ValueError: `documents` is empty or whitespace only;
            `vocabulary_size` is too small for the special tokens or too
            large for the corpus (SentencePiece's message is included).
        TypeError: `documents` is a single string or holds a non-string.

    Example:

    >>> documents = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]
    >>> proto = train_sentencepiece(documents * 5, vocabulary_size=20)
    >>> tokenizer = build_tokenizer("sentencepiece", proto)
    >>> tokenizer.vocabulary_size(), tokenizer.token_to_id("[MASK]")
    (20, 4)
    >>> pieces = [tokenizer.id_to_token(int(i)) for i in tokenizer("a cat [MASK]")]
    >>> pieces[-1]  # one piece, never split
    '[MASK]'
    """
    import tensorflow as tf
    from keras_hub.tokenizers import compute_sentence_piece_proto

    documents = _check_documents(documents)
    if isinstance(user_defined_symbols, str):
        user_defined_symbols = [user_defined_symbols]
    user_defined_symbols = list(dict.fromkeys(user_defined_symbols))
    reserved = len(SENTENCEPIECE_CONTROL_TOKENS) + len(user_defined_symbols)
    if (
        isinstance(vocabulary_size, bool)
        or not isinstance(vocabulary_size, int)
        or vocabulary_size <= reserved
    ):
        raise ValueError(
            f"`vocabulary_size` must be an int larger than the {reserved} "
            "special tokens (pad, unk, bos, eos and the user-defined "
            f"symbols). Received: vocabulary_size={vocabulary_size!r}"
        )
    documents = _subsample(documents, max_training_documents)
    sentences = [
        line.strip()
        for document in documents
        for line in document.split("\n")
        if line.strip()
    ]
    try:
        proto = compute_sentence_piece_proto(
            tf.data.Dataset.from_tensor_slices(sentences),
            vocabulary_size - len(user_defined_symbols),
            model_type=model_type,
            lowercase=lowercase,
        )
    except RuntimeError as error:
        raise ValueError(
            f"SentencePiece could not train with vocabulary_size="
            f"{vocabulary_size} on {len(sentences)} sentences. Adjust "
            f"`vocabulary_size`; the sizes SentencePiece reports below "
            f"exclude the {len(user_defined_symbols)} user-defined "
            f"symbol(s). SentencePiece said: {str(error).rstrip('.')}."
        ) from error
    if user_defined_symbols:
        proto = _add_user_defined_symbols(proto, user_defined_symbols)
    return proto


def _sentencepiece_lowercases(proto):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return model.normalizer_spec.name.endswith("_cf")


# ---------------------------------------------------------------------------
# Saving, loading, building.
# ---------------------------------------------------------------------------


def _read_wordpiece_vocabulary(path):
    with open(path, "r", encoding="utf-8") as file:
        return [line.rstrip("\r\n") for line in file]


def save_vocabulary(vocabulary_or_proto, directory):
    """Saves a trained vocabulary into a run directory.

    A WordPiece vocabulary (`list[str]`) is written one token a line to
    `directory/vocab.txt`; a SentencePiece proto (`bytes`) to
    `directory/spm.model`. The directory is created if needed.

    Args:
        vocabulary_or_proto: what `train_wordpiece` or `train_sentencepiece`
            returned.
        directory: the directory to write into.

    Returns:
        The path of the written file (`str`).

    Raises:
        TypeError: `vocabulary_or_proto` is neither a list of str nor bytes.
        ValueError: a WordPiece token is empty or contains a line break.

    Example:

    >>> import tempfile
    >>> path = save_vocabulary(["[PAD]", "[UNK]", "a"], tempfile.mkdtemp())
    >>> os.path.basename(path), load_vocabulary(path)
    ('vocab.txt', ('wordpiece', ['[PAD]', '[UNK]', 'a']))
    """
    os.makedirs(directory, exist_ok=True)
    if isinstance(vocabulary_or_proto, (bytes, bytearray)):
        path = os.path.join(directory, SENTENCEPIECE_FILENAME)
        with open(path, "wb") as file:
            file.write(bytes(vocabulary_or_proto))
        return path
    if isinstance(vocabulary_or_proto, str) or not all(
        isinstance(token, str) for token in vocabulary_or_proto
    ):
        raise TypeError(
            "`vocabulary_or_proto` must be a WordPiece vocabulary (a list of "
            "str) or a SentencePiece proto (bytes). Received: "
            f"{type(vocabulary_or_proto).__name__}"
        )
    for token in vocabulary_or_proto:
        if not token or "\n" in token or "\r" in token:
            raise ValueError(
                f"WordPiece token {token!r} cannot be saved one per line."
            )
    path = os.path.join(directory, WORDPIECE_FILENAME)
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(token + "\n" for token in vocabulary_or_proto))
    return path


def load_vocabulary(path):
    """Loads what `save_vocabulary` wrote.

    Args:
        path: a `vocab.txt` or `spm.model` file, or a directory holding
            exactly one of them. A file ending in `.model` is read as a
            SentencePiece proto, any other file as a WordPiece vocabulary.

    Returns:
        `(kind, vocabulary_or_proto)`: `("wordpiece", list[str])` or
        `("sentencepiece", bytes)`, ready for `build_tokenizer`.

    Raises:
        FileNotFoundError: nothing to load at `path`.
        ValueError: a directory holds both files.

    Example:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run_directory:  # e.g. a run folder
    ...     _ = save_vocabulary(["[PAD]", "[UNK]", "the", "cat", "##s"], run_directory)
    ...     kind, vocabulary = load_vocabulary(run_directory)
    >>> tokenizer = build_tokenizer(kind, vocabulary)
    >>> kind, [int(i) for i in tokenizer.tokenize("The cats")]
    ('wordpiece', [2, 3, 4])
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [
            name
            for name in (WORDPIECE_FILENAME, SENTENCEPIECE_FILENAME)
            if os.path.isfile(os.path.join(path, name))
        ]
        if not found:
            raise FileNotFoundError(
                f"No {WORDPIECE_FILENAME} or {SENTENCEPIECE_FILENAME} in "
                f"{path!r}."
            )
        if len(found) > 1:
            raise ValueError(
                f"{path!r} holds both {WORDPIECE_FILENAME} and "
                f"{SENTENCEPIECE_FILENAME}; pass the file to load."
            )
        path = os.path.join(path, found[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No vocabulary file at {path!r}.")
    if path.endswith(".model"):
        with open(path, "rb") as file:
            return "sentencepiece", file.read()
    return "wordpiece", _read_wordpiece_vocabulary(path)


def build_tokenizer(
    kind, vocabulary_or_proto, sequence_length=None, lowercase=None, **kwargs
):
    """Builds the keras-hub tokenizer for a trained vocabulary.

    Args:
        kind: `"wordpiece"` or `"sentencepiece"`.
        vocabulary_or_proto: for WordPiece a `list[str]` or a path to a
            `vocab.txt`; for SentencePiece the proto `bytes` or a path to
            an `spm.model`.
        sequence_length: optional int: pad/truncate outputs to this length
            (dense output); `None` returns ragged token ids.
        lowercase: WordPiece: whether to case-fold input, which must match
            training (default `True`, as in `train_wordpiece`).
            SentencePiece: lowercasing is stored in the model; leave `None`,
            or pass the value the model was trained with (a mismatch
            raises).
        **kwargs: passed to `keras_hub.tokenizers.WordPieceTokenizer` (e.g.
            `strip_accents`, `special_tokens_in_strings`) or
            `keras_hub.tokenizers.SentencePieceTokenizer` (e.g. `add_bos`).

    Returns:
        A `keras_hub.tokenizers.WordPieceTokenizer` (with `oov_token`
        `"[UNK]"`) or `keras_hub.tokenizers.SentencePieceTokenizer`.

    Raises:
        ValueError: unknown `kind`, or `lowercase` contradicts a
            SentencePiece model.

    Example:

    >>> tokenizer = build_tokenizer(
    ...     "wordpiece", ["[PAD]", "[UNK]", "the", "cat", "##s"]
    ... )
    >>> [int(i) for i in tokenizer.tokenize("The cats")]
    [2, 3, 4]
    """
    import keras_hub

    normalized_kind = str(kind).lower().replace("_", "").replace("-", "")
    if normalized_kind == "wordpiece":
        vocabulary = vocabulary_or_proto
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = _read_wordpiece_vocabulary(vocabulary)
        kwargs.setdefault("oov_token", "[UNK]")
        return keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=list(vocabulary),
            sequence_length=sequence_length,
            lowercase=True if lowercase is None else lowercase,
            suffix_indicator=SUFFIX_INDICATOR,
            **kwargs,
        )
    if normalized_kind == "sentencepiece":
        proto = vocabulary_or_proto
        if isinstance(proto, (str, os.PathLike)):
            with open(proto, "rb") as file:
                proto = file.read()
        proto = bytes(proto)
        if lowercase is not None and lowercase != _sentencepiece_lowercases(
            proto
        ):
            raise ValueError(
                f"`lowercase={lowercase}` contradicts the SentencePiece model, "
                "which stores its own normalization (trained with "
                f"lowercase={not lowercase}). Leave `lowercase=None`."
            )
        return keras_hub.tokenizers.SentencePieceTokenizer(
            proto=proto, sequence_length=sequence_length, **kwargs
        )
    raise ValueError(
        f"`kind` must be one of {TOKENIZER_KINDS}. Received: kind={kind!r}"
    )


# ---------------------------------------------------------------------------
# Sentinel tokens (T5 span corruption).
# ---------------------------------------------------------------------------

SENTINEL_TOKEN_FORMAT = "<extra_id_{}>"
"""How T5 spells its sentinel tokens: `<extra_id_0>`, `<extra_id_1>`, ..."""


def add_sentinel_tokens(vocabulary, num_sentinels, token_format=SENTINEL_TOKEN_FORMAT):
    """Appends T5 sentinel tokens at the top of a WordPiece vocabulary.

    The result ends with `<extra_id_{n-1}>, ..., <extra_id_1>, <extra_id_0>`,
    so `<extra_id_k>` has id `len(result) - 1 - k`: the default sentinels of
    `kobjectives.layers.SpanCorruption` (`vocabulary_size - 1` counting
    down), as in T5's vocabulary. WordPiece never produces them from text
    (the pre-tokenizer splits `<`, `_` and `>`), so no real token collides
    with a sentinel; pass them as the tokenizer's `special_tokens` (with
    `special_tokens_in_strings=True`) to read them from text.

    Args:
        vocabulary: list of str, e.g. from `train_wordpiece`.
        num_sentinels: positive int.
        token_format: str with one `{}` for the sentinel's number.

    Returns:
        A new list of str: `vocabulary` followed by the sentinels.

    Raises:
        ValueError: `num_sentinels` is not a positive int, or a sentinel
            token is already in the vocabulary.

    Example:

    >>> add_sentinel_tokens(["[PAD]", "[UNK]", "a"], 2)
    ['[PAD]', '[UNK]', 'a', '<extra_id_1>', '<extra_id_0>']
    """
    _check_positive_int(num_sentinels, "num_sentinels")
    sentinels = [token_format.format(k) for k in reversed(range(num_sentinels))]
    present = sorted(set(sentinels) & set(vocabulary))
    if present:
        raise ValueError(
            f"The vocabulary already holds sentinel tokens {present[:5]}: their "
            "ids would collide with real tokens. Add sentinels to a vocabulary "
            "without them, or use another `token_format`."
        )
    return list(vocabulary) + sentinels
