"""Text sources: the embedded corpus, plain-text files and tfds datasets.

Every source returns a plain Python `list[str]`, one entry per document, in a
deterministic order. That is the right shape for the corpora this project
trains on (up to a few hundred MB): tokenizer training and
`train_validation_split` need the whole corpus anyway, and the preprocessing
pipelines turn the list into a `tf.data.Dataset` with
`tf.data.Dataset.from_tensor_slices`. For line-per-document files too large
for memory, `text_line_dataset` streams them as a `tf.data.Dataset` instead.

No source ever touches the network: files are local, tfds datasets must be
prepared beforehand in a local `data_dir`, and the embedded corpus is read
from the running Python's own standard library sources.
"""

import ast
import collections
import functools
import gc
import glob
import inspect
import os
import sysconfig
import warnings

# Directory names under the standard library whose sources are not library
# documentation: installed third-party packages, test suites and their data
# (`test`, `tests`, `idlelib/idle_test`, `lib2to3/tests/data`) and caches.
_SKIPPED_STDLIB_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
    }
)
_DOCUMENTED_NODES = (
    ast.Module,
    ast.ClassDef,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
)
# Nodes whose bodies may hold definitions; simple statements and expressions
# cannot contain docstring-bearing definitions, so they are not visited.
_CONTAINER_NODES = _DOCUMENTED_NODES[1:] + (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Try,
    getattr(ast, "TryStar", ast.Try),
    ast.With,
    ast.AsyncWith,
    ast.Match,
    ast.excepthandler,
    ast.match_case,
)

MIN_DOCUMENT_CHARACTERS = 40
"""Docstrings and topics shorter than this (after cleaning) are dropped."""

TEXT_FORMATS = ("lines", "paragraphs")


# ---------------------------------------------------------------------------
# The embedded corpus.
# ---------------------------------------------------------------------------


def _stdlib_source_files(root):
    """Sorted relative paths of the `.py` files of the standard library."""
    files = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [
            name for name in subdirectories if name not in _SKIPPED_STDLIB_DIRS
        ]
        for filename in filenames:
            if filename.endswith(".py"):
                path = os.path.join(directory, filename)
                files.append(os.path.relpath(path, root))
    # Sort on the components so the order does not depend on the separator.
    return sorted(files, key=lambda path: path.split(os.sep))


def _docstrings_in_source_order(tree):
    """Yields `(qualname, kind, docstring)` for a module, its classes and
    functions.

    The traversal is depth-first in source order: the module docstring, then
    each definition followed by the definitions nested in it. `qualname` is
    what Python's `__qualname__` would be (`""` for the module itself,
    `"Class.method"`, `"function.<locals>.inner"`); `kind` is `"module"`,
    `"class"`, `"function"` or `"method"` (a function defined in a class
    body).
    """
    # Each entry: a node, the prefix of the qualified names defined in it,
    # and whether that scope is a class body.
    stack = [(tree, "", False)]
    while stack:
        node, prefix, in_class = stack.pop()
        if isinstance(node, _DOCUMENTED_NODES):
            if isinstance(node, ast.Module):
                qualname, kind = "", "module"
                prefix, in_class = "", False
            else:
                qualname = prefix + node.name
                if isinstance(node, ast.ClassDef):
                    kind = "class"
                    prefix, in_class = qualname + ".", True
                else:
                    kind = "method" if in_class else "function"
                    prefix, in_class = qualname + ".<locals>.", False
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                yield qualname, kind, docstring
        children = [
            child
            for child in ast.iter_child_nodes(node)
            if isinstance(child, _CONTAINER_NODES)
        ]
        stack.extend((child, prefix, in_class) for child in reversed(children))


def _parse_docstrings(path):
    """The `(qualname, kind, docstring)` of one source file, or [] if it
    cannot be parsed."""
    try:
        with open(path, "rb") as file:
            source = file.read()
        tree = ast.parse(source, filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeError, RecursionError):
        # Unreadable files and files written for another Python version
        # (e.g. lib2to3 fixtures) are not documentation.
        return []
    return list(_docstrings_in_source_order(tree))


