import collections
import gzip
import json
import re

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data.chat import SkippedRowsWarning
from kobjectives.data.chat import add_chat_tokens
from kobjectives.data.corpus_tasks import prompt_completion_task
from kobjectives.data.preference import KTO_KEYS
from kobjectives.data.preference import PAIR_KEYS
from kobjectives.data.preference import REFERENCE_LOGPS_KEYS
from kobjectives.data.preference import KTOExamples
from kobjectives.data.preference import PairLengthError
from kobjectives.data.preference import PreferenceExamples
from kobjectives.data.preference import _kl_partners
from kobjectives.data.preference import collapsed_pairs
from kobjectives.data.preference import corpus_preference_pairs
from kobjectives.data.preference import kto_arrays
from kobjectives.data.preference import kto_dataset
from kobjectives.data.preference import kto_examples
from kobjectives.data.preference import length_balanced_pairs
from kobjectives.data.preference import looping_answer
from kobjectives.data.preference import preference_arrays
from kobjectives.data.preference import preference_dataset
from kobjectives.data.preference import read_hh_rlhf_pairs
from kobjectives.data.preference import tokenize_preference_pairs
from kobjectives.data.sft import tokenize_sft_examples

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "?", "!", "."]
VOCABULARY = add_chat_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)
ID = {token: index for index, token in enumerate(VOCABULARY)}
USER, ASSISTANT, END, SYSTEM = ID["<|user|>"], ID["<|assistant|>"], ID["<|end|>"], ID["<|system|>"]
START = ID["[CLS]"]


def _tokenizer():
    return keras_hub.tokenizers.WordPieceTokenizer(VOCABULARY, lowercase=True)


def _ids(text):
    return [ID[word] for word in text.split()]


