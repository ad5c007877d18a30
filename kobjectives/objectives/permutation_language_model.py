"""`PermutationLanguageModel`: XLNet's two-stream permutation LM over
keras-hub's `XLNetBackbone`."""

import keras
import tensorflow as tf

from kobjectives.losses import MaskedLMLoss
from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity
from kobjectives.objectives.objective import Objective
from kobjectives.ops import permutation_lm

_REQUIRED_INPUTS = ("token_ids", "padding_mask", "perm_mask", "target_mapping")
_XLNET_PARTS = (
    "content_query_embedding",
    "attn_mask_layer",
    "seg_mat_layer",
    "transformer_layers",
)


@keras.saving.register_keras_serializable(package="kobjectives")
class PermutationLanguageModel(Objective):
    """Permutation language modeling (XLNet) with two-stream attention.

    Drives the layers of a keras-hub `XLNetBackbone` itself: the backbone's
    word embedding, its relative positional encoding, its segment matrix
    layer, its `mask_emb` (the initial query stream) and its `XLNetEncoder`
    layers, each called with both streams:

    - the **content stream** `h` starts at the word embeddings and attends
      with `content_mask` (a token sees what `perm_mask` allows, and itself);
    - the **query stream** `g` starts at the backbone's learned `mask_emb`
      in `num_predict` slots, is placed at the target positions by
      `target_mapping`, attends to the content stream with `query_mask`
      (what `perm_mask` allows: never its own token) and is mapped back to
      the slots;

    (`kobjectives.ops.permutation_lm.two_stream_attention_masks`; nobody
    attends to padding). The last query stream is projected to the
    vocabulary through the backbone's word embedding (tied, transposed) plus
    a bias, as XLNet's LM loss does. No attention or transformer code is
    written here: only keras-hub's layers are called.

    The backbone's own forward pass is not used for training because it has
    no query stream, and because in keras-hub 0.32 it mixes up the
    positional encodings and the padding masks of different rows of a batch
    (both are reshaped `[length, batch] -> [batch, length]` where a
    transpose is needed), which this driver avoids by building both itself.

    Feed it what `kobjectives.layers.PermutationLMMasker` emits:
    `x = {"token_ids", "padding_mask", "segment_ids" (optional, zeros when
    missing), "perm_mask", "target_mapping"}`, `y = target_ids`,
    `sample_weight = target_weights`. `compile()` defaults to
    `kobjectives.losses.MaskedLMLoss` (cross-entropy at the targets, the
    mean over real targets, exact under `tf.distribute`) with
    `MaskedAccuracy` and `Perplexity` as weighted metrics.

    Args:
        backbone: a `keras_hub.models.XLNetBackbone`.
        mask_token_id: int or None. The id of `[MASK]` at inference: the
            exported `plm_logits` predict the `[MASK]` positions from the
            other tokens. Training does not use it.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Inputs: a dict with `token_ids` int `[batch, length]`, `padding_mask`
        bool/int `[batch, length]`, `perm_mask` float `[batch, length,
        length]` (1 where token `i` may not see token `j`), `target_mapping`
        float `[batch, num_predict, length]`, optionally `segment_ids`.

    Outputs: logits `[batch, num_predict, vocabulary_size]`, float32 (also
        under `mixed_bfloat16`, where the backbone computes in bfloat16).

    Reference:
        Yang et al., 2019, "XLNet: Generalized Autoregressive Pretraining for
        Language Understanding", https://arxiv.org/abs/1906.08237

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> from kobjectives.layers import PermutationLMMasker
    >>> backbone = keras_hub.models.XLNetBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32)
    >>> masker = PermutationLMMasker(num_predict=2, unselectable_token_ids=(0,), seed=1)
    >>> ids = tf.random.stateless_uniform((4, 12), (0, 0), 5, 50, dtype=tf.int32)
    >>> m = masker(ids)  # in tf.data: masker.map_over(dataset)
    >>> x = {k: m[k] for k in ("token_ids", "padding_mask", "perm_mask", "target_mapping")}
    >>> model = PermutationLanguageModel(backbone)
    >>> model.compile(optimizer="adam")
    >>> history = model.fit(x, m["target_ids"], sample_weight=m["target_weights"],
    ...                     batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'masked_accuracy', 'perplexity']
    >>> model(x).shape  # logits of the 2 prediction slots
    TensorShape([4, 2, 50])
    """

    def __init__(self, backbone, mask_token_id=None, **kwargs):
        missing = [name for name in _XLNET_PARTS if not hasattr(backbone, name)]
        if not isinstance(backbone, keras.Model) or missing:
            raise TypeError(
                "`backbone` must be a keras_hub.models.XLNetBackbone (permutation "
                "LM drives its two-stream encoder layers). Received: "
                f"{type(backbone).__name__}"
                + (f", which lacks {missing}" if isinstance(backbone, keras.Model) else "")
                + ". Build one with kobjectives.backbones.build_backbone('xlnet_tiny', ...)."
            )
        if mask_token_id is not None and (
            isinstance(mask_token_id, bool)
            or not isinstance(mask_token_id, int)
            or not 0 <= mask_token_id < backbone.vocabulary_size
        ):
            raise ValueError(
                "`mask_token_id` must be None or an id in [0, vocabulary_size) = "
                f"[0, {backbone.vocabulary_size}). Received: mask_token_id={mask_token_id!r}."
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.mask_token_id = mask_token_id
        self.vocabulary_size = int(backbone.vocabulary_size)
        self.hidden_dim = int(backbone.hidden_dim)
        self.lm_bias = self.add_weight(
            shape=(self.vocabulary_size,),
            initializer="zeros",
            dtype=self.dtype_policy.variable_dtype,
            name="lm_bias",
        )
        self.built = backbone.built

    # The backbone's pieces (keras-hub XLNet).
    @property
    def _embedding(self):
        return self.backbone.content_query_embedding

    @property
    def _output_dropout(self):
        return self.backbone.get_layer("dropout")

    def _relative_positions(self, token_ids):
        """`[batch, 2 * length, hidden]` sinusoidal relative encodings, the
        same for every row (built for one row and broadcast)."""
        length = tf.shape(token_ids)[1]
        encoding = self._embedding.relative_positional_encoding(length, length, bsz=1)
        encoding = tf.transpose(encoding, [1, 0, 2])  # [1, 2L, H]
        shape = tf.stack([tf.shape(token_ids)[0], 2 * length, self.hidden_dim])
        return tf.broadcast_to(encoding, shape)

    def _features(self, inputs):
        missing = [name for name in _REQUIRED_INPUTS if name not in inputs]
        if missing:
            raise ValueError(
                f"PermutationLanguageModel needs inputs {missing} (emitted by "
                "kobjectives.layers.PermutationLMMasker). Received keys: "
                f"{sorted(inputs)}."
            )
        token_ids = tf.convert_to_tensor(inputs["token_ids"])
        segment_ids = inputs.get("segment_ids")
        segment_ids = tf.zeros_like(token_ids) if segment_ids is None else segment_ids
        return token_ids, inputs["padding_mask"], segment_ids

    def streams(self, token_ids, padding_mask, segment_ids, perm_mask, target_mapping,
                training=False):
        """Runs XLNet's two streams.

        Returns:
            `(content, query)`: `[batch, length, hidden]` and
            `[batch, num_predict, hidden]` final states.
        """
        dtype = self.backbone.compute_dtype
        embedding = self._embedding
        content = embedding.dropout_layer(embedding.word_embed(token_ids), training=training)
        positions = embedding.dropout_layer(
            self._relative_positions(token_ids), training=training
        )
        segments = self.backbone.seg_mat_layer(tf.cast(segment_ids, "int32"))
        content_mask, query_mask = permutation_lm.two_stream_attention_masks(
            perm_mask, padding_mask
        )
        target_mapping = tf.cast(target_mapping, dtype)
        mask_emb = tf.cast(self.backbone.attn_mask_layer.mask_emb, dtype)
        query = tf.broadcast_to(
            mask_emb,
            tf.stack([tf.shape(target_mapping)[0], tf.shape(target_mapping)[1], self.hidden_dim]),
        )
        query = embedding.dropout_layer(query, training=training)
        for layer in self.backbone.transformer_layers:
            content, query = layer(
                output_content=content,
                attn_mask_content=content_mask,
                attn_mask_query=query_mask,
                pos_emb=positions,
                seg_mat=segments,
                output_query=query,
                target_mapping=target_mapping,
                training=training,
            )
        dropout = self._output_dropout
        return dropout(content, training=training), dropout(query, training=training)

    def encode(self, inputs, training=False):
        """The content stream with full (padding-masked) attention:
        `[batch, length, hidden]`, the representation for downstream use."""
        token_ids, padding_mask, segment_ids = self._features(
            {"perm_mask": None, "target_mapping": None, **inputs}
        )
        return self._content_only(token_ids, padding_mask, segment_ids, training)

    def _content_only(self, token_ids, padding_mask, segment_ids, training=False):
        embedding = self._embedding
        content = embedding.dropout_layer(embedding.word_embed(token_ids), training=training)
        positions = embedding.dropout_layer(
            self._relative_positions(token_ids), training=training
        )
        segments = self.backbone.seg_mat_layer(tf.cast(segment_ids, "int32"))
        length = tf.shape(token_ids)[1]
        perm_mask = tf.zeros(tf.stack([tf.shape(token_ids)[0], length, length]))
        content_mask, query_mask = permutation_lm.two_stream_attention_masks(
            perm_mask, padding_mask
        )
        for layer in self.backbone.transformer_layers:
            content, _ = layer(
                output_content=content,
                attn_mask_content=content_mask,
                attn_mask_query=query_mask,
                pos_emb=positions,
                seg_mat=segments,
                training=training,
            )
        return self._output_dropout(content, training=training)

    def logits(self, query):
        """Vocabulary logits of query states, through the tied word
        embedding, in float32: `[..., vocabulary_size]`."""
        table = self._embedding.word_embed.embeddings
        logits = tf.matmul(query, tf.cast(table, query.dtype), transpose_b=True)
        return tf.cast(logits, "float32") + tf.cast(self.lm_bias, "float32")

    def call(self, inputs, training=False):
        token_ids, padding_mask, segment_ids = self._features(inputs)
        _, query = self.streams(
            token_ids, padding_mask, segment_ids, inputs["perm_mask"],
            inputs["target_mapping"], training=training,
        )
        return self.logits(query)

    def export_outputs(self, inputs):
        """Serving outputs: `sequence_output` (the content stream, full
        attention) and, with a `mask_token_id`, `plm_logits`
        `[batch, length, vocabulary]`: at each `[MASK]` position the
        prediction from the other (non-`[MASK]`) tokens. Logits at other
        positions are not predictions (their content is visible)."""
        token_ids, padding_mask, segment_ids = self._features(
            {"perm_mask": None, "target_mapping": None, **inputs}
        )
        outputs = {
            "sequence_output": self._content_only(token_ids, padding_mask, segment_ids)
        }
        if self.mask_token_id is not None:
            hidden = tf.equal(token_ids, tf.cast(self.mask_token_id, token_ids.dtype))
            perm_mask = permutation_lm.inference_permutation_mask(hidden)
            length = tf.shape(token_ids)[1]
            mapping = tf.broadcast_to(
                tf.eye(length)[None], tf.stack([tf.shape(token_ids)[0], length, length])
            )
            _, query = self.streams(token_ids, padding_mask, segment_ids, perm_mask, mapping)
            outputs["plm_logits"] = self.logits(query)
        return outputs

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", **kwargs):
        """Configures training, with permutation-LM defaults.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-4, weight decay
                0.01, clipnorm 1.0) or any `keras.Model.compile` optimizer.
            loss: `"auto"` (`kobjectives.losses.MaskedLMLoss()`: the mean
                cross-entropy over real targets) or a loss.
            weighted_metrics: `"auto"` (`MaskedAccuracy`, `Perplexity`) or a
                list of metrics, which receive `target_weights`.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
        """
        if loss == "auto":
            loss = MaskedLMLoss()
        if weighted_metrics == "auto":
            weighted_metrics = [MaskedAccuracy(), Perplexity()]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"mask_token_id": self.mask_token_id})
        return config
