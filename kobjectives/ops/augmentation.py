"""EDA-style token augmentation as vectorized, stateless, static-shape ops.

Each op maps `(token_ids, padding_mask)` of shape `[batch, length]` to new
ones of the same shape, with every random draw a `tf.random.stateless_*` op
keyed by a `[2]` seed: the same seed gives the same output, on any device and
with parallel `tf.data` maps. Real tokens are packed first (`[CLS] tokens
[SEP] [PAD]...`); positions whose id is in `unselectable_ids` (special
tokens) and padding positions are never deleted, replaced, swapped or chosen
as insertion sources, and special tokens keep their relative order.

Why not keras-hub's `RandomDeletion` / `RandomSwap`: they take ragged or
string tokens and return ragged output (deletion changes lengths), run a
per-row `tf.map_fn` (or a Python path), and draw from a stateful
`tf.random.Generator` or a per-record hash (the same record is augmented the
same way every epoch). The ops here work on the padded id matrix of a batch
at once by a stable sort of position keys (`tf.argsort(stable=True)`), so the
shape stays `[batch, length]`, XLA and TPUs compile them once, and the
randomness is a function of the seed only.

Reference: Wei & Zou, 2019, "EDA: Easy Data Augmentation Techniques for
Boosting Performance on Text Classification Tasks",
https://arxiv.org/abs/1901.11196 (random deletion, insertion, swap and
replacement; without a thesaurus, insertion copies a word of the same text and
replacement draws a random vocabulary id).
"""

import tensorflow as tf

from kobjectives.ops.masking import ids_in
from kobjectives.ops.masking import sample_replacement_ids

_UINT32 = 2**32
# An explicit algorithm: "auto_select" may pick another one under XLA, and
# the same seed must give the same views with and without `jit_compile`.
_ALG = "philox"


def _uniform(shape, seed):
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32, alg=_ALG)


def selectable_positions(token_ids, padding_mask, unselectable_ids):
    """Real tokens whose id is not special: the only ones augmentation touches."""
    return tf.logical_and(
        tf.cast(padding_mask, tf.bool), ids_in(token_ids, unselectable_ids, negate=True)
    )


def _compact(values, keys, padding_value, new_lengths, length):
    """Reorders each row by ascending `keys` (stable) and pads after
    `new_lengths`: the sorting trick behind deletion and insertion."""
    order = tf.argsort(keys, axis=-1, stable=True)[:, :length]
    values = tf.gather(values, order, batch_dims=1)
    mask = tf.sequence_mask(new_lengths, length)
    values = tf.where(mask, values, tf.cast(padding_value, values.dtype))
    return values, mask


def random_deletion(token_ids, padding_mask, seed, rate, unselectable_ids, padding_token_id=0):
    """Deletes each selectable token with probability `rate`.

    The kept tokens move left in order (special tokens included) and the row
    is padded with `padding_token_id`.

    Args:
        token_ids: int `[batch, length]`.
        padding_mask: bool `[batch, length]`, true on real tokens (first).
        seed: int `[2]` stateless seed.
        rate: float in [0, 1].
        unselectable_ids: ids never deleted (special tokens).
        padding_token_id: int, fills the freed positions.

    Returns:
        `(token_ids, padding_mask)` of the same shapes.
    """
    padding_mask = tf.cast(padding_mask, tf.bool)
    length = tf.shape(token_ids)[1]
    selectable = selectable_positions(token_ids, padding_mask, unselectable_ids)
    delete = tf.logical_and(selectable, _uniform(tf.shape(token_ids), seed) < rate)
    keep = tf.logical_and(padding_mask, tf.logical_not(delete))
    positions = tf.range(length)[None, :]
    keys = tf.where(keep, positions, positions + length)
    new_lengths = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    return _compact(token_ids, keys, padding_token_id, new_lengths, token_ids.shape[1] or length)


def random_insertion(token_ids, padding_mask, seed, rate, unselectable_ids, padding_token_id=0):
    """After each selectable token, with probability `rate`, inserts a copy of
    a random selectable token of the same row.

    Insertions that would not fit in the row's padding are dropped (the
    first ones, left to right, are kept), so the real tokens, and the final
    `[SEP]`, are never pushed out.

    Returns:
        `(token_ids, padding_mask)` of the same shapes.
    """
    padding_mask = tf.cast(padding_mask, tf.bool)
    seeds = tf.random.experimental.stateless_split(seed, 2, alg=_ALG)
    shape = tf.shape(token_ids)
    length = shape[1]
    selectable = selectable_positions(token_ids, padding_mask, unselectable_ids)
    lengths = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
    room = length - lengths
    chosen = tf.logical_and(selectable, _uniform(shape, seeds[0]) < rate)
    chosen = tf.logical_and(chosen, tf.cumsum(tf.cast(chosen, tf.int32), axis=1) <= room[:, None])
    # The source of each insertion: a uniform selectable token of the row.
    positions = tf.range(length)[None, :]
    selectable_first = tf.argsort(
        tf.where(selectable, positions, positions + length), axis=-1, stable=True
    )
    count = tf.reduce_sum(tf.cast(selectable, tf.int32), axis=1)
    pick = tf.cast(
        tf.floor(_uniform(shape, seeds[1]) * tf.cast(count, tf.float32)[:, None]), tf.int32
    )
    pick = tf.minimum(pick, tf.maximum(count - 1, 0)[:, None])
    inserted = tf.gather(token_ids, tf.gather(selectable_first, pick, batch_dims=1), batch_dims=1)
    # Original token j moves right by the insertions before it; an insertion
    # after i lands right after i's new position.
    shift = tf.cumsum(tf.cast(chosen, tf.int32), axis=1, exclusive=True)
    original_target = tf.where(padding_mask, positions + shift, 4 * length)
    inserted_target = tf.where(chosen, positions + shift + 1, 4 * length)
    values = tf.concat([token_ids, inserted], axis=1)
    keys = tf.concat([original_target, inserted_target], axis=1)
    # Invalid entries keep their relative order after all valid ones.
    keys = tf.where(keys < 4 * length, keys, 4 * length + tf.range(2 * length)[None, :])
    new_lengths = lengths + tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1)
    return _compact(values, keys, padding_token_id, new_lengths, token_ids.shape[1] or length)