def _chat(*contents, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"]
    return turns + [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


def _examples(prompts, chosens, rejecteds, start=None):
    arrays = [[np.asarray(ids, np.int32) for ids in column]
              for column in (prompts, chosens, rejecteds)]
    return PreferenceExamples(*arrays, start_token_id=start)


# --- tokenization ---------------------------------------------------------------


def test_tokenize_conversation_string_and_dict_pairs_exactly():
    conversation = _chat("a b", "c", "d?", system="h")  # ends with the user's turn
    pairs = [
        (conversation, "e f!", "g"),
        ("a b", "c", "d"),
        {"prompt": _chat("a"), "chosen": "b", "rejected": "c c"},
    ]
    out = tokenize_preference_pairs(pairs, _tokenizer(), start_token_id=START)
    assert len(out) == 3 and out.start_token_id == START
    # The prompt: the whole rendered history (earlier assistant turns as
    # context) and the assistant marker; completions end with <|end|>.
    assert out.prompt_ids[0].tolist() == [
        SYSTEM, ID["h"], END, USER, ID["a"], ID["b"], END, ASSISTANT, ID["c"], END,
        USER, ID["d"], ID["?"], END, ASSISTANT]
    assert out.chosen_ids[0].tolist() == _ids("e f !") + [END]
    assert out.rejected_ids[0].tolist() == _ids("g") + [END]
    # A string prompt has no markers (as SFT's prompt/completion pairs).
    assert out.prompt_ids[1].tolist() == _ids("a b")
    assert out.chosen_ids[1].tolist() == [ID["c"], END]
    assert out.rejected_ids[1].tolist() == [ID["d"], END]
    assert out.prompt_ids[2].tolist() == [USER, ID["a"], END, ASSISTANT]
    assert out.rejected_ids[2].tolist() == [ID["c"], ID["c"], END]
    assert out.lengths.tolist() == [1 + 15 + 4, 1 + 2 + 2, 1 + 4 + 3]
    # prompt + chosen is exactly what SFT trains on for the same conversation.
    sft = tokenize_sft_examples([conversation + [{"role": "assistant", "content": "e f!"}]],
                                _tokenizer())
    assert sft.token_ids[0].tolist() == out.prompt_ids[0].tolist() + out.chosen_ids[0].tolist()
    assert sft.completion_mask[0].tolist()[-4:] == [1, 1, 1, 1]


def test_bad_pairs_fail_clearly_naming_the_pair():
    tokenizer = _tokenizer()
    good = ("a", "b", "c")
    with pytest.raises(ValueError, match=r"pairs\[1\]: chosen and rejected are the same text"):
        tokenize_preference_pairs([good, ("a", "b c", "b c")], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[1\]: chosen and rejected tokenize to the same"):
        tokenize_preference_pairs([good, ("a", "B c", "b  c")], tokenizer)  # lowercased
    with pytest.raises(ValueError, match=r"pairs\[0\]: the prompt has no token and there is no "
                                         r"start_token_id"):
        tokenize_preference_pairs([("", "b", "c")], tokenizer)
    assert tokenize_preference_pairs([("", "b", "c")], tokenizer,
                                     start_token_id=START).prompt_ids[0].tolist() == []
    with pytest.raises(ValueError, match=r"pairs\[0\]: the prompt conversation ends with an? "
                                         r"'assistant' turn"):
        tokenize_preference_pairs([(_chat("a", "b"), "c", "d")], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[0\]\[1\]: the 'assistant' turn is empty"):
        tokenize_preference_pairs([(_chat("a"), " ", "d")], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[0\]: the completion is empty"):
        tokenize_preference_pairs([("a", "b", "  ")], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[0\]\['completion'\]: the content contains the "
                                         r"chat marker"):
        tokenize_preference_pairs([("a", "b<|end|>", "c")], tokenizer)
    with pytest.raises(ValueError, match=r"pairs\[0\]: a dict pair .* lacks \['rejected'\]"):
        tokenize_preference_pairs([{"prompt": "a", "chosen": "b"}], tokenizer)
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(prompt, chosen, rejected\)"):
        tokenize_preference_pairs([("a", "b")], tokenizer)
    with pytest.raises(TypeError, match="not a single one"):
        tokenize_preference_pairs(good, tokenizer)  # noqa: the triple itself
    with pytest.raises(ValueError, match="empty"):
        tokenize_preference_pairs([], tokenizer)
    with pytest.raises(ValueError, match=r"marker '<\|user\|>' is not a token.*add_chat_tokens"):
        tokenize_preference_pairs([(_chat("a"), "b", "c")],
                                  keras_hub.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "a"]))


# --- layout and truncation ---------------------------------------------------------


def test_arrays_lay_out_start_prompt_and_completion_with_their_masks():
    examples = _examples([[5, 6], [7]], [[8, END], [9, 10, END]], [[11, END], [12, END]],
                         start=START)
    out = preference_arrays(examples, sequence_length=6, pad_token_id=0)
    assert sorted(out) == sorted(PAIR_KEYS)
    assert out["chosen_token_ids"].tolist() == [[START, 5, 6, 8, END, 0], [START, 7, 9, 10, END, 0]]
    assert out["rejected_token_ids"].tolist() == [[START, 5, 6, 11, END, 0],
                                                  [START, 7, 12, END, 0, 0]]
    assert out["chosen_completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0]]
    assert out["rejected_completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]]
    assert out["chosen_padding_mask"].astype(int).tolist() == [[1] * 5 + [0], [1] * 5 + [0]]
    assert out["rejected_padding_mask"].astype(int).tolist() == [[1] * 5 + [0], [1] * 4 + [0] * 2]
    assert out["chosen_token_ids"].dtype == np.int32
    assert out["chosen_padding_mask"].dtype == bool
    assert out["chosen_completion_mask"].dtype == np.int32


def test_keep_end_cuts_the_prompt_start_first_then_the_completion_end():
    prompt, short, long = [5, 6, 7, 8, 9], [13, END], [10, 11, 12, 14, 15, 16, END]
    # room = 8 - 1 = 7: the prompt keeps its last 7 - 2 = 5 ... all fits.
    fits = preference_arrays(_examples([prompt], [short], [[13, 13, END]], START), 9)
    assert fits["chosen_token_ids"][0].tolist() == [START] + prompt + short + [0]
    # Longer than the window: the prompt loses its first tokens, as many
    # as the longer completion needs (room 7, longest 3 -> 4 prompt tokens).
    out = preference_arrays(_examples([prompt], [short], [[13, 13, END]], START), 8)
    assert out["chosen_token_ids"][0].tolist() == [START, 6, 7, 8, 9, 13, END, 0]
    assert out["rejected_token_ids"][0].tolist() == [START, 6, 7, 8, 9, 13, 13, END]
    # A long completion: the prompt keeps max_prompt_length (default half
    # the room, 3) and the completions keep their first tokens.
    out = preference_arrays(_examples([prompt], [long], [short], START), 8)
    assert out["chosen_token_ids"][0].tolist() == [START, 7, 8, 9, 10, 11, 12, 14]
    assert out["chosen_completion_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert out["rejected_token_ids"][0].tolist() == [START, 7, 8, 9, 13, END, 0, 0]
    out = preference_arrays(_examples([prompt], [long], [short], START), 8, max_prompt_length=1)
    assert out["chosen_token_ids"][0].tolist() == [START, 9, 10, 11, 12, 14, 15, 16]
    # Without a start token, position 0 is the prompt's last token.
    out = preference_arrays(_examples([prompt], [long], [short]), 4, max_prompt_length=1)
    assert out["chosen_token_ids"][0].tolist() == [9, 10, 11, 12]
    assert out["chosen_completion_mask"][0].tolist() == [0, 1, 1, 1]


def test_keep_start_cuts_the_completion_end_and_never_the_prompt():
    out = preference_arrays(_examples([[5, 6]], [[10, 11, 12, 14, END]], [[13, END]], START), 6,
                            truncation="keep_start")
    assert out["chosen_token_ids"][0].tolist() == [START, 5, 6, 10, 11, 12]
    assert out["rejected_token_ids"][0].tolist() == [START, 5, 6, 13, END, 0]
    with pytest.raises(ValueError, match=r"pairs\[1\]: the completion has no token left after "
                                         r"truncation.*truncation='keep_end'"):
        preference_arrays(_examples([[5], [5, 6, 7, 8, 9]], [[10], [10]], [[11], [11]], START), 6,
                          truncation="keep_start")


def test_error_truncation_and_bad_arguments_fail_clearly():
    examples = _examples([[5], [5, 6, 7, 8, 9, 6]], [[10], [10]], [[11], [11]], START)
    with pytest.raises(ValueError, match=r"pairs\[1\]: its prompt alone has 6 tokens and fills "
                                         r"the 5 .*truncation='keep_end'"):
        preference_arrays(examples, 6, truncation="error")
    with pytest.raises(ValueError, match=r"pairs\[0\]: its prompt \(1 tokens\) and longer "
                                         r"completion \(6\) exceed the 3"):
        preference_arrays(_examples([[5]], [[10] * 6], [[11]], START), 4, truncation="error")
    # Identical once truncated: a pair that prefers nothing.
    with pytest.raises(ValueError, match=r"pairs\[0\]: chosen and rejected are the same once "
                                         r"truncated.*first 2 completion tokens"):
        preference_arrays(_examples([[5, 6]], [[10, 11, 12]], [[10, 11, 13]]), 4)
    with pytest.raises(ValueError, match="`truncation` must be one of"):
        preference_arrays(examples, 8, truncation="left")
    with pytest.raises(ValueError, match=r"`max_prompt_length` \(5\) must leave room.*at most 4"):
        preference_arrays(examples, 6, max_prompt_length=5)
    with pytest.raises(ValueError, match="`sequence_length` must be an int >= 3"):
        preference_arrays(examples, 2)
    with pytest.raises(ValueError, match=r"pairs\[0\]: the prompt has no token"):
        preference_arrays(_examples([[]], [[10]], [[11]]), 4)
    with pytest.raises(ValueError, match=r"differ in length: \{'prompt_ids': 2, 'chosen_ids': 1"):
        preference_arrays(PreferenceExamples([np.array([5])] * 2, [np.array([6])],
                                             [np.array([7])] * 2), 4)
    with pytest.raises(TypeError, match="PreferenceExamples"):
        preference_arrays({"prompt_ids": []}, 4)
    with pytest.raises(ValueError, match="3 pairs, fewer than batch_size=4.*drop_remainder"):
        preference_dataset(_examples([[5]] * 3, [[10]] * 3, [[11]] * 3), 4, batch_size=4)


# --- tf.data ----------------------------------------------------------------------


def test_dataset_batches_static_shapes_reshuffled_with_extra_features():
    count = 6
    examples = _examples([[5 + i % 3] for i in range(count)], [[10, 20 + i] for i in range(count)],
                         [[11, 20 + i] for i in range(count)], START)
    reference = {"reference_chosen_logps": -np.arange(count, dtype=np.float64),
                 "reference_rejected_logps": -10.0 - np.arange(count)}
    dataset = preference_dataset(examples, 5, batch_size=4, seed=3, extra_features=reference)
    spec = dataset.element_spec
    assert sorted(spec) == sorted(PAIR_KEYS + REFERENCE_LOGPS_KEYS)
    for key in PAIR_KEYS:
        assert spec[key].shape == (4, 5)
    assert spec["reference_chosen_logps"].shape == (4,)
    assert spec["reference_chosen_logps"].dtype == tf.float32

    def epoch():
        batches = list(dataset.as_numpy_iterator())
        assert len(batches) == 1  # 6 pairs, batches of 4, the remainder dropped
        return batches[0]

    first, second = epoch(), epoch()
    for batch in (first, second):
        # Every row carries its own pair's values through the shuffle.
        index = batch["chosen_token_ids"][:, 3] - 20
        np.testing.assert_array_equal(batch["reference_chosen_logps"], -index)
        np.testing.assert_array_equal(batch["reference_rejected_logps"], -10.0 - index)
        np.testing.assert_array_equal(batch["rejected_token_ids"][:, 3] - 20, index)
    assert first["chosen_token_ids"][:, 3].tolist() != second["chosen_token_ids"][:, 3].tolist()
    again = preference_dataset(examples, 5, batch_size=4, seed=3, extra_features=reference)
    np.testing.assert_array_equal(next(again.as_numpy_iterator())["chosen_token_ids"],
                                  first["chosen_token_ids"])
    # In order, every pair once (to precompute per-pair values).
    ordered = list(preference_dataset(examples, 5, 4, shuffle=False, drop_remainder=False)
                   .as_numpy_iterator())
    assert [b["chosen_token_ids"][:, 3].tolist() for b in ordered] == [[20, 21, 22, 23], [24, 25]]
    assert ordered[0]["chosen_token_ids"][0].tolist() == [START, 5, 10, 20, 0]
    # One forward pass: chosen and rejected concatenated on the batch axis.
    batch = next(iter(dataset))
    both = tf.concat([batch["chosen_token_ids"], batch["rejected_token_ids"]], 0)
    chosen, rejected = tf.split(both, 2)
    np.testing.assert_array_equal(chosen, batch["chosen_token_ids"])
    np.testing.assert_array_equal(rejected, batch["rejected_token_ids"])
    # Extra features are checked.
    with pytest.raises(ValueError, match=r"extra_features\['reference_chosen_logps'\] has shape "
                                         r"\(5,\).*number of examples \(6\)"):
        preference_dataset(examples, 5, 4, extra_features={"reference_chosen_logps": np.zeros(5)})
    with pytest.raises(ValueError, match=r"extra_features\['r'\]\[2\] is not finite"):
        preference_dataset(examples, 5, 4, extra_features={"r": [0, 0, np.nan, 0, 0, 0.0]})
    with pytest.raises(ValueError, match="dataset's own keys"):
        preference_dataset(examples, 5, 4, extra_features={"chosen_token_ids": np.zeros(6)})


# --- KTO ------------------------------------------------------------------------------


def test_kto_examples_unpair_pairs_and_keep_unpaired_rows():
    rows = kto_examples([
        ("a", "b", "c"),
        ("d", "e", False),
        {"prompt": _chat("f"), "completion": "g", "label": True},
        {"prompt": "h", "chosen": "a a", "rejected": "b b"},
    ], _tokenizer())
    assert rows.desirable.tolist() == [True, False, True, True, False, False]
    assert rows.source_index.tolist() == [0, 1, 2, 3, 0, 3]
    assert [r.tolist() for r in rows.prompt_ids] == [
        _ids("a"), _ids("d"), [USER, ID["f"], END, ASSISTANT], _ids("h"), _ids("a"), _ids("h")]
    assert [r.tolist() for r in rows.completion_ids] == [
        [ID["b"], END], [ID["e"], END], [ID["g"], END], _ids("a a") + [END], [ID["c"], END],
        _ids("b b") + [END]]
    with pytest.raises(ValueError, match=r"examples\[1\]: chosen and rejected are the same"):
        kto_examples([("a", "b", True), ("a", "c", "c")], _tokenizer())
    with pytest.raises(TypeError, match=r"examples\[0\]: the third field must be a bool"):
        kto_examples([("a", "b", 1)], _tokenizer())
    with pytest.raises(ValueError, match=r"examples\[0\]: an unpaired dict .* lacks \['label'\]"):
        kto_examples([{"prompt": "a", "completion": "b"}], _tokenizer())


def test_kl_partners_shift_by_one_within_groups():
    assert _kl_partners(4, 4).tolist() == [3, 0, 1, 2]  # TRL: [c[-1]] + c[:-1]
    assert _kl_partners(6, 3).tolist() == [2, 0, 1, 5, 3, 4]
    # A last group of one row would take its own completion: it joins the previous.
    assert _kl_partners(5, 2).tolist() == [1, 0, 4, 2, 3]
    assert _kl_partners(3, 8).tolist() == [2, 0, 1]


def test_kto_dataset_rows_kl_rows_and_static_shapes():
    rows = KTOExamples(
        [np.array([5]), np.array([6, 7]), np.array([8]), np.array([9])],
        [np.array([10, END]), np.array([11, END]), np.array([12, 13, END]), np.array([14, END])],
        np.array([True, False, True, False]), np.arange(4), start_token_id=START)
    out = kto_arrays(rows, 5, kl_batch_size=2)
    assert sorted(out) == sorted(KTO_KEYS)
    assert out["token_ids"].tolist() == [
        [START, 5, 10, END, 0], [START, 6, 7, 11, END], [START, 8, 12, 13, END],
        [START, 9, 14, END, 0]]
    assert out["completion_mask"].tolist() == [
        [0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0]]
    # KL row i: prompt i with the completion of the previous row of its
    # group of 2 (the first takes the last's); truncated by the same rule.
    assert out["kl_token_ids"].tolist() == [
        [START, 5, 11, END, 0], [START, 6, 7, 10, END], [START, 8, 14, END, 0],
        [START, 9, 12, 13, END]]
    assert out["kl_completion_mask"].tolist()[1] == [0, 0, 0, 1, 1]
    assert out["kl_padding_mask"].astype(int).tolist()[0] == [1, 1, 1, 1, 0]
    dataset = kto_dataset(rows, 5, batch_size=2, kl_batch_size=2, seed=1,
                          extra_features={"reference_logps": [-1.0, -2.0, -3.0, -4.0],
                                          "reference_kl_logps": np.zeros(4)})
    spec = dataset.element_spec
    assert spec["desirable"].shape == (2,) and spec["desirable"].dtype == tf.bool
    for key in ("token_ids", "kl_token_ids", "completion_mask", "kl_padding_mask"):
        assert spec[key].shape == (2, 5)
    seen = {}
    for batch in dataset.as_numpy_iterator():
        for row, logp, desirable in zip(batch["token_ids"], batch["reference_logps"],
                                        batch["desirable"]):
            seen[row[1]] = (logp, desirable)
    assert seen == {5: (-1.0, True), 6: (-2.0, False), 8: (-3.0, True), 9: (-4.0, False)}
    # keep_start: a prompt filling the window leaves the completion empty.
    long = KTOExamples([np.array([5, 6, 7, 8]), np.array([6])], [np.array([10]), np.array([11])],
                       np.array([True, False]), np.arange(2), start_token_id=START)
    with pytest.raises(ValueError, match=r"rows\[0\]: the completion has no token left"):
        kto_arrays(long, 5, truncation="keep_start")
    with pytest.raises(ValueError, match="KTO needs at least 2 rows"):
        kto_arrays(KTOExamples([np.array([5])], [np.array([10])], np.array([True]),
                               np.arange(1)), 4)


# --- HH-RLHF ----------------------------------------------------------------------------


def _write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_read_hh_rlhf_pairs_splits_the_shared_prompt_and_refuses_the_reserved_subset(tmp_path):
    two_turns = {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C?\n\nAssistant: D",
                 "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C?\n\nAssistant: E"}
    same = {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: A\n\nAssistant: B"}
    forked = {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
              "rejected": "\n\nHuman: A\n\nAssistant: X\n\nHuman: C\n\nAssistant: E"}
    _write(tmp_path / "helpful-base.test.jsonl.gz", [two_turns, forked, same, two_turns])
    _write(tmp_path / "helpful-online.test.jsonl.gz", [two_turns])
    with pytest.warns(UserWarning, match=r"skipped 2 malformed.*helpful-base.test.jsonl.gz:2: the "
                                         r"chosen and rejected dialogues differ before their last"):
        pairs = read_hh_rlhf_pairs(tmp_path, subsets="helpful-base")
    prompt = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
              {"role": "user", "content": "C?"}]
    assert pairs == [(prompt, "D", "E"), (prompt, "D", "E")]
    with pytest.raises(ValueError, match=r"jsonl.gz:2: the chosen and rejected dialogues differ "
                                         r"before their last turn"):
        read_hh_rlhf_pairs(tmp_path, subsets="helpful-base", invalid="error")
    _write(tmp_path / "harmless-base.test.jsonl.gz", [same])
    with pytest.raises(ValueError, match=r"gz:1: the chosen and rejected answers are the same"):
        read_hh_rlhf_pairs(tmp_path, subsets="harmless-base", invalid="error")
    assert read_hh_rlhf_pairs(tmp_path, subsets="helpful-base", limit=1) == pairs[:1]
    with pytest.raises(ValueError, match=r"\['helpful-online'\] are reserved.*allow_reserved"):
        read_hh_rlhf_pairs(tmp_path, subsets=["helpful-base", "helpful-online"])
    assert read_hh_rlhf_pairs(tmp_path, subsets="helpful-online", allow_reserved=True) == pairs[:1]
    with pytest.raises(FileNotFoundError, match="helpful-rejection-sampled"):
        read_hh_rlhf_pairs(tmp_path)
    derived = tmp_path / "pairs.jsonl"
    derived.write_text("\n".join(json.dumps(row) for row in [
        {"subset": "helpful-online", "prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " R",
         "rejected": " S"},
        {"subset": "harmless-base", "prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " T",
         "rejected": " S"},
    ]) + "\n")
    assert read_hh_rlhf_pairs(derived) == [([{"role": "user", "content": "Q"}], "T", "S")]
    _write(tmp_path / "harmless-base.test.jsonl.gz", [{"chosen": "\n\nHuman: A"}])
    with pytest.raises(ValueError, match="jsonl.gz:1: the row has no 'rejected' field"):
        read_hh_rlhf_pairs(tmp_path, subsets="harmless-base")


def test_real_hh_rlhf_pairs_tokenize_into_static_batches(shared_data):
    folder = shared_data / "hh_rlhf"
    with pytest.warns(UserWarning, match="malformed"):
        pairs = read_hh_rlhf_pairs(folder, subsets="helpful-base", limit=200)
    with pytest.warns(UserWarning, match="malformed"):
        derived = read_hh_rlhf_pairs(folder / "hh_test_prompt_chosen_rejected.jsonl",
                                     subsets="helpful-base", limit=200)
    assert derived == pairs  # the two layouts of the data give the same pairs
    assert len(pairs) == 200
    for prompt, chosen, rejected in pairs:
        assert prompt[-1]["role"] == "user" and chosen != rejected
    with pytest.raises(ValueError, match="reserved"):
        read_hh_rlhf_pairs(folder, subsets="helpful-online")
    words = collections.Counter(w for prompt, chosen, rejected in pairs for text in
                                [turn["content"] for turn in prompt] + [chosen, rejected]
                                for w in re.findall(r"\w+", text.lower()))
    vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "[CLS]"] + list(".,?!'") + sorted(words))
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    examples = tokenize_preference_pairs(pairs, tokenizer, start_token_id=2)
    assert examples.lengths.max() > 128  # some are truncated
    dataset = preference_dataset(examples, 128, batch_size=16, shuffle=False)
    end = vocabulary.index("<|end|>")
    assistant = vocabulary.index("<|assistant|>")
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == 200 // 16
    for batch in batches:
        for side in ("chosen", "rejected"):
            ids, mask = batch[f"{side}_token_ids"], batch[f"{side}_completion_mask"]
            assert ids.shape == (16, 128)
            assert (ids[:, 0] == 2).all()
            # The completion follows the assistant marker, and a completion that
            # fits ends with <|end|> at its last real position.
            first = mask.argmax(axis=1)
            assert (ids[np.arange(16), first - 1] == assistant).all()
            last = batch[f"{side}_padding_mask"].sum(axis=1) - 1
            short = last < 127
            assert (ids[np.arange(16), last][short] == end).all()


# --- the embedded-corpus task -----------------------------------------------------------


def test_looping_answer_keeps_a_start_then_loops_to_about_the_same_length():
    assert looping_answer("Fry the eggs in a pan.", np.random.default_rng(1)) == (
        "Fry the Fry the Fry the.")
    answer = "Return the sorted list of names this module exports, leaving private ones out."
    words = answer.split()
    assert len(set(words)) == len(words)  # so the start kept and the loop can be read back
    shapes = set()
    for seed in range(200):
        text = looping_answer(answer, np.random.default_rng(seed))
        assert text.endswith(".") and not text.endswith("..")  # the answer's stop, once
        looped = text[:-1].split()
        # kept: the longest prefix of the answer's words (at most n - 2 of them).
        kept = next(k for k in range(len(words)) if looped[k] != words[k])
        loop = next(m for m in range(1, 5) if all(
            looped[i] == looped[i - m] for i in range(kept, len(looped))))
        assert 1 <= kept <= len(words) - 2 and loop <= kept
        assert looped[kept:kept + loop] == words[kept - loop:kept][:len(looped) - kept]
        assert abs(len(text) - len(answer)) <= max(map(len, words)) + 1  # about as long
        assert len(looped) > kept  # a word repeated at least
        shapes.add((kept, loop))
    assert len(shapes) > 20  # both draws vary
    assert looping_answer("a a a", np.random.default_rng(0)) == "a a a"
    with pytest.raises(ValueError, match=r"`answer` needs at least three words to loop\. "
                                         r"Received: 'Boil it\.'"):
        looping_answer("Boil it.", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"`max_loop_words` must be an int >= 1\. "
                                         r"Received: max_loop_words=0"):
        looping_answer(answer, np.random.default_rng(0), max_loop_words=0)
    # One-word loops only: the answer's first words, then one of them repeated.
    for seed in range(20):
        looped = looping_answer(answer, np.random.default_rng(seed), max_loop_words=1)[:-1].split()
        kept = next(k for k in range(len(words)) if looped[k] != words[k])
        assert set(looped[kept:]) == {words[kept - 1]}


def test_corpus_preference_pairs_are_deterministic_and_prefer_the_unlooped_answer():
    pairs = corpus_preference_pairs(seed=0, limit=300)
    paragraphs = {example["prompt"]: example["completion"]
                  for example in prompt_completion_task(max_examples=300)}
    assert len(pairs) == sum(len(p.split()) >= 3 for p in paragraphs.values()) > 250
    assert corpus_preference_pairs(seed=0, limit=300) == pairs
    other_seed = corpus_preference_pairs(seed=1, limit=300)
    assert [p[:2] for p in other_seed] == [p[:2] for p in pairs]
    assert [p[2] for p in other_seed] != [p[2] for p in pairs]
    rng = np.random.default_rng(0)
    for prompt, chosen, rejected in pairs:
        assert len(prompt) == 1 and prompt[0]["role"] == "user"
        assert re.fullmatch(r"What does \S+ do\?", prompt[0]["content"])
        assert chosen == paragraphs[prompt[0]["content"]]
        assert rejected == looping_answer(chosen, rng) and rejected != chosen
    # About as long: the length of the answers says little of which is chosen.
    longer = np.mean([len(c) > len(r) for _, c, r in pairs])
    shorter = np.mean([len(c) < len(r) for _, c, r in pairs])
    assert 0.25 < longer < 0.5 and 0.25 < shorter < 0.5
    # The tokenized task lays out without error.
    words = sorted({w for _, chosen, _ in pairs for w in re.findall(r"\w+", chosen.lower())}
                   | {w for p, _, _ in pairs for w in re.findall(r"\w+", p[0]["content"].lower())})
    vocabulary = add_chat_tokens(["[PAD]", "[UNK]", "[CLS]"] + list(".,?!'()`:-_=*[]\"/<>") + words)
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    examples = tokenize_preference_pairs(pairs, tokenizer, start_token_id=2)
    out = preference_arrays(examples, 96)
    assert (out["chosen_completion_mask"].sum(axis=1) > 0).all()
    assert (out["rejected_completion_mask"].sum(axis=1) > 0).all()


@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
def test_collapsed_pairs_are_exactly_those_preference_arrays_refuses(truncation):
    rng = np.random.default_rng(0)
    prompts, chosen, rejected = [], [], []
    for _ in range(40):
        prompts.append(rng.integers(5, 9, rng.integers(1, 4)))
        shared = rng.integers(5, 9, rng.integers(1, 8))
        chosen.append(np.concatenate([shared, rng.integers(5, 9, rng.integers(0, 3))]))
        rejected.append(np.concatenate([shared, rng.integers(9, 12, rng.integers(1, 3))]))
    examples = PreferenceExamples(prompts, chosen, rejected, start_token_id=2)
    collapsed = collapsed_pairs(examples, 8, truncation)
    assert collapsed  # the random pairs include some that differ only past the window
    for index in range(len(examples)):
        one = PreferenceExamples([prompts[index]], [chosen[index]], [rejected[index]], 2)
        if index in collapsed:
            with pytest.raises(ValueError, match="same once truncated"):
                preference_arrays(one, 8, truncation)
        else:
            preference_arrays(one, 8, truncation)


def _length_pairs(lengths):
    """`PreferenceExamples` whose answers have the given `(chosen, rejected)`
    token counts."""
    return PreferenceExamples([np.array([5])] * len(lengths),
                              [np.full(c, 7) for c, _ in lengths],
                              [np.full(r, 8) for _, r in lengths])


def test_length_balanced_pairs_leaves_length_uninformative_in_every_bin():
    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(600):  # the longer answer chosen about 70% of the time, more so when far apart
        a, b = rng.integers(1, 60, size=2)
        longer_wins = rng.random() < (0.55 if abs(a - b) < 10 else 0.85)
        lengths.append((max(a, b), min(a, b)) if longer_wins else (min(a, b), max(a, b)))
    examples = _length_pairs(lengths)
    keep = length_balanced_pairs(examples, bins=4, seed=0)
    assert keep == sorted(set(keep)) and keep == length_balanced_pairs(examples, bins=4, seed=0)
    chosen, rejected = np.array(lengths).T
    difference = np.abs(chosen - rejected)
    kept = np.zeros(len(lengths), bool)
    kept[keep] = True
    assert kept[difference == 0].all()  # ties carry no length signal: all kept
    # Within each quantile bin of the difference, as many 'longer chosen' as
    # 'shorter chosen' pairs remain, and no fewer than the smaller side had.
    unequal = difference > 0
    edges = np.quantile(difference[unequal], [0.25, 0.5, 0.75])
    bins = np.searchsorted(edges, difference, side="right")
    for b in range(4):
        members = unequal & (bins == b)
        longer, shorter = members & (chosen > rejected), members & (chosen < rejected)
        assert (kept & longer).sum() == (kept & shorter).sum() == min(longer.sum(), shorter.sum())
    assert length_balanced_pairs(examples, bins=4, seed=1) != keep  # the seed picks the drops


def test_length_balanced_pairs_errors():
    with pytest.raises(ValueError, match="`bins` must be an int >= 1"):
        length_balanced_pairs(_length_pairs([(2, 1)]), bins=0)
    with pytest.raises(TypeError, match="tokenize_preference_pairs"):
        length_balanced_pairs([([1], [2], [3])])


# --- naming pairs by their file and line -------------------------------------------------


def _pairs_file(tmp_path, bad_line, bad_pair, count=10):
    from kobjectives.data import read_preference_pairs

    lines = [json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})] * count
    lines[bad_line - 1] = json.dumps(bad_pair)
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, read_preference_pairs(path)


def test_errors_after_a_split_name_the_pair_by_its_file_and_line(tmp_path):
    """Pairs read from a file are named by `file:line` in the errors of the
    tokenizer and the layout, also once a split has reordered them."""
    # Line 10: chosen and rejected differ only in letter case.
    path, pairs = _pairs_file(tmp_path, 10, {"prompt": "a", "chosen": "B!", "rejected": "b!"})
    subset = pairs[5:]  # the pair is pairs[4] here, and line 10 of the file
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:10: chosen and rejected "
                                         r"tokenize to the same 3 ids"):
        tokenize_preference_pairs(subset, _tokenizer(), start_token_id=START)
    # Line 10: a prompt of 6 tokens fills a window of 6 (5 after the start token).
    path, pairs = _pairs_file(tmp_path, 10, {"prompt": "a b c d e f", "chosen": "b",
                                             "rejected": "c"})
    examples = tokenize_preference_pairs(pairs[5:], _tokenizer(), start_token_id=START)
    assert examples.name(4) == f"{path}:10" and examples.name(0) == f"{path}:6"
    # <|user|> a b c d e f <|end|> <|assistant|>: 9 prompt tokens; the window leaves 7.
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:10: the completion has no "
                                         r"token left after truncation: the prompt has 9 tokens "
                                         r"and fills the 7 left in the window.*Pass "
                                         r"truncation='keep_end'"):
        preference_arrays(examples, 8, truncation="keep_start")
    with pytest.raises(PairLengthError, match=rf"^{re.escape(str(path))}:10: its prompt alone "
                                              r"has 9 tokens and fills the 7 .*pass "
                                              r"truncation='keep_end'"):
        collapsed_pairs(examples, 8, truncation="error")
    # Without a `where` (plain tuples), the index in the input.
    plain = tokenize_preference_pairs([tuple(p) for p in pairs[5:]], _tokenizer(),
                                      start_token_id=START)
    assert plain.names == [f"pairs[{i}]" for i in range(5)]
    with pytest.raises(ValueError, match=r"^pairs\[4\]: the completion has no token left"):
        preference_arrays(plain, 8, truncation="keep_start")


