"""`RewardModel`: the Bradley-Terry loss (margin, centering) and the metrics
against hand computations, pooling, one backbone call per pair batch,
learning, strategies, saving, export and errors."""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.export import export_saved_model
from kobjectives.objectives import RewardModel
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, B, H = 50, 8, 8, 16

gpt2 = functools.partial(tiny_backbone, "gpt2", V, L, hidden_dim=H)
bert = functools.partial(tiny_backbone, "bert", V, L, hidden_dim=H)


def side(rng, n):
    ids = rng.integers(8, V, (n, L)).astype("int32")
    lengths = rng.integers(3, L + 1, n)
    mask = np.arange(L)[None, :] < lengths[:, None]
    return np.where(mask, ids, 0).astype("int32"), mask


def pairs(n=B, seed=0, margin=False):
    """A preference batch (right-padded, two lengths per pair)."""
    rng = np.random.default_rng(seed)
    x = {}
    for name in ("chosen", "rejected"):
        ids, mask = side(rng, n)
        x[f"{name}_token_ids"], x[f"{name}_padding_mask"] = ids, mask
        x[f"{name}_completion_mask"] = mask.astype("int32")  # ignored by the reward model
    if margin:
        x["margin"] = rng.uniform(0, 1, n).astype("float32")
    return x


def one_side(x, name):
    return {"token_ids": x[f"{name}_token_ids"], "padding_mask": x[f"{name}_padding_mask"]}


def softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def scaled_head(model, seed=0):
    """Rewards of order 1 (the 0.02 init gives nearly equal rewards)."""
    rng = np.random.default_rng(seed)
    model.reward_head.kernel.assign(rng.normal(size=(H, 1)).astype("float32"))
    return model


