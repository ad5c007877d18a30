"""tf.data pipelines that turn documents into an objective's training batches."""

import keras_hub
import tensorflow as tf


def chunk_token_ids(token_ids, chunk_length):
    """Splits every row of a ragged batch into consecutive chunks.

    A document longer than one window becomes several training sequences
    instead of being truncated, so no text is thrown away. Empty rows yield no
    chunk.

    Args:
        token_ids: `tf.RaggedTensor` `[batch, None]` of token ids.
        chunk_length: int, the most tokens in one chunk.

    Returns:
        `tf.RaggedTensor` `[num_chunks, None]`: the rows' chunks in order, each
        at most `chunk_length` long (a row's last chunk may be shorter).

    Example:

    >>> ids = tf.ragged.constant([[1, 2, 3, 4, 5], [], [6, 7]])
    >>> chunk_token_ids(ids, 2).to_list()
    [[1, 2], [3, 4], [5], [6, 7]]
    """
    lengths = token_ids.row_lengths()
    num_chunks = (lengths + chunk_length - 1) // chunk_length
    starts = tf.ragged.range(num_chunks) * chunk_length
    chunk_lengths = tf.minimum(
        tf.cast(chunk_length, lengths.dtype),
        tf.repeat(lengths, num_chunks) - starts.flat_values,
    )
    return tf.RaggedTensor.from_row_lengths(token_ids.flat_values, chunk_lengths)


def packed_windows_dataset(
    documents, tokenizer, sequence_length, batch_size, shuffle=True, seed=0
):
    """Documents to batches of packed token windows, the input of most objectives.

    Documents are tokenized in batches, split into windows of
    `sequence_length - 2` tokens (`chunk_token_ids`: long documents become
    several windows instead of being truncated), shuffled (seeded, a new
    order every epoch), batched with `drop_remainder=True` (static shapes) and
    packed as `[CLS] tokens [SEP] [PAD]...` by keras-hub's `StartEndPacker`,
    the layout keras-hub's `BertTextClassifierPreprocessor` produces at
    serving time. Everything runs batched inside `tf.data`.

    Args:
        documents: list of str.
        tokenizer: a `keras_hub.models.BertTokenizer` (or any WordPiece
            tokenizer with `start_token_id`, `end_token_id`, `pad_token_id`).
        sequence_length: int, the packed length including [CLS] and [SEP].
        batch_size: int, the global batch size.
        shuffle: shuffle documents and windows.
        seed: int seed of the shuffles.

    Returns:
        A `tf.data.Dataset` of `{"token_ids", "padding_mask", "segment_ids"}`
        `[batch_size, sequence_length]` (int32; `padding_mask` bool).
    """
    if not documents:
        raise ValueError("`documents` is empty: there is no text to train on.")
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.start_token_id,
        end_value=tokenizer.end_token_id,
        pad_value=tokenizer.pad_token_id,
        return_padding_mask=True,
    )

    def tokenize(texts):
        return chunk_token_ids(tokenizer(texts), sequence_length - 2)

    def pack(token_ids):
        token_ids, padding_mask = packer(token_ids)
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": tf.zeros_like(token_ids),
        }

    dataset = tf.data.Dataset.from_tensor_slices(list(documents))
    if shuffle:
        dataset = dataset.shuffle(len(documents), seed=seed)
    dataset = dataset.batch(256).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.unbatch()
    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed + 1)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)


def finish(dataset, cache=False, repeat=False):
    """Optionally caches (fixed random draws after the first pass) and
    repeats a dataset, then prefetches."""
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


MASKED_LM_X_KEYS = ("token_ids", "padding_mask", "segment_ids", "mask_positions")
"""The inputs of a masked LM (`kobjectives.objectives.MaskedLanguageModel`)."""

ELECTRA_X_KEYS = MASKED_LM_X_KEYS + ("mask_ids", "mask_weights")
"""The inputs of ELECTRA (`kobjectives.objectives.ElectraPretrainer`): the
masked LM's and its targets."""

