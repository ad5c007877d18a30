"""Masked-LM masking math: selection, span tiling, replacement.

Pure, vectorized, stateless TensorFlow functions over `[batch, length]`
tensors; the single source of truth for `kobjectives.layers.MaskedLMMasker`,
which only adds input handling, seeds and validation around `mask_tokens`.

Conventions: `token_ids` is a dense integer tensor `[batch, length]` with ids
`>= 0`; boolean masks have the same shape; a `seed` is a stateless seed (an
integer tensor of shape `[2]`). All randomness comes from one stream of
random words keyed by the seed (`random_words`: a Philox draw of 64 bits,
expanded by SplitMix64): the same seed and input give the same result, and
nothing holds state. No per-example Python, no `tf.map_fn`: a call is a
fixed graph of about seventy batched ops (token strategy, static length).
On CPU most of them cost about as much as their launch, so the formulas
below are written to need few ops (e.g. running sums as a matrix product),
and no sort: on random keys a sort's branches are mispredicted about every
other comparison.

## Selection: one row-wise k-th largest for every strategy

Every strategy is "take whole *chunks* of consecutive selectable tokens": a
token is its own chunk (`"token"`), a word is a chunk (`"whole_word"`), a
geometric-length tile is a chunk (`"span"`). Each chunk gets a uniformly
random integer key shared by all of its tokens (`chunk_keys`), and every
selectable token is scored `key * 2**p + (length - 1 - position)`
(`2**p >= length`), every other position `-1` (`position_scores`).
Ordered by score, highest first, the tokens come chunk after chunk in a
uniformly random chunk order, each chunk's tokens together and in position
order: the chunks laid end to end on a random line. A selection is a
prefix of that line, so it is `scores >= the k-th largest score` for the
right `k`, found per row in linear time (`kth_largest`, one
`NthElement`), and never needs the line sorted. With `n` selectable
tokens in a row and its target `t = rate * n`:

- token and span: the first `k = floor(t + u)` tokens of the line are taken,
  `u ~ U[0, 1)` (stochastic rounding, `E[k] = t`); a span can be cut short.
  (`stochastic_budget`)
- whole-word: whole chunks only. The chunk at line places `[c, e)` holding
  the line position `floor(t)` is taken iff `c + v * (e - c) < t`,
  `v ~ U[0, 1)`, so with probability `(t - c) / (e - c)`: `E[taken] = t`
  and no word is ever cut. (`whole_chunk_selection`: the
  `floor(t) + 1`-th largest score names that chunk.)

So the selected token fraction is unbiased whenever `max_selections` (the
number of prediction slots) does not cap. When it does, at most
`max_selections` tokens are taken; under whole-word masking the line stops
before the first word that does not fit entirely. Keys that happen to
collide merge two chunks into one (both or neither taken), which keeps the
estimates unbiased and the words whole. The selected positions are packed,
ascending, into the slots by one `tf.where` and one `RaggedTensorToTensor`
(`compact_positions`).

Chunk keys need a running sum: each key is the running sum, modulo
`2**key_bits`, of uniform random increments placed at the chunk starts.
Partial sums of i.i.d. uniform increments modulo `2**key_bits` are again
i.i.d. uniform, so every chunk gets an independent uniform key without any
gather or segment op. Running sums are products with a triangular matrix
(exact in floating point at these sizes; much faster than `tf.cumsum` on
CPU).
"""

import numpy as np
import tensorflow as tf

__all__ = [
    "random_words",
    "id_ranges",
    "ids_in",
    "selectable_mask",
    "word_starts",
    "truncated_geometric_lengths",
    "geometric_tile_starts",
    "chunk_keys",
    "position_scores",
    "kth_largest",
    "stochastic_budget",
    "whole_chunk_selection",
    "compact_positions",
    "sample_replacement_ids",
    "apply_replacements",
    "mask_tokens",
]

# Scores are non-negative int32 values below 2**_SCORE_BITS.
_SCORE_BITS = 30
# Beyond this many contiguous id ranges, set membership uses a table gather.
_MAX_RANGE_COMPARES = 8
# Span tile lengths use the top bits of the key draw.
_LENGTH_BITS = 15


def _dim(x, axis):
    """The static size of `x` along `axis` as an int, else a scalar tensor
    (static sizes keep the shape arithmetic out of the graph)."""
    static = x.shape[axis]
    return int(static) if static is not None else tf.shape(x)[axis]


def _length(x):
    """The static length (axis 1) of `x` as an int, else a scalar tensor."""
    return _dim(x, 1)


