"""Chat conversations for supervised fine-tuning: a template with role
markers, and the Anthropic HH-RLHF dialogues.

A conversation is a list of turns, `{"role": "system" | "user" |
"assistant", "content": str}`: an optional first `system` turn, then `user`
and `assistant` turns alternating, starting with `user`.

`ChatTemplate` renders it as text with one marker per role and an end
marker closing every turn (the default markers)::

    <|system|>
    {system}<|end|>
    <|user|>
    {user}<|end|>
    <|assistant|>
    {assistant}<|end|>
    ...

and as segments `(text, is_completion)`: the assistant contents with their
end marker are completions (what the model learns to write, and to stop
with `<|end|>`); everything else, the assistant marker included, is
prompt. At generation time the prompt is the rendered history followed by
`<|assistant|>\\n` (`ChatTemplate.generation_prompt`).

The markers are single tokens of the vocabulary, never pieces of text:
WordPiece splits `<`, `|` and `>` off as punctuation, so a vocabulary
trained with `kobjectives.data.train_wordpiece` never produces them from
text. Append them with `add_chat_tokens(vocabulary)`;
`kobjectives.data.tokenize_sft_examples` looks each marker up by
`tokenizer.token_to_id` and tokenizes only the text between markers. To
tokenize rendered text at serving time, build the tokenizer with
`special_tokens=template.markers, special_tokens_in_strings=True`
(keras-hub's `WordPieceTokenizer`): it gives the same ids. A turn whose
content contains a marker is refused, so text cannot forge a role.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import re
import warnings

ROLES = ("system", "user", "assistant")
"""The roles of a conversation's turns."""

HH_RLHF_SUBSETS = (
    "harmless-base",
    "helpful-base",
    "helpful-online",
    "helpful-rejection-sampled",
)
"""The subsets of Anthropic's HH-RLHF data."""

HH_RLHF_TRAIN_SUBSETS = ("helpful-base", "helpful-rejection-sampled", "harmless-base")
"""The HH-RLHF subsets one may train and tune on (`../shared/data/README.md`)."""

RESERVED_HH_RLHF_SUBSETS = ("helpful-online",)
"""The HH-RLHF subsets reserved for final evaluation."""

HH_RLHF_TARGETS = ("chosen", "rejected")

