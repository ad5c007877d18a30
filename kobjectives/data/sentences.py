"""Documents as sentences, and the `tf.data` pipeline of sentence-pair
pretraining (BERT NSP / ALBERT SOP + masked LM)."""

import re

import tensorflow as tf

# A sentence ends after `.`, `!` or `?` (optionally closed by a quote or a
# bracket) followed by whitespace and something that can start a sentence.
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])([\"')\]]?)\s+(?=[A-Z(\[\"'`])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def split_document_sentences(document):
    """Splits one document into its sentences, in order.

    A light rule-based splitter for prose and docstrings: paragraphs
    (blank-line separated; their wrapped lines are joined) always end a
    sentence; inside a paragraph a sentence ends after `.`, `!` or `?`
    (optionally followed by a closing quote or bracket) when whitespace and
    an upper-case letter, an opening bracket or a quote follow.
    Whitespace is normalized; nothing is dropped but empty pieces.

    Args:
        document: str.

    Returns:
        list of str, the sentences in document order.

    Example:

    >>> split_document_sentences("Open a file. Read it!\\n\\nThen close it")
    ['Open a file.', 'Read it!', 'Then close it']
    """
    if not isinstance(document, str):
        raise TypeError(
            "`document` must be a str. Received: " f"{type(document).__name__}."
        )
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(document):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        start = 0
        for match in _SENTENCE_BOUNDARY.finditer(paragraph):
            end = match.start() + len(match.group(1))
            sentences.append(paragraph[start:end].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def sentence_documents(documents, min_sentences=1):
    """Splits documents into sentences, keeping those with enough of them.

    Args:
        documents: iterable of str.
        min_sentences: int >= 1; documents with fewer sentences are dropped
            (use 2 for sentence-order prediction, and for next-sentence
            prediction where every pair should end on a sentence boundary).

    Returns:
        list of lists of str, one list of sentences per kept document.

    Raises:
        ValueError: `min_sentences` < 1, or no document is kept.
    """
    if isinstance(min_sentences, bool) or not isinstance(min_sentences, int) or min_sentences < 1:
        raise ValueError(
            f"`min_sentences` must be an int >= 1. Received: min_sentences={min_sentences!r}."
        )
    documents = list(documents)
    kept = [s for s in map(split_document_sentences, documents) if len(s) >= min_sentences]
    if not kept:
        raise ValueError(
            f"None of the {len(documents)} documents has {min_sentences} or more "
            "sentences. Give longer documents (paragraphs, not single lines) or "
            "lower `min_sentences`."
        )
    return kept


def tokenize_sentence_batch(tokenizer, sentences):
    """Tokenizes a ragged batch of sentences `[documents, (sentences)]` of
    strings into ids `[documents, (sentences), (tokens)]` (int32)."""
    token_ids = tokenizer(sentences.flat_values)
    if not isinstance(token_ids, tf.RaggedTensor):
        raise ValueError(
            "The tokenizer must return ragged token ids (no `sequence_length`)."
        )
    token_ids = token_ids.with_flat_values(tf.cast(token_ids.flat_values, tf.int32))
    return tf.RaggedTensor.from_row_splits(
        token_ids, tf.cast(sentences.row_splits, token_ids.row_splits.dtype)
    )


def sentence_pair_dataset(
    documents,
    tokenizer,
    generator,
    masker,
    batch_size,
    shuffle=True,
    repeat=False,
    seed=0,
    cache=False,
    input_context=None,
):
    """Sentence-split documents to `(x, y)` batches of BERT / ALBERT pretraining.

    Documents are shuffled (seeded, new order each epoch), batched as ragged
    string tensors, tokenized, turned into one NSP / SOP pair each by
    `generator` (`kobjectives.layers.SentencePairGenerator`; the random next
    segments come from the other documents of the batch), and masked by
    `masker` (`kobjectives.layers.MaskedLMMasker`), each with a fresh seeded
    draw per batch and epoch.

    Args:
        documents: list of lists of str (`sentence_documents`).
        tokenizer: a keras-hub tokenizer returning ragged ids.
        generator: a `SentencePairGenerator`.
        masker: a `MaskedLMMasker` (its `unselectable_token_ids` should hold
            `[CLS]`, `[SEP]` and `[PAD]`).
        batch_size: int >= 2 (per replica with `input_context`).
        shuffle: shuffle the documents.
        repeat: repeat forever.
        seed: int seed of the shuffle, the pairs and the masks.
        cache: cache after the first pass (fixed pairs and masks, for
            validation).
        input_context: optional `tf.distribute.InputContext`: the documents
            are sharded by its `input_pipeline_id`.

    Returns:
        A `tf.data.Dataset` of `(x, y)`: `x = {"token_ids", "segment_ids",
        "padding_mask", "mask_positions"}`, `y = {"mask_ids",
        "mask_weights", "pair_labels"}`, all of static shape.
    """
    documents = list(documents)
    if not documents:
        raise ValueError("`documents` is empty: there is no text to train on.")
    if batch_size < 2:
        raise ValueError(
            f"`batch_size` must be >= 2 (NSP draws random segments from the other "
            f"documents of the batch). Received: batch_size={batch_size}."
        )
    dataset = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(documents))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
    if shuffle:
        dataset = dataset.shuffle(len(documents), seed=seed)
    dataset = dataset.ragged_batch(batch_size, drop_remainder=True)
    dataset = dataset.map(
        lambda sentences: tokenize_sentence_batch(tokenizer, sentences),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = generator.map_over(dataset, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = masker.map_over(dataset, seed=seed + 1, num_parallel_calls=tf.data.AUTOTUNE)

    def split(features):
        x = {
            k: features[k]
            for k in ("token_ids", "segment_ids", "padding_mask", "mask_positions")
        }
        y = {k: features[k] for k in ("mask_ids", "mask_weights", "pair_labels")}
        return x, y

    dataset = dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)
