"""tf.data pipelines for denoising seq2seq pretraining (T5 span corruption,
BART noising): documents to `(x, target_ids, target_weights)` batches of
static shape for `kobjectives.objectives.DenoisingSeq2Seq`.

- `pack_token_ids`: T5's `reduce_concat_tokens` + `split_tokens`, short
  documents filling a window together.
- `token_windows`: documents to 1-D token windows (split or packed).
- `span_corruption_dataset`: windows corrupted by a
  `kobjectives.layers.SpanCorruption` (the layer builds the encoder input
  and the target).
- `bart_noising_dataset`: windows packed as `[start] tokens [end]` (the
  target) and noised by a `kobjectives.layers.BartNoising` (the encoder
  input).

Both yield `x = {"encoder_token_ids", "encoder_padding_mask", "target_ids",
"target_padding_mask"}`, `y = target_ids` and `sample_weight =
target_padding_mask` as float32.
"""

import keras_hub
import tensorflow as tf

from kobjectives.data.pipelines import chunk_token_ids
from kobjectives.data.pipelines import finish

# Documents tokenized per map call, as the other pipelines of kobjectives.data.
_TOKENIZE_BATCH = 256
# The window shuffle buffer (after the documents are shuffled).
_WINDOW_SHUFFLE = 4096

SEQ2SEQ_INPUTS = ("encoder_token_ids", "encoder_padding_mask", "target_ids", "target_padding_mask")
"""The keys of `x` that the pipelines yield (`DenoisingSeq2Seq`'s inputs)."""


def pack_token_ids(token_ids, window_length):
    """Concatenates the rows of a ragged batch and cuts the stream into
    windows of `window_length` tokens (the last may be shorter), as T5's
    `reduce_concat_tokens` + `split_tokens`: short documents fill a window
    together instead of leaving it half padding.

    Args:
        token_ids: `tf.RaggedTensor` `[batch, None]` of token ids.
        window_length: int, the tokens of one window.

    Returns:
        `tf.RaggedTensor` `[num_windows, None]`, every window
        `window_length` long but the last.

    Reference:
        Raffel et al., 2020, https://arxiv.org/abs/1910.10683 (T5's
        `reduce_concat_tokens` and `split_tokens` preprocessors).

    Example:

    >>> pack_token_ids(tf.ragged.constant([[1, 2, 3], [4], [5, 6]]), 4).to_list()
    [[1, 2, 3, 4], [5, 6]]
    """
    stream = token_ids.flat_values
    return chunk_token_ids(
        tf.RaggedTensor.from_row_lengths(stream, tf.shape(stream, out_type=tf.int64)),
        window_length,
    )


