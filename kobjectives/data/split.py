"""Deterministic train/validation split of a list of documents."""

import hashlib
import math
import numbers


def _document_key(seed, document):
    """A 64-bit key of (seed, content), stable across processes and hosts."""
    digest = hashlib.blake2b(
        f"{seed}\x00{document}".encode("utf-8"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def check_documents(documents):
    """`documents` as a list, after checking it is a sequence of `str`.

    Raises:
        TypeError: `documents` is a single string, or holds a non-string.
    """
    if isinstance(documents, (str, bytes)):
        raise TypeError(
            "`documents` must be a sequence of strings, not a single string. "
            "Wrap it in a list, or split it into documents first."
        )
    documents = list(documents)
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            raise TypeError(
                f"`documents` must hold strings; documents[{index}] is a "
                f"{type(document).__name__}."
            )
    return documents


def train_validation_split(documents, validation_fraction=0.05, seed=0):
    """Splits documents into train and validation sets, deterministically.

    Each document gets a key from a keyed BLAKE2 hash of `(seed, content)`
    (not Python's per-process salted `hash`), and the
    `round(validation_fraction * len(documents))` documents with the
    smallest keys (ties broken by position) form the validation set. The
    result is therefore identical across processes, machines and Python
    versions, the validation size is exact, and a document's side depends on
    its content, not its position: reordering the corpus does not move a
    document to the other side, and identical documents land on the same
    side (except possibly at the single boundary).

    Both sides are non-empty: the validation size is clipped to
    `[1, len(documents) - 1]`. Each side keeps the documents' original
    relative order.

    Args:
        documents: a sequence of `str` (at least 2).
        validation_fraction: float in the open interval `(0, 1)`.
        seed: int; a different seed gives a different (but equally
            deterministic) split.

    Returns:
        A `(train, validation)` tuple of `list[str]` that together hold every
        document exactly once.

    Raises:
        ValueError: `validation_fraction` is not in `(0, 1)`, or there are
            fewer than 2 documents.
        TypeError: `documents` is a single string, holds a non-string, or
            `seed` is not an int.

    Example:

    >>> documents = [f"document {i}" for i in range(100)]
    >>> train, validation = train_validation_split(documents, 0.1, seed=0)
    >>> len(train), len(validation)
    (90, 10)
    >>> train_validation_split(documents, 0.1, seed=0) == (train, validation)
    True
    """
    documents = check_documents(documents)
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, numbers.Real)
        or not math.isfinite(validation_fraction)
        or not 0.0 < validation_fraction < 1.0
    ):
        raise ValueError(
            "`validation_fraction` must be a float strictly between 0 and 1. "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int. Received: seed={seed!r}")
    if len(documents) < 2:
        raise ValueError(
            "`train_validation_split` needs at least 2 documents so that both "
            f"sides are non-empty. Received {len(documents)}."
        )
    count = len(documents)
    validation_size = min(
        max(round(validation_fraction * count), 1), count - 1
    )
    ranked = sorted(
        range(count),
        key=lambda index: (_document_key(int(seed), documents[index]), index),
    )
    validation_indices = set(ranked[:validation_size])
    train = []
    validation = []
    for index, document in enumerate(documents):
        (validation if index in validation_indices else train).append(
            document
        )
    return train, validation
