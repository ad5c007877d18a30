"""`DenoisingSeq2Seq`: denoising pretraining of encoder-decoder backbones (T5
span corruption, BART noising) with teacher forcing."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.losses import MaskedLMLoss
from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity
from kobjectives.objectives.objective import Objective
from kobjectives.backbones import backbone_input_names
from kobjectives.ops.causal_lm import document_positions
from kobjectives.ops.causal_lm import segment_attention_mask

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
SEGMENT_INPUTS = ("encoder_segment_ids", "decoder_segment_ids")
"""The inputs of a packed row: the example of every encoder and target position."""


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

    **Packed rows.** With `encoder_segment_ids` and `decoder_segment_ids`
    in `x` (several examples per row, numbered 1..k, 0 on padding, as
    `kobjectives.data.seq2seq_sft.pack_seq2seq_examples` emits), the
    objective runs the backbone's own layers in its own order
    (`run_seq2seq_with_attention_masks`) with per-example encoder
    self-attention, causal decoder self-attention and cross-attention masks
    (`kobjectives.ops.segment_attention_mask`), shifts the targets right per
    example (each example's first decoder input is
    `decoder_start_token_id`) and, for BART's learned absolute positions,
    restarts positions at 0 per example (`kobjectives.ops.
    document_positions`); T5's relative position bias needs no change. Each
    example then gets the logits it has alone in its own row. Supported:
    `T5Backbone`, `BartBackbone`; at construction the re-wired layers are
    checked against the backbone's own call on one example per row, and
    packed rows are refused (a clear error at call time) for another
    backbone or a failed check (`packing_problem` says why). Without segment
    ids the backbone's own call runs, as always.

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
        `decoder_padding_mask` `[batch, target_length]`; for packed rows
        also `encoder_segment_ids` `[batch, source_length]` and
        `decoder_segment_ids` `[batch, target_length]`.

    Outputs: logits `[batch, target_length, vocabulary_size]`, float32.

    References:
        Raffel et al., 2020, "Exploring the Limits of Transfer Learning with
        a Unified Text-to-Text Transformer", https://arxiv.org/abs/1910.10683;
        Lewis et al., 2020, "BART: Denoising Sequence-to-Sequence
        Pre-training for Natural Language Generation, Translation, and
        Comprehension", https://arxiv.org/abs/1910.13461; packing: Krell et
        al., 2021, "Efficient Sequence Packing without Cross-contamination",
        https://arxiv.org/abs/2107.02027

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
        self.packing_problem = segment_attention_unsupported(backbone)
        if self.packing_problem is None:
            self.packing_problem = self._rewiring_problem()

    def decoder_inputs(self, inputs):
        """`(decoder_token_ids, decoder_padding_mask)` int32: given, or the
        targets shifted right after `decoder_start_token_id` (in a packed
        row, with `decoder_segment_ids`: shifted per example, each example's
        first decoder input the start id, the mask that of its targets)."""
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
        shifted = tf.concat([start, targets[:, :-1]], axis=1)
        segment_ids = inputs.get("decoder_segment_ids")
        if segment_ids is None:
            ones = tf.ones_like(start)
            return shifted, tf.concat([ones, mask[:, :-1]], axis=1)
        segment_ids = tf.cast(segment_ids, tf.int32)
        previous = tf.concat([tf.fill(tf.shape(start), -1), segment_ids[:, :-1]], axis=1)
        first = tf.not_equal(segment_ids, previous)  # each example's first position
        return tf.where(first, tf.broadcast_to(start, tf.shape(targets)), shifted), mask

    def run(self, inputs, training=False):
        """Runs the backbone: the backbone's output dict. With
        `encoder_segment_ids` and `decoder_segment_ids` in `inputs` (packed
        rows), the backbone's own layers under per-example masks
        (`run_seq2seq_with_attention_masks`); otherwise its own call."""
        for name in ("encoder_token_ids", "encoder_padding_mask"):
            if name not in inputs:
                raise ValueError(
                    f"DenoisingSeq2Seq needs `{name}` in its inputs. Received "
                    f"keys: {sorted(inputs)}"
                )
        given = [name for name in SEGMENT_INPUTS if inputs.get(name) is not None]
        if given:
            return self.run_packed(inputs, training=training)
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

    def run_packed(self, inputs, training=False):
        """Packed rows: every example attends only to itself (encoder
        self-attention, causal decoder self-attention, cross-attention:
        `kobjectives.ops.segment_attention_mask`) and BART's positions
        restart at 0 per example (`kobjectives.ops.document_positions`), so
        each example computes what it computes alone in its own row."""
        missing = [name for name in SEGMENT_INPUTS if inputs.get(name) is None]
        if missing:
            raise ValueError(
                f"Packed rows need both {list(SEGMENT_INPUTS)}; {missing} is missing "
                "(kobjectives.data.seq2seq_sft.pack_seq2seq_examples emits both)."
            )
        if self.packing_problem:
            raise ValueError(
                f"Packed rows (`encoder_segment_ids`) cannot be run on "
                f"{type(self.backbone).__name__}: {self.packing_problem} Use a "
                "T5Backbone or BartBackbone, or one example per row (no segment ids)."
            )
        encoder_ids = tf.cast(inputs["encoder_token_ids"], tf.int32)
        encoder_mask = tf.cast(inputs["encoder_padding_mask"], tf.bool)
        encoder_segments = tf.convert_to_tensor(inputs["encoder_segment_ids"])
        decoder_segments = tf.convert_to_tensor(inputs["decoder_segment_ids"])
        decoder_ids, decoder_mask = self.decoder_inputs(inputs)
        decoder_mask = tf.cast(decoder_mask, tf.bool)
        for name, segments, ids in (("encoder_segment_ids", encoder_segments, encoder_ids),
                                    ("decoder_segment_ids", decoder_segments, decoder_ids)):
            if not segments.shape.is_compatible_with(ids.shape):
                raise ValueError(
                    f"`{name}` {segments.shape} must have the shape of the "
                    f"{name.split('_')[0]} ids {ids.shape}: one example id per position."
                )
        encoder_positions = decoder_positions = None
        if isinstance(self.backbone, keras_hub.models.BartBackbone):
            encoder_positions = document_positions(encoder_segments, encoder_mask)
            decoder_positions = document_positions(decoder_segments, decoder_mask)
        return run_seq2seq_with_attention_masks(
            self.backbone, encoder_ids, decoder_ids,
            segment_attention_mask(encoder_segments, encoder_segments, encoder_mask, encoder_mask),
            segment_attention_mask(decoder_segments, decoder_segments, decoder_mask, decoder_mask,
                                   causal=True),
            segment_attention_mask(decoder_segments, encoder_segments, decoder_mask, encoder_mask),
            encoder_positions=encoder_positions, decoder_positions=decoder_positions,
            training=training)

    def _rewiring_problem(self):
        """None when the re-wired backbone, given one example per row,
        reproduces the backbone's own call; else why not (guards against a
        keras-hub version whose backbone graph has steps the re-wiring
        lacks)."""
        source = 8
        target = min(6, getattr(self.backbone, "max_sequence_length", None) or 6)
        source = min(source, getattr(self.backbone, "max_sequence_length", None) or source)
        rng = np.random.default_rng(1)
        x = {
            "encoder_token_ids": rng.integers(0, self.vocabulary_size, (2, source)).astype("int32"),
            "encoder_padding_mask": np.ones((2, source), "int32"),
            "decoder_token_ids": rng.integers(0, self.vocabulary_size, (2, target)).astype("int32"),
            "decoder_padding_mask": np.ones((2, target), "int32"),
        }
        x["encoder_padding_mask"][1, source // 2:] = 0
        x["decoder_padding_mask"][1, target // 2:] = 0
        packed = dict(x, encoder_segment_ids=x["encoder_padding_mask"],
                      decoder_segment_ids=x["decoder_padding_mask"])
        real = x["decoder_padding_mask"].astype(bool)
        with tf.init_scope():
            stock = tf.cast(self.backbone(x)["decoder_sequence_output"], tf.float32).numpy()
            saved, self.packing_problem = getattr(self, "packing_problem", None), None
            try:
                rewired = self.run_packed(packed)["decoder_sequence_output"]
            finally:
                self.packing_problem = saved
            rewired = tf.cast(rewired, tf.float32).numpy()
        scale = max(float(np.abs(stock[real]).max()), 1e-6)
        tolerance = 1e-5 if self.compute_dtype == "float32" else 2e-2
        if float(np.abs(stock[real] - rewired[real]).max()) > tolerance * scale:
            return (
                f"re-wiring {type(self.backbone).__name__}'s layers does not reproduce its "
                "own call on one example per row (this keras-hub version builds the "
                "backbone differently)."
            )
        return None

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



def segment_attention_unsupported(backbone):
    """Why `backbone` (a backbone or a backbone class) cannot run packed
    seq2seq rows with per-example attention masks, or None.

    Supported: keras-hub's `T5Backbone` (its `T5TransformerLayer` takes
    `[batch, query, key]` self- and cross-attention masks; the relative
    position bias depends only on the query-key offset, so positions need no
    restarting) and `BartBackbone` (its `TransformerEncoder` /
    `TransformerDecoder` take `attention_mask`, `decoder_attention_mask` and
    `encoder_attention_mask`; its learned `PositionEmbedding` takes
    per-example `positions`).

    Example:

    >>> import keras_hub
    >>> segment_attention_unsupported(keras_hub.models.T5Backbone) is None
    True
    """
    cls = backbone if isinstance(backbone, type) else type(backbone)
    if issubclass(cls, (keras_hub.models.T5Backbone, keras_hub.models.BartBackbone)):
        return None
    return (
        "only keras-hub's T5Backbone and BartBackbone are supported (their layers take "
        "[batch, query, key] attention masks and are run here in the backbone's own "
        f"order); {cls.__name__}'s graph cannot be given per-example masks."
    )


def run_seq2seq_with_attention_masks(backbone, encoder_token_ids, decoder_token_ids,
                                     encoder_attention_mask, decoder_attention_mask,
                                     cross_attention_mask, encoder_positions=None,
                                     decoder_positions=None, training=False):
    """Runs a keras-hub encoder-decoder backbone's own layers with custom
    attention masks (packed rows: `kobjectives.ops.segment_attention_mask`).

    The same layers, in the same order, as the backbone's functional graph;
    only the masks (and BART's positions) differ:

    - `T5Backbone`: token embedding, embedding dropout, the
      `encoder_transformer_layers` (the first builds the relative position
      bias with `encoder_attention_mask` folded in, the others reuse it),
      `encoder_layer_norm`, `encoder_dropout`; then the decoder the same way
      with `decoder_attention_mask` (intersected with the layer's causal
      mask) and `cross_attention_mask` over the encoder output,
      `decoder_layer_norm`, `decoder_dropout`.
    - `BartBackbone`: token + learned position embedding (at
      `encoder_positions`), add, layer norm, dropout, the encoder layers
      with `attention_mask`; the decoder the same way (at
      `decoder_positions`) with `decoder_attention_mask` (intersected with
      the causal mask) and `encoder_attention_mask=cross_attention_mask`.

    Args:
        backbone: a `keras_hub.models.T5Backbone` or `BartBackbone`.
        encoder_token_ids: int tensor `[batch, source_length]`.
        decoder_token_ids: int tensor `[batch, target_length]`.
        encoder_attention_mask: bool `[batch, source_length, source_length]`.
        decoder_attention_mask: bool `[batch, target_length, target_length]`.
        cross_attention_mask: bool `[batch, target_length, source_length]`.
            Every row of every mask must allow at least one key.
        encoder_positions: optional int `[batch, source_length]` position
            ids of BART's learned position embedding (e.g.
            `kobjectives.ops.document_positions`); None means
            `0..source_length-1`. Ignored by T5 (relative positions).
        decoder_positions: optional int `[batch, target_length]`, the same
            for the decoder.
        training: bool, dropout on or off.

    Returns:
        The backbone's output dict: `encoder_sequence_output` `[batch,
        source_length, hidden]` and `decoder_sequence_output` `[batch,
        target_length, hidden]`.

    Raises:
        ValueError: an unsupported backbone (the reason is named).

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> backbone = keras_hub.models.T5Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, dropout=0.0)
    >>> ids, mask = tf.constant([[5, 6, 7]]), tf.ones((1, 3, 3), tf.bool)
    >>> out = run_seq2seq_with_attention_masks(backbone, ids, ids, mask, mask, mask)
    >>> out["decoder_sequence_output"].shape
    TensorShape([1, 3, 8])
    """
    reason = segment_attention_unsupported(backbone)
    if reason:
        raise ValueError(f"Cannot pass attention masks to {type(backbone).__name__}: {reason}")
    if isinstance(backbone, keras_hub.models.T5Backbone):
        def stack(side, token_ids, attention_mask, **cross):
            x = getattr(backbone, f"{side}_embedding_dropout")(
                backbone.token_embedding(token_ids), training=training)
            position_bias = None
            for layer in getattr(backbone, f"{side}_transformer_layers"):
                x, position_bias = layer(
                    x, attention_mask=attention_mask, position_bias=position_bias,
                    use_causal_mask=side == "decoder", training=training, **cross)
            x = getattr(backbone, f"{side}_layer_norm")(x)
            return getattr(backbone, f"{side}_dropout")(x, training=training)

        encoder_output = stack("encoder", encoder_token_ids, encoder_attention_mask)
        decoder_output = stack(
            "decoder", decoder_token_ids, decoder_attention_mask,
            encoder_hidden_states=encoder_output, encoder_attention_mask=cross_attention_mask)
    else:
        def embed(token_ids, positions, side):
            tokens = backbone.token_embedding(token_ids)
            position_embedding = getattr(backbone, f"{side}_position_embedding")
            if positions is None:
                position_embeddings = position_embedding(tokens)
            else:
                position_embeddings = position_embedding(tokens, positions=positions)
            x = getattr(backbone, f"{side}_embeddings_add")((tokens, position_embeddings))
            x = getattr(backbone, f"{side}_embeddings_layer_norm")(x)
            return getattr(backbone, f"{side}_embeddings_dropout")(x, training=training)

        x = embed(encoder_token_ids, encoder_positions, "encoder")
        for layer in backbone.encoder_transformer_layers:
            x = layer(x, attention_mask=encoder_attention_mask, training=training)
        encoder_output = x
        x = embed(decoder_token_ids, decoder_positions, "decoder")
        for layer in backbone.decoder_transformer_layers:
            x = layer(
                decoder_sequence=x, encoder_sequence=encoder_output,
                decoder_attention_mask=decoder_attention_mask,
                encoder_attention_mask=cross_attention_mask, training=training)
        decoder_output = x
    return {"encoder_sequence_output": encoder_output, "decoder_sequence_output": decoder_output}
