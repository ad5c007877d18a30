"""The reward-model run behind `kobjectives train reward`: a
`RewardModel` trained on preference pairs (Bradley-Terry), evaluated by
held-out reward accuracy against a length baseline and chance, exported as
rendered chat text in, reward out. See `docs/reward_model.md`."""

import dataclasses

import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.objectives import RewardModel
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
from kobjectives.runs.preference_pairs import length_controlled_accuracy


@dataclasses.dataclass(frozen=True)
class RewardConfig(Section):
    """The reward head and its loss."""

    pooling: str = option(
        "last", "where the reward is read: 'last' real token (causal backbones), 'first', "
        "'mean'", choices=("last", "first", "mean"))
    center_rewards_coefficient: float = option(
        0.0, "weight of the reward-centering term mean((r_chosen + r_rejected)^2) (0: off; "
        "TRL suggests 0.01)", within="[0, inf)")


@dataclasses.dataclass(frozen=True)
class RewardRecipe(Recipe):
    """A reward model trained on preference pairs with the Bradley-Terry loss."""

    data: PreferenceDataConfig = section(PreferenceDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=128,
                                 dropout=0.0)
    reward: RewardConfig = section(RewardConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=300, epochs=3, batch_size=16, learning_rate=1e-3,
        warmup_steps=30)


def length_controlled_text(value, what):
    """A length-controlled metric as the log prints it: 4 decimals, or
    `"undefined (it needs WHAT)"` where it is not finite
    (`length_controlled_mean` had nothing on one side, e.g. every answer
    as long as the other; metrics.json holds null there).

    Example:

    >>> length_controlled_text(0.51234, "pairs of both kinds")
    '0.5123'
    >>> length_controlled_text(float("nan"), "pairs of both kinds")
    'undefined (it needs pairs of both kinds)'
    """
    if value is None or not np.isfinite(value):
        return f"undefined (it needs {what})"
    return f"{value:.4f}"


