"""Preference optimization: sequence log-probabilities, the DPO family,
SimPO, CPO, ORPO, KTO and the Bradley-Terry reward-model loss.

Every loss here is a function of per-sequence values (log-probabilities
summed, or averaged, over a completion's tokens; scalar rewards) and returns
per-pair (or per-example) values of shape `[batch]`: their mean is the batch
loss, as in TRL, and a weighted or cross-replica mean is the caller's
(`kobjectives.ops.global_weighted_mean`). All math is in float32 whatever the
input dtype, and written in `log_sigmoid`/`softplus` form: no
`log(sigmoid(x))`, no `exp` of a large argument, so margins of hundreds of
nats give finite, correct losses and gradients (one exception, shared with
TRL: `ipo` under a non-default f-divergence, see below).

Sequence log-probabilities (`sequence_log_probs`,
`sequence_log_probs_from_logits`) are the one op every objective shares: the
sum, and the count, of a causal LM's token log-probabilities over the
completion tokens only (weight 0 on prompt and padding), the log-softmax in
float32, optionally chunked over positions
(`kobjectives.ops.chunked_token_cross_entropy`) so the `[batch, length,
vocabulary]` logits never exist at once. A batch laid out as
`[chosen; rejected]` (first half chosen) is split by `split_pairs`.

WPO weighting (TRL's `DPOConfig(use_weighting=True)`; Zhou et al. 2024,
"WPO: Enhancing RLHF with Weighted Preference Optimization",
https://arxiv.org/abs/2406.11827, Eq. 2): each pair's loss is multiplied by
`w_c * w_r`, a sequence's weight `w = exp(mean_t (log p(y_t) - log sum_v
p_v(t)^2))` over its completion tokens, computed from the policy without
gradient. `sequence_log_probs(..., return_wpo_log_weights=True)` gives the
log-weights in the same pass as the log-probabilities (chunked or not),
`wpo_weights` the pair weights. As TRL 1.x, the weight is not clamped
(TRL 0.x clamped it at 1 and used the log-softmax directly).

LD-DPO (TRL's `DPOConfig(ld_alpha=...)`; Liu et al. 2024, "Length
Desensitization in Direct Preference Optimization",
https://arxiv.org/abs/2409.06411): a pair's log-probabilities weigh its
first `min(n_c, n_r)` completion tokens 1 and the longer completion's
remaining tokens `ld_alpha` (in `[0, 1]`; 1 is plain DPO), for the policy
and the reference alike. `ld_token_weights` gives these token weights of a
`[chosen; rejected]` batch; `sequence_log_probs(..., extra_weights=...)`
sums with them beside the plain sums, in the same pass, while the counts
(and so `ipo`/`sigmoid_norm`'s length normalization and the `sft` token
mean) stay the full completion's, as in TRL.

Notation: `pc, pr` the policy's log-probabilities of the chosen and the
rejected completion, `rc, rr` the reference's; the log-ratios
`lc = pc - rc`, `lr = pr - rr`; `beta` the temperature, `eps` the
`label_smoothing`, `log_sig` the log-sigmoid, `sig` the sigmoid. Under an
f-divergence (below) the scores `sc = f(lc)`, `sr = f(lr)` replace the
log-ratios where marked; `d = sc - sr`, `x = beta * d`.

`dpo_loss` loss types, the formulas of TRL's `DPOTrainer` (transcribed from
TRL 1.13, checked unchanged through 1.16; see "TRL version" below):

- `sigmoid`: `-log_sig(x)`. DPO, Rafailov et al. 2023,
  https://arxiv.org/abs/2305.18290.
- `hinge`: `relu(1 - x)`. SLiC, Zhao et al. 2023,
  https://arxiv.org/abs/2305.10425.
- `ipo`: `(sc / n_c - sr / n_r - 1 / (2 beta))^2`, `n` the completion token
  counts (at least 1): TRL normalizes the summed log-ratios by length (as
  confirmed with the IPO authors). IPO, Azar et al. 2023,
  https://arxiv.org/abs/2310.12036.
- `exo_pair`: `sig(x) (log_sig(x) - log(1 - eps)) + sig(-x) (log_sig(-x) -
  log(eps))`, the KL from the model's pair distribution to `(1 - eps, eps)`;
  needs `eps > 0` (1e-3 in the paper). EXO, Ji et al. 2024,
  https://arxiv.org/abs/2402.00856.
- `nca_pair`: `-log_sig(beta lc) - log_sig(-beta lc) / 2 - log_sig(-beta lr)
  / 2`. NCA, Chen et al. 2024, https://arxiv.org/abs/2402.05369.
- `robust`: `((1 - eps) (-log_sig(x)) - eps (-log_sig(-x))) / (1 - 2 eps)`,
  unbiased under a label-flip rate `eps < 0.5`, computed as the equal
  `-log_sig(x) - eps x / (1 - 2 eps)` (TRL's form divides the rounding
  error of two softplus terms by `1 - 2 eps`). Robust DPO, Chowdhury et al.
  2024, https://arxiv.org/abs/2403.00409.
- `bco_pair`: `-log_sig(beta lc - delta) - log_sig(-(beta lr - delta))`,
  `delta` the running mean of the rewards in the BCO paper and in TRL before
  1.0; TRL 1.x uses `delta = 0`, the default here (`bco_delta`: pass the
  running mean, kept by the caller since ops are stateless). BCO, Jung et al.
  2024, https://arxiv.org/abs/2404.04656.
- `sppo_hard`: `(lc - 1 / (2 beta))^2 + (lr + 1 / (2 beta))^2` (hard
  win/lose probabilities). SPPO, Wu et al. 2024,
  https://arxiv.org/abs/2405.00675.
- `aot`: `dd = sort(pc - pr) - sort(rc - rr)` (each sorted over the batch,
  ascending), loss `-(1 - eps) log_sig(beta dd) - eps log_sig(-beta dd)`.
  `aot_unpaired`: the same with `dd = sort(lc) - sort(lr)`. AOT, Melnyk et
  al. 2024, https://arxiv.org/abs/2406.05882. The losses are of the sorted
  quantiles: row `i` of the result is not pair `i`'s.
- `apo_zero`: `sig(-beta lc) + sig(beta lr)`; `apo_down`: `sig(beta lc) +
  sig(-beta (lc - lr))`. APO, D'Oosterlinck et al. 2024,
  https://arxiv.org/abs/2408.06266.
- `discopop`: `m = sig(x / tau)`, loss `(1 - m) (-log_sig(x)) + m exp(-x)`
  (`discopop_tau`, 0.05), computed as `sig(-x / tau) softplus(-x) + exp(-x +
  log_sig(x / tau))`. DiscoPOP, Lu et al. 2024,
  https://arxiv.org/abs/2406.08414.
- `sft`: the negative log-likelihood of the chosen completions: TRL takes the
  token mean over the batch's chosen completion tokens, `-sum(pc) /
  sum(n_c)`, the same value in every row; pass `policy_chosen_nll` (`[batch]`)
  for another normalization. (MPO combines `sigmoid`, `bco_pair` and `sft`.)
- `sigmoid_norm`: `-log_sig(beta (sc / n_c - sr / n_r))`, DPO on
  length-averaged log-ratios.

A list of types is their weighted sum (`loss_weights`, default 1 each), per
pair: the mean of the result is TRL's `sum_k w_k mean(loss_k)`.

f-divergences (`f_divergence_type`), f-DPO, Wang et al. 2023,
https://arxiv.org/abs/2309.16240: the score is `f'(exp(l))` of a log-ratio
`l`, as TRL 1.13 writes it: `reverse_kl` `l` (the default, plain DPO);
`forward_kl` `1 - exp(-l)`; `js_divergence` `log 2 + log_sig(l)`;
`alpha_divergence` `(exp((alpha - 1) l) - 1) / (alpha - 1)` with `alpha` =
`f_alpha_divergence_coef` (0.5; `alpha = 1` is `reverse_kl`). As in TRL the
exponent `(alpha - 1) l` is clamped at 80 so the score stays finite in
float32; `forward_kl` (alpha 0) is clamped alike (`-l <= 80`; TRL does not
clamp it, and overflows there). `ipo` squares the score difference, which
overflows float32 (in TRL as well) once it passes about 1.8e19: an
exponent above about 44. As in TRL, only the types built on the
chosen-rejected score difference take a non-default divergence: `sigmoid`,
`sigmoid_norm`, `hinge`, `ipo`, `exo_pair`, `robust`, `discopop`, `sft`; any
other raises.

Label smoothing. Used by `exo_pair` (its `eps`, must be > 0), `robust`
(must be < 0.5) and `aot`/`aot_unpaired`; every other type ignores it in
TRL 1.x (TRL warns for some, silently ignores the rest; TRL 1.x `sigmoid` no
longer has the cDPO smoothing of older versions). Here a `label_smoothing >
0` that none of the requested types uses raises a `ValueError`, as does one
outside `[0, 0.5]`; in a weighted sum, the types that do not use it ignore it
as in TRL.

Rewards. Every DPO type reports TRL's implicit rewards `beta * lc` and
`beta * lr` (the plain log-ratios even under an f-divergence), without
gradient.

TRL version. The formulas were transcribed from `DPOTrainer` and
`KTOTrainer` of TRL 1.13 (whose 15 DPO types are the list above) and the
`CPOTrainer`, ORPO `odds_ratio_loss` and `RewardTrainer` of late 0.x
releases, then checked against the sources of TRL 1.14.0, 1.14.2, 1.15.0 and
1.16.0 (the newest on PyPI on 2026-12-07): their DPO, KTO, CPO and ORPO
loss code, loss types, defaults and rewards are 1.13's. What changed is how
the log-probabilities are computed (1.15: a chunked LM head; `sft` written
as the mean of the chosen tokens' log-probabilities, the same value) and the
data preparation (1.14.2: the completion starts after the common prefix of
the tokenized prompt and prompt + completion). TRL 1.x's `ld_alpha`
(LD-DPO) is `ld_token_weights` (above), transcribed from the `ld_alpha`
branch of its `DPOTrainer`; its `use_weighting` (WPO) is `wpo_weights`
(above), transcribed from its `use_weighting` branch.

The other objectives:

- `simpo_loss`: `-(1 - eps) log_sig(beta (c - r) - gamma) - eps
  log_sig(-(beta (c - r) - gamma))` on length-averaged log-probabilities
  (TRL `CPOTrainer(loss_type="simpo")`). SimPO, Meng et al. 2024,
  https://arxiv.org/abs/2405.14734.
- `cpo_loss`: DPO without a reference: `sigmoid` `-(1 - eps) log_sig(beta
  (c - r)) - eps log_sig(-beta (c - r))`, `hinge`, `ipo` (on averaged
  log-probabilities, as TRL), `simpo`. CPO, Xu et al. 2024,
  https://arxiv.org/abs/2401.08417 (its NLL term is the caller's).
- AlphaPO (`alpha` of `simpo_loss` and `cpo_loss`, TRL's `CPOConfig.alpha`;
  `loss_type="alphapo"` there is SimPO with `alpha` and no NLL term): the
  log-probabilities `c`, `r` above are replaced by the rewards `(1 -
  p^-alpha) / alpha = -expm1(-alpha logp) / alpha` (`p = exp(logp)`; alpha
  0: `logp`). Where `alpha logp < -80` (a long completion's summed
  log-probability with alpha > 0), `p^-alpha` would overflow float32 (TRL's
  loss is inf or NaN there): the exponent is clamped at 80, so the reward
  saturates and that completion gets no gradient. Gupta et al. 2025,
  https://arxiv.org/abs/2501.03884.
- `odds_ratio_loss`: ORPO's `-beta log_sig(log_odds)`, `log_odds = (c - r) -
  (log(1 - exp(c)) - log(1 - exp(r)))` on averaged log-probabilities. ORPO,
  Hong et al. 2024, https://arxiv.org/abs/2403.07691.
- `kto_loss`, `kto_kl_baseline`: KTO, Ethayarajh et al. 2024,
  https://arxiv.org/abs/2402.01306 (TRL `KTOTrainer`).
- `bradley_terry_loss`, `reward_centering`: the reward model of TRL's
  `RewardTrainer` (Bradley & Terry 1952; Ouyang et al. 2022,
  https://arxiv.org/abs/2203.02155; centering: Eisenstein et al. 2023,
  https://arxiv.org/abs/2312.09244).
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from kobjectives.ops.chunked_cross_entropy import chunked_token_cross_entropy
from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import known_values
from kobjectives.ops.labels import poison_invalid_labels
from kobjectives.ops.reduction import apply_weights

DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
    "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
    "sft", "sigmoid_norm",
)
"""The `loss_type`s of `dpo_loss`: those of TRL's `DPOTrainer`."""

