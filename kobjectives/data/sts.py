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


def split_sentences(documents, min_characters=20, max_characters=300):
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

    Returns:
        list of str.
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
    return sentences


__all__ = [
    "SentencePairs",
    "read_nli_triples",
    "read_sick",
    "read_stsb",
    "split_sentences",
]
