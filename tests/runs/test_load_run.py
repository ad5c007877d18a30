"""`kobjectives export RUN_DIR` and `kobjectives.runs.load_run`: rebuild a
run from its folder, export it, serve it from a clean process, and continue
training from `model.keras` with the same next-step loss."""

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from kobjectives import cli
from kobjectives.runs import export_run_dir
from kobjectives.runs import load_run
from kobjectives.runs import run_class

TINY = {
    "training.steps": 2, "training.batch_size": 4, "model.sequence_length": 16,
    "data.max_documents": 200, "tokenizer.vocabulary_size": 300, "training.epochs": 1,
    "training.validation_batches": 2, "masking.mask_selection_length": 4,
    "training.jit_compile": False, "model.dropout": 0.0,
    "training.saved_model": False,  # what `kobjectives export RUN_DIR` is for
}

# A clean process: only tensorflow and tensorflow_text are imported.
SERVE = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
model = tf.saved_model.load(sys.argv[1])
out = {"signatures": sorted(model.signatures)}
for batch in (1, 3):
    texts = tf.constant(["the [MASK] of a list", "return a copy", "x"][:batch])
    result = model.signatures["serving_default"](text=texts)
    out[batch] = {k: [list(v.shape), v.dtype.name] for k, v in result.items()}
    out[f"logits{batch}"] = result["mlm_logits"].numpy()[0, :4, :4].tolist()
ids = model.signatures["serving_default"](text=tf.constant(["x"]))["token_ids"]
out["ids"] = model.signatures["serve_token_ids"](
    token_ids=ids, padding_mask=tf.cast(ids > 0, tf.int32),
    segment_ids=tf.zeros_like(ids))["mlm_logits"].numpy()[0, :4, :4].tolist()
out["modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"kobjectives", "keras_hub"})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm_run")
    cls = run_class("mlm")
    cls(cls.recipe_class().replace(TINY), out, log=lambda *a: None).train()
    return out


def test_a_run_without_its_saved_model_reloads(run_dir):
    assert not (run_dir / "saved_model").exists()
    assert load_run(run_dir).model.optimizer.iterations.numpy() == 2


# Two exports and three processes (minutes on 2 cores): `-m slow`. The default
# suite serves clean-process SavedModels of masked-LM objectives
# (tests/export/test_saved_model.py), `kobjectives export` of the clm run
# (tests/export/test_export_every_objective.py) and the runs' own exports
# (clm, classify, tag, sft).
@pytest.mark.slow
def test_export_cli_serves_raw_strings_in_a_clean_process(run_dir, tmp_path):
    export = tmp_path / "export"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "export", str(run_dir), "--out", str(export)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"to {export / 'saved_model'}" in result.stdout
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(export / "saved_model")],
        capture_output=True, text=True, timeout=600,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    assert out["signatures"] == ["serve_token_ids", "serving_default"]
    vocabulary = len((run_dir / "vocab.txt").read_text().splitlines())
    for batch in ("1", "3"):
        assert out[batch]["mlm_logits"] == [[int(batch), 16, vocabulary], "float32"]
        assert out[batch]["token_ids"] == [[int(batch), 16], "int32"]
    # Batch size does not change a row; the token-id endpoint agrees.
    np.testing.assert_allclose(out["logits1"], out["logits3"], atol=1e-5)

    # The export equals one written in-process from the same folder.
    again = export_run_dir(run_dir, tmp_path / "again")
    original = subprocess.run(
        [sys.executable, "-c", SERVE, again],
        capture_output=True, text=True, timeout=600,
    )
    reference = json.loads(original.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["logits3"], reference["logits3"], atol=1e-5)


def test_load_run_continues_training_with_the_same_next_step_loss(run_dir, tmp_path):
    from kobjectives.data import embedded_corpus

    run = load_run(run_dir)
    assert run.name == "mlm" and run.recipe.model.sequence_length == 16
    assert run.tokenizer.vocabulary_size() == len(run.vocabulary)
    assert run.vocabulary == (run_dir / "vocab.txt").read_text().splitlines()
    assert int(run.model.optimizer.iterations.numpy()) == 2  # the run's 2 steps
    run.train_documents = run.validation_documents = embedded_corpus(max_documents=50)
    batch = next(iter(run.make_dataset("train", 4)))
    run.model.train_on_batch(*batch)  # continue training, then save mid-run
    run.model.save(tmp_path / "model.keras")
    (tmp_path / "recipe.json").write_text(json.dumps(run.recipe.to_dict()))
    shutil.copytree(run_dir / "preset", tmp_path / "preset")

    again = load_run(tmp_path)
    assert int(again.model.optimizer.iterations.numpy()) == 3
    for a, b in zip(run.model.optimizer.variables, again.model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for _ in range(2):  # the next steps give the same losses
        expected = run.model.train_on_batch(*batch, return_dict=True)["loss"]
        continued = again.model.train_on_batch(*batch, return_dict=True)["loss"]
        assert continued == pytest.approx(expected, rel=1e-5)
    keras.mixed_precision.set_global_policy("float32")


def test_bad_run_folders_fail_clearly(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "missing")]) == 2
    assert "Run folder not found" in capsys.readouterr().err
    (tmp_path / "recipe.json").write_text(json.dumps({"recipe": "mlm", "model": {}}))
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "no model.keras" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no model.keras"):
        export_run_dir(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "recipe.json").write_text(json.dumps({"objective": "mlm", "model": {}}))
    with pytest.raises(FileNotFoundError, match="names no recipe"):
        export_run_dir(tmp_path)
    (tmp_path / "recipe.json").write_text(json.dumps({"recipe": "nope", "model": {}}))
    with pytest.raises(ValueError, match="Unknown recipe 'nope'. Valid recipes: .*mlm"):
        export_run_dir(tmp_path)