PERMUTATION_LM_X_KEYS = ("token_ids", "padding_mask", "segment_ids", "perm_mask",
                         "target_mapping")
"""The inputs of a permutation LM (`kobjectives.objectives.PermutationLanguageModel`)."""


def masked_lm_dataset(
    documents,
    tokenizer,
    masker,
    sequence_length,
    batch_size,
    shuffle=True,
    repeat=False,
    seed=0,
    cache=False,
    x_keys=MASKED_LM_X_KEYS,
    target_keys=("mask_ids", "mask_weights"),
):
    """Documents to `(x, mask_ids, mask_weights)` batches for masked LM
    (or any masker's `(x, targets, weights)`).

    The packed windows of `packed_windows_dataset`, masked by `masker` with a
    fresh seeded mask per element and epoch (`MaskedLMMasker.map_over`).
    `x_keys` and `target_keys` name the masker's outputs that become `x`
    and `(y, sample_weight)`: a `kobjectives.layers.PermutationLMMasker`
    gives XLNet's batches with `x_keys=PERMUTATION_LM_X_KEYS` and
    `target_keys=("target_ids", "target_weights")`; with `target_keys=None`
    the batches are `x` alone (ELECTRA: `ElectraPretrainer` reads its
    targets from `x`, `x_keys=ELECTRA_X_KEYS`).

    Args:
        documents: list of str.
        tokenizer: a `keras_hub.models.BertTokenizer` (or any WordPiece
            tokenizer with `start_token_id`, `end_token_id`, `pad_token_id`).
        masker: a `kobjectives.layers.MaskedLMMasker` (or any layer with
            `map_over(dataset, seed=..., num_parallel_calls=...)`).
        sequence_length: int, the packed length including [CLS] and [SEP].
        batch_size: int, the global batch size.
        shuffle: shuffle documents and windows (seeded, new order each epoch).
        repeat: repeat forever (for `fit(steps_per_epoch=...)`).
        seed: int seed of the shuffles and the masks.
        cache: cache the masked batches after the first pass, so every pass
            sees the same masks (use for validation).
        x_keys: the masker's outputs that make `x`.
        target_keys: the masker's outputs that are `(y, sample_weight)`, or
            None (batches of `x` alone).

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)` with
        `x = {"token_ids", "padding_mask", "segment_ids", "mask_positions"}`,
        `y = mask_ids`, `sample_weight = mask_weights` (by default), all of
        static shape; of `x` alone with `target_keys=None`.
    """

    def split(features):
        x = {name: features[name] for name in x_keys}
        if target_keys is None:
            return x
        target_key, weight_key = target_keys
        return x, features[target_key], features[weight_key]

    dataset = packed_windows_dataset(
        documents, tokenizer, sequence_length, batch_size, shuffle=shuffle, seed=seed
    )
    dataset = masker.map_over(dataset, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE)
    return finish(dataset, cache=cache, repeat=repeat)


def _text_packer(tokenizer, sequence_length):
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.start_token_id,
        end_value=tokenizer.end_token_id,
        pad_value=tokenizer.pad_token_id,
        return_padding_mask=True,
    )

    def encode(texts):
        token_ids, padding_mask = packer(tokenizer(texts))
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": tf.zeros_like(token_ids),
        }

    return encode


