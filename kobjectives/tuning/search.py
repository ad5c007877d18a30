"""`kobjectives tune`: a KerasTuner search over a recipe's hyperparameters.

`tune(recipe, out_dir, tuner="random", max_trials=3)` prepares the run once
(documents, tokenizer), searches with KerasTuner against `val_loss`, and
writes into `out_dir`: `trials.csv`, `trials.md` and `trials.json` (one row
per trial, best first), `best_recipe.toml` (the full recipe with the best
trial's values, for `kobjectives train NAME --config best_recipe.toml`),
`best_hyperparameters.json`, `logs/` (TensorBoard, one folder per trial),
`vocab.txt` and `tuner/` (KerasTuner's own state).
"""

import csv
import json
import math
import pathlib
import time

import keras
import keras_tuner

from kobjectives.tuning.hypermodel import hypermodel_for

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
    """A KerasTuner tuner minimizing `val_loss`.

    Args:
        kind: `"random"` (`RandomSearch`), `"bayesian"`
            (`BayesianOptimization`) or `"hyperband"` (`Hyperband`, whose
            budget unit is a round of `training.steps / training.epochs`
            steps; `max_epochs` defaults to `training.epochs`; `max_trials`
            caps the number of trials it runs).
        hypermodel: a `RunHyperModel`.
        max_trials: int >= 1.
        directory, project_name: where KerasTuner keeps its state.
        seed: the tuner's seed (reproducible proposals).
        distribution_strategy: passed to the tuner (models are built in its
            scope); None for the default strategy.
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
    epochs = max_epochs or int(hypermodel.recipe["training"]["epochs"])
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


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Cannot write a non-finite value ({value}) to a recipe.")
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"Cannot write a {type(value).__name__} to a recipe TOML.")


def dumps_recipe(recipe, header=None):
    """A recipe dict (top-level values, then one table per section) as TOML
    text that `tomllib` reads back to the same dict."""
    lines = [f"# {line}" for line in (header or "").splitlines()]
    for key, value in recipe.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for section, table in recipe.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            for key, value in table.items():
                if isinstance(value, dict):
                    raise ValueError(f"Nested table {section}.{key} is not a recipe value.")
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def tune(
    recipe, out_dir, tuner="random", max_trials=3, data=None, tfds=None, data_dir=None,
    strategy="auto", search_space=None, seed=None, log=print, verbose=0,
):
    """Runs a KerasTuner search for a recipe; returns a summary dict.

    Args:
        recipe: the base recipe dict (`kobjectives.recipe.load_recipe`); its
            `objective` selects the run module and the HyperModel.
        out_dir: the tuning folder (see the module docstring).
        tuner: one of `TUNERS`.
        max_trials: number of trials.
        data, tfds, data_dir: the text source, as for `kobjectives train`.
        strategy: a strategy name (`kobjectives.distribute.STRATEGIES`) or a
            `tf.distribute.Strategy`; models are built and trained under it.
        search_space: overrides the run module's `SEARCH_SPACE`.
        seed: the tuner's seed (default: `training.seed`).

    Returns:
        dict with `best_trial`, `best_val_loss`, `best_hyperparameters`,
        `trials` (the rows, best first) and the written paths.
    """
    import tensorflow as tf

    from kobjectives.distribute import resolve_strategy
    from kobjectives.runs import common
    from kobjectives.runs import runner_module

    started = time.time()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective = recipe.get("objective")
    runner = runner_module(objective)
    hypermodel_class = hypermodel_for(objective)
    if tuner not in TUNERS:
        raise ValueError(f"Unknown tuner {tuner!r}. Valid tuners: {', '.join(TUNERS)}.")
    if int(max_trials) < 1:
        raise ValueError(f"--max-trials must be >= 1. Received: {max_trials}.")
    common.write_json(out_dir / "base_recipe.json", recipe)
    keras.utils.set_random_seed(int(recipe["training"]["seed"]))

    prepared = runner.prepare(recipe, out_dir, data=data, tfds=tfds, data_dir=data_dir, log=log)
    keras.mixed_precision.set_global_policy(recipe["training"]["dtype_policy"])
    if isinstance(strategy, tf.distribute.Strategy):
        resolved = strategy
    else:
        resolved = resolve_strategy(strategy)
    hypermodel = hypermodel_class(recipe, prepared, run=runner, search_space=search_space,
                                  strategy=resolved)
    hypermodel.log = log
    # The default (no-op) strategy needs no scope; any other is the tuner's.
    distributed = None if resolved is tf.distribute.get_strategy() else resolved
    search = make_tuner(
        tuner, hypermodel, max_trials, out_dir / "tuner", objective,
        seed=int(recipe["training"]["seed"] if seed is None else seed),
        distribution_strategy=distributed,
    )
    log(f"tuning {objective} ({type(hypermodel).__name__}, {tuner} search, {max_trials} "
        f"trials, strategy {type(resolved).__name__} x{resolved.num_replicas_in_sync}) over: "
        + ", ".join(hypermodel.search_space))
    search.search(callbacks=[keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs"))],
                  verbose=verbose)

    rows = trial_rows(search, hypermodel.search_space)
    write_results(rows, out_dir)
    completed = [r for r in rows if r["status"] == "COMPLETED" and r["val_loss"] is not None]
    if not completed:
        raise RuntimeError(
            f"No trial completed (all failed or diverged); see {out_dir / 'tuner'}. "
            "Narrow the search space (e.g. lower learning rates)."
        )
    best_hp = search.get_best_hyperparameters(1)[0]
    best_trial = search.oracle.get_best_trials(1)[0]
    best_values = {k: v for k, v in best_hp.values.items() if k in hypermodel.search_space}
    best_recipe = hypermodel.recipe_for(best_values)
    header = (
        f"Best of a {tuner} search ({len(rows)} trials) by `kobjectives tune {objective}`:\n"
        f"trial {best_trial.trial_id}, val_loss {best_trial.score:.6g}.\n"
        f"Train it with: kobjectives train {objective} --config {out_dir / 'best_recipe.toml'}"
    )
    (out_dir / "best_recipe.toml").write_text(dumps_recipe(best_recipe, header))
    common.write_json(out_dir / "best_hyperparameters.json", best_values)
    log(results_table(rows))
    log(f"best: trial {best_trial.trial_id}, val_loss {best_trial.score:.4f} with "
        + ", ".join(f"{k}={_format(v)}" for k, v in best_values.items()))
    log(f"best recipe: {out_dir / 'best_recipe.toml'} "
        f"(kobjectives train {objective} --config {out_dir / 'best_recipe.toml'})")
    summary = {
        "objective": objective,
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
    common.write_json(out_dir / "tuning.json", summary)
    return summary
