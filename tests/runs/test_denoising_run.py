import json
import subprocess
import sys
import textwrap

import keras_hub
import numpy as np
import pytest

from kobjectives import backbones
from kobjectives import cli
from kobjectives.recipe import RecipeError
from kobjectives.runs import export_run_dir
from kobjectives.runs import run_class
from kobjectives.runs.denoising import BartRecipe
from kobjectives.runs.denoising import T5Recipe

TINY = {
    "data": {"max_documents": 300},
    "tokenizer": {"vocabulary_size": 400},
    "model": {"sequence_length": 24},
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "training": {"steps": 4, "batch_size": 4, "epochs": 2, "validation_batches": 2,
                 "warmup_steps": 1, "jit_compile": False},
}

# Runs in a fresh interpreter that imports only tensorflow and tensorflow_text:
# serves the same inputs from each SavedModel given.
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    facts = []
    for index, path in enumerate(sys.argv[2:]):
        model = tf.saved_model.load(path)
        out = model.signatures["serving_default"](
            text=tf.constant(["the <extra_id_0> of a list .", "return x"]),
            decoder_token_ids=tf.constant([[0, 5, 6], [0, 7, 0]]))
        np.savez(f"{sys.argv[1]}_{index}.npz", **{k: v.numpy() for k, v in out.items()})
        facts.append(sorted(model.signatures))
    print(json.dumps({"signatures": facts,
                      "foreign": [m for m in ("keras_hub", "kobjectives") if m in sys.modules]}))
    """
)


def _lines():
    lines = []
    return lines, lines.append


def test_recipes_default_to_the_published_t5_and_bart_recipes():
    t5, bart = T5Recipe().to_dict(), BartRecipe().to_dict()
    assert t5["data"]["pack_documents"] is True and bart["data"]["pack_documents"] is False
    assert t5["model"] == {**t5["model"], "backbone": "t5_tiny", "sequence_length": 64,
                           "dropout": 0.1, "reinitialize_t5_embedding": True}
    assert bart["model"]["backbone"] == "bart_tiny" and bart["model"]["sequence_length"] == 64
    assert t5["corruption"] == {"noise_density": 0.15, "mean_noise_span_length": 3.0,
                                "num_sentinels": 100}
    assert bart["noising"] == {"text_infilling_rate": 0.3, "poisson_lambda": 3.0,
                               "token_deletion_rate": 0.0, "sentence_permutation_rate": 1.0,
                               "document_rotation_rate": 0.0}
    common = {"epochs": 8, "batch_size": 32, "learning_rate": 2e-3, "warmup_steps": 100,
              "weight_decay": 0.01, "dtype_policy": "float32", "jit_compile": True, "seed": 0,
              "validation_batches": 20, "saved_model": True}
    assert t5["training"] == {"steps": 1000, **common}
    assert bart["training"] == {"steps": 800, **common}
    assert t5["tokenizer"]["vocabulary_size"] == bart["tokenizer"]["vocabulary_size"] == 4096
    # As T5 computes: 70 raw tokens, 10 noise in 3 spans: 70 - 10 + 3 + EOS = 64; 10 + 3 + EOS.
    assert T5Recipe().lengths() == {"raw_length": 70, "encoder_length": 64, "target_length": 14}
    assert BartRecipe().lengths() == {"raw_length": 62, "encoder_length": 64,
                                      "target_length": 64}


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
def test_train_t5_writes_the_run_folder_and_a_serving_model(tmp_path):
    out = tmp_path / "run"
    lines, log = _lines()
    metrics = run_class("t5")(TINY, out, log=log).train()
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "t5" and metrics["steps"] == 4
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
    assert any("unigram baseline" in line for line in lines)

    # The preset's tokenizer reads the sentinels and special tokens in text, as training's.
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(str(out / "preset"))
    assert tokenizer.get_vocabulary() == vocabulary
    assert list(tokenizer("a <extra_id_0> [MASK]"))[1:] == [len(vocabulary) - 1, 4]

    # `kobjectives export RUN_DIR` rewrites the same SavedModel from the run folder.
    again = export_run_dir(out, tmp_path / "again", log=log)
    served = tmp_path / "served"
    loaded = subprocess.run(
        [sys.executable, "-c", LOADER, str(served), str(out / "saved_model"), again],
        capture_output=True, text=True, timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    facts = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert facts == {"signatures": [["serve_token_ids", "serving_default"]] * 2, "foreign": []}
    outputs, exported = (dict(np.load(f"{served}_{i}.npz")) for i in (0, 1))
    assert sorted(outputs) == sorted(exported)
    for key in outputs:
        np.testing.assert_array_equal(outputs[key], exported[key])
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

    # A run started from this folder reuses its tokenizer and its trained
    # backbone (the embedding not redrawn, projected at the scale it was trained with).
    following = run_class("t5")(
        {**TINY, "model": {**TINY["model"], "init": str(out)}}, tmp_path / "next", log=log)
    following.prepare()
    assert (tmp_path / "next" / "vocab.txt").read_text().splitlines() == vocabulary
    started = following.build_objective()
    assert started.logit_scale == model.logit_scale == 1.0
    for a, b in zip(started.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_train_bart_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    lines, log = _lines()
    metrics = run_class("bart")(TINY, out, log=log).train()
    assert metrics["recipe"] == "bart" and metrics["steps"] == 4
    assert metrics["lengths"] == {"raw_length": 22, "encoder_length": 24, "target_length": 24}
    for key in ("copy_token_accuracy", "pointer_copy_content_token_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert np.isfinite(metrics["val_loss"]) and (out / "saved_model" / "saved_model.pb").is_file()
    assert any(line.startswith("copying baselines") for line in lines)


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
    assert cli.main(["train", "bart", "--sequence-length", "3", "--out", out]) == 2
    assert "too short" in capsys.readouterr().err
    assert cli.main(["train", "bart", "--set", "noising.text_infilling_rate=0.8",
                     "--set", "noising.token_deletion_rate=0.3", "--out", out]) == 2
    assert "token_deletion_rate" in capsys.readouterr().err
    assert not (tmp_path / "run" / "vocab.txt").exists()


def test_t5_from_a_preset_without_sentinels_fails_naming_model_init(tmp_path):
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=12, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", ".", "<extra_id_0>",
                  "c", "d", "e"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary, oov_token="[UNK]")
    preset = backbones.save_preset(backbone, tokenizer, tmp_path / "preset")
    with pytest.raises(RecipeError, match=r"model.init = .*<extra_id_1>"):
        run_class("t5")({"model": {"init": str(preset)}}, tmp_path / "run")
    # One sentinel is enough for sequences of 8 (7 raw tokens, one noise span).
    run_class("t5")({"model": {"init": str(preset), "sequence_length": 8},
                     "corruption": {"num_sentinels": 1}}, tmp_path / "run")
    run_class("bart")({"model": {"init": str(preset)}}, tmp_path / "run")
    bare = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocabulary[5:], oov_token="c")
    preset = backbones.save_preset(backbone, bare, tmp_path / "bare")
    with pytest.raises(RecipeError, match=r"model.init = .*\[MASK\]"):
        run_class("bart")({"model": {"init": str(preset)}}, tmp_path / "run")
