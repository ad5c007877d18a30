"""JSON Lines example files in TRL's formats: every format read as
documented (unpaired KTO rows included), every malformed line refused naming
its file and line, files mixing pairs and unpaired rows refused."""

import json

import pytest

from kobjectives.data import read_jsonl
from kobjectives.data import read_preference_examples
from kobjectives.data import read_preference_pairs
from kobjectives.data import read_seq2seq_pairs
from kobjectives.data import read_sft_conversations
from kobjectives.data import read_unpaired_rows

USER = {"role": "user", "content": "Name a prime."}
ASSISTANT = {"role": "assistant", "content": "Seven."}


def _write(path, *lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                            for line in lines))
    return path


def test_rows_come_in_file_then_line_order_with_globs_sorted_and_a_limit(tmp_path):
    _write(tmp_path / "b.jsonl", {"n": 3})
    _write(tmp_path / "a.jsonl", {"n": 1}, "\n", {"n": 2})  # a blank line is skipped
    rows = read_jsonl([str(tmp_path / "*.jsonl")])
    assert [(row["n"], where.rsplit("/", 1)[1]) for row, where in rows] == [
        (1, "a.jsonl:1"), (2, "a.jsonl:3"), (3, "b.jsonl:1")]
    assert [row["n"] for row, _ in read_jsonl(str(tmp_path / "*.jsonl"), limit=2)] == [1, 2]


@pytest.mark.parametrize("line, message", [
    ("{'prompt': 1}\n", r"bad\.jsonl:2 is not valid JSON .*one JSON object per line"),
    ("[1, 2]\n", r"bad\.jsonl:2 holds a JSON list, not an object"),
])
def test_a_line_that_is_not_a_json_object_is_named(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", {"prompt": "a", "completion": "b"}, line)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_missing_and_empty_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.files: .*none.jsonl' matches no file"):
        read_jsonl(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="hold no example"):
        read_jsonl(_write(tmp_path / "empty.jsonl", "\n"))


def test_sft_reads_the_conversational_and_prompt_completion_formats(tmp_path):
    path = _write(
        tmp_path / "sft.jsonl",
        {"messages": [{"role": "system", "content": "Be brief."}, USER, ASSISTANT]},
        {"prompt": "Name a prime.", "completion": "Seven."},
        {"prompt": [USER], "completion": [ASSISTANT]},
    )
    system = {"role": "system", "content": "Be brief."}
    assert read_sft_conversations(path) == [[system, USER, ASSISTANT], [USER, ASSISTANT],
                                            [USER, ASSISTANT]]
    # Seq2seq: a string prompt is the input itself; turns become the dialogue text.
    assert read_seq2seq_pairs(path) == [
        {"input": "System: Be brief.\nUser: Name a prime.", "target": "Seven."},
        {"input": "Name a prime.", "target": "Seven."},
        {"input": "User: Name a prime.", "target": "Seven."},
    ]


@pytest.mark.parametrize("row, message", [
    ({"text": "hello"}, r"sft\.jsonl:1 has the keys \['text'\]: a fine-tuning example is "),
    ({"messages": [USER]}, r"sft\.jsonl:1: 'messages' ends with a 'user' turn"),
    ({"messages": [USER, USER]}, r"'messages'.*a 'user' turn follows a 'user' turn"),
    ({"prompt": "  ", "completion": "x"}, r"'prompt' must be a non-empty string"),
    ({"prompt": [USER, ASSISTANT], "completion": "x"}, r"'prompt' turns end with a 'assistant'"),
    ({"prompt": "a", "completion": [ASSISTANT, USER]}, r"'completion'.*one assistant turn"),
])
def test_a_malformed_sft_example_is_named_by_file_and_line(tmp_path, row, message):
    with pytest.raises((ValueError, TypeError), match=message):
        read_sft_conversations(_write(tmp_path / "sft.jsonl", row))


