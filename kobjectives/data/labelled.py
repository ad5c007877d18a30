"""Readers for labelled data: CoNLL-style tagged tokens (NER) and labelled
texts in TSV files (sentence classification), as plain Python structures,
validated as they are read.

The tag conventions follow IOB2 (BIO): `B-TYPE` starts an entity, `I-TYPE`
continues it, `O` is outside any entity (Tjong Kim Sang and De Meulder,
2003, https://aclanthology.org/W03-0419). `tag_set` derives the tag list
(index = tag id) from training data, so it can be saved with a run and
checked against other splits with `validate_tags`.
"""

import csv
import dataclasses
import os
import pathlib

DOCSTART = "-DOCSTART-"
"""The document marker of the original CoNLL files; `read_conll` skips it."""

OUTSIDE = "O"
"""The tag of tokens outside any entity; id 0 in `tag_set`."""

BIO_PREFIXES = ("B", "I")


class TaggedSentence(tuple):
    """One sentence `(words, tags)` of `read_conll`: a plain 2-tuple of
    equal-length lists of str (it unpacks and compares as one), which also
    remembers where it was read.

    Attributes:
        path: the file, or `None`.
        line: the 1-based line of its first word, or `None`; word `i` is on
            line `line + i`.
    """

    def __new__(cls, words, tags, path=None, line=None):
        sentence = super().__new__(cls, (words, tags))
        sentence.path = path
        sentence.line = line
        return sentence

    def __reduce__(self):
        return (TaggedSentence, (self[0], self[1], self.path, self.line))

    def where(self, index):
        """`"file:line"` of word `index` (or `"sentence word i"` without a file)."""
        if self.path is not None and self.line is not None:
            return f"{self.path}:{self.line + index}"
        return f"word {index}"


@dataclasses.dataclass
class LabelledTexts:
    """Texts with class labels, from `read_classification_tsv`.

    Attributes:
        texts: list of str, or of tuples of str (several text columns, e.g.
            sentence pairs).
        labels: list of int, the label ids (indices in `label_names`).
        label_names: list of str, the label of each id.
    """

    texts: list
    labels: list
    label_names: list

    def __len__(self):
        return len(self.labels)


def _existing_file(path):
    path = pathlib.Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    return path


def read_conll(path, tags=None):
    """Reads a CoNLL-style file of tagged tokens into sentences.

    The format of `../shared/data/ner/` (see its README.txt): UTF-8, one
    token per line as `token<TAB>tag`, a blank line between sentences, IOB2
    tags. Also read, so that the original CoNLL-2003 files work too:

    - `-DOCSTART-` lines (document markers) are skipped and end a sentence;
    - several blank lines (or blank lines at the start or end) count as
      one sentence break;
    - CRLF line endings and a UTF-8 byte-order mark;
    - lines with more than two fields (the original `word POS chunk tag`,
      space- or tab-separated): the first is the token, the last the tag.
      A line without a tab is split on whitespace.

    A token is taken as it is (no stripping): a Chinese file like CLUENER2020
    holds one character per line, and each character is a word.

    Args:
        path: the file.
        tags: optional list of the tag names the data must use (e.g. saved
            from the training split's `tag_set`); see `validate_tags`.

    Returns:
        A list of `TaggedSentence`s: 2-tuples `(words, tags)` of equal-length
        lists of str, in file order, which also know their file and line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line with fewer than two fields or an empty token or
            tag (naming the file and line), a file without sentences, or a
            tag `validate_tags` rejects.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.txt"
    >>> _ = path.write_text("EU\\tB-ORG\\nrejects\\tO\\n\\nPeter\\tB-PER\\nBlackburn\\tI-PER\\n")
    >>> sentences = read_conll(path)
    >>> sentences[1]
    (['Peter', 'Blackburn'], ['B-PER', 'I-PER'])
    >>> words, tags = sentences[0]
    >>> words, tags, sentences[0].line
    (['EU', 'rejects'], ['B-ORG', 'O'], 1)
    """
    path = _existing_file(path)
    sentences = []
    words, labels, start = [], [], None

    def close():
        nonlocal words, labels, start
        if words:
            sentences.append(TaggedSentence(words, labels, str(path), start))
        words, labels, start = [], [], None

    with open(path, encoding="utf-8-sig", newline="") as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                close()
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if fields[0] == DOCSTART:
                close()
                continue
            if len(fields) < 2:
                raise ValueError(
                    f"{path}:{number}: expected 'token<TAB>tag', got {line!r}. Each "
                    "line holds a token and its tag; sentences are separated by "
                    "blank lines."
                )
            token, tag = fields[0], fields[-1].strip()
            if not token or not tag:
                raise ValueError(
                    f"{path}:{number}: empty {'token' if not token else 'tag'} in "
                    f"{line!r}. Each line holds a token and its tag."
                )
            if start is None:
                start = number
            words.append(token)
            labels.append(tag)
    close()
    if not sentences:
        raise ValueError(f"{path}: no sentences (the file holds no 'token<TAB>tag' lines).")
    validate_tags(sentences, tags)
    return sentences


