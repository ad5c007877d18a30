"""The reward-model run behind `kobjectives train reward`: a
`RewardModel` trained on preference pairs (Bradley-Terry), evaluated by
held-out reward accuracy against a length baseline and chance, exported as
rendered chat text in, reward out. See `docs/reward_model.md`."""

import dataclasses
import json
import pathlib

import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.chat import HH_RLHF_SUBSETS
from kobjectives.data.chat import HH_RLHF_TRAIN_SUBSETS
from kobjectives.data.chat import RESERVED_HH_RLHF_SUBSETS
from kobjectives.objectives import RewardModel
from kobjectives.recipe import DataConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import register
from kobjectives.runs.run import Run
from kobjectives.runs.sft import chat_tokenizer
from kobjectives.runs.sft import grow_token_embedding

DATASETS = ("corpus", "hh_rlhf")
"""The `data.dataset` choices of the reward run."""

_WORDPIECE_TOKENIZERS = ("BertTokenizer", "WordPieceTokenizer")


@dataclasses.dataclass(frozen=True)
class RewardDataConfig(DataConfig):
    """The preference pairs: the embedded-corpus task or HH-RLHF
    (`data.max_documents` counts pairs)."""

    dataset: str = option(
        "corpus", "'corpus': 'What does json.dumps do?' answered by its docstring (chosen) or "
        "a sibling name's (rejected); 'hh_rlhf': HH-RLHF pairs from data.shared_dir/hh_rlhf/",
        choices=DATASETS)
    shared_dir: str = option("../shared/data", "the shared datasets folder (data.dataset = "
                             "'hh_rlhf'), relative to the working directory")
    hh_rlhf_subsets: tuple[str, ...] = option(
        HH_RLHF_TRAIN_SUBSETS, "HH-RLHF subsets read (train subsets only; "
        "'helpful-online' is reserved for final evaluation)")

    def check(self):
        yield from super().check()
        unknown = [s for s in self.hh_rlhf_subsets if s not in HH_RLHF_SUBSETS]
        reserved = [s for s in self.hh_rlhf_subsets if s in RESERVED_HH_RLHF_SUBSETS]
        if not self.hh_rlhf_subsets or unknown:
            yield (f"hh_rlhf_subsets = {list(self.hh_rlhf_subsets)}: unknown subset(s) "
                   f"{unknown}; choose from {list(HH_RLHF_TRAIN_SUBSETS)}")
        elif reserved:
            yield (f"hh_rlhf_subsets = {list(self.hh_rlhf_subsets)}: {reserved} is reserved "
                   f"for final evaluation, never trained on; choose from "
                   f"{list(HH_RLHF_TRAIN_SUBSETS)}")


@dataclasses.dataclass(frozen=True)
class RewardConfig(Section):
    """The reward head and its loss."""

    pooling: str = option(
        "last", "where the reward is read: 'last' real token (causal backbones), 'first', "
        "'mean'", choices=("last", "first", "mean"))
    center_rewards_coefficient: float = option(
        0.0, "weight of the reward-centering term mean((r_chosen + r_rejected)^2) (0: off; "
        "TRL suggests 0.01)", within="[0, inf)")
    truncation: str = option(
        "keep_end", "a pair longer than model.sequence_length: 'keep_end' (cut the prompt's "
        "start, then the completions' ends), 'keep_start', 'error'",
        choices=("keep_end", "keep_start", "error"))


@dataclasses.dataclass(frozen=True)
class RewardRecipe(Recipe):
    """A reward model trained on preference pairs with the Bradley-Terry loss."""

    data: RewardDataConfig = section(RewardDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=128,
                                 dropout=0.0)
    reward: RewardConfig = section(RewardConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=300, epochs=3, batch_size=16, learning_rate=1e-3,
        warmup_steps=30)


