"""`kobjectives train sft`: one tiny trained run (module-scoped) checked for
its metrics, its completion-only scoring, the loss on all tokens, `--init`
from a clm run folder, the SavedModel served in a clean process, and the
errors at recipe and data time."""

import gzip
import json
import math
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.data import pack_sft_examples
from kobjectives.data import sft_dataset
from kobjectives.recipe import RecipeError
from kobjectives.runs import load_recipe
from kobjectives.runs import run_class
from kobjectives.runs.sft import completion_scoring_inputs
from kobjectives.backbones import grow_token_embedding
from kobjectives import backbones
from kobjectives import compat
from tests.harness import assert_lora_trained
from tests.harness import tiny_run

SFT = {
    "data.max_documents": 160,
    "model.sequence_length": 48,
    "tokenizer.vocabulary_size": 300,
    "training.steps": 24,
    "training.epochs": 1,
    "training.batch_size": 8,
    "training.learning_rate": 5e-3,
    "training.warmup_steps": 2,
    "training.validation_batches": 2,
    "sft.chunk_size": 64,
}

SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    out = model.signatures["serving_default"](
        text=tf.constant(["What does json.dumps do?", "x"]))
    generated = model.signatures["generate"](text=tf.constant(["What does json.dumps do?"]))
    print(json.dumps({
        "generated": generated["text"].numpy()[0].decode(),
        "generated_ids": generated["token_ids"].numpy()[0].tolist(),
        "keys": sorted(out),
        "token_ids": out["token_ids"].numpy().tolist(),
        "next": out["next_token_logits"].numpy().tolist(),
        "foreign": [m for m in ("keras_hub", "kobjectives") if m in sys.modules],
    }))
""")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny trained `sft` run: `(run, metrics, folder)`."""
    out = tmp_path_factory.mktemp("sft") / "run"
    run = tiny_run("sft", out, SFT)
    metrics = run.train()
    return run, metrics, out


def test_metrics_are_finite_and_score_completion_tokens_only(sft_run):
    run, metrics, out = sft_run
    assert json.loads((out / "metrics.json").read_text())["recipe"] == "sft"
    assert metrics["backbone"] == "gpt2_tiny" and metrics["dataset"] == "corpus"
    assert metrics["loss_on"] == "completion" and metrics["packing"] is True
    for key in ("val_loss", "val_completion_perplexity", "val_completion_token_accuracy",
                "unigram_completion_perplexity", "unigram_completion_accuracy",
                "train_window_fill"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0.5 < metrics["train_window_fill"] <= 1.0  # packed windows are mostly full
    vocabulary = len((out / "vocab.txt").read_text().splitlines())
    assert vocabulary == run.tokenizer.vocabulary_size()
    assert (out / "vocab.txt").read_text().splitlines()[-4:] == [
        "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    # Loose: a few steps bring the model near the unigram model of the
    # completions, both far below the uniform guess.
    assert 1.0 < metrics["unigram_completion_perplexity"] < vocabulary / 2
    assert metrics["val_completion_perplexity"] < 2.0 * metrics["unigram_completion_perplexity"]
    assert metrics["val_completion_perplexity"] < vocabulary / 2

    # Scored targets = the completion targets of the validation windows.
    windows, _ = pack_sft_examples(run.validation_examples, 48,
                                   pad_token_id=run.tokenizer.pad_token_id)
    assert metrics["val_completion_tokens"] == int(windows["sample_weight"].sum())
    # ... and the perplexity is the brute-force one over exactly those targets.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    total = count = 0.0
    for x, labels, weight in sft_dataset(run.validation_examples, 48, 8, shuffle=False,
                                         drop_remainder=False, labels=True):
        losses, _ = model.token_losses(model(x), labels)
        total += float(tf.reduce_sum(losses * weight))
        count += float(tf.reduce_sum(weight))
    assert count == metrics["val_completion_tokens"]
    np.testing.assert_allclose(math.exp(total / count), metrics["val_completion_perplexity"],
                               rtol=1e-4)


def test_completion_scoring_ids_change_exactly_where_the_weight_is_zero():
    windows = {
        "token_ids": np.array([[5, 6, 7, 8, 9, 0]]),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0]], bool),
        "segment_ids": np.array([[1, 1, 1, 2, 2, 0]]),
        "sample_weight": np.array([[0, 1, 0, 1, 0, 0]], np.float32),
    }
    x = completion_scoring_inputs(windows)
    assert x["segment_ids"].tolist() == [[0, 1, 1, 2, 2, 3]]
    assert x["example_ids"].tolist() == [[1, 1, 1, 2, 2, 0]]
    same = x["segment_ids"][:, :-1] == x["segment_ids"][:, 1:]
    np.testing.assert_array_equal(same[0], windows["sample_weight"][0, :-1] > 0)


