"""`kobjectives train reward`: one tiny trained run (module-scoped) checked
for its metrics against a recomputation, the length baseline, the
SavedModel served in a clean process, and the errors at recipe time."""

import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kobjectives.recipe import RecipeError
from kobjectives.runs import export_run_dir
from kobjectives.data import PreferenceExamples
from kobjectives.runs.preference_pairs import length_baseline_accuracy
from kobjectives.runs.preference_pairs import length_controlled_accuracy
from kobjectives.runs.preference_pairs import render_pair_texts
from tests.harness import tiny_run

REWARD = {
    "data.max_documents": 120,
    "model.sequence_length": 48,
    "tokenizer.vocabulary_size": 300,
    "training.steps": 20,
    "training.epochs": 1,
    "training.batch_size": 8,
    "training.learning_rate": 3e-3,
    "training.warmup_steps": 2,
    "training.validation_batches": 2,
    "reward.center_rewards_coefficient": 0.01,
}

SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    texts = json.loads(sys.argv[2])
    out = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](text=tf.constant(texts))
    again = tf.saved_model.load(sys.argv[3]).signatures["serving_default"](
        text=tf.constant(texts))
    print(json.dumps({
        "again": again["reward"].numpy().tolist(),
        "keys": sorted(out),
        "reward": out["reward"].numpy().tolist(),
        "token_ids": out["token_ids"].numpy().tolist(),
        "foreign": [m for m in ("keras_hub", "kobjectives") if m in sys.modules],
    }))
""")


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """A tiny trained `reward` run: `(run, metrics, folder)`."""
    out = tmp_path_factory.mktemp("reward") / "run"
    run = tiny_run("reward", out, REWARD)
    metrics = run.train()
    return run, metrics, out


def test_metrics_equal_a_recomputation_and_name_the_baselines(reward_run):
    run, metrics, out = reward_run
    assert json.loads((out / "metrics.json").read_text())["recipe"] == "reward"
    assert metrics["backbone"] == "gpt2_tiny" and metrics["dataset"] == "corpus"
    for key in ("val_loss", "val_reward_accuracy", "val_reward_margin",
                "length_baseline_accuracy"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["chance_accuracy"] == 0.5
    examples = run.validation_examples
    assert metrics["val_pairs"] == len(examples) == metrics["documents"]["validation"]
    # The held-out metrics are those of the saved model, pair by pair.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    chosen, rejected = run.pair_rewards(model, examples, 5)
    np.testing.assert_allclose(metrics["val_reward_accuracy"], np.mean(chosen > rejected))
    np.testing.assert_allclose(metrics["val_reward_margin"], np.mean(chosen - rejected),
                               rtol=1e-5, atol=1e-6)
    lengths = [(len(c), len(r)) for c, r in zip(examples.chosen_ids, examples.rejected_ids)]
    expected = np.mean([0.5 if c == r else float(c > r) for c, r in lengths])
    assert metrics["length_baseline_accuracy"] == pytest.approx(expected)
    correct = chosen > rejected
    sides = [np.mean([ok for ok, (c, r) in zip(correct, lengths) if test(c, r)])
             for test in (lambda c, r: c > r, lambda c, r: c < r)]
    assert metrics["val_length_controlled_accuracy"] == pytest.approx(np.mean(sides))
    assert metrics["train_loss_last_round"] < math.log(2) + 0.5  # not diverged


def test_saved_model_scores_rendered_text_as_the_model_scores_the_pair(reward_run, tmp_path):
    run, _, out = reward_run
    export_run_dir(out, tmp_path / "again")  # `kobjectives export RUN_DIR`
    # Pairs that fit the window whole (a longer one is cut: 'keep_end' in
    # training, its first tokens at serving time).
    documents = run.pairs["validation"] + run.pairs["train"]
    fits = run.tokenized(documents).lengths + 1 <= 48
    pairs = [pair for pair, fit in zip(documents, fits) if fit][:2] + [
        ([{"role": "user", "content": "What does json.dumps do?"}],
         "Serialize obj to a JSON formatted str.", "Deserialize s to a Python object.")]
    assert len(pairs) == 3
    texts = [text for pair in pairs for text in render_pair_texts(pair)]
    served = subprocess.run([sys.executable, "-c", SERVE, str(out / "saved_model"),
                             json.dumps(texts), str(tmp_path / "again" / "saved_model")],
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["foreign"] == []
    np.testing.assert_allclose(result["again"], result["reward"], atol=1e-6)
    assert result["keys"] == ["padding_mask", "reward", "token_ids"]
    # The rendered text becomes the training layout's ids ...
    model = keras.saving.load_model(out / "model.keras", compile=False)
    examples = run.tokenized(pairs)
    served_ids = np.asarray(result["token_ids"])
    for index in range(len(pairs)):
        start = [examples.start_token_id]
        for offset, completion in enumerate((examples.chosen_ids[index],
                                             examples.rejected_ids[index])):
            expected = start + list(examples.prompt_ids[index]) + list(completion)
            row = served_ids[2 * index + offset]
            assert row[:len(expected)].tolist() == expected
            assert not row[len(expected):].any()
    # ... and its reward is the in-process reward of the pair.
    chosen, rejected = run.pair_rewards(model, examples, 3)
    np.testing.assert_allclose(result["reward"][0::2], chosen, atol=1e-4)
    np.testing.assert_allclose(result["reward"][1::2], rejected, atol=1e-4)


def test_recipe_errors_are_named(tmp_path):
    with pytest.raises(RecipeError, match="helpful-online"):
        tiny_run("reward", tmp_path, {"data.hh_rlhf_subsets": ["helpful-online"]})
    with pytest.raises(RecipeError, match=r"data.files: '.*\*\.txt' is not a \.jsonl file"):
        tiny_run("reward", tmp_path, {"data.files": [str(tmp_path / "*.txt")]})
    with pytest.raises(RecipeError, match="data.shared_dir"):
        tiny_run("reward", tmp_path, {"data.dataset": "hh_rlhf",
                                      "data.shared_dir": str(tmp_path / "none")})
    with pytest.raises(RecipeError, match="reward.pooling"):
        tiny_run("reward", tmp_path, {"reward.pooling": "pooled"})


def test_data_files_are_json_lines_pairs_for_reward_and_dpo(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Greet me", "chosen": "Hello!", "rejected": "No."},
            {"prompt": [{"role": "user", "content": "Hi"}],
             "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": "Bye"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = [([{"role": "user", "content": "Greet me"}], "Hello!", "No."),
                ([{"role": "user", "content": "Hi"}], "Hello", "Bye")]
    for name in ("reward", "dpo"):
        run = tiny_run(name, tmp_path / name, {"data.files": [str(tmp_path / "*.jsonl")]})
        assert run.recipe.data.source == "files"
        assert run.load_pairs() == expected


def test_length_controlled_accuracy_is_blind_to_a_length_only_score():
    examples = PreferenceExamples([np.array([5])] * 4,
                                  [np.full(n, 7) for n in (3, 4, 1, 2)],
                                  [np.full(n, 8) for n in (1, 2, 5, 2)])
    longer = np.array([3.0, 4.0, 1.0, 2.0]), np.array([1.0, 2.0, 5.0, 2.0])
    # 'Prefer the longer answer' is right on 2 of the 3 unequal pairs, but
    # right on every 'chosen longer' pair and wrong on the 'chosen shorter' one.
    assert np.mean(longer[0] > longer[1]) == 0.5
    assert length_controlled_accuracy(examples, *longer) == 0.5
    assert length_controlled_accuracy(examples, [1, 1, 1, 0], [0, 0, 0, 1]) == 1.0
    assert length_controlled_accuracy(examples, [1, 0, 0, 0], [0, 1, 1, 1]) == 0.25
    assert np.isnan(length_controlled_accuracy(PreferenceExamples(
        [np.array([5])], [np.full(2, 7)], [np.full(1, 8)]), [1.0], [0.0]))


def test_balance_lengths_trains_on_the_balanced_subset(tmp_path):
    run = tiny_run("reward", tmp_path, {**REWARD, "data.balance_lengths": True})
    run.prepare()
    train = run.examples["train"]
    assert len(train) == len(run.pairs["train"]) == run.document_counts()["train"]
    # The corpus task's looped answers are about as long as the true ones,
    # but not exactly: after balancing, length predicts nothing.
    assert run.dropped["length_balance"] > 0
    assert length_baseline_accuracy(train) == pytest.approx(0.5)
    kept = {(tuple(c), tuple(r)) for c, r in zip(train.chosen_ids, train.rejected_ids)}
    whole = tiny_run("reward", tmp_path / "whole", REWARD)
    whole.prepare()
    everything = {(tuple(c), tuple(r)) for c, r in zip(whole.examples["train"].chosen_ids,
                                                      whole.examples["train"].rejected_ids)}
    assert kept < everything  # a subset of the same pairs
    assert len(run.examples["validation"]) == len(whole.examples["validation"])  # whole


def test_a_validation_split_smaller_than_a_batch_names_the_recipe_keys(tmp_path):
    """A validation split smaller than one batch: the error names the keys
    that fix it, before any pipeline or model is built."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": f"No {i}."}) + "\n" for i in range(40)))
    for name in ("reward", "dpo"):
        run = tiny_run(name, tmp_path / name, {"data.files": [str(path)]})
        run.prepare()
        count, fraction = len(run.pairs["validation"]), run.recipe.data.validation_fraction
        assert 0 < count < 40
        with pytest.raises(ValueError, match=(
                rf"validation split \({count} examples, data\.validation_fraction = {fraction}\) "
                rf"is smaller than one batch of training\.batch_size = {count + 1} \(per "
                r"replica\)\. Raise data\.validation_fraction, lower training\.batch_size")):
            run.make_dataset("validation", count + 1)
        assert run.make_dataset("validation", count) is not None


