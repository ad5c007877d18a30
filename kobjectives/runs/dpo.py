"""The preference-optimization run behind `kobjectives train dpo`: a causal
LM policy (an SFT run folder with `--init`) trained on preference pairs with
the DPO family, SimPO, CPO, ORPO or KTO (each pair unpaired into a desirable
and an undesirable row, or your unpaired rows); the reference
log-probabilities precomputed in one pass (or a frozen reference run online,
or none: reference-free DPO); held-out implicit-reward accuracy against the
starting policy (for unpaired rows, KTO's reward statistics), and optionally
the win rate of its generations over the starting policy's as judged by a
reward model. Exported as raw prompts in, generated answers out. See
`docs/preference_optimization.md`."""

import dataclasses
import json
import pathlib

import numpy as np

from kobjectives import backbones
from kobjectives.data.preference import REFERENCE_LOGPS_KEYS
from kobjectives.data.preference import PairLengthError
from kobjectives.data.preference import kto_dataset
from kobjectives.data.preference import kto_examples
from kobjectives.data.sft import ChatPromptPreprocessor
from kobjectives.export import TextGenerator
from kobjectives.objectives import DirectPreferenceOptimization
from kobjectives.objectives import FrozenModel
from kobjectives.objectives import KahnemanTverskyOptimization
from kobjectives.objectives import ReferenceFreePreferenceOptimization
from kobjectives.objectives import SyncReferenceModel
from kobjectives.objectives import precompute_reference_log_probs
from kobjectives.ops.preference import KTO_LOSS_TYPES
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.preference_pairs import PreferenceDataConfig
from kobjectives.runs.preference_pairs import PreferencePairsRun
from kobjectives.runs.preference_pairs import length_baseline_accuracy
from kobjectives.runs.preference_pairs import length_controlled_mean
from kobjectives.runs.preference_pairs import recipe_length_error
from kobjectives.runs.preference_pairs import render_pair_texts
from kobjectives.runs.reward import length_controlled_text

METHODS = ("dpo", "simpo", "cpo", "orpo", "kto")
"""The `preference.method` choices: the DPO family
(`DirectPreferenceOptimization`, with `preference.loss_type`), a
reference-free method (`ReferenceFreePreferenceOptimization`) or KTO
(`KahnemanTverskyOptimization` on the pairs unpaired by `kto_examples`)."""

REFERENCE_METHODS = ("dpo", "kto")
"""The methods whose objective reads the reference in training (precomputed
or online)."""

LD_ALPHA_OFF = 1.0
"""The default of `preference.ld_alpha`: weight 1 on every completion token,
which is plain DPO (LD-DPO off); 0 is a real LD-DPO value (the longer
completion's tail dropped), not "off"."""

KTO_DEFAULT_LOSS_TYPE = "kto"
"""The KTO type that method 'kto' trains when `preference.loss_type` is left
at its (the DPO family's) default."""

KTO_WEIGHT_DEFAULT = 1.0
"""The default of `preference.desirable_weight` and `undesirable_weight`:
`KahnemanTverskyOptimization`'s (TRL's)."""

SYNC_ALPHA_DEFAULT = 0.6
"""The default of `preference.sync_reference_alpha`: TRL's
`ref_model_mixup_alpha` and `objectives.SyncReferenceModel`'s."""

REFERENCE_PRESET = "reference"
"""The folder (in the run folder) of the starting policy as a keras-hub
preset: the source of the frozen reference of `preference.reference =
'online'`."""

JUDGE_SAVED_MODEL = "saved_model"
"""The folder of a reward run's SavedModel, inside its run folder."""

JUDGED_ANSWERS_FILE = "judged_answers.jsonl"
"""The win rate's answers, one JSON line per prompt (the prompt, both
policies' answers and the judge's scores), in the run folder."""


