"""`TokenWeightedPooling`: a weighted mean of token states, one learned weight per vocabulary id."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops.embedding_metrics import pool_sequence
from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import poison_invalid_labels


@keras.saving.register_keras_serializable(package="kobjectives")
class TokenWeightedPooling(keras.layers.Layer):
    """Pools token states with a learned weight per vocabulary id.

    The sentence embedding is the weighted mean `sum_t w(x_t) h_t / sum_t
    w(x_t)` over the real tokens, with `w(i) = exp(scale * v_i)` for a
    trainable vector `v` of one entry per vocabulary id, initialized to zero:
    at initialization it *is* mean pooling. Trained contrastively (SimCSE),
    the weights learn how informative each id is, as SIF's frequency weights
    do by hand (Arora et al., 2017): on the embedded corpus `[CLS]`, `[SEP]`,
    "the", "." and "," drop to 0.3-0.6 and content words rise above 1
    (`docs/contrastive.md`). The math is `kobjectives.ops.pool_sequence` with
    `weights`.

    Args:
        vocabulary_size: int, the number of token ids.
        scale: positive float. The weights are stored as `log(w) / scale`,
            so under Adam they move `scale` times faster than a plain
            parameter at the same learning rate (a learning-rate multiplier
            that needs no optimizer support). Defaults to 50.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        hidden: float `[batch, length, hidden]`.
        token_ids: int `[batch, length]`, ids in `[0, vocabulary_size)`.
        padding_mask: bool/int `[batch, length]`, true on real tokens.

    Returns:
        `[batch, hidden]` in the compute dtype (summed in float32).

    References:
        Arora, Liang and Ma, 2017, "A Simple but Tough-to-Beat Baseline for
        Sentence Embeddings", https://openreview.net/forum?id=SyK00v5xx;
        Gao et al., 2021, "SimCSE", https://arxiv.org/abs/2104.08821.

    Example:

    >>> import numpy as np
    >>> pool = TokenWeightedPooling(vocabulary_size=10)
    >>> hidden = np.arange(12, dtype="float32").reshape(1, 4, 3)
    >>> ids, mask = np.array([[1, 5, 6, 0]]), np.array([[1, 1, 1, 0]])
    >>> pool(hidden, ids, mask).numpy()  # untrained: the mean of 3 tokens
    array([[3., 4., 5.]], dtype=float32)
    """

    def __init__(self, vocabulary_size, scale=50.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, (int, np.integer)) or vocabulary_size < 1:
            raise ValueError(
                f"`vocabulary_size` must be a positive int. Received: vocabulary_size={vocabulary_size!r}"
            )
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < float("inf"):
            raise ValueError(f"`scale` must be a positive, finite float. Received: scale={scale!r}")
        self.vocabulary_size = int(vocabulary_size)
        self.scale = float(scale)
        self.log_weights = self.add_weight(
            shape=(self.vocabulary_size,),
            initializer="zeros",
            dtype="float32",
            name="log_weights",
        )
        self.built = True

    def token_weights(self, token_ids):
        """The weights `w(x_t)`, float32 like `token_ids`.

        An id outside `[0, vocabulary_size)` raises where its value is known
        (eagerly) and in graphs run without XLA; under `jit_compile=True`,
        where XLA would clamp it to the last row, its weight is NaN instead
        (`kobjectives.ops.poison_invalid_labels`), never another id's.
        """
        ids = check_labels(token_ids, self.vocabulary_size, name="token_ids")
        weights = tf.exp(self.scale * tf.gather(self.log_weights, ids))
        return poison_invalid_labels(weights, token_ids, self.vocabulary_size)

    def call(self, hidden, token_ids, padding_mask):
        # Padded positions never count: their ids are replaced by 0 before the
        # range check, so only a real token's id can fail or poison the mean.
        token_ids = tf.where(tf.cast(padding_mask, tf.bool), token_ids,
                             tf.zeros_like(token_ids))
        return pool_sequence(hidden, padding_mask, "mean", weights=self.token_weights(token_ids))

    def compute_output_shape(self, hidden_shape, token_ids_shape=None, padding_mask_shape=None):
        return (hidden_shape[0], hidden_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary_size": self.vocabulary_size, "scale": self.scale})
        return config
