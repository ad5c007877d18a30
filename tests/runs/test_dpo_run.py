"""`kobjectives train dpo`: a tiny SFT run, then DPO from it (module-scoped),
checked for its reference (the SFT policy's log-probabilities), its held-out
figures against a recomputation, precomputed equal to online training, the
win-rate protocol with a reward-run judge, generation, KTO on the pairs
unpaired (its step-0 loss by hand, the same held-out figures), KTO on
natively unpaired rows (`--data` of `{"prompt", "completion", "label"}`:
its split, step-0 loss and KTO's held-out row figures against a
recomputation), KTO's `apo_zero_unpaired` type (no KL row computed),
reference-free DPO (`preference.reference = 'none'`), and the errors at
recipe time."""

import json
import math
import re
import types

import keras
import numpy as np
import pytest

from kobjectives import backbones
from kobjectives.data import corpus_preference_pairs
from kobjectives.data import read_unpaired_rows
from kobjectives.data import split_examples
from kobjectives.data.preference import KTO_KEYS
from kobjectives.data.preference import REFERENCE_LOGPS_KEYS
from kobjectives.objectives import KahnemanTverskyOptimization
from kobjectives.objectives import precompute_reference_log_probs
from kobjectives.recipe import RecipeError
from kobjectives.runs.dpo import _probe_backbone
from kobjectives.runs.dpo import implicit_reward_statistics
from kobjectives.runs.dpo import kto_reward_statistics
from kobjectives.runs.dpo import win_rate
from kobjectives.backbones import grow_token_embedding
from tests.harness import assert_lora_trained
from tests.harness import tiny_run

SFT = {
    "data.max_documents": 160,
    "model.sequence_length": 48,
    "tokenizer.vocabulary_size": 300,
    "training.steps": 12,
    "training.batch_size": 8,
    "training.learning_rate": 5e-3,
    "training.saved_model": False,
    "sft.chunk_size": 64,
}

DPO = {
    "data.max_documents": 80,
    "model.sequence_length": 48,
    "training.steps": 6,
    "training.batch_size": 8,
    "training.learning_rate": 1e-3,
    "training.validation_batches": 2,
    "training.saved_model": False,
}


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo") / "sft"
    tiny_run("sft", out, SFT).train()
    return out


@pytest.fixture(scope="module")
def unpaired_rows(tmp_path_factory):
    """A JSON Lines file of 50 unpaired rows (TRL's unpaired format): each of
    30 corpus pairs' chosen answer desirable, two in three rejected answers
    undesirable; string and turn prompts alternate."""
    rows = []
    for i, (prompt, chosen, rejected) in enumerate(
            corpus_preference_pairs(seed=0, limit=30, max_characters=96)):
        prompt = prompt if i % 2 else prompt[0]["content"]
        rows.append({"prompt": prompt, "completion": chosen, "label": True})
        if i % 3:
            rows.append({"prompt": prompt, "completion": rejected, "label": False})
    path = tmp_path_factory.mktemp("kto") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _start_backbone(run, sft_folder):
    """The SFT run's policy, the chat markers' rows grown as the run grows them."""
    start = backbones.load_backbone(str(sft_folder), dropout=0.0)
    if start.vocabulary_size < run.tokenizer.vocabulary_size():
        start = grow_token_embedding(start, run.tokenizer.vocabulary_size())
    return start


@pytest.fixture(scope="module")
def dpo_run(sft_folder, tmp_path_factory):
    """A tiny `dpo` run from the SFT run: `(run, metrics, folder)`."""
    out = tmp_path_factory.mktemp("dpo") / "run"
    run = tiny_run("dpo", out, {**DPO, "model.init": str(sft_folder)})
    return run, run.train(), out


def test_statistics_and_win_rate_on_hand_computed_cases():
    policy = {"chosen": np.array([-1.0, -4.0, -2.0]), "rejected": np.array([-3.0, -2.0, -2.0])}
    reference = {"chosen": np.array([-2.0, -3.0, -2.0]), "rejected": np.array([-2.0, -3.0, -2.0])}
    # Implicit rewards 0.5 * (policy - reference): chosen [0.5, -0.5, 0], rejected [-0.5, 0.5, 0].
    out = implicit_reward_statistics(policy, reference, beta=0.5)
    assert out["implicit_reward_accuracy"] == pytest.approx(1 / 3)  # the tie is wrong
    assert out["reward_margin"] == pytest.approx((1.0 - 1.0 + 0.0) / 3)
    assert out["chosen_reward"] == pytest.approx(0.0)
    assert out["policy_log_prob_accuracy"] == pytest.approx(1 / 3)
    assert out["reference_log_prob_accuracy"] == 0.0
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx(2.5 / 4)
    # Length-controlled: wins 1, 1/2 (tie), 0, 1; the policy's answer longer on the first
    # two ((1 + 1/2) / 2), shorter on the third (0), as long on the fourth (left out).
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0], [9, 9, 2, 5],
                    [3, 3, 4, 5]) == pytest.approx((0.75 + 0.0) / 2)
    # A judge that only rewards length: 0.9 raw win rate, 0.5 length-controlled.
    lengths = np.arange(20)
    policy_lengths = np.where(lengths < 18, lengths + 1, lengths - 1)
    scores, reference_scores = policy_lengths.astype(float), lengths.astype(float)
    assert win_rate(scores, reference_scores) == pytest.approx(0.9)
    assert win_rate(scores, reference_scores, policy_lengths, lengths) == pytest.approx(0.5)


