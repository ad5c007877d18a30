"""`kobjectives.data.seq2seq_sft`: the exact row layout of (input, target)
pairs, the truncation rule and its counts, BART's forced start token, the
batches (static, seeded shuffle) and the dialogue pairs."""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data.seq2seq import SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import PACKED_SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import dialogue_pair
from kobjectives.data.seq2seq_sft import pack_seq2seq_examples
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


def _random_examples(n, encoder_length, target_length, seed, start=None):
    rng = np.random.default_rng(seed)
    words = "abcd"
    # Mostly short (several fit a row), some too long (truncated to a row).
    inputs = [" ".join(rng.choice(list(words), rng.integers(0, encoder_length // 2)
                                  if i % 7 else encoder_length + 1)) for i in range(n)]
    targets = [" ".join(rng.choice(list(words), rng.integers(1, target_length // 2)
                                   if i % 5 else target_length + 1)) for i in range(n)]
    return tokenize_seq2seq_pairs(inputs, targets, _tokenizer(), encoder_length, target_length,
                                  end_token_id=SEP, target_start_token_id=start)


@pytest.mark.parametrize("start", [None, CLS], ids=["t5", "bart"])
def test_packing_holds_every_example_once_whole_within_both_capacities(start):
    examples = _random_examples(60, 9, 10, seed=start or 0, start=start)
    rows, bins = pack_seq2seq_examples(examples, padding_token_id=PAD)
    assert sorted(i for b in bins for i in b) == list(range(60))
    assert len(bins) < 40 and max(len(b) for b in bins) >= 3
    for key in PACKED_SEQ2SEQ_INPUTS:
        assert rows[key].dtype == np.int32 and rows[key].shape[0] == len(bins)
    assert rows["encoder_token_ids"].shape[1] == 9 and rows["target_ids"].shape[1] == 10
    assert rows["target_weights"].dtype == np.float32
    enc_len = examples.encoder_padding_mask.sum(1)
    tgt_len = examples.target_padding_mask.sum(1)
    for row, members in enumerate(bins):
        assert enc_len[members].sum() <= 9 and tgt_len[members].sum() <= 10
        encoder, target = 0, 0
        for segment, index in enumerate(members, 1):
            e, t = slice(encoder, encoder + enc_len[index]), slice(target, target + tgt_len[index])
            # Each example's ids, mask and weights, verbatim and contiguous.
            np.testing.assert_array_equal(rows["encoder_token_ids"][row, e],
                                          examples.encoder_token_ids[index, :enc_len[index]])
            np.testing.assert_array_equal(rows["target_ids"][row, t],
                                          examples.target_ids[index, :tgt_len[index]])
            np.testing.assert_array_equal(rows["target_weights"][row, t],
                                          examples.target_weights[index, :tgt_len[index]])
            assert (rows["encoder_segment_ids"][row, e] == segment).all()
            assert (rows["decoder_segment_ids"][row, t] == segment).all()
            encoder, target = e.stop, t.stop
        # Then padding: id, mask, segment and weight 0.
        for key, end in (("encoder", encoder), ("decoder", target)):
            assert (rows[f"{key}_segment_ids"][row, end:] == 0).all()
        assert (rows["encoder_token_ids"][row, encoder:] == PAD).all()
        assert (rows["target_weights"][row, target:] == 0).all()
    np.testing.assert_array_equal(rows["encoder_padding_mask"], rows["encoder_segment_ids"] > 0)
    np.testing.assert_array_equal(rows["target_padding_mask"], rows["decoder_segment_ids"] > 0)
    # The loss weights are those of the examples: target tokens only (BART's
    # start token unscored), none lost or added.
    assert rows["target_weights"].sum() == examples.target_weights.sum()
    if start is not None:
        first = np.flatnonzero(np.diff(rows["decoder_segment_ids"], prepend=0, axis=1).ravel())
        assert (rows["target_ids"].ravel()[first][rows["decoder_segment_ids"].ravel()[first] > 0]
                == CLS).all()


def test_packed_dataset_batches_static_rows_and_unpacked_stays_as_before():
    examples = _random_examples(40, 8, 6, seed=3)
    rows, _ = pack_seq2seq_examples(examples)
    dataset = seq2seq_sft_dataset(examples, 4, shuffle=False, packing=True)
    for spec in tf.nest.flatten(dataset.element_spec):
        assert spec.shape.is_fully_defined() and spec.shape[0] == 4, spec
    x, target_ids, weights = next(iter(dataset))
    assert sorted(x) == sorted(PACKED_SEQ2SEQ_INPUTS)
    np.testing.assert_array_equal(target_ids, rows["target_ids"][:4])
    np.testing.assert_array_equal(x["decoder_segment_ids"], rows["decoder_segment_ids"][:4])
    np.testing.assert_array_equal(weights, rows["target_weights"][:4])
    assert len(list(dataset)) == len(rows["target_ids"]) // 4
    # packing=False (the default): one example per row, exactly as before.
    x, target_ids, weights = next(iter(seq2seq_sft_dataset(examples, 4, shuffle=False)))
    assert sorted(x) == sorted(SEQ2SEQ_INPUTS)
    np.testing.assert_array_equal(target_ids, examples.target_ids[:4])
    with pytest.raises(ValueError, match=r"40 examples fill \d+ rows, fewer than batch_size=39"):
        seq2seq_sft_dataset(examples, 39, packing=True)
    with pytest.raises(TypeError, match="Seq2SeqExamples"):
        pack_seq2seq_examples({"encoder_token_ids": [[1]]})