def test_pair_length_error_words_its_fix_with_the_names_given():
    error = PairLengthError("prefs.jsonl:10", "error", 3, 9, 7)
    assert str(error) == (
        "prefs.jsonl:10: its prompt (3 tokens) and longer completion (9) exceed the 7 tokens "
        "the window leaves for them (after the start token, if any). Raise `sequence_length`, "
        "drop the long pairs, or pass truncation='keep_end' (cut the prompt's start first) or "
        "truncation='keep_start' (cut the completions' end first).")
    assert error.describe("data.truncation = {}", "model.sequence_length") == (
        "prefs.jsonl:10: its prompt (3 tokens) and longer completion (9) exceed the 7 tokens "
        "the window leaves for them (after the start token, if any). Raise "
        "model.sequence_length, drop the long pairs, or set data.truncation = keep_end (cut "
        "the prompt's start first) or data.truncation = keep_start (cut the completions' end "
        "first).")
    import pickle

    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_kto_rows_are_named_by_their_file_and_line(tmp_path):
    from kobjectives.data import read_unpaired_rows

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in [
        {"prompt": "a", "completion": "b", "label": True},
        {"prompt": "a b c d e f", "completion": "c", "label": False}]) + "\n")
    rows = kto_examples(read_unpaired_rows(path), _tokenizer(), start_token_id=START)
    assert rows.names == [f"{path}:1", f"{path}:2"]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: the completion has no "
                                         "token left after truncation"):
        kto_arrays(rows, 8, truncation="keep_start")
    # A pair unpaired: its two rows, named by the pair.
    unpaired = kto_examples([("a", "b", "c")], _tokenizer())
    assert unpaired.names == ["examples[0] (chosen)", "examples[0] (rejected)"]
    assert unpaired.source_index.tolist() == [0, 0]


