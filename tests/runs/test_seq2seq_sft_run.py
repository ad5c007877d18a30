"""`kobjectives train seq2seq_sft`: one tiny trained T5 run (module-scoped)
checked for its metrics (a brute-force perplexity over exactly the target
tokens), the batch layout (loss on targets only, the encoder holding the
input), the SavedModel served in a clean process; BART's layout; `--init`
from a t5 run folder; HH-RLHF pairs; the errors at recipe and check time."""

import gzip
import json
import math
import re
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import backbones
from kobjectives.data.seq2seq_sft import pack_seq2seq_examples
from kobjectives.recipe import RecipeError
from kobjectives.runs import load_recipe
from kobjectives.runs import run_class
from tests.harness import tiny_run

S2S = {
    "data.max_documents": 120,
    "model.sequence_length": 24,
    "model.target_length": 24,
    "tokenizer.vocabulary_size": 300,
    "training.steps": 12,
    "training.epochs": 1,
    "training.batch_size": 8,
    "training.learning_rate": 5e-3,
    "training.warmup_steps": 2,
    "training.validation_batches": 2,
}

# A fresh interpreter with tensorflow and tensorflow_text only.
SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    decoder = json.loads(sys.argv[3])
    out = model.signatures["serving_default"](
        text=tf.constant([sys.argv[2], "x"]), decoder_token_ids=tf.constant(decoder))
    generated = model.signatures["generate"](text=tf.constant([sys.argv[2], "x"]))
    print(json.dumps({
        "signatures": sorted(model.signatures),
        "encoder_token_ids": out["encoder_token_ids"].numpy().tolist(),
        "encoder_padding_mask": out["encoder_padding_mask"].numpy().tolist(),
        "logits": out["logits"].numpy().tolist(),
        "generated_text": [t.decode() for t in generated["text"].numpy().tolist()],
        "generated_text_dtype": generated["text"].dtype.name,
        "generated_token_ids": generated["token_ids"].numpy().tolist(),
        "foreign": [m for m in ("keras_hub", "kobjectives") if m in sys.modules],
    }))
