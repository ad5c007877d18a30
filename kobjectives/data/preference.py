"""Preference data: `(prompt, chosen, rejected)` pairs for reward models
and the DPO family, and unpaired desirable / undesirable examples for KTO,
tokenized with the policy's tokenizer and batched with static shapes.

Sources (no network, deterministic):

- `read_hh_rlhf_pairs(path)`: Anthropic HH-RLHF (`../shared/data/hh_rlhf/`,
  the train subsets by default; `helpful-online` is reserved for the final
  evaluation and refused unless `allow_reserved=True`);
- `corpus_preference_pairs(seed)`: the default task, derived from the
  embedded corpus, so every command runs anywhere: `"What does json.dumps
  do?"` (one user turn) answered by its docstring's first paragraph
  (chosen) or by the same paragraph falling into a loop (rejected:
  `looping_answer`).

A pair is `(prompt, chosen, rejected)` (or a `{"prompt", "chosen",
"rejected"}` dict): `prompt` is a conversation (a list of `{"role",
"content"}` turns ending with a `user` turn) rendered by a
`kobjectives.data.ChatTemplate` and followed by the assistant marker, or a
plain string used as it is (no markers, as SFT's `{"prompt",
"completion"}` pairs); `chosen` and `rejected` are the assistant's
completions, each followed by the template's end marker.
`tokenize_preference_pairs` tokenizes them with
`kobjectives.data.tokenize_sft_examples` (the markers are single tokens).

**Layout** (`preference_dataset`). Every element is a dict of
`[batch, sequence_length]` tensors, the same keys for both sides:
`chosen_token_ids` / `rejected_token_ids` (int32, `[start] prompt
completion`, right-padded with `pad_token_id`), `*_padding_mask` (bool) and
`*_completion_mask` (int32, 1 on the completion tokens that are scored, 0
on the start token, the prompt and the padding). The prompt is the same
(same truncation) on both sides and both are padded to the same length,
so an objective runs the policy once on the concatenation on the batch
axis (TRL's `concatenated_forward`)::

    token_ids = tf.concat([x["chosen_token_ids"], x["rejected_token_ids"]], 0)
    ...  # logps: [2 * batch]
    chosen_logps, rejected_logps = tf.split(logps, 2)

A sequence's log-probability is the sum over the positions `t` with
`completion_mask[t] = 1` of `log p(token_t | tokens_<t)` (the logits at
`t - 1`). Position 0 always holds the start token or a prompt token, so
every completion token is predicted.

**Truncation** (`truncation=`, when `start + prompt + the longer
completion` exceeds `sequence_length`):

- `"keep_end"` (the default, TRL's): the prompt first, then the
  completions. The prompt loses tokens from its start (keeps its end, the
  context nearest the answer), down to as many as leave room for the
  longer completion but never fewer than `max_prompt_length` (default
  half the window); then each completion keeps its first tokens that fit.
  A completion always keeps at least one token.
- `"keep_start"`: the completions first. Each sequence keeps its first
  `sequence_length` tokens: the completions lose tokens from their end and
  the prompt is never cut, so a prompt that fills the window leaves a
  completion empty, which raises.
- `"error"`: any pair too long raises, naming it.

The start token, when given, always stays. Pairs whose chosen and
rejected are the same (as text, as tokens, or once truncated) raise: they
prefer nothing.

**Naming.** Errors name a pair by its `where` when it has one (the
`kobjectives.data.located.Located` tuples of the file readers:
`"prefs.jsonl:10"`; HH-RLHF pairs: their file and line; corpus pairs: the
name they ask about), else by its index in the input (`pairs[8]`).
`tokenize_preference_pairs` and `kto_examples` keep the names in what they
return (`names`), so the truncation errors of `preference_arrays` and
`kto_arrays` name the same line. Those errors are `PairLengthError`s, whose
`describe` can name the fix in other words than the Python arguments (a
run names its recipe keys).

**KTO** (`kto_examples`, `kto_dataset`): rows `(prompt, completion,
desirable)`; a pair gives a desirable row (its chosen, at its place) and an
undesirable row (its rejected, after all the input's rows, as TRL's
`unpair_preference_dataset` puts rejected rows after chosen ones, so the
two rows of a pair are not neighbours). KTO's KL term needs mismatched
pairs: as TRL does, the rows are taken in order in groups of
`kl_batch_size` (default `batch_size`) and each row's KL completion is the
completion of the previous row of its group (the first row takes the
last's). The pairing is made once, before shuffling, so the reference
model's log-probabilities of the KL rows can be precomputed too.

**Reference log-probabilities.** An objective may precompute the frozen
reference policy's log-probabilities into the data: build the dataset
with `shuffle=False, drop_remainder=False`, run the reference over it (its
batches follow the example order), concatenate, and pass the values back
as `extra_features={"reference_chosen_logps": [num_pairs],
"reference_rejected_logps": [num_pairs]}` (`REFERENCE_LOGPS_KEYS`; for KTO
`"reference_logps"`, `"reference_kl_logps"`): extra per-example arrays
travel with their rows through the shuffle and the batching.

Reference:
    Rafailov et al., 2023, "Direct Preference Optimization: Your Language
    Model is Secretly a Reward Model", https://arxiv.org/abs/2305.18290;
    Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", https://arxiv.org/abs/2402.01306; TRL's
    `DPOTrainer` / `KTOTrainer` (truncation, concatenated forward, KL
    pairs).
"""

import dataclasses
import numbers

import numpy as np
import tensorflow as tf

from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.chat import HH_RLHF_TRAIN_SUBSETS
from kobjectives.data.chat import ChatTemplate
from kobjectives.data.chat import _check_hh_subsets
from kobjectives.data.chat import _read_hh_rows
from kobjectives.data.chat import check_conversation
from kobjectives.data.chat import parse_hh_rlhf
from kobjectives.data.corpus_tasks import PROMPT_TEMPLATE
from kobjectives.data.corpus_tasks import prompt_completion_task
from kobjectives.data.located import Located
from kobjectives.data.located import example_name
from kobjectives.data.sft import tokenize_sft_examples

TRUNCATIONS = ("keep_end", "keep_start", "error")
"""The truncation rules of `preference_dataset` and `kto_dataset`."""

PAIR_KEYS = (
    "chosen_token_ids", "chosen_padding_mask", "chosen_completion_mask",
    "rejected_token_ids", "rejected_padding_mask", "rejected_completion_mask",
)
"""The keys of a `preference_dataset` element."""

KTO_KEYS = (
    "token_ids", "padding_mask", "completion_mask", "desirable",
    "kl_token_ids", "kl_padding_mask", "kl_completion_mask",
)
"""The keys of a `kto_dataset` element."""

REFERENCE_LOGPS_KEYS = ("reference_chosen_logps", "reference_rejected_logps")
"""The `extra_features` keys of precomputed reference log-probabilities of
pairs (float32 `[batch]` in the batches)."""

KTO_REFERENCE_LOGPS_KEYS = ("reference_logps", "reference_kl_logps")
"""The `extra_features` keys of precomputed reference log-probabilities of
KTO rows and their KL rows."""


