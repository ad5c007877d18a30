"""`kobjectives train electra`: a tiny run writes the run folder and a
servable discriminator; bad settings fail before any work; a start from a
preset builds the generator from the init's config."""

import json
import math
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest

from kobjectives import backbones
from kobjectives import cli
from kobjectives import data as data_lib
from kobjectives.recipe import RecipeError
from kobjectives.runs.electra import ElectraRun

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


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
def test_train_electra_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "electra", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "electra" and metrics["steps"] == 4
    for key in ("val_rtd_accuracy", "all_original_rtd_accuracy", "val_replaced_precision",
                "val_replaced_recall", "val_generator_accuracy", "unigram_generator_accuracy"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    # The loss is the named losses' weighted sum (1 x generator + 50 x
    # discriminator); the terms are means over tokens of all batches and the
    # loss a mean over batches, so they agree up to the batches' token counts.
    for key in ("val_loss", "val_generator_loss", "val_discriminator_loss"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0.0, key
    weighted = metrics["val_generator_loss"] + 50.0 * metrics["val_discriminator_loss"]
    assert abs(metrics["val_loss"] - weighted) < 0.05 * weighted
    # A generator that has not learned (4 steps) cannot beat guessing among the vocabulary.
    assert metrics["val_generator_loss"] > 3.0
    # The baseline is 1 - the replaced fraction of the held-out tokens.
    assert abs(metrics["all_original_rtd_accuracy"] + metrics["val_replaced_fraction"] - 1) < 1e-9
    assert 0.0 < metrics["val_replaced_fraction"] < 0.3
    assert 0.0 <= metrics["val_rtd_auc"] <= 1.0 and metrics["chance_rtd_auc"] == 0.5
    assert 0.0 < metrics["prior_rtd_loss_second_pass"] < 0.7
    assert (out / "vocab.txt").is_file() and (out / "model.keras").is_file()
    # The preset holds the discriminator (what pretraining produces), not the generator.
    preset = keras_hub.models.Backbone.from_preset(str(out / "preset"))
    assert preset.hidden_dim == 128 and preset.num_layers == 2  # electra_tiny
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
    assert cli.main(["train", "electra", "--set", "electra.generator_weight=0",
                     "--set", "electra.discriminator_weight=0", "--out", out]) == 2
    assert "both 0" in capsys.readouterr().err


def _tiny_preset(directory, name):
    documents = data_lib.embedded_corpus(max_documents=300)
    vocabulary = data_lib.train_wordpiece(documents, 300)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    keras.utils.set_random_seed(7)
    backbone = backbones.build_backbone(name, len(vocabulary), 32)
    backbones.save_preset(backbone, tokenizer, directory)
    return backbone


TINY_RECIPE = {
    "data": {"max_documents": 300},
    "model": {"sequence_length": 16, "generator_hidden_dim": 16, "generator_num_heads": 2,
              "generator_intermediate_dim": 32, "generator_num_layers": 1},
    "masking": {"mask_selection_length": 3},
    "training": {"batch_size": 4, "jit_compile": False},
}


def test_start_from_a_preset_builds_the_generator_from_its_config(tmp_path):
    discriminator = _tiny_preset(tmp_path / "preset", "electra_tiny")
    recipe = {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], "init": str(tmp_path / "preset")}}
    run = ElectraRun(recipe, tmp_path / "run", log=lambda *_: None)
    run.prepare()
    model = run.build_objective()
    # The discriminator is the preset's backbone, weights and all.
    for a, b in zip(model.discriminator.weights, discriminator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The generator: the preset's class, vocabulary, embedding size and length,
    # the recipe's generator sizes, the preset's token embeddings (shared).
    generator = model.generator
    assert type(generator) is type(discriminator)
    assert (generator.hidden_dim, generator.num_heads, generator.intermediate_dim,
            generator.num_layers) == (16, 2, 32, 1)
    assert generator.vocab_size == discriminator.vocab_size
    assert generator.embedding_dim == discriminator.embedding_dim == 128
    assert generator.max_sequence_length == 32
    assert generator.token_embedding.embeddings is model.discriminator.token_embedding.embeddings
    # A preset whose embedding size follows hidden_dim (BERT) needs a generator as wide.
    _tiny_preset(tmp_path / "bert", "bert_tiny")
    bert = {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], "init": str(tmp_path / "bert")}}
    with pytest.raises(RecipeError, match="generator_hidden_dim = 16: .*generator_hidden_dim=128"):
        ElectraRun(bert, tmp_path / "run2")
