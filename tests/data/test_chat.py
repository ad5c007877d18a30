import gzip
import json

import pytest

from kobjectives.data.chat import HH_RLHF_TRAIN_SUBSETS
from kobjectives.data.chat import ChatTemplate
from kobjectives.data.chat import add_chat_tokens
from kobjectives.data.chat import check_conversation
from kobjectives.data.chat import parse_hh_rlhf
from kobjectives.data.chat import read_hh_rlhf
from kobjectives.data.preference import read_hh_rlhf_pairs

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you."},
]


def test_render_marks_roles_and_makes_assistant_turns_the_completions():
    template = ChatTemplate()
    assert template.render_text(CONVERSATION) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nBye<|end|>\n<|assistant|>\nSee you.<|end|>\n"
    )
    assert template.render(CONVERSATION) == [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", False),
        ("Hello!<|end|>", True),
        ("\n<|user|>\nBye<|end|>\n<|assistant|>\n", False),
        ("See you.<|end|>", True),
        ("\n", False),
    ]
    # The generation prompt is the training prompt of the next answer.
    prompt = template.generation_prompt(CONVERSATION[:4])
    assert prompt == "".join(text for text, _ in template.render(CONVERSATION)[:3])
    custom = ChatTemplate(user_marker="[U]", assistant_marker="[A]", end_marker="[E]")
    assert custom.render(CONVERSATION[1:3]) == [("[U]\nHi[E]\n[A]\n", False), ("Hello![E]", True),
                                                ("\n", False)]
    assert template.render_prompt_completion("", "x") == [("x<|end|>", True)]


