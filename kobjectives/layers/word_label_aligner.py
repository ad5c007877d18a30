"""`WordLabelAligner`: word-level tags aligned to WordPiece tokens, for
token classification (NER) in `tf.data`; `word_tags_from_token_tags` maps
token-level tags back to words."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.layers.arguments import check_id
from kobjectives.layers.arguments import check_int
from kobjectives.layers.token_inputs import to_tensor

INPUT_KEYS = ("words", "tags")
"""The keys of a dict input: `"words"` (required) and `"tags"` (optional)."""

FEATURE_KEYS = ("token_ids", "padding_mask", "label_mask")
"""The model inputs `x` of token classification (`token_classification_inputs`)."""


@keras.saving.register_keras_serializable(package="kobjectives")
class WordLabelAligner(keras.layers.Layer):
    """Tokenizes pre-split words and aligns one tag per word to the pieces.

    Token classification data (CoNLL NER, `kobjectives.data.read_conll`)
    gives a tag per *word*; a WordPiece model sees *pieces* (`"German"` may
    become `germ ##an`). This layer tokenizes every word on its own with a
    keras-hub `WordPieceTokenizer` (the words go in as a ragged tensor, so the
    pieces come back as `[batch, words, pieces]` and never cross a word
    boundary), lays the pieces of a sentence end to end between the optional
    start and end tokens (`[CLS] ... [SEP]`), truncates and pads to
    `sequence_length`, and says which tokens carry which word's tag:

    - **first-piece labelling** (`label_all_pieces=False`, the default, as
      in BERT's NER experiments): the first piece of each word carries the
      word's tag; its other pieces, the special tokens and the padding get
      `label_mask` False (and label 0, sample weight 0), so they count
      neither in the loss nor in the metrics.
    - **all-pieces labelling** (`label_all_pieces=True`): every piece of a
      word carries a tag. By default each piece gets the word's own tag.
      With `tags` (the tag names, index = tag id), the IOB2-aware convention
      is used instead: the later pieces of a `B-X` word get `I-X` (an entity
      starts only once), and the pieces of any other word (`O`, `I-X`, ...)
      keep its tag. Every `B-X` in `tags` then needs its `I-X` (as
      `kobjectives.data.tag_set` gives).

    Either way, `word_tags_from_token_tags` reads a word's tag from its
    *first* token, so predictions map back to words the same way.

    **Words without pieces.** A word that tokenizes to nothing (an empty
    string, a space, a control or zero-width character that the tokenizer's
    normalization removes) becomes the tokenizer's unknown token
    (`oov_token`, e.g. `[UNK]`), so every word has at least one token and
    words and tags never shift against each other. A word holding spaces
    (`"New York"`) is still one word: all its pieces belong to it.

    **Truncation.** Sentences longer than `sequence_length` (pieces plus
    specials) are cut at the end, piece by piece; the end token follows the
    last kept piece. A word counts as kept when its first piece fits (its
    tag is then learnt and predicted); `num_words_kept` counts them and
    `num_words` counts all words, so `num_words - num_words_kept` words of a
    sentence were lost. Evaluation must not drop them silently: score every
    sentence on all its `num_words` words, with the lost ones predicted as
    `fill_value` (e.g. the `"O"` id) by `word_tags_from_token_tags`, so
    truncation shows as missed entities; report the count; or raise
    `sequence_length`.

    The layer is deterministic (no randomness, no seed): map it with
    `dataset.map(aligner)`, batched (ragged batches, e.g.
    `Dataset.ragged_batch`) or per sentence, eagerly or in `tf.data` (the
    same outputs: eagerly keras-hub tokenizes on its Python path, in a graph
    with tf-text; the tests check that they agree), and split its features with
    `token_classification_inputs` into Keras' `(x, y, sample_weight)`.

    Args:
        tokenizer: a `keras_hub.tokenizers.WordPieceTokenizer` (or subclass,
            e.g. `keras_hub.models.BertTokenizer`) with integer output and no
            `sequence_length` of its own (this layer pads). See
            `kobjectives.data.build_tokenizer`.
        sequence_length: int, the padded length `L`, specials included; at
            least 1 plus the number of special tokens.
        label_all_pieces: bool, label every piece of a word (see above).
            Defaults to `False` (the first piece only).
        start_token_id: optional int, the id put before the pieces (e.g.
            `[CLS]`). `None` (default) puts none.
        end_token_id: optional int, the id put after the pieces (e.g.
            `[SEP]`). `None` (default) puts none.
        pad_token_id: int, the padding id. Defaults to 0.
        num_tags: optional int, the number of tag ids; tag ids outside
            `[0, num_tags)` then fail the call (negative ids always fail).
            Defaults to `len(tags)` when `tags` is given.
        tags: optional list of str, the tag names (index = tag id), e.g.
            `kobjectives.data.tag_set(sentences)`. Gives `num_tags` and the
            `B-X` -> `I-X` continuation of `label_all_pieces=True`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, ...).

    Input:
        A dict `{"words": ..., "tags": ...}` (`"tags"` optional, e.g. at
        prediction time), or the words alone:

        - `words`: strings, ragged `[batch, (num_words)]` (a
          `tf.RaggedTensor`, nested lists, or a dense `[batch, num_words]`
          where every entry is a word), or one sentence `[num_words]`.
        - `tags`: integer tag ids with exactly the words' shape.

        Every sentence needs at least one word, and one tag per word: a
        `ValueError` says which sentence breaks this when the check can run
        in Python (static shapes, eager calls), an `InvalidArgumentError`
        with the same message inside `tf.data`.

    Output:
        A dict (no batch axis for one sentence), shapes static:

        - `"token_ids"`: int32 `[batch, L]`.
        - `"padding_mask"`: bool `[batch, L]`, True on real tokens
          (specials included).
        - `"label_mask"`: bool `[batch, L]`, True where a token carries a
          word's tag.
        - `"word_ids"`: int32 `[batch, L]`, the index of the word a token
          belongs to within its sentence, -1 for specials and padding.
        - `"num_words"`: int32 `[batch]`, the words of each sentence.
        - `"num_words_kept"`: int32 `[batch]`, those whose first piece fits.
        - with tags: `"labels"`: int32 `[batch, L]`, the tag ids where
          `label_mask`, 0 elsewhere; and `"sample_weight"`: float32
          `[batch, L]`, `label_mask` as 1.0 / 0.0.

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805) (BERT),
          section 5.3: NER with the first sub-token of each word as the
          input to the token-level classifier.
        - [Tjong Kim Sang and De Meulder, 2003](https://aclanthology.org/
          W03-0419) (CoNLL-2003, IOB tags).

    Example:

    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "eu", "rejects",
    ...               "germ", "##an", "call"]
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
    ...     vocabulary=vocabulary, lowercase=True)
    >>> tags = ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG"]
    >>> aligner = WordLabelAligner(
    ...     tokenizer, sequence_length=8, start_token_id=2, end_token_id=3,
    ...     tags=tags)
    >>> out = aligner({"words": tf.ragged.constant([["EU", "rejects", "German", "call"]]),
    ...                "tags": tf.ragged.constant([[3, 0, 1, 0]])})
    >>> out["token_ids"].numpy().tolist()
    [[2, 4, 5, 6, 7, 8, 3, 0]]
    >>> out["word_ids"].numpy().tolist()
    [[-1, 0, 1, 2, 2, 3, -1, -1]]
    >>> out["label_mask"].numpy().astype(int).tolist()  # first pieces
    [[0, 1, 1, 1, 0, 1, 0, 0]]
    >>> out["labels"].numpy().tolist()
    [[0, 3, 0, 1, 0, 0, 0, 0]]

    Every piece labelled, `##an` continuing `B-MISC` as `I-MISC`:

    >>> all_pieces = WordLabelAligner(
    ...     tokenizer, sequence_length=8, label_all_pieces=True,
    ...     start_token_id=2, end_token_id=3, tags=tags)
    >>> all_pieces({"words": tf.constant(["EU", "rejects", "German", "call"]),
    ...             "tags": tf.constant([3, 0, 1, 0])})["labels"].numpy().tolist()
    [0, 3, 0, 1, 2, 0, 0, 0]

    Truncated to 5 tokens, `"call"` is lost:

    >>> short = WordLabelAligner(tokenizer, 5, start_token_id=2, end_token_id=3)
    >>> out = short(tf.ragged.constant([["EU", "rejects", "German", "call"]]))
    >>> out["token_ids"].numpy().tolist(), out["num_words_kept"].numpy().tolist()
    ([[2, 4, 5, 6, 3]], [3])

    In `tf.data`:

    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     {"words": tf.ragged.constant([["EU", "rejects"], ["German", "call", "EU"]]),
    ...      "tags": tf.ragged.constant([[3, 0], [1, 0, 3]])})
    >>> ds = ds.ragged_batch(2).map(aligner).map(token_classification_inputs)
    >>> x, y, sample_weight = next(iter(ds))
    >>> sorted(x), y.shape, sample_weight.dtype
    (['label_mask', 'padding_mask', 'token_ids'], TensorShape([2, 8]), tf.float32)
    """

    def __init__(
        self,
        tokenizer,
        sequence_length,
        label_all_pieces=False,
        start_token_id=None,
        end_token_id=None,
        pad_token_id=0,
        num_tags=None,
        tags=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Take strings, ragged tensors, lists and dicts as they come.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

        if isinstance(tokenizer, dict):  # a serialized tokenizer (from_config)
            tokenizer = keras.saving.deserialize_keras_object(tokenizer)
        if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
            raise ValueError(
                "`tokenizer` must be a keras_hub.tokenizers.WordPieceTokenizer "
                "(or a subclass such as keras_hub.models.BertTokenizer). "
                f"Received: tokenizer={type(tokenizer).__name__}. Build one with "
                "kobjectives.data.build_tokenizer('wordpiece', vocabulary)."
            )
        if tokenizer.vocabulary is None:
            raise ValueError(
                "`tokenizer` has no vocabulary. Pass `vocabulary=` to it."
            )
        if not tf.as_dtype(tokenizer.compute_dtype).is_integer:
            raise ValueError(
                "`tokenizer` must return integer ids. Received a tokenizer "
                f"with dtype={tokenizer.compute_dtype!r}; build it with "
                "dtype='int32'."
            )
        if tokenizer.sequence_length:
            raise ValueError(
                "`tokenizer` must not pad: it has sequence_length="
                f"{tokenizer.sequence_length}. Build it with "
                "sequence_length=None; WordLabelAligner pads to its own "
                "`sequence_length`."
            )
        vocabulary_size = tokenizer.vocabulary_size()
        check_int("sequence_length", sequence_length, minimum=1)
        if not isinstance(label_all_pieces, (bool, np.bool_)):
            raise ValueError(
                "`label_all_pieces` must be True or False. Received: "
                f"label_all_pieces={label_all_pieces!r}."
            )
        start_token_id = check_id("start_token_id", start_token_id, vocabulary_size, optional=True)
        end_token_id = check_id("end_token_id", end_token_id, vocabulary_size, optional=True)
        pad_token_id = check_id("pad_token_id", pad_token_id, vocabulary_size)
        num_special = (start_token_id is not None) + (end_token_id is not None)
        if sequence_length < num_special + 1:
            raise ValueError(
                f"`sequence_length` must be >= {num_special + 1}: the start and end "
                "tokens and at least one piece. Received: "
                f"sequence_length={sequence_length!r}."
            )
        if tags is not None:
            if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
                raise ValueError(
                    "`tags` must be a list of tag names (str), index = tag id, "
                    f"e.g. kobjectives.data.tag_set(sentences). Received: tags={tags!r}."
                )
            tags = list(tags)
            if not tags or len(set(tags)) != len(tags):
                raise ValueError(
                    f"`tags` must be non-empty and hold each tag once. Received: tags={tags!r}."
                )
            if num_tags is not None and num_tags != len(tags):
                raise ValueError(
                    f"`num_tags`={num_tags!r} but `tags` names {len(tags)} tags. "
                    "Pass one of them, or make them agree."
                )
            num_tags = len(tags)
        if num_tags is not None:
            check_int("num_tags", num_tags, minimum=1)
            num_tags = int(num_tags)

        continuation = None
        if tags is not None and label_all_pieces:
            continuation = []
            for i, tag in enumerate(tags):
                if tag.startswith("B-"):
                    inside = "I-" + tag[2:]
                    if inside not in tags:
                        raise ValueError(
                            f"`tags` holds {tag!r} but not {inside!r}, which the later "
                            "pieces of a B- word get under label_all_pieces=True. Add "
                            f"{inside!r} to `tags` (kobjectives.data.tag_set adds both)."
                        )
                    continuation.append(tags.index(inside))
                else:
                    continuation.append(i)

        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.label_all_pieces = bool(label_all_pieces)
        self.start_token_id = start_token_id
        self.end_token_id = end_token_id
        self.pad_token_id = pad_token_id
        self.num_tags = num_tags
        self.tags = tags
        self.unknown_token_id = int(tokenizer.token_to_id(tokenizer.oov_token))
        self._continuation = continuation
        self._num_special = num_special
        self.built = True

    # -- inputs ---------------------------------------------------------------

    def _unpack(self, inputs):
        """`(words, tags, unbatched)`: words as `(values [n] string, row_splits
        [batch + 1] int32, static batch size)`; tags as `(values [n'] int32,
        row_splits)` or `None`."""
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(INPUT_KEYS))
            if "words" not in inputs or unknown:
                raise ValueError(
                    "Dict inputs to WordLabelAligner take the keys 'words' "
                    f"(required) and 'tags' (optional). Received keys: {sorted(inputs)}."
                )
            words, tags = inputs["words"], inputs.get("tags")
        else:
            words, tags = inputs, None
        words = to_tensor(words)
        if words.dtype != tf.string:
            raise ValueError(
                "WordLabelAligner expects `words` as strings, one per word. "
                f"Received dtype {words.dtype.name}."
            )
        rank = words.shape.rank
        if rank not in (1, 2):
            raise ValueError(
                "WordLabelAligner expects `words` of shape [batch, (num_words)] "
                f"or [num_words]. Received shape {words.shape}. Split each "
                "sentence into words first (e.g. tf.strings.split)."
            )
        if rank == 1 and words.shape[0] == 0:
            raise ValueError(
                "WordLabelAligner: the sentence has no words. Every sentence "
                "needs at least one word: drop empty sentences first."
            )
        if tags is not None:
            tags = to_tensor(tags)
            if not tags.dtype.is_integer:
                raise ValueError(
                    "WordLabelAligner expects `tags` as integer tag ids. "
                    f"Received dtype {tags.dtype.name}; map the tag names to ids "
                    "first (their index in kobjectives.data.tag_set)."
                )
            if tags.shape.rank != rank or (
                not isinstance(words, tf.RaggedTensor)
                and not isinstance(tags, tf.RaggedTensor)
                and not tags.shape.is_compatible_with(words.shape)
            ):
                raise ValueError(
                    "WordLabelAligner: `words` and `tags` must have one tag per "
                    f"word. Received shapes words {words.shape} and tags {tags.shape}."
                )
            tags = _flat_rows(tf.cast(tags, tf.int32))[:2]
        return _flat_rows(words), tags, rank == 1

    def _check(self, lengths, tags):
        """Raises `ValueError` (eager) or returns `tf.debugging.Assert`s for
        empty sentences, words/tags count mismatches and tag ids out of range."""
        checks = [(
            tf.reduce_all(lengths > 0),
            lambda: ["WordLabelAligner: sentence", _first(lengths <= 0),
                     "of the batch has no words. Every sentence needs at least one "
                     "word: drop empty sentences first."],
        )]
        if tags is not None:
            values, splits = tags
            tag_lengths = splits[1:] - splits[:-1]
            rows = tf.minimum(tf.size(lengths), tf.size(tag_lengths))
            same = tf.equal(lengths[:rows], tag_lengths[:rows])
            bad = _first(~same)
            checks.append((
                tf.equal(tf.size(lengths), tf.size(tag_lengths)) & tf.reduce_all(same),
                lambda: ["WordLabelAligner: sentence", bad, "has",
                         tf.gather(lengths, bad), "words but", tf.gather(tag_lengths, bad),
                         "tags. `words` and `tags` must have one tag per word."],
            ))
            upper = self.num_tags
            good = values >= 0 if upper is None else (values >= 0) & (values < upper)
            where = (f"[0, num_tags) = [0, {upper})" if upper is not None
                     else "[0, inf): tag ids are >= 0")
            wrong = _first(~good)
            checks.append((
                tf.reduce_all(good),
                lambda: ["WordLabelAligner: tag id", tf.gather(values, wrong), "in sentence",
                         tf.searchsorted(splits, wrong[None], side="right")[0] - 1,
                         f"is outside {where}. Check the tag ids and `num_tags` / `tags`."],
            ))
        if tf.executing_eagerly():
            for ok, message in checks:
                if not bool(ok):
                    raise ValueError(" ".join(
                        str(m.numpy()) if isinstance(m, tf.Tensor) else m for m in message()))
            return []
        return [tf.debugging.Assert(ok, message()) for ok, message in checks]

    # -- the alignment --------------------------------------------------------

    def _tokenize(self, values, splits):
        """`(piece ids [pieces] int32, piece row splits per word [words + 1]
        int32)` of the words `values` (sentences cut at `splits`)."""
        words = tf.RaggedTensor.from_row_splits(values, splits, validate=False)
        pieces = self.tokenizer(words)
        if isinstance(pieces, tf.RaggedTensor):  # [batch, (words), (pieces)]
            return (tf.cast(pieces.flat_values, tf.int32),
                    tf.cast(pieces.nested_row_splits[-1], tf.int32))
        # Eager calls run keras-hub's Python path: nested lists.
        counts = [len(word) for sentence in pieces for word in sentence]
        ids = [int(i) for sentence in pieces for word in sentence for i in word]
        return (tf.constant(ids, tf.int32, shape=[len(ids)]),
                tf.constant(np.cumsum([0] + counts), tf.int32, shape=[len(counts) + 1]))

    def call(self, inputs):
        """Aligns a batch (or one sentence) of words and tags.

        Args:
            inputs: `{"words", "tags"}` or the words alone, see the class
                docstring.

        Returns:
            The dict of features described in the class docstring.
        """
        (values, splits, batch), tags, unbatched = self._unpack(inputs)
        num_words = splits[1:] - splits[:-1]
        with tf.control_dependencies(self._check(num_words, tags)):
            values = tf.identity(values)
        piece_ids, piece_splits = self._tokenize(values, splits)

        # Words without pieces get one: the unknown token.
        num_pieces = piece_splits[1:] - piece_splits[:-1]
        empty = tf.equal(num_pieces, 0)
        num_pieces = tf.maximum(num_pieces, 1)
        starts = tf.concat([[0], tf.cumsum(num_pieces)], axis=0)  # per word, [words + 1]
        total = starts[-1]
        word_of_piece = tf.repeat(tf.range(tf.size(num_pieces)), num_pieces)
        piece_in_word = tf.range(total) - tf.gather(starts, word_of_piece)
        first = tf.equal(piece_in_word, 0)
        source = tf.gather(piece_splits, word_of_piece) + piece_in_word
        source = tf.where(tf.gather(empty, word_of_piece), tf.size(piece_ids), source)
        token_ids = tf.gather(tf.concat([piece_ids, [self.unknown_token_id]], 0), source)

        # Where each piece goes: its sentence and its position there.
        num_sentences = tf.size(num_words)
        sentence_of_word = tf.repeat(tf.range(num_sentences), num_words)
        word_ids = tf.range(tf.size(sentence_of_word)) - tf.gather(splits, sentence_of_word)
        word_ids = tf.gather(word_ids, word_of_piece)
        sentence = tf.gather(sentence_of_word, word_of_piece)
        sentence_starts = tf.gather(starts, splits)  # per sentence, [batch + 1]
        position = tf.range(total) - tf.gather(sentence_starts, sentence)
        capacity = self.sequence_length - self._num_special
        kept = position < capacity
        lengths = tf.minimum(sentence_starts[1:] - sentence_starts[:-1], capacity)
        offset = int(self.start_token_id is not None)
        # Cut pieces go to an extra column, dropped after the scatter.
        column = tf.where(kept, position + offset, self.sequence_length)
        indices = tf.stack([sentence, column], axis=1)

        def place(piece_values, pad):
            buffer = tf.fill([num_sentences, self.sequence_length + 1],
                             tf.cast(pad, piece_values.dtype))
            placed = tf.tensor_scatter_nd_update(buffer, indices, piece_values)
            return placed[:, : self.sequence_length]

        positions = tf.range(self.sequence_length)[None, :]
        token_ids = place(token_ids, self.pad_token_id)
        if self.start_token_id is not None:
            token_ids = tf.where(positions == 0, self.start_token_id, token_ids)
        if self.end_token_id is not None:
            at_end = tf.equal(positions, (lengths + offset)[:, None])
            token_ids = tf.where(at_end, self.end_token_id, token_ids)
        label_mask = tf.ones_like(first) if self.label_all_pieces else first
        outputs = {
            "token_ids": token_ids,
            "padding_mask": tf.sequence_mask(lengths + self._num_special, self.sequence_length),
            "label_mask": place(label_mask, False),
            "word_ids": place(word_ids, -1),
            "num_words": num_words,
            "num_words_kept": tf.math.unsorted_segment_sum(
                tf.cast(first & kept, tf.int32), sentence, num_sentences),
        }
        if tags is not None:
            tag = tf.gather(tags[0], word_of_piece)
            if self._continuation is not None:
                later = tf.gather(tf.constant(self._continuation, tf.int32), tag)
                tag = tf.where(first, tag, later)
            outputs["labels"] = place(tf.where(label_mask, tag, 0), 0)
            outputs["sample_weight"] = tf.cast(outputs["label_mask"], tf.float32)
        for key, value in outputs.items():
            shape = [batch] if key.startswith("num_") else [batch, self.sequence_length]
            outputs[key] = tf.ensure_shape(value, shape)
        if unbatched:
            outputs = {key: value[0] for key, value in outputs.items()}
        return outputs

    # -- shapes and config -----------------------------------------------------

    def _output_shapes(self, words_shape, with_tags):
        batch = tuple(words_shape)[:-1]
        token = batch + (self.sequence_length,)
        shapes = {
            "token_ids": (token, "int32"),
            "padding_mask": (token, "bool"),
            "label_mask": (token, "bool"),
            "word_ids": (token, "int32"),
            "num_words": (batch, "int32"),
            "num_words_kept": (batch, "int32"),
        }
        if with_tags:
            shapes["labels"] = (token, "int32")
            shapes["sample_weight"] = (token, "float32")
        return shapes

    def compute_output_shape(self, input_shape):
        with_tags = isinstance(input_shape, dict) and "tags" in input_shape
        words = input_shape["words"] if isinstance(input_shape, dict) else input_shape
        return {k: s for k, (s, _) in self._output_shapes(words, with_tags).items()}

    def compute_output_spec(self, inputs):
        with_tags = isinstance(inputs, dict) and inputs.get("tags") is not None
        words = inputs["words"] if isinstance(inputs, dict) else inputs
        return {
            k: keras.KerasTensor(s, dtype=d)
            for k, (s, d) in self._output_shapes(words.shape, with_tags).items()
        }

    def get_config(self):
        config = super().get_config()
        tokenizer = keras.saving.serialize_keras_object(self.tokenizer)
        # keras-hub keeps the vocabulary in an asset file, outside the config;
        # inline it so that `from_config(get_config())` alone rebuilds the layer.
        tokenizer["config"]["vocabulary"] = list(self.tokenizer.get_vocabulary())
        config.update(
            {
                "tokenizer": tokenizer,
                "sequence_length": self.sequence_length,
                "label_all_pieces": self.label_all_pieces,
                "start_token_id": self.start_token_id,
                "end_token_id": self.end_token_id,
                "pad_token_id": self.pad_token_id,
                "num_tags": self.num_tags,
                "tags": None if self.tags is None else list(self.tags),
            }
        )
        return config


def _flat_rows(x):
    """`(values, row_splits, static batch)` of a rank-1 (one row) or rank-2
    (dense or ragged) tensor; `row_splits` int32 `[batch + 1]`."""
    if x.shape.rank == 1:
        return x, tf.stack([0, tf.size(x)]), 1
    if isinstance(x, tf.RaggedTensor):
        return x.values, tf.cast(x.row_splits, tf.int32), x.shape[0]
    shape = tf.shape(x)
    splits = tf.range(shape[0] + 1) * shape[1]
    return tf.reshape(x, [-1]), splits, x.shape[0]


def _first(condition):
    """The index of the first True entry of a 1-D bool tensor (0 if none)."""
    return tf.cast(tf.argmax(tf.cast(condition, tf.int32)), tf.int32)


def token_classification_inputs(features):
    """Splits `WordLabelAligner`'s features into Keras' `(x, y, sample_weight)`.

    Args:
        features: the aligner's output dict (batched or not).

    Returns:
        `(x, y, sample_weight)` with `x = {"token_ids", "padding_mask",
        "label_mask"}` (int32, bool, bool `[batch, L]`), `y` the int32 tag
        ids `[batch, L]` (0 where not labelled) and `sample_weight` float32
        `[batch, L]` (equal to `label_mask`); just `x` when the features
        hold no labels (prediction). `word_ids` and the word counts stay
        behind: keep the features to map predictions back to words.

    Example:

    >>> features = {"token_ids": tf.constant([2, 7, 3]),
    ...             "padding_mask": tf.constant([True, True, True]),
    ...             "label_mask": tf.constant([False, True, False]),
    ...             "word_ids": tf.constant([-1, 0, -1]),
    ...             "labels": tf.constant([0, 4, 0]),
    ...             "sample_weight": tf.constant([0.0, 1.0, 0.0])}
    >>> x, y, sample_weight = token_classification_inputs(features)
    >>> sorted(x), y.numpy().tolist(), sample_weight.numpy().tolist()
    (['label_mask', 'padding_mask', 'token_ids'], [0, 4, 0], [0.0, 1.0, 0.0])
    """
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
        raise ValueError(
            f"`features` must be WordLabelAligner's output; missing keys {missing}. "
            f"Received keys: {sorted(features)}."
        )
    x = {key: features[key] for key in FEATURE_KEYS}
    if "labels" not in features:
        return x
    return x, features["labels"], features["sample_weight"]


def word_tags_from_token_tags(token_tag_ids, word_ids, num_words, fill_value=0):
    """Maps token-level tag ids back to one tag per word.

    A word's tag is the tag at its first token (the one `WordLabelAligner`
    labels with first-piece labelling; with all-pieces labelling the first
    piece holds the word's own tag too). Words without any token, i.e. those
    cut off by truncation (`word id >= num_words_kept`), and the slots past
    a sentence's last word get `fill_value`.

    Static shapes, no Python per token: usable eagerly, in `tf.data` and
    under XLA.

    Args:
        token_tag_ids: int tensor `[batch, L]` or `[L]`, e.g. the argmax of
            a token classifier's logits, or the aligner's `"labels"`.
        word_ids: int tensor of the same shape, the aligner's `"word_ids"`
            (-1 for specials and padding).
        num_words: int >= 1, the width of the output: at least the longest
            sentence's word count (words with a higher id are dropped).
        fill_value: int, the tag of words without a token. Defaults to 0
            (the `"O"` id of `kobjectives.data.tag_set`), so that in
            evaluation a truncated word counts as predicted `"O"`.

    Returns:
        int32 `[batch, num_words]` (or `[num_words]`). Row `i`'s first
        `num_words[i]` entries (the aligner's output) are its words' tags.

    Example:

    >>> word_ids = tf.constant([[-1, 0, 1, 1, 2, -1], [-1, 0, 0, 1, -1, -1]])
    >>> predicted = tf.constant([[0, 3, 1, 2, 0, 0], [0, 5, 6, 0, 0, 0]])
    >>> word_tags_from_token_tags(predicted, word_ids, num_words=4).numpy().tolist()
    [[3, 1, 0, 0], [5, 0, 0, 0]]
    """
    check_int("num_words", num_words, minimum=1)
    check_int("fill_value", fill_value)
    token_tag_ids = tf.convert_to_tensor(token_tag_ids)
    word_ids = tf.convert_to_tensor(word_ids)
    if not token_tag_ids.dtype.is_integer or not word_ids.dtype.is_integer:
        raise ValueError(
            "`token_tag_ids` and `word_ids` must be integer tensors (take the "
            f"argmax of logits first). Received dtypes {token_tag_ids.dtype.name} "
            f"and {word_ids.dtype.name}."
        )
    if (
        token_tag_ids.shape.rank not in (1, 2)
        or not token_tag_ids.shape.is_compatible_with(word_ids.shape)
    ):
        raise ValueError(
            "`token_tag_ids` and `word_ids` must have the same shape, [batch, L] "
            f"or [L]. Received {token_tag_ids.shape} and {word_ids.shape}."
        )
    unbatched = token_tag_ids.shape.rank == 1
    if unbatched:
        token_tag_ids, word_ids = token_tag_ids[None], word_ids[None]
    token_tag_ids = tf.cast(token_tag_ids, tf.int32)
    word_ids = tf.cast(word_ids, tf.int32)
    previous = tf.pad(word_ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    first = (word_ids >= 0) & tf.not_equal(word_ids, previous)
    # One-hot of each word's first token ([batch, L, num_words]); the others are all zero.
    slots = tf.one_hot(tf.where(first, word_ids, -1), num_words, dtype=tf.int32)
    found = tf.reduce_max(slots, axis=1) > 0
    tags = tf.reduce_sum(slots * token_tag_ids[:, :, None], axis=1)
    tags = tf.where(found, tags, tf.cast(fill_value, tf.int32))
    return tags[0] if unbatched else tags