F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
"""The `f_divergence_type`s of `dpo_loss`."""

F_DIVERGENCE_LOSS_TYPES = (
    "sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft",
)
"""The DPO types that take a non-default f-divergence (as in TRL)."""

LABEL_SMOOTHING_LOSS_TYPES = ("exo_pair", "robust", "aot", "aot_unpaired")
"""The DPO types that use `label_smoothing`."""

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")
"""The `loss_type`s of `cpo_loss`: those of TRL's `CPOTrainer`."""

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
"""The `loss_type`s of `kto_loss`: those of TRL's `KTOTrainer`."""

_EXP_CLAMP = 80.0  # TRL's clamp of the alpha-divergence exponent in float32


# --------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name, value):
    known = known_values(value)
    if known is None:  # a traced tensor: used as given
        return tf.cast(value, tf.float32)
    known = np.asarray(known)
    if known.dtype == bool or not np.issubdtype(known.dtype, np.number) or known.ndim:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    if not (np.isfinite(known) and known > 0):
        raise ValueError(f"`{name}` must be a positive, finite number. Received: {name}={value!r}")
    return tf.constant(float(known), tf.float32)


def _check_label_smoothing(label_smoothing):
    if not _is_number(label_smoothing) or not 0.0 <= float(label_smoothing) <= 0.5:
        raise ValueError(
            "`label_smoothing` must be a number in [0, 0.5] (0 turns it off). "
            f"Received: label_smoothing={label_smoothing!r}"
        )
    return float(label_smoothing)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Unknown `{name}` {value!r}. Valid choices: {', '.join(map(repr, choices))}."
        )
    return value


def _float_tensor(name, value, rank=1):
    """`value` as a float32 tensor of the given static rank."""
    value = tf.convert_to_tensor(value)
    if not (value.dtype.is_floating or value.dtype.is_integer):
        raise ValueError(f"`{name}` must be a float tensor. Received dtype {value.dtype.name}.")
    if rank is not None and value.shape.rank is not None and value.shape.rank != rank:
        raise ValueError(
            f"`{name}` must have rank {rank} (`[batch]`: one value per sequence). "
            f"Received shape {value.shape}."
        )
    return tf.cast(value, tf.float32)


def _same_shapes(named):
    """Raises unless the tensors of `named` (a dict) have compatible shapes."""
    items = list(named.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if not tensor.shape.is_compatible_with(first.shape):
            raise ValueError(
                f"`{name}` must have the shape of `{first_name}` ({first.shape}): one value "
                f"per pair. Received shape {tensor.shape}."
            )


# --------------------------------------------------------------------------
# Sequence log-probabilities.
# --------------------------------------------------------------------------


def _completion_mask(labels, weights):
    """`(weights broadcast to labels, used, labels with 0 at weight-0 slots)`."""
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"`labels` must be int token ids. Received dtype {labels.dtype.name}.")
    if labels.shape.rank is not None and labels.shape.rank < 1:
        raise ValueError(f"`labels` must be `[..., length]`. Received shape {labels.shape}.")
    _, weights = apply_weights(tf.zeros_like(labels, tf.float32), weights, name="weights")
    used = weights > 0.0
    # Prompt and padding slots may hold anything (-100, a pad id): they are
    # never looked up, so they are neither checked nor can they poison.
    labels = tf.where(used, labels, tf.zeros_like(labels))
    return weights, used, labels


