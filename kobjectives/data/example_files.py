"""Your own fine-tuning and preference examples: JSON Lines files in TRL's
dataset formats (`kobjectives train sft|seq2seq_sft|reward|dpo --data
FILE.jsonl`).

One JSON object per line (blank lines are skipped), in the formats of TRL's
dataset guide (https://huggingface.co/docs/trl/dataset_formats):

- supervised fine-tuning, one of
  - conversational: `{"messages": [{"role": "user", "content": ...},
    {"role": "assistant", "content": ...}, ...]}` (an optional first
    `system` turn; user and assistant turns alternate);
  - prompt-completion: `{"prompt": ..., "completion": ...}`, the prompt a
    string (one user turn) or a list of turns ending with a user turn;
- preference: `{"prompt": ..., "chosen": ..., "rejected": ...}`, the prompt
  as above, chosen and rejected strings or one assistant turn each;
- unpaired preference (KTO): `{"prompt": ..., "completion": ..., "label":
  true|false}`, the prompt as above, the completion a string or one
  assistant turn, `label` a JSON boolean (true: desirable). The files of one
  run hold pairs or unpaired rows, not both (`read_preference_examples`).

An answer (`completion`, `chosen`, `rejected`) is a non-empty string or, in
TRL's conversational form, a list holding one assistant message,
`[{"role": "assistant", "content": ...}]`; a bare message dict is not an
accepted form (TRL's neither): wrap it in a list.

Every error names the file and the line, and says what the line needs. The
examples read from files keep their `"file:line"` (`where`): pairs and
unpaired rows are `kobjectives.data.located.Located` tuples, SFT
conversations `LocatedConversation` lists. So the later errors of
`kobjectives.data.tokenize_sft_examples`, `tokenize_preference_pairs`,
`preference_arrays`, the KTO functions and the `sft` run's overlong examples
name the line too, not the example's index after a split.
"""

import glob
import json
import os

from kobjectives.data.chat import check_conversation
from kobjectives.data.located import Located
from kobjectives.data.located import LocatedConversation
from kobjectives.data.seq2seq_sft import dialogue_pair

SFT_FORMATS = "{'messages': [turns]} or {'prompt': ..., 'completion': ...}"
PREFERENCE_FORMAT = "{'prompt': ..., 'chosen': ..., 'rejected': ...}"
UNPAIRED_FORMAT = "{'prompt': ..., 'completion': ..., 'label': true|false}"
PREFERENCE_FORMATS = ("pairs", "unpaired")
"""What `read_preference_examples` finds: pairs (`PREFERENCE_FORMAT`) or
unpaired rows (`UNPAIRED_FORMAT`, TRL's unpaired preference format, KTO's)."""

ANSWER_FORMS = ('a non-empty string, or a list of message dicts such as '
                '[{"role": "assistant", "content": ...}]')
"""The accepted forms of an answer (`completion`, `chosen`, `rejected`)."""


