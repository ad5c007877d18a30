"""`ElectraPretrainer`: ELECTRA replaced-token detection (generator +
discriminator with shared token embeddings)."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives import compat
from kobjectives.metrics.masked_lm_metrics import MaskedAccuracy
from kobjectives.metrics.replaced_token_metrics import ReplacedPrecision
from kobjectives.metrics.replaced_token_metrics import ReplacedRecall
from kobjectives.metrics.replaced_token_metrics import RTDAccuracy
from kobjectives.objectives.masked_language_model import MaskedLanguageModel
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.ops import masked_lm as masked_lm_ops
from kobjectives.ops import replaced_token_detection as rtd_ops

_REQUIRED_INPUTS = ("token_ids", "padding_mask", "mask_positions", "mask_ids", "mask_weights")


@keras.saving.register_keras_serializable(package="kobjectives")
class ReplacedTokenDetectionHead(keras.layers.Layer):
    """ELECTRA's discriminator head: one logit per token, "replaced" vs "original".

    `dense(hidden_dim, activation) -> dense(1)`, as the discriminator head of
    Google's ELECTRA (`run_pretraining.py`, `_get_discriminator_output`).

    Args:
        hidden_dim: int, the width of the hidden dense layer (the
            discriminator's hidden size).
        activation: activation of the hidden layer. Defaults to `"gelu"`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Input: hidden states `[batch, length, any]`.

    Output: logits `[batch, length]` in the layer's compute dtype (positive
        means replaced).

    Reference:
        Clark et al., 2020, "ELECTRA: Pre-training Text Encoders as
        Discriminators Rather Than Generators", https://arxiv.org/abs/2003.10555

    Example:

    >>> import numpy as np
    >>> head = ReplacedTokenDetectionHead(hidden_dim=8)
    >>> head(np.zeros((2, 5, 8), "float32")).shape
    TensorShape([2, 5])
    """

    def __init__(self, hidden_dim, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(
                "`hidden_dim` must be a positive int (the discriminator's hidden "
                f"size). Received: hidden_dim={hidden_dim!r}"
            )
        self.hidden_dim = hidden_dim
        self.activation = activation
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.dense = keras.layers.Dense(
            hidden_dim, activation=activation, kernel_initializer=init,
            dtype=self.dtype_policy, name="dense",
        )
        self.logits = keras.layers.Dense(
            1, kernel_initializer=init, dtype=self.dtype_policy, name="logits"
        )

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.logits.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.built = True

    def call(self, hidden):
        return tf.squeeze(self.logits(self.dense(hidden)), axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "activation": self.activation})
        return config


def _token_embedding(backbone, role):
    embedding = getattr(backbone, "token_embedding", None)
    if not isinstance(embedding, keras.layers.Embedding):
        raise ValueError(
            f"The {role} ({type(backbone).__name__}) has no `token_embedding` "
            "(a keras.layers.Embedding, e.g. the ReversibleEmbedding of keras-hub "
            "backbones), so the token embeddings cannot be shared. Use keras-hub "
            "encoder backbones such as ElectraBackbone for both."
        )
    if not embedding.built:
        raise ValueError(
            f"The {role}'s token embedding is not built. Build the backbone "
            "(keras-hub backbones are built on construction) before passing it."
        )
    return embedding


class _ReplacedTokenDetector(keras.layers.Layer):
    """The discriminator and its head, for an inference export without the
    generator (see `ElectraPretrainer.detector`)."""

    def __init__(self, backbone, head, vocabulary_size, **kwargs):
        super().__init__(dtype=backbone.dtype_policy, **kwargs)
        self.backbone = backbone
        self.head = head
        self.vocabulary_size = vocabulary_size
        self.built = True

    def export_outputs(self, inputs):
        return _detector_outputs(self.backbone, self.head, inputs)

    def call(self, inputs):
        return self.export_outputs(inputs)


def _detector_outputs(backbone, head, inputs):
    hidden = run_backbone(backbone, inputs, training=False)
    logits = tf.cast(head(hidden), tf.float32)
    return {
        "sequence_output": hidden,
        "rtd_logits": logits,
        "replaced_probability": tf.sigmoid(logits),
    }


@keras.saving.register_keras_serializable(package="kobjectives")
class ElectraPretrainer(Objective):
    """ELECTRA pretraining: a masked-LM generator and a replaced-token detector.

    One training step, as Clark et al. (2020) and Google's ELECTRA code:

    1. **Generator.** The masked sequence (from
       `kobjectives.layers.MaskedLMMasker`; ELECTRA masks 15% of the tokens
       and makes 85% of them `[MASK]`, keeping 15% unchanged, no random ones)
       runs through `generator` and keras-hub's `MaskedLMHead`, tied to the
       shared token embedding (by composition: a
       `kobjectives.objectives.MaskedLanguageModel` over `generator`). Its
       loss is the masked-LM cross-entropy over the real masked positions.
    2. **Sampling.** At every masked position a replacement is drawn from
       `softmax(logits / temperature)` by Gumbel-max under stop-gradient
       (`kobjectives.ops.gumbel_max_sample`), from the stateless seed
       `[seed, step]`, where `step` is a counter weight of the model
       (deterministic, XLA-safe, saved and restored with the model).
    3. **Discriminator.** The original sequence with the samples written at
       the masked positions runs through `discriminator` and a
       `ReplacedTokenDetectionHead`; every non-padding token is labelled
       replaced iff it was masked and its sample differs from the original
       (a sample equal to the original counts as original). Its loss is the
       sigmoid cross-entropy averaged over the non-padding tokens
       (`kobjectives.ops.rtd_loss`).

    Two named losses (`Objective.loss_names`): `"generator"` (the masked-LM
    cross-entropy per masked slot, weighted by `mask_weights`) and
    `"discriminator"` (the sigmoid cross-entropy per token, weighted by the
    padding mask); the base weights them and sums them once, so the loss is
    `generator_weight * MLM + discriminator_weight * RTD` (defaults 1 and 50,
    the paper's lambda). Both means are over the global
    batch (exact under `tf.distribute`), and the sampling noise of a mirrored
    step is the global batch's, so a `MirroredStrategy` step computes what
    one device computes. The generator's token embedding table is the
    discriminator's (`kobjectives.compat.share_embedding_table`): one variable that both losses
    train. Only the discriminator is used after pretraining: it is the
    `exported_model` (a run saves it as its keras-hub preset) and
    `serving_model()` is `detector()`, so a SavedModel holds no generator.

    Feed `x` only (no `y`): a dict with the masker's outputs `token_ids`,
    `padding_mask`, `mask_positions`, `mask_ids`, `mask_weights` (plus
    `segment_ids` where the backbones take them; zeros otherwise).

    Metrics: `generator_loss`, `discriminator_loss` (the two unweighted
    means), `generator_accuracy` (masked-LM accuracy), `rtd_accuracy`,
    `replaced_precision`, `replaced_recall` (over non-padding tokens).

    Args:
        generator: a keras-hub encoder backbone (e.g. `ElectraBackbone`),
            typically 1/4 to 1/3 of the discriminator's hidden size, with the
            discriminator's vocabulary and embedding size.
        discriminator: a keras-hub encoder backbone with a `token_embedding`
            (`ElectraBackbone`, `BertBackbone`, ...).
        generator_weight: float >= 0, weight of the masked-LM loss
            (`loss_weights["generator"]`). Defaults to 1.0.
        discriminator_weight: float >= 0, weight of the RTD loss
            (`loss_weights["discriminator"]`). Defaults to 50.0.
        temperature: float > 0, the sampling temperature. Defaults to 1.0.
        disallow_correct: bool, never sample the original token (ELECTRA's
            `disallow_correct` option). Defaults to False.
        seed: int or None, the seed of the sampling noise; None draws one at
            construction (kept in the config, so a saved model reloads with it).
        **kwargs: passed to `keras.Model` (`name`, `dtype`).

    Inputs: the dict above, `token_ids`/`padding_mask` `[batch, length]`,
        `mask_*` `[batch, mask_selection_length]`.

    Outputs: a dict with `mlm_logits` float32 `[batch, slots, vocabulary]`,
        `rtd_logits` float32 `[batch, length]`, `rtd_labels` float32
        `[batch, length]`, `corrupted_ids` int `[batch, length]` and
        `sampled_ids` int32 `[batch, slots]`.

    Raises:
        TypeError: a backbone is not a `keras.Model`.
        ValueError: the token embeddings cannot be shared (no
            `token_embedding`, other vocabulary or embedding size), bad
            weights or temperature, missing input keys.

    Reference:
        Clark et al., 2020, "ELECTRA: Pre-training Text Encoders as
        Discriminators Rather Than Generators", https://arxiv.org/abs/2003.10555

    Example:

    >>> import keras_hub, numpy as np
    >>> from kobjectives.layers import MaskedLMMasker
    >>> def electra(hidden, heads):
    ...     return keras_hub.models.ElectraBackbone(
    ...         vocab_size=50, num_layers=1, num_heads=heads, hidden_dim=hidden,
    ...         embedding_dim=16, intermediate_dim=2 * hidden, max_sequence_length=8)
    >>> model = ElectraPretrainer(
    ...     generator=electra(8, 1), discriminator=electra(16, 2), seed=0)
    >>> masker = MaskedLMMasker(
    ...     vocabulary_size=50, mask_selection_rate=0.25, mask_token_id=4,
    ...     mask_selection_length=2, unselectable_token_ids=(0, 1, 2, 3, 4),
    ...     mask_token_rate=0.85, random_token_rate=0.0, seed=0)
    >>> x = masker(np.random.default_rng(0).integers(5, 50, (4, 8)).astype("int32"))
    >>> model.compile(jit_compile=True)
    >>> history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['discriminator_loss', 'generator_accuracy', 'generator_loss', 'loss',
     'replaced_precision', 'replaced_recall', 'rtd_accuracy']
    >>> model.detector()(x)["replaced_probability"].shape
    TensorShape([4, 8])
    """

    trained_models = ("generator", "discriminator")
    exported_model = "discriminator"
    loss_names = ("generator", "discriminator")

    def __init__(
        self,
        generator,
        discriminator,
        generator_weight=1.0,
        discriminator_weight=50.0,
        temperature=1.0,
        disallow_correct=False,
        seed=None,
        **kwargs,
    ):
        for role, backbone in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(backbone, keras.Model):
                raise TypeError(
                    f"`{role}` must be a keras-hub encoder Backbone (e.g. "
                    "keras_hub.models.ElectraBackbone) or a keras.Model mapping "
                    f"token ids to hidden states. Received: {type(backbone).__name__}"
                )
        if generator is discriminator:
            raise ValueError(
                "`generator` and `discriminator` must be two backbones (ELECTRA's "
                "generator is a smaller encoder that shares only the token "
                "embeddings). Build a second, smaller backbone for the generator."
            )
        for name, value in (
            ("generator_weight", generator_weight),
            ("discriminator_weight", discriminator_weight),
        ):
            if not _is_number(value) or not 0.0 <= float(value) < float("inf"):
                raise ValueError(
                    f"`{name}` must be a finite float >= 0 (ELECTRA uses "
                    f"generator_weight=1, discriminator_weight=50). Received: {name}={value!r}"
                )
        if not _is_number(temperature) or not 0.0 < float(temperature) < float("inf"):
            raise ValueError(
                "`temperature` must be a finite float > 0 (the generator's logits "
                f"are divided by it before sampling; ELECTRA uses 1.0). Received: "
                f"temperature={temperature!r}"
            )
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        source = _token_embedding(discriminator, "discriminator")
        target = _token_embedding(generator, "generator")
        if (target.input_dim, target.output_dim) != (source.input_dim, source.output_dim):
            raise ValueError(
                "The generator's and the discriminator's token embeddings must have "
                "the same vocabulary size and embedding size to be shared. Received: "
                f"generator {target.input_dim} x {target.output_dim}, discriminator "
                f"{source.input_dim} x {source.output_dim}. Build the generator with "
                "the discriminator's vocabulary and `embedding_dim` (e.g. "
                "kobjectives.backbones.build_backbone('electra_tiny', ..., "
                "hidden_dim=32, intermediate_dim=128, num_heads=1))."
            )
        if "loss_weights" in kwargs:
            raise ValueError(
                "ElectraPretrainer takes its loss weights as `generator_weight` and "
                "`discriminator_weight`, not `loss_weights`."
            )
        kwargs.setdefault("dtype", getattr(discriminator, "dtype_policy", None))
        super().__init__(
            loss_weights={"generator": generator_weight, "discriminator": discriminator_weight},
            **kwargs,
        )
        compat.share_embedding_table(source, target)
        self.generator = generator
        self.discriminator = discriminator
        self.temperature = float(temperature)
        self.disallow_correct = bool(disallow_correct)
        self.seed = int(seed)
        self.vocabulary_size = int(source.input_dim)

        # The generator's masked-LM head, by composition: keras-hub's
        # MaskedLMHead tied to the (shared) token embedding.
        self.generator_mlm = MaskedLanguageModel(generator, name="generator_mlm")
        hidden_dim = getattr(discriminator, "hidden_dim", None) or source.output_dim
        self.rtd_head = ReplacedTokenDetectionHead(
            int(hidden_dim),
            # float32 logits under mixed precision, like the masked-LM head.
            dtype=self.dtype_policy.variable_dtype,
            name="rtd_head",
        )
        self.rtd_head.build((None, None, int(hidden_dim)))
        # The sampling seed is `[seed, step]`: `step` counts the forward
        # passes; it is a weight of the model, so it is saved and restored
        # with it (a loaded model draws what the original would have drawn).
        self.sampling_step = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            aggregation="only_first_replica", name="sampling_step",
        )

        self.generator_accuracy = MaskedAccuracy(name="generator_accuracy")
        self.rtd_accuracy = RTDAccuracy()
        self.replaced_precision = ReplacedPrecision()
        self.replaced_recall = ReplacedRecall()
        self.built = generator.built and discriminator.built

    @property
    def generator_weight(self):
        """The weight of the masked-LM loss (`loss_weights["generator"]`)."""
        return self.loss_weights["generator"]

    @property
    def discriminator_weight(self):
        """The weight of the RTD loss (`loss_weights["discriminator"]`)."""
        return self.loss_weights["discriminator"]

    # --- forward --------------------------------------------------------

    def encode(self, inputs, training=False):
        """The discriminator's hidden states `[batch, length, hidden]`."""
        return run_backbone(self.discriminator, inputs, training=training)

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict):
            raise ValueError(
                "ElectraPretrainer takes a dict of the masker's outputs "
                f"{list(_REQUIRED_INPUTS)}. Received: {type(inputs).__name__}"
            )
        missing = [k for k in _REQUIRED_INPUTS if k not in inputs]
        if missing:
            raise ValueError(
                f"ElectraPretrainer needs inputs {missing}. Received keys: "
                f"{sorted(inputs)}. Feed x = kobjectives.layers.MaskedLMMasker(...)"
                "(token_ids) (all its outputs in x, no y)."
            )
        mlm_logits = self.generator_mlm(inputs, training=training)
        seed = self._next_seed()
        sampled = rtd_ops.gumbel_max_sample(
            mlm_logits, seed, self.temperature,
            disallowed_ids=inputs["mask_ids"] if self.disallow_correct else None,
        )
        corrupted, labels = rtd_ops.corrupt_tokens(
            inputs["token_ids"], inputs["mask_positions"], inputs["mask_ids"],
            inputs["mask_weights"], sampled,
        )
        hidden = run_backbone(
            self.discriminator, {**inputs, "token_ids": corrupted}, training=training
        )
        return {
            "mlm_logits": tf.cast(mlm_logits, tf.float32),
            "rtd_logits": tf.cast(self.rtd_head(hidden), tf.float32),
            "rtd_labels": labels,
            "corrupted_ids": corrupted,
            "sampled_ids": sampled,
        }

    def _next_seed(self):
        step = tf.convert_to_tensor(self.sampling_step)
        self.sampling_step.assign_add(1)
        return tf.stack([tf.constant(self.seed, tf.int64), step])

    def detector(self):
        """The discriminator and its head as a layer for inference and export.

        Called on `{"token_ids", "padding_mask"}` (plus `segment_ids`) it
        returns `sequence_output` `[batch, length, hidden]`, `rtd_logits` and
        `replaced_probability` `[batch, length]`. It shares this model's
        variables; `kobjectives.export.export_saved_model(model.detector(),
        ...)` writes a SavedModel without the generator.
        """
        return _ReplacedTokenDetector(self.discriminator, self.rtd_head, self.vocabulary_size)

    def serving_model(self):
        """What the SavedModel serves: `detector()` (no generator)."""
        return self.detector()

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        the discriminator's `sequence_output`, `rtd_logits` and
        `replaced_probability` per token."""
        return _detector_outputs(self.discriminator, self.rtd_head, inputs)

    # --- loss -------------------------------------------------------------

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{"generator": (cross-entropy per masked slot, mask_weights),
        "discriminator": (sigmoid cross-entropy per token, padding mask)}`:
        the base reduces, weights, sums and tracks them."""
        if sample_weight is not None:
            raise ValueError(
                "ElectraPretrainer weighs the masked positions by x['mask_weights'] "
                "and the tokens by x['padding_mask']; do not pass `sample_weight`."
            )
        mask_weights = tf.cast(x["mask_weights"], tf.float32)
        token_weights = tf.cast(x["padding_mask"], tf.float32)
        return {
            "generator": (
                masked_lm_ops.sparse_cross_entropy(x["mask_ids"], y_pred["mlm_logits"]),
                mask_weights,
            ),
            "discriminator": (
                rtd_ops.sigmoid_cross_entropy(y_pred["rtd_labels"], y_pred["rtd_logits"]),
                token_weights,
            ),
        }

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates `generator_accuracy` and the RTD metrics (the loss terms
        are tracked by the base); returns every metric's result."""
        token_weights = tf.cast(x["padding_mask"], tf.float32)
        self.generator_accuracy.update_state(
            x["mask_ids"], y_pred["mlm_logits"], tf.cast(x["mask_weights"], tf.float32)
        )
        for metric in (self.rtd_accuracy, self.replaced_precision, self.replaced_recall):
            metric.update_state(y_pred["rtd_labels"], y_pred["rtd_logits"], token_weights)
        return self.get_metrics_result()

    def get_config(self):
        config = super().get_config()
        weights = config.pop("loss_weights")  # saved as the constructor's arguments
        config.update(
            {
                "generator_weight": weights["generator"],
                "discriminator_weight": weights["discriminator"],
                "temperature": self.temperature,
                "disallow_correct": self.disallow_correct,
                "seed": self.seed,
            }
        )
        return config


def _is_number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float))
