"""Serving preprocessors: raw strings -> a backbone's inputs, inside the
SavedModel, for the layouts keras-hub's own preprocessors do not give."""

import keras_hub
import tensorflow as tf

PAIR_SEPARATOR = "[SEP]"
"""What separates the two segments in a raw-text pair signature."""


class PromptPreprocessor(tf.Module):
    """Raw strings -> `{"token_ids", "padding_mask"}` for a causal LM's
    SavedModel: `[CLS] tokens` with no end token (so the prediction at the
    last real position is the token after the text), right-padded,
    truncated to `sequence_length` (the beginning of a long text is kept).

    Args:
        tokenizer: a keras-hub tokenizer with `start_token_id` and
            `pad_token_id` (e.g. `BertTokenizer`).
        sequence_length: int, the packed length.
        start_token: bool, start with the tokenizer's start token (as the
            training windows did).

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    >>> PromptPreprocessor(tokenizer, 5)(tf.constant(["a b"]))["token_ids"].numpy().tolist()
    [[2, 5, 6, 0, 0]]
    """

    def __init__(self, tokenizer, sequence_length, start_token=True):
        super().__init__()
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length,
            start_value=tokenizer.start_token_id if start_token else None,
            pad_value=tokenizer.pad_token_id,
            return_padding_mask=True,
        )

    def __call__(self, text):
        token_ids, padding_mask = self.packer(self.tokenizer(text))
        return {"token_ids": token_ids, "padding_mask": padding_mask}


class PairTextPreprocessor(tf.Module):
    """Raw strings `"sentence A [SEP] sentence B"` -> `[CLS] A [SEP] B [SEP]`
    token ids with segment ids, for a sentence-pair SavedModel.

    Splits each string at its first `separator` and packs the two parts with
    keras-hub's `BertTextClassifierPreprocessor` (a `MultiSegmentPacker`, as
    in training). A string without the separator becomes `[CLS] A [SEP] [SEP]`.

    Args:
        tokenizer: a keras-hub `BertTokenizer`.
        sequence_length: int, the packed length.
        separator: str. Defaults to `"[SEP]"`.

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    >>> out = PairTextPreprocessor(tokenizer, 6)(tf.constant(["a [SEP] b"]))
    >>> out["token_ids"].numpy().tolist(), out["segment_ids"].numpy().tolist()
    ([[2, 5, 3, 6, 3, 0]], [[0, 0, 0, 1, 1, 0]])
    """

    def __init__(self, tokenizer, sequence_length, separator=PAIR_SEPARATOR):
        super().__init__()
        self.preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=tokenizer, sequence_length=sequence_length
        )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.separator = separator

    def __call__(self, text):
        parts = tf.strings.split(text, sep=self.separator, maxsplit=1)
        parts = parts.to_tensor(default_value="", shape=[None, 2])
        return self.preprocessor(x=(tf.strings.strip(parts[:, 0]), tf.strings.strip(parts[:, 1])))