def test_preference_pairs_take_string_or_turn_prompts_and_answers(tmp_path):
    path = _write(
        tmp_path / "pairs.jsonl",
        {"prompt": "Name a prime.", "chosen": "Seven.", "rejected": "Eight."},
        {"prompt": [USER], "chosen": [ASSISTANT],
         "rejected": [{"role": "assistant", "content": "Nine."}]},
    )
    assert read_preference_pairs(path) == [([USER], "Seven.", "Eight."),
                                           ([USER], "Seven.", "Nine.")]


@pytest.mark.parametrize("row, message", [
    ({"chosen": "a", "rejected": "b"}, r"pairs\.jsonl:1 lacks \['prompt'\]: a preference "),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"are the same text .*prefers nothing"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, r"'chosen' must be a non-empty string"),
    ({"prompt": "p", "chosen": [USER, ASSISTANT], "rejected": "b"}, r"'chosen'"),
])
def test_a_malformed_pair_is_named_by_file_and_line(tmp_path, row, message):
    with pytest.raises((ValueError, TypeError), match=message):
        read_preference_pairs(_write(tmp_path / "pairs.jsonl", row))



def test_unpaired_rows_take_string_or_turn_prompts_and_completions(tmp_path):
    nine = {"role": "assistant", "content": "Nine."}
    path = _write(
        tmp_path / "rows.jsonl",
        {"prompt": "Name a prime.", "completion": "Seven.", "label": True},
        "\n",
        {"prompt": [USER], "completion": [nine], "label": False},
        {"prompt": [{"role": "system", "content": "Be brief."}, USER],
         "completion": "Eight.", "label": False},
    )
    system = {"role": "system", "content": "Be brief."}
    expected = [([USER], "Seven.", True), ([USER], "Nine.", False),
                ([system, USER], "Eight.", False)]
    assert read_unpaired_rows(path) == expected
    assert read_unpaired_rows(path, limit=2) == expected[:2]
    assert read_preference_examples(path) == ("unpaired", expected)
    # Pairs read through the same entry point, as read_preference_pairs reads them.
    pairs = _write(tmp_path / "pairs.jsonl",
                   {"prompt": "Name a prime.", "chosen": "Seven.", "rejected": "Eight."})
    assert read_preference_examples(pairs) == ("pairs", [([USER], "Seven.", "Eight.")])


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c"},
     r"rows\.jsonl:2 lacks \['label'\]: an unpaired preference example is "),
    ({"completion": "c", "label": True}, r"rows\.jsonl:2 lacks \['prompt'\]"),
    ({"prompt": "p", "completion": "c", "label": 1},
     r"rows\.jsonl:2: 'label' must be true .* a JSON boolean\. Received: 1"),
    ({"prompt": "p", "completion": "c", "label": "true"},
     r"rows\.jsonl:2: 'label' must be true .*Received: 'true'"),
    ({"prompt": "p", "completion": " ", "label": True},
     r"rows\.jsonl:2: 'completion' must be a non-empty string"),
    ({"prompt": "p", "completion": [ASSISTANT, ASSISTANT], "label": True},
     r"rows\.jsonl:2 'completion'"),
    ({"prompt": [USER, ASSISTANT], "completion": "c", "label": True},
     r"rows\.jsonl:2: the 'prompt' turns end with a 'assistant' turn"),
    ({"prompt": "p", "chosen": "a", "label": True},
     r"rows\.jsonl:2 mixes the keys of a pair \['chosen'\] and of an unpaired row \['label'\]"),
    ({"prompt": "p", "text": "a"}, r"rows\.jsonl:2 has the keys \['prompt', 'text'\]: a "
                                   r"preference example is a pair .* or an unpaired row"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"},
     r"rows\.jsonl:2 is a pair .*, but .*rows\.jsonl:1 is an unpaired row .*chosen: "
     r"label true"),
])
def test_a_malformed_unpaired_row_is_named_by_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "rows.jsonl", {"prompt": "p", "completion": "c", "label": True},
                  row)
    with pytest.raises((ValueError, TypeError), match=message):
        read_unpaired_rows(path)


