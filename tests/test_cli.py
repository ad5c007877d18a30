"""The `kobjectives` command: help, `recipes`, recipe resolution and the
errors of a bad recipe (before any data is read), and one real `train`."""

import json
import subprocess
import sys
import time

import pytest

from kobjectives import cli
from kobjectives.runs import available_runs
from kobjectives.runs import load_recipe

TINY = [
    "--steps", "6", "--batch-size", "8", "--sequence-length", "32",
    "--set", "data.max_documents=400", "--set", "tokenizer.vocabulary_size=600",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "masking.mask_selection_length=6",
    # The run folder's SavedModel is checked in tests/runs/test_run.py and
    # tests/runs/test_load_run.py; here the command line is what is tested.
    "--set", "training.saved_model=false",
]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", *args],
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if a document is read or a tokenizer trained."""
    from kobjectives import data

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the recipe was validated")

    monkeypatch.setattr(data, "load_texts", refuse)
    monkeypatch.setattr(data, "train_wordpiece", refuse)


def resolve(*args):
    return cli._load_recipe(cli.build_parser().parse_args(["train", *args]))


def test_help_lists_commands_and_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "recipes" in out and "tune" in out and "export" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--tfds", "--backbone", "--init", "--steps", "--out", "--strategy",
                 "--seed", "--set", "--config"):
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


def test_recipes_lists_the_registry(capsys):
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == available_runs()
    assert lines[0].split(maxsplit=1)[1]  # each with its one-line description
    assert lines[-1].startswith("backbones: ") and "bert_tiny" in lines[-1]


@pytest.mark.parametrize("name", available_runs())
def test_recipes_name_prints_toml_that_loads(tmp_path, capsys, name):
    assert cli.main(["recipes", name]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f'recipe = "{name}"\n')
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert load_recipe(str(path)) == load_recipe(name)
    assert resolve(str(path), "--steps", "3").training.steps == 3  # `train FILE` runs it


def test_bad_names_list_the_valid_ones(capsys, no_data):
    assert cli.main(["train", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Valid recipes:" in err and "mlm" in err
    assert cli.main(["recipes", "nope"]) == 2
    assert "Valid recipes:" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--set", "training.stpes=3"]) == 2
    err = capsys.readouterr().err
    assert "Unknown recipe key 'training.stpes'" in err
    assert "Valid keys of [training]: training.steps" in err
    assert cli.main(["train", "mlm", "--set", "trainin.steps=3"]) == 2
    assert "'mlm' has the sections data, tokenizer" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--set", "training.steps"]) == 2
    assert "--set expects SECTION.KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "mlm", "--backbone", "gpt9"])
    assert "bert_tiny" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--set", "training.learning_rate=-1"], "training.learning_rate = -1.0: must be in (0, 1]"),
    (["--set", "training.weight_decay=-0.1"], "training.weight_decay = -0.1: must be in [0, 1)"),
    (["--set", "training.warmup_steps=-1"], "training.warmup_steps = -1: must be in [0, inf)"),
    (["--steps", "0"], "training.steps = 0: must be in [1, inf)"),
    (["--set", "training.epochs=0"], "training.epochs = 0: must be in [1, inf)"),
    (["--set", "tokenizer.kind=bpe"], "tokenizer.kind = 'bpe': must be one of 'wordpiece'"),
    (["--sequence-length", "100000"], "model.sequence_length = 100000: must be in [2, 16384]"),
    (["--set", "model.sequence_length=100000"],
     "model.sequence_length = 100000: must be in [2, 16384]"),
    (["--steps", "1.5"], "training.steps = '1.5': expects an integer"),
    (["--set", "training.jit_compile=maybe"], "training.jit_compile = 'maybe': expects a boolean"),
    (["--set", "masking.mask_selection_rate=1.5"],
     "masking.mask_selection_rate = 1.5: must be in (0, 1]"),
])
def test_bad_values_fail_with_exit_code_2_naming_the_key(tmp_path, capsys, no_data, args,
                                                         message):
    out = tmp_path / "run"
    started = time.perf_counter()
    assert cli.main(["train", "mlm", *args, "--out", str(out)]) == 2
    assert time.perf_counter() - started < 2.0  # validation only: no data, no model
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()


def test_every_bad_value_is_named_in_one_error(tmp_path, capsys, no_data):
    assert cli.main(["train", "mlm", "--steps", "0", "--set", "training.learning_rate=-1",
                     "--set", "tokenizer.kind=bpe", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    for key in ("training.steps = 0", "training.learning_rate = -1.0", "tokenizer.kind = 'bpe'"):
        assert key in err
    assert "kobjectives recipes mlm" in err  # where the keys are described


def test_a_bad_value_fails_in_seconds_in_a_new_process(tmp_path):
    """The whole command, as a user runs it: exit code 2, the key named, no
    run folder. Importing TensorFlow is most of its time (reported); what
    follows the import (recipe modules, validation) takes well under 10 s."""
    out = tmp_path / "run"
    probe = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "from kobjectives import cli\n"
        "cli._import_tensorflow_quietly()\n"
        "imported = time.perf_counter()\n"
        "code = cli.main(sys.argv[1:])\n"
        "print(f'import {imported - started:.1f} s, then {time.perf_counter() - imported:.1f} s',"
        " file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "mlm", "--set", "training.learning_rate=-1",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "training.learning_rate = -1.0: must be in (0, 1]" in result.stderr
    assert not out.exists()
    after_import = float(result.stderr.rsplit(", then ", 1)[1].split(" s")[0])
    assert after_import < 10.0, result.stderr


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys, no_data):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert cli.main(["train", "mlm", "--out", str(existing)]) == 2
    assert f"--out {existing} is a file: give a folder" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_empty_data_file_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert cli.main(["train", "mlm", "--data", str(empty), "--out", str(tmp_path / "run")]) == 2
    assert "empty" in capsys.readouterr().err


def test_missing_data_files_fail_before_any_work(tmp_path, capsys, no_data):
    assert cli.main(["train", "mlm", "--data", str(tmp_path / "none*.txt"),
                     "--out", str(tmp_path / "run")]) == 2
    assert "data.files: " in capsys.readouterr().err


def test_rerunning_a_finished_run_leaves_it_and_no_resume_starts_over(tmp_path, capsys,
                                                                      no_data):
    from kobjectives.runs.run import write_json

    out = tmp_path / "run"
    out.mkdir()
    # A finished run's folder: its recipe.json and metrics.json (written last), no backup/.
    write_json(out / "recipe.json", resolve("mlm", *TINY).to_dict())
    write_json(out / "metrics.json", {"recipe": "mlm", "steps": 6})
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    args = ["train", "mlm", *TINY, "--out", str(out)]
    assert cli.main(args) == 0  # nothing to do is not a failure
    assert (f"{out} holds a finished 'mlm' run of this recipe (metrics.json): nothing to "
            "train, the folder is left as it is. To train it again there, rerun with "
            "--no-resume; or give a new --out.") in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # Another recipe there is an error naming the keys that differ.
    assert cli.main([*args, "--seed", "3"]) == 2
    assert (f"kobjectives: error: --out {out} holds a finished run of another recipe (its "
            "recipe.json -> this one: training.seed 0 -> 3). Give a new --out, or add "
            "--no-resume") in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --no-resume trains from the start: metrics.json goes, and the run reads its data.
    with pytest.raises(AssertionError, match="data was read"):
        cli.main([*args, "--no-resume"])
    assert not (out / "metrics.json").exists()


# A whole run in a new process (about 40 s): the in-process driver is tested in
# tests/runs/test_run.py, the CLI's parsing and early errors above.
@pytest.mark.slow
def test_train_mlm_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "mlm", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_perplexity", "val_masked_accuracy", "unigram_masked_accuracy"):
        assert isinstance(metrics[key], float)
    assert metrics["steps"] == 6 and metrics["recipe"] == "mlm"
    assert not (out / "saved_model").exists()  # training.saved_model=false
    assert (out / "vocab.txt").is_file() and (out / "model.keras").is_file()
    assert (out / "preset").is_dir()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert any((out / "logs").rglob("events.out.tfevents*"))
    assert "unigram baseline" in result.stdout
    assert json.loads((out / "recipe.json").read_text())["training"]["steps"] == 6


def test_config_file_overrides_and_is_checked(tmp_path, capsys, no_data):
    partial = tmp_path / "partial.toml"
    partial.write_text('[training]\nlearning_rate = 1\nsteps = 7\n[masking]\nstrategy = "span"\n')
    recipe = resolve("mlm", "--config", str(partial), "--steps", "9")
    base = load_recipe("mlm")
    assert recipe.training.learning_rate == 1.0
    assert isinstance(recipe.training.learning_rate, float)
    assert recipe.masking.strategy == "span"
    assert recipe.training.steps == 9  # flags win over --config
    assert recipe.training.batch_size == base.training.batch_size
    assert resolve("mlm", "--config", str(partial)).training.steps == 7  # --config wins over the recipe

    out = str(tmp_path / "run")
    other = tmp_path / "cpc.toml"
    other.write_text('recipe = "cpc"\n[training]\nsteps = 3\n')
    assert cli.main(["train", "mlm", "--config", str(other), "--out", out]) == 2
    assert f"{other} is a 'cpc' recipe, not 'mlm'" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text("[training]\nlearning_rat = 0.1\n")
    assert cli.main(["train", "mlm", "--config", str(typo), "--out", out]) == 2
    assert "Valid keys of [training]" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlearning_rate = -1\n")
    assert cli.main(["train", "mlm", "--config", str(bad), "--out", out]) == 2
    assert "training.learning_rate = -1.0: must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--config", str(tmp_path / "missing.toml"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["train", "mlm", "--config", str(tmp_path / "x.json"), "--out", out]) == 2
    assert "expects a recipe .toml" in capsys.readouterr().err
