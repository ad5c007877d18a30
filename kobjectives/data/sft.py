"""Causal-LM supervised fine-tuning data: tokenized examples with a
completion mask, best-fit-decreasing packing, static-shaped windows.

The path from text to batches of `kobjectives.objectives.CausalLanguageModel`:

1. `tokenize_sft_examples(examples, tokenizer)`: conversations (rendered by
   a `kobjectives.data.ChatTemplate`), prompt/completion pairs or
   ready-made `(text, is_completion)` segments become token ids and a
   per-token `completion_mask` (1 on the assistant / completion tokens and
   their end marker, 0 on the prompt), or all ones with `loss_on="all"`.
2. `best_fit_decreasing(lengths, sequence_length)` assigns whole examples
   to windows: no example is split, so each is scored exactly once and
   whole.
3. `pack_sft_examples` lays the windows out: `segment_ids` 1..k for the
   k examples of a window, 0 on padding, and `sample_weight` on targets
   (position `t` predicts token `t + 1`, so the weight at `t` is the
   completion flag of token `t + 1`, and 0 where `t` and `t + 1` belong to
   different examples or to padding).
4. `sft_dataset` batches them as `(x, None, sample_weight)`.

With `CausalLanguageModel(..., reset_attention_at_boundaries=True,
restart_positions=True)` attention and positions restart at every example
of a window, so a packed example computes exactly what it computes alone
in its own padded row (up to float rounding); `loss_normalization=
"example"` averages per example (a packed segment) instead of per token.
"""

import bisect
import dataclasses
import re

import numpy as np
import tensorflow as tf

from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.located import example_name
from kobjectives.ops.causal_lm import causal_lm_targets
from kobjectives.data.chat import ChatTemplate

LOSS_ON = ("completion", "all")
"""What `tokenize_sft_examples` trains on: completion tokens only, or all."""

TRUNCATIONS = ("error", "left", "right")
"""What `pack_sft_examples` does with an example longer than the window."""


@dataclasses.dataclass
class SFTExamples:
    """Tokenized SFT examples (what `tokenize_sft_examples` returns).

    Attributes:
        token_ids: list of int32 numpy arrays `[length_i]`.
        completion_mask: list of int32 numpy arrays `[length_i]`, 1 on the
            tokens the model learns to produce.

    Example:

    >>> examples = SFTExamples([np.array([5, 6, 7]), np.array([8, 9])],
    ...                        [np.array([0, 1, 1]), np.array([0, 1])])
    >>> len(examples), examples.lengths.tolist()
    (2, [3, 2])
    """

    token_ids: list
    completion_mask: list

    def __len__(self):
        return len(self.token_ids)

    @property
    def lengths(self):
        """int64 numpy array `[num_examples]`, the examples' token counts."""
        return np.asarray([len(ids) for ids in self.token_ids], np.int64)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _segments(example, template, name):
    """An example as `(text, is_completion)` segments."""
    if isinstance(example, dict):
        if set(example) >= {"prompt", "completion"}:
            return template.render_prompt_completion(
                example["prompt"], example["completion"], name=name)
        raise ValueError(
            f"{name}: a dict example must be a prompt/completion pair {{'prompt': ..., "
            f"'completion': ...}}. Received keys {sorted(example)}."
        )
    if isinstance(example, (list, tuple)) and example:
        first = example[0]
        if isinstance(first, dict):
            return template.render(example, name=name)
        if isinstance(first, (list, tuple)):
            segments = []
            for index, segment in enumerate(example):
                if (not isinstance(segment, (list, tuple)) or len(segment) != 2
                        or not isinstance(segment[0], str)
                        or not isinstance(segment[1], (bool, np.bool_))):
                    raise TypeError(
                        f"{name}[{index}]: a segment must be a (text: str, "
                        f"is_completion: bool) pair. Received: {segment!r}"
                    )
                segments.append((segment[0], bool(segment[1])))
            return segments
    raise TypeError(
        f"{name} must be a conversation (a list of {{'role', 'content'}} turns), a "
        "{'prompt', 'completion'} dict or a list of (text, is_completion) segments. "
        f"Received: {type(example).__name__} {str(example)[:60]!r}"
    )


