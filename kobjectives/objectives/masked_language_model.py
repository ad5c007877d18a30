"""`MaskedLanguageModel`: masked LM pretraining over any encoder backbone."""

import keras
import keras_hub
import tensorflow as tf

from kobjectives.losses import MaskedLMLoss
from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone

# keras-hub 0.32 backbones use Keras' own `ReversibleEmbedding`; older ones
# keras-hub's. Either can project hidden states back to the vocabulary.
_REVERSIBLE_EMBEDDINGS = (
    keras.layers.ReversibleEmbedding,
    keras_hub.layers.ReversibleEmbedding,
)


@keras.saving.register_keras_serializable(package="kobjectives")
class MaskedLanguageModel(Objective):
    """Masked language modeling (BERT) over any encoder backbone.

    Runs the backbone, gathers the hidden states at `mask_positions` and only
    then projects them to the vocabulary with keras-hub's `MaskedLMHead`
    (dense + layer norm + output projection), so the `[length, vocabulary]`
    logits of unmasked positions are never computed. The output projection is
    tied to the backbone's token embedding when it has a
    `ReversibleEmbedding` (`backbone.token_embedding`).

    Feed it what `kobjectives.layers.MaskedLMMasker` emits, as keras-hub's
    masked-LM tasks are fed: `x = {"token_ids", "padding_mask",
    "mask_positions"}` (plus `"segment_ids"` where the backbone takes them;
    zeros are used when they are missing), `y = mask_ids`,
    `sample_weight = mask_weights`. `compile()` defaults to
    `kobjectives.losses.MaskedLMLoss` (the mean over real masked positions,
    exact under `tf.distribute`) with `MaskedAccuracy` and `Perplexity` as
    weighted metrics.

    Args:
        backbone: a keras-hub encoder `Backbone` (`BertBackbone`,
            `RobertaBackbone`, `AlbertBackbone`, `DistilBertBackbone`,
            `ElectraBackbone`, ...) or any `keras.Model` that maps
            `{"token_ids", "padding_mask"}` to hidden states
            `[batch, length, hidden_dim]` (or a dict with `"sequence_output"`).
        vocabulary_size: int. Needed only when the backbone has neither
            `vocabulary_size` nor a token embedding.
        hidden_dim: int. Needed only when the backbone has neither
            `hidden_dim` nor a token embedding.
        tie_weights: bool. Project with the transposed token embedding when
            the backbone has a `ReversibleEmbedding`. Defaults to True.
        intermediate_activation: activation of the head's dense layer.
            Defaults to `"gelu"` (as BERT).
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Inputs: a dict with `token_ids` int `[batch, length]`, `padding_mask`
        bool/int `[batch, length]`, `mask_positions` int
        `[batch, mask_selection_length]`, optionally `segment_ids`.

    Outputs: logits `[batch, mask_selection_length, vocabulary_size]` in the
        variable dtype: float32 under `mixed_bfloat16`, where the backbone and
        the tied vocabulary projection compute in bfloat16.

    Reference:
        Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
        Transformers for Language Understanding",
        https://arxiv.org/abs/1810.04805

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> from kobjectives.layers import MaskedLMMasker
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> masker = MaskedLMMasker(
    ...     vocabulary_size=50, mask_selection_rate=0.25, mask_token_id=4,
    ...     mask_selection_length=2, unselectable_token_ids=(0, 1, 2, 3, 4), seed=0)
    >>> ids = tf.random.stateless_uniform((4, 8), (0, 0), 5, 50, dtype=tf.int32)
    >>> m = masker(ids)  # in tf.data: masker.map_over(dataset)
    >>> x = {k: m[k] for k in ("token_ids", "padding_mask", "mask_positions")}
    >>> model = MaskedLanguageModel(backbone)
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(x, m["mask_ids"], sample_weight=m["mask_weights"],
    ...                     batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'masked_accuracy', 'perplexity']
    >>> model(x).shape  # logits of the 2 prediction slots
    TensorShape([4, 2, 50])
    """

    def __init__(
        self,
        backbone,
        vocabulary_size=None,
        hidden_dim=None,
        tie_weights=True,
        intermediate_activation="gelu",
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras-hub Backbone or a keras.Model that "
                "maps token ids and a padding mask to hidden states. "
                f"Received: {type(backbone).__name__}"
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.tie_weights = tie_weights
        self.intermediate_activation = intermediate_activation

        embedding = getattr(backbone, "token_embedding", None)
        if not isinstance(embedding, _REVERSIBLE_EMBEDDINGS):
            embedding = None
        tied = embedding if tie_weights else None
        vocabulary_size = vocabulary_size or getattr(backbone, "vocabulary_size", None)
        if vocabulary_size is None and embedding is not None:
            vocabulary_size = embedding.input_dim
        hidden_dim = hidden_dim or getattr(backbone, "hidden_dim", None)
        if hidden_dim is None and embedding is not None:
            hidden_dim = embedding.output_dim
        if vocabulary_size is None or hidden_dim is None:
            raise ValueError(
                "Cannot tell the backbone's vocabulary size and hidden size. "
                "Pass `vocabulary_size=` and `hidden_dim=` to "
                "MaskedLanguageModel."
            )
        self.vocabulary_size = int(vocabulary_size)
        self.hidden_dim = int(hidden_dim)
        self.head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=self.vocabulary_size,
            token_embedding=tied,
            intermediate_activation=intermediate_activation,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            # The head computes in the variable dtype (float32 under
            # `mixed_bfloat16`): its dense + layer norm touch only the masked
            # positions, the tied projection still runs in the embedding's
            # compute dtype, and the logits come out in float32.
            dtype=self.dtype_policy.variable_dtype,
            name="mlm_head",
        )
        # Build every variable now, so the objective can be saved, loaded
        # and distributed before it has seen data.
        self.head.build((None, None, self.hidden_dim), (None, None))
        self.built = backbone.built

    def encode(self, inputs, training=False):
        """Runs the backbone: `[batch, length, hidden_dim]` hidden states."""
        return run_backbone(self.backbone, inputs, training=training)

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`: the
        `sequence_output` and the `mlm_logits` at every position (fill-mask:
        a client writes `[MASK]` and reads the prediction there)."""
        hidden = self.encode(inputs, training=False)
        batch_size, length = tf.shape(inputs["token_ids"])[0], tf.shape(inputs["token_ids"])[1]
        positions = tf.broadcast_to(tf.range(length)[None, :], [batch_size, length])
        return {
            "sequence_output": hidden,
            "mlm_logits": self.head(hidden, mask_positions=positions),
        }

    def call(self, inputs, training=False):
        if "mask_positions" not in inputs:
            raise ValueError(
                "MaskedLanguageModel needs `mask_positions` in its inputs "
                "(emitted by kobjectives.layers.MaskedLMMasker). Received "
                f"keys: {sorted(inputs)}"
            )
        hidden = self.encode(inputs, training=training)
        return self.head(hidden, mask_positions=inputs["mask_positions"])

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        **kwargs,
    ):
        """Configures training, with masked-LM defaults.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-4, weight decay
                0.01, clipnorm 1.0: a from-scratch pretraining default), or
                any `keras.Model.compile` optimizer.
            loss: `"auto"` (`kobjectives.losses.MaskedLMLoss()`) or a loss.
            weighted_metrics: `"auto"` (`MaskedAccuracy`, `Perplexity`) or a
                list of metrics, which receive `mask_weights`.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
        """
        if loss == "auto":
            loss = MaskedLMLoss()
        if weighted_metrics == "auto":
            weighted_metrics = [MaskedAccuracy(), Perplexity()]
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "tie_weights": self.tie_weights,
                "intermediate_activation": self.intermediate_activation,
            }
        )
        return config
