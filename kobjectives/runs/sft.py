"""The causal-LM supervised fine-tuning run behind `kobjectives train sft`
(and `kobjectives tune sft`). See `docs/sft.md`."""

import dataclasses
import pathlib
import warnings

import keras_hub
import numpy as np

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.chat import HH_RLHF_SUBSETS
from kobjectives.data.chat import HH_RLHF_TRAIN_SUBSETS
from kobjectives.data.chat import RESERVED_HH_RLHF_SUBSETS
from kobjectives.data.chat import SkippedRowsWarning
from kobjectives.data.sft import LOSS_ON
from kobjectives.data.sft import ChatPromptPreprocessor
from kobjectives.data.sft import SFTExamples
from kobjectives.data.sft import pack_sft_examples
from kobjectives.data.sft import sft_dataset
from kobjectives.data.sft import tokenize_sft_examples
from kobjectives.export import TextGenerator
from kobjectives.metrics import baselines
from kobjectives.metrics.causal_lm_metrics import causal_lm_statistics
from kobjectives.objectives import CausalLanguageModel
from kobjectives.objectives.causal_language_model import document_attention_unsupported
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

DATASETS = ("corpus", "hh_rlhf")
"""The `data.dataset` choices of the sft run."""

# Tokenizer classes whose vocabulary the run can append the chat markers to.
_WORDPIECE_TOKENIZERS = ("BertTokenizer", "WordPieceTokenizer")


@dataclasses.dataclass(frozen=True)
class SFTDataConfig(DataConfig):
    """The fine-tuning examples: your JSON Lines files, the embedded-corpus
    prompt/completion task or HH-RLHF dialogues (`data.max_documents` counts
    examples)."""

    files: tuple[str, ...] = option(
        (), "JSON Lines files (.jsonl, globs) of your examples in TRL's formats, one per "
        "line: {\"messages\": [turns]} or {\"prompt\": ..., \"completion\": ...} "
        "(kobjectives.data.example_files); empty: data.dataset")
    dataset: str = option(
        "corpus", "'corpus': questions about standard-library names answered by their "
        "docstrings; 'hh_rlhf': HH-RLHF chosen dialogues from data.shared_dir/hh_rlhf/",
        choices=DATASETS)
    shared_dir: str = option("../shared/data", "the shared datasets folder (data.dataset = "
                             "'hh_rlhf'), relative to the working directory")
    hh_rlhf_subsets: tuple[str, ...] = option(
        HH_RLHF_TRAIN_SUBSETS, "HH-RLHF subsets read (train subsets only; "
        "'helpful-online' is reserved for final evaluation)")

    @property
    def source(self):
        """Where the examples come from: `"files"`, else `data.dataset`."""
        return "files" if self.files else self.dataset

    @property
    def source_label(self):
        """`source` as the log names it: `"data.files"`, or the dataset."""
        return "data.files" if self.files else self.dataset

    def check(self):
        yield from super().check()
        if self.tfds:
            yield (f"tfds = {self.tfds!r}: this run reads data.files (JSON Lines) or "
                   f"data.dataset ({' or '.join(map(repr, DATASETS))}), not a tfds text "
                   "dataset; leave data.tfds empty")
        if self.files:
            if self.dataset != "corpus":
                yield (f"files: give data.files or data.dataset = {self.dataset!r}, not both")
            for pattern in self.files:
                if not pattern.endswith(".jsonl"):
                    yield (f"files: {pattern!r} is not a .jsonl file: this run reads JSON "
                           "Lines examples (kobjectives.data.example_files)")
            if self.format != "lines":
                yield (f"format = {self.format!r}: JSON Lines files hold one example per "
                       "line; leave data.format = 'lines'")
        unknown = [s for s in self.hh_rlhf_subsets if s not in HH_RLHF_SUBSETS]
        reserved = [s for s in self.hh_rlhf_subsets if s in RESERVED_HH_RLHF_SUBSETS]
        if not self.hh_rlhf_subsets or unknown:
            yield (f"hh_rlhf_subsets = {list(self.hh_rlhf_subsets)}: unknown subset(s) "
                   f"{unknown}; choose from {list(HH_RLHF_TRAIN_SUBSETS)}")
        elif reserved:
            yield (f"hh_rlhf_subsets = {list(self.hh_rlhf_subsets)}: {reserved} is reserved "
                   f"for final evaluation, never trained on; choose from "
                   f"{list(HH_RLHF_TRAIN_SUBSETS)}")

    def file_checks(self):
        yield from super().file_checks()
        if self.dataset == "hh_rlhf":
            folder = pathlib.Path(self.shared_dir).expanduser() / "hh_rlhf"
            if not folder.is_dir():
                yield (f"shared_dir = {self.shared_dir!r}: no hh_rlhf/ folder there "
                       f"({folder.resolve()}); give the folder holding the shared datasets, "
                       "or use data.dataset = 'corpus'")


