"""The linear-chain conditional random field (CRF) as tensor functions.

A linear-chain CRF (Lafferty et al., 2001) scores a tag path
`y_1 .. y_n` of a sequence with per-position emission scores
`potentials[t, y_t]` (a tagger's logits), a transition matrix
`transitions[i, j]` (the score of tag `i` followed by tag `j`) and optional
start and end scores:

    score(y) = start[y_1] + sum_t potentials[t, y_t]
               + sum_{t > 1} transitions[y_{t-1}, y_t] + end[y_n]

    log p(y | x) = score(y) - log sum_{y'} exp(score(y'))

The normalizer is computed by the forward algorithm in log space
(log-sum-exp over the previous tag at every step), the best path by the
Viterbi algorithm, each as one `tf.scan` over the time axis with a static
trip count, so both compile under XLA. Lample et al. (2016) put such a CRF
on top of a BiLSTM for named-entity recognition; a transformer tagger uses
it the same way.

**Masks.** `mask` `[batch, length]` marks the positions that carry a tag. It
may be non-contiguous: a masked position is skipped as if it were removed
from the sequence, so the transition links consecutive *unmasked* positions
(with first-piece labelling only the first sub-word of each word carries a
tag). The values at masked positions (potentials, even NaN or infinite, and
tags, even out of range) never reach the result or its gradient. A row with
no unmasked position has log-likelihood 0 and decodes to all zeros.

Every computation is in float32, whatever the input dtype (bfloat16 logits
under mixed precision are cast first).
"""

import tensorflow as tf

from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import poison_invalid_labels


def _float32(name, value, rank, shape_text):
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating:
        raise ValueError(
            f"`{name}` must be a float tensor {shape_text}. Received dtype {value.dtype.name}."
        )
    if value.shape.rank is not None and value.shape.rank != rank:
        raise ValueError(
            f"`{name}` must have shape {shape_text}. Received shape {value.shape}."
        )
    return tf.cast(value, tf.float32)


def _prepare(potentials, transitions, mask, start_transitions, end_transitions):
    """Checked float32 inputs with masked potentials zeroed, time-major."""
    potentials = _float32("potentials", potentials, 3, "[batch, length, num_tags]")
    num_tags = potentials.shape[-1]
    if num_tags is None:
        raise ValueError(
            "`potentials` must have a static number of tags (its last axis). "
            f"Received shape {potentials.shape}."
        )
    transitions = _float32("transitions", transitions, 2, "[num_tags, num_tags]")
    if not transitions.shape.is_compatible_with([num_tags, num_tags]):
        raise ValueError(
            f"`transitions` must have shape [num_tags, num_tags] = [{num_tags}, {num_tags}] "
            f"(num_tags from `potentials`). Received shape {transitions.shape}."
        )
    edges = []
    for name, value in (("start_transitions", start_transitions),
                        ("end_transitions", end_transitions)):
        if value is None:
            edges.append(tf.zeros([num_tags], tf.float32))
            continue
        value = _float32(name, value, 1, "[num_tags]")
        if not value.shape.is_compatible_with([num_tags]):
            raise ValueError(
                f"`{name}` must have shape [num_tags] = [{num_tags}]. "
                f"Received shape {value.shape}."
            )
        edges.append(value)
    batch_length = tf.shape(potentials)[:2]
    if mask is None:
        mask = tf.ones(batch_length, tf.bool)
    else:
        mask = tf.convert_to_tensor(mask)
        if not mask.shape.is_compatible_with(potentials.shape[:2]):
            raise ValueError(
                "`mask` must have shape [batch, length] like `potentials`' first two "
                f"axes {potentials.shape[:2]}. Received shape {mask.shape}."
            )
        mask = tf.cast(mask, tf.bool)
    # Masked potentials (possibly NaN or -inf) never enter the computation,
    # so neither the result nor the gradient sees them.
    potentials = tf.where(mask[..., None], potentials, tf.zeros_like(potentials))
    return potentials, transitions, mask, edges[0], edges[1], num_tags


def _time_major(x):
    rank = x.shape.rank
    return tf.transpose(x, [1, 0] + list(range(2, rank)))


