"""Tests for kobjectives.data.corpus_tasks (and the docstring records of
kobjectives.data.corpus that they are built from)."""

import collections
import hashlib
import inspect
import json
import re
import sys
import textwrap

import keras_hub
import pytest

from kobjectives import data as kdata
from kobjectives.data import corpus as corpus_module
from kobjectives.data import corpus_tasks
from kobjectives.data.chat import add_chat_tokens
from kobjectives.data.corpus_tasks import ENTITY_TAGS
from kobjectives.data.corpus_tasks import entity_tagging_task
from kobjectives.data.corpus_tasks import module_classification_task
from kobjectives.data.corpus_tasks import prompt_completion_task
from kobjectives.data.corpus_tasks import split_examples
from kobjectives.data.labelled import tag_set
from kobjectives.data.labelled import validate_tags
from kobjectives.data.sft import tokenize_sft_examples

# ---------------------------------------------------------------------------
# A tiny synthetic standard library.
# ---------------------------------------------------------------------------

TINY_FILES = {
    "asyncio/events.py": '''
        """Event loop for asyncio, imported with: from asyncio import events.

        Handlers see the os.path module and sys.argv; errors raise KeyError.
        """


        class Loop:
            """Shared docstring that two packages hold alike."""

            def run(self):
                """Run the loop until stop() is called; the time module is not used."""
        ''',
    "asyncio/tests/test_events.py": '''
        """A test docstring, skipped like every test suite of the library."""
        ''',
    "bad-name/tool.py": '''
        """A tool in a directory whose name is not an identifier."""
        ''',
    "json/__init__.py": '''
        """JSON encoder and decoder.

        The json module serializes objects; see json.decoder and JSON.org.
        """


        def dumps(obj):
            """Serialize obj to a JSON formatted str.

            Raise TypeError if obj cannot be serialized. Also see the string module.
            """


        def loads(s):
            """Shared docstring that two packages hold alike."""


        if True:
            def load(fp):
                """Deserialize fp, a file, to a Python object."""
        else:
            def load(fp):
                """Deserialize fp to a Python object, another way."""
        ''',
    "json/decoder.py": '''
        """Implementation of the decoder used by json.loads."""


        class JSONDecoder:
            """Simple decoder.

            >>> JSONDecoder().decode("1")
            1
            """

            def decode(self, s):
                """Return the Python object of s. Raise ValueError(msg) on bad input."""

                def inner():
                    """A nested function that no one can look up by name."""
        ''',
    "this.py": '''
        """The Zen of Python, by this module and nobody else.

        Exception objects are raised by the loop.
        """


        def zen():
            """Print the zen and then <|end|> the talk."""
        ''',
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib")
    for path, source in TINY_FILES.items():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return root


def test_stdlib_docstrings_records_files_names_and_kinds(tiny_root):
    records = corpus_module.stdlib_docstrings(tiny_root)
    assert [(r.path, r.module, r.name, r.kind) for r in records] == [
        ("asyncio/events.py", "asyncio.events", "asyncio.events", "module"),
        ("asyncio/events.py", "asyncio.events", "asyncio.events.Loop", "class"),
        ("asyncio/events.py", "asyncio.events", "asyncio.events.Loop.run", "method"),
        ("bad-name/tool.py", None, None, "module"),
        ("json/__init__.py", "json", "json", "module"),
        ("json/__init__.py", "json", "json.dumps", "function"),
        ("json/__init__.py", "json", "json.loads", "function"),
        ("json/__init__.py", "json", "json.load", "function"),
        ("json/__init__.py", "json", "json.load", "function"),
        ("json/decoder.py", "json.decoder", "json.decoder", "module"),
        ("json/decoder.py", "json.decoder", "json.decoder.JSONDecoder", "class"),
        ("json/decoder.py", "json.decoder", "json.decoder.JSONDecoder.decode", "method"),
        ("json/decoder.py", "json.decoder",
         "json.decoder.JSONDecoder.decode.<locals>.inner", "function"),
        ("this.py", "this", "this", "module"),
        ("this.py", "this", "this.zen", "function"),
    ]
    assert records[1].text == "Shared docstring that two packages hold alike."
    assert records[4].text == (
        "JSON encoder and decoder.\n\n"
        "The json module serializes objects; see json.decoder and JSON.org."
    )
    # Cached per root, handed out as copies; a missing root has none.
    assert corpus_module.stdlib_docstrings(str(tiny_root)) == records
    assert corpus_module.stdlib_docstrings(tiny_root / "missing") == []


# ---------------------------------------------------------------------------
# The embedded corpus is unchanged by the refactor.
# ---------------------------------------------------------------------------

# Recorded on CPython 3.11.7 before `stdlib_docstrings` was factored out.
RECORDED_LENGTH = 7070
RECORDED_SHA256 = "8f140d05ec12762acf8824127ba918890c571d2e103bc95481910b073a3b6e6d"
RECORDED_FIRST_SHA256 = "e00c886b9a49507f329c5ebf9d2317d2d7a2a8823d6e2a6f699d8bfde3a63519"
RECORDED_SECOND_AND_THIRD = [
    "Return first release in which this feature was recognized.\n\n"
    "This is a 5-tuple, of the same form as sys.version_info.",
    "Return release in which this feature will become mandatory.\n\n"
    "This is a 5-tuple, of the same form as sys.version_info, or, if\n"
    "the feature was dropped, or the release date is undetermined, is None.",
]


def test_embedded_corpus_is_unchanged():
    documents = kdata.embedded_corpus()
    assert documents[0].startswith("Record of phased-in incompatible language changes.")
    assert documents[1:3] == RECORDED_SECOND_AND_THIRD
    # The corpus is its records' cleaned, long, unique texts, then the topics.
    texts = list(dict.fromkeys(
        text for text in (inspect.cleandoc(r.text).strip()
                          for r in corpus_module.stdlib_docstrings())
        if len(text) >= kdata.MIN_DOCUMENT_CHARACTERS))
    assert documents[:len(texts)] == texts
    if sys.version_info[:3] != (3, 11, 7):
        pytest.skip("the recorded corpus is CPython 3.11.7's")
    assert len(documents) == RECORDED_LENGTH
    assert hashlib.sha256(documents[0].encode()).hexdigest() == RECORDED_FIRST_SHA256
    digest = hashlib.sha256(json.dumps(documents, ensure_ascii=False).encode())
    assert digest.hexdigest() == RECORDED_SHA256


# ---------------------------------------------------------------------------
# Module classification.
# ---------------------------------------------------------------------------

ASYNCIO_TEXTS = [
    "Event loop for, imported with: from import events.\n\n"
    "Handlers see the os.path module and sys.argv; errors raise KeyError.",
    "Run the loop until stop() is called; the time module is not used.",
]
JSON_TEXTS = [
    "encoder and decoder.\n\nThe module serializes objects; see decoder and org.",
    "Serialize obj to a formatted str.\n\n"
    "Raise TypeError if obj cannot be serialized. Also see the string module.",
    "Deserialize fp, a file, to a Python object.",
    "Deserialize fp to a Python object, another way.",
    "Implementation of the decoder used by loads.",
    'Simple decoder.\n\n>>> JSONDecoder().decode("1")\n1',
    "Return the Python object of s. Raise ValueError(msg) on bad input.",
    "A nested function that no one can look up by name.",
]
THIS_TEXTS = [
    "The Zen of Python, by module and nobody else.\n\n"
    "Exception objects are raised by the loop.",
    "Print the zen and then <|end|> the talk.",
]


def test_module_classification_exact_on_a_tiny_tree(tiny_root):
    texts, labels, names = module_classification_task(num_classes=2, root=tiny_root)
    # `this` ties with `asyncio` (2 texts each) and loses on its name; the
    # text shared by `asyncio` and `json` is refused; `bad-name` has no
    # module; the test suite is skipped.
    assert names == ["asyncio", "json"]
    assert texts == ASYNCIO_TEXTS + JSON_TEXTS
    assert labels == [0, 0] + [1] * 8

    texts, labels, names = module_classification_task(num_classes=3, root=tiny_root)
    assert names == ["asyncio", "json", "this"]
    assert texts == ASYNCIO_TEXTS + JSON_TEXTS + THIS_TEXTS
    assert labels == [0, 0] + [1] * 8 + [2, 2]


def test_module_classification_min_characters_and_max_examples(tiny_root):
    texts, _, _ = module_classification_task(num_classes=2, min_characters=50,
                                             root=tiny_root)
    assert texts == [t for t in ASYNCIO_TEXTS + JSON_TEXTS if len(t) >= 50]
    texts, labels, names = module_classification_task(num_classes=2, max_examples=4,
                                                      root=tiny_root)
    full = list(zip(*module_classification_task(num_classes=2, root=tiny_root)[:2]))
    subset = list(zip(texts, labels))
    assert len(subset) == 4
    # A subsequence of the full task, in its order.
    assert subset == [example for example in full if example in subset]
    assert module_classification_task(num_classes=2, max_examples=4,
                                      root=tiny_root) == (texts, labels, names)


def test_module_name_removal():
    remove = corpus_tasks._without_word
    assert remove("the email package", "email") == "the package"
    assert remove("Email and EMAIL, emails", "email") == "and, emails"
    assert remove("see email.message.Message", "email") == "see message.Message"
    assert remove("an email_address or my.email", "email") == "an email_address or my."
    assert remove("line one\nemail here", "email") == "line one\nhere"
    assert remove("(email)", "email") == "()"


def test_module_classification_errors(tiny_root):
    with pytest.raises(ValueError, match=r"Only 3 labels .*num_classes=4"):
        module_classification_task(num_classes=4, root=tiny_root)
    for kwargs, name in (({"num_classes": 1}, "num_classes"),
                         ({"max_examples": 0}, "max_examples"),
                         ({"min_characters": 2.5}, "min_characters"),
                         ({"num_classes": True}, "num_classes")):
        with pytest.raises(ValueError, match=name):
            module_classification_task(root=tiny_root, **kwargs)


# ---------------------------------------------------------------------------
# Entity tagging.
# ---------------------------------------------------------------------------

TINY_POSITIVES = [
    (["Handlers", "see", "the", "os.path", "module", "and", "sys.argv", ";", "errors",
      "raise", "KeyError", "."],
     ["O", "O", "O", "B-MOD", "O", "O", "O", "O", "O", "O", "B-EXC", "O"]),
    (["Run", "the", "loop", "until", "stop", "(", ")", "is", "called", ";", "the", "time",
      "module", "is", "not", "used", "."],
     ["O"] * 11 + ["B-MOD"] + ["O"] * 5),
    (["The", "json", "module", "serializes", "objects", ";", "see", "json.decoder", "and",
      "JSON.org", "."],
     ["O", "B-MOD", "O", "O", "O", "O", "O", "B-MOD", "O", "O", "O"]),
    (["Raise", "TypeError", "if", "obj", "cannot", "be", "serialized", "."],
     ["O", "B-EXC", "O", "O", "O", "O", "O", "O"]),
    (["Also", "see", "the", "string", "module", "."], ["O", "O", "O", "B-MOD", "O", "O"]),
]
TINY_NEGATIVES = [
    "Shared docstring that two packages hold alike .",
    "A tool in a directory whose name is not an identifier .",
    "JSON encoder and decoder .",
    "Serialize obj to a JSON formatted str .",
    "Deserialize fp , a file , to a Python object .",
    "Deserialize fp to a Python object , another way .",
    "Implementation of the decoder used by json.loads .",
    "Simple decoder .",
    "Return the Python object of s .",
    "A nested function that no one can look up by name .",
    "Print the zen and then < | end | > the talk .",
]


def test_entity_tagging_exact_on_a_tiny_tree(tiny_root):
    # Refused: `asyncio` and `this` outside a module context, `Exception`
    # first in a sentence, `ValueError(msg`. The doctest paragraph and the
    # repeated sentence are skipped. round(0.05 * 11) = 1 negative is kept.
    sentences = entity_tagging_task(root=tiny_root)
    positives = [s for s in sentences if set(s[1]) != {"O"}]
    negatives = [" ".join(s[0]) for s in sentences if set(s[1]) == {"O"}]
    assert positives == TINY_POSITIVES
    assert len(negatives) == 1 and negatives[0] in TINY_NEGATIVES

    everything = entity_tagging_task(negative_fraction=1.0, root=tiny_root)
    assert [" ".join(words) for words, _ in everything] == [
        " ".join(TINY_POSITIVES[0][0]), TINY_NEGATIVES[0], " ".join(TINY_POSITIVES[1][0]),
        TINY_NEGATIVES[1], TINY_NEGATIVES[2], " ".join(TINY_POSITIVES[2][0]),
        TINY_NEGATIVES[3], " ".join(TINY_POSITIVES[3][0]), " ".join(TINY_POSITIVES[4][0]),
        *TINY_NEGATIVES[4:],
    ]
    assert entity_tagging_task(negative_fraction=0.0, root=tiny_root) == TINY_POSITIVES
    half = entity_tagging_task(negative_fraction=0.5, root=tiny_root)
    assert len(half) == 5 + round(0.5 * 11)
    assert half == [s for s in everything if s in half]  # A subsequence.
    # Sentences of more than `max_words` words are dropped.
    short = entity_tagging_task(negative_fraction=0.0, max_words=11, root=tiny_root)
    assert short == [s for s in TINY_POSITIVES if len(s[0]) <= 11]
    assert tag_set(everything) == list(ENTITY_TAGS)
    validate_tags(everything, ENTITY_TAGS)


def test_split_words():
    assert corpus_tasks._split_words("(see ``os.path``), __init__ and f(x, y)...") == [
        "(", "see", "`", "`", "os.path", "`", "`", ")", ",", "__init__", "and", "f(x", ",",
        "y", ")", ".", ".", ".",
    ]


def test_entity_tagging_errors(tiny_root, tmp_path):
    for kwargs, name in (({"negative_fraction": 1.5}, "negative_fraction"),
                         ({"negative_fraction": True}, "negative_fraction"),
                         ({"max_words": 0}, "max_words"),
                         ({"max_sentences": -1}, "max_sentences")):
        with pytest.raises(ValueError, match=name):
            entity_tagging_task(root=tiny_root, **kwargs)
    (tmp_path / "plain.py").write_text('"""Nothing to tag in this sentence here."""\n')
    with pytest.raises(ValueError, match="nothing to tag"):
        entity_tagging_task(root=tmp_path)


# ---------------------------------------------------------------------------
# Prompt / completion pairs.
# ---------------------------------------------------------------------------


def _pair(name, completion):
    return {"prompt": f"What does {name} do?", "completion": completion}


def test_prompt_completion_exact_on_a_tiny_tree(tiny_root):
    # Refused: `json.load` (two different docstrings), the nested function,
    # the marker `<|end|>`, `bad-name` (no module); "Simple decoder." is
    # too short.
    assert prompt_completion_task(root=tiny_root) == [
        _pair("asyncio.events",
              "Event loop for asyncio, imported with: from asyncio import events."),
        _pair("asyncio.events.Loop", "Shared docstring that two packages hold alike."),
        _pair("asyncio.events.Loop.run",
              "Run the loop until stop() is called; the time module is not used."),
        _pair("json", "JSON encoder and decoder."),
        _pair("json.dumps", "Serialize obj to a JSON formatted str."),
        _pair("json.loads", "Shared docstring that two packages hold alike."),
        _pair("json.decoder", "Implementation of the decoder used by json.loads."),
        _pair("json.decoder.JSONDecoder.decode",
              "Return the Python object of s. Raise ValueError(msg) on bad input."),
        _pair("this", "The Zen of Python, by this module and nobody else."),
    ]
    # Longer first paragraphs are cut to whole sentences, or refused.
    assert prompt_completion_task(max_characters=40, root=tiny_root) == [
        _pair("json", "JSON encoder and decoder."),
        _pair("json.dumps", "Serialize obj to a JSON formatted str."),
        _pair("json.decoder.JSONDecoder.decode", "Return the Python object of s."),
    ]
    assert prompt_completion_task(max_characters=40, min_characters=30,
                                  root=tiny_root) == [
        _pair("json.dumps", "Serialize obj to a JSON formatted str."),
        _pair("json.decoder.JSONDecoder.decode", "Return the Python object of s."),
    ]
    subset = prompt_completion_task(max_examples=3, root=tiny_root)
    full = prompt_completion_task(root=tiny_root)
    assert len(subset) == 3 and subset == [e for e in full if e in subset]


def test_prompt_completion_feeds_tokenize_sft_examples(tiny_root):
    examples = prompt_completion_task(max_characters=40, root=tiny_root)[:2]
    text = " ".join(e["prompt"] + " " + e["completion"] for e in examples).lower()
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocabulary = add_chat_tokens(["[PAD]", "[UNK]"] + words)
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary, lowercase=True)
    out = tokenize_sft_examples(examples, tokenizer)
    assert [vocabulary[i] for i in out.token_ids[0]] == [
        "what", "does", "json", "do", "?", "json", "encoder", "and", "decoder", ".", "<|end|>"]
    assert out.completion_mask[0].tolist() == [0] * 5 + [1] * 6
    assert out.completion_mask[1].tolist() == [0] * 7 + [1] * 9


