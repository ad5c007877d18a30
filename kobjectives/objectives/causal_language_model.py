"""`CausalLanguageModel`: next-token prediction over a keras-hub decoder backbone."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.metrics.causal_lm_metrics import TokenAccuracy
from kobjectives.metrics.causal_lm_metrics import TokenPerplexity
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.ops.causal_lm import causal_lm_targets
from kobjectives.ops.causal_lm import document_causal_mask
from kobjectives.ops.causal_lm import document_positions
from kobjectives.ops.chunked_cross_entropy import DEFAULT_CHUNK_SIZE
from kobjectives.ops.chunked_cross_entropy import _check_chunk_size
from kobjectives.ops.chunked_cross_entropy import _check_label_smoothing
from kobjectives.ops.chunked_cross_entropy import chunked_token_cross_entropy
from kobjectives.ops.reduction import global_weighted_mean
from kobjectives.ops.sft import global_example_mean

LOSS_NORMALIZATIONS = ("token", "example")

_REVERSIBLE_EMBEDDINGS = (
    keras.layers.ReversibleEmbedding,
    keras_hub.layers.ReversibleEmbedding,
)


@keras.saving.register_keras_serializable(package="kobjectives")
class CausalLanguageModel(Objective):
    """Causal (next-token) language modeling over a decoder backbone.

    Runs the backbone and scores every position's prediction of the next
    token with `kobjectives.ops.chunked_token_cross_entropy`: the logits
    `hidden @ kernel` are computed `chunk_size` positions at a time in the
    forward pass and recomputed in the backward pass, so the full
    `[batch, length, vocabulary]` logits are never held. The loss is the
    weighted mean over the targets, exact under `tf.distribute`
    (`kobjectives.ops.global_weighted_mean`) and accumulated in float32
    under `mixed_bfloat16`.

    The output projection is the backbone's `ReversibleEmbedding`
    (`backbone.token_embedding`): its transposed `embeddings` when tied
    (GPT-2, Gemma, Llama by default), its `reverse_embeddings` when untied
    (Llama's `tie_word_embeddings=False`). A backbone without one gets its
    own `[hidden_dim, vocabulary_size]` kernel.

    **Targets.** Feed `x` as `kobjectives.layers.SequencePacker` emits it:
    `{"token_ids", "padding_mask", "segment_ids"}` (no `y`): position `t`
    predicts token `t + 1` when both are real tokens of the same document
    (`kobjectives.ops.causal_lm_targets`), so the loss is reset at document
    boundaries inside a packed window. Or pass `y` (labels aligned with the
    positions, ids in the vocabulary) and `sample_weight`. For supervised
    fine-tuning, `kobjectives.data.sft_dataset` yields `(x, None,
    sample_weight)` with weight 1 on the completion targets only.

    **Attention at document boundaries.** With
    `reset_attention_at_boundaries=True` and `segment_ids` in the inputs,
    attention is reset too: the objective runs the keras-hub backbone's own
    sublayers (its token and position embeddings, its `transformer_layers`,
    its final norm; no layer is re-implemented) and gives every decoder
    block the block-diagonal causal mask of
    `kobjectives.ops.document_causal_mask` as its `decoder_attention_mask`:
    position `t` attends to `s` iff `s <= t`, both are real tokens and
    `segment_ids[s] == segment_ids[t]`. With `restart_positions=True` (the
    default) a backbone with learned absolute positions (GPT-2) also gets
    positions restarting at 0 at each document
    (`kobjectives.ops.document_positions`), so every document in a packed
    window is encoded exactly as if it were alone, as serving sees it;
    Llama's rotary positions are relative, so with the block mask nothing
    needs restarting (the argument has no effect there). Supported:
    `GPT2Backbone` and `LlamaBackbone` (their decoder blocks take a
    `decoder_attention_mask`). `GemmaBackbone` is refused with the reason:
    keras-hub's `GemmaDecoderBlock.call` takes only a `padding_mask` and
    builds its causal mask inside, so a per-document mask cannot reach its
    attention without re-implementing the block. Inputs without
    `segment_ids` (serving, `export_outputs`) are one document per row and
    run the stock backbone call, which the re-wired path equals exactly
    for a single document (checked at construction).

    The default, `reset_attention_at_boundaries=False`, keeps the stock
    backbone call: inside a packed window a token may attend to the end of
    the previous document (GPT-2/GPT-3-style pretraining, documents joined
    by an end token sharing the context); only the loss is reset.

    Args:
        backbone: a causal keras-hub `Backbone` (`GPT2Backbone`,
            `LlamaBackbone`, `GemmaBackbone`, ...) or any `keras.Model`
            mapping `{"token_ids", "padding_mask"}` to `[batch, length,
            hidden_dim]` states (or a dict with `"sequence_output"`).
        chunk_size: int, positions whose logits exist at once. Defaults to
            1024.
        label_smoothing: float in `[0, 1)`. Defaults to 0.
        vocabulary_size: int. Needed only for a backbone without a
            `ReversibleEmbedding` `token_embedding`.
        hidden_dim: int. Needed only for a backbone without a
            `ReversibleEmbedding` `token_embedding`.
        check_causal: bool. At construction, run the backbone once on a
            short sequence and raise if a position's state depends on later
            tokens (a bidirectional encoder would "predict" by copying).
            Defaults to True.
        reset_attention_at_boundaries: bool. When the inputs carry
            `segment_ids`, give the decoder a block-diagonal causal
            attention mask so no token attends across a document boundary
            (see above). Defaults to False (the stock backbone call; only
            the loss is reset).
        restart_positions: bool. With `reset_attention_at_boundaries`,
            restart learned absolute positions (GPT-2) at 0 at each document.
            Defaults to True. No effect for rotary positions (Llama).
        loss_normalization: `"token"` (the default): the weighted mean over
            all target tokens of the global batch
            (`kobjectives.ops.global_weighted_mean`), so a long example
            counts more than a short one. `"example"`: the mean over the
            examples of each example's weighted mean token loss
            (`kobjectives.ops.global_example_mean`), every example counting
            alike; in a packed window an example is a document (a run of
            equal `segment_ids`), not a row; without `segment_ids` it is a
            row. Both are exact under `tf.distribute`. The `perplexity` and
            `next_token_accuracy` metrics stay per token.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Inputs: a dict with `token_ids` int `[batch, length]`, `padding_mask`
        bool/int `[batch, length]`, optionally `segment_ids` int
        `[batch, length]` (document index; equal ids = same document).

    Outputs: the hidden states `[batch, length, hidden_dim]` (in the compute
        dtype). `logits(hidden)` projects them to the vocabulary;
        `export_outputs` gives `logits` and `next_token_logits` for serving.

    Raises:
        TypeError: `backbone` is not a `keras.Model`.
        ValueError: bad `chunk_size` or `label_smoothing`, unknown
            vocabulary/hidden size, a soft-capped embedding, or (with
            `check_causal`) a non-causal backbone; with
            `reset_attention_at_boundaries`, a backbone other than
            `GPT2Backbone` / `LlamaBackbone`; an unknown
            `loss_normalization`.

    Reference:
        Radford et al., 2018, "Improving Language Understanding by
        Generative Pre-Training"; Radford et al., 2019, "Language Models
        are Unsupervised Multitask Learners". Chunked loss: Wijmans et al.,
        2024, "Cut Your Losses in Large-Vocabulary Language Models",
        https://arxiv.org/abs/2411.09009. Per-document attention in packed
        windows: Krell et al., 2021, "Efficient Sequence Packing without
        Cross-contamination", https://arxiv.org/abs/2107.02027

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> from kobjectives.layers import SequencePacker
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> packer = SequencePacker(sequence_length=8, end_token_id=2, start_token_id=1)
    >>> docs = tf.ragged.constant([[5 + i] * (1 + i % 3) for i in range(8)])
    >>> x = packer(docs)  # 8 documents in 4 windows; in tf.data: .map(packer).unbatch()
    >>> x["token_ids"].numpy().tolist()[0]
    [1, 5, 2, 1, 6, 6, 2, 1]
    >>> x["segment_ids"].numpy().tolist()[0]
    [0, 0, 0, 1, 1, 1, 1, 2]
    >>> model = CausalLanguageModel(
    ...     backbone, chunk_size=4, reset_attention_at_boundaries=True)
    >>> model.compile(jit_compile=True)
    >>> history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'next_token_accuracy', 'perplexity']
    >>> model(x).shape  # hidden states; `model.logits(hidden)` projects them
    TensorShape([4, 8, 16])
    """

    def __init__(
        self,
        backbone,
        chunk_size=DEFAULT_CHUNK_SIZE,
        label_smoothing=0.0,
        vocabulary_size=None,
        hidden_dim=None,
        check_causal=True,
        reset_attention_at_boundaries=False,
        restart_positions=True,
        loss_normalization="token",
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a causal keras-hub Backbone (e.g. "
                "GPT2Backbone, LlamaBackbone) or a keras.Model mapping token ids "
                f"and a padding mask to hidden states. Received: {type(backbone).__name__}"
            )
        _check_chunk_size(chunk_size)
        _check_label_smoothing(label_smoothing)
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"`loss_normalization` must be one of {LOSS_NORMALIZATIONS}: 'token' "
                "averages over target tokens, 'example' over examples (packed "
                f"documents). Received: loss_normalization={loss_normalization!r}"
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.chunk_size = int(chunk_size)
        self.label_smoothing = float(label_smoothing)
        self.check_causal = bool(check_causal)
        self.reset_attention_at_boundaries = bool(reset_attention_at_boundaries)
        self.restart_positions = bool(restart_positions)
        self.loss_normalization = loss_normalization
        if self.reset_attention_at_boundaries:
            reason = document_attention_unsupported(backbone)
            if reason:
                raise ValueError(
                    "reset_attention_at_boundaries=True cannot be applied to "
                    f"{type(backbone).__name__}: {reason} Use a GPT2Backbone or "
                    "LlamaBackbone, or reset_attention_at_boundaries=False (the loss "
                    "is still reset at document boundaries)."
                )

        embedding = getattr(backbone, "token_embedding", None)
        if not isinstance(embedding, _REVERSIBLE_EMBEDDINGS):
            embedding = None
        if embedding is not None and getattr(embedding, "logit_soft_cap", None):
            raise ValueError(
                "The backbone's token embedding soft-caps its logits "
                f"(logit_soft_cap={embedding.logit_soft_cap}), which the chunked "
                "loss does not apply. Build the backbone without a final logit "
                "soft cap."
            )
        vocabulary_size = vocabulary_size or getattr(backbone, "vocabulary_size", None)
        if vocabulary_size is None and embedding is not None:
            vocabulary_size = embedding.input_dim
        hidden_dim = hidden_dim or getattr(backbone, "hidden_dim", None)
        if hidden_dim is None and embedding is not None:
            hidden_dim = embedding.output_dim
        if vocabulary_size is None or hidden_dim is None:
            raise ValueError(
                "Cannot tell the backbone's vocabulary size and hidden size. "
                "Pass `vocabulary_size=` and `hidden_dim=` to CausalLanguageModel."
            )
        self.vocabulary_size = int(vocabulary_size)
        self.hidden_dim = int(hidden_dim)
        self.lm_kernel = None
        if embedding is None:
            self.lm_kernel = self.add_weight(
                shape=(self.hidden_dim, self.vocabulary_size),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                name="lm_kernel",
            )
        self.perplexity = TokenPerplexity(name="perplexity")
        self.next_token_accuracy = TokenAccuracy(name="next_token_accuracy")
        self.built = backbone.built
        if self.check_causal:
            self._assert_causal()
        if self.reset_attention_at_boundaries:
            self._assert_rewiring_matches_backbone()

    # --- forward ---------------------------------------------------------

    def kernel(self):
        """The `[hidden_dim, vocabulary_size]` output projection."""
        if self.lm_kernel is not None:
            return self.lm_kernel
        embedding = self.backbone.token_embedding
        if getattr(embedding, "tie_weights", True):
            return tf.transpose(tf.convert_to_tensor(embedding.embeddings))
        return tf.convert_to_tensor(embedding.reverse_embeddings)

    def encode(self, inputs, training=False):
        """Runs the backbone: `[batch, length, hidden_dim]` hidden states.

        With `reset_attention_at_boundaries` and `segment_ids` in `inputs`,
        attention (and, for GPT-2, positions) restart at each document;
        otherwise the stock backbone call."""
        if self.reset_attention_at_boundaries and inputs.get("segment_ids") is not None:
            return self.encode_documents(inputs, training=training)
        return run_backbone(self.backbone, inputs, training=training)

    def encode_documents(self, inputs, training=False):
        """The backbone's own sublayers under the per-document causal mask
        of `kobjectives.ops.document_causal_mask`: `[batch, length,
        hidden_dim]` hidden states."""
        token_ids = tf.convert_to_tensor(inputs["token_ids"])
        padding_mask = inputs.get("padding_mask")
        segment_ids = inputs.get("segment_ids")
        if segment_ids is None:
            segment_ids = tf.zeros_like(token_ids)
        segment_ids = tf.convert_to_tensor(segment_ids)
        if not segment_ids.shape.is_compatible_with(token_ids.shape):
            raise ValueError(
                f"`segment_ids` {segment_ids.shape} must have the shape of `token_ids` "
                f"{token_ids.shape}: one document id per position (as "
                "kobjectives.layers.SequencePacker emits)."
            )
        attention_mask = document_causal_mask(segment_ids, padding_mask)
        positions = None
        if self.restart_positions and isinstance(self.backbone, keras_hub.models.GPT2Backbone):
            positions = document_positions(segment_ids, padding_mask)
        return run_decoder_with_attention_mask(
            self.backbone, token_ids, attention_mask, positions=positions, training=training
        )

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ValueError(
                "CausalLanguageModel takes a dict with `token_ids` and "
                "`padding_mask` (and optionally `segment_ids`), as "
                "kobjectives.layers.SequencePacker emits. Received: "
                f"{sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__}"
            )
        return self.encode(inputs, training=training)

    def logits(self, hidden):
        """Full logits `hidden @ kernel`, float32 `[..., vocabulary_size]`
        (for inference; training never materializes them)."""
        kernel = tf.cast(self.kernel(), hidden.dtype)
        return tf.cast(tf.matmul(hidden, kernel), tf.float32)

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `hidden_states` `[B, L, H]`, `logits` `[B, L, V]` (position `t`
        predicts token `t + 1`) and `next_token_logits` `[B, V]`, the
        prediction after each row's last real token."""
        hidden = self.encode(inputs, training=False)
        logits = self.logits(hidden)
        mask = tf.cast(inputs["padding_mask"], tf.int32)
        last = tf.maximum(tf.reduce_sum(mask, axis=-1) - 1, 0)
        return {
            "hidden_states": hidden,
            "logits": logits,
            "next_token_logits": tf.gather(logits, last, axis=1, batch_dims=1),
        }

    # --- loss --------------------------------------------------------------

    def targets(self, x, y=None, sample_weight=None):
        """`(labels, weights)`: next-token targets from `x` (reset at document
        boundaries), or `y` / `sample_weight` when given."""
        if y is None:
            labels, weights = causal_lm_targets(
                x["token_ids"], x.get("padding_mask"), x.get("segment_ids")
            )
            if sample_weight is not None:
                weights = weights * _broadcast_weight(sample_weight, weights)
            return labels, weights
        labels = tf.cast(y, tf.int32)
        if sample_weight is None:
            weights = tf.ones_like(labels, tf.float32)
            if "padding_mask" in x:
                weights = weights * tf.cast(x["padding_mask"], tf.float32)
        else:
            weights = _broadcast_weight(sample_weight, labels)
        return labels, weights

    def token_losses(self, hidden, labels):
        """`(losses, correct)` per position, float32, in chunks."""
        return chunked_token_cross_entropy(
            hidden,
            self.kernel(),
            labels,
            chunk_size=self.chunk_size,
            label_smoothing=self.label_smoothing,
            return_correct=True,
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, weights = self.targets(x, y, sample_weight)
        losses, correct = self.token_losses(y_pred, labels)
        if self.loss_normalization == "example":
            loss = global_example_mean(losses, weights, x.get("segment_ids"))
        else:
            loss = global_weighted_mean(losses, weights)
        self.perplexity.update_state(losses, weights)
        self.next_token_accuracy.update_state(correct, weights)
        if self.losses:
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses]) / replicas
        return loss

    def compile(self, optimizer="auto", **kwargs):
        """Configures training; the chunked next-token loss, `perplexity`
        and `next_token_accuracy` are built in.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 1e-3, weight decay
                0.01, clipnorm 1.0) or any `keras.Model.compile` optimizer.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
                `loss` is not accepted: the objective owns its loss.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "CausalLanguageModel computes its own loss "
                "(kobjectives.ops.chunked_cross_entropy); do not pass `loss` to compile()."
            )
        kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01, clipnorm=1.0)
        super().compile(optimizer=optimizer, **kwargs)

    # --- checks and config --------------------------------------------------

    def _assert_causal(self):
        """Raises when the backbone's state at t changes with tokens after t."""
        length = min(8, getattr(self.backbone, "max_sequence_length", None) or 8)
        half = length // 2
        rng = np.random.default_rng(0)
        ids = rng.integers(0, self.vocabulary_size, (1, length)).astype("int32")
        changed = ids.copy()
        changed[:, half:] = (changed[:, half:] + 1) % self.vocabulary_size
        mask = np.ones((1, length), "int32")
        with tf.init_scope():
            a = tf.cast(self.encode({"token_ids": ids, "padding_mask": mask}), tf.float32)
            b = tf.cast(self.encode({"token_ids": changed, "padding_mask": mask}), tf.float32)
            a, b = np.asarray(a)[:, :half], np.asarray(b)[:, :half]
        scale = max(float(np.abs(a).max()), 1e-6)
        if float(np.abs(a - b).max()) > 1e-5 * scale:
            raise ValueError(
                f"The backbone ({type(self.backbone).__name__}) is not causal: its "
                "state at a position changes when later tokens change, so it could "
                "read the token it must predict. Use a decoder backbone such as "
                "keras_hub.models.GPT2Backbone or LlamaBackbone (or pass "
                "check_causal=False if you are sure)."
            )

    def _assert_rewiring_matches_backbone(self):
        """Raises unless the re-wired decoder, given one document per row,
        reproduces the stock backbone call (guards against a keras-hub
        version whose backbone graph has steps the re-wiring lacks)."""
        length = min(8, getattr(self.backbone, "max_sequence_length", None) or 8)
        rng = np.random.default_rng(1)
        ids = rng.integers(0, self.vocabulary_size, (2, length)).astype("int32")
        mask = np.ones((2, length), "int32")
        mask[1, length // 2:] = 0
        inputs = {"token_ids": ids, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}
        with tf.init_scope():
            stock = tf.cast(run_backbone(self.backbone, inputs), tf.float32).numpy()
            rewired = tf.cast(self.encode_documents(inputs), tf.float32).numpy()
        real = mask.astype(bool)
        scale = max(float(np.abs(stock[real]).max()), 1e-6)
        tolerance = 1e-5 if self.compute_dtype == "float32" else 2e-2
        if float(np.abs(stock[real] - rewired[real]).max()) > tolerance * scale:
            raise ValueError(
                f"reset_attention_at_boundaries=True: re-wiring {type(self.backbone).__name__}'s "
                "layers does not reproduce its own call on a single document (this "
                "keras-hub version builds the backbone differently). Use "
                "reset_attention_at_boundaries=False."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reset_attention_at_boundaries": self.reset_attention_at_boundaries,
                "restart_positions": self.restart_positions,
                "loss_normalization": self.loss_normalization,
                "chunk_size": self.chunk_size,
                "label_smoothing": self.label_smoothing,
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "check_causal": self.check_causal,
            }
        )
        return config