def test_hh_rlhf_and_corpus_pairs_carry_a_descriptive_name(tmp_path):
    good = {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: A\n\nAssistant: C"}
    bad = {"chosen": "\n\nHuman: A", "rejected": "\n\nHuman: A\n\nAssistant: C"}
    _write(tmp_path / "helpful-base.test.jsonl.gz", [good, bad, bad, good])
    with pytest.warns(SkippedRowsWarning) as caught:
        pairs = read_hh_rlhf_pairs(tmp_path, subsets="helpful-base")
    [warning] = caught
    assert warning.message.count == 2
    assert warning.message.first == (f"{tmp_path / 'helpful-base.test.jsonl.gz'}:2: a dialogue "
                                      "does not end with an assistant turn")
    assert "Pass invalid='error' to stop at them." in str(warning.message)
    assert [pair.where for pair in pairs] == [f"{tmp_path / 'helpful-base.test.jsonl.gz'}:{n}"
                                              for n in (1, 4)]
    root = tmp_path / "root"
    root.mkdir()
    (root / "spam.py").write_text("def fry(eggs):\n    '''Fry the eggs in a pan.'''\n"
                                  "def boil(eggs):\n    '''Boil the eggs in water.'''\n")
    assert [pair.where for pair in corpus_preference_pairs(root=root)] == [
        "the corpus pair about spam.fry", "the corpus pair about spam.boil"]
