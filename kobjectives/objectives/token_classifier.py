"""`TokenClassifier`: token classification (NER, POS tagging) over any
encoder backbone, with an optional linear-chain CRF."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.metrics import MaskedAccuracy
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.ops.crf import crf_decode
from kobjectives.ops.crf import crf_loss
from kobjectives.ops.labels import check_labels
from kobjectives.ops.masked_lm import masked_lm_loss
from kobjectives.ops.reduction import global_weighted_mean


@keras.saving.register_keras_serializable(package="kobjectives")
class TokenClassifier(Objective):
    """Token classification (tagging, NER) over any encoder backbone.

    The head is dropout + `Dense(num_tags)` on every position's hidden state
    (in float32 under mixed precision): the per-token tag scores `[batch,
    length, num_tags]`.

    **Inputs**, as keras-hub's task models are fed: `x = {"token_ids",
    "padding_mask"}` (plus `"segment_ids"` where the backbone takes them;
    zeros when missing), and optionally `"label_mask"`, bool `[batch,
    length]`: true where a token carries its word's tag (the first piece of
    each word with first-piece labelling, or every piece). It defaults to
    `padding_mask` (and is intersected with it). `y` is the tag ids `[batch,
    length]`; tags where `label_mask` is false are ignored, whatever their
    value (e.g. -100). `sample_weight` is optional, `[batch, length]` per
    token (0 = not a word) or `[batch]` per example.

    **Without the CRF** (`use_crf=False`) the loss is the softmax
    cross-entropy per labelled token, averaged with weights `label_mask *
    sample_weight` over the global batch (exact under `tf.distribute`,
    `kobjectives.ops.masked_lm_loss`), and `predict` gives the tag scores.

    **With the CRF** (`use_crf=True`) the objective also trains a transition
    matrix `transitions[i, j]` (tag `i` followed by tag `j`) and start and end
    scores. The loss is the CRF negative log-likelihood of each example's tag
    path over its labelled tokens (`kobjectives.ops.crf_loss`; unlabelled
    tokens are skipped, so the transitions link consecutive words), averaged
    over the examples of the global batch. A token's weight only decides
    whether it is labelled (> 0); an example weighs its largest token weight
    (1 for 0/1 weights, 0 for a row with nothing labelled). `call` still
    returns the tag scores, so training-time metrics see them; `predict`
    (`predict_step`) decodes them with Viterbi (`kobjectives.ops.crf_decode`)
    over `label_mask` into tag ids int32 `[batch, length]`, 0 where not
    labelled. `decode_tags(scores, mask)` does the same on scores.

    Metrics: `tag_accuracy` over the labelled tokens (of the argmax tag, or
    of the Viterbi path with the CRF). Metrics passed to `compile` receive
    the tag ids (0 where ignored), the tag scores and the token weights.

    Tags outside `[0, num_tags)` at labelled positions raise a `ValueError`
    where their values are known (eager calls), fail a `tf.debugging` assert
    in a traced step, and make the loss NaN under `jit_compile=True` (never
    a finite wrong loss; `kobjectives.ops.labels`).

    Args:
        backbone: a keras-hub encoder `Backbone` (`BertBackbone`,
            `RobertaBackbone`, `DistilBertBackbone`, ...) or any `keras.Model`
            mapping `{"token_ids", "padding_mask"}` to hidden states
            `[batch, length, hidden_dim]` (or a dict with `"sequence_output"`).
        num_tags: int >= 2, the number of tags (e.g. the BIO tags of NER).
        use_crf: bool, put a linear-chain CRF on the tag scores. Defaults to
            False.
        dropout: float in `[0, 1)`, the dropout on the hidden states before
            the head. Defaults to 0.1.
        hidden_dim: int. Needed only when the backbone has neither
            `hidden_dim` nor a token embedding.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Inputs: a dict with `token_ids` int `[batch, length]`, `padding_mask`
        bool/int `[batch, length]`, optionally `segment_ids` and
        `label_mask` (bool `[batch, length]`).

    Outputs: `call`: the tag scores float32 `[batch, length, num_tags]`.
        `predict`: the same without the CRF, the Viterbi tag ids int32
        `[batch, length]` with it.

    References:
        - Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional
          Transformers for Language Understanding" (token classification
          head, first-piece labelling), https://arxiv.org/abs/1810.04805
        - Lafferty et al., 2001, "Conditional Random Fields: Probabilistic
          Models for Segmenting and Labeling Sequence Data".
        - Lample et al., 2016, "Neural Architectures for Named Entity
          Recognition" (a CRF on a neural tagger),
          https://arxiv.org/abs/1603.01360

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> ids = np.random.default_rng(0).integers(5, 50, (4, 8)).astype("int32")
    >>> x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool),
    ...      "label_mask": np.arange(8) % 2 == 0}  # e.g. first pieces only
    >>> x["label_mask"] = np.broadcast_to(x["label_mask"], ids.shape)
    >>> tags = ids % 3
    >>> model = TokenClassifier(backbone, num_tags=3, use_crf=True)
    >>> model.compile(optimizer="adam", jit_compile=True)
    >>> history = model.fit(x, tags, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss', 'tag_accuracy']
    >>> model(x).shape  # tag scores
    TensorShape([4, 8, 3])
    >>> predicted = model.predict(x, verbose=0)  # Viterbi tag ids
    >>> predicted.shape, predicted.dtype, int(predicted[:, 1::2].max())
    ((4, 8), dtype('int32'), 0)
    """

    own_loss = "per-token softmax cross-entropy, or the CRF negative log-likelihood"
    # A fine-tuning default (as keras-hub's task models); raise it (1e-3)
    # for a model trained from scratch.
    default_learning_rate = 5e-5

    def __init__(self, backbone, num_tags, use_crf=False, dropout=0.1, hidden_dim=None,
                 **kwargs):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras-hub Backbone or a keras.Model that maps "
                "token ids and a padding mask to hidden states. Received: "
                f"{type(backbone).__name__}"
            )
        if isinstance(num_tags, bool) or not isinstance(num_tags, (int, np.integer)) \
                or num_tags < 2:
            raise ValueError(
                "`num_tags` must be an int >= 2, the number of tags (e.g. 9 for the "
                f"BIO tags of CoNLL-2003 NER). Received: num_tags={num_tags!r}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}"
            )
        hidden_dim = hidden_dim or getattr(backbone, "hidden_dim", None)
        if hidden_dim is None:
            hidden_dim = getattr(getattr(backbone, "token_embedding", None), "output_dim", None)
        if hidden_dim is None:
            raise ValueError(
                "Cannot tell the backbone's hidden size. Pass `hidden_dim=` to TokenClassifier."
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_tags = int(num_tags)
        self.use_crf = bool(use_crf)
        self.dropout = float(dropout)
        self.hidden_dim = int(hidden_dim)
        self.tag_dropout = keras.layers.Dropout(self.dropout, name="tag_dropout")
        # The head computes in the variable dtype (float32 under mixed
        # precision): the tag scores, and the CRF over them, are float32.
        self.tag_head = keras.layers.Dense(
            self.num_tags,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy.variable_dtype,
            name="tag_head",
        )
        self.tag_head.build((None, None, self.hidden_dim))
        self.transitions = self.start_transitions = self.end_transitions = None
        if self.use_crf:
            self.transitions = self.add_weight(
                shape=(self.num_tags, self.num_tags), initializer="zeros", name="transitions")
            self.start_transitions = self.add_weight(
                shape=(self.num_tags,), initializer="zeros", name="start_transitions")
            self.end_transitions = self.add_weight(
                shape=(self.num_tags,), initializer="zeros", name="end_transitions")
        self.tag_accuracy = MaskedAccuracy(name="tag_accuracy")
        self.built = backbone.built

    # --- forward -------------------------------------------------------------

    def encode(self, inputs, training=False):
        """Runs the backbone: `[batch, length, hidden_dim]` hidden states."""
        return run_backbone(self.backbone, inputs, training=training)

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            raise ValueError(
                "TokenClassifier takes a dict with `token_ids` and `padding_mask` "
                "(and optionally `segment_ids`, `label_mask`). Received: "
                f"{sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__}"
            )
        hidden = self.tag_dropout(self.encode(inputs, training=training), training=training)
        scores = self.tag_head(tf.cast(hidden, self.tag_head.compute_dtype))
        return tf.cast(scores, tf.float32)

    def decode_tags(self, scores, mask=None):
        """Tag ids int32 `[batch, length]` from tag scores: the Viterbi path
        over `mask` with the CRF, else the argmax; 0 where `mask` is false.

        Args:
            scores: float `[batch, length, num_tags]`, the output of `call`.
            mask: optional bool `[batch, length]` (the label mask); None
                means every position.
        """
        if self.use_crf:
            return crf_decode(scores, self.transitions, mask, self.start_transitions,
                              self.end_transitions)[0]
        tags = tf.argmax(scores, axis=-1, output_type=tf.int32)
        if mask is None:
            return tags
        return tf.where(tf.cast(mask, tf.bool), tags, tf.zeros_like(tags))

    def label_mask(self, x):
        """bool `[batch, length]`: `x["label_mask"]` (default
        `padding_mask`, else every position), intersected with
        `padding_mask`."""
        token_ids = tf.convert_to_tensor(x["token_ids"])
        mask = tf.ones(tf.shape(token_ids), tf.bool)
        for key in ("padding_mask", "label_mask"):
            if x.get(key) is None:
                continue
            value = tf.convert_to_tensor(x[key])
            if not value.shape.is_compatible_with(token_ids.shape):
                raise ValueError(
                    f"`{key}` must have the shape of `token_ids` {token_ids.shape} "
                    f"([batch, length]). Received shape {value.shape}."
                )
            mask = mask & tf.cast(value, tf.bool)
        return mask

    def predict_step(self, data):
        """The tag scores without the CRF; with it, the Viterbi tag ids over
        `label_mask` (int32 `[batch, length]`, 0 where not labelled)."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        scores = self(x, training=False)
        if not self.use_crf:
            return scores
        return self.decode_tags(scores, self.label_mask(x))

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `tag_scores` float32 `[batch, length, num_tags]` and `tag_ids` int32
        `[batch, length]` (the Viterbi path with the CRF, else the argmax),
        decoded over every real token (`padding_mask`: the serving inputs
        carry no label mask; 0 at padding)."""
        scores = self(inputs, training=False)
        return {
            "tag_scores": scores,
            "tag_ids": self.decode_tags(scores, self.label_mask(
                {"token_ids": inputs["token_ids"], "padding_mask": inputs.get("padding_mask")})),
        }

    # --- loss ------------------------------------------------------------------

    def targets(self, x, y, sample_weight=None):
        """`(tags, weights)`: `y` with 0 where not labelled (int, as given
        elsewhere) and float32 token weights `[batch, length]` (`label_mask
        * sample_weight`)."""
        if y is None:
            raise ValueError(
                "TokenClassifier needs targets: y = tag ids [batch, length] (0 or any "
                "value where label_mask is false)."
            )
        if not isinstance(x, dict) or "token_ids" not in x:
            raise ValueError(
                "TokenClassifier takes x = {'token_ids', 'padding_mask'[, 'segment_ids', "
                "'label_mask']}."
            )
        mask = self.label_mask(x)
        y = tf.convert_to_tensor(y)
        if not (y.dtype.is_integer or y.dtype.is_floating):
            raise ValueError(f"`y` must be integer tag ids. Received dtype {y.dtype.name}.")
        if not y.shape.is_compatible_with(mask.shape):
            raise ValueError(
                "`y` must hold one tag id per token, the shape of `token_ids` "
                f"{mask.shape}. Received shape {y.shape}."
            )
        weights = tf.cast(mask, tf.float32)
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight, tf.float32)
            if sample_weight.shape.rank == 1:
                sample_weight = sample_weight[:, None]
            if sample_weight.shape.rank == 3 and sample_weight.shape[-1] == 1:
                sample_weight = sample_weight[..., 0]
            try:
                tf.broadcast_static_shape(sample_weight.shape, mask.shape)
            except ValueError:
                raise ValueError(
                    "`sample_weight` must be [batch, length] (per token) or [batch] (per "
                    f"example) for tokens {mask.shape}. Received shape {sample_weight.shape}."
                ) from None
            weights = weights * sample_weight
        tags = tf.where(weights > 0, y, tf.zeros_like(y))
        check_labels(tags, self.num_tags, name="y")  # a clear error where y is known
        return tags, weights

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Softmax cross-entropy per labelled token (weighted mean), or the
        CRF negative log-likelihood per example (mean over the examples with
        a labelled token); this replica's share of the global-batch mean."""
        tags, weights = self.targets(x, y, sample_weight)
        if self.use_crf:
            losses = crf_loss(y_pred, tags, self.transitions, weights > 0,
                              self.start_transitions, self.end_transitions)
            loss = global_weighted_mean(losses, tf.reduce_max(weights, axis=1))
        else:
            loss = masked_lm_loss(tags, y_pred, weights)
        return self.add_layer_losses(loss)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates `tag_accuracy` and the compiled metrics (which receive the
        tags, the tag scores and the token weights); returns every metric's
        result."""
        tags, weights = self.targets(x, y, sample_weight)
        predictions = y_pred
        if self.use_crf:
            predictions = tf.one_hot(self.decode_tags(y_pred, weights > 0), self.num_tags)
        self.tag_accuracy.update_state(tags, predictions, weights)
        return super().compute_metrics(x, tags, y_pred, sample_weight=weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_tags": self.num_tags,
                "use_crf": self.use_crf,
                "dropout": self.dropout,
                "hidden_dim": self.hidden_dim,
            }
        )
        return config
