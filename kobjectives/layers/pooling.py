"""`SequencePooling`: token states to one embedding per text."""

import keras

from kobjectives.ops.embedding_metrics import POOLING_MODES
from kobjectives.ops.embedding_metrics import pool_sequence


@keras.saving.register_keras_serializable(package="kobjectives")
class SequencePooling(keras.layers.Layer):
    """Pools `[batch, length, hidden]` token states into `[batch, hidden]`.

    `"cls"` takes the first position (BERT's `[CLS]`, SimCSE's default),
    `"mean"` averages the real tokens (Reimers & Gurevych, 2019,
    Sentence-BERT's default; a row without real tokens gives zeros), `"last"`
    takes the last real token (for causal backbones). The math is
    `kobjectives.ops.pool_sequence`.

    Args:
        mode: `"cls"`, `"mean"` or `"last"`. Defaults to `"mean"`.
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        hidden: float `[batch, length, hidden]`.
        padding_mask: bool/int `[batch, length]`, true on real tokens
            (packed first).

    Returns:
        `[batch, hidden]` in the compute dtype.

    References:
        Reimers & Gurevych, 2019, "Sentence-BERT",
        https://arxiv.org/abs/1908.10084; Gao et al., 2021, "SimCSE",
        https://arxiv.org/abs/2104.08821.

    Example:

    >>> import numpy as np
    >>> pool = SequencePooling("mean")
    >>> out = pool(np.ones((2, 4, 3), "float32"), np.array([[1, 1, 0, 0]] * 2))
    >>> out.shape
    TensorShape([2, 3])
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"`mode` must be one of {POOLING_MODES}. Received: mode={mode!r}")
        self.mode = mode
        self.built = True

    def call(self, hidden, padding_mask):
        return pool_sequence(hidden, padding_mask, self.mode)

    def compute_output_shape(self, hidden_shape, padding_mask_shape=None):
        return (hidden_shape[0], hidden_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config
