"""BART noising math: sentence permutation, text infilling, token deletion,
document rotation.

Pure, vectorized, stateless TensorFlow functions over dense `[batch, length]`
tensors; the single source of truth for `kobjectives.layers.BartNoising`,
which only adds input handling, seeds and validation around `bart_noise`.

Reference: Lewis et al., 2020, "BART: Denoising Sequence-to-Sequence
Pre-training for Natural Language Generation, Translation, and
Comprehension" (https://arxiv.org/abs/1910.13461), section 2.2, and the
semantics of fairseq's `DenoisingDataset` (the BART recipe: span lengths
`Poisson(3)`, 30% of the tokens masked, one mask per span, sentence
permutation of all sentences); this is an independent, batched
re-implementation, not a port.

## Row layout

A row is `prefix | body | suffix | padding`. `selectable` positions are real
tokens whose id is not unselectable (special). The *prefix* is the run of
real unselectable tokens before the first selectable one (e.g. `[CLS]` or
`<s>`), the *suffix* the run after the last selectable one (e.g. `[SEP]` or
`</s>`); both stay in place. The *body* is everything in between. Special
tokens inside the body are never masked or deleted; they move with their
sentence under permutation and with the body under rotation.

## The noising steps, in this order (as fairseq)

1. **Sentence permutation** (`sentence_permutation_rate = p`): the body is
   cut into sentences after each run of sentence-end ids (the body's end
   closes the last sentence). Of the `N` sentences, `floor(p * N + u)` are
   chosen uniformly (`u ~ U[0, 1)`: stochastic rounding, unbiased) and put in
   a uniformly random order among the places the chosen ones held; the
   others stay.
2. **Text infilling** (`text_infilling_rate = r`, `poisson_lambda`): with `n`
   selectable tokens, `t = floor(r * n + u)` of them are covered by spans.
   Span lengths `l_1, l_2, ...` are i.i.d. `Poisson(lambda)`; spans are taken
   while the running total of the lengths *before* a span is below `t` (a
   stopping time, so by Wald's identity the mean drawn length of the taken
   spans is `lambda`), and the last one is cut to make the covered total
   exactly `t`. The `k` spans and the `n - t` uncovered tokens are then laid
   out in a uniformly random order (every interleaving equally likely), so
   spans never overlap, never reach into the prefix or suffix, and two spans
   may be adjacent. Each span becomes ONE mask token; a zero-length span
   inserts a mask token (before the token that follows it). Spans are laid
   over the selectable tokens only: a special token inside the body that
   falls within a span stays, after the span's mask.
3. **Token deletion** (`token_deletion_rate = d`): `floor(d * n + u)` of the
   tokens that no span covers (at most all of them) are deleted, uniformly.
   With `r + d <= 1` the expected deleted fraction of the selectable tokens
   is `d`.
4. **Document rotation** (`document_rotation_rate`): with that probability
   (and a body of at least 2 elements) the noised body is rotated to start
   at a uniformly random element other than its first.

Finally the row is written to `sequence_length` places: prefix, body,
suffix, then padding (id 0). Noising usually shortens a row (a span of
length `l` becomes one token), but zero-length spans lengthen it; when the
result is longer than `sequence_length`, the end of the body is cut and the
suffix still ends the row.

## Randomness

Every row draws its own random bits with `tf.random.stateless_uniform` keyed
by a per-row seed (`row_seeds` derives them from one seed with
`tf.random.experimental.stateless_fold_in(seed, row)`), so a row's noise
depends only on the row and its seed, not on the batch it is in. All other
computation is deterministic batched tensor math (sorts, running sums,
scatters); no per-example Python.
"""

import math

import numpy as np
import tensorflow as tf

from kobjectives.ops.masking import ids_in

__all__ = [
    "row_seeds",
    "random_bits",
    "poisson_cdf_table",
    "poisson_from_bits",
    "max_spans",
    "row_layout",
    "sentence_permutation",
    "text_infilling_plan",
    "deletion_mask",
    "assemble",
    "bart_noise",
]

_KEY_MASK = 0x7FFFFFFF


# ---------------------------------------------------------------------------
# Randomness.