class Docstring(collections.namedtuple(
        "Docstring", ["path", "module", "name", "kind", "text"])):
    """One docstring of the standard library sources, with where it is from.

    Attributes:
        path: str, the source file relative to the library root, with `/`
            separators (`"json/__init__.py"`).
        module: str or `None`, the dotted module name of that file
            (`"json"`, `"email.mime.text"`); `None` when the path is not an
            importable name (a directory or file name that is not a Python
            identifier, e.g. `config-3.11-x86_64-linux-gnu/`).
        name: str or `None`, the qualified name of the documented object:
            the module name, followed by its `__qualname__` for a class or
            function (`"json.JSONDecoder.decode"`, nested functions as
            `"f.<locals>.g"`); `None` when `module` is.
        kind: `"module"`, `"class"`, `"function"` or `"method"` (a function
            defined in a class body).
        text: str, the docstring as `ast.get_docstring(clean=True)` gives it.

    Example:

    >>> record = Docstring("json/__init__.py", "json", "json.dumps", "function",
    ...                    "Serialize obj to a JSON formatted str.")
    >>> record.module, record.name
    ('json', 'json.dumps')
    """

    __slots__ = ()


def _module_name(relative_path):
    """The dotted module name of a relative `.py` path, or `None`."""
    parts = relative_path.split("/")
    parts[-1] = parts[-1][: -len(".py")]
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    return ".".join(parts)


def _default_root():
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=8)
def _docstring_records(root):
    if not root or not os.path.isdir(root):
        return ()
    records = []
    # `ast.parse` allocates millions of short-lived, acyclic nodes; with a
    # large heap (TensorFlow imported) the cyclic collector triggered by
    # those allocations more than doubles the time, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            # Old sources may raise SyntaxWarning (invalid escapes) on newer
            # Pythons; reading their docstrings is not worth a warning.
            warnings.simplefilter("ignore")
            for relative_path in _stdlib_source_files(root):
                path = "/".join(relative_path.split(os.sep))
                module = _module_name(path)
                for qualname, kind, text in _parse_docstrings(
                    os.path.join(root, relative_path)
                ):
                    if module is None:
                        name = None
                    else:
                        name = f"{module}.{qualname}" if qualname else module
                    records.append(Docstring(path, module, name, kind, text))
    finally:
        if gc_was_enabled:
            gc.enable()
    return tuple(records)


def stdlib_docstrings(root=None):
    """Every docstring of the standard library sources, with its file and
    the qualified name of what it documents.

    The docstrings `embedded_corpus` is made of, before its cleaning, length
    filter and de-duplication, in the same order (files sorted by relative
    path, docstrings depth first in source order), with the same files
    skipped. Sources are parsed with `ast`, never imported. Parsed once per
    `root` and cached.

    Args:
        root: optional directory to read instead of the running Python's
            standard library (`sysconfig.get_paths()["stdlib"]`), e.g. a
            small tree of `.py` files in tests.

    Returns:
        A new list of `Docstring(path, module, name, kind, text)` tuples;
        empty when `root` is not a directory.

    Example:

    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "spam.py").write_text(
    ...     "'''Spam.'''\\nclass Can:\\n    def open(self):\\n        '''Open it.'''\\n")
    >>> for record in stdlib_docstrings(root):
    ...     print(record.path, record.name, record.kind, repr(record.text))
    spam.py spam module 'Spam.'
    spam.py spam.Can.open method 'Open it.'
    """
    root = _default_root() if root is None else os.fspath(root)
    return list(_docstring_records(os.path.abspath(root) if root else root))


def _stdlib_docstrings():
    return [record.text for record in stdlib_docstrings()]


def _pydoc_topics():
    try:
        from pydoc_data.topics import topics
    except ImportError:  # Some distributions strip pydoc_data.
        return []
    return [topics[key] for key in sorted(topics)]


@functools.lru_cache(maxsize=1)
def _embedded_corpus():
    documents = []
    seen = set()
    for text in _stdlib_docstrings() + _pydoc_topics():
        text = inspect.cleandoc(text).strip()
        if len(text) < MIN_DOCUMENT_CHARACTERS or text in seen:
            continue
        seen.add(text)
        documents.append(text)
    if not documents:
        raise RuntimeError(
            "The embedded corpus is empty: no standard library sources were "
            f"found under {sysconfig.get_paths()['stdlib']!r} and "
            "`pydoc_data.topics` is unavailable in this Python. Pass your own "
            "text instead (a file via `data=`, or a tfds dataset)."
        )
    return tuple(documents)