def _position_bits(length):
    """Smallest `p` with `2**p >= length`; 32 (int64 scores) if dynamic."""
    if isinstance(length, int):
        return max(length - 1, 0).bit_length()
    return 32


def _shift_right(x, fill):
    """Shifts `[batch, length]` one position right, filling position 0."""
    return tf.pad(x[:, :-1], [[0, 0], [1, 0]], constant_values=fill)


def _triangular(length, dtype, strict=False):
    """`m[j, t] = 1` for `j <= t` (`j < t` if strict), so `x @ m` = cumsum."""
    if isinstance(length, int):
        m = np.triu(np.ones([length, length]), k=1 if strict else 0)
        return tf.constant(m, dtype=dtype)
    m = tf.linalg.band_part(tf.ones(tf.stack([length, length]), dtype), 0, -1)
    if strict:
        m = m - tf.linalg.band_part(m, 0, 0)
    return m


def _reverse_positions(length):
    """`[[length - 1, ..., 1, 0]]`, int32."""
    if isinstance(length, int):
        return tf.constant(np.arange(length - 1, -1, -1, dtype="int32")[None])
    return tf.range(length - 1, -1, -1, dtype="int32")[None, :]


def _slot_range(k, reverse=False):
    """`[[0., 1., ..., k - 1.]]` (reversed if `reverse`), float32."""
    slots = np.arange(k, dtype="float32")
    return tf.constant((slots[::-1] if reverse else slots)[None])


def _row_offsets(batch, width):
    """`[[0], [width], [2 * width], ...]`, int32 `[batch, 1]`: the flat
    index of each row's first element."""
    if isinstance(batch, int) and isinstance(width, int):
        offsets = np.arange(0, batch * width, width, dtype="int32")
        return tf.constant(offsets[:, None])
    return tf.range(0, batch * width, width)[:, None]


# SplitMix64's increment: the odd integer nearest 2**64 / golden ratio.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
# Up to this many stream steps are a graph constant, beyond it computed.
_MAX_CONSTANT_STEPS = 2**16


def _mix64(x):
    """Stafford's "Mix13" finalizer, SplitMix64's output function: a
    bijection of uint64 `x` in which every output bit depends on every
    input bit."""

    def xor_shift(x, bits):
        return tf.bitwise.bitwise_xor(
            x, tf.bitwise.right_shift(x, tf.constant(bits, "uint64"))
        )

    x = xor_shift(x, 30) * tf.constant(0xBF58476D1CE4E5B9, "uint64")
    x = xor_shift(x, 27) * tf.constant(0x94D049BB133111EB, "uint64")
    return xor_shift(x, 31)


def random_words(batch, width, seed):
    """Uniform random int32 words `[batch, width]` (width rounded up to even)
    from a stateless seed: one Philox draw expanded by SplitMix64.

    `tf.random.stateless_uniform` (Philox) turns `seed` into one 64-bit
    stream start `s`; the `j`-th 64-bit output of the SplitMix64 stream
    from `s`, `mix(s + (j + 1) * gamma)` (Steele, Lea and Flood, 2014:
    "Fast splittable pseudorandom number generators"; `mix` is Stafford's
    Mix13), gives words `2j` and `2j + 1` of the result in row-major order
    (its low then high half; a big-endian host swaps the two). The
    expansion is nine elementwise integer ops; on CPU they cost about half
    as much as a Philox draw of every word (`benchmarks/RESULTS.md`).
    (`ops.replaced_token_detection.counter_uniform` is the other counter-
    based generator of the package: it must be bit-identical under XLA, so
    it keys its hash without Philox, at several times the ops per
    element; masking runs only in `tf.data` and takes the cheaper route.)

    Args:
        batch: int or scalar int32 tensor.
        width: int or scalar int32 tensor, at least 1.
        seed: stateless seed, int tensor `[2]`.

    Returns:
        int32 tensor `[batch, 2 * ceil(width / 2)]`, uniform over all int32
        values, a pure function of `seed` and the shape.
    """
    pairs = (width + 1) // 2
    start = tf.random.stateless_uniform(
        [], tf.cast(seed, "int64"), minval=None, maxval=None, dtype="int64"
    )
    static = isinstance(batch, int) and isinstance(pairs, int)
    if static and batch * pairs <= _MAX_CONSTANT_STEPS:
        index = np.arange(1, batch * pairs + 1, dtype="uint64")
        steps = tf.constant(
            (index * np.uint64(_GOLDEN_GAMMA)).reshape([batch, pairs])
        )
    else:
        index = tf.range(1, tf.cast(batch * pairs, "int64") + 1)
        steps = tf.reshape(
            tf.bitcast(index, "uint64") * tf.constant(_GOLDEN_GAMMA, "uint64"),
            tf.stack([batch, pairs]),
        )
    words = tf.bitcast(_mix64(tf.bitcast(start, "uint64") + steps), "int32")
    return tf.reshape(words, tf.stack([batch, 2 * pairs]))


