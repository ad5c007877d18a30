"""Seq2seq SFT data: (input text, target text) pairs as the batches of
`kobjectives.objectives.DenoisingSeq2Seq` (the objective of the T5 and BART
denoising runs, here trained on supervised pairs).

The path from text to batches:

1. (chat data) `dialogue_pair(conversation)`: the dialogue before its last
   assistant turn rendered as plain text (`dialogue_prompt_text`), and that
   turn's content as the target.
2. `tokenize_seq2seq_pairs(inputs, targets, tokenizer, ...)`: one example
   per row, padded to static lengths (keras-hub's `StartEndPacker`):

   - encoder: `input [end] [pad]...` (`encoder_length` ids). An input longer
     than `encoder_length - 1` tokens **keeps its first tokens** and its
     end token: the layout `kobjectives.export.seq2seq.
     export_seq2seq_saved_model` gives raw text at serving time, so a
     served input is read exactly as in training.
   - targets: `target [end] [pad]...` (T5), or `[start] target [end]
     [pad]...` with `target_start_token_id` (BART's layout, as keras-hub's
     `BartSeq2SeqLMPreprocessor`); `target_length` ids. A longer target
     keeps its first tokens and its end token (as keras-hub's packers and
     T5's `append_eos_after_trim`).
   - `target_weights`: 1 on every target token (the end token included),
     0 on padding; BART's start token gets 0 (it is given to the decoder
     after `[end]`, never predicted: a forced first token).

   Both truncations are counted (`Seq2SeqExamples.truncated_inputs`,
   `truncated_targets`).
3. `seq2seq_sft_dataset(examples, batch_size)`: `(x, target_ids,
   target_weights)` batches of static shape, `x` holding
   `SEQ2SEQ_INPUTS` (`encoder_token_ids`, `encoder_padding_mask`,
   `target_ids`, `target_padding_mask`): the batch layout of
   `kobjectives.data.seq2seq`'s denoising pipelines. The objective shifts
   the targets right after its `decoder_start_token_id` (T5: the padding
   id; BART: `[end]`).

4. (packing) `pack_seq2seq_examples(examples)`: several examples per row,
   assigned by `kobjectives.data.best_fit_decreasing` on two capacities
   (an example fits a row when its input fits the encoder row and its
   target the target row). Each example's real ids are laid out one after
   the other; `encoder_segment_ids` / `decoder_segment_ids` are 1..k for
   the k examples of a row and 0 on padding. `seq2seq_sft_dataset(...,
   packing=True)` batches these rows.

**Exact packing.** `kobjectives.objectives.DenoisingSeq2Seq`, given the
segment ids, runs the T5/BART backbone's own layers with block-diagonal
encoder self-attention, causal decoder self-attention and cross-attention
masks (`kobjectives.ops.segment_attention_mask`), shifts the targets right
per example (each example's first decoder input is the decoder start id)
and, for BART's learned absolute positions, restarts positions at 0 per
example: every packed example computes what it computes alone in its own
padded row (up to float rounding). keras-hub's own `T5Backbone` /
`BartBackbone` call takes only `[batch, length]` padding masks, hence the
re-wiring.
"""

import dataclasses

import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.data.chat import check_conversation
from kobjectives.data.seq2seq import SEQ2SEQ_INPUTS
from kobjectives.data.sft import best_fit_decreasing

PACKED_SEQ2SEQ_INPUTS = SEQ2SEQ_INPUTS + ("encoder_segment_ids", "decoder_segment_ids")
"""The model inputs of a packed row (`pack_seq2seq_examples`)."""

# Texts tokenized per tokenizer call.
_TOKENIZE_BATCH = 256