def test_kto_reward_statistics_on_a_hand_computed_case():
    # Rewards 0.5 * (policy - reference): desirable [0.5, 0, -1], undesirable [-0.5, 1].
    out = kto_reward_statistics([-1.0, -2.0, -4.0, -3.0, 0.0], [-2.0, -2.0, -2.0, -2.0, -2.0],
                                [True, True, True, False, False], beta=0.5)
    assert out["desirable_reward"] == pytest.approx(-0.5 / 3)
    assert out["undesirable_reward"] == pytest.approx(0.25)
    assert out["reward_margin"] == pytest.approx(-0.5 / 3 - 0.25)
    assert out["desirable_reward_positive"] == pytest.approx(1 / 3)  # 0 is not > 0
    assert out["undesirable_reward_negative"] == pytest.approx(0.5)
    assert (out["desirable_rows"], out["undesirable_rows"]) == (3, 2)
    # A kind without rows: its figures (and the margin) are NaN, not an error.
    only = kto_reward_statistics([-1.0], [-2.0], [True], beta=1.0)
    assert only["desirable_reward"] == 1.0 and only["undesirable_rows"] == 0
    assert math.isnan(only["undesirable_reward"]) and math.isnan(only["reward_margin"])
    with pytest.raises(ValueError, match="one shape"):
        kto_reward_statistics([-1.0, -2.0], [-2.0, -2.0], [True], beta=1.0)


def test_reference_is_the_sft_policy_and_metrics_equal_a_recomputation(dpo_run, sft_folder):
    run, metrics, out = dpo_run
    assert metrics["recipe"] == "dpo" and metrics["method"] == "dpo"
    assert metrics["loss_type"] == ["sigmoid"] and metrics["beta"] == pytest.approx(0.1)
    # The reference values are the SFT run's policy's, the markers' rows grown alike.
    start = backbones.load_backbone(str(sft_folder), dropout=0.0)
    if start.vocabulary_size < run.tokenizer.vocabulary_size():
        start = grow_token_embedding(start, run.tokenizer.vocabulary_size())
    expected = precompute_reference_log_probs(
        start, run.pair_dataset("validation", 5, ordered=True))
    first_train = precompute_reference_log_probs(
        start, run.pair_dataset("train", 3, ordered=True).take(1))
    for key, value in expected.items():
        np.testing.assert_allclose(run.reference_values["validation"][key], value, atol=1e-4)
        np.testing.assert_allclose(run.reference_values["train"][key][:3], first_train[key],
                                   atol=1e-4)
    # The held-out figures are the saved policy's against those values.
    model = keras.saving.load_model(out / "model.keras", compile=False)
    policy = run.policy_log_probs(model, "validation")
    reference = {"chosen": expected["reference_chosen_logps"],
                 "rejected": expected["reference_rejected_logps"]}
    again = implicit_reward_statistics(policy, reference, 0.1)
    for key, value in again.items():
        assert metrics[f"val_{key}"] == pytest.approx(value, abs=1e-4), key
    assert metrics["val_pairs"] == len(run.examples["validation"])
    assert 0.0 <= metrics["val_length_baseline_accuracy"] <= 1.0
    # Training moved the policy away from the reference: the margins are no longer 0.
    assert abs(metrics["val_reward_margin"]) > 1e-4
    assert math.isfinite(metrics["train_loss_last_round"])


# Slow: a second run. test_preference_optimization checks precomputed == frozen by default.
@pytest.mark.slow
def test_online_reference_trains_as_the_precomputed_one(dpo_run, sft_folder, tmp_path):
    _, metrics, _ = dpo_run
    online = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                        "preference.reference": "online"})
    again = online.train()
    assert "train" not in online.reference_values  # the frozen copy computes them
    assert not online.uses_precomputed_reference()
    assert again["train_loss_first_round"] == pytest.approx(metrics["train_loss_first_round"],
                                                            abs=1e-4)
    assert again["val_implicit_reward_accuracy"] == pytest.approx(
        metrics["val_implicit_reward_accuracy"])
    assert again["val_reward_margin"] == pytest.approx(metrics["val_reward_margin"], abs=1e-4)


