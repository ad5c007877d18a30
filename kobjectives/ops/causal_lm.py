"""Next-token targets of causal language modeling, as tensor functions."""

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
