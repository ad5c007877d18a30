"""Readers for sentence-similarity data: STS-B, SICK, NLI triples; sentences.

Reserved splits are guarded: `read_stsb` refuses `sts-test.csv` and
`read_sick` refuses the `TEST` rows unless `allow_reserved=True` is passed,
which only a final evaluation should do (never train, tune or choose
hyperparameters on them).
"""

import csv
import dataclasses
import os
import pathlib
import re

import numpy as np

from kobjectives.data.split import train_validation_split

RESERVED_STSB_FILES = ("sts-test.csv",)
SICK_SPLITS = ("TRAIN", "TRIAL", "TEST")
RESERVED_SICK_SPLITS = ("TEST",)


@dataclasses.dataclass
class SentencePairs:
    """Sentence pairs with gold similarity scores.

    Attributes:
        sentences1: list of str.
        sentences2: list of str, the same length.
        scores: float64 numpy array `[n]` (STS-B: 0-5; SICK: 1-5).
    """

    sentences1: list
    sentences2: list
    scores: np.ndarray

    def __len__(self):
        return len(self.scores)


def _check_file(path):
    path = pathlib.Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    return path


def read_stsb(path, allow_reserved=False):
    """Reads an STS Benchmark file (`sts-train.csv`, `sts-dev.csv`, ...).

    The files are tab-separated without a header and without quoting (a
    sentence may contain `"`): genre, file, year, id, score, sentence 1,
    sentence 2 (0-based columns 4, 5, 6), and sometimes extra trailing
    columns (license notes), which are ignored.

    Args:
        path: the file.
        allow_reserved: read `sts-test.csv` (reserved for final evaluation).

    Returns:
        `SentencePairs` with scores in [0, 5].

    Raises:
        ValueError: a reserved file without `allow_reserved`, or a malformed
            row (the message names the line).
    """
    path = _check_file(path)
    if path.name in RESERVED_STSB_FILES and not allow_reserved:
        raise ValueError(
            f"{path.name} is the reserved STS-B test split: use it for final "
            "evaluation only, with allow_reserved=True. Tune on sts-dev.csv."
        )
    first, second, scores = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 7:
                raise ValueError(
                    f"{path}:{number}: expected at least 7 tab-separated columns "
                    f"(genre, file, year, id, score, sentence1, sentence2), got {len(row)}."
                )
            try:
                score = float(row[4])
            except ValueError:
                raise ValueError(f"{path}:{number}: the score column holds {row[4]!r}.") from None
            first.append(row[5].strip())
            second.append(row[6].strip())
            scores.append(score)
    return SentencePairs(first, second, np.asarray(scores, np.float64))