@dataclasses.dataclass(frozen=True)
class SFTConfig(Section):
    """What the next-token loss is taken on, how it is averaged, and how
    examples fill the windows."""

    loss_on: str = option(
        "completion", "'completion': the answers (assistant turns) only; 'all': every token",
        choices=LOSS_ON)
    loss_normalization: str = option(
        "token", "'token': mean over target tokens; 'example': mean of each example's mean",
        choices=("token", "example"))
    packing: bool = option(
        True, "pack whole examples into windows (best-fit decreasing); false: one per window")
    overlong: str = option(
        "auto", "an example longer than model.sequence_length: 'error' (naming it), 'drop', "
        "'truncate' (keep its first tokens); 'auto': 'truncate' for the corpus task, 'error' "
        "for hh_rlhf and data.files", choices=("auto", "error", "drop", "truncate"))
    chunk_size: int = option(
        1024, "positions whose [chunk, vocabulary] logits exist at once", within="[1, inf)")


@dataclasses.dataclass(frozen=True)
class SFTRecipe(Recipe):
    """Supervised fine-tuning of a causal LM on chat turns: completion-only
    loss, packed examples with attention and positions reset per example."""

    data: SFTDataConfig = section(SFTDataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig, max_training_documents=2000)
    model: ModelConfig = section(ModelConfig, backbone="gpt2_tiny", sequence_length=128,
                                 dropout=0.0)
    sft: SFTConfig = section(SFTConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=600, epochs=3, batch_size=16, learning_rate=2e-3,
        warmup_steps=60)


class _CompletionScorer:
    """`causal_lm_statistics`' model interface over windows whose
    `segment_ids` mark the completion targets (`completion_scoring_inputs`):
    the model itself sees the windows' real example ids (`example_ids`)."""

    def __init__(self, model):
        self.model = model
        self.token_losses = model.token_losses

    def __call__(self, x, training=False):
        inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"],
                  "segment_ids": x["example_ids"]}
        return self.model(inputs, training=training)


def completion_scoring_inputs(windows):
    """The windows of `pack_sft_examples` as `causal_lm_statistics` inputs
    that score exactly the completion targets.

    `causal_lm_statistics` scores position `t` where `segment_ids[t] ==
    segment_ids[t + 1]` (and both are real tokens). Ids that change after
    every position of weight 0 (`segment_ids[t + 1] = segment_ids[t] +
    (sample_weight[t] == 0)`) make that exactly the positions whose
    `sample_weight` is 1 (a completion target of the same example); the
    model gets the real example ids as `example_ids` (`_CompletionScorer`).

    Args:
        windows: dict of numpy arrays `[windows, length]` with
            `token_ids`, `padding_mask`, `segment_ids` and `sample_weight`
            (`kobjectives.data.pack_sft_examples`).

    Returns:
        dict of numpy arrays `[windows, length]`: `token_ids`,
        `padding_mask`, `segment_ids` (the scoring ids), `example_ids`.

    Example:

    >>> windows = {"token_ids": np.array([[5, 6, 7, 8, 9, 0]]),
    ...            "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], bool),
    ...            "segment_ids": np.array([[1, 1, 1, 2, 2, 0]]),
    ...            "sample_weight": np.array([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])}
    >>> x = completion_scoring_inputs(windows)
    >>> x["segment_ids"].tolist()  # equal neighbours exactly where the weight is 1
    [[0, 1, 1, 2, 2, 3]]
    """
    weight = windows["sample_weight"]
    breaks = (weight[:, :-1] == 0).astype(np.int32)
    scoring = np.concatenate(
        [np.zeros_like(breaks[:, :1]), np.cumsum(breaks, axis=1, dtype=np.int32)], axis=1)
    return {"token_ids": windows["token_ids"], "padding_mask": windows["padding_mask"],
            "segment_ids": scoring, "example_ids": windows["segment_ids"]}


