"""The `Run` driver: the run folder, exactly `training.steps` steps in
rounds, resume that continues the data stream, a finished run left as it
is, starts from a run folder or a keras-hub preset, progress output."""

import io
import json
import math
import shutil

import keras
import keras_hub
import numpy as np
import pytest

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.distribute import CorruptedBackupError
from kobjectives.distribute import read_run_log
from kobjectives.recipe import RecipeError
from kobjectives.runs import load_run
from kobjectives.runs import run_class
from kobjectives.runs.callbacks import RoundProgress
from kobjectives.runs.callbacks import clear_backup
from kobjectives.runs.callbacks import progress_callbacks
from kobjectives.runs.mlm import MaskedLMRun
from kobjectives.runs.run import round_history

TINY = {
    "data": {"max_documents": 300},
    "tokenizer": {"vocabulary_size": 400},
    "model": {"sequence_length": 16},
    "masking": {"mask_selection_length": 3},
    # 7 steps in 3 rounds: 3, 3 and a last round of 1 (StopAfterSteps).
    "training": {"steps": 7, "epochs": 3, "batch_size": 8, "warmup_steps": 1,
                 "validation_batches": 2, "jit_compile": False},
}


def tiny(**sections):
    recipe = {name: dict(values) for name, values in TINY.items()}
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def quiet(*_):
    pass


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after round 2")


