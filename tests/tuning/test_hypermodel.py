"""RunHyperModel and the search helpers, on a toy `Run` (fast) and on the
registered runs (their search spaces)."""

import dataclasses
import math

import keras
import keras_tuner
import numpy as np
import pytest

from kobjectives import recipe as recipe_lib
import tensorflow as tf

from kobjectives.recipe import Recipe
from kobjectives.recipe import Section
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import Run
from kobjectives.runs import available_runs
from kobjectives.runs import run_class
from kobjectives.tuning import RunHyperModel
from kobjectives.tuning import check_search_space
from kobjectives.tuning import make_tuner
from kobjectives.tuning import trial_rows


@dataclasses.dataclass(frozen=True)
class ToyConfig(Section):
    """The toy regression's data: y = 3x + noise, x in [-scale, scale]."""

    noise: float = option(0.0, "label noise", within="[0, 1]")
    scale: float = option(1.0, "the inputs' range", within="(0, inf)")

    def check(self):
        if self.noise > self.scale:
            yield f"noise = {self.noise}: at most toy.scale = {self.scale}"


@dataclasses.dataclass(frozen=True)
class ToyRecipe(Recipe):
    """A toy regression."""

    name = "toy"
    toy: ToyConfig = section(ToyConfig)
    training: TrainingConfig = section(
        TrainingConfig, steps=4, epochs=2, batch_size=8, learning_rate=0.01, warmup_steps=0,
        jit_compile=False)


class ToyRun(Run):
    """Linear regression with a data-pipeline hyperparameter (`toy.noise`)
    and a model one (`training.learning_rate`). Records the datasets it is
    asked for and the strategy of each build (shared by its trial runs)."""

    name = "toy"
    recipe_class = ToyRecipe
    search_space = {
        "training.learning_rate": ("float", 1e-3, 1e-1, "log"),
        "toy.noise": ("choice", [0.0, 0.5]),
    }

    def __init__(self, recipe=None, out_dir=None, **kwargs):
        super().__init__(recipe, out_dir, **kwargs)
        self.calls, self.built = [], []

    def check(self):
        return ()

    def prepare(self):
        x = np.linspace(-1, 1, 64, dtype="float32")[:, None]
        self.train_documents = self.validation_documents = x

    def make_dataset(self, split, batch_size, input_context=None):
        toy = self.recipe.toy
        self.calls.append((split, toy.noise))
        x = self.documents(split, input_context) * toy.scale
        rng = np.random.default_rng(0 if split == "train" else 1)
        y = 3.0 * x + toy.noise * rng.normal(size=x.shape).astype("float32")
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if split == "train":
            return dataset.repeat().batch(batch_size, drop_remainder=True)
        return dataset.batch(batch_size, drop_remainder=True)

    def build_model(self):
        self.built.append(tf.distribute.get_strategy())
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(self.recipe.training.learning_rate),
                      loss="mse")
        return model


def toy_hypermodel(search_space=None, strategy=None, **recipe):
    run = ToyRun(ToyRecipe().replace(recipe))
    return RunHyperModel(run, search_space=search_space, strategy=strategy), run


def test_search_space_maps_to_keras_tuner_hyperparameters():
    space = {
        "training.learning_rate": ("float", 1e-4, 1e-2, "log"),
        "training.steps": ("int", 2, 6),
        "toy.noise": ("choice", [0.0, 0.5]),
    }
    hypermodel, run = toy_hypermodel(space)
    hp = keras_tuner.HyperParameters()
    values = hypermodel.declare(hp)
    declared = {p.name: p for p in hp.space}
    lr = declared["training.learning_rate"]
    assert isinstance(lr, keras_tuner.engine.hyperparameters.Float)
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 1e-2, "log")
    steps = declared["training.steps"]
    assert isinstance(steps, keras_tuner.engine.hyperparameters.Int)
    assert (steps.min_value, steps.max_value) == (2, 6)
    assert list(declared["toy.noise"].values) == [0.0, 0.5]
    assert set(values) == set(space)
    recipe = hypermodel.recipe_for({"training.learning_rate": 0.005, "toy.noise": 0.5,
                                    "tuner/epochs": 3})
    assert recipe.training.learning_rate == 0.005 and recipe.toy.noise == 0.5
    assert run.recipe.toy.noise == 0.0  # the base recipe is untouched