@dataclasses.dataclass(frozen=True)
class PreferenceConfig(Section):
    """The preference objective, its reference and the win-rate judge."""

    method: str = option(
        "dpo", "'dpo': the DPO family (preference.loss_type); 'simpo', 'cpo', 'orpo': "
        "reference-free; 'kto': KTO, each pair's chosen answer a desirable row and its "
        "rejected answer an undesirable row (kto_examples)", choices=METHODS)
    loss_type: tuple[str, ...] = option(
        ("sigmoid",), "method 'dpo': TRL's loss types, one or several (summed, weight 1 "
        "each): sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, "
        "aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm, sft; method 'kto': one of "
        "KTO's types, ['kto'] or ['apo_zero_unpaired'] (TRL's KTOConfig.loss_type; left at "
        "the default: 'kto')")
    beta: float = option(
        0.0, "the temperature (0: the method's default: 0.1 for dpo, cpo, orpo and kto, 2.0 "
        "for simpo)", within="[0, inf)")
    gamma: float = option(
        0.0, "SimPO's target reward margin (method 'simpo'; 0: its default 0.5)",
        within="[0, inf)")
    label_smoothing: float = option(
        0.0, "label smoothing, for the types that use it (exo_pair, robust, aot, simpo, cpo)",
        within="[0, 0.5]")
    alpha: float = option(
        0.0, "methods 'simpo', 'cpo': AlphaPO (TRL's CPOConfig.alpha; loss_type 'alphapo' is "
        "simpo with it): the rewards (1 - p^-alpha) / alpha replace the log-probabilities; "
        "0: off")
    use_weighting: bool = option(
        False, "method 'dpo': WPO weighting (TRL's DPOConfig.use_weighting): each pair's loss "
        "times the policy's w_chosen * w_rejected, w = exp(mean over the completion of "
        "log p(token) - log sum_v p_v^2), without gradient, not clamped (not with aot, "
        "aot_unpaired)")
    ld_alpha: float = option(
        LD_ALPHA_OFF, "method 'dpo': LD-DPO (TRL's DPOConfig.ld_alpha): the weight of the "
        "longer completion's tokens past the shorter one's length in the policy's and the "
        "reference's log-probabilities (1: plain DPO, LD-DPO off; 0: those tokens dropped)",
        within="[0, 1]")
    rpo_alpha: float = option(
        0.0, "method 'dpo': RPO (TRL's DPOConfig.rpo_alpha): adds the chosen completions' "
        "NLL (the 'sft' loss type, a token mean) with this weight to preference.loss_type's "
        "losses (weight 1 each); 0: off", within="[0, inf)")
    desirable_weight: float = option(
        KTO_WEIGHT_DEFAULT, "method 'kto': lambda_D, the weight of a desirable row's loss",
        within="(0, inf)")
    undesirable_weight: float = option(
        KTO_WEIGHT_DEFAULT, "method 'kto': lambda_U, the weight of an undesirable row's loss",
        within="(0, inf)")
    reference: str = option(
        "precomputed", "methods 'dpo', 'kto': 'precomputed' (the starting policy's "
        "log-probabilities computed in one pass before training and carried by the data: no "
        "reference held while training) or 'online' (a frozen copy run every step); method "
        "'dpo' only: 'none' (reference-free DPO, TRL's DPOConfig.reference_free: reference "
        "log-probabilities of 0 in training, none computed for the training pairs; the "
        "held-out figures still compare with the starting policy)",
        choices=("precomputed", "online", "none"))
    sync_reference_steps: int = option(
        0, "TR-DPO (TRL's DPOConfig.sync_ref_model with ref_model_sync_steps), methods 'dpo', "
        "'kto' with preference.reference = 'online': every this many optimizer steps the "
        "frozen reference becomes (1 - sync_reference_alpha) * reference + "
        "sync_reference_alpha * policy (objectives.SyncReferenceModel; 0: off, the reference "
        "stays the starting policy)", within="[0, inf)")
    sync_reference_alpha: float = option(
        SYNC_ALPHA_DEFAULT, "TR-DPO's share of the policy in each mix (TRL's "
        "ref_model_mixup_alpha; 1: a copy), with preference.sync_reference_steps > 0",
        within="(0, 1]")
    chunk_size: int = option(
        0, "positions whose [chunk, vocabulary] logits exist at once (0: all)",
        within="[0, inf)")
    judge: str = option(
        "", "a `kobjectives train reward` run folder (with its SavedModel): after training, "
        "the policy's and the starting policy's greedy answers to held-out prompts are "
        "scored by it, giving the win rate (empty: no win rate)")
    judge_prompts: int = option(
        64, "distinct held-out prompts answered for the win rate (a prompt several pairs "
        "share counts once)", within="[1, inf)")
    max_new_tokens: int = option(
        48, "the most tokens of a generated answer (win rate and export)", within="[1, inf)")

    def check(self):
        """The keys one method reads and another cannot use."""
        for key in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, key)
            if self.method != "kto" and value != KTO_WEIGHT_DEFAULT:
                yield (f"{key} = {value!r}: only method 'kto' weighs its rows; leave it "
                       f"{KTO_WEIGHT_DEFAULT} with method {self.method!r}, or set "
                       "preference.method = 'kto'")
        if self.gamma and self.method != "simpo":
            yield (f"gamma = {self.gamma!r}: the target reward margin is SimPO's; leave it 0 "
                   f"with method {self.method!r}, or set preference.method = 'simpo'")
        if self.alpha and self.method not in ("simpo", "cpo"):
            yield (f"alpha = {self.alpha!r}: AlphaPO reshapes SimPO's and CPO's rewards (TRL's "
                   f"CPOConfig.alpha); leave it 0 with method {self.method!r}, or set "
                   "preference.method = 'simpo' or 'cpo'")
        if self.use_weighting and self.method != "dpo":
            yield ("use_weighting = true: WPO weighting is the DPO family's (TRL's "
                   f"DPOConfig.use_weighting); leave it false with method {self.method!r}, or "
                   "set preference.method = 'dpo'")
        if self.ld_alpha != LD_ALPHA_OFF and self.method != "dpo":
            yield (f"ld_alpha = {self.ld_alpha!r}: LD-DPO is the DPO family's (TRL's "
                   f"DPOConfig.ld_alpha); leave it {LD_ALPHA_OFF} with method "
                   f"{self.method!r}, or set preference.method = 'dpo'")
        if self.rpo_alpha and self.method != "dpo":
            yield (f"rpo_alpha = {self.rpo_alpha!r}: RPO adds an NLL term to the DPO family's "
                   f"losses (TRL's DPOConfig.rpo_alpha); leave it 0 with method "
                   f"{self.method!r} (cpo and orpo have their own NLL term), or set "
                   "preference.method = 'dpo'")
        if self.rpo_alpha and "sft" in self.loss_type:
            yield (f"rpo_alpha = {self.rpo_alpha!r} adds the 'sft' loss type, but "
                   f"preference.loss_type = {list(self.loss_type)} has it already (weight 1); "
                   "drop 'sft' from loss_type, or leave rpo_alpha 0")
        if self.reference == "none" and self.method != "dpo":
            instead = ("needs a reference: set it 'precomputed' or 'online'"
                       if self.method in REFERENCE_METHODS else
                       "uses no reference in training already: leave it 'precomputed'")
            yield ("reference = 'none': reference-free training (TRL's "
                   "DPOConfig.reference_free) is for method 'dpo' alone; method "
                   f"{self.method!r} {instead}, or set preference.method = 'dpo'")
        if self.sync_reference_steps and (self.method not in REFERENCE_METHODS
                                          or self.reference != "online"):
            yield (f"sync_reference_steps = {self.sync_reference_steps}: TR-DPO mixes the policy "
                   "into a reference run online, but method "
                   f"{self.method!r} with reference {self.reference!r} has none; set "
                   "preference.reference = 'online' (methods 'dpo', 'kto'), or leave "
                   "sync_reference_steps 0")
        if not self.sync_reference_steps and self.sync_reference_alpha != SYNC_ALPHA_DEFAULT:
            yield (f"sync_reference_alpha = {self.sync_reference_alpha!r} has no effect with "
                   "sync_reference_steps = 0 (TR-DPO off); set preference.sync_reference_steps "
                   f"> 0, or leave it {SYNC_ALPHA_DEFAULT}")
        kto_types = [t for t in self.loss_type if t in KTO_LOSS_TYPES]
        if self.method == "dpo" and kto_types:
            yield (f"loss_type = {list(self.loss_type)}: {kto_types} is KTO's, not the DPO "
                   "family's; set preference.method = 'kto' (method 'dpo' takes the DPO "
                   "family's types)")
        default = type(self)()
        if self.method in ("simpo", "cpo", "orpo") and self.loss_type != default.loss_type:
            yield (f"loss_type = {list(self.loss_type)}: method {self.method!r} has one loss "
                   "of its own; loss_type chooses the DPO family's types (method 'dpo') or "
                   f"KTO's (method 'kto'): leave it unset with method {self.method!r}, or "
                   "set preference.method = 'dpo'")
        if self.method != "kto":
            return
        if self.loss_type != default.loss_type and (
                len(self.loss_type) != 1 or self.loss_type[0] not in KTO_LOSS_TYPES):
            yield (f"loss_type = {list(self.loss_type)}: method 'kto' takes one of KTO's "
                   f"types, {' or '.join(str([t]) for t in KTO_LOSS_TYPES)} (left unset, "
                   f"{list(default.loss_type)}: {KTO_DEFAULT_LOSS_TYPE!r}), not the DPO "
                   "family's types nor several; or set preference.method = 'dpo'")
        if self.label_smoothing:
            yield (f"label_smoothing = {self.label_smoothing!r}: KTO has no label smoothing; "
                   "leave it 0 with method 'kto'")