def _split_tag(tag):
    """`(prefix, type)` of a BIO tag: `("O", None)`, `("B", "PER")`, ...;
    `(None, None)` for a tag of another scheme."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, dash, kind = tag.partition("-")
    if prefix in BIO_PREFIXES and (dash or not kind):
        return prefix, kind
    return None, None


def _where(sentence, number, index):
    if isinstance(sentence, TaggedSentence):
        return sentence.where(index)
    return f"sentence {number}, word {index}"


def validate_tags(sentences, tags=None):
    """Checks tagged sentences; raises a clear `ValueError` on the first problem.

    Checks that every sentence has words and one tag per word, that no tag
    is a bare BIO prefix without its entity type (`"B-"`, `"I-"`, `"B"`,
    `"I"`), and, with `tags`, that every tag is in the tag set. Messages
    name the tag and where it is (file and line for `read_conll`'s
    sentences, else the sentence and word index).

    Args:
        sentences: list of `(words, tags)` pairs of equal-length lists.
        tags: optional list (or set) of the allowed tag names, e.g. the
            training split's `tag_set`, to check another split against.

    Returns:
        `None`.

    Raises:
        ValueError: an empty sentence, words and tags of different lengths,
            a tag without its type, or a tag not in `tags`.

    Example:

    >>> validate_tags([(["Peter", "Blackburn"], ["B-PER", "I-PER"])], ["O", "B-PER", "I-PER"])
    >>> validate_tags([(["Peter"], ["I-"])])
    Traceback (most recent call last):
    ...
    ValueError: sentence 0, word 0: the tag 'I-' has no entity type. ...
    """
    allowed = None if tags is None else set(tags)
    for number, sentence in enumerate(sentences):
        try:
            words, labels = sentence
        except (TypeError, ValueError):
            raise ValueError(
                f"sentence {number}: expected a (words, tags) pair, got {sentence!r}."
            ) from None
        if not words:
            raise ValueError(
                f"sentence {number}: an empty sentence (no words). Drop it: every "
                "sentence needs at least one word."
            )
        if len(words) != len(labels):
            raise ValueError(
                f"{_where(sentence, number, 0)}: the sentence has {len(words)} words "
                f"but {len(labels)} tags; it needs one tag per word."
            )
        for index, tag in enumerate(labels):
            prefix, kind = _split_tag(tag)
            if prefix in BIO_PREFIXES and not kind:
                raise ValueError(
                    f"{_where(sentence, number, index)}: the tag {tag!r} has no "
                    f"entity type. BIO tags are 'O', 'B-TYPE' and 'I-TYPE' (e.g. "
                    "'I-PER'); fix the data."
                )
            if allowed is not None and tag not in allowed:
                raise ValueError(
                    f"{_where(sentence, number, index)}: the tag set does not match "
                    f"the data: the tag {tag!r} is not in `tags` ({sorted(allowed)}). "
                    "Derive the tag set from all training data (tag_set), or fix the tag."
                )


def tag_set(sentences, scheme="bio"):
    """The tag list of tagged sentences (index = tag id).

    With `scheme="bio"`: `"O"` first, then for each entity type, in sorted
    order, `B-TYPE` and `I-TYPE`, both listed whenever either occurs (so a
    model can predict an `I-` the training data lacks, and
    `WordLabelAligner(label_all_pieces=True, tags=...)` finds every `I-`).
    With `scheme=None`: `"O"` first where it occurs, then the other tags
    sorted (tags of any scheme, e.g. part-of-speech).

    Args:
        sentences: list of `(words, tags)` pairs, e.g. from `read_conll`.
        scheme: `"bio"` (IOB2, the default) or `None`.

    Returns:
        list of str.

    Raises:
        ValueError: no tags, a tag that is not `O`, `B-TYPE` or `I-TYPE`
            under `scheme="bio"`, or a problem `validate_tags` finds.

    Example:

    >>> tag_set([(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])])
    ['O', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER']
    >>> tag_set([(["a", "dog"], ["DT", "NN"])], scheme=None)
    ['DT', 'NN']
    """
    if scheme not in ("bio", None):
        raise ValueError(f"`scheme` must be 'bio' or None. Received: scheme={scheme!r}.")
    validate_tags(sentences)
    seen = {tag for _, labels in sentences for tag in labels}
    if not seen:
        raise ValueError("`sentences` holds no tags.")
    if scheme is None:
        head = [OUTSIDE] if OUTSIDE in seen else []
        return head + sorted(seen - {OUTSIDE})
    kinds = set()
    for number, sentence in enumerate(sentences):
        for index, tag in enumerate(sentence[1]):
            prefix, kind = _split_tag(tag)
            if prefix is None:
                raise ValueError(
                    f"{_where(sentence, number, index)}: the tag {tag!r} is not a BIO "
                    "tag ('O', 'B-TYPE', 'I-TYPE'). Convert the data to IOB2, or pass "
                    "scheme=None for tags of another scheme."
                )
            if kind:
                kinds.add(kind)
    return [OUTSIDE] + [f"{p}-{kind}" for kind in sorted(kinds) for p in BIO_PREFIXES]


def _column_index(column, header, path, what):
    """The 0-based index of `column` (an int index or a header name)."""
    if isinstance(column, bool) or not isinstance(column, (int, str)):
        raise ValueError(f"`{what}` must hold column indices (int) or header names (str). "
                         f"Received: {column!r}.")
    if isinstance(column, int):
        if column < 0:
            raise ValueError(f"`{what}`: column indices are >= 0. Received: {column}.")
        return column
    if header is None:
        raise ValueError(
            f"`{what}` names the column {column!r}, but header=False. Pass the column "
            "index instead, or header=True."
        )
    if column not in header:
        raise ValueError(f"{path}: no column {column!r} in the header {header}.")
    return header.index(column)


def read_classification_tsv(path, text_columns=1, label_column=0, header=True,
                            label_names=None):
    """Reads labelled texts from a tab-separated file.

    Rows are split at tabs only, without quoting (texts may hold `"`), as
    in GLUE's SST-2 (`label<TAB>sentence` with a header row:
    `../shared/data/sst2/`) and ChnSentiCorp (`label<TAB>text_a` with a
    header: `../shared/data/chinese/chnsenticorp_*.tsv`); both match the
    defaults. Blank lines are skipped; CRLF endings and a UTF-8
    byte-order mark are read. Texts are stripped of surrounding whitespace.

    **Label ids.** With `label_names`, a label's id is its index there (and
    any other label is an error): pass the training split's `label_names`
    when reading its dev and test splits. Without it, the labels found are
    sorted, numerically when all are integers (so `"0"`, `"1"` get ids 0 and
    1, SST-2's and ChnSentiCorp's 0 = negative, 1 = positive), else as
    strings.

    Args:
        path: the file.
        text_columns: int or str, the text column as a 0-based index or a
            header name (texts are str); or a sequence of them (texts are
            tuples of str, e.g. sentence pairs). Defaults to 1.
        label_column: int or str, the label column. Defaults to 0.
        header: bool, whether the first non-blank row is a header (skipped).
            Defaults to `True`.
        label_names: optional list of str, the label of each id.

    Returns:
        `LabelledTexts(texts, labels, label_names)`: texts a list of str
        (one text column given as an int or str) or of tuples of str (a
        sequence of columns), labels a list of int ids.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a row with too few columns, an empty text or label, a
            label not in `label_names` (each naming the file and line), an
            unknown column name, or a file without rows.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "dev.tsv"
    >>> _ = path.write_text("label\\tsentence\\n1\\tgreat fun\\n0\\ta \\"bore\\"\\n")
    >>> data = read_classification_tsv(path)
    >>> data.texts, data.labels, data.label_names
    (['great fun', 'a "bore"'], [1, 0], ['0', '1'])
    """
    path = _existing_file(path)
    single = isinstance(text_columns, (int, str))
    if single:
        text_columns = (text_columns,)
    text_columns = tuple(text_columns)
    if not text_columns:
        raise ValueError("`text_columns` must name at least one column.")
    if label_names is not None:
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names) or not label_names:
            raise ValueError(
                f"`label_names` must be non-empty and hold each label once. "
                f"Received: {label_names!r}."
            )
    rows = []
    names = None
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        for number, row in enumerate(reader, 1):
            if not row or not "".join(row).strip():
                continue
            if header and names is None:
                names = [name.strip() for name in row]
                continue
            rows.append((number, row))
    text_indices = [_column_index(c, names, path, "text_columns") for c in text_columns]
    label_index = _column_index(label_column, names, path, "label_column")
    needed = max(text_indices + [label_index]) + 1
    texts, raw_labels = [], []
    for number, row in rows:
        if len(row) < needed:
            raise ValueError(
                f"{path}:{number}: expected at least {needed} tab-separated columns "
                f"(texts {text_indices}, label {label_index}), got {len(row)}: {row!r}."
            )
        label = row[label_index].strip()
        values = tuple(row[i].strip() for i in text_indices)
        if not label or not all(values):
            raise ValueError(
                f"{path}:{number}: an empty {'label' if not label else 'text'} in {row!r}."
            )
        texts.append(values[0] if single else values)
        raw_labels.append((number, label))
    if not texts:
        raise ValueError(f"{path}: no labelled rows.")
    if label_names is None:
        found = {label for _, label in raw_labels}
        try:
            label_names = sorted(found, key=int)
        except ValueError:
            label_names = sorted(found)
    ids = {name: i for i, name in enumerate(label_names)}
    labels = []
    for number, label in raw_labels:
        if label not in ids:
            raise ValueError(
                f"{path}:{number}: the label {label!r} is not in `label_names` "
                f"{label_names}. Read every split with the training split's label_names."
            )
        labels.append(ids[label])
    return LabelledTexts(texts, labels, list(label_names))


__all__ = [
    "DOCSTART",
    "LabelledTexts",
    "TaggedSentence",
    "read_classification_tsv",
    "read_conll",
    "tag_set",
    "validate_tags",
]