def _marker_id(tokenizer, marker):
    try:
        return int(tokenizer.token_to_id(marker))
    except (ValueError, KeyError):
        raise ValueError(
            f"The chat marker {marker!r} is not a token of the tokenizer's vocabulary. "
            "Add the markers with kobjectives.data.add_chat_tokens(vocabulary) and rebuild "
            "the tokenizer, or use a ChatTemplate whose markers are tokens."
        ) from None


def _tokenize_batch(tokenizer, texts):
    """Token ids of a batch of strings as a list of lists."""
    out = tokenizer(tf.constant(texts))
    if isinstance(out, tf.RaggedTensor):
        out = out.to_list()
    if not isinstance(out, list) or len(out) != len(texts):
        raise ValueError(
            "The tokenizer must map a batch of strings to ragged token ids (one list per "
            f"string); it returned {type(out).__name__}. Build it without "
            "`sequence_length` (no padding): the windows are laid out by "
            "pack_sft_examples."
        )
    return [[int(i) for i in ids] for ids in out]


def tokenize_sft_examples(examples, tokenizer, template=DEFAULT_CHAT_TEMPLATE,
                          loss_on="completion", start_token_id=None, batch_size=1024):
    """Tokenizes SFT examples into token ids and a completion mask.

    Each example is one of:

    - a conversation, a list of `{"role", "content"}` turns, rendered by
      `template` (`ChatTemplate.render`): the assistant contents and their
      end marker are the completion;
    - a `{"prompt": str, "completion": str}` pair
      (`ChatTemplate.render_prompt_completion`): the completion and the end
      marker are the completion;
    - a list of `(text, is_completion)` segments.

    The markers of `template` are single tokens looked up with
    `tokenizer.token_to_id` (add them to a WordPiece vocabulary with
    `kobjectives.data.add_chat_tokens`); only the text between markers goes
    through the tokenizer, in batches of `batch_size` strings. Every
    segment's tokens get its completion flag.

    Args:
        examples: a list of examples (the forms above may be mixed).
        tokenizer: a keras-hub tokenizer mapping a batch of strings to
            ragged token ids, with `token_to_id` (e.g. a
            `keras_hub.tokenizers.WordPieceTokenizer`).
        template: the `ChatTemplate`.
        loss_on: `"completion"` (the default): `completion_mask` is 1 on
            completion tokens only; `"all"`: 1 on every token (plain
            language modeling of the whole text).
        start_token_id: optional int, prepended to every example (a prompt
            token), so that the first token is a target too.
        batch_size: int, strings per tokenizer call.

    Returns:
        `SFTExamples` (`token_ids` and `completion_mask`, int32 numpy arrays
        per example).

    Raises:
        ValueError: no examples, a malformed example (the message names it:
            `examples[i]`), a marker that is not in the vocabulary, an
            example without tokens, or (with `loss_on="completion"`) one
            without a completion token.
        TypeError: an example of none of the forms above.

    Example:

    >>> import keras_hub
    >>> from kobjectives.data.chat import add_chat_tokens
    >>> vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "hi", "hello", "!"])
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    >>> out = tokenize_sft_examples(
    ...     [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]],
    ...     tokenizer)
    >>> [vocabulary[i] for i in out.token_ids[0]]
    ['<|user|>', 'hi', '<|end|>', '<|assistant|>', 'hello', '!', '<|end|>']
    >>> out.completion_mask[0].tolist()
    [0, 0, 0, 0, 1, 1, 1]
    """
    _check_choice("loss_on", loss_on, LOSS_ON)
    if not isinstance(template, ChatTemplate):
        raise TypeError(
            f"`template` must be a kobjectives.data.ChatTemplate. Received: "
            f"{type(template).__name__}"
        )
    batch_size = _check_positive_int("batch_size", batch_size)
    if getattr(tokenizer, "sequence_length", None):
        raise ValueError(
            f"The tokenizer pads or truncates to sequence_length={tokenizer.sequence_length}; "
            "build it without `sequence_length` (the windows are laid out by "
            "pack_sft_examples)."
        )
    if isinstance(examples, (str, dict)):
        raise TypeError("`examples` must be a list of examples, not a single one.")
    examples = list(examples)
    if not examples:
        raise ValueError("`examples` is empty: there is nothing to fine-tune on.")
    if start_token_id is not None:
        start_token_id = _check_positive_int("start_token_id", start_token_id, minimum=0)
    split = re.compile("(" + "|".join(re.escape(m) for m in template.markers) + ")")
    marker_ids = {}
    texts = []  # the text pieces to tokenize
    plans = []  # per example: [(marker id or index into texts, is_completion)]
    names = [example_name(example, index, "examples") for index, example in enumerate(examples)]
    for example, name in zip(examples, names):
        plan = []
        for text, is_completion in _segments(example, template, name):
            for piece_index, piece in enumerate(split.split(text)):
                if not piece:
                    continue
                if piece_index % 2:  # a marker
                    if piece not in marker_ids:
                        marker_ids[piece] = _marker_id(tokenizer, piece)
                    plan.append(("id", marker_ids[piece], is_completion))
                else:
                    plan.append(("text", len(texts), is_completion))
                    texts.append(piece)
        plans.append(plan)
    pieces = []
    for start in range(0, len(texts), batch_size):
        pieces.extend(_tokenize_batch(tokenizer, texts[start:start + batch_size]))
    token_ids, completion_mask = [], []
    for name, plan in zip(names, plans):
        ids = [] if start_token_id is None else [start_token_id]
        flags = [] if start_token_id is None else [0]
        for kind, value, is_completion in plan:
            new = [value] if kind == "id" else pieces[value]
            ids.extend(new)
            flags.extend([int(is_completion)] * len(new))
        if not ids:
            raise ValueError(f"{name} has no token: its text is empty.")
        if loss_on == "completion" and not any(flags):
            raise ValueError(
                f"{name} has no completion token (no assistant turn, or an "
                "empty completion), so it has nothing to learn. Drop it, or pass "
                "loss_on='all'."
            )
        if loss_on == "all":
            flags = [1] * len(ids)
        token_ids.append(np.asarray(ids, np.int32))
        completion_mask.append(np.asarray(flags, np.int32))
    return SFTExamples(token_ids, completion_mask)