def crf_log_likelihood(potentials, tags, transitions, mask=None, start_transitions=None,
                       end_transitions=None):
    """Per-example log-likelihood of a tag path under a linear-chain CRF.

    `log p(tags | potentials) = score(tags) - log Z`, with the path score and
    the forward-algorithm normalizer of the module docstring, both over the
    unmasked positions only (a non-contiguous `mask` skips positions as if
    they were removed). A row without unmasked positions gives 0.

    Tags at unmasked positions must be ids in `[0, num_tags)`: known values
    (eager tensors, NumPy arrays) outside it raise a `ValueError`, traced
    ones fail a `tf.debugging` assert, and under `jit_compile=True` (no
    asserts) the row's log-likelihood is NaN, never a finite wrong value
    (`kobjectives.ops.labels`). Tags at masked positions are ignored.

    Args:
        potentials: float tensor `[batch, length, num_tags]`, the emission
            scores (a tagger's logits); `num_tags` must be static.
        tags: int tensor `[batch, length]`, the gold tag path.
        transitions: float tensor `[num_tags, num_tags]`; `[i, j]` is the
            score of tag `i` followed by tag `j`.
        mask: optional bool tensor `[batch, length]`, true where a position
            carries a tag. None means every position.
        start_transitions: optional float `[num_tags]`, the score of starting
            with each tag. None means zeros.
        end_transitions: optional float `[num_tags]`, the score of ending
            with each tag. None means zeros.

    Returns:
        float32 tensor `[batch]`, `log p(tags)` (<= 0).

    Raises:
        ValueError: wrongly shaped or typed arguments, or known tags outside
            `[0, num_tags)` at unmasked positions.

    References:
        - Lafferty et al., 2001, "Conditional Random Fields: Probabilistic
          Models for Segmenting and Labeling Sequence Data".
        - Lample et al., 2016, "Neural Architectures for Named Entity
          Recognition", https://arxiv.org/abs/1603.01360

    Example:

    >>> potentials = tf.constant([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    >>> transitions = tf.constant([[0.5, -0.5], [0.0, 1.0]])
    >>> mask = tf.constant([[True, False, True]])  # the middle position is skipped
    >>> ll = crf_log_likelihood(potentials, [[0, 1, 1]], transitions, mask)
    >>> round(float(ll[0]), 4)  # log p of the path 0 -> 1 over positions 0 and 2
    -1.7873
    """
    potentials, transitions, mask, start, end, num_tags = _prepare(
        potentials, transitions, mask, start_transitions, end_transitions)
    tags = tf.convert_to_tensor(tags)
    if not tags.shape.is_compatible_with(potentials.shape[:2]):
        raise ValueError(
            "`tags` must have shape [batch, length] like `potentials`' first two axes "
            f"{potentials.shape[:2]}. Received shape {tags.shape}."
        )
    # Tags at masked positions are ignored, whatever their value.
    tags = tf.where(mask, tags, tf.zeros_like(tags))
    ids = check_labels(tags, num_tags, name="tags")
    # 0 per row, NaN where an unmasked tag is invalid (seen under XLA only).
    poison = tf.reduce_sum(
        poison_invalid_labels(tf.zeros(tf.shape(ids), tf.float32), tags, num_tags), axis=1)
    one_hot = tf.one_hot(tf.where((ids >= 0) & (ids < num_tags), ids, 0), num_tags)

    batch = tf.shape(potentials)[0]
    zeros = tf.zeros(tf.stack([batch, num_tags]), tf.float32)
    initial = (zeros, tf.zeros([batch], tf.bool), zeros, tf.zeros([batch], tf.float32))

    def step(carry, inputs):
        alpha, started, previous, gold = carry
        emission, valid, tag = inputs
        # Forward algorithm: log-sum-exp over the previous tag.
        continued = tf.reduce_logsumexp(alpha[:, :, None] + transitions[None], axis=1)
        new_alpha = tf.where(started[:, None], continued, start[None]) + emission
        # The gold path's score: its emission, and the transition from the
        # previous unmasked tag (the start score for the first one).
        linked = tf.reduce_sum(tf.matmul(previous, transitions) * tag, axis=-1)
        opened = tf.reduce_sum(start[None] * tag, axis=-1)
        scored = tf.reduce_sum(emission * tag, axis=-1) + tf.where(started, linked, opened)
        return (
            tf.where(valid[:, None], new_alpha, alpha),
            started | valid,
            tf.where(valid[:, None], tag, previous),
            gold + tf.where(valid, scored, tf.zeros_like(scored)),
        )

    alpha, started, previous, gold = tf.scan(
        step,
        (_time_major(potentials), _time_major(mask), _time_major(one_hot)),
        initializer=initial,
    )
    alpha, started, previous, gold = alpha[-1], started[-1], previous[-1], gold[-1]
    log_norm = tf.reduce_logsumexp(alpha + end[None], axis=-1)
    gold = gold + tf.reduce_sum(previous * end[None], axis=-1)
    log_likelihood = tf.where(started, gold - log_norm, tf.zeros_like(gold))
    return log_likelihood + poison