DIALOGUE_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""How `dialogue_prompt_text` names each role (`"{name}: {content}"`)."""


def dialogue_prompt_text(conversation, name="conversation"):
    """A conversation as plain text, one `"{Role}: {content}"` paragraph per
    turn (`DIALOGUE_ROLE_NAMES`), joined by newlines: the encoder input of a
    seq2seq model.

    The roles are written as words, not as marker tokens, so the text needs
    no token that a pretrained vocabulary lacks (the tokenizer of an earlier
    `kobjectives train t5` run is reused unchanged) and can be sent to the
    exported model as raw text.

    Args:
        conversation: a list of `{"role", "content"}` turns
            (`kobjectives.data.check_conversation`).
        name: how error messages name the conversation.

    Returns:
        str.

    Raises:
        TypeError, ValueError: a malformed conversation.

    Example:

    >>> print(dialogue_prompt_text([{"role": "user", "content": "Hi"},
    ...                             {"role": "assistant", "content": "Hello!"},
    ...                             {"role": "user", "content": "Name a prime."}]))
    User: Hi
    Assistant: Hello!
    User: Name a prime.
    """
    turns = check_conversation(conversation, name)
    return "\n".join(f"{DIALOGUE_ROLE_NAMES[role]}: {content}" for role, content in turns)


def dialogue_pair(conversation, name="conversation"):
    """A dialogue as one seq2seq SFT pair: the turns before its last
    assistant turn (`dialogue_prompt_text`) and that turn's content.

    Args:
        conversation: a list of `{"role", "content"}` turns ending with an
            assistant turn (an HH-RLHF `chosen` dialogue,
            `kobjectives.data.read_hh_rlhf`).
        name: how error messages name the conversation.

    Returns:
        `{"input": str, "target": str}`.

    Raises:
        ValueError: a malformed conversation, or one that does not end with
            an assistant turn.

    Example:

    >>> dialogue_pair([{"role": "user", "content": "Hi"},
    ...                {"role": "assistant", "content": "Hello!"}])
    {'input': 'User: Hi', 'target': 'Hello!'}
    """
    turns = check_conversation(conversation, name)
    if turns[-1][0] != "assistant":
        raise ValueError(
            f"`{name}` ends with a {turns[-1][0]!r} turn: a seq2seq SFT pair needs a "
            "conversation ending with the assistant turn to learn.")
    return {"input": dialogue_prompt_text(conversation[:-1], name),
            "target": turns[-1][1]}


@dataclasses.dataclass(frozen=True)
class Seq2SeqExamples:
    """Tokenized seq2seq SFT pairs, one example per row
    (`tokenize_seq2seq_pairs`).

    Attributes:
        encoder_token_ids: int32 `[n, encoder_length]`.
        encoder_padding_mask: int32 `[n, encoder_length]`.
        target_ids: int32 `[n, target_length]`.
        target_padding_mask: int32 `[n, target_length]` (1 on every id the
            decoder reads, a start token included).
        target_weights: float32 `[n, target_length]`, the loss weights.
        input_lengths: int64 `[n]`, each input's tokens before truncation.
        target_lengths: int64 `[n]`, each target's tokens before truncation.
        input_capacity: int, the input tokens a row holds.
        target_capacity: int, the target tokens a row holds.
    """

    encoder_token_ids: np.ndarray
    encoder_padding_mask: np.ndarray
    target_ids: np.ndarray
    target_padding_mask: np.ndarray
    target_weights: np.ndarray
    input_lengths: np.ndarray
    target_lengths: np.ndarray
    input_capacity: int
    target_capacity: int

    def __len__(self):
        return len(self.encoder_token_ids)

    @property
    def truncated_inputs(self):
        """How many inputs lost their last tokens."""
        return int((self.input_lengths > self.input_capacity).sum())

    @property
    def truncated_targets(self):
        """How many targets lost their last tokens."""
        return int((self.target_lengths > self.target_capacity).sum())

    def x(self):
        """The model inputs, a dict of numpy arrays (`SEQ2SEQ_INPUTS`)."""
        return {key: getattr(self, key) for key in SEQ2SEQ_INPUTS}

    def shard(self, index, count):
        """Every `count`-th example from `index` (an input pipeline's shard)."""
        rows = slice(index, None, count)
        return dataclasses.replace(self, **{
            field.name: getattr(self, field.name)[rows]
            for field in dataclasses.fields(self) if not field.name.endswith("_capacity")})


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_texts(name, texts):
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of str. Received: {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{index}] must be a str. Received: {type(text).__name__}")
    return list(texts)


def _pack(tokenizer, texts, packer, padding_token_id):
    """`texts` -> (ids, mask, untruncated lengths) as numpy arrays, tokenized
    in `tf.data` (where keras-hub tokenizers return ragged tensors)."""

    def pack(batch):
        tokens = tokenizer(batch)
        if not isinstance(tokens, tf.RaggedTensor):
            tokens = tf.RaggedTensor.from_tensor(tokens, padding=padding_token_id)
        tokens = tf.cast(tokens, tf.int32)
        packed, mask = packer(tokens)
        return tf.cast(packed, tf.int32), tf.cast(mask, tf.int32), tokens.row_lengths()

    batches = tf.data.Dataset.from_tensor_slices(texts).batch(_TOKENIZE_BATCH).map(pack)
    ids, masks, lengths = zip(*batches.as_numpy_iterator())
    return np.concatenate(ids), np.concatenate(masks), np.concatenate(lengths).astype(np.int64)


def tokenize_seq2seq_pairs(inputs, targets, tokenizer, encoder_length, target_length, *,
                           end_token_id, padding_token_id=0, target_start_token_id=None):
    """(input text, target text) pairs as padded rows for
    `kobjectives.objectives.DenoisingSeq2Seq`, one example per row (see the
    module docstring for the layout and why there is no packing).

    An input longer than `encoder_length - 1` tokens keeps its first tokens
    (the layout of `export_seq2seq_saved_model`'s text signature); a target
    longer than the row keeps its first tokens and its end token. Both are
    counted (`truncated_inputs`, `truncated_targets`).

    Args:
        inputs: list of str, the encoder texts (may be empty strings).
        targets: list of str, the texts to generate; none blank.
        tokenizer: a keras-hub tokenizer mapping strings to ragged ids.
        encoder_length: int >= 2, the encoder ids per row (the end token
            included).
        target_length: int, the target ids per row (end token, and start
            token if any, included): >= 2, or 3 with a start token.
        end_token_id: int, ends every input and target (`[SEP]`, `</s>`).
        padding_token_id: int, the padding id.
        target_start_token_id: optional int, put before every target
            (BART's `[CLS]` / `<s>`) with loss weight 0.

    Returns:
        `Seq2SeqExamples`.

    Raises:
        TypeError: `inputs` or `targets` not a list of str.
        ValueError: different numbers of inputs and targets, no pair, a
            blank target (named by index), or lengths too short.

    Example:

    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(oov_token="[UNK]",
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])
    >>> examples = tokenize_seq2seq_pairs(["a b", "a b c a"], ["c", "b b b"], tokenizer,
    ...                                   encoder_length=4, target_length=3, end_token_id=3)
    >>> examples.encoder_token_ids.tolist()  # the long input keeps its first tokens
    [[4, 5, 3, 0], [4, 5, 6, 3]]
    >>> examples.target_ids.tolist(), examples.target_weights.tolist()
    ([[6, 3, 0], [5, 5, 3]], [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    >>> examples.truncated_inputs, examples.truncated_targets
    (1, 1)
    """
    inputs, targets = _check_texts("inputs", inputs), _check_texts("targets", targets)
    if len(inputs) != len(targets):
        raise ValueError(
            f"`inputs` and `targets` must pair up: {len(inputs)} inputs, {len(targets)} targets.")
    if not inputs:
        raise ValueError("There is no (input, target) pair to tokenize.")
    for index, target in enumerate(targets):
        if not target.strip():
            raise ValueError(
                f"targets[{index}] is blank (input: {inputs[index][:60]!r}): there is nothing "
                "to learn. Drop the pair.")
    encoder_length = _check_int("encoder_length", encoder_length, 2)
    special = 2 if target_start_token_id is not None else 1
    target_length = _check_int("target_length", target_length, special + 1)
    end_token_id = _check_int("end_token_id", end_token_id, 0)
    padding_token_id = _check_int("padding_token_id", padding_token_id, 0)
    if target_start_token_id is not None:
        target_start_token_id = _check_int("target_start_token_id", target_start_token_id, 0)

    encoder_packer = keras_hub.layers.StartEndPacker(
        sequence_length=encoder_length, end_value=end_token_id, pad_value=padding_token_id,
        return_padding_mask=True)
    target_packer = keras_hub.layers.StartEndPacker(
        sequence_length=target_length, start_value=target_start_token_id,
        end_value=end_token_id, pad_value=padding_token_id, return_padding_mask=True)
    encoder_ids, encoder_mask, input_lengths = _pack(
        tokenizer, inputs, encoder_packer, padding_token_id)
    target_ids, target_mask, target_lengths = _pack(
        tokenizer, targets, target_packer, padding_token_id)
    weights = target_mask.astype(np.float32)
    if target_start_token_id is not None:
        weights[:, 0] = 0.0
    return Seq2SeqExamples(
        encoder_token_ids=encoder_ids, encoder_padding_mask=encoder_mask,
        target_ids=target_ids, target_padding_mask=target_mask, target_weights=weights,
        input_lengths=input_lengths, target_lengths=target_lengths,
        input_capacity=encoder_length - 1, target_capacity=target_length - special)


def pack_seq2seq_examples(examples, padding_token_id=0, buffer_size=None):
    """Packs tokenized seq2seq examples several to a row, exactly.

    Rows are assigned by `kobjectives.data.best_fit_decreasing` on two
    capacities, the encoder and the target row lengths: an example fits a
    row when both its input ids (the end token included) and its target
    ids (start and end tokens included) fit. No example is split or
    truncated further (each already fits a row of its own). A row holds
    its examples one after the other, then padding; segment `k` (1-based)
    of row `r` is example `bins[r][k - 1]`.

    Args:
        examples: `Seq2SeqExamples` (`tokenize_seq2seq_pairs`).
        padding_token_id: int, the id of padded positions (never attended
            to nor scored).
        buffer_size: optional int, `best_fit_decreasing`'s streaming buffer.

    Returns:
        `(rows, bins)`. `rows` is a dict of numpy arrays with a row per bin:
        `encoder_token_ids`, `encoder_padding_mask`, `encoder_segment_ids`
        int32 `[rows, encoder_length]`; `target_ids`, `target_padding_mask`,
        `decoder_segment_ids` int32 and `target_weights` float32
        `[rows, target_length]` (`PACKED_SEQ2SEQ_INPUTS` and the weights).
        Segment ids are 1..k for the k examples of a row, 0 on padding.
        `bins[r]` lists the example indices of row `r`.

    Raises:
        TypeError: `examples` is not `Seq2SeqExamples`.
        ValueError: no example, or a bad `padding_token_id` / `buffer_size`.

    Example:

    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(oov_token="[UNK]",
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])
    >>> examples = tokenize_seq2seq_pairs(["a b", "c", "a b c"], ["c", "a b", "b"], tokenizer,
    ...                                   encoder_length=6, target_length=5, end_token_id=3)
    >>> rows, bins = pack_seq2seq_examples(examples)
    >>> bins
    [[2, 1], [0]]
    >>> rows["encoder_token_ids"].tolist()[0], rows["encoder_segment_ids"].tolist()[0]
    ([4, 5, 6, 3, 6, 3], [1, 1, 1, 1, 2, 2])
    >>> rows["target_ids"].tolist()[0], rows["decoder_segment_ids"].tolist()[0]
    ([5, 3, 4, 5, 3], [1, 1, 2, 2, 2])
    """
    if not isinstance(examples, Seq2SeqExamples):
        raise TypeError(
            "`examples` must be kobjectives.data.seq2seq_sft.Seq2SeqExamples (from "
            f"tokenize_seq2seq_pairs). Received: {type(examples).__name__}")
    if len(examples) == 0:
        raise ValueError("`examples` is empty: there is nothing to pack.")
    padding_token_id = _check_int("padding_token_id", padding_token_id, 0)
    encoder_lengths = examples.encoder_padding_mask.sum(axis=1).astype(np.int64)
    target_lengths = examples.target_padding_mask.sum(axis=1).astype(np.int64)
    encoder_length = examples.encoder_token_ids.shape[1]
    target_length = examples.target_ids.shape[1]
    bins = best_fit_decreasing(np.stack([encoder_lengths, target_lengths], axis=1),
                               (encoder_length, target_length), buffer_size=buffer_size)
    count = len(bins)
    rows = {
        "encoder_token_ids": np.full((count, encoder_length), padding_token_id, np.int32),
        "encoder_segment_ids": np.zeros((count, encoder_length), np.int32),
        "target_ids": np.full((count, target_length), padding_token_id, np.int32),
        "decoder_segment_ids": np.zeros((count, target_length), np.int32),
        "target_weights": np.zeros((count, target_length), np.float32),
    }
    for row, members in enumerate(bins):
        encoder_start = target_start = 0
        for segment, index in enumerate(members, 1):
            encoder_end = encoder_start + int(encoder_lengths[index])
            target_end = target_start + int(target_lengths[index])
            rows["encoder_token_ids"][row, encoder_start:encoder_end] = (
                examples.encoder_token_ids[index, :encoder_end - encoder_start])
            rows["encoder_segment_ids"][row, encoder_start:encoder_end] = segment
            rows["target_ids"][row, target_start:target_end] = (
                examples.target_ids[index, :target_end - target_start])
            rows["target_weights"][row, target_start:target_end] = (
                examples.target_weights[index, :target_end - target_start])
            rows["decoder_segment_ids"][row, target_start:target_end] = segment
            encoder_start, target_start = encoder_end, target_end
    rows["encoder_padding_mask"] = (rows["encoder_segment_ids"] > 0).astype(np.int32)
    rows["target_padding_mask"] = (rows["decoder_segment_ids"] > 0).astype(np.int32)
    return rows, bins


def seq2seq_sft_dataset(examples, batch_size, *, shuffle=True, seed=0, repeat=False,
                        drop_remainder=True, cache=False, packing=False, padding_token_id=0,
                        buffer_size=None):
    """Seq2seq SFT batches for `kobjectives.objectives.DenoisingSeq2Seq`:
    `(x, target_ids, target_weights)` with `x` the `SEQ2SEQ_INPUTS` of
    `examples`, one example per row; with `packing=True`, the rows of
    `pack_seq2seq_examples` (several examples per row, `x` also holding
    `encoder_segment_ids` and `decoder_segment_ids`).

    Args:
        examples: `Seq2SeqExamples` (`tokenize_seq2seq_pairs`).
        batch_size: int, rows per batch (the global batch).
        shuffle: shuffle the rows (seeded; a new order every epoch).
        seed: int, the shuffle seed.
        repeat: repeat forever.
        drop_remainder: drop the last, smaller batch (static shapes).
        cache: cache the batches after the first pass.
        packing: bool, pack several examples per row
            (`pack_seq2seq_examples`, packed once, before shuffling).
        padding_token_id: int, the id of padded positions of packed rows.
        buffer_size: optional int, the packing's streaming buffer.

    Returns:
        A `tf.data.Dataset` of `(x, target_ids, target_weights)`: `x` a dict
        of int32 `[batch_size, encoder_length]` encoder ids and mask and
        `[batch_size, target_length]` target ids and mask (packed: and the
        segment ids of both); `target_ids` int32 and `target_weights`
        float32 `[batch_size, target_length]`.

    Raises:
        ValueError: fewer rows than `batch_size` with
            `drop_remainder=True` (no batch at all).

    Example:

    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(oov_token="[UNK]",
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])
    >>> examples = tokenize_seq2seq_pairs(["a", "b", "c"], ["b", "c", "a"], tokenizer, 3, 3,
    ...                                   end_token_id=3)
    >>> x, target_ids, target_weights = next(iter(seq2seq_sft_dataset(examples, 2, shuffle=False)))
    >>> x["encoder_token_ids"].numpy().tolist(), target_ids.numpy().tolist()
    ([[4, 3, 0], [5, 3, 0]], [[5, 3, 0], [6, 3, 0]])
    >>> wide = tokenize_seq2seq_pairs(["a", "b", "c"], ["b", "c", "a"], tokenizer, 4, 4,
    ...                               end_token_id=3)
    >>> packed = seq2seq_sft_dataset(wide, 1, shuffle=False, packing=True)
    >>> x, target_ids, _ = next(iter(packed))  # two examples in the first row
    >>> x["encoder_segment_ids"].numpy().tolist(), target_ids.numpy().tolist()
    ([[1, 1, 2, 2]], [[5, 3, 6, 3]])
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if packing:
        rows, _ = pack_seq2seq_examples(examples, padding_token_id, buffer_size)
        x = {key: rows[key] for key in PACKED_SEQ2SEQ_INPUTS}
        weights = rows["target_weights"]
    else:
        x, weights = examples.x(), examples.target_weights
    count = len(weights)
    if drop_remainder and count < batch_size:
        what = f"{len(examples)} examples fill {count} rows, fewer" if packing else (
            f"{count} examples are fewer")
        raise ValueError(
            f"The {what} than batch_size={batch_size}, so "
            "drop_remainder=True leaves no batch. Give more examples or a smaller batch_size.")
    dataset = tf.data.Dataset.from_tensor_slices((x, weights))
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda x, weights: (x, x["target_ids"], weights))
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)