def test_prompt_completion_errors(tiny_root):
    with pytest.raises(ValueError, match="min_characters"):
        prompt_completion_task(max_characters=10, min_characters=20, root=tiny_root)
    with pytest.raises(ValueError, match="max_examples"):
        prompt_completion_task(max_examples=0, root=tiny_root)
    with pytest.raises(ValueError, match="No docstring"):
        prompt_completion_task(min_characters=200, root=tiny_root)


# ---------------------------------------------------------------------------
# split_examples.
# ---------------------------------------------------------------------------


def test_split_examples_matches_train_validation_split():
    documents = [f"document {i}" for i in range(50)]
    assert split_examples(documents, 0.2, seed=3) == kdata.train_validation_split(
        documents, 0.2, seed=3)
    pairs = [(document, i % 3) for i, document in enumerate(documents)]
    train, validation = split_examples(pairs, 0.2, seed=3, key=lambda pair: pair[0])
    expected_validation = kdata.train_validation_split(documents, 0.2, seed=3)[1]
    assert [text for text, _ in validation] == expected_validation
    assert sorted(train + validation) == sorted(pairs)


def test_split_examples_duplicate_keys_and_errors():
    examples = [("same", 0), ("same", 1), ("other", 2), ("more", 3)]
    train, validation = split_examples(examples, 0.5, key=lambda e: e[0])
    assert sorted(train + validation) == sorted(examples)
    assert len(validation) == 2
    # Of equal keys, the earlier example goes to validation first.
    if ("same", 1) in validation:
        assert ("same", 0) in validation
    with pytest.raises(TypeError, match=r"examples\[0\]"):
        split_examples(examples, 0.5, key=lambda e: e[1])
    with pytest.raises(ValueError, match="validation_fraction"):
        split_examples(examples, 1.0)