def row_seeds(seed, batch_size):
    """One stateless seed per row: `stateless_fold_in(seed, row)`.

    Args:
        seed: int tensor `[2]`, a stateless seed.
        batch_size: int or scalar tensor.

    Returns:
        int64 tensor `[batch_size, 2]`. Row `i` depends only on `seed` and
        `i`, not on `batch_size`.
    """
    return _row_seeds(
        tf.cast(seed, "int64"), tf.cast(batch_size, "int64")
    )


@tf.function(autograph=False, reduce_retracing=True)
def _row_seeds(seed, batch_size):
    # A tf.function, so that eager callers do not run `map_fn` row by row.
    return tf.map_fn(
        lambda i: tf.random.experimental.stateless_fold_in(seed, i),
        tf.range(batch_size, dtype="int64"),
        fn_output_signature=tf.TensorSpec([2], tf.int64),
    )


def random_bits(seeds, width):
    """Uniform random int32 bits `[batch, width]`, row `i` keyed by `seeds[i]`.

    Args:
        seeds: int tensor `[batch, 2]`, one stateless seed per row.
        width: int, the number of draws per row.

    Only the low 31 bits of each seed word are used.

    Returns:
        int32 tensor `[batch, width]` (uniform over the whole int32 range).
    """
    # 31-bit seed words: TF's kernel and XLA then agree on the stream (they
    # differ for seed words beyond the int32 range).
    seeds = tf.bitwise.bitwise_and(tf.cast(seeds, "int64"), _KEY_MASK)
    return _random_bits(seeds, int(width))


@tf.function(autograph=False, reduce_retracing=True)
def _random_bits(seeds, width):
    return tf.map_fn(
        lambda s: tf.random.stateless_uniform(
            [width], s, minval=None, maxval=None, dtype="int32"
        ),
        seeds,
        fn_output_signature=tf.TensorSpec([width], tf.int32),
    )


def _uniform(bits):
    """float64 uniform on (0, 1) from int32 bits: `(bits + 2**31 + 0.5) /
    2**32`."""
    return (tf.cast(bits, "float64") + (2.0**31 + 0.5)) * (1.0 / 2.0**32)


def _keys(bits):
    """Non-negative 31-bit keys from int32 bits."""
    return tf.bitwise.bitwise_and(bits, _KEY_MASK)


def _stochastic_round(x, bits):
    """`floor(x + u)` as int32, `u ~ U(0, 1)` from `bits` (`E = x`)."""
    return tf.cast(tf.floor(tf.cast(x, "float64") + _uniform(bits)), "int32")


def poisson_cdf_table(lam, tail=1e-13):
    """The CDF of `Poisson(lam)`, `cdf[j] = P(l <= j)`, up to a negligible
    tail (`1 - cdf[-1] < tail`), as a float64 numpy array."""
    lam = float(lam)
    top = int(lam + 40.0 * math.sqrt(lam) + 60)
    k = np.arange(top + 1, dtype="float64")
    log_pmf = -lam + k * math.log(lam) - np.array(
        [math.lgamma(j + 1.0) for j in range(top + 1)]
    )
    cdf = np.cumsum(np.exp(log_pmf))
    end = int(np.searchsorted(cdf, 1.0 - tail)) + 1
    return cdf[: min(end, top + 1)]


def poisson_from_bits(bits, lam):
    """`Poisson(lam)` draws by inverse-CDF sampling of int32 `bits`.

    `l = #{j : cdf[j] <= u}` for `u = _uniform(bits)`, i.e. the smallest `l`
    with `u < cdf[l]`: exact up to the 2**-32 resolution of `u` and the
    `1e-13` tail cut of the table.

    Returns:
        int32 tensor like `bits`.
    """
    cdf = tf.constant(poisson_cdf_table(lam)[None, :], "float64")
    u = tf.reshape(_uniform(bits), [1, -1])
    lengths = tf.searchsorted(cdf, u, side="right", out_type="int32")
    return tf.reshape(lengths, tf.shape(bits))