def _reduce(token_log_probs, weights, used, extra_weights=None):
    weighted, _ = apply_weights(token_log_probs, weights, name="weights")
    sums = tf.reduce_sum(weighted, axis=-1)
    counts = tf.reduce_sum(tf.cast(used, tf.float32), axis=-1)
    if extra_weights is None:
        return sums, counts
    extra, _ = apply_weights(token_log_probs, extra_weights, name="extra_weights")
    return sums, counts, tf.reduce_sum(extra, axis=-1)


def _extra_weights(extra_weights, weights, used):
    """`extra_weights` broadcast to the slots, 0 where `weights` is 0
    (slots that are not scored), checked like `weights`."""
    if extra_weights is None:
        return None
    _, extra = apply_weights(tf.zeros_like(weights), extra_weights, name="extra_weights")
    return tf.where(used, extra, tf.zeros_like(extra))


def _outputs(token_log_probs, weights, used, extra_weights, log_sum_squares=None):
    """`(sums, counts[, wpo_log_weights][, extra_sums])` of token
    log-probabilities (the WPO log-weights when `log_sum_squares` is given,
    the extra sums when `extra_weights` is)."""
    sums, counts, *extra = _reduce(token_log_probs, weights, used, extra_weights)
    outputs = (sums, counts)
    if log_sum_squares is not None:
        outputs += (_wpo_log_weights(token_log_probs, log_sum_squares, used),)
    return outputs + tuple(extra)


def _gather_log_softmax(logits, labels, used, given_labels, log_sum_squares=False):
    """Token log-probabilities of `labels` under float32 `logits`; with
    `log_sum_squares`, `(token, log sum_v p_v^2)` per position."""
    vocabulary_size = logits.shape[-1]
    checked = check_labels(labels, vocabulary_size)
    logits = tf.where(used[..., None], logits, tf.zeros_like(logits))  # no NaN rows
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    token = tf.gather(log_probs, checked, axis=-1, batch_dims=checked.shape.rank)
    token = poison_invalid_labels(token, given_labels, vocabulary_size)
    if not log_sum_squares:
        return token
    return token, tf.stop_gradient(tf.reduce_logsumexp(2.0 * log_probs, axis=-1))


def _wpo_log_weights(token_log_probs, log_sum_squares, used):
    """`mean_t (log p(y_t) - log sum_v p_v^2)` over the used slots (0 with
    none), without gradient: the log of a sequence's WPO weight."""
    aligned = tf.where(used, token_log_probs - log_sum_squares,
                       tf.zeros_like(token_log_probs))  # garbage slots may be NaN
    counts = tf.reduce_sum(tf.cast(used, tf.float32), axis=-1)
    return tf.stop_gradient(tf.reduce_sum(aligned, axis=-1) / tf.maximum(counts, 1.0))


def sequence_log_probs(hidden, kernel, labels, weights, chunk_size=None,
                       return_wpo_log_weights=False, extra_weights=None):
    """Summed completion-token log-probabilities of a causal LM, in float32.

    `sum_t w_t log softmax(hidden_t @ kernel)[labels_t]` over the last axis,
    and the number of tokens of positive weight. `labels[..., t]` is the
    token that `hidden[..., t, :]` predicts (the input ids shifted left by
    one, as `kobjectives.ops.causal_lm_targets` builds them); `weights` is 1
    on completion tokens and 0 on the prompt and the padding (any
    non-negative weights). A slot of weight 0 takes no part: its label may be anything
    (-100, a pad id, out of range) and its hidden state NaN or infinite,
    without effect on the sums or their gradients. A label outside the
    vocabulary at a slot of positive weight raises where its value is known,
    and makes the sum NaN under XLA (`kobjectives.ops.labels`).

    The logits come from `hidden @ kernel` in `hidden`'s dtype (bfloat16
    under `mixed_bfloat16`), the log-softmax and the sums are float32. With
    `chunk_size` the positions are processed in chunks
    (`kobjectives.ops.chunked_token_cross_entropy`): at most `chunk_size x
    vocabulary` logits exist at once, forward and backward; without it the
    full logits are built (fine for a small vocabulary or batch).

    With `return_wpo_log_weights`, also each sequence's WPO log-weight
    (Zhou et al. 2024, https://arxiv.org/abs/2406.11827, Eq. 2, as TRL
    1.x's `use_weighting`): `mean_t (log p(y_t) - log sum_v p_v(t)^2)` over
    the slots of positive weight (unweighted: TRL's mask is 0/1; 0 for a
    sequence without any), `p(t)` the softmax at slot `t`, in float32 and
    without gradient. It comes from the same logits in the same pass (per
    chunk with `chunk_size`): `log sum_v p_v^2 = logsumexp(2 z) - 2
    logsumexp(z)` needs no second pass over the vocabulary. Each term is at
    most `log(vocabulary_size)` (`sum_v p_v^2 >= 1 / V`), so the log-weight
    is too; `wpo_weights` turns a pair's log-weights into its loss weight.

    With `extra_weights` (e.g. LD-DPO's `ld_token_weights`), also `sum_t
    e_t log p(y_t)` over the same slots, from the same token
    log-probabilities: a second weighting of the scored tokens, while
    `weights` alone decides which slots are scored, the plain sums, the
    counts and the WPO log-weights (so an `extra_weights` of 0 on some
    completion tokens changes neither the counts nor the WPO mean, as TRL's
    `ld_alpha=0` leaves its `completion_mask` alone). Passing LD weights as
    `weights` instead gives the same sums but counts only the tokens of
    positive weight (the shared part when `ld_alpha` is 0).

    Args:
        hidden: float tensor `[batch, length, hidden_dim]` (any leading
            shape), the states that predict `labels`.
        kernel: float tensor `[hidden_dim, vocabulary_size]` (the transpose
            of a tied embedding).
        labels: int tensor `[batch, length]`, the next-token ids.
        weights: non-negative float tensor broadcastable to `labels`, the
            completion mask.
        chunk_size: None (the full logits) or a positive int, positions
            whose logits are computed at once.
        return_wpo_log_weights: bool, also return the WPO log-weights.
        extra_weights: optional non-negative float tensor broadcastable to
            `labels`, a second weighting of the scored slots (ignored where
            `weights` is 0).

    Returns:
        `(sum_log_probs, counts)`: float32 tensors `labels.shape[:-1]`
        (`[batch]`), the weighted sum of the token log-probabilities and the
        number of tokens of positive weight (divide for the average
        log-probability: `average_log_probs`); with
        `return_wpo_log_weights`, `(sum_log_probs, counts,
        wpo_log_weights)`, the last float32 `[batch]` without gradient;
        with `extra_weights`, the `extra_weights`-weighted sums (float32
        `[batch]`) after all of these.

    Raises:
        ValueError: mismatched shapes, non-integer labels, bad weights, a
            bad `chunk_size`, or known labels of positive weight outside the
            vocabulary.

    Example:

    >>> hidden = tf.constant([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    >>> kernel = tf.eye(2)
    >>> sums, counts = sequence_log_probs(
    ...     hidden, kernel, labels=[[-100, 1, 0]], weights=[[0.0, 1.0, 1.0]])
    >>> float(counts[0]), round(float(sums[0]), 4)  # log s(1,0)[1] + log s(1,1)[0]
    (2.0, -1.0064)
    """
    hidden = tf.convert_to_tensor(hidden)
    kernel = tf.convert_to_tensor(kernel)
    if not hidden.dtype.is_floating or not kernel.dtype.is_floating:
        raise ValueError(
            "`hidden` and `kernel` must be float tensors. Received dtypes "
            f"{hidden.dtype.name} and {kernel.dtype.name}."
        )
    if kernel.shape.rank != 2 or kernel.shape[1] is None:
        raise ValueError(
            "`kernel` must be `[hidden_dim, vocabulary_size]` with a static vocabulary "
            f"size. Received shape {kernel.shape}."
        )
    if hidden.shape.rank is None or hidden.shape.rank < 2:
        raise ValueError(f"`hidden` must be `[batch, length, hidden_dim]`. Received shape {hidden.shape}.")
    labels = tf.convert_to_tensor(labels)
    if not labels.shape.is_compatible_with(hidden.shape[:-1]):
        raise ValueError(
            f"`labels` must have `hidden`'s leading shape {hidden.shape[:-1]}. "
            f"Received shape {labels.shape}."
        )
    weights, used, safe_labels = _completion_mask(labels, weights)
    extra_weights = _extra_weights(extra_weights, weights, used)
    if chunk_size is not None:
        token = chunked_token_cross_entropy(
            hidden, kernel, safe_labels, chunk_size=chunk_size,
            return_log_sum_squared_probs=return_wpo_log_weights)
        if not return_wpo_log_weights:
            return _outputs(-token, weights, used, extra_weights)
        return _outputs(-token[0], weights, used, extra_weights, log_sum_squares=token[1])
    if hidden.shape[-1] is not None and kernel.shape[0] is not None and hidden.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"`hidden`'s last dimension ({hidden.shape[-1]}) must equal `kernel`'s first "
            f"(hidden_dim, {kernel.shape[0]})."
        )
    # Rows of weight 0 are zeroed before the matmul, so a NaN state there
    # reaches neither the logits nor the kernel's gradient.
    hidden = tf.where(used[..., None], hidden, tf.zeros_like(hidden))
    flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])
    logits = tf.cast(tf.matmul(flat, tf.cast(kernel, hidden.dtype)), tf.float32)
    logits = tf.reshape(logits, tf.concat([tf.shape(safe_labels), [kernel.shape[1]]], 0))
    logits = tf.ensure_shape(logits, safe_labels.shape.concatenate([kernel.shape[1]]))
    return _sums_from_logits(logits, safe_labels, weights, used, return_wpo_log_weights,
                             extra_weights)