def test_loss_on_all_weights_every_token_and_changes_the_loss(sft_run):
    run, _, out = sft_run
    everything = run.with_recipe(run.recipe.replace({"sft.loss_on": "all"}))
    x, labels, completion = next(iter(run.make_dataset("train", 8)))
    x_all, labels_all, weight_all = next(iter(everything.make_dataset("train", 8)))
    # The same windows (same seed), weighted differently.
    np.testing.assert_array_equal(x["token_ids"], x_all["token_ids"])
    np.testing.assert_array_equal(labels, labels_all)
    assert float(tf.reduce_sum(weight_all)) > float(tf.reduce_sum(completion)) > 0
    # "all": every target inside an example (a real next token of the same example).
    same = tf.logical_and(tf.equal(x["segment_ids"][:, :-1], x["segment_ids"][:, 1:]),
                          x["segment_ids"][:, :-1] > 0)
    np.testing.assert_array_equal(weight_all[:, :-1].numpy() > 0, same.numpy())
    assert not np.any((completion.numpy() > 0) & (weight_all.numpy() == 0))
    model = keras.saving.load_model(out / "model.keras", compile=False)
    hidden = model(x)
    loss = float(model.compute_loss(x, labels, hidden, completion, training=False))
    loss_all = float(model.compute_loss(x, labels, hidden, weight_all, training=False))
    assert np.isfinite(loss) and np.isfinite(loss_all) and abs(loss - loss_all) > 1e-3
    # The validation data scores completions whatever loss_on trains on.
    v = next(iter(run.make_dataset("validation", 8)))
    v_all = next(iter(everything.make_dataset("validation", 8)))
    np.testing.assert_array_equal(v[2], v_all[2])


