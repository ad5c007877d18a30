"""Permutation language modeling (XLNet) math: spans, factorization order,
permutation mask, target mapping and the two-stream attention masks.

Pure, vectorized, stateless TensorFlow functions over `[batch, length]`
tensors; the single source of truth for
`kobjectives.layers.PermutationLMMasker` (which adds input handling, seeds
and validation around `permutation_lm_inputs`) and for
`kobjectives.objectives.PermutationLanguageModel` (which turns the
permutation mask into the attention masks of XLNet's two streams with
`two_stream_attention_masks`).

The semantics are those of XLNet's data pipeline (`_sample_mask`,
`_local_perm`, Yang et al., 2019) as re-implemented by HuggingFace's
`DataCollatorForPermutationLanguageModeling`:

1. **Targets** (`span_targets`): each row is cut into consecutive segments.
   A segment draws a span length `s ~ U{1, ..., max_span_length}`, has the
   context length `c = int(s / plm_probability)` and holds one span of `s`
   targets at a uniformly random offset in `{0, ..., c - s}`. So about
   `plm_probability` of the tokens become targets, in spans of 1 to
   `max_span_length` tokens. Positions that are not selectable (padding,
   special tokens) are then removed from the targets.
2. **Factorization order** (`factorization_ranks`): a uniformly random
   order of the targets; non-targets come first (rank -1), i.e. every token
   sees all non-targets. With `permutation_size = k` the order is XLNet's
   `_local_perm`: the row is cut in blocks of `k`, the blocks come one after
   the other, and one random permutation of `k` is shared by the blocks
   (HuggingFace uses `k = length / 2`, hence its even-length requirement).
3. **Permutation mask** (`permutation_mask`): `perm_mask[b, i, j] = 1` iff
   token `i` may not see token `j`, i.e. iff `j` is a target and
   `rank[j] >= rank[i]`: non-targets see no target, a target sees the
   targets earlier in the order and never itself (the query stream; the
   content stream adds the token itself, see `two_stream_attention_masks`).
4. **Target mapping** (`target_slots`): the targets in position order in
   `num_predict` static slots: positions, weights (1 for a real target, 0
   for an unused slot) and the one-hot `target_mapping`
   `[batch, num_predict, length]`.

All randomness comes from `tf.random.stateless_uniform` (Philox) keyed by one
seed (an integer tensor of shape `[2]`): the same seed and input give the
same result. (Under `jit_compile` the functions compile, but XLA draws other
numbers from the same seed than TensorFlow's kernels, on CPU at least; the
layer runs in `tf.data`, where there is no XLA.)
"""

import tensorflow as tf

from kobjectives.ops import masking

__all__ = [
    "context_lengths",
    "span_targets",
    "keep_first_targets",
    "factorization_ranks",
    "permutation_mask",
    "target_slots",
    "permutation_lm_inputs",
    "two_stream_attention_masks",
    "inference_permutation_mask",
]


_ALG = "philox"


def context_lengths(plm_probability, max_span_length):
    """`[c_1, ..., c_K]`: the context length `int(s / plm_probability)` of
    each span length `s = 1, ..., max_span_length`, as HuggingFace's
    collator computes it (Python float division, truncated)."""
    return [int(s / plm_probability) for s in range(1, max_span_length + 1)]


def _seeds(seed, count):
    """`count` independent stateless seeds derived from one seed."""
    seed = tf.cast(tf.convert_to_tensor(seed), "int64")
    return tf.unstack(tf.random.experimental.stateless_split(seed, count, alg=_ALG))


def span_targets(selectable, seed, plm_probability, max_span_length):
    """Span targets of permutation LM (XLNet's `_sample_mask`).

    Each row is cut into consecutive segments: segment `k` draws a span length
    `s_k ~ U{1, ..., max_span_length}`, covers `c_k = int(s_k /
    plm_probability)` positions and holds `s_k` targets starting at a
    uniformly random offset `o_k` in `{0, ..., c_k - s_k}`. The process runs
    over the whole row (spans that run past its end are cut) and the
    positions that are not `selectable` are removed afterwards, as in
    HuggingFace's `DataCollatorForPermutationLanguageModeling`.

    Args:
        selectable: bool tensor `[batch, length]` (static `length`), `True`
            where a token may become a target.
        seed: stateless seed, int tensor `[2]`.
        plm_probability: float in `(0, 1]`.
        max_span_length: int >= 1.

    Returns:
        bool tensor `[batch, length]`: the targets (a subset of `selectable`).
    """
    selectable = tf.cast(selectable, "bool")
    length = selectable.shape[-1]
    batch = tf.shape(selectable)[0]
    # Every segment covers at least one position, so `length` segments cover
    # the row.
    segments = length
    table = tf.constant([0] + context_lengths(plm_probability, max_span_length), "int32")
    span_seed, offset_seed = _seeds(seed, 2)
    spans = tf.random.stateless_uniform(
        [batch, segments], span_seed, minval=1, maxval=max_span_length + 1, dtype="int32",
        alg=_ALG,
    )
    contexts = tf.gather(table, spans)
    u = tf.random.stateless_uniform([batch, segments], offset_seed, alg=_ALG)
    room = tf.cast(contexts - spans + 1, "float32")
    offsets = tf.minimum(tf.cast(tf.floor(u * room), "int32"), contexts - spans)
    segment_starts = tf.cumsum(contexts, axis=-1, exclusive=True)
    starts = segment_starts + offsets  # [batch, segments]
    ends = starts + spans
    positions = tf.range(length, dtype="int32")[None, :, None]
    inside = tf.logical_and(positions >= starts[:, None, :], positions < ends[:, None, :])
    return tf.logical_and(tf.reduce_any(inside, axis=-1), selectable)