def tokenized_texts(texts, tokenizer, sequence_length, batch_size=256):
    """Strings to packed `{"token_ids", "padding_mask", "segment_ids"}` batches.

    Each text becomes `[CLS] tokens [SEP] [PAD]...`, truncated to
    `sequence_length`, in order (no shuffling, the last batch may be smaller):
    for embedding texts at evaluation time.
    """
    encode = _text_packer(tokenizer, sequence_length)
    dataset = tf.data.Dataset.from_tensor_slices(list(texts)).batch(batch_size)
    return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def augmented_views(texts, tokenizer, sequence_length, augmenter, batch_size=250, seed=7):
    """Texts and one fixed augmented view of each, for evaluation.

    The texts are packed as `tokenized_texts` does and batch `i` goes
    through `augmenter` with the stateless seed `[i, seed]`, so the views
    are the same in every call (and every run).

    Args:
        texts: list of str.
        tokenizer: a keras-hub WordPiece tokenizer (`BertTokenizer`).
        sequence_length: int, the packed length.
        augmenter: a `kobjectives.layers.TextAugmenter`.
        batch_size: int, the texts per batch.
        seed: int, the second word of every batch's seed.

    Returns:
        A list of `(anchor, positive)` pairs of packed batches (dicts of int
        `[batch, sequence_length]` `token_ids`, `padding_mask`, ...): the
        augmenter's two independent views of each text.

    Example:

    >>> import keras_hub
    >>> from kobjectives.layers import TextAugmenter
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    >>> tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    >>> augmenter = TextAugmenter(len(vocabulary), deletion_rate=0.5,
    ...                           unselectable_token_ids=(0, 1, 2, 3, 4))
    >>> views = augmented_views(["a b c", "c b a", "b"], tokenizer, 6, augmenter, batch_size=2)
    >>> [tuple(anchor["token_ids"].shape) for anchor, _ in views]
    [(2, 6), (1, 6)]
    >>> again = augmented_views(["a b c", "c b a", "b"], tokenizer, 6, augmenter, batch_size=2)
    >>> bool((again[0][1]["token_ids"] == views[0][1]["token_ids"]).numpy().all())
    True
    """
    views = []
    for index, batch in enumerate(tokenized_texts(texts, tokenizer, sequence_length, batch_size)):
        out = augmenter(batch, seed=tf.constant([index, seed]))
        views.append((out["anchor"], out["positive"]))
    return views