# Slow: trains a reward run as the judge; win_rate's hand-computed case stays by default.
@pytest.mark.slow
def test_win_rate_protocol_and_generation(dpo_run, tmp_path):
    run, _, out = dpo_run
    judge = tmp_path / "judge"
    tiny_run("reward", judge, {"data.max_documents": 60, "model.sequence_length": 48,
                               "training.steps": 2}).train()
    run = run.with_recipe(run.recipe.replace({"preference.judge": str(judge),
                                              "preference.judge_prompts": 5,
                                              "preference.max_new_tokens": 6}))
    # The starting policy judged against itself: the same answers, a win rate of exactly 1/2.
    start = run._objective(run._starting_backbone(), None)
    same = run.judged(start)
    assert same["val_judged_prompts"] == 5 and same["val_identical_answers"] == 1.0
    assert same["val_win_rate"] == 0.5
    assert same["val_policy_answer_words"] == same["val_reference_answer_words"]
    assert np.isnan(same["val_length_controlled_win_rate"])  # every pair of answers as long
    answers = [json.loads(line) for line in (out / "judged_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 5 and answers[0]["policy_answer"] == answers[0]["reference_answer"]
    assert answers[0]["policy_score"] == pytest.approx(answers[0]["reference_score"])
    assert same["val_policy_judge_reward"] == pytest.approx(same["val_reference_judge_reward"])
    # Answers are the greedy continuations of the prompt, at most max_new_tokens long.
    answers = run.generate(start, run.examples["validation"].prompt_ids[:2])
    assert len(answers) == 2
    assert all(isinstance(a, str) and len(a.split()) <= 6 for a in answers)
    # Batched by length, answered in the order given: as each prompt alone.
    prompts = sorted(run.examples["validation"].prompt_ids[:4], key=len, reverse=True)
    assert len({len(p) for p in prompts}) > 1
    assert run.generate(start, prompts, batch_size=3) == [
        run.generate(start, [p], batch_size=1)[0] for p in prompts]
    served = run.text_generator(start)(["What does json.dumps do?"])
    assert served["text"].shape == (1,)


def test_recipe_errors_are_named_before_any_data(tmp_path):
    with pytest.raises(RecipeError, match="preference.*loss_type.*sigmoidd|sigmoidd"):
        tiny_run("dpo", tmp_path, {"preference.loss_type": ["sigmoidd"]})
    with pytest.raises(RecipeError, match="label_smoothing|label smoothing"):
        tiny_run("dpo", tmp_path, {"preference.loss_type": ["hinge"],
                                   "preference.label_smoothing": 0.2})  # hinge ignores it
    with pytest.raises(RecipeError, match="preference.reference"):
        tiny_run("dpo", tmp_path, {"preference.method": "simpo",
                                   "preference.reference": "online"})
    with pytest.raises(RecipeError, match="preference.judge"):
        tiny_run("dpo", tmp_path, {"preference.judge": str(tmp_path / "none")})
    with pytest.raises(RecipeError, match=r"max_new_tokens = 31: .*= 32 use at most 30"):
        tiny_run("dpo", tmp_path, {"preference.judge": str(tmp_path / "none"),
                                   "preference.max_new_tokens": 31})
    with pytest.raises(RecipeError, match="heldout_subsets"):
        tiny_run("dpo", tmp_path, {"data.heldout_subsets": ["helpful-online"]})
    with pytest.raises(RecipeError, match="helpful-online"):
        tiny_run("dpo", tmp_path, {"data.hh_rlhf_subsets": ["helpful-online"]})
    for method in ("simpo", "cpo", "orpo"):  # one loss each: a loss_type would be ignored
        with pytest.raises(RecipeError, match=rf"preference\.loss_type = \['ipo'\]: method "
                                              rf"'{method}' has one loss of its own"):
            tiny_run("dpo", tmp_path, {"preference.method": method,
                                       "preference.loss_type": ["ipo"]})


def test_kto_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"preference\.desirable_weight = 2\.0: only method 'kto'"):
        tiny_run("dpo", tmp_path, {"preference.desirable_weight": 2.0})  # method dpo
    with pytest.raises(RecipeError, match=r"preference\.undesirable_weight = 1\.5: .*'simpo'"):
        tiny_run("dpo", tmp_path, {"preference.method": "simpo",
                                   "preference.undesirable_weight": 1.5})
    with pytest.raises(RecipeError, match=r"preference\.undesirable_weight = 0\.0: must be in "):
        tiny_run("dpo", tmp_path, {"preference.method": "kto",
                                   "preference.undesirable_weight": 0.0})
    with pytest.raises(RecipeError, match=r"preference\.loss_type = \['ipo'\]: method 'kto'"):
        tiny_run("dpo", tmp_path, {"preference.method": "kto", "preference.loss_type": ["ipo"]})
    with pytest.raises(RecipeError, match=r"preference\.label_smoothing = 0\.1: KTO has no"):
        tiny_run("dpo", tmp_path, {"preference.method": "kto",
                                   "preference.label_smoothing": 0.1})
    for method in ("kto", "dpo", "orpo"):  # the margin is SimPO's alone
        with pytest.raises(RecipeError, match=rf"preference\.gamma = 0\.5: .*'{method}'"):
            tiny_run("dpo", tmp_path, {"preference.method": method, "preference.gamma": 0.5})
    assert tiny_run("dpo", tmp_path, {"preference.method": "simpo",
                                      "preference.gamma": 0.5}).recipe.preference.gamma == 0.5
    # A valid KTO recipe, online reference included (KTO holds a frozen reference as DPO).
    run = tiny_run("dpo", tmp_path, {"preference.method": "kto", "preference.reference": "online",
                                     "preference.desirable_weight": 1.33})
    objective = run._objective(_probe_backbone(), None)
    assert isinstance(objective, KahnemanTverskyOptimization)
    assert (objective.beta, objective.desirable_weight, objective.undesirable_weight,
            objective.loss_type) == (0.1, 1.33, 1.0, "kto")


def test_use_weighting_is_the_dpo_familys_and_reaches_the_objective(tmp_path):
    for method in ("simpo", "orpo", "kto"):  # WPO weighting is the DPO family's alone
        with pytest.raises(RecipeError,
                           match=rf"preference\.use_weighting = true: .*'{method}'"):
            tiny_run("dpo", tmp_path, {"preference.method": method,
                                       "preference.use_weighting": True})
    with pytest.raises(RecipeError, match=r"preference \(dpo\): .*use_weighting.*aot"):
        tiny_run("dpo", tmp_path, {"preference.loss_type": ["aot"],
                                   "preference.use_weighting": True})
    for value in (False, True):
        run = tiny_run("dpo", tmp_path, {"preference.use_weighting": value})
        objective = run._objective(_probe_backbone(), None)
        assert objective.use_weighting is value


def test_alpha_is_simpos_and_cpos_and_reaches_the_objective(tmp_path):
    for method in ("dpo", "orpo", "kto"):  # AlphaPO reshapes SimPO's and CPO's rewards
        with pytest.raises(RecipeError, match=rf"preference\.alpha = 0\.25: AlphaPO .*'{method}'"):
            tiny_run("dpo", tmp_path, {"preference.method": method, "preference.alpha": 0.25})
    for method in ("simpo", "cpo"):
        run = tiny_run("dpo", tmp_path, {"preference.method": method, "preference.alpha": -0.5})
        assert run._objective(_probe_backbone(), None).alpha == -0.5
    assert tiny_run("dpo", tmp_path, {"preference.method": "simpo"})._objective(
        _probe_backbone(), None).alpha == 0.0


def test_kto_trains_the_pairs_unpaired_and_reports_the_dpo_figures(sft_folder, tmp_path):
    # Two steps, two rounds: the first round's loss is step 0's alone.
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "preference.method": "kto",
                                     "preference.undesirable_weight": 1.5,
                                     "training.steps": 2, "training.epochs": 2})
    metrics = run.train()
    assert metrics["method"] == "kto" and metrics["loss_type"] == "kto"
    assert metrics["beta"] == pytest.approx(0.1)  # beta 0: KTO's default
    assert (metrics["desirable_weight"], metrics["undesirable_weight"]) == (1.0, 1.5)
    # Each kept pair is two rows: its chosen answer desirable (in pair order), then its
    # rejected answer undesirable; only pairs' values are computed for evaluation.
    for split in ("train", "validation"):
        rows, pairs = run.kto_rows[split], run.examples[split]
        count = len(pairs)
        assert len(rows) == 2 * count == metrics["kto_rows"][split]
        assert rows.desirable.tolist() == [True] * count + [False] * count
        for i in range(count):
            np.testing.assert_array_equal(rows.prompt_ids[i], pairs.prompt_ids[i])
            np.testing.assert_array_equal(rows.completion_ids[i], pairs.chosen_ids[i])
            np.testing.assert_array_equal(rows.completion_ids[count + i], pairs.rejected_ids[i])
        assert len(run.kto_reference_values[split]["reference_kl_logps"]) == 2 * count
    assert "train" not in run.reference_values
    # Step 0: the policy is its reference, so every log-ratio and the KL reference point
    # are 0 and a row costs its weight times 1 - sig(0) = 1/2 (the rows precomputed with
    # their own KL rows). The first batch is rebuilt from the same seed.
    keras.utils.set_random_seed(run.recipe.training.seed)
    desirable = next(iter(run.make_dataset("train", DPO["training.batch_size"])))[
        "desirable"].numpy()
    expected = 0.5 * np.mean(np.where(desirable, 1.0, 1.5))
    assert metrics["train_loss_first_round"] == pytest.approx(expected, abs=1e-5)
    assert math.isfinite(metrics["train_loss_last_round"]) and math.isfinite(metrics["val_loss"])
    # Held-out: the dpo method's implicit-reward figures over exactly the validation pairs.
    assert metrics["val_pairs"] == len(run.examples["validation"])
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert isinstance(model, KahnemanTverskyOptimization)
    policy = run.policy_log_probs(model, "validation")
    assert len(policy["chosen"]) == metrics["val_pairs"]
    reference = dict(zip(("chosen", "rejected"), (
        run.reference_values["validation"][key] for key in REFERENCE_LOGPS_KEYS)))
    again = implicit_reward_statistics(policy, reference, 0.1)
    for key, value in again.items():
        assert metrics[f"val_{key}"] == pytest.approx(value, abs=1e-4), key


