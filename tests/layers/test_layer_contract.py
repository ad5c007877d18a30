"""Every preprocessing layer passes the harness' layer contract
(`tests.harness.assert_layer_contract`): eager equals `Dataset.map`, batched
and unbatched agree, static shapes, seeds decide the outputs, config and
Keras serialization round-trip."""

import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import BartNoising
from kobjectives.layers import MaskedLMMasker
from kobjectives.layers import PermutationLMMasker
from kobjectives.layers import SentencePairGenerator
from kobjectives.layers import SequencePacker
from kobjectives.layers import SpanCorruption
from kobjectives.layers import TextAugmenter
from tests.harness import assert_layer_contract

PAD, CLS, SEP, MASK, PERIOD = 0, 1, 2, 3, 4
V, L = 200, 24


def packed(rows=6, length=L, seed=0):
    """`[CLS] words [SEP] [PAD]...` rows of random lengths."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, length), "int32")
    for row, n in enumerate(rng.integers(4, length - 1, rows)):
        ids[row, 0] = CLS
        ids[row, 1:n + 1] = rng.integers(5, V - 10, n)  # the top ids are sentinels
        ids[row, n + 1] = SEP
    return tf.constant(ids)


def documents(rows=8, seed=0):
    """A ragged `[documents, sentences, tokens]` batch."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 5, rows)
    lengths = rng.integers(2, 8, counts.sum())
    values = rng.integers(5, V, lengths.sum()).astype("int32")
    return tf.RaggedTensor.from_nested_row_lengths(values, [counts, lengths])


CASES = {
    "masked_lm_token": (lambda seed: MaskedLMMasker(
        vocabulary_size=V, mask_selection_rate=0.3, mask_token_id=MASK, mask_selection_length=6,
        unselectable_token_ids=(PAD, CLS, SEP, MASK), seed=seed), packed, "spec"),
    "masked_lm_whole_word": (lambda seed: MaskedLMMasker(
        vocabulary_size=V, mask_selection_rate=0.3, mask_token_id=MASK, mask_selection_length=6,
        unselectable_token_ids=(PAD, CLS, SEP, MASK), strategy="whole_word",
        continuation_token_ids=list(range(100, 150)), seed=seed), packed, "spec"),
    "masked_lm_span": (lambda seed: MaskedLMMasker(
        vocabulary_size=V, mask_selection_rate=0.3, mask_token_id=MASK, mask_selection_length=6,
        unselectable_token_ids=(PAD, CLS, SEP, MASK), strategy="span", sequence_length=L,
        span_geometric_p=0.3, max_span_length=4, seed=seed), packed, "spec"),
    "span_corruption": (lambda seed: SpanCorruption(
        vocabulary_size=V, sequence_length=L, eos_token_id=SEP, seed=seed), packed, "spec"),
    "bart_noising": (lambda seed: BartNoising(
        mask_token_id=MASK, sequence_length=L, sentence_end_token_ids=(PERIOD,),
        token_deletion_rate=0.1, document_rotation_rate=0.2, poisson_lambda=2.5,
        unselectable_token_ids=(PAD, CLS, SEP), vocabulary_size=V, seed=seed), packed, "spec"),
    "permutation_lm": (lambda seed: PermutationLMMasker(
        num_predict=6, unselectable_token_ids=(PAD, CLS, SEP), plm_probability=0.2,
        max_span_length=3, permutation_size=4, sequence_length=L, seed=seed), packed, "spec"),
    "text_augmenter": (lambda seed: TextAugmenter(
        V, deletion_rate=0.2, replacement_rate=0.1, swap_rate=0.2,
        unselectable_token_ids=(PAD, CLS, SEP),
        seed=seed), packed, "spec"),
    "sentence_pairs_nsp": (lambda seed: SentencePairGenerator(
        task="nsp", sequence_length=L, start_value=CLS, end_value=SEP, pad_value=PAD,
        seed=seed), documents, None),
    "sentence_pairs_sop": (lambda seed: SentencePairGenerator(
        task="sop", sequence_length=L, start_value=CLS, end_value=SEP, pad_value=PAD,
        short_seq_prob=0.2, negative_rate=0.4, seed=seed), documents, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_seeded_layer_contract(name):
    make_layer, make_batch, unbatched = CASES[name]
    assert_layer_contract(make_layer, make_batch(), unbatched=unbatched)


def test_sequence_packer_contract():
    # Without randomness; its unbatched input is one document (tests/layers/
    # test_sequence_packer.py checks that stream).
    docs = tf.ragged.constant([[7, 8, 9], [10, 11], [12, 13, 14, 15, 16]], "int32")
    assert_layer_contract(
        lambda seed: SequencePacker(8, SEP, start_token_id=CLS, pad_token_id=3,
                                    drop_remainder=True),
        docs, seeded=False, unbatched=None)
