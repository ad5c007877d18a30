"""Contrastive losses as Keras losses: InfoNCE, CoSENT, margin and triplet.

Like `MaskedLMLoss`, these losses bypass the reduction of
`keras.losses.Loss.__call__` (which divides by the number of replicas): under
`tf.distribute` they return this replica's *share* of the global-batch loss,
so Keras' summed gradients and loss metric equal one device's on the global
batch. All return float32, whatever the dtype of the embeddings. A NaN
embedding or score makes the loss NaN (never 0, never dropped); an example of
`sample_weight` 0 never counts, whatever its value; negative or mis-shaped
weights raise a `ValueError` where they are known.

Input convention: the model's output `y_pred` stacks the embeddings of the
texts of one example along axis 1, `[batch, n, dim]`, as sentence-transformers'
columns do (anchor, positive, negative_1, ..., negative_k).
"""

import keras
import tensorflow as tf

from kobjectives.ops import contrastive as contrastive_ops
from kobjectives.ops.reduction import apply_weights
from kobjectives.ops.reduction import global_weighted_mean

_REDUCTIONS = ("mean", "none")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"`reduction` must be 'mean' or 'none'. Received: reduction={reduction!r}"
        )


def _stacked(y_pred, loss_name, min_texts, max_texts=None):
    """Checks a stacked `[batch, n, dim]` tensor and returns it."""
    y_pred = tf.convert_to_tensor(y_pred)
    expected = (
        f"[batch, {min_texts}, dim]"
        if max_texts == min_texts
        else f"[batch, {min_texts} + k, dim]"
    )
    if y_pred.shape.rank is not None and y_pred.shape.rank != 3:
        raise ValueError(
            f"{loss_name} expects `y_pred` of shape {expected} (the embeddings "
            f"of each example's texts stacked on axis 1, e.g. "
            f"`tf.stack([a, b], axis=1)`). Received shape {y_pred.shape}."
        )
    n = y_pred.shape[1] if y_pred.shape.rank is not None else None
    if n is not None and (n < min_texts or (max_texts is not None and n > max_texts)):
        raise ValueError(
            f"{loss_name} expects `y_pred` of shape {expected}. Received shape "
            f"{y_pred.shape}."
        )
    return y_pred


def _reduce(losses, sample_weight, reduction):
    if reduction == "none":
        if sample_weight is not None:
            losses, _ = apply_weights(losses, sample_weight)
        return losses
    if sample_weight is None:
        sample_weight = tf.ones_like(losses)
    return global_weighted_mean(losses, sample_weight)


