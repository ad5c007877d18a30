"""Supervised tasks derived from the embedded corpus, so that sequence
classification, token classification and SFT run anywhere, with no data
files.

Each builder reads the docstrings of the running Python's standard library
(`kobjectives.data.corpus.stdlib_docstrings`: parsed with `ast`, never
imported) and labels them by a fixed, documented rule. A document or
sentence the rule cannot label is refused (dropped), never guessed. All
three are deterministic: the same Python gives the same examples, in the
same order, in every process.

- `module_classification_task`: which standard-library package a docstring
  comes from (the package's own name removed from the text);
- `entity_tagging_task`: IOB2 tags of module names (`MOD`) and builtin
  exception names (`EXC`) in docstring sentences;
- `prompt_completion_task`: `"What does json.dumps do?"` answered by the
  first paragraph of the docstring.

`split_examples` splits any of their outputs into train and validation
sets with `train_validation_split`'s content hash, so an example's side
does not depend on its position.

The counts quoted in the docstrings are those of CPython 3.11.7; other
versions document other modules and give other numbers.
"""

import builtins
import collections
import inspect
import json
import numbers
import re
import string
import sys

from kobjectives.data.chat import DEFAULT_CHAT_TEMPLATE
from kobjectives.data.corpus import MIN_DOCUMENT_CHARACTERS
from kobjectives.data.corpus import stdlib_docstrings
from kobjectives.data.sentences import split_document_sentences
from kobjectives.data.split import train_validation_split

MODULE_TAG = "MOD"
"""The entity type of standard-library module names in
`entity_tagging_task`."""

EXCEPTION_TAG = "EXC"
"""The entity type of builtin exception names in `entity_tagging_task`."""

ENTITY_TAGS = ("O", "B-EXC", "I-EXC", "B-MOD", "I-MOD")
"""The tag set of `entity_tagging_task`, as `kobjectives.data.tag_set`
orders it. Every entity is one word, so `I-` tags never occur; they are
listed because `tag_set` lists both tags of each type."""

PROMPT_TEMPLATE = "What does {name} do?"
"""The prompt of `prompt_completion_task`; `{name}` is the qualified name."""