def _broadcast_weight(sample_weight, like):
    weight = tf.cast(sample_weight, tf.float32)
    if weight.shape.rank == 1 and like.shape.rank == 2:
        weight = weight[:, None]
    return tf.broadcast_to(weight, tf.shape(like))


_GEMMA_REASON = (
    "keras-hub's GemmaDecoderBlock.call takes only a `padding_mask` and builds its "
    "causal mask inside, so a per-document attention mask cannot reach its attention "
    "without re-implementing the block."
)


def document_attention_unsupported(backbone):
    """Why `backbone` (a backbone or a backbone class) cannot take a
    per-document attention mask, or None.

    Supported: keras-hub's `GPT2Backbone` and `LlamaBackbone`, whose decoder
    blocks (`TransformerDecoder`, `LlamaTransformerDecoder`) accept a
    `decoder_attention_mask`.
    """
    cls = backbone if isinstance(backbone, type) else type(backbone)
    if issubclass(cls, keras_hub.models.GemmaBackbone):
        return _GEMMA_REASON
    if issubclass(cls, (keras_hub.models.GPT2Backbone, keras_hub.models.LlamaBackbone)):
        return None
    return (
        "only keras-hub's GPT2Backbone and LlamaBackbone are supported (their decoder "
        "blocks accept a `decoder_attention_mask`; other models' graphs do not expose "
        "one)."
    )