@keras.saving.register_keras_serializable(package="kobjectives")
class InfoNCELoss(keras.losses.Loss):
    """InfoNCE with in-batch, hard and cross-replica negatives.

    Each anchor is classified to its own positive among all positives and
    all hard negatives of the *global* batch, at temperature `temperature`
    (sentence-transformers' `MultipleNegativesRankingLoss`; see
    `kobjectives.ops.info_nce` for the formula, the symmetric variant and the
    cross-replica gathering). The result is the mean per-anchor loss over the
    global batch -- under `tf.distribute`, this replica's share of it, so a
    mirrored run has the same loss and gradients as one device.

    Args:
        temperature: positive float; logits are `similarity / temperature`
            (0.05 as SimCSE, i.e. sentence-transformers' scale 20).
        similarity: `"cosine"` or `"dot"`.
        symmetric: also classify each positive among all anchors and average
            the two directions.
        reduction: `"mean"` (the default, weighted by `sample_weight` and
            taken over the global batch) or `"none"` for the per-anchor
            losses `[batch]` (multiplied by `sample_weight` if given).
        name: Name of the loss.

    Call arguments:
        y_true: ignored (pass `None` or anything); the labels are implied by
            the order of the batch.
        y_pred: the primary convention is one float tensor
            `[batch, 2 + k, dim]`: `y_pred[:, 0]` the anchors, `y_pred[:, 1]`
            the positives and `y_pred[:, 2:]` `k >= 0` hard negatives per
            anchor. A dict `{"anchors": [batch, dim], "positives":
            [batch, dim], "negatives": [batch, dim] or [batch, k, dim]}`
            (negatives optional) is accepted too.
        sample_weight: optional float `[batch]`, one weight per anchor.

    Returns:
        A float32 scalar (or `[batch]` for `reduction="none"`).

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
    >>> loss = InfoNCELoss(temperature=1.0)
    >>> round(float(loss(None, np.stack([a, a], axis=1))), 4)  # log(1 + e^-1)
    0.3133
    """

    def __init__(
        self,
        temperature=0.05,
        similarity="cosine",
        symmetric=False,
        reduction="mean",
        name="info_nce_loss",
        **kwargs,
    ):
        contrastive_ops._check_positive(
            "temperature", temperature, "typical values are 0.01-0.1; SimCSE uses 0.05"
        )
        contrastive_ops._check_choice("similarity", similarity, ("cosine", "dot"))
        if not isinstance(symmetric, bool):
            raise ValueError(f"`symmetric` must be a bool. Received: symmetric={symmetric!r}")
        _check_reduction(reduction)
        super().__init__(name=name, reduction="none", **kwargs)
        self.temperature = float(temperature)
        self.similarity = similarity
        self.symmetric = symmetric
        self.contrastive_reduction = reduction

    def _unpack(self, y_pred):
        if isinstance(y_pred, dict):
            unknown = set(y_pred) - {"anchors", "positives", "negatives"}
            if unknown or "anchors" not in y_pred or "positives" not in y_pred:
                raise ValueError(
                    "InfoNCELoss expects a `y_pred` dict with keys 'anchors', "
                    "'positives' and optionally 'negatives'. Received keys "
                    f"{sorted(y_pred)}."
                )
            return y_pred["anchors"], y_pred["positives"], y_pred.get("negatives")
        y_pred = _stacked(y_pred, "InfoNCELoss", 2)
        negatives = y_pred[:, 2:]
        if y_pred.shape[1] == 2:
            negatives = None
        return y_pred[:, 0], y_pred[:, 1], negatives

    def call(self, y_true, y_pred):
        anchors, positives, negatives = self._unpack(y_pred)
        return contrastive_ops.info_nce(
            anchors,
            positives,
            negatives,
            temperature=self.temperature,
            similarity=self.similarity,
            symmetric=self.symmetric,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            return _reduce(self.call(y_true, y_pred), sample_weight, self.contrastive_reduction)

    def get_config(self):
        return {
            "name": self.name,
            "temperature": self.temperature,
            "similarity": self.similarity,
            "symmetric": self.symmetric,
            "reduction": self.contrastive_reduction,
        }


@keras.saving.register_keras_serializable(package="kobjectives")
class CoSENTLoss(keras.losses.Loss):
    """CoSENT: rank sentence pairs by cosine similarity like their gold scores.

        loss = log(1 + sum_{(i, j): y_i > y_j} exp(scale * (cos_j - cos_i)))

    over all ordered pairs of pairs in the (global) batch, where `cos_i` is the
    cosine similarity of pair `i`'s two embeddings and `y_i` its gold score.
    A batch-level loss (sentence-transformers' `CoSENTLoss`); under
    `tf.distribute` the cosines and scores of all replicas are gathered and
    each replica returns `1 / num_replicas` of the global-batch loss, so the
    summed loss and gradients are one device's. See
    `kobjectives.ops.cosent_loss`.

    Args:
        scale: positive float, the inverse temperature (20 in the paper).
        name: Name of the loss.

    Call arguments:
        y_true: float `[batch]`, the gold similarity score of each pair (only
            the order matters, e.g. STS-B scores in [0, 5]).
        y_pred: float `[batch, 2, dim]`, the embeddings of each pair's two
            texts stacked on axis 1.
        sample_weight: not supported (the loss is not a sum over examples);
            passing one raises `ValueError`.

    Returns:
        A float32 scalar.

    Reference:
        Su, 2022, "CoSENT: A more efficient sentence vector scheme than
        Sentence-BERT", https://kexue.fm/archives/8847.

    Example:

    >>> import numpy as np
    >>> pairs = np.array([[[1.0, 0.0], [1.0, 0.0]],    # cos = 1
    ...                   [[1.0, 0.0], [0.0, 1.0]]], "float32")  # cos = 0
    >>> loss = CoSENTLoss(scale=1.0)
    >>> round(float(loss(np.array([5.0, 1.0]), pairs)), 4)  # log(1 + e^-1)
    0.3133
    """

    def __init__(self, scale=20.0, name="cosent_loss", **kwargs):
        contrastive_ops._check_positive(
            "scale", scale, "the inverse temperature; the paper uses 20"
        )
        super().__init__(name=name, reduction="none", **kwargs)
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        y_pred = _stacked(y_pred, "CoSENTLoss", 2, 2)
        return contrastive_ops.cosent_loss(y_true, y_pred[:, 0], y_pred[:, 1], self.scale)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "CoSENTLoss does not take a `sample_weight`: it is a ranking "
                "loss over all pairs of the batch, not a sum over examples."
            )
        with tf.name_scope(self.name):
            return self.call(y_true, y_pred)

    def get_config(self):
        return {"name": self.name, "scale": self.scale}


class _MarginLoss(keras.losses.Loss):
    """Shared constructor, reduction and config of the margin losses."""

    def __init__(self, margin, distance, reduction, name, **kwargs):
        contrastive_ops._check_margin(margin)
        contrastive_ops._check_choice("distance", distance, contrastive_ops._DISTANCES)
        _check_reduction(reduction)
        super().__init__(name=name, reduction="none", **kwargs)
        self.margin = float(margin)
        self.distance = distance
        self.contrastive_reduction = reduction

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            return _reduce(self.call(y_true, y_pred), sample_weight, self.contrastive_reduction)

    def get_config(self):
        return {
            "name": self.name,
            "margin": self.margin,
            "distance": self.distance,
            "reduction": self.contrastive_reduction,
        }


