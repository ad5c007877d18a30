"""Every docstring example of the package runs.

- `>>>` examples run as doctests, one test per module that has them
  (modules found by `pkgutil.walk_packages`). Every `>>>` prompt in a
  module's docstrings must be found by `doctest.DocTestFinder` (so an example
  cannot silently drop out), and the package holds at least `MIN_EXAMPLES`.
  `tf.function`s run eagerly meanwhile, so the examples that `fit` an
  objective for a step do not trace and compile it (the compiled and XLA
  steps are the objectives' own tests); `tf.data` functions still trace.
- Fenced ```python examples remain only where they need a finished run
  folder, `../shared/data`, the network or minutes of training: those are
  listed in `FENCED` and must compile and name only what exists (`kobjectives`
  dotted names, `from kobjectives... import` names, the hosting module's
  globals, methods of the kobjectives classes they build); the names they
  take from the surrounding prose are listed with them.
"""

import ast
import builtins
import doctest
import importlib
import inspect
import pkgutil
import re
import textwrap

import pytest
import tensorflow as tf

import kobjectives

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(
        kobjectives.__path__, "kobjectives.", onerror=lambda name: pytest.fail(name)))

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The `>>>` examples and the modules holding them today; raise them when adding.
MIN_EXAMPLES = 448
MIN_MODULES = 52

# module: (number of fenced blocks, names the blocks take from the prose)
FENCED = {
    "kobjectives.data.corpus": (1, set()),  # tfds_texts: a tfds build (network)
    "kobjectives.export.saved_model": (1, {"export_dir"}),  # loads an exported model
    # trains, exports and serves a T5 SavedModel (tests/export/test_seq2seq.py)
    "kobjectives.export.seq2seq": (1, {"backbone", "dataset", "tokenizer"}),
    "kobjectives.runs": (1, {"dataset"}),  # load_run: a finished run folder
    "kobjectives.runs.run": (1, set()),  # Run.train: a full run (minutes)
    "kobjectives.tuning.hypermodel": (1, set()),  # a KerasTuner search (minutes)
    "kobjectives.tuning.search": (2, {"run"}),  # make_tuner, tune: searches (minutes)
}

_PROMPT = re.compile(r"^[ \t]*>>>", re.M)
_FENCE = re.compile(r"^[ \t]*```python\n(.*?)^[ \t]*```", re.M | re.S)


def _docstrings(module):
    """The docstrings of the module's source, nested definitions included."""
    tree = ast.parse(inspect.getsource(module))
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds) and ast.get_docstring(node, clean=False):
            yield ast.get_docstring(node, clean=False)


def _prompts(module):
    return sum(len(_PROMPT.findall(doc)) for doc in _docstrings(module))


def _found(module):
    tests = doctest.DocTestFinder().find(module, module.__name__)
    return tests, sum(len(test.examples) for test in tests)


WITH_EXAMPLES = [name for name in MODULES if _prompts(importlib.import_module(name))]


def test_every_example_is_found():
    found = {name: _found(importlib.import_module(name))[1] for name in MODULES}
    prompts = {name: _prompts(importlib.import_module(name)) for name in MODULES}
    assert found == prompts, "DocTestFinder misses `>>>` prompts (a docstring it does not reach?)"
    assert sum(found.values()) >= MIN_EXAMPLES
    assert len(WITH_EXAMPLES) >= MIN_MODULES


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_doctests_pass(name):
    module = importlib.import_module(name)
    tests, found = _found(module)
    assert found == _prompts(module)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    eagerly = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    # Examples print what a fresh process prints: an earlier test's global
    # seed (keras.utils.set_random_seed) would change every op-seeded draw.
    tf.random.set_seed(None)
    try:
        for test in sorted(tests, key=lambda test: test.lineno or 0):
            runner.run(test, out=report.append)
    finally:
        tf.config.run_functions_eagerly(eagerly)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted == found
    assert failed == 0, "".join(report)


# -- fenced examples ------------------------------------------------------------


def _fenced(module):
    return [textwrap.dedent(block) for doc in _docstrings(module)
            for block in _FENCE.findall(doc)]


def _resolve(names, imported=()):
    """The object `kobjectives.a.b...` names, resolved as a user's
    `import kobjectives` sees it (subpackages through its lazy `__getattr__`),
    or `import kobjectives.a` where `a` is in `imported`."""
    if names[0] in imported:
        obj = importlib.import_module(f"kobjectives.{names[0]}")
    else:
        obj = kobjectives.__getattr__(names[0])
    for part in names[1:]:
        obj = getattr(obj, part)
    return obj


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


def _check_names(block, module, placeholders):
    tree = ast.parse(block)
    bound, values = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
                bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(source, alias.name), f"{node.module} has no {alias.name}"
                bound.add(alias.asname or alias.name)
                values[alias.asname or alias.name] = getattr(source, alias.name)
    free = {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)} - bound
    unknown = free - set(vars(module)) - set(dir(builtins)) - placeholders - {"kobjectives"}
    assert not unknown, f"names neither defined nor listed as placeholders: {unknown}"
    for name in free & set(vars(module)):
        values[name] = vars(module)[name]
    imported = {alias.name.split(".")[1] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names
                if alias.name.startswith("kobjectives.") and not alias.asname}
    for node in ast.walk(tree):
        chain = _dotted(node) if isinstance(node, ast.Attribute) else None
        if chain and chain[0] == "kobjectives":
            _resolve(chain[1:], imported)
    # `x = SomeClass(...)` then `x.method`: the method exists on the class.
    classes = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            chain = _dotted(node.value.func)
            if chain and chain[0] == "kobjectives":
                made = _resolve(chain[1:], imported)
            elif chain and len(chain) == 1:
                made = values.get(chain[0])
            else:
                made = None
            if inspect.isclass(made):
                classes[node.targets[0].id] = made
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in classes):
            assert hasattr(classes[node.value.id], node.attr), (
                f"{classes[node.value.id].__name__} has no {node.attr}")


def test_fenced_examples_are_listed():
    counts = {name: len(_fenced(importlib.import_module(name))) for name in MODULES}
    assert {name: count for name, count in counts.items() if count} == {
        name: count for name, (count, _) in FENCED.items()}, (
        "a fenced example not in FENCED: write it as a `>>>` doctest, or list it")


@pytest.mark.parametrize("name", sorted(FENCED))
def test_fenced_examples_compile_and_name_what_exists(name):
    module = importlib.import_module(name)
    _, placeholders = FENCED[name]
    for block in _fenced(module):
        compile(block, f"<{name} fenced example>", "exec")
        _check_names(block, module, placeholders)
