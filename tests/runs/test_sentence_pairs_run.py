"""`kobjectives train bert|albert`: tiny runs write the run folder; bad
settings fail before any work."""

import json
import subprocess
import sys
import textwrap

import pytest

from kobjectives import cli

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "24",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=300",
    "--set", "training.epochs=2", "--set", "training.validation_batches=2",
    "--set", "training.warmup_steps=1", "--set", "masking.mask_selection_length=4",
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "--set", "training.jit_compile=false",
]

SERVE = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    out = model.signatures["serving_default"](text=tf.constant(
        ["Return the value. [SEP] Raise an error if it is missing.", "No separator here."]))
    probabilities = out["pair_probabilities"].numpy()
    assert probabilities.shape == (2, 2), probabilities.shape
    assert abs(probabilities.sum(-1) - 1).max() < 1e-5
    # "A [SEP] B" packs as [CLS] A [SEP] B [SEP]; no separator: [CLS] A [SEP] [SEP]
    for ids, mask in zip(out["token_ids"].numpy(), out["padding_mask"].numpy()):
        n = int(mask.sum())
        assert (ids[:n] == ids[n - 1]).sum() == 2, ids
    print("OK", sorted(out))
    """
)


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, task",
    [("bert", "nsp"), pytest.param("albert", "sop", marks=pytest.mark.slow)],
)
def test_train_writes_the_run_folder_and_a_servable_model(tmp_path, recipe, task):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", recipe, *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == recipe and metrics["task"] == task
    assert metrics["steps"] == 4 and metrics["chance_pair_accuracy"] == 0.5
    for key in ("val_loss", "val_pair_accuracy", "majority_pair_accuracy",
                "val_masked_accuracy", "unigram_masked_accuracy", "val_perplexity"):
        assert isinstance(metrics[key], float), key
    assert metrics["validation_pairs"] == 8
    assert 0.5 <= metrics["majority_pair_accuracy"] <= 1.0
    assert (out / "model.keras").is_file() and (out / "vocab.txt").is_file()
    assert (out / "preset" / "config.json").is_file()
    # The loss is the named losses' sum (weights 1 and 1); the terms are means
    # over masked slots / pairs of all batches, the loss a mean over batches.
    weighted = metrics["val_mlm_loss"] + metrics["val_pair_loss"]
    assert abs(metrics["val_loss"] - weighted) < 0.05 * weighted
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "vs chance baseline 0.5" in result.stdout
    # The SavedModel serves "A [SEP] B" strings in a process with only TF.
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(out / "saved_model")],
        capture_output=True, text=True, timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert "pair_logits" in served.stdout and "sequence_output" in served.stdout


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "bert", "--set", "pairs.task=mlm", "--out", out]) == 2
    assert "pairs.task" in capsys.readouterr().err
    assert cli.main(["train", "bert", "--set", "pairs.negative_rate=1.5", "--out", out]) == 2
    assert "negative_rate" in capsys.readouterr().err
    assert cli.main(["train", "albert", "--set", "pairs.min_sentences=1", "--out", out]) == 2
    assert "min_sentences" in capsys.readouterr().err
    assert cli.main(["train", "bert", "--set", "model.backbone=gpt2_tiny", "--out", out]) == 2
    assert "encoder" in capsys.readouterr().err
    assert cli.main(["train", "bert", "--batch-size", "1", "--out", out]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert cli.main(["train", "bert", "--set", "pairs.mlm_weight=0", "--set",
                     "pairs.pair_weight=0", "--out", out]) == 2
    assert "both 0" in capsys.readouterr().err
    # ALBERT's recipe is BERT's with its own defaults.
    from kobjectives.runs import load_recipe

    albert = load_recipe("albert")
    assert (albert.model.backbone, albert.pairs.task) == ("albert_tiny", "sop")
    assert load_recipe("bert").pairs.task == "nsp"