class CrashingRun(MaskedLMRun):
    def callbacks(self):
        # After RunBackup, so the round's backup is written before the crash.
        return super().callbacks() + [Crash()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """`(folder, metrics)` of one uninterrupted tiny run, shared by the tests."""
    folder = tmp_path_factory.mktemp("finished")
    return folder, MaskedLMRun(tiny(), folder, log=quiet).train()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A run folder killed after round 2 of 3 (its backup kept)."""
    folder = tmp_path_factory.mktemp("crashed")
    with pytest.raises(KeyboardInterrupt):
        CrashingRun(tiny(), folder, log=quiet).train()
    return folder


def test_run_folder_has_every_output(finished):
    tmp_path, metrics = finished
    for name in ("recipe.json", "vocab.txt", "history.csv", "loss_curve.png", "model.keras",
                 "metrics.json", "saved_model", "checkpoints", "logs", "preset"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "backup").exists()  # deleted after a normal end
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["recipe"] == "mlm" and written["steps"] == 7
    assert 0.0 <= written["val_masked_accuracy"] <= 1.0
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert recipe["recipe"] == "mlm" and recipe["training"]["steps"] == 7
    # Exactly training.steps optimizer steps: the last round is the shorter one.
    assert [row["step"] for row in read_run_log(tmp_path / "history.csv")] == [3, 6, 7]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5", "epoch_003.weights.h5"]
    # The preset holds the trained backbone and the tokenizer.
    reloaded = load_run(tmp_path)
    preset = keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))
    for a, b in zip(preset.weights, reloaded.model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert reloaded.vocabulary == data_lib.load_vocabulary(str(tmp_path))[1]


def test_resume_continues_the_data_stream(finished, crashed, tmp_path):
    reference = finished[0]
    shutil.copytree(crashed, tmp_path / "resumed")
    assert [r["epoch"] for r in read_run_log(tmp_path / "resumed" / "history.csv")] == [1, 2]
    lines = []
    # `training.saved_model = false`: no SavedModel (what `kobjectives export` writes later).
    MaskedLMRun(tiny(training={"saved_model": False}), tmp_path / "resumed",
                log=lines.append).train()
    assert (tmp_path / "resumed" / "model.keras").is_file()
    assert not (tmp_path / "resumed" / "saved_model").exists()
    assert any("round 2 of 3 done (step 6)" in line and "continues at batch 7" in line
               for line in lines), lines
    # The resumed run trained round 3 (one step, the last of 7) on batch 7 of
    # the stream, as the uninterrupted run did: the same weights and round log.
    a = keras.saving.load_model(reference / "model.keras")
    b = keras.saving.load_model(tmp_path / "resumed" / "model.keras")
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6)
    rows_a = read_run_log(reference / "history.csv")
    rows_b = read_run_log(tmp_path / "resumed" / "history.csv")
    assert len(rows_a) == len(rows_b) == 3
    for row_a, row_b in zip(rows_a, rows_b):
        np.testing.assert_allclose(row_a["loss"], row_b["loss"], rtol=1e-5)
    assert [row["step"] for row in rows_b] == [3, 6, 7]
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["steps"] == 7


def test_rounds_split_the_steps_exactly():
    def rounds(steps, epochs):
        return MaskedLMRun(tiny(training={"steps": steps, "epochs": epochs})).rounds()

    assert rounds(200, 3) == (3, 67)  # 67 + 67 + 66: 200 steps, not 3 x 66 = 198
    assert rounds(6, 3) == (3, 2)
    assert rounds(7, 3) == (3, 3)  # 3 + 3 + 1
    assert rounds(5, 4) == (3, 2)  # 2 + 2 + 1: a fourth round would be empty
    assert rounds(2, 5) == (2, 1)  # at most one round per step
    run = MaskedLMRun(tiny(training={"steps": 200, "epochs": 3, "warmup_steps": 10}))
    schedule = run.optimizer().get_config()["learning_rate"]["config"]
    assert schedule["warmup_steps"] + schedule["decay_steps"] == 200  # the schedule spans all 200


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*")}


def test_a_finished_run_is_left_as_it_is_unless_started_over(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished[0], folder)
    before = _snapshot(folder)
    lines = []
    metrics = MaskedLMRun(tiny(), folder, log=lines.append).train()
    assert lines == [
        f"{folder} holds a finished 'mlm' run of this recipe (metrics.json): nothing to train, "
        "the folder is left as it is. To train it again there, rerun with --no-resume; or give "
        "a new --out."]
    assert metrics == json.loads((folder / "metrics.json").read_text())
    assert _snapshot(folder) == before
    # Another recipe in a finished run's folder is an error naming what changed.
    with pytest.raises(ValueError) as error:
        MaskedLMRun(tiny(training={"steps": 8}, model={"dropout": 0.0}), folder,
                    log=quiet).train()
    assert str(error.value) == (
        f"--out {folder} holds a finished run of another recipe (its recipe.json -> this one: "
        "model.dropout 0.1 -> 0.0, training.steps 7 -> 8). Give a new --out, or add "
        "--no-resume to train this recipe there from the start (replacing that run's outputs).")
    assert _snapshot(folder) == before
    # A recipe.json written before a key existed reads it at its default: still this recipe.
    recipe = json.loads((folder / "recipe.json").read_text())
    del recipe["model"]["lora_alpha"]
    (folder / "recipe.json").write_text(json.dumps(recipe))
    assert MaskedLMRun(tiny(), folder).finished() == metrics
    recipe["model"]["nope"] = 1  # a key that no longer exists: another recipe, named
    (folder / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(ValueError, match=r"model\.nope 1 -> \(absent\)"):
        MaskedLMRun(tiny(), folder).finished()
    # A metrics.json cut short (a kill while writing it) is no finished run.
    (folder / "metrics.json").write_text('{"steps": 7, "val_lo')
    assert MaskedLMRun(tiny(), folder).finished() is None
    # --no-resume (clear_backup) removes metrics.json: the folder no longer holds a finished run.
    clear_backup(folder)
    assert not (folder / "metrics.json").exists()
    assert MaskedLMRun(tiny(training={"steps": 8}), folder).finished() is None


# Slow (three runs, about 35 s): the default suite resumes a LoRA fit exactly through
# `RunBackup` in tests/runs/test_fault_tolerance.py, and a run through
# `test_resume_continues_the_data_stream` above.
@pytest.mark.slow
def test_a_lora_run_killed_after_a_round_resumes_to_the_same_weights(finished, tmp_path):
    """LoRA from a run folder: Keras checkpoints merge the adapters, the
    backup keeps them apart; killed after round 2 and rerun, the run ends
    with the uninterrupted run's weights and round losses."""
    lora = tiny(model={"init": str(finished[0]), "lora_rank": 2},
                training={"saved_model": False})  # the weights are compared, not served
    MaskedLMRun(lora, tmp_path / "whole", log=quiet).train()
    with pytest.raises(KeyboardInterrupt):
        CrashingRun(lora, tmp_path / "resumed", log=quiet).train()
    assert (tmp_path / "resumed" / "backup" / "unsaved_state.npz").is_file()
    MaskedLMRun(lora, tmp_path / "resumed", log=quiet).train()
    a = keras.saving.load_model(tmp_path / "whole" / "model.keras")
    b = keras.saving.load_model(tmp_path / "resumed" / "model.keras")
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-6, err_msg=x.path)
    rows_a = read_run_log(tmp_path / "whole" / "history.csv")
    rows_b = read_run_log(tmp_path / "resumed" / "history.csv")
    np.testing.assert_allclose([r["loss"] for r in rows_a], [r["loss"] for r in rows_b],
                               rtol=1e-5)
    # The adapters trained: the merged query kernels moved from the init's.
    start = keras.saving.load_model(finished[0] / "model.keras")
    moved = [w.path for w, s in zip(a.backbone.weights, start.backbone.weights)
             if not np.array_equal(w.numpy(), s.numpy())]
    assert any("query/kernel" in path for path in moved)
    assert not any("intermediate" in path or "output_dense" in path for path in moved)