def _check_lengths(lengths, capacity):
    """`(lengths [n, d] int64, capacity tuple of d ints, one_dimensional)`."""
    one_dimensional = np.ndim(capacity) == 0
    if one_dimensional:
        capacity = (_check_positive_int("capacity", capacity),)
    else:
        capacity = tuple(capacity)
        if not capacity:
            raise ValueError("`capacity` must be an int or a non-empty sequence of ints.")
        capacity = tuple(_check_positive_int(f"capacity[{axis}]", value)
                         for axis, value in enumerate(capacity))
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        lengths = lengths.reshape(0, len(capacity)).astype(np.int64)
    expected = "a 1-D list of ints" if one_dimensional else (
        f"an [n, {len(capacity)}] array of ints (one size per capacity)")
    shape_ok = lengths.ndim == 1 if one_dimensional else (
        lengths.ndim == 2 and lengths.shape[1] == len(capacity))
    if not shape_ok or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(
            f"`lengths` must be {expected}. Received shape {lengths.shape}, "
            f"dtype {lengths.dtype}."
        )
    lengths = lengths.reshape(len(lengths), len(capacity)).astype(np.int64)
    bad = np.flatnonzero(((lengths < 1) | (lengths > np.asarray(capacity))).any(axis=1))
    if bad.size:
        index = int(bad[0])
        if one_dimensional:
            item, room, bounds = int(lengths[index, 0]), capacity[0], f"[1, {capacity[0]}]"
        else:
            item, room = tuple(lengths[index].tolist()), capacity
            bounds = " x ".join(f"[1, {value}]" for value in capacity)
        raise ValueError(
            f"lengths[{index}] = {item} does not fit a bin of capacity "
            f"{room}: every length must be in {bounds} ({bad.size} do not)."
        )
    return lengths, capacity, one_dimensional