def embedded_corpus(max_documents=None):
    """The default demo corpus: the running Python's own documentation.

    Documents are the docstrings (module, class, function and method) of the
    standard library's `.py` sources, followed by the reference topics of
    `pydoc_data.topics` (the text behind `help("if")`, `help("FORMATTING")`,
    ...). Sources are parsed with `ast`, never imported, so no module's
    import-time side effects run. Skipped: `site-packages`, test suites and
    their data (`test/`, `tests/`, `idle_test/`), `__pycache__` and files
    that do not parse. Each text is cleaned with `inspect.cleandoc`; texts
    shorter than `MIN_DOCUMENT_CHARACTERS` (40) and exact duplicates are
    dropped (the first occurrence is kept).

    The order is deterministic: files sorted by their path relative to the
    standard library root, docstrings in source order (depth first) within a
    file, then topics sorted by key. The corpus is built once per process
    (about 1.5 to 2 s on one core) and cached.

    On CPython 3.11.7 this yields 7,070 documents (6,992 docstrings and 78
    topics), 2.2 million characters and 330,000 whitespace-separated words
    (median document 127 characters, longest 62,500). `idlelib` (minus its
    tests) and `lib2to3` (minus its test data) are included. The exact
    numbers depend on the Python version.

    Args:
        max_documents: optional positive int. Return only the first
            `max_documents` documents (a prefix of the full, deterministic
            order, so mostly docstrings of modules early in the alphabet).
            `None` returns them all.

    Returns:
        A new `list[str]`, one document per docstring or topic.

    Raises:
        ValueError: `max_documents` is not a positive int or `None`.
        RuntimeError: neither standard library sources nor `pydoc_data` are
            available in this Python installation.

    Example:

    >>> documents = embedded_corpus()
    >>> len(documents) > 1000
    True
    >>> embedded_corpus(max_documents=3) == documents[:3]
    True
    """
    max_documents = _check_max_documents(max_documents)
    documents = _embedded_corpus()
    if max_documents is not None:
        documents = documents[:max_documents]
    return list(documents)


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def _check_max_documents(max_documents):
    if max_documents is None:
        return None
    if (
        isinstance(max_documents, bool)
        or not isinstance(max_documents, int)
        or max_documents < 1
    ):
        raise ValueError(
            "`max_documents` must be a positive int or None. "
            f"Received: max_documents={max_documents!r}"
        )
    return max_documents


def _as_path_list(paths_or_globs, argument="paths_or_globs"):
    if isinstance(paths_or_globs, (str, bytes, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    try:
        entries = [os.fsdecode(entry) for entry in paths_or_globs]
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a path, a glob pattern, or a list of them. "
            f"Received: {argument}={paths_or_globs!r}"
        ) from None
    if not entries:
        raise ValueError(
            f"`{argument}` is an empty list: pass at least one path or glob."
        )
    return entries


def _resolve_files(paths_or_globs, argument="paths_or_globs"):
    """Expands paths and globs into an ordered, duplicate-free file list."""
    files = []
    for entry in _as_path_list(paths_or_globs, argument):
        expanded = os.path.expanduser(entry)
        if os.path.exists(expanded):
            if os.path.isdir(expanded):
                raise IsADirectoryError(
                    f"{entry!r} is a directory; pass files or a glob such as "
                    f"{os.path.join(entry, '*.txt')!r}."
                )
            matches = [expanded]
        elif glob.has_magic(expanded):
            matches = sorted(
                path
                for path in glob.glob(expanded, recursive=True)
                if os.path.isfile(path)
            )
            if not matches:
                raise FileNotFoundError(
                    f"The glob pattern {entry!r} matched no files."
                )
        else:
            raise FileNotFoundError(f"No such file: {entry!r}.")
        for path in matches:
            if path not in files:
                files.append(path)
    return files


def _split_documents(text, text_format):
    if text_format == "lines":
        pieces = text.split("\n")
    else:
        pieces = []
        current = []
        for line in text.split("\n"):
            if line.strip():
                current.append(line)
            elif current:
                pieces.append("\n".join(current))
                current = []
        if current:
            pieces.append("\n".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _check_format(text_format):
    if text_format not in TEXT_FORMATS:
        raise ValueError(
            f"`format` must be one of {TEXT_FORMATS}. Received: "
            f"format={text_format!r}"
        )


def read_text_files(paths_or_globs, format="lines"):  # noqa: A002
    """Reads UTF-8 text files into a list of documents.

    Files are read in the order given; the files a glob matches are sorted.
    A file named twice (or matched by two globs) is read once. Line endings
    (`\\n`, `\\r\\n`, `\\r`) are normalized and a UTF-8 byte order mark is
    ignored. Each document is stripped of surrounding whitespace, and empty
    or whitespace-only documents are skipped.

    Args:
        paths_or_globs: a path (`str` or `os.PathLike`), a glob pattern
            (`"corpus/*.txt"`, `"**"` is recursive), or a list of them. An
            existing path is taken literally even if it contains glob
            characters.
        format: `"lines"` (one document per line) or `"paragraphs"`
            (documents separated by one or more blank lines; the lines of a
            paragraph are joined with `"\\n"`).

    Returns:
        A `list[str]` of documents.

    Raises:
        FileNotFoundError: a path does not exist or a glob matches no file;
            the message names it.
        IsADirectoryError: a path is a directory.
        ValueError: `format` is unknown, a file is not valid UTF-8, or the
            files hold no non-empty document.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.txt"
    >>> _ = path.write_text("first doc\\n\\n  \\nsecond doc\\nmore\\n")
    >>> read_text_files(path)
    ['first doc', 'second doc', 'more']
    >>> read_text_files(path, format="paragraphs")
    ['first doc', 'second doc\\nmore']
    """
    _check_format(format)
    files = _resolve_files(paths_or_globs)
    documents = []
    for path in files:
        try:
            with open(path, "r", encoding="utf-8-sig", newline=None) as file:
                text = file.read()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path!r} is not valid UTF-8 ({error}). Convert it to UTF-8 "
                "first, e.g. `iconv -f latin1 -t utf-8`."
            ) from error
        documents.extend(_split_documents(text, format))
    if not documents:
        raise ValueError(
            f"No non-empty document in {files}: the file(s) were empty or "
            "held only whitespace."
        )
    return documents


