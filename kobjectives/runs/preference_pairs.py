"""The base of the runs trained on preference pairs (`kobjectives train
reward`, `kobjectives train dpo`): the pairs (your files, the embedded-corpus
task or HH-RLHF), their split, the chat tokenizer (an init's vocabulary or
one trained on the pairs), the `tf.data` pipelines, and the reserved HH-RLHF
subsets read for the final evaluation only; for a run that trains them (KTO),
unpaired rows from your files instead of pairs."""

import dataclasses
import json
import pathlib

import numpy as np

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.chat import HH_RLHF_SUBSETS
from kobjectives.data.example_files import PREFERENCE_FORMAT
from kobjectives.data.example_files import UNPAIRED_FORMAT
from kobjectives.data.example_files import completion_text
from kobjectives.data.example_files import preference_row_format
from kobjectives.data.example_files import prompt_turns
from kobjectives.data.preference import TRUNCATIONS
from kobjectives.data.preference import PairLengthError
from kobjectives.recipe import RecipeError
from kobjectives.recipe import option
from kobjectives.runs.run import Run
from kobjectives.runs.sft import DATASETS
from kobjectives.runs.sft import SFTDataConfig
from kobjectives.runs.sft import chat_tokenizer
from kobjectives.runs.sft import reading_skipped_rows

_WORDPIECE_TOKENIZERS = ("BertTokenizer", "WordPieceTokenizer")


@dataclasses.dataclass(frozen=True)
class PreferenceDataConfig(SFTDataConfig):
    """The preference pairs: your JSON Lines files, the embedded-corpus task or HH-RLHF
    (`data.max_documents` counts pairs); the SFT run's HH-RLHF options and
    checks."""

    files: tuple[str, ...] = option(
        (), "JSON Lines files (.jsonl, globs) of your pairs in TRL's format, one per line: "
        "{\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}; `dpo` with "
        "preference.method = 'kto' also takes unpaired rows {\"prompt\": ..., "
        "\"completion\": ..., \"label\": true|false} (all files one format; "
        "kobjectives.data.example_files); empty: data.dataset")
    dataset: str = option(
        "corpus", "'corpus': 'What does json.dumps do?' answered by its docstring (chosen) or "
        "by the same docstring falling into a loop (rejected; kobjectives.data."
        "corpus_preference_pairs); 'hh_rlhf': HH-RLHF pairs from data.shared_dir/hh_rlhf/",
        choices=DATASETS)
    heldout_subsets: tuple[str, ...] = option(
        (), "HH-RLHF subsets scored once after training and never trained on: the final "
        "evaluation (e.g. ['helpful-online']); empty: none")
    truncation: str = option(
        "keep_end", "a pair longer than model.sequence_length: 'keep_end' (cut the prompt's "
        "start, then the completions' ends; TRL's), 'keep_start', 'error'",
        choices=TRUNCATIONS)
    balance_lengths: bool = option(
        False, "train on a length-balanced subset of the training pairs: in each of 10 bins "
        "of the answers' length difference the longer answer is chosen exactly half the time "
        "(kobjectives.data.length_balanced_pairs; Singhal et al. 2023), so length alone "
        "predicts nothing; validation and held-out pairs are kept whole")

    def check(self):
        yield from super().check()
        unknown = [s for s in self.heldout_subsets if s not in HH_RLHF_SUBSETS]
        trained = [s for s in self.heldout_subsets if s in self.hh_rlhf_subsets]
        if unknown:
            yield (f"heldout_subsets = {list(self.heldout_subsets)}: unknown subset(s) "
                   f"{unknown}; choose from {list(HH_RLHF_SUBSETS)}")
        elif trained:
            yield (f"heldout_subsets = {list(self.heldout_subsets)}: {trained} is also "
                   "trained on (data.hh_rlhf_subsets); a held-out subset must not be")
        elif self.heldout_subsets and self.dataset != "hh_rlhf":
            yield (f"heldout_subsets = {list(self.heldout_subsets)}: held-out subsets are "
                   "HH-RLHF's; set data.dataset = 'hh_rlhf' or leave them empty")


