"""`RewardModel`: a scalar reward head on a backbone, trained on preference
pairs with the Bradley-Terry loss (TRL's `RewardTrainer`)."""

import numbers

import keras
import tensorflow as tf

from kobjectives.objectives.objective import Objective
from kobjectives.objectives.sequence_classifier import SequenceClassifier
from kobjectives.ops.preference import bradley_terry_loss
from kobjectives.ops.preference import reward_centering
from kobjectives.ops.preference import split_pairs

SIDES = ("chosen", "rejected")
"""The two sides of a preference batch (`chosen_*` and `rejected_*` keys)."""

REWARD_METRICS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
"""The metrics `RewardModel` tracks, besides `loss` and the named losses."""


@keras.saving.register_keras_serializable(package="kobjectives")
class RewardModel(SequenceClassifier):
    """A reward model: one scalar per sequence, trained so that the chosen
    completion of a pair scores above the rejected one.

    The head is `SequenceClassifier`'s in regression mode with one output
    (the pooled state -> `Dropout(dropout)` -> `Dense(1)`), over the same
    pooling: for a causal backbone the reward is read at the last real token
    (`pooling="last"`, the default, TRL's convention: the hidden state that
    has seen the whole prompt and completion); `"first"` (or `"pooled"`,
    `"mean"`, `"auto"`) serves encoders.

    **Inputs.** A preference batch (`kobjectives.data.preference_dataset`):
    `chosen_token_ids`, `chosen_padding_mask`, `rejected_token_ids`,
    `rejected_padding_mask` int/bool `[batch, length]` (the `*_completion_mask`
    keys are ignored: the whole sequence is scored), and optionally
    `margin` float `[batch]`, a per-pair margin. The chosen and rejected
    sequences are concatenated on the batch axis and run through the
    backbone once (`[chosen; rejected]`, `kobjectives.ops.split_pairs`).
    `sample_weight` `[batch]` (optional) weighs the pairs.

    **Loss** (two named losses, `Objective`'s `loss_names`):

    - `bradley_terry`: the mean over pairs of `-log sigmoid(r_c - r_r -
      margin)` (`kobjectives.ops.bradley_terry_loss`; margin 0 without the
      key), Bradley & Terry's pairwise model as reward models use it
      (Ouyang et al. 2022), with Llama 2's per-pair margin.
    - `centering`: the mean over pairs of `(r_c + r_r)^2`
      (`kobjectives.ops.reward_centering`), weighted by
      `center_rewards_coefficient`. Eisenstein et al. 2023 (TRL's
      `center_rewards_coefficient`, 0.01 suggested). With the coefficient
      None or 0 the term is not part of the objective and not computed:
      `loss_names` is then `("bradley_terry",)` and there is no
      `centering_loss` metric (`chosen_reward` and `rejected_reward` show
      how far the rewards drift from zero).

    The total is TRL's: `bradley_terry + coefficient * centering`, each a
    global-batch weighted mean (exact under `tf.distribute`).

    **Metrics** (`keras.metrics.Mean`s over pairs, exact over a whole
    epoch and under `tf.distribute`): `reward_accuracy` (the share of pairs
    with `r_c > r_r`; a tie counts as wrong, as in TRL), `reward_margin`
    (the mean of `r_c - r_r`), `chosen_reward` and `rejected_reward` (the
    mean rewards), plus `bradley_terry_loss` and, with centering on,
    `centering_loss` (each named loss unweighted).

    **Outputs.** `call` on a preference batch returns `{"chosen_rewards",
    "rejected_rewards"}` float32 `[batch]`; on single sequences
    (`{"token_ids", "padding_mask"}`) the rewards `[batch]`.
    `export_outputs` (the SavedModel) scores single sequences: `{"reward":
    [batch]}`.

    Args:
        backbone: a keras-hub `Backbone` or a `keras.Model` mapping
            `{"token_ids", "padding_mask"}` to hidden states (as
            `SequenceClassifier`).
        pooling: `"last"` (default), `"first"`, `"mean"`, `"pooled"` or
            `"auto"` (`SequenceClassifier`'s).
        dropout: float in `[0, 1)`, the dropout before the head. Defaults
            to 0.
        center_rewards_coefficient: optional float >= 0, the weight of the
            centering loss. Defaults to None: no centering term (as 0).
        hidden_dim: int, needed only for a backbone without `hidden_dim`
            or `token_embedding`.
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    References:
        - Bradley & Terry, 1952, "Rank Analysis of Incomplete Block
          Designs".
        - Ouyang et al., 2022, "Training language models to follow
          instructions with human feedback", https://arxiv.org/abs/2203.02155
        - Touvron et al., 2023, "Llama 2", https://arxiv.org/abs/2307.09288
          (the margin).
        - Eisenstein et al., 2023, "Helping or Herding? Reward Model
          Ensembles Mitigate but do not Eliminate Reward Hacking",
          https://arxiv.org/abs/2312.09244 (centering).

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> ids = np.array([[2, 5, 7, 0, 0, 0], [2, 6, 7, 9, 0, 0]], "int32")
    >>> x = {"chosen_token_ids": ids, "chosen_padding_mask": ids > 0,
    ...      "rejected_token_ids": ids + (ids > 0), "rejected_padding_mask": ids > 0}
    >>> model = RewardModel(backbone, center_rewards_coefficient=0.01)
    >>> model.compile(jit_compile=True)
    >>> history = model.fit(x, batch_size=2, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['bradley_terry_loss', 'centering_loss', 'chosen_reward', 'loss', 'rejected_reward', 'reward_accuracy', 'reward_margin']
    >>> model.export_outputs({"token_ids": ids, "padding_mask": ids > 0})["reward"].shape
    TensorShape([2])
    >>> RewardModel(backbone).loss_names  # centering off: no centering_loss metric
    ('bradley_terry',)
    """

    own_loss = None
    loss_names = ("bradley_terry", "centering")

    def __init__(self, backbone, pooling="last", dropout=0.0, center_rewards_coefficient=None,
                 hidden_dim=None, **kwargs):
        if "loss_weights" in kwargs:
            raise ValueError(
                "RewardModel weighs its losses itself: pass `center_rewards_coefficient` "
                "(the centering loss's weight), not `loss_weights`.")
        coefficient = center_rewards_coefficient
        if coefficient is not None and (
                isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real)
                or not 0.0 <= float(coefficient) < float("inf")):
            raise ValueError(
                "`center_rewards_coefficient` must be None or a finite number >= 0 (TRL "
                f"suggests 0.01). Received: center_rewards_coefficient={coefficient!r}")
        # Centering off: only the Bradley-Terry loss, no `centering_loss` metric.
        weights = {"bradley_terry": 1.0, **({"centering": float(coefficient)} if coefficient else {})}
        kwargs.pop("loss_names", None)  # derived from the coefficient (an older config has none)
        super().__init__(
            backbone, num_classes=1, mode="regression", pooling=pooling, dropout=dropout,
            hidden_dim=hidden_dim, loss_weights=weights, loss_names=tuple(weights), **kwargs)
        self.center_rewards_coefficient = None if coefficient is None else float(coefficient)
        self.reward_accuracy = keras.metrics.Mean(name="reward_accuracy")
        self.reward_margin = keras.metrics.Mean(name="reward_margin")
        self.chosen_reward = keras.metrics.Mean(name="chosen_reward")
        self.rejected_reward = keras.metrics.Mean(name="rejected_reward")

    @property
    def reward_head(self):
        """The `Dense(1)` output layer (`SequenceClassifier`'s `output_dense`)."""
        return self.output_dense

    # --- forward -------------------------------------------------------------

    def score(self, inputs, training=False):
        """The rewards of single sequences: float32 `[batch]`.

        Args:
            inputs: dict of int `[batch, length]` `token_ids` and
                `padding_mask` (and `segment_ids` where the backbone takes
                them).
            training: run with dropout.
        """
        return SequenceClassifier.call(self, inputs, training=training)[:, 0]

    def pair_inputs(self, inputs):
        """The `[chosen; rejected]` concatenation of a preference batch on
        the batch axis: a dict of `token_ids`, `padding_mask` (and
        `segment_ids` where both sides have them), `[2 * batch, length]`.

        Raises:
            ValueError: a missing key (named), or sides of different shapes.
        """
        if not is_pair_batch(inputs):
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(
                "RewardModel trains on preference batches: x = {'chosen_token_ids', "
                "'chosen_padding_mask', 'rejected_token_ids', 'rejected_padding_mask'} "
                "(kobjectives.data.preference_dataset), with an optional per-pair 'margin'. "
                f"Received: {keys}")
        needed = ["token_ids"]
        if self.resolved_pooling in ("last", "mean"):
            needed.append("padding_mask")
        for name in needed:
            for side in SIDES:
                if f"{side}_{name}" not in inputs:
                    raise ValueError(
                        f"The preference batch has no '{side}_{name}' (pooling="
                        f"{self.resolved_pooling!r} needs it). Received keys: {sorted(inputs)}")
        merged = {}
        for name in ("token_ids", "padding_mask", "segment_ids"):
            chosen, rejected = inputs.get(f"chosen_{name}"), inputs.get(f"rejected_{name}")
            if chosen is None or rejected is None:
                continue
            chosen, rejected = tf.convert_to_tensor(chosen), tf.convert_to_tensor(rejected)
            if not chosen.shape.is_compatible_with(rejected.shape):
                raise ValueError(
                    f"'chosen_{name}' {chosen.shape} and 'rejected_{name}' {rejected.shape} "
                    "must have one shape: the two sides are padded to the same length.")
            if chosen.dtype != rejected.dtype:
                rejected = tf.cast(rejected, chosen.dtype)
            merged[name] = tf.concat([chosen, rejected], axis=0)
        return merged

    def call(self, inputs, training=False):
        if is_pair_batch(inputs):
            chosen, rejected = split_pairs(self.score(self.pair_inputs(inputs), training))
            return {"chosen_rewards": chosen, "rejected_rewards": rejected}
        return self.score(inputs, training=training)

    def export_outputs(self, inputs):
        """Inference outputs for `kobjectives.export.export_saved_model`:
        `reward` float32 `[batch]`, one score per sequence."""
        return {"reward": self.score(inputs, training=False)}

    # --- loss and metrics ----------------------------------------------------

    def example_losses(self, y, y_pred, sample_weight=None):
        raise TypeError(
            "RewardModel has no per-example regression targets; its losses are per pair: "
            "see compute_losses (the Bradley-Terry and centering terms).")

    def _pair_weights(self, rewards, sample_weight):
        weights = tf.ones_like(rewards)
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight, tf.float32)
            if sample_weight.shape.rank == 2 and sample_weight.shape[-1] == 1:
                sample_weight = sample_weight[:, 0]
            weights = weights * sample_weight
        return weights

    def _rewards(self, y_pred):
        if not isinstance(y_pred, dict) or set(y_pred) != {"chosen_rewards", "rejected_rewards"}:
            raise ValueError(
                "RewardModel's losses need the rewards of a preference batch, "
                "{'chosen_rewards', 'rejected_rewards'} (call the model on x = "
                "{'chosen_*', 'rejected_*'}).")
        return y_pred["chosen_rewards"], y_pred["rejected_rewards"]

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{"bradley_terry": (per-pair loss, weights), "centering":
        ((r_c + r_r)^2, weights)}` (no `centering` with the coefficient None
        or 0); the base reduces, weights and sums them.

        Args:
            x: the preference batch; its `margin` (float `[batch]`), when
                present, is each pair's margin.
            y: unused (None).
            y_pred: `{"chosen_rewards", "rejected_rewards"}` `[batch]`.
            sample_weight: optional float `[batch]`, >= 0, per pair.
        """
        if y is not None:
            raise ValueError(
                "RewardModel takes no y: the preference is in x (chosen over rejected). "
                "Pass the preference batch as x only.")
        chosen, rejected = self._rewards(y_pred)
        margin = x.get("margin") if isinstance(x, dict) else None
        weights = self._pair_weights(chosen, sample_weight)
        losses = {"bradley_terry": (bradley_terry_loss(chosen, rejected, margin=margin), weights)}
        if "centering" in self.loss_names:
            losses["centering"] = (reward_centering(chosen, rejected), weights)
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return Objective.compute_loss(self, x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates `reward_accuracy`, `reward_margin`, `chosen_reward` and
        `rejected_reward` (weighted by `sample_weight`); returns every
        metric's result."""
        chosen, rejected = self._rewards(y_pred)
        weights = self._pair_weights(chosen, sample_weight)
        self.reward_accuracy.update_state(tf.cast(chosen > rejected, tf.float32), weights)
        self.reward_margin.update_state(chosen - rejected, weights)
        self.chosen_reward.update_state(chosen, weights)
        self.rejected_reward.update_state(rejected, weights)
        return self.get_metrics_result()

    def compile(self, optimizer="auto", **kwargs):
        """Configures training; the loss and the metrics are built in.

        Args:
            optimizer: `"auto"` (AdamW, learning rate 5e-5, weight decay
                0.01, clipnorm 1.0) or any `keras.Model.compile` optimizer.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...);
                `loss`, `metrics` and `weighted_metrics` are refused.
        """
        for name in ("metrics", "weighted_metrics"):
            if kwargs.get(name) not in (None, "auto"):
                raise ValueError(
                    f"RewardModel tracks its own metrics ({', '.join(REWARD_METRICS)}); do "
                    f"not pass `{name}` to compile().")
            kwargs.pop(name, None)
        Objective.compile(self, optimizer=optimizer, **kwargs)

    def get_config(self):
        config = super().get_config()
        for key in ("num_classes", "mode", "label_smoothing", "class_weights",
                    "positive_weights", "loss_weights", "loss_names"):
            config.pop(key, None)
        config["center_rewards_coefficient"] = self.center_rewards_coefficient
        return config


def is_pair_batch(inputs):
    """Whether `inputs` is a preference batch (has `chosen_token_ids` and
    `rejected_token_ids`)."""
    return isinstance(inputs, dict) and any(
        key in inputs for key in ("chosen_token_ids", "rejected_token_ids"))