def keep_first_targets(targets, padding_mask, num_predict):
    """Caps the targets and keeps every row predictable.

    - At most `num_predict` targets per row: the first ones in position order
      are kept, later ones become ordinary context (as XLNet's
      `_sample_mask` stops at its `num_predict` goal).
    - A row whose real tokens would all be targets loses its first target,
      so every target sees at least one token (an empty attention row would
      silently attend everywhere, the target itself included).

    Args:
        targets: bool `[batch, length]`.
        padding_mask: bool `[batch, length]`, `True` on real tokens.
        num_predict: int >= 1.

    Returns:
        bool `[batch, length]`.
    """
    targets = tf.logical_and(tf.cast(targets, "bool"), tf.cast(padding_mask, "bool"))
    count = tf.cumsum(tf.cast(targets, "int32"), axis=-1)
    targets = tf.logical_and(targets, count <= num_predict)
    visible = tf.logical_and(tf.cast(padding_mask, "bool"), tf.logical_not(targets))
    starved = tf.logical_and(
        tf.logical_not(tf.reduce_any(visible, axis=-1)), tf.reduce_any(targets, axis=-1)
    )
    first = tf.equal(tf.cumsum(tf.cast(targets, "int32"), axis=-1), 1)
    first = tf.logical_and(first, targets)
    drop = tf.logical_and(first, starved[:, None])
    return tf.logical_and(targets, tf.logical_not(drop))


def factorization_ranks(targets, seed, permutation_size=None):
    """A random factorization order: the rank of each position.

    Targets get their rank in a random order; non-targets get -1 (they come
    first). With `permutation_size = k` (which must divide the length) the
    ranks are XLNet's `_local_perm`: position `b * k + p` has rank
    `b * k + sigma(p)` for one uniformly random permutation `sigma` of
    `{0, ..., k - 1}` per row. `None` means `k = length`: a uniformly random
    order of all positions.

    Args:
        targets: bool `[batch, length]` (static `length`).
        seed: stateless seed, int tensor `[2]`.
        permutation_size: int dividing `length`, or None.

    Returns:
        int32 `[batch, length]`.

    Raises:
        ValueError: `permutation_size` does not divide the length.
    """
    length = targets.shape[-1]
    size = length if permutation_size is None else int(permutation_size)
    if length % size:
        raise ValueError(
            f"The sequence length {length} is not a multiple of "
            f"permutation_size={size}: XLNet's local permutation cuts the "
            "sequence into blocks of `permutation_size` tokens. Use a "
            "sequence length that is a multiple of it (HuggingFace's "
            "collator uses length / 2, so the length must be even), or "
            "permutation_size=None for one permutation of the whole sequence."
        )
    batch = tf.shape(targets)[0]
    scores = tf.random.stateless_uniform([batch, size], seed, alg=_ALG)
    sigma = tf.argsort(scores, axis=-1, stable=True)  # a uniform permutation
    blocks = length // size
    offsets = tf.repeat(tf.range(blocks, dtype="int32") * size, size)
    ranks = tf.tile(tf.cast(sigma, "int32"), [1, blocks]) + offsets[None, :]
    return tf.where(tf.cast(targets, "bool"), ranks, -tf.ones_like(ranks))


def permutation_mask(ranks, targets, dtype="float32"):
    """`perm_mask[b, i, j] = 1` iff token `i` may not see token `j`.

    That is, iff `j` is a target and `rank[j] >= rank[i]`: non-targets
    (rank -1) see no target, targets see earlier targets only, never
    themselves.

    Args:
        ranks: int `[batch, length]` from `factorization_ranks`.
        targets: bool `[batch, length]`.
        dtype: output dtype.

    Returns:
        `[batch, length, length]` of 0/1 in `dtype`.
    """
    hidden = tf.logical_and(
        ranks[:, :, None] <= ranks[:, None, :], tf.cast(targets, "bool")[:, None, :]
    )
    return tf.cast(hidden, dtype)


