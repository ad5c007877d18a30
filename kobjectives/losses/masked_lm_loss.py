"""`MaskedLMLoss`: the masked language modeling loss as a Keras loss."""

import keras
import tensorflow as tf

from kobjectives.ops import masked_lm as masked_lm_ops
from kobjectives.ops.reduction import apply_weights


@keras.saving.register_keras_serializable(package="kobjectives")
class MaskedLMLoss(keras.losses.Loss):
    """Weighted sparse cross-entropy over masked positions.

    The mean over *real* masked positions: `sum(w * ce) / sum(w)` where `w`
    are the `mask_weights` from `kobjectives.layers.MaskedLMMasker`. Unlike
    `keras.losses.SparseCategoricalCrossentropy` with its default
    `"sum_over_batch_size"` reduction, unused prediction slots (weight 0) do
    not dilute the loss, and under `tf.distribute` the weights are summed over
    all replicas, so a mirrored run has the same loss and gradients as one
    device with the global batch. Logits are cast to float32 before the
    log-softmax (safe under `mixed_bfloat16`). A batch with no masked position
    has loss 0, never NaN, and a slot of weight 0 never counts, even when its
    logits are NaN or infinite.

    Invalid labels (ids outside `[0, vocabulary_size)`, float labels that are
    not whole numbers) and negative or mis-shaped weights raise a
    `ValueError` where their values are known (eager calls). In a traced step
    they cannot always be checked: under `jit_compile=True` an invalid label
    makes the loss NaN (never a finite wrong value; see
    `kobjectives.ops.labels`). Check ids in the input pipeline
    (`kobjectives.layers.MaskedLMMasker` does) for a clear error.

    Args:
        reduction: `"masked_mean"` (the default, described above) or `"none"`
            for the unreduced per-position losses multiplied by the weights.
        name: Name of the loss.

    Call arguments:
        y_true: int tensor `[batch, mask_selection_length]` (`mask_ids`).
        y_pred: logits `[batch, mask_selection_length, vocabulary_size]`.
        sample_weight: float `[batch, mask_selection_length]`
            (`mask_weights`); optional.

    Returns:
        A float32 scalar (or `[batch, mask_selection_length]` for `"none"`).

    Reference:
        Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
        Transformers for Language Understanding",
        https://arxiv.org/abs/1810.04805

    Example:

    >>> import numpy as np
    >>> loss = MaskedLMLoss()
    >>> logits = np.log(np.array([[[0.5, 0.5], [0.9, 0.1]]], "float32"))
    >>> float(loss([[0, 1]], logits, sample_weight=[[1.0, 0.0]]))  # -log 0.5
    0.6931...
    """

    def __init__(self, reduction="masked_mean", name="masked_lm_loss", **kwargs):
        if reduction not in ("masked_mean", "none"):
            raise ValueError(
                "`reduction` must be 'masked_mean' or 'none'. "
                f"Received: reduction={reduction!r}"
            )
        super().__init__(name=name, reduction="none", **kwargs)
        self.masked_reduction = reduction

    def call(self, y_true, y_pred):
        return masked_lm_ops.sparse_cross_entropy(y_true, y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            if self.masked_reduction == "none":
                losses = self.call(y_true, y_pred)
                if sample_weight is not None:
                    losses, _ = apply_weights(losses, sample_weight)
                return losses
            return masked_lm_ops.masked_lm_loss(y_true, y_pred, sample_weight)

    def get_config(self):
        return {"name": self.name, "reduction": self.masked_reduction}
