"""`RunHyperModel`: a KerasTuner `HyperModel` over a registered `Run`.

A `Run` class declares its objective's natural hyperparameters in
`search_space` (recipe key -> spec). `RunHyperModel` maps that search space
onto KerasTuner hyperparameters; a trial's values reach the recipe only
through `Recipe.replace` (the one coercion path of recipe values), and the
trial's recipe is validated like any other. Model hyperparameters (learning
rate, warm-up, weight decay, temperature, loss weights, ...) reach
`Run.build_model`, data-pipeline hyperparameters (mask rate, noise density,
...) reach `Run.make_dataset` through `Run.datasets`.
"""

import math

import keras
import keras_tuner

from kobjectives.recipe import RecipeError

SPEC_KINDS = ("float", "int", "choice")


def _spec_problem(key, spec, base):
    """What is wrong with the shape of one spec (None if nothing)."""
    kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
    if kind not in SPEC_KINDS:
        return (f"must start with one of {SPEC_KINDS}: ('float', low, high, 'log'|'linear'), "
                f"('int', low, high) or ('choice', [values])")
    allowed = {int: ("int", "choice"), float: ("float", "int", "choice")}.get(type(base), ("choice",))
    if kind not in allowed:
        return (f"{key} holds {type(base).__name__} values ({base!r}): give "
                + " or ".join(f"({k!r}, ...)" for k in allowed))
    if kind == "choice":
        if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
            return "('choice', [values]) with at least one value"
        return None
    if len(spec) not in (3, 4) or not spec[1] < spec[2]:
        return f"({kind!r}, low, high[, sampling]) with low < high"
    if kind == "int" and not all(isinstance(v, int) for v in spec[1:3]):
        return "('int', low, high) with integer bounds"
    sampling = spec[3] if len(spec) == 4 else "linear"
    if sampling not in ("log", "linear"):
        return f"sampling must be 'log' or 'linear', not {sampling!r}"
    if sampling == "log" and not spec[1] > 0:
        return "a 'log' range needs low > 0"
    return None


def check_search_space(search_space, recipe):
    """Validates a search space against a recipe.

    Every key must be a key of `recipe` (`Recipe.keys()`), every spec well
    formed and of the key's type (`("int", ...)` for an integer key, only
    `("choice", ...)` for a string or boolean one), and every value it can
    take (a range's bounds, each choice) allowed for the key: each is put
    into `recipe` with `Recipe.replace` and the result validated.

    Args:
        search_space: dict, recipe key -> spec: `("float", low, high[,
            "log"|"linear"])`, `("int", low, high)` or `("choice", [values])`.
        recipe: the `kobjectives.recipe.Recipe` the trials change.

    Returns:
        `search_space`.

    Raises:
        ValueError: an unknown key (the valid keys are listed), a malformed
            spec, or a value outside the key's range or choices.

    Example:

    >>> from kobjectives.runs import run_class
    >>> recipe = run_class("mlm").recipe_class()
    >>> space = {"training.learning_rate": ("float", 1e-4, 2.0, "log")}
    >>> check_search_space(space, recipe)
    Traceback (most recent call last):
    ...
    ValueError: Search-space spec of 'training.learning_rate' ('float', 0.0001, 2.0, 'log'): \
training.learning_rate = 2.0: must be in (0, 1]
    """
    if not isinstance(search_space, dict) or not search_space:
        raise ValueError(
            "search_space must be a non-empty dict: recipe key -> spec, e.g. "
            "{'training.learning_rate': ('float', 1e-4, 3e-3, 'log')}. "
            f"Received: {search_space!r}.")
    keys = recipe.keys()
    for key, spec in search_space.items():
        if key not in keys:
            raise ValueError(
                f"Search-space key {key!r} is not a key of the {recipe.name!r} recipe. "
                f"Valid keys: {', '.join(keys)}.")
        problem = _spec_problem(key, spec, recipe.get(key))
        if problem is None:
            values = spec[1] if spec[0] == "choice" else spec[1:3]
            for value in values:
                try:
                    candidate = recipe.replace({key: value})
                    found = candidate.problems() or list(candidate.machine_problems())
                except RecipeError as error:
                    found = [str(error)]
                if found:
                    problem = "; ".join(found)
                    break
        if problem is not None:
            raise ValueError(f"Search-space spec of {key!r} {tuple(spec)!r}: {problem}")
    return search_space


def declare(hp, key, spec):
    """Declares one search-space entry on `hp` (a
    `keras_tuner.HyperParameters`) and returns its value."""
    kind = spec[0]
    sampling = spec[3] if len(spec) == 4 else "linear"
    if kind == "float":
        return hp.Float(key, float(spec[1]), float(spec[2]), sampling=sampling)
    if kind == "int":
        return hp.Int(key, int(spec[1]), int(spec[2]), sampling=sampling)
    return hp.Choice(key, list(spec[1]))


class RunHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel` for any registered `Run`.

    `build(hp)` declares the search space on `hp`, puts the trial's values
    into the run's recipe (`recipe_for`) and returns
    `run.with_recipe(trial_recipe).build_model()` (KerasTuner enters the
    strategy's scope). `fit(hp, model, ...)` trains on the trial run's
    `Run.datasets` (so data-pipeline hyperparameters are honoured) and
    reports `val_loss` after every round (`Run.rounds()`: exactly
    `training.steps` steps in `training.epochs` rounds, the last one
    shorter where they do not divide; Hyperband passes its own `epochs`). Every trial is scored on the same validation data, the base
    recipe's (fixed masks / views), unless the run class sets
    `tuning_fixed_validation = False` (e.g. when a data hyperparameter
    changes the shapes the model expects). Every trial starts from the same
    seed (`training.seed`), so trials differ only by their hyperparameters.
    A trial whose values make an invalid recipe, or whose loss becomes
    non-finite, is reported as failed, never scored.

    Args:
        run: a `kobjectives.runs.Run` (prepared, or prepared here into its
            `out_dir`), a `kobjectives.recipe.Recipe`, or a registered recipe
            name such as `"mlm"` (its defaults).
        out_dir: the folder a recipe or name is prepared into (the
            tokenizer's `vocab.txt`); not used with a `Run`.
        search_space: dict, recipe key -> spec (see `check_search_space`);
            defaults to the run's `search_space`.
        strategy: the `tf.distribute.Strategy` the datasets are built for
            (give the tuner's `distribution_strategy`); None for the
            current one.
        log: a print-like function: one line per finished trial (None:
            silent).
        name: optional name of the HyperModel.
        tunable: whether the hyperparameters are tunable (KerasTuner).

    Raises:
        ValueError: an unknown recipe name, an invalid search space, or a run
            to prepare without a folder.
        kobjectives.recipe.RecipeError: an invalid recipe.

    Example:

    ```python
    import keras_tuner
    from kobjectives.runs import load_recipe
    from kobjectives.tuning import RunHyperModel

    recipe = load_recipe("mlm", overrides={"training.steps": 20, "training.epochs": 2})
    hypermodel = RunHyperModel(recipe, out_dir="/tmp/tune_mlm")
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_loss", max_trials=2,
                                     directory="/tmp/tune_mlm", project_name="mlm")
    tuner.search(verbose=0)
    best = hypermodel.recipe_for(tuner.get_best_hyperparameters()[0])
    ```
    """

    def __init__(self, run, out_dir=None, search_space=None, strategy=None, log=None,
                 name=None, tunable=True):
        from kobjectives.recipe import Recipe
        from kobjectives.runs import Run
        from kobjectives.runs import run_class

        super().__init__(name=name, tunable=tunable)
        if isinstance(run, str):
            run = run_class(run)(None, out_dir)
        elif isinstance(run, Recipe):
            run = run_class(run.name)(run, out_dir)
        elif not isinstance(run, Run):
            raise TypeError(
                "run must be a kobjectives.runs.Run, a kobjectives.recipe.Recipe or a "
                f"registered recipe name. Received: {type(run).__name__}.")
        self.search_space = check_search_space(
            dict(run.search_space if search_space is None else search_space), run.recipe)
        if run.train_documents is None:
            keras.utils.set_random_seed(run.recipe.training.seed)
            run.prepare()
        self.run = run
        self.strategy = strategy
        self.log = log
        self._validation = None
        self._fits = 0

    def declare(self, hp):
        """Declares the search space on `hp`; returns `{key: value}`."""
        return {key: declare(hp, key, spec) for key, spec in self.search_space.items()}

    def declare_hyperparameters(self, hp):
        self.declare(hp)

    def recipe_for(self, hp):
        """The run's recipe with the search-space values of `hp` (a
        `HyperParameters`, or a dict) put in by `Recipe.replace`; other
        values (KerasTuner's `tuner/...` bookkeeping) are ignored.

        Raises:
            kobjectives.recipe.RecipeError: the values make an invalid recipe.
        """
        values = hp if isinstance(hp, dict) else hp.values
        return self.run.recipe.replace(
            {k: v for k, v in values.items() if k in self.search_space}).validate()

    def trial_run(self, hp):
        """The run with the trial's recipe (sharing the prepared data)."""
        try:
            return self.run.with_recipe(self.recipe_for(hp))
        except RecipeError as error:
            raise keras_tuner.errors.FailedTrialError(
                f"The trial's values make an invalid recipe: {error}") from None

    def build(self, hp):
        self.declare(hp)
        run = self.trial_run(hp)
        # KerasTuner clears the Keras session (and the dtype policy) before
        # every build.
        keras.mixed_precision.set_global_policy(run.recipe.training.dtype_policy)
        keras.utils.set_random_seed(run.recipe.training.seed)
        return run.build_model()

    def datasets(self, run):
        """`(train, validation)` of a trial's run; with the run class's
        `tuning_fixed_validation` the validation data is the base recipe's,
        built once and shared by every trial."""
        import tensorflow as tf

        strategy = self.strategy or tf.distribute.get_strategy()
        train, validation = run.datasets(strategy)
        if not self.run.tuning_fixed_validation:
            return train, validation
        if self._validation is None:
            self._validation = (validation if run.recipe == self.run.recipe
                                else self.run.datasets(strategy)[1])
        return train, self._validation

    def fit(self, hp, model, *args, epochs=None, callbacks=None, verbose=0, **kwargs):
        from kobjectives.runs.callbacks import StopAfterSteps

        run = self.trial_run(hp)
        rounds, steps_per_epoch = run.rounds()
        train, validation = self.datasets(run)
        callbacks = list(callbacks or []) + [keras.callbacks.TerminateOnNaN()]
        steps = run.recipe.training.steps
        if (epochs or rounds) * steps_per_epoch > steps:  # a shorter last round, or a budget past it
            callbacks.append(StopAfterSteps(steps, steps_per_epoch))
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
                for k, v in hp.values.items() if k in self.search_space)
            rounds_done = " ".join(f"{v:.4f}" for v in logs.get("val_loss", []))
            self.log(f"trial {self._fits}: val_loss per round {rounds_done} ({values})")
        losses = logs.get("loss", []) + logs.get("val_loss", [])
        if not losses or not all(math.isfinite(v) for v in losses):
            raise keras_tuner.errors.FailedTrialError(
                f"Trial diverged (non-finite loss) with {hp.values}; lower "
                "training.learning_rate's range in the search space.")
        return history