def text_line_dataset(paths_or_globs):
    """Streams line-per-document files as a `tf.data.Dataset` of strings.

    The streaming counterpart of `read_text_files(..., format="lines")` for
    files too large to hold in memory: lines are stripped of surrounding
    whitespace and empty lines are dropped, in file order. Prefer
    `read_text_files` whenever the corpus fits in memory: tokenizer
    training and `train_validation_split` need a list.

    Args:
        paths_or_globs: a path, a glob pattern, or a list of them (resolved
            exactly as in `read_text_files`).

    Returns:
        A `tf.data.Dataset` of scalar `tf.string` documents.

    Raises:
        FileNotFoundError: a path does not exist or a glob matches no file.
        IsADirectoryError: a path is a directory.

    Example:

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.txt"
    >>> _ = path.write_text("a b\\n\\n c d \\n")
    >>> [x.decode() for x in text_line_dataset(str(path)).as_numpy_iterator()]
    ['a b', 'c d']
    """
    import tensorflow as tf

    files = _resolve_files(paths_or_globs)
    dataset = tf.data.TextLineDataset(files)
    dataset = dataset.map(tf.strings.strip)
    return dataset.filter(lambda line: tf.strings.length(line) > 0)


# ---------------------------------------------------------------------------
# tfds.
# ---------------------------------------------------------------------------


