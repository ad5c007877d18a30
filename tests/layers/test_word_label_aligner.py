"""`WordLabelAligner`: first-piece and all-pieces labels, word ids,
truncation, words without pieces, batched/unbatched/`tf.data`, the layer
contract, errors; `word_tags_from_token_tags` and
`token_classification_inputs`."""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import WordLabelAligner
from kobjectives.layers import token_classification_inputs
from kobjectives.layers import word_tags_from_token_tags
from tests.harness import assert_layer_contract
from tests.harness import assert_same_structure_and_values

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "eu", "rejects", "germ", "##an", "call",
         "peter", "black", "##burn", "to", "boy", "##cott", "lamb", ".", "-"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3
EU, REJECTS, GERM, AN, CALL, PETER, BLACK, BURN = 4, 5, 6, 7, 8, 9, 10, 11
TAGS = ["O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
O, B_MISC, I_MISC, B_ORG, I_ORG, B_PER, I_PER = range(7)


def tokenizer():
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCAB, lowercase=True)


def aligner(length=10, **kwargs):
    kwargs.setdefault("start_token_id", CLS)
    kwargs.setdefault("end_token_id", SEP)
    return WordLabelAligner(tokenizer(), length, **kwargs)


def batch():
    return {
        "words": tf.ragged.constant([["EU", "rejects", "German", "call"],
                                     ["Peter", "Blackburn"]]),
        "tags": tf.ragged.constant([[B_ORG, O, B_MISC, O], [B_PER, I_PER]]),
    }