# ---------------------------------------------------------------------------
# Containers and argument checks.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PreferenceExamples:
    """Tokenized preference pairs (what `tokenize_preference_pairs`
    returns).

    Attributes:
        prompt_ids: list of int32 numpy arrays `[prompt_length_i]` (the
            rendered prompt, the assistant marker included; may be empty
            when `start_token_id` is set).
        chosen_ids: list of int32 numpy arrays, the chosen completion and
            its end marker.
        rejected_ids: list of int32 numpy arrays, the rejected one.
        start_token_id: optional int, laid out before every prompt (never
            truncated).
        names: optional list of str, how errors name each pair (e.g.
            `"prefs.jsonl:10"`); None: `pairs[i]`.

    Example:

    >>> examples = PreferenceExamples([np.array([5, 6])], [np.array([7, 9])],
    ...                               [np.array([8, 8, 9])])
    >>> len(examples), examples.lengths.tolist()  # prompt + the longer completion
    (1, [5])
    >>> examples.name(0)
    'pairs[0]'
    """

    prompt_ids: list
    chosen_ids: list
    rejected_ids: list
    start_token_id: object = None
    names: list = None

    def __len__(self):
        return len(self.prompt_ids)

    def name(self, index):
        """How errors name pair `index`: its name, else `pairs[index]`."""
        return _name(self.names, index, "pairs")

    @property
    def lengths(self):
        """int64 numpy array `[num_pairs]`: the untruncated length of each
        pair's longer sequence (start, prompt and completion)."""
        start = int(self.start_token_id is not None)
        return np.asarray([
            start + len(prompt) + max(len(chosen), len(rejected))
            for prompt, chosen, rejected in zip(
                self.prompt_ids, self.chosen_ids, self.rejected_ids)], np.int64)


@dataclasses.dataclass
class KTOExamples:
    """Tokenized unpaired KTO rows (what `kto_examples` returns).

    Attributes:
        prompt_ids: list of int32 numpy arrays.
        completion_ids: list of int32 numpy arrays (the completion and its
            end marker).
        desirable: bool numpy array `[num_rows]`.
        source_index: int64 numpy array `[num_rows]`, the input example
            each row comes from.
        start_token_id: optional int, laid out before every prompt.
        names: optional list of str, how errors name each row (e.g.
            `"rows.jsonl:4"`); None: `rows[i]`.

    Example:

    >>> rows = KTOExamples([np.array([5]), np.array([6])], [np.array([7]), np.array([8, 9])],
    ...                    np.array([True, False]), np.array([0, 1]))
    >>> len(rows), rows.lengths.tolist()
    (2, [2, 3])
    """

    prompt_ids: list
    completion_ids: list
    desirable: np.ndarray
    source_index: np.ndarray
    start_token_id: object = None
    names: list = None

    def __len__(self):
        return len(self.prompt_ids)

    def name(self, index):
        """How errors name row `index`: its name, else `rows[index]`."""
        return _name(self.names, index, "rows")

    @property
    def lengths(self):
        """int64 numpy array `[num_rows]`: untruncated sequence lengths."""
        start = int(self.start_token_id is not None)
        return np.asarray([start + len(prompt) + len(completion) for prompt, completion
                           in zip(self.prompt_ids, self.completion_ids)], np.int64)


def _name(names, index, what):
    return names[index] if names is not None and names[index] else f"{what}[{index}]"


class PairLengthError(ValueError):
    """A pair (or KTO row) that does not fit `sequence_length` by the
    truncation rule: too long with `truncation="error"`, or left without a
    completion token by `"keep_start"` (its prompt fills the window).

    The message names the Python arguments; `describe` words the fix with
    other names (a run: its recipe keys).

    Attributes:
        name: how the pair is named (`"prefs.jsonl:10"`, `"pairs[3]"`).
        truncation: the rule that refused it.
        prompt_length: int, its prompt's tokens.
        completion_length: int, its longer completion's tokens.
        room: int, the window less the start token.

    Example:

    >>> error = PairLengthError("prefs.jsonl:10", "keep_start", 9, 2, 7)
    >>> print(error)
    prefs.jsonl:10: the completion has no token left after truncation: the prompt has 9 tokens and fills the 7 left in the window, and truncation='keep_start' never cuts the prompt. Pass truncation='keep_end' (the prompt keeps its last tokens), raise `sequence_length`, or drop the pair.
    >>> print(error.describe("data.truncation = {}", "model.sequence_length"))
    prefs.jsonl:10: the completion has no token left after truncation: the prompt has 9 tokens and fills the 7 left in the window, and data.truncation = keep_start never cuts the prompt. Set data.truncation = keep_end (the prompt keeps its last tokens), raise model.sequence_length, or drop the pair.
    """

    def __init__(self, name, truncation, prompt_length, completion_length, room):
        self.name, self.truncation, self.room = name, truncation, room
        self.prompt_length, self.completion_length = prompt_length, completion_length
        super().__init__(self.describe())

    def __reduce__(self):
        return type(self), (self.name, self.truncation, self.prompt_length,
                            self.completion_length, self.room)

    def describe(self, truncation="truncation={!r}", sequence_length="`sequence_length`",
                 verb=None):
        """The message, naming the truncation rule with `truncation` (a
        format string of the rule's name) and the window with
        `sequence_length`; `verb` ("pass", "set") asks for another rule
        (default: "set" when `truncation` does not start with
        "truncation=")."""
        verb = verb or ("pass" if truncation.startswith("truncation=") else "set")
        keep_end, keep_start = truncation.format("keep_end"), truncation.format("keep_start")
        if self.truncation == "keep_start":
            return (
                f"{self.name}: the completion has no token left after truncation: the prompt "
                f"has {self.prompt_length} tokens and fills the {self.room} left in the "
                f"window, and {keep_start} never cuts the prompt. {verb.capitalize()} "
                f"{keep_end} (the prompt keeps its last tokens), raise {sequence_length}, or "
                "drop the pair.")
        if self.prompt_length >= self.room:
            problem = (f"its prompt alone has {self.prompt_length} tokens and fills the "
                       f"{self.room} the window leaves for the prompt and completion")
        else:
            problem = (f"its prompt ({self.prompt_length} tokens) and longer completion "
                       f"({self.completion_length}) exceed the {self.room} tokens the window "
                       "leaves for them")
        return (
            f"{self.name}: {problem} (after the start token, if any). Raise "
            f"{sequence_length}, drop the long pairs, or {verb} {keep_end} (cut the prompt's "
            f"start first) or {keep_start} (cut the completions' end first).")


