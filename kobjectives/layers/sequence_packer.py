"""`SequencePacker`: documents packed into fixed-length windows for causal LM."""

import keras
import tensorflow as tf

from kobjectives.layers.arguments import check_id
from kobjectives.layers.arguments import check_int
from kobjectives.layers.token_inputs import check_token_ids


@keras.saving.register_keras_serializable(package="kobjectives")
class SequencePacker(keras.layers.Layer):
    """Packs documents, separated by an end token, into fixed-length windows.

    The documents of a batch are concatenated into one token stream, each
    as `[start] tokens [end]` (`start_token_id` optional), and the stream
    is cut into consecutive windows of `sequence_length` tokens. A window
    may hold the end of one document and the beginning of the next, so no
    position is spent on padding except in the batch's last window (which
    is padded, or dropped with `drop_remainder=True`). Long documents
    continue into the next window instead of being truncated. Every position
    gets the index of its document inside its window (`segment_ids`: 0 for
    the first document of a window, 1 for the next, ...), so a causal LM can
    reset its loss at document boundaries (`kobjectives.ops.causal_lm_targets`).
    Empty documents are skipped.

    This is the "packing" of GPT-style pretraining (documents joined with
    `<|endoftext|>` and chunked). keras-hub's `StartEndPacker` pads or
    truncates each sequence on its own; this layer packs across sequences.
    It is deterministic (no random draws, so it takes no seed): shuffle the
    documents before it and the windows after it. It runs inside
    `tf.data.Dataset.map`, on a batch of documents or on a single one.

    Args:
        sequence_length: int >= 2, the window length.
        end_token_id: int, appended to every document (the separator).
        start_token_id: optional int, prepended to every document, so the
            first token of a document is a target too (predicted from the
            start token, inside the same document).
        pad_token_id: int, fills the last window's tail. Defaults to 0.
            The three ids may be equal (GPT-2 uses `<|endoftext|>` for all):
            `padding_mask` and `segment_ids` tell them apart.
        drop_remainder: bool, drop the last, partly filled window instead
            of padding it. Defaults to False.
        vocabulary_size: optional int. When given, the ids above and every
            input token id must be in `[0, vocabulary_size)`; without it
            they must be `>= 0`. A bad input id fails the call naming it.
        **kwargs: passed to `keras.layers.Layer`.

    Inputs: token ids of documents: a `tf.RaggedTensor` `[batch, None]`
        (what keras-hub tokenizers return for a batch of strings), a dense
        int tensor `[batch, length]` (every row one document, every entry a
        token) or `[length]` (one document).

    Outputs: a dict of `[num_windows, sequence_length]` tensors,
        `num_windows = ceil(total_tokens / sequence_length)` (floor with
        `drop_remainder`): `token_ids` int32, `padding_mask` bool (false on
        the padded tail), `segment_ids` int32 (document index inside the
        window; 0 on the padded tail). `unbatch()` and `batch(...,
        drop_remainder=True)` afterwards give fully static batch shapes.

    Reference:
        Radford et al., 2019, "Language Models are Unsupervised Multitask
        Learners" (GPT-2: documents joined with an end-of-text token);
        Raffel et al., 2020, "Exploring the Limits of Transfer Learning with
        a Unified Text-to-Text Transformer", https://arxiv.org/abs/1910.10683
        (packing with segment ids).

    Example:

    >>> packer = SequencePacker(sequence_length=4, end_token_id=2)
    >>> out = packer(tf.ragged.constant([[5, 6, 7], [8], [9, 10]]))
    >>> out["token_ids"].numpy().tolist()
    [[5, 6, 7, 2], [8, 2, 9, 10], [2, 0, 0, 0]]
    >>> out["segment_ids"].numpy().tolist()
    [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    >>> out["padding_mask"].numpy().tolist()[-1]
    [True, False, False, False]
    """

    def __init__(
        self,
        sequence_length,
        end_token_id,
        start_token_id=None,
        pad_token_id=0,
        drop_remainder=False,
        vocabulary_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if vocabulary_size is not None:
            check_int("vocabulary_size", vocabulary_size, minimum=1)
            vocabulary_size = int(vocabulary_size)
        self.vocabulary_size = vocabulary_size
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 2:
            raise ValueError(
                "`sequence_length` must be an int >= 2 (a window holds at least "
                f"one token and its next token). Received: sequence_length={sequence_length!r}"
            )
        self.sequence_length = int(sequence_length)
        self.end_token_id = check_id("end_token_id", end_token_id, vocabulary_size)
        self.start_token_id = check_id(
            "start_token_id", start_token_id, vocabulary_size, optional=True
        )
        self.pad_token_id = check_id("pad_token_id", pad_token_id, vocabulary_size)
        self.drop_remainder = bool(drop_remainder)
        self.built = True

    def call(self, inputs):
        documents = self._as_ragged(inputs)
        documents = documents.with_flat_values(
            check_token_ids(documents.flat_values, "SequencePacker", self.vocabulary_size)
        )
        documents = tf.ragged.boolean_mask(documents, documents.row_lengths() > 0)
        rows = documents.nrows()
        pieces = []
        if self.start_token_id is not None:
            pieces.append(tf.fill([rows, 1], tf.constant(self.start_token_id, tf.int32)))
        pieces.append(documents)
        pieces.append(tf.fill([rows, 1], tf.constant(self.end_token_id, tf.int32)))
        documents = tf.concat(pieces, axis=1)

        stream = documents.flat_values
        document_of = tf.cast(documents.value_rowids(), tf.int32)
        total = tf.shape(stream)[0]
        length = self.sequence_length
        if self.drop_remainder:
            num_windows = total // length
        else:
            num_windows = (total + length - 1) // length
        size = num_windows * length
        keep = tf.minimum(total, size)
        pad = size - keep
        token_ids = tf.concat(
            [stream[:keep], tf.fill([pad], tf.constant(self.pad_token_id, tf.int32))], axis=0
        )
        real = tf.concat([tf.ones([keep], tf.bool), tf.zeros([pad], tf.bool)], axis=0)
        document_of = tf.concat([document_of[:keep], tf.zeros([pad], tf.int32)], axis=0)

        token_ids = tf.reshape(token_ids, [num_windows, length])
        padding_mask = tf.reshape(real, [num_windows, length])
        document_of = tf.reshape(document_of, [num_windows, length])
        segment_ids = document_of - document_of[:, :1]
        segment_ids = tf.where(padding_mask, segment_ids, tf.zeros_like(segment_ids))
        return {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": segment_ids,
        }

    def _as_ragged(self, inputs):
        if isinstance(inputs, tf.RaggedTensor):
            if inputs.shape.rank != 2:
                raise ValueError(
                    "SequencePacker takes a ragged batch of documents `[batch, None]`. "
                    f"Received rank {inputs.shape.rank}."
                )
            if not inputs.dtype.is_integer:
                raise ValueError(
                    f"SequencePacker takes int token ids; received dtype {inputs.dtype.name}. "
                    "Tokenize the text first (e.g. with a keras-hub tokenizer)."
                )
            return tf.cast(inputs, tf.int32)
        inputs = tf.convert_to_tensor(inputs)
        if not inputs.dtype.is_integer:
            raise ValueError(
                f"SequencePacker takes int token ids; received dtype {inputs.dtype.name}. "
                "Tokenize the text first (e.g. with a keras-hub tokenizer)."
            )
        inputs = tf.cast(inputs, tf.int32)
        if inputs.shape.rank == 1:
            return tf.RaggedTensor.from_tensor(inputs[None, :])
        if inputs.shape.rank == 2:
            return tf.RaggedTensor.from_tensor(inputs)
        raise ValueError(
            "SequencePacker takes token ids `[batch, None]` (ragged), `[batch, "
            f"length]` or `[length]`. Received shape {inputs.shape}."
        )

    def compute_output_shape(self, input_shape):
        shape = (None, self.sequence_length)
        return {"token_ids": shape, "padding_mask": shape, "segment_ids": shape}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "end_token_id": self.end_token_id,
                "start_token_id": self.start_token_id,
                "pad_token_id": self.pad_token_id,
                "drop_remainder": self.drop_remainder,
                "vocabulary_size": self.vocabulary_size,
            }
        )
        return config
