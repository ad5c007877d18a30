"""Tests for kobjectives.data text sources and the train/validation split."""

import inspect
import json
import math
import pathlib
import subprocess
import sys
import sysconfig

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kobjectives import data as kdata
from kobjectives.data import corpus as corpus_module

# ---------------------------------------------------------------------------
# Embedded corpus.
# ---------------------------------------------------------------------------


def test_embedded_corpus_is_large_and_made_of_strings():
    documents = kdata.embedded_corpus()
    assert len(documents) > 1000
    assert all(isinstance(document, str) for document in documents)
    assert sum(len(document) for document in documents) > 500_000


def test_embedded_corpus_contains_stdlib_docstrings_and_pydoc_topics():
    from pydoc_data.topics import topics

    documents = kdata.embedded_corpus()
    # json's module docstring.
    assert any(
        document.startswith("JSON (JavaScript Object Notation)")
        for document in documents
    )
    # A reference topic (the text of `help("assert")`), cleaned.
    assert any(
        document.startswith('The "assert" statement') for document in documents
    )
    assert topics["assert"].strip().startswith('The "assert" statement')


def test_embedded_corpus_documents_are_clean_long_and_unique():
    documents = kdata.embedded_corpus()
    assert len(set(documents)) == len(documents)
    assert min(len(document) for document in documents) >= 40
    assert all(document == document.strip() for document in documents)
    # Cleaned: no docstring keeps the uniform indentation of its source.
    assert not any(document.startswith(" ") for document in documents)


def test_embedded_corpus_order_docstrings_then_sorted_topics():
    from pydoc_data.topics import topics

    documents = kdata.embedded_corpus()
    # The first document is the module docstring of the first sorted file
    # (`__future__.py`).
    assert documents[0].startswith("Record of phased-in incompatible")
    # Topics come last, sorted by key.
    last_topic = inspect.cleandoc(topics[max(topics)]).strip()
    assert documents[-1] == last_topic
    # Source order within a file: json's module docstring precedes the
    # docstring of json.dumps.
    module_index = next(
        i for i, d in enumerate(documents) if d.startswith("JSON (JavaScript")
    )
    dumps_index = next(
        i
        for i, d in enumerate(documents)
        if d.startswith("Serialize ``obj`` to a JSON formatted ``str``.")
    )
    assert module_index < dumps_index


def test_embedded_corpus_parses_sorted_non_test_sources():
    files = corpus_module._stdlib_source_files(sysconfig.get_paths()["stdlib"])
    assert files == sorted(files, key=lambda path: pathlib.PurePath(path).parts)
    assert "json/__init__.py" in [pathlib.PurePath(f).as_posix() for f in files]
    for path in files:
        parts = set(pathlib.PurePath(path).parts)
        assert not parts & {"test", "tests", "idle_test", "site-packages"}


def test_embedded_corpus_is_deterministic_cached_and_imports_nothing():
    first = kdata.embedded_corpus()
    # The cache hands out copies: mutating one does not change the next.
    first_copy = list(first)
    first.append("mutated")
    assert kdata.embedded_corpus() == first_copy

    corpus_module._embedded_corpus.cache_clear()
    modules_before = set(sys.modules)
    rebuilt = kdata.embedded_corpus()
    new_modules = set(sys.modules) - modules_before
    assert rebuilt == first_copy
    # Built by parsing sources, not importing them (no `antigravity`,
    # `this`, `tkinter` side effects); only the pydoc topics data module.
    assert new_modules <= {"pydoc_data", "pydoc_data.topics"}
    assert "antigravity" not in sys.modules


def test_embedded_corpus_max_documents_is_a_prefix():
    documents = kdata.embedded_corpus()
    assert kdata.embedded_corpus(max_documents=5) == documents[:5]
    assert kdata.embedded_corpus(max_documents=10**9) == documents


def test_embedded_corpus_rejects_bad_max_documents():
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="max_documents"):
            kdata.embedded_corpus(max_documents=bad)


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------

TEXT = "first line\n\n   \n  second line  \nthird line\n\t\n\n\nfourth\n"