def id_ranges(ids):
    """Sorted, merged `(first, last)` ranges of consecutive ids."""
    ranges = []
    for i in sorted(set(int(i) for i in ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return [tuple(r) for r in ranges]


def _id_table(groups, size):
    """int8 table of `size` ids: `table[i] = value` for `(ids, value)`."""
    table = np.zeros([size], dtype="int8")
    for ids, value in groups:
        ids = [int(i) for i in ids]
        table[ids] = value
    return tf.constant(table)


def ids_in(token_ids, ids, negate=False):
    """Whether each element of `token_ids` (all `>= 0`) is one of `ids`.

    A few comparisons when `ids` forms at most 8 contiguous ranges (special
    tokens usually do), else one gather from a boolean table.

    Args:
        token_ids: int tensor.
        ids: iterable of ints.
        negate: if `True`, return "not one of `ids`" instead (as cheap).

    Returns:
        bool tensor like `token_ids`.
    """
    ranges = id_ranges(ids)
    if not ranges:
        fill = tf.ones_like if negate else tf.zeros_like
        return fill(token_ids, dtype="bool")
    dtype = token_ids.dtype
    if len(ranges) > _MAX_RANGE_COMPARES:
        size = ranges[-1][1] + 2
        table = _id_table([(ids, 1)], size)
        index = tf.minimum(token_ids, tf.cast(size - 1, dtype))
        return tf.equal(tf.gather(table, index), 0 if negate else 1)
    result = None
    for lo, hi in ranges:
        lo_, hi_ = tf.cast(lo, dtype), tf.cast(hi, dtype)
        if negate:
            # Outside [lo, hi]; the ranges are then all required.
            if lo == hi:
                part = tf.not_equal(token_ids, lo_)
            else:
                part = tf.logical_or(token_ids < lo_, token_ids > hi_)
            result = part if result is None else tf.logical_and(result, part)
        else:
            if lo == hi:
                part = tf.equal(token_ids, lo_)
            else:
                part = tf.logical_and(token_ids >= lo_, token_ids <= hi_)
            result = part if result is None else tf.logical_or(result, part)
    return result


def selectable_mask(token_ids, padding_mask, unselectable_ids=()):
    """Positions that may be selected: real tokens not in `unselectable_ids`.

    Args:
        token_ids: int tensor `[batch, length]`, ids `>= 0`.
        padding_mask: bool tensor `[batch, length]`, `True` on real tokens.
        unselectable_ids: ids never selected (special tokens).

    Returns:
        bool tensor `[batch, length]`.
    """
    selectable = tf.cast(padding_mask, "bool")
    if len(unselectable_ids):
        regular = ids_in(token_ids, unselectable_ids, negate=True)
        selectable = tf.logical_and(selectable, regular)
    return selectable


def word_starts(selectable, is_continuation):
    """First piece of each word, for whole-word masking.

    A selectable token starts a word unless it is a continuation piece (a
    WordPiece `"##..."` entry) right after another selectable token; a
    continuation piece after a special or padding position starts a word.

    Args:
        selectable: bool tensor `[batch, length]`.
        is_continuation: bool tensor `[batch, length]`.

    Returns:
        bool tensor `[batch, length]`.
    """
    continues = tf.logical_and(
        is_continuation, _shift_right(selectable, False)
    )
    return tf.logical_and(selectable, tf.logical_not(continues))


def truncated_geometric_lengths(uniform, p, max_length, dtype="int32"):
    """Span lengths from `Geo(p)` truncated (renormalized) at `max_length`.

    `P(l) = p (1 - p)**(l - 1) / (1 - (1 - p)**max_length)` for
    `l = 1 .. max_length` (SpanBERT's distribution: mean 3.8 for `p=0.2`,
    `max_length=10`), by inverse-CDF sampling of `uniform` (float32 in
    `(0, 1)`): `l = ceil(log(1 - uniform * norm) / log(1 - p))`.

    Returns:
        tensor like `uniform` of `dtype`, values in `[1, max_length]`.
    """
    if p >= 1.0 or max_length == 1:
        return tf.ones_like(uniform, dtype)
    q = 1.0 - float(p)
    norm = 1.0 - q**max_length
    lengths = tf.math.ceil(
        tf.math.log1p(uniform * -norm) * float(1.0 / np.log(q))
    )
    return tf.cast(tf.clip_by_value(lengths, 1.0, float(max_length)), dtype)


def _tile_starts_from_lengths(lengths):
    """Tile-start marks `[batch, length]` for float32 tile `lengths`."""
    length = _length(lengths)
    # Tile j starts at sum(lengths[:j]): exact, small integers in float32.
    bounds = tf.cast(
        tf.matmul(lengths, _triangular(length, "float32", strict=True)),
        "int32",
    )
    # A per-row histogram of the starts marks them (those past the end of
    # the row are dropped).
    marks = tf.raw_ops.DenseBincount(
        input=bounds,
        size=length,
        weights=tf.constant([], "int32"),
        binary_output=True,
    )
    return tf.cast(marks, "bool")


def geometric_tile_starts(uniform, p, max_length):
    """Tiles each row's positions with truncated-geometric-length tiles.

    Tile `j` of a row has length `truncated_geometric_lengths(uniform[:, j])`
    and the tiles are laid from position 0 on (a row needs at most `length`
    tiles); the tile starts are marked with one per-row histogram
    (`DenseBincount`).

    Args:
        uniform: float32 `[batch, length]` in `(0, 1)`.
        p: float in `(0, 1]`.
        max_length: int >= 1.

    Returns:
        bool tensor `[batch, length]`, `True` where a tile starts.
    """
    lengths = truncated_geometric_lengths(
        uniform, p, max_length, dtype="float32"
    )
    return _tile_starts_from_lengths(lengths)


def _tile_starts_from_bits(bits, p, max_length):
    """`geometric_tile_starts` with `uniform` from the top `_LENGTH_BITS`
    bits of int32 `bits` (the midpoint of one of `2**15` equal cells of
    `(0, 1)`), its scaling folded into the inverse CDF."""
    top = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(bits, 32 - _LENGTH_BITS),
        (1 << _LENGTH_BITS) - 1,
    )
    if p >= 1.0 or max_length == 1:
        return _tile_starts_from_lengths(tf.ones_like(top, "float32"))
    q = 1.0 - float(p)
    step = (1.0 - q**max_length) / 2**_LENGTH_BITS
    # log(1 - u * norm) with u = (top + 0.5) / 2**15.
    log = tf.math.log1p(tf.cast(top, "float32") * -step - 0.5 * step)
    lengths = tf.math.ceil(log * float(1.0 / np.log(q)))
    lengths = tf.clip_by_value(lengths, 1.0, float(max_length))
    return _tile_starts_from_lengths(lengths)


def _key_layout(length):
    """`(p, key_bits, float dtype)` for scores and exact running sums.

    Scores are int32 `key * 2**p + position part` below `2**30` when the
    length is static, else int64 with `p = 32` and 31-bit keys. Running sums
    of `length` keys are exact in float32 below `2**24`, in float64 below
    `2**53`.
    """
    p = _position_bits(length)
    if not isinstance(length, int):
        return p, 31, "float64"
    if 24 - p >= 16:
        return p, 24 - p, "float32"
    return p, _SCORE_BITS - p, "float64"


def chunk_keys(starts, random_bits, key_bits, dtype="float32"):
    """A uniform random key per chunk, shared by all of its tokens.

    The key of a position is the running sum, modulo `2**key_bits`, of
    uniform random increments placed at the chunk starts (see the module
    docstring); consecutive chunks thus get i.i.d. uniform keys.

    Args:
        starts: bool tensor `[batch, length]`, `True` where a chunk starts.
        random_bits: int32 tensor `[batch, length]` of uniform random bits.
        key_bits: int; `length * 2**key_bits` must be exactly representable
            in `dtype`.
        dtype: float dtype of the running sum (`"float32"` or `"float64"`).

    Returns:
        int32 tensor `[batch, length]` in `[0, 2**key_bits)`.
    """
    mask = (1 << key_bits) - 1
    increments = tf.where(starts, tf.bitwise.bitwise_and(random_bits, mask), 0)
    total = tf.matmul(
        tf.cast(increments, dtype), _triangular(_length(starts), dtype)
    )
    total = tf.cast(total, "int64" if dtype == "float64" else "int32")
    return tf.cast(tf.bitwise.bitwise_and(total, mask), "int32")


def position_scores(keys, selectable, position_bits):
    """`keys * 2**position_bits + (length - 1 - position)`, `-1` if not
    selectable. Highest first lists chunks by key, tokens by position.
    int32 scores, or int64 when `position_bits` is 32 (dynamic length)."""
    reverse = _reverse_positions(_length(keys))
    if position_bits >= 31:
        keys, reverse = tf.cast(keys, "int64"), tf.cast(reverse, "int64")
    scores = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(keys, position_bits), reverse
    )
    return tf.where(selectable, scores, tf.constant(-1, scores.dtype))


