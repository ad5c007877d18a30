import json
import subprocess
import sys
import textwrap

import keras_hub
import numpy as np

from kobjectives import cli
from kobjectives.recipe import load_recipe
from kobjectives.runs import clm

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
    print("OK", out["next_token_logits"].shape)
""")


def test_train_clm_writes_the_run_folder_and_a_standalone_saved_model(tmp_path):
    out = tmp_path / "run"
    test_file = tmp_path / "test.txt"
    test_file.write_text("the module returns a list.\n\nit raises an error.\n" * 20)
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "clm", *TINY,
         "--set", f"evaluation.test_data={test_file}", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "clm" and metrics["steps"] == 4
    for key in ("val_loss", "val_perplexity", "unigram_perplexity", "val_next_token_accuracy",
                "unigram_accuracy"):
        assert isinstance(metrics[key], float)
    # Keras' evaluate() (a mean over batches) and the run's token-level pass
    # (a mean over targets) agree closely on nearly full packed windows.
    np.testing.assert_allclose(np.exp(metrics["val_loss"]), metrics["val_perplexity"], rtol=0.05)
    assert metrics["val_tokens"] > 0
    assert metrics["reset_attention"] is True  # the recipe's default
    alone = metrics["val_documents_alone"]
    assert alone["tokens"] > 0 and alone["unigram_perplexity"] > 1.0
    assert np.isfinite(alone["perplexity"])
    assert metrics["test"]["tokens"] > 0 and metrics["test"]["unigram_perplexity"] > 1.0
    assert (out / "model.keras").is_file() and (out / "vocab.txt").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert "unigram baseline" in result.stdout
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, str(out / "saved_model")],
        capture_output=True, text=True, timeout=300,
    )
    assert loaded.returncode == 0 and "OK" in loaded.stdout, loaded.stderr[-3000:]


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "clm", "--set", "model.backbone=bert_tiny", "--out", out]) == 2
    assert "causal" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "clm.label_smoothing=1.0", "--out", out]) == 2
    assert "label_smoothing" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "clm.chunk_size=0", "--out", out]) == 2
    assert "chunk_size" in capsys.readouterr().err
    assert cli.main(["train", "clm", "--set", "evaluation.test_data=/nonexistent.txt",
                     "--out", out]) == 2
    assert "test_data" in capsys.readouterr().err
    # Gemma's decoder block cannot take a per-document attention mask.
    assert cli.main(["train", "clm", "--set", "model.backbone=gemma_tiny", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "clm.reset_attention" in err and "GemmaDecoderBlock" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert cli.main(["train", "clm", "--data", str(empty), "--out", out]) == 2


def test_documents_alone_dataset_puts_one_document_per_window():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    recipe = load_recipe("clm")
    recipe["model"]["sequence_length"] = 4
    x = next(iter(clm.documents_alone_dataset(
        recipe, {"tokenizer": tokenizer}, ["a b c a b", "c", "a a"], batch_size=8)))
    # [CLS] a b c a b [SEP] -> two windows; [CLS] c [SEP] and [CLS] a a [SEP] -> one each.
    np.testing.assert_array_equal(x["token_ids"].numpy(), [
        [2, 5, 6, 7], [5, 6, 3, 0], [2, 7, 3, 0], [2, 5, 5, 3]])
    np.testing.assert_array_equal(x["padding_mask"].numpy(), [
        [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert not x["segment_ids"].numpy().any()  # never two documents in a window