def target_slots(targets, token_ids, num_predict):
    """The targets in position order, in `num_predict` static slots.

    Args:
        targets: bool `[batch, length]`, at most `num_predict` per row.
        token_ids: int `[batch, length]`.
        num_predict: int >= 1.

    Returns:
        dict with `target_positions` int32 `[batch, num_predict]` (0 in
        unused slots), `target_ids` (`token_ids`' dtype, 0 in unused slots),
        `target_weights` float32 (1 for a real target, 0 for an unused slot)
        and `target_mapping` float32 `[batch, num_predict, length]` (the
        one-hot position of each real target, zeros for unused slots).
    """
    targets = tf.cast(targets, "bool")
    length = targets.shape[-1]
    # Targets first, in position order: sort by (not target, position).
    keys = tf.where(targets, 0, length) + tf.range(length, dtype="int32")[None]
    order = tf.argsort(keys, axis=-1, stable=True)
    if num_predict <= length:
        order = order[:, :num_predict]
    else:
        order = tf.pad(order, [[0, 0], [0, num_predict - length]])
    count = tf.reduce_sum(tf.cast(targets, "int32"), axis=-1, keepdims=True)
    used = tf.range(num_predict, dtype="int32")[None] < count
    positions = tf.where(used, tf.cast(order, "int32"), 0)
    weights = tf.cast(used, "float32")
    ids = tf.where(
        used, tf.gather(token_ids, positions, batch_dims=1), tf.cast(0, token_ids.dtype)
    )
    mapping = tf.one_hot(positions, length, dtype="float32") * weights[:, :, None]
    return {
        "target_positions": positions,
        "target_ids": ids,
        "target_weights": weights,
        "target_mapping": mapping,
    }


def permutation_lm_inputs(
    token_ids,
    padding_mask,
    seed,
    plm_probability=1 / 6,
    max_span_length=5,
    num_predict=None,
    permutation_size=None,
    unselectable_ids=(),
):
    """Everything permutation LM needs for one batch of token ids.

    Args:
        token_ids: int `[batch, length]` (static `length`), ids `>= 0`.
        padding_mask: bool `[batch, length]`, `True` on real tokens.
        seed: stateless seed, int tensor `[2]`.
        plm_probability: float in `(0, 1]`, the target fraction.
        max_span_length: int >= 1, the longest span of targets.
        num_predict: int >= 1, the prediction slots (and most targets) per
            row. None means `length`.
        permutation_size: see `factorization_ranks`.
        unselectable_ids: ids never chosen as targets (special tokens).

    Returns:
        dict with `perm_mask` float32 `[batch, length, length]`, and the
        `target_slots` outputs (`target_positions`, `target_ids`,
        `target_weights`, `target_mapping`).
    """
    length = token_ids.shape[-1]
    num_predict = length if num_predict is None else int(num_predict)
    padding_mask = tf.cast(padding_mask, "bool")
    selectable = masking.selectable_mask(token_ids, padding_mask, unselectable_ids)
    span_seed, order_seed = _seeds(seed, 2)
    targets = span_targets(selectable, span_seed, plm_probability, max_span_length)
    targets = keep_first_targets(targets, padding_mask, num_predict)
    ranks = factorization_ranks(targets, order_seed, permutation_size)
    outputs = target_slots(targets, token_ids, num_predict)
    outputs["perm_mask"] = permutation_mask(ranks, targets)
    return outputs


def two_stream_attention_masks(perm_mask, padding_mask, dtype="float32"):
    """The attention masks of XLNet's content and query streams.

    In Keras' convention (1 = may attend), from the permutation mask
    (1 = may not see) and the padding mask. Nobody attends to padding. The
    content stream of a token sees itself (padding rows see only
    themselves); the query stream sees exactly what `perm_mask` allows.

    Args:
        perm_mask: `[batch, length, length]`, 1 where `i` may not see `j`.
        padding_mask: `[batch, length]`, true/1 on real tokens.
        dtype: output dtype.

    Returns:
        `(content_mask, query_mask)`, each `[batch, length, length]`.
    """
    perm_mask = tf.convert_to_tensor(perm_mask)
    visible = tf.logical_and(
        tf.equal(perm_mask, tf.zeros([], perm_mask.dtype)),
        tf.cast(padding_mask, "bool")[:, None, :],
    )
    length = tf.shape(perm_mask)[-1]
    eye = tf.eye(length, dtype="bool")[None]
    content = tf.logical_or(visible, eye)
    return tf.cast(content, dtype), tf.cast(visible, dtype)


def inference_permutation_mask(hidden_positions):
    """The permutation mask that predicts the `hidden_positions` (e.g. the
    `[MASK]` tokens) from the other tokens: nobody sees a hidden position.

    Args:
        hidden_positions: bool `[batch, length]`.

    Returns:
        float32 `[batch, length, length]`.
    """
    hidden = tf.cast(hidden_positions, "float32")
    length = tf.shape(hidden)[-1]
    return tf.broadcast_to(hidden[:, None, :], tf.stack([tf.shape(hidden)[0], length, length]))
