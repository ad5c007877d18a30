import json
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest

from kobjectives import backbones
from kobjectives import cli
from kobjectives.runs import run_class

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "16",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=400",
    "--set", "tokenizer.max_training_documents=0", "--set", "training.epochs=2",
    "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
    "--set", "clm.chunk_size=24",
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "--set", "training.jit_compile=false",
]

LOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    out = model.signatures["serving_default"](text=tf.constant(["the module", "a"]))
    expected = ["hidden_states", "logits", "next_token_logits", "padding_mask", "token_ids"]
    assert sorted(out) == expected, sorted(out)
    assert "kobjectives" not in sys.modules and "keras_hub" not in sys.modules
    logits = out["logits"].numpy()
    assert logits.shape[:2] == (2, 16), logits.shape
    assert np.isfinite(logits).all()
    ids = out["token_ids"].numpy()
    # A prompt is "[CLS] tokens" with no end token: "a" is [CLS] a.
    assert ids[1, 0] == 2 and ids[1, 1] != 3 and (ids[1, 2:] == 0).all(), ids
    # `generate` continues the text greedily: its first new token is the
    # arg-max of next_token_logits, and the prompt stays as it was.
    generated = model.signatures["generate"](text=tf.constant(["the module", "a"]))
    new = generated["token_ids"].numpy()
    assert (new[1, :2] == ids[1, :2]).all(), new
    assert new[1, 2] == np.argmax(out["next_token_logits"].numpy()[1]), new
    assert generated["text"].shape == (2,)
    print("OK", out["next_token_logits"].shape)
""")


def train(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "clm", *TINY, *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory):
    """A tiny `kobjectives train clm` run with a test file: `(run folder, result)`."""
    tmp_path = tmp_path_factory.mktemp("clm")
    out = tmp_path / "run"
    test_file = tmp_path / "test.txt"
    test_file.write_text("the module returns a list.\n\nit raises an error.\n" * 20)
    result = train("--set", f"evaluation.test_data={test_file}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_train_clm_writes_the_run_folder_and_a_standalone_saved_model(clm_run):
    out, result = clm_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "clm" and metrics["steps"] == 4
    assert metrics["backbone"] == "gpt2_tiny" and metrics["sequence_length"] == 16
    for key in ("val_loss", "val_perplexity", "unigram_perplexity", "val_next_token_accuracy",
                "unigram_accuracy"):
        assert isinstance(metrics[key], float)
    # Keras' evaluate() (a mean over batches) and the run's token-level pass
    # (a mean over targets) agree closely on nearly full packed windows.
    np.testing.assert_allclose(np.exp(metrics["val_loss"]), metrics["val_perplexity"], rtol=0.05)
    # Two full validation batches of 4 windows of 16: at most 15 targets a window.
    assert 0 < metrics["val_tokens"] <= 2 * 4 * 15
    assert metrics["reset_attention"] is True  # the recipe's default
    vocabulary = len((out / "vocab.txt").read_text().splitlines())
    alone = metrics["val_documents_alone"]
    # Add-one unigram models of the training tokens beat the uniform guess.
    for scored in (metrics, alone, metrics["test"]):
        assert 1.0 < scored["unigram_perplexity"] < vocabulary
    assert alone["tokens"] > 0 and np.isfinite(alone["perplexity"])
    assert metrics["test"]["tokens"] > 0 and metrics["test"]["data"].endswith("test.txt")
    assert (out / "model.keras").is_file()
    assert (out / "preset" / "config.json").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert "test data: 40 documents" in result.stdout
    assert "unigram baseline" in result.stdout and "test (" in result.stdout
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, str(out / "saved_model")],
        capture_output=True, text=True, timeout=300,
    )
    assert loaded.returncode == 0 and "OK" in loaded.stdout, loaded.stderr[-3000:]


# A second run through the CLI (minutes): `-m slow`. The default suite starts runs from an
# earlier run folder in tests/runs/test_run.py (mlm) and tests/runs/test_classify_run.py.
@pytest.mark.slow
def test_init_from_a_clm_run_folder_starts_from_its_backbone_and_tokenizer(clm_run, tmp_path):
    out, _ = clm_run
    # The backbone an init run builds is the run folder's trained one.
    run = run_class("clm")({"model": {"init": str(out), "sequence_length": 16}},
                           out_dir=tmp_path / "built", log=lambda *_: None)
    run.tokenizer = backbones.load_tokenizer(str(out))
    trained = keras.saving.load_model(out / "model.keras", compile=False).backbone
    started = run.build_backbone()
    assert [w.shape for w in started.weights] == [w.shape for w in trained.weights]
    for a, b in zip(started.weights, trained.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    again = tmp_path / "again"
    result = train("--init", str(out), "--steps", "2", "--set", "training.saved_model=false",
                   "--out", str(again))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"tokenizer: from {out}" in result.stdout  # no WordPiece trained
    assert (again / "vocab.txt").read_text() == (out / "vocab.txt").read_text()
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["backbone"] == str(out) and metrics["steps"] == 2
    assert json.loads((again / "recipe.json").read_text())["model"]["init"] == str(out)


def test_init_from_an_encoder_run_folder_is_refused_naming_model_init(tmp_path, capsys):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    encoder_run = tmp_path / "mlm_run"
    backbones.save_preset(
        backbones.build_backbone("bert_tiny", len(vocabulary), 16),
        keras_hub.models.BertTokenizer(vocabulary=vocabulary),
        encoder_run / backbones.PRESET_FOLDER)
    out = tmp_path / "run"
    assert cli.main(["train", "clm", "--init", str(encoder_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.init" in err and "BertBackbone" in err and "causal" in err
    assert not out.exists()


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "clm", "--set", "model.backbone=bert_tiny", "--out", str(out)]) == 2
    assert "model.backbone = 'bert_tiny'" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "clm.label_smoothing=1.0", "--out", str(out)]) == 2
    assert "clm.label_smoothing = 1.0: must be in [0, 1)" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "clm.chunk_size=0", "--out", str(out)]) == 2
    assert "clm.chunk_size = 0: must be in [1, inf)" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "evaluation.test_data=/nonexistent.txt",
                     "--out", str(out)]) == 2
    assert "evaluation.test_data = '/nonexistent.txt': not a file" in capsys.readouterr().err
    # Gemma's decoder block cannot take a per-document attention mask.
    assert cli.main(["train", "clm", "--set", "model.backbone=gemma_tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "clm.reset_attention = true" in err and "GemmaDecoderBlock" in err
    # Without the attention reset Gemma is accepted (the loss is still reset).
    run = run_class("clm")({"model": {"backbone": "gemma_tiny"}, "clm": {"reset_attention": False}},
                           out_dir=out)
    assert run.recipe.model.backbone == "gemma_tiny"
    assert not out.exists()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert cli.main(["train", "clm", "--data", str(empty), "--out", str(out)]) == 2