def _write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_read_text_files_lines_skips_blank_and_whitespace_lines(tmp_path):
    path = _write(tmp_path / "a.txt", TEXT)
    assert kdata.read_text_files(path) == [
        "first line",
        "second line",
        "third line",
        "fourth",
    ]
    assert kdata.read_text_files(str(path), format="lines") == (
        kdata.read_text_files(path)
    )


def test_read_text_files_paragraphs(tmp_path):
    path = _write(tmp_path / "a.txt", TEXT)
    assert kdata.read_text_files(path, format="paragraphs") == [
        "first line",
        "second line  \nthird line",
        "fourth",
    ]


def test_read_text_files_crlf_and_byte_order_mark(tmp_path):
    path = _write(
        tmp_path / "crlf.txt",
        b"\xef\xbb\xbfone\r\ntwo\r\n\r\nthree\r\n",
        mode="wb",
    )
    assert kdata.read_text_files(path) == ["one", "two", "three"]
    assert kdata.read_text_files(path, format="paragraphs") == [
        "one\ntwo",
        "three",
    ]


def test_read_text_files_utf8(tmp_path):
    path = _write(tmp_path / "u.txt", "naïve café\n日本語の文\n")
    assert kdata.read_text_files(path) == ["naïve café", "日本語の文"]