def reading_skipped_rows(log, what, read, *args, **kwargs):
    """`read(*args, **kwargs)` (an HH-RLHF reader), its
    `kobjectives.data.chat.SkippedRowsWarning` logged with `log` in the
    run's words: the reader's says to pass `invalid='error'`, a Python
    argument the recipe has no key for. Other warnings pass through.

    Example:

    >>> def read():
    ...     warnings.warn(SkippedRowsWarning("...", 2, "a.jsonl:3: no turn"))
    ...     return ["kept"]
    >>> reading_skipped_rows(print, "HH-RLHF dialogue(s)", read)
    data: 2 malformed HH-RLHF dialogue(s) left out (the first: a.jsonl:3: no turn)
    ['kept']
    """
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return read(*args, **kwargs)
    finally:  # also when the read then fails (no row left): the count explains why
        for warning in caught:
            if isinstance(warning.message, SkippedRowsWarning):
                log(f"data: {warning.message.count} malformed {what} left out (the first: "
                    f"{warning.message.first})")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno, source=warning.source)


def chat_tokenizer(vocabulary, lowercase, template=DEFAULT_CHAT_TEMPLATE):
    """A keras-hub `BertTokenizer` over `vocabulary` with the chat markers
    appended (`kobjectives.data.add_chat_tokens`).

    Args:
        vocabulary: list of str, a WordPiece vocabulary with `[PAD]`,
            `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`.
        lowercase: bool, fold case before tokenizing.
        template: the `kobjectives.data.ChatTemplate` whose markers are
            appended (those missing).

    Returns:
        A `keras_hub.models.BertTokenizer`.

    Example:

    >>> tokenizer = chat_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi"], True)
    >>> tokenizer.vocabulary_size(), tokenizer.token_to_id("<|end|>")
    (10, 9)
    """
    return keras_hub.models.BertTokenizer(
        vocabulary=data_lib.add_chat_tokens(list(vocabulary), template), lowercase=lowercase)