def test_a_backup_whose_rounds_ended_elsewhere_is_refused(crashed, tmp_path):
    """A backup written by a version that made 7 steps in 3 rounds of
    7 // 3 = 2 ended round 2 at step 4; today's rounds of 3 end it at 6."""
    tmp_path = tmp_path / "run"
    shutil.copytree(crashed, tmp_path)
    log = tmp_path / "history.csv"
    rows = read_run_log(log)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3), (2, 6)]  # today's rounds
    log.write_text(log.read_text().replace("\n2,6,", "\n2,4,"))
    with pytest.raises(ValueError, match=r"backup ended round 2 at step 4, but this recipe's "
                                         r"rounds end it at step 6 .*--no-resume"):
        MaskedLMRun(tiny(), tmp_path, log=quiet).train()
    assert not (tmp_path / "metrics.json").exists()  # nothing trained, the backup kept
    assert (tmp_path / "backup").is_dir()


def test_corrupted_backup_names_the_file_and_the_fix(crashed, tmp_path):
    tmp_path = tmp_path / "run"
    shutil.copytree(crashed, tmp_path)
    (tmp_path / "backup" / "training_metadata.json").write_text("{not json")
    with pytest.raises(CorruptedBackupError, match="training_metadata.json.*--no-resume"):
        MaskedLMRun(tiny(), tmp_path, log=quiet).train()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    (tmp_path / "backup" / "latest.weights.h5").write_bytes(b"garbage")
    with pytest.raises(CorruptedBackupError, match="latest.weights.h5.*--no-resume"):
        MaskedLMRun(tiny(), tmp_path, log=quiet).train()


def _tiny_preset(directory):
    documents = data_lib.embedded_corpus(max_documents=300)
    vocabulary = data_lib.train_wordpiece(documents, 300)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    keras.utils.set_random_seed(7)
    backbone = backbones.build_backbone("bert_tiny", len(vocabulary), 32)
    backbones.save_preset(backbone, tokenizer, directory)
    return backbone, vocabulary