class RenderedTextPreprocessor(tf.Module):
    """Rendered chat text -> the reward model's inputs, as in training.

    A text is a conversation rendered by the run's `ChatTemplate`, its last
    assistant turn the completion to score (`"<|user|>\\nWhat does
    json.dumps do?<|end|>\\n<|assistant|>\\nSerialize obj.<|end|>\\n"`):
    the markers written in the text map to their ids (`special_tokens`
    with `special_tokens_in_strings`), the text between them is tokenized
    as in training (`tokenize_preference_pairs`), so the ids are the
    training layout `[start] prompt completion`. A text too long for the
    window keeps its first tokens (`reward.truncation = 'keep_start'`'s
    layout). Built from TensorFlow ops only (it runs inside a SavedModel).

    Args:
        vocabulary: list of str, the run's vocabulary (markers included).
        lowercase: bool.
        sequence_length: int.
        start_token_id: optional int, the first token.
        template: the run's `ChatTemplate`.
        pad_token_id: int.
    """

    def __init__(self, vocabulary, lowercase, sequence_length, start_token_id=None,
                 template=DEFAULT_CHAT_TEMPLATE, pad_token_id=0):
        super().__init__()
        self.tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=list(vocabulary), lowercase=lowercase,
            special_tokens=list(template.markers), special_tokens_in_strings=True)
        self.sequence_length = int(sequence_length)
        self.prefix = [] if start_token_id is None else [int(start_token_id)]
        self.pad_token_id = int(pad_token_id)

    def __call__(self, text):
        tokens = self.tokenizer(tf.convert_to_tensor(text))
        if isinstance(tokens, list):
            tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
        tokens = tf.cast(tokens, tf.int32)
        if self.prefix:
            start = tf.RaggedTensor.from_tensor(tf.fill(
                tf.stack([tokens.nrows(), 1]), tf.constant(self.prefix[0], tf.int32)))
            tokens = tf.concat([start, tokens], axis=1)
        tokens = tokens[:, :self.sequence_length]
        shape = tf.stack([tokens.nrows(), self.sequence_length])
        token_ids = tokens.to_tensor(default_value=self.pad_token_id, shape=shape)
        padding_mask = tf.sequence_mask(tokens.row_lengths(), self.sequence_length, tf.int32)
        return {"token_ids": token_ids, "padding_mask": padding_mask}


def render_pair_texts(pair, template=DEFAULT_CHAT_TEMPLATE):
    """`(chosen_text, rejected_text)`: a `(prompt, chosen, rejected)` pair
    as the rendered texts the SavedModel scores (the prompt's generation
    prompt, then the completion and the end marker)."""
    prompt, chosen, rejected = (pair["prompt"], pair["chosen"], pair["rejected"]) if \
        isinstance(pair, dict) else pair
    head = prompt if isinstance(prompt, str) else template.generation_prompt(prompt)
    return (f"{head}{chosen}{template.end_marker}\n",
            f"{head}{rejected}{template.end_marker}\n")


