"""`ContrastivePredictiveCoding`: CPC for text over a causal keras-hub backbone."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.ops import cpc as cpc_ops

_SIMILARITIES = ("dot", "cosine")


@keras.saving.register_keras_serializable(package="kobjectives")
class CPCAccuracy(keras.metrics.Metric):
    """CPC accuracy: how often the positive outscores every negative.

    Accumulates, per offset `k`, the correct and the counted pairs
    (`CPCTerms.correct`, `CPCTerms.weights`) and reports the per-offset
    accuracies averaged over the offsets seen. The sums are summed over
    replicas on read, so the value under `tf.distribute` is the global one.

    Args:
        max_offset: int, the number of offsets `K`.
        name: Name of the metric.

    Call arguments (`update_state`):
        correct: float `[batch, length, max_offset]`.
        weights: float `[batch, length, max_offset]`.

    Example:

    >>> import numpy as np
    >>> metric = CPCAccuracy(max_offset=2)
    >>> metric.update_state(np.array([[[1, 0], [0, 0]]], "float32"),
    ...                     np.array([[[1, 1], [1, 0]]], "float32"))
    >>> float(metric.result())  # (1/2 at k=1 + 0/1 at k=2) / 2
    0.25
    """

    def __init__(self, max_offset, name="cpc_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.max_offset = int(max_offset)
        self.correct = self.add_variable(
            shape=(self.max_offset,), initializer="zeros", name="correct"
        )
        self.count = self.add_variable(
            shape=(self.max_offset,), initializer="zeros", name="count"
        )

    def update_state(self, correct, weights):
        weights = tf.cast(weights, tf.float32)
        self.correct.assign_add(
            tf.reduce_sum(tf.cast(correct, tf.float32) * weights, axis=[0, 1])
        )
        self.count.assign_add(tf.reduce_sum(weights, axis=[0, 1]))

    def per_offset(self):
        """The accuracy at each offset `k = 1 .. K`, float32 `[K]`."""
        return tf.math.divide_no_nan(
            tf.convert_to_tensor(self.correct), tf.convert_to_tensor(self.count)
        )

    def result(self):
        present = tf.reduce_sum(tf.cast(tf.convert_to_tensor(self.count) > 0, tf.float32))
        return tf.reduce_sum(self.per_offset()) / tf.maximum(present, 1.0)

    def reset_state(self):
        self.correct.assign(tf.zeros([self.max_offset]))
        self.count.assign(tf.zeros([self.max_offset]))

    def get_config(self):
        return {"name": self.name, "max_offset": self.max_offset}


def _check_max_offset(max_offset):
    if isinstance(max_offset, bool) or not isinstance(max_offset, (int, np.integer)):
        raise ValueError(
            "`max_offset` must be an int >= 1, the number of steps ahead "
            f"predicted. Received: max_offset={max_offset!r}"
        )
    if max_offset < 1:
        raise ValueError(
            "`max_offset` must be >= 1 (predict at least one step ahead; the "
            f"paper uses up to 12). Received: max_offset={max_offset!r}"
        )


def _check_temperature(temperature):
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value > 0.0 and np.isfinite(value)):
        raise ValueError(
            "`temperature` must be a finite float > 0 (logits are similarity "
            "/ temperature; try 0.1 with similarity='cosine', 1.0 with 'dot'). "
            f"Received: temperature={temperature!r}"
        )


@keras.saving.register_keras_serializable(package="kobjectives")
class ContrastivePredictiveCoding(Objective):
    """Contrastive Predictive Coding (CPC) for text over a causal backbone.

    The three parts of CPC (van den Oord et al., 2018), for token sequences:

    - encoder `z_t`: the backbone's token embedding of token `t` (a
      per-token lookup, so no other token leaks into it);
    - context `c_t`: the causal backbone's hidden state at `t` (a keras-hub
      decoder such as `GPT2Backbone` reads its own token embeddings of
      tokens `<= t`, exactly CPC's autoregressive model over `z_{<=t}`);
    - predictions `y_{t,k} = W_k c_t`, one linear map per offset
      `k = 1 .. max_offset` (one `EinsumDense` kernel `[hidden, K, dim]`,
      no bias).

    The loss is `kobjectives.ops.cpc_loss`: for every offset the InfoNCE of
    picking `z_{t+k}` among the encodings at every valid position of the
    (global, under `tf.distribute`) batch, averaged over the valid pairs and
    then over the offsets. Positions `t` where `t + k` is padding or past the
    end do not count, padding is never a candidate, and other positions
    holding the positive's very token (identical encodings) are not used as
    its negatives (`exclude_same_token=True`). The metric `cpc_accuracy` is
    the per-offset accuracy of picking the positive, averaged over offsets.

    Feed `x = {"token_ids", "padding_mask"}` (plus the backbone's other
    inputs, if any); there are no labels. `compile()` defaults to AdamW.

    Args:
        backbone: a *causal* keras-hub backbone (`GPT2Backbone`,
            `GPTNeoXBackbone`, `LlamaBackbone`, ...) or a `keras.Model` that
            maps `{"token_ids", "padding_mask"}` to hidden states
            `[batch, length, hidden]` where position `t` depends only on
            tokens `<= t`, and has a `token_embedding` layer (the encoder).
        max_offset: int `K >= 1`, the number of steps ahead predicted; must
            be smaller than the sequence length. Defaults to 4.
        similarity: `"cosine"` (default) or `"dot"` (the paper's
            log-bilinear score).
        temperature: float > 0; logits are `similarity / temperature`.
            Defaults to 0.1.
        exclude_same_token: bool. Drop candidates holding the positive's
            token id from its negatives. Defaults to True.
        check_causal: bool. At construction, run the backbone once on a
            short probe and raise if a position's output changes when later
            tokens change (a bidirectional encoder would leak the future and
            make the task trivial). Defaults to True.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Inputs: a dict with `token_ids` int `[batch, length]` and `padding_mask`
        bool/int `[batch, length]` (right padding).

    Outputs: a dict with `context` `[batch, length, hidden]` (`c_t`),
        `encoded` `[batch, length, dim]` (`z_t`) and `predictions`
        `[batch, length, max_offset, dim]` (`W_k c_t`), in the compute dtype.

    Raises:
        ValueError: `max_offset < 1` or not below the backbone's
            `max_sequence_length` or the input length, `temperature <= 0`,
            an unknown `similarity`, a backbone without a token embedding,
            or (with `check_causal`) a non-causal backbone.

    Reference:
        van den Oord, Li and Vinyals, 2018, "Representation Learning with
        Contrastive Predictive Coding", https://arxiv.org/abs/1807.03748.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> model = ContrastivePredictiveCoding(backbone, max_offset=2)
    >>> model.compile(jit_compile=True)
    >>> ids = np.random.default_rng(0).integers(5, 50, (4, 8)).astype("int32")
    >>> x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    >>> history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['cpc_accuracy', 'loss']
    >>> model.encode(x).shape  # the context c_t
    TensorShape([4, 8, 16])
    """

    own_loss = "kobjectives.ops.cpc_loss"
    default_learning_rate = 1e-3

    def __init__(
        self,
        backbone,
        max_offset=4,
        similarity="cosine",
        temperature=0.1,
        exclude_same_token=True,
        check_causal=True,
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a causal keras-hub Backbone (e.g. "
                "GPT2Backbone) or a keras.Model mapping token ids and a "
                f"padding mask to hidden states. Received: {type(backbone).__name__}"
            )
        _check_max_offset(max_offset)
        _check_temperature(temperature)
        if similarity not in _SIMILARITIES:
            raise ValueError(
                f"`similarity` must be one of {_SIMILARITIES}. Received: "
                f"similarity={similarity!r}"
            )
        max_length = getattr(backbone, "max_sequence_length", None)
        if max_length is not None and max_offset >= max_length:
            raise ValueError(
                f"`max_offset` ({max_offset}) must be smaller than the "
                f"backbone's max_sequence_length ({max_length}). Received: "
                f"max_offset={max_offset}"
            )
        embedding = getattr(backbone, "token_embedding", None)
        if not isinstance(embedding, keras.layers.Layer):
            raise ValueError(
                "ContrastivePredictiveCoding encodes tokens with the "
                "backbone's `token_embedding` layer, which this backbone "
                f"({type(backbone).__name__}) does not have."
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.max_offset = int(max_offset)
        self.similarity = similarity
        self.temperature = float(temperature)
        self.exclude_same_token = bool(exclude_same_token)
        self.check_causal = bool(check_causal)

        self.hidden_dim = int(getattr(backbone, "hidden_dim", None) or embedding.output_dim)
        self.encoding_dim = int(embedding.output_dim)
        self.predictor = keras.layers.EinsumDense(
            "btd,dke->btke",
            output_shape=(None, self.max_offset, self.encoding_dim),
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="cpc_predictions",
        )
        # Build every variable now, so the objective can be saved, loaded
        # and distributed before it has seen data.
        self.predictor.build((None, None, self.hidden_dim))
        self.cpc_accuracy = CPCAccuracy(self.max_offset)
        self.built = backbone.built
        if self.check_causal:
            self._assert_causal()

    # --- forward ---------------------------------------------------------

    def encode(self, inputs, training=False):
        """The context `c_t`: the causal backbone's `[batch, length, hidden]`."""
        return run_backbone(self.backbone, inputs, training=training)

    def encode_tokens(self, token_ids):
        """The encodings `z_t`: token embeddings, `[batch, length, dim]`."""
        return self.backbone.token_embedding(token_ids)

    def call(self, inputs, training=False):
        missing = [k for k in ("token_ids", "padding_mask") if k not in inputs]
        if missing:
            raise ValueError(
                f"ContrastivePredictiveCoding needs inputs {missing}. Received "
                f"keys: {sorted(inputs)}"
            )
        length = inputs["token_ids"].shape[-1]
        if length is not None and length <= self.max_offset:
            raise ValueError(
                f"Sequences of length {length} are too short for "
                f"max_offset={self.max_offset}: no position t has t + "
                f"{self.max_offset} inside the sequence. Use sequences longer "
                "than max_offset."
            )
        context = self.encode(inputs, training=training)
        return {
            "context": context,
            "encoded": self.encode_tokens(inputs["token_ids"]),
            "predictions": self.predictor(context),
        }

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `context` (`c_t`) and `encoded` (`z_t`)."""
        return {
            "context": self.encode(inputs, training=False),
            "encoded": self.encode_tokens(inputs["token_ids"]),
        }

    # --- loss --------------------------------------------------------------

    def cpc_terms(self, x, y_pred):
        """`kobjectives.ops.cpc_info_nce` on a batch and its outputs."""
        return cpc_ops.cpc_info_nce(
            y_pred["predictions"],
            y_pred["encoded"],
            x["padding_mask"],
            target_ids=x["token_ids"] if self.exclude_same_token else None,
            temperature=self.temperature,
            similarity=self.similarity,
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.cpc_terms(x, y_pred)
        weights = terms.weights
        if sample_weight is not None:
            weights = weights * tf.reshape(tf.cast(sample_weight, tf.float32), [-1, 1, 1])
        loss = cpc_ops.mean_over_offsets(terms.losses, weights)
        self.cpc_accuracy.update_state(terms.correct, weights)
        return self.add_layer_losses(loss)

    # --- checks and config --------------------------------------------------

    def _assert_causal(self):
        """Raises when the backbone's output at t depends on tokens after t."""
        vocabulary = getattr(self.backbone.token_embedding, "input_dim", None) or 2
        length = min(8, getattr(self.backbone, "max_sequence_length", None) or 8)
        half = length // 2
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocabulary, (1, length)).astype("int32")
        changed = ids.copy()
        changed[:, half:] = (changed[:, half:] + 1 + rng.integers(0, vocabulary - 1, (1, length - half))) % vocabulary
        mask = np.ones((1, length), "int32")
        with tf.init_scope():
            a = self.encode({"token_ids": ids, "padding_mask": mask})
            b = self.encode({"token_ids": changed, "padding_mask": mask})
            a = np.asarray(tf.cast(a, tf.float32))[:, :half]
            b = np.asarray(tf.cast(b, tf.float32))[:, :half]
        scale = max(float(np.abs(a).max()), 1e-6)
        if float(np.abs(a - b).max()) > 1e-4 * scale:
            raise ValueError(
                f"The backbone ({type(self.backbone).__name__}) is not causal: "
                "its hidden state at a position changes when later tokens "
                "change, so CPC's context would see the future it predicts. "
                "Use a causal decoder backbone such as "
                "keras_hub.models.GPT2Backbone (or pass check_causal=False if "
                "you are sure)."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_offset": self.max_offset,
                "similarity": self.similarity,
                "temperature": self.temperature,
                "exclude_same_token": self.exclude_same_token,
                "check_causal": self.check_causal,
            }
        )
        return config