def test_ld_alpha_is_the_dpo_familys_and_reaches_the_objective_and_reference(
        tmp_path, monkeypatch):
    for method in ("simpo", "kto"):  # LD-DPO is the DPO family's alone
        with pytest.raises(RecipeError, match=rf"preference\.ld_alpha = 0\.5: .*'{method}'"):
            tiny_run("dpo", tmp_path, {"preference.method": method,
                                       "preference.ld_alpha": 0.5})
    with pytest.raises(RecipeError, match=r"preference\.ld_alpha = 1\.5: must be in "):
        tiny_run("dpo", tmp_path, {"preference.ld_alpha": 1.5})
    # 1 (the default) is plain DPO: off; any value in [0, 1) turns it on, 0 included.
    for value, expected in ((1.0, None), (0.0, 0.0), (0.5, 0.5)):
        run = tiny_run("dpo", tmp_path, {"preference.ld_alpha": value})
        assert run.ld_alpha() == expected
        assert run._objective(_probe_backbone(), None).ld_alpha == expected
    # Every precomputed value of the run (the reference's of each split, the policy's of
    # the held-out figures) is LD-weighted alike (the values themselves are checked
    # against TRL in tests/objectives/test_preference_optimization.py).
    calls = []

    def recording(model, dataset, chunk_size=None, ld_alpha=None):
        calls.append(ld_alpha)
        count = sum(int(batch["chosen_token_ids"].shape[0]) for batch in dataset)
        return {key: np.zeros(count, "float32") for key in REFERENCE_LOGPS_KEYS}

    monkeypatch.setattr("kobjectives.runs.dpo.precompute_reference_log_probs", recording)
    run = tiny_run("dpo", tmp_path / "ld", {
        "data.max_documents": 30, "model.sequence_length": 32,
        "tokenizer.vocabulary_size": 200, "preference.ld_alpha": 0.5})
    run.prepare()
    assert sorted(run.reference_values) == ["train", "validation"] and calls == [0.5, 0.5]
    assert run.extra_features("train") is run.reference_values["train"]
    run.policy_log_probs(run.build_objective(), "validation")
    assert calls == [0.5, 0.5, 0.5]