""")


@pytest.fixture(scope="module")
def s2s_run(tmp_path_factory):
    """A tiny trained `seq2seq_sft` run (T5, corpus task): `(run, metrics, folder)`."""
    out = tmp_path_factory.mktemp("seq2seq_sft") / "run"
    run = tiny_run("seq2seq_sft", out, S2S)
    metrics = run.train()
    return run, metrics, out


def _token_ids(tokenizer, text):
    return [int(i) for i in np.asarray(tokenizer(text))]


def test_metrics_are_finite_and_the_perplexity_is_over_exactly_the_targets(s2s_run):
    run, metrics, out = s2s_run
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "seq2seq_sft" and metrics["backbone"] == "t5_tiny"
    assert metrics["dataset"] == "corpus" and metrics["packing"] is False
    assert (metrics["encoder_length"], metrics["target_length"]) == (24, 24)
    for key in ("val_loss", "val_target_perplexity", "val_target_token_accuracy",
                "unigram_target_perplexity", "unigram_target_token_accuracy",
                "val_content_token_accuracy", "unigram_content_token_accuracy"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    vocabulary = run.tokenizer.vocabulary_size()
    # Loose: a few steps land near the unigram model, both far below uniform.
    assert 1.0 < metrics["unigram_target_perplexity"] < vocabulary / 2
    assert metrics["val_target_perplexity"] < 2.0 * metrics["unigram_target_perplexity"]
    assert 0.0 < metrics["unigram_target_token_accuracy"] < 1.0
    assert metrics["documents"] == {"train": 96, "validation": 24}
    # Every held-out target token once: the end tokens, no padding.
    validation = run.validation_examples
    assert metrics["val_target_tokens"] == int(validation.target_padding_mask.sum())
    # The truncation counts are those of the untruncated lengths.
    assert metrics["truncated"]["validation"] == {
        "inputs": int((validation.input_lengths > 23).sum()),
        "targets": int((validation.target_lengths > 23).sum())}
    assert metrics["truncated"]["train"]["targets"] > 0  # answers longer than 23 tokens
    # Brute force: exp of the mean cross-entropy over the weighted targets.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    total = count = 0.0
    for x, targets, weights in run.scoring_dataset("validation", 8):
        log_p = tf.nn.log_softmax(model(x), axis=-1)
        picked = tf.gather(log_p, targets, batch_dims=2)
        total -= float(tf.reduce_sum(picked * weights))
        count += float(tf.reduce_sum(weights))
    assert count == metrics["val_target_tokens"]
    np.testing.assert_allclose(math.exp(total / count), metrics["val_target_perplexity"],
                               rtol=1e-4)
    assert metrics["example"]["input"] == run.validation_documents[0]["input"]


def test_a_batch_holds_the_input_in_the_encoder_and_weighs_only_target_tokens(s2s_run):
    run, _, out = s2s_run
    tokenizer, end, pad = run.tokenizer, run.token_id("end"), run.token_id("pad")
    x, targets, weights = next(iter(run.make_dataset("validation", 8)))
    x, targets, weights = (tf.nest.map_structure(np.asarray, v) for v in (x, targets, weights))
    for row in range(8):
        pair = run.validation_documents[row]
        source = _token_ids(tokenizer, pair["input"])[:23] + [end]
        assert x["encoder_token_ids"][row].tolist() == source + [pad] * (24 - len(source))
        target = _token_ids(tokenizer, pair["target"])[:23] + [end]
        assert targets[row].tolist() == target + [pad] * (24 - len(target))
        assert weights[row].tolist() == [1.0] * len(target) + [0.0] * (24 - len(target))
    np.testing.assert_array_equal(weights, x["target_padding_mask"])  # T5: every real id
    # The loss is the mean cross-entropy over the weighted positions only:
    # changing the labels at padding leaves it unchanged.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    model.compile()  # the objective's own loss (MaskedLMLoss)
    logits = model(x)
    loss = float(model.compute_loss(x, targets, logits, weights, training=False))
    token_losses = -tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=2).numpy()
    np.testing.assert_allclose(loss, (token_losses * weights).sum() / weights.sum(), rtol=1e-5)
    changed = np.where(weights > 0, targets, 7)
    assert float(model.compute_loss(x, changed, logits, weights, training=False)) == \
        pytest.approx(loss, rel=1e-6)


def test_saved_model_serves_raw_input_text_as_in_training(s2s_run):
    run, _, out = s2s_run
    pair = run.validation_documents[0]
    row = run.validation_examples.target_ids[0]
    decoder = [[run.token_id("pad"), int(row[0]), int(row[1])], [run.token_id("pad"), 0, 0]]
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(out / "saved_model"), pair["input"],
         json.dumps(decoder)], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["foreign"] == []
    assert result["signatures"] == ["generate", "serve_token_ids", "serving_default"]
    # The raw text is read as training read it (cut to its first 23 tokens, then [SEP]).
    encoder = np.asarray(result["encoder_token_ids"])
    np.testing.assert_array_equal(encoder[0], run.validation_examples.encoder_token_ids[0])
    assert encoder[1].tolist()[:2] == [_token_ids(run.tokenizer, "x")[0], run.token_id("end")]
    # The served logits are the trained model's, teacher-forced on the given ids.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    decoder = np.asarray(decoder, "int32")
    local = model({"encoder_token_ids": encoder.astype("int32"),
                   "encoder_padding_mask": np.asarray(result["encoder_padding_mask"], "int32"),
                   "decoder_token_ids": decoder,
                   "decoder_padding_mask": np.asarray([[1, 1, 1], [1, 0, 0]], "int32")})
    np.testing.assert_allclose(result["logits"], local, atol=1e-4)
    # ... and position 0 is the training prediction of the first target token.
    x = {k: v[:1] for k, v in run.validation_examples.x().items()}
    np.testing.assert_allclose(np.asarray(result["logits"])[0, :3], model(x)[0, :3], atol=1e-4)
    # `generate`: text out per input, the decoder window starting with the
    # start id, the same greedy ids as the run's generator in process.
    assert result["generated_text_dtype"] == "string" and len(result["generated_text"]) == 2
    ids = np.asarray(result["generated_token_ids"])
    assert ids.shape == (2, 24) and (ids[:, 0] == run.token_id("pad")).all()
    local = run.text_generator(model)(tf.constant([pair["input"], "x"]))
    np.testing.assert_array_equal(ids, local["token_ids"])
    assert result["generated_text"] == [t.decode() for t in local["text"].numpy().tolist()]


def test_bart_targets_start_with_a_given_unscored_token_and_decode_from_end(tmp_path):
    run = tiny_run("seq2seq_sft", tmp_path / "bart", {
        **S2S, "model.backbone": "bart_tiny", "data.max_documents": 60})
    run.prepare()
    start, end, pad = run.token_id("start"), run.token_id("end"), run.token_id("pad")
    x, targets, weights = (tf.nest.map_structure(np.asarray, v)
                           for v in next(iter(run.make_dataset("validation", 8))))
    target = _token_ids(run.tokenizer, run.validation_documents[0]["target"])[:22]
    assert targets[0].tolist()[:len(target) + 2] == [start, *target, end]
    assert (targets[:, 0] == start).all() and (weights[:, 0] == 0).all()
    np.testing.assert_array_equal(weights[:, 1:], x["target_padding_mask"][:, 1:])
    model = run.build_model()
    assert model.decoder_start_token_id == end and model.padding_token_id == pad
    assert model.backbone.get_config()["max_sequence_length"] == 24
    # (A BART fit traces for about 15 s: the loss of one batch, eagerly.)
    loss = model.compute_loss(x, targets, model(x), weights, training=False)
    assert np.isfinite(float(loss))


def _fake_t5_run_folder(folder, reinitialize):
    """A t5 run folder's parts that `model.init` reads: `preset/` (a
    t5_tiny backbone and a WordPiece tokenizer with a sentinel) and
    `recipe.json`."""
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
                  "what", "does", "do", "?", ".", "<extra_id_0>"]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, oov_token="[UNK]", lowercase=True,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<extra_id_0>"],
        special_tokens_in_strings=True)
    backbone = backbones.build_backbone("t5_tiny", len(vocabulary), 24, dropout=0.0)
    backbones.save_preset(backbone, tokenizer, folder / "preset")
    (folder / "recipe.json").write_text(json.dumps(
        {"recipe": "t5", "model": {"reinitialize_t5_embedding": reinitialize}}))
    return backbone, vocabulary


def test_init_from_a_t5_run_folder_reuses_its_tokenizer_weights_and_logit_scale(tmp_path):
    backbone, vocabulary = _fake_t5_run_folder(tmp_path / "t5", reinitialize=True)
    run = tiny_run("seq2seq_sft", tmp_path / "sft", {
        **S2S, "model.init": str(tmp_path / "t5"), "data.max_documents": 40})
    run.prepare()
    assert run.vocabulary == vocabulary
    assert (tmp_path / "sft" / "vocab.txt").read_text().splitlines() == vocabulary
    model = run.build_objective()
    for new, old in zip(model.backbone.weights, backbone.weights):
        np.testing.assert_array_equal(new.numpy(), old.numpy())  # not redrawn
    assert model.logit_scale == 1.0 and model.decoder_start_token_id == 0
    # An init trained at T5's own scale is refused when the scales disagree.
    _fake_t5_run_folder(tmp_path / "t5_auto", reinitialize=False)
    with pytest.raises(RecipeError, match=r"model.reinitialize_t5_embedding = True: the t5 run "
                                          r"in model.init = .* was trained with False"):
        tiny_run("seq2seq_sft", tmp_path / "x", {"model.init": str(tmp_path / "t5_auto")})
    tiny_run("seq2seq_sft", tmp_path / "y", {"model.init": str(tmp_path / "t5_auto"),
                                             "model.reinitialize_t5_embedding": False})


def test_lora_on_a_t5_init_names_t5s_projections(tmp_path):
    _fake_t5_run_folder(tmp_path / "t5", reinitialize=True)
    recipe = {**S2S, "model.init": str(tmp_path / "t5"), "data.max_documents": 40,
              "model.lora_rank": 2}
    # keras-hub's default names are other backbones': refused before any data is read.
    with pytest.raises(RecipeError, match=r"model\.lora_layers = \[\]: No layer of T5Backbone "
                                          r"is named .*'query_projector'.*'value_projector'"):
        tiny_run("seq2seq_sft", tmp_path / "sft", recipe)
    run = tiny_run("seq2seq_sft", tmp_path / "sft", {
        **recipe, "model.lora_layers": ["query_projector", "value_projector"]})
    run.prepare()
    model = run.build_objective()
    assert {(w.path.split("/")[-2], w.path.split("/")[-1]) for w in model.trainable_weights} == {
        (layer, factor) for layer in ("query_projector", "value_projector")
        for factor in ("lora_kernel_a", "lora_kernel_b")}
    assert re.search(r"^DenoisingSeq2Seq \(seq2seq SFT\) over .*t5 \([\d,]+ parameters, "
                     r"[\d,]+ trained: LoRA rank 2\)$", run.describe(model))


def test_a_bart_init_refuses_a_target_longer_than_its_positions(tmp_path):
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"], oov_token="[UNK]")
    bart = backbones.build_backbone("bart_tiny", 5, 16, dropout=0.0)
    backbones.save_preset(bart, tokenizer, tmp_path / "bart" / "preset")
    with pytest.raises(RecipeError, match=r"model.target_length = 24: the backbone of "
                                          r"model.init = .* takes at most 16 tokens"):
        tiny_run("seq2seq_sft", tmp_path / "x", {"model.init": str(tmp_path / "bart"),
                                                 "model.sequence_length": 16,
                                                 "model.target_length": 24})


@pytest.mark.parametrize("overrides, match", [
    ({"model.target_length": 1}, r"model.target_length = 1: must be in \[2, 16384\]"),
    ({"data.dataset": "sst2"}, r"data.dataset = 'sst2': must be one of 'corpus', 'hh_rlhf'"),
    ({"data.hh_rlhf_subsets": "helpful-online"}, r"helpful-online'\] is reserved"),
    ({"seq2seq.nope": 1}, r"Unknown recipe key 'seq2seq.nope'"),
])
def test_bad_recipe_values_fail_at_recipe_time(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe("seq2seq_sft", overrides=overrides)


def test_the_reserved_subset_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RecipeError, match="reserved for final evaluation"):
        run_class("seq2seq_sft")({"data": {"dataset": "hh_rlhf", "shared_dir": str(tmp_path),
                                           "hh_rlhf_subsets": ["helpful-online"]}}, out)
    assert not out.exists()


def test_bad_sources_and_backbones_fail_at_check_time(tmp_path):
    cls = run_class("seq2seq_sft")
    with pytest.raises(RecipeError, match=r"data.files: '.*\.py' is not a \.jsonl file"):
        cls({"data": {"files": [__file__]}}, tmp_path)
    with pytest.raises(RecipeError, match="data.shared_dir = .*no hh_rlhf/ folder"):
        cls({"data": {"dataset": "hh_rlhf", "shared_dir": str(tmp_path)}}, tmp_path)
    with pytest.raises(RecipeError, match="model.backbone = 'gpt2_tiny'.*encoder-decoder"):
        cls({"model": {"backbone": "gpt2_tiny"}}, tmp_path)
    with pytest.raises(RecipeError, match="model.target_length = 2: a BART target"):
        cls({"model": {"backbone": "bart_tiny", "target_length": 2}}, tmp_path)


# Slow (a run with 128-token targets, about 40 s): the default suite checks packing in
# tests/data/test_seq2seq_sft.py (every example once, static rows) and
# tests/objectives/test_denoising_seq2seq.py (packed training equals unpacked under XLA).
@pytest.mark.slow
def test_a_packed_run_trains_on_packed_rows_and_scores_every_target_once(tmp_path):
    out = tmp_path / "packed"
    # Targets of at most 300 characters in rows of 128 ids: several fit a row.
    run = tiny_run("seq2seq_sft", out, {**S2S, "seq2seq.packing": True, "training.steps": 6,
                                        "model.sequence_length": 32, "model.target_length": 128})
    metrics = run.train()
    assert metrics["packing"] is True
    for key in ("val_loss", "val_target_perplexity", "val_target_token_accuracy"):
        assert math.isfinite(metrics[key]), key
    # Fewer, fuller training rows than pairs; every training target token in them once.
    assert metrics["train_rows"] < metrics["documents"]["train"] == 96
    examples = run.train_examples
    assert metrics["train_target_fill"] == pytest.approx(
        examples.target_padding_mask.sum() / (metrics["train_rows"] * 128))
    _, bins = pack_seq2seq_examples(examples, run.token_id("pad"))
    assert len(bins) == metrics["train_rows"] and max(len(b) for b in bins) >= 2
    dataset = run.make_dataset("train", 4)
    x, _, _ = next(iter(dataset))
    assert {"encoder_segment_ids", "decoder_segment_ids"} <= set(x)
    assert x["decoder_segment_ids"].shape == (4, 128)
    # Held out: one pair per row, each target token scored once, as served.
    x, _, _ = next(iter(run.make_dataset("validation", 8)))
    assert "encoder_segment_ids" not in x
    assert metrics["val_target_tokens"] == int(run.validation_examples.target_weights.sum())
    model = keras.saving.load_model(out / "model.keras", compile=False)
    total = count = 0.0
    for x, targets, weights in run.scoring_dataset("validation", 8):
        picked = tf.gather(tf.nn.log_softmax(model(x), axis=-1), targets, batch_dims=2)
        total -= float(tf.reduce_sum(picked * weights))
        count += float(tf.reduce_sum(weights))
    np.testing.assert_allclose(math.exp(total / count), metrics["val_target_perplexity"],
                               rtol=1e-4)
    # The export serves one example per row, as without packing.
    served = tf.saved_model.load(str(out / "saved_model"))
    pad = run.token_id("pad")
    logits = served.signatures["serving_default"](
        text=tf.constant(["What does json.dumps do?"]),
        decoder_token_ids=tf.constant([[pad, 5, 6]]))["logits"]
    assert logits.shape == (1, 3, run.tokenizer.vocabulary_size())
    assert np.isfinite(logits.numpy()).all()


def test_packing_is_refused_for_a_backbone_it_cannot_mask(tmp_path, monkeypatch):
    cls = run_class("seq2seq_sft")
    monkeypatch.setattr(cls, "backbone_class_name", lambda self: "GPT2Backbone")
    with pytest.raises(RecipeError, match="seq2seq.packing = True: only keras-hub's T5Backbone "
                                          "and BartBackbone"):
        cls({"seq2seq": {"packing": True}}, tmp_path)


def test_hh_rlhf_pairs_are_the_dialogue_before_the_last_answer_and_that_answer(tmp_path):
    folder = tmp_path / "shared" / "hh_rlhf"
    folder.mkdir(parents=True)
    rows = [{"chosen": f"\n\nHuman: hello number {i}\n\nAssistant: hi there {i}",
             "rejected": "\n\nHuman: hello\n\nAssistant: go away"} for i in range(40)]
    rows[3]["chosen"] = ("\n\nHuman: pick a number\n\nAssistant: seven\n\nHuman: another one"
                         "\n\nAssistant: three")
    for subset in ("helpful-base", "helpful-online"):
        other = [{"chosen": "\n\nHuman: reserved question\n\nAssistant: reserved answer",
                  "rejected": "\n\nHuman: hello\n\nAssistant: no"}]
        with gzip.open(folder / f"{subset}.test.jsonl.gz", "wt") as file:
            for row in (rows if subset == "helpful-base" else other):
                file.write(json.dumps(row) + "\n")
    run = tiny_run("seq2seq_sft", tmp_path / "run", {
        **S2S, "data.dataset": "hh_rlhf", "data.shared_dir": str(tmp_path / "shared"),
        "data.hh_rlhf_subsets": "helpful-base", "training.batch_size": 4})
    run.prepare()
    pairs = run.train_documents + run.validation_documents
    assert len(pairs) == 40
    assert {"input": "User: hello number 5", "target": "hi there 5"} in pairs
    assert {"input": "User: pick a number\nAssistant: seven\nUser: another one",
            "target": "three"} in pairs
    assert not [p for p in pairs if "reserved" in p["input"] + p["target"]]


# The expected workflow end to end: a t5 denoising run, then seq2seq SFT from
# its folder (about a minute on 2 busy cores): under `-m slow`; the init path
# itself is checked above on a preset written directly.
@pytest.mark.slow
def test_seq2seq_sft_after_a_t5_run(tmp_path):
    t5 = tiny_run("t5", tmp_path / "t5", {"model.sequence_length": 24, "training.steps": 2,
                                          "training.saved_model": False,
                                          "data.max_documents": 100})
    t5.train()
    run = tiny_run("seq2seq_sft", tmp_path / "sft", {
        **S2S, "model.init": str(tmp_path / "t5"), "training.saved_model": False,
        "training.steps": 2})
    metrics = run.train()
    assert run.vocabulary == (tmp_path / "t5" / "vocab.txt").read_text().splitlines()
    assert math.isfinite(metrics["val_target_perplexity"])