def random_swap(token_ids, padding_mask, seed, rate, unselectable_ids):
    """Swaps adjacent selectable tokens.

    Each position `i` whose token and right neighbour are both selectable
    starts a swap with probability `rate`; a start right after another start
    is dropped, so swapped pairs never overlap (the expected fraction of
    tokens moved is `2 * rate * (1 - rate)` for long runs of words).

    Returns:
        `(token_ids, padding_mask)`; the mask is unchanged.
    """
    padding_mask = tf.cast(padding_mask, tf.bool)
    selectable = selectable_positions(token_ids, padding_mask, unselectable_ids)
    right = tf.concat([selectable[:, 1:], tf.zeros_like(selectable[:, :1])], axis=1)
    start = tf.logical_and(tf.logical_and(selectable, right), _uniform(tf.shape(token_ids), seed) < rate)
    previous = tf.concat([tf.zeros_like(start[:, :1]), start[:, :-1]], axis=1)
    start = tf.logical_and(start, tf.logical_not(previous))
    second = tf.concat([tf.zeros_like(start[:, :1]), start[:, :-1]], axis=1)
    next_ids = tf.concat([token_ids[:, 1:], token_ids[:, :1]], axis=1)
    previous_ids = tf.concat([token_ids[:, :1], token_ids[:, :-1]], axis=1)
    token_ids = tf.where(start, next_ids, tf.where(second, previous_ids, token_ids))
    return token_ids, padding_mask


def random_replacement(
    token_ids, padding_mask, seed, rate, unselectable_ids, vocabulary_size, excluded_ids
):
    """Replaces each selectable token, with probability `rate`, by an id drawn
    uniformly from the vocabulary minus `excluded_ids` (the special tokens).

    Returns:
        `(token_ids, padding_mask)`; the mask is unchanged.
    """
    padding_mask = tf.cast(padding_mask, tf.bool)
    seeds = tf.random.experimental.stateless_split(seed, 2, alg=_ALG)
    shape = tf.shape(token_ids)
    selectable = selectable_positions(token_ids, padding_mask, unselectable_ids)
    replace = tf.logical_and(selectable, _uniform(shape, seeds[0]) < rate)
    values = tf.random.stateless_uniform(
        shape, seed=seeds[1], minval=0, maxval=_UINT32, dtype=tf.int64, alg=_ALG
    )
    ids = sample_replacement_ids(values, _UINT32, vocabulary_size, excluded_ids)
    return tf.where(replace, tf.cast(ids, token_ids.dtype), token_ids), padding_mask


def augment_tokens(
    token_ids,
    padding_mask,
    seed,
    *,
    vocabulary_size,
    deletion_rate=0.0,
    insertion_rate=0.0,
    replacement_rate=0.0,
    swap_rate=0.0,
    unselectable_ids=(0,),
    excluded_ids=None,
    padding_token_id=0,
):
    """One augmented view: deletion, insertion, swap, then replacement.

    Every operation with a positive rate runs, in that order, each with its
    own seed split from `seed`. Rates are per selectable token (see the op
    functions); a rate of 0 skips the op (no random draws).

    Args:
        token_ids: int `[batch, length]`.
        padding_mask: bool `[batch, length]`.
        seed: int `[2]` stateless seed.
        vocabulary_size: int, for replacement ids.
        deletion_rate, insertion_rate, replacement_rate, swap_rate: floats in
            [0, 1].
        unselectable_ids: ids never altered or moved out of order (special
            tokens).
        excluded_ids: ids never drawn as replacements. Defaults to
            `unselectable_ids` plus `padding_token_id`.
        padding_token_id: int.

    Returns:
        `(token_ids, padding_mask)` of the input's shapes; the mask is bool.
    """
    if excluded_ids is None:
        excluded_ids = tuple(unselectable_ids) + (padding_token_id,)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4, alg=_ALG)
    padding_mask = tf.cast(padding_mask, tf.bool)
    if deletion_rate > 0:
        token_ids, padding_mask = random_deletion(
            token_ids, padding_mask, seeds[0], deletion_rate, unselectable_ids, padding_token_id
        )
    if insertion_rate > 0:
        token_ids, padding_mask = random_insertion(
            token_ids, padding_mask, seeds[1], insertion_rate, unselectable_ids, padding_token_id
        )
    if swap_rate > 0:
        token_ids, padding_mask = random_swap(
            token_ids, padding_mask, seeds[2], swap_rate, unselectable_ids
        )
    if replacement_rate > 0:
        token_ids, padding_mask = random_replacement(
            token_ids, padding_mask, seeds[3], replacement_rate, unselectable_ids,
            vocabulary_size, excluded_ids,
        )
    return token_ids, padding_mask


__all__ = [
    "augment_tokens",
    "random_deletion",
    "random_insertion",
    "random_replacement",
    "random_swap",
    "selectable_positions",
]
