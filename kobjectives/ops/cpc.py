"""Contrastive Predictive Coding (CPC) as tensor functions.

CPC (van den Oord et al., 2018) trains a causal *context* network `c_t` to
predict, for every offset `k = 1 .. K`, the *encoding* `z_{t+k}` of the
step `k` ahead. The prediction for step `k` is a separate linear map of the
context, `y_{t,k} = W_k c_t`, and it is scored with InfoNCE: the positive
`z_{t+k}` must outscore negatives, the encodings `z` at the other positions
of the batch (other positions of the same sequence and every position of the
other sequences):

    loss_{t,k} = -log( exp(s(y_{t,k}, z_{t+k}) / tau)
                       / sum_{n in candidates(t,k)} exp(s(y_{t,k}, z_n) / tau) )

Here the candidates are the positive and every *valid* (non-padding)
position of the global batch; a pair `(t, k)` counts only where both `t` and
`t + k` are valid. With a lookup encoder (text: `z_t` is the token's
embedding) two positions holding the same token have the same encoding and
the positive could never outscore them; pass `target_ids` and such
duplicates of the positive are dropped from its negatives (they are the
positive, not negatives), so the loss can reach 0 and "picking the
positive" is well defined.

Distribution. Inside `strategy.run` with several replicas, the encodings,
padding masks and ids of every replica are gathered with
`kobjectives.ops.cross_replica_concat` (differentiably, see
`kobjectives/ops/contrastive.py`), so each local prediction is scored
against the candidates of the *global* batch, and `cpc_loss` returns this
replica's share of the global mean: the same loss and gradients as one
device holding the global batch.

All math is float32 whatever the input dtype (bfloat16 predictions and
encodings are cast first); the normalizer is a log-sum-exp.
"""

import collections

import tensorflow as tf

from kobjectives.ops.contrastive import _check_choice
from kobjectives.ops.contrastive import _check_positive
from kobjectives.ops.contrastive import cross_replica_concat
from kobjectives.ops.contrastive import l2_normalize
from kobjectives.ops.reduction import cross_replica_sum

_SIMILARITIES = ("dot", "cosine")

CPCTerms = collections.namedtuple(
    "CPCTerms", ["losses", "correct", "weights", "num_candidates"]
)
CPCTerms.__doc__ = """Per-pair CPC results, each float32 `[batch, length, max_offset]`.

Fields:
    losses: InfoNCE loss of predicting step `k + 1` ahead from position `t`
        (0 where the pair does not count).
    correct: 1.0 where the positive scores strictly above every negative.
    weights: 1.0 where the pair counts (`t` and `t + k + 1` inside the
        sequence and not padding), else 0.0.
    num_candidates: the number of candidates the positive competes with,
        itself included (`1 / num_candidates` is the chance accuracy).
"""


def _float32(name, value, rank, shape_text):
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating:
        raise ValueError(
            f"`{name}` must be a float tensor {shape_text}. Received dtype "
            f"{value.dtype.name}."
        )
    if value.shape.rank is not None and value.shape.rank != rank:
        raise ValueError(
            f"`{name}` must have shape {shape_text}. Received shape {value.shape}."
        )
    return tf.cast(value, tf.float32)


def _check_static_dims(predictions, targets, padding_mask, target_ids):
    p, z, m = predictions.shape, targets.shape, padding_mask.shape

    def clash(a_name, a, b_name, b, what):
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"`{a_name}` and `{b_name}` must have the same {what}. Received "
                f"{a_name}.shape={dict(predictions=p, targets=z, padding_mask=m)[a_name]}, "
                f"{b_name}.shape={dict(predictions=p, targets=z, padding_mask=m)[b_name]}."
            )

    clash("predictions", p[0], "targets", z[0], "batch size")
    clash("predictions", p[1], "targets", z[1], "sequence length")
    clash("predictions", p[-1], "targets", z[-1], "encoding size")
    clash("padding_mask", m[0], "targets", z[0], "batch size")
    clash("padding_mask", m[1], "targets", z[1], "sequence length")
    if target_ids is not None and target_ids.shape.rank is not None:
        if target_ids.shape.rank != 2 or (
            m.rank is not None and not target_ids.shape.is_compatible_with(m)
        ):
            raise ValueError(
                "`target_ids` must have the shape of `padding_mask` "
                f"[batch, length]. Received target_ids.shape={target_ids.shape}, "
                f"padding_mask.shape={m}."
            )
    max_offset = p[2]
    if max_offset is None:
        raise ValueError(
            "`predictions` must have a static offset axis "
            "[batch, length, max_offset, dim]."
        )
    if max_offset < 1:
        raise ValueError(
            "`predictions` must predict at least one step ahead "
            f"(max_offset >= 1). Received predictions.shape={p}."
        )
    length = z[1] if z[1] is not None else p[1]
    if length is not None and length <= max_offset:
        raise ValueError(
            f"`max_offset` ({max_offset}) must be smaller than the sequence "
            f"length ({length}): a sequence of {length} tokens has no position "
            f"t with t + {max_offset} inside it, so no positive (and no "
            "negative) to score. Use longer sequences or a smaller max_offset."
        )


