"""Preference optimization of a causal LM: the DPO family
(`DirectPreferenceOptimization`), the reference-free SimPO, CPO and ORPO
(`ReferenceFreePreferenceOptimization`) and KTO
(`KahnemanTverskyOptimization`), over the policy's hidden states and output
kernel (`kobjectives.objectives.CausalLanguageModel`).

The math is `kobjectives.ops.preference` (TRL's formulas, transcribed from
TRL 1.13); these classes run the policy once per batch on the concatenated
`[chosen; rejected]` sequences (TRL's `concatenated_forward`), take the
reference policy's log-probabilities from the data (precomputed in one pass,
`precompute_reference_log_probs`) or from a frozen reference model
(`kobjectives.objectives.FrozenModel`), and reduce every term to an exact
global-batch mean under `tf.distribute`. See `docs/preference_optimization.md`.
"""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.objectives.causal_language_model import CausalLanguageModel
from kobjectives.objectives.frozen import FrozenModel
from kobjectives.objectives.objective import Objective
from kobjectives.ops.chunked_cross_entropy import DEFAULT_CHUNK_SIZE
from kobjectives.ops.chunked_cross_entropy import _check_chunk_size
from kobjectives.ops.preference import CPO_LOSS_TYPES
from kobjectives.ops.preference import DPO_LOSS_TYPES
from kobjectives.ops.preference import F_DIVERGENCE_TYPES
from kobjectives.ops.preference import KTO_LOSS_TYPES
from kobjectives.ops.preference import LABEL_SMOOTHING_LOSS_TYPES
from kobjectives.ops.preference import average_log_probs
from kobjectives.ops.preference import cpo_loss
from kobjectives.ops.preference import dpo_loss
from kobjectives.ops.preference import kto_kl_baseline
from kobjectives.ops.preference import kto_loss
from kobjectives.ops.preference import ld_token_weights
from kobjectives.ops.preference import odds_ratio_loss
from kobjectives.ops.preference import sequence_log_probs
from kobjectives.ops.preference import simpo_loss
from kobjectives.ops.preference import split_pairs
from kobjectives.ops.preference import wpo_weights
from kobjectives.ops.reduction import apply_weights
from kobjectives.ops.reduction import cross_replica_sum

# The batch layouts of `kobjectives.data.preference_dataset` and
# `kobjectives.data.kto_dataset` (the same names; objectives do not import
# the data package).
PAIR_INPUT_KEYS = (
    "chosen_token_ids", "chosen_padding_mask", "chosen_completion_mask",
    "rejected_token_ids", "rejected_padding_mask", "rejected_completion_mask",
)
"""The keys a `DirectPreferenceOptimization` /
`ReferenceFreePreferenceOptimization` batch must hold."""

KTO_INPUT_KEYS = (
    "token_ids", "padding_mask", "completion_mask", "desirable",
    "kl_token_ids", "kl_padding_mask", "kl_completion_mask",
)
"""The keys a `KahnemanTverskyOptimization` batch must hold."""

REFERENCE_LOG_PROBS_KEYS = ("reference_chosen_logps", "reference_rejected_logps")
"""Keys of precomputed reference log-probabilities of pairs (float32
`[batch]`), as `kobjectives.data.REFERENCE_LOGPS_KEYS`."""

KTO_REFERENCE_LOG_PROBS_KEYS = ("reference_logps", "reference_kl_logps")
"""Keys of precomputed reference log-probabilities of KTO rows and their KL
rows, as `kobjectives.data.KTO_REFERENCE_LOGPS_KEYS`."""

REFERENCE_FREE_METHODS = ("simpo", "cpo", "orpo")
"""The `method`s of `ReferenceFreePreferenceOptimization`."""

WPO_OUTPUT_KEYS = ("chosen_wpo_log_weights", "rejected_wpo_log_weights")
"""The outputs `DirectPreferenceOptimization(use_weighting=True)` adds: the
policy's WPO log-weights of each pair's completions (float32 `[batch]`)."""

LD_OUTPUT_KEYS = ("chosen_unweighted_logps", "rejected_unweighted_logps")
"""The outputs `DirectPreferenceOptimization(ld_alpha=...)` adds: the
policy's plain summed completion log-probabilities (without LD-DPO's
weights; float32 `[batch]`), of which the `"sft"` term takes its token
mean."""


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _as_language_model(model, what):
    """`model` as a `CausalLanguageModel` (a causal backbone is wrapped)."""
    if isinstance(model, CausalLanguageModel):
        return model
    if isinstance(model, Objective) or not isinstance(model, keras.Model):
        raise TypeError(
            f"`{what}` must be a kobjectives.objectives.CausalLanguageModel or a causal "
            "keras-hub backbone (e.g. GPT2Backbone, LlamaBackbone) to wrap into one. "
            f"Received: {type(model).__name__}"
        )
    return CausalLanguageModel(model, chunk_size=DEFAULT_CHUNK_SIZE)