def test_unpaired_rows_refuses_files_of_pairs(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", {"prompt": "p", "chosen": "a", "rejected": "b"})
    with pytest.raises(ValueError, match=r"pairs\.jsonl holds pairs .*, not unpaired rows .*"
                                         r"chosen: label true.*read_preference_pairs"):
        read_unpaired_rows(path)


def test_files_mixing_pairs_and_unpaired_rows_are_refused_naming_both_lines(tmp_path):
    row = {"prompt": "p", "completion": "c", "label": True}
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    mixed = _write(tmp_path / "mixed.jsonl", row, "\n", pair)
    with pytest.raises(ValueError, match=r"mixed\.jsonl:3 is a pair .*, but .*mixed\.jsonl:1 is "
                                         r"an unpaired row .*hold one format"):
        read_preference_examples(mixed)
    # Across files too (a glob: a.jsonl is read first).
    _write(tmp_path / "a.jsonl", pair)
    _write(tmp_path / "b.jsonl", row)
    with pytest.raises(ValueError, match=r"b\.jsonl:1 is an unpaired row .*, but .*a\.jsonl:1 "
                                         r"is a pair"):
        read_preference_examples(str(tmp_path / "[ab].jsonl"))
    # A reader of pairs points an unpaired row to KTO.
    with pytest.raises(ValueError, match=r"mixed\.jsonl:1 is an unpaired row .*this needs pairs"
                                         r".*preference\.method=kto"):
        read_preference_pairs(mixed)


@pytest.mark.parametrize("reader, row, key", [
    (read_sft_conversations, {"prompt": "Name a prime.", "completion": ASSISTANT}, "completion"),
    (read_preference_pairs, {"prompt": "Name a prime.", "chosen": ASSISTANT,
                             "rejected": "Eight."}, "chosen"),
    (read_unpaired_rows, {"prompt": "Name a prime.", "completion": ASSISTANT, "label": True},
     "completion"),
])
def test_a_bare_message_dict_answer_is_refused_saying_what_is_accepted(tmp_path, reader, row,
                                                                        key):
    """TRL's conversational answer is a list of messages; a bare dict is
    neither of TRL's forms, and the error shows both accepted ones."""
    good = {"prompt": "p", "completion": "c"} if reader is read_sft_conversations else (
        {"prompt": "p", "chosen": "a", "rejected": "b"} if reader is read_preference_pairs
        else {"prompt": "p", "completion": "c", "label": False})
    path = _write(tmp_path / "sft_pc.jsonl", good, good, "\n", row)
    with pytest.raises(ValueError) as error:
        reader(path)
    assert str(error.value) == (
        f"{path}:4: '{key}' must be a non-empty string, or a list of message dicts such as "
        '[{"role": "assistant", "content": ...}]. A single message dict is not an accepted '
        f"form: wrap it in a list. Received: {ASSISTANT!r}")
    # Wrapped in a list, as the error says, the same line reads.
    fixed = _write(tmp_path / "fixed.jsonl", good, {**row, key: [ASSISTANT]})
    assert len(reader(fixed)) == 2


def test_examples_keep_the_file_and_line_they_were_read_from(tmp_path):
    sft = _write(tmp_path / "sft.jsonl", {"prompt": "p", "completion": "c"}, "\n",
                 {"messages": [USER, ASSISTANT]})
    conversations = read_sft_conversations(sft)
    assert conversations == [[{"role": "user", "content": "p"},
                              {"role": "assistant", "content": "c"}], [USER, ASSISTANT]]
    assert [c.where for c in conversations] == [f"{sft}:1", f"{sft}:3"]
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "prefs.jsonl", pair, "\n", pair)
    pairs = read_preference_pairs(path)
    assert pairs == [([{"role": "user", "content": "p"}], "a", "b")] * 2  # plain tuples' equality
    assert [p.where for p in pairs] == [f"{path}:1", f"{path}:3"]
    assert [p.where for p in read_preference_examples(path)[1]] == [f"{path}:1", f"{path}:3"]
    rows = _write(tmp_path / "rows.jsonl", {"prompt": "p", "completion": "c", "label": True},
                  {"prompt": "p", "completion": "d", "label": False})
    assert [row.where for row in read_unpaired_rows(rows)] == [f"{rows}:1", f"{rows}:2"]