def test_trial_values_are_coerced_by_the_recipe():
    hypermodel, _ = toy_hypermodel({"training.learning_rate": ("choice", [1, 0.5]),
                                    "training.steps": ("int", 2, 6)})
    recipe = hypermodel.recipe_for({"training.learning_rate": 1, "training.steps": np.int64(5)})
    assert type(recipe.training.learning_rate) is float and recipe.training.learning_rate == 1.0
    assert type(recipe.training.steps) is int and recipe.training.steps == 5


@pytest.mark.parametrize("space, match", [
    ({"training.learning_rate": ("uniform", 0, 1)}, "must start with one of"),
    ({"training.learning_rate": ("float", 1e-2, 1e-3)}, "low < high"),
    ({"training.learning_rate": ("float", 0.0, 1e-3, "log")}, "needs low > 0"),
    ({"training.learning_rate": ("float", 1e-4, 1e-3, "cubic")}, "'log' or 'linear'"),
    ({"training.steps": ("int", 5, 5)}, "low < high"),
    ({"toy.noise": ("choice", [])}, "at least one"),
    ({"training.learning_rat": ("float", 1e-4, 1e-3)}, "Valid keys: .*training.learning_rate"),
    ({"learning_rate": ("float", 1e-4, 1e-3)}, "not a key of the 'toy' recipe"),
    ({}, "non-empty"),
    # The key's own range, type and choices.
    ({"training.learning_rate": ("float", 1e-4, 2.0, "log")},
     r"training.learning_rate = 2.0: must be in \(0, 1\]"),
    ({"training.warmup_steps": ("int", -5, 10)}, r"warmup_steps = -5: must be in \[0, inf\)"),
    ({"training.warmup_steps": ("float", 0.0, 300.0)}, r"give \('int', ...\) or \('choice'"),
    ({"training.jit_compile": ("int", 0, 1)}, r"give \('choice', ...\)"),
    ({"training.dtype_policy": ("choice", ["float32", "float64"])},
     "dtype_policy = 'float64': must be one of"),
    ({"training.steps": ("choice", [2, 2.5])}, "expects an integer, not a fraction"),
    ({"toy.noise": ("choice", [0.0, 1.5])}, r"toy.noise = 1.5: must be in \[0, 1\]"),
])
def test_bad_search_spaces_fail_early_naming_the_key(space, match):
    with pytest.raises(ValueError, match=match):
        check_search_space(space, ToyRecipe())
    with pytest.raises(ValueError, match=match):  # before the run is prepared
        RunHyperModel(ToyRun(), search_space=space)


def test_a_search_space_beyond_this_machines_memory_fails_early(monkeypatch):
    monkeypatch.setattr(recipe_lib, "machine_memory", lambda: 2 ** 30)
    recipe = run_class("clm").recipe_class()  # sequence_length 128
    with pytest.raises(ValueError, match=r"training.batch_size.*model.sequence_length = 128: "
                                         r"with training.batch_size = 8192 .*GiB"):
        check_search_space({"training.batch_size": ("choice", [8, 8192])}, recipe)


@pytest.mark.parametrize("name", available_runs())
def test_every_registered_run_has_a_valid_search_space(name):
    cls = run_class(name)
    assert check_search_space(dict(cls.search_space), cls.recipe_class()) == cls.search_space


def test_runs_recipes_and_names_are_accepted():
    run = ToyRun()
    hypermodel = RunHyperModel(run)
    assert hypermodel.run is run and run.train_documents is not None  # prepared here
    assert hypermodel.search_space == ToyRun.search_space
    with pytest.raises(ValueError, match="Valid recipes: .*mlm"):
        RunHyperModel("nope")
    with pytest.raises(ValueError, match="no out_dir"):  # refused before reading data
        RunHyperModel(run_class("mlm").recipe_class())
    with pytest.raises(TypeError, match="Received: dict"):
        RunHyperModel({"training": {}})