def _sums_from_logits(logits, safe_labels, weights, used, wpo, extra_weights):
    if not wpo:
        return _outputs(_gather_log_softmax(logits, safe_labels, used, safe_labels), weights,
                        used, extra_weights)
    token, log_sum_squares = _gather_log_softmax(logits, safe_labels, used, safe_labels,
                                                 log_sum_squares=True)
    return _outputs(token, weights, used, extra_weights, log_sum_squares=log_sum_squares)


def sequence_log_probs_from_logits(logits, labels, weights, return_wpo_log_weights=False,
                                   extra_weights=None):
    """`sequence_log_probs` from given logits `[batch, length, vocabulary]`.

    The log-softmax is float32 whatever the logits' dtype; slots of weight 0
    take no part (their labels may be anything, their logits NaN).

    Args:
        logits: float tensor `[batch, length, vocabulary_size]` (static
            vocabulary size).
        labels: int tensor `[batch, length]`, the next-token ids.
        weights: non-negative float tensor broadcastable to `labels`.
        return_wpo_log_weights: bool, also return the WPO log-weights (as
            `sequence_log_probs`).
        extra_weights: optional non-negative float tensor broadcastable to
            `labels` (as `sequence_log_probs`).

    Returns:
        `(sum_log_probs, counts)`: float32 tensors `[batch]`; with
        `return_wpo_log_weights`, `(sum_log_probs, counts,
        wpo_log_weights)`; with `extra_weights`, the extra sums last.

    Example:

    >>> sums, counts = sequence_log_probs_from_logits(
    ...     tf.zeros([1, 3, 4]), [[7, 1, 2]], [[0.0, 1.0, 1.0]])
    >>> round(float(sums[0]), 4), float(counts[0])  # 2 log(1/4)
    (-2.7726, 2.0)
    """
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        raise ValueError(f"`logits` must be a float tensor. Received dtype {logits.dtype.name}.")
    if logits.shape.rank is None or logits.shape.rank < 2 or logits.shape[-1] is None:
        raise ValueError(
            "`logits` must be `[batch, length, vocabulary_size]` with a static vocabulary "
            f"size. Received shape {logits.shape}."
        )
    labels = tf.convert_to_tensor(labels)
    if not labels.shape.is_compatible_with(logits.shape[:-1]):
        raise ValueError(
            f"`labels` must have `logits`' leading shape {logits.shape[:-1]}. "
            f"Received shape {labels.shape}."
        )
    weights, used, safe_labels = _completion_mask(labels, weights)
    return _sums_from_logits(tf.cast(logits, tf.float32), safe_labels, weights, used,
                             return_wpo_log_weights,
                             _extra_weights(extra_weights, weights, used))


def average_log_probs(sum_log_probs, counts):
    """`sum_log_probs / max(counts, 1)`: the mean token log-probability.

    The length-averaged log-probability of SimPO, CPO's `ipo`/`simpo` and
    ORPO; a sequence without completion tokens (sum 0, count 0) gives 0, not
    NaN.

    Example:

    >>> average_log_probs([-6.0, 0.0], [3.0, 0.0]).numpy()
    array([-2.,  0.], dtype=float32)
    """
    sums = tf.cast(sum_log_probs, tf.float32)
    return sums / tf.maximum(tf.cast(counts, tf.float32), 1.0)


def wpo_weights(chosen_log_weights, rejected_log_weights):
    """WPO's per-pair loss weights `w_c * w_r`, without gradient.

    `exp(chosen_log_weights + rejected_log_weights)` in float32, the log-
    weights those of `sequence_log_probs(..., return_wpo_log_weights=True)`:
    TRL 1.x's `DPOConfig(use_weighting=True)` multiplies each pair's loss
    (every loss type) by it. Zhou et al. 2024, "WPO: Enhancing RLHF with
    Weighted Preference Optimization", https://arxiv.org/abs/2406.11827,
    Eq. 2 (the per-token probability normalized by `sum_v p_v^2`, averaged
    over the completion in log space).

    Not clamped, as TRL 1.x (TRL 0.x clamped each weight at 1): a weight
    above 1 is possible (tokens more likely than their distribution's
    collision probability `sum_v p_v^2`; a greedy completion weighs at
    least 1, since `sum_v p_v^2 <= max_v p_v`). Extremes: each log-weight is at
    most `log V` (`sum_v p_v^2 >= 1 / V` and `log p <= 0`, `V` the
    vocabulary size), so a pair weight is at most `V^2` (6.6e10 for `V` =
    256k): finite in float32, no overflow. Summing the log-weights before
    the exponential keeps a tiny and a huge weight from making `0 * inf`;
    a pair the policy finds very unlikely underflows to weight 0 (its loss
    and gradient vanish). A NaN log-weight (an invalid label under XLA)
    gives a NaN weight.

    Args:
        chosen_log_weights, rejected_log_weights: float tensors `[batch]`,
            the WPO log-weights of the chosen and the rejected completions.

    Returns:
        float32 `[batch]`, the pair weights, with no gradient.

    Example:

    >>> wpo_weights([-0.5, 1.0], [-1.5, 0.25]).numpy().round(4)  # exp(-2), exp(1.25)
    array([0.1353, 3.4903], dtype=float32)
    """
    chosen = _float_tensor("chosen_log_weights", chosen_log_weights)
    rejected = _float_tensor("rejected_log_weights", rejected_log_weights)
    _same_shapes({"chosen_log_weights": chosen, "rejected_log_weights": rejected})
    return tf.stop_gradient(tf.exp(chosen + rejected))


def _check_ld_alpha(ld_alpha):
    if not _is_number(ld_alpha) or not 0.0 <= float(ld_alpha) <= 1.0:
        raise ValueError(
            "`ld_alpha` must be a number in [0, 1]: LD-DPO's weight of the tokens past the "
            "shorter completion's length (1 is plain DPO, 0 drops them). "
            f"Received: ld_alpha={ld_alpha!r}"
        )
    return float(ld_alpha)