def test_read_text_files_globs_lists_and_deduplication(tmp_path):
    _write(tmp_path / "b.txt", "bee\n")
    _write(tmp_path / "a.txt", "ay\n")
    _write(tmp_path / "c.md", "sea\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "d.txt", "dee\n")
    # Glob matches are sorted.
    assert kdata.read_text_files(str(tmp_path / "*.txt")) == ["ay", "bee"]
    # Recursive glob.
    assert kdata.read_text_files(str(tmp_path / "**" / "*.txt")) == [
        "ay",
        "bee",
        "dee",
    ]
    # A list keeps its order; a file named twice is read once.
    assert kdata.read_text_files(
        [tmp_path / "c.md", str(tmp_path / "*.txt"), tmp_path / "a.txt"]
    ) == ["sea", "ay", "bee"]


def test_read_text_files_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        kdata.read_text_files(missing)
    with pytest.raises(FileNotFoundError, match=r"nothing_\*\.txt"):
        kdata.read_text_files(str(tmp_path / "nothing_*.txt"))
    _write(tmp_path / "ok.txt", "fine\n")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        kdata.read_text_files([tmp_path / "ok.txt", missing])


def test_read_text_files_empty_files_raise(tmp_path):
    empty = _write(tmp_path / "empty.txt", "")
    blank = _write(tmp_path / "blank.txt", "  \n\t\n\n")
    for paths in (empty, [empty, blank]):
        with pytest.raises(ValueError, match="empty"):
            kdata.read_text_files(paths)
    with pytest.raises(ValueError, match="empty"):
        kdata.read_text_files(blank, format="paragraphs")


def test_read_text_files_other_errors(tmp_path):
    path = _write(tmp_path / "a.txt", "x\n")
    with pytest.raises(ValueError, match="format"):
        kdata.read_text_files(path, format="sentences")
    with pytest.raises(IsADirectoryError):
        kdata.read_text_files(tmp_path)
    latin1 = _write(tmp_path / "latin1.txt", "café\n".encode("latin-1"), "wb")
    with pytest.raises(ValueError, match="UTF-8"):
        kdata.read_text_files(latin1)
    with pytest.raises(ValueError, match="empty list"):
        kdata.read_text_files([])


def test_text_line_dataset_matches_read_text_files(tmp_path):
    path = _write(tmp_path / "a.txt", TEXT)
    dataset = kdata.text_line_dataset(str(path))
    assert dataset.element_spec == tf.TensorSpec([], tf.string)
    streamed = [line.decode() for line in dataset.as_numpy_iterator()]
    assert streamed == kdata.read_text_files(path)
    with pytest.raises(FileNotFoundError):
        kdata.text_line_dataset(str(tmp_path / "missing_*.txt"))


def test_read_wikitext2_valid(shared_data):
    path = shared_data / "wikitext2" / "valid.txt"
    documents = kdata.read_text_files(path)
    with open(path, encoding="utf-8") as file:
        non_blank = [line.strip() for line in file if line.strip()]
    assert documents == non_blank
    assert len(documents) > 1000
    assert "= Homarus gammarus =" in documents
    paragraphs = kdata.read_text_files(path, format="paragraphs")
    # WikiText separates every line by a blank line: same documents.
    assert 0 < len(paragraphs) <= len(documents)


# ---------------------------------------------------------------------------
# tfds (a tiny builder prepared locally: nothing is downloaded).
# ---------------------------------------------------------------------------

TFDS_NAME = "kobjectives_tiny_texts"
TINY_TEXTS = [f"document number {i}: naïve text" for i in range(12)] + ["  "]


class KobjectivesTinyTexts(tfds.core.GeneratorBasedBuilder):
    """A tiny text dataset generated in the test, so tfds downloads nothing."""

    # tfds derives a builder's code path from a dotted `__module__` through
    # `importlib_resources`, which tfds 4.9.10 does not install; a one-part
    # module name takes its plain-file fallback instead.
    __module__ = "test_corpus"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tf.int64}
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {
            "train": self._generate_examples(TINY_TEXTS),
            "test": self._generate_examples(["held out text"]),
        }

    def _generate_examples(self, texts):
        for index, text in enumerate(texts):
            yield index, {"text": text, "label": index}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.builder(TFDS_NAME, data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def test_tfds_texts_reads_a_prepared_dataset(tfds_dir):
    documents = kdata.tfds_texts(TFDS_NAME, data_dir=tfds_dir)
    # All non-blank texts, each once, in a deterministic order.
    assert sorted(documents) == sorted(t for t in TINY_TEXTS if t.strip())
    assert kdata.tfds_texts(TFDS_NAME, data_dir=str(tfds_dir)) == documents
    assert kdata.tfds_texts(TFDS_NAME, tfds_dir, split="test") == [
        "held out text"
    ]
    assert kdata.tfds_texts(TFDS_NAME, tfds_dir, max_documents=3) == (
        documents[:3]
    )


def test_tfds_texts_errors(tfds_dir, tmp_path):
    with pytest.raises(ValueError, match="text_key"):
        kdata.tfds_texts(TFDS_NAME, tfds_dir, text_key="body")
    with pytest.raises(ValueError, match="not a scalar string"):
        kdata.tfds_texts(TFDS_NAME, tfds_dir, text_key="label")
    with pytest.raises(ValueError, match="data_dir"):
        kdata.tfds_texts(TFDS_NAME, data_dir=None)


def test_tfds_texts_reads_without_the_builder_code(tfds_dir):
    """A user copies a prepared `data_dir` to a machine that lacks the
    builder's code: tfds reads it from its files alone."""
    script = (
        "import json, sys\n"
        "from kobjectives.data import tfds_texts\n"
        f"print(json.dumps(tfds_texts({TFDS_NAME!r}, {str(tfds_dir)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert json.loads(last_line) == kdata.tfds_texts(TFDS_NAME, tfds_dir)


def test_tfds_texts_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="Unknown tfds dataset"):
        kdata.tfds_texts("kobjectives_no_such_dataset", data_dir=tmp_path)


def test_tfds_texts_unprepared_dataset_says_how_to_prepare(tmp_path):
    empty_dir = tmp_path / "empty_tfds"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        kdata.tfds_texts(TFDS_NAME, data_dir=empty_dir)
    message = str(error.value)
    assert "not prepared" in message
    assert f"tfds build {TFDS_NAME} --data_dir {empty_dir}" in message
    # Nothing was downloaded or generated.
    assert not any(empty_dir.rglob("*.tfrecord*"))


# ---------------------------------------------------------------------------
# load_texts.
# ---------------------------------------------------------------------------


def test_load_texts_dispatches(tmp_path, tfds_dir):
    path = _write(tmp_path / "a.txt", TEXT)
    assert kdata.load_texts(data=path) == kdata.read_text_files(path)
    assert kdata.load_texts(data=str(path), format="paragraphs") == (
        kdata.read_text_files(path, format="paragraphs")
    )
    assert kdata.load_texts(data=path, max_documents=2) == [
        "first line",
        "second line",
    ]
    assert kdata.load_texts(tfds=TFDS_NAME, data_dir=tfds_dir) == (
        kdata.tfds_texts(TFDS_NAME, tfds_dir)
    )
    assert kdata.load_texts() == kdata.embedded_corpus()
    assert kdata.load_texts(max_documents=7) == kdata.embedded_corpus(7)


def test_load_texts_rejects_conflicting_sources(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        kdata.load_texts(data="x.txt", tfds="imdb_reviews", data_dir=tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        kdata.load_texts(data_dir=tmp_path)


# ---------------------------------------------------------------------------
# train_validation_split.
# ---------------------------------------------------------------------------

DOCUMENTS = [f"document {i} about topic {i % 7}" for i in range(1000)]


def test_split_is_disjoint_covering_and_ordered():
    train, validation = kdata.train_validation_split(DOCUMENTS, 0.1, seed=3)
    assert sorted(train + validation) == sorted(DOCUMENTS)
    assert not set(train) & set(validation)
    # Each side keeps the original relative order.
    position = {document: i for i, document in enumerate(DOCUMENTS)}
    assert [position[d] for d in train] == sorted(position[d] for d in train)
    assert [position[d] for d in validation] == sorted(
        position[d] for d in validation
    )


def test_split_fraction():
    for fraction in (0.01, 0.05, 0.1, 0.5, 0.9):
        train, validation = kdata.train_validation_split(DOCUMENTS, fraction)
        assert len(validation) == round(fraction * len(DOCUMENTS))
        assert len(train) + len(validation) == len(DOCUMENTS)


def test_split_is_deterministic_and_seeded():
    first = kdata.train_validation_split(DOCUMENTS, 0.1, seed=0)
    assert kdata.train_validation_split(DOCUMENTS, 0.1, seed=0) == first
    other_seed = kdata.train_validation_split(DOCUMENTS, 0.1, seed=1)
    assert other_seed[1] != first[1]
    # Keyed by content: reordering the corpus keeps each document's side.
    reordered = kdata.train_validation_split(DOCUMENTS[::-1], 0.1, seed=0)
    assert set(reordered[1]) == set(first[1])


def test_split_is_identical_across_processes():
    """Python's `hash` is salted per process; the split must not depend on
    it. Run the split in fresh interpreters with different hash seeds."""
    path = str(pathlib.Path(corpus_module.__file__).with_name("split.py"))
    # Load split.py alone (no TensorFlow import) to keep this test fast.
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('_split', {path!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "documents = json.loads(sys.stdin.read())\n"
        "print(json.dumps(module.train_validation_split(documents, 0.2, 5)))\n"
    )
    expected = [list(side) for side in kdata.train_validation_split(
        DOCUMENTS[:200], 0.2, 5
    )]
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(DOCUMENTS[:200]),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
        )
        assert json.loads(result.stdout) == expected


def test_split_two_documents_and_tiny_fractions():
    train, validation = kdata.train_validation_split(["a", "b"], 0.001)
    assert len(train) == 1 and len(validation) == 1
    train, validation = kdata.train_validation_split(["a", "b", "c"], 0.999)
    assert len(train) == 1 and len(validation) == 2
    # Duplicates are fine; each copy is assigned once.
    train, validation = kdata.train_validation_split(["same"] * 4, 0.5)
    assert train == ["same", "same"] and validation == ["same", "same"]


def test_split_rejects_bad_fraction():
    bad_fractions = (0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.1")
    for fraction in bad_fractions:
        with pytest.raises(ValueError, match="validation_fraction"):
            kdata.train_validation_split(DOCUMENTS, fraction)


def test_split_rejects_bad_documents():
    with pytest.raises(ValueError, match="at least 2"):
        kdata.train_validation_split(["only one"], 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        kdata.train_validation_split([], 0.5)
    with pytest.raises(TypeError, match="single string"):
        kdata.train_validation_split("a string", 0.5)
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        kdata.train_validation_split(["a", 2], 0.5)
    with pytest.raises(TypeError, match="seed"):
        kdata.train_validation_split(["a", "b"], 0.5, seed=1.5)