def kth_largest(scores, k, max_k):
    """The `k`-th largest score of each row, without a sort.

    Args:
        scores: int tensor `[batch, length]`.
        k: float32 `[batch, 1]`, integers in `[0, max_k]`.
        max_k: int, at least 1.

    Returns:
        tensor `[batch, 1]` like `scores`: the `k`-th largest value of the
        row (counting repeats), `scores.dtype.max` where `k` is 0 and
        `scores.dtype.min` where `k` exceeds `length`.

    `max_k - k` copies of `scores.dtype.max` are put in front of each row
    and one `NthElement` (a per-row `std::nth_element`, a selection in
    linear time) takes the `max_k`-th largest. On CPU it costs about a third
    of `tf.math.top_k(scores, max_k)`, whose per-row heap mispredicts its
    branches on random scores.
    """
    dtype = scores.dtype
    # Slot j holds the maximum iff j < max_k - k, i.e. max_k - 1 - j >= k.
    fillers = tf.where(
        _slot_range(max_k, reverse=True) >= k,
        tf.constant(dtype.max, dtype),
        tf.constant(dtype.min, dtype),
    )
    value = tf.raw_ops.NthElement(
        input=tf.concat([fillers, scores], axis=1), n=max_k - 1, reverse=True
    )
    return value[:, None]


