"""`SequenceClassifier`: fine-tuning a backbone to classify (or score)
sentences and sentence pairs."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from kobjectives.metrics.classification_metrics import PearsonCorrelation
from kobjectives.objectives.objective import Objective
from kobjectives.objectives.objective import run_backbone
from kobjectives.objectives.objective import sequence_output
from kobjectives.ops import classification as classification_ops
from kobjectives.ops.embedding_metrics import pool_sequence
from kobjectives.ops.reduction import global_weighted_mean

MODES = ("single_label", "multi_label", "regression")
POOLING = ("auto", "pooled", "first", "mean", "last")
# Our pooling names -> `kobjectives.ops.pool_sequence` modes.
_SEQUENCE_POOLING = {"first": "cls", "mean": "mean", "last": "last"}


@keras.saving.register_keras_serializable(package="kobjectives")
class SequenceClassifier(Objective):
    """Sequence classification and regression over any encoder backbone.

    The head is keras-hub's `TextClassifier` head (as `BertTextClassifier`):
    the pooled representation -> `Dropout(dropout)` -> `Dense(num_classes)`,
    nothing more, so a training step costs what keras-hub's does on the same
    backbone. What it adds: the choice of pooling, the three modes, label
    smoothing, class weights, and a loss that is the exact global-batch
    weighted mean under `tf.distribute`.

    Modes (`mode`), each loss a per-example `kobjectives.ops.classification`
    function reduced by `kobjectives.ops.global_weighted_mean`:

    - `"single_label"`: `y` = int class ids `[batch]`; softmax cross-entropy
      with `label_smoothing`; `class_weights[y]` scales each example and the
      mean divides by the summed weights (PyTorch's `weight=` convention).
      Metric: `accuracy`.
    - `"multi_label"`: `y` = multi-hot `[batch, num_classes]`; sigmoid binary
      cross-entropy, the mean over classes per example, with
      `label_smoothing` and `positive_weights`. Metric: `binary_accuracy`
      (a logit above 0 predicts the class).
    - `"regression"`: `y` = float scores `[batch]` (e.g. STS-B, 0-5);
      squared error of the score. Usually `num_classes=1`. Metric:
      `pearson` (over the whole evaluation set).

    Inputs are those of keras-hub's task models: `x = {"token_ids",
    "padding_mask"}` int `[batch, length]`, plus `"segment_ids"` for a
    sentence pair where the backbone takes them (zeros when missing), e.g.
    from `keras_hub.models.BertTextClassifierPreprocessor` on `(texts,)` or
    `(first_texts, second_texts)`. `sample_weight` `[batch]` weighs examples.

    Pooling (`pooling`):

    - `"pooled"`: the backbone's `pooled_output` (BERT's and ALBERT's tanh
      pooler over `[CLS]`, what keras-hub's classifiers use);
    - `"first"`: the first token's hidden state (`[CLS]` / `<s>`);
    - `"mean"`: the mean over real tokens (the padding mask);
    - `"last"`: the last real token (for causal backbones);
    - `"auto"` (default): `"pooled"` where the backbone has a
      `pooled_output`, else `"first"`.

    With another pooling than `"pooled"`, a BERT-style backbone's pooler
    gets no gradient (Keras warns that it has none) and stays as it was.

    Args:
        backbone: a keras-hub `Backbone` or any `keras.Model` mapping
            `{"token_ids", "padding_mask"}` (and `segment_ids`) to hidden
            states `[batch, length, hidden]`, or to a dict with
            `"sequence_output"` (and `"pooled_output"`).
        num_classes: int, the number of logits: >= 2 for `"single_label"`
            (two for a binary task), >= 1 otherwise (1 for one regression
            score).
        mode: `"single_label"` (default), `"multi_label"` or `"regression"`.
        pooling: see above. Defaults to `"auto"`.
        dropout: float in `[0, 1)`, the dropout before the output layer.
            Defaults to 0.1 (keras-hub's).
        label_smoothing: float in `[0, 1)`. Defaults to 0.
        class_weights: optional `num_classes` non-negative floats, not all
            0 (`"single_label"` only).
        positive_weights: optional `num_classes` non-negative floats, the
            weight of each class's positive term (`"multi_label"` only).
        hidden_dim: int, the width of the pooled representation; needed
            only when the backbone has neither `hidden_dim` nor a
            `token_embedding`.
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Outputs (`call`, `predict`): float32 logits `[batch, num_classes]`;
    for regression the scores `[batch, 1]` (`num_classes=1`).

    References:
        - Devlin et al., 2019, "BERT", https://arxiv.org/abs/1810.04805
          (fine-tuning the pooled `[CLS]` for GLUE, STS-B as regression).
        - Szegedy et al., 2016, https://arxiv.org/abs/1512.00567 (label
          smoothing).

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> ids = np.random.default_rng(0).integers(5, 50, (4, 8)).astype("int32")
    >>> x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    >>> y = np.array([0, 1, 2, 1])
    >>> model = SequenceClassifier(backbone, num_classes=3, label_smoothing=0.1)
    >>> model.compile(jit_compile=True)
    >>> history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss']
    >>> model.predict(x, verbose=0).shape  # logits
    (4, 3)
    """

    own_loss = "kobjectives.ops.classification (by mode)"
    # keras-hub's `TextClassifier` fine-tunes with Adam(5e-5).
    default_learning_rate = 5e-5

    def __init__(
        self,
        backbone,
        num_classes,
        mode="single_label",
        pooling="auto",
        dropout=0.1,
        label_smoothing=0.0,
        class_weights=None,
        positive_weights=None,
        hidden_dim=None,
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras-hub Backbone or a keras.Model mapping token "
                f"ids and a padding mask to hidden states. Received: {type(backbone).__name__}"
            )
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        minimum = 2 if mode == "single_label" else 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or \
                num_classes < minimum:
            hint = (" (a binary task has 2 classes; mode='multi_label' with num_classes=1 "
                    "gives one sigmoid logit)" if mode == "single_label" else "")
            raise ValueError(
                f"`num_classes` must be an int >= {minimum} for mode={mode!r}{hint}. "
                f"Received: num_classes={num_classes!r}"
            )
        if pooling not in POOLING:
            raise ValueError(f"`pooling` must be one of {POOLING}. Received: pooling={pooling!r}")
        has_pooled = _has_pooled_output(backbone)
        if pooling == "pooled" and not has_pooled:
            raise ValueError(
                f"pooling='pooled' needs a backbone that returns a 'pooled_output'; "
                f"{type(backbone).__name__} does not. Use pooling='first' or 'mean'."
            )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or \
                not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}")
        if mode == "regression" and label_smoothing:
            raise ValueError(
                "`label_smoothing` applies to classification; mode='regression' takes none. "
                f"Received: label_smoothing={label_smoothing!r}"
            )
        label_smoothing = classification_ops.check_label_smoothing(label_smoothing)
        class_weights = _check_class_weights(
            "class_weights", class_weights, num_classes, mode, "single_label")
        positive_weights = _check_class_weights(
            "positive_weights", positive_weights, num_classes, mode, "multi_label")
        hidden_dim = hidden_dim or getattr(backbone, "hidden_dim", None) or getattr(
            getattr(backbone, "token_embedding", None), "output_dim", None)
        if hidden_dim is None:
            raise ValueError(
                "Cannot tell the backbone's hidden size. Pass `hidden_dim=` to SequenceClassifier."
            )
        kwargs.setdefault("dtype", getattr(backbone, "dtype_policy", None))
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.mode = mode
        self.pooling = pooling
        self.dropout = float(dropout)
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.positive_weights = positive_weights
        self.hidden_dim = int(hidden_dim)
        self.resolved_pooling = ("pooled" if has_pooled else "first") if pooling == "auto" \
            else pooling
        # keras-hub's TextClassifier head.
        self.output_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="classifier_dropout")
        self.output_dense = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="logits",
        )
        self.output_dense.build((None, self.hidden_dim))
        self.built = backbone.built

    # --- forward -------------------------------------------------------------

    def pool(self, inputs, training=False):
        """The pooled representation `[batch, hidden_dim]` (`resolved_pooling`).

        Args:
            inputs: dict of int `[batch, length]` `token_ids`, `padding_mask`
                (and `segment_ids`).
            training: run the backbone with dropout.
        """
        if not isinstance(inputs, dict) or "token_ids" not in inputs:
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                "SequenceClassifier takes x = {'token_ids', 'padding_mask'} (and "
                f"'segment_ids' for sentence pairs). Received: {keys}"
            )
        outputs = run_backbone(self.backbone, inputs, training=training, all_outputs=True)
        if self.resolved_pooling == "pooled":
            return outputs["pooled_output"]
        if self.resolved_pooling != "first" and "padding_mask" not in inputs:
            raise ValueError(
                f"pooling={self.resolved_pooling!r} needs x['padding_mask']. Received keys: "
                f"{sorted(inputs)}"
            )
        return pool_sequence(
            sequence_output(outputs), inputs.get("padding_mask"),
            _SEQUENCE_POOLING[self.resolved_pooling])

    def call(self, inputs, training=False):
        pooled = self.output_dropout(self.pool(inputs, training=training), training=training)
        return tf.cast(self.output_dense(pooled), tf.float32)

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `logits` `[batch, num_classes]` and `probabilities` (softmax for
        single-label, sigmoid for multi-label, the score itself for
        regression)."""
        logits = self(inputs, training=False)
        if self.mode == "single_label":
            probabilities = tf.nn.softmax(logits)
        elif self.mode == "multi_label":
            probabilities = tf.sigmoid(logits)
        else:
            probabilities = logits
        return {"logits": logits, "probabilities": probabilities}

    # --- loss ----------------------------------------------------------------

    def example_losses(self, y, y_pred, sample_weight=None):
        """The mode's per-example losses and weights: `(values [batch],
        weights [batch])`, float32; `compute_loss` is their global weighted
        mean.

        Args:
            y: the targets of the mode (see the class docstring).
            y_pred: float logits `[batch, num_classes]`.
            sample_weight: optional float `[batch]`, >= 0.
        """
        if y is None:
            raise ValueError(
                "SequenceClassifier needs targets y: class ids [batch] (single_label), "
                "multi-hot [batch, num_classes] (multi_label) or scores [batch] (regression)."
            )
        y = tf.convert_to_tensor(y)
        weights = tf.ones(tf.shape(y_pred)[:1], tf.float32)
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight, tf.float32)
            if sample_weight.shape.rank == 2 and sample_weight.shape[-1] == 1:
                sample_weight = sample_weight[:, 0]
            weights = weights * sample_weight
        if self.mode == "single_label":
            if y.shape.rank == 2 and y.shape[-1] == 1:
                y = y[:, 0]
            values = classification_ops.softmax_cross_entropy(y, y_pred, self.label_smoothing)
            if self.class_weights is not None:
                weights = weights * classification_ops.true_class_weights(y, self.class_weights)
        elif self.mode == "multi_label":
            if y.shape.rank == 1 and self.num_classes == 1:
                y = y[:, None]
            values = classification_ops.multi_label_cross_entropy(
                y, y_pred, self.label_smoothing, self.positive_weights)
        else:
            values = classification_ops.squared_error(y, y_pred)
        return values, weights

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The global-batch weighted mean of `example_losses` (this
        replica's share under `tf.distribute`), plus the layers' losses."""
        values, weights = self.example_losses(y, y_pred, sample_weight)
        return self.add_layer_losses(global_weighted_mean(values, weights))

    def default_metrics(self):
        """The metrics `compile(metrics="auto")` tracks for the mode (new
        instances): `accuracy`, `binary_accuracy` or `pearson`."""
        if self.mode == "single_label":
            return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.mode == "multi_label":
            return [keras.metrics.BinaryAccuracy(name="binary_accuracy", threshold=0.0)]
        return [PearsonCorrelation(name="pearson")]

    def compile(self, optimizer="auto", metrics="auto", **kwargs):
        """Configures training; the loss is built in.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-5 as keras-hub's
                classifiers, weight decay 0.01, clipnorm 1.0) or any
                `keras.Model.compile` optimizer.
            metrics: `"auto"` (`default_metrics()`), or `keras.Model.compile`
                metrics (None for none), e.g. `[ClassificationReport(n)]`.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...);
                `loss` is refused.
        """
        if isinstance(metrics, str) and metrics == "auto":
            metrics = self.default_metrics()
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "mode": self.mode,
            "pooling": self.pooling,
            "dropout": self.dropout,
            "label_smoothing": self.label_smoothing,
            "class_weights": self.class_weights,
            "positive_weights": self.positive_weights,
            "hidden_dim": self.hidden_dim,
        })
        return config


def _has_pooled_output(backbone):
    try:
        outputs = backbone.output
    except (AttributeError, ValueError):
        return False
    return isinstance(outputs, dict) and "pooled_output" in outputs


def _check_class_weights(name, weights, num_classes, mode, for_mode):
    """`weights` as a list of floats (None stays None), validated."""
    if weights is None:
        return None
    if mode != for_mode:
        raise ValueError(
            f"`{name}` applies to mode={for_mode!r} only. Received it with mode={mode!r}."
        )
    values = np.asarray(weights, dtype=np.float64).reshape(-1) if np.ndim(weights) <= 1 else None
    if values is None or values.shape[0] != num_classes:
        raise ValueError(
            f"`{name}` must hold one weight per class: {num_classes} values. Received: "
            f"{name}={weights!r}"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0) or not np.any(values > 0):
        raise ValueError(
            f"`{name}` must be finite, >= 0 and not all 0. Received: {name}={weights!r}"
        )
    return [float(v) for v in values]