def ld_token_weights(completion_weights, ld_alpha):
    """LD-DPO's token weights of a `[chosen; rejected]` batch.

    Row `i` of the chosen half and row `i` of the rejected half form a pair
    (`split_pairs`' layout) with `n_c`, `n_r` completion tokens (the slots
    of positive `completion_weights`). Each row's first `min(n_c, n_r)`
    completion tokens weigh 1, its later ones `ld_alpha`: only the longer
    completion of a pair has such a tail. Summing token log-probabilities
    with these weights (`sequence_log_probs(..., extra_weights=...)`, or as
    its `weights`) gives TRL 1.x's `DPOConfig(ld_alpha=...)` log-probabilities
    `(logp * shared_mask).sum(1) + ld_alpha * (logp * tail_mask).sum(1)`,
    applied alike to the policy and the reference; `ld_alpha=1` gives the
    plain sums. Positions are counted over the completion tokens only (a
    completion slot's position is the number of completion slots up to
    it), as TRL's `completion_mask.cumsum(1)`. The result is
    `completion_weights` times 1 or `ld_alpha`, so it is 0 off the
    completion. Liu et al. 2024, "Length Desensitization in Direct
    Preference Optimization", https://arxiv.org/abs/2409.06411.

    Args:
        completion_weights: tensor `[2 * pairs, length]` (float, int or
            bool), the completion mask of the concatenated batch (chosen rows
            first), aligned with the labels it weighs (e.g. the next-token
            weights of `sequence_log_probs`).
        ld_alpha: float in `[0, 1]`, the weight of the longer completion's
            tokens past the shorter one's length.

    Returns:
        float32 `[2 * pairs, length]`, the token weights.

    Raises:
        ValueError: an `ld_alpha` that is not a number in `[0, 1]`; weights
            that are not `[2 * pairs, length]` (an odd static first
            dimension included) or not numeric.

    Example:

    >>> mask = [[0, 1, 1, 1, 0],   # chosen: 3 completion tokens
    ...         [0, 1, 1, 0, 0]]   # rejected: 2; the pair shares 2
    >>> ld_token_weights(mask, 0.5).numpy()
    array([[0. , 1. , 1. , 0.5, 0. ],
           [0. , 1. , 1. , 0. , 0. ]], dtype=float32)
    """
    ld_alpha = _check_ld_alpha(ld_alpha)
    weights = tf.convert_to_tensor(completion_weights)
    if not (weights.dtype == tf.bool or weights.dtype.is_integer or weights.dtype.is_floating):
        raise ValueError(
            "`completion_weights` must be a numeric (or bool) completion mask. "
            f"Received dtype {weights.dtype.name}."
        )
    if weights.shape.rank != 2:
        raise ValueError(
            "`completion_weights` must be `[2 * pairs, length]` (chosen rows, then rejected "
            f"rows). Received shape {weights.shape}."
        )
    weights = tf.cast(weights, tf.float32)
    completion = tf.cast(weights > 0.0, tf.float32)
    positions = tf.cumsum(completion, axis=1)  # 1-based within the completion
    chosen_lengths, rejected_lengths = split_pairs(positions[:, -1])
    shared = tf.minimum(chosen_lengths, rejected_lengths)
    shared = tf.concat([shared, shared], axis=0)[:, None]
    scale = tf.where(positions <= shared, tf.ones_like(positions),
                     tf.fill(tf.shape(positions), ld_alpha))
    return weights * scale


def split_pairs(values):
    """Splits a `[chosen; rejected]` batch: `(values[:n], values[n:])`.

    The batch of a preference objective runs the chosen and the rejected
    completions through the model at once, the chosen ones first (TRL's
    layout); the first axis must be even.

    Args:
        values: tensor `[2 * n, ...]`.

    Returns:
        `(chosen, rejected)`, each `[n, ...]`.

    Raises:
        ValueError: a static first dimension that is odd, or a scalar.

    Example:

    >>> chosen, rejected = split_pairs(tf.constant([1.0, 2.0, 3.0, 4.0]))
    >>> chosen.numpy().tolist(), rejected.numpy().tolist()
    ([1.0, 2.0], [3.0, 4.0])
    """
    values = tf.convert_to_tensor(values)
    if values.shape.rank == 0:
        raise ValueError("`values` must be `[2 * pairs, ...]`, not a scalar.")
    size = values.shape[0] if values.shape.rank is not None else None
    if size is not None:
        if size % 2:
            raise ValueError(
                f"`values` must hold chosen then rejected rows: an even first dimension. "
                f"Received shape {values.shape}."
            )
        half = size // 2
    else:
        half = tf.shape(values)[0] // 2
    return values[:half], values[half:]


# --------------------------------------------------------------------------
# The DPO family.
# --------------------------------------------------------------------------


def _f_scores(logratios, f_divergence_type, alpha):
    """`f'(exp(l))` of the log-ratios (TRL 1.13's scores)."""
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "js_divergence":
        return math.log(2.0) + tf.math.log_sigmoid(logratios)
    if f_divergence_type == "forward_kl":
        alpha = 0.0  # 1 - exp(-l): the alpha-divergence at alpha = 0
    if abs(alpha - 1.0) < 1e-6:
        return logratios
    exponent = tf.minimum((alpha - 1.0) * logratios, _EXP_CLAMP)
    return tf.math.expm1(exponent) / (alpha - 1.0)


def _loss_types(loss_type, loss_weights):
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    if not isinstance(types, (list, tuple)) or not types:
        raise ValueError(
            "`loss_type` must be a loss type name or a non-empty list of them. Valid "
            f"choices: {', '.join(map(repr, DPO_LOSS_TYPES))}. Received: {loss_type!r}"
        )
    for name in types:
        _check_choice("loss_type", name, DPO_LOSS_TYPES)
    if loss_weights is None:
        weights = [1.0] * len(types)
    else:
        weights = list(loss_weights) if isinstance(loss_weights, (list, tuple)) else None
        if weights is None or len(weights) != len(types) or not all(
            _is_number(w) and math.isfinite(w) for w in weights
        ):
            raise ValueError(
                "`loss_weights` must be a list of finite numbers, one per loss type "
                f"({len(types)}: {list(types)}). Received: loss_weights={loss_weights!r}"
            )
    return list(types), [float(w) for w in weights]


