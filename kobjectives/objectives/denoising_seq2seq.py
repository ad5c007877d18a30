"""`DenoisingSeq2Seq`: denoising pretraining of encoder-decoder backbones (T5
span corruption, BART noising) with teacher forcing."""

import keras
import keras_hub
import tensorflow as tf

from kobjectives.losses import MaskedLMLoss
from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity
from kobjectives.objectives.objective import Objective
from kobjectives.backbones import backbone_input_names

_REVERSIBLE_EMBEDDINGS = (
    keras.layers.ReversibleEmbedding,
    keras_hub.layers.ReversibleEmbedding,
)
BACKBONE_INPUTS = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)


class _VocabularyProjection(keras.layers.Layer):
    """Decoder states -> vocabulary logits through the (tied) token embedding,
    computed in float32 whatever the policy (the embedding's float32
    variables are read unrounded)."""

    def __init__(self, embedding, scale, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.embedding = embedding
        self.scale = float(scale)
        self.built = True

    def call(self, hidden):
        hidden = tf.cast(hidden, tf.float32) * self.scale
        if getattr(self.embedding, "tie_weights", True):
            kernel = tf.transpose(tf.cast(self.embedding.embeddings, tf.float32))
        else:
            kernel = tf.cast(self.embedding.reverse_embeddings, tf.float32)
        logits = tf.matmul(hidden, kernel)
        cap = getattr(self.embedding, "logit_soft_cap", None)
        if cap is not None:
            logits = tf.tanh(logits / cap) * cap
        return logits


@keras.saving.register_keras_serializable(package="kobjectives")
class DenoisingSeq2Seq(Objective):
    """Denoising sequence-to-sequence pretraining with teacher forcing.

    The encoder reads the corrupted sequence; the decoder reads the target
    shifted right by one (after `decoder_start_token_id`) and predicts every
    target token, the logits coming from the backbone's token embedding
    (tied, as keras-hub's `T5Seq2SeqLM` and `BartSeq2SeqLM`; T5's tied
    projection scales the decoder states by `hidden_dim ** -0.5`). The loss
    is the token cross-entropy averaged over the real target tokens (weighted
    by `target_padding_mask`), exact under `tf.distribute`
    (`kobjectives.losses.MaskedLMLoss`, i.e.
    `kobjectives.ops.global_weighted_mean`); logits and loss are float32
    under `mixed_bfloat16`.

    Feed it what `kobjectives.layers.SpanCorruption` emits (T5) or a BART
    noising of the sequence with the original as target:
    `x = {"encoder_token_ids", "encoder_padding_mask", "target_ids",
    "target_padding_mask"}`, `y = target_ids`,
    `sample_weight = target_padding_mask`. Instead of `target_ids`, `x` may
    carry the decoder inputs themselves (`decoder_token_ids`,
    `decoder_padding_mask`, already shifted).

    Args:
        backbone: a keras-hub seq2seq backbone (`T5Backbone`,
            `BartBackbone`) or any `keras.Model` taking `encoder_token_ids`,
            `encoder_padding_mask`, `decoder_token_ids`,
            `decoder_padding_mask` and returning a dict with
            `decoder_sequence_output` `[batch, target_length, hidden]`, with a
            `ReversibleEmbedding` as `token_embedding`.
        decoder_start_token_id: int, the first decoder input (T5: the padding
            id 0; BART: `</s>`). Defaults to 0.
        logit_scale: `"auto"` (`hidden_dim ** -0.5` for a `T5Backbone` with
            tied embeddings, else 1.0) or a float multiplying the decoder
            states before the projection.
        padding_token_id: int, the target padding id (used when
            `target_padding_mask` is not given). Defaults to 0.
        **kwargs: passed to `keras.Model`.

    Inputs: a dict with `encoder_token_ids`, `encoder_padding_mask`
        `[batch, source_length]` and either `target_ids` (+ optional
        `target_padding_mask`) or `decoder_token_ids` and
        `decoder_padding_mask` `[batch, target_length]`.

    Outputs: logits `[batch, target_length, vocabulary_size]`, float32.

    References:
        Raffel et al., 2020, "Exploring the Limits of Transfer Learning with
        a Unified Text-to-Text Transformer", https://arxiv.org/abs/1910.10683;
        Lewis et al., 2020, "BART: Denoising Sequence-to-Sequence
        Pre-training for Natural Language Generation, Translation, and
        Comprehension", https://arxiv.org/abs/1910.13461

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> from kobjectives.layers import SpanCorruption
    >>> backbone = keras_hub.models.T5Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32)
    >>> corrupt = SpanCorruption(
    ...     vocabulary_size=50, sequence_length=12, eos_token_id=3, seed=0)
    >>> ids = tf.random.stateless_uniform((4, 12), (0, 0), 5, 40, dtype=tf.int32)
    >>> x = corrupt(ids)  # in tf.data: corrupt.map_over(dataset)
    >>> model = DenoisingSeq2Seq(backbone)
    >>> model.compile()
    >>> history = model.fit(x, x["target_ids"], batch_size=4, epochs=1, verbose=0,
    ...                     sample_weight=tf.cast(x["target_padding_mask"], "float32"))
    >>> sorted(history.history)
    ['loss', 'perplexity', 'token_accuracy']
    >>> model(x).shape  # logits of the 4 target tokens
    TensorShape([4, 4, 50])
    """

    def __init__(
        self,
        backbone,
        decoder_start_token_id=0,
        logit_scale="auto",
        padding_token_id=0,
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras-hub seq2seq Backbone (T5Backbone, "
                f"BartBackbone) or a keras.Model. Received: {type(backbone).__name__}"
            )
        names = backbone_input_names(backbone)
        missing = [name for name in BACKBONE_INPUTS if name not in names]
        if missing:
            raise ValueError(
                "DenoisingSeq2Seq needs an encoder-decoder backbone taking "
                f"{list(BACKBONE_INPUTS)} (e.g. keras_hub.models.T5Backbone or "
                f"BartBackbone); {type(backbone).__name__} lacks {missing}. "
                "Use MaskedLanguageModel for encoders."
            )
        embedding = getattr(backbone, "token_embedding", None)
        if not isinstance(embedding, _REVERSIBLE_EMBEDDINGS):
            raise ValueError(
                "DenoisingSeq2Seq projects decoder states with the backbone's "
                "`token_embedding`, which must be a ReversibleEmbedding (as in "
                f"keras-hub's T5 and BART backbones); {type(backbone).__name__} "
                "has none."
            )
        for name, value in (("decoder_start_token_id", decoder_start_token_id),
                            ("padding_token_id", padding_token_id)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < embedding.input_dim:
                raise ValueError(
                    f"`{name}` must be an id in [0, {embedding.input_dim}). "
                    f"Received: {name}={value!r}"
                )
        if logit_scale == "auto":
            tied_t5 = isinstance(backbone, keras_hub.models.T5Backbone) and getattr(
                backbone, "tie_embedding_weights", True)
            logit_scale = backbone.hidden_dim ** -0.5 if tied_t5 else 1.0
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not logit_scale > 0:
            raise ValueError(
                f"`logit_scale` must be 'auto' or a positive float. Received: {logit_scale!r}"
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder_start_token_id = int(decoder_start_token_id)
        self.padding_token_id = int(padding_token_id)
        self.logit_scale = float(logit_scale)
        self.vocabulary_size = int(embedding.input_dim)
        self.projection = _VocabularyProjection(embedding, self.logit_scale, name="lm_projection")
        self.built = backbone.built

    def decoder_inputs(self, inputs):
        """`(decoder_token_ids, decoder_padding_mask)` int32: given, or the
        targets shifted right after `decoder_start_token_id`."""
        if "decoder_token_ids" in inputs:
            ids = tf.cast(inputs["decoder_token_ids"], tf.int32)
            if "decoder_padding_mask" not in inputs:
                raise ValueError(
                    "`decoder_token_ids` needs `decoder_padding_mask` beside it "
                    "(or pass `target_ids` and let the objective shift them)."
                )
            return ids, tf.cast(inputs["decoder_padding_mask"], tf.int32)
        if "target_ids" not in inputs:
            raise ValueError(
                "DenoisingSeq2Seq needs `target_ids` (or `decoder_token_ids` "
                "and `decoder_padding_mask`) in its inputs. Received keys: "
                f"{sorted(inputs)}"
            )
        targets = tf.cast(inputs["target_ids"], tf.int32)
        if "target_padding_mask" in inputs:
            mask = tf.cast(inputs["target_padding_mask"], tf.int32)
        else:
            mask = tf.cast(tf.not_equal(targets, self.padding_token_id), tf.int32)
        start = tf.fill([tf.shape(targets)[0], 1], self.decoder_start_token_id)
        ones = tf.ones_like(start)
        return (
            tf.concat([start, targets[:, :-1]], axis=1),
            tf.concat([ones, mask[:, :-1]], axis=1),
        )

    def run(self, inputs, training=False):
        """Runs the backbone: the backbone's output dict."""
        for name in ("encoder_token_ids", "encoder_padding_mask"):
            if name not in inputs:
                raise ValueError(
                    f"DenoisingSeq2Seq needs `{name}` in its inputs. Received "
                    f"keys: {sorted(inputs)}"
                )
        decoder_ids, decoder_mask = self.decoder_inputs(inputs)
        feed = {
            "encoder_token_ids": tf.cast(inputs["encoder_token_ids"], tf.int32),
            "encoder_padding_mask": tf.cast(inputs["encoder_padding_mask"], tf.int32),
            "decoder_token_ids": decoder_ids,
            "decoder_padding_mask": decoder_mask,
        }
        outputs = self.backbone(feed, training=training)
        if not isinstance(outputs, dict) or "decoder_sequence_output" not in outputs:
            raise ValueError(
                "The backbone must return a dict with 'decoder_sequence_output'."
            )
        return outputs

    def call(self, inputs, training=False):
        outputs = self.run(inputs, training=training)
        return self.projection(outputs["decoder_sequence_output"])

    def export_outputs(self, inputs):
        """Serving outputs: float32 `logits` `[batch, target_length, V]` and
        `encoder_sequence_output` `[batch, source_length, hidden]`, for
        `inputs` with `encoder_token_ids`, `encoder_padding_mask` and the
        decoder inputs (what `kobjectives.export.seq2seq.
        export_seq2seq_saved_model` serves)."""
        outputs = self.run(inputs, training=False)
        return {
            "logits": tf.cast(self.projection(outputs["decoder_sequence_output"]), tf.float32),
            "encoder_sequence_output": tf.cast(outputs["encoder_sequence_output"], tf.float32),
        }

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", **kwargs):
        """Configures training, with seq2seq defaults.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-4, weight decay
                0.01, clipnorm 1.0) or any `keras.Model.compile` optimizer.
            loss: `"auto"` (`kobjectives.losses.MaskedLMLoss`: the mean
                cross-entropy over real target tokens) or a loss.
            weighted_metrics: `"auto"` (`MaskedAccuracy(name=
                "token_accuracy")`, `Perplexity()`) or a list of metrics,
                which receive `target_padding_mask` as weights.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=5e-4, weight_decay=0.01, clipnorm=1.0)
        if loss == "auto":
            loss = MaskedLMLoss(name="seq2seq_loss")
        if weighted_metrics == "auto":
            weighted_metrics = [MaskedAccuracy(name="token_accuracy"), Perplexity()]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "decoder_start_token_id": self.decoder_start_token_id,
                "logit_scale": self.logit_scale,
                "padding_token_id": self.padding_token_id,
            }
        )
        return config

