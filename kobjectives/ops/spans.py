"""Entity spans of IOB tag sequences, as tensor functions.

The counts behind entity-level (span) precision, recall and F1 of a tagger,
with the semantics of the CoNLL evaluation script `conlleval` and of seqeval:

- `parse_iob_tags`: checks a tag list (`["O", "B-PER", "I-PER", ...]`,
  indexed by tag id) and derives the lookup tables of the ops: the prefix
  code and the entity type id of every tag id.
- `span_boundaries`: per position, whether a chunk starts there and whether
  one ends there.
- `span_counts`: per example and entity type, the true positives, predicted
  and gold entities, from the tag ids of the gold and the predicted
  sequences and a mask of the positions that are words.

Chunks (default mode, conlleval's and seqeval's default `get_entities`).
Position `i` *continues* a chunk when its tag is `I-X` and the tag before it
is `B-X` or `I-X` (the same type). A chunk starts at every `B-` or `I-` tag
that does not continue one: at `B-X` after anything (`B-X` after `I-X`
too), at `I-X` after `O`, at `I-X` after a tag of another type, and at `I-X`
first in the sentence. A chunk ends at every `B-` or `I-` tag that the next
tag does not continue: before `O`, before `B-`, before a tag of another type,
and at the end of the sentence.

Strict mode (seqeval's `mode="strict", scheme=IOB2`). Only well-formed IOB2
chunks count: a chunk is `B-X` followed by `I-X`s. Chunks start only at
`B-` tags and end as above; an `I-X` that continues no chunk of type `X` is
not part of any entity.

An entity is `(start, end, type)`; a prediction is a true positive when it
equals a gold entity in all three. The positions of mask 0 (sub-word pieces
after a word's first, padding) are removed before the chunks are read: the
sentence is the sequence of its masked-in positions, so a chunk may run
across removed positions.

Tags are `"O"` and `"B-<type>"` / `"I-<type>"` (the type is everything after
the first hyphen). Other tags, which seqeval would read with guessed rules
(a tag without a prefix such as `"PER"`, the `E-`/`S-` prefixes of IOBES),
are refused by `parse_iob_tags` rather than read in a way the user did not
mean.

All tensor functions are shape-static and XLA-compilable.

References:
    Ramshaw & Marcus, 1995, "Text Chunking using Transformation-Based
    Learning" (IOB tags); Tjong Kim Sang & Buchholz, 2000, "Introduction to
    the CoNLL-2000 Shared Task: Chunking" (the `conlleval` script); Tjong Kim
    Sang & De Meulder, 2003, "Introduction to the CoNLL-2003 Shared Task:
    Language-Independent Named Entity Recognition"; Nakayama, 2018, seqeval,
    https://github.com/chakki-works/seqeval
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops.labels import known_values

PREFIX_O = 0
"""The prefix code of the outside tag `"O"`."""
PREFIX_B = 1
"""The prefix code of `"B-<type>"` tags (the beginning of a chunk)."""
PREFIX_I = 2
"""The prefix code of `"I-<type>"` tags (inside a chunk)."""

_PREFIX_CODES = {"B": PREFIX_B, "I": PREFIX_I}


def parse_iob_tags(tags):
    """Checks an IOB tag list and derives the lookup tables of the span ops.

    Args:
        tags: sequence of str, the tag of every tag id: exactly one `"O"`
            and any `"B-<type>"` / `"I-<type>"` tags (IOB1 or IOB2), each
            once. The type is the text after the first hyphen.

    Returns:
        `(prefixes, type_ids, types)`: lists of int with one entry per tag
        id, the prefix code (`PREFIX_O`, `PREFIX_B` or `PREFIX_I`) and the
        index of the tag's type in `types` (-1 for `"O"`), and `types`, the
        entity types in the order of their first tag.

    Raises:
        ValueError: naming the tag, for a tag that is not a string, a
            duplicate, a prefix other than `B-`/`I-` (an unprefixed tag such
            as `"PER"`, the `E-`/`S-` tags of IOBES, lower case `"b-per"`),
            an empty type (`"B-"`), a type with white space or with a
            hyphen at either end, or a list without `"O"`.

    Example:

    >>> parse_iob_tags(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    ([0, 1, 2, 1, 2], [-1, 0, 0, 1, 1], ['PER', 'LOC'])
    >>> parse_iob_tags(["O", "PER"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `tags` has 'PER' (tag id 1), which is not "O", "B-<type>" or "I-<type>"...
    """
    if isinstance(tags, (str, bytes)) or not hasattr(tags, "__iter__"):
        raise ValueError(
            "`tags` must be a list of tag strings indexed by tag id, e.g. "
            f'["O", "B-PER", "I-PER"]. Received: tags={tags!r}'
        )
    tags = list(tags)
    prefixes, type_ids, types, seen = [], [], [], {}
    for index, tag in enumerate(tags):
        where = f"`tags` has {tag!r} (tag id {index})"
        if not isinstance(tag, str):
            raise ValueError(f"{where}: every tag must be a str such as 'B-PER'.")
        if tag in seen:
            raise ValueError(
                f"{where}, a duplicate of tag id {seen[tag]}: each tag must appear "
                "once (the list maps tag ids to tags)."
            )
        seen[tag] = index
        if tag == "O":
            prefixes.append(PREFIX_O)
            type_ids.append(-1)
            continue
        prefix, hyphen, type_ = tag.partition("-")
        if prefix not in _PREFIX_CODES or not hyphen:
            raise ValueError(
                f'{where}, which is not "O", "B-<type>" or "I-<type>". Only IOB '
                "tags are read (prefix B- or I-, upper case, a hyphen, then the "
                "entity type); write unprefixed tags as B-/I- tags and convert "
                "IOBES (E-, S-) tags to IOB2."
            )
        if not type_:
            raise ValueError(
                f"{where}, which has an empty entity type: write "
                f"{prefix}-<type>, e.g. {prefix}-PER."
            )
        if type_ != type_.strip("-") or any(c.isspace() for c in type_):
            raise ValueError(
                f"{where}: an entity type must not hold white space or begin or "
                "end with a hyphen."
            )
        if type_ not in types:
            types.append(type_)
        prefixes.append(_PREFIX_CODES[prefix])
        type_ids.append(types.index(type_))
    if "O" not in seen:
        raise ValueError(
            f'`tags` has no "O" tag: add "O", the tag of the words outside every '
            f"entity. Received: tags={tags!r}"
        )
    return prefixes, type_ids, types


def _dim(x, axis):
    static = x.shape[axis]
    return int(static) if static is not None else tf.shape(x)[axis]


def _row_keys(x, slots):
    """`row * slots` for every entry of the `[batch, length]` tensor `x`."""
    rows = tf.range(_dim(x, 0), dtype=tf.int32) * slots
    return tf.broadcast_to(rows[:, None], tf.shape(x))


def _compact(values, keep):
    """The kept entries of each row, in order, packed at the row's start.

    Args:
        values: int32 `[batch, length]`.
        keep: bool `[batch, length]`.

    Returns:
        `(packed, used)`: int32 `[batch, length]` (0 in unused slots) and
        bool `[batch, length]`, the slots that hold a kept entry.
    """
    batch, length = _dim(values, 0), _dim(values, 1)
    keep_int = tf.cast(keep, tf.int32)
    slot = tf.cumsum(keep_int, axis=1, exclusive=True)
    keys = _row_keys(values, length) + slot
    # Each used slot receives the value of exactly one kept entry; the other
    # entries add 0 to whatever slot they point at.
    packed = tf.math.unsorted_segment_sum(
        tf.where(keep, values, 0), keys, batch * length
    )
    packed = tf.reshape(packed, tf.shape(values))
    used = tf.range(length)[None, :] < tf.reduce_sum(keep_int, axis=1, keepdims=True)
    return packed, used


def _next_true(flags):
    """The index of the first `True` at or after each position of each row
    (the row length where there is none), int32 `[batch, length]`."""
    batch, length = _dim(flags, 0), _dim(flags, 1)
    # Number of flags at or after each position: every flag has its own
    # count, and the first flag at or after `i` is the one with `i`'s count.
    after = tf.cumsum(tf.cast(flags, tf.int32), axis=1, reverse=True)
    keys = _row_keys(flags, length + 1) + after
    positions = tf.broadcast_to(tf.range(length)[None, :], tf.shape(after))
    flag_at = tf.math.unsorted_segment_max(
        tf.where(flags, positions, -1), keys, batch * (length + 1)
    )
    return tf.where(after > 0, tf.gather(flag_at, keys), length)


def span_boundaries(prefix, type_id, strict=False):
    """Where chunks start and end in IOB sequences.

    Args:
        prefix: int32 `[batch, length]`, the prefix code of each position's
            tag (`PREFIX_O`, `PREFIX_B` or `PREFIX_I`; positions past a
            sentence's end hold `PREFIX_O`).
        type_id: int32 `[batch, length]`, the entity type id of each
            position's tag (any value where `prefix` is `PREFIX_O`).
        strict: bool. False: conlleval's rules (a chunk starts at every
            tag that does not continue one); True: IOB2 (chunks start only
            at `B-` tags).

    Returns:
        `(starts, ends)`: bool `[batch, length]`, a chunk starts / ends at
        the position. The chunk starting at `i` ends at the first end at or
        after `i`.

    Example:

    >>> prefix = tf.constant([[2, 2, 1, 2, 0]])  # I-PER I-LOC B-LOC I-LOC O
    >>> type_id = tf.constant([[0, 1, 1, 1, -1]])
    >>> starts, ends = span_boundaries(prefix, type_id)
    >>> starts.numpy().astype(int).tolist(), ends.numpy().astype(int).tolist()
    ([[1, 1, 1, 0, 0]], [[1, 1, 0, 1, 0]])
    >>> span_boundaries(prefix, type_id, strict=True)[0].numpy().astype(int).tolist()
    [[0, 0, 1, 0, 0]]
    """
    prefix = tf.convert_to_tensor(prefix, tf.int32)
    type_id = tf.convert_to_tensor(type_id, tf.int32)
    inside = prefix != PREFIX_O
    previous_inside = tf.pad(inside[:, :-1], [[0, 0], [1, 0]])
    previous_type = tf.pad(type_id[:, :-1], [[0, 0], [1, 0]])
    # An I-X right after a B-X or I-X continues that chunk.
    continues = (prefix == PREFIX_I) & previous_inside & (previous_type == type_id)
    next_continues = tf.pad(continues[:, 1:], [[0, 0], [0, 1]])
    ends = inside & ~next_continues
    starts = (prefix == PREFIX_B) if strict else inside & ~continues
    return starts, ends


def _valid_ids(ids, num_tags):
    valid = (ids >= 0) & (ids < tf.cast(num_tags, ids.dtype))
    if ids.dtype.is_floating:
        valid &= tf.equal(ids, tf.floor(ids))
    return valid


def _check_ids(ids, keep, num_tags, name):
    """Fails where `ids` hold an invalid tag id at a kept position: a
    `ValueError` for known values, a `tf.debugging` assert in a graph (dropped
    by XLA). Returns the ids' validity, bool `[batch, length]`."""
    valid = _valid_ids(ids, num_tags)
    message = (
        f"`{name}` must hold tag ids in [0, {num_tags}) (the indices of `tags`) "
        "at every position of weight > 0. Give padding and ignored positions "
        "sample_weight 0."
    )
    values, kept = known_values(ids), known_values(keep)
    if values is not None and kept is not None:
        bad = ~np.asarray(known_values(valid)) & np.asarray(kept, bool)
        if bad.any():
            raise ValueError(f"{message} Received {np.asarray(values)[bad].ravel()[0]!r}.")
        return valid
    if tf.executing_eagerly():
        return valid
    check = tf.debugging.Assert(tf.reduce_all(valid | ~keep), [message])
    with tf.control_dependencies([check]):
        return tf.identity(valid)


def span_counts(y_true, y_pred, mask, prefixes, types, num_types, strict=False):
    """Per-example, per-type span counts: true positives, predicted, gold.

    The positions where `mask` is 0 are removed first (the sentence is its
    masked-in positions, in order); the chunks of the gold and the
    predicted sequences are then read by `span_boundaries`, and a predicted
    chunk is a true positive when a gold chunk has the same start, end and
    type.

    A tag id outside `[0, len(prefixes))` at a masked-in position fails: a
    `ValueError` when the values are known (eager), an
    `InvalidArgumentError` from a `tf.debugging` assert in a graph. Under
    `jit_compile=True`, where XLA drops asserts, the example's counts are
    NaN instead (never a finite, wrong count). Ids at masked-out positions
    are not read (e.g. -100 on padding).

    Args:
        y_true: int `[batch, length]`, the gold tag ids (floats holding whole
            numbers are accepted).
        y_pred: int `[batch, length]`, the predicted tag ids.
        mask: `[batch, length]` bool or float (positions of weight > 0 are
            words), or None (every position is a word).
        prefixes: int `[num_tags]` (list or tensor), the prefix code of every
            tag id (`PREFIX_O`, `PREFIX_B`, `PREFIX_I`), as from
            `parse_iob_tags`.
        types: int `[num_tags]`, the entity type id in `[0, num_types)` of
            every tag id (ignored for `O`).
        num_types: int, the number of entity types.
        strict: bool, seqeval's strict IOB2 mode instead of conlleval's rules.

    Returns:
        float32 `[batch, num_types, 3]`: per example and type, the number of
        true positives, of predicted entities and of gold entities (whole
        numbers).

    Reference:
        Tjong Kim Sang & Buchholz, 2000 (conlleval); Nakayama, 2018, seqeval.

    Example:

    >>> prefixes, types, names = parse_iob_tags(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    >>> y_true = [[1, 2, 0, 3, 4]]  # B-PER I-PER O B-LOC I-LOC
    >>> y_pred = [[1, 2, 0, 4, 4]]  # B-PER I-PER O I-LOC I-LOC
    >>> span_counts(y_true, y_pred, None, prefixes, types, len(names)).numpy().tolist()
    [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]
    >>> span_counts(y_true, y_pred, None, prefixes, types, len(names),
    ...             strict=True).numpy().tolist()  # the I-LOC chunk is not IOB2
    [[[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]
    """
    prefixes = tf.convert_to_tensor(prefixes, tf.int32)
    types = tf.convert_to_tensor(types, tf.int32)
    num_tags = prefixes.shape[0]
    if num_tags is None:
        num_tags = tf.shape(prefixes)[0]
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_true.shape.rank != 2 or y_pred.shape.rank != 2:
        raise ValueError(
            "`y_true` and `y_pred` must be tag ids of shape [batch, length]. "
            f"Received shapes {y_true.shape} and {y_pred.shape}."
        )
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape [batch, length]. "
            f"Received {y_true.shape} and {y_pred.shape}."
        )
    if mask is None:
        keep = tf.ones(tf.shape(y_true), tf.bool)
    else:
        mask = tf.convert_to_tensor(mask)
        keep = mask if mask.dtype == tf.bool else mask > tf.zeros([], mask.dtype)
        keep = tf.broadcast_to(keep, tf.shape(y_true))

    invalid = []
    starts_ends_types = []
    for ids, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        valid = _check_ids(ids, keep, num_tags, name)
        invalid.append(tf.reduce_any(~valid & keep, axis=1))
        safe = tf.where(valid, tf.cast(ids, tf.int32), 0)
        prefix = tf.where(valid, tf.gather(prefixes, safe), PREFIX_O)
        type_id = tf.gather(types, safe)
        # Pack the words at the start of the row; the rest reads as O.
        prefix, used = _compact(prefix, keep)
        type_id, _ = _compact(type_id, keep)
        prefix = tf.where(used, prefix, PREFIX_O)
        starts, ends = span_boundaries(prefix, type_id, strict=strict)
        starts_ends_types.append((starts, _next_true(ends), type_id))

    (gold_starts, gold_ends, gold_types), (pred_starts, pred_ends, pred_types) = (
        starts_ends_types
    )
    matches = (
        gold_starts & pred_starts & (gold_types == pred_types) & (gold_ends == pred_ends)
    )

    def per_type(flags, type_id):
        one_hot = tf.one_hot(tf.where(flags, type_id, -1), num_types, dtype=tf.float32)
        return tf.reduce_sum(one_hot, axis=1)  # [batch, num_types]

    counts = tf.stack(
        [
            per_type(matches, gold_types),
            per_type(pred_starts, pred_types),
            per_type(gold_starts, gold_types),
        ],
        axis=-1,
    )
    poisoned = (invalid[0] | invalid[1])[:, None, None]
    return tf.where(poisoned, tf.constant(float("nan")), counts)