class RenderedTextPreprocessor(tf.Module):
    """Rendered chat text -> the reward model's inputs, as in training.

    A text is a conversation rendered by the run's `ChatTemplate`, its last
    assistant turn the completion to score (`"<|user|>\\nWhat does
    json.dumps do?<|end|>\\n<|assistant|>\\nSerialize obj.<|end|>\\n"`):
    the markers written in the text map to their ids (`special_tokens`
    with `special_tokens_in_strings`), the text between them is tokenized
    as in training (`tokenize_preference_pairs`), so the ids are the
    training layout `[start] prompt completion`. The completion is what
    follows the text's last assistant marker (a text without one is all
    completion). A text too long for the window is cut by the training
    rule (`kobjectives.data.preference_arrays`): with `"keep_end"` the
    prompt loses tokens from its start, down to what leaves room for the
    completion but never below half the window, then the completion keeps
    its first tokens that fit (the training ids of a pair's longer answer;
    in training a shorter answer is laid out beside the longer one, so its
    prompt may keep fewer tokens than served alone); with `"keep_start"`
    the text keeps its first tokens. Built from TensorFlow ops only (it
    runs inside a SavedModel).

    Args:
        vocabulary: list of str, the run's vocabulary (markers included).
        lowercase: bool.
        sequence_length: int.
        start_token_id: optional int, the first token.
        template: the run's `ChatTemplate`.
        pad_token_id: int.
        truncation: `"keep_end"` (default) or `"keep_start"`, the run's
            `data.truncation` (a run with `"error"` serves `"keep_end"`).

    Raises:
        ValueError: a `vocabulary` without the template's markers (add them
            with `kobjectives.data.add_chat_tokens`), or another `truncation`.

    Example:

    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "<|user|>", "<|assistant|>", "<|end|>",
    ...               "a", "b", "c", "yes", "no", "<|system|>"]
    >>> serve = RenderedTextPreprocessor(vocabulary, True, 8, start_token_id=2)
    >>> text = "<|user|>\\na b c a b c<|end|>\\n<|assistant|>\\nyes no<|end|>\\n"
    >>> [vocabulary[i] for i in serve([text])["token_ids"][0]]
    ['[CLS]', 'b', 'c', '<|end|>', '<|assistant|>', 'yes', 'no', '<|end|>']
    >>> serve = RenderedTextPreprocessor(vocabulary, True, 8, 2, truncation="keep_start")
    >>> [vocabulary[i] for i in serve([text])["token_ids"][0]]
    ['[CLS]', '<|user|>', 'a', 'b', 'c', 'a', 'b', 'c']
    """

    def __init__(self, vocabulary, lowercase, sequence_length, start_token_id=None,
                 template=DEFAULT_CHAT_TEMPLATE, pad_token_id=0, truncation="keep_end"):
        super().__init__()
        if truncation not in ("keep_end", "keep_start"):
            raise ValueError("`truncation` must be 'keep_end' or 'keep_start'. Received: "
                             f"truncation={truncation!r}")
        vocabulary = list(vocabulary)
        missing = [marker for marker in template.markers if marker not in vocabulary]
        if missing:
            raise ValueError(
                f"`vocabulary` lacks the chat markers {missing}: the text's turns cannot be "
                "read. Add them with kobjectives.data.add_chat_tokens(vocabulary, template) "
                "(the run's vocabulary has them).")
        self.tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=vocabulary, lowercase=lowercase,
            special_tokens=list(template.markers), special_tokens_in_strings=True)
        self.sequence_length = int(sequence_length)
        self.prefix = [] if start_token_id is None else [int(start_token_id)]
        self.pad_token_id = int(pad_token_id)
        self.truncation = truncation
        self.assistant_id = vocabulary.index(template.assistant_marker)

    def _keep_end(self, tokens, room):
        """The prompt (through the last assistant marker) cut from its
        start, then the completion from its end, to `room` tokens."""
        lengths = tf.cast(tokens.row_lengths(), tf.int32)
        positions = tf.ragged.range(lengths)
        marker = tf.ragged.boolean_mask(positions, tf.equal(tokens, self.assistant_id))
        prompt = tf.maximum(tf.reduce_max(marker, axis=1), -1) + 1  # 0: no marker
        completion = lengths - prompt
        prompt_kept = tf.where(prompt + completion <= room, prompt, tf.minimum(
            prompt, tf.maximum(room - completion, data_lib.default_max_prompt_length(room))))
        completion_kept = tf.minimum(completion, room - prompt_kept)
        first = (prompt - prompt_kept)[:, None]
        keep = (positions >= first) & (positions < first + (prompt_kept + completion_kept)[:, None])
        return tf.ragged.boolean_mask(tokens, keep)

    def __call__(self, text):
        tokens = self.tokenizer(tf.convert_to_tensor(text))
        if isinstance(tokens, list):
            tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
        tokens = tf.cast(tokens, tf.int32)
        room = self.sequence_length - len(self.prefix)
        if self.truncation == "keep_end":
            tokens = self._keep_end(tokens, room)
        tokens = tokens[:, :room]
        if self.prefix:
            start = tf.RaggedTensor.from_tensor(tf.fill(
                tf.stack([tokens.nrows(), 1]), tf.constant(self.prefix[0], tf.int32)))
            tokens = tf.concat([start, tokens], axis=1)
        shape = tf.stack([tokens.nrows(), self.sequence_length])
        token_ids = tokens.to_tensor(default_value=self.pad_token_id, shape=shape)
        padding_mask = tf.sequence_mask(tokens.row_lengths(), self.sequence_length, tf.int32)
        return {"token_ids": token_ids, "padding_mask": padding_mask}


