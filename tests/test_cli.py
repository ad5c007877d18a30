import json
import subprocess
import sys

import pytest

from kobjectives import cli

TINY = [
    "--steps", "6", "--batch-size", "8", "--sequence-length", "32",
    "--set", "data.max_documents=400", "--set", "tokenizer.vocabulary_size=600",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "masking.mask_selection_length=6",
]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", *args],
        capture_output=True, text=True, timeout=600,
    )


def test_help_lists_commands_and_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "recipes" in out and "tune" in out and "export" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--tfds", "--backbone", "--steps", "--out", "--strategy", "--seed", "--set",
                 "--config"):
        assert flag in out
    with pytest.raises(SystemExit):
        cli.main(["tune", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tuner", "--max-trials", "--steps", "--out", "--strategy", "--set", "--data",
                 "random", "bayesian", "hyperband", "best_recipe.toml"):
        assert flag in out
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    assert "RUN_DIR" in out and "--out" in out and "tensorflow_text" in out


def test_bad_names_list_the_valid_ones(capsys):
    assert cli.main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Valid recipes:" in err and "mlm" in err
    assert cli.main(["train", "mlm", "--set", "training.stpes=3"]) == 2
    assert "Valid keys" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "mlm", "--backbone", "gpt9"])
    assert "bert_tiny" in capsys.readouterr().err


def test_empty_data_file_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert cli.main(["train", "mlm", "--data", str(empty), "--out", str(tmp_path / "run")]) == 2
    assert "empty" in capsys.readouterr().err


def test_train_mlm_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "mlm", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_perplexity", "val_masked_accuracy", "unigram_masked_accuracy"):
        assert isinstance(metrics[key], float)
    assert metrics["steps"] == 6
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "vocab.txt").is_file() and (out / "model.keras").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert any((out / "logs").rglob("events.out.tfevents*"))
    assert "unigram baseline" in result.stdout


def test_config_file_overrides_and_is_checked(tmp_path, capsys):
    from kobjectives import recipe as recipe_lib

    partial = tmp_path / "partial.toml"
    partial.write_text('[training]\nlearning_rate = 1\nsteps = 7\n[masking]\nstrategy = "span"\n')
    args = cli.build_parser().parse_args(
        ["train", "mlm", "--config", str(partial), "--steps", "9"])
    recipe = cli._load_recipe(args)
    base = recipe_lib.load_recipe("mlm")
    assert recipe["training"]["learning_rate"] == 1.0
    assert isinstance(recipe["training"]["learning_rate"], float)
    assert recipe["masking"]["strategy"] == "span"
    assert recipe["training"]["steps"] == 9  # flags win over --config
    assert recipe["training"]["batch_size"] == base["training"]["batch_size"]

    out = str(tmp_path / "run")
    assert cli.main(["train", "mlm", "--config", str(recipe_lib.recipe_directories()[0] / "cpc.toml"),
                     "--out", out]) == 2
    assert "objective 'cpc'" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text("[training]\nlearning_rat = 0.1\n")
    assert cli.main(["train", "mlm", "--config", str(typo), "--out", out]) == 2
    assert "Valid keys" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--config", str(tmp_path / "missing.toml"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--config", str(tmp_path / "x.json"), "--out", out]) == 2
    assert "expects a recipe .toml" in capsys.readouterr().err