def test_a_trial_whose_values_make_an_invalid_recipe_fails():
    """Each value is valid alone; together they break toy.noise <= toy.scale."""
    hypermodel, _ = toy_hypermodel({"toy.noise": ("choice", [0.0, 0.5]),
                                    "toy.scale": ("choice", [1.0, 0.25])})
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values.update({"toy.noise": 0.5, "toy.scale": 0.25})
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="toy.noise = 0.5: at most"):
        hypermodel.build(hp)


def test_fit_honours_data_hyperparameters_and_scores_on_base_validation():
    hypermodel, run = toy_hypermodel()
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values["toy.noise"] = 0.5
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model)
    assert len(history.history["val_loss"]) == 2  # training.epochs rounds
    assert ("train", 0.5) in run.calls  # the trial's noise reaches the pipeline
    assert ("validation", 0.0) in run.calls  # scored on the base recipe's data
    # A Hyperband-style budget overrides the rounds.
    assert len(hypermodel.fit(hp, hypermodel.build(hp), epochs=1).history["val_loss"]) == 1


def test_a_trial_trains_exactly_its_steps_when_the_rounds_do_not_divide_them():
    hypermodel, _ = toy_hypermodel(**{"training.steps": 5, "training.epochs": 2})
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model)  # rounds of 3 steps, the last one 2
    assert len(history.history["val_loss"]) == 2
    assert int(model.optimizer.iterations) == 5
    # A Hyperband budget past the rounds stops at training.steps too (the schedule ends there).
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, epochs=4)
    assert int(model.optimizer.iterations) == 5


def test_diverging_trial_fails_instead_of_scoring_nan():
    hypermodel, _ = toy_hypermodel({"training.learning_rate": ("choice", [1.0])},
                                   **{"toy.scale": 1000.0})
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="non-finite"):
        hypermodel.fit(hp, model)


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_search_reports_the_best_trial(tmp_path, kind):
    if kind == "bayesian":
        pytest.importorskip("sklearn", reason="KerasTuner's BayesianOptimization needs scikit-learn")
    hypermodel, _ = toy_hypermodel()
    tuner = make_tuner(kind, hypermodel, 3, tmp_path, "toy", seed=1)
    tuner.search(verbose=0)
    rows = trial_rows(tuner, hypermodel.search_space)
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    for row in rows:  # KerasTuner's score is the trial's best round
        assert row["val_loss"] == pytest.approx(min(row["val_loss_per_round"]))
        assert row["final_val_loss"] == row["val_loss_per_round"][-1]
    best = min(rows, key=lambda r: r["val_loss"])
    assert rows[0] is best
    assert tuner.oracle.get_best_trials(1)[0].trial_id == best["trial"]
    best_hp = tuner.get_best_hyperparameters(1)[0].values
    assert best_hp["training.learning_rate"] == best["training.learning_rate"]


def test_search_under_mirrored_strategy(tmp_path, mirrored_strategy):
    hypermodel, run = toy_hypermodel(strategy=mirrored_strategy)
    tuner = make_tuner("random", hypermodel, 2, tmp_path, "toy",
                       distribution_strategy=mirrored_strategy)
    tuner.search(verbose=0)
    assert run.built and all(s is mirrored_strategy for s in run.built)
    rows = trial_rows(tuner, hypermodel.search_space)
    assert all(r["status"] == "COMPLETED" and math.isfinite(r["val_loss"]) for r in rows)


def test_bad_tuner_arguments():
    hypermodel, _ = toy_hypermodel()
    with pytest.raises(ValueError, match="Valid tuners: random, bayesian, hyperband"):
        make_tuner("grid", hypermodel, 3, "/tmp/x", "toy")
    with pytest.raises(ValueError, match="max_trials must be >= 1"):
        make_tuner("random", hypermodel, 0, "/tmp/x", "toy")
    one_round, _ = toy_hypermodel(**{"training.epochs": 1})
    with pytest.raises(ValueError, match="training.epochs >= 2"):
        make_tuner("hyperband", one_round, 3, "/tmp/x", "toy")