class SkippedRowsWarning(UserWarning):
    """Malformed rows left out of a read (`invalid="skip"`): the message
    counts them, names the first by file and line, and says how to stop at
    them instead (`invalid="error"`). A run reports `count` and `first` in
    its own words (its recipe has no `invalid` key).

    Attributes:
        count: int, the rows left out.
        first: str, the first one, `"file:line: why"`.

    Example:

    >>> warning = SkippedRowsWarning("2 skipped", 2, "a.jsonl:3: no turn")
    >>> str(warning), warning.count, warning.first
    ('2 skipped', 2, 'a.jsonl:3: no turn')
    """

    def __init__(self, message, count, first):
        super().__init__(message)
        self.count = count
        self.first = first

    def __reduce__(self):
        return type(self), (str(self), self.count, self.first)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def check_conversation(conversation, name="conversation"):
    """Checks a conversation's structure; returns it as a list of turns.

    Args:
        conversation: a list of `{"role", "content"}` dicts.
        name: how error messages name the conversation (e.g.
            `"examples[3]"`).

    Returns:
        The turns as a list of `(role, content)` tuples.

    Raises:
        TypeError: not a list of dicts, or a content that is not a str.
        ValueError: an empty conversation, a turn without `role` or
            `content`, an unknown role, a blank content, a `system` turn
            that is not the first, or `user` / `assistant` turns that do not
            alternate starting with `user`.

    Example:

    >>> check_conversation([{"role": "user", "content": "Hi"},
    ...                     {"role": "assistant", "content": "Hello!"}])
    [('user', 'Hi'), ('assistant', 'Hello!')]
    >>> check_conversation([{"role": "user", "content": "Hi"},
    ...                     {"role": "user", "content": "Hello?"}])
    Traceback (most recent call last):
    ...
    ValueError: conversation[1]: a 'user' turn follows a 'user' turn; user and assistant turns must alternate, starting with 'user' (merge consecutive turns of one role).
    """
    if isinstance(conversation, (str, bytes, dict)) or not isinstance(conversation, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a list of turns {{'role': ..., 'content': ...}}. "
            f"Received: {type(conversation).__name__}"
        )
    if not conversation:
        raise ValueError(f"`{name}` is empty: a conversation needs at least one turn.")
    turns = []
    expected = "user"
    for index, turn in enumerate(conversation):
        where = f"{name}[{index}]"
        if not isinstance(turn, dict):
            raise TypeError(
                f"{where} must be a dict {{'role': ..., 'content': ...}}. "
                f"Received: {type(turn).__name__}"
            )
        missing = sorted({"role", "content"} - set(turn))
        if missing:
            raise ValueError(f"{where} lacks {missing}: every turn needs 'role' and 'content'.")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}. Valid roles: {list(ROLES)}.")
        if not isinstance(content, str):
            raise TypeError(f"{where}: 'content' must be a str. Received: {type(content).__name__}")
        if not content.strip():
            raise ValueError(
                f"{where}: the {role!r} turn is empty. Drop the conversation or the turn."
            )
        if role == "system":
            if index != 0:
                raise ValueError(
                    f"{where}: a 'system' turn may only be the first turn of a conversation."
                )
        elif role != expected:
            if not turns or turns[-1][0] == "system":
                raise ValueError(
                    f"{where}: the conversation starts with {role!r}; it must start "
                    "with 'user' (after an optional 'system' turn)."
                )
            raise ValueError(
                f"{where}: a {role!r} turn follows a {turns[-1][0]!r} turn; user and "
                "assistant turns must alternate, starting with 'user' (merge "
                "consecutive turns of one role)."
            )
        else:
            expected = "assistant" if role == "user" else "user"
        turns.append((role, content))
    return turns


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Renders conversations with role markers, as text or as prompt and
    completion segments.

    Every turn is `{role marker}\\n{content}{end marker}\\n`. The
    segments of `render` alternate between prompt (`False`) and completion
    (`True`); a completion is an assistant turn's content and its end
    marker, so a model trained on completions only learns to answer and to
    stop. Adjacent prompt pieces are merged (a user turn and the next
    assistant marker are one prompt segment).

    Args:
        system_marker: str, opens a system turn.
        user_marker: str, opens a user turn.
        assistant_marker: str, opens an assistant turn.
        end_marker: str, closes every turn.

    Attributes:
        markers: the four markers, in the order above (pass them to the
            tokenizer as special tokens, `add_chat_tokens`).

    Raises:
        ValueError: a blank or repeated marker, or one containing
            whitespace.

    Example:

    >>> template = ChatTemplate()
    >>> conversation = [{"role": "user", "content": "Hi"},
    ...                 {"role": "assistant", "content": "Hello!"}]
    >>> print(template.render_text(conversation))
    <|user|>
    Hi<|end|>
    <|assistant|>
    Hello!<|end|>
    <BLANKLINE>
    >>> template.render(conversation)
    [('<|user|>\\nHi<|end|>\\n<|assistant|>\\n', False), ('Hello!<|end|>', True), ('\\n', False)]
    >>> template.generation_prompt([{"role": "user", "content": "Hi"}])
    '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """

    system_marker: str = "<|system|>"
    user_marker: str = "<|user|>"
    assistant_marker: str = "<|assistant|>"
    end_marker: str = "<|end|>"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            marker = getattr(self, field.name)
            if not isinstance(marker, str) or not marker.strip() or any(
                    char.isspace() for char in marker):
                raise ValueError(
                    f"`{field.name}` must be a non-empty str without whitespace (one "
                    f"token of the vocabulary). Received: {marker!r}"
                )
        if len(set(self.markers)) != len(self.markers):
            raise ValueError(f"The chat markers must differ. Received: {self.markers}")

    @property
    def markers(self):
        return (self.system_marker, self.user_marker, self.assistant_marker, self.end_marker)

    def _marker(self, role):
        return {
            "system": self.system_marker,
            "user": self.user_marker,
            "assistant": self.assistant_marker,
        }[role]

    def _check_content(self, content, where):
        for marker in self.markers:
            if marker in content:
                raise ValueError(
                    f"{where}: the content contains the chat marker {marker!r}, which "
                    "would be read as a role marker. Remove it from the text, or use a "
                    "ChatTemplate with other markers."
                )

    def render(self, conversation, name="conversation"):
        """The conversation as `(text, is_completion)` segments.

        Args:
            conversation: a list of `{"role", "content"}` turns
                (`check_conversation`).
            name: how error messages name the conversation.

        Returns:
            A list of `(str, bool)`: prompt and completion segments,
            alternating; their concatenation is `render_text(conversation)`.

        Raises:
            ValueError, TypeError: a malformed conversation
                (`check_conversation`), or a content containing a marker.
        """
        segments = []

        def add(text, is_completion):
            if segments and segments[-1][1] == is_completion:
                segments[-1] = (segments[-1][0] + text, is_completion)
            else:
                segments.append((text, is_completion))

        for index, (role, content) in enumerate(check_conversation(conversation, name)):
            self._check_content(content, f"{name}[{index}]")
            add(self._marker(role) + "\n", False)
            if role == "assistant":
                add(content + self.end_marker, True)
                add("\n", False)
            else:
                add(content + self.end_marker + "\n", False)
        return segments

    def render_text(self, conversation):
        """The conversation as one string (the segments of `render`
        joined)."""
        return "".join(text for text, _ in self.render(conversation))

    def render_prompt_completion(self, prompt, completion, name="example"):
        """A prompt/completion pair as segments, without role markers:
        `[(prompt, False), (completion + end_marker, True)]`.

        Args:
            prompt: str (may be empty: the completion is then learned
                unconditionally).
            completion: non-blank str.
            name: how error messages name the pair.

        Returns:
            A list of `(str, bool)` segments.

        Raises:
            TypeError: a prompt or completion that is not a str.
            ValueError: a blank completion, or a marker in either text.

        Example:

        >>> ChatTemplate().render_prompt_completion("2 + 2 =", " 4")
        [('2 + 2 =', False), (' 4<|end|>', True)]
        """
        for key, text in (("prompt", prompt), ("completion", completion)):
            if not isinstance(text, str):
                raise TypeError(f"{name}: {key!r} must be a str. Received: {type(text).__name__}")
            self._check_content(text, f"{name}[{key!r}]")
        if not completion.strip():
            raise ValueError(f"{name}: the completion is empty; there is nothing to learn.")
        segments = [(prompt, False)] if prompt else []
        return segments + [(completion + self.end_marker, True)]

    def generation_prompt(self, conversation):
        """The text to feed a model to generate the next assistant turn:
        the rendered conversation followed by the assistant marker and a
        newline. Generation stops at `end_marker`."""
        text = self.render_text(conversation)
        return text + self.assistant_marker + "\n"