def numpy_outputs(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def test_first_piece_labels_the_hand_case():
    out = numpy_outputs(aligner()(batch()))
    np.testing.assert_array_equal(out["token_ids"], [
        [CLS, EU, REJECTS, GERM, AN, CALL, SEP, PAD, PAD, PAD],
        [CLS, PETER, BLACK, BURN, SEP, PAD, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(out["padding_mask"], [[1] * 7 + [0] * 3, [1] * 5 + [0] * 5])
    # "German" = germ ##an: only "germ" carries B-MISC; "##an" is masked out.
    np.testing.assert_array_equal(out["label_mask"], [
        [0, 1, 1, 1, 0, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["labels"], [
        [0, B_ORG, O, B_MISC, 0, O, 0, 0, 0, 0],
        [0, B_PER, I_PER, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["sample_weight"], out["label_mask"].astype("float32"))
    np.testing.assert_array_equal(out["word_ids"], [
        [-1, 0, 1, 2, 2, 3, -1, -1, -1, -1],
        [-1, 0, 1, 1, -1, -1, -1, -1, -1, -1]])
    np.testing.assert_array_equal(out["num_words"], [4, 2])
    np.testing.assert_array_equal(out["num_words_kept"], [4, 2])
    assert {k: v.dtype.name for k, v in out.items()} == {
        "token_ids": "int32", "padding_mask": "bool", "label_mask": "bool",
        "word_ids": "int32", "num_words": "int32", "num_words_kept": "int32",
        "labels": "int32", "sample_weight": "float32"}


def test_all_pieces_labels_every_piece_with_the_words_tag():
    out = numpy_outputs(aligner(label_all_pieces=True)(batch()))
    np.testing.assert_array_equal(out["label_mask"], [
        [0, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0, 0]])
    # Without `tags`: "##an" keeps B-MISC, "##burn" keeps I-PER.
    np.testing.assert_array_equal(out["labels"], [
        [0, B_ORG, O, B_MISC, B_MISC, O, 0, 0, 0, 0],
        [0, B_PER, I_PER, I_PER, 0, 0, 0, 0, 0, 0]])


def test_all_pieces_with_tags_continues_a_b_word_as_i():
    out = numpy_outputs(aligner(label_all_pieces=True, tags=TAGS)(batch()))
    np.testing.assert_array_equal(out["labels"], [
        [0, B_ORG, O, B_MISC, I_MISC, O, 0, 0, 0, 0],
        [0, B_PER, I_PER, I_PER, 0, 0, 0, 0, 0, 0]])
    # First-piece labelling ignores the continuation.
    first = numpy_outputs(aligner(tags=TAGS)(batch()))
    np.testing.assert_array_equal(first["labels"], numpy_outputs(aligner()(batch()))["labels"])


def test_without_specials_and_with_another_pad_id():
    out = numpy_outputs(WordLabelAligner(tokenizer(), 6, pad_token_id=16)(batch()))
    np.testing.assert_array_equal(out["token_ids"], [
        [EU, REJECTS, GERM, AN, CALL, 16], [PETER, BLACK, BURN, 16, 16, 16]])
    np.testing.assert_array_equal(out["word_ids"], [[0, 1, 2, 2, 3, -1], [0, 1, 1, -1, -1, -1]])
    np.testing.assert_array_equal(out["padding_mask"], [[1] * 5 + [0], [1] * 3 + [0] * 3])


TRUNCATIONS = [
    # [CLS] eu rejects germ [SEP]: "German"'s first piece fits, "call" is lost.
    (5, [CLS, EU, REJECTS, GERM, SEP], 3),
    (4, [CLS, EU, REJECTS, SEP], 2),
    (3, [CLS, EU, SEP], 1),
]


def test_truncation_counts_the_kept_words():
    for length, tokens, kept in TRUNCATIONS:
        _check_truncation(length, tokens, kept)


def _check_truncation(length, tokens, kept):
    out = numpy_outputs(aligner(length)(batch()))
    np.testing.assert_array_equal(out["token_ids"][0], tokens)
    assert out["padding_mask"][0].all()
    assert out["num_words_kept"][0] == kept and out["num_words"][0] == 4
    words = out["word_ids"][0]
    assert words[0] == words[-1] == -1 and words[1:-1].max() == kept - 1
    np.testing.assert_array_equal(out["labels"][0][1:-1][out["label_mask"][0][1:-1]],
                                  [B_ORG, O, B_MISC][:kept])
    # The mapped-back word tags: the lost words get `fill_value`.
    tags = word_tags_from_token_tags(out["labels"], out["word_ids"], 4, fill_value=-1)
    np.testing.assert_array_equal(tags[0], ([B_ORG, O, B_MISC, O][:kept] + [-1] * 4)[:4])


def test_words_without_pieces_become_unknown_and_keep_their_tags():
    words = ["EU", "\x00", "", "\u200b", "call", " "]
    tags = [B_ORG, O, B_PER, I_PER, O, B_MISC]
    layer = aligner(12)
    eager = numpy_outputs(layer({"words": tf.constant(words), "tags": tf.constant(tags)}))
    np.testing.assert_array_equal(
        eager["token_ids"], [CLS, EU, UNK, UNK, UNK, CALL, UNK, SEP, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(eager["word_ids"], [-1, 0, 1, 2, 3, 4, 5, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(eager["labels"][1:7], tags)
    mapped = tf.data.Dataset.from_tensors({"words": words, "tags": tags}).map(layer)
    assert_same_structure_and_values(numpy_outputs(next(iter(mapped))), eager)


def test_layer_contract_and_ragged_batches_in_tf_data():
    # Eager == Dataset.map, static shapes, unbatched row == batched row, config
    # and Keras serialization round trips.
    make = lambda seed: aligner(8, label_all_pieces=True, tags=TAGS)  # noqa: E731
    assert_layer_contract(make, batch(), seeded=False)
    layer = make(0)
    ragged = tf.data.Dataset.from_tensor_slices(batch()).ragged_batch(2).map(layer)
    assert ragged.element_spec["token_ids"].shape.as_list() == [None, 8]
    assert_same_structure_and_values(next(iter(ragged)), layer(batch()))


def test_words_alone_give_features_without_labels():
    layer = aligner()
    out = layer(batch()["words"])
    assert sorted(out) == ["label_mask", "num_words", "num_words_kept", "padding_mask",
                           "token_ids", "word_ids"]
    assert_same_structure_and_values(
        out, {k: v for k, v in layer(batch()).items() if k in out})
    assert sorted(token_classification_inputs(out)) == ["label_mask", "padding_mask",
                                                        "token_ids"]
    # Nested Python lists and a dense [batch, words] tensor work too.
    lists = layer({"words": [["EU", "rejects"], ["Peter"]], "tags": [[B_ORG, O], [B_PER]]})
    np.testing.assert_array_equal(lists["labels"][1], [0, B_PER] + [0] * 8)
    dense = layer({"words": tf.constant([["EU", "call"]]), "tags": tf.constant([[B_ORG, O]])})
    np.testing.assert_array_equal(dense["token_ids"][0, :4], [CLS, EU, CALL, SEP])


def test_token_classification_inputs_is_the_objective_contract():
    x, y, sample_weight = token_classification_inputs(aligner()(batch()))
    assert sorted(x) == ["label_mask", "padding_mask", "token_ids"]
    assert y.dtype == tf.int32 and y.shape == (2, 10)
    np.testing.assert_array_equal(sample_weight, tf.cast(x["label_mask"], tf.float32))
    with pytest.raises(ValueError, match="missing keys"):
        token_classification_inputs({"token_ids": y})


def _reference(words, tags, length):
    """A per-word Python alignment: [CLS] first pieces... [SEP], padded."""
    tok = tokenizer()
    ids, word_ids, labels, mask = [CLS], [-1], [0], [False]
    for w, (word, tag) in enumerate(zip(words, tags)):
        pieces = [int(i) for i in tok(word)] or [UNK]
        for p, piece in enumerate(pieces):
            ids.append(piece)
            word_ids.append(w)
            labels.append(tag if p == 0 else 0)
            mask.append(p == 0)
    ids, word_ids, labels, mask = (v[:length - 1] for v in (ids, word_ids, labels, mask))
    n = len(ids) + 1
    pad = length - n
    return {"token_ids": ids + [SEP] + [PAD] * pad, "word_ids": word_ids + [-1] * (pad + 1),
            "labels": labels + [0] * (pad + 1), "label_mask": mask + [False] * (pad + 1),
            "num_words_kept": sum(mask)}


def test_random_sentences_match_a_per_word_reference_and_round_trip():
    rng = np.random.default_rng(0)
    pool = ["EU", "rejects", "German", "call", "Peter", "Blackburn", "boycott", "lamb", ".",
            "to", "xyz", "", "all-eu"]
    sentences = [list(rng.choice(pool, rng.integers(1, 9))) for _ in range(40)]
    tags = [list(rng.integers(0, 7, len(s))) for s in sentences]
    length = 12
    out = numpy_outputs(aligner(length)(
        {"words": tf.ragged.constant(sentences), "tags": tf.ragged.constant(tags)}))
    words_back = word_tags_from_token_tags(out["labels"], out["word_ids"], 8, fill_value=-1)
    truncated = 0
    for i, (sentence, tag) in enumerate(zip(sentences, tags)):
        expected = _reference(sentence, tag, length)
        for key in ("token_ids", "word_ids", "labels", "label_mask"):
            np.testing.assert_array_equal(out[key][i], expected[key], err_msg=f"{i} {key}")
        kept = expected["num_words_kept"]
        assert out["num_words_kept"][i] == kept and out["num_words"][i] == len(sentence)
        np.testing.assert_array_equal(words_back[i], (tag[:kept] + [-1] * 8)[:8])
        truncated += len(sentence) - kept
    assert truncated > 0  # the case covers truncation


def test_word_tags_from_token_tags_unbatched_and_under_xla():
    word_ids = tf.constant([[-1, 0, 1, 1, 2, -1], [-1, 0, 0, 1, -1, -1]])
    predicted = tf.constant([[0, 3, 1, 2, 6, 0], [0, 5, 6, 4, 0, 0]])
    expected = [[3, 1, 6], [5, 4, 0]]
    np.testing.assert_array_equal(word_tags_from_token_tags(predicted, word_ids, 3), expected)
    np.testing.assert_array_equal(
        word_tags_from_token_tags(predicted[1], word_ids[1], 3), expected[1])
    jitted = tf.function(lambda t, w: word_tags_from_token_tags(t, w, 3), jit_compile=True)
    np.testing.assert_array_equal(jitted(predicted, word_ids), expected)
    with pytest.raises(ValueError, match="same shape"):
        word_tags_from_token_tags(predicted, word_ids[0], 3)
    with pytest.raises(ValueError, match="integer"):
        word_tags_from_token_tags(tf.cast(predicted, tf.float32), word_ids, 3)


BAD_INPUTS = [
    ({"words": tf.constant([], tf.string), "tags": tf.constant([], tf.int32)}, "no words"),
    ({"words": tf.ragged.constant([["EU"], []]), "tags": tf.ragged.constant([[3], []])},
     "sentence 1 of the batch has no words"),
    ({"words": tf.ragged.constant([["EU", "call"]]), "tags": tf.ragged.constant([[3]])},
     "sentence 0 has 2 words but 1 tags"),
    ({"words": tf.constant(["EU", "call"]), "tags": tf.constant([3])}, "one tag per word"),
    ({"words": tf.ragged.constant([["EU"], ["call"]]), "tags": tf.ragged.constant([[3], [7]])},
     r"tag id 7 in sentence 1 is outside \[0, num_tags\) = \[0, 7\)"),
    ({"words": tf.constant(["EU"]), "tags": tf.constant([-1])}, "tag id -1"),
    ({"words": tf.constant(["EU"]), "tags": tf.constant([1.0])}, "integer tag ids"),
    ({"words": tf.constant([1, 2])}, "as strings"),
    ({"words": tf.constant("EU rejects")}, "Split each sentence into words"),
    ({"text": tf.constant(["EU"])}, "take the keys 'words'"),
]


def test_bad_inputs_raise_clear_errors():
    layer = aligner(num_tags=7)
    for inputs, match in BAD_INPUTS:
        with pytest.raises(ValueError, match=match):
            layer(inputs)


def test_bad_inputs_fail_inside_tf_data():
    # One element per problem (each a batch); the iterator goes on after an error.
    words = tf.ragged.constant([[["EU"], []], [["EU", "call"]], [["EU"]]])
    tags = tf.ragged.constant([[[3], []], [[3]], [[9]]])
    ds = tf.data.Dataset.from_tensor_slices({"words": words, "tags": tags})
    elements = iter(ds.map(aligner(num_tags=7)))
    for match in ["sentence.*1.*has no words", "sentence.*0.*has.*2.*words but.*1.*tags",
                  r"tag id.*9.*in sentence.*0.*is outside \[0, num_tags\)"]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=match):
            next(elements)


BAD_ARGUMENTS = [
    ({"tokenizer": "vocab.txt"}, "WordPieceTokenizer"),
    ({"tokenizer": keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCAB, sequence_length=8)},
     "must not pad"),
    ({"sequence_length": 2}, "sequence_length` must be >= 3"),
    ({"start_token_id": 99}, "start_token_id"),
    ({"label_all_pieces": "yes"}, "label_all_pieces"),
    ({"tags": ["O", "B-PER"], "label_all_pieces": True}, "'I-PER'"),
    ({"tags": ["O", "B-PER", "I-PER"], "num_tags": 2}, "num_tags"),
    ({"tags": ["O", "O"]}, "each tag once"),
    ({"num_tags": 0}, "num_tags"),
]


def test_bad_arguments_raise_clear_errors():
    for kwargs, match in BAD_ARGUMENTS:
        args = {"tokenizer": tokenizer(), "sequence_length": 8, "start_token_id": CLS,
                "end_token_id": SEP, **kwargs}
        with pytest.raises(ValueError, match=match):
            WordLabelAligner(**args)


def test_config_carries_the_vocabulary():
    layer = aligner(label_all_pieces=True, tags=TAGS, name="aligner")
    config = layer.get_config()
    assert config["tokenizer"]["config"]["vocabulary"] == VOCAB
    clone = WordLabelAligner.from_config(config)
    assert clone.tags == TAGS and clone.unknown_token_id == UNK
    assert_same_structure_and_values(clone(batch()), layer(batch()))
