"""KerasTuner `HyperModel`s driven by the run modules of `kobjectives.runs`.

A run module declares its objective's natural hyperparameters in
`SEARCH_SPACE` (recipe key -> spec) and knows how to build its datasets
(`make_dataset`) and its compiled objective (`build_model`) from a recipe.
`RunHyperModel` maps that search space onto KerasTuner hyperparameters, applies
a trial's values to the recipe, and builds and trains the objective from it:
model hyperparameters (learning rate, warm-up, weight decay, temperature,
loss weights, ...) reach `build_model`, data-pipeline hyperparameters (mask
rate, noise density, ...) reach `make_dataset` in `fit`.
"""

import copy
import math

import keras
import keras_tuner
import numpy as np

SPEC_KINDS = ("float", "int", "choice")

# Used when a run module has no SEARCH_SPACE: the optimizer's hyperparameters,
# which every recipe's `[training]` table has.
DEFAULT_SEARCH_SPACE = {
    "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
}

_CONTRACT = ("prepare", "make_dataset", "build_model")


def _recipe_value(recipe, key):
    section, _, name = key.partition(".")
    table = recipe.get(section)
    if not isinstance(table, dict) or name not in table:
        return KeyError(key)
    return table[name]


def check_search_space(search_space, recipe=None):
    """Validates a search space; with `recipe`, every key must exist in it.

    Raises:
        ValueError: a malformed spec or an unknown key, naming it and the fix.
    """
    if not isinstance(search_space, dict) or not search_space:
        raise ValueError(
            "search_space must be a non-empty dict: recipe key -> spec, e.g. "
            "{'training.learning_rate': ('float', 1e-4, 3e-3, 'log')}. "
            f"Received: {search_space!r}."
        )
    for key, spec in search_space.items():
        if "." not in key:
            raise ValueError(f"Search-space key {key!r} must be 'section.key' (a recipe key).")
        if recipe is not None and isinstance(_recipe_value(recipe, key), KeyError):
            raise ValueError(
                f"Search-space key {key!r} is not in the recipe; give a key of the "
                f"recipe ({', '.join(_recipe_keys(recipe))})."
            )
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
        if kind not in SPEC_KINDS:
            raise ValueError(
                f"Search-space spec of {key!r} must start with one of {SPEC_KINDS}: "
                f"('float', low, high, 'log'|'linear'), ('int', low, high) or "
                f"('choice', [values]). Received: {spec!r}."
            )
        if kind == "float":
            if len(spec) not in (3, 4) or not float(spec[1]) < float(spec[2]):
                raise ValueError(
                    f"Search-space spec of {key!r}: ('float', low, high[, sampling]) "
                    f"with low < high. Received: {spec!r}."
                )
            sampling = spec[3] if len(spec) == 4 else "linear"
            if sampling not in ("log", "linear"):
                raise ValueError(
                    f"Search-space spec of {key!r}: sampling must be 'log' or 'linear'. "
                    f"Received: {sampling!r}."
                )
            if sampling == "log" and not float(spec[1]) > 0:
                raise ValueError(
                    f"Search-space spec of {key!r}: a 'log' range needs low > 0. "
                    f"Received: {spec!r}."
                )
        elif kind == "int":
            if len(spec) not in (3, 4) or not int(spec[1]) < int(spec[2]):
                raise ValueError(
                    f"Search-space spec of {key!r}: ('int', low, high) with low < high. "
                    f"Received: {spec!r}."
                )
        elif len(spec) != 2 or not list(spec[1]):
            raise ValueError(
                f"Search-space spec of {key!r}: ('choice', [values]) with at least one "
                f"value. Received: {spec!r}."
            )
    return search_space


def _recipe_keys(recipe):
    return [f"{s}.{k}" for s, t in recipe.items() if isinstance(t, dict) for k in t]


def declare(hp, key, spec):
    """Declares one search-space entry on `hp` and returns its value."""
    kind = spec[0]
    if kind == "float":
        sampling = spec[3] if len(spec) == 4 else "linear"
        return hp.Float(key, float(spec[1]), float(spec[2]), sampling=sampling)
    if kind == "int":
        sampling = spec[3] if len(spec) == 4 else "linear"
        return hp.Int(key, int(spec[1]), int(spec[2]), sampling=sampling)
    return hp.Choice(key, list(spec[1]))


def apply_values(recipe, values):
    """A copy of `recipe` with `{"section.key": value}` applied, each value
    cast to the type of the recipe's value (an int search range for a float
    key stays a float)."""
    recipe = copy.deepcopy(recipe)
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in recipe or name not in recipe[section]:
            continue  # tuner bookkeeping such as "tuner/epochs"
        like = recipe[section][name]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        recipe[section][name] = value
    return recipe


class RunHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel` for any objective with a run module.

    `build(hp)` declares the search space on `hp`, applies the trial's values
    to the recipe and returns `run.build_model(recipe, prepared)` (KerasTuner
    enters the strategy's scope). `fit(hp, model, ...)` builds the training
    data with `run.make_dataset` from the trial's recipe (so data-pipeline
    hyperparameters are honoured) and calls `model.fit` with validation data,
    reporting `val_loss` after every round (`training.epochs` rounds of
    `training.steps / training.epochs` steps; Hyperband passes its own
    `epochs`). Every trial is scored on the same validation data, built from
    the *base* recipe (fixed masks / views), unless the run module sets
    `TUNING_FIXED_VALIDATION = False` (e.g. when a data hyperparameter
    changes the shapes the model expects). Every trial starts from the same
    seed (`training.seed`), so trials differ only by their hyperparameters.
    A trial whose loss becomes non-finite is reported as failed, never as a
    NaN score.

    Args:
        run: a run module (see `kobjectives.runs`) or a recipe objective name
            such as `"mlm"`.
        recipe: the base recipe dict (its `objective` selects the run module
            when `run` is None).
        prepared: what `run.prepare(recipe, out_dir, ...)` returned.
        search_space: dict, recipe key -> spec (`("float", low, high,
            "log"|"linear")`, `("int", low, high)`, `("choice", [values])`);
            defaults to the run module's `SEARCH_SPACE`.
        strategy: the `tf.distribute.Strategy` the tuner builds models under
            (give the same one as the tuner's `distribution_strategy`); the
            datasets are built for it with `common.training_datasets`.
        name: optional name of the HyperModel.
        tunable: whether the hyperparameters are tunable (KerasTuner).

    Example:

    ```python
    import keras_tuner
    from kobjectives import recipe as recipe_lib
    from kobjectives.runs import mlm
    from kobjectives.tuning import MaskedLMHyperModel

    recipe = recipe_lib.override(recipe_lib.load_recipe("mlm"), {
        "training.steps": 20, "training.epochs": 2, "data.max_documents": 400,
        "tokenizer.vocabulary_size": 600, "model.sequence_length": 32})
    prepared = mlm.prepare(recipe, "/tmp/tune_mlm")
    tuner = keras_tuner.RandomSearch(
        MaskedLMHyperModel(recipe, prepared), objective="val_loss",
        max_trials=2, directory="/tmp/tune_mlm", project_name="mlm")
    tuner.search(verbose=0)
    best = tuner.hypermodel.recipe_for(tuner.get_best_hyperparameters()[0])
    ```
    """

    objective_name = None

    def __init__(
        self, recipe, prepared, run=None, search_space=None, strategy=None, name=None,
        tunable=True,
    ):
        from kobjectives.runs import runner_module

        super().__init__(name=name, tunable=tunable)
        if not isinstance(recipe, dict) or "training" not in recipe:
            raise ValueError(
                "recipe must be a recipe dict with a [training] table (see "
                f"kobjectives.recipe.load_recipe). Received: {type(recipe).__name__}."
            )
        run = run or self.objective_name or recipe.get("objective")
        if isinstance(run, str):
            run = runner_module(run)
        if self.objective_name and recipe.get("objective") not in (None, self.objective_name):
            raise ValueError(
                f"{type(self).__name__} tunes recipes with objective "
                f"{self.objective_name!r}; this recipe's objective is "
                f"{recipe.get('objective')!r}. Use kobjectives.tuning.hypermodel_for(objective)."
            )
        missing = [f for f in _CONTRACT if not callable(getattr(run, f, None))]
        if missing:
            raise ValueError(
                f"Run module {run.__name__} cannot be tuned: it lacks {', '.join(missing)} "
                "(the run-module contract of kobjectives.runs)."
            )
        self.run = run
        self.recipe = copy.deepcopy(recipe)
        self.prepared = prepared
        if search_space is None:
            search_space = getattr(run, "SEARCH_SPACE", None) or {
                k: v for k, v in DEFAULT_SEARCH_SPACE.items()
                if not isinstance(_recipe_value(recipe, k), KeyError)
            }
        self.search_space = check_search_space(dict(search_space), self.recipe)
        self.strategy = strategy
        self._validation = None
        self.log = None  # a print-like function: one line per finished trial
        self._fits = 0

    def declare(self, hp):
        """Declares the search space on `hp`; returns `{key: value}`."""
        return {key: declare(hp, key, spec) for key, spec in self.search_space.items()}

    def declare_hyperparameters(self, hp):
        self.declare(hp)

    def recipe_for(self, hp):
        """The base recipe with the values of `hp` (a `HyperParameters`, or a
        dict) applied."""
        values = hp if isinstance(hp, dict) else hp.values
        return apply_values(self.recipe, {k: v for k, v in values.items() if k in self.search_space})

    def build(self, hp):
        self.declare(hp)
        recipe = self.recipe_for(hp)
        train_cfg = recipe["training"]
        # KerasTuner clears the Keras session (and with it the dtype policy)
        # before every build.
        keras.mixed_precision.set_global_policy(train_cfg["dtype_policy"])
        keras.utils.set_random_seed(int(train_cfg["seed"]))
        return self.run.build_model(recipe, self.prepared)

    def _strategy(self):
        import tensorflow as tf

        return self.strategy or tf.distribute.get_strategy()

    def datasets(self, recipe):
        """`(train, validation)` for a trial's recipe; the validation data is
        built once (from the base recipe) and reused by every trial."""
        from kobjectives.runs import common

        fixed = getattr(self.run, "TUNING_FIXED_VALIDATION", True)
        train, validation = common.training_datasets(self.run, recipe, self.prepared, self._strategy())
        if not fixed:
            return train, validation
        if self._validation is None:
            same = all(
                _recipe_value(recipe, k) == _recipe_value(self.recipe, k)
                for k in self.search_space
            )
            self._validation = (
                validation if same else
                common.training_datasets(self.run, self.recipe, self.prepared, self._strategy())[1]
            )
        return train, self._validation

    def fit(self, hp, model, *args, epochs=None, callbacks=None, verbose=0, **kwargs):
        from kobjectives.runs import common

        recipe = self.recipe_for(hp)
        rounds, steps_per_epoch = common.rounds(recipe["training"])
        train, validation = self.datasets(recipe)
        callbacks = list(callbacks or []) + [keras.callbacks.TerminateOnNaN()]
        kwargs.pop("steps_per_epoch", None)
        kwargs.pop("validation_data", None)
        history = model.fit(
            train, epochs=epochs or rounds, steps_per_epoch=steps_per_epoch,
            validation_data=validation, callbacks=callbacks, verbose=verbose,
            shuffle=False, **kwargs,
        )
        logs = history.history
        if self.log is not None:
            self._fits += 1
            values = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in hp.values.items() if k in self.search_space
            )
            rounds_done = " ".join(f"{v:.4f}" for v in logs.get("val_loss", []))
            self.log(f"trial {self._fits}: val_loss per round {rounds_done} ({values})")
        losses = logs.get("loss", []) + logs.get("val_loss", [])
        if not losses or not all(math.isfinite(v) for v in losses):
            raise keras_tuner.errors.FailedTrialError(
                f"Trial diverged (non-finite loss) with {hp.values}; lower "
                "training.learning_rate's range in the search space."
            )
        return history


class MaskedLMHyperModel(RunHyperModel):
    """`RunHyperModel` for masked LM (`kobjectives.runs.mlm`): learning rate,
    warm-up, weight decay, dropout and the mask selection rate (a
    data-pipeline hyperparameter; every trial is scored on the base recipe's
    fixed validation masks). Devlin et al., 2019, "BERT".

    Example: see `RunHyperModel`.
    """

    objective_name = "mlm"


class CPCHyperModel(RunHyperModel):
    """`RunHyperModel` for contrastive predictive coding
    (`kobjectives.runs.cpc`): the optimizer's hyperparameters and the run
    module's `SEARCH_SPACE` (e.g. the InfoNCE temperature). van den Oord et
    al., 2018, "Representation Learning with Contrastive Predictive Coding".

    Example: see `RunHyperModel`.
    """

    objective_name = "cpc"


class SimCSEHyperModel(RunHyperModel):
    """`RunHyperModel` for SimCSE (`kobjectives.runs.simcse`): the
    optimizer's hyperparameters and the run module's `SEARCH_SPACE` (e.g. the
    temperature). Gao et al., 2021, "SimCSE".

    Example: see `RunHyperModel`.
    """

    objective_name = "simcse"


HYPERMODELS = {
    "mlm": MaskedLMHyperModel,
    "cpc": CPCHyperModel,
    "simcse": SimCSEHyperModel,
}


def hypermodel_for(objective):
    """The HyperModel class of a recipe objective: a named one where there is
    one, else `RunHyperModel` (which works for every objective in
    `kobjectives.runs.RUNNERS`)."""
    from kobjectives.runs import RUNNERS

    if objective not in RUNNERS and objective not in HYPERMODELS:
        raise ValueError(
            f"Objective {objective!r} has no run module to tune. Valid: "
            f"{', '.join(sorted(RUNNERS))}."
        )
    return HYPERMODELS.get(objective, RunHyperModel)

