import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops.spans import PREFIX_B
from kobjectives.ops.spans import PREFIX_I
from kobjectives.ops.spans import PREFIX_O
from kobjectives.ops.spans import parse_iob_tags
from kobjectives.ops.spans import span_boundaries
from kobjectives.ops.spans import span_counts

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
ID = {tag: i for i, tag in enumerate(TAGS)}
PREFIXES, TYPE_IDS, TYPES = parse_iob_tags(TAGS)


# -- an independent reference --------------------------------------------------------
# conlleval's rules as the script documents them: a table of (previous tag,
# tag) transitions plus the type-change rule, scanned left to right over the
# sentence followed by an "O".


def _split(tag):
    if tag == "O":
        return "O", ""
    prefix, _, type_ = tag.partition("-")
    return prefix, type_


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    if (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O")}:
        return True
    return prev_tag != "O" and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    if (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I")}:
        return True
    return tag != "O" and prev_type != type_


def conlleval_entities(sentence):
    """`{(start, end, type)}` of a list of tag strings, conlleval's rules."""
    entities, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, tag_string in enumerate(list(sentence) + ["O"]):
        tag, type_ = _split(tag_string)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            entities.add((begin, i - 1, prev_type))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def iob2_entities(sentence):
    """`{(start, end, type)}` of well-formed IOB2 chunks: B-X then I-X*."""
    entities, i = set(), 0
    while i < len(sentence):
        tag, type_ = _split(sentence[i])
        if tag != "B":
            i += 1
            continue
        j = i + 1
        while j < len(sentence) and sentence[j] == f"I-{type_}":
            j += 1
        entities.add((i, j - 1, type_))
        i = j
    return entities


def reference_counts(y_true, y_pred, mask, strict):
    """`[batch, num_types, 3]` (tp, predicted, gold) from the references."""
    read = iob2_entities if strict else conlleval_entities
    counts = np.zeros((len(y_true), len(TYPES), 3))
    for row, (gold_ids, pred_ids, keep) in enumerate(zip(y_true, y_pred, mask)):
        gold = read([TAGS[t] for t, k in zip(gold_ids, keep) if k])
        pred = read([TAGS[t] for t, k in zip(pred_ids, keep) if k])
        for entities, column in ((gold & pred, 0), (pred, 1), (gold, 2)):
            for _, _, type_ in entities:
                counts[row, TYPES.index(type_), column] += 1
    return counts


def ids(*sentences):
    return np.array([[ID[tag] for tag in sentence.split()] for sentence in sentences])


def entities_of(sentence, strict=False, mask=None):
    """The `(start, end, type)` entities the op reads, from its boundaries."""
    tags = sentence.split()
    prefix = [[PREFIXES[ID[t]] for t in tags]]
    type_id = [[TYPE_IDS[ID[t]] for t in tags]]
    starts, ends = (x.numpy()[0] for x in span_boundaries(prefix, type_id, strict=strict))
    found = set()
    for i in np.flatnonzero(starts):
        end = i + int(np.argmax(ends[i:]))
        assert ends[end]
        found.add((int(i), end, TYPES[TYPE_IDS[ID[tags[i]]]]))
    return found


# -- the rules, by hand ------------------------------------------------------------------


DEFAULT_CASES = [
    ("B-PER I-PER O B-LOC", {(0, 1, "PER"), (3, 3, "LOC")}),
    ("O I-PER I-PER O", {(1, 2, "PER")}),  # I after O starts a chunk
    ("I-PER I-PER", {(0, 1, "PER")}),  # I first in the sentence starts one
    ("B-PER I-LOC I-LOC", {(0, 0, "PER"), (1, 2, "LOC")}),  # type change
    ("I-PER I-LOC", {(0, 0, "PER"), (1, 1, "LOC")}),
    ("B-PER I-PER B-PER", {(0, 1, "PER"), (2, 2, "PER")}),  # B after I
    ("B-PER B-PER", {(0, 0, "PER"), (1, 1, "PER")}),  # B after B
    ("O B-LOC I-LOC", {(1, 2, "LOC")}),  # the sentence end ends a chunk
    ("O O", set()),
]


def test_default_mode_rules():
    for sentence, expected in DEFAULT_CASES:
        assert entities_of(sentence) == expected == conlleval_entities(sentence.split()), sentence


STRICT_CASES = [
    ("B-PER I-PER O B-LOC", {(0, 1, "PER"), (3, 3, "LOC")}),
    ("O I-PER I-PER O", set()),  # an I after O is no entity
    ("I-PER B-PER I-PER", {(1, 2, "PER")}),
    ("B-PER I-LOC I-LOC", {(0, 0, "PER")}),  # I of another type: not continued
    ("B-PER I-PER B-PER", {(0, 1, "PER"), (2, 2, "PER")}),
    ("B-LOC I-LOC", {(0, 1, "LOC")}),  # the sentence end
]


def test_strict_mode_rules():
    for sentence, expected in STRICT_CASES:
        assert (entities_of(sentence, strict=True) == expected
                == iob2_entities(sentence.split())), sentence


def test_counts_on_a_hand_case_in_both_modes():
    y_true = ids("B-PER I-PER O B-LOC I-LOC O", "B-ORG I-ORG I-ORG O B-PER O")
    y_pred = ids("B-PER I-PER O I-LOC I-LOC O", "B-ORG I-ORG O O B-PER I-PER")
    default = span_counts(y_true, y_pred, None, PREFIXES, TYPE_IDS, len(TYPES))
    # PER: 1 of 1 (row 0); row 1 predicts PER 4-5 against gold 4-4. LOC: the
    # I-LOC I-LOC chunk matches in default mode. ORG: 0-1 against 0-2.
    np.testing.assert_array_equal(default.numpy(), [
        [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 1], [0, 0, 0], [0, 1, 1]],
    ])
    strict = span_counts(y_true, y_pred, None, PREFIXES, TYPE_IDS, len(TYPES), strict=True)
    np.testing.assert_array_equal(strict.numpy()[0], [[1, 1, 1], [0, 0, 1], [0, 0, 0]])


def test_masked_positions_are_removed_before_reading_spans():
    # "Wash ##ington lives": the second piece has weight 0 and any tag.
    y_true = np.array([[ID["B-LOC"], -100, ID["I-LOC"], ID["O"], -1]])
    y_pred = np.array([[ID["B-LOC"], ID["O"], ID["I-LOC"], ID["O"], ID["B-PER"]]])
    mask = np.array([[1.0, 0.0, 1.0, 1.0, 0.0]])
    counts = span_counts(y_true, y_pred, mask, PREFIXES, TYPE_IDS, len(TYPES), strict=True)
    # One LOC entity over words 0-1 in both, across the removed piece.
    np.testing.assert_array_equal(counts.numpy()[0], [[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    # Without the mask the O piece splits the prediction (and -100 is no tag id).
    masked = span_counts(y_pred, y_pred, mask, PREFIXES, TYPE_IDS, len(TYPES))
    assert masked.numpy()[0, 1].tolist() == [1, 1, 1]
    split = span_counts(y_pred, y_pred, None, PREFIXES, TYPE_IDS, len(TYPES))
    assert split.numpy()[0].tolist() == [[1, 1, 1], [2, 2, 2], [0, 0, 0]]


# -- random sequences against the reference -------------------------------------------


def random_batch(seed, batch=160, length=12):
    """Tag ids with many ill-formed I tags (I is drawn half of the time),
    random padding and random weight-0 pieces."""
    rng = np.random.default_rng(seed)
    prefix = rng.choice([PREFIX_O, PREFIX_B, PREFIX_I], p=[0.3, 0.2, 0.5], size=(2, batch, length))
    type_ = rng.integers(0, len(TYPES), size=(2, batch, length))
    tag_ids = np.where(prefix == PREFIX_O, 0, 1 + 2 * type_ + (prefix == PREFIX_I))
    lengths = rng.integers(0, length + 1, size=(batch, 1))
    mask = (np.arange(length) < lengths) & (rng.random((batch, length)) < 0.85)
    return tag_ids[0], tag_ids[1], mask


def test_random_sequences_match_the_reference():
    for strict, seed in ((False, 0), (False, 1), (True, 0), (True, 1)):
        y_true, y_pred, mask = random_batch(seed)
        # Predictions near the gold ones too, so that there are many matches.
        near = np.where(np.random.default_rng(seed + 5).random(y_true.shape) < 0.8, y_true, y_pred)
        for pred in (y_pred, near):
            got = span_counts(y_true, pred, mask, PREFIXES, TYPE_IDS, len(TYPES), strict=strict)
            np.testing.assert_array_equal(got.numpy(), reference_counts(y_true, pred, mask, strict),
                                          err_msg=f"strict={strict}, seed={seed}")
    assert reference_counts(y_true, near, mask, strict)[..., 0].sum() > 50


def test_xla_and_dynamic_shapes_match_eager():
    y_true, y_pred, mask = random_batch(3, batch=16)
    eager = span_counts(y_true, y_pred, mask, PREFIXES, TYPE_IDS, len(TYPES))
    spec = tf.TensorSpec([None, None], tf.int64)

    def counts(a, b, m):
        return span_counts(a, b, m, PREFIXES, TYPE_IDS, len(TYPES))

    xla = tf.function(counts, jit_compile=True)(y_true, y_pred, mask)
    dynamic = tf.function(counts, input_signature=[spec, spec, tf.TensorSpec([None, None], tf.bool)])
    np.testing.assert_array_equal(xla.numpy(), eager.numpy())
    np.testing.assert_array_equal(dynamic(y_true, y_pred, mask).numpy(), eager.numpy())


# -- bad ids ---------------------------------------------------------------------------


def test_out_of_range_ids_at_words_fail():
    y_true, y_pred = ids("B-PER O"), np.array([[1, 7]])
    with pytest.raises(ValueError, match=r"`y_pred` must hold tag ids in \[0, 7\)"):
        span_counts(y_true, y_pred, None, PREFIXES, TYPE_IDS, len(TYPES))
    with pytest.raises(ValueError, match="`y_true`"):
        span_counts(np.array([[-1, 0]]), y_true, None, PREFIXES, TYPE_IDS, len(TYPES))
    graph = tf.function(lambda a, b: span_counts(a, b, None, PREFIXES, TYPE_IDS, len(TYPES)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`y_pred` must hold tag ids"):
        graph(tf.constant(y_true), tf.constant(y_pred))
    # Under XLA the assert is dropped: the example's counts are NaN, not wrapped.
    xla = tf.function(lambda a, b: span_counts(a, b, None, PREFIXES, TYPE_IDS, len(TYPES)),
                      jit_compile=True)
    counts = xla(tf.constant(np.concatenate([y_true, y_true])),
                 tf.constant(np.concatenate([y_pred, y_true]))).numpy()
    assert np.isnan(counts[0]).all() and counts[1].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]


def test_ids_at_weight_zero_are_not_read():
    y_true = np.array([[1, 2, -100]])
    counts = span_counts(y_true, y_true, [[1, 1, 0]], PREFIXES, TYPE_IDS, len(TYPES))
    assert counts.numpy()[0, 0].tolist() == [1, 1, 1]


# -- the tag list ------------------------------------------------------------------------


def test_parse_iob_tags_tables():
    assert parse_iob_tags(TAGS) == (
        [PREFIX_O, PREFIX_B, PREFIX_I, PREFIX_B, PREFIX_I, PREFIX_B, PREFIX_I],
        [-1, 0, 0, 1, 1, 2, 2], ["PER", "LOC", "ORG"])
    # The type is everything after the first hyphen; I-only types are kept.
    assert parse_iob_tags(["I-B-X", "O"]) == ([PREFIX_I, PREFIX_O], [0, -1], ["B-X"])


BAD_TAGS = [
    (["O", "B-"], r"'B-' \(tag id 1\), which has an empty entity type"),
    (["O", "B"], r"'B' \(tag id 1\), which is not \"O\""),
    (["O", "PER"], r"'PER' \(tag id 1\), which is not"),
    (["O", "E-PER"], r"'E-PER' .*IOBES"),
    (["O", "b-per"], r"'b-per'"),
    (["O", "O-PER"], r"'O-PER'"),
    (["B-PER", "I-PER"], r'no "O" tag'),
    (["O", "B-PER", "B-PER"], r"'B-PER' \(tag id 2\), a duplicate of tag id 1"),
    (["O", "B-A B"], r"white space"),
    (["O", "B--X"], r"hyphen"),
    (["O", 3], r"3 \(tag id 1\): every tag must be a str"),
    ("O B-PER", r"list of tag strings"),
]


def test_parse_iob_tags_errors():
    for tags, match in BAD_TAGS:
        with pytest.raises(ValueError, match=match):
            parse_iob_tags(tags)