def crf_loss(potentials, tags, transitions, mask=None, start_transitions=None,
             end_transitions=None):
    """Per-example negative log-likelihood of a linear-chain CRF.

    `-crf_log_likelihood(...)`: non-negative up to float rounding, 0 for a
    row without unmasked positions, NaN for a row with an invalid tag at an
    unmasked position under XLA (see `crf_log_likelihood`, which documents
    the arguments). Reduce it over the batch with
    `kobjectives.ops.global_weighted_mean` for a mean exact under
    `tf.distribute`.

    Args:
        potentials: float `[batch, length, num_tags]` emission scores.
        tags: int `[batch, length]` gold tags.
        transitions: float `[num_tags, num_tags]`, `[i, j]` = tag `i` then `j`.
        mask: optional bool `[batch, length]`, may be non-contiguous.
        start_transitions: optional float `[num_tags]`.
        end_transitions: optional float `[num_tags]`.

    Returns:
        float32 tensor `[batch]`.

    Raises:
        ValueError: as `crf_log_likelihood`.

    Reference:
        Lample et al., 2016, "Neural Architectures for Named Entity
        Recognition", https://arxiv.org/abs/1603.01360

    Example:

    >>> loss = crf_loss(tf.zeros([2, 3, 2]), [[0, 1, 1], [1, 0, 0]], tf.zeros([2, 2]),
    ...                 mask=[[True, True, True], [False, False, False]])
    >>> [round(float(v), 4) for v in loss]  # 8 equally likely paths; an empty row
    [2.0794, 0.0]
    """
    # `0 - x`, not `-x`: an empty row gives 0.0, not -0.0.
    return 0.0 - crf_log_likelihood(
        potentials, tags, transitions, mask, start_transitions, end_transitions)


def crf_decode(potentials, transitions, mask=None, start_transitions=None,
               end_transitions=None):
    """The highest-scoring tag path of a linear-chain CRF (Viterbi).

    The maximum over tag paths of `score(path)` (module docstring), over the
    unmasked positions only: a non-contiguous `mask` skips positions as if
    they were removed, and the transitions link consecutive unmasked
    positions. One forward `tf.scan` keeps the best score per tag and its
    back-pointers, one reverse `tf.scan` follows them; both have a static
    trip count (the length), so the function compiles under XLA. Ties go to
    the lowest tag id.

    Args:
        potentials: float tensor `[batch, length, num_tags]`, the emission
            scores; `num_tags` must be static.
        transitions: float tensor `[num_tags, num_tags]`; `[i, j]` is the
            score of tag `i` followed by tag `j`.
        mask: optional bool tensor `[batch, length]`; None means every
            position.
        start_transitions: optional float `[num_tags]`; None means zeros.
        end_transitions: optional float `[num_tags]`; None means zeros.

    Returns:
        `(tags, scores)`: int32 `[batch, length]`, the best path (0 at masked
        positions, all 0 for a row without unmasked positions), and float32
        `[batch]`, its unnormalized score `score(tags)` (0 for such a row).

    Raises:
        ValueError: wrongly shaped or typed arguments.

    Reference:
        Viterbi, 1967; Lample et al., 2016, "Neural Architectures for Named
        Entity Recognition", https://arxiv.org/abs/1603.01360

    Example:

    >>> potentials = tf.constant([[[1.0, 0.0], [0.0, 2.0], [0.4, 0.0]]])
    >>> transitions = tf.constant([[0.0, 0.0], [0.0, 1.0]])  # 1 -> 1 is favoured
    >>> tags, scores = crf_decode(potentials, transitions)
    >>> tags.numpy().tolist(), round(float(scores[0]), 4)
    ([[0, 1, 1]], 4.0)
    >>> tags, _ = crf_decode(potentials, transitions, mask=[[True, False, True]])
    >>> tags.numpy().tolist()
    [[0, 0, 0]]
    """
    potentials, transitions, mask, start, end, num_tags = _prepare(
        potentials, transitions, mask, start_transitions, end_transitions)
    batch = tf.shape(potentials)[0]
    identity = tf.broadcast_to(tf.range(num_tags, dtype=tf.int32)[None],
                               tf.stack([batch, num_tags]))
    initial = (tf.zeros(tf.stack([batch, num_tags]), tf.float32),
               tf.zeros([batch], tf.bool), identity)

    def forward(carry, inputs):
        best, started, _ = carry
        emission, valid = inputs
        candidates = best[:, :, None] + transitions[None]  # [batch, previous, next]
        pointers = tf.argmax(candidates, axis=1, output_type=tf.int32)
        continued = tf.reduce_max(candidates, axis=1)
        new_best = tf.where(started[:, None], continued, start[None]) + emission
        # A masked position (or the first unmasked one) points to itself, so
        # the backtrace passes through it unchanged.
        pointers = tf.where((valid & started)[:, None], pointers, identity)
        return tf.where(valid[:, None], new_best, best), started | valid, pointers

    best, started, pointers = tf.scan(
        forward, (_time_major(potentials), _time_major(mask)), initializer=initial)
    final = best[-1] + end[None]
    started = started[-1]
    last = tf.argmax(final, axis=-1, output_type=tf.int32)
    scores = tf.where(started, tf.reduce_max(final, axis=-1), tf.zeros([batch], tf.float32))

    def backward(tag, pointer):
        # `pointer` holds the back-pointers of step t; `tag` the state after
        # step t; returns the state after step t - 1.
        return tf.reduce_sum(pointer * tf.one_hot(tag, num_tags, dtype=tf.int32), axis=-1)

    earlier = tf.scan(backward, pointers[1:], initializer=last, reverse=True)
    path = tf.concat([earlier, last[None]], axis=0)  # [length, batch]
    tags = tf.where(mask, tf.transpose(path), tf.zeros_like(mask, tf.int32))
    return tags, scores