def example_file_paths(files):
    """The files of `files` (paths or globs, `~` expanded), each glob's
    matches sorted, in the order given.

    Raises:
        FileNotFoundError: a path or glob matching no file.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = []
    for pattern in files:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern))))
        if not matches:
            raise FileNotFoundError(f"data.files: {str(pattern)!r} matches no file.")
        paths.extend(matches)
    return paths


def read_jsonl(files, limit=None):
    """The JSON objects of JSON Lines files, in file and line order.

    Args:
        files: a path or glob, or a list of them (`example_file_paths`).
        limit: optional int, the most rows read (None: all).

    Returns:
        A list of `(row, where)` pairs: the decoded dict and `"path:line"`.

    Raises:
        FileNotFoundError: a path matching no file.
        ValueError: a line that is not a JSON object (named by file and
            line), or no row at all.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sft.jsonl"
    >>> _ = path.write_text('{"prompt": "Hi", "completion": "Hello!"}\\n\\n')
    >>> [row for row, _ in read_jsonl(path)]
    [{'prompt': 'Hi', 'completion': 'Hello!'}]
    """
    paths = example_file_paths(files)
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if limit is not None and len(rows) >= limit:
                    return rows
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{where} is not valid JSON ({error.msg}, column {error.colno}): "
                        "data.files are JSON Lines, one JSON object per line.") from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{where} holds a JSON {type(row).__name__}, not an object: write "
                        "one example per line as a JSON object.")
                rows.append((row, where))
    if not rows:
        raise ValueError(f"data.files {paths} hold no example (every line is blank).")
    return rows


def _text(value, where, key):
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string. Received: {value!r}")
    return value


def prompt_turns(prompt, where="row"):
    """A prompt as the file readers read it: a string as one user turn, a
    list of turns checked to end with a user turn.

    Args:
        prompt: a non-empty str, or a list of `{"role", "content"}` turns
            ending with a `user` turn.
        where: how errors name the example.

    Returns:
        A list of turns.

    Raises:
        ValueError, TypeError: a blank string, or a malformed conversation.

    Example:

    >>> prompt_turns("What does json.dumps do?")
    [{'role': 'user', 'content': 'What does json.dumps do?'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": _text(prompt, where, "prompt")}]
    turns = check_conversation(prompt, f"{where} 'prompt'")
    if turns[-1][0] != "user":
        raise ValueError(
            f"{where}: the 'prompt' turns end with a {turns[-1][0]!r} turn; they must end "
            "with the 'user' turn that the completion answers.")
    return list(prompt)


def completion_text(value, where="row", key="completion"):
    """An answer as the file readers read it: a non-empty string, or a
    list of one assistant message (TRL's conversational form), as its text.

    Args:
        value: the answer (`completion`, `chosen` or `rejected`).
        where: how errors name the example.
        key: the answer's key, for errors.

    Returns:
        The answer's text.

    Raises:
        ValueError, TypeError: any other value (a bare message dict
            included: the error says to wrap it in a list).

    Example:

    >>> completion_text([{"role": "assistant", "content": "Hello!"}])
    'Hello!'
    """
    if isinstance(value, list):
        turns = check_conversation([{"role": "user", "content": "-"}, *value],
                                   f"{where} {key!r}")
        if len(turns) != 2:
            raise ValueError(
                f"{where}: {key!r} must be {ANSWER_FORMS}; as a list it holds one assistant "
                f"turn, and this one has {len(value)} messages (put the earlier turns in "
                "'prompt').")
        return turns[1][1]
    if not isinstance(value, str) or not value.strip():
        hint = (" A single message dict is not an accepted form: wrap it in a list."
                if isinstance(value, dict) else "")
        raise ValueError(f"{where}: {key!r} must be {ANSWER_FORMS}.{hint} Received: {value!r}")
    return value


def sft_conversation(row, where="row"):
    """One supervised fine-tuning example as a conversation.

    Args:
        row: a dict in a conversational (`messages`) or prompt-completion
            (`prompt`, `completion`) format.
        where: how errors name the row (e.g. `"train.jsonl:3"`).

    Returns:
        A list of `{"role", "content"}` turns ending with an assistant turn.

    Raises:
        ValueError: neither format, or a malformed conversation.

    Example:

    >>> sft_conversation({"prompt": "Hi", "completion": "Hello!"})
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    if "messages" in row:
        turns = check_conversation(row["messages"], f"{where} 'messages'")
        if turns[-1][0] != "assistant":
            raise ValueError(
                f"{where}: 'messages' ends with a {turns[-1][0]!r} turn; an example must end "
                "with the assistant turn to learn.")
        return list(row["messages"])
    if "prompt" in row and "completion" in row:
        completion = completion_text(row["completion"], where, "completion")
        return prompt_turns(row["prompt"], where) + [{"role": "assistant", "content": completion}]
    raise ValueError(
        f"{where} has the keys {sorted(row)}: a fine-tuning example is {SFT_FORMATS}.")


def read_sft_conversations(files, limit=None):
    """The conversations of JSON Lines files (`sft_conversation` per row).

    Args:
        files: a path or glob, or a list of them.
        limit: optional int, the most examples.

    Returns:
        A list of conversations (`LocatedConversation`: `where` is their
        `"file:line"`).
    """
    return [LocatedConversation(sft_conversation(row, where), where)
            for row, where in read_jsonl(files, limit)]


def read_seq2seq_pairs(files, limit=None):
    """The `{"input", "target"}` pairs of JSON Lines files: a
    prompt-completion row with a string prompt is that prompt and its
    completion; any other row is its conversation's `dialogue_pair` (the
    turns before the last assistant turn as text, and that turn).

    Args:
        files: a path or glob, or a list of them.
        limit: optional int, the most examples.

    Returns:
        A list of `{"input": str, "target": str}` dicts.
    """
    pairs = []
    for row, where in read_jsonl(files, limit):
        conversation = sft_conversation(row, where)
        if isinstance(row.get("prompt"), str) and "messages" not in row:
            pairs.append({"input": row["prompt"], "target": conversation[-1]["content"]})
        else:
            pairs.append(dialogue_pair(conversation, where))
    return pairs


def preference_pair(row, where="row"):
    """One preference example as a `(prompt turns, chosen, rejected)` triple.

    Args:
        row: a dict with `prompt` (a string or turns ending with a user
            turn), `chosen` and `rejected` (strings, or one assistant turn
            each).
        where: how errors name the row.

    Returns:
        `(prompt, chosen, rejected)`: a list of turns and two strings.

    Raises:
        ValueError: a missing key, a malformed value, or chosen equal to
            rejected.

    Example:

    >>> preference_pair({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."})
    ([{'role': 'user', 'content': 'Hi'}], 'Hello!', 'Go away.')
    """
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in row]
    if missing and {"completion", "label"} <= set(row):
        raise ValueError(
            f"{where} is an unpaired row {UNPAIRED_FORMAT}, not a pair {PREFERENCE_FORMAT}: "
            "this needs pairs. Unpaired rows train with KTO (`kobjectives train dpo --set "
            "preference.method=kto`).")
    if missing:
        raise ValueError(
            f"{where} lacks {missing}: a preference example is {PREFERENCE_FORMAT} (an "
            "explicit prompt; chosen and rejected answer it).")
    chosen = completion_text(row["chosen"], where, "chosen")
    rejected = completion_text(row["rejected"], where, "rejected")
    if chosen == rejected:
        raise ValueError(
            f"{where}: 'chosen' and 'rejected' are the same text ({chosen[:40]!r}), so the "
            "pair prefers nothing. Drop the line or fix its rejected answer.")
    return prompt_turns(row["prompt"], where), chosen, rejected


def read_preference_pairs(files, limit=None):
    """The `(prompt, chosen, rejected)` triples of JSON Lines files
    (`preference_pair` per row).

    Args:
        files: a path or glob, or a list of them.
        limit: optional int, the most pairs.

    Returns:
        A list of `Located` triples (`where`: their `"file:line"`).
    """
    return [Located(preference_pair(row, where), where)
            for row, where in read_jsonl(files, limit)]


def preference_row_format(row, where="row"):
    """Whether a preference row is a pair or an unpaired row, by its keys.

    Args:
        row: a dict.
        where: how errors name the row.

    Returns:
        `"pairs"` for a row with `chosen` or `rejected`, `"unpaired"` for
        one with `completion` or `label` (neither checked further here).

    Raises:
        ValueError: keys of both formats, or of neither.

    Example:

    >>> preference_row_format({"prompt": "Hi", "completion": "Hello!", "label": True})
    'unpaired'
    """
    pair = sorted({"chosen", "rejected"} & set(row))
    unpaired = sorted({"completion", "label"} & set(row))
    if pair and unpaired:
        raise ValueError(
            f"{where} mixes the keys of a pair {pair} and of an unpaired row {unpaired}: a "
            f"line is a pair {PREFERENCE_FORMAT} or an unpaired row {UNPAIRED_FORMAT}.")
    if not pair and not unpaired:
        raise ValueError(
            f"{where} has the keys {sorted(row)}: a preference example is a pair "
            f"{PREFERENCE_FORMAT} or an unpaired row {UNPAIRED_FORMAT}.")
    return "pairs" if pair else "unpaired"


def unpaired_row(row, where="row"):
    """One unpaired preference (KTO) example as a `(prompt turns,
    completion, label)` triple.

    Args:
        row: a dict with `prompt` (a string or turns ending with a user
            turn), `completion` (a string, or one assistant turn) and
            `label` (a JSON boolean: true for a desirable completion, false
            for an undesirable one), TRL's unpaired preference format.
        where: how errors name the row.

    Returns:
        `(prompt, completion, label)`: a list of turns, a string and a bool
        (what `kobjectives.data.kto_examples` takes).

    Raises:
        ValueError: a missing key, a malformed value, or a label that is not
            a boolean.

    Example:

    >>> unpaired_row({"prompt": "Hi", "completion": "Go away.", "label": False})
    ([{'role': 'user', 'content': 'Hi'}], 'Go away.', False)
    """
    missing = [key for key in ("prompt", "completion", "label") if key not in row]
    if missing:
        raise ValueError(
            f"{where} lacks {missing}: an unpaired preference example is {UNPAIRED_FORMAT} "
            "(an explicit prompt, a completion answering it, and whether it is desirable).")
    label = row["label"]
    if not isinstance(label, bool):
        raise ValueError(
            f"{where}: 'label' must be true (a desirable completion) or false (an undesirable "
            f"one), a JSON boolean. Received: {label!r}")
    return (prompt_turns(row["prompt"], where),
            completion_text(row["completion"], where, "completion"), label)


def read_unpaired_rows(files, limit=None):
    """The `(prompt, completion, label)` triples of JSON Lines files of
    unpaired rows (`unpaired_row` per row).

    Args:
        files: a path or glob, or a list of them.
        limit: optional int, the most rows.

    Returns:
        A list of `Located` triples (`where`: their `"file:line"`).

    Raises:
        ValueError: a malformed line, or a pair among the rows (named by
            file and line, as `read_preference_examples` names them), or
            files of pairs.
    """
    kind, rows = read_preference_examples(files, limit)
    if kind == "pairs":
        raise ValueError(
            f"{files} holds pairs {PREFERENCE_FORMAT}, not unpaired rows {UNPAIRED_FORMAT}. "
            "Write each pair's answers as rows (chosen: label true, rejected: label false), "
            "or read pairs with read_preference_pairs.")
    return rows


def read_preference_examples(files, limit=None):
    """The preference examples of JSON Lines files: all pairs or all
    unpaired rows, whichever the first line is.

    Files mixing the two formats are refused (TRL's datasets hold one
    format, and a run's held-out figures differ between them): write every
    pair as two rows to train them together with unpaired rows.

    Args:
        files: a path or glob, or a list of them.
        limit: optional int, the most examples.

    Returns:
        `(format, examples)`: `"pairs"` and a list of `(prompt, chosen,
        rejected)` triples (`preference_pair`), or `"unpaired"` and a list
        of `(prompt, completion, label)` triples (`unpaired_row`); the
        triples are `Located` (`where`: their `"file:line"`).

    Raises:
        ValueError: a malformed line, or a line of the other format than
            the first (both named by file and line).

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "kto.jsonl"
    >>> _ = path.write_text('{"prompt": "Hi", "completion": "Hello!", "label": true}\\n')
    >>> read_preference_examples(path)
    ('unpaired', [([{'role': 'user', 'content': 'Hi'}], 'Hello!', True)])
    """
    rows = read_jsonl(files, limit)
    first, first_where = preference_row_format(*rows[0]), rows[0][1]
    examples = []
    for row, where in rows:
        kind = preference_row_format(row, where)
        if kind != first:
            names = {"pairs": f"a pair {PREFERENCE_FORMAT}",
                     "unpaired": f"an unpaired row {UNPAIRED_FORMAT}"}
            raise ValueError(
                f"{where} is {names[kind]}, but {first_where} is {names[first]}: the files "
                "hold one format. For KTO, write each pair as two unpaired rows (chosen: "
                "label true, rejected: label false); else drop the unpaired rows.")
        examples.append(Located(preference_pair(row, where) if kind == "pairs" else
                                unpaired_row(row, where), where))
    return first, examples