def tfds_texts(
    name, data_dir, split="train", text_key="text", max_documents=None
):
    """Reads one text feature of a locally prepared tfds dataset.

    Never downloads: the dataset must already be prepared in `data_dir`
    (run `tfds build NAME --data_dir DIR` on a machine with internet access
    and copy `DIR` over). Examples are read in the dataset's stored order
    (`shuffle_files=False`), so the result is deterministic. Documents are
    stripped of surrounding whitespace and empty ones are skipped.

    Args:
        name: the tfds name, optionally with config and version, e.g.
            `"imdb_reviews"` or `"wikipedia/20230601.en"`.
        data_dir: the local directory the dataset was prepared into.
        split: a tfds split, including slicing syntax (`"train[:10%]"`).
        text_key: the string feature to read.
        max_documents: optional positive int; stop after this many
            (non-empty) documents.

    Returns:
        A `list[str]` of documents.

    Raises:
        ValueError: `data_dir` is missing; `name` is neither a known tfds
            dataset nor one prepared in `data_dir`; `text_key` is not a
            scalar string feature of the dataset; the split holds no
            non-empty text; or `max_documents` is invalid.
        FileNotFoundError: the dataset is not prepared in `data_dir`.

    Example:

    ```python
    # On a machine with internet: tfds build imdb_reviews --data_dir ~/tfds
    reviews = tfds_texts("imdb_reviews", data_dir="~/tfds", split="train")
    ```
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds_lib

    max_documents = _check_max_documents(max_documents)
    if not data_dir:
        raise ValueError(
            "`data_dir` is required: kobjectives never downloads datasets. "
            f"Prepare {name!r} with `tfds build {name} --data_dir DIR` on a "
            "machine with internet access, then pass data_dir=DIR."
        )
    data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        builder = tfds_lib.builder(name, data_dir=data_dir)
    except tfds_lib.core.registered.DatasetNotFoundError:
        # tfds' own message lists every known dataset; keep it short.
        raise ValueError(
            f"Unknown tfds dataset {name!r}: it is neither a dataset of this "
            f"tensorflow-datasets ({tfds_lib.__version__}) nor prepared in "
            f"{data_dir!r}. Check the name (`tfds.list_builders()`) and "
            "`data_dir`."
        ) from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"The tfds dataset {name!r} is not prepared in {data_dir!r} "
            f"(looked for {os.fspath(builder.data_path)!r}), and kobjectives "
            "never downloads. Prepare it locally: run `tfds build "
            f"{name} --data_dir {data_dir}` on a machine with internet "
            "access and copy the directory here."
        )
    features = builder.info.features
    if text_key not in features:
        raise ValueError(
            f"`text_key={text_key!r}` is not a feature of {name!r}. "
            f"Available features: {sorted(features.keys())}."
        )
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    dataset = dataset.map(lambda example: example[text_key])
    spec = dataset.element_spec
    if spec.dtype != tf.string or spec.shape.rank != 0:
        raise ValueError(
            f"Feature {text_key!r} of {name!r} is not a scalar string "
            f"feature (got {spec}); pass the key of a "
            "text feature as `text_key`."
        )
    documents = []
    for batch in dataset.batch(1024).as_numpy_iterator():
        for value in batch:
            text = value.decode("utf-8").strip()
            if text:
                documents.append(text)
                if len(documents) == max_documents:
                    return documents
    if not documents:
        raise ValueError(
            f"Split {split!r} of the tfds dataset {name!r} holds no "
            f"non-empty {text_key!r} document."
        )
    return documents


# ---------------------------------------------------------------------------
# One entry point.
# ---------------------------------------------------------------------------


def load_texts(
    data=None,
    tfds=None,
    data_dir=None,
    format="lines",  # noqa: A002
    split="train",
    text_key="text",
    max_documents=None,
):
    """Loads the documents a run trains on: files, a tfds dataset, or the
    embedded corpus.

    The single entry point behind the CLI's `--data` / `--tfds` /
    `--data-dir` options.

    Args:
        data: a path, glob or list of them, read with `read_text_files`.
        tfds: a tfds dataset name, read with `tfds_texts` from `data_dir`.
        data_dir: the local tfds data directory (only with `tfds`).
        format: `"lines"` or `"paragraphs"` (only with `data`).
        split: the tfds split (only with `tfds`).
        text_key: the tfds text feature (only with `tfds`).
        max_documents: optional positive int: keep only the first
            `max_documents` documents.

    Returns:
        A `list[str]` of documents. With neither `data` nor `tfds`, the
        embedded corpus (`embedded_corpus()`).

    Raises:
        ValueError: both `data` and `tfds` are given, or `data_dir` is given
            without `tfds`; plus whatever the chosen source raises.

    Example:

    >>> documents = load_texts(max_documents=100)  # the embedded corpus
    >>> len(documents)
    100
    """
    max_documents = _check_max_documents(max_documents)
    if data is not None and tfds is not None:
        raise ValueError(
            "Pass either `data` (files) or `tfds` (a dataset name), not both. "
            f"Received: data={data!r}, tfds={tfds!r}"
        )
    if data_dir is not None and tfds is None:
        raise ValueError(
            "`data_dir` is the local tfds data directory and needs `tfds` "
            f"(a dataset name). Received: data_dir={data_dir!r}, tfds=None"
        )
    if tfds is not None:
        return tfds_texts(
            tfds,
            data_dir=data_dir,
            split=split,
            text_key=text_key,
            max_documents=max_documents,
        )
    if data is not None:
        documents = read_text_files(data, format=format)
        if max_documents is not None:
            documents = documents[:max_documents]
        return documents
    return embedded_corpus(max_documents=max_documents)