def test_saved_model_serves_raw_prompts_in_the_chat_layout(sft_run):
    run, _, out = sft_run
    served = subprocess.run([sys.executable, "-c", SERVE, str(out / "saved_model")],
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["foreign"] == []
    assert result["keys"] == ["hidden_states", "logits", "next_token_logits", "padding_mask",
                              "token_ids"]
    tokenizer = run.tokenizer
    marker = tokenizer.token_to_id
    prompt = [int(i) for i in np.asarray(tokenizer("What does json.dumps do?"))]
    expected = [tokenizer.start_token_id, marker("<|user|>"), *prompt, marker("<|end|>"),
                marker("<|assistant|>")]
    ids = result["token_ids"][0]
    assert ids == expected + [0] * (48 - len(expected))
    # The training layout of the same user turn starts with the same ids.
    first = run.tokenized([[{"role": "user", "content": "What does json.dumps do?"},
                            {"role": "assistant", "content": "Serialize."}]], "check")
    assert first.token_ids[0].tolist()[:len(expected)] == expected
    # The served logits are the trained model's prediction after the prompt.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    mask = (np.asarray(ids) != 0).astype("int32")
    local = model.export_outputs({"token_ids": np.asarray([ids], "int32"),
                                  "padding_mask": mask[None]})["next_token_logits"]
    np.testing.assert_allclose(result["next"][0], local.numpy()[0], atol=1e-4)
    # `generate` answers the raw prompt greedily up to <|end|>, as the run's
    # own generator does in process.
    generator = run.text_generator(model)
    here = generator(tf.constant(["What does json.dumps do?"]))
    assert result["generated_ids"] == here["token_ids"].numpy()[0].tolist()
    assert result["generated_ids"][:len(expected)] == expected
    assert result["generated"] == here["text"].numpy()[0].decode()
    answer = result["generated_ids"][len(expected):]
    end = answer.index(marker("<|end|>")) if marker("<|end|>") in answer else len(answer)
    assert result["generated"] == tokenizer.detokenize(np.asarray(answer[:end], "int32"))


# Trains a clm run first (about 80 s on 2 busy cores): under `-m slow`; the
# growth itself is checked by test_grow_token_embedding_copies_every_weight...
@pytest.mark.slow
def test_init_from_a_clm_run_folder_grows_its_vocabulary_by_the_markers(tmp_path):
    clm_dir = tmp_path / "clm"
    tiny_run("clm", clm_dir, {"model.sequence_length": 48, "training.steps": 1,
                              "training.saved_model": False, "data.max_documents": 60}).train()
    clm_vocabulary = (clm_dir / "vocab.txt").read_text().splitlines()
    run = tiny_run("sft", tmp_path / "sft", {**SFT, "model.init": str(clm_dir),
                                             "data.max_documents": 60}, log=print)
    run.prepare()
    vocabulary = (tmp_path / "sft" / "vocab.txt").read_text().splitlines()
    assert vocabulary == clm_vocabulary + ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    model = run.build_model()
    assert model.backbone.vocabulary_size == len(vocabulary)
    # Every clm weight is copied; the embedding gains one row per marker.
    clm = keras.saving.load_model(clm_dir / "model.keras", compile=False)
    for new, old in zip(model.backbone.weights, clm.backbone.weights):
        if new.shape == old.shape:
            np.testing.assert_array_equal(new.numpy(), old.numpy())
        else:
            assert new.shape == (old.shape[0] + 4, old.shape[1])
            np.testing.assert_array_equal(new.numpy()[:old.shape[0]], old.numpy())
    # ... and it trains on the marker ids.
    history = model.fit(run.make_dataset("train", 8), epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_lora_from_a_clm_run_trains_the_adapters_and_the_grown_embedding(tmp_path):
    """`model.lora_rank`: only the attention query/value adapters (and
    biases) train, plus the token embedding the chat markers grew; the
    preset holds a plain backbone with the adapters merged."""
    clm_dir = tmp_path / "clm"
    tiny_run("clm", clm_dir, {"model.sequence_length": 48, "training.steps": 1,
                              "training.saved_model": False, "data.max_documents": 60}).train()
    lines = []
    tiny_run("sft", tmp_path / "sft", {
        **SFT, "model.init": str(clm_dir), "data.max_documents": 120, "model.lora_rank": 2,
        "model.lora_alpha": 8, "training.steps": 2, "training.epochs": 1, "training.saved_model": False,
        "model.dropout": 0.0}, log=lambda *parts: lines.append(" ".join(map(str, parts)))).train()
    assert any(re.search(r"\([\d,]+ parameters, [\d,]+ trained: LoRA rank 2, alpha 8, and the grown token "
                         r"embedding \([\d,]+\)\)", line)
               for line in lines)
    start = backbones.grow_token_embedding(backbones.load_backbone(str(clm_dir)),
                                           backbones.load_backbone(str(tmp_path / "sft"))
                                           .vocabulary_size)
    trained = backbones.load_backbone(str(tmp_path / "sft"))
    assert not any(getattr(layer, "lora_enabled", False) for layer in compat.flatten_layers(trained))
    assert_lora_trained(start, trained, rank=2, also_trained=("token_embedding",))
    embedding = trained.get_layer("token_embedding").embeddings.numpy()
    assert not np.array_equal(embedding, start.get_layer("token_embedding").embeddings.numpy())


def test_grow_token_embedding_copies_every_weight_and_appends_rows():
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=4, intermediate_dim=8,
        max_sequence_length=6)
    grown = grow_token_embedding(backbone, 13)
    assert grown.vocabulary_size == 13
    for new, old in zip(grown.weights, backbone.weights):
        if new.shape == old.shape:
            np.testing.assert_array_equal(new.numpy(), old.numpy())
        else:
            assert new.shape == (13, 4)
            np.testing.assert_array_equal(new.numpy()[:10], old.numpy())
    ids = np.array([[1, 2, 3]], "int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(grown(inputs), backbone(inputs), atol=1e-6)
    with pytest.raises(ValueError, match="Cannot shrink"):
        grow_token_embedding(backbone, 9)


@pytest.mark.parametrize("overrides, match", [
    ({"sft.loss_on": "prompt"}, r"sft.loss_on = 'prompt': must be one of 'completion', 'all'"),
    ({"sft.loss_normalization": "row"}, r"sft.loss_normalization = 'row'"),
    ({"sft.nope": 1}, r"Unknown recipe key 'sft.nope'"),
    ({"data.dataset": "sst2"}, r"data.dataset = 'sst2': must be one of 'corpus', 'hh_rlhf'"),
    ({"data.hh_rlhf_subsets": "helpful-online"}, r"helpful-online'\] is reserved"),
    ({"data.hh_rlhf_subsets": "helpful-base,nope"}, r"unknown subset\(s\) \['nope'\]"),
])
def test_bad_recipe_values_fail_at_recipe_time(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe("sft", overrides=overrides)


def test_bad_data_sources_fail_at_check_time(tmp_path):
    cls = run_class("sft")
    with pytest.raises(RecipeError, match=r"data.files: '.*\.py' is not a \.jsonl file"):
        cls({"data": {"files": [__file__]}}, tmp_path)
    with pytest.raises(RecipeError, match="data.tfds = 'wiki': this run reads data.files"):
        cls({"data": {"tfds": "wiki"}}, tmp_path)
    with pytest.raises(RecipeError, match="data.files: give data.files or data.dataset"):
        cls({"data": {"files": [str(tmp_path / "a.jsonl")], "dataset": "hh_rlhf"}}, tmp_path)
    with pytest.raises(RecipeError, match=r"data.files: '.*missing\.jsonl' matches no file"):
        cls({"data": {"files": [str(tmp_path / "missing.jsonl")]}}, tmp_path)
    with pytest.raises(RecipeError, match="data.shared_dir = .*no hh_rlhf/ folder"):
        cls({"data": {"dataset": "hh_rlhf", "shared_dir": str(tmp_path)}}, tmp_path)
    with pytest.raises(RecipeError, match="model.backbone = 'gemma_tiny'.*resets attention"):
        cls({"model": {"backbone": "gemma_tiny"}}, tmp_path)


def _write_hh_rlhf(folder, long_turn):
    folder.mkdir(parents=True)
    rows = [{"chosen": f"\n\nHuman: hello number {i}\n\nAssistant: hi there {i}",
             "rejected": "\n\nHuman: hello\n\nAssistant: go away"} for i in range(40)]
    rows[7]["chosen"] = f"\n\nHuman: tell me a story\n\nAssistant: {long_turn}"
    for subset in ("helpful-base", "helpful-rejection-sampled", "harmless-base",
                   "helpful-online"):
        other = [{"chosen": f"\n\nHuman: {subset} question\n\nAssistant: an answer",
                  "rejected": "\n\nHuman: hello\n\nAssistant: no"}]
        with gzip.open(folder / f"{subset}.test.jsonl.gz", "wt") as file:
            for row in (rows if subset == "helpful-base" else other):
                file.write(json.dumps(row) + "\n")


def test_an_example_longer_than_the_window_fails_at_data_time_naming_it(tmp_path):
    _write_hh_rlhf(tmp_path / "shared" / "hh_rlhf", "once upon a time " * 30)
    overrides = {**SFT, "data.dataset": "hh_rlhf", "data.shared_dir": str(tmp_path / "shared"),
                 "data.hh_rlhf_subsets": "helpful-base", "data.validation_fraction": 0.05,
                 "model.sequence_length": 32}
    run = tiny_run("sft", tmp_path / "run", overrides)
    with pytest.raises(ValueError, match=r"hh_rlhf (train|validation) example \d+ \(user: 'tell me a story'\)"
                                         r" has \d+ tokens, more than model.sequence_length = 32"):
        run.prepare()
    # `sft.overlong = "drop"` leaves it out; the reserved subset is never read.
    run = tiny_run("sft", tmp_path / "run2", {**overrides, "sft.overlong": "drop"})
    run.prepare()
    assert run.overlong_counts == {"train": 1, "validation": 0}
    assert len(run.train_examples) + len(run.validation_examples) == 39
    assert max(run.train_examples.lengths.max(), run.validation_examples.lengths.max()) <= 32
    texts = [turn["content"] for c in run.train_documents + run.validation_documents for turn in c]
    assert not [text for text in texts if "question" in text]  # helpful-base only


def test_hh_rlhf_reads_only_the_train_subsets_of_the_shared_data(shared_data, tmp_path):
    run = tiny_run("sft", tmp_path, {**SFT, "data.dataset": "hh_rlhf",
                                     "data.shared_dir": str(shared_data),
                                     "data.max_documents": 60, "sft.overlong": "drop",
                                     "data.validation_fraction": 0.1,
                                     "model.sequence_length": 1024})
    run.prepare()
    assert len(run.train_documents) + len(run.validation_documents) == 60
    assert len(run.validation_documents) == 6  # the held-out slice (0.1)
    assert run.train_documents[0][0]["role"] == "user"
    assert sum(run.overlong_counts.values()) + len(run.train_examples) + len(
        run.validation_examples) == 60


def test_a_validation_split_packed_into_less_than_a_batch_says_so(tmp_path):
    """Enough validation examples for a batch, packed into fewer rows: the
    error says they were packed (not that the examples were too few)."""
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {i}", "completion": f"{i}"}) + "\n"
                            for i in range(80)))
    run = tiny_run("sft", tmp_path / "run", {"data.files": [str(path)],
                                             "data.validation_fraction": 0.3})
    run.prepare()
    count = len(run.examples("validation"))
    assert count >= 8
    with pytest.raises(ValueError, match=rf"validation split \({count} examples, "
                                         r"data\.validation_fraction = 0\.3, packed into fewer "
                                         rf"than {count} rows\) is smaller than one batch"):
        run.make_dataset("validation", count)
    with pytest.raises(ValueError, match=rf"\({count} examples, data\.validation_fraction = "
                                         rf"0\.3\) is smaller than one batch of "
                                         rf"training\.batch_size = {count + 1}"):
        run.make_dataset("validation", count + 1)


def test_data_files_are_json_lines_examples_in_both_sft_formats(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "Say hi", "completion": "hi"},
            {"messages": [{"role": "user", "content": "Say yo"},
                          {"role": "assistant", "content": "yo"}]}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tiny_run("sft", tmp_path / "run", {"data.files": [str(path)]})
    assert run.recipe.data.source == "files"
    assert run.overlong() == "error"  # 'auto' truncates the corpus task only
    assert run.load_examples() == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        rows[1]["messages"]]
    assert run_class("seq2seq_sft")({"data": {"files": [str(path)]}}, tmp_path).load_pairs() \
        == [{"input": "Say hi", "target": "hi"}, {"input": "User: Say yo", "target": "yo"}]


