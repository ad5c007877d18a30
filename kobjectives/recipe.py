"""Recipes: small declarative TOML files that configure a training run.

A recipe names its `objective` and has one table per concern (`data`,
`tokenizer`, `model`, `masking`, `training`, ...); see `recipes/mlm.toml`
and `docs/recipes.md`. Values given on the command line override the file.
"""

import copy
import pathlib
import sys
import tomllib

_SOURCE_RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"
_INSTALLED_RECIPES = pathlib.Path(sys.prefix) / "share" / "kobjectives" / "recipes"


def recipe_directories():
    """Where recipes are looked up: the source tree's `recipes/`, then the
    copy a non-editable install puts under `sys.prefix/share/kobjectives`."""
    return [d for d in (_SOURCE_RECIPES, _INSTALLED_RECIPES) if d.is_dir()]


def available_recipes():
    """Names of the bundled recipes, sorted."""
    return sorted({p.stem for d in recipe_directories() for p in d.glob("*.toml")})


def load_recipe(name_or_path):
    """Loads a recipe by bundled name (`"mlm"`) or from a `.toml` path.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    path = pathlib.Path(name_or_path)
    if path.suffix != ".toml":
        found = [d / f"{name_or_path}.toml" for d in recipe_directories()]
        found = [p for p in found if p.is_file()]
        if not found:
            raise ValueError(
                f"Unknown recipe {name_or_path!r}. Valid recipes: "
                f"{', '.join(available_recipes()) or '(none found)'}."
            )
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"Recipe file not found: {path}")
    with open(path, "rb") as f:
        return tomllib.load(f)


def override(recipe, assignments):
    """Returns a copy of `recipe` with `"section.key": value` items applied.

    Only keys that exist in the recipe can be set (a typo is an error that
    lists the valid keys), and a value keeps the type of the recipe's value.
    """
    recipe = copy.deepcopy(recipe)
    for dotted, value in assignments.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        table = recipe.get(section)
        if not isinstance(table, dict) or key not in table:
            valid = [
                f"{s}.{k}" for s, t in recipe.items() if isinstance(t, dict) for k in t
            ]
            raise ValueError(f"Unknown recipe key {dotted!r}. Valid keys: {', '.join(valid)}.")
        table[key] = _coerce(value, table[key], dotted)
    return recipe


def _coerce(value, like, name):
    if not isinstance(value, str) or isinstance(like, str):
        return value
    try:
        if isinstance(like, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        return type(like)(value)
    except ValueError:
        raise ValueError(
            f"Recipe key {name!r} expects a {type(like).__name__}; received {value!r}."
        ) from None