def max_spans(length, text_infilling_rate, poisson_lambda):
    """Static number of span candidates drawn per row.

    Enough that the Poisson lengths reach the target `t <= rate * length`
    except with negligible probability: `ceil((2 * rate * length + 30) /
    lambda)`, capped at `4 * length + 32` (which binds only for `lambda`
    well below 1, where most spans are empty).
    """
    if text_infilling_rate <= 0:
        return 0
    wanted = math.ceil(
        (2.0 * text_infilling_rate * length + 30.0) / poisson_lambda
    )
    return int(max(1, min(wanted, 4 * length + 32)))


# ---------------------------------------------------------------------------
# Helpers.


def _positions(length):
    return tf.constant(np.arange(length, dtype="int32")[None, :])


def _scatter_add(values, indices, width):
    """`out[b, i] = sum(values[b, j] for j with indices[b, j] == i)`.

    Indices outside `[0, width)` are dropped. `values` is `[batch, n]` or
    `[batch, n, c]`; the result is `[batch, width]` or `[batch, width, c]`.
    """
    batch = tf.shape(indices)[0]
    slots = width + 1
    indices = tf.where(
        tf.logical_and(indices >= 0, indices < width), indices, width
    )
    flat = indices + tf.range(batch)[:, None] * slots
    summed = tf.math.unsorted_segment_sum(values, flat, batch * slots)
    shape = tf.concat(
        [tf.stack([batch, slots]), tf.shape(values)[2:]], axis=0
    )
    return tf.reshape(summed, shape)[:, :width]


def _count(mask, axis=1):
    return tf.reduce_sum(tf.cast(mask, "int32"), axis=axis)


def row_layout(real, selectable):
    """Prefix, suffix and body of each row (see the module docstring).

    Args:
        real: bool `[batch, length]`, `True` on real (non-padding) tokens, a
            prefix of each row.
        selectable: bool `[batch, length]`, real tokens that are not special.

    Returns:
        dict of int32 `[batch]` tensors `length` (real tokens), `prefix`,
        `suffix`, and bool `[batch, length]` `body`.
    """
    width = real.shape[1]
    length = _count(real)
    any_selectable = tf.reduce_any(selectable, axis=1)
    sel = tf.cast(selectable, "int32")
    first = tf.cast(tf.argmax(sel, axis=1), "int32")
    last = width - 1 - tf.cast(tf.argmax(tf.reverse(sel, [1]), axis=1), "int32")
    prefix = tf.where(any_selectable, first, length)
    suffix = tf.where(any_selectable, length - 1 - last, 0)
    pos = _positions(width)
    body = tf.logical_and(
        pos >= prefix[:, None], pos < (length - suffix)[:, None]
    )
    return {"length": length, "prefix": prefix, "suffix": suffix, "body": body}


# ---------------------------------------------------------------------------
# 1. Sentence permutation.