def stochastic_budget(target, u, max_selections):
    """`min(floor(target + u), max_selections)`, float32 `[batch, 1]`.

    `target` (`rate * n`) and `u ~ U[0, 1)` are float32 `[batch, 1]`:
    stochastic rounding, so the budget's mean is the target (uncapped).
    """
    return tf.minimum(tf.floor(target + u), float(max_selections))


def whole_chunk_selection(scores, target, v, position_bits, max_selections):
    """The positions taken under whole-chunk selection, and their number.

    Args:
        scores: `position_scores` of the row (`-1` where not selectable);
            the chunk of a position is `score >> position_bits`.
        target: float32 `[batch, 1]`, `t = rate * n`.
        v: float32 `[batch, 1]`, uniform on `[0, 1)`.
        position_bits: the `p` of the scores.
        max_selections: int, the cap.

    Returns:
        `(selected, count)`: bool `[batch, length]` and its float32 `[batch,
        1]` row counts. With the line places `[c, e)` of the chunk holding
        place `floor(t)` (place `max_selections` when capping), the chunks
        before it are taken, and it too iff `c + v * (e - c) < t` and `e <=
        max_selections`: `E[taken] = t` uncapped, and no chunk is cut.
    """
    place = tf.minimum(tf.floor(target), float(max_selections))
    # The chunk at that place; -1 (none) when the row has no such place.
    here = tf.maximum(
        tf.bitwise.right_shift(
            kth_largest(scores, place + 1.0, max_selections + 1),
            position_bits,
        ),
        tf.constant(-1, scores.dtype),
    )
    chunk = tf.bitwise.right_shift(scores, position_bits)
    # Unselectable positions (score and chunk -1) never count.
    before = chunk > here
    through = tf.logical_and(chunk >= here, scores >= 0)
    first = tf.reduce_sum(tf.cast(before, "float32"), 1, keepdims=True)
    end = tf.reduce_sum(tf.cast(through, "float32"), 1, keepdims=True)
    take = tf.logical_and(
        first + v * (end - first) < target, end <= float(max_selections)
    )
    return tf.where(take, through, before), tf.where(take, end, first)