def cpc_info_nce(
    predictions,
    targets,
    padding_mask,
    target_ids=None,
    temperature=1.0,
    similarity="dot",
):
    """Per-position, per-offset CPC InfoNCE terms with in-batch negatives.

    `predictions[b, t, k]` is the model's prediction `W_{k+1} c_t` of the
    encoding `targets[b, t + k + 1]`. It is scored against every valid
    position `n` of the (global) batch, `logit = s(prediction, z_n) / tau`;
    the label is the position `t + k + 1` of the same sequence. Invalid
    candidates (padding) are left out of the normalizer; a pair counts
    (`weights = 1`) only where position `t` and position `t + k + 1` exist
    and are not padding.

    Args:
        predictions: float `[batch, length, max_offset, dim]`, the per-offset
            predictions `W_k c_t` (bfloat16/float16 are cast to float32).
            `max_offset` (the static size of axis 2) is `K`.
        targets: float `[batch, length, dim]`, the encodings `z_t`.
        padding_mask: bool/int `[batch, length]`, true at real tokens.
        target_ids: optional int `[batch, length]`. Where given, candidates
            whose id equals the positive's id are dropped from its negatives
            (with a per-token encoder they are copies of the positive).
        temperature: positive float; logits are `similarity / temperature`.
        similarity: `"dot"` (the paper's log-bilinear score `z^T W_k c`) or
            `"cosine"` (dot product of L2-normalized vectors).

    Returns:
        `CPCTerms(losses, correct, weights, num_candidates)`, float32 tensors
        `[batch, length, max_offset]` (the local batch under a strategy).

    Raises:
        ValueError: for a non-positive `temperature`, an unknown `similarity`,
            wrong ranks or mismatched static shapes, `max_offset < 1`, or a
            sequence length `<= max_offset` (no pair would have a positive).
            A batch whose every pair is padding gives zero weights (the
            reduced loss is then 0, never NaN).

    Reference:
        van den Oord, Li and Vinyals, 2018, "Representation Learning with
        Contrastive Predictive Coding", https://arxiv.org/abs/1807.03748.

    Example:

    >>> import numpy as np
    >>> z = np.eye(3, dtype="float32")[None]          # 3 orthonormal tokens
    >>> predictions = z[:, [1, 2, 0]][:, :, None]     # predict the next one
    >>> terms = cpc_info_nce(predictions, z, np.ones((1, 3), bool))
    >>> terms.weights[0, :, 0].numpy().tolist()      # the last has no next
    [1.0, 1.0, 0.0]
    >>> np.allclose(terms.losses[0, :2, 0], np.log(np.e + 2) - 1)
    True
    """
    _check_choice("similarity", similarity, _SIMILARITIES)
    _check_positive("temperature", temperature, "CPC commonly uses 0.05-1.0")
    predictions = _float32(
        "predictions", predictions, 4, "[batch, length, max_offset, dim]"
    )
    targets = _float32("targets", targets, 3, "[batch, length, dim]")
    padding_mask = tf.convert_to_tensor(padding_mask)
    if padding_mask.shape.rank is not None and padding_mask.shape.rank != 2:
        raise ValueError(
            "`padding_mask` must have shape [batch, length]. Received shape "
            f"{padding_mask.shape}."
        )
    if target_ids is not None:
        target_ids = tf.convert_to_tensor(target_ids)
        if not target_ids.dtype.is_integer:
            raise ValueError(
                f"`target_ids` must be integer token ids. Received dtype "
                f"{target_ids.dtype.name}."
            )
    _check_static_dims(predictions, targets, padding_mask, target_ids)
    max_offset = predictions.shape[2]
    scale = 1.0 / tf.cast(temperature, tf.float32)

    if similarity == "cosine":
        predictions = l2_normalize(predictions)
        targets = l2_normalize(targets)
    valid = tf.cast(padding_mask, tf.bool)
    shape = tf.shape(targets)
    batch, length, dim = shape[0], shape[1], shape[2]

    # Candidates: every position of the global batch, flattened.
    global_targets, offset = cross_replica_concat(targets)
    global_valid, _ = cross_replica_concat(tf.cast(valid, tf.int32))
    candidates = tf.reshape(global_targets, [-1, dim])
    candidate_valid = tf.reshape(global_valid, [-1]) > 0

    # logits[b, t, k, n] = s(prediction_{t,k}, z_n) / tau.
    logits = tf.einsum("btkd,nd->btkn", predictions, candidates) * scale

    # The positive of (b, t, k) is position t + k + 1 of row offset + b.
    positions = tf.range(length)[:, None] + tf.range(1, max_offset + 1)[None, :]
    inside = positions < length  # [length, K]
    target_positions = tf.minimum(positions, length - 1)
    rows = offset + tf.range(batch)
    labels = rows[:, None, None] * length + target_positions[None]  # [B, T, K]
    target_valid = tf.gather(valid, target_positions, axis=1)  # [B, T, K]
    weights = tf.logical_and(
        tf.logical_and(valid[:, :, None], target_valid), inside[None]
    )

    is_label = tf.equal(
        tf.range(tf.shape(candidates)[0])[None, None, None, :], labels[..., None]
    )
    negative = tf.logical_and(candidate_valid[None, None, None, :], ~is_label)
    if target_ids is not None:
        target_ids = tf.cast(target_ids, tf.int32)
        global_ids, _ = cross_replica_concat(target_ids)
        candidate_ids = tf.reshape(global_ids, [-1])
        positive_ids = tf.gather(target_ids, target_positions, axis=1)  # [B, T, K]
        same = tf.equal(candidate_ids[None, None, None, :], positive_ids[..., None])
        negative = tf.logical_and(negative, ~same)

    minus_inf = tf.fill(tf.shape(logits), -float("inf"))
    positive_logit = tf.gather(logits, labels[..., None], batch_dims=3)[..., 0]
    # log(exp(positive) + sum exp(negatives)); the positive keeps it finite.
    log_normalizer = tf.reduce_logsumexp(
        tf.where(tf.logical_or(negative, is_label), logits, minus_inf), axis=-1
    )
    max_negative = tf.reduce_max(tf.where(negative, logits, minus_inf), axis=-1)
    weights = tf.cast(weights, tf.float32)
    losses = (log_normalizer - positive_logit) * weights
    correct = tf.cast(positive_logit > max_negative, tf.float32)
    num_candidates = 1.0 + tf.reduce_sum(tf.cast(negative, tf.float32), axis=-1)
    return CPCTerms(losses, correct * weights, weights, num_candidates * weights)