DEFAULT_CHAT_TEMPLATE = ChatTemplate()
"""The default `ChatTemplate` (`<|system|>`, `<|user|>`, `<|assistant|>`,
`<|end|>`)."""


def add_chat_tokens(vocabulary, template=DEFAULT_CHAT_TEMPLATE):
    """Appends a template's markers at the end of a WordPiece vocabulary.

    Text never produces them (WordPiece splits `<`, `|` and `>` off), so
    they are tokens of their own, looked up by
    `kobjectives.data.tokenize_sft_examples`. Pass `template.markers` as
    the tokenizer's `special_tokens` (with `special_tokens_in_strings=True`)
    to read them from rendered text too.

    Args:
        vocabulary: list of str, e.g. from `kobjectives.data.train_wordpiece`.
        template: a `ChatTemplate`.

    Returns:
        A new list: `vocabulary` followed by the markers missing from it.

    Example:

    >>> add_chat_tokens(["[PAD]", "[UNK]", "hi"])
    ['[PAD]', '[UNK]', 'hi', '<|system|>', '<|user|>', '<|assistant|>', '<|end|>']
    """
    present = set(vocabulary)
    return list(vocabulary) + [marker for marker in template.markers if marker not in present]


def parse_hh_rlhf(text):
    """Splits an HH-RLHF dialogue into a conversation.

    The dialogues are `"\\n\\nHuman: ...\\n\\nAssistant: ..."`: each turn
    starts with a blank line and its speaker. `Human` turns become `user`
    turns, `Assistant` turns `assistant` turns; contents are stripped of the
    surrounding whitespace (a turn may hold blank lines of its own).

    Args:
        text: str, a whole dialogue (the `chosen` or `rejected` field).

    Returns:
        A conversation: a list of `{"role", "content"}` dicts, checked by
        `check_conversation`.

    Raises:
        ValueError: text before the first turn, no turn, an empty turn, or
            turns that do not alternate (the message names the turn).

    Reference:
        Bai et al., 2022, "Training a Helpful and Harmless Assistant with
        Reinforcement Learning from Human Feedback",
        https://arxiv.org/abs/2204.05862

    Example:

    >>> parse_hh_rlhf("\\n\\nHuman: Hi there\\n\\nAssistant: Hello!  How can I help?")
    [{'role': 'user', 'content': 'Hi there'}, {'role': 'assistant', 'content': 'Hello!  How can I help?'}]
    """
    if not isinstance(text, str):
        raise TypeError(f"An HH-RLHF dialogue must be a str. Received: {type(text).__name__}")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(
            "An HH-RLHF dialogue starts with '\\n\\nHuman:'; this one starts with "
            f"{parts[0][:40]!r}."
        )
    if len(parts) < 3:
        raise ValueError("The HH-RLHF dialogue holds no 'Human:' or 'Assistant:' turn.")
    conversation = [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]
    check_conversation(conversation, name="dialogue turn")
    return conversation


