"""Token-id inputs of the preprocessing layers: one normalization for all.

A layer over token ids accepts dense `[batch, length]` or unbatched
`[length]` ids, ragged ids (padded to the layer's `sequence_length`), nested
Python lists, or a dict with `"token_ids"`, optional per-token companions
(`"padding_mask"`, ...) and extra keys that pass through untouched.
"""

import numpy as np
import tensorflow as tf


def to_tensor(x):
    """`x` as a `tf.Tensor`, or a `tf.RaggedTensor` for ragged nested lists."""
    if isinstance(x, (tf.Tensor, tf.RaggedTensor, tf.Variable)):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return tf.convert_to_tensor(x)
        except (ValueError, TypeError):
            return tf.ragged.constant(x)
    return tf.convert_to_tensor(x)


def fit_length(x, length, pad_value=0):
    """Pads (with `pad_value`) or truncates the last axis of a `[batch, n]`
    tensor to `length`; `None` stays `None`."""
    if x is None:
        return None
    x = tf.convert_to_tensor(x)
    if x.shape[-1] == length:
        return x
    x = x[:, :length]
    pad = tf.maximum(length - tf.shape(x)[1], 0)
    x = tf.pad(x, [[0, 0], [0, pad]], constant_values=tf.cast(pad_value, x.dtype))
    return tf.ensure_shape(x, [None, length])


def check_ids(name, ids, vocabulary_size=None):
    """`ids` (an int, ints or `None`) as a tuple of ints in `[0,
    vocabulary_size)` (`[0, 2**31)` without a vocabulary size); raises
    `ValueError` naming the argument otherwise."""
    if ids is None:
        return ()
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    try:
        ids = tuple(int(i) for i in ids)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a sequence of integer ids. Received: {name}={ids!r}."
        ) from None
    upper = 2**31 if vocabulary_size is None else vocabulary_size
    bad = [i for i in ids if not 0 <= i < upper]
    if bad:
        raise ValueError(
            f"`{name}` must hold ids in [0, vocabulary_size - 1] = "
            f"[0, {upper - 1}]. Received out-of-range ids {bad}. "
            "Remove them or fix `vocabulary_size`."
        )
    return ids


def check_token_ids(token_ids, layer_name, vocabulary_size=None, real=None):
    """`token_ids` with a run-time check that every id is in the vocabulary.

    Every id (at the `real` positions, when given) must be in `[0,
    vocabulary_size)`, or `>= 0` without a vocabulary size; otherwise the
    graph fails with an `InvalidArgumentError` naming the layer and the
    worst id. Preprocessing runs in `tf.data` (never under XLA), so the
    check always runs. Reinterpreted as unsigned, negative ids become huge,
    so one maximum finds the worst id of both kinds.

    Args:
        token_ids: int tensor of any shape.
        layer_name: str, for the error message.
        vocabulary_size: int or `None`.
        real: optional bool tensor like `token_ids`; other positions are
            not checked.

    Returns:
        `token_ids`, unchanged, after the check.
    """
    ids = token_ids
    if ids.dtype not in (tf.int32, tf.int64):
        ids = tf.cast(ids, "int64")
    if real is not None:
        ids = tf.where(real, ids, tf.zeros_like(ids))
    unsigned = "uint64" if ids.dtype == tf.int64 else "uint32"
    worst = tf.reduce_max(tf.bitcast(ids, unsigned))
    if vocabulary_size is None:
        limit = 2 ** (63 if ids.dtype == tf.int64 else 31)
        problem = "is negative: token ids must be >= 0. Check the tokenizer."
    else:
        limit = vocabulary_size
        problem = (
            "is outside the vocabulary [0, vocabulary_size) with "
            f"vocabulary_size = {vocabulary_size}. Check the tokenizer's "
            "vocabulary and the layer's `vocabulary_size` (ids must be >= 0)."
        )
    check = tf.debugging.Assert(
        worst < tf.constant(limit, dtype=unsigned),
        [f"{layer_name}: token id", tf.bitcast(worst, ids.dtype), problem],
    )
    with tf.control_dependencies([check]):
        return tf.identity(token_ids)