def render_pair_texts(pair, template=DEFAULT_CHAT_TEMPLATE):
    """`(chosen_text, rejected_text)`: a pair as the rendered texts a
    reward SavedModel scores (the prompt's generation prompt, then the
    answer and the end marker), read as the run reads `data.files`
    (`kobjectives.data.example_files.prompt_turns`, `completion_text`): a
    string prompt is one user turn, an answer is a string (used as it is,
    so an empty generated answer renders too) or a list of one assistant
    message.

    Args:
        pair: a `(prompt, chosen, rejected)` tuple or list, or a
            `{"prompt", "chosen", "rejected"}` dict (TRL's preference row).
        template: the run's `ChatTemplate`.

    Returns:
        Two str.

    Raises:
        TypeError: a pair of another kind (a str, a tuple of another
            length).
        ValueError: a dict lacking a key; a malformed prompt or answer.

    Example:

    >>> render_pair_texts(("Hi", "Hello!", "Go away."))[0]
    '<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello!<|end|>\\n'
    """
    where = getattr(pair, "where", None) or "pair"
    if isinstance(pair, dict):
        missing = [key for key in ("prompt", "chosen", "rejected") if key not in pair]
        if missing:
            raise ValueError(f"{where}: a dict pair needs 'prompt', 'chosen' and 'rejected'; "
                             f"it lacks {missing}.")
        prompt, chosen, rejected = pair["prompt"], pair["chosen"], pair["rejected"]
    elif isinstance(pair, (list, tuple)) and len(pair) == 3:
        prompt, chosen, rejected = pair
    else:
        raise TypeError(
            "render_pair_texts takes a (prompt, chosen, rejected) triple or a {'prompt', "
            f"'chosen', 'rejected'}} dict. Received: {type(pair).__name__} {str(pair)[:60]!r}")
    head = template.generation_prompt(prompt_turns(prompt, where))
    chosen, rejected = (answer if isinstance(answer, str) else completion_text(answer, where, key)
                        for answer, key in ((chosen, "chosen"), (rejected, "rejected")))
    return (f"{head}{chosen}{template.end_marker}\n",
            f"{head}{rejected}{template.end_marker}\n")


def recipe_length_error(error):
    """A `kobjectives.data.preference.PairLengthError` (a pair or KTO row
    that does not fit the window by the truncation rule) as a `RecipeError`
    naming the recipe's keys (`data.truncation`, `model.sequence_length`)
    instead of the Python arguments."""
    return RecipeError(error.describe(truncation="data.truncation = {}",
                                      sequence_length="model.sequence_length (--sequence-length)"))


def length_baseline_accuracy(examples):
    """The share of pairs of `examples` whose chosen completion has more
    tokens than the rejected one (a tie counts one half): the 'prefer the
    longer answer' baseline."""
    chosen = np.array([len(c) for c in examples.chosen_ids])
    rejected = np.array([len(r) for r in examples.rejected_ids])
    return float(np.mean(np.where(chosen == rejected, 0.5, chosen > rejected)))


def length_controlled_accuracy(examples, chosen_scores, rejected_scores):
    """How often `chosen_scores` beat `rejected_scores`, with the answers'
    length taken out: the mean of the accuracy on the pairs whose chosen
    completion has more tokens and the accuracy on those whose chosen
    completion has fewer (pairs of equal length left out; NaN when a side
    has no pair). A score that only measures length gets 0.5 whatever the
    data's length bias; chance is 0.5."""
    correct = np.asarray(chosen_scores) > np.asarray(rejected_scores)
    return length_controlled_mean(correct, [len(c) for c in examples.chosen_ids],
                                  [len(r) for r in examples.rejected_ids])


def length_controlled_mean(outcomes, first_lengths, second_lengths):
    """The mean of `outcomes` (one per pair of answers: 1 when the first
    wins, 0 when it loses, 1/2 a tie) with length taken out: the mean of
    their mean where the first answer is longer and their mean where it is
    shorter (equal lengths left out; NaN when a side is empty).

    Example:

    >>> length_controlled_mean([1, 1, 1, 0], [5, 6, 7, 1], [1, 1, 1, 5])
    0.5
    """
    outcomes = np.asarray(outcomes, np.float64)
    first, second = np.asarray(first_lengths), np.asarray(second_lengths)
    sides = [outcomes[first > second], outcomes[first < second]]
    if not all(side.size for side in sides):
        return float("nan")
    return float(np.mean([side.mean() for side in sides]))