def _hh_files(path, subsets):
    """`[(file, subset or None)]` to read."""
    if path.is_dir():
        files = []
        for subset in subsets:
            found = sorted(path.glob(f"{subset}.*jsonl*")) + sorted(
                path.glob(f"{subset}/*.jsonl*"))
            if not found:
                raise FileNotFoundError(
                    f"No HH-RLHF file of subset {subset!r} in {path} (looked for "
                    f"{subset}.*jsonl[.gz] and {subset}/*.jsonl[.gz])."
                )
            files += [(file, subset) for file in found]
        return files
    if not path.is_file():
        raise FileNotFoundError(f"No such file or directory: {path}")
    stem = path.name.split(".")[0]
    return [(path, stem if stem in HH_RLHF_SUBSETS else None)]


def _open(path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _check_hh_subsets(subsets, allow_reserved):
    """`subsets` as a tuple of known HH-RLHF subsets; a reserved one needs
    `allow_reserved`."""
    if isinstance(subsets, str):
        subsets = (subsets,)
    subsets = tuple(subsets)
    unknown = sorted(set(subsets) - set(HH_RLHF_SUBSETS))
    if unknown or not subsets:
        raise ValueError(
            f"Unknown HH-RLHF subsets {unknown or '(none given)'}. Valid: {list(HH_RLHF_SUBSETS)}."
        )
    reserved = [subset for subset in subsets if subset in RESERVED_HH_RLHF_SUBSETS]
    if reserved and not allow_reserved:
        raise ValueError(
            f"HH-RLHF subset(s) {reserved} are reserved for final evaluation: pass "
            "allow_reserved=True only for that. Train and tune on "
            f"{list(HH_RLHF_TRAIN_SUBSETS)}."
        )
    return subsets


def _read_hh_rows(path, subsets, fields, parse, invalid, limit, caller, what):
    """`[(parse(row), "file:line")]` of the rows of `subsets` in the HH-RLHF
    file(s) at `path` (`_hh_files`), in file order, at most `limit`.

    A row without one of `fields` raises. A row `parse` refuses (a
    ValueError) is left out with one `SkippedRowsWarning` (`invalid="skip"`)
    or raises naming its file and line (`"error"`). `caller` and `what`
    (`"dialogue"`, `"pair"`) name the reader and its items in messages."""
    if invalid not in ("skip", "error"):
        raise ValueError(f"`invalid` must be 'skip' or 'error'. Received: {invalid!r}")
    path = pathlib.Path(os.fspath(path))
    items, skipped, first_skipped = [], 0, None
    for file, file_subset in _hh_files(path, subsets):
        with _open(file) as lines:
            for number, line in enumerate(lines, 1):
                if limit is not None and len(items) >= limit:
                    break
                if not line.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    row = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{where}: not a JSON object ({error}).") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: not a JSON object (a {type(row).__name__}).")
                subset = row.get("subset", file_subset)
                if subset is not None and subset not in subsets:
                    continue
                missing = [key for key in fields if key not in row]
                if missing:
                    raise ValueError(f"{where}: the row has no {missing[0]!r} field.")
                try:
                    items.append((parse(row), where))
                except ValueError as error:
                    if invalid == "error":
                        raise ValueError(f"{where}: {error}") from None
                    skipped += 1
                    first_skipped = first_skipped or f"{where}: {error}"
        if limit is not None and len(items) >= limit:
            break
    if skipped:
        warnings.warn(SkippedRowsWarning(
            f"{caller} skipped {skipped} malformed {what}(s) (the first: {first_skipped}). "
            "Pass invalid='error' to stop at them.", skipped, first_skipped), stacklevel=3)
    if not items:
        raise ValueError(f"No HH-RLHF {what} of subsets {list(subsets)} in {path}.")
    return items