@register
class RewardRun(Run):
    """`kobjectives train reward`: a `RewardModel` (a scalar head at the last
    real token of a causal backbone) trained with the Bradley-Terry loss on
    preference pairs (`kobjectives.data.preference`). Held-out reward
    accuracy and mean margin next to a length baseline (prefer the longer
    completion) and chance. Serves rendered chat text: the conversation and
    the answer to score in, the reward out."""

    name = "reward"
    recipe_class = RewardRecipe
    title = "reward model (Bradley-Terry)"
    backbone_kind = "causal"
    search_space = {
        "training.learning_rate": ("float", 1e-4, 5e-3, "log"),
        "training.warmup_steps": ("int", 0, 100),
        "reward.center_rewards_coefficient": ("choice", [0.0, 0.01]),
    }
    # The serving preprocessor maps the chat markers itself.
    export_options = {"special_tokens_in_strings": False}
    template = DEFAULT_CHAT_TEMPLATE
    train_examples = None
    validation_examples = None

    # -- checks ------------------------------------------------------------------

    def check(self):
        problems = list(super().check())
        data = self.recipe.data
        for key, value in (("data.files", list(data.files)), ("data.tfds", data.tfds)):
            if value:
                problems.append(
                    f"{key} = {value!r}: the reward run reads data.dataset "
                    f"({' or '.join(map(repr, DATASETS))}); leave {key} empty")
        if data.dataset == "hh_rlhf":
            folder = pathlib.Path(data.shared_dir).expanduser() / "hh_rlhf"
            if not folder.is_dir():
                problems.append(
                    f"data.shared_dir = {data.shared_dir!r}: no hh_rlhf/ folder there "
                    f"({folder.resolve()}); give the folder holding the shared datasets, or "
                    "use data.dataset = 'corpus'")
        init = self.recipe.model.init
        if init and not problems:
            tokenizer = pathlib.Path(backbones.preset_location(init)) / "tokenizer.json"
            kind = json.loads(tokenizer.read_text()).get("class_name") \
                if tokenizer.is_file() else None
            if kind not in _WORDPIECE_TOKENIZERS:
                kind = kind or "not a local tokenizer.json"
                problems.append(
                    f"model.init = {init!r}: its tokenizer ({kind}) is not a WordPiece "
                    "vocabulary the chat markers can be appended to. "
                    "Start from a `kobjectives train sft` (or clm) run folder, or train from "
                    "scratch (leave model.init empty)")
        yield from problems

    # -- data and tokenizer ------------------------------------------------------

    def load_pairs(self):
        """The `(prompt, chosen, rejected)` pairs of `data.dataset` (at most
        `data.max_documents`)."""
        data = self.recipe.data
        limit = data.max_documents or None
        if data.dataset == "hh_rlhf":
            return data_lib.read_hh_rlhf_pairs(
                pathlib.Path(data.shared_dir).expanduser() / "hh_rlhf",
                subsets=data.hh_rlhf_subsets, limit=limit)
        return data_lib.corpus_preference_pairs(
            seed=self.recipe.training.seed, limit=limit,
            max_characters=min(300, 2 * self.recipe.model.sequence_length),
            template=self.template)

    def prepare(self):
        """The pairs split into train and validation (a stable hash of
        each), the tokenizer with the chat markers (the init's vocabulary,
        else WordPiece trained on the training pairs' text) and the
        tokenized pairs."""
        out_dir = self._out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.recipe.data
        pairs = [tuple(p) if not isinstance(p, dict) else (p["prompt"], p["chosen"],
                                                            p["rejected"])
                 for p in self.load_pairs()]
        self.train_documents, self.validation_documents = data_lib.split_examples(
            pairs, data.validation_fraction, seed=self.recipe.training.seed)
        self.log(f"data: {len(pairs)} {data.dataset} pairs ({len(self.train_documents)} "
                 f"train, {len(self.validation_documents)} validation)")
        if self.recipe.model.init:
            base = backbones.load_tokenizer(self.recipe.model.init)
            self.lowercase = base.get_config().get("lowercase", self.recipe.tokenizer.lowercase)
            self.tokenizer = chat_tokenizer(base.get_vocabulary(), self.lowercase, self.template)
            self.log(f"tokenizer: from {self.recipe.model.init} "
                     f"({self.tokenizer.vocabulary_size()} tokens with the chat markers)")
        else:
            config = self.recipe.tokenizer
            texts = []
            for prompt, chosen, rejected in self.train_documents:
                context = prompt if isinstance(prompt, str) else "\n".join(
                    turn["content"] for turn in prompt)
                texts.append("\n".join((context, chosen, rejected)))
            vocabulary = data_lib.train_wordpiece(
                texts, config.vocabulary_size, lowercase=config.lowercase,
                max_training_documents=config.max_training_documents or None)
            self.lowercase = config.lowercase
            self.tokenizer = chat_tokenizer(vocabulary, config.lowercase, self.template)
            self.log(f"tokenizer: WordPiece, {self.tokenizer.vocabulary_size()} pieces "
                     "(chat markers included)")
        data_lib.save_vocabulary(self.vocabulary, out_dir)
        self.train_examples = self.tokenized(self.train_documents)
        self.validation_examples = self.tokenized(self.validation_documents)

    def tokenized(self, pairs):
        return data_lib.tokenize_preference_pairs(
            pairs, self.tokenizer, self.template, start_token_id=self.tokenizer.start_token_id)

    def document_counts(self):
        return {"train": len(self.train_documents), "validation": len(self.validation_documents)}

    def _shard(self, examples, input_context):
        if input_context is None or input_context.num_input_pipelines <= 1:
            return examples
        step, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        return data_lib.PreferenceExamples(
            examples.prompt_ids[index::step], examples.chosen_ids[index::step],
            examples.rejected_ids[index::step], examples.start_token_id)

    def make_dataset(self, split, batch_size, input_context=None):
        """Batches of pairs (`preference_dataset`): `"train"` shuffled and
        repeated; `"validation"` at most `training.validation_batches`
        batches, cached."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        examples = self._shard(
            self.train_examples if split == "train" else self.validation_examples, input_context)
        options = dict(sequence_length=self.recipe.model.sequence_length,
                       batch_size=batch_size, truncation=self.recipe.reward.truncation,
                       pad_token_id=self.tokenizer.pad_token_id)
        if split == "train":
            return data_lib.preference_dataset(examples, shuffle=True,
                                               seed=self.recipe.training.seed, repeat=True,
                                               **options)
        dataset = data_lib.preference_dataset(examples, shuffle=False, cache=True,
                                              **options).take(
            self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(examples), batch_size)

    # -- model -------------------------------------------------------------------

    def build_backbone(self, sequence_length=None, **overrides):
        """The base's backbone; an init's token embedding grown by the chat
        markers its vocabulary lacked (`grow_token_embedding`)."""
        backbone = super().build_backbone(sequence_length, **overrides)
        if self.recipe.model.init and backbone.vocabulary_size < self.tokenizer.vocabulary_size():
            backbone = grow_token_embedding(backbone, self.tokenizer.vocabulary_size())
        return backbone

    def build_objective(self):
        reward = self.recipe.reward
        return RewardModel(self.build_backbone(), pooling=reward.pooling,
                           center_rewards_coefficient=reward.center_rewards_coefficient or None)

    # -- evaluation ----------------------------------------------------------------

    def pair_rewards(self, model, examples, batch_size):
        """`(chosen, rejected)` rewards (float numpy `[pairs]`) of every pair
        of `examples`, in order."""
        dataset = data_lib.preference_dataset(
            examples, self.recipe.model.sequence_length, batch_size,
            truncation=self.recipe.reward.truncation, pad_token_id=self.tokenizer.pad_token_id,
            shuffle=False, drop_remainder=False)
        chosen, rejected = [], []
        for batch in dataset:
            out = model(batch, training=False)
            chosen.append(out["chosen_rewards"].numpy())
            rejected.append(out["rejected_rewards"].numpy())
        return np.concatenate(chosen), np.concatenate(rejected)

    def evaluate(self, fitted):
        examples = self.validation_examples
        chosen, rejected = self.pair_rewards(fitted.model, examples,
                                             self.recipe.training.batch_size)
        chosen_lengths = np.array([len(c) for c in examples.chosen_ids])
        rejected_lengths = np.array([len(r) for r in examples.rejected_ids])
        # Prefer the longer completion; a tie is a coin flip (half right).
        length_accuracy = float(np.mean(np.where(
            chosen_lengths == rejected_lengths, 0.5, chosen_lengths > rejected_lengths)))
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.recipe.data.dataset,
            "sequence_length": self.recipe.model.sequence_length,
            "val_loss": fitted.evaluation["loss"],
            "val_reward_accuracy": float(np.mean(chosen > rejected)),
            "val_reward_margin": float(np.mean(chosen - rejected)),
            "val_chosen_reward": float(np.mean(chosen)),
            "val_rejected_reward": float(np.mean(rejected)),
            "length_baseline_accuracy": length_accuracy,
            "chance_accuracy": 0.5,
            "val_pairs": int(len(chosen)),
        }

    def summary(self, metrics):
        return [
            f"held-out reward accuracy {metrics['val_reward_accuracy']:.4f} vs length baseline "
            f"{metrics['length_baseline_accuracy']:.4f} and chance 0.5 "
            f"({metrics['val_pairs']} pairs); mean margin {metrics['val_reward_margin']:.4f}",
        ]

    # -- export --------------------------------------------------------------------

    def serving_preprocessor(self):
        """`RenderedTextPreprocessor`: the rendered conversation and answer
        in, the training layout's ids out."""
        return RenderedTextPreprocessor(
            self.tokenizer.get_vocabulary(), self.lowercase, self.recipe.model.sequence_length,
            self.tokenizer.start_token_id, self.template, self.tokenizer.pad_token_id)

    def load_tokenizer(self):
        tokenizer = super().load_tokenizer()
        self.lowercase = tokenizer.get_config().get("lowercase", False)
        return tokenizer