def test_an_undefined_length_controlled_accuracy_is_said_in_words(tmp_path):
    run = tiny_run("reward", tmp_path)
    metrics = {"val_reward_accuracy": 0.75, "length_baseline_accuracy": 0.5, "val_pairs": 4,
               "val_reward_margin": 0.125, "val_length_controlled_accuracy": float("nan")}
    # metrics.json holds null there (write_json); the log says why instead of "nan".
    assert run.summary(metrics) == [
        "held-out reward accuracy 0.7500 vs length baseline 0.5000 and chance 0.5 (4 pairs); "
        "mean margin 0.1250; length-controlled undefined (it needs pairs whose chosen answer "
        "has more tokens and pairs whose chosen answer has fewer)"]
    metrics["val_length_controlled_accuracy"] = 0.5
    assert run.summary(metrics)[0].endswith("; length-controlled 0.5000")


def test_split_seed_keeps_the_validation_pairs_across_training_seeds(tmp_path):
    """`data.split_seed` fixes the split and the corpus pairs drawn; by
    default (-1) they follow `training.seed`."""
    def validation(name, **overrides):
        run = tiny_run("reward", tmp_path / name, {**REWARD, **overrides})
        run.prepare()
        return run.pairs["validation"]

    seed0 = validation("a")
    assert validation("b", **{"training.seed": 1, "data.split_seed": 0}) == seed0
    assert validation("c", **{"training.seed": 5, "data.split_seed": 1}) == validation(
        "d", **{"training.seed": 1})
    assert validation("e", **{"training.seed": 1}) != seed0