def contrastive_dataset(
    texts,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    repeat=False,
    seed=0,
    augmenter=None,
):
    """Texts to `x` batches for `kobjectives.objectives.ContrastiveEncoder`.

    Three forms, by `texts`:

    - a list of str: unsupervised SimCSE, `x = {"anchor": texts}` (the model
      encodes each text twice, dropout being the augmentation);
    - a list of str with `augmenter` (a `kobjectives.layers.TextAugmenter`):
      `x = {"anchor": view1, "positive": view2}`, two fresh seeded views per
      element and epoch (`augmenter.map_over`);
    - a dict of equal-length lists with keys `"anchor"`, `"positive"` and
      optionally `"negative"` (supervised SimCSE on NLI triples, see
      `kobjectives.data.read_nli_triples`): rows stay together.

    Every text is packed as `[CLS] tokens [SEP] [PAD]...` (truncated to
    `sequence_length`) with keras-hub's `StartEndPacker`; batches are
    `drop_remainder=True`, so every shape is static.

    Args:
        texts: list of str, or dict of lists of str (see above).
        tokenizer: a keras-hub WordPiece tokenizer (`BertTokenizer`).
        sequence_length: int, the packed length.
        batch_size: int, the global batch size (>= 2: the in-batch texts are
            the negatives).
        shuffle: seeded shuffle, a new order every epoch.
        repeat: repeat forever.
        seed: int seed of the shuffle and the augmentation.
        augmenter: optional `TextAugmenter` (single-column texts only).

    Returns:
        A `tf.data.Dataset` of `x` dicts (no `y`).
    """
    if isinstance(texts, dict):
        if "anchor" not in texts or "positive" not in texts:
            raise ValueError(
                "Column texts need 'anchor' and 'positive' (and optionally "
                f"'negative'). Received keys: {sorted(texts)}"
            )
        unknown = sorted(set(texts) - {"anchor", "positive", "negative"})
        if unknown:
            raise ValueError(f"Unknown text columns {unknown}; valid: anchor, positive, negative.")
        lengths = {key: len(value) for key, value in texts.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"The text columns must have equal lengths. Received {lengths}.")
        if augmenter is not None:
            raise ValueError("`augmenter` makes the views of single-column texts; pass a list of str.")
        columns = {key: list(value) for key, value in texts.items()}
        count = lengths["anchor"]
    else:
        columns = {"anchor": list(texts)}
        count = len(columns["anchor"])
    if count == 0:
        raise ValueError("`texts` is empty: there is no text to train on.")
    if batch_size < 2:
        raise ValueError(
            "`batch_size` must be >= 2: the other texts of the batch are the "
            f"in-batch negatives. Received: batch_size={batch_size}"
        )
    if count < batch_size:
        raise ValueError(
            f"{count} texts do not fill one batch of {batch_size}. Give more data "
            "or a smaller batch size."
        )
    encode = _text_packer(tokenizer, sequence_length)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    def encode_columns(batch):
        # The packer loses the static batch size the batching gave; restore it.
        return tf.nest.map_structure(
            lambda t: tf.ensure_shape(t, [batch_size, *t.shape[1:]]),
            {key: encode(value) for key, value in batch.items()},
        )

    dataset = dataset.map(encode_columns, num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        dataset = dataset.map(lambda x: x["anchor"])
        dataset = augmenter.map_over(dataset, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


def causal_lm_dataset(
    documents,
    tokenizer,
    packer,
    batch_size,
    shuffle=True,
    repeat=False,
    seed=0,
    cache=False,
    drop_remainder=True,
    documents_per_group=256,
):
    """Documents to packed `x` batches for `kobjectives.objectives.CausalLanguageModel`.

    Documents are tokenized in groups of `documents_per_group`, packed
    across the documents of a group into windows by `packer` (a
    `kobjectives.layers.SequencePacker`: no padding except the tail of each
    group's last window), shuffled as windows (seeded, a new order every
    epoch) and batched. With `documents_per_group=1` every document is
    packed alone (its windows start at its first token, the last one
    padded): no window holds two documents, as serving sees a text.

    Args:
        documents: list of str.
        tokenizer: a keras-hub tokenizer mapping strings to ragged ids.
        packer: a `SequencePacker`.
        batch_size: int, windows per batch.
        shuffle: shuffle documents and windows.
        repeat: repeat forever.
        seed: int seed of the shuffles.
        cache: cache the batches after the first pass.
        drop_remainder: drop the last, smaller batch (static shapes).
        documents_per_group: int >= 1, documents packed together (1: each
            document alone).

    Returns:
        A `tf.data.Dataset` of `{"token_ids", "padding_mask",
        "segment_ids"}` `[batch_size, packer.sequence_length]` (no `y`: the
        objective derives the next-token targets).

    Raises:
        ValueError: no documents, no document with any text, or
            `documents_per_group < 1`.

    Example:

    >>> import keras_hub
    >>> from kobjectives.layers import SequencePacker
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])
    >>> packer = SequencePacker(sequence_length=4, end_token_id=3, start_token_id=2)
    >>> alone = causal_lm_dataset(["a b c a b", "c", "a a"], tokenizer, packer, batch_size=8,
    ...                           shuffle=False, drop_remainder=False, documents_per_group=1)
    >>> next(iter(alone))["token_ids"].numpy().tolist()
    [[2, 5, 6, 7], [5, 6, 3, 0], [2, 7, 3, 0], [2, 5, 5, 3]]
    """
    documents = list(documents)
    if not any(text.strip() for text in documents):
        raise ValueError(
            "`documents` is empty (or every document is blank): there is no "
            "text to pack. Give at least one non-empty document."
        )
    if isinstance(documents_per_group, bool) or not isinstance(documents_per_group, int) \
            or documents_per_group < 1:
        raise ValueError(
            f"`documents_per_group` must be an int >= 1. Received: {documents_per_group!r}."
        )
    dataset = tf.data.Dataset.from_tensor_slices(documents)
    if shuffle:
        dataset = dataset.shuffle(len(documents), seed=seed)
    dataset = dataset.batch(documents_per_group).map(
        lambda texts: packer(tokenizer(texts)), num_parallel_calls=tf.data.AUTOTUNE
    )
    dataset = dataset.unbatch()
    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed + 1)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return finish(dataset, cache=cache, repeat=repeat)
