"""`ContrastiveEncoder`: SimCSE (unsupervised and supervised) over any encoder."""

import numbers

import keras
import tensorflow as tf

from kobjectives import ops
from kobjectives.layers.pooling import SequencePooling
from kobjectives.layers.token_weighted_pooling import TokenWeightedPooling
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.ops.embedding_metrics import POOLING_MODES

TEXT_KEYS = ("anchor", "positive", "negative")
ENCODER_POOLING = POOLING_MODES + ("weighted_mean",)


def _hidden_dim(backbone):
    hidden_dim = getattr(backbone, "hidden_dim", None)
    if hidden_dim is None:
        embedding = getattr(backbone, "token_embedding", None)
        hidden_dim = getattr(embedding, "output_dim", None)
    return hidden_dim


@keras.saving.register_keras_serializable(package="kobjectives")
class ContrastiveEncoder(Objective):
    """Contrastive sentence-embedding training (SimCSE) over any encoder.

    Encodes texts with the backbone, pools each to one vector (`pooling`),
    passes it through the SimCSE projection (dense + tanh, as Gao et al.'s
    `MLPLayer`, used in training only) and minimizes InfoNCE
    (`kobjectives.ops.info_nce`) between each anchor and its positive, with
    the other positives of the (global) batch and any hard negatives as
    negatives.

    - **Unsupervised SimCSE**: `x = {"anchor": texts}`. Each text is encoded
      twice in one backbone call (the batch is tiled), so the two views
      differ only by dropout noise; at inference they are equal.
    - **Supervised SimCSE** (NLI): `x = {"anchor", "positive", "negative"}`
      = premise, entailment hypothesis, contradiction hypothesis (the hard
      negative).
    - **Augmentation-based contrastive LM**: `x = {"anchor", "positive"}`,
      two views from `kobjectives.layers.TextAugmenter`.

    Each text entry is a dict of int `[batch, length]` tensors `token_ids`,
    `padding_mask` (and `segment_ids`, zeros when missing, where the backbone
    takes them). `"negative"` may also hold `k` hard negatives per anchor as
    `[batch, k, length]`. There is no `y`. Under `tf.distribute` the
    positives and negatives of every replica are candidates for every anchor
    (`info_nce` gathers them), and the loss is each replica's share of the
    global mean: a mirrored run equals one device on the global batch.

    Which embedding is which:

    - `embed(inputs, training=False)`: the pooled backbone output `[batch,
      hidden_dim]`, *before* the projection. This is the sentence embedding
      served by `kobjectives.export.export_saved_model` (`export_outputs`) and evaluated on
      STS.
    - `project(embeddings, training=False)`: the projection MLP (identity
      when `projection=False`).
    - `project(embed(x, training=True), training=True)` is what the loss sees
      in training (the embeddings a cached/GradCache loss must differentiate).
    - `call(x)` returns those projected embeddings for each text key, or,
      for a plain `{"token_ids", ...}` batch, `embed(x)`.

    Args:
        backbone: a keras-hub encoder `Backbone` or any `keras.Model` mapping
            `{"token_ids", "padding_mask"}` to `[batch, length, hidden]` (or
            a dict with `"sequence_output"`).
        pooling: `"cls"` (SimCSE), `"mean"`, `"last"` or `"weighted_mean"`:
            a mean with one learned weight per vocabulary id
            (`kobjectives.layers.TokenWeightedPooling`; mean pooling until
            trained). Defaults to `"cls"`.
        projection: bool, use the SimCSE dense+tanh projection in training.
            Defaults to True.
        projection_dim: int, the projection's width. Defaults to the hidden
            size (as SimCSE).
        temperature: positive float, InfoNCE temperature. Defaults to 0.05.
        similarity: `"cosine"` (default) or `"dot"`.
        symmetric: bool, also classify positives among anchors (CLIP-style).
            Defaults to False (SimCSE).
        hidden_dim: int, needed only when the backbone has neither
            `hidden_dim` nor a `token_embedding`.
        freeze_token_embedding: bool, keep the backbone's `token_embedding`
            fixed (not trainable) while the rest trains. Defaults to False.
            From a randomly initialized backbone this keeps the random token
            vectors (whose mean is a lexical-overlap sentence embedding) and
            trains only how they are mixed and normalized; measurements in
            `docs/contrastive.md`. Only backbones with a `token_embedding`
            layer (keras-hub text backbones) take it.
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Inputs: see above. Outputs: a dict with `"anchor"` and `"positive"`
        float `[batch, projection_dim]` (and `"negative"`, `[batch, dim]` or
        `[batch, k, dim]`).

    Reference:
        Gao, Yao and Chen, 2021, "SimCSE: Simple Contrastive Learning of
        Sentence Embeddings", https://arxiv.org/abs/2104.08821.

    Example:

    >>> import keras_hub, tensorflow as tf
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> ids = tf.random.stateless_uniform((4, 8), (0, 0), 5, 50, dtype=tf.int32)
    >>> texts = {"token_ids": ids, "padding_mask": tf.ones_like(ids, "bool")}
    >>> model = ContrastiveEncoder(backbone, pooling="cls")
    >>> model.compile(jit_compile=True)
    >>> history = model.fit({"anchor": texts}, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']
    >>> model.embed(texts).shape  # [CLS] states, no projection
    TensorShape([4, 16])
    """

    def __init__(
        self,
        backbone,
        pooling="cls",
        projection=True,
        projection_dim=None,
        temperature=0.05,
        similarity="cosine",
        symmetric=False,
        hidden_dim=None,
        freeze_token_embedding=False,
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras-hub Backbone or a keras.Model that "
                "maps token ids and a padding mask to hidden states. "
                f"Received: {type(backbone).__name__}"
            )
        if pooling not in ENCODER_POOLING:
            raise ValueError(f"`pooling` must be one of {ENCODER_POOLING}. Received: pooling={pooling!r}")
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not 0.0 < temperature < float("inf")
        ):
            raise ValueError(
                "`temperature` must be a positive, finite float (SimCSE uses 0.05). "
                f"Received: temperature={temperature!r}"
            )
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"`similarity` must be 'cosine' or 'dot'. Received: similarity={similarity!r}")
        if not isinstance(freeze_token_embedding, bool):
            raise ValueError(
                "`freeze_token_embedding` must be True or False. "
                f"Received: freeze_token_embedding={freeze_token_embedding!r}"
            )
        token_embedding = getattr(backbone, "token_embedding", None)
        if freeze_token_embedding and not isinstance(token_embedding, keras.layers.Layer):
            raise ValueError(
                "`freeze_token_embedding=True` needs a backbone with a `token_embedding` "
                f"layer (keras-hub text backbones have one); {type(backbone).__name__} has "
                "none. Freeze the embedding layer yourself (`layer.trainable = False`) and "
                "pass freeze_token_embedding=False."
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.freeze_token_embedding = freeze_token_embedding
        if freeze_token_embedding:
            token_embedding.trainable = False
        self.backbone = backbone
        self.pooling = pooling
        self.temperature = float(temperature)
        self.similarity = similarity
        self.symmetric = bool(symmetric)
        self.use_projection = bool(projection)
        hidden_dim = hidden_dim or _hidden_dim(backbone)
        if hidden_dim is None:
            raise ValueError(
                "Cannot tell the backbone's hidden size. Pass `hidden_dim=` to ContrastiveEncoder."
            )
        self.hidden_dim = int(hidden_dim)
        self.projection_dim = int(projection_dim or self.hidden_dim)
        if pooling == "weighted_mean":
            vocabulary_size = getattr(token_embedding, "input_dim", None)
            if vocabulary_size is None:
                raise ValueError(
                    "pooling='weighted_mean' learns a weight per vocabulary id and needs a "
                    f"backbone with a `token_embedding` layer; {type(backbone).__name__} has "
                    "none. Use pooling='mean'."
                )
            self.pooler = TokenWeightedPooling(vocabulary_size, dtype=self.dtype_policy, name="pooling")
        else:
            self.pooler = SequencePooling(pooling, dtype=self.dtype_policy, name="pooling")
        self.projection = None
        if self.use_projection:
            # SimCSE's MLPLayer: dense + tanh over the pooled embedding.
            self.projection = keras.layers.Dense(
                self.projection_dim,
                activation="tanh",
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                dtype=self.dtype_policy,
                name="projection",
            )
            self.projection.build((None, self.hidden_dim))
        self.built = backbone.built

    # ------------------------------------------------------------------
    # Encoding.
    # ------------------------------------------------------------------

    def encode(self, inputs, training=False):
        """Runs the backbone: `[batch, length, hidden_dim]` hidden states."""
        inputs = {k: tf.convert_to_tensor(v) for k, v in inputs.items()}
        if "token_ids" not in inputs or "padding_mask" not in inputs:
            raise ValueError(
                "Each text needs 'token_ids' and 'padding_mask'. Received keys: "
                f"{sorted(inputs)}"
            )
        return run_backbone(self.backbone, inputs, training=training)

    def embed(self, inputs, training=False):
        """Pooled sentence embeddings `[batch, hidden_dim]`, before the projection.

        Args:
            inputs: dict of int `[batch, length]` `token_ids`, `padding_mask`
                (and `segment_ids`).
            training: run the backbone with dropout.
        """
        hidden = self.encode(inputs, training=training)
        if self.pooling == "weighted_mean":
            return self.pooler(hidden, inputs["token_ids"], inputs["padding_mask"])
        return self.pooler(hidden, inputs["padding_mask"])

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`: the
        sentence `embeddings` `[batch, hidden_dim]` (`embed`, no projection)."""
        return {"embeddings": self.embed(inputs, training=False)}

    def project(self, embeddings, training=False):
        """The training-time projection (dense + tanh); identity without one."""
        if self.projection is None:
            return embeddings
        return self.projection(embeddings, training=training)

    # ------------------------------------------------------------------
    # Training.
    # ------------------------------------------------------------------

    def _check_texts(self, inputs):
        if not isinstance(inputs, dict) or "anchor" not in inputs:
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                "ContrastiveEncoder takes x = {'anchor': texts[, 'positive': texts]"
                "[, 'negative': texts]}, each texts a dict of token_ids and "
                f"padding_mask, or one plain texts dict to embed. Received: {keys}"
            )
        unknown = sorted(set(inputs) - set(TEXT_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown keys {unknown} in the inputs. Valid keys: {list(TEXT_KEYS)}."
            )
        texts = {}
        for key in TEXT_KEYS:
            if key not in inputs:
                continue
            value = inputs[key]
            if not isinstance(value, dict) or "token_ids" not in value:
                raise ValueError(
                    f"x[{key!r}] must be a dict with 'token_ids' and 'padding_mask'. "
                    f"Received: {type(value).__name__}"
                )
            texts[key] = {k: tf.convert_to_tensor(v) for k, v in value.items()}
        anchor_shape = texts["anchor"]["token_ids"].shape
        if anchor_shape.rank != 2:
            raise ValueError(
                f"x['anchor']['token_ids'] must have shape [batch, length]. Received {anchor_shape}."
            )
        if "positive" in texts:
            shape = texts["positive"]["token_ids"].shape
            if shape.rank != 2:
                raise ValueError(
                    f"x['positive']['token_ids'] must have shape [batch, length]. Received {shape}."
                )
            if None not in (shape[0], anchor_shape[0]) and shape[0] != anchor_shape[0]:
                raise ValueError(
                    "Every anchor needs exactly one positive: x['anchor'] and "
                    f"x['positive'] have {anchor_shape[0]} and {shape[0]} texts."
                )
        if "negative" in texts:
            shape = texts["negative"]["token_ids"].shape
            if shape.rank not in (2, 3):
                raise ValueError(
                    "x['negative']['token_ids'] (hard negatives) must have shape "
                    f"[batch, length] or [batch, k, length]. Received {shape}."
                )
            if None not in (shape[0], anchor_shape[0]) and shape[0] != anchor_shape[0]:
                raise ValueError(
                    "Hard negatives are given per anchor: x['negative'] must have "
                    f"the anchors' batch size {anchor_shape[0]}. Received shape {shape}."
                )
        return texts

    def call(self, inputs, training=False):
        if isinstance(inputs, dict) and "token_ids" in inputs:
            return self.embed(inputs, training=training)
        texts = self._check_texts(inputs)
        anchor = texts["anchor"]
        batch = tf.shape(anchor["token_ids"])[0]
        pieces = [("anchor", anchor, None)]
        # Unsupervised SimCSE: the positive is the anchor again, with other
        # dropout noise (the tiled batch goes through the backbone once).
        pieces.append(("positive", texts.get("positive", anchor), None))
        if "negative" in texts:
            negative = texts["negative"]
            k = negative["token_ids"].shape[1] if negative["token_ids"].shape.rank == 3 else None
            if k is not None:
                negative = {
                    name: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0))
                    for name, v in negative.items()
                }
            pieces.append(("negative", negative, k))
        groups = {}
        for name, text, k in pieces:
            groups.setdefault(self._signature(text), []).append((name, text, k))
        outputs = {}
        for group in groups.values():
            keys = sorted(set.intersection(*(set(t) for _, t, _ in group)))
            first = group[0][1]
            merged = {
                key: tf.concat([tf.cast(t[key], first[key].dtype) for _, t, _ in group], axis=0)
                for key in keys
            }
            embeddings = self.project(self.embed(merged, training=training), training=training)
            sizes = [t["token_ids"].shape[0] for _, t, _ in group]
            if None in sizes:
                sizes = tf.stack([tf.shape(t["token_ids"])[0] for _, t, _ in group])
            for (name, _, k), part in zip(group, tf.split(embeddings, sizes, axis=0)):
                if k is not None:
                    part = tf.reshape(part, [batch, k, self.projection_dim])
                outputs[name] = part
        return outputs

    @staticmethod
    def _signature(text):
        """Texts of equal length (and keys) share one backbone call."""
        return (text["token_ids"].shape[-1], tuple(sorted(text)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """InfoNCE on the projected embeddings; this replica's share of the
        global mean (`ops.global_weighted_mean`), optionally weighted."""
        if y_pred is None or not isinstance(y_pred, dict) or "anchor" not in y_pred:
            raise ValueError(
                "ContrastiveEncoder trains on x = {'anchor': ...[, 'positive', "
                "'negative']}; a plain token-id batch has no contrastive pairs."
            )
        losses = ops.info_nce(
            y_pred["anchor"],
            y_pred["positive"],
            y_pred.get("negative"),
            temperature=self.temperature,
            similarity=self.similarity,
            symmetric=self.symmetric,
        )
        weights = 1.0 if sample_weight is None else sample_weight
        loss = ops.global_weighted_mean(losses, weights)
        if self.losses:
            loss = loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses]) / float(
                tf.distribute.get_strategy().num_replicas_in_sync
            )
        return loss

    def compile(self, optimizer="auto", **kwargs):
        """Configures training, with SimCSE defaults.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 3e-5 as SimCSE's
                BERT-base runs, weight decay 0.01, clipnorm 1.0) or any
                optimizer. Raise the rate (1e-4 - 5e-4) for small models
                trained from scratch.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`,
                `metrics`, ...). The loss is built in; `loss=` is refused.
        """
        if kwargs.get("loss") is not None:
            raise ValueError(
                "ContrastiveEncoder computes its InfoNCE loss itself; do not pass "
                "`loss=` (set `temperature`/`similarity` on the objective)."
            )
        kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=3e-5, weight_decay=0.01, clipnorm=1.0)
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pooling": self.pooling,
                "projection": self.use_projection,
                "projection_dim": self.projection_dim,
                "temperature": self.temperature,
                "similarity": self.similarity,
                "symmetric": self.symmetric,
                "hidden_dim": self.hidden_dim,
                "freeze_token_embedding": self.freeze_token_embedding,
            }
        )
        return config