def _long_prompt_examples(tmp_path):
    """40 examples: 6 whose prompt alone fills a 16-token window, 4 whose
    completion runs past it, 30 that fit."""
    rows = [{"prompt": f"Say {i}", "completion": f"{i}"} for i in range(30)]
    rows += [{"prompt": " ".join(["story"] * 30) + f" {i}", "completion": "the end"}
             for i in range(6)]
    rows += [{"prompt": f"Count {i}", "completion": " ".join(["one"] * 30)} for i in range(4)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_an_overlong_example_from_data_files_is_named_by_its_file_and_line(tmp_path):
    path = _long_prompt_examples(tmp_path)  # lines 31-36: prompts that fill 16 tokens
    run = tiny_run("sft", tmp_path / "run", {"data.files": [str(path)],
                                              "model.sequence_length": 16})
    with pytest.raises(ValueError, match=rf"^data\.files example {re.escape(str(path))}:3[1-9] "
                                         r"\(user: 'story story .*\) has \d+ tokens, more than "
                                         r"model\.sequence_length = 16"):
        run.prepare()


def test_truncate_leaves_out_the_examples_cut_to_no_completion_token(tmp_path):
    """`sft.overlong = "truncate"`: an example whose prompt fills the window
    keeps no completion token, so it would take a window and add no loss:
    it is left out and counted apart from the examples cut."""
    logs = []
    overrides = {"data.files": [str(_long_prompt_examples(tmp_path))], "sft.overlong": "truncate",
                 "model.sequence_length": 16, "data.validation_fraction": 0.25}
    run = tiny_run("sft", tmp_path / "run", overrides, log=logs.append)
    run.prepare()
    cut, empty = run.overlong_counts, run.no_completion_counts
    assert sum(cut.values()) == 10 and sum(empty.values()) == 6
    assert len(run.train_examples) + len(run.validation_examples) == 34
    for examples in (run.train_examples, run.validation_examples):
        assert examples.lengths.max() <= 16
        assert all(mask[1:].any() for mask in examples.completion_mask)  # a target each
    sizes = {"train": len(run.train_documents), "validation": len(run.validation_documents)}
    expected = [f"{split}: {cut[split]} of {sizes[split]} examples longer than 16 tokens cut to "
                f"their first tokens" + (f"; {empty[split]} of them had no completion token "
                                         "left and are left out" if empty[split] else "")
                for split in ("train", "validation") if cut[split]]
    assert [line for line in logs if "longer than 16 tokens" in line] == expected
    # With the loss on every token, a training example without completion still teaches.
    run = tiny_run("sft", tmp_path / "all", {**overrides, "sft.loss_on": "all"})
    run.prepare()
    assert run.no_completion_counts == {"train": 0, "validation": empty["validation"]}
    assert len(run.train_examples) == sizes["train"]


def test_skipped_hh_rlhf_dialogues_are_logged_without_a_python_argument(tmp_path):
    folder = tmp_path / "shared" / "hh_rlhf"
    folder.mkdir(parents=True)
    rows = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello", "rejected": "-"}
            for i in range(4)]
    rows[2]["chosen"] = "\n\nHuman: hi\n\nHuman: again"
    file = folder / "helpful-base.test.jsonl.gz"
    with gzip.open(file, "wt") as out:
        out.write("".join(json.dumps(row) + "\n" for row in rows))
    logs = []
    run = tiny_run("sft", tmp_path / "run", {
        "data.dataset": "hh_rlhf", "data.shared_dir": str(tmp_path / "shared"),
        "data.hh_rlhf_subsets": "helpful-base"}, log=logs.append)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(run.load_examples()) == 3
    assert logs == [f"data: 1 malformed HH-RLHF dialogue(s) left out (the first: {file}:3: "
                    "dialogue turn[1]: a 'user' turn follows a 'user' turn; user and assistant "
                    "turns must alternate, starting with 'user' (merge consecutive turns of one "
                    "role).)"]


def test_skipped_rows_are_logged_when_the_read_then_fails():
    import warnings

    from kobjectives.data.chat import SkippedRowsWarning
    from kobjectives.runs.sft import reading_skipped_rows

    def read():
        warnings.warn(SkippedRowsWarning("...", 3, "a.jsonl:1: no turn"))
        raise ValueError("No HH-RLHF dialogue left.")

    lines = []
    with pytest.raises(ValueError, match="No HH-RLHF dialogue left"):
        reading_skipped_rows(lines.append, "HH-RLHF dialogue(s)", read)
    assert lines == ["data: 3 malformed HH-RLHF dialogue(s) left out (the first: "
                     "a.jsonl:1: no turn)"]