def _check_int(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` must be an int >= {minimum}{allowed}. Received: {name}={value!r}")
    return int(value)


def _check_truncation(truncation):
    if truncation not in TRUNCATIONS:
        raise ValueError(
            f"`truncation` must be one of {TRUNCATIONS}. Received: truncation={truncation!r}")


def _check_template(template):
    if not isinstance(template, ChatTemplate):
        raise TypeError(
            "`template` must be a kobjectives.data.ChatTemplate. Received: "
            f"{type(template).__name__}")


# ---------------------------------------------------------------------------
# Tokenization.
# ---------------------------------------------------------------------------


def _split_prompt(prompt, completion, template, name):
    """`(prompt text, completion text)`: the rendered prompt (with the
    assistant marker for a conversation) and the completion with its end
    marker."""
    if isinstance(prompt, str):
        segments = template.render_prompt_completion(prompt, completion, name=name)
        return "".join(text for text, _ in segments[:-1]), segments[-1][0]
    if isinstance(prompt, (list, tuple)) and not isinstance(prompt, (str, bytes)):
        turns = check_conversation(prompt, f"{name}[prompt]")
        if turns[-1][0] != "user":
            raise ValueError(
                f"{name}: the prompt conversation ends with a {turns[-1][0]!r} turn; it must "
                "end with a 'user' turn, which the chosen and rejected completions answer. "
                "Move its last assistant turn into the completions.")
        if not isinstance(completion, str):
            raise TypeError(
                f"{name}: a completion must be a str. Received: {type(completion).__name__}")
        segments = template.render(
            list(prompt) + [{"role": "assistant", "content": completion}], name=name)
        # [..., (assistant marker, False), (completion + end, True), ("\n", False)]
        return "".join(text for text, _ in segments[:-2]), segments[-2][0]
    raise TypeError(
        f"{name}: the prompt must be a str or a conversation (a list of {{'role', "
        f"'content'}} turns). Received: {type(prompt).__name__}")


def _pair_fields(pair, name):
    if isinstance(pair, dict):
        missing = sorted({"prompt", "chosen", "rejected"} - set(pair))
        if missing:
            raise ValueError(
                f"{name}: a dict pair needs 'prompt', 'chosen' and 'rejected'; it lacks "
                f"{missing}.")
        return pair["prompt"], pair["chosen"], pair["rejected"]
    if isinstance(pair, (list, tuple)) and len(pair) == 3:
        return tuple(pair)
    raise TypeError(
        f"{name} must be a (prompt, chosen, rejected) triple or a {{'prompt', 'chosen', "
        f"'rejected'}} dict. Received: {type(pair).__name__} {str(pair)[:60]!r}")


def _check_different(chosen, rejected, name):
    if isinstance(chosen, str) and chosen == rejected:
        raise ValueError(
            f"{name}: chosen and rejected are the same text ({chosen[:40]!r}), so the pair "
            "prefers nothing. Drop the pair or fix its rejected completion.")


def _check_tokenizer_inputs(items, what):
    single = (isinstance(items, (list, tuple)) and len(items) == 3
              and isinstance(items[1], str) and isinstance(items[2], (str, bool)))
    if isinstance(items, (str, dict)) or single:
        raise TypeError(f"`{what}` must be a list of {what}, not a single one (wrap it in a "
                        "list).")
    items = list(items)
    if not items:
        raise ValueError(f"`{what}` is empty: there is nothing to learn from.")
    return items


def _tokenize_prompt_completions(prompt_and_completions, tokenizer, template, batch_size):
    """`[(prompt text, [completion texts])]` -> `[(prompt ids, [completion
    ids])]` through `tokenize_sft_examples`: the prompt with the first
    completion (split by the completion mask), the others alone (text
    between markers is tokenized piece by piece, so the split is exact)."""
    examples = []
    for prompt, completions in prompt_and_completions:
        examples.append([(prompt, False), (completions[0], True)])
        examples.extend([(completion, True)] for completion in completions[1:])
    tokenized = tokenize_sft_examples(
        examples, tokenizer, template, loss_on="completion", batch_size=batch_size)
    out, position = [], 0
    for _, completions in prompt_and_completions:
        ids, mask = tokenized.token_ids[position], tokenized.completion_mask[position]
        prompt = ids[mask == 0]
        firsts = [ids[mask == 1]]
        firsts += tokenized.token_ids[position + 1:position + len(completions)]
        out.append((prompt, firsts))
        position += len(completions)
    return out


def _check_prompt_tokens(prompt_ids, start_token_id, name):
    if not len(prompt_ids) and start_token_id is None:
        raise ValueError(
            f"{name}: the prompt has no token and there is no start_token_id, so the "
            "completion's first token would be predicted from nothing. Pass "
            "start_token_id (e.g. tokenizer.start_token_id) or give a prompt.")


def tokenize_preference_pairs(pairs, tokenizer, template=DEFAULT_CHAT_TEMPLATE,
                              start_token_id=None, batch_size=1024):
    """Tokenizes `(prompt, chosen, rejected)` pairs.

    A conversation prompt is rendered by `template` and followed by the
    assistant marker (`template.generation_prompt`): its earlier assistant
    turns are context, never scored. A string prompt is used as it is,
    without markers (as SFT's `{"prompt", "completion"}` pairs). Each
    completion is followed by the end marker, so the policy learns to stop.
    The markers are looked up with `tokenizer.token_to_id` (add them with
    `kobjectives.data.add_chat_tokens`); the text between them goes through
    `kobjectives.data.tokenize_sft_examples`.

    Args:
        pairs: a list of `(prompt, chosen, rejected)` triples or
            `{"prompt", "chosen", "rejected"}` dicts: `prompt` a str or a
            conversation ending with a `user` turn, `chosen` and `rejected`
            non-blank str.
        tokenizer: a keras-hub tokenizer mapping a batch of strings to
            ragged ids, with `token_to_id`, built without `sequence_length`.
        template: the `kobjectives.data.ChatTemplate` (the policy's).
        start_token_id: optional int, laid out before every prompt (the
            policy's start token, as given to `tokenize_sft_examples`).
        batch_size: int, strings per tokenizer call.

    Returns:
        `PreferenceExamples`, named as the pairs are (`names`).

    Raises:
        ValueError: no pairs; a malformed pair (named by its `where`, a
            `kobjectives.data.located.Located` pair's `"file:line"`,
            else `pairs[i]`); chosen
            equal to rejected, as text or as token ids; a prompt without
            tokens and no `start_token_id`; a marker missing from the
            vocabulary.
        TypeError: a pair of none of the forms above.

    Example:

    >>> import keras_hub
    >>> from kobjectives.data.chat import add_chat_tokens
    >>> vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "hi", "hello", "go", "!"])
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    >>> out = tokenize_preference_pairs(
    ...     [([{"role": "user", "content": "Hi"}], "Hello!", "Go")], tokenizer)
    >>> [vocabulary[i] for i in out.prompt_ids[0]]
    ['<|user|>', 'hi', '<|end|>', '<|assistant|>']
    >>> [vocabulary[i] for i in out.chosen_ids[0]], [vocabulary[i] for i in out.rejected_ids[0]]
    (['hello', '!', '<|end|>'], ['go', '<|end|>'])
    """
    _check_template(template)
    start_token_id = _check_int("start_token_id", start_token_id, 0, allow_none=True)
    pairs = _check_tokenizer_inputs(pairs, "pairs")
    names = [example_name(pair, index, "pairs") for index, pair in enumerate(pairs)]
    texts = []
    for pair, name in zip(pairs, names):
        prompt, chosen, rejected = _pair_fields(pair, name)
        _check_different(chosen, rejected, name)
        prompt_text, chosen_text = _split_prompt(prompt, chosen, template, name)
        _, rejected_text = _split_prompt(prompt, rejected, template, name)
        texts.append((prompt_text, [chosen_text, rejected_text]))
    tokenized = _tokenize_prompt_completions(texts, tokenizer, template, batch_size)
    prompts, chosens, rejecteds = [], [], []
    for name, (prompt, (chosen, rejected)) in zip(names, tokenized):
        _check_prompt_tokens(prompt, start_token_id, name)
        if np.array_equal(chosen, rejected):
            raise ValueError(
                f"{name}: chosen and rejected tokenize to the same {len(chosen)} ids (they "
                "differ only in what the tokenizer drops: letter case, spacing, unknown "
                "characters), so the pair prefers nothing. Drop the pair.")
        prompts.append(prompt)
        chosens.append(chosen)
        rejecteds.append(rejected)
    return PreferenceExamples(prompts, chosens, rejecteds, start_token_id, names)


def _kto_rows(items):
    """`[(prompt, completion, desirable, source index, name)]` of the KTO
    inputs."""
    rows, undesirable = [], []
    for index, item in enumerate(items):
        name = example_name(item, index, "examples")
        if isinstance(item, dict) and "completion" in item:
            missing = sorted({"prompt", "label"} - set(item))
            if missing:
                raise ValueError(
                    f"{name}: an unpaired dict needs 'prompt', 'completion' and 'label' "
                    f"(True: desirable); it lacks {missing}.")
            fields = (item["prompt"], item["completion"], item["label"])
        elif isinstance(item, dict):
            fields = _pair_fields(item, name)
        elif isinstance(item, (list, tuple)) and len(item) == 3:
            fields = tuple(item)
        else:
            raise TypeError(
                f"{name} must be a (prompt, completion, desirable: bool) row, a (prompt, "
                "chosen, rejected) pair, or their dict forms. Received: "
                f"{type(item).__name__} {str(item)[:60]!r}")
        prompt, completion, third = fields
        if isinstance(third, (bool, np.bool_)):
            rows.append((prompt, completion, bool(third), index, name))
        elif isinstance(third, str):
            _check_different(completion, third, name)
            rows.append((prompt, completion, True, index, f"{name} (chosen)"))
            undesirable.append((prompt, third, False, index, f"{name} (rejected)"))
        else:
            raise TypeError(
                f"{name}: the third field must be a bool (desirable) for an unpaired row or "
                f"a str (rejected) for a pair. Received: {type(third).__name__}")
    return rows + undesirable


def kto_examples(examples, tokenizer, template=DEFAULT_CHAT_TEMPLATE, start_token_id=None,
                 batch_size=1024):
    """Tokenizes unpaired KTO rows (pairs are unpaired).

    Each input is an unpaired row `(prompt, completion, desirable)` or
    `{"prompt", "completion", "label"}` (TRL's unpaired format, `label`
    True for desirable), or a pair `(prompt, chosen, rejected)` /
    `{"prompt", "chosen", "rejected"}`, which gives a desirable row (at its
    place) and an undesirable row (after all the input's rows, in order).
    Prompts and completions are rendered and tokenized as
    `tokenize_preference_pairs` does.

    Args:
        examples: a list of rows and pairs (they may be mixed).
        tokenizer, template, start_token_id, batch_size: as
            `tokenize_preference_pairs`.

    Returns:
        `KTOExamples` (rows in the order above; `source_index` names each
        row's input, `names` how errors name it: the input's `where`, else
        `examples[i]`, with `(chosen)` or `(rejected)` for a pair's rows).

    Raises:
        ValueError, TypeError: as `tokenize_preference_pairs` (an input is
            named by its `where`, else `examples[i]`), or a third field
            that is neither a bool nor a str.

    Example:

    >>> import keras_hub
    >>> from kobjectives.data.chat import add_chat_tokens
    >>> vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "hi", "hello", "go", "!"])
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    >>> rows = kto_examples([("hi", "hello", "go"), ("hi", "go!", False)], tokenizer)
    >>> [[vocabulary[i] for i in ids] for ids in rows.completion_ids]
    [['hello', '<|end|>'], ['go', '!', '<|end|>'], ['go', '<|end|>']]
    >>> rows.desirable.tolist(), rows.source_index.tolist()
    ([True, False, False], [0, 1, 0])
    """
    _check_template(template)
    start_token_id = _check_int("start_token_id", start_token_id, 0, allow_none=True)
    rows = _kto_rows(_check_tokenizer_inputs(examples, "examples"))
    texts = []
    for prompt, completion, _, _, name in rows:
        prompt_text, completion_text = _split_prompt(prompt, completion, template, name)
        texts.append((prompt_text, [completion_text]))
    tokenized = _tokenize_prompt_completions(texts, tokenizer, template, batch_size)
    for (prompt, _), row in zip(tokenized, rows):
        _check_prompt_tokens(prompt, start_token_id, row[4])
    return KTOExamples(
        [prompt for prompt, _ in tokenized],
        [completions[0] for _, completions in tokenized],
        np.asarray([row[2] for row in rows], bool),
        np.asarray([row[3] for row in rows], np.int64),
        start_token_id, [row[4] for row in rows])


# ---------------------------------------------------------------------------
# Truncation and layout.
# ---------------------------------------------------------------------------


def _kept_lengths(prompt_length, completion_lengths, room, truncation, max_prompt_length,
                  name):
    """`(prompt tokens kept, [completion tokens kept])` by the documented
    rule; `room` is the window less the start token."""
    longest = max(completion_lengths)
    if prompt_length + longest <= room:
        return prompt_length, list(completion_lengths)
    if truncation == "error":
        raise PairLengthError(name, truncation, prompt_length, longest, room)
    if truncation == "keep_end":
        prompt_kept = min(prompt_length, max(room - longest, max_prompt_length))
    else:
        prompt_kept = prompt_length
        if prompt_kept >= room:
            raise PairLengthError(name, truncation, prompt_length, longest, room)
    return prompt_kept, [min(length, room - prompt_kept) for length in completion_lengths]


def default_max_prompt_length(room):
    """The fewest prompt tokens `"keep_end"` keeps when no
    `max_prompt_length` is given: half the `room` (the window less the
    start token), at least 1.

    Example:

    >>> default_max_prompt_length(255), default_max_prompt_length(1)
    (127, 1)
    """
    return max(1, room // 2)


def _resolve_lengths(sequence_length, start_token_id, max_prompt_length):
    start = int(start_token_id is not None)
    sequence_length = _check_int("sequence_length", sequence_length, 2 + start)
    room = sequence_length - start
    if max_prompt_length is None:
        return sequence_length, room, default_max_prompt_length(room)
    max_prompt_length = _check_int("max_prompt_length", max_prompt_length, 1)
    if max_prompt_length >= room:
        raise ValueError(
            f"`max_prompt_length` ({max_prompt_length}) must leave room for a completion "
            f"token: at most {room - 1} with sequence_length={sequence_length}"
            f"{' and a start token' if start else ''}.")
    return sequence_length, room, max_prompt_length


def _empty_arrays(count, sequence_length, pad_token_id, prefix=""):
    return {
        f"{prefix}token_ids": np.full((count, sequence_length), pad_token_id, np.int32),
        f"{prefix}padding_mask": np.zeros((count, sequence_length), bool),
        f"{prefix}completion_mask": np.zeros((count, sequence_length), np.int32),
    }


def _fill(arrays, prefix, row, start, prompt, completion):
    """Lays `[start] prompt completion` out in row `row` of the arrays."""
    ids = ([] if start is None else [start]) + list(prompt) + list(completion)
    arrays[f"{prefix}token_ids"][row, :len(ids)] = ids
    arrays[f"{prefix}padding_mask"][row, :len(ids)] = True
    arrays[f"{prefix}completion_mask"][row, len(ids) - len(completion):len(ids)] = 1


def _check_container(examples, cls, producer):
    if not isinstance(examples, cls):
        raise TypeError(
            f"`examples` must be kobjectives.data.{cls.__name__} (from {producer}). "
            f"Received: {type(examples).__name__}")
    if len(examples) == 0:
        raise ValueError("`examples` is empty: there is nothing to lay out.")
    fields = [field.name for field in dataclasses.fields(cls)
              if field.name not in ("start_token_id", "names")]
    if examples.names is not None:
        fields.append("names")
    counts = {field: len(getattr(examples, field)) for field in fields}
    if len(set(counts.values())) != 1:
        raise ValueError(f"The fields of `examples` differ in length: {counts}.")


def preference_arrays(examples, sequence_length, truncation="keep_end", max_prompt_length=None,
                      pad_token_id=0):
    """Lays tokenized pairs out as numpy arrays, one row per pair and side.

    Row `i` of the `chosen_*` arrays is `[start] prompt_i chosen_i` and of
    the `rejected_*` arrays `[start] prompt_i rejected_i`, both truncated
    by `truncation` (the module's rule: the prompt is cut once, the same
    for both sides) and right-padded to `sequence_length`.

    Args:
        examples: `PreferenceExamples` (`tokenize_preference_pairs`).
        sequence_length: int, the window length.
        truncation: `"keep_end"` (the default; the prompt's start is cut
            first, down to `max_prompt_length`, then the completions' end),
            `"keep_start"` (the completions' end is cut; the prompt never)
            or `"error"`.
        max_prompt_length: optional int >= 1, the fewest prompt tokens
            `"keep_end"` keeps when the completions are long; defaults to
            half the window (less the start token). Must leave room for a
            completion token.
        pad_token_id: int, the id of padded positions.

    Returns:
        A dict of numpy arrays `[num_pairs, sequence_length]`, the keys of
        `PAIR_KEYS`: `*_token_ids` int32, `*_padding_mask` bool,
        `*_completion_mask` int32.

    Raises:
        ValueError: bad arguments; a pair too long with
            `truncation="error"`, or whose completion keeps no token with
            `"keep_start"` (both a `PairLengthError`); chosen and rejected
            identical once truncated (each names the pair, `examples.name(i)`:
            its `"file:line"` or `pairs[i]`, and the fix).

    Example:

    >>> examples = PreferenceExamples([np.array([5, 6, 7])], [np.array([8, 9])],
    ...                               [np.array([10, 11, 12])], start_token_id=2)
    >>> out = preference_arrays(examples, sequence_length=6)  # prompt's start cut
    >>> out["chosen_token_ids"].tolist(), out["rejected_token_ids"].tolist()
    ([[2, 6, 7, 8, 9, 0]], [[2, 6, 7, 10, 11, 12]])
    >>> out["chosen_completion_mask"].tolist(), out["rejected_padding_mask"].tolist()
    ([[0, 0, 0, 1, 1, 0]], [[True, True, True, True, True, True]])
    >>> preference_arrays(examples, 6, truncation="keep_start")["rejected_token_ids"].tolist()
    [[2, 5, 6, 7, 10, 11]]
    """
    _check_container(examples, PreferenceExamples, "tokenize_preference_pairs")
    _check_truncation(truncation)
    start = examples.start_token_id
    sequence_length, room, max_prompt_length = _resolve_lengths(
        sequence_length, start, max_prompt_length)
    pad_token_id = _check_int("pad_token_id", pad_token_id, 0)
    count = len(examples)
    arrays = {**_empty_arrays(count, sequence_length, pad_token_id, "chosen_"),
              **_empty_arrays(count, sequence_length, pad_token_id, "rejected_")}
    for index, (prompt, chosen, rejected) in enumerate(zip(
            examples.prompt_ids, examples.chosen_ids, examples.rejected_ids)):
        name = examples.name(index)
        if not len(chosen) or not len(rejected):
            raise ValueError(f"{name}: an empty completion; there is nothing to score.")
        _check_prompt_tokens(prompt, start, name)
        prompt_kept, (chosen_kept, rejected_kept) = _kept_lengths(
            len(prompt), (len(chosen), len(rejected)), room, truncation, max_prompt_length,
            name)
        prompt = prompt[len(prompt) - prompt_kept:]
        chosen, rejected = chosen[:chosen_kept], rejected[:rejected_kept]
        if np.array_equal(chosen, rejected):
            raise ValueError(
                f"{name}: chosen and rejected are the same once truncated to "
                f"sequence_length={sequence_length} (their first {len(chosen)} completion "
                "tokens agree), so the pair prefers nothing. Raise `sequence_length`, "
                "lower `max_prompt_length`, or drop the pair.")
        _fill(arrays, "chosen_", index, start, prompt, chosen)
        _fill(arrays, "rejected_", index, start, prompt, rejected)
    return arrays


def collapsed_pairs(examples, sequence_length, truncation="keep_end", max_prompt_length=None):
    """The indices of the pairs that `preference_arrays` refuses because
    chosen and rejected are identical once truncated (long answers that
    differ only past the window): drop them before building the data.

    Args:
        examples: `PreferenceExamples`.
        sequence_length, truncation, max_prompt_length: as
            `preference_arrays`.

    Returns:
        A sorted list of int indices into `examples`.

    Raises:
        PairLengthError: a pair `preference_arrays` refuses for its length
            (`truncation="error"`, or `"keep_start"` leaving no completion
            token).

    Example:

    >>> examples = PreferenceExamples(
    ...     [np.array([5])] * 2, [np.array([8, 9, 9]), np.array([8])],
    ...     [np.array([8, 9, 7]), np.array([7])], start_token_id=2)
    >>> collapsed_pairs(examples, sequence_length=4)  # pair 0 keeps [8, 9] on both sides
    [0]
    """
    _check_container(examples, PreferenceExamples, "tokenize_preference_pairs")
    _check_truncation(truncation)
    _, room, max_prompt_length = _resolve_lengths(
        sequence_length, examples.start_token_id, max_prompt_length)
    collapsed = []
    for index, (prompt, chosen, rejected) in enumerate(zip(
            examples.prompt_ids, examples.chosen_ids, examples.rejected_ids)):
        if not len(chosen) or not len(rejected):
            continue
        _, (chosen_kept, rejected_kept) = _kept_lengths(
            len(prompt), (len(chosen), len(rejected)), room, truncation, max_prompt_length,
            examples.name(index))
        if np.array_equal(chosen[:chosen_kept], rejected[:rejected_kept]):
            collapsed.append(index)
    return collapsed


def length_balanced_pairs(examples, bins=10, seed=0):
    """The indices of a subset of `examples` in which the length of an
    answer says nothing about which one was chosen.

    Human preference data often favours the longer answer (the HH-RLHF
    helpful train subsets choose it 57% of the time), and a reward model
    trained on it learns length before content; that does not transfer to
    data with the opposite bias. Length balancing (Singhal et al., 2023)
    removes the shortcut from the training pairs: the pairs are binned by
    the absolute difference of their answers' token counts (`bins`
    quantile bins; pairs of equal counts are kept, they carry no length
    signal), and in every bin pairs are dropped at random from the larger
    side (chosen longer, or chosen shorter) until both sides are equal.
    Within a bin the longer answer then wins exactly half the time, so no
    function of the length difference predicts the preference.

    Args:
        examples: `PreferenceExamples` (lengths are the untruncated
            completion token counts).
        bins: int >= 1, the number of quantile bins of the length difference.
        seed: int, which pairs are dropped.

    Returns:
        A sorted list of int indices into `examples`.

    Reference:
        Singhal et al., 2023, "A Long Way to Go: Investigating Length
        Correlations in RLHF", https://arxiv.org/abs/2310.03716 (balancing
        the preference data by length).

    Example:

    >>> examples = PreferenceExamples(
    ...     [np.array([5])] * 4, [np.array([7, 7]), np.array([7, 7]), np.array([7]), np.array([7])],
    ...     [np.array([8]), np.array([8]), np.array([8, 8]), np.array([8])])
    >>> length_balanced_pairs(examples, bins=1)  # one 'longer chosen' pair dropped
    [0, 2, 3]
    """
    _check_container(examples, PreferenceExamples, "tokenize_preference_pairs")
    _check_int("bins", bins, 1)
    chosen = np.array([len(ids) for ids in examples.chosen_ids], np.int64)
    rejected = np.array([len(ids) for ids in examples.rejected_ids], np.int64)
    difference = np.abs(chosen - rejected)
    unequal = np.flatnonzero(difference > 0)
    keep = [np.flatnonzero(difference == 0)]
    if unequal.size:
        edges = np.quantile(difference[unequal], np.linspace(0.0, 1.0, bins + 1)[1:-1])
        which = np.searchsorted(edges, difference[unequal], side="right")
        rng = np.random.default_rng(seed)
        for bin_index in range(bins):
            members = unequal[which == bin_index]
            longer = members[chosen[members] > rejected[members]]
            shorter = members[chosen[members] < rejected[members]]
            size = min(len(longer), len(shorter))
            keep += [rng.permutation(longer)[:size], rng.permutation(shorter)[:size]]
    return sorted(int(i) for i in np.concatenate(keep))


def _kl_partners(count, group_size):
    """The row whose completion each row takes for KTO's KL term: the
    previous row of its group of `group_size` consecutive rows (the first
    takes the last's, TRL's shift by one); a last group of one row joins
    the group before it."""
    starts = list(range(0, count, group_size))
    if count - starts[-1] == 1 and len(starts) > 1:
        starts.pop()
    partners = np.empty(count, np.int64)
    for position, start in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else count
        group = np.arange(start, end)
        partners[group] = np.roll(group, 1)
    return partners


def kto_arrays(examples, sequence_length, truncation="keep_end", max_prompt_length=None,
               pad_token_id=0, kl_batch_size=8):
    """Lays KTO rows and their mismatched KL rows out as numpy arrays.

    Row `i` is `[start] prompt_i completion_i`; KL row `i` is `[start]
    prompt_i completion_j` with `j` the previous row of `i`'s group of
    `kl_batch_size` consecutive rows (the first row of a group takes the
    last row's completion; a final group of one row joins the group before
    it). Each row and each KL row is truncated by `truncation` on its own
    (`preference_arrays`' rule with one completion).

    Args:
        examples: `KTOExamples` (`kto_examples`), at least 2 rows.
        sequence_length, truncation, max_prompt_length, pad_token_id: as
            `preference_arrays`.
        kl_batch_size: int >= 2, the group size of the KL shift (TRL: the
            batch size).

    Returns:
        A dict of numpy arrays, the keys of `KTO_KEYS`: `token_ids`,
        `kl_token_ids` int32, `padding_mask`, `kl_padding_mask` bool,
        `completion_mask`, `kl_completion_mask` int32, all `[num_rows,
        sequence_length]`, and `desirable` bool `[num_rows]`.

    Raises:
        ValueError: fewer than 2 rows, bad arguments, or a row too long /
            left without completion as `preference_arrays` (named
            `examples.name(i)`, KL rows with their partner).

    Example:

    >>> rows = KTOExamples([np.array([5]), np.array([6]), np.array([7])],
    ...                    [np.array([10]), np.array([11]), np.array([12, 13])],
    ...                    np.array([True, True, False]), np.arange(3))
    >>> out = kto_arrays(rows, sequence_length=4, kl_batch_size=3)
    >>> out["token_ids"].tolist()
    [[5, 10, 0, 0], [6, 11, 0, 0], [7, 12, 13, 0]]
    >>> out["kl_token_ids"].tolist()  # each prompt with the previous row's completion
    [[5, 12, 13, 0], [6, 10, 0, 0], [7, 11, 0, 0]]
    """
    _check_container(examples, KTOExamples, "kto_examples")
    _check_truncation(truncation)
    kl_batch_size = _check_int("kl_batch_size", kl_batch_size, 2)
    count = len(examples)
    if count < 2:
        raise ValueError(
            "KTO needs at least 2 rows: the KL term pairs each prompt with another row's "
            f"completion. Received {count}.")
    start = examples.start_token_id
    sequence_length, room, max_prompt_length = _resolve_lengths(
        sequence_length, start, max_prompt_length)
    pad_token_id = _check_int("pad_token_id", pad_token_id, 0)
    arrays = {**_empty_arrays(count, sequence_length, pad_token_id),
              **_empty_arrays(count, sequence_length, pad_token_id, "kl_")}
    partners = _kl_partners(count, kl_batch_size)
    for index, prompt in enumerate(examples.prompt_ids):
        partner = int(partners[index])
        for prefix, completion, name in (
                ("", examples.completion_ids[index], examples.name(index)),
                ("kl_", examples.completion_ids[partner],
                 f"{examples.name(index)} (KL row, with the completion of "
                 f"{examples.name(partner)})")):
            if not len(completion):
                raise ValueError(f"{name}: an empty completion; there is nothing to score.")
            _check_prompt_tokens(prompt, start, name)
            prompt_kept, (kept,) = _kept_lengths(
                len(prompt), (len(completion),), room, truncation, max_prompt_length, name)
            _fill(arrays, prefix, index, start, prompt[len(prompt) - prompt_kept:],
                  completion[:kept])
    arrays["desirable"] = np.asarray(examples.desirable, bool)
    return arrays


# ---------------------------------------------------------------------------
# tf.data.
# ---------------------------------------------------------------------------


def _with_extra_features(arrays, extra_features, count):
    if extra_features is None:
        return arrays
    if not isinstance(extra_features, dict):
        raise TypeError(
            "`extra_features` must be a dict {name: array [num_examples, ...]}. Received: "
            f"{type(extra_features).__name__}")
    arrays = dict(arrays)
    for key, values in extra_features.items():
        if not isinstance(key, str) or key in arrays:
            raise ValueError(
                f"extra_features[{key!r}]: the name must be a str other than the dataset's "
                f"own keys {sorted(arrays)}.")
        values = np.asarray(values)
        if values.ndim < 1 or values.shape[0] != count:
            raise ValueError(
                f"extra_features[{key!r}] has shape {values.shape}; its first dimension must "
                f"be the number of examples ({count}), in example order.")
        if np.issubdtype(values.dtype, np.floating):
            bad = np.flatnonzero(~np.isfinite(values.reshape(count, -1)).all(axis=1))
            if bad.size:
                raise ValueError(
                    f"extra_features[{key!r}][{int(bad[0])}] is not finite ({bad.size} rows "
                    "are not); precomputed values must be finite numbers.")
            values = values.astype(np.float32)
        arrays[key] = values
    return arrays


def _dataset(arrays, count, batch_size, shuffle, seed, repeat, drop_remainder, cache, what):
    if drop_remainder and count < batch_size:
        raise ValueError(
            f"There are {count} {what}, fewer than batch_size={batch_size}, so "
            "drop_remainder=True leaves no batch. Give more, a smaller batch_size, or "
            "drop_remainder=False.")
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if cache:
        dataset = dataset.cache()
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


def preference_dataset(examples, sequence_length, batch_size, truncation="keep_end",
                       max_prompt_length=None, pad_token_id=0, shuffle=True, seed=0,
                       repeat=False, drop_remainder=True, cache=False, extra_features=None):
    """Batches of preference pairs with static shapes.

    Each element is a dict of the `PAIR_KEYS`, `[batch_size,
    sequence_length]` each (`preference_arrays`: chosen and rejected rows
    share their prompt and length, so an objective concatenates them on the
    batch axis and runs the policy once), plus the `extra_features` (e.g.
    `REFERENCE_LOGPS_KEYS`, float32 `[batch_size]`). With the defaults the
    pairs are shuffled (seeded, a new order every epoch) and the last
    smaller batch is dropped. To precompute per-pair values (the reference
    policy's log-probabilities), iterate `shuffle=False,
    drop_remainder=False`: its batches follow the pair order.

    Args:
        examples: `PreferenceExamples` (`tokenize_preference_pairs`).
        sequence_length: int, the window length.
        batch_size: int, pairs per batch (the global batch).
        truncation, max_prompt_length, pad_token_id: as
            `preference_arrays`.
        shuffle: shuffle the pairs (seeded, every epoch).
        seed: int, the shuffle seed.
        repeat: repeat forever.
        drop_remainder: drop the last, smaller batch (static shapes).
        cache: cache the batches after the first pass.
        extra_features: optional dict `{name: array [num_pairs, ...]}` of
            per-pair values carried with their pair (float64 becomes
            float32; floats must be finite).

    Returns:
        A `tf.data.Dataset` of dicts.

    Raises:
        ValueError: as `preference_arrays`; fewer pairs than `batch_size`
            with `drop_remainder=True`; a malformed `extra_features` entry.

    Example:

    >>> examples = PreferenceExamples([np.array([5]), np.array([6, 7])],
    ...                               [np.array([8]), np.array([9])],
    ...                               [np.array([10, 11]), np.array([8])])
    >>> dataset = preference_dataset(
    ...     examples, sequence_length=4, batch_size=2, shuffle=False,
    ...     extra_features={"reference_chosen_logps": [-1.0, -2.0],
    ...                     "reference_rejected_logps": [-3.0, -4.0]})
    >>> batch = next(iter(dataset))
    >>> batch["chosen_token_ids"].numpy().tolist(), batch["rejected_token_ids"].numpy().tolist()
    ([[5, 8, 0, 0], [6, 7, 9, 0]], [[5, 10, 11, 0], [6, 7, 8, 0]])
    >>> batch["reference_rejected_logps"].numpy().tolist()
    [-3.0, -4.0]
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    arrays = preference_arrays(examples, sequence_length, truncation=truncation,
                               max_prompt_length=max_prompt_length, pad_token_id=pad_token_id)
    arrays = _with_extra_features(arrays, extra_features, len(examples))
    return _dataset(arrays, len(examples), batch_size, shuffle, seed, repeat, drop_remainder,
                    cache, "pairs")


def kto_dataset(examples, sequence_length, batch_size, truncation="keep_end",
                max_prompt_length=None, pad_token_id=0, kl_batch_size=None, shuffle=True,
                seed=0, repeat=False, drop_remainder=True, cache=False, extra_features=None):
    """Batches of KTO rows and their mismatched KL rows, static shapes.

    Each element is a dict of the `KTO_KEYS` (`kto_arrays`): `token_ids`,
    `padding_mask`, `completion_mask` and `kl_*` of `[batch_size,
    sequence_length]` (concatenate the rows and KL rows on the batch axis to
    run the policy once), `desirable` bool `[batch_size]`, plus the
    `extra_features` (e.g. `KTO_REFERENCE_LOGPS_KEYS`). The KL pairs are
    formed once, in row order, in groups of `kl_batch_size` (TRL's shift by
    one within a batch), before the rows are shuffled.

    Args:
        examples: `KTOExamples` (`kto_examples`).
        sequence_length: int, the window length.
        batch_size: int, rows per batch.
        truncation, max_prompt_length, pad_token_id: as
            `preference_arrays`.
        kl_batch_size: optional int >= 2, the KL group size; defaults to
            `batch_size` (at least 2).
        shuffle, seed, repeat, drop_remainder, cache, extra_features: as
            `preference_dataset` (`extra_features` per row).

    Returns:
        A `tf.data.Dataset` of dicts.

    Raises:
        ValueError: as `kto_arrays` and `preference_dataset`.

    Example:

    >>> rows = KTOExamples([np.array([5]), np.array([6])], [np.array([10]), np.array([11])],
    ...                    np.array([True, False]), np.arange(2))
    >>> batch = next(iter(kto_dataset(rows, sequence_length=3, batch_size=2, shuffle=False)))
    >>> batch["kl_token_ids"].numpy().tolist(), batch["desirable"].numpy().tolist()
    ([[5, 11, 0], [6, 10, 0]], [True, False])
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if kl_batch_size is None:
        kl_batch_size = max(2, batch_size)
    arrays = kto_arrays(examples, sequence_length, truncation=truncation,
                        max_prompt_length=max_prompt_length, pad_token_id=pad_token_id,
                        kl_batch_size=kl_batch_size)
    arrays = _with_extra_features(arrays, extra_features, len(examples))
    return _dataset(arrays, len(examples), batch_size, shuffle, seed, repeat, drop_remainder,
                    cache, "rows")


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


def _hh_pair(row):
    """`(prompt conversation, chosen, rejected)` of one HH-RLHF row; a
    ValueError says why a row is malformed."""
    prefix = row.get("prompt", "")
    chosen = parse_hh_rlhf(prefix + row["chosen"])
    rejected = parse_hh_rlhf(prefix + row["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("a dialogue does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("the chosen and rejected dialogues differ before their last turn")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise ValueError("the chosen and rejected answers are the same")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def read_hh_rlhf_pairs(path, subsets=HH_RLHF_TRAIN_SUBSETS, allow_reserved=False, limit=None,
                       invalid="skip"):
    """Reads HH-RLHF dialogues as `(prompt, chosen, rejected)` pairs.

    The chosen and rejected dialogues of a row share every turn but the
    last assistant turn: the prompt is that shared conversation (ending
    with the user's turn), chosen and rejected are the two final answers.
    `path` and the subsets are read as `kobjectives.data.read_hh_rlhf`
    reads them (a directory of `{subset}.*.jsonl.gz` files of `{"chosen",
    "rejected"}` dialogues, or one JSONL file whose rows may carry
    `"subset"` and `"prompt"`, as `hh_test_prompt_chosen_rejected.jsonl`).
    `helpful-online` is reserved for the final evaluation: asking for it
    raises unless `allow_reserved=True`.

    A row is malformed when a dialogue does not parse
    (`kobjectives.data.parse_hh_rlhf`), does not end with an assistant
    turn, the two dialogues differ before their last turn, or the two
    answers are the same (36 of the 8,545 rows of the derived test file).
    With `invalid="skip"` they are left out with one
    `kobjectives.data.chat.SkippedRowsWarning` counting them; with
    `"error"` the first raises, naming its file and line.

    Args:
        path: str or path-like, the directory or file.
        subsets: iterable of subset names; defaults to the train subsets.
        allow_reserved: bool, allow a reserved subset (final evaluation).
        limit: optional int >= 1, stop after this many pairs.
        invalid: `"skip"` or `"error"`.

    Returns:
        A list of `(conversation, chosen, rejected)` tuples, in file order
        (`Located`: `where` is their `"file:line"`).

    Raises:
        ValueError: an unknown or reserved subset, a row without
            `chosen` / `rejected`, no pair read, or (with `invalid="error"`)
            a malformed row.
        FileNotFoundError: a missing path or subset file.

    Reference:
        Bai et al., 2022, "Training a Helpful and Harmless Assistant with
        Reinforcement Learning from Human Feedback",
        https://arxiv.org/abs/2204.05862

    Example:

    >>> import gzip, json, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> row = {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!",
    ...        "rejected": "\\n\\nHuman: Hi\\n\\nAssistant: Go away."}
    >>> with gzip.open(os.path.join(folder, "helpful-base.test.jsonl.gz"), "wt") as f:
    ...     _ = f.write(json.dumps(row) + "\\n")
    >>> read_hh_rlhf_pairs(folder, subsets=["helpful-base"])
    [([{'role': 'user', 'content': 'Hi'}], 'Hello!', 'Go away.')]
    """
    subsets = _check_hh_subsets(subsets, allow_reserved)
    limit = _check_int("limit", limit, 1, allow_none=True)
    return [Located(pair, where) for pair, where in _read_hh_rows(
        path, subsets, ("chosen", "rejected"), _hh_pair, invalid, limit,
        "read_hh_rlhf_pairs", "pair")]


def looping_answer(answer, rng, max_loop_words=4):
    """`answer` as a degenerate decoder writes it: a loop after its start.

    The first `k` words of `answer` (split on whitespace; `k` uniform in
    `1 .. n - 2` for its `n` words), then the `m` words before word `k`
    (`m` uniform in `1 .. min(max_loop_words, k)`) repeated, one word at a
    time, to the length in characters nearest that of `answer` less its
    final punctuation (at least one word repeated), then that punctuation
    (one of `.!?:`), if any. The two are about as long, so that their
    lengths say little of which is which.

    Args:
        answer: str, at least three words.
        rng: a `numpy.random.Generator`; two draws.
        max_loop_words: int >= 1, the longest loop.

    Returns:
        str; it can equal `answer` when `answer` itself repeats (`"a a a"`).

    Example:

    >>> import numpy as np
    >>> looping_answer("Fry the eggs in a pan.", np.random.default_rng(1))
    'Fry the Fry the Fry the.'
    """
    max_loop_words = _check_int("max_loop_words", max_loop_words, 1)
    words = answer.split()
    if len(words) < 3:
        raise ValueError(f"`answer` needs at least three words to loop. Received: {answer!r}")
    stop = answer[-1] if answer[-1] in ".!?:" else ""
    target = len(answer) - len(stop)
    kept = int(rng.integers(1, len(words) - 1))
    loop = words[kept - int(rng.integers(1, min(max_loop_words, kept) + 1)):kept]
    text = " ".join(words[:kept])
    index = 0
    while len(text) < target:
        longer = f"{text} {loop[index % len(loop)]}"
        if index and len(longer) - target > target - len(text):
            break  # one word more would be further from the length
        text, index = longer, index + 1
    return text.rstrip(stop) + stop  # rstrip("") strips nothing


def corpus_preference_pairs(seed=0, limit=None, max_characters=300,
                            template=DEFAULT_CHAT_TEMPLATE, root=None):
    """The default preference task, derived from the embedded corpus:
    prefer the answer that does not loop.

    The rule:

    1. The pairs of `kobjectives.data.prompt_completion_task(max_examples=
       limit, max_characters, template=template, root=root)`: a documented
       standard-library name's question, `"What does json.dumps do?"`, and
       its docstring's first paragraph.
    2. The prompt is that question as one user turn (as the sft run
       renders the task); chosen is the true paragraph.
    3. Rejected is the same paragraph falling into a loop
       (`looping_answer`, drawn with a `numpy` generator seeded by `seed`
       in pair order): `"Fry the Fry the Fry the."` or `"Fry the eggs in
       in in."` for `"Fry the eggs in a pan."`, about as long. Paragraphs
       of fewer than three words, and those whose loop gives them back
       unchanged (`"a a a"`), are left out.

    Repetition is a common failure of a small model's greedy answers
    (Holtzman et al. 2020, https://arxiv.org/abs/1904.09751), and a causal
    LM trained on the answers gives such loops nearly as much probability
    as the true answer (the default `sft` run prefers the true one on 57%
    of held-out pairs), so a reward model and DPO have something to learn
    here that the starting policy gets wrong. (Until 2026-12-07 rejected was a
    sibling name's paragraph, `json.loads`' for `json.dumps`: a relevance
    task that the default tiny models could not learn; the reward model and
    DPO stayed at chance on it.)

    The same Python, `seed` and arguments give the same pairs in every
    process; chosen never equals rejected.

    Args:
        seed: int, seeds the loops.
        limit: optional int >= 1, the most pairs read from the corpus
            (chosen by content hash, as `prompt_completion_task`'s
            `max_examples`), before the short ones are left out.
        max_characters: int, the longest paragraph.
        template: the `ChatTemplate` the pairs are for (texts holding its
            markers are dropped).
        root: optional directory read instead of the standard library.

    Returns:
        A list of `(conversation, chosen, rejected)` tuples (`Located`:
        `where` is `"the corpus pair about json.dumps"`).

    Raises:
        ValueError: bad arguments, or no paragraph of three words or more.

    Reference:
        Welleck et al., 2020, "Neural Text Generation with Unlikelihood
        Training", https://arxiv.org/abs/1908.04319 (repetition as the
        failure to train away).

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "spam.py").write_text(
    ...     "def fry(eggs):\\n    '''Fry the eggs in a pan.'''\\n"
    ...     "def boil(eggs):\\n    '''Boil them.'''\\n")
    >>> for pair in corpus_preference_pairs(seed=1, root=root):
    ...     print(pair)
    ([{'role': 'user', 'content': 'What does spam.fry do?'}], 'Fry the eggs in a pan.', 'Fry the Fry the Fry the.')
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int. Received: {seed!r}")
    limit = _check_int("limit", limit, 1, allow_none=True)
    examples = prompt_completion_task(
        max_examples=limit, max_characters=max_characters, template=template, root=root)
    before, after = PROMPT_TEMPLATE.split("{name}")
    rng = np.random.default_rng(seed)
    pairs = []
    for example in examples:
        chosen = example["completion"]
        if len(chosen.split()) < 3:
            continue
        rejected = looping_answer(chosen, rng)
        if rejected != chosen:
            name = example["prompt"][len(before):len(example["prompt"]) - len(after)]
            pairs.append(Located(([{"role": "user", "content": example["prompt"]}], chosen,
                                  rejected), f"the corpus pair about {name}"))
    if not pairs:
        raise ValueError(
            f"None of the corpus' {len(examples)} paragraph(s) has three words or more to "
            "loop; a preference task needs one. Raise `limit` or read another `root`.")
    return pairs