def _best_fit_decreasing(lengths, capacity, offset):
    """One capacity: bins' rooms kept sorted, searched by bisection."""
    capacity = capacity[0]
    lengths = lengths[:, 0]
    order = np.argsort(-lengths, kind="stable")  # longest first; ties in input order
    bins = []
    open_bins = []  # sorted (room left, bin index) of the bins with room
    for item in order:
        size = int(lengths[item])
        slot = bisect.bisect_left(open_bins, (size, -1))  # the least room that fits
        if slot == len(open_bins):
            bin_index, room = len(bins), capacity
            bins.append([])
        else:
            room, bin_index = open_bins.pop(slot)
        bins[bin_index].append(int(item) + offset)
        if room - size > 0:
            bisect.insort(open_bins, (room - size, bin_index))
    return bins


def _vector_best_fit_decreasing(lengths, capacity, offset):
    """Several capacities: every open bin scanned (vectorized) per item."""
    capacity = np.asarray(capacity, np.int64)
    size_key = (lengths / capacity).max(axis=1)
    order = np.argsort(-size_key, kind="stable")  # largest first; ties in input order
    bins = []
    rooms = np.zeros((0, len(capacity)), np.int64)
    for item in order:
        size = lengths[item]
        left = rooms - size
        fits = np.flatnonzero((left >= 0).all(axis=1))
        if fits.size:
            slack = (left[fits] / capacity).sum(axis=1)
            bin_index = int(fits[np.argmin(slack)])  # argmin: the earliest of ties
            rooms[bin_index] = left[bin_index]
        else:
            bin_index = len(bins)
            bins.append([])
            rooms = np.concatenate([rooms, (capacity - size)[None]])
        bins[bin_index].append(int(item) + offset)
    return bins