@register
class SFTRun(Run):
    """`kobjectives train sft`: a `CausalLanguageModel` fine-tuned on chat
    turns (`kobjectives.data.sft`): the loss on the completions only (or all
    tokens), examples packed whole into windows (best-fit decreasing) with
    attention and positions reset per example. Held-out completion
    perplexity and token accuracy next to the unigram model of the training
    completion tokens. Serves raw user prompts: the chat generation prompt
    in, the next-token logits of the answer's first token out."""

    name = "sft"
    recipe_class = SFTRecipe
    title = "causal-LM SFT"
    backbone_kind = "causal"
    search_space = {
        "training.learning_rate": ("float", 3e-4, 5e-3, "log"),
        "training.warmup_steps": ("int", 0, 300),
        "training.weight_decay": ("float", 1e-3, 0.1, "log"),
        "model.dropout": ("choice", [0.0, 0.1]),
    }
    # The prompt's text is tokenized as text; markers are inserted as ids.
    export_options = {"special_tokens_in_strings": False}
    template = DEFAULT_CHAT_TEMPLATE
    train_examples = None
    validation_examples = None
    overlong_counts = None
    no_completion_counts = None

    # -- checks ------------------------------------------------------------------

    def check(self):
        problems = list(super().check())
        if not problems:
            problems += list(self._model_problems())
        yield from problems

    def _model_problems(self):
        model = self.recipe.model
        if model.init:
            class_name = (backbones.preset_config(model.init) or {}).get("class_name", "")
            cls = getattr(keras_hub.models, class_name, None)
            source = f"model.init = {model.init!r} (a {class_name or 'preset name'})"
            tokenizer = pathlib.Path(backbones.preset_location(model.init)) / "tokenizer.json"
            kind = None
            if tokenizer.is_file():
                import json

                kind = json.loads(tokenizer.read_text()).get("class_name")
            if kind not in _WORDPIECE_TOKENIZERS:
                yield (f"{source}: its tokenizer ({kind or 'not a local tokenizer.json'}) is "
                       "not a WordPiece vocabulary the chat markers can be appended to. Start "
                       "from a `kobjectives train clm` (or sft) run folder, or train from "
                       "scratch (leave model.init empty)")
        else:
            cls = backbones.BACKBONES[model.backbone][0]
            source = f"model.backbone = {model.backbone!r}"
        reason = document_attention_unsupported(cls) if cls is not None else None
        if reason:
            yield (f"{source}: the sft run resets attention at every packed example, which "
                   f"this backbone cannot take: {reason} Use a GPT-2 or Llama backbone "
                   "(gpt2_tiny, gpt2_small, llama_tiny).")

    # -- data and tokenizer ------------------------------------------------------

    def load_examples(self):
        """The conversations of `data.files` or `data.dataset` (at most
        `data.max_documents`): the files' examples, HH-RLHF chosen dialogues of `data.hh_rlhf_subsets`, or the corpus
        prompt/completion pairs as one user and one assistant turn."""
        data = self.recipe.data
        limit = data.max_documents or None
        if data.files:
            return data_lib.read_sft_conversations(data.files, limit)
        if data.dataset == "hh_rlhf":
            return reading_skipped_rows(
                self.log, "HH-RLHF dialogue(s)", data_lib.read_hh_rlhf,
                pathlib.Path(data.shared_dir).expanduser() / "hh_rlhf",
                subsets=data.hh_rlhf_subsets, target="chosen", max_dialogues=limit)
        # Completions short enough that most pairs fit the window whole.
        pairs = data_lib.prompt_completion_task(
            max_examples=limit, max_characters=min(300, 2 * self.recipe.model.sequence_length),
            template=self.template)
        return [[{"role": "user", "content": pair["prompt"]},
                 {"role": "assistant", "content": pair["completion"]}] for pair in pairs]

    def prepare(self):
        """The examples split into train and validation (a stable hash of
        each), the tokenizer with the chat markers (the init's vocabulary,
        else WordPiece trained on the training examples' text) and the
        tokenized examples."""
        out_dir = self._out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.recipe.data
        examples = self.load_examples()
        self.train_documents, self.validation_documents = data_lib.split_examples(
            examples, data.validation_fraction, seed=self.split_seed())
        self.log(f"data: {len(examples)} examples from {data.source_label} "
                 f"({len(self.train_documents)} train, {len(self.validation_documents)} validation)")
        if self.recipe.model.init:
            base = backbones.load_tokenizer(self.recipe.model.init)
            self.tokenizer = chat_tokenizer(base.get_vocabulary(), base.get_config().get(
                "lowercase", self.recipe.tokenizer.lowercase), self.template)
            added = self.tokenizer.vocabulary_size() - base.vocabulary_size()
            self.log(f"tokenizer: from {self.recipe.model.init} "
                     f"({base.vocabulary_size()} tokens, {added} chat markers added)")
        else:
            config = self.recipe.tokenizer
            texts = ["\n".join(turn["content"] for turn in conversation)
                     for conversation in self.train_documents]
            vocabulary = data_lib.train_wordpiece(
                texts, config.vocabulary_size, lowercase=config.lowercase,
                max_training_documents=config.max_training_documents or None)
            self.tokenizer = chat_tokenizer(vocabulary, config.lowercase, self.template)
            self.log(f"tokenizer: WordPiece, {self.tokenizer.vocabulary_size()} pieces "
                     "(chat markers included)")
        data_lib.save_vocabulary(self.vocabulary, out_dir)
        self.overlong_counts, self.no_completion_counts = {}, {}
        self.train_examples = self.tokenized(self.train_documents, "train")
        self.validation_examples = self.tokenized(self.validation_documents, "validation")

    def overlong(self):
        """`sft.overlong` resolved: `"auto"` is `"truncate"` for the corpus
        task (its pairs at a short window) and `"error"` otherwise."""
        overlong = self.recipe.sft.overlong
        if overlong == "auto":
            return "truncate" if self.recipe.data.source == "corpus" else "error"
        return overlong

    def tokenized(self, conversations, split):
        """`SFTExamples` of `conversations` (completion mask); the examples
        longer than the window refused, dropped or cut to it (`overlong`).
        An example cut to the window with no completion token left (its
        prompt fills the window) would add no loss: it is left out and
        counted (`no_completion_counts`), unless it trains on every token
        (`sft.loss_on = "all"`, train split).

        Raises:
            ValueError: with `overlong() == "error"`, an example longer than
                `model.sequence_length` (named by its `"file:line"` when read
                from `data.files`, else by split and index; with its first
                user turn); no example left.
        """
        examples = tokenize_sft_examples(
            conversations, self.tokenizer, self.template, loss_on="completion",
            start_token_id=self.tokenizer.start_token_id)
        length = self.recipe.model.sequence_length
        lengths = examples.lengths
        too_long = np.flatnonzero(lengths > length)
        overlong = self.overlong()
        name = self.recipe.data.source
        if too_long.size and overlong == "error":
            index = int(too_long[0])
            prompt = next((turn["content"] for turn in conversations[index]
                           if turn["role"] == "user"), "")
            where = getattr(conversations[index], "where", None)
            example = f"data.files example {where}" if where else f"{name} {split} example {index}"
            raise ValueError(
                f"{example} (user: {prompt[:60]!r}) has "
                f"{int(lengths[index])} tokens, more than model.sequence_length = {length} "
                f"({too_long.size} of {len(lengths)} {split} examples are longer). An example "
                "(its chat turns) is never split across windows: raise model.sequence_length, "
                "or set sft.overlong = 'drop' (leave such examples out) or 'truncate' (keep "
                "their first tokens).")
        self.overlong_counts[split] = int(too_long.size)
        empty = []
        if overlong == "truncate" and (split != "train" or self.recipe.sft.loss_on == "completion"):
            # Position 0 is never a target: a completion token there adds no loss either.
            empty = [int(i) for i in too_long if not examples.completion_mask[i][1:length].any()]
        self.no_completion_counts[split] = len(empty)
        if too_long.size:
            done = "left out" if overlong == "drop" else "cut to their first tokens"
            self.log(f"{split}: {too_long.size} of {len(lengths)} examples longer than "
                     f"{length} tokens {done}" + (
                         f"; {len(empty)} of them had no completion token left and are left "
                         "out" if empty else ""))
        keep = np.setdiff1d(np.arange(len(lengths)), empty) if overlong == "truncate" else \
            np.flatnonzero(lengths <= length)
        if not keep.size:
            raise ValueError(
                f"No {split} example fits model.sequence_length = {length}"
                f"{' with a completion token left' if empty else ''}: raise it.")
        return SFTExamples([examples.token_ids[i][:length] for i in keep],
                           [examples.completion_mask[i][:length] for i in keep])

    def document_counts(self):
        return {"train": len(self.train_examples), "validation": len(self.validation_examples)}

    def examples(self, split, input_context=None):
        """The tokenized examples of `split` (this input pipeline's shard);
        for `"train"` with `sft.loss_on = "all"`, every token weighted."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        examples = self.train_examples if split == "train" else self.validation_examples
        ids, mask = examples.token_ids, examples.completion_mask
        if input_context is not None and input_context.num_input_pipelines > 1:
            step = input_context.num_input_pipelines
            ids = ids[input_context.input_pipeline_id::step]
            mask = mask[input_context.input_pipeline_id::step]
        if split == "train" and self.recipe.sft.loss_on == "all":
            mask = [np.ones_like(m) for m in mask]
        return SFTExamples(list(ids), list(mask))

    def make_dataset(self, split, batch_size, input_context=None):
        """`(x, labels, sample_weight)` batches of packed windows:
        `"train"` shuffled, repeated; `"validation"` (completion targets
        only, whatever `sft.loss_on`) at most `training.validation_batches`
        batches, cached."""
        examples = self.examples(split, input_context)
        options = dict(sequence_length=self.recipe.model.sequence_length,
                       batch_size=batch_size, packing=self.recipe.sft.packing,
                       pad_token_id=self.tokenizer.pad_token_id, labels=True)
        if split == "train":
            return sft_dataset(examples, shuffle=True, seed=self.recipe.training.seed,
                               repeat=True, **options)
        self.check_validation_size(len(examples), batch_size)
        try:
            dataset = sft_dataset(examples, shuffle=False, cache=True, **options)
        except ValueError as error:
            if "leaves no batch" not in str(error):
                raise
            # Enough examples, packed into fewer windows than one batch.
            raise self.small_validation(len(examples), batch_size) from error
        dataset = dataset.take(self.recipe.training.validation_batches)
        return self.finite_validation(dataset, len(examples), batch_size)

    # -- model -------------------------------------------------------------------

    def build_objective(self):
        sft = self.recipe.sft
        return CausalLanguageModel(
            self.build_backbone(), chunk_size=sft.chunk_size,
            reset_attention_at_boundaries=True, restart_positions=True,
            loss_normalization=sft.loss_normalization)

    # -- evaluation ----------------------------------------------------------------

    def completion_statistics(self, model, examples, unigram, batch_size):
        """`causal_lm_statistics` over the completion targets of `examples`
        (every window once)."""
        import tensorflow as tf

        windows, _ = pack_sft_examples(
            examples, self.recipe.model.sequence_length, packing=self.recipe.sft.packing,
            pad_token_id=self.tokenizer.pad_token_id)
        dataset = tf.data.Dataset.from_tensor_slices(
            completion_scoring_inputs(windows)).batch(batch_size)
        return causal_lm_statistics(_CompletionScorer(model), dataset, unigram)

    def evaluate(self, fitted):
        counts = np.zeros(self.tokenizer.vocabulary_size(), np.int64)
        for ids, mask in zip(self.train_examples.token_ids, self.train_examples.completion_mask):
            counts += np.bincount(ids[mask > 0], minlength=len(counts))
        unigram = baselines.unigram_log_probs(counts)
        held_out = self.completion_statistics(
            fitted.model, self.validation_examples, unigram, self.recipe.training.batch_size)
        lengths = self.train_examples.lengths
        windows = pack_sft_examples(
            self.train_examples, self.recipe.model.sequence_length,
            packing=self.recipe.sft.packing, pad_token_id=self.tokenizer.pad_token_id)[0]
        return {
            "backbone": self.recipe.model.init or self.recipe.model.backbone,
            "dataset": self.recipe.data.source,
            "sequence_length": self.recipe.model.sequence_length,
            "loss_on": self.recipe.sft.loss_on,
            "loss_normalization": self.recipe.sft.loss_normalization,
            "packing": self.recipe.sft.packing,
            "val_loss": fitted.evaluation["loss"],
            "val_completion_perplexity": held_out["perplexity"],
            "val_completion_token_accuracy": held_out["next_token_accuracy"],
            "unigram_completion_perplexity": held_out["unigram_perplexity"],
            "unigram_completion_accuracy": held_out["unigram_accuracy"],
            "val_completion_tokens": held_out["tokens"],
            "train_windows": int(len(windows["token_ids"])),
            "train_window_fill": float(lengths.sum() / windows["token_ids"].size),
            "overlong": self.overlong(),
            "overlong_examples": dict(self.overlong_counts or {}),
            "overlong_without_completion": dict(self.no_completion_counts or {}),
            "perplexity_unit": "per completion token (WordPiece, vocab.txt), the answer's "
                               "end marker included",
        }

    def summary(self, metrics):
        return [
            f"held-out completion perplexity {metrics['val_completion_perplexity']:.2f} vs "
            f"unigram baseline {metrics['unigram_completion_perplexity']:.2f}; token accuracy "
            f"{metrics['val_completion_token_accuracy']:.4f} vs unigram baseline "
            f"{metrics['unigram_completion_accuracy']:.4f} "
            f"({metrics['val_completion_tokens']} completion tokens)",
            f"train windows: {metrics['train_windows']}, filled "
            f"{metrics['train_window_fill']:.1%} (packing {metrics['packing']})",
        ]

    # -- export --------------------------------------------------------------------

    def serving_preprocessor(self):
        """`ChatPromptPreprocessor`: a raw user prompt as the chat
        generation prompt (`[CLS] <|user|> prompt <|end|> <|assistant|>`),
        so `next_token_logits` predicts the answer's first token."""
        return ChatPromptPreprocessor(self.tokenizer, self.recipe.model.sequence_length,
                                      self.template, self.tokenizer.start_token_id)

    def text_generator(self, model):
        """Greedy generation of the assistant's answer to a raw user
        prompt, ending at the template's end marker (the SavedModel's
        `generate` signature)."""
        end = self.tokenizer.token_to_id(self.template.end_marker)
        return TextGenerator(model, self.serving_preprocessor(), self.tokenizer,
                             stop_token_ids=[end])