def sentence_permutation(
    token_ids, selectable, layout, sentence_end_ids, rate, round_bits, key_bits
):
    """Shuffles a fraction `rate` of each row's sentences among their places.

    Sentences are the body's runs up to and including each run of
    `sentence_end_ids` (the body's end closes the last one). With `N`
    sentences, `c = floor(rate * N + u)` are chosen uniformly at random (the
    `c` highest keys) and placed, in the order of their keys, into the places
    the chosen ones held, in position order; a uniformly random permutation
    of the chosen ones. Prefix, suffix and padding stay.

    Args:
        token_ids: int32 `[batch, length]`.
        selectable: bool `[batch, length]`.
        layout: `row_layout(...)`.
        sentence_end_ids: ids that end a sentence.
        rate: float in `[0, 1]`.
        round_bits: int32 `[batch]`, bits for the stochastic rounding.
        key_bits: int32 `[batch, length]`, bits for the sentence keys.

    Returns:
        `(token_ids, selectable, num_sentences)`: the permuted ids and
        selectable mask, and int32 `[batch]` sentence counts.
    """
    width = token_ids.shape[1]
    pos = _positions(width)
    body = layout["body"]
    body_end = (layout["length"] - layout["suffix"])[:, None]
    is_end_id = tf.logical_and(body, ids_in(token_ids, sentence_end_ids))
    next_is_end = tf.pad(is_end_id[:, 1:], [[0, 0], [0, 1]])
    ends = tf.logical_or(
        tf.logical_and(is_end_id, tf.logical_not(next_is_end)),
        tf.logical_and(body, tf.equal(pos, body_end - 1)),
    )
    ends_int = tf.cast(ends, "int32")
    # Sentence index of each body position; sentence lengths and starts.
    sentence = tf.cumsum(ends_int, axis=1, exclusive=True)
    num_sentences = tf.reduce_sum(ends_int, axis=1)
    sentence_index = tf.where(body, sentence, width)
    lengths = _scatter_add(tf.cast(body, "int32"), sentence_index, width)
    starts = tf.cumsum(lengths, axis=1, exclusive=True)

    # Choose c sentences (highest keys) and their random order.
    count = tf.minimum(
        _stochastic_round(rate * tf.cast(num_sentences, "float64"), round_bits),
        num_sentences,
    )
    valid = pos < num_sentences[:, None]
    scores = tf.where(valid, _keys(key_bits), -1)
    ranked = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
    ranked = tf.cast(ranked, "int32")
    chosen = pos < count[:, None]
    places = tf.sort(tf.where(chosen, ranked, width), axis=1)
    # new_place[ranked[r]] = places[r] for the chosen ranks.
    moves = tf.where(chosen, places - ranked, 0)
    new_place = pos + _scatter_add(moves, ranked, width)
    # Sentence starts in the new order.
    lengths_by_place = _scatter_add(lengths, new_place, width)
    new_starts = tf.gather(
        tf.cumsum(lengths_by_place, axis=1, exclusive=True),
        new_place,
        batch_dims=1,
    )
    safe = tf.minimum(sentence, width - 1)
    offset = pos - layout["prefix"][:, None] - tf.gather(
        starts, safe, batch_dims=1
    )
    target = tf.where(
        body,
        layout["prefix"][:, None]
        + tf.gather(new_starts, safe, batch_dims=1)
        + offset,
        pos,
    )
    # Invert the position permutation and gather.
    source = _scatter_add(tf.broadcast_to(pos, tf.shape(target)), target, width)
    token_ids = tf.gather(token_ids, source, batch_dims=1)
    selectable = tf.gather(selectable, source, batch_dims=1)
    return token_ids, selectable, num_sentences


# ---------------------------------------------------------------------------
# 2. Text infilling.