def test_reference_none_trains_reference_free_dpo(sft_folder, tmp_path):
    # Two steps, two rounds: the first round's loss is step 0's alone.
    lines = []
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "preference.reference": "none",
                                     "training.steps": 2, "training.epochs": 2},
                   log=lambda *parts: lines.append(" ".join(map(str, parts))))
    metrics = run.train()
    assert not run.uses_reference_in_training() and not run.uses_precomputed_reference()
    # No training reference values, no frozen copy: only the held-out pairs' values,
    # for the figures against the starting policy.
    assert sorted(run.reference_values) == ["validation"] and run.reference_preset is None
    assert not (tmp_path / "reference").exists()
    [line] = [line for line in lines if line.startswith("reference:")]
    assert "validation pairs" in line and "train pairs" not in line
    assert "reference-free" in line
    for split in ("train", "validation"):  # the batches carry no reference values
        assert run.extra_features(split) is None
        spec = run.make_dataset(split, DPO["training.batch_size"]).element_spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        assert not set(REFERENCE_LOGPS_KEYS) & set(spec), split
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["reference"] == metrics["reference"] == "none"
    assert written["method"] == "dpo" and written["loss_type"] == ["sigmoid"]
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert model.reference_free and model.reference is None
    # Step 0 is the reference-free loss of the starting policy on the first batch
    # (rebuilt from the same seed), not the log 2 of a reference equal to the policy.
    keras.utils.set_random_seed(run.recipe.training.seed)
    batch = next(iter(run.make_dataset("train", DPO["training.batch_size"])))
    start = run._objective(run._starting_backbone(), None)
    assert start.reference_free
    out = start(batch)
    expected = np.mean(np.logaddexp(
        0.0, -0.1 * (out["chosen_logps"].numpy() - out["rejected_logps"].numpy())))
    assert metrics["train_loss_first_round"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - math.log(2)) > 1e-3
    # Held-out: the implicit rewards against the starting policy, as for every method.
    policy = run.policy_log_probs(model, "validation")
    reference = dict(zip(("chosen", "rejected"), (
        run.reference_values["validation"][key] for key in REFERENCE_LOGPS_KEYS)))
    again = implicit_reward_statistics(policy, reference, 0.1)
    for key, value in again.items():
        assert metrics[f"val_{key}"] == pytest.approx(value, abs=1e-4), key


def test_reference_none_is_the_dpo_familys(tmp_path):
    with pytest.raises(RecipeError, match=r"preference\.reference = 'none': reference-free "
                                          r"training .*'kto' needs a reference: set it "
                                          r"'precomputed' or 'online'"):
        tiny_run("dpo", tmp_path, {"preference.method": "kto", "preference.reference": "none"})
    with pytest.raises(RecipeError, match=r"preference\.reference = 'none': .*'simpo' uses no "
                                          r"reference in training already"):
        tiny_run("dpo", tmp_path, {"preference.method": "simpo",
                                   "preference.reference": "none"})
    run = tiny_run("dpo", tmp_path, {"preference.reference": "none",
                                     "preference.loss_type": ["ipo"]})
    objective = run._objective(_probe_backbone(), None)
    assert objective.reference_free and not objective.needs_reference
    assert not tiny_run("dpo", tmp_path)._objective(_probe_backbone(), None).reference_free


