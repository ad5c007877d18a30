"""`kobjectives.data.seq2seq_sft`: the exact row layout of (input, target)
pairs, the truncation rule and its counts, BART's forced start token, the
batches (static, seeded shuffle) and the dialogue pairs."""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data.seq2seq import SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import dialogue_pair
from kobjectives.data.seq2seq_sft import dialogue_prompt_text
from kobjectives.data.seq2seq_sft import seq2seq_sft_dataset
from kobjectives.data.seq2seq_sft import tokenize_seq2seq_pairs

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"]
PAD, CLS, SEP, A, B, C, D = 0, 2, 3, 4, 5, 6, 7


def _tokenizer():
    return keras_hub.tokenizers.WordPieceTokenizer(vocabulary=VOCAB, oov_token="[UNK]")


def test_t5_layout_input_end_pad_and_target_end_pad_weighted_on_targets_only():
    examples = tokenize_seq2seq_pairs(
        ["a b", "a b c d a", ""], ["c", "b b b b", "d a"], _tokenizer(),
        encoder_length=4, target_length=3, end_token_id=SEP, padding_token_id=PAD)
    # The overlong input keeps its first 3 tokens and its end token.
    assert examples.encoder_token_ids.tolist() == [
        [A, B, SEP, PAD], [A, B, C, SEP], [SEP, PAD, PAD, PAD]]
    assert examples.encoder_padding_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    # The overlong target keeps its first 2 tokens and its end token.
    assert examples.target_ids.tolist() == [[C, SEP, PAD], [B, B, SEP], [D, A, SEP]]
    assert examples.target_padding_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert examples.target_weights.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    assert examples.target_weights.dtype == np.float32
    assert examples.encoder_token_ids.dtype == examples.target_ids.dtype == np.int32
    assert examples.input_lengths.tolist() == [2, 5, 0]
    assert examples.target_lengths.tolist() == [1, 4, 2]
    assert (examples.input_capacity, examples.target_capacity) == (3, 2)
    assert (examples.truncated_inputs, examples.truncated_targets) == (1, 1)
    assert len(examples) == 3
    assert sorted(examples.x()) == sorted(SEQ2SEQ_INPUTS)


def test_bart_layout_gives_the_start_token_without_scoring_it():
    examples = tokenize_seq2seq_pairs(
        ["a", "b c"], ["c d", "a b c d"], _tokenizer(), encoder_length=3, target_length=5,
        end_token_id=SEP, target_start_token_id=CLS)
    assert examples.target_ids.tolist() == [[CLS, C, D, SEP, PAD], [CLS, A, B, C, SEP]]
    # The decoder reads the start token (mask 1) but the loss skips it (weight 0).
    assert examples.target_padding_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert examples.target_weights.tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert examples.target_capacity == 3 and examples.truncated_targets == 1
    assert examples.encoder_token_ids.tolist() == [[A, SEP, PAD], [B, C, SEP]]
    assert examples.truncated_inputs == 0


