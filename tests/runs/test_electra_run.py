import json
import subprocess
import sys

from kobjectives import cli

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "16",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=400",
    "--set", "tokenizer.max_training_documents=0", "--set", "training.epochs=2",
    "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
    "--set", "masking.mask_selection_length=3",
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "--set", "training.jit_compile=false",
]

SERVE = """
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401
model = tf.saved_model.load(sys.argv[1])
out = model.signatures["serving_default"](text=tf.constant(["the list of files", "a"]))
p = out["replaced_probability"].numpy()
assert p.shape == (2, 16) and out["rtd_logits"].shape == (2, 16), p.shape
assert np.all((p >= 0) & (p <= 1))
assert sorted(out) == ["padding_mask", "replaced_probability", "rtd_logits", "sequence_output", "token_ids"]
assert "keras_hub" not in sys.modules and "kobjectives" not in sys.modules
print("served", out["padding_mask"].numpy().sum(axis=1).tolist())
"""


def test_train_electra_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "electra", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "electra" and metrics["steps"] == 4
    for key in ("val_loss", "val_rtd_accuracy", "all_original_rtd_accuracy", "val_replaced_precision",
                "val_replaced_recall", "val_generator_accuracy", "unigram_generator_accuracy"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] or key == "val_loss"
    # The baseline is 1 - the replaced fraction of the held-out tokens.
    assert abs(metrics["all_original_rtd_accuracy"] + metrics["val_replaced_fraction"] - 1) < 1e-9
    assert 0.0 < metrics["val_replaced_fraction"] < 0.3
    assert 0.0 <= metrics["val_rtd_auc"] <= 1.0 and metrics["chance_rtd_auc"] == 0.5
    assert 0.0 < metrics["prior_rtd_loss_second_pass"] < 0.7
    assert (out / "vocab.txt").is_file() and (out / "model.keras").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "all-original baseline" in result.stdout
    # The discriminator serves raw strings with only tensorflow + tensorflow_text.
    served = subprocess.run([sys.executable, "-c", SERVE, str(out / "saved_model")],
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "served" in served.stdout


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "electra", "--set", "model.backbone=gpt2_tiny", "--out", out]) == 2
    assert "bidirectional" in capsys.readouterr().err
    assert cli.main(["train", "electra", "--set", "model.backbone=bert_tiny", "--out", out]) == 2
    assert "generator_hidden_dim" in capsys.readouterr().err
    assert cli.main(["train", "electra", "--set", "electra.temperature=0", "--out", out]) == 2
    assert "temperature" in capsys.readouterr().err
    assert cli.main(["train", "electra", "--set", "model.generator_num_heads=3", "--out", out]) == 2
    assert "generator_num_heads" in capsys.readouterr().err
