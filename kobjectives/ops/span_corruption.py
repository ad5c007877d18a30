"""T5 span corruption as seeded, static-shaped tensor functions.

The definitions follow T5's `random_spans_noise_mask` (Raffel et al., 2020,
`t5.data.preprocessors`): for a sequence of `n` real tokens,

- `num_noise_tokens = round(n * noise_density)`, clipped to `[1, n - 1]`;
- `num_noise_spans = round(num_noise_tokens / mean_noise_span_length)`, at
  least 1 (and, here, at most `min(num_noise_tokens, n - num_noise_tokens)`,
  so every span is non-empty: T5 fails in that corner instead);
- the noise tokens and the kept tokens are each split into `num_noise_spans`
  non-empty spans by a uniformly random segmentation, and the spans are
  interleaved kept / noise / kept / noise ..., so a sequence always starts
  with kept tokens and ends with noise;
- except (unlike T5) a row with a single noise span (with T5's defaults,
  every row of 30 tokens or fewer): T5 puts that span at the very end of the
  row whatever the seed, so such a row would be corrupted the same way in
  every epoch. Here it follows a uniformly random number `k` in `[1, kept]`
  of kept tokens (the other kept tokens come after it). T5's own remedy,
  `random_roll=True`, rotates every row's mask; rows with several spans are
  left exactly as T5 (without roll) draws them.

The encoder input keeps the kept tokens and replaces each noise span by one
sentinel id; the target is each noise span after its sentinel (T5's
`noise_span_to_unique_sentinel` / `nonnoise_span_to_unique_sentinel`), each
optionally followed by an EOS id. Rounding is half-to-even in float64, both in
the tensor code and in the static length computations, so the two agree.

Everything works on a batch `[batch, length]` with a per-row number of real
tokens; randomness comes from `tf.random.stateless_*` ops keyed by a seed.
"""

import numpy as np
import tensorflow as tf


# ---------------------------------------------------------------------------
# Counts and static lengths (Python ints).
# ---------------------------------------------------------------------------


