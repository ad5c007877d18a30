"""RunHyperModel and the search helpers, on a toy run module (fast) and
on the bundled recipes (search spaces, TOML round trip)."""

import math
import tomllib
import types

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import recipe as recipe_lib
from kobjectives.tuning import CPCHyperModel
from kobjectives.tuning import MaskedLMHyperModel
from kobjectives.tuning import RunHyperModel
from kobjectives.tuning import SimCSEHyperModel
from kobjectives.tuning import apply_values
from kobjectives.tuning import check_search_space
from kobjectives.tuning import dumps_recipe
from kobjectives.tuning import hypermodel_for
from kobjectives.tuning import make_tuner
from kobjectives.tuning.search import trial_rows


def toy_run():
    """A run module following the contract: linear regression y = 3x + noise,
    with a data-pipeline hyperparameter (`data.noise`) and a model one
    (`training.learning_rate`). It records what it was asked for."""
    run = types.ModuleType("toy_run")
    run.calls = []
    run.SEARCH_SPACE = {
        "training.learning_rate": ("float", 1e-3, 1e-1, "log"),
        "data.noise": ("choice", [0.0, 0.5]),
    }

    def prepare(recipe, out_dir, **kwargs):
        return {"x": np.linspace(-1, 1, 64, dtype="float32")[:, None]}

    def make_dataset(recipe, prepared, split, batch_size, input_context=None):
        run.calls.append((split, recipe["data"]["noise"]))
        x = prepared["x"]
        rng = np.random.default_rng(0 if split == "train" else 1)
        y = 3.0 * x + recipe["data"]["noise"] * rng.normal(size=x.shape).astype("float32")
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if split == "train":
            return dataset.repeat().batch(batch_size, drop_remainder=True)
        return dataset.batch(batch_size, drop_remainder=True)

    def build_model(recipe, prepared):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(
            optimizer=keras.optimizers.SGD(recipe["training"]["learning_rate"]), loss="mse"
        )
        return model

    run.prepare, run.make_dataset, run.build_model = prepare, make_dataset, build_model
    return run


def toy_recipe(**training):
    return {
        "objective": "toy",
        "data": {"noise": 0.0},
        "training": {
            "learning_rate": 0.01, "steps": 4, "epochs": 2, "batch_size": 8, "seed": 0,
            "dtype_policy": "float32", "jit_compile": False, **training,
        },
    }


def test_search_space_maps_to_keras_tuner_hyperparameters():
    run = toy_run()
    run.SEARCH_SPACE = {
        "training.learning_rate": ("float", 1e-4, 1e-2, "log"),
        "training.steps": ("int", 2, 6),
        "data.noise": ("choice", [0.0, 0.5]),
    }
    hypermodel = RunHyperModel(toy_recipe(), {}, run=run)
    hp = keras_tuner.HyperParameters()
    values = hypermodel.declare(hp)
    space = {p.name: p for p in hp.space}
    lr = space["training.learning_rate"]
    assert isinstance(lr, keras_tuner.engine.hyperparameters.Float)
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 1e-2, "log")
    steps = space["training.steps"]
    assert isinstance(steps, keras_tuner.engine.hyperparameters.Int)
    assert (steps.min_value, steps.max_value) == (2, 6)
    assert list(space["data.noise"].values) == [0.0, 0.5]
    assert set(values) == set(run.SEARCH_SPACE)
    recipe = hypermodel.recipe_for({"training.learning_rate": 0.005, "data.noise": 0.5,
                                    "tuner/epochs": 3})
    assert recipe["training"]["learning_rate"] == 0.005 and recipe["data"]["noise"] == 0.5
    assert hypermodel.recipe["data"]["noise"] == 0.0  # the base recipe is untouched


def test_apply_values_keeps_the_recipe_types():
    recipe = toy_recipe()
    out = apply_values(recipe, {"training.learning_rate": 1, "training.steps": np.int64(5)})
    assert isinstance(out["training"]["learning_rate"], float)
    assert out["training"]["steps"] == 5 and type(out["training"]["steps"]) is int


@pytest.mark.parametrize("space, match", [
    ({"training.learning_rate": ("uniform", 0, 1)}, "must start with one of"),
    ({"training.learning_rate": ("float", 1e-2, 1e-3)}, "low < high"),
    ({"training.learning_rate": ("float", 0.0, 1e-3, "log")}, "needs low > 0"),
    ({"training.learning_rate": ("float", 1e-4, 1e-3, "cubic")}, "'log' or 'linear'"),
    ({"training.steps": ("int", 5, 5)}, "low < high"),
    ({"data.noise": ("choice", [])}, "at least one"),
    ({"training.learning_rat": ("float", 1e-4, 1e-3)}, "not in the recipe"),
    ({"learning_rate": ("float", 1e-4, 1e-3)}, "section.key"),
    ({}, "non-empty"),
])
def test_bad_search_spaces_fail_early_naming_the_key(space, match):
    with pytest.raises(ValueError, match=match):
        check_search_space(space, toy_recipe())


