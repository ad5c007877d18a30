"""KerasTuner search over the objectives' hyperparameters.

`RunHyperModel` turns any registered `kobjectives.runs.Run` (its
`search_space`, `datasets`, `build_model`) into a `keras_tuner.HyperModel`;
a trial's values reach the recipe only through `Recipe.replace`. `tune` runs a
whole search (`kobjectives tune NAME`) and writes `best_recipe.toml`, which
`kobjectives train best_recipe.toml` runs. See `docs/tuning.md`.
"""

from kobjectives.tuning.hypermodel import RunHyperModel
from kobjectives.tuning.hypermodel import check_search_space
from kobjectives.tuning.search import TUNERS
from kobjectives.tuning.search import make_tuner
from kobjectives.tuning.search import results_table
from kobjectives.tuning.search import trial_rows
from kobjectives.tuning.search import tune