def noise_span_counts(length, noise_density, mean_noise_span_length):
    """`(num_noise_tokens, num_noise_spans)` for a sequence of `length` tokens.

    Python twin of the counts `random_spans_noise_mask` draws with; `length`
    must be at least 2 (one noise and one kept token).

    Example:

    >>> noise_span_counts(100, 0.15, 3.0)
    (15, 5)
    """
    length = int(length)
    if length < 2:
        raise ValueError(
            f"Span corruption needs at least 2 tokens (one noise, one kept); "
            f"received length={length}."
        )
    num_noise = int(np.clip(np.round(np.float64(length) * noise_density), 1, length - 1))
    num_spans = max(int(np.round(np.float64(num_noise) / mean_noise_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def span_corruption_lengths(
    sequence_length, noise_density=0.15, mean_noise_span_length=3.0, add_eos=True
):
    """Static `(inputs_length, targets_length, num_noise_spans)` for up to
    `sequence_length` real tokens.

    The inputs hold the kept tokens and one sentinel per noise span, the
    targets one sentinel per span and the noise tokens; each gets one EOS
    when `add_eos`. All three grow monotonically with the number of real
    tokens, so the values for `sequence_length` bound every shorter row (as
    T5's `compute_input_and_target_lengths` computes for the full length).

    Example:

    >>> span_corruption_lengths(100)
    (91, 21, 5)
    """
    num_noise, num_spans = noise_span_counts(
        sequence_length, noise_density, mean_noise_span_length
    )
    eos = 1 if add_eos else 0
    return (
        int(sequence_length) - num_noise + num_spans + eos,
        num_noise + num_spans + eos,
        num_spans,
    )


def raw_length_for_inputs_length(
    inputs_length, noise_density=0.15, mean_noise_span_length=3.0, add_eos=True
):
    """The longest raw sequence whose corrupted inputs fit `inputs_length`.

    T5's `compute_input_and_target_lengths`: pick the number of raw tokens
    to read so that after corruption (and EOS) the encoder input is at most
    `inputs_length` long.

    Example:

    >>> raw_length_for_inputs_length(64)
    70
    """
    inputs_length = int(inputs_length)
    best = None
    for length in range(2, 4 * inputs_length + 8):
        if span_corruption_lengths(
            length, noise_density, mean_noise_span_length, add_eos
        )[0] > inputs_length:
            break
        best = length
    if best is None:
        raise ValueError(
            f"`inputs_length={inputs_length}` is too short for span corruption "
            "(2 raw tokens need more). Use a longer inputs length."
        )
    return best


# ---------------------------------------------------------------------------
# The noise mask.
# ---------------------------------------------------------------------------


def _round_half_even(x):
    return tf.cast(tf.round(tf.cast(x, tf.float64)), tf.int32)


def noise_span_counts_tensor(lengths, noise_density, mean_noise_span_length):
    """Per-row `(num_noise_tokens, num_noise_spans)` int32 `[batch]` for
    int `lengths` `[batch]` (each >= 2), as `noise_span_counts`."""
    lengths = tf.cast(lengths, tf.int32)
    num_noise = _round_half_even(tf.cast(lengths, tf.float64) * noise_density)
    num_noise = tf.clip_by_value(num_noise, 1, tf.maximum(lengths - 1, 1))
    num_spans = tf.maximum(
        _round_half_even(tf.cast(num_noise, tf.float64) / mean_noise_span_length), 1
    )
    num_spans = tf.minimum(tf.minimum(num_spans, num_noise), lengths - num_noise)
    return num_noise, num_spans


def random_segmentation(num_items, num_segments, max_items, seed):
    """Splits `num_items[b]` items into `num_segments[b]` non-empty segments.

    The segmentation is uniform over all compositions: `num_segments - 1`
    distinct cut points are drawn uniformly among the `num_items - 1` gaps
    (T5 shuffles a vector with that many ones).

    Args:
        num_items: int32 `[batch]`, each in `[1, max_items]`.
        num_segments: int32 `[batch]`, each in `[1, num_items]`.
        max_items: Python int, the static bound of `num_items`.
        seed: int tensor `[2]`, a stateless seed.

    Returns:
        int32 `[batch, max_items]`: segment lengths in order, zeros after the
        row's `num_segments` segments; each row sums to `num_items[b]`.
    """
    num_items = tf.cast(num_items, tf.int32)
    num_segments = tf.cast(num_segments, tf.int32)
    batch = tf.shape(num_items)[0]
    if max_items < 2:
        return tf.reshape(num_items, [-1, 1])[:, :max_items]
    # Gap g (1..max_items-1) is the start of a new segment when it is cut.
    gaps = tf.range(1, max_items, dtype=tf.int32)
    scores = tf.random.stateless_uniform([batch, max_items - 1], seed, dtype=tf.float32)
    valid = gaps[None, :] < num_items[:, None]
    scores = tf.where(valid, scores, 2.0)
    ranks = tf.argsort(tf.argsort(scores, axis=-1, stable=True), axis=-1, stable=True)
    is_cut = ranks < (num_segments - 1)[:, None]
    cuts = tf.sort(tf.where(is_cut, gaps[None, :], max_items), axis=-1)
    starts = tf.concat([tf.zeros([batch, 1], tf.int32), cuts], axis=1)
    ends = tf.concat([cuts, tf.fill([batch, 1], max_items)], axis=1)
    limit = num_items[:, None]
    return tf.minimum(ends, limit) - tf.minimum(starts, limit)


def random_spans_noise_mask(
    lengths, max_length, noise_density, mean_noise_span_length, seed
):
    """T5's random-spans noise mask, batched with per-row lengths.

    Args:
        lengths: int `[batch]`, the real tokens of each row (each >= 2;
            positions from `lengths[b]` on are padding).
        max_length: Python int, the static row length.
        noise_density: float in (0, 1), the fraction of tokens to corrupt.
        mean_noise_span_length: float >= 1, the mean length of a noise span.
        seed: int tensor `[2]`, a stateless seed.

    A row with one noise span places it after a uniformly random number
    (at least 1) of kept tokens instead of at the end (see the module
    docstring); its remaining kept tokens then get span index 1.

    Returns:
        `(noise_mask, span_index)`: bool `[batch, max_length]`, True at noise
        tokens (never at padding), and int32 `[batch, max_length]`, the
        0-based index of the kept/noise span pair a position belongs to (the
        `k`-th kept span and the `k`-th noise span both have index `k`; kept
        tokens after the last noise span have index `num_noise_spans`).

    Example:

    >>> mask, _ = random_spans_noise_mask(
    ...     tf.constant([100]), 100, 0.15, 3.0, tf.constant([1, 2]))
    >>> int(tf.reduce_sum(tf.cast(mask, tf.int32)))
    15
    """
    lengths = tf.cast(lengths, tf.int32)
    num_noise, num_spans = noise_span_counts_tensor(
        lengths, noise_density, mean_noise_span_length
    )
    # The first two seeds are those of a split in 2 (Philox counters), so
    # rows with several spans are drawn as before the third was added.
    noise_seed, keep_seed, place_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    )
    noise_lengths = random_segmentation(num_noise, num_spans, max_length, noise_seed)
    num_kept = lengths - num_noise
    keep_lengths = random_segmentation(num_kept, num_spans, max_length, keep_seed)
    batch = tf.shape(lengths)[0]
    # One noise span: `first` kept tokens in [1, num_kept] before it, the
    # rest after it (as kept span 1), instead of always at the end.
    u = tf.random.stateless_uniform([batch], place_seed, dtype=tf.float32)
    first = 1 + tf.minimum(
        tf.cast(u * tf.cast(num_kept, tf.float32), tf.int32), tf.maximum(num_kept - 1, 0)
    )
    placed = tf.concat(
        [tf.stack([first, num_kept - first], axis=1), tf.zeros([batch, max_length - 2], tf.int32)],
        axis=1,
    )
    keep_lengths = tf.where(tf.equal(num_spans, 1)[:, None], placed, keep_lengths)
    interleaved = tf.reshape(
        tf.stack([keep_lengths, noise_lengths], axis=2), [batch, 2 * max_length]
    )
    ends = tf.cumsum(interleaved, axis=1)
    positions = tf.broadcast_to(tf.range(max_length, dtype=tf.int32)[None], [batch, max_length])
    span = tf.searchsorted(ends, positions, side="right", out_type=tf.int32)
    real = positions < lengths[:, None]
    noise_mask = tf.logical_and(tf.equal(span % 2, 1), real)
    return noise_mask, span // 2


# ---------------------------------------------------------------------------
# Inputs and targets.
# ---------------------------------------------------------------------------


def _compact(values, keep, length, eos_token_id, padding_token_id):
    """Left-packs `values[keep]` per row, appends EOS, pads to `length`."""
    ragged = tf.ragged.boolean_mask(values, keep)
    if eos_token_id is not None:
        eos = tf.fill([ragged.nrows(), 1], tf.cast(eos_token_id, values.dtype))
        ragged = tf.concat([ragged, eos], axis=1)
    row_lengths = ragged.row_lengths()
    dense = ragged.to_tensor(
        default_value=tf.cast(padding_token_id, values.dtype), shape=[None, length]
    )
    mask = tf.sequence_mask(row_lengths, length)
    return dense, mask, row_lengths


def span_corruption(
    token_ids,
    lengths,
    seed,
    sentinel_ids,
    inputs_length,
    targets_length,
    noise_density=0.15,
    mean_noise_span_length=3.0,
    eos_token_id=None,
    padding_token_id=0,
):
    """Corrupts a batch with T5 span corruption.

    Args:
        token_ids: int `[batch, length]`, real tokens first in each row.
        lengths: int `[batch]`, the real tokens of each row (each >= 2).
        seed: int tensor `[2]`, a stateless seed.
        sentinel_ids: sequence of ints: the id of the 1st, 2nd, ... noise
            span's sentinel (at least as many as the longest row has spans).
        inputs_length, targets_length: Python ints, the static output
            lengths; they must fit the longest row (see
            `span_corruption_lengths`); rows are padded to them.
        noise_density, mean_noise_span_length: the corruption, as T5.
        eos_token_id: optional id appended to inputs and targets.
        padding_token_id: the id that pads the outputs.

    Returns:
        dict of `encoder_token_ids`, `encoder_padding_mask` (bool)
        `[batch, inputs_length]`, `target_ids`, `target_padding_mask` (bool)
        `[batch, targets_length]`, and `noise_mask` (bool `[batch, length]`).

    Example:

    >>> out = span_corruption(
    ...     tf.constant([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]), tf.constant([10]),
    ...     tf.constant([0, 0]), sentinel_ids=[99, 98], inputs_length=11,
    ...     targets_length=5, noise_density=0.3, eos_token_id=1)
    >>> out["encoder_token_ids"].shape, out["target_ids"].shape
    (TensorShape([1, 11]), TensorShape([1, 5]))
    """
    token_ids = tf.convert_to_tensor(token_ids)
    max_length = token_ids.shape[-1]
    noise_mask, span = random_spans_noise_mask(
        lengths, max_length, noise_density, mean_noise_span_length, seed
    )
    real = tf.sequence_mask(lengths, max_length)
    previous_noise = tf.pad(noise_mask[:, :-1], [[0, 0], [1, 0]])
    sentinels = tf.constant(list(sentinel_ids), dtype=token_ids.dtype)
    span_sentinel = tf.gather(sentinels, tf.minimum(span, len(sentinel_ids) - 1))

    # Inputs: kept tokens, and the first token of each noise span -> sentinel.
    first_noise = tf.logical_and(noise_mask, tf.logical_not(previous_noise))
    inputs = tf.where(first_noise, span_sentinel, token_ids)
    keep_inputs = tf.logical_and(real, tf.logical_or(tf.logical_not(noise_mask), first_noise))
    # Targets: noise tokens, and the first token of each kept span followed
    # by a noise span -> sentinel.
    kept = tf.logical_and(real, tf.logical_not(noise_mask))
    previous_kept = tf.pad(kept[:, :-1], [[0, 0], [1, 0]])
    num_spans = tf.reduce_sum(tf.cast(first_noise, tf.int32), axis=1, keepdims=True)
    first_kept = tf.logical_and(
        tf.logical_and(kept, tf.logical_not(previous_kept)), span < num_spans
    )
    targets = tf.where(first_kept, span_sentinel, token_ids)
    keep_targets = tf.logical_or(noise_mask, first_kept)

    encoder_ids, encoder_mask, _ = _compact(
        inputs, keep_inputs, inputs_length, eos_token_id, padding_token_id
    )
    target_ids, target_mask, _ = _compact(
        targets, keep_targets, targets_length, eos_token_id, padding_token_id
    )
    return {
        "encoder_token_ids": encoder_ids,
        "encoder_padding_mask": encoder_mask,
        "target_ids": target_ids,
        "target_padding_mask": target_mask,
        "noise_mask": noise_mask,
    }


def merge_span_corruption(inputs, targets, sentinel_ids, eos_token_id=None, padding_token_id=0):
    """Fills each sentinel of `inputs` with its span from `targets` (NumPy).

    The inverse of `span_corruption` for one row, and the way to read a
    model's span predictions back into text: inputs `a <s0> d <s1>`, targets
    `<s0> b c <s1> e` give `a b c d e`. Padding and EOS ids end a sequence.
    A sentinel with no span in the targets is dropped.

    Args:
        inputs: 1-D int sequence, the encoder input.
        targets: 1-D int sequence, the target.
        sentinel_ids: the sentinel ids, as given to `span_corruption`.
        eos_token_id: optional EOS id (ends each sequence).
        padding_token_id: the padding id (ends each sequence).

    Returns:
        list of int: the merged sequence.

    Example:

    >>> merge_span_corruption([5, 99, 8, 98, 1], [99, 6, 7, 98, 9, 1], [99, 98], 1)
    [5, 6, 7, 8, 9]
    """
    sentinels = {int(s) for s in sentinel_ids}
    stops = {padding_token_id} | ({eos_token_id} if eos_token_id is not None else set())

    def until_stop(sequence):
        out = []
        for token in np.asarray(sequence).reshape(-1).tolist():
            if token in stops:
                break
            out.append(int(token))
        return out

    spans, current = {}, None
    for token in until_stop(targets):
        if token in sentinels:
            current = token
            spans.setdefault(current, [])
        elif current is not None:
            spans[current].append(token)
    merged = []
    for token in until_stop(inputs):
        merged.extend(spans.get(token, []) if token in sentinels else [token])
    return merged