class PreferencePairsRun(Run):
    """A run trained on `(prompt, chosen, rejected)` pairs: subclasses add
    the recipe's objective section, `build_objective`, `evaluate` and
    export. `self.examples[split]` holds the tokenized pairs
    (`kobjectives.data.PreferenceExamples`) of `"train"`, `"validation"`
    and, with `data.heldout_subsets`, `"heldout"`.

    A subclass whose `trains_unpaired_rows()` is true also takes
    `data.files` of unpaired rows (`{"prompt", "completion", "label"}`):
    then `self.rows[split]` holds their `(prompt, completion, label)`
    triples of `"train"` and `"validation"`, and `self.pairs` and
    `self.examples` are empty."""

    backbone_kind = "causal"
    # The serving preprocessors map the chat markers themselves.
    export_options = {"special_tokens_in_strings": False}
    template = DEFAULT_CHAT_TEMPLATE
    examples = None
    pairs = None
    rows = None
    dropped = None

    # -- checks ------------------------------------------------------------------

    def check(self):
        problems = list(super().check())
        problems += self.unpaired_data_problems()
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

    def trains_unpaired_rows(self):
        """Whether the objective trains on unpaired rows (the KTO format of
        `data.files`); the base: no, pairs only."""
        return False

    def pairs_needed(self, where):
        """The problem of unpaired rows (the first at `where`) for a run
        that needs pairs."""
        return (f"data.files (--data): {where} is an unpaired row {UNPAIRED_FORMAT}, but "
                f"{self.pairs_needed_by()} needs pairs {PREFERENCE_FORMAT}. Give pairs, or "
                "train unpaired rows with KTO (`kobjectives train dpo --set "
                "preference.method=kto`)")

    def pairs_needed_by(self):
        """What needs pairs, for `pairs_needed`: the run."""
        return f"the {self.name!r} run"

    def unpaired_data_problems(self):
        """Problem lines about unpaired rows in `data.files`, from the first
        line alone (a malformed or mixed file fails when it is read): a run
        that needs pairs, or an option that needs pairs."""
        data = self.recipe.data
        if not data.files:
            return []
        try:
            [(row, where)] = data_lib.read_jsonl(data.files, limit=1)
            unpaired = preference_row_format(row, where) == "unpaired"
        except (ValueError, OSError):
            return []  # reported, named by file and line, when the data are read
        if not unpaired:
            return []
        if not self.trains_unpaired_rows():
            return [self.pairs_needed(where)]
        if data.balance_lengths:
            return [f"data.balance_lengths = true balances pairs, but data.files hold unpaired "
                    f"rows ({where}); leave it false"]
        return []

    # -- data and tokenizer ------------------------------------------------------

    def load_examples(self):
        """`(format, examples)`: `"pairs"` and the pairs of `load_pairs`, or,
        when `data.files` hold unpaired rows, `"unpaired"` and their
        `(prompt, completion, label)` triples (at most `data.max_documents`;
        `kobjectives.data.read_preference_examples`).

        Raises:
            ValueError: unpaired rows for a run that needs pairs; files
                mixing the formats.
        """
        data = self.recipe.data
        if not data.files:
            return "pairs", self.load_pairs()
        kind, examples = data_lib.read_preference_examples(data.files,
                                                           data.max_documents or None)
        if kind == "unpaired" and not self.trains_unpaired_rows():
            [(_, where)] = data_lib.read_jsonl(data.files, limit=1)
            raise ValueError(self.pairs_needed(where) + ".")
        return kind, examples

    def load_pairs(self, subsets=None):
        """The `(prompt, chosen, rejected)` pairs of `data.files`
        (`kobjectives.data.read_preference_pairs`) or `data.dataset` (at most
        `data.max_documents`); `subsets`: HH-RLHF subsets read instead of
        `data.hh_rlhf_subsets` (the held-out ones). The pairs of files and
        HH-RLHF keep their `"file:line"` (`Located` tuples), which the
        errors about them name."""
        data = self.recipe.data
        limit = data.max_documents or None
        if data.files and not subsets:
            pairs = data_lib.read_preference_pairs(data.files, limit)
        elif data.dataset == "hh_rlhf":
            pairs = reading_skipped_rows(
                self.log, "HH-RLHF row(s)", data_lib.read_hh_rlhf_pairs,
                pathlib.Path(data.shared_dir).expanduser() / "hh_rlhf",
                subsets=subsets or data.hh_rlhf_subsets, allow_reserved=bool(subsets),
                limit=limit)
        else:
            pairs = data_lib.corpus_preference_pairs(
                seed=self.split_seed(), limit=limit,
                max_characters=min(300, 2 * self.recipe.model.sequence_length),
                template=self.template)
        return [(p["prompt"], p["chosen"], p["rejected"]) if isinstance(p, dict) else
                p if isinstance(p, tuple) else tuple(p) for p in pairs]

    def prepare(self):
        """The pairs split into train and validation (a stable hash of
        each), the held-out subsets' pairs, the tokenizer with the chat
        markers (the init's vocabulary, else WordPiece trained on the
        training pairs' text) and the tokenized pairs."""
        out_dir = self._out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        data = self.recipe.data
        kind, pairs = self.load_examples()
        train, validation = data_lib.split_examples(
            pairs, data.validation_fraction, seed=self.split_seed())
        if kind == "unpaired":
            self.prepare_rows(train, validation)
            return
        self.pairs = {"train": train, "validation": validation}
        if data.heldout_subsets:
            self.pairs["heldout"] = self.load_pairs(data.heldout_subsets)
        self.log(f"data: {len(pairs)} pairs from {data.source_label} ({len(train)} train, "
                 f"{len(validation)} validation)" + (
                     f"; {len(self.pairs['heldout'])} held-out pairs of "
                     f"{list(data.heldout_subsets)}, scored after training only"
                     if data.heldout_subsets else ""))
        self.make_tokenizer(train)
        self.examples = {split: self.tokenized(p) for split, p in self.pairs.items()}
        self.drop_collapsed_pairs()
        if data.balance_lengths:
            self.balance_lengths()

    def prepare_rows(self, train, validation):
        """`prepare` for unpaired rows (split as the pairs are): the rows
        and the tokenizer (the init's vocabulary, else WordPiece trained on
        the training rows' text); no pairs."""
        self.rows = {"train": train, "validation": validation}
        self.pairs, self.examples, self.dropped = {}, {}, {}

        def labels(rows):
            desirable = sum(1 for row in rows if row[2])
            return f"{desirable} desirable, {len(rows) - desirable} undesirable"

        self.log(f"data: {len(train) + len(validation)} unpaired rows of data.files "
                 f"({len(train)} train: {labels(train)}; {len(validation)} validation: "
                 f"{labels(validation)})")
        self.make_tokenizer(train)

    def make_tokenizer(self, train):
        """The chat tokenizer: the init's vocabulary with the chat markers,
        else WordPiece trained on the text of `train` (pairs, or unpaired
        rows), saved into the run folder."""
        if self.recipe.model.init:
            base = backbones.load_tokenizer(self.recipe.model.init)
            self.lowercase = base.get_config().get("lowercase", self.recipe.tokenizer.lowercase)
            self.tokenizer = chat_tokenizer(base.get_vocabulary(), self.lowercase, self.template)
            self.log(f"tokenizer: from {self.recipe.model.init} "
                     f"({self.tokenizer.vocabulary_size()} tokens with the chat markers)")
        else:
            config = self.recipe.tokenizer
            texts = []
            for prompt, *answers in train:
                context = prompt if isinstance(prompt, str) else "\n".join(
                    turn["content"] for turn in prompt)
                texts.append("\n".join((context, *(a for a in answers if isinstance(a, str)))))
            vocabulary = data_lib.train_wordpiece(
                texts, config.vocabulary_size, lowercase=config.lowercase,
                max_training_documents=config.max_training_documents or None)
            self.lowercase = config.lowercase
            self.tokenizer = chat_tokenizer(vocabulary, config.lowercase, self.template)
            self.log(f"tokenizer: WordPiece, {self.tokenizer.vocabulary_size()} pieces "
                     "(chat markers included)")
        data_lib.save_vocabulary(self.vocabulary, self._out_dir())

    def keep_pairs(self, split, keep):
        """Keeps the pairs `keep` (indices) of `split`, text and tokens."""
        examples = self.examples[split]
        self.pairs[split] = [self.pairs[split][i] for i in keep]
        self.examples[split] = data_lib.PreferenceExamples(
            [examples.prompt_ids[i] for i in keep], [examples.chosen_ids[i] for i in keep],
            [examples.rejected_ids[i] for i in keep], examples.start_token_id,
            None if examples.names is None else [examples.names[i] for i in keep])

    def balance_lengths(self):
        """`data.balance_lengths`: keeps the length-balanced subset of the
        training pairs (`kobjectives.data.length_balanced_pairs`), logging
        what it drops."""
        examples = self.examples["train"]
        before = length_baseline_accuracy(examples)
        keep = data_lib.length_balanced_pairs(examples, seed=self.recipe.training.seed)
        self.keep_pairs("train", keep)
        self.dropped["length_balance"] = len(examples) - len(keep)
        self.log(f"train: balanced by length: {len(keep)} of {len(examples)} pairs kept; the "
                 f"longer answer was chosen in {before:.3f} of them, now "
                 f"{length_baseline_accuracy(self.examples['train']):.3f}")

    def drop_collapsed_pairs(self):
        """Drops the pairs whose chosen and rejected answers are identical
        once cut to the window (`collapsed_pairs`; they prefer nothing),
        logging and recording (`self.dropped`) how many per split.

        Raises:
            RecipeError: a pair that does not fit the window by
                `data.truncation` (named by its file and line, with the
                recipe keys that fix it: `recipe_length_error`).
        """
        self.dropped = {}
        for split, examples in self.examples.items():
            try:
                collapsed = set(data_lib.collapsed_pairs(
                    examples, self.recipe.model.sequence_length, self.recipe.data.truncation))
            except PairLengthError as error:
                raise recipe_length_error(error) from None
            if not collapsed:
                continue
            self.keep_pairs(split, [i for i in range(len(examples)) if i not in collapsed])
            self.dropped[split] = len(collapsed)
            self.log(f"{split}: {len(collapsed)} of {len(examples)} pairs dropped: chosen and "
                     f"rejected are identical once cut to {self.recipe.model.sequence_length} "
                     "tokens")

    @property
    def train_examples(self):
        return None if self.examples is None else self.examples.get("train")

    @property
    def validation_examples(self):
        return None if self.examples is None else self.examples.get("validation")

    def tokenized(self, pairs):
        return data_lib.tokenize_preference_pairs(
            pairs, self.tokenizer, self.template, start_token_id=self.tokenizer.start_token_id)

    def document_counts(self):
        """Pairs (or unpaired rows) per split."""
        return {split: len(items) for split, items in (self.rows or self.pairs).items()}

    def extra_features(self, split):
        """Per-pair arrays added to the batches of `split` (a dict, or
        None): the DPO run's precomputed reference log-probabilities."""
        return None

    def _shard(self, split, input_context):
        """`(examples, extra_features)` of `split`, this input pipeline's
        share under `tf.distribute`."""
        examples, extra = self.examples[split], self.extra_features(split)
        if input_context is None or input_context.num_input_pipelines <= 1:
            return examples, extra
        step, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        examples = data_lib.PreferenceExamples(
            examples.prompt_ids[index::step], examples.chosen_ids[index::step],
            examples.rejected_ids[index::step], examples.start_token_id,
            None if examples.names is None else examples.names[index::step])
        extra = None if extra is None else {k: v[index::step] for k, v in extra.items()}
        return examples, extra

    def pair_dataset(self, split, batch_size, ordered=False, input_context=None, **options):
        """Batches of the pairs of `split` (`preference_dataset`):
        `ordered` gives every pair once, in order (the last batch smaller);
        otherwise shuffled and repeated. `options` go to
        `preference_dataset`."""
        examples, extra = self._shard(split, input_context)
        options = dict(sequence_length=self.recipe.model.sequence_length,
                       batch_size=batch_size, truncation=self.recipe.data.truncation,
                       pad_token_id=self.tokenizer.pad_token_id, extra_features=extra,
                       **options)
        if ordered:
            options.setdefault("drop_remainder", False)
            options.update(shuffle=False)
        else:
            options.update(shuffle=True, repeat=True, seed=self.recipe.training.seed)
        try:
            return data_lib.preference_dataset(examples, **options)
        except PairLengthError as error:
            raise recipe_length_error(error) from None

    def make_dataset(self, split, batch_size, input_context=None):
        """`"train"`: shuffled, repeated batches; `"validation"`: at most
        `training.validation_batches` full batches, cached."""
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        if split == "train":
            return self.pair_dataset(split, batch_size, input_context=input_context)
        self.check_validation_size(len(self._shard(split, input_context)[0]), batch_size)
        dataset = self.pair_dataset(split, batch_size, ordered=True, input_context=input_context,
                                    drop_remainder=True, cache=True)
        return self.finite_validation(dataset.take(self.recipe.training.validation_batches),
                                      len(self._shard(split, input_context)[0]), batch_size)

    # -- model -------------------------------------------------------------------

    def load_tokenizer(self):
        tokenizer = super().load_tokenizer()
        self.lowercase = tokenizer.get_config().get("lowercase", False)
        return tokenizer
