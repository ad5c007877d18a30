import collections
import re

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data.chat import ChatTemplate
from kobjectives.data.chat import add_chat_tokens
from kobjectives.data.chat import read_hh_rlhf
from kobjectives.data.located import LocatedConversation
from kobjectives.data.sft import SFTExamples
from kobjectives.data.sft import best_fit_decreasing
from kobjectives.data.sft import pack_sft_examples
from kobjectives.data.sft import sft_dataset
from kobjectives.data.sft import tokenize_sft_examples
from kobjectives.objectives import CausalLanguageModel
from tests.harness import tiny_backbone

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "?", "!", "."]
VOCABULARY = add_chat_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)
ID = {token: index for index, token in enumerate(VOCABULARY)}
USER, ASSISTANT, END, SYSTEM = ID["<|user|>"], ID["<|assistant|>"], ID["<|end|>"], ID["<|system|>"]


def _tokenizer(**kwargs):
    return keras_hub.tokenizers.WordPieceTokenizer(VOCABULARY, lowercase=True, **kwargs)


def _chat(*contents, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"]
    return turns + [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


# --- tokenization -------------------------------------------------------------


def test_tokenize_chats_pairs_and_segments_with_their_completion_masks():
    examples = [
        _chat("a b", "c", "d?", "e f!", system="h"),
        {"prompt": "a b", "completion": "c d"},
        [("a", False), ("b c", True), ("d", False)],
    ]
    out = tokenize_sft_examples(examples, _tokenizer())
    assert out.token_ids[0].tolist() == [
        SYSTEM, ID["h"], END, USER, ID["a"], ID["b"], END, ASSISTANT, ID["c"], END,
        USER, ID["d"], ID["?"], END, ASSISTANT, ID["e"], ID["f"], ID["!"], END]
    # 1 exactly on the assistant contents and their end markers
    assert out.completion_mask[0].tolist() == [0] * 8 + [1, 1] + [0] * 5 + [1, 1, 1, 1]
    assert out.token_ids[1].tolist() == [ID["a"], ID["b"], ID["c"], ID["d"], END]
    assert out.completion_mask[1].tolist() == [0, 0, 1, 1, 1]
    assert out.token_ids[2].tolist() == [ID["a"], ID["b"], ID["c"], ID["d"]]
    assert out.completion_mask[2].tolist() == [0, 1, 1, 0]
    assert out.lengths.tolist() == [19, 5, 4]
    everything = tokenize_sft_examples(examples, _tokenizer(), loss_on="all", start_token_id=2)
    assert everything.token_ids[1].tolist() == [2] + out.token_ids[1].tolist()
    assert all(mask.tolist() == [1] * len(mask) for mask in everything.completion_mask)
    # Serving: the rendered text through a tokenizer that knows the markers
    # as special tokens gives exactly the training ids.
    template = ChatTemplate()
    serving = _tokenizer(special_tokens=list(template.markers), special_tokens_in_strings=True)
    np.testing.assert_array_equal(
        serving(template.render_text(examples[0])), out.token_ids[0])
    prompt_ids = serving(template.generation_prompt(examples[0][:4]))
    np.testing.assert_array_equal(prompt_ids, out.token_ids[0][:len(prompt_ids)])


def test_tokenize_fails_clearly():
    tokenizer = _tokenizer()
    with pytest.raises(ValueError, match=r"marker '<\|user\|>' is not a token.*add_chat_tokens"):
        tokenize_sft_examples([_chat("a", "b")], keras_hub.tokenizers.WordPieceTokenizer(
            ["[PAD]", "[UNK]", "a", "b"]))
    with pytest.raises(ValueError, match=r"examples\[1\] has no completion token.*loss_on='all'"):
        tokenize_sft_examples([_chat("a", "b"), _chat("a")], tokenizer)
    assert tokenize_sft_examples([_chat("a")], tokenizer, loss_on="all").lengths.tolist() == [3]
    # An example read from a file is named by its file and line, not its index.
    with pytest.raises(ValueError, match=r"^sft\.jsonl:4 has no completion token"):
        tokenize_sft_examples([_chat("a", "b"), LocatedConversation(_chat("a"), "sft.jsonl:4")],
                              tokenizer)
    with pytest.raises(ValueError, match=r"examples\[0\]\[1\]: the 'assistant' turn is empty"):
        tokenize_sft_examples([_chat("a", " ")], tokenizer)
    with pytest.raises(TypeError, match=r"examples\[0\] must be a conversation"):
        tokenize_sft_examples(["a b"], tokenizer)
    with pytest.raises(ValueError, match=r"examples\[0\]: a dict example.*'prompt'"):
        tokenize_sft_examples([{"question": "a"}], tokenizer)
    with pytest.raises(ValueError, match="loss_on"):
        tokenize_sft_examples([_chat("a", "b")], tokenizer, loss_on="prompt")
    with pytest.raises(ValueError, match="without `sequence_length`"):
        tokenize_sft_examples([_chat("a", "b")], _tokenizer(sequence_length=8))


# --- best-fit decreasing --------------------------------------------------------


def _first_fit(lengths, capacity, decreasing=False):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if decreasing else range(
        len(lengths))
    rooms = []
    for i in order:
        for j, room in enumerate(rooms):
            if room >= lengths[i]:
                rooms[j] -= lengths[i]
                break
        else:
            rooms.append(capacity - lengths[i])
    return len(rooms)


def _optimum(lengths, capacity):
    """The fewest bins, by exhaustive search (small instances)."""
    lengths = sorted(lengths, reverse=True)
    best = len(lengths)

    def search(i, loads):
        nonlocal best
        if len(loads) >= best:
            return
        if i == len(lengths):
            best = len(loads)
            return
        for j in {load: j for j, load in enumerate(loads)}.values():
            if loads[j] + lengths[i] <= capacity:
                loads[j] += lengths[i]
                search(i + 1, loads)
                loads[j] -= lengths[i]
        search(i + 1, loads + [lengths[i]])

    search(0, [])
    return best


def _check_invariants(bins, lengths, capacity):
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each item once
    assert max(loads) <= capacity
    # An item opens a bin only when it fits no open bin: any two bins
    # together overflow, so at most one bin is half full or less.
    for j in range(len(loads)):
        for k in range(j + 1, len(loads)):
            assert loads[j] + loads[k] > capacity
    return loads


def test_best_fit_decreasing_on_hand_cases():
    # Perfect fits are found: each item goes to the bin with the least room.
    assert best_fit_decreasing([6, 4, 7, 3, 5, 5], 10) == [[2, 3], [0, 1], [4, 5]]
    # Best fit beats first fit decreasing: 3 (sizes) sits in the bin with
    # room 3, not in the first bin with room 4, which keeps room for 2 + 2.
    lengths = [3, 5, 9, 5, 2, 2, 1, 12]
    bins = best_fit_decreasing(lengths, 13)
    assert [[lengths[i] for i in b] for b in bins] == [[12, 1], [9, 2, 2], [5, 5, 3]]
    assert _first_fit(lengths, 13, decreasing=True) == 4 == len(bins) + 1
    # Not always optimal (2 bins: 9+2+2, 8+3+2), but within 11/9 OPT + 6/9.
    lengths = [2, 2, 9, 2, 8, 3]
    bins = best_fit_decreasing(lengths, 13)
    assert [[lengths[i] for i in b] for b in bins] == [[9, 3], [8, 2, 2], [2]]
    assert _optimum(lengths, 13) == 2
    # Small random instances against the exhaustive optimum.
    rng = np.random.default_rng(0)
    for _ in range(150):
        capacity = int(rng.integers(5, 16))
        lengths = rng.integers(1, capacity + 1, int(rng.integers(1, 9))).tolist()
        bins = best_fit_decreasing(lengths, capacity)
        _check_invariants(bins, lengths, capacity)
        optimum = _optimum(lengths, capacity)
        assert optimum <= len(bins) <= 11 / 9 * optimum + 6 / 9
    with pytest.raises(ValueError, match=r"lengths\[1\] = 11 does not fit.*capacity 10"):
        best_fit_decreasing([3, 11], 10)
    with pytest.raises(ValueError, match=r"lengths\[0\] = 0"):
        best_fit_decreasing([0], 10)
    with pytest.raises(ValueError, match="buffer_size"):
        best_fit_decreasing([1], 10, buffer_size=0)


def test_best_fit_decreasing_packs_random_lengths_better_than_first_fit():
    rng = np.random.default_rng(1)
    capacity = 512
    lengths = np.minimum(rng.lognormal(4.5, 0.8, 3000).astype(int) + 1, capacity).tolist()
    bins = best_fit_decreasing(lengths, capacity)
    loads = _check_invariants(bins, lengths, capacity)
    lower_bound = -(-sum(lengths) // capacity)
    first_fit = _first_fit(lengths, capacity)
    assert len(bins) < first_fit
    assert sum(loads) / (len(bins) * capacity) > 0.99  # a few windows above the bound
    assert len(bins) <= lower_bound + 3
    # Streaming: buffers of 500 items packed on their own.
    streamed = best_fit_decreasing(lengths, capacity, buffer_size=500)
    assert all(len({i // 500 for i in b}) == 1 for b in streamed)
    assert sorted(i for b in streamed for i in b) == list(range(len(lengths)))
    assert len(bins) <= len(streamed) < first_fit


# --- windows ----------------------------------------------------------------------


def _random_examples(seed, count, low=2, high=12):
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for _ in range(count):
        n = int(rng.integers(low, high))
        ids.append(rng.integers(4, 30, n).astype("int32"))
        masks.append((rng.random(n) < 0.5).astype("int32"))
    return SFTExamples(ids, masks)


def test_windows_weigh_exactly_the_completion_targets_of_each_example():
    examples = _random_examples(0, 40)
    windows, bins = pack_sft_examples(examples, 16, pad_token_id=1)
    assert sorted(i for b in bins for i in b) == list(range(40))
    for w, members in enumerate(bins):
        t = 0
        for segment, index in enumerate(members, 1):
            ids, mask = examples.token_ids[index], examples.completion_mask[index]
            n = len(ids)
            np.testing.assert_array_equal(windows["token_ids"][w, t:t + n], ids)
            assert (windows["segment_ids"][w, t:t + n] == segment).all()
            # position t + j predicts token j + 1: its weight is that token's flag
            np.testing.assert_array_equal(windows["sample_weight"][w, t:t + n - 1], mask[1:])
            assert windows["sample_weight"][w, t + n - 1] == 0  # no target across examples
            t += n
        assert not windows["padding_mask"][w, t:].any()
        assert (windows["segment_ids"][w, t:] == 0).all() and (windows["token_ids"][w, t:] == 1).all()
        assert (windows["sample_weight"][w, t:] == 0).all() and windows["padding_mask"][w, :t].all()
    assert windows["sample_weight"].sum() == sum(m[1:].sum() for m in examples.completion_mask)
    alone, rows = pack_sft_examples(examples, 16, packing=False)
    assert rows == [[i] for i in range(40)] and alone["token_ids"].shape == (40, 16)
    assert len(bins) < 40 / 2


def test_examples_longer_than_the_window_fail_or_are_truncated():
    examples = SFTExamples([np.arange(4, 8), np.arange(4, 13)], [np.ones(4), np.arange(9) % 2])
    with pytest.raises(ValueError, match=r"examples\[1\] has 9 tokens, more than "
                                         r"sequence_length=6.*truncation='left'"):
        pack_sft_examples(examples, 6)
    left, _ = pack_sft_examples(examples, 6, truncation="left", packing=False)
    assert left["token_ids"][1].tolist() == [7, 8, 9, 10, 11, 12]
    assert left["sample_weight"][1].tolist() == [0, 1, 0, 1, 0, 0]  # flags of 8..12: 0 1 0 1 0
    right, _ = pack_sft_examples(examples, 6, truncation="right", packing=False)
    assert right["token_ids"][1].tolist() == [4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="truncation"):
        pack_sft_examples(examples, 6, truncation="middle")
    with pytest.raises(ValueError, match="sequence_length"):
        pack_sft_examples(examples, 1)


def test_dataset_batches_static_windows_and_reshuffles():
    examples = _random_examples(1, 30)
    windows, _ = pack_sft_examples(examples, 16)
    dataset = sft_dataset(examples, 16, batch_size=4, seed=3)
    x_spec, y_spec, weight_spec = dataset.element_spec
    assert {k: tuple(v.shape) for k, v in x_spec.items()} == {
        "token_ids": (4, 16), "padding_mask": (4, 16), "segment_ids": (4, 16)}
    assert y_spec is None or isinstance(y_spec, tf.NoneTensorSpec)
    assert tuple(weight_spec.shape) == (4, 16)
    epochs = [[(tuple(ids), tuple(w)) for x, _, weight in dataset
               for ids, w in zip(x["token_ids"].numpy(), weight.numpy())] for _ in range(2)]
    whole = len(windows["token_ids"]) // 4 * 4
    assert len(epochs[0]) == whole and epochs[0] != epochs[1]  # new order each epoch
    every = collections.Counter(zip(map(tuple, windows["token_ids"]),
                                    map(tuple, windows["sample_weight"])))
    assert not collections.Counter(epochs[0]) - every  # windows kept whole with their weights
    with pytest.raises(ValueError, match="fewer than batch_size=64"):
        sft_dataset(examples, 16, batch_size=64)


# --- the key property: a packed example computes what it computes alone -----------


def _per_token(model, windows):
    x = {k: windows[k] for k in ("token_ids", "padding_mask", "segment_ids")}
    labels, weights = model.targets(x, None, windows["sample_weight"])
    losses, _ = model.token_losses(model(x), labels)
    return losses.numpy(), labels.numpy(), weights.numpy(), x


def test_packed_examples_equal_each_example_alone():
    examples = [
        _chat("a b c", "d e"),
        {"prompt": "f g", "completion": "h"},
        _chat("a", "b !", "c ?", "d", system="e"),
        _chat("h h", "g"),
    ]
    tokenized = tokenize_sft_examples(examples, _tokenizer())
    length = 40  # 9 + 4 + 17 + 7 = 37 tokens
    packed, bins = pack_sft_examples(tokenized, length)
    assert len(bins) == 1 and len(bins[0]) == 4  # one window of 4 examples
    alone, _ = pack_sft_examples(tokenized, length, packing=False)
    keras.utils.set_random_seed(0)
    backbone = tiny_backbone("gpt2", len(VOCABULARY), length, hidden_dim=16, num_layers=2)
    model = CausalLanguageModel(backbone, chunk_size=16, reset_attention_at_boundaries=True,
                                restart_positions=True)
    losses, labels, weights, x_packed = _per_token(model, packed)
    alone_losses, alone_labels, alone_weights, x_alone = _per_token(model, alone)
    start = 0
    for index in bins[0]:
        n = len(tokenized.token_ids[index])
        span = slice(start, start + n - 1)  # the example's n - 1 next-token predictions
        np.testing.assert_allclose(losses[0, span], alone_losses[index, :n - 1], atol=1e-5)
        np.testing.assert_array_equal(labels[0, span], alone_labels[index, :n - 1])
        np.testing.assert_array_equal(weights[0, span], alone_weights[index, :n - 1])
        # the weighted targets are exactly the example's completion tokens
        mask = tokenized.completion_mask[index].astype(bool)
        np.testing.assert_array_equal(
            labels[0, span][weights[0, span] > 0], tokenized.token_ids[index][mask])
        start += n
    assert weights[0, start - 1:].sum() == 0
    # Hence the same loss, per token and per example, packed or not.
    for normalization in ("token", "example"):
        model.loss_normalization = normalization
        loss_packed = model.compute_loss(x=x_packed, y_pred=model(x_packed),
                                         sample_weight=packed["sample_weight"])
        loss_alone = model.compute_loss(x=x_alone, y_pred=model(x_alone),
                                        sample_weight=alone["sample_weight"])
        np.testing.assert_allclose(float(loss_packed), float(loss_alone), rtol=1e-5)
    # Without the attention reset the later examples see the earlier ones.
    crossed = CausalLanguageModel(backbone, chunk_size=16)
    crossed_losses, _, _, _ = _per_token(crossed, packed)
    first = len(tokenized.token_ids[bins[0][0]])
    assert np.abs(crossed_losses[0, first:start - 1] - losses[0, first:start - 1]).max() > 1e-3


# --- HH-RLHF ------------------------------------------------------------------------


def test_hh_rlhf_dialogues_pack_into_far_fewer_windows(shared_data):
    with pytest.warns(UserWarning, match="malformed"):
        conversations = read_hh_rlhf(shared_data / "hh_rlhf", subsets="helpful-base")
    conversations = conversations[:300]
    words = collections.Counter(
        w for c in conversations for turn in c for w in re.findall(r"\w+", turn["content"].lower()))
    vocabulary = add_chat_tokens(["[PAD]", "[UNK]"] + list(".,?!'") + [w for w, _ in
                                                                      words.most_common(400)])
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    examples = tokenize_sft_examples(conversations, tokenizer)
    assert all(mask[-1] == 1 for mask in examples.completion_mask)  # ends with <|end|>
    with pytest.raises(ValueError, match=r"examples\[\d+\] has \d+ tokens, more than "
                                         r"sequence_length=128"):
        pack_sft_examples(examples, 128)
    packed, _ = pack_sft_examples(examples, 256, truncation="left")
    rows, _ = pack_sft_examples(examples, 256, truncation="left", packing=False)
    useful = packed["padding_mask"].sum()
    assert useful == rows["padding_mask"].sum()
    assert useful / packed["padding_mask"].size > 0.95
    assert useful / rows["padding_mask"].size < 0.6
    assert len(rows["token_ids"]) > 1.6 * len(packed["token_ids"])
    assert packed["sample_weight"].sum() == rows["sample_weight"].sum()


def test_best_fit_decreasing_on_two_capacities():
    # One capacity given as a column is the same packing as the 1-D one.
    rng = np.random.default_rng(2)
    for _ in range(50):
        capacity = int(rng.integers(3, 20))
        lengths = rng.integers(1, capacity + 1, int(rng.integers(1, 30)))
        assert (best_fit_decreasing(lengths[:, None], (capacity,), buffer_size=7)
                == best_fit_decreasing(lengths, capacity, buffer_size=7))
    # By hand: (3, 1) and (1, 3) fill a (4, 4) bin; (2, 2) opens another.
    assert best_fit_decreasing([[3, 1], [1, 3], [2, 2]], (4, 4)) == [[0, 1], [2]]
    # Each item fits both capacities of its bin; every item once; no two bins
    # could be merged.
    lengths = np.stack([rng.integers(1, 13, 300), rng.integers(1, 7, 300)], axis=1)
    bins = best_fit_decreasing(lengths, (12, 6))
    assert sorted(i for b in bins for i in b) == list(range(300))
    loads = np.array([lengths[b].sum(0) for b in bins])
    assert (loads <= [12, 6]).all()
    merged = loads[:, None, :] + loads[None, :, :]
    assert not ((merged <= [12, 6]).all(-1) & ~np.eye(len(bins), dtype=bool)).any()
    assert len(bins) <= 1.25 * max(-(-lengths.sum(0) // [12, 6]))
    with pytest.raises(ValueError, match=r"lengths\[1\] = \(2, 7\) does not fit.*\(4, 6\)"):
        best_fit_decreasing([[1, 1], [2, 7]], (4, 6))
    with pytest.raises(ValueError, match=r"\[n, 2\] array"):
        best_fit_decreasing([1, 2], (4, 6))
    with pytest.raises(ValueError, match=r"capacity\[1\]"):
        best_fit_decreasing([[1, 1]], (4, 0))