def run_decoder_with_attention_mask(backbone, token_ids, attention_mask, positions=None,
                                    training=False):
    """Runs a keras-hub decoder backbone's own layers with a custom
    self-attention mask.

    The same layers, in the same order, as the backbone's functional graph
    (`GPT2Backbone`: token + position embedding, dropout, the
    `transformer_layers`, `layer_norm`; `LlamaBackbone`: token embedding,
    the `transformer_layers`, `layer_norm`), except that each decoder block
    gets `decoder_attention_mask=attention_mask` instead of the padding
    mask (the block still intersects it with its causal mask).

    Args:
        backbone: a `keras_hub.models.GPT2Backbone` or `LlamaBackbone`.
        token_ids: int tensor `[batch, length]`.
        attention_mask: bool tensor `[batch, length, length]`, `[b, t, s]`
            true when query `t` may attend to key `s` (e.g.
            `kobjectives.ops.document_causal_mask`). Every row must allow at
            least one key.
        positions: optional int tensor `[batch, length]` of position ids for
            GPT-2's learned position embedding (e.g.
            `kobjectives.ops.document_positions`); None means `0..length-1`.
            Ignored by Llama (rotary, relative positions).
        training: bool, dropout on or off.

    Returns:
        `[batch, length, hidden_dim]` hidden states (the backbone's
        `sequence_output`).

    Raises:
        ValueError: an unsupported backbone (the reason is named).
    """
    reason = document_attention_unsupported(backbone)
    if reason:
        raise ValueError(f"Cannot pass an attention mask to {type(backbone).__name__}: {reason}")
    x = backbone.token_embedding(token_ids)
    if isinstance(backbone, keras_hub.models.GPT2Backbone):
        if positions is None:
            position_embeddings = backbone.position_embedding(x)
        else:
            position_embeddings = backbone.position_embedding(x, positions=positions)
        x = backbone.embeddings_add((x, position_embeddings))
        x = backbone.embeddings_dropout(x, training=training)
    for layer in backbone.transformer_layers:
        x = layer(x, decoder_attention_mask=attention_mask, training=training)
    return backbone.layer_norm(x)
