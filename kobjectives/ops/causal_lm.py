"""Next-token targets of causal language modeling and the attention masks of
packed examples (causal documents, encoder-decoder pairs), as tensor
functions."""

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


def segment_attention_mask(query_segment_ids, key_segment_ids, query_padding_mask=None,
                           key_padding_mask=None, causal=False):
    """Attention mask of packed examples: queries see only keys of their own
    example.

    Query `q` may attend to key `k` iff both are real tokens (the padding
    masks), they belong to the same example (`query_segment_ids[q] ==
    key_segment_ids[k]`) and, with `causal=True`, `k <= q`. For a packed
    encoder-decoder row the three masks are: encoder self-attention
    `(encoder_segment_ids, encoder_segment_ids)`, decoder self-attention
    `(decoder_segment_ids, decoder_segment_ids, causal=True)` and
    cross-attention `(decoder_segment_ids, encoder_segment_ids)`; each
    example of the row is then encoded as if it were alone.

    A query row that would allow no key (a padding query, or a query whose
    example has no real key) attends to key `min(q, key_length - 1)` alone
    (itself, in self-attention). Its output is never scored, but a row with
    no allowed key is a uniform softmax in Keras' attention and NaN in fused
    (flash) kernels; one allowed key keeps every row well defined.

    Args:
        query_segment_ids: int tensor `[..., query_length]`, the example of
            each query position (equal ids = same example).
        key_segment_ids: int tensor `[..., key_length]`, the example of each
            key position; the leading dimensions of the query's.
        query_padding_mask: optional bool/int tensor `[..., query_length]`,
            true for real tokens. None means every query is real.
        key_padding_mask: optional bool/int tensor `[..., key_length]`, true
            for real tokens. None means every key is real.
        causal: bool, also require `k <= q` (decoder self-attention).

    Returns:
        bool tensor `[..., query_length, key_length]`: `[..., q, k]` true
        when query `q` may attend to key `k` (the layout of keras-hub's
        attention masks).

    Raises:
        TypeError: float segment ids.
        ValueError: segment ids of rank 0, a padding mask of another shape
            than its segment ids, or query and key ids whose leading
            dimensions differ.

    Reference:
        Krell et al., 2021, "Efficient Sequence Packing without
        Cross-contamination", https://arxiv.org/abs/2107.02027

    Example:

    >>> mask = segment_attention_mask(
    ...     tf.constant([[1, 1, 2, 0]]), tf.constant([[1, 2, 2]]),
    ...     query_padding_mask=tf.constant([[1, 1, 1, 0]]))
    >>> mask.numpy().astype(int)[0].tolist()  # the padding query sees key 2 alone
    [[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]]
    """
    name = "segment_attention_mask"
    query_ids, query_real = _segment_and_real(query_segment_ids, query_padding_mask, name)
    key_ids, key_real = _segment_and_real(key_segment_ids, key_padding_mask, name)
    if not query_ids.shape[:-1].is_compatible_with(key_ids.shape[:-1]):
        raise ValueError(
            f"`query_segment_ids` {query_ids.shape} and `key_segment_ids` {key_ids.shape} "
            f"must have the same leading (batch) dimensions in {name}; only the last "
            "(length) may differ."
        )
    query_length = tf.shape(query_ids)[-1]
    key_length = tf.shape(key_ids)[-1]
    same = tf.equal(query_ids[..., :, None], key_ids[..., None, :])
    both_real = tf.logical_and(query_real[..., :, None], key_real[..., None, :])
    mask = tf.logical_and(same, both_real)
    query_positions = tf.range(query_length)
    if causal:
        mask = tf.logical_and(mask, tf.range(key_length)[None, :] <= query_positions[:, None])
    fallback = tf.one_hot(tf.minimum(query_positions, key_length - 1), key_length,
                          on_value=True, off_value=False, dtype=tf.bool)  # [q, k]
    empty = tf.logical_not(tf.reduce_any(mask, axis=-1))
    return tf.logical_or(mask, tf.logical_and(empty[..., :, None], fallback))


def document_causal_mask(segment_ids, padding_mask=None):
    """Block-diagonal causal self-attention mask of packed documents.

    Real position `t` may attend to position `s` iff `s <= t`, both are real
    tokens (`padding_mask`) and they belong to the same document
    (`segment_ids[s] == segment_ids[t]`). So inside a window packed with
    several documents (`kobjectives.layers.SequencePacker`) no token sees
    the previous document: each document is encoded as if it were alone.
    The causal self-attention case of `segment_attention_mask`.

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
    return segment_attention_mask(segment_ids, segment_ids, padding_mask, padding_mask,
                                  causal=True)


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
