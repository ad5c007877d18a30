"""`kobjectives tune` from the command line, as a new user runs it, and its
best recipe trained with `kobjectives train best_recipe.toml`."""

import csv
import json
import subprocess
import sys
import tomllib

import pytest

from kobjectives import cli
from kobjectives.runs import load_recipe
from kobjectives.tuning import tune

# Tiny, so that three trials fit the default suite; XLA compilation is tested
# in tests/objectives.
TINY = [
    "--steps", "2", "--batch-size", "4", "--sequence-length", "16",
    "--set", "data.max_documents=200", "--set", "tokenizer.vocabulary_size=300",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "masking.mask_selection_length=4", "--set", "training.jit_compile=false",
]


# A whole search (about 40 s): tests/tuning/test_hypermodel.py searches in the default suite.
@pytest.mark.slow
def test_tune_in_process_reports_the_best_trial(tmp_path, capsys):
    """The default-suite version: `cli.main` in this process, one round."""
    out = tmp_path / "tune"
    args = ["tune", "mlm", "--max-trials", "3", *TINY, "--set", "training.epochs=1",
            "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    best = min(rows, key=lambda r: r["val_loss"])
    assert rows[0] == best
    assert json.loads((out / "tuning.json").read_text())["best_trial"] == best["trial"]
    assert f"best: trial {best['trial']}, val_loss {best['val_loss']:.4f}" in printed
    # best_recipe.toml is a recipe file (`train FILE`) and a `--config` (recipe
    # resolution only here; the slow test below trains it).
    best_recipe = out / "best_recipe.toml"
    for args in (["train", str(best_recipe)], ["train", "mlm", "--config", str(best_recipe)]):
        recipe = cli._load_recipe(cli.build_parser().parse_args(args))
        assert recipe.training.learning_rate == best["training.learning_rate"]
        assert recipe.masking.mask_selection_rate == best["masking.mask_selection_rate"]
        assert recipe.model.dropout == best["model.dropout"]
        assert recipe.training.steps == 2  # the flags of the search are kept


@pytest.mark.slow
def test_tune_cli_reports_the_best_trial_and_its_recipe_trains(tmp_path, capsys):
    out = tmp_path / "tune"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "tune", "mlm", "--tuner", "random",
         "--max-trials", "3", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    for row in rows:
        assert row["rounds"] == 2
        assert row["val_loss"] == min(row["val_loss_per_round"])
    best = min(rows, key=lambda r: r["val_loss"])
    assert rows[0] == best  # the table is sorted, best first
    summary = json.loads((out / "tuning.json").read_text())
    assert summary["best_trial"] == best["trial"]
    assert summary["best_val_loss"] == best["val_loss"]
    assert f"best: trial {best['trial']}, val_loss {best['val_loss']:.4f}" in result.stdout
    with open(out / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert float(table[0]["val_loss"]) == best["val_loss"]

    # best_recipe.toml: the full recipe with the best trial's values.
    with open(out / "best_recipe.toml", "rb") as f:
        best_recipe = tomllib.load(f)
    assert best_recipe["recipe"] == "mlm"
    for key in summary["best_hyperparameters"]:
        section, name = key.split(".")
        assert best_recipe[section][name] == best[key]
    assert best_recipe["training"]["steps"] == 2  # the flags of the search are kept
    assert (out / "vocab.txt").is_file() and any((out / "logs").rglob("events.out.tfevents*"))

    # kobjectives train FILE runs it; flags still win.
    run = tmp_path / "run"
    assert cli.main(["train", str(out / "best_recipe.toml"),
                     "--steps", "1", "--set", "training.epochs=1", "--out", str(run)]) == 0
    trained = json.loads((run / "recipe.json").read_text())
    for key in summary["best_hyperparameters"]:
        section, name = key.split(".")
        assert trained[section][name] == best[key]
    assert trained["training"]["steps"] == 1
    assert json.loads((run / "metrics.json").read_text())["steps"] == 1
    capsys.readouterr()


def test_tune_bad_arguments_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "t")
    assert cli.main(["tune", "mlm", "--max-trials", "0", "--out", out]) == 2
    assert "--max-trials must be >= 1" in capsys.readouterr().err
    assert cli.main(["tune", "mlm", "--set", "training.stpes=3", "--out", out]) == 2
    assert "Valid keys" in capsys.readouterr().err
    assert cli.main(["tune", "nope", "--out", out]) == 2
    assert "Valid recipes:" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"training.learning_rate = 2.0: must be in \(0, 1\]"):
        tune(load_recipe("mlm"), out, search_space={
            "training.learning_rate": ("float", 1e-4, 2.0, "log")})
    with pytest.raises(TypeError, match="must be a kobjectives.recipe.Recipe"):
        tune("mlm", out)
    assert not (tmp_path / "t").exists()  # nothing was prepared