def text_infilling_plan(
    selectable, rate, poisson_lambda, num_candidates, round_bits,
    length_bits, slot_bits,
):
    """Where the Poisson spans go (see the module docstring, step 2).

    Args:
        selectable: bool `[batch, length]`.
        rate: float in `[0, 1]`, the fraction of selectable tokens covered.
        poisson_lambda: float > 0.
        num_candidates: int `K`, static number of span lengths drawn per row
            (`max_spans`).
        round_bits: int32 `[batch]`.
        length_bits: int32 `[batch, K]`, bits for the span lengths.
        slot_bits: int32 `[batch, length + K]`, bits for the layout.

    Returns:
        dict with

        - `"num_selectable"`, `"target"` (`t`), `"num_spans"` (`k`),
          `"num_covered"`: int32 `[batch]`.
        - `"drawn_lengths"`: int32 `[batch, K]`, the Poisson draws of the
          taken spans (before the last one is cut), `-1` for candidates not
          taken.
        - `"span_lengths"`: int32 `[batch, K]`, lengths after the cut (0 for
          candidates not taken), in position order: span `j` of a row is the
          `j`-th from the left.
        - `"span_starts"`: int32 `[batch, K]`, index of each span's first
          token among the row's selectable tokens (for a zero-length span:
          of the token it is inserted before; `num_selectable` at the end),
          in position order, `-1` for candidates not taken.
        - `"replaced"`: bool `[batch, length]`, the first token of each
          non-empty span (it becomes the mask).
        - `"covered"`: bool `[batch, length]`, every token in a span.
        - `"inserts_before"`: int32 `[batch, length]`, masks inserted before
          each selectable token (zero-length spans).
        - `"inserts_after"`: int32 `[batch, length]`, masks inserted after
          the last selectable token of the row (zero-length spans at the
          end), 0 elsewhere.
    """
    width = selectable.shape[1]
    k_max = int(num_candidates)
    n = _count(selectable)
    target = _stochastic_round(rate * tf.cast(n, "float64"), round_bits)
    target = tf.minimum(target, n)

    drawn = poisson_from_bits(length_bits, poisson_lambda)
    before = tf.cumsum(drawn, axis=1, exclusive=True)
    taken = before < target[:, None]
    lengths = tf.where(taken, tf.minimum(drawn, target[:, None] - before), 0)
    num_spans = _count(taken)
    covered_count = tf.reduce_sum(lengths, axis=1)
    uncovered = n - covered_count

    # A uniformly random interleaving of the k spans and n - t tokens: the
    # spans take the k highest of i.i.d. keys over the k + n - t item places.
    items = num_spans + uncovered
    item_pos = _positions(width + k_max)
    scores = tf.where(item_pos < items[:, None], _keys(slot_bits), -1)
    _, slot = tf.math.top_k(scores, k=k_max)
    slot = tf.where(taken, slot, width + k_max)
    order = tf.argsort(slot, axis=1, stable=True)
    slot = tf.gather(slot, order, batch_dims=1)
    lengths = tf.gather(lengths, order, batch_dims=1)
    taken_sorted = tf.gather(taken, order, batch_dims=1)
    j = _positions(k_max)
    # Tokens before span j: the uncovered items before it plus the lengths
    # of the spans before it.
    starts = slot - j + tf.cumsum(lengths, axis=1, exclusive=True)
    starts = tf.where(taken_sorted, starts, -1)

    nonempty = tf.logical_and(taken_sorted, lengths > 0)
    empty = tf.logical_and(taken_sorted, tf.equal(lengths, 0))
    one = tf.cast(nonempty, "int32")
    # Columns: span starts, cover difference array, inserts.
    values = tf.concat(
        [
            tf.stack([one, one, tf.cast(empty, "int32")], axis=-1),
            tf.stack([tf.zeros_like(one), -one, tf.zeros_like(one)], axis=-1),
        ],
        axis=1,
    )
    indices = tf.concat(
        [starts, tf.where(nonempty, starts + lengths, -1)], axis=1
    )
    marks = _scatter_add(values, indices, width + 1)
    is_start = marks[:, :, 0] > 0
    is_covered = tf.cumsum(marks[:, :, 1], axis=1) > 0
    inserts = marks[:, :, 2]

    # From selectable-token index to position.
    rank = tf.cumsum(tf.cast(selectable, "int32"), axis=1) - 1
    safe = tf.maximum(rank, 0)

    def at(x):
        return tf.gather(x, safe, batch_dims=1)

    replaced = tf.logical_and(selectable, at(is_start))
    covered = tf.logical_and(selectable, at(is_covered))
    inserts_before = tf.where(selectable, at(inserts), 0)
    is_last = tf.logical_and(selectable, tf.equal(rank, (n - 1)[:, None]))
    end_inserts = tf.gather(inserts, n, batch_dims=1)
    inserts_after = tf.where(is_last, end_inserts[:, None], 0)
    return {
        "num_selectable": n,
        "target": target,
        "num_spans": num_spans,
        "num_covered": covered_count,
        "drawn_lengths": tf.where(taken, drawn, -1),
        "span_lengths": lengths,
        "span_starts": starts,
        "replaced": replaced,
        "covered": covered,
        "inserts_before": inserts_before,
        "inserts_after": inserts_after,
    }


# ---------------------------------------------------------------------------
# 3. Token deletion.


def deletion_mask(candidates, num_selectable, rate, round_bits, key_bits):
    """Deletes `min(floor(rate * n + u), #candidates)` uniform candidates.

    Args:
        candidates: bool `[batch, length]`, tokens that may be deleted.
        num_selectable: int32 `[batch]`, the `n` the rate refers to.
        rate: float in `[0, 1]`.
        round_bits: int32 `[batch]`.
        key_bits: int32 `[batch, length]`.

    Returns:
        bool `[batch, length]`, `True` on deleted tokens.
    """
    width = candidates.shape[1]
    budget = tf.minimum(
        _stochastic_round(
            rate * tf.cast(num_selectable, "float64"), round_bits
        ),
        _count(candidates),
    )
    # Unique scores: random high bits, the position in the low bits.
    bits = max(width - 1, 1).bit_length()
    high = ((1 << 31) - 1) >> bits << bits
    scores = tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_and(key_bits, high), _positions(width)
    )
    scores = tf.where(candidates, scores, -1)
    ranked = tf.sort(scores, axis=1, direction="DESCENDING")
    threshold = tf.gather(ranked, tf.maximum(budget - 1, 0), batch_dims=1)
    return tf.logical_and(
        tf.logical_and(candidates, scores >= threshold[:, None]),
        (budget > 0)[:, None],
    )