@keras.saving.register_keras_serializable(package="kobjectives")
class ContrastiveMarginLoss(_MarginLoss):
    """Pairwise margin contrastive loss (Hadsell et al., 2006).

        loss_i = 1/2 * (y_i * d_i^2 + (1 - y_i) * max(0, margin - d_i)^2)

    with `d_i` the distance between pair `i`'s two embeddings (cosine
    distance `1 - cos` by default): similar pairs are pulled together,
    dissimilar pairs pushed at least `margin` apart, with the paper's (and
    sentence-transformers' `ContrastiveLoss`'s) factor 1/2. The
    result is the (sample-weighted) mean over the global batch; see
    `kobjectives.ops.contrastive_margin_loss`.

    Args:
        margin: non-negative float, in units of `distance` (0.5 as
            sentence-transformers for the cosine distance).
        distance: `"cosine"`, `"euclidean"` or `"squared_euclidean"`.
        reduction: `"mean"` or `"none"` (per-pair losses `[batch]`).
        name: Name of the loss.

    Call arguments:
        y_true: `[batch]`, 1 for a similar pair and 0 for a dissimilar one.
        y_pred: float `[batch, 2, dim]`, each pair's two embeddings stacked
            on axis 1.
        sample_weight: optional float `[batch]`.

    Returns:
        A float32 scalar (or `[batch]` for `reduction="none"`).

    Reference:
        Hadsell, Chopra and LeCun, 2006, "Dimensionality Reduction by Learning
        an Invariant Mapping", CVPR.

    Example:

    >>> import numpy as np
    >>> pairs = np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2, "float32")  # d = 1
    >>> loss = ContrastiveMarginLoss(margin=1.5, reduction="none")
    >>> loss(np.array([1.0, 0.0]), pairs).numpy()  # [1^2 / 2, (1.5 - 1)^2 / 2]
    array([0.5  , 0.125], dtype=float32)
    """

    def __init__(
        self,
        margin=0.5,
        distance="cosine",
        reduction="mean",
        name="contrastive_margin_loss",
        **kwargs,
    ):
        super().__init__(margin, distance, reduction, name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = _stacked(y_pred, "ContrastiveMarginLoss", 2, 2)
        return contrastive_ops.contrastive_margin_loss(
            y_true, y_pred[:, 0], y_pred[:, 1], self.margin, self.distance
        )



@keras.saving.register_keras_serializable(package="kobjectives")
class TripletMarginLoss(_MarginLoss):
    """Triplet margin loss (Schroff et al., 2015, FaceNet).

        loss_i = max(0, d(a_i, p_i) - d(a_i, n_i) + margin)

    The (sample-weighted) mean over the global batch; see
    `kobjectives.ops.triplet_margin_loss`.

    Args:
        margin: non-negative float, in units of `distance`.
        distance: `"euclidean"` (the default), `"squared_euclidean"`
            (FaceNet's choice, on normalized embeddings) or `"cosine"`
            (`1 - cos`).
        reduction: `"mean"` or `"none"` (per-triplet losses `[batch]`).
        name: Name of the loss.

    Call arguments:
        y_true: ignored.
        y_pred: float `[batch, 3, dim]`: anchor, positive and negative
            embeddings stacked on axis 1. A dict `{"anchors", "positives",
            "negatives"}` of `[batch, dim]` tensors is accepted too.
        sample_weight: optional float `[batch]`.

    Returns:
        A float32 scalar (or `[batch]` for `reduction="none"`).

    Reference:
        Schroff, Kalenichenko and Philbin, 2015, "FaceNet: A Unified Embedding
        for Face Recognition and Clustering", https://arxiv.org/abs/1503.03832.

    Example:

    >>> import numpy as np
    >>> triplet = np.array([[[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]], "float32")
    >>> float(TripletMarginLoss(margin=1.0)(None, triplet))  # max(0, 5 - 10 + 1)
    0.0
    >>> float(TripletMarginLoss(margin=6.0)(None, triplet))  # 5 - 10 + 6
    1.0
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        reduction="mean",
        name="triplet_margin_loss",
        **kwargs,
    ):
        super().__init__(margin, distance, reduction, name, **kwargs)

    def call(self, y_true, y_pred):
        if isinstance(y_pred, dict):
            if set(y_pred) != {"anchors", "positives", "negatives"}:
                raise ValueError(
                    "TripletMarginLoss expects a `y_pred` dict with keys "
                    "'anchors', 'positives' and 'negatives'. Received keys "
                    f"{sorted(y_pred)}."
                )
            anchors, positives, negatives = (
                y_pred["anchors"],
                y_pred["positives"],
                y_pred["negatives"],
            )
        else:
            y_pred = _stacked(y_pred, "TripletMarginLoss", 3, 3)
            anchors, positives, negatives = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
        return contrastive_ops.triplet_margin_loss(
            anchors, positives, negatives, self.margin, self.distance
        )