def best_fit_decreasing(lengths, capacity, buffer_size=None):
    """Packs items into bins of `capacity` by best-fit decreasing.

    The items are taken longest first (ties in input order); each goes into
    the open bin with the least room left that still fits it (ties: the
    earliest bin), or opens a new bin. `O(n log n)` comparisons (a sorted
    list of the bins' rooms, searched by bisection).

    Guarantees: every bin holds at most `capacity`; every item is in
    exactly one bin; any two bins together hold more than `capacity` (an
    item opens a bin only when it fits no open bin), so at most one bin is
    half full or less; and the number of bins is at most
    `11/9 OPT + 6/9` (Dosa, 2007), where `OPT` is the fewest possible.

    Several capacities (vector bin packing, e.g. a seq2seq row's encoder
    and target lengths): `lengths` is `[n, d]` and `capacity` `d` ints; an
    item fits a bin when it fits every capacity. Items are taken by their
    largest share of a capacity (`max_j lengths[i, j] / capacity[j]`),
    largest first; each goes into the fitting open bin with the least room
    left (the sum over capacities of `room_j / capacity[j]` after placing
    it; ties: the earliest bin). Every open bin is scanned per item
    (`O(n * bins)`, vectorized). With `d = 1` this is the same packing as
    one capacity (`best_fit_decreasing(l[:, None], (c,)) ==
    best_fit_decreasing(l, c)`); the `11/9` bound is for one capacity only.

    Streaming: with `buffer_size=N` the items are packed `N` at a time, in
    input order, each buffer on its own (its bins are closed before the
    next buffer starts), so a stream of examples can be packed with bounded
    memory and delay; the windows then fill slightly less well than with
    the whole dataset at once.

    Args:
        lengths: 1-D ints, each in `[1, capacity]`; or, with `capacity` a
            sequence of `d` ints, `[n, d]` ints, `lengths[i, j]` in
            `[1, capacity[j]]`.
        capacity: int >= 1 (the window length), or a sequence of ints >= 1
            (one per size of an item).
        buffer_size: optional int >= 1, items per independently packed
            buffer; None packs all at once.

    Returns:
        A list of bins, each a list of item indices (into `lengths`), in
        the order the bins were opened; inside a bin, in the order the items
        were placed (longest first).

    Raises:
        ValueError: an item longer than `capacity` or shorter than 1 (the
            message names the first), or bad `capacity` / `buffer_size`.

    Reference:
        Johnson, 1973, "Near-Optimal Bin Packing Algorithms" (MIT PhD
        thesis); Dosa, 2007, "The Tight Bound of First Fit Decreasing
        Bin-Packing Algorithm Is FFD(I) <= 11/9 OPT(I) + 6/9" (which also
        holds for best-fit decreasing); Krell et al., 2021, "Efficient
        Sequence Packing without Cross-contamination",
        https://arxiv.org/abs/2107.02027 (packing for transformers);
        Panigrahy et al., 2011, "Heuristics for Vector Bin Packing"
        (Microsoft Research; size and fit measures of several capacities).

    Example:

    >>> best_fit_decreasing([4, 8, 1, 4, 2, 1], capacity=10)
    [[1, 4], [0, 3, 2, 5]]
    >>> best_fit_decreasing([[3, 1], [1, 3], [2, 2]], capacity=(4, 4))
    [[0, 1], [2]]
    """
    lengths, capacity, one_dimensional = _check_lengths(lengths, capacity)
    pack = _best_fit_decreasing if one_dimensional else _vector_best_fit_decreasing
    if buffer_size is None:
        return pack(lengths, capacity, 0)
    buffer_size = _check_positive_int("buffer_size", buffer_size)
    bins = []
    for start in range(0, len(lengths), buffer_size):
        bins += pack(lengths[start:start + buffer_size], capacity, start)
    return bins


def _truncated(examples, sequence_length, truncation):
    token_ids, completion_mask = list(examples.token_ids), list(examples.completion_mask)
    lengths = examples.lengths
    too_long = np.flatnonzero(lengths > sequence_length)
    if too_long.size and truncation == "error":
        index = int(too_long[0])
        raise ValueError(
            f"examples[{index}] has {int(lengths[index])} tokens, more than "
            f"sequence_length={sequence_length} ({too_long.size} of {len(lengths)} examples "
            f"are longer; the longest has {int(lengths.max())}). An example (a chat turn "
            "included) is never split across windows: raise `sequence_length`, drop the "
            "long examples, or pass truncation='left' (keep the last tokens) or 'right' "
            "(keep the first tokens)."
        )
    for index in too_long:
        if truncation == "left":
            keep = slice(int(lengths[index]) - sequence_length, None)
        else:
            keep = slice(0, sequence_length)
        token_ids[index] = token_ids[index][keep]
        completion_mask[index] = completion_mask[index][keep]
    return SFTExamples(token_ids, completion_mask)