def _check_float(name, value, positive=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or (positive and not value > 0):
        kind = "a positive, finite number" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return float(value)


def _check_ld_alpha(ld_alpha):
    """`ld_alpha` as a float, or None (LD-DPO off)."""
    if ld_alpha is None:
        return None
    if isinstance(ld_alpha, bool) or not isinstance(
            ld_alpha, (int, float, np.floating, np.integer)) or not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(
            "`ld_alpha` must be None (LD-DPO off) or a number in [0, 1]: the weight of the "
            "longer completion's tokens past the shorter one's length (TRL's "
            f"DPOConfig.ld_alpha; 1 is plain DPO). Received: ld_alpha={ld_alpha!r}"
        )
    return float(ld_alpha)


def _check_keys(x, keys, owner, layout):
    if not isinstance(x, dict):
        raise ValueError(
            f"{owner} takes a dict batch with keys {list(keys)} ({layout}). "
            f"Received: {type(x).__name__}"
        )
    missing = [key for key in keys if key not in x]
    if missing:
        raise ValueError(
            f"{owner}: the batch lacks {missing} ({layout} yields them). "
            f"Received keys: {sorted(x)}"
        )


def _next_token_targets(token_ids, completion_mask):
    """`(labels, weights)` `[batch, length]`: position `t` predicts token
    `t + 1`, weighted by that token's completion mask (0 at the last
    position)."""
    token_ids = tf.convert_to_tensor(token_ids)
    mask = tf.cast(completion_mask, tf.float32)
    labels = tf.concat([token_ids[:, 1:], tf.zeros_like(token_ids[:, :1])], axis=1)
    weights = tf.concat([mask[:, 1:], tf.zeros_like(mask[:, :1])], axis=1)
    return tf.cast(labels, tf.int32), weights


def completion_log_probs(language_model, token_ids, padding_mask, completion_mask,
                         chunk_size=None, training=False, return_wpo_log_weights=False,
                         ld_alpha=None):
    """Summed log-probabilities of each sequence's completion tokens under a
    causal LM.

    Runs `language_model.encode` and scores, with
    `kobjectives.ops.sequence_log_probs`, every token whose
    `completion_mask` is 1 from the states before it: the log-probability of
    a sequence's completion given its prompt (the policy's or the
    reference's `logps` of TRL). The log-softmax and sums are float32.

    Args:
        language_model: a `CausalLanguageModel` (its `encode` and `kernel`).
        token_ids: int tensor `[batch, length]`, `[start] prompt completion`
            right-padded (`kobjectives.data.preference_dataset`).
        padding_mask: bool/int tensor `[batch, length]`.
        completion_mask: int/float tensor `[batch, length]`, 1 on the
            completion tokens scored (never at position 0).
        chunk_size: None (full logits) or an int: at most `chunk_size`
            positions' logits exist at once.
        training: bool, the backbone's dropout.
        return_wpo_log_weights: bool, also return each sequence's WPO
            log-weight (`kobjectives.ops.sequence_log_probs`), from the same
            logits.
        ld_alpha: None, or a float in `[0, 1]` for a `[chosen; rejected]`
            pair batch: also return LD-DPO's sums
            (`kobjectives.ops.ld_token_weights` of the completion tokens),
            from the same logits.

    Returns:
        `(sums, counts)`: float32 `[batch]`, the summed completion
        log-probabilities and the number of completion tokens; with
        `return_wpo_log_weights`, `(sums, counts, wpo_log_weights)`; with
        `ld_alpha`, the LD-weighted sums last (the counts stay the full
        completions').
    """
    hidden = language_model.encode(
        {"token_ids": token_ids, "padding_mask": padding_mask}, training=training)
    labels, weights = _next_token_targets(token_ids, completion_mask)
    extra = None if ld_alpha is None else ld_token_weights(weights, ld_alpha)
    return sequence_log_probs(hidden, language_model.kernel(), labels, weights,
                              chunk_size=chunk_size,
                              return_wpo_log_weights=return_wpo_log_weights,
                              extra_weights=extra)


def _concat_pairs(x):
    """`(token_ids, padding_mask, completion_mask)` `[2 * batch, length]`,
    chosen rows first."""
    chosen = tf.convert_to_tensor(x["chosen_token_ids"])
    rejected = tf.convert_to_tensor(x["rejected_token_ids"])
    if chosen.shape.rank != 2 or not chosen.shape.is_compatible_with(rejected.shape):
        raise ValueError(
            "`chosen_token_ids` and `rejected_token_ids` must be `[batch, length]` of one "
            "shape (kobjectives.data.preference_dataset pads both sides alike). Received "
            f"shapes {chosen.shape} and {rejected.shape}."
        )
    out = []
    for name in ("token_ids", "padding_mask", "completion_mask"):
        first = tf.convert_to_tensor(x[f"chosen_{name}"])
        second = tf.convert_to_tensor(x[f"rejected_{name}"])
        if name != "token_ids":
            first, second = tf.cast(first, tf.int32), tf.cast(second, tf.int32)
        out.append(tf.concat([first, second], axis=0))
    return tuple(out)


def _pair_reference_log_probs(language_model, x, chunk_size, ld_alpha=None):
    token_ids, padding_mask, completion_mask = _concat_pairs(x)
    sums, _, *ld_sums = completion_log_probs(
        language_model, token_ids, padding_mask, completion_mask, chunk_size=chunk_size,
        training=False, ld_alpha=ld_alpha)
    if ld_alpha is not None:  # the reference's logps weighted as the policy's
        sums = ld_sums[0]
    chosen, rejected = split_pairs(tf.stop_gradient(sums))
    return dict(zip(REFERENCE_LOG_PROBS_KEYS, (chosen, rejected)))


def _kto_rows(x, with_kl):
    names = ("token_ids", "padding_mask", "completion_mask")
    rows = [tf.convert_to_tensor(x[name]) for name in names]
    if not with_kl:
        return rows[0], tf.cast(rows[1], tf.int32), rows[2]
    kl_rows = [tf.convert_to_tensor(x[f"kl_{name}"]) for name in names]
    if not rows[0].shape.is_compatible_with(kl_rows[0].shape):
        raise ValueError(
            "`token_ids` and `kl_token_ids` must have one shape (kobjectives.data.kto_dataset). "
            f"Received {rows[0].shape} and {kl_rows[0].shape}."
        )
    return tuple(
        tf.concat([tf.cast(a, tf.int32), tf.cast(b, tf.int32)], axis=0) if i else
        tf.concat([a, b], axis=0)
        for i, (a, b) in enumerate(zip(rows, kl_rows))
    )


def _kto_reference_log_probs(language_model, x, chunk_size, with_kl=True):
    """The reference's sums of the rows and, `with_kl`, of the KL rows (else
    zeros: `apo_zero_unpaired` has no KL reference point and never reads
    them, so the KL rows are not run)."""
    sums, _ = completion_log_probs(language_model, *_kto_rows(x, with_kl=with_kl),
                                   chunk_size=chunk_size, training=False)
    sums = tf.stop_gradient(sums)
    rows, kl_rows = split_pairs(sums) if with_kl else (sums, tf.zeros_like(sums))
    return dict(zip(KTO_REFERENCE_LOG_PROBS_KEYS, (rows, kl_rows)))


def _pair_weights(sample_weight, like):
    """Per-pair (or per-row) weights: 1, or `sample_weight` `[batch]`."""
    if sample_weight is None:
        return tf.ones_like(like)
    weights = tf.cast(sample_weight, tf.float32)
    if weights.shape.rank == 2 and weights.shape[-1] == 1:
        weights = weights[:, 0]
    if weights.shape.rank not in (0, 1):
        raise ValueError(
            "`sample_weight` of a preference objective is one weight per pair (or row): "
            f"`[batch]`. Received shape {weights.shape}."
        )
    return tf.broadcast_to(weights, tf.shape(like))


# ---------------------------------------------------------------------------
# The shared base: a trained causal-LM policy.
# ---------------------------------------------------------------------------


class _PolicyObjective(Objective):
    """A causal-LM policy trained on preferences: its construction, the
    export interface (the policy serves), and the reward metrics."""

    trained_models = ("policy",)
    # The policy's backbone is what a run saves as its keras-hub preset.
    exported_model = "backbone"
    # TRL's default: preference optimization starts from a trained (SFT) model.
    default_learning_rate = 1e-6

    def __init__(self, policy, chunk_size=None, **kwargs):
        policy = _as_language_model(policy, "policy")
        if chunk_size is not None:
            _check_chunk_size(chunk_size)
        kwargs.setdefault("dtype", policy.dtype_policy)
        super().__init__(**kwargs)
        self.policy = policy
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.built = policy.built

    @property
    def backbone(self):
        """The policy's backbone (`exported_model`)."""
        return self.policy.backbone

    def serving_model(self):
        """The policy `CausalLanguageModel`: the SavedModel serves its
        `export_outputs` (`logits` `[B, L, V]`, generation with
        `kobjectives.export.TextGenerator`); no reference is exported."""
        return self.policy

    def export_outputs(self, inputs):
        """The policy's `export_outputs`: `hidden_states`, `logits` `[B, L,
        V]` (position `t` predicts token `t + 1`), `next_token_logits`."""
        return self.policy.export_outputs(inputs)

    def _freeze_reference(self, reference, policy):
        """`reference` as a `FrozenModel` holding a `CausalLanguageModel`
        (a backbone is wrapped; the source is kept for saving)."""
        if reference is None:
            return None
        model = reference.model if isinstance(reference, FrozenModel) else reference
        if isinstance(model, keras.Model):
            policy_ids = {id(v) for v in policy.weights}
            if any(id(v) in policy_ids for v in model.weights):
                raise ValueError(
                    "`reference` shares weights with the policy, so freezing it would freeze "
                    "the policy too. Pass a copy: e.g. `cls.from_config(policy.get_config())` "
                    "then `set_weights(policy.get_weights())`, or load it from a preset "
                    "(FrozenModel.from_preset)."
                )
        frozen = self.freeze(reference)
        if not isinstance(frozen.model, CausalLanguageModel):
            frozen = FrozenModel(_as_language_model(frozen.model, "reference"), frozen.source)
        return frozen

    def _create_reward_metrics(self):
        self.reward_accuracy = keras.metrics.Mean(name="reward_accuracy")
        self.chosen_reward = keras.metrics.Mean(name="chosen_reward")
        self.rejected_reward = keras.metrics.Mean(name="rejected_reward")
        self.reward_margin = keras.metrics.Mean(name="reward_margin")
        self.chosen_log_prob = keras.metrics.Mean(name="chosen_log_prob")
        self.rejected_log_prob = keras.metrics.Mean(name="rejected_log_prob")

    def _update_reward_metrics(self, chosen_rewards, rejected_rewards, chosen_logps,
                               rejected_logps, weights):
        chosen_rewards = tf.stop_gradient(chosen_rewards)
        rejected_rewards = tf.stop_gradient(rejected_rewards)
        correct = tf.cast(chosen_rewards > rejected_rewards, tf.float32)
        self.reward_accuracy.update_state(correct, sample_weight=weights)
        self.chosen_reward.update_state(chosen_rewards, sample_weight=weights)
        self.rejected_reward.update_state(rejected_rewards, sample_weight=weights)
        self.reward_margin.update_state(chosen_rewards - rejected_rewards, sample_weight=weights)
        self.chosen_log_prob.update_state(tf.stop_gradient(chosen_logps), sample_weight=weights)
        self.rejected_log_prob.update_state(tf.stop_gradient(rejected_logps),
                                            sample_weight=weights)

    def _pair_call(self, inputs, training, wpo=False, ld_alpha=None):
        _check_keys(inputs, PAIR_INPUT_KEYS, type(self).__name__,
                    "kobjectives.data.preference_dataset")
        token_ids, padding_mask, completion_mask = _concat_pairs(inputs)
        sums, counts, *rest = completion_log_probs(
            self.policy, token_ids, padding_mask, completion_mask, chunk_size=self.chunk_size,
            training=training, return_wpo_log_weights=wpo, ld_alpha=ld_alpha)
        outputs = {}
        if ld_alpha is not None:  # TRL's logps are the LD-weighted sums
            outputs.update(zip(LD_OUTPUT_KEYS, split_pairs(sums)))
            sums = rest.pop()
        chosen, rejected = split_pairs(sums)
        chosen_lengths, rejected_lengths = split_pairs(counts)
        outputs.update({"chosen_logps": chosen, "rejected_logps": rejected,
                        "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths})
        if wpo:
            outputs.update(zip(WPO_OUTPUT_KEYS, split_pairs(rest[0])))
        return outputs

    def call(self, inputs, training=False):
        return self._pair_call(inputs, training)

    def get_config(self):
        config = super().get_config()
        config["chunk_size"] = self.chunk_size
        return config


def _reference_missing(owner, keys):
    return ValueError(
        f"{owner} has no reference model and the batch holds no precomputed {list(keys)}. "
        "Pass `reference=` (a frozen copy of the starting policy), or precompute them in "
        "one pass with kobjectives.objectives.precompute_reference_log_probs and add them "
        "to the data (preference_dataset/kto_dataset(extra_features=...))."
    )


# ---------------------------------------------------------------------------
# DPO.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kobjectives")
class DirectPreferenceOptimization(_PolicyObjective):
    """The DPO family: every loss type of TRL's `DPOTrainer`, weighted sums
    of them, and the f-divergence variants.

    The policy (a `CausalLanguageModel`) runs once per batch on the chosen
    and rejected sequences concatenated on the batch axis; each sequence's
    completion log-probability (`completion_log_probs`, the prompt and the
    padding excluded) and the reference's give the loss of
    `kobjectives.ops.dpo_loss`, whose docstring holds every type's formula,
    reference and TRL convention.

    **The reference.** Either precomputed in the data (the keys
    `reference_chosen_logps`, `reference_rejected_logps`: one pass with
    `precompute_reference_log_probs`, passed back to
    `kobjectives.data.preference_dataset(extra_features=...)`), so the
    reference is not held during training; or computed on the fly by
    `reference`, a frozen copy of the starting policy (a
    `kobjectives.objectives.FrozenModel`: not trainable, called with
    `training=False`, outside the objective's weights, checkpoints and
    export; saving stores its source: load it with
    `FrozenModel.from_preset` / `from_file`). The data's values win when
    both exist. With `loss_type="sft"` alone no reference is used, nor
    with `reference_free=True` (TRL's `DPOConfig(reference_free=True)`):
    the reference log-probabilities are then 0, a reference that assigns
    every completion the same probability, so every loss type sees the
    policy's log-probabilities alone and the rewards are `beta * logps`;
    reference values a batch carries are ignored.

    **Named losses.** One per loss type, named by it (`"sigmoid"`,
    `"bco_pair"`, `"sft"`, ...), each a global mean over the pairs, weighted
    by `loss_weights` and summed (TRL's `sum_k w_k mean(loss_k)`) and
    logged unweighted as `{type}_loss`. `"sft"` is TRL's: the chosen
    completions' NLL as a global mean over their tokens. All terms are
    exact under `tf.distribute` except `aot`/`aot_unpaired`, whose sorted
    quantiles are taken within each replica's batch (as TRL within each
    process).

    **Metrics** (means over pairs, exact under `tf.distribute`):
    `reward_accuracy` (the share of pairs with `chosen_reward >
    rejected_reward`; ties count as wrong, so 0 at step 0), `chosen_reward`
    and `rejected_reward` (TRL's implicit rewards `beta * (policy -
    reference)` log-probabilities), `reward_margin` (their difference),
    `chosen_log_prob` and `rejected_log_prob` (the policy's summed
    completion log-probabilities); with `use_weighting`, `wpo_weight` (the
    mean pair weight `w_c * w_r`).

    **WPO weighting** (`use_weighting=True`, TRL 1.x's
    `DPOConfig(use_weighting=True)`; Zhou et al. 2024,
    https://arxiv.org/abs/2406.11827): every pair's loss, of every type, is
    multiplied by `kobjectives.ops.wpo_weights` of the policy's WPO
    log-weights (`w = exp(mean_t (log p(y_t) - log sum_v p_v^2))` of each
    completion, from the same forward pass, without gradient; never the
    reference's, so precomputed and online references alike). Not clamped,
    as TRL 1.x. The `"sft"` term is TRL's batch token mean times the pair
    weight, i.e. `mean(w_c * w_r) * token mean` (both global under
    `tf.distribute`). `aot`/`aot_unpaired` refuse it (their losses are of
    sorted quantiles, not of pairs; TRL multiplies them anyway).

    **LD-DPO** (`ld_alpha`, TRL 1.x's `DPOConfig(ld_alpha=...)`; Liu et al.
    2024, https://arxiv.org/abs/2409.06411): each completion's
    log-probability weighs the tokens past the pair's shorter completion
    length by `ld_alpha` (`kobjectives.ops.ld_token_weights`), for the
    policy and the reference alike (online, or precomputed by
    `precompute_reference_log_probs` handed this objective), so the longer
    answer's extra tokens count less in every loss type and in the rewards
    and `*_log_prob` metrics. As in TRL, the completion token counts
    (`ipo`, `sigmoid_norm`) stay the full ones and `"sft"` stays the plain
    token mean of the chosen completions' NLL. Precomputed reference values
    must come with the same `ld_alpha`: the objective cannot tell.

    Args:
        policy: the trained `CausalLanguageModel`, or a causal keras-hub
            backbone (wrapped into one).
        reference: optional frozen reference: a `FrozenModel`, a
            `CausalLanguageModel` or a causal backbone (frozen here; it must
            not share weights with the policy). None when the data holds the
            precomputed values.
        loss_type: one of `kobjectives.ops.preference.DPO_LOSS_TYPES` or a
            list of distinct ones (their weighted sum; MPO is `["sigmoid",
            "bco_pair", "sft"]`). Defaults to `"sigmoid"` (DPO).
        beta: positive float, the temperature. Defaults to 0.1.
        label_smoothing: float in `[0, 0.5]`, used by `exo_pair` (> 0),
            `robust` (< 0.5), `aot`, `aot_unpaired`; a value > 0 none of the
            requested types uses raises.
        loss_weights: a list of floats >= 0, one per loss type (TRL's), or a
            dict `{type: weight}`; default 1 each.
        f_divergence_type: one of `F_DIVERGENCE_TYPES` (default
            `"reverse_kl"`, plain DPO); others need types built on the
            chosen-rejected difference.
        f_alpha_divergence_coef: float, alpha of `"alpha_divergence"`.
        discopop_tau: positive float, DiscoPOP's temperature.
        bco_delta: None (0, TRL 1.x) or a float, `bco_pair`'s reward shift.
        chunk_size: None (the full `[2B, L, V]` logits; fine for small
            vocabularies) or an int: positions whose logits exist at once
            (`kobjectives.ops.chunked_token_cross_entropy`; use it for a
            real vocabulary).
        use_weighting: bool, WPO weighting (above). Defaults to False.
        ld_alpha: None (off, the default) or a float in `[0, 1]`, LD-DPO's
            weight of the tokens past the shorter completion (above; 1
            equals plain DPO, 0 drops them).
        reference_free: bool, TRL's `DPOConfig.reference_free`: ignore any
            reference and use reference log-probabilities of 0 (a reference
            assigning equal probability to every completion) in every loss
            type and in the rewards (`beta * logps`); `reference` must then
            be None, the batch's reference values are ignored and
            `precompute_reference_log_probs` has nothing to compute.
            Defaults to False.
        **kwargs: `Objective` / `keras.Model` arguments (`name`, `dtype`).

    Inputs: a dict of `kobjectives.data.preference_dataset`'s keys
        (`PAIR_INPUT_KEYS`, `[batch, length]`), optionally the precomputed
        reference log-probabilities `[batch]`; optional `sample_weight`
        `[batch]` (one weight per pair; the `sft` term weighs tokens by it).

    Outputs: a dict of float32 `[batch]`: `chosen_logps`, `rejected_logps`
        (the policy's summed completion log-probabilities), `chosen_lengths`,
        `rejected_lengths` (completion token counts); with `use_weighting`,
        `chosen_wpo_log_weights`, `rejected_wpo_log_weights`
        (`WPO_OUTPUT_KEYS`, no gradient); with `ld_alpha`, `chosen_logps`
        and `rejected_logps` are LD-weighted and `chosen_unweighted_logps`,
        `rejected_unweighted_logps` (`LD_OUTPUT_KEYS`) the plain sums.

    Raises:
        ValueError: an unknown loss or f-divergence type, a label smoothing
            the types cannot use, bad weights or `beta` (the ops' checks, at
            construction); a non-bool `use_weighting`, or `use_weighting`
            with `aot`/`aot_unpaired`; an `ld_alpha` that is not None or a
            number in `[0, 1]`; a non-bool `reference_free`, or a
            `reference` with `reference_free=True`; a reference sharing
            weights with the policy; at the first batch, missing keys, or
            neither a reference nor precomputed values.
        TypeError: a policy or reference that is not a causal LM.

    Reference:
        Rafailov et al., 2023, "Direct Preference Optimization: Your
        Language Model is Secretly a Reward Model",
        https://arxiv.org/abs/2305.18290; the other types' papers in
        `kobjectives.ops.preference`; TRL's `DPOTrainer` (1.13); WPO: Zhou
        et al., 2024, "WPO: Enhancing RLHF with Weighted Preference
        Optimization", https://arxiv.org/abs/2406.11827; LD-DPO: Liu et
        al., 2024, "Length Desensitization in Direct Preference
        Optimization", https://arxiv.org/abs/2409.06411.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> reference = keras_hub.models.GPT2Backbone.from_config(backbone.get_config())
    >>> reference.set_weights(backbone.get_weights())
    >>> model = DirectPreferenceOptimization(backbone, reference, beta=0.1)
    >>> x = {"chosen_token_ids": np.array([[1, 5, 6, 7, 0, 0]]),
    ...      "rejected_token_ids": np.array([[1, 5, 9, 9, 9, 0]]),
    ...      "chosen_padding_mask": np.array([[1, 1, 1, 1, 0, 0]], bool),
    ...      "rejected_padding_mask": np.array([[1, 1, 1, 1, 1, 0]], bool),
    ...      "chosen_completion_mask": np.array([[0, 0, 1, 1, 0, 0]]),
    ...      "rejected_completion_mask": np.array([[0, 0, 1, 1, 1, 0]])}
    >>> model.compile(optimizer="sgd")
    >>> round(float(model.compute_loss(x=x, y_pred=model(x))), 4)  # policy == reference
    0.6931
    """

    frozen_models = ("reference",)
    precomputed_outputs = {"reference": REFERENCE_LOG_PROBS_KEYS}

    @property
    def loss_names(self):
        """One named loss per loss type."""
        return self._loss_types

    def __init__(self, policy, reference=None, loss_type="sigmoid", beta=0.1,
                 label_smoothing=0.0, loss_weights=None, f_divergence_type="reverse_kl",
                 f_alpha_divergence_coef=0.5, discopop_tau=0.05, bco_delta=None,
                 chunk_size=None, use_weighting=False, ld_alpha=None, reference_free=False,
                 **kwargs):
        types = [loss_type] if isinstance(loss_type, str) else loss_type
        if not isinstance(types, (list, tuple)) or not types or not all(
                isinstance(t, str) for t in types):
            raise ValueError(
                "`loss_type` must be a loss type name or a non-empty list of them. Valid "
                f"choices: {', '.join(map(repr, DPO_LOSS_TYPES))}. Received: {loss_type!r}"
            )
        if len(set(types)) != len(types):
            raise ValueError(
                f"`loss_type` lists a type twice ({list(types)}): each type is one named "
                "loss; give it one weight in `loss_weights`."
            )
        types = tuple(types)
        if isinstance(loss_weights, (list, tuple)):
            if len(loss_weights) != len(types):
                raise ValueError(
                    "`loss_weights` as a list needs one weight per loss type "
                    f"({len(types)}: {list(types)}). Received: loss_weights={loss_weights!r}"
                )
            loss_weights = dict(zip(types, loss_weights))
        elif loss_weights is not None and not isinstance(loss_weights, dict):
            raise ValueError(
                "`loss_weights` must be a list (one weight per loss type) or a dict "
                f"{{type: weight}}. Received: {loss_weights!r}"
            )
        beta = _check_float("beta", beta, positive=True)
        bco_delta = _check_float("bco_delta", bco_delta, allow_none=True)
        if not isinstance(use_weighting, (bool, np.bool_)):
            raise ValueError(
                "`use_weighting` must be True (WPO weighting) or False. "
                f"Received: use_weighting={use_weighting!r}"
            )
        if use_weighting and {"aot", "aot_unpaired"} & set(types):
            raise ValueError(
                "`use_weighting=True` weighs each pair's loss, but loss types 'aot'/"
                "'aot_unpaired' are losses of sorted quantiles over the batch, not of pairs. "
                "Drop use_weighting or those types."
            )
        ld_alpha = _check_ld_alpha(ld_alpha)
        if not isinstance(reference_free, (bool, np.bool_)):
            raise ValueError(
                "`reference_free` must be True (TRL's DPOConfig.reference_free: reference "
                "log-probabilities of 0, no reference model) or False. "
                f"Received: reference_free={reference_free!r}"
            )
        if reference_free and reference is not None:
            raise ValueError(
                "`reference_free=True` uses no reference model (its log-probabilities are 0), "
                "but a `reference` was passed. Drop `reference=` (reference_free=True), or "
                "keep the reference and set reference_free=False."
            )
        # The ops' checks, on the whole configuration, before any data.
        _validate_dpo(types, beta, label_smoothing, f_divergence_type, f_alpha_divergence_coef,
                      discopop_tau, bco_delta)
        object.__setattr__(self, "_loss_types", types)
        super().__init__(policy, chunk_size=chunk_size, loss_weights=loss_weights, **kwargs)
        self.loss_type = loss_type if isinstance(loss_type, str) else list(types)
        self.beta = beta
        self.label_smoothing = float(label_smoothing)
        self.f_divergence_type = f_divergence_type
        self.f_alpha_divergence_coef = float(f_alpha_divergence_coef)
        self.discopop_tau = float(discopop_tau)
        self.bco_delta = bco_delta
        self.use_weighting = bool(use_weighting)
        self.ld_alpha = ld_alpha
        self.reference_free = bool(reference_free)
        self.reference = self._freeze_reference(reference, self.policy)
        self._create_reward_metrics()
        self.wpo_weight = (keras.metrics.Mean(name="wpo_weight")
                           if self.use_weighting else None)

    def call(self, inputs, training=False):
        return self._pair_call(inputs, training, wpo=self.use_weighting,
                               ld_alpha=self.ld_alpha)

    @property
    def needs_reference(self):
        """False for `reference_free=True` and for `loss_type="sft"` alone."""
        return not self.reference_free and set(self._loss_types) != {"sft"}

    def compute_frozen_outputs(self, name, x):
        """The reference's summed completion log-probabilities of the batch:
        `{"reference_chosen_logps", "reference_rejected_logps"}` `[batch]`
        (LD-weighted with `ld_alpha`)."""
        if self.reference_free:
            raise _nothing_to_precompute()
        return _pair_reference_log_probs(self.reference.model, x, self.chunk_size,
                                         ld_alpha=self.ld_alpha)

    def reference_log_probs(self, x, like):
        """`(chosen, rejected)` reference log-probabilities of batch `x`:
        zeros when no reference is used (`needs_reference` False: the
        batch's reference values, if any, are ignored)."""
        if not self.needs_reference:
            return tf.zeros_like(like), tf.zeros_like(like)
        if self.reference is None and not all(k in x for k in REFERENCE_LOG_PROBS_KEYS):
            raise _reference_missing(type(self).__name__, REFERENCE_LOG_PROBS_KEYS)
        outputs = self.frozen_outputs("reference", x)
        return tuple(tf.cast(outputs[k], tf.float32) for k in REFERENCE_LOG_PROBS_KEYS)

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{type: (per-pair losses, pair weights)}`; `"sft"`: (per-pair
        mean token NLL, weights times token counts), a global token mean.
        With `use_weighting` every per-pair loss is multiplied by the pair's
        WPO weight, and `"sft"` is (pair weight times the global token mean,
        pair weights). With `ld_alpha` the `"sft"` term takes the plain sums
        (`LD_OUTPUT_KEYS`), the other types the LD-weighted ones."""
        pc, pr = y_pred["chosen_logps"], y_pred["rejected_logps"]
        nc, nr = y_pred["chosen_lengths"], y_pred["rejected_lengths"]
        rc, rr = self.reference_log_probs(x, pc)
        weights = _pair_weights(sample_weight, pc)
        if sample_weight is not None and {"aot", "aot_unpaired"} & set(self._loss_types):
            raise ValueError(
                "Loss types 'aot'/'aot_unpaired' are losses of sorted quantiles over the "
                "batch, not of pairs: per-pair `sample_weight` does not apply. Drop it."
            )
        pair_weights = self._wpo_pair_weights(y_pred, weights)
        terms = {}
        for name in self._loss_types:
            if name == "sft":
                nll = -average_log_probs(self._sft_log_probs(y_pred), nc)
                if pair_weights is None:
                    terms[name] = (nll, weights * nc)
                else:  # TRL: the batch token mean in every row, times the pair weight
                    terms[name] = (pair_weights * _global_token_mean(nll, weights * nc),
                                   weights)
                continue
            smoothing = self.label_smoothing if name in LABEL_SMOOTHING_LOSS_TYPES else 0.0
            losses, _, _ = dpo_loss(
                pc, pr, rc, rr, beta=self.beta, loss_type=name, label_smoothing=smoothing,
                chosen_lengths=nc, rejected_lengths=nr,
                f_divergence_type=self.f_divergence_type,
                f_alpha_divergence_coef=self.f_alpha_divergence_coef,
                discopop_tau=self.discopop_tau, bco_delta=self.bco_delta)
            if pair_weights is not None:
                losses = losses * pair_weights
            terms[name] = (losses, weights)
        self._update_reward_metrics(self.beta * (pc - rc), self.beta * (pr - rr), pc, pr,
                                    weights)
        return terms

    def _sft_log_probs(self, y_pred):
        """The chosen sums of the `"sft"` term: without LD-DPO's weights
        (TRL's plain token mean of the chosen NLL)."""
        if self.ld_alpha is None:
            return y_pred["chosen_logps"]
        if LD_OUTPUT_KEYS[0] not in y_pred:
            raise ValueError(
                f"DirectPreferenceOptimization(ld_alpha=...) with loss type 'sft' needs "
                f"{LD_OUTPUT_KEYS[0]!r} in `y_pred`: pass the objective's own outputs "
                "(`y_pred=model(x)`)."
            )
        return y_pred[LD_OUTPUT_KEYS[0]]

    def _wpo_pair_weights(self, y_pred, weights):
        """The pairs' WPO weights `w_c * w_r` (None without `use_weighting`),
        logged as `wpo_weight`."""
        if not self.use_weighting:
            return None
        missing = [key for key in WPO_OUTPUT_KEYS if key not in y_pred]
        if missing:
            raise ValueError(
                f"DirectPreferenceOptimization(use_weighting=True) needs {missing} in `y_pred`: "
                "pass the objective's own outputs (`y_pred=model(x)`)."
            )
        pair_weights = wpo_weights(*(y_pred[key] for key in WPO_OUTPUT_KEYS))
        self.wpo_weight.update_state(pair_weights, sample_weight=weights)
        return pair_weights

    def get_config(self):
        config = super().get_config()
        config.update({
            "loss_type": self.loss_type,
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
            "f_divergence_type": self.f_divergence_type,
            "f_alpha_divergence_coef": self.f_alpha_divergence_coef,
            "discopop_tau": self.discopop_tau,
            "bco_delta": self.bco_delta,
            "use_weighting": self.use_weighting,
            "ld_alpha": self.ld_alpha,
            "reference_free": self.reference_free,
        })
        return config


def _nothing_to_precompute():
    return ValueError(
        "This DirectPreferenceOptimization has reference_free=True: its reference "
        "log-probabilities are 0, so there is nothing to precompute. Train it on the data as "
        "is, or build it with reference_free=False and a `reference` to precompute that "
        "reference's values."
    )


def _global_token_mean(values, weights):
    """`sum(weights * values) / sum(weights)` over the global batch, the
    same scalar on every replica (both sums all-reduced; gradients reach
    every replica's values)."""
    weighted, weights = apply_weights(values, weights)
    return tf.math.divide_no_nan(cross_replica_sum(tf.reduce_sum(weighted)),
                                 cross_replica_sum(tf.reduce_sum(weights)))


def _validate_dpo(types, beta, label_smoothing, f_divergence_type, f_alpha_divergence_coef,
                  discopop_tau, bco_delta):
    if not isinstance(f_divergence_type, str) or f_divergence_type not in F_DIVERGENCE_TYPES:
        raise ValueError(
            f"Unknown `f_divergence_type` {f_divergence_type!r}. Valid choices: "
            f"{', '.join(map(repr, F_DIVERGENCE_TYPES))}."
        )
    one = [-1.0]
    dpo_loss(one, [-2.0], one, one, beta=beta, loss_type=list(types),
             label_smoothing=label_smoothing, chosen_lengths=[1.0], rejected_lengths=[1.0],
             f_divergence_type=f_divergence_type,
             f_alpha_divergence_coef=f_alpha_divergence_coef, discopop_tau=discopop_tau,
             bco_delta=bco_delta)


# ---------------------------------------------------------------------------
# SimPO, CPO, ORPO.
# ---------------------------------------------------------------------------

_DEFAULT_BETA = {"simpo": 2.0, "cpo": 0.1, "orpo": 0.1}
_DEFAULT_NLL_WEIGHT = {"simpo": 0.0, "cpo": 1.0, "orpo": 1.0}
_TERM = {"simpo": "simpo", "cpo": "cpo", "orpo": "odds_ratio"}


@keras.saving.register_keras_serializable(package="kobjectives")
class ReferenceFreePreferenceOptimization(_PolicyObjective):
    """Preference optimization without a reference model: SimPO, CPO and
    ORPO.

    A sibling of `DirectPreferenceOptimization` (same data, same single
    forward pass of the policy over `[chosen; rejected]`, same metrics),
    kept apart because these methods hold no reference at all and add the
    chosen completions' NLL as a second named loss. Two named losses:

    - the preference term, `"simpo"` (`kobjectives.ops.simpo_loss` on
      length-averaged log-probabilities), `"cpo"` (`kobjectives.ops.cpo_loss`
      of `cpo_loss_type`: summed log-probabilities for `sigmoid`/`hinge`,
      averaged for `ipo`/`simpo`, as TRL's `CPOTrainer`) or `"odds_ratio"`
      (`kobjectives.ops.odds_ratio_loss`, ORPO's `-beta log_sig(log odds
      ratio)` on averaged log-probabilities), a global mean over pairs;
    - `"nll"`: the negative log-likelihood of the chosen completions, a
      global mean over their tokens (TRL's); weight `nll_weight`.

    ORPO is `nll + odds_ratio` (`nll_weight` 1, `beta` ORPO's lambda), CPO
    `cpo + nll` (TRL's `cpo_alpha` 1), SimPO `simpo` alone (`nll_weight` 0;
    > 0 is CPO-SimPO). Rewards (metrics) are TRL's `beta * logps` of the
    log-probabilities the term uses; ORPO also logs `log_odds_ratio`.

    Args:
        policy: the trained `CausalLanguageModel`, or a causal backbone.
        method: `"simpo"`, `"cpo"` or `"orpo"`.
        beta: positive float; defaults to 2.0 (SimPO), 0.1 (CPO), 0.1
            (ORPO's lambda).
        gamma: float, SimPO's target margin (TRL's `simpo_gamma`), used by
            `"simpo"` and `cpo_loss_type="simpo"`; defaults to 0.5; passing
            it to another method raises.
        label_smoothing: float in `[0, 0.5]`, used by SimPO and CPO's
            `sigmoid`/`simpo`; others raise on a value > 0.
        cpo_loss_type: `method="cpo"`'s type, one of `CPO_LOSS_TYPES`
            (default `"sigmoid"`); passing it to another method raises.
        nll_weight: float >= 0, the weight of `"nll"`; defaults to 0
            (SimPO), 1 (CPO, ORPO).
        chunk_size: None (full logits) or an int, as
            `DirectPreferenceOptimization`.
        alpha: float, AlphaPO's reward shape (TRL's `CPOConfig.alpha`):
            methods `"simpo"` and `"cpo"` (any `cpo_loss_type`) take the
            rewards `(1 - p^-alpha) / alpha` instead of log-probabilities;
            0 (default) is off, and ORPO refuses another value. TRL's
            `loss_type="alphapo"` is `method="simpo"` with `alpha`.
        **kwargs: `keras.Model` arguments.

    Inputs and outputs: as `DirectPreferenceOptimization` (no reference
        keys).

    Reference:
        Meng et al., 2024, "SimPO", https://arxiv.org/abs/2405.14734; Gupta
        et al., 2025, "AlphaPO", https://arxiv.org/abs/2501.03884; Xu
        et al., 2024, "Contrastive Preference Optimization",
        https://arxiv.org/abs/2401.08417; Hong et al., 2024, "ORPO",
        https://arxiv.org/abs/2403.07691; TRL's `CPOTrainer`,
        `ORPOTrainer`.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> model = ReferenceFreePreferenceOptimization(backbone, method="orpo")
    >>> model.loss_names
    ('odds_ratio', 'nll')
    >>> x = {"chosen_token_ids": np.array([[1, 5, 6, 7, 0, 0]]),
    ...      "rejected_token_ids": np.array([[1, 5, 9, 9, 9, 0]]),
    ...      "chosen_padding_mask": np.array([[1, 1, 1, 1, 0, 0]], bool),
    ...      "rejected_padding_mask": np.array([[1, 1, 1, 1, 1, 0]], bool),
    ...      "chosen_completion_mask": np.array([[0, 0, 1, 1, 0, 0]]),
    ...      "rejected_completion_mask": np.array([[0, 0, 1, 1, 1, 0]])}
    >>> model(x)["chosen_lengths"].numpy().tolist()
    [2.0]
    """

    @property
    def loss_names(self):
        """`(preference term, "nll")`."""
        return (_TERM[self._method], "nll")

    def __init__(self, policy, method="simpo", beta=None, gamma=None, label_smoothing=0.0,
                 cpo_loss_type=None, nll_weight=None, chunk_size=None, alpha=0.0, **kwargs):
        if not isinstance(method, str) or method not in REFERENCE_FREE_METHODS:
            raise ValueError(
                f"Unknown `method` {method!r}. Valid choices: "
                f"{', '.join(map(repr, REFERENCE_FREE_METHODS))} (for DPO's types use "
                "DirectPreferenceOptimization)."
            )
        if "loss_weights" in kwargs:
            raise ValueError(
                "ReferenceFreePreferenceOptimization weighs its NLL term with `nll_weight` "
                "(the preference term weighs 1), not `loss_weights`."
            )
        if cpo_loss_type is not None and method != "cpo":
            raise ValueError(
                f"`cpo_loss_type` applies to method='cpo' only. Received method={method!r}, "
                f"cpo_loss_type={cpo_loss_type!r}."
            )
        if method == "cpo":
            cpo_loss_type = "sigmoid" if cpo_loss_type is None else cpo_loss_type
            if cpo_loss_type not in CPO_LOSS_TYPES:
                raise ValueError(
                    f"Unknown `cpo_loss_type` {cpo_loss_type!r}. Valid choices: "
                    f"{', '.join(map(repr, CPO_LOSS_TYPES))}."
                )
        uses_gamma = method == "simpo" or cpo_loss_type == "simpo"
        if gamma is not None and not uses_gamma:
            raise ValueError(
                "`gamma` (SimPO's margin) is used by method='simpo' and "
                f"cpo_loss_type='simpo' only. Received method={method!r}."
            )
        gamma = _check_float("gamma", 0.5 if gamma is None else gamma) if uses_gamma else None
        beta = _check_float("beta", _DEFAULT_BETA[method] if beta is None else beta,
                            positive=True)
        nll_weight = _DEFAULT_NLL_WEIGHT[method] if nll_weight is None else nll_weight
        if method == "orpo" and label_smoothing:
            raise ValueError(
                "ORPO's odds-ratio loss does not use `label_smoothing`. Set "
                f"label_smoothing=0. Received: {label_smoothing!r}"
            )
        if method == "orpo" and alpha != 0.0:
            raise ValueError(
                "ORPO's odds-ratio loss does not use `alpha` (AlphaPO's rewards are SimPO's and "
                f"CPO's). Set alpha=0. Received: {alpha!r}"
            )
        one = [-1.0]
        if method == "simpo":
            simpo_loss(one, [-2.0], beta=beta, gamma=gamma, label_smoothing=label_smoothing,
                       alpha=alpha)
        elif method == "cpo":
            cpo_loss(one, [-2.0], beta=beta, loss_type=cpo_loss_type,
                     label_smoothing=label_smoothing, simpo_gamma=0.5 if gamma is None else gamma,
                     alpha=alpha)
        object.__setattr__(self, "_method", method)
        super().__init__(policy, chunk_size=chunk_size,
                         loss_weights={_TERM[method]: 1.0, "nll": nll_weight}, **kwargs)
        self.method = method
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = float(label_smoothing)
        self.cpo_loss_type = cpo_loss_type
        self.alpha = float(alpha)
        self._create_reward_metrics()
        self.log_odds_ratio = (keras.metrics.Mean(name="log_odds_ratio")
                               if method == "orpo" else None)

    @property
    def nll_weight(self):
        """The weight of the `"nll"` term."""
        return self.loss_weights["nll"]

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{term: (per-pair losses, weights), "nll": (mean token NLL per
        pair, weights times token counts)}`."""
        pc, pr = y_pred["chosen_logps"], y_pred["rejected_logps"]
        nc, nr = y_pred["chosen_lengths"], y_pred["rejected_lengths"]
        weights = _pair_weights(sample_weight, pc)
        average_c, average_r = average_log_probs(pc, nc), average_log_probs(pr, nr)
        if self.method == "simpo":
            losses, chosen_rewards, rejected_rewards = simpo_loss(
                average_c, average_r, beta=self.beta, gamma=self.gamma,
                label_smoothing=self.label_smoothing, alpha=self.alpha)
        elif self.method == "cpo":
            averaged = self.cpo_loss_type in ("ipo", "simpo")
            c, r = (average_c, average_r) if averaged else (pc, pr)
            losses, chosen_rewards, rejected_rewards = cpo_loss(
                c, r, beta=self.beta, loss_type=self.cpo_loss_type,
                label_smoothing=self.label_smoothing,
                simpo_gamma=0.5 if self.gamma is None else self.gamma, alpha=self.alpha)
        else:
            losses, log_odds = odds_ratio_loss(average_c, average_r, beta=self.beta)
            chosen_rewards, rejected_rewards = self.beta * average_c, self.beta * average_r
            self.log_odds_ratio.update_state(tf.stop_gradient(log_odds), sample_weight=weights)
        self._update_reward_metrics(chosen_rewards, rejected_rewards, pc, pr, weights)
        return {_TERM[self.method]: (losses, weights), "nll": (-average_c, weights * nc)}

    def get_config(self):
        config = super().get_config()
        weights = config.pop("loss_weights")
        config.update({
            "method": self.method,
            "beta": self.beta,
            "gamma": self.gamma,
            "label_smoothing": self.label_smoothing,
            "cpo_loss_type": self.cpo_loss_type,
            "nll_weight": weights["nll"],
            "alpha": self.alpha,
        })
        return config


# ---------------------------------------------------------------------------
# KTO.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kobjectives")
class KahnemanTverskyOptimization(_PolicyObjective):
    """KTO: preference optimization from unpaired desirable and undesirable
    completions.

    Trains on `kobjectives.data.kto_dataset` batches: rows `token_ids`,
    `padding_mask`, `completion_mask`, the bool label `desirable`, and each
    row's mismatched KL row (`kl_*`: the row's prompt with another row's
    completion). The policy runs once on `[rows; KL rows]`. The reference
    point is `kobjectives.ops.kto_kl_baseline` of the KL rows (the mean
    policy-reference log-ratio, clamped at 0, averaged over the replicas
    under `tf.distribute` as TRL over its processes); the per-row loss is
    `kobjectives.ops.kto_loss`: `desirable_weight * (1 - sig(beta (l -
    kl)))` for a desirable row, `undesirable_weight * (1 - sig(beta (kl -
    l)))` for an undesirable one, `l` the policy-reference log-ratio. With
    `loss_type="apo_zero_unpaired"` there is no reference point and the KL
    rows are not run through the policy. One named loss, `"kto"`: the
    global mean over rows (TRL's mean over its chosen and rejected losses).

    The reference log-probabilities come from the data
    (`reference_logps`, `reference_kl_logps`:
    `precompute_reference_log_probs` then `kto_dataset(extra_features=...)`)
    or from the frozen `reference`, as `DirectPreferenceOptimization`.

    Metrics: `chosen_reward` and `rejected_reward` (the mean of `beta * l`
    over the desirable, resp. undesirable rows), `kl` (the reference point).

    Args:
        policy: the trained `CausalLanguageModel`, or a causal backbone.
        reference: optional frozen reference (`FrozenModel`,
            `CausalLanguageModel` or backbone); None when the data holds the
            precomputed values.
        beta: positive float. Defaults to 0.1.
        desirable_weight, undesirable_weight: positive floats, lambda_D and
            lambda_U (TRL suggests `desirable_weight * n_desirable /
            (undesirable_weight * n_undesirable)` in `[1, 4/3]`).
        loss_type: `"kto"` or `"apo_zero_unpaired"`.
        chunk_size: None (full logits) or an int.
        **kwargs: `Objective` / `keras.Model` arguments.

    Inputs: a dict of `KTO_INPUT_KEYS` (`[batch, length]`, `desirable`
        `[batch]`), optionally the precomputed reference values; optional
        `sample_weight` `[batch]`.

    Outputs: a dict of float32 `[batch]`: `logps`, `lengths` (and, for
        `"kto"`, `kl_logps`).

    Reference:
        Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect
        Theoretic Optimization", https://arxiv.org/abs/2402.01306; TRL's
        `KTOTrainer`.

    Example:

    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> model = KahnemanTverskyOptimization(backbone, desirable_weight=1.0)
    >>> x = {"token_ids": np.array([[1, 5, 6, 0], [1, 7, 8, 9]]),
    ...      "padding_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool),
    ...      "completion_mask": np.array([[0, 0, 1, 0], [0, 0, 1, 1]]),
    ...      "desirable": np.array([True, False]),
    ...      "kl_token_ids": np.array([[1, 5, 8, 9], [1, 7, 6, 0]]),
    ...      "kl_padding_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool),
    ...      "kl_completion_mask": np.array([[0, 0, 1, 1], [0, 0, 1, 0]])}
    >>> y_pred = model(x)
    >>> x.update(reference_logps=y_pred["logps"], reference_kl_logps=y_pred["kl_logps"])
    >>> model.compile(optimizer="sgd")
    >>> float(model.compute_loss(x=x, y_pred=y_pred))  # policy == reference: 1 - sig(0)
    0.5
    """

    frozen_models = ("reference",)
    precomputed_outputs = {"reference": KTO_REFERENCE_LOG_PROBS_KEYS}
    loss_names = ("kto",)

    def __init__(self, policy, reference=None, beta=0.1, desirable_weight=1.0,
                 undesirable_weight=1.0, loss_type="kto", chunk_size=None, **kwargs):
        if not isinstance(loss_type, str) or loss_type not in KTO_LOSS_TYPES:
            raise ValueError(
                f"Unknown `loss_type` {loss_type!r}. Valid choices: "
                f"{', '.join(map(repr, KTO_LOSS_TYPES))}."
            )
        beta = _check_float("beta", beta, positive=True)
        desirable_weight = _check_float("desirable_weight", desirable_weight, positive=True)
        undesirable_weight = _check_float("undesirable_weight", undesirable_weight,
                                          positive=True)
        super().__init__(policy, chunk_size=chunk_size, **kwargs)
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.loss_type = loss_type
        self.reference = self._freeze_reference(reference, self.policy)
        self.chosen_reward = keras.metrics.Mean(name="chosen_reward")
        self.rejected_reward = keras.metrics.Mean(name="rejected_reward")
        self.kl = keras.metrics.Mean(name="kl")

    def call(self, inputs, training=False):
        _check_keys(inputs, KTO_INPUT_KEYS, type(self).__name__, "kobjectives.data.kto_dataset")
        with_kl = self.loss_type == "kto"
        sums, counts = completion_log_probs(self.policy, *_kto_rows(inputs, with_kl),
                                            chunk_size=self.chunk_size, training=training)
        if not with_kl:
            return {"logps": sums, "lengths": counts}
        logps, kl_logps = split_pairs(sums)
        lengths, _ = split_pairs(counts)
        return {"logps": logps, "lengths": lengths, "kl_logps": kl_logps}

    def compute_frozen_outputs(self, name, x):
        """The reference's summed completion log-probabilities of the rows
        and the KL rows: `{"reference_logps", "reference_kl_logps"}` (with
        `loss_type="apo_zero_unpaired"` the KL rows are not run: zeros)."""
        return _kto_reference_log_probs(self.reference.model, x, self.chunk_size,
                                        with_kl=self.loss_type == "kto")

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """`{"kto": (per-row losses, row weights)}`."""
        if self.reference is None and not all(k in x for k in KTO_REFERENCE_LOG_PROBS_KEYS):
            raise _reference_missing(type(self).__name__, KTO_REFERENCE_LOG_PROBS_KEYS)
        reference = self.frozen_outputs("reference", x)
        reference_logps = tf.cast(reference["reference_logps"], tf.float32)
        logps = y_pred["logps"]
        weights = _pair_weights(sample_weight, logps)
        kl = None
        if self.loss_type == "kto":
            kl = kto_kl_baseline(y_pred["kl_logps"],
                                 tf.cast(reference["reference_kl_logps"], tf.float32))
            self.kl.update_state(kl)
        desirable = tf.convert_to_tensor(x["desirable"])
        if desirable.dtype != tf.bool:
            desirable = tf.not_equal(desirable, tf.zeros_like(desirable))
        losses, rewards = kto_loss(
            logps, reference_logps, desirable, kl, beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight, loss_type=self.loss_type)
        is_desirable = tf.cast(desirable, tf.float32)
        self.chosen_reward.update_state(rewards, sample_weight=weights * is_desirable)
        self.rejected_reward.update_state(rewards, sample_weight=weights * (1.0 - is_desirable))
        return {"kto": (losses, weights)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta": self.beta,
            "desirable_weight": self.desirable_weight,
            "undesirable_weight": self.undesirable_weight,
            "loss_type": self.loss_type,
        })
        return config


# ---------------------------------------------------------------------------
# Precomputing the reference.
# ---------------------------------------------------------------------------


def precompute_reference_log_probs(objective_or_reference, dataset, chunk_size=None,
                                   ld_alpha=None, kl_rows=None):
    """The reference's log-probabilities of every example, in one pass.

    Runs the reference policy over `dataset` and returns its summed
    completion log-probabilities as numpy arrays, in the dataset's order:
    pass them back as `extra_features` to the same data builder, and the
    objective uses them instead of a reference model, so none is held during
    training (see the example).

    The batches of `dataset` must follow the example order
    (`shuffle=False`) and cover every example (`drop_remainder=False`,
    `repeat=False`). `kobjectives.objectives.precompute_frozen_outputs`
    does the same batch by batch (it adds the values to each batch instead).

    LD-DPO: handed a `DirectPreferenceOptimization`, the values are weighted
    by its `ld_alpha` (`kobjectives.ops.ld_token_weights`), as its online
    reference's would be. Handed a bare reference model, they are the plain
    sums unless `ld_alpha` is given: pass the objective's `ld_alpha` there,
    else a DPO with `ld_alpha` trains on unweighted reference values (it
    cannot tell).

    Args:
        objective_or_reference: a `DirectPreferenceOptimization` or
            `KahnemanTverskyOptimization` holding a reference, a
            `FrozenModel`, a `CausalLanguageModel` or a causal backbone.
        dataset: a finite `tf.data.Dataset` of `preference_dataset` batches
            (keys `chosen_*`, `rejected_*`) or `kto_dataset` batches (keys
            `token_ids`, ..., `kl_*`); elements may be `(x, ...)` tuples.
        chunk_size: None (the objective's, else full logits) or an int.
        ld_alpha: None (the objective's; for a bare reference model, off)
            or a float in `[0, 1]`, LD-DPO's weight (pair batches only);
            with an objective it must equal the objective's.
        kl_rows: KTO batches only: whether to run the KL rows. None: as the
            objective needs them (not with `loss_type="apo_zero_unpaired"`),
            yes for a bare model; False: `reference_kl_logps` are zeros and
            only the rows run (their log-probabilities alone, e.g. a
            policy's).

    Returns:
        A dict of float32 numpy arrays `[num_examples]`:
        `{"reference_chosen_logps", "reference_rejected_logps"}` for pairs,
        `{"reference_logps", "reference_kl_logps"}` for KTO rows.

    Raises:
        ValueError: an objective without a reference (or with
            `reference_free=True`), batches of neither layout, an empty
            dataset; a bad `ld_alpha`, one that differs
            from the objective's, or one with KTO rows; `kl_rows` with pairs,
            or True for an objective that has no KL reference point.

    Example:

    >>> import keras_hub, numpy as np
    >>> from kobjectives.data import PreferenceExamples, preference_dataset
    >>> reference = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> examples = PreferenceExamples(
    ...     [np.array([5]), np.array([6, 7])], [np.array([8]), np.array([9])],
    ...     [np.array([10, 11]), np.array([8])], start_token_id=1)
    >>> ordered = preference_dataset(examples, sequence_length=6, batch_size=2,
    ...                              shuffle=False, drop_remainder=False)
    >>> values = precompute_reference_log_probs(reference, ordered)
    >>> sorted(values), values["reference_chosen_logps"].shape
    (['reference_chosen_logps', 'reference_rejected_logps'], (2,))
    >>> train = preference_dataset(examples, 6, 2, extra_features=values)
    >>> "reference_rejected_logps" in next(iter(train))  # DPO then needs no reference
    True
    """
    ld_alpha = _check_ld_alpha(ld_alpha)
    with_kl = True if kl_rows is None else bool(kl_rows)
    if isinstance(objective_or_reference, Objective) and not isinstance(
            objective_or_reference, CausalLanguageModel):
        own = getattr(objective_or_reference, "ld_alpha", None)
        if ld_alpha is not None and ld_alpha != own:
            raise ValueError(
                f"`ld_alpha={ld_alpha}` differs from the objective's ({own}): the objective's "
                "reference values are weighted by its own ld_alpha. Leave ld_alpha=None when "
                "handing the objective."
            )
        ld_alpha = own
        if isinstance(objective_or_reference, KahnemanTverskyOptimization):
            needs_kl = objective_or_reference.loss_type == "kto"
            if kl_rows and not needs_kl:
                raise ValueError(
                    f"`kl_rows=True`, but the objective's loss_type "
                    f"{objective_or_reference.loss_type!r} has no KL reference point: its KL "
                    "rows are never read. Leave kl_rows=None.")
            with_kl = needs_kl if kl_rows is None else bool(kl_rows)
        if getattr(objective_or_reference, "reference_free", False):
            raise _nothing_to_precompute()
        if "reference" not in type(objective_or_reference).frozen_models:
            raise ValueError(
                f"{type(objective_or_reference).__name__} has no reference model. Pass a "
                "DirectPreferenceOptimization / KahnemanTverskyOptimization, or the "
                "reference model itself."
            )
        frozen = objective_or_reference.reference
        if frozen is None:
            raise ValueError(
                f"The {type(objective_or_reference).__name__} was built without a reference: "
                "pass the reference model itself."
            )
        if chunk_size is None:
            chunk_size = objective_or_reference.chunk_size
        language_model = frozen.model
    elif isinstance(objective_or_reference, FrozenModel):
        language_model = _as_language_model(objective_or_reference.model, "reference")
    else:
        language_model = _as_language_model(objective_or_reference, "objective_or_reference")
    if chunk_size is not None:
        _check_chunk_size(chunk_size)

    def features(element):
        return element[0] if isinstance(element, tuple) else element

    spec = features(dataset.element_spec)
    if not isinstance(spec, dict):
        raise ValueError("`dataset` must yield dicts (or `(x, ...)` tuples of dicts).")
    if all(k in spec for k in PAIR_INPUT_KEYS):
        if kl_rows is not None:
            raise ValueError(
                f"`kl_rows={kl_rows}` is for KTO rows, but `dataset` yields preference pairs. "
                "Leave kl_rows=None.")
        keys = REFERENCE_LOG_PROBS_KEYS

        def compute(language_model, x, chunk_size):
            return _pair_reference_log_probs(language_model, x, chunk_size, ld_alpha=ld_alpha)
    elif all(k in spec for k in KTO_INPUT_KEYS):
        if ld_alpha is not None:
            raise ValueError(
                f"`ld_alpha={ld_alpha}` weighs pairs (LD-DPO), but `dataset` yields KTO rows, "
                "which have no pair. Leave ld_alpha=None."
            )
        keys = KTO_REFERENCE_LOG_PROBS_KEYS

        def compute(language_model, x, chunk_size):
            return _kto_reference_log_probs(language_model, x, chunk_size, with_kl=with_kl)
    else:
        raise ValueError(
            "`dataset` must yield preference_dataset batches (keys "
            f"{list(PAIR_INPUT_KEYS)}) or kto_dataset batches (keys {list(KTO_INPUT_KEYS)}). "
            f"Received keys: {sorted(spec)}"
        )
    # One trace for every batch, the last (smaller) one included.
    step = tf.function(lambda x: compute(language_model, x, chunk_size),
                       input_signature=[spec])
    parts = {key: [] for key in keys}
    for element in dataset:
        out = step(features(element))
        for key in keys:
            parts[key].append(out[key].numpy())
    if not parts[keys[0]]:
        raise ValueError("`dataset` is empty: there is nothing to precompute.")
    return {key: np.concatenate(values).astype(np.float32) for key, values in parts.items()}