def _lengths(name, lengths, like, needed_by):
    if lengths is None:
        raise ValueError(
            f"`{name}` is required by loss type {needed_by!r}: the completion token counts "
            "(`counts` of `sequence_log_probs`), which it normalizes by as TRL does."
        )
    lengths = _float_tensor(name, lengths)
    _same_shapes({"policy_chosen_logps": like, name: lengths})
    return tf.maximum(lengths, 1.0)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta=0.1,
    loss_type="sigmoid",
    label_smoothing=0.0,
    chosen_lengths=None,
    rejected_lengths=None,
    *,
    loss_weights=None,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=0.5,
    discopop_tau=0.05,
    bco_delta=None,
    policy_chosen_nll=None,
):
    """The DPO family's per-pair losses and implicit rewards (TRL's types).

    The formulas, references and conventions of every type are in the
    module docstring (`kobjectives.ops.preference`). All inputs are
    log-probabilities summed over completion tokens (`sequence_log_probs`),
    one per pair; the math is float32 and overflow-free.

    Args:
        policy_chosen_logps, policy_rejected_logps: float tensors `[batch]`,
            the trained policy's summed log-probabilities.
        reference_chosen_logps, reference_rejected_logps: float tensors
            `[batch]`, the frozen reference's (no gradient flows to them
            anyway when they come from a frozen model or the data).
        beta: positive float, the temperature (IPO's tau).
        loss_type: one of `DPO_LOSS_TYPES`, or a list/tuple of them (a
            weighted sum, e.g. MPO's `["sigmoid", "bco_pair", "sft"]`).
        label_smoothing: float in `[0, 0.5]`, used by `exo_pair` (> 0),
            `robust` (< 0.5), `aot` and `aot_unpaired`.
        chosen_lengths, rejected_lengths: completion token counts `[batch]`
            (`counts` of `sequence_log_probs`), required by `ipo` and
            `sigmoid_norm` (clamped at 1), and by `sft` without
            `policy_chosen_nll`.
        loss_weights: one float per loss type (default 1 each).
        f_divergence_type: one of `F_DIVERGENCE_TYPES` (default
            `reverse_kl`, plain DPO).
        f_alpha_divergence_coef: float, alpha of `alpha_divergence` (0.5 as
            TRL 1.13).
        discopop_tau: positive float, DiscoPOP's temperature.
        bco_delta: None (0, TRL 1.x) or a float scalar, `bco_pair`'s reward
            shift (the BCO paper's running mean of the rewards).
        policy_chosen_nll: optional float `[batch]`, the `sft` term per pair
            (default TRL's: `-sum(policy_chosen_logps) /
            sum(chosen_lengths)` in every row).

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`: float32 tensors
        `[batch]`; `mean(losses)` is the batch loss; the rewards are
        `beta * (policy - reference)`, without gradient.

    Raises:
        ValueError: an unknown loss or f-divergence type; a
            `label_smoothing` outside `[0, 0.5]`, unused by every requested
            type, 0 with `exo_pair` or 0.5 with `robust`; a non-default
            f-divergence with a type that cannot take it; bad `loss_weights`,
            `beta` or `discopop_tau`; mismatched shapes; missing lengths.

    Example:

    >>> losses, chosen, rejected = dpo_loss(
    ...     [-10.0], [-12.0], [-11.0], [-11.0], beta=0.5)
    >>> round(float(losses[0]), 4), float(chosen[0]), float(rejected[0])
    (0.3133, 0.5, -0.5)
    """
    types, weights = _loss_types(loss_type, loss_weights)
    label_smoothing = _check_label_smoothing(label_smoothing)
    if label_smoothing > 0.0 and not set(types) & set(LABEL_SMOOTHING_LOSS_TYPES):
        raise ValueError(
            f"`label_smoothing` ({label_smoothing}) is not used by loss type(s) {types}: "
            f"only {list(LABEL_SMOOTHING_LOSS_TYPES)} use it. Set label_smoothing=0."
        )
    if "exo_pair" in types and label_smoothing == 0.0:
        raise ValueError(
            "Loss type 'exo_pair' needs `label_smoothing` > 0 (its epsilon; the EXO paper "
            "recommends 1e-3)."
        )
    if "robust" in types and label_smoothing >= 0.5:
        raise ValueError(
            "Loss type 'robust' needs `label_smoothing` < 0.5 (a label-flip rate; it divides "
            f"by 1 - 2 * label_smoothing). Received: {label_smoothing}"
        )
    _check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    if f_divergence_type != "reverse_kl" and not set(types) <= set(F_DIVERGENCE_LOSS_TYPES):
        raise ValueError(
            f"`f_divergence_type={f_divergence_type!r}` is only supported by loss types "
            f"{list(F_DIVERGENCE_LOSS_TYPES)} (the f-DPO reparameterization cancels only in "
            f"the chosen-rejected difference). Received loss types {types}."
        )
    if not _is_number(f_alpha_divergence_coef) or not math.isfinite(f_alpha_divergence_coef):
        raise ValueError(
            "`f_alpha_divergence_coef` must be a finite number. "
            f"Received: {f_alpha_divergence_coef!r}"
        )
    beta = _check_positive("beta", beta)
    tau = _check_positive("discopop_tau", discopop_tau) if "discopop" in types else None

    pc = _float_tensor("policy_chosen_logps", policy_chosen_logps)
    pr = _float_tensor("policy_rejected_logps", policy_rejected_logps)
    rc = _float_tensor("reference_chosen_logps", reference_chosen_logps)
    rr = _float_tensor("reference_rejected_logps", reference_rejected_logps)
    _same_shapes({
        "policy_chosen_logps": pc, "policy_rejected_logps": pr,
        "reference_chosen_logps": rc, "reference_rejected_logps": rr,
    })
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    alpha = float(f_alpha_divergence_coef)
    chosen_scores = _f_scores(chosen_logratios, f_divergence_type, alpha)
    rejected_scores = _f_scores(rejected_logratios, f_divergence_type, alpha)
    x = beta * (chosen_scores - rejected_scores)
    eps = label_smoothing
    log_sig = tf.math.log_sigmoid

    def per_pair(name):
        if name == "sigmoid":
            return tf.math.softplus(-x)
        if name == "hinge":
            return tf.nn.relu(1.0 - x)
        if name in ("ipo", "sigmoid_norm"):
            n_c = _lengths("chosen_lengths", chosen_lengths, pc, name)
            n_r = _lengths("rejected_lengths", rejected_lengths, pc, name)
            delta = chosen_scores / n_c - rejected_scores / n_r
            if name == "ipo":
                return tf.square(delta - 1.0 / (2.0 * beta))
            return tf.math.softplus(-beta * delta)
        if name == "exo_pair":
            return tf.sigmoid(x) * (log_sig(x) - math.log1p(-eps)) + tf.sigmoid(-x) * (
                log_sig(-x) - math.log(eps))
        if name == "nca_pair":
            chosen = beta * chosen_logratios
            return (-log_sig(chosen) - 0.5 * log_sig(-chosen)
                    - 0.5 * log_sig(-beta * rejected_logratios))
        if name == "robust":
            return -log_sig(x) - eps * x / (1.0 - 2.0 * eps)
        if name == "bco_pair":
            delta = 0.0 if bco_delta is None else tf.cast(bco_delta, tf.float32)
            return (-log_sig(beta * chosen_logratios - delta)
                    - log_sig(-(beta * rejected_logratios - delta)))
        if name == "sppo_hard":
            return (tf.square(chosen_logratios - 0.5 / beta)
                    + tf.square(rejected_logratios + 0.5 / beta))
        if name in ("aot", "aot_unpaired"):
            if name == "aot":
                delta = tf.sort(pc - pr, axis=0) - tf.sort(rc - rr, axis=0)
            else:
                delta = tf.sort(chosen_logratios, axis=0) - tf.sort(rejected_logratios, axis=0)
            return -(1.0 - eps) * log_sig(beta * delta) - eps * log_sig(-beta * delta)
        if name == "apo_zero":
            return tf.sigmoid(-beta * chosen_logratios) + tf.sigmoid(beta * rejected_logratios)
        if name == "apo_down":
            return (tf.sigmoid(beta * chosen_logratios)
                    + tf.sigmoid(-beta * (chosen_logratios - rejected_logratios)))
        if name == "discopop":
            return (tf.sigmoid(-x / tau) * tf.math.softplus(-x)
                    + tf.exp(-x + log_sig(x / tau)))
        # "sft"
        if policy_chosen_nll is not None:
            nll = _float_tensor("policy_chosen_nll", policy_chosen_nll)
            _same_shapes({"policy_chosen_logps": pc, "policy_chosen_nll": nll})
            return nll
        n_c = _lengths("chosen_lengths", chosen_lengths, pc, "sft")
        token_mean = -tf.reduce_sum(pc) / tf.maximum(tf.reduce_sum(n_c), 1.0)
        return tf.zeros_like(pc) + token_mean

    losses = tf.zeros_like(pc)
    for name, weight in zip(types, weights):
        losses += weight * per_pair(name)
    chosen_rewards = tf.stop_gradient(beta * chosen_logratios)
    rejected_rewards = tf.stop_gradient(beta * rejected_logratios)
    return losses, chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------
# Reference-free pairwise losses: SimPO, CPO, ORPO.
# --------------------------------------------------------------------------


def _pair(chosen, rejected):
    chosen = _float_tensor("chosen_logps", chosen)
    rejected = _float_tensor("rejected_logps", rejected)
    _same_shapes({"chosen_logps": chosen, "rejected_logps": rejected})
    return chosen, rejected


# `p^-alpha = exp(-alpha logp)` stays finite in float32 up to this exponent.
ALPHAPO_MAX_EXPONENT = 80.0


def _check_alpha(alpha):
    if not _is_number(alpha) or not math.isfinite(alpha):
        raise ValueError(
            "`alpha` (AlphaPO's reward shape) must be a finite number (0: the log-probability "
            f"rewards). Received: alpha={alpha!r}")
    return float(alpha)


def _alphapo_rewards(logps, alpha):
    """AlphaPO's rewards `(1 - p^-alpha) / alpha` of log-probabilities
    `logps` (`logps` itself for alpha 0), the exponent clamped at
    `ALPHAPO_MAX_EXPONENT`."""
    if alpha == 0.0:
        return logps
    exponent = tf.minimum(-alpha * logps, ALPHAPO_MAX_EXPONENT)
    return -tf.math.expm1(exponent) / alpha