def read_hh_rlhf(path, subsets=HH_RLHF_TRAIN_SUBSETS, target="chosen", allow_reserved=False,
                 invalid="skip", max_dialogues=None):
    """Reads HH-RLHF dialogues as conversations for chat SFT.

    `path` is either a directory holding one file per subset
    (`{subset}.test.jsonl.gz`, as `../shared/data/hh_rlhf/` does, or
    `{subset}/*.jsonl.gz` as the original repository does), whose rows are
    `{"chosen", "rejected"}` whole dialogues; or one JSONL file (optionally
    gzipped) whose rows may also carry `"subset"` and `"prompt"` (then the
    dialogue is `prompt + row[target]`, as in
    `hh_test_prompt_chosen_rejected.jsonl`). A row's subset is its
    `"subset"` field, else the file's (directory) or the file name's first
    dotted part; rows of other subsets than `subsets` are skipped (a file
    whose rows name no subset and whose name is no subset's is read whole).

    The subset `helpful-online` is reserved for final evaluation
    (`../shared/data/README.md`): asking for it raises unless
    `allow_reserved=True`. Never train, tune or choose hyperparameters on
    it.

    A few dialogues of the data are malformed (about 0.3%: an empty
    assistant turn, two assistant turns in a row). With `invalid="skip"`
    they are left out with one `SkippedRowsWarning` counting them; with
    `"error"` the first one raises, naming its file and line.

    Args:
        path: str or path-like, the directory or file.
        subsets: iterable of subset names; defaults to the train subsets
            `helpful-base`, `helpful-rejection-sampled`, `harmless-base`.
        target: `"chosen"` (the SFT target) or `"rejected"`.
        allow_reserved: bool, allow a reserved subset (final evaluation
            only).
        invalid: `"skip"` or `"error"`, what a malformed dialogue does.
        max_dialogues: optional int, stop after this many conversations.

    Returns:
        A list of conversations (`parse_hh_rlhf`), in file order (subsets
        in the order given).

    Raises:
        ValueError: an unknown subset or `target`, a reserved subset without
            `allow_reserved`, a row without the target field, no dialogue of
            the subsets, or (with `invalid="error"`) a malformed dialogue.
        FileNotFoundError: a missing path or subset file.

    Reference:
        Bai et al., 2022, "Training a Helpful and Harmless Assistant with
        Reinforcement Learning from Human Feedback",
        https://arxiv.org/abs/2204.05862

    Example:

    >>> import gzip, json, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> row = {"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", "rejected": "\\n\\nHuman: Hi"}
    >>> with gzip.open(os.path.join(folder, "helpful-base.test.jsonl.gz"), "wt") as f:
    ...     _ = f.write(json.dumps(row) + "\\n")
    >>> read_hh_rlhf(folder, subsets=["helpful-base"])
    [[{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]]
    >>> read_hh_rlhf(folder, subsets=["helpful-online"])
    Traceback (most recent call last):
    ...
    ValueError: HH-RLHF subset(s) ['helpful-online'] are reserved for final evaluation: pass allow_reserved=True only for that. Train and tune on ['helpful-base', 'helpful-rejection-sampled', 'harmless-base'].
    """
    subsets = _check_hh_subsets(subsets, allow_reserved)
    if target not in HH_RLHF_TARGETS:
        raise ValueError(f"`target` must be one of {HH_RLHF_TARGETS}. Received: {target!r}")
    rows = _read_hh_rows(
        path, subsets, (target,), lambda row: parse_hh_rlhf(row.get("prompt", "") + row[target]),
        invalid, max_dialogues, "read_hh_rlhf", "dialogue")
    return [conversation for conversation, _ in rows]