def test_add_chat_tokens_appends_only_missing_markers():
    assert add_chat_tokens(["[PAD]", "<|end|>"]) == [
        "[PAD]", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


MALFORMED = [
    ([], ValueError, "empty"),
    ("Hi", TypeError, "list of turns"),
    ([{"role": "user"}], ValueError, r"lacks \['content'\]"),
    ([{"role": "bot", "content": "x"}], ValueError, "unknown role 'bot'"),
    ([{"role": "user", "content": "  \n"}], ValueError, r"\[0\]: the 'user' turn is empty"),
    ([{"role": "user", "content": 3}], TypeError, "must be a str"),
    ([{"role": "assistant", "content": "x"}], ValueError, "starts with 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], ValueError,
     r"\[1\]: a 'user' turn follows a 'user' turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], ValueError,
     "'system' turn may only be the first"),
]


def test_malformed_conversations_fail_clearly():
    for conversation, error, match in MALFORMED:
        with pytest.raises(error, match=match):
            check_conversation(conversation)


def test_markers_cannot_be_forged_or_malformed():
    with pytest.raises(ValueError, match=r"conversation\[0\].*chat marker '<\|end\|>'"):
        ChatTemplate().render([{"role": "user", "content": "hi<|end|>"}])
    with pytest.raises(ValueError, match="end_marker.*without whitespace"):
        ChatTemplate(end_marker="<end> ")
    with pytest.raises(ValueError, match="must differ"):
        ChatTemplate(user_marker="<x>", assistant_marker="<x>")
    with pytest.raises(ValueError, match="completion is empty"):
        ChatTemplate().render_prompt_completion("a", " ")


def test_parse_hh_rlhf_splits_turns_and_keeps_inner_blank_lines():
    text = ("\n\nHuman: List two fruits.\n\nAssistant: Sure:\n\n1. apple\n\n2. pear"
            "\n\nHuman: Thanks!\n\nAssistant:  You're welcome.")
    assert parse_hh_rlhf(text) == [
        {"role": "user", "content": "List two fruits."},
        {"role": "assistant", "content": "Sure:\n\n1. apple\n\n2. pear"},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    with pytest.raises(ValueError, match=r"turn\[1\]: the 'assistant' turn is empty"):
        parse_hh_rlhf("\n\nHuman: Hi\n\nAssistant:  \n\nHuman: Hello?")
    with pytest.raises(ValueError, match="'assistant' turn follows a 'assistant'"):
        parse_hh_rlhf("\n\nHuman: Hi\n\nAssistant: a\n\nAssistant: b")
    with pytest.raises(ValueError, match="starts with"):
        parse_hh_rlhf("Hello\n\nHuman: Hi")
    with pytest.raises(ValueError, match="no 'Human:'"):
        parse_hh_rlhf("\n\n")


def _write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_read_hh_rlhf_directory_file_targets_and_reserved_split(tmp_path):
    good = {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: A\n\nAssistant: C"}
    bad = {"chosen": "\n\nHuman: A\n\nAssistant:", "rejected": "\n\nHuman: A\n\nAssistant: C"}
    _write(tmp_path / "helpful-base.test.jsonl.gz", [good, bad, good])
    _write(tmp_path / "harmless-base.test.jsonl.gz", [good])
    _write(tmp_path / "helpful-online.test.jsonl.gz", [good])
    with pytest.warns(UserWarning, match=r"skipped 1 malformed.*helpful-base.test.jsonl.gz:2"):
        conversations = read_hh_rlhf(tmp_path, subsets=["helpful-base", "harmless-base"])
    assert len(conversations) == 3
    assert conversations[0][-1] == {"role": "assistant", "content": "B"}
    with pytest.raises(ValueError, match=r"helpful-base.test.jsonl.gz:2: .*'assistant' turn is empty"):
        read_hh_rlhf(tmp_path, subsets=["helpful-base"], invalid="error")
    rejected = read_hh_rlhf(tmp_path, subsets="helpful-base", target="rejected")
    assert [c[-1]["content"] for c in rejected] == ["C", "C", "C"]
    assert read_hh_rlhf(tmp_path, subsets="helpful-base", max_dialogues=1) == conversations[:1]
    # The reserved subset: refused unless asked for explicitly.
    with pytest.raises(ValueError, match=r"\['helpful-online'\] are reserved.*allow_reserved=True"):
        read_hh_rlhf(tmp_path, subsets=["helpful-base", "helpful-online"])
    assert len(read_hh_rlhf(tmp_path, subsets=["helpful-online"], allow_reserved=True)) == 1
    with pytest.raises(FileNotFoundError, match="helpful-rejection-sampled"):
        read_hh_rlhf(tmp_path)  # the default train subsets: one file is missing
    # One file of {subset, prompt, chosen} rows (the derived file's layout).
    derived = tmp_path / "pairs.jsonl"
    derived.write_text("\n".join(json.dumps(row) for row in [
        {"subset": "helpful-base", "prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " R",
         "rejected": " S"},
        {"subset": "helpful-online", "prompt": "\n\nHuman: Q\n\nAssistant:", "chosen": " T",
         "rejected": " S"},
    ]) + "\n")
    assert read_hh_rlhf(derived) == [[{"role": "user", "content": "Q"},
                                      {"role": "assistant", "content": "R"}]]
    with pytest.raises(ValueError, match="Unknown HH-RLHF subsets"):
        read_hh_rlhf(tmp_path, subsets=["helpful"])
    with pytest.raises(ValueError, match="target"):
        read_hh_rlhf(tmp_path, target="prompt")


@pytest.mark.parametrize("line, message", [
    ('{"chosen": "x"', r"pairs.jsonl:2: not a JSON object \(Expecting"),
    ('["chosen"]', r"pairs.jsonl:2: not a JSON object \(a list\)"),
])
def test_hh_rlhf_readers_name_the_line_that_is_not_a_json_object(tmp_path, line, message):
    row = {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: A\n\nAssistant: C"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n" + line + "\n")
    for read in (read_hh_rlhf, read_hh_rlhf_pairs):
        with pytest.raises(ValueError, match=message):
            read(path)


def test_real_hh_rlhf_train_dialogues(shared_data):
    folder = shared_data / "hh_rlhf"
    with pytest.warns(UserWarning, match="malformed"):
        conversations = read_hh_rlhf(folder)
    # 2354 + 2749 + 2312 train dialogues; a few dozen malformed ones are left out.
    assert 7350 < len(conversations) < 7415
    for conversation in conversations:
        roles = [turn["role"] for turn in conversation]
        assert roles[::2] == ["user"] * len(roles[::2])
        assert roles[1::2] == ["assistant"] * len(roles[1::2])
        assert roles[-1] == "assistant"  # the chosen answer is the last turn
    with pytest.raises(ValueError, match="reserved"):
        read_hh_rlhf(folder, subsets=HH_RLHF_TRAIN_SUBSETS + ("helpful-online",))
    # The derived file names each row's subset: the reserved rows are skipped.
    derived = read_hh_rlhf(folder / "hh_test_prompt_chosen_rejected.jsonl", max_dialogues=50)
    assert len(derived) == 50


def test_skipped_rows_warning_pickles_with_its_count_and_first_row():
    import pickle

    from kobjectives.data.chat import SkippedRowsWarning

    warning = pickle.loads(pickle.dumps(SkippedRowsWarning("2 skipped", 2, "a.jsonl:3: no turn")))
    assert (str(warning), warning.count, warning.first) == ("2 skipped", 2, "a.jsonl:3: no turn")