def test_run_module_without_the_contract_is_refused():
    partial = types.ModuleType("kobjectives.runs.halfway")
    partial.prepare = lambda *a, **k: {}
    with pytest.raises(ValueError, match="lacks make_dataset, build_model"):
        RunHyperModel(toy_recipe(), {}, run=partial)


def test_named_hypermodels():
    assert hypermodel_for("mlm") is MaskedLMHyperModel
    assert hypermodel_for("cpc") is CPCHyperModel
    assert hypermodel_for("simcse") is SimCSEHyperModel
    with pytest.raises(ValueError, match="Valid: .*mlm"):
        hypermodel_for("nope")
    with pytest.raises(ValueError, match="objective 'mlm'"):
        MaskedLMHyperModel(recipe_lib.load_recipe("cpc"), {})


def test_every_registered_run_has_a_valid_search_space():
    """Each run module in RUNNERS that follows the contract declares a
    search space whose keys exist in its bundled recipe."""
    from kobjectives.runs import RUNNERS
    from kobjectives.runs import runner_module

    by_objective = {}
    for name in recipe_lib.available_recipes():
        by_objective.setdefault(recipe_lib.load_recipe(name).get("objective"), name)
    checked = 0
    for objective in RUNNERS:
        run = runner_module(objective)
        if objective not in by_objective or not hasattr(run, "SEARCH_SPACE"):
            continue
        check_search_space(run.SEARCH_SPACE, recipe_lib.load_recipe(by_objective[objective]))
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", recipe_lib.available_recipes())
def test_recipe_toml_round_trip(name):
    recipe = recipe_lib.load_recipe(name)
    assert tomllib.loads(dumps_recipe(recipe, header="a\nb")) == recipe


def test_fit_honours_data_hyperparameters_and_scores_on_base_validation():
    run = toy_run()
    hypermodel = RunHyperModel(toy_recipe(), run.prepare(None, None), run=run)
    hp = keras_tuner.HyperParameters()
    hypermodel.declare(hp)
    hp.values["data.noise"] = 0.5
    model = hypermodel.build(hp)
    history = hypermodel.fit(hp, model)
    assert len(history.history["val_loss"]) == 2  # training.epochs rounds
    assert ("train", 0.5) in run.calls  # the trial's noise reaches the pipeline
    assert ("validation", 0.0) in run.calls  # scored on the base recipe's data
    # A Hyperband-style budget overrides the rounds.
    assert len(hypermodel.fit(hp, hypermodel.build(hp), epochs=1).history["val_loss"]) == 1


def test_diverging_trial_fails_instead_of_scoring_nan():
    run = toy_run()
    hypermodel = RunHyperModel(toy_recipe(), run.prepare(None, None), run=run,
                               search_space={"training.learning_rate": ("choice", [1e6])})
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="non-finite"):
        hypermodel.fit(hp, model)


@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_search_reports_the_best_trial(tmp_path, kind):
    if kind == "bayesian":
        pytest.importorskip("sklearn", reason="KerasTuner's BayesianOptimization needs scikit-learn")
    run = toy_run()
    hypermodel = RunHyperModel(toy_recipe(), run.prepare(None, None), run=run)
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
    run = toy_run()
    hypermodel = RunHyperModel(toy_recipe(), run.prepare(None, None), run=run,
                               strategy=mirrored_strategy)
    built = []
    original = run.build_model

    def build_model(recipe, prepared):
        built.append(tf.distribute.get_strategy())
        return original(recipe, prepared)

    run.build_model = build_model
    tuner = make_tuner("random", hypermodel, 2, tmp_path, "toy",
                       distribution_strategy=mirrored_strategy)
    tuner.search(verbose=0)
    assert built and all(s is mirrored_strategy for s in built)
    rows = trial_rows(tuner, hypermodel.search_space)
    assert all(r["status"] == "COMPLETED" and math.isfinite(r["val_loss"]) for r in rows)


def test_bad_tuner_arguments():
    run = toy_run()
    hypermodel = RunHyperModel(toy_recipe(), {}, run=run)
    with pytest.raises(ValueError, match="Valid tuners: random, bayesian, hyperband"):
        make_tuner("grid", hypermodel, 3, "/tmp/x", "toy")
    with pytest.raises(ValueError, match="max_trials must be >= 1"):
        make_tuner("random", hypermodel, 0, "/tmp/x", "toy")
    one_round = RunHyperModel(toy_recipe(epochs=1), {}, run=run)
    with pytest.raises(ValueError, match="training.epochs >= 2"):
        make_tuner("hyperband", one_round, 3, "/tmp/x", "toy")
