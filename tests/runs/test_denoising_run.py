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


def test_pack_token_ids_concatenates_documents_into_full_windows():
    import tensorflow as tf

    from kobjectives.runs.denoising import pack_token_ids

    ids = tf.ragged.constant([[1, 2, 3], [4], [], [5, 6, 7, 8, 9]], dtype=tf.int32)
    assert pack_token_ids(ids, 4).to_list() == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert pack_token_ids(ids, 9).to_list() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]


def test_copy_baselines_count_by_hand():
    import tensorflow as tf

    from kobjectives.runs.denoising import copy_baselines

    # Target [CLS] a b c d [SEP]; noised: [CLS] a [MASK] d [SEP] (b c infilled).
    # CLS=2, SEP=3, MASK=4; a..d = 10..13.
    encoder = np.array([[2, 10, 4, 13, 3, 0]], "int32")
    target = np.array([[2, 10, 11, 12, 13, 3]], "int32")
    x = {"encoder_token_ids": tf.constant(encoder), "encoder_padding_mask": tf.constant(encoder != 0)}
    dataset = [(x, tf.constant(target), tf.ones([1, 6]))]
    result = copy_baselines(dataset, excluded_ids=(0, 2, 3))
    # Aligned copy: positions 0, 1 agree (CLS, a); text tokens a..d: only a.
    assert result["copy"] == {"token_accuracy": 2 / 6, "content_token_accuracy": 1 / 4}
    # Pointer copy: CLS (pointer -1 -> 0) right, a right, b: guess after a skips
    # [MASK] -> d, wrong; c: b is nowhere, pointer stays at a -> d, wrong;
    # d: right; SEP: right.
    assert result["pointer_copy"] == {"token_accuracy": 4 / 6, "content_token_accuracy": 2 / 4}


def _toy_copy_task(n, vocabulary, seed):
    rng = np.random.default_rng(seed)
    encoder = rng.integers(5, vocabulary, (n, 8)).astype("int32")
    target = encoder[:, :4].copy()
    x = {"encoder_token_ids": encoder, "encoder_padding_mask": np.ones_like(encoder),
         "target_ids": target, "target_padding_mask": np.ones_like(target)}
    return x, target


def test_reinitialized_t5_embedding_tells_tokens_apart_keeps_t5_logits_and_learns():
    """The bug behind `train t5` predicting no text token: keras-hub's
    T5Backbone draws its embedding from TruncatedNormal(1.0), i.e. mean 1
    and std 0.05, so all tokens start alike (and the trained model ignored
    its encoder). `reinitialize_t5_embedding` redraws it from
    N(0, 1/hidden_dim) with logit scale 1, which is T5's N(0, 1) with the
    hidden_dim ** -0.5 projection scale; a short AdamW run then learns a copy
    task that the keras-hub initialization has not learned in as many steps."""
    import keras
    import keras_hub

    from kobjectives.objectives import DenoisingSeq2Seq
    from kobjectives.runs.denoising import reinitialize_t5_embedding

    hidden = 32

    def backbone(seed):
        keras.utils.set_random_seed(seed)
        return keras_hub.models.T5Backbone(
            vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=hidden,
            intermediate_dim=64, dropout=0.0)

    plain = DenoisingSeq2Seq(backbone(3))
    fixed_backbone = backbone(3)
    scale = reinitialize_t5_embedding(fixed_backbone)
    assert scale == 1.0
    fixed = DenoisingSeq2Seq(fixed_backbone, logit_scale=scale)

    def mean_abs_cosine(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        cosine = e @ e.T
        return np.abs(cosine[~np.eye(len(e), dtype=bool)]).mean()

    original = plain.backbone.token_embedding.embeddings.numpy()
    redrawn = fixed_backbone.token_embedding.embeddings.numpy()
    assert mean_abs_cosine(original) > 0.9  # keras-hub: every token ~ the all-ones vector
    assert mean_abs_cosine(redrawn) < 0.25  # ~ sqrt(2 / (pi * hidden)) = 0.14 for random vectors
    assert abs(redrawn.mean()) < 0.02 and abs(redrawn.std() - hidden ** -0.5) < 0.02

    # The tied projection gives T5's logits (embedding * sqrt(hidden), scale
    # hidden ** -0.5) for the same decoder states.
    t5_like = DenoisingSeq2Seq(backbone(3))
    t5_like.backbone.token_embedding.embeddings.assign(redrawn * hidden ** 0.5)
    states = np.random.default_rng(1).normal(size=(2, 3, hidden)).astype("float32")
    np.testing.assert_allclose(t5_like.projection(states), fixed.projection(states),
                               rtol=1e-4, atol=1e-4)
    x, y = _toy_copy_task(512, 40, seed=0)

    losses = {}
    for name, model in (("plain", plain), ("fixed", fixed)):
        model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.01, clipnorm=1.0),
                      jit_compile=False)
        history = model.fit(x, y, batch_size=32, epochs=6, verbose=0, shuffle=False)
        losses[name] = history.history["loss"][-1]
    # log(35) = 3.56 is the loss of a uniform guess over the 35 tokens.
    # Measured: keras-hub's initialization 3.59 (nothing learned), redrawn 2.37.
    assert losses["plain"] > 3.3 and losses["fixed"] < losses["plain"] - 0.8, losses
    # BART's embedding (std 0.02, unscaled logits) is left alone.
    bart = keras_hub.models.BartBackbone(
        vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16)
    before = bart.token_embedding.embeddings.numpy()
    assert reinitialize_t5_embedding(bart) == "auto"
    np.testing.assert_array_equal(bart.token_embedding.embeddings.numpy(), before)


def test_content_token_accuracy_counts_text_positions_with_and_without_the_text_restriction():
    import tensorflow as tf

    from kobjectives.runs.denoising import content_token_accuracy

    # Vocabulary of 6: 0 pad, 3 EOS, 5 a sentinel; text tokens 1, 2, 4.
    targets = np.array([[5, 1, 2, 3]], "int32")
    weights = np.array([[1, 1, 1, 0]], "float32")  # the EOS position is padding here
    logits = np.full((1, 4, 6), -5.0, "float32")
    logits[0, 0, 5] = 3.0                          # sentinel position (not text): not counted
    logits[0, 1, [5, 1]] = [2.0, 1.0]              # sentinel on top, target 1 second
    logits[0, 2, [4, 2]] = [2.0, 1.0]              # a wrong text token on top
    model = lambda x, training=False: tf.constant(logits)  # noqa: E731
    dataset = [({}, tf.constant(targets), tf.constant(weights))]
    text_argmax, any_argmax = content_token_accuracy(model, dataset, excluded_ids=(0, 3, 5))
    assert (text_argmax, any_argmax) == (0.5, 0.0)
