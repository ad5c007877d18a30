"""`kobjectives tune`: a KerasTuner search over a recipe's hyperparameters.

`tune(recipe, out_dir, tuner="random", max_trials=3)` prepares the recipe's
`Run` once (documents, tokenizer), searches with KerasTuner against
`val_loss`, and writes into `out_dir`: `trials.csv`, `trials.md` and
`trials.json` (one row per trial, best first), `best_recipe.toml` (the full
recipe with the best trial's values, `Recipe.to_toml`: run it with
`kobjectives train best_recipe.toml`, or `kobjectives train NAME --config
best_recipe.toml`), `best_hyperparameters.json`, `tuning.json`,
`base_recipe.json`, `logs/` (TensorBoard, one folder per trial), `vocab.txt`
and `tuner/` (KerasTuner's own state).
"""

import csv
import json
import math
import pathlib
import time

import keras
import keras_tuner

from kobjectives.tuning.hypermodel import RunHyperModel
from kobjectives.tuning.hypermodel import check_search_space

TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_loss"


class _RecordsRounds:
    """Keeps every trial's per-round Keras history (`round_histories`):
    the oracle itself stores only the best round. The search space is
    declared without building a model (it has no conditional
    hyperparameters), where KerasTuner would build one outside the
    strategy's scope."""

    def _populate_initial_space(self):
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial, *args, **kwargs):
        results = super().run_trial(trial, *args, **kwargs)
        if not hasattr(self, "round_histories"):
            self.round_histories = {}
        self.round_histories[trial.trial_id] = [
            dict(r.history) for r in results if hasattr(r, "history")
        ]
        return results


class RandomSearch(_RecordsRounds, keras_tuner.RandomSearch):
    pass


class BayesianOptimization(_RecordsRounds, keras_tuner.BayesianOptimization):
    pass


class Hyperband(_RecordsRounds, keras_tuner.Hyperband):
    pass


def make_tuner(kind, hypermodel, max_trials, directory, project_name, seed=0,
               distribution_strategy=None, max_epochs=None, overwrite=True):
    """A KerasTuner tuner minimizing `val_loss`, which records every trial's
    per-round history (for `trial_rows`).

    Args:
        kind: `"random"` (`RandomSearch`), `"bayesian"`
            (`BayesianOptimization`) or `"hyperband"` (`Hyperband`, whose
            budget unit is a round of `training.steps / training.epochs`
            steps; `max_epochs` defaults to the run's rounds (`Run.rounds()`, `training.epochs` of them); `max_trials`
            caps the number of trials it runs).
        hypermodel: a `RunHyperModel`.
        max_trials: int >= 1.
        directory, project_name: where KerasTuner keeps its state.
        seed: the tuner's seed (reproducible proposals).
        distribution_strategy: passed to the tuner (models are built in its
            scope); None for the default strategy.
        max_epochs: Hyperband's most rounds per trial.
        overwrite: start a new search rather than reload `directory`'s.

    Raises:
        ValueError: an unknown `kind`, `max_trials` < 1, or Hyperband with
            `training.epochs` < 2.

    Example:

    ```python
    tuner = make_tuner("random", RunHyperModel(run), 4, "runs/tune", "mlm")
    tuner.search(verbose=0)
    rows = trial_rows(tuner, tuner.hypermodel.search_space)
    ```
    """
    if kind not in TUNERS:
        raise ValueError(f"Unknown tuner {kind!r}. Valid tuners: {', '.join(TUNERS)}.")
    if int(max_trials) < 1:
        raise ValueError(f"max_trials must be >= 1. Received: {max_trials}.")
    common = dict(
        hypermodel=hypermodel, objective=keras_tuner.Objective(OBJECTIVE, "min"),
        seed=seed, directory=str(directory), project_name=project_name,
        overwrite=overwrite, distribution_strategy=distribution_strategy,
        max_consecutive_failed_trials=max(3, int(max_trials)),
    )
    if kind == "random":
        return RandomSearch(max_trials=int(max_trials), **common)
    if kind == "bayesian":
        try:
            import sklearn  # noqa: F401  (KerasTuner's Gaussian process needs it)
        except ImportError:
            raise ValueError(
                "The bayesian tuner needs scikit-learn: `pip install scikit-learn` "
                "(or use --tuner random / hyperband)."
            ) from None
        return BayesianOptimization(
            max_trials=int(max_trials), num_initial_points=min(2, int(max_trials)), **common
        )
    epochs = max_epochs or hypermodel.run.rounds()[0]
    if epochs < 2:
        raise ValueError(
            "The hyperband tuner allocates rounds (epochs) to trials: set "
            "training.epochs >= 2 (e.g. --set training.epochs=4)."
        )
    tuner = Hyperband(max_epochs=epochs, factor=2, **common)
    tuner.oracle.max_trials = int(max_trials)
    return tuner


