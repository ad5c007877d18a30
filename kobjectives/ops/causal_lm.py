"""Next-token targets and packed-document attention masks of causal language
modeling, as tensor functions."""

import tensorflow as tf


def causal_lm_targets(token_ids, padding_mask=None, segment_ids=None):
    """Next-token labels and weights, reset at document boundaries.

    Position `t` predicts token `t + 1`. A target counts (weight 1) only when
    both positions are real tokens (`padding_mask`) and belong to the same
    document (`segment_ids` equal), so inside a window packed with several
    documents (`kobjectives.layers.SequencePacker`) no position is trained
    to predict the first token of the next document from the previous one.
    The last position has no target. Labels of weight-0 positions are 0 (a
    valid id), so they can be fed to any cross-entropy.

    Args:
        token_ids: int tensor `[..., length]`.
        padding_mask: optional bool/int tensor `[..., length]`, true for real
            tokens. None means every position is real.
        segment_ids: optional int tensor `[..., length]`, the document of
            each position. None means one document per row.

    Returns:
        `(labels, weights)`: int32 `[..., length]` and float32
        `[..., length]`.

    Example:

    >>> labels, weights = causal_lm_targets(
    ...     tf.constant([[5, 6, 2, 7, 2, 0]]),
    ...     padding_mask=tf.constant([[1, 1, 1, 1, 1, 0]]),
    ...     segment_ids=tf.constant([[0, 0, 0, 1, 1, 0]]))
    >>> labels.numpy().tolist(), weights.numpy().tolist()
    ([[6, 2, 0, 2, 0, 0]], [[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    """
    token_ids = tf.cast(tf.convert_to_tensor(token_ids), tf.int32)
    if token_ids.shape.rank is not None and token_ids.shape.rank < 1:
        raise ValueError(f"`token_ids` must be `[..., length]`. Received shape {token_ids.shape}.")
    if padding_mask is None:
        real = tf.ones_like(token_ids, dtype=tf.bool)
    else:
        real = tf.cast(padding_mask, tf.bool)
    pairs = tf.logical_and(real[..., :-1], real[..., 1:])
    if segment_ids is not None:
        segment_ids = tf.convert_to_tensor(segment_ids)
        pairs = tf.logical_and(pairs, tf.equal(segment_ids[..., :-1], segment_ids[..., 1:]))
    next_ids = token_ids[..., 1:]
    labels = tf.where(pairs, next_ids, tf.zeros_like(next_ids))
    zero = tf.zeros_like(token_ids[..., :1])
    labels = tf.concat([labels, zero], axis=-1)
    weights = tf.concat([tf.cast(pairs, tf.float32), tf.cast(zero, tf.float32)], axis=-1)
    return labels, weights


def _segment_and_real(segment_ids, padding_mask, name):
    segment_ids = tf.convert_to_tensor(segment_ids)
    if segment_ids.dtype.is_floating or segment_ids.dtype.is_complex:
        raise TypeError(
            f"`segment_ids` must be integer document ids (as "
            f"kobjectives.layers.SequencePacker emits). Received dtype {segment_ids.dtype.name} "
            f"in {name}; cast them to int32."
        )
    if segment_ids.shape.rank is not None and segment_ids.shape.rank < 1:
        raise ValueError(
            f"`segment_ids` must be `[..., length]` in {name}. Received shape {segment_ids.shape}."
        )
    segment_ids = tf.cast(segment_ids, tf.int32)
    if padding_mask is None:
        real = tf.ones_like(segment_ids, dtype=tf.bool)
    else:
        real = tf.cast(tf.convert_to_tensor(padding_mask), tf.bool)
        if not real.shape.is_compatible_with(segment_ids.shape):
            raise ValueError(
                f"`padding_mask` {real.shape} and `segment_ids` {segment_ids.shape} must have "
                f"the same shape in {name}: one flag and one document id per position."
            )
    return segment_ids, real


def document_causal_mask(segment_ids, padding_mask=None):
    """Block-diagonal causal self-attention mask of packed documents.

    Real position `t` may attend to position `s` iff `s <= t`, both are real
    tokens (`padding_mask`) and they belong to the same document
    (`segment_ids[s] == segment_ids[t]`). So inside a window packed with
    several documents (`kobjectives.layers.SequencePacker`) no token sees
    the previous document: each document is encoded as if it were alone.

    A padded position attends only to itself. Its output is never scored,
    but an attention row with no allowed key would be a uniform softmax in
    Keras' attention and NaN in fused (flash) kernels; the diagonal keeps
    every row well defined.

    Args:
        segment_ids: int tensor `[..., length]`, the document of each
            position (equal ids = same document).
        padding_mask: optional bool/int tensor `[..., length]`, true for real
            tokens. None means every position is real.

    Returns:
        bool tensor `[..., length, length]`: `[..., t, s]` is true when query
        `t` may attend to key `s` (the layout of keras-hub's
        `decoder_attention_mask`).

    Raises:
        TypeError: float `segment_ids`.
        ValueError: `segment_ids` of rank 0, or a `padding_mask` of another
            shape.

    Example:

    >>> mask = document_causal_mask(
    ...     tf.constant([[0, 0, 1, 1, 0]]), tf.constant([[1, 1, 1, 1, 0]]))
    >>> mask.numpy().astype(int)[0].tolist()
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    """
    segment_ids, real = _segment_and_real(segment_ids, padding_mask, "document_causal_mask")
    length = tf.shape(segment_ids)[-1]
    positions = tf.range(length)
    causal = positions[None, :] <= positions[:, None]  # [t, s]: s <= t
    same = tf.equal(segment_ids[..., :, None], segment_ids[..., None, :])
    both_real = tf.logical_and(real[..., :, None], real[..., None, :])
    mask = tf.logical_and(tf.logical_and(same, both_real), causal)
    diagonal = tf.cast(tf.eye(length), tf.bool)
    padded_self = tf.logical_and(diagonal, tf.logical_not(real)[..., :, None])
    return tf.logical_or(mask, padded_self)


def document_positions(segment_ids, padding_mask=None):
    """Position ids that restart at 0 at every document of a packed window.

    Position `t` gets the number of earlier real tokens of its document in
    the window (the row sum of `document_causal_mask` minus one), so a
    document packed after others gets the positions `0, 1, 2, ...` it would
    have alone. Padded positions get 0. For backbones with learned absolute
    positions (GPT-2); rotary positions (Llama) are relative and need none.

    Args:
        segment_ids: int tensor `[..., length]`, the document of each position.
        padding_mask: optional bool/int tensor `[..., length]`, true for real
            tokens.

    Returns:
        int32 tensor `[..., length]`, each value in `[0, length)`.

    Example:

    >>> document_positions(
    ...     tf.constant([[0, 0, 0, 1, 1, 0]]), tf.constant([[1, 1, 1, 1, 1, 0]])
    ... ).numpy().tolist()
    [[0, 1, 2, 0, 1, 0]]
    """
    mask = document_causal_mask(segment_ids, padding_mask)
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1) - 1
