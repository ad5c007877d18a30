"""`SentencePairPretrainer`: BERT (MLM + NSP) and ALBERT (MLM + SOP)
pretraining over any encoder backbone."""

import keras
import tensorflow as tf

from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity
from kobjectives.objectives.masked_language_model import MaskedLanguageModel
from kobjectives.objectives.objective import Objective
from kobjectives.backbones import backbone_input_names
from kobjectives.ops.masked_lm import sparse_cross_entropy
from kobjectives.ops.sentence_pairs import TASKS


@keras.saving.register_keras_serializable(package="kobjectives")
class SentencePairPretrainer(MaskedLanguageModel):
    """Masked LM plus a next-sentence (BERT) or sentence-order (ALBERT) head.

    A `kobjectives.objectives.MaskedLanguageModel` (its masked-LM head, tied
    to the token embedding, is reused as is) with a second, keras-hub-style
    pair head: the pooled `[CLS]` representation -> `Dense(2)` logits. The
    pooled representation is the backbone's `"pooled_output"` where it has
    one (BERT's and ALBERT's pooler, `tanh(W h_[CLS])`, is exactly what they
    pretrain with NSP / SOP); otherwise the objective adds such a pooler on
    the first position's hidden state.

    Two named losses (`Objective.loss_names`), each a global weighted mean in
    float32, exact under `tf.distribute`:

    - `"mlm"`: the masked-LM cross-entropy over the real masked positions
      (weights `mask_weights`);
    - `"pair"`: the pair head's cross-entropy, a plain mean over the pairs.

    The base weights them (`mlm_weight`, `pair_weight`) and sums them once:

        loss = mlm_weight * MLM + pair_weight * pair cross-entropy

    Metrics: `masked_accuracy`, `perplexity` (masked LM), `pair_accuracy`,
    and the two unweighted loss terms `mlm_loss`, `pair_loss`.

    Feed it what `kobjectives.data.sentence_pair_dataset` yields
    (`SentencePairGenerator` then `MaskedLMMasker`):
    `x = {"token_ids", "segment_ids", "padding_mask", "mask_positions"}`,
    `y = {"mask_ids", "mask_weights", "pair_labels"}`.

    Args:
        backbone: a keras-hub encoder `Backbone` (`BertBackbone`,
            `AlbertBackbone`, ...) or any `keras.Model` mapping
            `{"token_ids", "padding_mask"}` (and `segment_ids`) to hidden
            states (or a dict with `"sequence_output"`, and optionally
            `"pooled_output"`).
        task: `"nsp"` or `"sop"`; names the pair metric's meaning and is
            saved with the model. Defaults to `"nsp"`.
        mlm_weight: float >= 0, the weight of the masked-LM loss
            (`loss_weights["mlm"]`).
        pair_weight: float >= 0, the weight of the pair loss
            (`loss_weights["pair"]`). At least one weight must be positive.
        **kwargs: `MaskedLanguageModel` arguments (`vocabulary_size`,
            `hidden_dim`, `tie_weights`, `intermediate_activation`) and
            `keras.Model` arguments.

    Inputs: a dict with `token_ids`, `segment_ids`, `padding_mask` int/bool
        `[batch, length]` and `mask_positions` int
        `[batch, mask_selection_length]`.

    Outputs: a dict with `"mlm_logits"` float32 `[batch,
        mask_selection_length, vocabulary_size]` and `"pair_logits"` float32
        `[batch, 2]` (class 0: in order / actual next; 1: swapped / random).

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805) (BERT: MLM
          + next-sentence prediction).
        - [Lan et al., 2020](https://arxiv.org/abs/1909.11942) (ALBERT: MLM
          + sentence-order prediction).

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> from kobjectives.layers import MaskedLMMasker, SentencePairGenerator
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=16)
    >>> generator = SentencePairGenerator(
    ...     task="nsp", sequence_length=16, start_value=2, end_value=3, seed=0)
    >>> masker = MaskedLMMasker(
    ...     vocabulary_size=100, mask_selection_rate=0.15, mask_token_id=4,
    ...     mask_selection_length=3, unselectable_token_ids=(0, 2, 3, 4), seed=0)
    >>> documents = tf.ragged.constant(
    ...     [[[10 + d, 20 + d, 30], [40, 50 + d], [60, 70, 80 + d]]
    ...      for d in range(4)])
    >>> features = masker(generator(documents))  # or `map_over` both in tf.data
    >>> x = {k: features[k] for k in ("token_ids", "segment_ids", "padding_mask",
    ...                               "mask_positions")}
    >>> y = {k: features[k] for k in ("mask_ids", "mask_weights", "pair_labels")}
    >>> model = SentencePairPretrainer(backbone, task="nsp")
    >>> model.compile(jit_compile=True)
    >>> history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'masked_accuracy', 'mlm_loss', 'pair_accuracy', 'pair_loss', 'perplexity']
    >>> model(x)["pair_logits"].shape
    TensorShape([4, 2])
    """

    loss_names = ("mlm", "pair")

    def __init__(self, backbone, task="nsp", mlm_weight=1.0, pair_weight=1.0, **kwargs):
        if task not in TASKS:
            raise ValueError(
                f"`task` must be one of {TASKS}. Received: task={task!r}."
            )
        for name, value in (("mlm_weight", mlm_weight), ("pair_weight", pair_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(
                    f"`{name}` must be a float >= 0. Received: {name}={value!r}."
                )
        if mlm_weight == 0 and pair_weight == 0:
            raise ValueError(
                "`mlm_weight` and `pair_weight` are both 0: nothing would be "
                "trained. Make at least one positive (BERT uses 1.0 and 1.0)."
            )
        if "loss_weights" in kwargs:
            raise ValueError(
                "SentencePairPretrainer takes its loss weights as `mlm_weight` and "
                "`pair_weight`, not `loss_weights`."
            )
        super().__init__(
            backbone, loss_weights={"mlm": mlm_weight, "pair": pair_weight}, **kwargs
        )
        self.task = task
        self._backbone_pools = _has_pooled_output(backbone)
        variable_dtype = self.dtype_policy.variable_dtype
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        self.pooler = None
        if not self._backbone_pools:
            self.pooler = keras.layers.Dense(
                self.hidden_dim,
                activation="tanh",
                kernel_initializer=initializer,
                dtype=variable_dtype,
                name="pair_pooler",
            )
            self.pooler.build((None, self.hidden_dim))
        self.pair_head = keras.layers.Dense(
            2, kernel_initializer=initializer, dtype=variable_dtype, name="pair_head"
        )
        self.pair_head.build((None, self.hidden_dim))
        self.masked_accuracy = MaskedAccuracy()
        self.perplexity = Perplexity()
        self.pair_accuracy = MaskedAccuracy(name="pair_accuracy")

    @property
    def mlm_weight(self):
        """The weight of the masked-LM loss (`loss_weights["mlm"]`)."""
        return self.loss_weights["mlm"]

    @property
    def pair_weight(self):
        """The weight of the pair loss (`loss_weights["pair"]`)."""
        return self.loss_weights["pair"]

    # --- forward -----------------------------------------------------------

    def encode_pair(self, inputs, training=False):
        """Runs the backbone: `(sequence_output [batch, length, hidden],
        pooled [batch, hidden])`."""
        inputs = {k: tf.convert_to_tensor(v) for k, v in inputs.items()}
        feed = {}
        for name in backbone_input_names(self.backbone):
            if name not in inputs:
                raise ValueError(
                    f"SentencePairPretrainer: the backbone needs input {name!r}"
                    f", which the data does not provide. Received keys: "
                    f"{sorted(inputs)}. Use SentencePairGenerator's outputs."
                )
            value = inputs[name]
            feed[name] = tf.cast(value, tf.int32) if value.dtype == tf.bool else value
        outputs = self.backbone(feed, training=training)
        if isinstance(outputs, dict):
            hidden = outputs["sequence_output"]
            pooled = outputs.get("pooled_output")
        else:
            hidden, pooled = outputs, None
        if pooled is None or self.pooler is not None:
            pooled = self.pooler(tf.cast(hidden[:, 0, :], self.pooler.compute_dtype))
        return hidden, pooled

    def encode(self, inputs, training=False):
        return self.encode_pair(inputs, training=training)[0]

    def call(self, inputs, training=False):
        missing = [
            k for k in ("token_ids", "padding_mask", "mask_positions") if k not in inputs
        ]
        if missing:
            raise ValueError(
                f"SentencePairPretrainer needs inputs {missing} (emitted by "
                "SentencePairGenerator and MaskedLMMasker). Received keys: "
                f"{sorted(inputs)}"
            )
        hidden, pooled = self.encode_pair(inputs, training=training)
        mlm_logits = self.head(hidden, mask_positions=inputs["mask_positions"])
        pair_logits = self.pair_head(tf.cast(pooled, self.pair_head.compute_dtype))
        return {
            "mlm_logits": tf.cast(mlm_logits, tf.float32),
            "pair_logits": tf.cast(pair_logits, tf.float32),
        }

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `sequence_output`, `pooled_output`, `pair_logits`, `pair_probabilities`
        and `mlm_logits` at every position."""
        hidden, pooled = self.encode_pair(inputs, training=False)
        batch_size = tf.shape(inputs["token_ids"])[0]
        length = tf.shape(inputs["token_ids"])[1]
        positions = tf.broadcast_to(tf.range(length)[None, :], [batch_size, length])
        pair_logits = self.pair_head(tf.cast(pooled, self.pair_head.compute_dtype))
        return {
            "sequence_output": hidden,
            "pooled_output": pooled,
            "pair_logits": pair_logits,
            "pair_probabilities": tf.nn.softmax(tf.cast(pair_logits, tf.float32)),
            "mlm_logits": self.head(hidden, mask_positions=positions),
        }

    # --- loss --------------------------------------------------------------

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{"mlm": (cross-entropy per slot, mask_weights), "pair": (cross-entropy
        per pair, 1)}`: the base reduces, weights, sums and tracks them."""
        if not isinstance(y, dict) or any(
            k not in y for k in ("mask_ids", "mask_weights", "pair_labels")
        ):
            raise ValueError(
                "SentencePairPretrainer needs targets y = {'mask_ids', "
                "'mask_weights', 'pair_labels'} (see "
                "kobjectives.data.sentence_pair_dataset). Received: "
                f"{sorted(y) if isinstance(y, dict) else type(y).__name__}"
            )
        return {
            "mlm": (sparse_cross_entropy(y["mask_ids"], y_pred["mlm_logits"]), y["mask_weights"]),
            "pair": (sparse_cross_entropy(y["pair_labels"], y_pred["pair_logits"]), 1.0),
        }

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates `masked_accuracy`, `perplexity` and `pair_accuracy` (the
        loss terms are tracked by the base); returns every metric's result."""
        self.masked_accuracy.update_state(y["mask_ids"], y_pred["mlm_logits"], y["mask_weights"])
        self.perplexity.update_state(y["mask_ids"], y_pred["mlm_logits"], y["mask_weights"])
        self.pair_accuracy.update_state(y["pair_labels"], y_pred["pair_logits"])
        return self.get_metrics_result()

    def compile(self, optimizer="auto", **kwargs):
        """Configures training; the loss and metrics are built in.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-4, weight decay
                0.01, clipnorm 1.0) or any `keras.Model.compile` optimizer.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...);
                `loss`, `metrics` and `weighted_metrics` are refused.
        """
        for name in ("metrics", "weighted_metrics"):
            if kwargs.get(name) not in (None, "auto"):
                raise ValueError(
                    f"SentencePairPretrainer tracks its own metrics; do not pass "
                    f"`{name}` to compile()."
                )
            kwargs.pop(name, None)
        # Skips MaskedLanguageModel.compile, which would add its loss.
        Objective.compile(self, optimizer=optimizer, **kwargs)

    def get_config(self):
        config = super().get_config()
        weights = config.pop("loss_weights")  # saved as the constructor's arguments
        config.update(
            {"task": self.task, "mlm_weight": weights["mlm"], "pair_weight": weights["pair"]}
        )
        return config


def _has_pooled_output(backbone):
    try:
        outputs = backbone.output
    except (AttributeError, ValueError):
        return False
    return isinstance(outputs, dict) and "pooled_output" in outputs