# ---------------------------------------------------------------------------
# 4. Assembly with rotation and truncation.


def assemble(
    token_ids,
    keep,
    replaced,
    inserts_before,
    inserts_after,
    layout,
    mask_token_id,
    sequence_length,
    rotation_offset=None,
):
    """Writes the noised rows: kept tokens, masks, rotation, truncation.

    Position `p` of a row emits `inserts_before[p]` masks, then its token if
    `keep[p]` (the mask if `replaced[p]`), then `inserts_after[p]` masks.
    The body of the result (between the unchanged prefix and suffix) is
    rotated left by `rotation_offset`; when the result is longer than
    `sequence_length` the body's end is cut.

    Args:
        token_ids: int32 `[batch, length]`.
        keep, replaced: bool `[batch, length]`.
        inserts_before, inserts_after: int32 `[batch, length]`.
        layout: `row_layout(...)`.
        mask_token_id: int.
        sequence_length: int >= length.
        rotation_offset: optional int32 `[batch]` in `[0, body length)`.

    Returns:
        dict with `"token_ids"` int32 and `"padding_mask"` bool, both
        `[batch, sequence_length]`.
    """
    keep_int = tf.cast(keep, "int32")
    emit = inserts_before + keep_int + inserts_after
    index = tf.cumsum(emit, axis=1, exclusive=True) + inserts_before
    total = tf.reduce_sum(emit, axis=1)
    prefix = layout["prefix"][:, None]
    suffix = layout["suffix"][:, None]
    total_ = total[:, None]
    body_length = total_ - prefix - suffix
    in_body = tf.logical_and(index >= prefix, index < total_ - suffix)
    body_index = index - prefix
    if rotation_offset is not None:
        body_index = tf.math.floormod(
            body_index - rotation_offset[:, None], tf.maximum(body_length, 1)
        )
    room = sequence_length - prefix - suffix
    overflow = tf.maximum(total_ - sequence_length, 0)
    target = tf.where(
        in_body,
        tf.where(body_index < room, prefix + body_index, -1),
        tf.where(index < prefix, index, index - overflow),
    )
    target = tf.where(keep, target, -1)
    values = tf.where(replaced, 0, token_ids - mask_token_id)
    written = _scatter_add(values, target, sequence_length)
    padding_mask = _positions(sequence_length) < tf.minimum(
        total_, sequence_length
    )
    token_ids = tf.where(padding_mask, written + mask_token_id, 0)
    return {"token_ids": token_ids, "padding_mask": padding_mask}


# ---------------------------------------------------------------------------
# All of it.


def _bit_layout(length, num_candidates):
    """Column ranges of the per-row random bits."""
    sizes = [
        ("permutation_round", 1),
        ("infilling_round", 1),
        ("deletion_round", 1),
        ("rotation_coin", 1),
        ("rotation_offset", 1),
        ("sentence_keys", length),
        ("span_lengths", num_candidates),
        ("span_slots", length + num_candidates),
        ("deletion_keys", length),
    ]
    layout, start = {}, 0
    for name, size in sizes:
        layout[name] = (start, start + size)
        start += size
    return layout, start


