"""Training runs behind `kobjectives train`, `tune` and `export`: one `Run`
class per recipe, registered under the recipe's name.

- `run_class(name)`: the registered `Run` subclass of a recipe name;
  `available_runs()` lists the names.
- `load_recipe(name_or_path, config=None, overrides=None)`: a registered
  recipe's defaults, or a `.toml` file naming one (`recipe = "mlm"`), then a
  `--config` file and `{"section.key": value}` overrides; validated.
- `load_run(run_dir)`, `export_run_dir(run_dir, out_dir)`: a finished run
  folder reloaded, and its SavedModel re-exported.

A run module defines its `Run` subclass with `@register` (see
`kobjectives.runs.run.Run` for the hooks).
"""

import importlib
import json
import pathlib

from kobjectives.recipe import RecipeError
from kobjectives.recipe import read_toml
from kobjectives.runs.run import MODEL_FILE
from kobjectives.runs.run import RECIPE_FILE
from kobjectives.runs.run import Run  # noqa: F401

RUNS = {}
"""Registered `Run` classes by recipe name."""

# The modules that register runs, imported on first use.
_MODULES = ("mlm", "denoising", "clm", "cpc", "xlnet", "simcse", "sentence_pairs", "electra", "classify", "sft", "tag", "reward", "seq2seq_sft", "dpo")


def register(cls):
    """Class decorator: registers a `Run` subclass under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name` to register under.")
    if RUNS.get(cls.name, cls) is not cls:
        raise ValueError(f"A run named {cls.name!r} is registered already ({RUNS[cls.name]}).")
    cls.recipe_class.name = cls.name
    RUNS[cls.name] = cls
    return cls


def _import_runs():
    for module in _MODULES:
        importlib.import_module(f"kobjectives.runs.{module}")


def available_runs():
    """The registered recipe names, sorted."""
    _import_runs()
    return sorted(RUNS)


def run_class(name):
    """The `Run` subclass registered under `name`.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    _import_runs()
    if name not in RUNS:
        raise ValueError(f"Unknown recipe {name!r}. Valid recipes: {', '.join(sorted(RUNS))}.")
    return RUNS[name]


def load_recipe(name_or_path, config=None, overrides=None):
    """The recipe of a command: a registered recipe's defaults (`"mlm"`) or a
    `.toml` file (whose `recipe` key names the registered recipe it changes),
    then the values of the `config` file (a `.toml` of the same recipe), then
    `overrides` (`{"section.key": value}`, e.g. from `--set`); validated.

    Raises:
        RecipeError: an unknown key, a value of the wrong type or out of range.
        FileNotFoundError: a missing file.
    """
    path = pathlib.Path(str(name_or_path))
    if path.suffix == ".toml":
        table = read_toml(path)
        if "recipe" not in table:
            raise RecipeError(
                f"{path} names no recipe: add `recipe = \"NAME\"` at its top "
                f"(one of {', '.join(available_runs())}).")
        recipe = run_class(table["recipe"]).recipe_class.from_dict(table, source=str(path))
    else:
        recipe = run_class(str(name_or_path)).recipe_class()
    if config:
        if not str(config).endswith(".toml"):
            raise RecipeError(f"--config expects a recipe .toml file; received {config!r}.")
        recipe = recipe.apply(read_toml(config), str(config))
    if overrides:
        recipe = recipe.replace(overrides)
    return recipe.validate()


def load_run(run_dir, compile=True):
    """Reloads a finished run folder: its `Run` (recipe, tokenizer from
    `preset/`) with the training objective from `model.keras` as `run.model`.

    Args:
        run_dir: a folder written by `kobjectives train`.
        compile: restore the compiled state (optimizer and its state), so
            `run.model.fit` continues where the run stopped.

    Raises:
        FileNotFoundError: not a finished run folder.

    Example:

    ```python
    from kobjectives.runs import load_run

    run = load_run("runs/mlm")
    run.model.fit(dataset, epochs=1, steps_per_epoch=100)  # continue training
    ```
    """
    import keras

    import kobjectives.objectives  # noqa: F401  (registers the serializables)

    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run folder not found: {run_dir}. Give a folder written by "
            "`kobjectives train NAME --out DIR`.")
    for name in (RECIPE_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: it is not a finished `kobjectives train` run "
                "folder (train writes recipe.json first and model.keras at the end).")
    table = json.loads((run_dir / RECIPE_FILE).read_text())
    if "recipe" not in table:
        raise FileNotFoundError(
            f"{run_dir / RECIPE_FILE} names no recipe: the folder was written by an older "
            "kobjectives; train it again to reload it.")
    cls = run_class(table["recipe"])
    run = cls(cls.recipe_class.from_dict(table, source=str(run_dir / RECIPE_FILE)), run_dir,
              reloading=True)
    run.load_tokenizer()
    run.model = keras.saving.load_model(run_dir / MODEL_FILE, compile=compile)
    return run


def export_run_dir(run_dir, out_dir=None, log=print):
    """Writes the inference SavedModel of a finished run folder into
    `OUT/saved_model/` (default `OUT` = `run_dir`), exactly as training did
    (`Run.export`), from `model.keras`, `recipe.json` and `preset/`.

    Returns:
        The path of the written `saved_model/`, as a string.
    """
    run = load_run(run_dir, compile=False)
    out_dir = pathlib.Path(out_dir) if out_dir else pathlib.Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run.export(run.model, out_dir)
    path = out_dir / "saved_model"
    log(f"exported {run.name} ({type(run.model).__name__}) from {run_dir} to {path}")
    return str(path)