def test_loss_and_metrics_equal_a_hand_computation_with_margin_centering_and_weights():
    keras.utils.set_random_seed(0)
    model = scaled_head(RewardModel(gpt2(), center_rewards_coefficient=0.3))
    x = pairs(margin=True)
    # One backbone call on [chosen; rejected] gives each side's own rewards.
    out = model(x)
    rc = model(one_side(x, "chosen")).numpy().astype("float64")
    rr = model(one_side(x, "rejected")).numpy().astype("float64")
    assert out["chosen_rewards"].shape == (B,) and out["chosen_rewards"].dtype == tf.float32
    np.testing.assert_allclose(out["chosen_rewards"], rc, atol=1e-5)
    np.testing.assert_allclose(out["rejected_rewards"], rr, atol=1e-5)
    assert np.abs(rc - rr).max() > 0.1  # the rewards differ: the test sees the signs

    m = x["margin"].astype("float64")
    weights = np.array([1, 2, 0, 1, 0.5, 1, 1, 3], "float32")
    per_pair = softplus(-(rc - rr - m)) + 0.3 * (rc + rr) ** 2
    expected = (weights * per_pair).sum() / weights.sum()
    # TRL's form: mean(bt) + c * mean((rc + rr)^2), unweighted.
    np.testing.assert_allclose(
        float(model.compute_loss(x, None, out)),
        softplus(-(rc - rr - m)).mean() + 0.3 * ((rc + rr) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(model.compute_loss(x, None, out, weights)), expected,
                               rtol=1e-5)
    # Without a margin key the margin is 0; without centering the term is gone.
    no_margin = {k: v for k, v in x.items() if k != "margin"}
    plain = RewardModel(model.backbone)
    plain.reward_head.set_weights(model.reward_head.get_weights())
    np.testing.assert_allclose(float(plain.compute_loss(no_margin, None, plain(no_margin))),
                               softplus(-(rc - rr)).mean(), rtol=1e-5)

    # Over two batches (Keras' `evaluate` drops a `sample_weight` given without y).
    model.compile()
    result = model.evaluate(x, batch_size=B // 2, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], per_pair.mean(), rtol=1e-5)
    np.testing.assert_allclose(result["reward_accuracy"], (rc > rr).mean(), rtol=1e-6)
    np.testing.assert_allclose(result["reward_margin"], (rc - rr).mean(), rtol=1e-5)
    np.testing.assert_allclose(result["chosen_reward"], rc.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["rejected_reward"], rr.mean(), rtol=1e-5, atol=1e-6)
    # The metrics weigh pairs by `sample_weight` where one reaches them.
    model.reset_metrics()
    model.compute_metrics(x, None, out, weights)
    w = weights / weights.sum()
    np.testing.assert_allclose(float(model.reward_accuracy.result()), (w * (rc > rr)).sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(float(model.reward_margin.result()), (w * (rc - rr)).sum(),
                               rtol=1e-5)


@pytest.mark.parametrize("coefficient", [None, 0.0, 0.3])
def test_the_centering_loss_is_a_metric_only_where_it_is_part_of_the_objective(coefficient):
    keras.utils.set_random_seed(0)
    model = scaled_head(RewardModel(gpt2(), center_rewards_coefficient=coefficient))
    model.compile()
    x = pairs(margin=True)
    result = model.evaluate(x, batch_size=B, verbose=0, return_dict=True)
    common = ["bradley_terry_loss", "chosen_reward", "loss", "rejected_reward",
              "reward_accuracy", "reward_margin"]
    if coefficient:
        assert model.loss_names == ("bradley_terry", "centering")
        assert sorted(result) == sorted(common + ["centering_loss"])
    else:
        # Off: no term, no metric (no `centering_loss 4.39` in a run's log).
        assert model.loss_names == ("bradley_terry",)
        assert sorted(result) == common
        out = model(x)
        rc, rr = (out[k].numpy().astype("float64") for k in ("chosen_rewards", "rejected_rewards"))
        np.testing.assert_allclose(result["loss"], softplus(-(rc - rr - x["margin"])).mean(),
                                   rtol=1e-5)
    np.testing.assert_allclose(result["loss"], float(model.compute_loss(x, None, model(x))),
                               rtol=1e-5)
    # The config rebuilds the same objective.
    rebuilt = RewardModel.from_config(model.get_config())
    assert rebuilt.loss_names == model.loss_names
    assert rebuilt.center_rewards_coefficient == coefficient


def test_reward_accuracy_counts_ties_as_wrong_and_is_exact_over_batches():
    model = RewardModel(gpt2())
    chosen = tf.constant([1.0, 0.5, -2.0, 3.0])
    rejected = tf.constant([0.0, 0.5, -1.0, 3.5])  # win, tie, loss, loss
    model.compute_metrics(None, None, {"chosen_rewards": chosen, "rejected_rewards": rejected})
    model.compute_metrics(None, None, {"chosen_rewards": chosen[:1],
                                       "rejected_rewards": rejected[:1]})  # one more win
    assert float(model.reward_accuracy.result()) == pytest.approx(2 / 5)
    assert float(model.reward_margin.result()) == pytest.approx((1 + 0 - 1 - 0.5 + 1) / 5)
    assert float(model.chosen_reward.result()) == pytest.approx((2.5 + 1) / 5)
    assert float(model.rejected_reward.result()) == pytest.approx(3.0 / 5)


def test_last_pooling_reads_the_last_real_token_and_first_the_first():
    keras.utils.set_random_seed(1)
    backbone = gpt2()
    model = scaled_head(RewardModel(backbone))
    x = one_side(pairs(seed=1), "chosen")
    hidden = backbone({"token_ids": x["token_ids"],
                       "padding_mask": x["padding_mask"].astype("int32")}).numpy()
    kernel = model.reward_head.kernel.numpy()[:, 0]
    last = x["padding_mask"].sum(1) - 1
    np.testing.assert_allclose(model(x), hidden[np.arange(B), last] @ kernel, atol=1e-5)
    # What follows the last real token does not change a causal model's reward.
    other = dict(x, token_ids=np.where(x["padding_mask"], x["token_ids"], 9).astype("int32"))
    np.testing.assert_allclose(model(other), model(x), atol=1e-6)
    encoder = bert()
    first = scaled_head(RewardModel(encoder, pooling="first"))
    states = encoder({**{k: np.asarray(v, "int32") for k, v in x.items()},
                      "segment_ids": np.zeros((B, L), "int32")})["sequence_output"].numpy()
    np.testing.assert_allclose(first(x), states[:, 0] @ first.reward_head.kernel.numpy()[:, 0],
                               atol=1e-5)
    pooled = scaled_head(RewardModel(encoder, pooling="pooled"))
    assert pooled(x).shape == (B,)


def separable(n, seed):
    """Chosen completions hold token 7 somewhere; rejected ones never do."""
    rng = np.random.default_rng(seed)
    x = pairs(n, seed)
    rows = np.arange(n)
    where = rng.integers(0, 3, n)  # within the shortest real length (3)
    x["chosen_token_ids"][rows, where] = 7
    return x


def test_learns_a_separable_preference_to_accuracy_one():
    keras.utils.set_random_seed(0)
    model = RewardModel(gpt2(), center_rewards_coefficient=0.01)
    model.compile(optimizer=keras.optimizers.Adam(3e-2), jit_compile=True)
    model.fit(separable(64, 0), batch_size=16, epochs=8, verbose=0)  # 32 steps
    held_out = model.evaluate(separable(64, 1), batch_size=64, verbose=0, return_dict=True)
    assert held_out["reward_accuracy"] == 1.0, held_out
    assert held_out["reward_margin"] > 1.0, held_out


X = pairs(4 * B, seed=5, margin=True)
CASE = ObjectiveCase(
    build=lambda: RewardModel(gpt2(), center_rewards_coefficient=0.1),
    data=dict(x=X, batch_size=2 * B),
    metrics=("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"),
    optimizer=lambda: keras.optimizers.SGD(0.1), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_and_learns(one_device):
    assert_jit_matches_eager(CASE, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_keras_round_trip_continues_training(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: RewardModel(bert(), pooling="first", center_rewards_coefficient=0.05),
        optimizer=lambda: keras.optimizers.SGD(0.1, momentum=0.9))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    config = restored.get_config()
    assert (config["pooling"], config["center_rewards_coefficient"]) == ("first", 0.05)
    assert [m.name for m in restored.metrics][-4:] == [
        "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"]
    clone = RewardModel.from_config(RewardModel(gpt2(), pooling="mean", dropout=0.1).get_config())
    assert (clone.pooling, clone.dropout, clone.center_rewards_coefficient) == ("mean", 0.1, None)


def test_export_serves_the_reward_of_token_ids(tmp_path):
    keras.utils.set_random_seed(2)
    model = scaled_head(RewardModel(gpt2()))
    x = one_side(pairs(seed=2), "chosen")
    expected = model.export_outputs(x)["reward"].numpy()
    assert expected.shape == (B,)
    export_saved_model(model, str(tmp_path / "export"))
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"](
        token_ids=tf.constant(x["token_ids"]),
        padding_mask=tf.constant(x["padding_mask"].astype("int32")))
    np.testing.assert_allclose(served["reward"], expected, atol=1e-5)


def test_bad_arguments_and_inputs_are_named():
    backbone = gpt2()
    for kwargs, name in [
        (dict(pooling="cls"), "pooling"),
        (dict(pooling="pooled"), "pooled_output"),
        (dict(dropout=1.0), "dropout"),
        (dict(center_rewards_coefficient=-0.1), "center_rewards_coefficient"),
        (dict(center_rewards_coefficient=True), "center_rewards_coefficient"),
    ]:
        with pytest.raises(ValueError, match=name):
            RewardModel(backbone, **kwargs)
    with pytest.raises(TypeError, match="backbone"):
        RewardModel("gpt2")
    model = RewardModel(backbone)
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")
    x = pairs(4)
    with pytest.raises(ValueError, match="rejected_padding_mask"):
        model({k: v for k, v in x.items() if k != "rejected_padding_mask"})
    with pytest.raises(ValueError, match="one shape"):
        model(dict(x, rejected_token_ids=x["rejected_token_ids"][:, :5]))
    with pytest.raises(ValueError, match="padding_mask"):
        model({"token_ids": x["chosen_token_ids"]})
    with pytest.raises(ValueError, match="token_ids"):
        model({"padding_mask": x["chosen_padding_mask"]})
    with pytest.raises(ValueError, match="no y"):
        model.compute_loss(x, np.ones(4), model(x))
    with pytest.raises(ValueError, match="margin"):
        model.compute_loss(dict(x, margin=np.ones((4, 2), "float32")), None, model(x))
    with pytest.raises(ValueError, match="preference batch"):
        model.compute_loss(one_side(x, "chosen"), None, model(one_side(x, "chosen")))