def bart_noise(
    token_ids,
    real,
    seeds,
    *,
    mask_token_id,
    sequence_length,
    text_infilling_rate=0.3,
    poisson_lambda=3.0,
    token_deletion_rate=0.0,
    sentence_permutation_rate=1.0,
    document_rotation_rate=0.0,
    sentence_end_ids=(),
    unselectable_ids=(0,),
    return_plan=False,
):
    """BART noising of a dense batch (see the module docstring).

    Args:
        token_ids: int32 `[batch, length]` with a static `length <=
            sequence_length`, ids `>= 0`.
        real: bool `[batch, length]`, `True` on real tokens (a prefix of
            each row).
        seeds: int `[batch, 2]`, one stateless seed per row (`row_seeds`).
        mask_token_id: int.
        sequence_length: int, the output length.
        text_infilling_rate, poisson_lambda, token_deletion_rate,
        sentence_permutation_rate, document_rotation_rate: the noise.
        sentence_end_ids: ids that end a sentence.
        unselectable_ids: special ids, never masked or deleted.
        return_plan: also return `"plan"`, a dict of the intermediate
            decisions (for tests): `"permuted_ids"`, `"num_sentences"`,
            `text_infilling_plan`'s outputs (in the permuted row), `"deleted"`,
            `"rotation_offset"`.

    Returns:
        dict with `"token_ids"` int32 and `"padding_mask"` bool, both
        `[batch, sequence_length]` (and `"plan"` if asked).
    """
    token_ids = tf.cast(token_ids, "int32")
    length = token_ids.shape[1]
    if length is None or length > sequence_length:
        raise ValueError(
            "bart_noise needs token ids with a static length <= "
            f"sequence_length={sequence_length}. Received shape "
            f"{token_ids.shape}."
        )
    real = tf.cast(real, "bool")
    selectable = real
    if len(unselectable_ids):
        selectable = tf.logical_and(
            real, ids_in(token_ids, unselectable_ids, negate=True)
        )
    num_candidates = max_spans(length, text_infilling_rate, poisson_lambda)
    columns, width = _bit_layout(length, num_candidates)
    bits = random_bits(seeds, width)

    def take(name):
        start, end = columns[name]
        return bits[:, start:end]

    layout = row_layout(real, selectable)
    plan = {}
    if sentence_permutation_rate > 0 and len(sentence_end_ids):
        token_ids, selectable, num_sentences = sentence_permutation(
            token_ids,
            selectable,
            layout,
            sentence_end_ids,
            sentence_permutation_rate,
            take("permutation_round")[:, 0],
            take("sentence_keys"),
        )
        plan["num_sentences"] = num_sentences
    plan["permuted_ids"] = token_ids

    zeros = tf.zeros_like(token_ids)
    n = _count(selectable)
    plan["num_selectable"] = n
    covered = tf.zeros_like(selectable)
    replaced = covered
    inserts_before = inserts_after = zeros
    if text_infilling_rate > 0:
        infill = text_infilling_plan(
            selectable,
            text_infilling_rate,
            poisson_lambda,
            num_candidates,
            take("infilling_round")[:, 0],
            take("span_lengths"),
            take("span_slots"),
        )
        plan.update(infill)
        covered, replaced = infill["covered"], infill["replaced"]
        inserts_before = infill["inserts_before"]
        inserts_after = infill["inserts_after"]
    deleted = tf.zeros_like(selectable)
    if token_deletion_rate > 0:
        deleted = deletion_mask(
            tf.logical_and(selectable, tf.logical_not(covered)),
            n,
            token_deletion_rate,
            take("deletion_round")[:, 0],
            take("deletion_keys"),
        )
        plan["deleted"] = deleted
    keep = tf.logical_and(
        real,
        tf.logical_not(
            tf.logical_or(
                deleted, tf.logical_and(covered, tf.logical_not(replaced))
            )
        ),
    )

    rotation_offset = None
    if document_rotation_rate > 0:
        emitted = tf.reduce_sum(
            inserts_before + tf.cast(keep, "int32") + inserts_after, axis=1
        )
        body_length = emitted - layout["prefix"] - layout["suffix"]
        coin = _uniform(take("rotation_coin")[:, 0])
        rotate = tf.logical_and(
            coin < document_rotation_rate, body_length >= 2
        )
        # Uniform on [1, body_length - 1]: a start other than the first.
        offset = 1 + tf.cast(
            tf.floor(
                _uniform(take("rotation_offset")[:, 0])
                * tf.cast(tf.maximum(body_length - 1, 0), "float64")
            ),
            "int32",
        )
        rotation_offset = tf.where(rotate, offset, 0)
        plan["rotation_offset"] = rotation_offset

    outputs = assemble(
        token_ids,
        keep,
        replaced,
        inserts_before,
        inserts_after,
        layout,
        mask_token_id,
        sequence_length,
        rotation_offset,
    )
    if return_plan:
        outputs["plan"] = plan
    return outputs