def trial_rows(tuner, search_space):
    """One dict per finished trial, best `val_loss` first (failed last):
    `trial`, `status`, `val_loss` (the trial's best round: KerasTuner's
    score), `final_val_loss` (its last round), `rounds` (rounds trained),
    `val_loss_per_round`, then the hyperparameter values."""
    rows = []
    recorded = getattr(tuner, "round_histories", {})
    for trial in tuner.oracle.trials.values():
        executions = recorded.get(trial.trial_id) or [{}]
        history = [float(v) for v in executions[-1].get(OBJECTIVE, [])]
        row = {
            "trial": trial.trial_id,
            "status": trial.status,
            "val_loss": None if trial.score is None else float(trial.score),
            "final_val_loss": float(history[-1]) if history else None,
            "rounds": len(history),
            "val_loss_per_round": history,
        }
        for key in search_space:
            value = trial.hyperparameters.values.get(key)
            row[key] = value.item() if hasattr(value, "item") else value
        rows.append(row)

    def order(row):
        score = row["val_loss"]
        return (score is None or not math.isfinite(score), score if score is not None else 0.0)

    return sorted(rows, key=order)


def _format(value):
    if isinstance(value, (list, tuple)):
        return " ".join(_format(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def results_table(rows):
    """The trials as a Markdown table (best first)."""
    if not rows:
        return "(no trials)\n"
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_format(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(rows, out_dir):
    out_dir = pathlib.Path(out_dir)
    (out_dir / "trials.md").write_text(results_table(rows))
    (out_dir / "trials.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(
            {k: " ".join(map(repr, v)) if isinstance(v, list) else v for k, v in r.items()}
            for r in rows
        )


def tune(recipe, out_dir, tuner="random", max_trials=3, strategy="auto", search_space=None,
         seed=None, log=print, verbose=0):
    """Runs a KerasTuner search over a recipe's hyperparameters; returns a
    summary dict (also written to `out_dir/tuning.json`).

    Args:
        recipe: the base `kobjectives.recipe.Recipe` (e.g. from
            `kobjectives.runs.load_recipe`): its name selects the `Run`, its
            keys (`data.files`, `data.tfds`, ...) the data; every trial
            starts from it.
        out_dir: the tuning folder (see the module docstring).
        tuner: one of `TUNERS`.
        max_trials: number of trials (>= 1).
        strategy: a strategy name (`kobjectives.distribute.STRATEGIES`) or a
            `tf.distribute.Strategy`; models are built and trained under it.
        search_space: overrides the run's `search_space`.
        seed: the tuner's seed (default: `training.seed`).
        log: a print-like function.
        verbose: Keras' verbosity for each trial's `fit`.

    Returns:
        dict with `recipe`, `tuner`, `max_trials`, `best_trial`,
        `best_val_loss`, `best_hyperparameters`, `trials` (the rows, best
        first), `wall_seconds` and the written `files`.

    Raises:
        ValueError: an unknown tuner, `max_trials` < 1, an invalid search
            space; all before any data is read.
        kobjectives.recipe.RecipeError: an invalid recipe.
        RuntimeError: no trial completed.

    Example:

    ```python
    from kobjectives.runs import load_recipe
    from kobjectives.tuning import tune

    summary = tune(load_recipe("mlm", overrides={"training.steps": 200}), "runs/tune-mlm",
                   tuner="random", max_trials=4)
    # then: kobjectives train runs/tune-mlm/best_recipe.toml --steps 1500
    ```
    """
    import tensorflow as tf

    from kobjectives.recipe import Recipe
    from kobjectives.runs import run_class
    from kobjectives.runs.run import write_json

    started = time.time()
    if not isinstance(recipe, Recipe):
        raise TypeError(
            "recipe must be a kobjectives.recipe.Recipe (kobjectives.runs.load_recipe(NAME)). "
            f"Received: {type(recipe).__name__}.")
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner {tuner!r}. Valid tuners: {', '.join(TUNERS)}.")
    if int(max_trials) < 1:
        raise ValueError(f"--max-trials must be >= 1. Received: {max_trials}.")
    out_dir = pathlib.Path(out_dir)
    run = run_class(recipe.name)(recipe, out_dir, strategy=strategy, log=log)
    search_space = check_search_space(  # before any data is read
        dict(run.search_space if search_space is None else search_space), run.recipe)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "base_recipe.json", recipe.to_dict())
    keras.utils.set_random_seed(recipe.training.seed)
    run.prepare()
    run.strategy = run.resolve_strategy()
    hypermodel = RunHyperModel(run, search_space=search_space, strategy=run.strategy, log=log)
    # The default (no-op) strategy needs no scope; any other is the tuner's.
    default = run.strategy is tf.distribute.get_strategy()
    search = make_tuner(
        tuner, hypermodel, max_trials, out_dir / "tuner", recipe.name,
        seed=recipe.training.seed if seed is None else int(seed),
        distribution_strategy=None if default else run.strategy,
    )
    log(f"tuning {recipe.name} ({tuner} search, {max_trials} trials, strategy "
        f"{type(run.strategy).__name__} x{run.strategy.num_replicas_in_sync}) over: "
        + ", ".join(hypermodel.search_space))
    search.search(callbacks=[keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"))],
                  verbose=verbose)

    rows = trial_rows(search, hypermodel.search_space)
    write_results(rows, out_dir)
    completed = [r for r in rows if r["status"] == "COMPLETED" and r["val_loss"] is not None]
    if not completed:
        raise RuntimeError(
            f"No trial completed (all failed or diverged); see {out_dir / 'tuner'}. "
            "Narrow the search space (e.g. lower learning rates).")
    best_hp = search.get_best_hyperparameters(1)[0]
    best_trial = search.oracle.get_best_trials(1)[0]
    best_values = {k: v for k, v in best_hp.values.items() if k in hypermodel.search_space}
    best_path = out_dir / "best_recipe.toml"
    header = (
        f"# Best of a {tuner} search ({len(rows)} trials) by `kobjectives tune {recipe.name}`:\n"
        f"# trial {best_trial.trial_id}, val_loss {best_trial.score:.6g}.\n"
        f"# Train it with: kobjectives train {best_path}\n")
    best_path.write_text(header + hypermodel.recipe_for(best_values).to_toml())
    write_json(out_dir / "best_hyperparameters.json", best_values)
    log(results_table(rows))
    log(f"best: trial {best_trial.trial_id}, val_loss {best_trial.score:.4f} with "
        + ", ".join(f"{k}={_format(v)}" for k, v in best_values.items()))
    log(f"best recipe: {best_path} (kobjectives train {best_path})")
    summary = {
        "recipe": recipe.name,
        "tuner": tuner,
        "max_trials": int(max_trials),
        "best_trial": best_trial.trial_id,
        "best_val_loss": float(best_trial.score),
        "best_hyperparameters": best_values,
        "trials": rows,
        "wall_seconds": round(time.time() - started, 1),
        "files": {name: str(out_dir / name) for name in (
            "trials.csv", "trials.md", "trials.json", "best_recipe.toml",
            "best_hyperparameters.json")},
    }
    write_json(out_dir / "tuning.json", summary)
    return summary