def _smoothed_sigmoid(x, label_smoothing):
    losses = tf.math.softplus(-x)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses + label_smoothing * tf.math.softplus(x)
    return losses


def simpo_loss(chosen_logps, rejected_logps, beta=2.0, gamma=0.5, label_smoothing=0.0,
               alpha=0.0):
    """SimPO: `-log_sig(beta (c - r) - gamma)` on length-averaged log-probs.

    `gamma` is the target reward margin in reward units (SimPO's gamma), the
    convention of TRL's `CPOTrainer(loss_type="simpo")`, whose `simpo_gamma`
    (default 0.5) enters as `beta * ((c - r) - simpo_gamma / beta)`. The SimPO
    authors' own code takes `gamma_beta_ratio = gamma / beta` instead (their
    0.5 with beta 2.0 is gamma = 1.0 here). With label smoothing (cDPO
    style), `-(1 - eps) log_sig(z) - eps log_sig(-z)`. Meng et al. 2024,
    https://arxiv.org/abs/2405.14734. With `alpha`, AlphaPO (Gupta et al.
    2025, https://arxiv.org/abs/2501.03884; TRL's `CPOConfig(loss_type=
    "alphapo", alpha=...)`): `c`, `r` become `(1 - p^-alpha) / alpha`, `p`
    the exponentiated average log-probability (see the module docstring).

    Args:
        chosen_logps, rejected_logps: float tensors `[batch]`, the policy's
            average log-probabilities per completion token
            (`average_log_probs`).
        beta: positive float.
        gamma: float, the target margin.
        label_smoothing: float in `[0, 0.5]`.
        alpha: float, AlphaPO's reward shape; 0 (default) is SimPO.

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, float32 `[batch]`;
        the rewards are `beta * logps` (TRL's; with `alpha`, `beta` times
        AlphaPO's rewards), without gradient.

    Example:

    >>> losses, chosen, rejected = simpo_loss([-1.0], [-1.25], beta=2.0, gamma=0.5)
    >>> round(float(losses[0]), 4), float(chosen[0])  # -log_sig(0.5 - 0.5)
    (0.6931, -2.0)
    """
    label_smoothing = _check_label_smoothing(label_smoothing)
    beta = _check_positive("beta", beta)
    known = known_values(gamma)
    if known is not None and not (np.ndim(known) == 0 and np.isfinite(np.asarray(known, float))):
        raise ValueError(f"`gamma` must be a finite number. Received: gamma={gamma!r}")
    alpha = _check_alpha(alpha)
    chosen, rejected = _pair(chosen_logps, rejected_logps)
    chosen, rejected = _alphapo_rewards(chosen, alpha), _alphapo_rewards(rejected, alpha)
    x = beta * (chosen - rejected) - tf.cast(gamma, tf.float32)
    losses = _smoothed_sigmoid(x, label_smoothing)
    return losses, tf.stop_gradient(beta * chosen), tf.stop_gradient(beta * rejected)


def cpo_loss(chosen_logps, rejected_logps, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
             *, simpo_gamma=0.5, alpha=0.0):
    """CPO's preference loss: DPO on the policy's log-ratio, no reference.

    TRL's `CPOTrainer.cpo_loss` with `z = c - r`: `sigmoid` `-(1 - eps)
    log_sig(beta z) - eps log_sig(-beta z)`; `hinge` `relu(1 - beta z)`;
    `ipo` `(z - 1 / (2 beta))^2`; `simpo` as `simpo_loss` with
    `gamma=simpo_gamma`. TRL feeds summed log-probabilities to `sigmoid` and
    `hinge` and length-averaged ones to `ipo` and `simpo`; do the same.
    Label smoothing is used by `sigmoid` and `simpo` only (TRL ignores it,
    with a warning, for `hinge` and `ipo`: a `ValueError` here). CPO's
    behaviour-cloning NLL term (`cpo_alpha`) is the caller's. With `alpha`
    (TRL's `CPOConfig.alpha`, every type), AlphaPO's rewards `(1 - p^-alpha)
    / alpha` replace the log-probabilities (see `simpo_loss`). Xu et al.
    2024, https://arxiv.org/abs/2401.08417.

    Args:
        chosen_logps, rejected_logps: float tensors `[batch]`.
        beta: positive float.
        loss_type: one of `CPO_LOSS_TYPES`.
        label_smoothing: float in `[0, 0.5]`.
        simpo_gamma: float, the margin of `simpo`.
        alpha: float, AlphaPO's reward shape; 0 (default) is off.

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, float32 `[batch]`;
        rewards `beta * logps` (with `alpha`, `beta` times AlphaPO's
        rewards) without gradient.

    Example:

    >>> losses, _, _ = cpo_loss([-3.0], [-5.0], beta=0.5, loss_type="hinge")
    >>> float(losses[0])
    0.0
    """
    _check_choice("loss_type", loss_type, CPO_LOSS_TYPES)
    label_smoothing = _check_label_smoothing(label_smoothing)
    if loss_type == "simpo":
        return simpo_loss(chosen_logps, rejected_logps, beta=beta, gamma=simpo_gamma,
                          label_smoothing=label_smoothing, alpha=alpha)
    if label_smoothing > 0.0 and loss_type in ("hinge", "ipo"):
        raise ValueError(
            f"CPO loss type {loss_type!r} does not use `label_smoothing` (only 'sigmoid' and "
            f"'simpo' do). Set label_smoothing=0. Received: {label_smoothing}"
        )
    beta = _check_positive("beta", beta)
    alpha = _check_alpha(alpha)
    chosen, rejected = _pair(chosen_logps, rejected_logps)
    chosen, rejected = _alphapo_rewards(chosen, alpha), _alphapo_rewards(rejected, alpha)
    z = chosen - rejected
    if loss_type == "sigmoid":
        losses = _smoothed_sigmoid(beta * z, label_smoothing)
    elif loss_type == "hinge":
        losses = tf.nn.relu(1.0 - beta * z)
    else:  # ipo
        losses = tf.square(z - 1.0 / (2.0 * beta))
    return losses, tf.stop_gradient(beta * chosen), tf.stop_gradient(beta * rejected)


def _log1mexp(x):
    """`log(1 - exp(x))` for `x <= 0`, accurate everywhere (Maechler 2012).

    Both branches see only inputs of their own range, so the unused one
    cannot put a NaN into the gradient.
    """
    near_zero = x > -math.log(2.0)
    x_near = tf.where(near_zero, x, -tf.ones_like(x))
    x_far = tf.where(near_zero, -tf.ones_like(x), x)
    return tf.where(near_zero, tf.math.log(-tf.math.expm1(x_near)),
                    tf.math.log1p(-tf.exp(x_far)))