@register
class RewardRun(PreferencePairsRun):
    """`kobjectives train reward`: a `RewardModel` (a scalar head at the last
    real token of a causal backbone) trained with the Bradley-Terry loss on
    preference pairs (`kobjectives.data.preference`). Held-out reward
    accuracy and mean margin next to a length baseline (prefer the longer
    completion) and chance. Serves rendered chat text: the conversation and
    the answer to score in, the reward out."""

    name = "reward"
    recipe_class = RewardRecipe
    title = "reward model (Bradley-Terry)"
    search_space = {
        "training.learning_rate": ("float", 1e-4, 5e-3, "log"),
        "training.warmup_steps": ("int", 0, 100),
        "reward.center_rewards_coefficient": ("choice", [0.0, 0.01]),
    }

    # -- model -------------------------------------------------------------------

    def build_objective(self):
        reward = self.recipe.reward
        return RewardModel(self.build_backbone(), pooling=reward.pooling,
                           center_rewards_coefficient=reward.center_rewards_coefficient or None)

    # -- evaluation ----------------------------------------------------------------

    def pair_rewards(self, model, examples, batch_size):
        """`(chosen, rejected)` rewards (float numpy `[pairs]`) of every pair
        of `examples` (a split name or `PreferenceExamples`), in order."""
        if isinstance(examples, str):
            dataset = self.pair_dataset(examples, batch_size, ordered=True)
        else:
            dataset = data_lib.preference_dataset(
                examples, self.recipe.model.sequence_length, batch_size,
                truncation=self.recipe.data.truncation, pad_token_id=self.tokenizer.pad_token_id,
                shuffle=False, drop_remainder=False)
        chosen, rejected = [], []
        for batch in dataset:
            out = model(batch, training=False)
            chosen.append(out["chosen_rewards"].numpy())
            rejected.append(out["rejected_rewards"].numpy())
        return np.concatenate(chosen), np.concatenate(rejected)

    def evaluate(self, fitted):
        metrics = {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.recipe.data.source,
            "sequence_length": self.recipe.model.sequence_length,
            "val_loss": fitted.evaluation["loss"],
            "chance_accuracy": 0.5,
            "dropped_pairs": dict(self.dropped or {}),
        }
        for split, prefix in (("validation", "val"), ("heldout", "heldout")):
            if split not in self.examples:
                continue
            chosen, rejected = self.pair_rewards(fitted.model, split,
                                                 self.recipe.training.batch_size)
            metrics.update({
                f"{prefix}_reward_accuracy": float(np.mean(chosen > rejected)),
                f"{prefix}_reward_margin": float(np.mean(chosen - rejected)),
                f"{prefix}_chosen_reward": float(np.mean(chosen)),
                f"{prefix}_rejected_reward": float(np.mean(rejected)),
                f"{prefix}_length_controlled_accuracy":
                    length_controlled_accuracy(self.examples[split], chosen, rejected),
                f"{prefix}_length_baseline_accuracy":
                    length_baseline_accuracy(self.examples[split]),
                f"{prefix}_pairs": int(len(chosen)),
            })
        metrics["length_baseline_accuracy"] = metrics["val_length_baseline_accuracy"]
        return metrics

    def summary(self, metrics):
        def controlled(prefix):
            return length_controlled_text(
                metrics[f"{prefix}_length_controlled_accuracy"],
                "pairs whose chosen answer has more tokens and pairs whose chosen answer has "
                "fewer")

        return [
            f"held-out reward accuracy {metrics['val_reward_accuracy']:.4f} vs length baseline "
            f"{metrics['length_baseline_accuracy']:.4f} and chance 0.5 "
            f"({metrics['val_pairs']} pairs); mean margin {metrics['val_reward_margin']:.4f}; "
            f"length-controlled {controlled('val')}",
        ] + ([
            f"held-out {list(self.recipe.data.heldout_subsets)}: reward accuracy "
            f"{metrics['heldout_reward_accuracy']:.4f} vs length baseline "
            f"{metrics['heldout_length_baseline_accuracy']:.4f} ({metrics['heldout_pairs']} "
            f"pairs); length-controlled {controlled('heldout')}"]
            if "heldout_reward_accuracy" in metrics else [])

    # -- export --------------------------------------------------------------------

    def serving_preprocessor(self):
        """`RenderedTextPreprocessor`: the rendered conversation and answer
        in, the training layout's ids out."""
        truncation = self.recipe.data.truncation
        return RenderedTextPreprocessor(
            self.tokenizer.get_vocabulary(), self.lowercase, self.recipe.model.sequence_length,
            self.tokenizer.start_token_id, self.template, self.tokenizer.pad_token_id,
            truncation="keep_start" if truncation == "keep_start" else "keep_end")