def unpack_token_inputs(inputs, layer_name, companions=("padding_mask",)):
    """Splits a layer's input into checked token ids, companions and extras.

    Args:
        inputs: token ids (dense, ragged or nested lists; `[batch, length]`
            or `[length]`) or a dict with `"token_ids"`, optional
            `companions` and other keys.
        layer_name: str, for the error messages.
        companions: the optional per-token keys of a dict input.

    Returns:
        `(token_ids, companions, extras)`: int32/int64 ids of rank 1 or 2
        (dense or ragged, as given); `{key: value or None}`; the dict
        input's other keys.

    Raises:
        ValueError: no `"token_ids"` in a dict, non-integer ids, a rank other
            than 1 or 2.
    """
    extras = {}
    given = {key: None for key in companions}
    if isinstance(inputs, dict):
        if "token_ids" not in inputs:
            raise ValueError(
                f"Dict inputs to {layer_name} need a 'token_ids' key. "
                f"Received keys: {sorted(inputs)}."
            )
        extras = dict(inputs)
        token_ids = extras.pop("token_ids")
        for key in companions:
            given[key] = extras.pop(key, None)
    else:
        token_ids = inputs
    token_ids = to_tensor(token_ids)
    if not token_ids.dtype.is_integer:
        raise ValueError(
            f"{layer_name} expects integer token ids. Received dtype "
            f"{token_ids.dtype.name}; tokenize the text first."
        )
    if token_ids.dtype not in (tf.int32, tf.int64):
        token_ids = tf.cast(token_ids, "int32")
    if token_ids.shape.rank not in (1, 2):
        raise ValueError(
            f"{layer_name} expects token ids of shape [batch, length] or "
            f"[length]. Received shape {token_ids.shape}."
        )
    return token_ids, given, extras


def token_inputs(inputs, layer_name, sequence_length=None, padding_token_id=0,
                 companions=("padding_mask",)):
    """Normalizes a layer's token-id input to a dense batch.

    Args:
        inputs: token ids (dense, ragged or nested lists; `[batch, length]`
            or `[length]`) or a dict with `"token_ids"`, optional
            `companions` (dense, like the ids) and other keys.
        layer_name: str, for the error messages.
        sequence_length: int or `None`. Ragged ids need it; dense ids, their
            companions and the per-token extras (dict values of exactly the
            ids' static shape, e.g. `"segment_ids"`; padded with 0) are padded
            or truncated to it when given.
        padding_token_id: int, the id ragged rows are padded with.
        companions: the optional per-token keys of a dict input.

    Returns:
        `(token_ids, companions, extras, unbatched)`: int32/int64 ids
        `[batch, length]`; a dict `{key: tensor [batch, length] or None}`
        (`"padding_mask"` computed from the row lengths of ragged ids); the
        dict input's other keys; whether the input was unbatched.

    Raises:
        ValueError: no `"token_ids"` in a dict, ragged values in a dict,
            non-integer ids, a rank other than 1 or 2, ragged ids without
            `sequence_length`.
    """
    token_ids, given, extras = unpack_token_inputs(inputs, layer_name, companions)
    per_token = [key for key, value in extras.items() if _like(value, token_ids)]
    if isinstance(inputs, dict) and any(
        isinstance(x, tf.RaggedTensor) for x in (token_ids, *given.values())
    ):
        raise ValueError(
            f"Dict inputs to {layer_name} must be dense; pass ragged token ids "
            "directly (not in a dict) with `sequence_length` set."
        )
    unbatched = token_ids.shape.rank == 1
    if isinstance(token_ids, tf.RaggedTensor):
        if sequence_length is None:
            raise ValueError(
                f"Ragged token ids need a static length: pass `sequence_length` to "
                f"{layer_name} (rows are padded with `padding_token_id` or truncated "
                "to it)."
            )
        given["padding_mask"] = tf.sequence_mask(
            tf.minimum(token_ids.row_lengths(), sequence_length), sequence_length
        )
        token_ids = token_ids.to_tensor(
            default_value=tf.cast(padding_token_id, token_ids.dtype),
            shape=[None, sequence_length],
        )
        return token_ids, given, extras, unbatched
    if unbatched:
        token_ids = token_ids[None, :]
        given = {
            k: None if v is None else tf.convert_to_tensor(v)[None, :] for k, v in given.items()
        }
    if sequence_length is not None:
        token_ids = fit_length(token_ids, sequence_length, padding_token_id)
        given = {k: fit_length(v, sequence_length) for k, v in given.items()}
        for key in per_token:  # e.g. "segment_ids": cut like the ids
            value = tf.convert_to_tensor(extras[key])
            value = fit_length(value[None, :] if unbatched else value, sequence_length)
            extras[key] = value[0] if unbatched else value
    return token_ids, given, extras, unbatched


def _like(value, token_ids):
    """Whether a pass-through `value` is per-token: a dense tensor (or
    array) of exactly the token ids' static shape."""
    if isinstance(value, tf.RaggedTensor) or not isinstance(
        value, (tf.Tensor, tf.Variable, np.ndarray, list, tuple)
    ):
        return False
    try:
        shape = value.shape if isinstance(value, (tf.Tensor, tf.Variable)) else np.shape(value)
    except ValueError:  # a ragged nested list
        return False
    return tf.TensorShape(shape).as_list() == token_ids.shape.as_list()