def test_the_same_rows_as_the_exported_text_signature_packs():
    # export_seq2seq_saved_model packs raw text with StartEndPacker(end_value=eos):
    # training rows must be what serving computes from the same text.
    tokenizer = _tokenizer()
    texts = ["a b c d a b", "c"]
    examples = tokenize_seq2seq_pairs(texts, ["a", "b"], tokenizer, 5, 2, end_token_id=SEP)
    packer = keras_hub.layers.StartEndPacker(sequence_length=5, end_value=SEP, pad_value=0,
                                             return_padding_mask=True)
    ids, mask = packer(tf.ragged.constant([[A, B, C, D, A, B], [C]]))
    np.testing.assert_array_equal(examples.encoder_token_ids, ids)
    np.testing.assert_array_equal(examples.encoder_padding_mask, mask)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(inputs=["a"], targets=["b", "c"]), ValueError, "1 inputs, 2 targets"),
    (dict(inputs=[], targets=[]), ValueError, "no \\(input, target\\) pair"),
    (dict(inputs=["a", "b"], targets=["c", "  "]), ValueError,
     r"targets\[1\] is blank \(input: 'b'\)"),
    (dict(inputs="a b", targets=["c"]), TypeError, "`inputs` must be a list of str"),
    (dict(inputs=["a"], targets=[3]), TypeError, r"targets\[0\] must be a str"),
    (dict(encoder_length=1), ValueError, "`encoder_length` must be an int >= 2"),
    (dict(target_length=1), ValueError, "`target_length` must be an int >= 2"),
    (dict(target_length=2, target_start_token_id=CLS), ValueError,
     "`target_length` must be an int >= 3"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    arguments = dict(inputs=["a"], targets=["b"], tokenizer=_tokenizer(), encoder_length=3,
                     target_length=3, end_token_id=SEP)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        tokenize_seq2seq_pairs(**arguments)


def _examples(n=10):
    inputs = [" ".join("abcd"[(i + j) % 4] for j in range(i % 3 + 1)) for i in range(n)]
    targets = [" ".join("dcba"[(i + j) % 4] for j in range(i % 4 + 1)) for i in range(n)]
    return tokenize_seq2seq_pairs(inputs, targets, _tokenizer(), 5, 6, end_token_id=SEP)


def test_dataset_yields_static_batches_in_the_denoising_layout():
    examples = _examples()
    dataset = seq2seq_sft_dataset(examples, 4, shuffle=False)
    for spec in tf.nest.flatten(dataset.element_spec):
        assert spec.shape.is_fully_defined() and spec.shape[0] == 4, spec
    batches = list(dataset)
    assert len(batches) == 2  # 10 examples, drop_remainder
    x, target_ids, weights = batches[0]
    assert sorted(x) == sorted(SEQ2SEQ_INPUTS)
    np.testing.assert_array_equal(target_ids, x["target_ids"])
    np.testing.assert_array_equal(target_ids, examples.target_ids[:4])
    np.testing.assert_array_equal(x["encoder_token_ids"], examples.encoder_token_ids[:4])
    np.testing.assert_array_equal(weights, examples.target_weights[:4])
    rest = list(seq2seq_sft_dataset(examples, 4, shuffle=False, drop_remainder=False))
    assert rest[-1][1].shape == (2, 6)
    with pytest.raises(ValueError, match="10 examples are fewer than batch_size=11"):
        seq2seq_sft_dataset(examples, 11)


def test_shuffle_is_seeded_new_every_epoch_and_keeps_every_example():
    examples = _examples(16)

    def orders(seed):
        dataset = seq2seq_sft_dataset(examples, 16, shuffle=True, seed=seed, repeat=True)
        return [tuple(map(tuple, x["encoder_token_ids"].numpy().tolist()))
                + tuple(map(tuple, y.numpy().tolist())) for x, y, _ in dataset.take(2)]

    first, again, other = orders(0), orders(0), orders(1)
    assert first == again
    assert first[0] != first[1]  # a new order in the second epoch
    assert first != other
    rows = sorted(zip(map(tuple, examples.encoder_token_ids.tolist()),
                      map(tuple, examples.target_ids.tolist())))
    epoch = first[0]
    assert sorted(zip(epoch[:16], epoch[16:])) == rows


def test_shard_takes_every_nth_example_and_keeps_the_counts():
    examples = tokenize_seq2seq_pairs(["a b c d", "a", "b", "c d a b"], ["a", "b", "c", "d"],
                                      _tokenizer(), 3, 2, end_token_id=SEP)
    shard = examples.shard(1, 2)
    assert len(shard) == 2
    np.testing.assert_array_equal(shard.encoder_token_ids, examples.encoder_token_ids[1::2])
    assert shard.input_capacity == 2
    assert (examples.truncated_inputs, shard.truncated_inputs) == (2, 1)


def test_dialogue_pairs_render_the_turns_before_the_last_answer():
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a prime.\nOne only."},
        {"role": "assistant", "content": "Seven."},
    ]
    assert dialogue_pair(conversation) == {
        "input": "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Name a prime.\nOne only.",
        "target": "Seven.",
    }
    assert dialogue_prompt_text(conversation[1:2]) == "User: Hi"
    with pytest.raises(ValueError, match="ends with a 'user' turn"):
        dialogue_pair(conversation[:4], "dialogue 3")
    with pytest.raises(ValueError, match="must alternate"):
        dialogue_pair([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