# The one standard-library module without a source file of its own
# (`os` sets `sys.modules["os.path"]` to `posixpath` or `ntpath`).
_MODULES_WITHOUT_FILE = ("os.path",)
# Leading and trailing characters split off a word: ASCII punctuation, but
# not `_` (it belongs to names such as `__init__`).
_WORD_PUNCTUATION = frozenset(string.punctuation) - {"_"}
# The words after a module name that say it is one ("the json module").
_MODULE_NOUNS = frozenset({"module", "package"})
_IDENTIFIER_SEGMENTS = re.compile(r"[A-Za-z0-9_.]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_DOCTEST_LINE = re.compile(r"^\s*>>>", re.M)


# ---------------------------------------------------------------------------
# Argument checks and the stable selection.
# ---------------------------------------------------------------------------


def _check_int(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` must be an int >= {minimum}{allowed}. Received: {name}={value!r}"
        )
    return int(value)


def _default_key(example):
    if isinstance(example, str):
        return example
    return json.dumps(example, sort_keys=True, ensure_ascii=False)


def split_examples(examples, validation_fraction=0.05, seed=0, key=None):
    """Splits examples of any kind into train and validation sets,
    deterministically, by content.

    `kobjectives.data.train_validation_split` applied to each example's
    key: the `round(validation_fraction * len(examples))` examples whose
    keys hash lowest (keyed BLAKE2 of `(seed, key)`) form the validation
    set. An example's side depends on its key, not on its position, and is
    the same in every process; each side keeps the original order. Of
    examples with equal keys, the earlier ones go to validation first
    (`train_validation_split` breaks ties by position).

    Args:
        examples: a sequence of at least 2 examples (e.g. the `(words,
            tags)` sentences of `entity_tagging_task`, the dicts of
            `prompt_completion_task`, or `list(zip(texts, labels))`).
        validation_fraction: float in the open interval `(0, 1)`.
        seed: int.
        key: optional callable mapping an example to a `str`. Defaults to
            the example itself for a `str`, else its JSON encoding (keys
            sorted), which suits tuples, lists and dicts of str and int.

    Returns:
        A `(train, validation)` tuple of lists that together hold every
        example once.

    Raises:
        ValueError: fewer than 2 examples, or `validation_fraction` not in
            `(0, 1)`.
        TypeError: `key` returns something other than a `str`, or `seed`
            is not an int.

    Example:

    >>> examples = [("good", 1), ("bad", 0), ("fine", 1), ("poor", 0)]
    >>> train, validation = split_examples(examples, 0.5, key=lambda e: e[0])
    >>> len(train), len(validation)
    (2, 2)
    >>> sorted(train + validation) == sorted(examples)
    True
    >>> split_examples(examples, 0.5, key=lambda e: e[0]) == (train, validation)
    True
    """
    examples = list(examples)
    key = _default_key if key is None else key
    keys = []
    for index, example in enumerate(examples):
        value = key(example)
        if not isinstance(value, str):
            raise TypeError(
                f"`key` must map each example to a str; it returned a "
                f"{type(value).__name__} for examples[{index}]."
            )
        keys.append(value)
    _, validation_keys = train_validation_split(keys, validation_fraction, seed)
    remaining = collections.Counter(validation_keys)
    train, validation = [], []
    for example, value in zip(examples, keys):
        if remaining[value]:
            remaining[value] -= 1
            validation.append(example)
        else:
            train.append(example)
    return train, validation


def _stable_subset(examples, count, key):
    """`count` of `examples` chosen by content hash, in their order."""
    if count is None or count >= len(examples):
        return list(examples)
    if count == 0:
        return []
    return split_examples(examples, count / len(examples), seed=0, key=key)[1]


# ---------------------------------------------------------------------------
# Module classification.
# ---------------------------------------------------------------------------


def _without_word(text, word):
    """`text` with every whole-word occurrence of `word` (any letter case)
    removed, with the `.` joining it to a following name."""
    pattern = re.compile(
        rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])(?:\.(?=[A-Za-z_]))?",
        re.IGNORECASE,
    )
    pieces = []
    position = 0
    for match in pattern.finditer(text):
        start, end = match.span()
        # Take the space before the word along unless a name follows
        # ("the email package" -> "the package", "see email.utils" -> "see
        # utils"); at the start of a line, take the space after it.
        if start > 0 and text[start - 1] == " " and (
                end == len(text) or not (text[end].isalnum() or text[end] == "_")):
            start -= 1
        elif (start == 0 or text[start - 1] == "\n") and end < len(text) and text[end] == " ":
            end += 1
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def module_classification_task(num_classes=8, max_examples=None,
                               min_characters=MIN_DOCUMENT_CHARACTERS, root=None):
    """Docstrings labelled with the standard-library package they come from.

    The rule, in order:

    1. Every docstring of `stdlib_docstrings(root)` (module, class,
       function and method docstrings, in corpus order) whose file has a
       module name is labelled with the first component of that name: the
       top-level package or module (`email/mime/text.py` -> `email`,
       `os.py` -> `os`). The text is the docstring cleaned as
       `embedded_corpus` cleans it (`inspect.cleandoc`, stripped).
    2. The label leaks through its own name, so every occurrence of the
       label as a whole word (not touching a letter, digit or `_`), in any
       letter case, is removed, together with the `.` that joins it to a
       following name, and with the space before it unless a name follows
       (at the start of a line, the space after it): `"the email package"`
       -> `"the package"`, `"see email.utils"` -> `"see utils"`,
       `"email.message.Message"` -> `"message.Message"`, `"XML"` is
       removed from `xml`'s docstrings. Other cues remain (submodule names,
       `Tk` in `tkinter`, `IDLE` in `idlelib`, fixers in `lib2to3`): they
       are what the task is learned from.
    3. Texts shorter than `min_characters` after the removal are dropped.
       Of identical texts, the first is kept when all copies have the
       same label; texts that occur under two labels are dropped (they
       cannot be labelled).
    4. The `num_classes` labels with the most texts are kept (ties: by
       name), the other texts are dropped. Label ids follow the sorted
       label names.
    5. With `max_examples`, that many texts are kept, chosen by content
       hash (`split_examples`'s key), in corpus order.

    On CPython 3.11.7 with the defaults this gives 2,672 texts of 8
    classes: `asyncio` 280, `distutils` 303, `email` 261, `idlelib` 520,
    `importlib` 254, `lib2to3` 209, `logging` 222, `tkinter` 623; the
    majority class (`tkinter`) is 23.3% of the texts, the rate to beat.
    With `num_classes=4` (`asyncio`, `distutils`, `idlelib`, `tkinter`):
    1,726 texts, majority 36.1%.

    Args:
        num_classes: int >= 2, the number of labels kept.
        max_examples: optional int >= 1, the most texts returned.
        min_characters: int >= 1, the shortest text kept (after the label
            is removed).
        root: optional directory read instead of the standard library (see
            `stdlib_docstrings`).

    Returns:
        `(texts, labels, label_names)`: `texts` a list of str, `labels` a
        list of int ids (indices into `label_names`), `label_names` the
        sorted list of the `num_classes` labels.

    Raises:
        ValueError: a bad argument, or fewer than `num_classes` labels
            with texts.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "spam.py").write_text("'''The spam module cooks spam and eggs.'''")
    >>> _ = (root / "eggs.py").write_text("'''Boiled or fried eggs, never raw.'''")
    >>> texts, labels, names = module_classification_task(
    ...     num_classes=2, min_characters=10, root=root)
    >>> texts, labels, names
    (['Boiled or fried, never raw.', 'The module cooks and eggs.'], [0, 1], ['eggs', 'spam'])
    """
    num_classes = _check_int("num_classes", num_classes, 2)
    max_examples = _check_int("max_examples", max_examples, 1, allow_none=True)
    min_characters = _check_int("min_characters", min_characters, 1)
    labels_of_text = collections.defaultdict(set)
    ordered = []
    for record in stdlib_docstrings(root):
        if record.module is None:
            continue
        label = record.module.split(".")[0]
        text = _without_word(inspect.cleandoc(record.text).strip(), label).strip()
        if len(text) < min_characters:
            continue
        if text not in labels_of_text:
            ordered.append(text)
        labels_of_text[text].add(label)
    examples = [(text, next(iter(labels_of_text[text])))
                for text in ordered if len(labels_of_text[text]) == 1]
    sizes = collections.Counter(label for _, label in examples)
    if len(sizes) < num_classes:
        raise ValueError(
            f"Only {len(sizes)} labels have texts of {min_characters} or more "
            f"characters, fewer than num_classes={num_classes}. Lower `num_classes` "
            "or `min_characters`."
        )
    kept = sorted(sizes, key=lambda label: (-sizes[label], label))[:num_classes]
    label_names = sorted(kept)
    examples = [example for example in examples if example[1] in kept]
    examples = _stable_subset(examples, max_examples, key=lambda example: example[0])
    ids = {name: index for index, name in enumerate(label_names)}
    return ([text for text, _ in examples], [ids[label] for _, label in examples],
            label_names)


# ---------------------------------------------------------------------------
# Entity tagging.
# ---------------------------------------------------------------------------


def _split_words(sentence):
    """Whitespace-separated words, with the ASCII punctuation (except `_`)
    at either end of each split off, one character a word."""
    words = []
    for chunk in sentence.split():
        start, end = 0, len(chunk)
        while start < end and chunk[start] in _WORD_PUNCTUATION:
            start += 1
        while end > start and chunk[end - 1] in _WORD_PUNCTUATION:
            end -= 1
        words.extend(chunk[:start])
        if end > start:
            words.append(chunk[start:end])
        words.extend(chunk[end:])
    return words


def builtin_exception_names():
    """The names in `builtins` bound to subclasses of `BaseException`,
    sorted (aliases such as `IOError` included).

    Example:

    >>> names = builtin_exception_names()
    >>> "ValueError" in names, "BaseException" in names, "print" in names
    (True, True, False)
    """
    return sorted(
        name for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    )


def _module_name_sets(root):
    """The top-level and dotted module names `entity_tagging_task` tags."""
    top_level = frozenset(sys.stdlib_module_names)
    dotted = {
        record.module for record in stdlib_docstrings(root)
        if record.module and "." in record.module
        and record.module.split(".")[0] in top_level
    }
    return top_level, frozenset(dotted | set(_MODULES_WITHOUT_FILE))


def _tag_sentence(words, top_level, dotted, exceptions):
    """The tags of one sentence, or `None` when a word cannot be labelled."""
    tags = []
    for index, word in enumerate(words):
        before = words[index - 1] if index > 0 else ""
        after = words[index + 1] if index + 1 < len(words) else ""
        if word in exceptions:
            # `Exception` and `Warning` are also English words; first in a
            # sentence, they may be either.
            if index == 0 and word[1:].islower():
                return None
            tags.append(f"B-{EXCEPTION_TAG}")
        elif word in dotted:
            tags.append(f"B-{MODULE_TAG}")
        elif word in top_level:
            if ((before.lower() == "the" and after.lower() in _MODULE_NOUNS)
                    or before == "import" or (before == "from" and after == "import")):
                tags.append(f"B-{MODULE_TAG}")
            else:
                # `this`, `string`, `time`, `code` ... are English words too.
                return None
        elif "." in word and word.split(".")[0] in top_level:
            tags.append("O")  # An attribute such as `sys.argv` or `os.path.join`.
        else:
            segments = _IDENTIFIER_SEGMENTS.findall(word)
            if segments != [word] and any(
                    segment in exceptions or segment in dotted or segment in top_level
                    for segment in segments):
                return None  # A name glued to other text: `ValueError(msg`.
            tags.append("O")
    return tags


def entity_tagging_task(max_sentences=None, negative_fraction=0.05, max_words=60,
                        root=None):
    """Sentences of the docstrings with IOB2 tags of module and exception
    names.

    Tags (`ENTITY_TAGS`): `B-MOD` for a name of a standard-library module,
    `B-EXC` for a name of a builtin exception, `O` otherwise. Every entity
    is one word (a dotted module name such as `os.path` is one word), so
    `I-` tags never occur.

    The rule:

    1. Sentences: each docstring of `stdlib_docstrings(root)`, in corpus
       order, is cut into paragraphs at blank lines; paragraphs holding a
       doctest line (`>>>`) are skipped; the others are cut into sentences
       by `kobjectives.data.split_document_sentences`.
    2. Words: the sentence is split at whitespace, and the ASCII
       punctuation characters (except `_`) at the start and end of each
       piece are split off, one character a word: `"(see os.path)."` ->
       `["(", "see", "os.path", ")", "."]`. Inner punctuation stays
       (`sys.exit(1` is one word).
    3. Tags, on exact (case-sensitive) matches:

       - `B-EXC`: a name of `builtin_exception_names()` (`ValueError`,
         `Exception`, `IOError`, ...). `Exception` and `Warning` as the
         first word of a sentence are English words or names: the sentence
         is refused.
       - `B-MOD`: a dotted module name of the standard library (the files
         under `root`, e.g. `email.message`, `xml.dom.minidom`, plus
         `os.path`, whose top-level name is in `sys.stdlib_module_names`);
         or a top-level name of `sys.stdlib_module_names` in a module
         context: `the NAME module|package` (either case), `import NAME`,
         `from NAME import`. The same name elsewhere is refused (the whole
         sentence): most are English words too (`this`, `string`, `time`,
         `code`, `types`), and the builder does not guess.
       - `O`: anything else, including attributes of modules (`sys.argv`,
         `os.path.join`, `json.dumps`: dotted words whose first part is a
         module name) and other letter cases (`This`, `Tkinter`, `OS`).
         A word that is not one of the names above but contains one glued
         to other characters (`ValueError(msg`) refuses the sentence.
    4. Sentences longer than `max_words` words are dropped, and of identical
       sentences the first is kept.
    5. Kept: every sentence with at least one entity, and a fraction
       `negative_fraction` of those without any (chosen by content hash, as
       `split_examples`), in corpus order.
    6. With `max_sentences`, that many are kept, chosen by content hash.

    On CPython 3.11.7 with the defaults: 19,187 distinct sentences of at
    most 60 words, of which 4,377 are refused, 355 have entities (230
    `EXC` and 142 `MOD` words) and 14,455 have none; the task is the 355
    and 723 of the others (5%): 1,078 sentences.

    Args:
        max_sentences: optional int >= 1, the most sentences returned.
        negative_fraction: float in `[0, 1]`, the share of the entity-free
            sentences kept.
        max_words: int >= 1, the longest sentence kept.
        root: optional directory read instead of the standard library.

    Returns:
        A list of `(words, tags)` tuples of equal-length lists of str, for
        `kobjectives.data.tag_set` and `validate_tags`.

    Raises:
        ValueError: a bad argument, or no sentence with an entity.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "spam.py").write_text(
    ...     "def f():\\n    '''Raise ValueError, like the json module.'''\\n")
    >>> [(words, tags)] = entity_tagging_task(root=root)
    >>> words
    ['Raise', 'ValueError', ',', 'like', 'the', 'json', 'module', '.']
    >>> tags
    ['O', 'B-EXC', 'O', 'O', 'O', 'B-MOD', 'O', 'O']
    """
    max_sentences = _check_int("max_sentences", max_sentences, 1, allow_none=True)
    max_words = _check_int("max_words", max_words, 1)
    if (isinstance(negative_fraction, bool) or not isinstance(negative_fraction, numbers.Real)
            or not 0.0 <= negative_fraction <= 1.0):
        raise ValueError(
            "`negative_fraction` must be a float in [0, 1]. Received: "
            f"negative_fraction={negative_fraction!r}"
        )
    top_level, dotted = _module_name_sets(root)
    exceptions = frozenset(builtin_exception_names())
    seen = set()
    sentences = []  # (words, tags, has_entity)
    for record in stdlib_docstrings(root):
        for paragraph in _PARAGRAPH_BREAK.split(record.text):
            if _DOCTEST_LINE.search(paragraph):
                continue
            for sentence in split_document_sentences(paragraph):
                words = _split_words(sentence)
                if not words or len(words) > max_words or tuple(words) in seen:
                    continue
                seen.add(tuple(words))
                tags = _tag_sentence(words, top_level, dotted, exceptions)
                if tags is not None:
                    sentences.append((words, tags, any(tag != "O" for tag in tags)))
    if not any(has_entity for _, _, has_entity in sentences):
        raise ValueError(
            "No sentence of the docstrings names a module or a builtin exception "
            f"(root={root!r}): there is nothing to tag."
        )

    def key(sentence):
        return " ".join(sentence[0])

    negatives = [sentence for sentence in sentences if not sentence[2]]
    if negative_fraction == 0.0 or not negatives:
        kept_negatives = []
    else:
        kept_negatives = _stable_subset(negatives, round(negative_fraction * len(negatives)), key)
    kept_ids = {id(sentence) for sentence in kept_negatives}
    sentences = [s for s in sentences if s[2] or id(s) in kept_ids]
    sentences = _stable_subset(sentences, max_sentences, key)
    return [(words, tags) for words, tags, _ in sentences]


# ---------------------------------------------------------------------------
# Prompt / completion pairs.
# ---------------------------------------------------------------------------


def _first_paragraph(text, max_characters):
    """The first paragraph on one line, cut to whole sentences that fit in
    `max_characters`; `None` when even the first sentence is too long or
    the paragraph is a doctest."""
    paragraph = _PARAGRAPH_BREAK.split(inspect.cleandoc(text).strip(), maxsplit=1)[0]
    if _DOCTEST_LINE.search(paragraph):
        return None
    paragraph = " ".join(paragraph.split())
    if len(paragraph) <= max_characters:
        return paragraph
    completion = ""
    for sentence in split_document_sentences(paragraph):
        longer = f"{completion} {sentence}" if completion else sentence
        if len(longer) > max_characters:
            break
        completion = longer
    return completion or None


def prompt_completion_task(max_examples=None, max_characters=300, min_characters=20,
                           template=DEFAULT_CHAT_TEMPLATE, root=None):
    """Questions about documented names answered by their docstrings, as
    SFT prompt/completion pairs.

    The rule:

    1. For every docstring of `stdlib_docstrings(root)` (modules, classes,
       functions and methods, in corpus order) with a qualified name, the
       prompt is `PROMPT_TEMPLATE.format(name=...)`: `"What does
       json.dumps do?"`. Names of functions nested in functions
       (`f.<locals>.g`) cannot be looked up and are refused.
    2. The completion is the docstring's first paragraph (up to the first
       blank line, after `inspect.cleandoc`), its whitespace runs joined
       into single spaces. One longer than `max_characters` is cut to its
       leading whole sentences (`split_document_sentences`) that fit;
       when even the first does not, the docstring is refused, as is a
       first paragraph holding a doctest line (`>>>`).
    3. Completions shorter than `min_characters` are dropped (`"Internal
       function."`, a bare signature), as are pairs holding one of
       `template`'s markers (`ChatTemplate` refuses them).
    4. A name documented twice (definitions in both branches of an `if`)
       is kept once when both copies give the same completion, else
       refused (also when one copy is refused by the rules above).
    5. With `max_examples`, that many pairs are kept, chosen by content
       hash (of the prompt), in corpus order.

    On CPython 3.11.7 with the defaults: 8,028 pairs (of 8,604
    docstrings): 512 modules, 1,131 classes, 1,827 functions and 4,558
    methods.

    Args:
        max_examples: optional int >= 1, the most pairs returned.
        max_characters: int >= 1, the longest completion.
        min_characters: int >= 1, the shortest completion.
        template: the `kobjectives.data.ChatTemplate` the pairs are for;
            only its markers are used (pairs holding one are dropped).
        root: optional directory read instead of the standard library.

    Returns:
        A list of `{"prompt": str, "completion": str}` dicts, as
        `kobjectives.data.tokenize_sft_examples` takes them.

    Raises:
        ValueError: a bad argument, or no pair left.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "spam.py").write_text(
    ...     "def fry(eggs):\\n    '''Fry the eggs in a pan.\\n\\n    Returns them.'''\\n")
    >>> prompt_completion_task(root=root)
    [{'prompt': 'What does spam.fry do?', 'completion': 'Fry the eggs in a pan.'}]
    """
    max_examples = _check_int("max_examples", max_examples, 1, allow_none=True)
    max_characters = _check_int("max_characters", max_characters, 1)
    min_characters = _check_int("min_characters", min_characters, 1)
    if min_characters > max_characters:
        raise ValueError(
            f"`min_characters` ({min_characters}) must not exceed `max_characters` "
            f"({max_characters}): no completion could be kept."
        )
    # The completions of each name; `None` for a copy that was refused.
    completions = collections.defaultdict(set)
    for record in stdlib_docstrings(root):
        if record.name is None or "<locals>" in record.name:
            continue
        prompt = PROMPT_TEMPLATE.format(name=record.name)
        completion = _first_paragraph(record.text, max_characters)
        if (completion is None or len(completion) < min_characters
                or any(marker in prompt or marker in completion
                       for marker in template.markers)):
            completion = None
        completions[record.name].add(completion)
    examples = [
        {"prompt": PROMPT_TEMPLATE.format(name=name), "completion": next(iter(texts))}
        for name, texts in completions.items() if len(texts) == 1 and None not in texts
    ]
    if not examples:
        raise ValueError(
            f"No docstring has a first paragraph of {min_characters} to "
            f"{max_characters} characters (root={root!r})."
        )
    return _stable_subset(examples, max_examples, key=lambda example: example["prompt"])