@dataclasses.dataclass(frozen=True)
class DPORecipe(Recipe):
    """A causal LM policy trained on preference pairs (the DPO family,
    SimPO, CPO, ORPO, KTO), started from an SFT run (`--init`)."""

    data: PreferenceDataConfig = section(PreferenceDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=128,
                                 dropout=0.0)
    preference: PreferenceConfig = section(PreferenceConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=200, epochs=2, batch_size=16, learning_rate=5e-5,
        warmup_steps=20)


def implicit_reward_statistics(policy, reference, beta):
    """Held-out figures of a policy against its reference.

    Args:
        policy: dict of float arrays `[pairs]`: `chosen`, `rejected`, the
            policy's summed completion log-probabilities.
        reference: the same of the reference policy.
        beta: float, the DPO temperature of the implicit reward
            `beta * (log pi(y|x) - log pi_ref(y|x))`.

    Returns:
        A dict of floats: `implicit_reward_accuracy` (the share of pairs
        whose chosen implicit reward exceeds the rejected one; a tie is
        wrong), `reward_margin`, `chosen_reward`, `rejected_reward` (means),
        `policy_log_prob_accuracy` (chosen more likely than rejected under
        the policy) and `reference_log_prob_accuracy` (under the reference).
    """
    chosen = beta * (policy["chosen"] - reference["chosen"])
    rejected = beta * (policy["rejected"] - reference["rejected"])
    return {
        "implicit_reward_accuracy": float(np.mean(chosen > rejected)),
        "reward_margin": float(np.mean(chosen - rejected)),
        "chosen_reward": float(np.mean(chosen)),
        "rejected_reward": float(np.mean(rejected)),
        "policy_log_prob_accuracy": float(np.mean(policy["chosen"] > policy["rejected"])),
        "reference_log_prob_accuracy": float(np.mean(reference["chosen"] >
                                                     reference["rejected"])),
    }


def kto_reward_statistics(policy, reference, desirable, beta):
    """Held-out figures of a policy on unpaired KTO rows against its
    reference: TRL's KTO statistics (`rewards/chosen`, `rewards/rejected`,
    `rewards/margins`), the shares of rows on the right side of 0, and the
    counts.

    Args:
        policy: float array `[rows]`, the policy's summed completion
            log-probabilities.
        reference: float array `[rows]`, the same of the reference.
        desirable: bool array `[rows]`, the rows' labels (True: desirable).
        beta: float, the temperature of the implicit reward `beta * (log
            pi(y|x) - log pi_ref(y|x))`.

    Returns:
        A dict: `desirable_reward`, `undesirable_reward` (the mean implicit
        reward of the desirable, resp. undesirable rows), `reward_margin`
        (their difference), `desirable_reward_positive` (the share of
        desirable rows with a reward > 0), `undesirable_reward_negative`
        (the share of undesirable rows with a reward < 0), floats (NaN for
        a kind without rows, and the margin then), and `desirable_rows`,
        `undesirable_rows` (ints).

    Example:

    >>> out = kto_reward_statistics([-1.0, -3.0, -2.0], [-2.0, -2.0, -2.0],
    ...                             [True, False, False], beta=0.5)
    >>> out["desirable_reward"], out["undesirable_reward"], out["reward_margin"]
    (0.5, -0.25, 0.75)
    >>> out["undesirable_reward_negative"], out["undesirable_rows"]
    (0.5, 2)
    """
    rewards = beta * (np.asarray(policy, np.float64) - np.asarray(reference, np.float64))
    desirable = np.asarray(desirable, bool)
    if rewards.shape != desirable.shape:
        raise ValueError(
            f"`policy`, `reference` and `desirable` must have one shape [rows]. Received "
            f"{rewards.shape} and {desirable.shape}.")
    chosen, rejected = rewards[desirable], rewards[~desirable]

    def mean(values):
        return float(np.mean(values)) if values.size else float("nan")

    return {
        "desirable_reward": mean(chosen),
        "undesirable_reward": mean(rejected),
        "reward_margin": mean(chosen) - mean(rejected),
        "desirable_reward_positive": mean(chosen > 0),
        "undesirable_reward_negative": mean(rejected < 0),
        "desirable_rows": int(chosen.size),
        "undesirable_rows": int(rejected.size),
    }


