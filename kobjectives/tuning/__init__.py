"""KerasTuner search over the objectives' hyperparameters.

`RunHyperModel` turns any run module of `kobjectives.runs` (its
`SEARCH_SPACE`, `make_dataset`, `build_model`) into a `keras_tuner.HyperModel`;
`MaskedLMHyperModel`, `CPCHyperModel` and `SimCSEHyperModel` name it per
objective. `tune` runs a whole search (`kobjectives tune NAME`). See
`docs/tuning.md`.
"""

from kobjectives.tuning.hypermodel import DEFAULT_SEARCH_SPACE
from kobjectives.tuning.hypermodel import HYPERMODELS
from kobjectives.tuning.hypermodel import CPCHyperModel
from kobjectives.tuning.hypermodel import MaskedLMHyperModel
from kobjectives.tuning.hypermodel import RunHyperModel
from kobjectives.tuning.hypermodel import SimCSEHyperModel
from kobjectives.tuning.hypermodel import apply_values
from kobjectives.tuning.hypermodel import check_search_space
from kobjectives.tuning.hypermodel import hypermodel_for
from kobjectives.tuning.search import TUNERS
from kobjectives.tuning.search import dumps_recipe
from kobjectives.tuning.search import make_tuner
from kobjectives.tuning.search import results_table
from kobjectives.tuning.search import tune