def odds_ratio_loss(chosen_logps, rejected_logps, beta=0.1):
    """ORPO's odds-ratio loss: `-beta log_sig(log_odds)`, non-negative.

    `log_odds = log(odds(c) / odds(r)) = (c - r) - (log(1 - exp(c)) -
    log(1 - exp(r)))` of the average log-probabilities `c`, `r`, with
    `log(1 - exp(.))` computed accurately (near 0 as well as far below).
    TRL's `ORPOTrainer.odds_ratio_loss` returns `beta * log_sig(log_odds)`
    and subtracts its mean from the NLL; here the sign is flipped, so the
    ORPO objective is `nll + mean(losses)`. Log-probabilities must be < 0:
    known values >= 0 raise. A traced value above minus the smallest
    normal float32 (an average that rounded to 0: every token's
    probability rounded to 1) counts as that value, with no gradient: the
    log odds (about 87 nats) and the gradient stay finite where TRL's give
    inf and NaN; every other input is left as it is. Hong et al. 2024,
    https://arxiv.org/abs/2403.07691.

    Args:
        chosen_logps, rejected_logps: float tensors `[batch]`, the policy's
            average log-probabilities per completion token, < 0.
        beta: positive float, ORPO's lambda.

    Returns:
        `(losses, log_odds)`: float32 `[batch]`; the log odds ratio carries
        its gradient (TRL logs its mean).

    Raises:
        ValueError: known log-probabilities >= 0, mismatched shapes, a bad
            `beta`.

    Example:

    >>> losses, log_odds = odds_ratio_loss([-0.5], [-0.5])
    >>> float(log_odds[0]), round(float(losses[0]), 5)  # 0.1 * log 2
    (0.0, 0.06931)
    """
    beta = _check_positive("beta", beta)
    for name, value in (("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps)):
        known = known_values(value)
        if known is not None and np.any(np.asarray(known, dtype=float) >= 0):
            raise ValueError(
                f"`{name}` must be log-probabilities < 0 (averaged over completion tokens). "
                f"Received a value of {float(np.max(known)):g}."
            )
    chosen, rejected = _pair(chosen_logps, rejected_logps)
    largest = -np.finfo(np.float32).tiny
    chosen, rejected = tf.minimum(chosen, largest), tf.minimum(rejected, largest)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return -beta * tf.math.log_sigmoid(log_odds), log_odds


# --------------------------------------------------------------------------
# KTO.
# --------------------------------------------------------------------------


def kto_kl_baseline(policy_kl_logps, reference_kl_logps):
    """KTO's reference point: `max(mean(policy - reference), 0)`, no gradient.

    The KL estimate of TRL's `KTOTrainer`, computed on the "KL batch":
    completions paired with prompts they do not answer (prompt `i` with the
    completion of example `i - 1`, the first with the last's, built by the
    data pipeline), scored by
    the policy and the reference. Inside `strategy.run` with several
    replicas the per-replica means are averaged over the replicas before
    the clamp, as TRL averages its processes' means (`gather(kl).mean()`).
    The value may also be precomputed (e.g. once per step on a larger KL
    batch) and passed to `kto_loss` as `kl`.

    Args:
        policy_kl_logps, reference_kl_logps: float tensors `[batch]`, summed
            log-probabilities of the mismatched completions.

    Returns:
        A float32 scalar, >= 0, with no gradient.

    Example:

    >>> float(kto_kl_baseline([-3.0, -5.0], [-4.0, -5.0]))
    0.5
    """
    policy = _float_tensor("policy_kl_logps", policy_kl_logps)
    reference = _float_tensor("reference_kl_logps", reference_kl_logps)
    _same_shapes({"policy_kl_logps": policy, "reference_kl_logps": reference})
    kl = tf.reduce_mean(tf.stop_gradient(policy - reference))
    if not tf.distribute.in_cross_replica_context():
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            kl = context.all_reduce(tf.distribute.ReduceOp.MEAN, kl)
    return tf.stop_gradient(tf.maximum(kl, 0.0))


def kto_loss(policy_logps, reference_logps, desirable, kl, beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0, *, loss_type="kto"):
    """KTO's per-example losses over a batch of unpaired completions.

    With `l = policy - reference` and the reference point `kl`: a desirable
    completion costs `desirable_weight * (1 - sig(beta (l - kl)))`, an
    undesirable one `undesirable_weight * (1 - sig(beta (kl - l)))` (TRL's
    `KTOTrainer.kto_loss`, Eq. 7 of the paper; written `sig(-.)`). With
    `loss_type="apo_zero_unpaired"`: `1 - sig(beta l)` and `sig(beta l)`,
    no reference point. TRL splits the batch into its chosen and rejected
    rows (shapes that depend on the data); here every row keeps its place
    and `desirable` selects its formula, so shapes stay static: the mean of
    `losses` equals TRL's mean of its concatenated losses.

    Args:
        policy_logps, reference_logps: float tensors `[batch]`, summed
            completion log-probabilities.
        desirable: bool (or 0/1) tensor `[batch]`, the KTO label.
        kl: the reference point: a float scalar (`kto_kl_baseline`, or a
            precomputed value) or None for 0 (TRL without a KL batch).
            No gradient flows into it.
        beta: positive float.
        desirable_weight, undesirable_weight: positive floats (lambda_D,
            lambda_U).
        loss_type: one of `KTO_LOSS_TYPES`.

    Returns:
        `(losses, rewards)`: float32 `[batch]`, `rewards = beta * l` without
        gradient.

    Example:

    >>> losses, rewards = kto_loss([-2.0, -2.0], [-2.0, -2.0], [True, False], kl=0.0)
    >>> losses.numpy().tolist(), rewards.numpy().tolist()
    ([0.5, 0.5], [0.0, 0.0])
    """
    _check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    beta = _check_positive("beta", beta)
    desirable_weight = _check_positive("desirable_weight", desirable_weight)
    undesirable_weight = _check_positive("undesirable_weight", undesirable_weight)
    policy = _float_tensor("policy_logps", policy_logps)
    reference = _float_tensor("reference_logps", reference_logps)
    desirable = tf.convert_to_tensor(desirable)
    if not (desirable.dtype == tf.bool or desirable.dtype.is_integer or desirable.dtype.is_floating):
        raise ValueError(f"`desirable` must be bool labels. Received dtype {desirable.dtype.name}.")
    if desirable.dtype != tf.bool:
        desirable = tf.not_equal(desirable, tf.zeros_like(desirable))
    _same_shapes({"policy_logps": policy, "reference_logps": reference, "desirable": desirable})
    logratios = policy - reference
    if loss_type == "kto":
        if kl is None:
            kl = 0.0
        kl = tf.stop_gradient(tf.cast(kl, tf.float32))
        if kl.shape.rank not in (None, 0):
            raise ValueError(f"`kl` must be a scalar (the batch KL estimate). Received shape {kl.shape}.")
        chosen = tf.sigmoid(-beta * (logratios - kl))
        rejected = tf.sigmoid(-beta * (kl - logratios))
    else:
        chosen = tf.sigmoid(-beta * logratios)
        rejected = tf.sigmoid(beta * logratios)
    losses = tf.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    return losses, tf.stop_gradient(beta * logratios)


# --------------------------------------------------------------------------
# Reward models.
# --------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None):
    """The Bradley-Terry loss of a reward model, per pair.

    `-log_sig(chosen - rejected - margin)` (TRL's `RewardTrainer`, with the
    optional per-pair margin of Llama 2), computed as a softplus: finite for
    any reward gap.

    Args:
        chosen_rewards, rejected_rewards: float tensors of one shape (e.g.
            `[batch]`), the scalar rewards of each pair's completions.
        margin: optional float tensor broadcastable to them.

    Returns:
        float32 losses of the rewards' shape.

    Example:

    >>> bradley_terry_loss([1.0, 0.0], [1.0, 0.0], margin=[0.0, 0.0]).numpy().round(4)
    array([0.6931, 0.6931], dtype=float32)
    """
    chosen = _float_tensor("chosen_rewards", chosen_rewards, rank=None)
    rejected = _float_tensor("rejected_rewards", rejected_rewards, rank=None)
    _same_shapes({"chosen_rewards": chosen, "rejected_rewards": rejected})
    gap = chosen - rejected
    if margin is not None:
        margin = _float_tensor("margin", margin, rank=None)
        try:
            tf.broadcast_static_shape(margin.shape, gap.shape)
        except ValueError:
            raise ValueError(
                f"`margin` of shape {margin.shape} does not broadcast to the rewards' shape "
                f"{gap.shape}."
            ) from None
        gap = gap - margin
    return tf.math.softplus(-gap)


def reward_centering(chosen_rewards, rejected_rewards):
    """`(chosen + rejected)^2` per pair: TRL's reward-centering penalty.

    `RewardTrainer` adds `center_rewards_coefficient * mean((chosen +
    rejected)^2)` to the loss, pulling the rewards towards mean zero
    (Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244); the mean and
    the coefficient are the caller's.

    Example:

    >>> reward_centering([1.0, 2.0], [-1.0, 1.0]).numpy()
    array([0., 9.], dtype=float32)
    """
    chosen = _float_tensor("chosen_rewards", chosen_rewards, rank=None)
    rejected = _float_tensor("rejected_rewards", rejected_rewards, rank=None)
    _same_shapes({"chosen_rewards": chosen, "rejected_rewards": rejected})
    return tf.square(chosen + rejected)
