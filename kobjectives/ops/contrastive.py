"""Contrastive objectives as tensor functions, with cross-replica negatives.

InfoNCE with in-batch and hard negatives (sentence-transformers'
`MultipleNegativesRankingLoss`), CoSENT, the pairwise margin contrastive loss
and the triplet margin loss. All math is done in float32 whatever the input
dtype (bfloat16/float16 embeddings under mixed precision are cast first).

Distribution. Inside `strategy.run` with more than one replica in sync,
`info_nce` scores each *local* anchor against the candidates of the *global*
batch: the positives (and hard negatives) of every replica are gathered with
`ReplicaContext.all_gather`. TensorFlow registers a gradient for `all_gather`
(`tf.distribute.ReplicaContext.all_gather` wraps it in a `custom_gradient`
whose backward pass all-reduces the incoming gradient with SUM and keeps this
replica's rows), so no stop-gradient trick is needed, and one would be wrong
here. Write `L = sum_s L_s` for the global loss, `L_s` the share computed on
replica `s` from its local anchors and the gathered candidates. The gradient
that replica `r` receives for its local embeddings `e_r` is

    d L_r / d e_r (direct) + [sum_s d L_s / d gathered][rows of r]
        = sum_s d L_s / d e_r = d L / d e_r,

the full derivative of the global loss, and Keras' sum of the per-replica
weight gradients `sum_r (dL/de_r)(de_r/dW)` is `dL/dW`: exactly one device's
gradient on the global batch. (Putting the local tensor in its slot of a
`stop_gradient` copy would drop the terms `d L_s / d e_r` for `s != r` -- the
other replicas' anchors pulling on this replica's positives -- unless every
replica also computed the loss of *all* anchors.)
`tests/ops/test_contrastive.py` checks loss and gradients against one device.
"""

import numbers

import tensorflow as tf

_SIMILARITIES = ("cosine", "dot")
_DISTANCES = ("cosine", "euclidean", "squared_euclidean")


# --------------------------------------------------------------------------
# Cross-replica helpers.
# --------------------------------------------------------------------------


def _multi_replica_context():
    """The replica context when more than one replica is in sync, else None."""
    if tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def cross_replica_concat(value):
    """Concatenates `value` over the replicas along axis 0, differentiably.

    Outside `strategy.run`, or with one replica, `value` is returned
    unchanged with offset 0. Replicas may hold different numbers of rows (the
    last, partial batch of a dataset); the rows of replica `r` start at the
    summed row counts of replicas `0 .. r-1`.

    Gradients flow back to every replica's rows: TensorFlow's gradient of
    `ReplicaContext.all_gather` sums the incoming gradients of all replicas
    and hands each replica the rows it contributed, so a loss computed on the
    concatenation differentiates, across replicas, like the same loss on one
    device.

    Args:
        value: A tensor of rank >= 1; all dimensions but the first must agree
            across replicas.

    Returns:
        `(concatenated, offset)`: the concatenation over replicas in replica
        order, and an int32 scalar, the index of this replica's first row in
        it.
    """
    value = tf.convert_to_tensor(value)
    context = _multi_replica_context()
    if context is None:
        return value, tf.constant(0, tf.int32)
    gathered = context.all_gather(value, axis=0)
    rows = context.all_gather(tf.shape(value, out_type=tf.int32)[:1], axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    earlier = tf.range(tf.shape(rows)[0]) < replica_id
    offset = tf.reduce_sum(tf.where(earlier, rows, tf.zeros_like(rows)))
    return gathered, offset


def _num_replicas():
    context = _multi_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


# --------------------------------------------------------------------------
# Validation and similarity helpers.
# --------------------------------------------------------------------------


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )


def _static_number(value):
    """The Python float value of `value` if statically known, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tf.Variable):
        return None
    try:
        static = tf.get_static_value(value)
    except (TypeError, ValueError):
        return None
    if static is None or getattr(static, "ndim", 0) != 0:
        return None
    return float(static)


def _check_positive(name, value, fix):
    number = _static_number(value)
    if number is not None and not number > 0.0:
        raise ValueError(f"`{name}` must be > 0 ({fix}). Received: {name}={value!r}")
    if number is not None and number == float("inf"):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value!r}")


def _resolve_scale(temperature, scale):
    """The logit multiplier `1 / temperature` (or `scale`) as a float32 tensor."""
    if scale is not None:
        _check_positive("scale", scale, "the logit multiplier 1/temperature")
        number = _static_number(temperature)
        scale_number = _static_number(scale)
        if (
            number is not None
            and scale_number is not None
            and number != 0.05
            and abs(number * scale_number - 1.0) > 1e-6
        ):
            raise ValueError(
                "Pass either `temperature` or `scale` (= 1/temperature), not "
                f"both. Received: temperature={temperature!r}, scale={scale!r}"
            )
        return tf.cast(scale, tf.float32)
    _check_positive(
        "temperature",
        temperature,
        "typical values are 0.01-0.1; SimCSE uses 0.05",
    )
    return 1.0 / tf.cast(temperature, tf.float32)


def _as_float32(name, value, rank):
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating:
        raise ValueError(
            f"`{name}` must be a float tensor of embeddings. "
            f"Received dtype {value.dtype.name}."
        )
    if value.shape.rank is not None and value.shape.rank not in rank:
        expected = " or ".join(
            {2: "[batch, dim]", 3: "[batch, k, dim]"}[r] for r in rank
        )
        raise ValueError(
            f"`{name}` must have shape {expected} (pool token embeddings into "
            f"one vector per text first). Received shape {value.shape}."
        )
    return tf.cast(value, tf.float32)


def _check_dim(name, value, reference_name, reference, axis_name, axis, ref_axis=None):
    ref_axis = axis if ref_axis is None else ref_axis
    got = value.shape[axis] if value.shape.rank is not None else None
    want = reference.shape[ref_axis] if reference.shape.rank is not None else None
    if got is not None and want is not None and got != want:
        raise ValueError(
            f"`{name}` and `{reference_name}` must have the same {axis_name}. "
            f"Received {name}.shape={value.shape}, "
            f"{reference_name}.shape={reference.shape}."
        )


def _assert_same_batch(values):
    """Run-time check of the batch sizes when they are not static."""
    first = values[0]
    if all(v.shape[0] is not None for v in values):
        return []
    return [
        tf.debugging.assert_equal(
            tf.shape(first)[0],
            tf.shape(v)[0],
            message="`anchors`, `positives` and `negatives` must have the same batch size",
        )
        for v in values[1:]
    ]


def l2_normalize(x, axis=-1):
    """L2 normalization that cannot overflow or divide by zero (float32).

    Each vector is first divided by its largest absolute entry (treated as a
    constant for the gradient, which is exact because the result is invariant
    to that scale), so norms up to the float32 maximum normalize correctly. A
    zero vector stays zero.
    """
    x = tf.cast(x, tf.float32)
    peak = tf.stop_gradient(tf.reduce_max(tf.abs(x), axis=axis, keepdims=True))
    x = tf.math.divide_no_nan(x, peak)
    return tf.math.l2_normalize(x, axis=axis, epsilon=1e-24)


def _prepare(x, similarity):
    return l2_normalize(x) if similarity == "cosine" else x


def _safe_sqrt(x):
    """sqrt with value 0 and gradient 0 at 0 (no inf/NaN gradient); NaN
    stays NaN (a NaN distance must not pass for 0)."""
    zero = x <= 0.0  # False for NaN
    return tf.where(zero, tf.zeros_like(x), tf.sqrt(tf.where(zero, tf.ones_like(x), x)))


def pair_distance(x, y, distance="cosine"):
    """Row-wise distance between `x` and `y` (`[..., dim]` -> `[...]`).

    Args:
        x: float tensor `[..., dim]`.
        y: float tensor broadcastable to `x`.
        distance: `"cosine"` (`1 - cos(x, y)`, in [0, 2]), `"euclidean"`
            (`||x - y||`, with a zero gradient rather than NaN at 0) or
            `"squared_euclidean"` (`||x - y||^2`).

    Returns:
        float32 tensor `[...]`.
    """
    _check_choice("distance", distance, _DISTANCES)
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.float32)
    if distance == "cosine":
        return 1.0 - tf.reduce_sum(l2_normalize(x) * l2_normalize(y), axis=-1)
    squared = tf.reduce_sum(tf.math.squared_difference(x, y), axis=-1)
    if distance == "squared_euclidean":
        return squared
    return _safe_sqrt(squared)


# --------------------------------------------------------------------------
# InfoNCE.
# --------------------------------------------------------------------------


def info_nce(
    anchors,
    positives,
    negatives=None,
    temperature=0.05,
    similarity="cosine",
    symmetric=False,
    *,
    scale=None,
):
    """Per-anchor InfoNCE loss with in-batch, hard and cross-replica negatives.

    The loss of sentence-transformers' `MultipleNegativesRankingLoss`. With
    `s(u, v)` the similarity and `tau` the temperature, the candidates are
    all positives of the batch followed by all hard negatives (flattened to
    one row each), and anchor `i` is classified to its own positive:

        loss_i = -log( exp(s(a_i, p_i) / tau)
                       / sum_{c in candidates} exp(s(a_i, c) / tau) )

    With `symmetric=True` the positive -> anchor direction is added, as in
    sentence-transformers' `MultipleNegativesSymmetricRankingLoss` and
    CLIP: positive `i` is classified among *all anchors* of the batch (hard
    negatives are not used in that direction), and the two are averaged:

        loss_i = ( forward_i + -log( exp(s(p_i, a_i) / tau)
                   / sum_j exp(s(p_i, a_j) / tau) ) ) / 2

    so the mean over the batch is the mean of the two directions' means.

    Under `tf.distribute` (inside `strategy.run`, more than one replica),
    the candidates (and, for `symmetric`, the anchors) are gathered from all
    replicas: each local anchor is scored against the global batch, and the
    label of local anchor `i` is `offset + i` with `offset` the number of
    rows on the earlier replicas (`replica_id * local_batch` for equal
    splits). Gradients flow back to every replica's embeddings (see the module
    docstring), so `global_weighted_mean(info_nce(...), 1.0)` -- each
    replica's share of the global mean -- gives the same loss and gradients as
    one device holding the global batch.

    Computed in float32 (bfloat16/float16 inputs are cast first) with the
    log-softmax of `tf.nn.sparse_softmax_cross_entropy_with_logits`, so small
    temperatures (0.01) and large-norm `"dot"` inputs do not overflow; cosine
    normalization is overflow-safe for any finite input. On GPUs with
    TensorFloat-32 enabled the similarity matmul is rounded to TF32; disable
    it (`tf.config.experimental.enable_tensor_float_32_execution(False)`)
    where that matters at very small temperatures.

    Args:
        anchors: float tensor `[batch, dim]`.
        positives: float tensor `[batch, dim]`; row `i` is anchor `i`'s
            positive, and a negative for every other anchor.
        negatives: optional hard negatives, float `[batch, dim]` (one per
            anchor) or `[batch, k, dim]` (`k` per anchor). Every hard negative
            is a candidate for every anchor, as in sentence-transformers.
        temperature: positive float (or scalar tensor / variable, e.g. a
            learnable temperature); logits are `similarity / temperature`.
            0.05 (SimCSE) equals sentence-transformers' default scale 20.
        similarity: `"cosine"` (dot product of L2-normalized vectors) or
            `"dot"` (raw dot product).
        symmetric: whether to add and average the positive -> anchor
            direction (see above).
        scale: keyword-only alternative to `temperature`, the logit
            multiplier `1 / temperature` (sentence-transformers' `scale`).
            When given it takes precedence; a non-default `temperature`
            that disagrees with it raises `ValueError`.

    Returns:
        float32 tensor `[batch]` (the local batch under a strategy): the loss
        of each anchor (an empty batch gives an empty tensor).

    Raises:
        ValueError: for a non-positive `temperature`/`scale`, an unknown
            `similarity`, wrong ranks, mismatched batch sizes or embedding
            sizes, or a static batch of one with no hard negatives and a
            single replica (the only candidate would be the positive itself,
            so the loss is identically 0 and teaches nothing). When the batch
            size is dynamic that case cannot be detected while tracing: a batch
            of one then gives loss 0 with zero gradient, never NaN. Dynamic
            batch-size mismatches fail at run time with `InvalidArgumentError`
            (except under `jit_compile=True`, where XLA drops run-time
            assertions; static shapes are always checked while tracing).

    References:
        van den Oord et al., 2018, "Representation Learning with Contrastive
        Predictive Coding", https://arxiv.org/abs/1807.03748.
        Henderson et al., 2017, "Efficient Natural Language Response
        Suggestion for Smart Reply", https://arxiv.org/abs/1705.00652.
        Gao et al., 2021, "SimCSE: Simple Contrastive Learning of Sentence
        Embeddings", https://arxiv.org/abs/2104.08821.

    Example:

    >>> import numpy as np
    >>> a = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> losses = info_nce(a, a, temperature=1.0)  # cos = 1 on, 0 off diagonal
    >>> np.allclose(losses, np.log(1 + np.exp(-1.0)))
    True
    """
    _check_choice("similarity", similarity, _SIMILARITIES)
    if not isinstance(symmetric, bool):
        raise ValueError(f"`symmetric` must be a bool. Received: symmetric={symmetric!r}")
    logit_scale = _resolve_scale(temperature, scale)

    anchors = _as_float32("anchors", anchors, (2,))
    positives = _as_float32("positives", positives, (2,))
    _check_dim("positives", positives, "anchors", anchors, "batch size", 0)
    _check_dim("positives", positives, "anchors", anchors, "embedding size", -1)
    batch_tensors = [anchors, positives]
    if negatives is not None:
        negatives = _as_float32("negatives", negatives, (2, 3))
        _check_dim("negatives", negatives, "anchors", anchors, "batch size", 0)
        _check_dim("negatives", negatives, "anchors", anchors, "embedding size", -1)
        batch_tensors.append(negatives)
        if negatives.shape.rank == 3 and negatives.shape[1] == 0:
            negatives = None
    if negatives is None and anchors.shape[0] == 1 and _num_replicas() == 1:
        raise ValueError(
            "InfoNCE needs negatives: with a batch of one and no hard "
            "`negatives`, the only candidate is the anchor's own positive and "
            "the loss is identically 0. Use a batch size > 1 or pass "
            "`negatives`."
        )

    if anchors.shape[0] == 0 and _num_replicas() == 1:
        return tf.zeros([0], tf.float32)  # an empty batch: no anchor, no loss
    with tf.control_dependencies(_assert_same_batch(batch_tensors)):
        anchors = _prepare(anchors, similarity)
    positives = _prepare(positives, similarity)
    dim = tf.shape(anchors)[-1]

    global_positives, offset = cross_replica_concat(positives)
    candidates = global_positives
    if negatives is not None:
        negatives = _prepare(tf.reshape(negatives, [-1, dim]), similarity)
        global_negatives, _ = cross_replica_concat(negatives)
        candidates = tf.concat([global_positives, global_negatives], axis=0)

    labels = offset + tf.range(tf.shape(anchors)[0], dtype=tf.int32)
    logits = tf.matmul(anchors, candidates, transpose_b=True) * logit_scale
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if symmetric:
        global_anchors, _ = cross_replica_concat(anchors)
        backward_logits = tf.matmul(positives, global_anchors, transpose_b=True) * logit_scale
        backward = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=backward_logits
        )
        loss = 0.5 * (loss + backward)
    return loss


# --------------------------------------------------------------------------
# CoSENT, pairwise margin contrastive and triplet losses.
# --------------------------------------------------------------------------


def cosent_loss(scores, embeddings_a, embeddings_b, scale=20.0):
    """CoSENT: a ranking loss on the cosine similarities of sentence pairs.

    With `cos_i = cos(embeddings_a[i], embeddings_b[i])` and gold scores `y`:

        loss = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (cos_j - cos_i)))

    over all ordered pairs of pairs in the batch: every pair scored higher
    than another should have the larger cosine. Computed as a log-sum-exp
    (stable for any `scale`); pairs with equal scores contribute nothing, and
    a batch where all scores are equal has loss `log(1) = 0`. A NaN score or
    embedding anywhere in the (global) batch makes the loss NaN.

    This is a batch-level loss, not a mean of per-example terms. Under
    `tf.distribute` the cosines and scores of all replicas are gathered (with
    gradients) and every replica returns `loss / num_replicas` of the
    *global* batch: summing over the replicas, as Keras does for gradients
    and the loss metric, gives exactly one device's loss on the global batch.

    Args:
        scores: float `[batch]`, gold similarity of each pair (any scale:
            only the order matters).
        embeddings_a: float `[batch, dim]`, first text of each pair.
        embeddings_b: float `[batch, dim]`, second text of each pair.
        scale: positive float, the inverse temperature (20 in the paper).

    Returns:
        A float32 scalar (this replica's share under a strategy).

    Reference:
        Su, 2022, "CoSENT: A more efficient sentence vector scheme than
        Sentence-BERT", https://kexue.fm/archives/8847.
    """
    _check_positive("scale", scale, "the inverse temperature; the paper uses 20")
    embeddings_a = _as_float32("embeddings_a", embeddings_a, (2,))
    embeddings_b = _as_float32("embeddings_b", embeddings_b, (2,))
    _check_dim("embeddings_b", embeddings_b, "embeddings_a", embeddings_a, "batch size", 0)
    _check_dim("embeddings_b", embeddings_b, "embeddings_a", embeddings_a, "embedding size", -1)
    scores = tf.cast(scores, tf.float32)
    if scores.shape.rank is not None and scores.shape.rank != 1:
        raise ValueError(
            f"`scores` (y_true) must have shape [batch], one gold score per pair. "
            f"Received shape {scores.shape}."
        )
    _check_dim("scores", scores, "embeddings_a", embeddings_a, "batch size", 0)

    cosines = tf.reduce_sum(l2_normalize(embeddings_a) * l2_normalize(embeddings_b), axis=-1)
    cosines, _ = cross_replica_concat(cosines)
    scores, _ = cross_replica_concat(scores)
    scale = tf.cast(scale, tf.float32)
    # differences[i, j] = scale * (cos_j - cos_i), kept where y_i > y_j.
    differences = scale * (cosines[None, :] - cosines[:, None])
    ordered = scores[:, None] > scores[None, :]
    terms = tf.where(ordered, differences, tf.fill(tf.shape(differences), -float("inf")))
    terms = tf.concat([tf.zeros([1]), tf.reshape(terms, [-1])], axis=0)
    loss = tf.reduce_logsumexp(terms) / float(_num_replicas())
    # A NaN score compares false with every other, so its pairs would drop
    # out silently: it makes the loss NaN instead.
    return tf.where(tf.reduce_any(tf.math.is_nan(scores)), float("nan"), loss)


def contrastive_margin_loss(labels, embeddings_a, embeddings_b, margin=0.5, distance="cosine"):
    """Per-pair margin contrastive loss (Hadsell et al., 2006).

        loss_i = 1/2 * (y_i * d_i^2 + (1 - y_i) * max(0, margin - d_i)^2)

    with `d_i` the distance between the two embeddings of pair `i`: similar
    pairs (`y = 1`) are pulled together, dissimilar ones (`y = 0`) pushed at
    least `margin` apart. The factor 1/2 is the paper's (and
    sentence-transformers' `ContrastiveLoss`'s).

    Args:
        labels: float/int/bool `[batch]`, 1 for a similar pair, 0 for a
            dissimilar one (soft labels in [0, 1] interpolate).
        embeddings_a: float `[batch, dim]`.
        embeddings_b: float `[batch, dim]`.
        margin: non-negative float, in units of `distance`.
        distance: `"cosine"` (`1 - cos`, the default, as in
            sentence-transformers), `"euclidean"` or `"squared_euclidean"`.

    Returns:
        float32 `[batch]`.

    Reference:
        Hadsell, Chopra and LeCun, 2006, "Dimensionality Reduction by Learning
        an Invariant Mapping", CVPR.
    """
    _check_margin(margin)
    embeddings_a = _as_float32("embeddings_a", embeddings_a, (2,))
    embeddings_b = _as_float32("embeddings_b", embeddings_b, (2,))
    _check_dim("embeddings_b", embeddings_b, "embeddings_a", embeddings_a, "batch size", 0)
    _check_dim("embeddings_b", embeddings_b, "embeddings_a", embeddings_a, "embedding size", -1)
    labels = tf.cast(labels, tf.float32)
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise ValueError(
            "`labels` (y_true) must have shape [batch]: 1 for a similar pair, "
            f"0 for a dissimilar one. Received shape {labels.shape}."
        )
    _check_dim("labels", labels, "embeddings_a", embeddings_a, "batch size", 0)
    d = pair_distance(embeddings_a, embeddings_b, distance)
    margin = tf.cast(margin, tf.float32)
    return 0.5 * (labels * tf.square(d) + (1.0 - labels) * tf.square(tf.nn.relu(margin - d)))


def triplet_margin_loss(anchors, positives, negatives, margin=1.0, distance="euclidean"):
    """Per-triplet margin loss (Schroff et al., 2015, FaceNet).

        loss_i = max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    Args:
        anchors: float `[batch, dim]`.
        positives: float `[batch, dim]`.
        negatives: float `[batch, dim]`.
        margin: non-negative float, in units of `distance`.
        distance: `"euclidean"` (the default, as `torch.nn.TripletMarginLoss`
            and sentence-transformers' `TripletLoss`), `"squared_euclidean"`
            (FaceNet, usually on L2-normalized embeddings) or `"cosine"`
            (`1 - cos`).

    Returns:
        float32 `[batch]`; NaN where an embedding holds a NaN (never 0).

    Reference:
        Schroff, Kalenichenko and Philbin, 2015, "FaceNet: A Unified Embedding
        for Face Recognition and Clustering", https://arxiv.org/abs/1503.03832.
    """
    _check_margin(margin)
    anchors = _as_float32("anchors", anchors, (2,))
    positives = _as_float32("positives", positives, (2,))
    negatives = _as_float32("negatives", negatives, (2,))
    for name, value in (("positives", positives), ("negatives", negatives)):
        _check_dim(name, value, "anchors", anchors, "batch size", 0)
        _check_dim(name, value, "anchors", anchors, "embedding size", -1)
    margin = tf.cast(margin, tf.float32)
    return tf.nn.relu(
        pair_distance(anchors, positives, distance)
        - pair_distance(anchors, negatives, distance)
        + margin
    )


def _check_margin(margin):
    number = _static_number(margin)
    if number is not None and not number >= 0.0:
        raise ValueError(f"`margin` must be >= 0. Received: margin={margin!r}")


__all__ = [
    "cosent_loss",
    "contrastive_margin_loss",
    "cross_replica_concat",
    "info_nce",
    "l2_normalize",
    "pair_distance",
    "triplet_margin_loss",
]
