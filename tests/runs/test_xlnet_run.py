import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kobjectives import cli

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "16",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=400",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "training.warmup_steps=1", "--set", "plm.num_predict=6",
]


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
def test_train_xlnet_writes_the_run_folder_and_a_servable_model(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "xlnet", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "xlnet" and metrics["steps"] == 4
    assert metrics["backbone"] == "xlnet_tiny"
    for key in ("val_loss", "val_perplexity", "val_target_accuracy",
                "unigram_target_accuracy", "unigram_perplexity"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    np.testing.assert_allclose(np.exp(metrics["val_loss"]), metrics["val_perplexity"], rtol=0.1)
    vocabulary = (out / "vocab.txt").read_text().splitlines()
    # The unigram baseline always predicts a frequent content token, never a special one.
    assert metrics["unigram_token"] in vocabulary
    assert not metrics["unigram_token"].startswith("[")
    assert 0.0 <= metrics["unigram_target_accuracy"] < 0.5
    # The add-one unigram model of the training tokens beats the uniform guess.
    assert 1.0 < metrics["unigram_perplexity"] < len(vocabulary)
    assert (out / "model.keras").is_file() and (out / "preset" / "config.json").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "unigram baseline" in result.stdout
    # The SavedModel serves raw strings in a process with only TensorFlow.
    script = textwrap.dedent(f"""
        import tensorflow as tf
        import tensorflow_text  # noqa: F401
        model = tf.saved_model.load({str(out / "saved_model")!r})
        out = model.signatures["serving_default"](text=tf.constant(["the [MASK] of a module", "x"]))
        assert out["plm_logits"].shape[:2] == (2, 16), out["plm_logits"].shape
        assert out["sequence_output"].shape[:2] == (2, 16)
        ids = out["token_ids"].numpy()
        assert (ids == 4).sum() == 1, ids  # [MASK] is one token
        print("served", sorted(out))
    """)
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "kobjectives" not in served.stderr and "served" in served.stdout


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "xlnet", "--set", "model.backbone=bert_tiny", "--out", out]) == 2
    assert "permutation" in capsys.readouterr().err
    assert cli.main(["train", "xlnet", "--set", "plm.plm_probability=0", "--out", out]) == 2
    assert "plm.plm_probability = 0.0: must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["train", "xlnet", "--sequence-length", "63",
                     "--set", "plm.permutation_size=32", "--out", out]) == 2
    assert "plm.permutation_size = 32: must divide model.sequence_length = 63" in \
        capsys.readouterr().err
    assert cli.main(["train", "xlnet", "--set", "plm.num_predict=100", "--out", out]) == 2
    assert "plm.num_predict = 100: at most model.sequence_length = 64" in capsys.readouterr().err
    assert cli.main(["train", "xlnet", "--sequence-length", "3", "--set", "plm.num_predict=2",
                     "--out", out]) == 2
    assert "model.sequence_length = 3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