def mean_over_offsets(values, weights):
    """This replica's share of the CPC mean: per-offset means, averaged.

    For each offset `k` the weighted mean of `values[..., k]` over the
    global batch (the weights summed over all replicas), then the mean over
    the offsets that have any weight, so every offset counts equally however
    many pairs it has (far offsets have fewer). Summed over the replicas (as
    Keras does for gradients) it is the global value; with one replica it is
    the value itself. Zero total weight gives 0, never NaN.

    Args:
        values: float `[batch, length, max_offset]` (e.g. `CPCTerms.losses`).
        weights: float `[batch, length, max_offset]`.

    Returns:
        A float32 scalar.
    """
    values = tf.cast(values, tf.float32)
    weights = tf.cast(weights, tf.float32)
    local_sum = tf.reduce_sum(values * weights, axis=[0, 1])
    count = cross_replica_sum(tf.reduce_sum(weights, axis=[0, 1]))
    present = tf.reduce_sum(tf.cast(count > 0.0, tf.float32))
    return tf.reduce_sum(tf.math.divide_no_nan(local_sum, count)) / tf.maximum(present, 1.0)


def cpc_loss(
    predictions,
    targets,
    padding_mask,
    target_ids=None,
    temperature=1.0,
    similarity="dot",
):
    """The CPC loss: per-offset InfoNCE means, averaged over the offsets.

    `mean_over_offsets(cpc_info_nce(...).losses, weights)`: see
    `cpc_info_nce` for the arguments and the scoring. Under `tf.distribute`
    it is this replica's share of the global loss (negatives span the
    replicas), so Keras' summed gradients equal one device's on the global
    batch.

    Args:
        predictions: float `[batch, length, max_offset, dim]`.
        targets: float `[batch, length, dim]`.
        padding_mask: bool/int `[batch, length]`.
        target_ids: optional int `[batch, length]`, to drop same-token
            negatives.
        temperature: positive float.
        similarity: `"dot"` or `"cosine"`.

    Returns:
        A float32 scalar.

    Reference:
        van den Oord, Li and Vinyals, 2018, "Representation Learning with
        Contrastive Predictive Coding", https://arxiv.org/abs/1807.03748.

    Example:

    >>> import numpy as np
    >>> z = np.eye(3, dtype="float32")[None]
    >>> loss = cpc_loss(z[:, [1, 2, 0]][:, :, None], z, np.ones((1, 3), bool))
    >>> round(float(loss), 4)  # log(e + 2) - 1 at both pairs
    0.5514
    """
    terms = cpc_info_nce(
        predictions, targets, padding_mask, target_ids, temperature, similarity
    )
    return mean_over_offsets(terms.losses, terms.weights)


__all__ = ["CPCTerms", "cpc_info_nce", "cpc_loss", "mean_over_offsets"]