def distinct_prompts(examples, prompt_ids, count):
    """`(prompts, prompt_ids)`: the prompts (first items) of the first
    `count` `examples` with distinct prompts, each at its first
    occurrence, and their `prompt_ids`.

    Args:
        examples: sequence of pairs `(prompt, chosen, rejected)` or rows
            `(prompt, completion, label)`; a prompt is a str or turns.
        prompt_ids: sequence, one item per example.
        count: int, the most prompts to keep.

    Example:

    >>> distinct_prompts([("a", "x", "y"), ("a", "z", "y"), ("b", "x", "y")],
    ...                  [[1], [1], [2]], 5)
    (['a', 'b'], [[1], [2]])
    """
    prompts, kept, seen = [], [], set()
    for example, ids in zip(examples, prompt_ids):
        if len(prompts) >= count:
            break
        key = json.dumps(example[0], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(example[0])
            kept.append(ids)
    return prompts, kept


def win_rate(policy_scores, reference_scores, policy_lengths=None, reference_lengths=None):
    """The share of prompts whose policy answer scores above the reference
    policy's, a tie counting one half (the DPO paper's protocol); given the
    answers' lengths, the length-controlled win rate instead: the mean of
    the win rates where the policy's answer is longer and where it is
    shorter (`length_controlled_mean`), 0.5 for a judge that only measures
    length."""
    policy_scores, reference_scores = np.asarray(policy_scores), np.asarray(reference_scores)
    wins = np.where(policy_scores == reference_scores, 0.5, policy_scores > reference_scores)
    if policy_lengths is None:
        return float(np.mean(wins))
    return length_controlled_mean(wins, policy_lengths, reference_lengths)


@register
class DPORun(PreferencePairsRun):
    """`kobjectives train dpo`: a causal-LM policy trained on preference
    pairs. `preference.method = 'dpo'` trains `DirectPreferenceOptimization`
    with `preference.loss_type` (one type or a sum); `'simpo'`, `'cpo'`,
    `'orpo'` train `ReferenceFreePreferenceOptimization`; `'kto'` trains
    `KahnemanTverskyOptimization` (`preference.loss_type` 'kto' or
    'apo_zero_unpaired') on the pairs unpaired (`kto_examples`: each pair's
    chosen answer a desirable row, its rejected answer an undesirable row)
    or on the unpaired rows of `data.files`; `kto_dataset` gives each row
    its mismatched KL row.
    The starting policy (`--init`, an SFT run folder; else a fresh
    backbone) is the reference: its log-probabilities of every training
    pair (KTO: row and KL row) are computed once before training
    (`precompute_reference_log_probs`) and carried by the data, or
    (`preference.reference = 'online'`) a frozen copy runs every step;
    with `preference.reference = 'none'` (method 'dpo') training is
    reference-free (`DirectPreferenceOptimization(reference_free=True)`),
    as the reference-free methods' (no training values computed). With an
    online reference, `preference.sync_reference_steps` turns on TR-DPO
    (`SyncReferenceModel`, its synced reference backed up for resuming).
    Held-out: the policy's implicit-reward accuracy against the reference,
    the log-probability preference of both, and the length baseline (for
    unpaired rows, `kto_reward_statistics` of the validation rows); with
    `preference.judge` (a reward run), the win rate of the policy's greedy
    answers over the reference's. Serves raw user prompts: generated
    answers out (the SavedModel's `generate` signature)."""

    name = "dpo"
    recipe_class = DPORecipe
    title = "preference optimization"
    search_space = {
        "training.learning_rate": ("float", 1e-5, 1e-3, "log"),
        "preference.beta": ("float", 0.01, 0.5, "log"),
        "training.warmup_steps": ("int", 0, 50),
    }
    start_weights = None
    reference_preset = None
    reference_values = None
    kto_rows = None
    kto_reference_values = None
    row_reference_logps = None

    # -- checks ------------------------------------------------------------------

    def check(self):
        yield from super().check()
        config = self.recipe.preference
        if config.method not in REFERENCE_METHODS and config.reference == "online":
            yield (f"preference.reference = {config.reference!r}: method "
                   f"{config.method!r} uses no reference in training; leave it 'precomputed' "
                   "(the starting policy's values are still computed for the held-out figures)")
        if config.sync_reference_steps and self.recipe.model.lora_rank:
            yield (f"preference.sync_reference_steps = {config.sync_reference_steps}: TR-DPO "
                   "mixes the policy's weights into the reference's, but with model.lora_rank "
                   f"= {self.recipe.model.lora_rank} the policy's are LoRA adapters the "
                   "reference lacks; leave one of them 0")
        if config.judge:
            judge = pathlib.Path(config.judge).expanduser() / JUDGE_SAVED_MODEL
            if not (judge / "saved_model.pb").is_file():
                yield (f"preference.judge = {config.judge!r}: no SavedModel at {judge}; give "
                       "a `kobjectives train reward` run folder trained with "
                       "training.saved_model = true (or `kobjectives export` it first)")
            length = self.recipe.model.sequence_length
            if config.max_new_tokens > length - 2:
                yield (f"preference.max_new_tokens = {config.max_new_tokens}: the judged "
                       "answers leave a prompt model.sequence_length - max_new_tokens tokens "
                       f"(the start token and one more at least); with model.sequence_length "
                       f"= {length} use at most {length - 2}")
        try:
            self._objective(_probe_backbone(), None)
        except (ValueError, TypeError) as error:
            yield f"preference ({config.method}): {error}"

    def trains_unpaired_rows(self):
        """Method 'kto' trains on unpaired rows; the other methods need
        pairs."""
        return self.recipe.preference.method == "kto"

    def pairs_needed_by(self):
        return (f"method {self.recipe.preference.method!r} (the DPO family, SimPO, CPO and "
                "ORPO compare a chosen with a rejected answer)")

    # -- data --------------------------------------------------------------------

    def prepare(self):
        """The pairs (or unpaired rows) and tokenizer
        (`PreferencePairsRun.prepare`); for KTO the train and validation
        pairs unpaired into rows, or the unpaired rows tokenized
        (`kto_examples`); then the starting policy: its weights (the policy
        starts from them, the online reference copies them) and its
        log-probabilities of every pair (the training pairs only when DPO's
        reference is precomputed; never with `preference.reference =
        'none'`) and, for KTO with the reference precomputed, of every train
        and validation row and KL row (`apo_zero_unpaired`, which has no KL
        reference point: of the rows alone, `reference_kl_logps` 0 and
        unread); for unpaired rows with an online reference, of the
        validation rows alone (the held-out figures)."""
        super().prepare()
        config = self.recipe.preference
        batch_size = self.recipe.training.batch_size
        if config.method == "kto":
            source = self.rows if self.rows is not None else self.pairs
            self.kto_rows = {
                split: kto_examples(source[split], self.tokenizer, self.template,
                                    start_token_id=self.tokenizer.start_token_id)
                for split in ("train", "validation")}
            self.log(("kto: unpaired rows: " if self.rows is not None else
                      "kto: each pair a desirable and an undesirable row: ") + ", ".join(
                f"{len(rows)} {split} rows" for split, rows in self.kto_rows.items()))
        start = self.build_backbone()
        self.start_weights = start.get_weights()
        splits = [s for s in self.examples
                  if s != "train" or (config.method == "dpo"
                                      and self.uses_precomputed_reference())]
        self.reference_values = {}
        for split in splits:
            values = precompute_reference_log_probs(
                start, self.pair_dataset(split, batch_size, ordered=True),
                chunk_size=config.chunk_size or None, ld_alpha=self.ld_alpha())
            self.reference_values[split] = values
        done = [f"{len(self.examples[s])} {s} pairs" for s in splits]
        if config.method == "kto" and self.uses_precomputed_reference():
            self.kto_reference_values = {}
            # apo_zero_unpaired has no KL reference point: its KL rows are not run.
            with_kl = self.kto_loss_type() == "kto"
            for split, rows in self.kto_rows.items():
                self.kto_reference_values[split] = precompute_reference_log_probs(
                    start, self.kto_row_dataset(split, batch_size, ordered=True),
                    chunk_size=config.chunk_size or None, kl_rows=with_kl)
                done.append(f"{len(rows)} {split} rows " + (
                    "and their KL rows" if with_kl else "(no KL rows: apo_zero_unpaired)"))
        if self.rows is not None:
            # The held-out figures' reference: the starting policy's values of the rows.
            if self.kto_reference_values:
                logps = self.kto_reference_values["validation"]["reference_logps"]
            else:
                logps = self.row_log_probs(start, "validation")
                done.append(f"{len(self.kto_rows['validation'])} validation rows")
            self.row_reference_logps = {"validation": logps}
        if self.uses_reference_in_training() and not self.uses_precomputed_reference():
            from kobjectives.distribute.fault_tolerance import worker_dir

            # The frozen reference is saved by its source: the starting policy as a preset.
            self.reference_preset = backbones.save_preset(
                start, self.tokenizer, worker_dir(self._out_dir()) / REFERENCE_PRESET)
        note = ""
        if self.reference_preset:
            note = "; a frozen copy runs every training step"
            if config.sync_reference_steps:
                note += (f", mixed toward the policy every {config.sync_reference_steps} steps "
                         f"(TR-DPO, alpha {config.sync_reference_alpha})")
        elif config.method == "dpo" and not self.uses_reference_in_training():
            note = ("; training is reference-free (preference.reference = 'none': reference "
                    "log-probabilities 0)")
        self.log(f"reference: the starting policy's log-probabilities of {', '.join(done)} "
                 "computed once" + note)
        del start

    def kto_loss_type(self):
        """Method 'kto''s `loss_type`: `preference.loss_type`'s one KTO
        type, or 'kto' when it is left at its default."""
        loss_type = self.recipe.preference.loss_type
        if len(loss_type) == 1 and loss_type[0] in KTO_LOSS_TYPES:
            return loss_type[0]
        return KTO_DEFAULT_LOSS_TYPE

    def ld_alpha(self):
        """The objective's `ld_alpha`: None (off) unless method 'dpo' sets
        `preference.ld_alpha` below 1. The reference's values and the
        held-out figures (policy and reference alike) are weighted by it."""
        config = self.recipe.preference
        if config.method != "dpo" or config.ld_alpha == LD_ALPHA_OFF:
            return None
        return config.ld_alpha

    def uses_reference_in_training(self):
        """Whether the objective reads a reference in training (precomputed
        or online): not for the reference-free methods, nor for
        `preference.reference = 'none'` (reference-free DPO)."""
        config = self.recipe.preference
        return config.method in REFERENCE_METHODS and config.reference != "none"

    def uses_precomputed_reference(self):
        """Whether the training batches carry the reference's values."""
        return (self.uses_reference_in_training()
                and self.recipe.preference.reference == "precomputed")

    def kto_row_dataset(self, split, batch_size, ordered=False, input_context=None,
                        **options):
        """Batches of the KTO rows of `split` (`kto_dataset`), with their
        precomputed reference values when there are: `ordered` gives every
        row once, in order; otherwise shuffled (seeded) and repeated. The KL
        rows are paired once over the whole split, in groups of
        `training.batch_size` rows (TRL's KL batch), so the precomputed
        values stay theirs; under an `input_context` with several input
        pipelines each takes every n-th batch."""
        options = dict(
            sequence_length=self.recipe.model.sequence_length, batch_size=batch_size,
            truncation=self.recipe.data.truncation, pad_token_id=self.tokenizer.pad_token_id,
            kl_batch_size=max(2, self.recipe.training.batch_size),
            extra_features=(self.kto_reference_values or {}).get(split), **options)
        if ordered:
            options.setdefault("drop_remainder", False)
            options.setdefault("shuffle", False)
        else:
            options.setdefault("shuffle", True)
            options.setdefault("repeat", True)
            options.setdefault("seed", self.recipe.training.seed)
        try:
            dataset = kto_dataset(self.kto_rows[split], **options)
        except PairLengthError as error:
            raise recipe_length_error(error) from None
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        return dataset

    def make_dataset(self, split, batch_size, input_context=None):
        """Pairs (`PreferencePairsRun.make_dataset`), or for KTO its rows:
        `"train"` shuffled and repeated; `"validation"` the first
        `training.validation_batches` batches of the validation rows
        shuffled once (seeded: rows are laid out desirable first, so in
        order a batch would hold one kind), then fixed."""
        if self.recipe.preference.method != "kto":
            return super().make_dataset(split, batch_size, input_context=input_context)
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        if split == "train":
            return self.kto_row_dataset(split, batch_size, input_context=input_context)
        pipelines = input_context.num_input_pipelines if input_context else 1
        self.check_validation_size(len(self.kto_rows[split]) // pipelines, batch_size)
        dataset = self.kto_row_dataset(
            split, batch_size, input_context=input_context, shuffle=True, repeat=False,
            seed=self.recipe.training.seed + 1, drop_remainder=True)
        return self.finite_validation(
            dataset.take(self.recipe.training.validation_batches).cache(),
            len(self.kto_rows[split]) // pipelines, batch_size)

    def extra_features(self, split):
        """The precomputed reference log-probabilities of `split`, when the
        objective reads them (never in reference-free training)."""
        if self.recipe.preference.method != "dpo" or not self.uses_reference_in_training() or (
                split == "train" and not self.uses_precomputed_reference()):
            return None
        return (self.reference_values or {}).get(split)

    # -- model -------------------------------------------------------------------

    def _objective(self, policy, reference):
        config = self.recipe.preference
        options = dict(chunk_size=config.chunk_size or None)
        if config.beta:
            options["beta"] = config.beta
        if config.method == "kto":
            return KahnemanTverskyOptimization(
                policy, reference, desirable_weight=config.desirable_weight,
                undesirable_weight=config.undesirable_weight,
                loss_type=self.kto_loss_type(), **options)
        if config.method == "dpo":
            loss_type, loss_weights = list(config.loss_type), None
            if config.rpo_alpha:  # RPO: the chosen NLL with weight rpo_alpha
                loss_type.append("sft")
                loss_weights = [1.0] * len(config.loss_type) + [config.rpo_alpha]
            return DirectPreferenceOptimization(
                policy, reference, loss_type=loss_type, loss_weights=loss_weights,
                label_smoothing=config.label_smoothing, use_weighting=config.use_weighting,
                ld_alpha=self.ld_alpha(), reference_free=config.reference == "none", **options)
        if config.gamma:
            options["gamma"] = config.gamma
        if config.label_smoothing:
            options["label_smoothing"] = config.label_smoothing
        if config.alpha:
            options["alpha"] = config.alpha
        return ReferenceFreePreferenceOptimization(policy, method=config.method, **options)

    def _starting_backbone(self):
        backbone = self.build_backbone()
        if self.start_weights is not None:
            backbone.set_weights(self.start_weights)
        return backbone

    def build_objective(self):
        """The objective over the starting policy; the online reference a
        frozen copy of it."""
        online = self.uses_reference_in_training() and not self.uses_precomputed_reference()
        reference = FrozenModel.from_preset(self.reference_preset) if online else None
        return self._objective(self._starting_backbone(), reference)

    def callbacks(self):
        """The run's callbacks; with `preference.sync_reference_steps`, TR-DPO's
        `SyncReferenceModel` first, backing the synced reference up beside
        the run's backup (each worker its own: the backup's folder)."""
        callbacks = super().callbacks()
        config = self.recipe.preference
        if not config.sync_reference_steps:
            return callbacks
        from kobjectives.distribute import RunBackup

        backup = next(c for c in callbacks if isinstance(c, RunBackup))
        # Before the backup: a kill between their epoch-end writes leaves a
        # reference file of the backed-up step.
        return [SyncReferenceModel(config.sync_reference_alpha, config.sync_reference_steps,
                                   backup_dir=backup.backup_dir), *callbacks]

    def beta(self, model):
        """The implicit reward's temperature: the objective's `beta`."""
        return float(getattr(model, "beta", None) or 0.1)

    # -- evaluation ----------------------------------------------------------------

    def policy_log_probs(self, model, split):
        """`{"chosen", "rejected"}`: the policy's summed completion
        log-probabilities of every pair of `split`, in order (LD-weighted
        with `preference.ld_alpha`, as the reference's)."""
        values = precompute_reference_log_probs(
            model.policy, self.pair_dataset(split, self.recipe.training.batch_size,
                                            ordered=True),
            chunk_size=self.recipe.preference.chunk_size or None, ld_alpha=self.ld_alpha())
        return dict(zip(("chosen", "rejected"), (values[k] for k in REFERENCE_LOGPS_KEYS)))

    def row_log_probs(self, model, split):
        """The summed completion log-probabilities of every KTO row of
        `split`, in order, under `model`'s policy (a
        `KahnemanTverskyOptimization`, or a causal backbone): the rows
        alone, their KL rows never run."""
        policy = model.policy if isinstance(model, KahnemanTverskyOptimization) else model
        return precompute_reference_log_probs(
            policy, self.kto_row_dataset(split, self.recipe.training.batch_size, ordered=True),
            chunk_size=self.recipe.preference.chunk_size or None,
            kl_rows=False)["reference_logps"]

    def evaluate(self, fitted):
        config = self.recipe.preference
        beta = self.beta(fitted.model)
        loss_type = {"dpo": list(config.loss_type),
                     "kto": self.kto_loss_type()}.get(config.method, config.method)
        metrics = {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.recipe.data.source,
            "sequence_length": self.recipe.model.sequence_length,
            "method": config.method,
            "loss_type": loss_type,
            **({"use_weighting": config.use_weighting, "ld_alpha": self.ld_alpha(),
                "rpo_alpha": config.rpo_alpha}
               if config.method == "dpo" else {}),
            "beta": beta,
            **({"alpha": config.alpha} if config.alpha else {}),
            **({"desirable_weight": config.desirable_weight,
                "undesirable_weight": config.undesirable_weight,
                "kto_rows": {s: len(r) for s, r in self.kto_rows.items()},
                "kto_data": "unpaired rows" if self.rows is not None else "pairs unpaired"}
               if config.method == "kto" else {}),
            "reference": config.reference,
            **({"sync_reference_steps": config.sync_reference_steps,
                "sync_reference_alpha": config.sync_reference_alpha}
               if config.sync_reference_steps else {}),
            "val_loss": fitted.evaluation["loss"],
            "dropped_pairs": dict(self.dropped or {}),
        }
        for split, prefix in (("validation", "val"), ("heldout", "heldout")):
            if split not in self.examples:
                continue
            reference = dict(zip(("chosen", "rejected"), (
                self.reference_values[split][k] for k in REFERENCE_LOGPS_KEYS)))
            statistics = implicit_reward_statistics(
                self.policy_log_probs(fitted.model, split), reference, beta)
            metrics.update({f"{prefix}_{k}": v for k, v in statistics.items()})
            metrics[f"{prefix}_length_baseline_accuracy"] = length_baseline_accuracy(
                self.examples[split])
            metrics[f"{prefix}_pairs"] = len(self.examples[split])
        if self.rows is not None:
            statistics = kto_reward_statistics(
                self.row_log_probs(fitted.model, "validation"),
                self.row_reference_logps["validation"],
                self.kto_rows["validation"].desirable, beta)
            metrics.update({f"val_{k}": v for k, v in statistics.items()})
        if config.judge:
            metrics.update(self.judged(fitted.model))
        return metrics

    def judge_prompts(self):
        """`(split, prompts, prompt_ids)`: the win rate's prompts (turns)
        and their tokens: the first `preference.judge_prompts` distinct
        prompts (`distinct_prompts`) of the held-out split's pairs (else
        the validation pairs), or of the validation rows for unpaired
        rows, in order: a prompt that several pairs share is answered and
        judged once."""
        count = self.recipe.preference.judge_prompts
        if self.rows is None:
            split = "heldout" if "heldout" in self.examples else "validation"
            return (split, *distinct_prompts(self.pairs[split],
                                             self.examples[split].prompt_ids, count))
        return ("validation", *distinct_prompts(
            self.rows["validation"], self.kto_rows["validation"].prompt_ids, count))

    def judged(self, model):
        """The win rate of the policy's greedy answers over the starting
        policy's on the `judge_prompts()`, scored by the judge's
        SavedModel."""
        import tensorflow as tf

        config = self.recipe.preference
        split, prompts, prompt_ids = self.judge_prompts()
        count = len(prompts)
        start = self._objective(self._starting_backbone(), None)
        answers = {name: self.generate(objective, prompt_ids)
                   for name, objective in (("policy", model), ("reference", start))}
        judge = tf.saved_model.load(str(pathlib.Path(config.judge).expanduser() /
                                        JUDGE_SAVED_MODEL)).signatures["serving_default"]
        scores = {}
        for name, texts in answers.items():
            rendered = [render_pair_texts((p, t, t), self.template)[0]
                        for p, t in zip(prompts, texts)]
            scores[name] = np.concatenate([
                judge(text=tf.constant(rendered[i:i + 16]))["reward"].numpy()
                for i in range(0, len(rendered), 16)])
        prefix = "heldout" if split == "heldout" else "val"
        words = {name: [len(text.split()) for text in texts] for name, texts in answers.items()}
        with open(self._out_dir() / JUDGED_ANSWERS_FILE, "w") as file:
            for i, prompt in enumerate(prompts):
                file.write(json.dumps({"prompt": prompt, **{
                    f"{name}_{key}": value for name in answers for key, value in (
                        ("answer", answers[name][i]), ("score", float(scores[name][i])))}}) + "\n")
        return {
            f"{prefix}_win_rate": win_rate(scores["policy"], scores["reference"]),
            f"{prefix}_length_controlled_win_rate": win_rate(
                scores["policy"], scores["reference"], words["policy"], words["reference"]),
            f"{prefix}_judged_prompts": count,
            f"{prefix}_identical_answers": float(np.mean(
                [a == b for a, b in zip(answers["policy"], answers["reference"])])),
            f"{prefix}_policy_judge_reward": float(np.mean(scores["policy"])),
            f"{prefix}_reference_judge_reward": float(np.mean(scores["reference"])),
            f"{prefix}_policy_answer_words": float(np.mean(words["policy"])),
            f"{prefix}_reference_answer_words": float(np.mean(words["reference"])),
            "judge": config.judge,
        }

    def generate(self, objective, prompt_ids, batch_size=16):
        """Greedy answers (str) of `objective`'s policy to tokenized prompts
        (each `[start] prompt`, the prompt keeping its last tokens so that
        `preference.max_new_tokens` fit in the window), in the order
        given. The prompts are batched by length (a batch generates from its
        shortest prompt to its longest and `max_new_tokens` more), and each
        batch runs as one traced graph."""
        import tensorflow as tf

        length = self.recipe.model.sequence_length
        room = length - self.recipe.preference.max_new_tokens
        generate = tf.function(self.text_generator(objective).generate)
        start = self.tokenizer.start_token_id
        prefix = [] if start is None else [start]
        keep = room - len(prefix)
        rows = [np.concatenate([prefix, p[len(p) - min(len(p), keep):]]).astype(np.int32)
                for p in prompt_ids]
        order = np.argsort([len(row) for row in rows], kind="stable")
        answers = [None] * len(rows)
        for begin in range(0, len(rows), batch_size):
            batch = order[begin:begin + batch_size]
            token_ids = np.full((len(batch), length), self.tokenizer.pad_token_id, np.int32)
            mask = np.zeros((len(batch), length), np.int32)
            for i, row in enumerate(rows[j] for j in batch):
                token_ids[i, :len(row)] = row
                mask[i, :len(row)] = 1
            out = generate(tf.constant(token_ids), tf.constant(mask))
            for j, text in zip(batch, out["text"].numpy()):
                answers[j] = text.decode("utf-8")
        return answers

    def summary(self, metrics):
        if self.rows is not None:
            lines = [
                f"held-out KTO rewards against the starting policy: desirable rows "
                f"{metrics['val_desirable_reward']:.4f} "
                f"({metrics['val_desirable_reward_positive']:.3f} above 0, "
                f"{metrics['val_desirable_rows']} rows), undesirable rows "
                f"{metrics['val_undesirable_reward']:.4f} "
                f"({metrics['val_undesirable_reward_negative']:.3f} below 0, "
                f"{metrics['val_undesirable_rows']} rows); margin "
                f"{metrics['val_reward_margin']:.4f}; validation loss {metrics['val_loss']:.4f}"]
            return lines + self.win_rate_lines(metrics)
        lines = [
            f"held-out implicit-reward accuracy {metrics['val_implicit_reward_accuracy']:.4f} "
            f"vs the starting policy's log-probability preference "
            f"{metrics['val_reference_log_prob_accuracy']:.4f}, length baseline "
            f"{metrics['val_length_baseline_accuracy']:.4f} and chance 0.5 "
            f"({metrics['val_pairs']} pairs); mean margin {metrics['val_reward_margin']:.4f}",
        ]
        if "heldout_implicit_reward_accuracy" in metrics:
            lines.append(
                f"held-out {list(self.recipe.data.heldout_subsets)}: implicit-reward accuracy "
                f"{metrics['heldout_implicit_reward_accuracy']:.4f} "
                f"({metrics['heldout_pairs']} pairs)")
        return lines + self.win_rate_lines(metrics)

    def win_rate_lines(self, metrics):
        """The summary's win-rate lines (none without a judge); an undefined
        length-controlled win rate (null in metrics.json) says why."""
        lines = []
        for prefix in ("val", "heldout"):
            if f"{prefix}_win_rate" not in metrics:
                continue
            controlled = length_controlled_text(
                metrics[f"{prefix}_length_controlled_win_rate"],
                "prompts where the policy's answer has more words and prompts where it has fewer")
            lines.append(
                f"win rate over the starting policy {metrics[f'{prefix}_win_rate']:.4f} "
                f"({metrics[f'{prefix}_judged_prompts']} prompts, judged by {metrics['judge']}; "
                f"answers of {metrics[f'{prefix}_policy_answer_words']:.1f} vs "
                f"{metrics[f'{prefix}_reference_answer_words']:.1f} words), length-controlled "
                f"{controlled}")
        return lines

    # -- export --------------------------------------------------------------------

    def serving_preprocessor(self):
        """`ChatPromptPreprocessor`: a raw user prompt as the chat
        generation prompt."""
        return ChatPromptPreprocessor(self.tokenizer, self.recipe.model.sequence_length,
                                      self.template, self.tokenizer.start_token_id)

    def text_generator(self, model):
        """Greedy generation of the policy's answer to a raw user prompt,
        ending at the template's end marker."""
        end = self.tokenizer.token_to_id(self.template.end_marker)
        return TextGenerator(model, self.serving_preprocessor(), self.tokenizer,
                             stop_token_ids=[end],
                             max_new_tokens=self.recipe.preference.max_new_tokens)


def _probe_backbone():
    """A one-layer causal backbone, to check the objective's options before
    any data is read."""
    import keras_hub

    return keras_hub.models.GPT2Backbone(
        vocabulary_size=8, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=4,
        max_sequence_length=4)
