"""The masked language modeling loss and its statistics, as tensor functions."""

import tensorflow as tf

from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import poison_invalid_labels
from kobjectives.ops.reduction import global_weighted_mean


def sparse_cross_entropy(labels, logits):
    """Per-position softmax cross-entropy, accumulated in float32.

    Invalid labels (outside `[0, vocabulary_size)`, or floats that are not
    whole numbers) raise where their values are known (eagerly) and in
    graphs run without XLA; under `jit_compile=True` their loss is NaN,
    never the finite loss of another id (`kobjectives.ops.labels`).

    Args:
        labels: int tensor `[...]` of target ids in `[0, vocabulary_size)`
            (float tensors must hold whole numbers).
        logits: float tensor `[..., vocabulary_size]` in any float dtype; cast
            to float32 before the log-softmax so bfloat16/float16 logits under
            mixed precision lose nothing in the normalizer.

    Returns:
        float32 tensor `[...]`: `-log softmax(logits)[label]`.

    Raises:
        ValueError: known labels outside the vocabulary or not whole numbers.
    """
    logits = tf.cast(logits, tf.float32)
    vocabulary_size = logits.shape[-1]
    labels = tf.convert_to_tensor(labels)
    if vocabulary_size is None:
        vocabulary_size = tf.shape(logits)[-1]
        ids = tf.cast(labels, tf.int32)
    else:
        ids = check_labels(labels, vocabulary_size)
    # The kernel sees valid ids only (an out-of-range id would give a NaN
    # gradient row even at a weight-0 position); the loss of an invalid
    # label is then set to NaN, without a gradient.
    ids = tf.clip_by_value(ids, 0, tf.cast(vocabulary_size, ids.dtype) - 1)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ids, logits=logits)
    return poison_invalid_labels(losses, labels, vocabulary_size)


def masked_lm_loss(labels, logits, sample_weight=None):
    """Weighted sparse cross-entropy over the masked positions.

    The mean is taken over *real* masked positions: the weighted sum divided
    by the sum of the weights (never by the number of prediction slots, so
    unused slots with weight 0 do not dilute the loss). Under a
    `tf.distribute` strategy the weights are summed over all replicas and the
    value returned is this replica's share of the global mean (see
    `kobjectives.ops.reduction.global_weighted_mean`). A batch with no real
    masked position gives 0, not NaN. A slot of weight 0 never counts, even
    when its logits are NaN or infinite, and its logits get a zero gradient
    (not NaN); an invalid label in a slot of
    positive weight makes the loss NaN (see `sparse_cross_entropy`).

    Args:
        labels: int tensor `[batch, mask_selection_length]`, the original ids.
        logits: float tensor `[batch, mask_selection_length, vocabulary_size]`.
        sample_weight: float tensor `[batch, mask_selection_length]`, 1 for a
            real masked position and 0 for an unused slot, never negative.
            None means all 1.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: known labels outside the vocabulary or not whole
            numbers, known negative weights, or weights of another shape.
    """
    if sample_weight is not None:
        # Slots of weight 0 are replaced by zero logits before the softmax, so
        # a NaN or infinite logit there reaches neither the loss nor its
        # gradient (`0 * nan` in the softmax's gradient would be NaN).
        logits = tf.convert_to_tensor(logits)
        used = tf.not_equal(tf.cast(sample_weight, tf.float32), 0.0)
        try:  # a mis-shaped weight is reported by `global_weighted_mean`
            tf.broadcast_static_shape(used.shape, logits.shape[:-1])
        except ValueError:
            used = None
        if used is not None:
            used = tf.broadcast_to(used, tf.shape(logits)[:-1])[..., None]
            logits = tf.where(used, logits, tf.zeros_like(logits))
    losses = sparse_cross_entropy(labels, logits)
    if sample_weight is None:
        sample_weight = tf.ones_like(losses)
    return global_weighted_mean(losses, sample_weight)


def correct_predictions(labels, logits):
    """1.0 where `argmax(logits)` equals the label, else 0.0 (float32)."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32)