def test_start_from_a_local_preset_reuses_its_backbone_and_tokenizer(tmp_path):
    backbone, vocabulary = _tiny_preset(tmp_path / "preset")
    run = MaskedLMRun(tiny(model={"init": str(tmp_path / "preset")}), tmp_path / "run", log=quiet)
    run.prepare()
    assert run.vocabulary == vocabulary  # no tokenizer trained
    started = run.build_backbone()
    assert type(started) is type(backbone)
    for a, b in zip(started.weights, backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A sequence longer than the preset's backbone takes fails before any data is read.
    with pytest.raises(RecipeError, match="model.sequence_length = 64.*at most 32"):
        MaskedLMRun(tiny(model={"init": str(tmp_path / "preset"), "sequence_length": 64}),
                    tmp_path / "run2")


def test_start_from_an_earlier_run_folder(finished, tmp_path):
    first = load_run(finished[0])
    second = MaskedLMRun(tiny(model={"init": str(finished[0])}), tmp_path / "second",
                         log=quiet)
    second.prepare()
    assert second.vocabulary == first.vocabulary
    for a, b in zip(second.build_backbone().weights, first.model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_data_files_fail_before_any_work_but_a_finished_run_reloads(tmp_path):
    recipe = tiny(data={"files": [str(tmp_path / "gone" / "*.txt")]})
    with pytest.raises(RecipeError, match=r"data.files: '.*gone/\*.txt' matches no file"):
        MaskedLMRun(recipe, tmp_path / "run")
    assert MaskedLMRun(recipe, tmp_path / "run", reloading=True).recipe.data.files == (
        str(tmp_path / "gone" / "*.txt"),)



@pytest.mark.parametrize("name, values, message", [
    ("sft", {"data": {"dataset": "hh_rlhf", "shared_dir": "gone"}},
     "data.shared_dir = 'gone': no hh_rlhf/ folder there"),
    ("dpo", {"data": {"dataset": "hh_rlhf", "shared_dir": "gone"}},
     "data.shared_dir = 'gone': no hh_rlhf/ folder there"),
    ("clm", {"evaluation": {"test_data": "gone.txt"}},
     "evaluation.test_data = 'gone.txt': not a file"),
])
def test_files_a_section_names_are_checked_by_the_run_not_on_reloading(
        tmp_path, name, values, message):
    # The recipe alone is valid (no file system read); the run refuses it
    # before any work; a finished folder whose data moved still reloads.
    cls = run_class(name)
    recipe = cls.recipe_class.from_dict(values).validate()
    [problem] = recipe.machine_problems()
    assert problem.startswith(message)
    with pytest.raises(RecipeError, match=message):
        cls(recipe, tmp_path / "run")
    assert cls(recipe, tmp_path / "run", reloading=True).recipe == recipe


def test_bad_init_fails_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match="model.init = .*no keras-hub preset"):
        MaskedLMRun(tiny(model={"init": str(tmp_path)}), tmp_path / "run")
    # A path that does not exist, and a run folder's name typed without its parent
    # (neither a folder here nor a keras-hub preset name): one line each, at check time.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as error:
        MaskedLMRun(tiny(model={"init": "runs/does-not-exist", "lora_rank": 2}), "run")
    assert str(error.value).splitlines()[1:] == [
        f"  model.init = 'runs/does-not-exist': no folder runs/does-not-exist here (in {tmp_path}): "
        "give --init the folder of a finished `kobjectives train` run (its --out, with its parent "
        "folder, e.g. runs/NAME), a directory written by `save_to_preset`, or a keras-hub preset "
        "name."]
    with pytest.raises(RecipeError, match=r"model.init = 'my_sft_run': no folder my_sft_run here "
                                          r".*'my_sft_run' is not a keras-hub preset name "
                                          r"\(keras_hub.models.Backbone.presets lists them\)"):
        MaskedLMRun(tiny(model={"init": "my_sft_run"}), "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.json").write_text("{}")
    with pytest.raises(RecipeError, match="run folder without a preset"):
        MaskedLMRun(tiny(model={"init": str(tmp_path / "half")}), tmp_path / "run")


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_round_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress_callbacks(3, 10, stream=Terminal()) == (1, [])
    verbose, (callback,) = progress_callbacks(3, 10, stream=io.StringIO())
    assert verbose == 0 and isinstance(callback, RoundProgress)
    lines = []
    callback.log = lines.append
    callback.on_epoch_begin(1)
    callback.on_epoch_end(1, {"loss": 2.0, "val_loss": 3.0})
    assert len(lines) == 1 and lines[0].startswith("round 2/3 (step 20/30): loss 2.0000, val_loss 3.0000")
    # A shorter last round: 25 steps in rounds of 10, 10 and 5.
    _, (callback,) = progress_callbacks(3, 10, log=lines.append, stream=io.StringIO(), steps=25)
    callback.on_epoch_end(2, {"loss": 1.0})
    assert lines[-1].startswith("round 3/3 (step 25/25): loss 1.0000")


def test_registry_names_every_run():
    assert run_class("mlm") is MaskedLMRun
    with pytest.raises(ValueError, match="Valid recipes: .*mlm"):
        run_class("nope")

def test_round_history_spans_a_resume(tmp_path):
    # history.csv holds every round; fit's history only the rounds since the resume.
    (tmp_path / "history.csv").write_text(
        "epoch,step,loss,val_loss\n1,10,3.0,3.5\n2,20,2.0,2.5\n3,30,1.0,1.5\n"
    )
    history = round_history(tmp_path, {"loss": [1.0], "val_loss": [1.5]})
    assert history == {"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 1.5]}


def test_round_history_without_a_log_is_fits_history(tmp_path):
    assert round_history(tmp_path, {"loss": [2.0, 1.0]}) == {"loss": [2.0, 1.0]}
    # Every round done before a resume: fit trains nothing and logs nothing.
    assert round_history(tmp_path, {}) == {}


def test_round_history_refuses_a_non_finite_last_loss(tmp_path):
    with pytest.raises(RuntimeError, match="non-finite loss"):
        round_history(tmp_path, {"loss": [1.0, math.nan]})


def test_split_seed_keeps_the_validation_documents_across_training_seeds(tmp_path):
    def validation(name, training_seed, split_seed=-1):
        run = MaskedLMRun(tiny(training={"seed": training_seed}, data={"split_seed": split_seed}),
                          tmp_path / name, log=quiet)
        return run.split_documents(run.load_documents())[1]

    assert validation("a", 1, split_seed=0) == validation("b", 0)
    assert validation("c", 1) != validation("b", 0)
    with pytest.raises(RecipeError, match=r"data.split_seed = -2"):
        MaskedLMRun(tiny(data={"split_seed": -2}), tmp_path / "bad", log=quiet)