def token_windows(documents, tokenizer, window_length, shuffle=True, seed=0, pack=False):
    """Documents to 1-D token windows of 2..`window_length` tokens.

    Long documents become several windows (`chunk_token_ids`); one-token
    leftovers are dropped. With `pack`, the documents of each group of 256
    are concatenated first (`pack_token_ids`), so the windows are full.

    Args:
        documents: non-empty list of str.
        tokenizer: a keras-hub tokenizer mapping strings to ragged ids.
        window_length: int, the most tokens of a window.
        shuffle: shuffle the documents, then the windows (seeded, a new
            order every epoch).
        seed: int seed of the shuffles (`seed` and `seed + 1`).
        pack: concatenate the documents before cutting windows.

    Returns:
        A `tf.data.Dataset` of int `[None]` windows.

    Raises:
        ValueError: `documents` is empty.

    Example:

    >>> import keras_hub
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "a", "b"], oov_token="[UNK]")
    >>> windows = token_windows(["a b a", "b"], tokenizer, 2, shuffle=False, pack=True)
    >>> [w.tolist() for w in windows.as_numpy_iterator()]
    [[2, 3], [2, 3]]
    """
    if not documents:
        raise ValueError("There are no documents to train on: the split is empty.")
    dataset = tf.data.Dataset.from_tensor_slices(list(documents))
    if shuffle:
        dataset = dataset.shuffle(len(documents), seed=seed)
    window = pack_token_ids if pack else chunk_token_ids
    dataset = dataset.batch(_TOKENIZE_BATCH).map(
        lambda texts: window(tokenizer(texts), window_length),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.unbatch().filter(lambda ids: tf.size(ids) >= 2)
    if shuffle:
        dataset = dataset.shuffle(_WINDOW_SHUFFLE, seed=seed + 1)
    return dataset


def _split(features):
    x = {key: features[key] for key in SEQ2SEQ_INPUTS}
    return x, features["target_ids"], tf.cast(features["target_padding_mask"], tf.float32)


def span_corruption_dataset(documents, tokenizer, corruption, batch_size, *, shuffle=True,
                            repeat=False, seed=0, cache=False, pack_documents=False):
    """Documents to T5 span-corruption batches for `DenoisingSeq2Seq`.

    Windows of `corruption.sequence_length` raw tokens (`token_windows`)
    are batched (`drop_remainder`) and corrupted by `corruption` with a
    fresh seeded draw per batch and epoch (`SpanCorruption.map_over`).

    Args:
        documents: non-empty list of str.
        tokenizer: a keras-hub tokenizer mapping strings to ragged ids.
        corruption: a `kobjectives.layers.SpanCorruption` with
            `sequence_length` (the raw tokens read per sequence) and
            `inputs_length` set.
        batch_size: int, sequences per batch.
        shuffle: shuffle documents and windows.
        repeat: repeat forever (for `fit(steps_per_epoch=...)`).
        seed: int seed of the shuffles and the corruption.
        cache: cache the batches after the first pass (the same corruption
            every pass: for validation).
        pack_documents: concatenate documents into full windows.

    Returns:
        A `tf.data.Dataset` of `(x, target_ids, target_weights)`:
        encoder inputs `[batch_size, corruption.inputs_length]`, targets
        `[batch_size, target_length]` (`corruption.output_lengths()`).

    Raises:
        ValueError: no documents, or `corruption` has no `sequence_length`.

    Example:

    >>> from kobjectives.layers import SpanCorruption
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(oov_token="[UNK]",
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "<extra_id_0>"])
    >>> corruption = SpanCorruption(
    ...     vocabulary_size=tokenizer.vocabulary_size(), sequence_length=12,
    ...     inputs_length=12, eos_token_id=3, seed=0)
    >>> dataset = span_corruption_dataset(["a b c " * 4, "c b a " * 4], tokenizer,
    ...                                   corruption, 2, shuffle=False)
    >>> x, target_ids, target_weights = next(iter(dataset))
    >>> x["encoder_token_ids"].numpy().tolist()  # "c a" of row 0 is the sentinel 7
    [[4, 5, 6, 4, 5, 7, 5, 6, 4, 5, 6, 3], [6, 7, 6, 5, 4, 6, 5, 4, 6, 5, 4, 3]]
    >>> target_ids.numpy().tolist()
    [[7, 6, 4, 3], [7, 5, 4, 3]]
    """
    raw_length = getattr(corruption, "sequence_length", None)
    if not raw_length:
        raise ValueError(
            "`corruption` needs a `sequence_length` (the raw tokens read per sequence): "
            "build the SpanCorruption with `sequence_length=`.")
    windows = token_windows(documents, tokenizer, raw_length, shuffle, seed, pack=pack_documents)
    batches = windows.ragged_batch(batch_size, drop_remainder=True)
    dataset = corruption.map_over(batches, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_split, num_parallel_calls=tf.data.AUTOTUNE)
    return finish(dataset, cache=cache, repeat=repeat)


def bart_noising_dataset(documents, tokenizer, noising, batch_size, *, start_token_id,
                         end_token_id, padding_token_id=0, shuffle=True, repeat=False, seed=0,
                         cache=False, pack_documents=False):
    """Documents to BART denoising batches for `DenoisingSeq2Seq`: the
    target is the window packed as `[start] tokens [end] [pad]...`
    (keras-hub's `StartEndPacker`, `noising.sequence_length` long), the
    encoder input its noised copy (`noising`, one stateless seed per batch
    from `tf.data.Dataset.random(seed)`, new every epoch).

    Args:
        documents: non-empty list of str.
        tokenizer: a keras-hub tokenizer mapping strings to ragged ids.
        noising: a `kobjectives.layers.BartNoising`; its `sequence_length`
            is the encoder and target length.
        batch_size: int, sequences per batch.
        start_token_id: int, the target's first token (`[CLS]`, `<s>`).
        end_token_id: int, the target's last token (`[SEP]`, `</s>`).
        padding_token_id: int, the padding id.
        shuffle: shuffle documents and windows.
        repeat: repeat forever.
        seed: int seed of the shuffles and the noise.
        cache: cache the batches after the first pass (the same noise every
            pass: for validation).
        pack_documents: concatenate documents into full windows.

    Returns:
        A `tf.data.Dataset` of `(x, target_ids, target_weights)`, every
        tensor `[batch_size, noising.sequence_length]`.

    Raises:
        ValueError: no documents, or a sequence length under 3.

    Example:

    >>> from kobjectives.layers import BartNoising
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(oov_token="[UNK]",
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "b", "c"])
    >>> noising = BartNoising(
    ...     mask_token_id=4, sequence_length=8, sentence_end_token_ids=[5],
    ...     unselectable_token_ids=(0, 2, 3, 4), seed=0)
    >>> dataset = bart_noising_dataset(["a b . c a .", "b c . a ."], tokenizer, noising, 2,
    ...                                start_token_id=2, end_token_id=3, shuffle=False)
    >>> x, target_ids, target_weights = next(iter(dataset))
    >>> target_ids.numpy().tolist()
    [[2, 6, 7, 5, 8, 6, 5, 3], [2, 7, 8, 5, 6, 5, 3, 0]]
    >>> x["encoder_token_ids"].numpy().tolist()  # "a b" of row 0 infilled by one [MASK]
    [[2, 4, 5, 8, 6, 5, 3, 0], [2, 6, 5, 7, 4, 3, 0, 0]]
    >>> target_weights.numpy().tolist()[1]
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    length = noising.sequence_length
    if length < 3:
        raise ValueError(
            f"`noising.sequence_length` = {length} leaves no token between the start and "
            "end tokens; use at least 3.")
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=length, start_value=start_token_id, end_value=end_token_id,
        pad_value=padding_token_id, return_padding_mask=True,
    )

    def pack(ids):
        token_ids, mask = packer(ids)
        return token_ids, mask

    windows = token_windows(documents, tokenizer, length - 2, shuffle, seed, pack=pack_documents)
    batches = windows.ragged_batch(batch_size, drop_remainder=True).map(pack)

    def noise(original, mask, r):
        noised = noising(original, seed=tf.stack([r, tf.constant(0, tf.int64)]))
        return {
            "encoder_token_ids": noised["token_ids"],
            "encoder_padding_mask": noised["padding_mask"],
            "target_ids": original,
            "target_padding_mask": mask,
        }

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((batches, seeds)).map(
        lambda pair, r: noise(pair[0], pair[1], r), num_parallel_calls=tf.data.AUTOTUNE
    )
    dataset = dataset.map(_split, num_parallel_calls=tf.data.AUTOTUNE)
    return finish(dataset, cache=cache, repeat=repeat)