def compact_positions(selected, count, slots):
    """The selected positions, ascending, packed into `slots` slots.

    Args:
        selected: bool `[batch, length]`.
        count: float32 `[batch, 1]`, the number of `True` in each row, at
            most `slots`.
        slots: int.

    Returns:
        `(mask_positions, used)`: int32 `[batch, slots]` positions in
        ascending order (0 in unused slots) and bool `used` slots. One
        `tf.where` lists the selected positions in row-major order, i.e.
        as the values of a ragged tensor with those row ids, which one
        `RaggedTensorToTensor` pads into the slots.
    """
    rows, positions = tf.unstack(tf.where(selected), axis=1)
    batch = _dim(selected, 0)
    static = isinstance(batch, int)
    num_rows = (
        tf.constant(batch, "int64") if static else tf.cast(batch, "int64")
    )
    mask_positions = tf.raw_ops.RaggedTensorToTensor(
        shape=[batch if static else -1, slots],
        values=tf.cast(positions, "int32"),
        default_value=tf.constant(0, "int32"),
        row_partition_tensors=[num_rows, rows],
        row_partition_types=["FIRST_DIM_SIZE", "VALUE_ROWIDS"],
    )
    used = _slot_range(slots) < count
    return mask_positions, used


def sample_replacement_ids(
    values, num_values, vocabulary_size, excluded_ids, offset=0
):
    """Maps uniform integers to uniform ids outside `excluded_ids`.

    `values + offset` (int64, uniform on `[0, num_values)`, `num_values <=
    2**32`; `offset` is a Python int folded into the arithmetic) is
    scaled by a multiply-shift to `j` on `[0, vocabulary_size -
    len(excluded_ids))` (relative non-uniformity below `vocabulary_size /
    num_values`), then mapped to the `j`-th id not in `excluded_ids`:
    `j + #{i : e_i - i <= j}` for the sorted excluded ids `e_i`. No rejection
    loop.

    Returns:
        int64 tensor like `values`.
    """
    excluded = sorted(set(int(i) for i in excluded_ids))
    num_allowed = int(vocabulary_size) - len(excluded)
    if num_allowed < 1:
        raise ValueError(
            "No token id is left to draw random replacements from: all "
            f"{vocabulary_size} ids are excluded."
        )
    scale = (num_allowed << 32) // int(num_values)
    # Each range [lo, hi] of consecutive excluded ids is one step of the map:
    # going through the ranges in order, an id >= lo moves up by hi - lo + 1.
    # Ranges starting at 0 shift everything: a constant, added before the
    # shift (exactly, being a multiple of 2**32).
    ranges = id_ranges(excluded)
    constant = 0
    while ranges and ranges[0][0] == constant:
        constant = ranges.pop(0)[1] + 1
    ids = tf.bitwise.right_shift(
        values * scale + (offset * scale + (constant << 32)), 32
    )
    if len(ranges) <= _MAX_RANGE_COMPARES:
        for lo, hi in ranges:
            ids = tf.where(ids >= lo, ids + (hi - lo + 1), ids)
        return ids
    adjusted = np.asarray(excluded, "int64") - np.arange(len(excluded))
    flat = tf.reshape(ids - constant, [1, -1])  # j
    skip = tf.searchsorted(
        tf.constant(adjusted[None, :]), flat, side="right", out_type="int64"
    )
    return tf.reshape(flat + skip, tf.shape(ids))


def apply_replacements(
    token_ids,
    mask_positions,
    mask_ids,
    used,
    random_bits,
    mask_token_id,
    mask_token_rate,
    random_token_rate,
    vocabulary_size,
    excluded_ids,
):
    """BERT replacement of the selected tokens, decided per prediction slot.

    With `r` uniform on `[0, 2**32)` per slot (`random_bits`: int32, uniform
    over its whole range, `r = bits + 2**31`), the token at a used slot's
    position becomes `mask_token_id` if `r < mask_token_rate * 2**32`, a
    uniform random id outside `excluded_ids` if `r < (mask_token_rate +
    random_token_rate) * 2**32`, and stays unchanged otherwise. Only the
    `[batch, slots]` values are computed; they are written back with one
    scatter-add of `new - old` (a segment sum, the cheapest scatter on CPU).

    Args:
        token_ids: int tensor `[batch, length]`.
        mask_positions: int32 `[batch, slots]`, distinct positions in the
            used slots of a row.
        mask_ids: `[batch, slots]`, `token_ids` at `mask_positions`.
        used: bool `[batch, slots]`.
        random_bits: int32 `[batch, slots]`, uniform random bits.
        mask_token_id, mask_token_rate, random_token_rate: the split.
        vocabulary_size: int.
        excluded_ids: ids never drawn as random replacements.

    Returns:
        tensor like `token_ids`.
    """
    offset = 2**31
    mask_end = int(round(mask_token_rate * 2**32))
    random_end = int(round((mask_token_rate + random_token_rate) * 2**32))
    dtype = token_ids.dtype
    if random_end > mask_end:
        new_ids = tf.cast(
            sample_replacement_ids(
                tf.cast(random_bits, "int64"),
                random_end - mask_end,
                vocabulary_size,
                excluded_ids,
                offset=offset - mask_end,
            ),
            dtype,
        )
        if mask_end > 0:
            new_ids = tf.where(
                _below(random_bits, mask_end - offset),
                tf.cast(mask_token_id, dtype),
                new_ids,
            )
    else:
        new_ids = tf.cast(mask_token_id, dtype)
    replaced = tf.logical_and(used, _below(random_bits, random_end - offset))
    delta = tf.where(replaced, new_ids - mask_ids, tf.constant(0, dtype))
    batch, length = _dim(token_ids, 0), _length(token_ids)
    changes = tf.math.unsorted_segment_sum(
        delta, _row_offsets(batch, length) + mask_positions, batch * length
    )
    return token_ids + tf.reshape(changes, tf.stack([batch, length]))


