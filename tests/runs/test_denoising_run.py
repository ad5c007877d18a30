import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kobjectives import cli

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "24",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=400",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "training.warmup_steps=1",
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "--set", "training.jit_compile=false",
]

# Runs in a fresh interpreter that imports only tensorflow and tensorflow_text.
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    out = model.signatures["serving_default"](
        text=tf.constant(["the <extra_id_0> of a list .", "return x"]),
        decoder_token_ids=tf.constant([[0, 5, 6], [0, 7, 0]]))
    np.savez(sys.argv[2], **{k: v.numpy() for k, v in out.items()})
    print(json.dumps({"signatures": sorted(model.signatures),
                      "foreign": [m for m in ("keras_hub", "kobjectives") if m in sys.modules]}))
    """
)


def _train(objective, out):
    return subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", objective, *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )


def test_train_t5_writes_the_run_folder_and_a_serving_model(tmp_path):
    out = tmp_path / "run"
    result = _train("t5", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "t5" and metrics["steps"] == 4
    for key in ("val_loss", "val_perplexity", "val_token_accuracy", "unigram_perplexity",
                "unigram_token_accuracy", "val_content_token_accuracy",
                "unigram_content_token_accuracy"):
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key])
    assert 0.0 < metrics["unigram_token_accuracy"] < 1.0
    assert not metrics["unigram_content_token"].startswith(("<extra_id_", "[SEP]"))
    # As T5 computes: 26 raw tokens, 4 noise in 1 span: 26 - 4 + 1 + EOS = 24; 4 + 1 + EOS = 6.
    assert metrics["lengths"] == {"raw_length": 26, "encoder_length": 24, "target_length": 6}
    assert "<extra_id_" in metrics["example"]["encoder_input"]
    vocabulary = (out / "vocab.txt").read_text().splitlines()
    assert vocabulary[-1] == "<extra_id_0>" and vocabulary[-100] == "<extra_id_99>"
    assert (out / "model.keras").is_file() and (out / "loss_curve.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert "unigram baseline" in result.stdout

    served = tmp_path / "served.npz"
    loaded = subprocess.run(
        [sys.executable, "-c", LOADER, str(out / "saved_model"), str(served)],
        capture_output=True, text=True, timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    facts = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert facts == {"signatures": ["serve_token_ids", "serving_default"], "foreign": []}
    outputs = dict(np.load(served))
    assert outputs["logits"].shape == (2, 3, len(vocabulary))
    encoder_ids = outputs["encoder_token_ids"]
    assert encoder_ids.shape == (2, 24)
    assert len(vocabulary) - 1 in encoder_ids[0]  # "<extra_id_0>" read as the sentinel
    assert encoder_ids[1][outputs["encoder_padding_mask"][1].sum() - 1] == 3  # ends with [SEP]

    # The served logits are the trained objective's.
    import keras
    import tensorflow as tf

    import kobjectives.objectives  # noqa: F401  (registers DenoisingSeq2Seq for loading)

    model = keras.saving.load_model(out / "model.keras")
    decoder = np.array([[0, 5, 6], [0, 7, 0]], "int32")
    logits = model({
        "encoder_token_ids": tf.constant(encoder_ids),
        "encoder_padding_mask": tf.constant(outputs["encoder_padding_mask"]),
        "decoder_token_ids": tf.constant(decoder),
        "decoder_padding_mask": tf.constant(np.array([[1, 1, 1], [1, 1, 0]], "int32")),
    })
    np.testing.assert_allclose(outputs["logits"], logits, atol=1e-4)


@pytest.mark.slow
def test_train_bart_writes_the_run_folder(tmp_path):
    pytest.importorskip("kobjectives.layers.bart_noising")
    out = tmp_path / "run"
    result = _train("bart", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "bart" and metrics["steps"] == 4
    assert metrics["lengths"] == {"raw_length": 22, "encoder_length": 24, "target_length": 24}
    assert np.isfinite(metrics["val_loss"]) and (out / "saved_model" / "saved_model.pb").is_file()


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "t5", "--set", "model.backbone=bert_tiny", "--out", out]) == 2
    assert "seq2seq" in capsys.readouterr().err
    assert cli.main(["train", "t5", "--set", "corruption.noise_density=0", "--out", out]) == 2
    assert "noise_density" in capsys.readouterr().err
    assert cli.main(["train", "t5", "--set", "corruption.mean_noise_span_length=0.5",
                     "--out", out]) == 2
    assert "mean_noise_span_length" in capsys.readouterr().err
    assert cli.main(["train", "t5", "--set", "corruption.num_sentinels=2", "--out", out]) == 2
    assert "num_sentinels" in capsys.readouterr().err
    assert cli.main(["train", "t5", "--sequence-length", "2", "--out", out]) == 2
    assert "too short" in capsys.readouterr().err
    assert not (tmp_path / "run" / "vocab.txt").exists()