def read_sick(path, splits=("TRAIN", "TRIAL"), allow_reserved=False):
    """Reads `SICK.txt` (tab-separated with a header), keeping some splits.

    Args:
        path: `SICK.txt`.
        splits: the `SemEval_set` values to keep; defaults to TRAIN and TRIAL
            (TEST is reserved).
        allow_reserved: allow `"TEST"` in `splits` (final evaluation only).

    Returns:
        `SentencePairs` (`relatedness_score`, 1-5), plus the entailment
        labels as attribute `labels` (list of str).
    """
    path = _check_file(path)
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(s.upper() for s in splits)
    unknown = sorted(set(splits) - set(SICK_SPLITS))
    if unknown:
        raise ValueError(f"Unknown SICK splits {unknown}. Valid: {list(SICK_SPLITS)}.")
    if set(splits) & set(RESERVED_SICK_SPLITS) and not allow_reserved:
        raise ValueError(
            "SICK's TEST rows are reserved for final evaluation: pass "
            "allow_reserved=True only for that. Tune on TRAIN/TRIAL."
        )
    first, second, scores, labels = [], [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        needed = {"sentence_A", "sentence_B", "relatedness_score", "SemEval_set"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing SICK columns {sorted(missing)}.")
        for row in reader:
            if row["SemEval_set"].strip().upper() not in splits:
                continue
            first.append(row["sentence_A"].strip())
            second.append(row["sentence_B"].strip())
            scores.append(float(row["relatedness_score"]))
            labels.append((row.get("entailment_label") or "").strip())
    pairs = SentencePairs(first, second, np.asarray(scores, np.float64))
    pairs.labels = labels
    return pairs


def read_nli_triples(path, max_rows=None):
    """Reads (anchor, entailment positive, contradiction hard negative) triples.

    The TSV has a header `source, anchor, positive, hard_negative` (the
    `source` column is optional); rows with an empty text are skipped.

    Args:
        path: the file, e.g. `../shared/data/nli/nli_triples_dev.tsv`.
        max_rows: optional int, keep the first rows only.

    Returns:
        A dict `{"anchor": [...], "positive": [...], "negative": [...]}` of
        equal-length lists of str.
    """
    path = _check_file(path)
    out = {"anchor": [], "positive": [], "negative": []}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        needed = {"anchor", "positive", "hard_negative"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: an NLI triples file needs the columns anchor, positive, "
                f"hard_negative (header row). Missing: {sorted(missing)}."
            )
        for row in reader:
            texts = [(row.get(k) or "").strip() for k in ("anchor", "positive", "hard_negative")]
            if not all(texts):
                continue
            for key, text in zip(("anchor", "positive", "negative"), texts):
                out[key].append(text)
            if max_rows and len(out["anchor"]) >= max_rows:
                break
    if not out["anchor"]:
        raise ValueError(f"{path}: no complete (anchor, positive, hard_negative) rows.")
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def split_sentences(documents, min_characters=20, max_characters=300, max_sentences=None,
                    seed=0):
    """Splits documents into sentences (and lines), for unsupervised SimCSE.

    A light rule-based splitter: paragraphs (blank-line separated, their
    wrapped lines joined) first, then after `.`, `!` or `?`
    followed by whitespace and a capital letter or an opening bracket/quote.
    Fragments shorter than `min_characters` are dropped and longer ones
    than `max_characters` truncated at a word boundary; duplicates are removed
    (first occurrence kept), so the order is deterministic.

    Args:
        documents: iterable of str.
        min_characters: int.
        max_characters: int.
        max_sentences: optional int: keep a random subset of this many
            sentences (drawn with `numpy.random.default_rng(seed)`), in
            their order. None or 0 keeps all.
        seed: int, the seed of that subset.

    Returns:
        list of str.

    Example:

    >>> split_sentences(["One sentence here. Another one there.", "tiny"], 5)
    ['One sentence here.', 'Another one there.']
    >>> split_sentences(["One sentence here. Another one there."], 5, max_sentences=1)
    ['One sentence here.']
    """
    seen = set()
    sentences = []
    for document in documents:
        for line in re.split(r"\n\s*\n", document):
            line = " ".join(line.split())
            for sentence in _SENTENCE_END.split(line):
                sentence = sentence.strip()
                if len(sentence) < min_characters:
                    continue
                if len(sentence) > max_characters:
                    sentence = sentence[:max_characters].rsplit(" ", 1)[0]
                if sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
    if max_sentences:
        order = np.random.default_rng(seed).permutation(len(sentences))[:max_sentences]
        sentences = [sentences[i] for i in sorted(order)]
    return sentences


def split_nli_triples(triples, validation_fraction=0.05, seed=0):
    """Splits NLI triples into train and validation, whole triples, deterministically.

    A triple's side is decided by a stable hash of its three texts
    (`kobjectives.data.train_validation_split` over the joined triple), so
    it does not depend on the file's order; each side keeps that order.

    Args:
        triples: dict of equal-length lists `{"anchor", "positive",
            "negative"}`, as `read_nli_triples` returns.
        validation_fraction: float in `(0, 1)`.
        seed: int.

    Returns:
        `(train, validation)`: two dicts of the same three columns.

    Raises:
        ValueError: a column is missing or the columns differ in length, or
            as `train_validation_split`.

    Example:

    >>> triples = {"anchor": [f"a{i}" for i in range(10)],
    ...            "positive": [f"p{i}" for i in range(10)],
    ...            "negative": [f"n{i}" for i in range(10)]}
    >>> train, validation = split_nli_triples(triples, 0.2)
    >>> len(train["anchor"]), len(validation["negative"])
    (8, 2)
    >>> [a[1:] == p[1:] for a, p in zip(train["anchor"], train["positive"])] == [True] * 8
    True
    """
    columns = ("anchor", "positive", "negative")
    missing = [c for c in columns if c not in triples]
    if missing:
        raise ValueError(
            f"`triples` needs the columns {list(columns)} (read_nli_triples' dict); "
            f"missing {missing}.")
    rows = list(zip(*(triples[c] for c in columns)))
    if any(len(triples[c]) != len(rows) for c in columns):
        raise ValueError(
            "The triple columns must have equal lengths. Received "
            f"{ {c: len(triples[c]) for c in columns} }.")
    keys = [" ".join(row) for row in rows]
    train_keys, _ = train_validation_split(keys, validation_fraction, seed=seed)
    train_keys = set(train_keys)
    sides = ([r for r, k in zip(rows, keys) if k in train_keys],
             [r for r, k in zip(rows, keys) if k not in train_keys])
    return tuple({c: [row[i] for row in side] for i, c in enumerate(columns)} for side in sides)


__all__ = [
    "SentencePairs",
    "read_nli_triples",
    "read_sick",
    "read_stsb",
    "split_nli_triples",
    "split_sentences",
]
