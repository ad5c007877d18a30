"""Examples that know where they were read: equal to, encoded and pickled
as their plain values, named by `where` in errors."""

import json
import pickle

from kobjectives.data.corpus_tasks import split_examples
from kobjectives.data.located import Located
from kobjectives.data.located import LocatedConversation
from kobjectives.data.located import example_name

TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_located_values_behave_as_their_plain_values():
    pair = Located(("p", "a", "b"), "prefs.jsonl:2")
    conversation = LocatedConversation(TURNS, "sft.jsonl:3")
    assert pair == ("p", "a", "b") and conversation == TURNS
    assert json.dumps(pair) == json.dumps(("p", "a", "b"))
    assert json.dumps(conversation) == json.dumps(TURNS)
    assert repr(conversation) == repr(TURNS)
    for value in (pair, conversation):  # pickled whole, `where` included
        copy = pickle.loads(pickle.dumps(value))
        assert copy == value and copy.where == value.where and type(copy) is type(value)


def test_a_split_puts_a_located_example_where_its_plain_value_goes():
    plain = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
             for i in range(20)]
    located = [LocatedConversation(turns, f"sft.jsonl:{i + 1}") for i, turns in enumerate(plain)]
    assert split_examples(located, 0.25) == split_examples(plain, 0.25)
    train, validation = split_examples(located, 0.25)
    assert sorted(int(c.where.rsplit(":", 1)[1]) for c in train + validation) == list(
        range(1, 21))


def test_example_name_prefers_where_to_the_index():
    assert example_name(LocatedConversation(TURNS, "sft.jsonl:3"), 7, "examples") == "sft.jsonl:3"
    assert example_name(Located(("p", "a", "b"), "prefs.jsonl:2"), 7, "pairs") == "prefs.jsonl:2"
    assert example_name(TURNS, 7, "examples") == "examples[7]"
    assert example_name(LocatedConversation(TURNS), 7, "examples") == "examples[7]"  # no where