def test_sync_reference_steps_runs_tr_dpo(dpo_run, sft_folder, tmp_path):
    """`preference.sync_reference_steps = 1` with `sync_reference_alpha = 1`:
    the reference becomes the policy after every step, so every step's
    sigmoid loss is exactly log 2 (the reference equal to the policy), where
    a plain online reference gives log 2 at step 0 only."""
    from kobjectives.distribute import RunBackup
    from kobjectives.objectives import SyncReferenceModel

    lines = []
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "preference.reference": "online",
                                     "preference.sync_reference_steps": 1,
                                     "preference.sync_reference_alpha": 1.0,
                                     "training.steps": 4, "training.epochs": 2},
                   log=lambda *parts: lines.append(" ".join(map(str, parts))))
    callbacks = run.callbacks()
    sync, backup = callbacks[0], next(c for c in callbacks if isinstance(c, RunBackup))
    assert isinstance(sync, SyncReferenceModel)  # first: before the run's backup
    assert (sync.mixup_alpha, sync.sync_steps) == (1.0, 1)
    assert sync.backup_dir == backup.backup_dir
    metrics = run.train()
    assert metrics["train_loss_first_round"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["train_loss_last_round"] == pytest.approx(math.log(2), abs=1e-6)
    # Without syncing, the trained policy departs from its reference (by
    # more than ten times the tolerance above).
    assert abs(dpo_run[1]["train_loss_last_round"] - math.log(2)) > 1e-5
    assert metrics["sync_reference_steps"] == 1 and metrics["sync_reference_alpha"] == 1.0
    assert any("mixed toward the policy every 1 steps (TR-DPO, alpha 1.0)" in line
               for line in lines)
    assert not (tmp_path / "backup").exists()  # the synced reference's backup went with it
    # The policy did move: its held-out rewards against the starting policy are not 0.
    assert abs(metrics["val_reward_margin"]) > 1e-5


@pytest.mark.parametrize("reference", ["precomputed", "online"])
def test_lora_trains_adapters_from_the_reference_policy(sft_folder, tmp_path, reference):
    """`model.lora_rank`: the adapters start at zero, so the first step's
    policy is its reference (sigmoid loss exactly log 2, one step a round);
    only the query/value adapters and biases train; the preset is the
    merged policy, a plain backbone a later `--init` loads."""
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "model.lora_rank": 2, "model.dropout": 0.0,
                                     "preference.reference": reference,
                                     "training.learning_rate": 0.05, "training.warmup_steps": 0,
                                     "training.steps": 2, "training.epochs": 2})
    metrics = run.train()
    assert metrics["train_loss_first_round"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(metrics["train_loss_last_round"] - math.log(2)) > 1e-6
    assert_lora_trained(backbones.load_backbone(str(sft_folder)),
                        backbones.load_backbone(str(tmp_path)), rank=2)
    with pytest.raises(RecipeError, match=r"sync_reference_steps = 2: TR-DPO .*model.lora_rank "
                                          r"= 2 the policy's are LoRA adapters"):
        tiny_run("dpo", tmp_path, {"model.init": str(sft_folder), "model.lora_rank": 2,
                                   "preference.reference": "online",
                                   "preference.sync_reference_steps": 2})


def test_sync_reference_needs_an_online_reference(tmp_path):
    with pytest.raises(RecipeError, match=r"sync_reference_steps = 2: .*'precomputed'.*"
                                          r"preference\.reference = 'online'"):
        tiny_run("dpo", tmp_path, {"preference.sync_reference_steps": 2})
    with pytest.raises(RecipeError, match=r"sync_reference_steps = 2: .*'simpo'"):
        tiny_run("dpo", tmp_path, {"preference.method": "simpo",
                                   "preference.sync_reference_steps": 2})
    with pytest.raises(RecipeError, match=r"sync_reference_alpha = 0\.9 has no effect"):
        tiny_run("dpo", tmp_path, {"preference.sync_reference_alpha": 0.9})
    # Off by default: no callback added.
    from kobjectives.objectives import SyncReferenceModel

    callbacks = tiny_run("dpo", tmp_path).callbacks()
    assert not any(isinstance(c, SyncReferenceModel) for c in callbacks)


def test_kto_trains_natively_unpaired_rows_and_reports_kto_figures(
        sft_folder, unpaired_rows, tmp_path):
    # Two steps, two rounds: the first round's loss is step 0's alone.
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "data.files": [str(unpaired_rows)],
                                     "preference.method": "kto",
                                     "preference.undesirable_weight": 1.5,
                                     "training.steps": 2, "training.epochs": 2})
    metrics = run.train()
    # The rows, split as the pairs are (by content, with the seed), each side in file order;
    # no pairs at all.
    rows = read_unpaired_rows(unpaired_rows)
    train, validation = split_examples(rows, run.recipe.data.validation_fraction,
                                       seed=run.recipe.training.seed)
    assert run.rows == {"train": train, "validation": validation}
    assert run.pairs == {} and run.examples == {} and run.reference_values == {}
    for split, items in run.rows.items():
        assert run.kto_rows[split].desirable.tolist() == [label for *_, label in items]
    counts = {"train": len(train), "validation": len(validation)}
    assert metrics["documents"] == metrics["kto_rows"] == counts
    assert metrics["kto_data"] == "unpaired rows" and metrics["loss_type"] == "kto"
    assert not any(key.startswith(("val_implicit", "val_pairs", "val_length"))
                   for key in metrics)
    # Step 0: the policy is its reference, so a row costs its weight times 1/2.
    keras.utils.set_random_seed(run.recipe.training.seed)
    desirable = next(iter(run.make_dataset("train", DPO["training.batch_size"])))[
        "desirable"].numpy()
    expected = 0.5 * np.mean(np.where(desirable, 1.0, 1.5))
    assert metrics["train_loss_first_round"] == pytest.approx(expected, abs=1e-5)
    # Held-out: KTO's figures of every validation row, recomputed from the saved model
    # against the SFT policy's values (the precomputed ones, reused).
    ordered = run.kto_row_dataset("validation", 3, ordered=True)
    reference = precompute_reference_log_probs(_start_backbone(run, sft_folder),
                                               ordered)["reference_logps"]
    np.testing.assert_allclose(run.row_reference_logps["validation"], reference, atol=1e-4)
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    policy = np.concatenate([model(batch)["logps"].numpy() for batch in ordered])
    rewards = 0.1 * (policy - reference)
    labels = np.array([label for *_, label in validation])
    assert 0 < labels.sum() < len(labels)
    again = {"desirable_reward": rewards[labels].mean(),
             "undesirable_reward": rewards[~labels].mean(),
             "desirable_reward_positive": np.mean(rewards[labels] > 0),
             "undesirable_reward_negative": np.mean(rewards[~labels] < 0)}
    again["reward_margin"] = again["desirable_reward"] - again["undesirable_reward"]
    for key, value in again.items():
        assert metrics[f"val_{key}"] == pytest.approx(value, abs=1e-4), key
    assert (metrics["val_desirable_rows"], metrics["val_undesirable_rows"]) == (
        int(labels.sum()), int((~labels).sum()))
    assert abs(metrics["val_reward_margin"]) > 1e-5  # the policy moved
    assert math.isfinite(metrics["val_loss"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["val_desirable_rows"] == metrics["val_desirable_rows"]
    # The win rate's prompts: the validation rows' distinct prompts, in row order.
    limited = run.with_recipe(run.recipe.replace({"preference.judge_prompts": 5}))
    firsts = {}
    for index, (prompt, *_) in enumerate(validation):
        firsts.setdefault(json.dumps(prompt), index)
    assert len(firsts) < len(validation)  # some prompt has two rows there
    split, prompts, prompt_ids = limited.judge_prompts()
    assert split == "validation" and len(prompts) == 5
    assert prompts == [validation[i][0] for i in list(firsts.values())[:5]]
    for ids, index in zip(prompt_ids, firsts.values()):
        np.testing.assert_array_equal(ids, run.kto_rows["validation"].prompt_ids[index])


def test_apo_zero_unpaired_trains_through_the_recipe_without_kl_rows(
        sft_folder, tmp_path, monkeypatch):
    run = tiny_run("dpo", tmp_path, {**DPO, "model.init": str(sft_folder),
                                     "preference.method": "kto",
                                     "preference.loss_type": ["apo_zero_unpaired"],
                                     "preference.desirable_weight": 2.0,
                                     "training.steps": 2, "training.epochs": 2})
    objective = run._objective(_probe_backbone(), None)
    assert isinstance(objective, KahnemanTverskyOptimization)
    assert objective.loss_type == "apo_zero_unpaired" and objective.desirable_weight == 2.0
    # No pass of the run runs a KTO batch's KL rows: the rows' values come from the rows
    # alone (kl_rows=False); the held-out pairs are scored as pairs.
    seen = []

    def recording(model, dataset, **options):
        kto = bool(set(KTO_KEYS) & set(dataset.element_spec))
        seen.append(f"rows, kl_rows={options.get('kl_rows')}" if kto else "pairs")
        return precompute_reference_log_probs(model, dataset, **options)

    monkeypatch.setattr("kobjectives.runs.dpo.precompute_reference_log_probs", recording)
    metrics = run.train()
    # The validation pairs (the reference's values, the policy's); the train and
    # validation rows (the reference's).
    assert sorted(seen) == ["pairs", "pairs", "rows, kl_rows=False", "rows, kl_rows=False"]
    assert metrics["loss_type"] == "apo_zero_unpaired" and metrics["kto_data"] == "pairs unpaired"
    start = _start_backbone(run, sft_folder)
    for split in ("train", "validation"):
        values = run.kto_reference_values[split]
        assert not values["reference_kl_logps"].any()  # unread: 0
        expected = precompute_reference_log_probs(
            start, run.kto_row_dataset(split, 8, ordered=True))["reference_logps"]
        np.testing.assert_allclose(values["reference_logps"], expected, atol=1e-4)
    # Step 0: 1 - sig(0) or sig(0), times the row's weight.
    keras.utils.set_random_seed(run.recipe.training.seed)
    desirable = next(iter(run.make_dataset("train", DPO["training.batch_size"])))[
        "desirable"].numpy()
    assert metrics["train_loss_first_round"] == pytest.approx(
        0.5 * np.mean(np.where(desirable, 2.0, 1.0)), abs=1e-5)
    # It trained: the held-out pairs' rewards against the starting policy moved.
    assert abs(metrics["val_reward_margin"]) > 1e-5
    assert math.isfinite(metrics["train_loss_last_round"])
    model = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert model.loss_type == "apo_zero_unpaired"


def test_kto_loss_type_and_unpaired_data_errors(tmp_path, unpaired_rows):
    files = {"data.files": [str(unpaired_rows)]}
    for loss_type in (["kto", "apo_zero_unpaired"], ["sigmoid", "kto"]):
        with pytest.raises(RecipeError, match=(
                rf"preference\.loss_type = {re.escape(str(loss_type))}: method 'kto' takes "
                r"one of KTO's types, \['kto'\] or \['apo_zero_unpaired'\]")):
            tiny_run("dpo", tmp_path, {"preference.method": "kto",
                                       "preference.loss_type": loss_type})
    with pytest.raises(RecipeError, match=r"preference\.loss_type = \['apo_zero_unpaired'\]: "
                                          r".* is KTO's.*preference\.method = 'kto'"):
        tiny_run("dpo", tmp_path, {"preference.loss_type": ["apo_zero_unpaired"]})
    for loss_type, expected in ((["sigmoid"], "kto"), (["kto"], "kto"),
                                (["apo_zero_unpaired"], "apo_zero_unpaired")):
        run = tiny_run("dpo", tmp_path, {"preference.method": "kto",
                                         "preference.loss_type": loss_type, **files})
        assert run._objective(_probe_backbone(), None).loss_type == expected
    # Unpaired rows need method 'kto': the others (and the reward run) need pairs.
    for method in ("dpo", "simpo"):
        with pytest.raises(RecipeError, match=(
                r"data\.files \(--data\): .*rows\.jsonl:1 is an unpaired row .*method "
                rf"'{method}' .*needs pairs .*preference\.method=kto")):
            tiny_run("dpo", tmp_path, {"preference.method": method, **files})
    with pytest.raises(RecipeError, match=r"data\.files .*the 'reward' run needs pairs"):
        tiny_run("reward", tmp_path, files)
    with pytest.raises(RecipeError, match=r"data\.balance_lengths = true balances pairs"):
        tiny_run("dpo", tmp_path, {"preference.method": "kto", "data.balance_lengths": True,
                                   **files})
    # The same refusal when the data are read (a recipe that skipped the checks).
    run = tiny_run("dpo", tmp_path, {"preference.method": "kto", **files})
    assert run.load_examples()[0] == "unpaired"
    other = run.with_recipe(run.recipe.replace({"preference.method": "dpo"}))
    with pytest.raises(ValueError, match=r"rows\.jsonl:1 is an unpaired row .*needs pairs"):
        other.load_examples()
    # A file mixing the formats fails when read, naming both lines.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(unpaired_rows.read_text() + json.dumps(
        {"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    run = tiny_run("dpo", tmp_path, {"preference.method": "kto", "data.files": [str(mixed)]})
    with pytest.raises(ValueError, match=r"mixed\.jsonl:51 is a pair .*mixed\.jsonl:1 is an "
                                         r"unpaired row"):
        run.load_examples()


def test_rpo_alpha_adds_the_sft_term_with_its_weight(tmp_path):
    """`preference.rpo_alpha` is TRL's RPO: the DPO losses (weight 1) plus
    `rpo_alpha` times the chosen completions' NLL (the 'sft' type)."""
    run = tiny_run("dpo", tmp_path, {"preference.loss_type": ["sigmoid", "hinge"],
                                     "preference.rpo_alpha": 0.25})
    objective = run._objective(_probe_backbone(), None)
    assert objective.loss_names == ("sigmoid", "hinge", "sft")
    assert objective.loss_weights == {"sigmoid": 1.0, "hinge": 1.0, "sft": 0.25}
    plain = tiny_run("dpo", tmp_path, {"preference.loss_type": ["sigmoid", "hinge"]})
    assert plain._objective(_probe_backbone(), None).loss_names == ("sigmoid", "hinge")
    with pytest.raises(RecipeError, match=r"rpo_alpha = 0\.5 adds the 'sft' loss type"):
        tiny_run("dpo", tmp_path, {"preference.loss_type": ["sigmoid", "sft"],
                                   "preference.rpo_alpha": 0.5})
    with pytest.raises(RecipeError, match=r"rpo_alpha = 0\.5: .*method 'orpo'"):
        tiny_run("dpo", tmp_path, {"preference.method": "orpo", "preference.rpo_alpha": 0.5})


def test_the_judge_answers_each_distinct_prompt_once(tmp_path):
    """The win rate's prompts: the first `preference.judge_prompts` distinct
    prompts of the pairs (held-out, else validation), each at its first pair."""
    run = tiny_run("dpo", tmp_path, {"preference.judge_prompts": 3})
    turns = [{"role": "user", "content": "b?"}]
    pairs = [("a?", "x", "y"), ("a?", "z", "y"), (turns, "x", "y"), ("c?", "x", "y"),
             ([dict(turns[0])], "q", "r"), ("d?", "x", "y")]
    run.pairs = {"validation": pairs}
    run.examples = {"validation": types.SimpleNamespace(prompt_ids=[[i] for i in range(6)])}
    assert run.judge_prompts() == ("validation", ["a?", turns, "c?"], [[0], [2], [3]])
    run.pairs["heldout"] = [("h?", "x", "y")] * 4 + [("i?", "x", "y")]
    run.examples["heldout"] = types.SimpleNamespace(prompt_ids=[[10 + i] for i in range(5)])
    assert run.judge_prompts() == ("heldout", ["h?", "i?"], [[10], [14]])


def test_generate_batches_prompts_by_length_and_answers_in_the_order_given(tmp_path):
    import tensorflow as tf

    run = tiny_run("dpo", tmp_path, {"preference.max_new_tokens": 24})  # 8 of 32 for the prompt
    run.tokenizer = types.SimpleNamespace(start_token_id=2, pad_token_id=0)

    def generate(token_ids, padding_mask):  # "row length/its batch's least/first/last token"
        lengths = tf.reduce_sum(padding_mask, axis=1)
        least = tf.fill(tf.shape(lengths), tf.reduce_min(lengths))
        last = tf.gather(token_ids, lengths - 1, batch_dims=1)
        return {"text": tf.strings.reduce_join(tf.strings.as_string(
            tf.stack([lengths, least, token_ids[:, 0], last], axis=1)), axis=1, separator="/")}

    run.text_generator = lambda objective: types.SimpleNamespace(generate=generate)
    prompts = [list(range(10, 10 + n)) for n in (5, 1, 4, 2, 3, 12)]  # [start] and n tokens each
    assert run.generate(None, prompts, batch_size=2) == [
        "6/6/2/14", "2/2/2/10", "5/4/2/13", "3/2/2/11", "4/4/2/12",
        "8/6/2/21"]  # too long: the start token and the prompt's last 7 tokens


def test_an_undefined_length_controlled_win_rate_is_said_in_words(tmp_path):
    run = tiny_run("dpo", tmp_path)
    metrics = {"val_win_rate": 0.5, "val_length_controlled_win_rate": float("nan"),
               "val_judged_prompts": 5, "judge": "runs/judge", "val_policy_answer_words": 4.0,
               "val_reference_answer_words": 4.0}
    assert run.win_rate_lines(metrics) == [
        "win rate over the starting policy 0.5000 (5 prompts, judged by runs/judge; answers of "
        "4.0 vs 4.0 words), length-controlled undefined (it needs prompts where the policy's "
        "answer has more words and prompts where it has fewer)"]
    metrics["val_length_controlled_win_rate"] = 0.25
    assert run.win_rate_lines(metrics)[0].endswith("words), length-controlled 0.2500")


def test_a_kto_row_too_long_names_its_line_and_the_recipe_keys(sft_folder, tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 2 == 0}
            for i in range(24)]
    rows[9]["prompt"] = " ".join(f"word{i}" for i in range(60)) + "?"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tiny_run("dpo", tmp_path / "run", {
        "model.init": str(sft_folder), "preference.method": "kto", "data.files": [str(path)],
        "data.truncation": "error", "model.sequence_length": 32,
        "data.validation_fraction": 0.5})
    with pytest.raises(RecipeError) as caught:
        run.prepare()
    message = str(caught.value)
    assert message.startswith(f"{path}:10: its prompt alone has "), message
    assert "data.truncation = keep_end" in message and "model.sequence_length" in message
    assert "truncation='" not in message