# ---------------------------------------------------------------------------
# The real corpus (one parse, shared by the tests below).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_tasks():
    return {
        "classification": module_classification_task(),
        "tagging": entity_tagging_task(),
        "sft": prompt_completion_task(),
    }


def test_real_module_classification(real_tasks):
    texts, labels, names = real_tasks["classification"]
    counts = collections.Counter(labels)
    assert len(names) == 8 and names == sorted(names)
    assert {"asyncio", "email", "idlelib", "tkinter"} <= set(names)
    assert sorted(counts) == list(range(8)) and min(counts.values()) >= 100
    assert 1500 <= len(texts) <= 5000
    majority = max(counts.values()) / len(texts)
    assert 0.15 <= majority <= 0.35
    assert len(set(texts)) == len(texts)
    assert min(len(text) for text in texts) >= kdata.MIN_DOCUMENT_CHARACTERS
    for text, label in zip(texts, labels):
        # The label never appears as a word of its text.
        assert not re.search(rf"(?<![A-Za-z0-9_]){names[label]}(?![A-Za-z0-9_])", text,
                             re.IGNORECASE)
    assert module_classification_task() == real_tasks["classification"]


def test_real_entity_tagging(real_tasks):
    sentences = real_tasks["tagging"]
    validate_tags(sentences, ENTITY_TAGS)
    assert tag_set(sentences) == list(ENTITY_TAGS)
    counts = collections.Counter(tag for _, tags in sentences for tag in tags)
    assert counts["B-EXC"] >= 150 and counts["B-MOD"] >= 80
    assert counts["I-EXC"] == counts["I-MOD"] == 0
    positives = sum(1 for _, tags in sentences if set(tags) != {"O"})
    assert 250 <= positives <= 800
    assert 0.3 * positives <= len(sentences) - positives <= 4 * positives
    assert max(len(words) for words, _ in sentences) <= 60
    assert len({tuple(words) for words, _ in sentences}) == len(sentences)
    exceptions = set(corpus_tasks.builtin_exception_names())
    for words, tags in sentences:
        for word, tag in zip(words, tags):
            assert (tag == "B-EXC") == (word in exceptions)
            if tag == "B-MOD":
                assert word.split(".")[0] in sys.stdlib_module_names
    assert entity_tagging_task() == sentences
    subset = entity_tagging_task(max_sentences=100)
    assert len(subset) == 100 and subset == [s for s in sentences if s in subset]


def test_real_prompt_completion(real_tasks):
    examples = real_tasks["sft"]
    assert 6000 <= len(examples) <= 10000
    prompts = [example["prompt"] for example in examples]
    assert len(set(prompts)) == len(prompts)
    assert _pair("json.dumps", examples[prompts.index("What does json.dumps do?")][
        "completion"]) == _pair(
        "json.dumps", "Serialize ``obj`` to a JSON formatted ``str``.")
    for example in examples:
        assert set(example) == {"prompt", "completion"}
        assert 20 <= len(example["completion"]) <= 300
        assert example["completion"] == " ".join(example["completion"].split())
    assert prompt_completion_task() == examples