def _below(bits, threshold):
    """`bits < threshold` for int32 `bits`, threshold in [-2**31, 2**31]."""
    if threshold >= 2**31:
        return tf.ones_like(bits, dtype="bool")
    if threshold <= -(2**31):
        return tf.zeros_like(bits, dtype="bool")
    return bits < threshold


def _nothing_selected(token_ids, slots):
    """`mask_tokens`' outputs when nothing can be selected (no slot or no
    position): the ids unchanged and `slots` unused slots per row."""
    slot_shape = tf.stack([tf.shape(token_ids)[0], slots])
    static = token_ids.shape[:1].concatenate([slots])
    zeros = tf.ensure_shape(tf.zeros(slot_shape, token_ids.dtype), static)
    return {
        "token_ids": token_ids,
        "mask_positions": tf.cast(zeros, "int32"),
        "mask_ids": zeros,
        "mask_weights": tf.cast(zeros, "float32"),
    }


def mask_tokens(
    token_ids,
    padding_mask,
    seed,
    *,
    vocabulary_size,
    mask_selection_rate,
    mask_token_id,
    mask_selection_length,
    unselectable_ids=(),
    excluded_ids=(),
    mask_token_rate=0.8,
    random_token_rate=0.1,
    strategy="token",
    word_starts_mask=None,
    continuation_ids=None,
    span_geometric_p=0.2,
    max_span_length=10,
):
    """Masked-LM masking of a dense batch: select, gather, replace.

    All randomness is one draw of `random_words` keyed by `seed`, of shape
    `[batch, length + mask_selection_length + 1]` (or one more, to be even):
    per position the key bits (for spans also the tile lengths, from the top
    bits of the same words), per slot the replacement bits, per row a
    rounding uniform.

    Args:
        token_ids: int tensor `[batch, length]`, ids in
            `[0, vocabulary_size)`.
        padding_mask: bool tensor `[batch, length]`.
        seed: stateless seed, int tensor `[2]`.
        vocabulary_size: int.
        mask_selection_rate: float, expected fraction of selectable tokens
            selected.
        mask_token_id: int.
        mask_selection_length: int >= 0, number of prediction slots (and
            cap). With 0 slots, or rows of static length 0, nothing is
            selected and no random number is drawn.
        unselectable_ids: ids never selected (besides padding).
        excluded_ids: ids never drawn as random replacements.
        mask_token_rate, random_token_rate: the replacement split.
        strategy: `"token"`, `"whole_word"` or `"span"`.
        word_starts_mask: optional bool `[batch, length]`, `True` at the first
            piece of each word (whole-word); overrides `continuation_ids`.
        continuation_ids: ids of word-continuation pieces (whole-word).
        span_geometric_p, max_span_length: span length distribution.

    Returns:
        dict with `token_ids` (masked, like the input), `mask_positions`
        (int32), `mask_ids` (input dtype) and `mask_weights` (float32), the
        last three `[batch, mask_selection_length]`.
    """
    if strategy not in ("token", "whole_word", "span"):
        raise ValueError(
            "`strategy` must be one of 'token', 'whole_word', 'span'. "
            f"Received: strategy={strategy!r}"
        )
    if strategy == "whole_word" and (
        word_starts_mask is None and continuation_ids is None
    ):
        raise ValueError(
            "strategy='whole_word' needs word boundaries: pass "
            "`continuation_token_ids` or a `word_starts` input."
        )
    slots = int(mask_selection_length)
    length = _length(token_ids)
    if slots == 0 or (isinstance(length, int) and length == 0):
        return _nothing_selected(token_ids, slots)
    given_length = length
    if not isinstance(length, int):
        # A dynamic length can be 0 at run time: then one padding column
        # (nothing selectable) is masked instead and dropped at the end.
        # Longer rows are unchanged.
        empty = tf.cast(tf.equal(length, 0), "int32")
        token_ids = tf.pad(token_ids, [[0, 0], [0, empty]])
        padding_mask = tf.pad(tf.cast(padding_mask, "bool"), [[0, 0], [0, empty]])
        if word_starts_mask is not None:
            word_starts_mask = tf.pad(tf.cast(word_starts_mask, "bool"), [[0, 0], [0, empty]])
        length = tf.shape(token_ids)[1]
    draw = random_words(_dim(token_ids, 0), length + slots + 1, seed)
    key_draw, slot_draw, last, _ = tf.split(
        draw, [length, slots, 1, -1], axis=1
    )
    # A uniform on [0, 1) per row from the last column (24 of its bits).
    uniform = tf.cast(
        tf.bitwise.right_shift(last, 8), "float32"
    ) * (1.0 / 2**24) + 0.5

    padding_mask = tf.cast(padding_mask, "bool")
    is_continuation = None
    if strategy == "whole_word" and word_starts_mask is None:
        # One table gather classifies every id: 0 regular, 1 continuation,
        # 2 unselectable.
        kind = tf.gather(
            _id_table(
                [(continuation_ids, 1), (unselectable_ids, 2)],
                int(vocabulary_size),
            ),
            token_ids,
        )
        selectable = tf.logical_and(padding_mask, kind < 2)
        is_continuation = tf.equal(kind, 1)
    else:
        selectable = selectable_mask(token_ids, padding_mask, unselectable_ids)

    p, key_bits, sum_dtype = _key_layout(length)
    if strategy == "token" and p < 31:
        # Random bits p .. 29 are the key; bits 0 .. p-1 hold the position.
        scores = tf.where(
            selectable,
            tf.bitwise.bitwise_or(
                tf.bitwise.bitwise_and(
                    key_draw, ((1 << _SCORE_BITS) - 1) >> p << p
                ),
                _reverse_positions(length),
            ),
            -1,
        )
    elif strategy == "token":
        scores = position_scores(
            tf.bitwise.bitwise_and(key_draw, (1 << key_bits) - 1),
            selectable,
            p,
        )
    else:
        previous = _shift_right(selectable, False)
        if strategy == "whole_word":
            if is_continuation is not None:
                # Keys only matter on selectable positions, so starts may
                # also be marked on unselectable ones.
                starts = tf.logical_not(
                    tf.logical_and(is_continuation, previous)
                )
            else:
                starts = tf.logical_or(
                    tf.cast(word_starts_mask, "bool"), tf.logical_not(previous)
                )
        else:
            # Keys use the low bits of `key_draw`, tile lengths the top ones.
            key_bits = min(key_bits, 32 - _LENGTH_BITS)
            tiles = _tile_starts_from_bits(
                key_draw, span_geometric_p, max_span_length
            )
            # Spans also restart after every special or padding position.
            starts = tf.logical_or(tiles, tf.logical_not(previous))
        keys = chunk_keys(starts, key_draw, key_bits, sum_dtype)
        scores = position_scores(keys, selectable, p)

    # n selectable tokens; rate * n, the row's target number of selected.
    size = tf.reduce_sum(tf.cast(selectable, "float32"), 1, keepdims=True)
    target = size * float(mask_selection_rate)
    if strategy == "whole_word":
        selected, count = whole_chunk_selection(
            scores, target, uniform, p, slots
        )
    else:
        # Never more than the selectable tokens (rate <= 1 implies it).
        count = tf.minimum(stochastic_budget(target, uniform, slots), size)
        selected = scores >= kth_largest(scores, count, slots)
    mask_positions, used = compact_positions(selected, count, slots)
    mask_ids = tf.where(
        used,
        tf.gather(token_ids, mask_positions, batch_dims=1),
        tf.constant(0, token_ids.dtype),
    )
    masked = apply_replacements(
        token_ids,
        mask_positions,
        mask_ids,
        used,
        slot_draw,
        mask_token_id,
        mask_token_rate,
        random_token_rate,
        vocabulary_size,
        excluded_ids,
    )
    return {
        "token_ids": masked if isinstance(length, int) else masked[:, :given_length],
        "mask_positions": mask_positions,
        "mask_ids": mask_ids,
        "mask_weights": tf.cast(used, "float32"),
    }