def pack_sft_examples(examples, sequence_length, packing=True, truncation="error",
                      buffer_size=None, pad_token_id=0):
    """Lays tokenized SFT examples out in windows of `sequence_length`.

    With `packing=True` the examples are assigned to windows by
    `best_fit_decreasing`; with `packing=False` every example gets a window
    of its own (one example per row, right-padded: the baseline packing is
    measured against). Window `w` holds the examples `bins[w]`, in that
    order, then padding.

    Args:
        examples: `SFTExamples` (`tokenize_sft_examples`).
        sequence_length: int >= 2, the window length.
        packing: bool, pack several examples per window.
        truncation: `"error"` (the default): an example longer than
            `sequence_length` raises, naming it and its length; `"left"`:
            keep its last `sequence_length` tokens (the end of the last
            answer); `"right"`: keep its first ones. A truncated example
            may keep no completion token (it then adds no loss).
        buffer_size: optional int, `best_fit_decreasing`'s streaming
            buffer.
        pad_token_id: int, the id of padded positions (never attended to
            nor scored).

    Returns:
        `(windows, bins)`. `windows` is a dict of numpy arrays
        `[num_windows, sequence_length]`: `token_ids` int32,
        `padding_mask` bool, `segment_ids` int32 (1..k for the k examples
        of a window, 0 on padding), `sample_weight` float32 (at position
        `t`: the completion flag of token `t + 1` when `t` and `t + 1` are
        tokens of the same example, else 0; the last position has none).
        `bins[w]` lists the example indices of window `w` (segment `k` is
        example `bins[w][k - 1]`).

    Raises:
        ValueError: bad arguments, or with `truncation="error"` an example
            longer than `sequence_length`.

    Example:

    >>> examples = SFTExamples(
    ...     [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])],
    ...     [np.array([0, 1, 1]), np.array([0, 1]), np.array([0, 0, 1, 1])])
    >>> windows, bins = pack_sft_examples(examples, sequence_length=6)
    >>> bins
    [[2, 1], [0]]
    >>> windows["token_ids"].tolist()
    [[10, 11, 12, 13, 8, 9], [5, 6, 7, 0, 0, 0]]
    >>> windows["segment_ids"].tolist()
    [[1, 1, 1, 1, 2, 2], [1, 1, 1, 0, 0, 0]]
    >>> windows["sample_weight"].tolist()  # position t weighs the target t + 1
    [[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    """
    if not isinstance(examples, SFTExamples):
        raise TypeError(
            "`examples` must be kobjectives.data.SFTExamples (from tokenize_sft_examples). "
            f"Received: {type(examples).__name__}"
        )
    if len(examples) == 0:
        raise ValueError("`examples` is empty: there is nothing to pack.")
    sequence_length = _check_positive_int("sequence_length", sequence_length, minimum=2)
    _check_choice("truncation", truncation, TRUNCATIONS)
    pad_token_id = _check_positive_int("pad_token_id", pad_token_id, minimum=0)
    for index, (ids, flags) in enumerate(zip(examples.token_ids, examples.completion_mask)):
        if len(ids) != len(flags):
            raise ValueError(
                f"examples[{index}]: {len(ids)} token ids but {len(flags)} completion flags."
            )
    examples = _truncated(examples, sequence_length, truncation)
    lengths = examples.lengths
    if packing:
        bins = best_fit_decreasing(lengths, sequence_length, buffer_size=buffer_size)
    else:
        bins = [[index] for index in range(len(examples))]
    shape = (len(bins), sequence_length)
    token_ids = np.full(shape, pad_token_id, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    completion = np.zeros(shape, np.float32)
    for row, members in enumerate(bins):
        start = 0
        for segment, index in enumerate(members, 1):
            end = start + int(lengths[index])
            token_ids[row, start:end] = examples.token_ids[index]
            completion[row, start:end] = examples.completion_mask[index]
            segment_ids[row, start:end] = segment
            start = end
    padding_mask = segment_ids > 0
    same = (segment_ids[:, :-1] == segment_ids[:, 1:]) & padding_mask[:, :-1]
    sample_weight = np.zeros(shape, np.float32)
    sample_weight[:, :-1] = completion[:, 1:] * same
    windows = {
        "token_ids": token_ids,
        "padding_mask": padding_mask,
        "segment_ids": segment_ids,
        "sample_weight": sample_weight,
    }
    return windows, bins


def sft_dataset(examples, sequence_length, batch_size, packing=True, truncation="error",
                buffer_size=None, pad_token_id=0, shuffle=True, seed=0, repeat=False,
                drop_remainder=True, cache=False, labels=False):
    """SFT batches for `kobjectives.objectives.CausalLanguageModel`.

    The windows of `pack_sft_examples` as `(x, None, sample_weight)` with
    `x = {"token_ids", "padding_mask", "segment_ids"}`: the model derives
    the next-token labels from `x` (`kobjectives.ops.causal_lm_targets`,
    reset at every example boundary) and weighs them by `sample_weight`
    (completion targets only, by default). Build the model with
    `reset_attention_at_boundaries=True` (and `restart_positions=True`, the
    default) so that packed examples do not attend to each other. The
    windows are packed once and shuffled (seeded, a new order every
    epoch); batches have static shapes with `drop_remainder=True`.

    Args:
        examples: `SFTExamples` (`tokenize_sft_examples`).
        sequence_length: int, the window length.
        batch_size: int, windows per batch (the global batch).
        packing, truncation, buffer_size, pad_token_id: as
            `pack_sft_examples`.
        shuffle: shuffle the windows (seeded, every epoch).
        seed: int, the shuffle seed.
        repeat: repeat forever.
        drop_remainder: drop the last, smaller batch (static shapes).
        cache: cache the batches after the first pass.
        labels: bool, yield the next-token labels as `y` instead of None
            (`kobjectives.ops.causal_lm_targets`: int32, 0 where the weight
            is 0), so every component has a fully defined spec (a
            `NoneTensorSpec` has no shape); the model computes the same loss.

    Returns:
        A `tf.data.Dataset` of `(x, None, sample_weight)` (`(x, labels,
        sample_weight)` with `labels=True`): `x` a dict of
        `[batch_size, sequence_length]` `token_ids` int32, `padding_mask`
        bool, `segment_ids` int32; `sample_weight` float32
        `[batch_size, sequence_length]`.

    Raises:
        ValueError: as `pack_sft_examples`, or fewer windows than
            `batch_size` with `drop_remainder=True` (no batch at all).

    Example:

    >>> examples = SFTExamples(
    ...     [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])],
    ...     [np.array([0, 1, 1]), np.array([0, 1]), np.array([0, 0, 1, 1])])
    >>> dataset = sft_dataset(examples, sequence_length=6, batch_size=2, shuffle=False)
    >>> x, y, sample_weight = next(iter(dataset))
    >>> sorted(x), y, tuple(sample_weight.shape)
    (['padding_mask', 'segment_ids', 'token_ids'], None, (2, 6))
    >>> x, y, _ = next(iter(sft_dataset(examples, 6, 2, shuffle=False, labels=True)))
    >>> y.numpy().tolist()  # token t + 1 within an example, else 0
    [[11, 12, 13, 0, 9, 0], [6, 7, 0, 0, 0, 0]]
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    windows, _ = pack_sft_examples(
        examples, sequence_length, packing=packing, truncation=truncation,
        buffer_size=buffer_size, pad_token_id=pad_token_id)
    count = len(windows["token_ids"])
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"The {len(examples)} examples fill {count} windows, fewer than batch_size="
            f"{batch_size}, so drop_remainder=True leaves no batch. Give more examples, "
            "a smaller batch_size, or drop_remainder=False."
        )
    x = {key: windows[key] for key in ("token_ids", "padding_mask", "segment_ids")}
    dataset = tf.data.Dataset.from_tensor_slices((x, windows["sample_weight"]))
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if labels:
        dataset = dataset.map(lambda x, weight: (x, causal_lm_targets(
            x["token_ids"], x["padding_mask"], x["segment_ids"])[0], weight))
    else:
        dataset = dataset.map(lambda x, weight: (x, None, weight))
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


class ChatPromptPreprocessor(tf.Module):
    """Raw user prompts -> the token ids of a chat generation prompt, laid
    out as `tokenize_sft_examples` lays out a conversation's start.

    A prompt `p` becomes the ids of `template.generation_prompt([{"role":
    "user", "content": p}])`: `[start] <|user|> tokens(p) <|end|>
    <|assistant|>`, right-padded to `sequence_length`, so the model's
    prediction at the last real position is the first token of the answer.
    The markers are inserted as ids, never read from the text: a prompt
    that spells a marker out is tokenized as ordinary text (WordPiece
    splits `<`, `|`, `>` off), so it cannot forge a turn. A prompt too
    long for the window keeps its last tokens (the markers always stay).
    Built from TensorFlow ops only (it runs inside a SavedModel).

    Args:
        tokenizer: a keras-hub tokenizer mapping a batch of strings to
            ragged ids, with `token_to_id` and `pad_token_id`, whose
            vocabulary holds `template.markers`
            (`kobjectives.data.add_chat_tokens`).
        sequence_length: int, the window length; at least the number of
            marker and start tokens plus one.
        template: the `ChatTemplate` of training.
        start_token_id: optional int, the first token (as given to
            `tokenize_sft_examples`).

    Call arguments:
        text: string tensor `[batch]`, the user prompts.

    Returns (of a call):
        dict of int32 `[batch, sequence_length]` `token_ids` and
        `padding_mask`.

    Raises:
        ValueError: a marker missing from the vocabulary, or a
            `sequence_length` too short for the markers.

    Example:

    >>> import keras_hub
    >>> from kobjectives.data.chat import add_chat_tokens
    >>> vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "[CLS]", "hi", "!"])
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    >>> preprocessor = ChatPromptPreprocessor(tokenizer, 8, start_token_id=2)
    >>> out = preprocessor(tf.constant(["Hi!", "hi hi hi hi hi"]))
    >>> [[vocabulary[i] for i in row] for row in out["token_ids"].numpy().tolist()][0]
    ['[CLS]', '<|user|>', 'hi', '!', '<|end|>', '<|assistant|>', '[PAD]', '[PAD]']
    >>> out["token_ids"].numpy().tolist()[1]  # the prompt's last tokens are kept
    [2, 6, 3, 3, 3, 3, 8, 7]
    """

    def __init__(self, tokenizer, sequence_length, template=DEFAULT_CHAT_TEMPLATE,
                 start_token_id=None):
        super().__init__()
        if not isinstance(template, ChatTemplate):
            raise TypeError(
                f"`template` must be a kobjectives.data.ChatTemplate. Received: "
                f"{type(template).__name__}"
            )
        self.tokenizer = tokenizer
        self.sequence_length = _check_positive_int("sequence_length", sequence_length, minimum=2)
        prefix = [] if start_token_id is None else [
            _check_positive_int("start_token_id", start_token_id, minimum=0)]
        prefix.append(_marker_id(tokenizer, template.user_marker))
        suffix = [_marker_id(tokenizer, template.end_marker),
                  _marker_id(tokenizer, template.assistant_marker)]
        room = self.sequence_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(
                f"sequence_length={sequence_length} leaves no room for a prompt token after "
                f"the {len(prefix) + len(suffix)} start and marker tokens."
            )
        self.prefix, self.suffix, self.room = prefix, suffix, room
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = 0 if pad is None else int(pad)

    def __call__(self, text):
        tokens = self.tokenizer(tf.convert_to_tensor(text))
        if isinstance(tokens, list):  # keras-hub returns lists when called eagerly
            tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
        if not isinstance(tokens, tf.RaggedTensor):
            raise ValueError(
                "The tokenizer must map a batch of strings to ragged token ids; build it "
                "without `sequence_length`."
            )
        tokens = tf.cast(tokens, tf.int32)[:, -self.room:]
        batch = tokens.nrows()

        def constant(ids):
            ids = tf.constant([ids], tf.int32)
            return tf.RaggedTensor.from_tensor(tf.tile(ids, tf.stack([batch, 1])))

        ids = tf.concat([constant(self.prefix), tokens, constant(self.suffix)], axis=1)
        shape = tf.stack([batch, self.sequence_length])
        token_ids = ids.to_tensor(default_value=self.pad_token_id, shape=shape)
        padding_mask = tf.sequence_mask(ids.row_lengths(), self.sequence_length, tf.int32)
        return {"token_ids": token_ids, "padding_mask": padding_mask}
