"""`DirectPreferenceOptimization`, `ReferenceFreePreferenceOptimization`,
`KahnemanTverskyOptimization`: the losses against `dpo_loss` / `simpo_loss` /
`cpo_loss` / `odds_ratio_loss` / `kto_loss` on log-probabilities computed by
hand from the policy's logits, the frozen reference (precomputed, untrainable,
unsaved), the step-0 identities, learning, XLA, strategies, saving, export
and errors."""

import functools

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import backbones
from kobjectives.data import KTO_REFERENCE_LOGPS_KEYS
from kobjectives.data import REFERENCE_LOGPS_KEYS
from kobjectives.data import PreferenceExamples
from kobjectives.data import preference_dataset
from kobjectives.export import export_saved_model
from kobjectives.objectives import CausalLanguageModel
from kobjectives.objectives import DirectPreferenceOptimization
from kobjectives.objectives import FrozenModel
from kobjectives.objectives import KahnemanTverskyOptimization
from kobjectives.objectives import ReferenceFreePreferenceOptimization
from kobjectives.objectives import precompute_frozen_outputs
from kobjectives.objectives import precompute_reference_log_probs
from kobjectives.objectives.preference_optimization import KTO_REFERENCE_LOG_PROBS_KEYS
from kobjectives.objectives.preference_optimization import REFERENCE_LOG_PROBS_KEYS
from kobjectives.ops.preference import cpo_loss
from kobjectives.ops.preference import dpo_loss
from kobjectives.ops.preference import kto_loss
from kobjectives.ops.preference import odds_ratio_loss
from kobjectives.ops.preference import simpo_loss
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import fit
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, B, H = 30, 8, 8, 16

gpt2 = functools.partial(tiny_backbone, "gpt2", V, L, hidden_dim=H)


def lm(seed=None):
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return CausalLanguageModel(gpt2(), chunk_size=4)


def copy_of(policy):
    reference = lm()
    reference.set_weights(policy.get_weights())
    return reference


def pairs(n=B, seed=0):
    """A preference batch: a shared prompt of 2-3 tokens, completions of 1-4
    tokens on each side, right padding (ids 0)."""
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(2, 4, n)
    x = {}
    for side in ("chosen", "rejected"):
        total = prompt_len + rng.integers(1, 5, n)
        pos = np.arange(L)[None, :]
        mask = pos < total[:, None]
        ids = rng.integers(3, V, (n, L))
        ids[:, :3] = np.arange(3, 6)[None, :]  # the same prompt tokens on both sides
        x[f"{side}_token_ids"] = np.where(mask, ids, 0).astype("int32")
        x[f"{side}_padding_mask"] = mask
        x[f"{side}_completion_mask"] = (mask & (pos >= prompt_len[:, None])).astype("int32")
    return x


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def hand_logps(model, x, side):
    """(sum, count) per row from the model's full logits, in numpy float64:
    the completion token at t is scored by the logits at t - 1."""
    prefix = f"{side}_" if side in ("chosen", "rejected") else side  # KTO: "" or "kl_"
    inputs = {"token_ids": x[f"{prefix}token_ids"], "padding_mask": x[f"{prefix}padding_mask"]}
    logp = log_softmax(model.logits(model(inputs)).numpy().astype("float64"))
    ids, completion = x[f"{prefix}token_ids"], x[f"{prefix}completion_mask"]
    sums, counts = np.zeros(len(ids)), np.zeros(len(ids))
    for i in range(len(ids)):
        for t in range(1, ids.shape[1]):
            if completion[i, t]:
                sums[i] += logp[i, t - 1, ids[i, t]]
                counts[i] += 1
    return sums, counts


def with_reference(x, ref_c, ref_r):
    return dict(x, reference_chosen_logps=np.asarray(ref_c, "float32"),
                reference_rejected_logps=np.asarray(ref_r, "float32"))


def test_keys_match_the_data_package():
    assert REFERENCE_LOG_PROBS_KEYS == REFERENCE_LOGPS_KEYS
    assert KTO_REFERENCE_LOG_PROBS_KEYS == KTO_REFERENCE_LOGPS_KEYS


@pytest.mark.parametrize("loss_type, options", [
    ("sigmoid", {}),
    ("ipo", {}),
    ("robust", {"label_smoothing": 0.2}),
    ("sigmoid", {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
    (["sigmoid", "bco_pair", "sft"], {"loss_weights": [0.8, 0.2, 1.5]}),
])
def test_loss_and_rewards_equal_dpo_loss_on_hand_computed_log_probs(loss_type, options):
    policy = lm(0)
    x = pairs()
    pc, nc = hand_logps(policy, x, "chosen")
    pr, nr = hand_logps(policy, x, "rejected")
    rng = np.random.default_rng(1)
    rc, rr = pc + rng.normal(0, 1, B), pr + rng.normal(0, 1, B)
    model = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5, chunk_size=3,
                                         **options)
    batch = with_reference(x, rc, rr)
    out = model(batch)
    np.testing.assert_allclose(out["chosen_logps"], pc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["rejected_logps"], pr, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["rejected_lengths"], nr)
    model.compile(optimizer="sgd")
    loss = float(model.compute_loss(batch, y_pred=out))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type,
                                        chosen_lengths=nc, rejected_lengths=nr, **options)
    np.testing.assert_allclose(loss, float(np.mean(losses)), rtol=1e-5)
    np.testing.assert_allclose(float(model.chosen_reward.result()), np.mean(chosen), atol=1e-5)
    np.testing.assert_allclose(float(model.rejected_reward.result()), np.mean(rejected),
                               atol=1e-5)
    np.testing.assert_allclose(float(model.reward_margin.result()),
                               np.mean(chosen - rejected), atol=1e-5)
    np.testing.assert_allclose(float(model.reward_accuracy.result()),
                               np.mean(chosen > rejected), atol=1e-6)
    # One named loss per type, tracked unweighted.
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    assert model.loss_names == tuple(types)
    for name in types:
        alone = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name, chosen_lengths=nc,
                         rejected_lengths=nr, **{k: v for k, v in options.items()
                                                 if k != "loss_weights"})[0]
        np.testing.assert_allclose(float(model.loss_trackers[name].result()),
                                   float(np.mean(alone)), rtol=1e-5)


def test_full_logits_equal_chunked_and_a_backbone_is_wrapped(tmp_path):
    policy = lm(0)
    x = with_reference(pairs(), np.full(B, -9.0), np.full(B, -9.0))
    chunked = DirectPreferenceOptimization(policy, chunk_size=3)
    full = DirectPreferenceOptimization(policy)  # chunk_size None: the full logits
    for key in ("chosen_logps", "rejected_logps"):
        np.testing.assert_allclose(chunked(x)[key], full(x)[key], rtol=1e-6)
    wrapped = DirectPreferenceOptimization(policy.backbone, reference=gpt2())
    assert isinstance(wrapped.policy, CausalLanguageModel)
    assert wrapped.policy.backbone is policy.backbone
    assert isinstance(wrapped.reference.model, CausalLanguageModel)
    np.testing.assert_allclose(wrapped(x)["chosen_logps"], full(x)["chosen_logps"], rtol=1e-6)
    # A reference from a keras-hub preset (a backbone) is wrapped, its source kept.
    wrapped.reference.model.backbone.save_to_preset(str(tmp_path / "preset"))
    from_preset = DirectPreferenceOptimization(
        policy, reference=FrozenModel.from_preset(tmp_path / "preset"))
    assert from_preset.get_config()["reference"] == {"preset": str(tmp_path / "preset")}
    np.testing.assert_allclose(
        from_preset.compute_frozen_outputs("reference", x)["reference_chosen_logps"],
        wrapped.compute_frozen_outputs("reference", x)["reference_chosen_logps"], rtol=1e-6)


def test_simpo_cpo_and_orpo_equal_their_ops_on_hand_computed_log_probs():
    policy = lm(0)
    x = pairs()
    pc, nc = hand_logps(policy, x, "chosen")
    pr, nr = hand_logps(policy, x, "rejected")
    ac, ar = pc / nc, pr / nr
    nll = -pc.sum() / nc.sum()  # token mean over the batch's chosen completions

    simpo = ReferenceFreePreferenceOptimization(policy, method="simpo", beta=2.0, gamma=0.3,
                                                label_smoothing=0.1)
    expected, chosen, _ = simpo_loss(ac, ar, beta=2.0, gamma=0.3, label_smoothing=0.1)
    np.testing.assert_allclose(float(simpo.compute_loss(x, y_pred=simpo(x))),
                               np.mean(expected), rtol=1e-5)  # nll_weight 0
    np.testing.assert_allclose(float(simpo.chosen_reward.result()), np.mean(chosen), rtol=1e-5)
    np.testing.assert_allclose(float(simpo.loss_trackers["nll"].result()), nll, rtol=1e-5)

    orpo = ReferenceFreePreferenceOptimization(policy, method="orpo", beta=0.25)
    odds, log_odds = odds_ratio_loss(ac, ar, beta=0.25)
    np.testing.assert_allclose(float(orpo.compute_loss(x, y_pred=orpo(x))),
                               nll + np.mean(odds), rtol=1e-5)
    np.testing.assert_allclose(float(orpo.log_odds_ratio.result()), np.mean(log_odds),
                               rtol=1e-5)

    cpo = ReferenceFreePreferenceOptimization(policy, method="cpo", beta=0.5, nll_weight=0.3)
    sigmoid = cpo_loss(pc, pr, beta=0.5)[0]  # summed log-probs, as TRL
    np.testing.assert_allclose(float(cpo.compute_loss(x, y_pred=cpo(x))),
                               np.mean(sigmoid) + 0.3 * nll, rtol=1e-5)
    ipo = ReferenceFreePreferenceOptimization(policy, method="cpo", cpo_loss_type="ipo")
    np.testing.assert_allclose(float(ipo.compute_loss(x, y_pred=ipo(x))),
                               np.mean(cpo_loss(ac, ar, beta=0.1, loss_type="ipo")[0]) + nll,
                               rtol=1e-5)  # averaged log-probs, as TRL
    # AlphaPO (TRL's loss_type="alphapo": SimPO with alpha, no NLL term).
    alphapo = ReferenceFreePreferenceOptimization(policy, method="simpo", alpha=0.25)
    expected, chosen, _ = simpo_loss(ac, ar, beta=2.0, gamma=0.5, alpha=0.25)
    np.testing.assert_allclose(float(alphapo.compute_loss(x, y_pred=alphapo(x))),
                               np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose(float(alphapo.chosen_reward.result()), np.mean(chosen), rtol=1e-5)
    assert abs(float(np.mean(expected)) - float(simpo.compute_loss(x, y_pred=simpo(x)))) > 1e-4


def test_reference_equal_to_policy_gives_log_2_and_rewards_0():
    policy = lm(0)
    x = pairs()
    model = DirectPreferenceOptimization(policy, reference=copy_of(policy), beta=0.1)
    loss = float(model.compute_loss(x, y_pred=model(x)))
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert float(model.chosen_reward.result()) == 0.0
    assert float(model.reward_margin.result()) == 0.0
    assert float(model.reward_accuracy.result()) == 0.0  # ties count as wrong


def test_precomputed_reference_in_the_data_equals_the_frozen_reference():
    # One pass of the reference over ordered data, written beside it.
    x = pairs()
    other = lm(5)
    examples = PreferenceExamples(
        [x["chosen_token_ids"][i, :2] for i in range(B)],
        [x["chosen_token_ids"][i, 2:x["chosen_padding_mask"][i].sum()] for i in range(B)],
        [x["rejected_token_ids"][i, 2:x["rejected_padding_mask"][i].sum()] for i in range(B)])
    ordered = preference_dataset(examples, L, 3, shuffle=False, drop_remainder=False)
    values = precompute_reference_log_probs(other, ordered, chunk_size=4)
    assert sorted(values) == sorted(REFERENCE_LOGPS_KEYS)
    raw = next(iter(preference_dataset(examples, L, B, shuffle=False)))
    raw = {k: v.numpy() for k, v in raw.items()}
    rc, _ = hand_logps(other, raw, "chosen")
    np.testing.assert_allclose(values["reference_chosen_logps"], rc, rtol=1e-5, atol=1e-5)
    train = preference_dataset(examples, L, 4, shuffle=True, seed=3, extra_features=values)
    frozen = DirectPreferenceOptimization(lm(0), reference=other, beta=0.1)
    # The same values from the objective itself.
    again = precompute_reference_log_probs(frozen, ordered)
    np.testing.assert_allclose(again["reference_rejected_logps"],
                               values["reference_rejected_logps"], rtol=1e-5, atol=1e-5)
    free = DirectPreferenceOptimization(lm(0), beta=0.1)
    for batch in train:
        stripped = {k: v for k, v in batch.items() if k not in REFERENCE_LOGPS_KEYS}
        np.testing.assert_allclose(
            float(free.compute_loss(batch, y_pred=free(batch))),
            float(frozen.compute_loss(stripped, y_pred=frozen(stripped))), rtol=1e-5)


def test_reference_is_not_trainable_nor_saved(tmp_path):
    policy = lm(0)
    reference = lm(1)
    model = DirectPreferenceOptimization(policy, reference=reference)
    assert not reference.trainable
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [v.numpy().copy() for v in reference.weights]
    model.fit(pairs(), batch_size=4, epochs=1, verbose=0)
    reference_ids = {id(v) for v in reference.weights}
    assert reference_ids.isdisjoint(id(v) for v in model.trainable_variables)
    assert reference_ids.isdisjoint(id(v) for v in model.weights)
    assert len(model.trainable_variables) == len(policy.trainable_variables) > 0
    for a, v in zip(before, reference.weights):
        np.testing.assert_array_equal(a, v.numpy())  # unchanged by training

    def saved_shapes(m, path):
        m.save_weights(path)
        shapes = []
        with h5py.File(path) as f:
            f.visititems(lambda n, o: shapes.append((n, o.shape))
                         if isinstance(o, h5py.Dataset) and not n.startswith("optimizer")
                         else None)
        return sorted(shapes)

    alone = DirectPreferenceOptimization(lm(0))
    saved = saved_shapes(model, tmp_path / "a.weights.h5")
    assert saved == saved_shapes(alone, tmp_path / "b.weights.h5")
    assert sum(np.prod(shape) for _, shape in saved) == sum(
        np.prod(w.shape) for w in policy.weights)


def test_round_trip_with_a_reference_from_file_and_savedmodel_export(tmp_path):
    reference = lm(3)
    path = tmp_path / "reference.keras"
    reference.save(path)
    model = DirectPreferenceOptimization(lm(0), reference=FrozenModel.from_file(path), beta=0.5,
                                         loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    x = pairs()
    expected = float(model.compute_loss(x, y_pred=model(x)))
    model.save(tmp_path / "dpo.keras")
    restored = keras.saving.load_model(tmp_path / "dpo.keras")
    assert restored.reference.source == {"file": str(path)}
    assert restored.loss_weights == {"sigmoid": 1.0, "sft": 0.5}
    np.testing.assert_allclose(float(restored.compute_loss(x, y_pred=restored(x))), expected,
                               rtol=1e-6)
    assert restored.serving_model() is restored.policy
    assert getattr(restored, restored.exported_model) is restored.policy.backbone
    # The SavedModel serves the policy alone: its logits, no reference.
    loaded = tf.saved_model.load(export_saved_model(restored, tmp_path / "serving"))
    ids, mask = x["chosen_token_ids"], x["chosen_padding_mask"].astype("int32")
    out = loaded.signatures["serving_default"](token_ids=tf.constant(ids),
                                               padding_mask=tf.constant(mask))
    assert out["logits"].shape == (B, L, V)
    expected_logits = restored.policy.logits(restored.policy({"token_ids": ids,
                                                              "padding_mask": mask}))
    np.testing.assert_allclose(out["logits"], expected_logits, atol=1e-5)
    policy_count = sum(int(np.prod(w.shape)) for w in restored.policy.weights)
    assert sum(int(np.prod(v.shape)) for v in loaded.variables) == policy_count


def _reference_values():
    keras.utils.set_random_seed(11)
    reference = lm()
    x = pairs()
    rc, _ = hand_logps(reference, x, "chosen")
    rr, _ = hand_logps(reference, x, "rejected")
    return with_reference(x, rc, rr)


PRECOMPUTED = _reference_values()
METRICS = ("reward_accuracy", "chosen_reward", "rejected_reward", "reward_margin",
           "sigmoid_loss", "sft_loss")
CASE = ObjectiveCase(
    build=lambda: DirectPreferenceOptimization(
        lm(), reference=lm(), beta=1.0, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.1],
        chunk_size=4),
    data={"x": pairs(), "batch_size": 4}, metrics=METRICS)
ROUND_TRIP = ObjectiveCase(
    build=lambda: DirectPreferenceOptimization(lm(), beta=1.0, loss_type=["sigmoid", "sft"]),
    data={"x": PRECOMPUTED, "batch_size": 4}, metrics=METRICS,
    optimizer=lambda: keras.optimizers.Adam(1e-2))

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_and_learns(one_device):
    assert_jit_matches_eager(CASE, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_keras_round_trip_continues_identically(tmp_path):
    restored = assert_keras_round_trip_continues(ROUND_TRIP, tmp_path / "dpo.keras")
    assert restored.reference is None and restored.loss_type == ["sigmoid", "sft"]


def test_training_raises_reward_accuracy():
    keras.utils.set_random_seed(0)
    policy = lm()
    model = DirectPreferenceOptimization(policy, reference=copy_of(policy), beta=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = pairs()
    start = model.evaluate(x, batch_size=B, verbose=0, return_dict=True)
    assert start["reward_accuracy"] == 0.0 and abs(start["loss"] - np.log(2)) < 1e-6
    model.fit(x, batch_size=4, epochs=15, verbose=0)
    end = model.evaluate(x, batch_size=B, verbose=0, return_dict=True)
    assert end["reward_accuracy"] >= 0.75, end
    assert end["loss"] < 0.5 and end["reward_margin"] > 0, end


def test_errors():
    policy = lm(0)
    with pytest.raises(ValueError, match="Unknown `loss_type`"):
        DirectPreferenceOptimization(policy, loss_type="dpo")
    with pytest.raises(ValueError, match="label_smoothing"):
        DirectPreferenceOptimization(policy, loss_type="sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="exo_pair"):
        DirectPreferenceOptimization(policy, loss_type="exo_pair")
    with pytest.raises(ValueError, match="f_divergence_type"):
        DirectPreferenceOptimization(policy, loss_type="bco_pair", f_divergence_type="forward_kl")
    with pytest.raises(ValueError, match="Unknown `f_divergence_type`"):
        DirectPreferenceOptimization(policy, f_divergence_type="kl")
    with pytest.raises(ValueError, match="one weight per loss type"):
        DirectPreferenceOptimization(policy, loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="twice"):
        DirectPreferenceOptimization(policy, loss_type=["sigmoid", "sigmoid"])
    with pytest.raises(ValueError, match="beta"):
        DirectPreferenceOptimization(policy, beta=0.0)
    with pytest.raises(ValueError, match="shares weights"):
        DirectPreferenceOptimization(policy, reference=policy)
    with pytest.raises(TypeError, match="CausalLanguageModel"):
        DirectPreferenceOptimization("gpt2")
    model = DirectPreferenceOptimization(policy)
    x = pairs()
    with pytest.raises(ValueError, match="no reference model and the batch holds no"):
        model.compute_loss(x, y_pred=model(x))
    bad = dict(x)
    del bad["rejected_completion_mask"]
    with pytest.raises(ValueError, match="rejected_completion_mask"):
        model(bad)
    # loss_type="sft" alone needs no reference.
    sft = DirectPreferenceOptimization(policy, loss_type="sft")
    pc, nc = hand_logps(policy, x, "chosen")
    np.testing.assert_allclose(float(sft.compute_loss(x, y_pred=sft(x))), -pc.sum() / nc.sum(),
                               rtol=1e-5)


# -- WPO weighting (use_weighting) -------------------------------------------------------


def hand_wpo_log_weights(model, x, side):
    """TRL 1.x's WPO log-weight per row from the model's full logits, in numpy
    float64: the mean over completion tokens of `log p(token) - log sum_v p_v^2`."""
    inputs = {"token_ids": x[f"{side}_token_ids"], "padding_mask": x[f"{side}_padding_mask"]}
    logp = log_softmax(model.logits(model(inputs)).numpy().astype("float64"))
    log_sum_squares = np.log(np.exp(2.0 * logp).sum(-1))
    ids, completion = x[f"{side}_token_ids"], x[f"{side}_completion_mask"]
    out = np.zeros(len(ids))
    for i in range(len(ids)):
        terms = [logp[i, t - 1, ids[i, t]] - log_sum_squares[i, t - 1]
                 for t in range(1, ids.shape[1]) if completion[i, t]]
        out[i] = np.mean(terms) if terms else 0.0
    return out


@pytest.mark.parametrize("loss_type, loss_weights, chunk_size", [
    (["sigmoid", "sft"], [1.0, 0.5], 3),
    ("ipo", None, None),
])
def test_wpo_weighting_equals_the_manual_weighted_mean(loss_type, loss_weights, chunk_size):
    policy = lm(0)
    x = pairs()
    pc, nc = hand_logps(policy, x, "chosen")
    pr, nr = hand_logps(policy, x, "rejected")
    wc, wr = hand_wpo_log_weights(policy, x, "chosen"), hand_wpo_log_weights(policy, x, "rejected")
    pair_weights = np.exp(wc + wr)  # TRL: chosen_weights * rejected_weights, no clamp
    rng = np.random.default_rng(1)
    rc, rr = pc + rng.normal(0, 1, B), pr + rng.normal(0, 1, B)
    batch = with_reference(x, rc, rr)
    model = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5,
                                         loss_weights=loss_weights, chunk_size=chunk_size,
                                         use_weighting=True)
    out = model(batch)
    np.testing.assert_allclose(out["chosen_wpo_log_weights"], wc, atol=1e-5)
    np.testing.assert_allclose(out["rejected_wpo_log_weights"], wr, atol=1e-5)
    model.compile(optimizer="sgd")
    loss = float(model.compute_loss(batch, y_pred=out))
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    expected = 0.0
    for name, weight in zip(types, loss_weights or [1.0]):
        if name == "sft":  # TRL: the batch token mean in every row, times the pair weight
            per_pair = np.full(B, -pc.sum() / nc.sum())
        else:
            per_pair = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name, chosen_lengths=nc,
                                rejected_lengths=nr)[0].numpy()
        expected += weight * np.mean(per_pair * pair_weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(float(model.wpo_weight.result()), np.mean(pair_weights),
                               rtol=1e-5)
    # Without weighting the loss is the unweighted one (the weights are not all 1).
    assert not np.allclose(pair_weights, 1.0, rtol=1e-3)
    plain = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5,
                                         loss_weights=loss_weights, chunk_size=chunk_size)
    assert "chosen_wpo_log_weights" not in plain(batch) and plain.wpo_weight is None
    assert abs(float(plain.compute_loss(batch, y_pred=plain(batch))) - loss) > 1e-4


def test_wpo_weights_carry_no_gradient_and_come_from_the_policy_alone():
    policy = lm(0)
    reference = copy_of(policy)
    x = pairs()
    model = DirectPreferenceOptimization(policy, reference=reference, use_weighting=True,
                                         chunk_size=4)
    wc, wr = hand_wpo_log_weights(policy, x, "chosen"), hand_wpo_log_weights(policy, x, "rejected")
    pair_weights = np.exp(wc + wr)
    variables = policy.trainable_variables
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y_pred=model(x, training=True))
    grads = tape.gradient(loss, variables)
    # Online reference equal to the policy: every sigmoid loss is log 2, times the weight.
    np.testing.assert_allclose(float(loss), np.log(2.0) * np.mean(pair_weights), rtol=1e-5)
    # The gradient is that of the losses times constant weights: none through the weights.
    plain = DirectPreferenceOptimization(policy, reference=copy_of(policy), chunk_size=4)
    with tf.GradientTape() as tape:
        out = plain(x, training=True)
        rc, rr = plain.reference_log_probs(x, out["chosen_logps"])
        losses = dpo_loss(out["chosen_logps"], out["rejected_logps"], rc, rr)[0]
        manual = tf.reduce_mean(losses * tf.constant(pair_weights, tf.float32))
    for a, b in zip(grads, tape.gradient(manual, variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # Precomputed reference values give the same loss.
    free = DirectPreferenceOptimization(policy, use_weighting=True)
    values = with_reference(x, *(hand_logps(reference, x, side)[0]
                                 for side in ("chosen", "rejected")))
    np.testing.assert_allclose(float(free.compute_loss(values, y_pred=free(values))),
                               float(loss), rtol=1e-5)


def assert_loss_and_gradients_match_under_xla(model, batch):
    """One training step's loss and gradients, compiled with XLA, equal eager."""

    def loss_and_gradients(batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, y_pred=model(batch, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    eager, eager_grads = loss_and_gradients(batch)
    compiled, compiled_grads = tf.function(loss_and_gradients, jit_compile=True)(batch)
    np.testing.assert_allclose(float(compiled), float(eager), rtol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def lora_model():
    policy = lm()
    backbones.enable_lora(policy.backbone, rank=2)
    return DirectPreferenceOptimization(policy, beta=1.0)


LORA_CASE = ObjectiveCase(build=lora_model, data={"x": PRECOMPUTED, "batch_size": 4},
                          metrics=("reward_accuracy", "sigmoid_loss"),
                          optimizer=lambda: keras.optimizers.Adam(1e-2))


def test_a_lora_policy_trains_its_adapters_under_xla_and_mirrored(mirrored_strategy):
    one_device = assert_jit_matches_eager(LORA_CASE)  # and the loss falls
    assert_mirrored_matches_one_device(LORA_CASE, mirrored_strategy, one_device=one_device)
    model, _ = one_device
    keras.utils.set_random_seed(LORA_CASE.seed)
    untouched = lora_model()  # the starting weights
    for before, after in zip(untouched.weights, model.weights):
        if before.trainable:
            continue
        np.testing.assert_array_equal(before.numpy(), after.numpy(), err_msg=after.path)
    assert {w.path.split("/")[-1] for w in model.trainable_weights} == {
        "bias", "lora_kernel_a", "lora_kernel_b"}


def wpo_model():
    return DirectPreferenceOptimization(lm(0), loss_type=["sigmoid", "sft"], beta=0.5,
                                        chunk_size=3, use_weighting=True)


WPO_DATA = with_reference(pairs(), np.full(B, -9.0), np.full(B, -11.0))


def test_wpo_weighting_under_xla():
    model = wpo_model()
    assert_loss_and_gradients_match_under_xla(model, WPO_DATA)


WPO_CASE = ObjectiveCase(build=wpo_model, data={"x": WPO_DATA, "batch_size": 4},
                         metrics=("wpo_weight", "sigmoid_loss", "sft_loss"))


def test_wpo_weighting_mirrored_matches_one_device(mirrored_strategy):
    # The weighted sft term is the global token mean times each pair's weight.
    assert_mirrored_matches_one_device(WPO_CASE, mirrored_strategy)


def test_wpo_weighting_config_and_keras_round_trip(tmp_path):
    x = WPO_DATA
    model = wpo_model()
    eager = float(model.compute_loss(x, y_pred=model(x)))
    config = model.get_config()
    assert config["use_weighting"] is True
    assert DirectPreferenceOptimization(lm(0)).get_config()["use_weighting"] is False
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.use_weighting and clone.get_config() == config
    model.save(tmp_path / "wpo.keras")
    restored = keras.saving.load_model(tmp_path / "wpo.keras")
    assert restored.use_weighting and restored.wpo_weight is not None
    np.testing.assert_allclose(float(restored.compute_loss(x, y_pred=restored(x))), eager,
                               rtol=1e-6)


def test_wpo_weighting_errors():
    policy = lm(0)
    with pytest.raises(ValueError, match="`use_weighting` must be True"):
        DirectPreferenceOptimization(policy, use_weighting="yes")
    for loss_type in ("aot", ["sigmoid", "aot_unpaired"]):
        with pytest.raises(ValueError, match="use_weighting.*sorted quantiles"):
            DirectPreferenceOptimization(policy, loss_type=loss_type, label_smoothing=0.1,
                                         use_weighting=True)
    model = DirectPreferenceOptimization(policy, use_weighting=True)
    x = with_reference(pairs(), np.zeros(B), np.zeros(B))
    y_pred = {k: v for k, v in model(x).items() if k != "rejected_wpo_log_weights"}
    with pytest.raises(ValueError, match=r"needs \['rejected_wpo_log_weights'\]"):
        model.compute_loss(x, y_pred=y_pred)


def test_reference_free_errors_and_config():
    policy = lm(0)
    with pytest.raises(ValueError, match="Unknown `method`"):
        ReferenceFreePreferenceOptimization(policy, method="dpo")
    with pytest.raises(ValueError, match="label_smoothing"):
        ReferenceFreePreferenceOptimization(policy, method="orpo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        ReferenceFreePreferenceOptimization(policy, method="cpo", cpo_loss_type="hinge",
                                            label_smoothing=0.1)
    with pytest.raises(ValueError, match="gamma"):
        ReferenceFreePreferenceOptimization(policy, method="orpo", gamma=1.0)
    with pytest.raises(ValueError, match="cpo_loss_type"):
        ReferenceFreePreferenceOptimization(policy, method="simpo", cpo_loss_type="ipo")
    with pytest.raises(ValueError, match="Unknown `cpo_loss_type`"):
        ReferenceFreePreferenceOptimization(policy, method="cpo", cpo_loss_type="robust")
    with pytest.raises(ValueError, match="nll_weight"):
        ReferenceFreePreferenceOptimization(policy, loss_weights={"nll": 1.0})
    with pytest.raises(ValueError, match=r"ORPO's odds-ratio loss does not use `alpha`"):
        ReferenceFreePreferenceOptimization(policy, method="orpo", alpha=0.5)
    with pytest.raises(ValueError, match=r"`alpha` \(AlphaPO's reward shape\)"):
        ReferenceFreePreferenceOptimization(policy, method="simpo", alpha=float("nan"))
    model = ReferenceFreePreferenceOptimization(policy, method="cpo", cpo_loss_type="simpo",
                                                gamma=0.7, nll_weight=0.2, alpha=-0.5)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(clone) is ReferenceFreePreferenceOptimization
    assert clone.get_config() == model.get_config()
    assert clone.loss_weights == {"cpo": 1.0, "nll": 0.2} and clone.gamma == 0.7
    assert clone.alpha == -0.5


ORPO_CASE = ObjectiveCase(
    build=lambda: ReferenceFreePreferenceOptimization(lm(), method="orpo", beta=0.5,
                                                      chunk_size=4),
    data={"x": pairs(), "batch_size": 4},
    metrics=("reward_accuracy", "reward_margin", "log_odds_ratio", "odds_ratio_loss",
             "nll_loss"))


@pytest.fixture(scope="module")
def orpo_one_device():
    keras.mixed_precision.set_global_policy("float32")
    return fit(ORPO_CASE)


def test_reference_free_jit_matches_graph_and_learns(orpo_one_device):
    assert_jit_matches_eager(ORPO_CASE, one_device=orpo_one_device)


def test_reference_free_mirrored_matches_one_device(mirrored_strategy, orpo_one_device):
    # The NLL is a token mean over the global batch: replicas hold different counts.
    assert_mirrored_matches_one_device(ORPO_CASE, mirrored_strategy, one_device=orpo_one_device)


# -- KTO ----------------------------------------------------------------------------------


def kto_rows(n=B, seed=0):
    """A KTO batch: rows, their KL rows (another completion) and labels."""
    x = pairs(n, seed)
    out = {key.replace("chosen_", ""): value for key, value in x.items()
           if key.startswith("chosen_")}
    out.update({key.replace("rejected_", "kl_"): value for key, value in x.items()
                if key.startswith("rejected_")})
    out["desirable"] = np.arange(n) % 3 != 0
    return out


def test_kto_equals_kto_loss_on_hand_computed_log_probs_and_frozen_equals_precomputed():
    policy = lm(0)
    x = kto_rows()
    pl, _ = hand_logps(policy, x, "")
    pkl, _ = hand_logps(policy, x, "kl_")
    rng = np.random.default_rng(2)
    rl, rkl = pl + rng.normal(0, 1, B), pkl - 0.5 + rng.normal(0, 0.1, B)
    kl = max(np.mean(pkl - rkl), 0.0)
    assert kl > 0.3  # the reference point matters
    batch = dict(x, reference_logps=rl.astype("float32"),
                 reference_kl_logps=rkl.astype("float32"))
    model = KahnemanTverskyOptimization(policy, beta=0.5, desirable_weight=1.5, chunk_size=4)
    model.compile(optimizer="sgd")
    loss = float(model.compute_loss(batch, y_pred=model(batch)))
    losses, rewards = kto_loss(pl, rl, x["desirable"], kl, beta=0.5, desirable_weight=1.5)
    np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(float(model.kl.result()), kl, rtol=1e-5)
    rewards = np.asarray(rewards)
    np.testing.assert_allclose(float(model.chosen_reward.result()),
                               np.mean(rewards[x["desirable"]]), rtol=1e-5)
    np.testing.assert_allclose(float(model.rejected_reward.result()),
                               np.mean(rewards[~x["desirable"]]), rtol=1e-5)

    reference = lm(4)
    frozen = KahnemanTverskyOptimization(lm(0), reference=reference, beta=0.5)
    values = precompute_reference_log_probs(
        reference, tf.data.Dataset.from_tensor_slices(x).batch(3))
    rl, _ = hand_logps(reference, x, "")
    np.testing.assert_allclose(values["reference_logps"], rl, rtol=1e-5, atol=1e-5)
    free = KahnemanTverskyOptimization(lm(0), beta=0.5)
    precomputed = dict(x, **values)
    np.testing.assert_allclose(float(frozen.compute_loss(x, y_pred=frozen(x))),
                               float(free.compute_loss(precomputed, y_pred=free(precomputed))),
                               rtol=1e-5)


KTO_CASE = ObjectiveCase(
    build=lambda: KahnemanTverskyOptimization(lm(), reference=lm(), beta=1.0, chunk_size=4),
    data={"x": kto_rows(), "batch_size": 4}, metrics=("chosen_reward", "rejected_reward", "kl"))


@pytest.fixture(scope="module")
def kto_one_device():
    keras.mixed_precision.set_global_policy("float32")
    return fit(KTO_CASE)


def test_kto_jit_matches_graph_and_learns(kto_one_device):
    assert_jit_matches_eager(KTO_CASE, one_device=kto_one_device)


def test_kto_mirrored_matches_one_device(mirrored_strategy, kto_one_device):
    # The KL reference point is all-reduced over the replicas.
    assert_mirrored_matches_one_device(KTO_CASE, mirrored_strategy, one_device=kto_one_device)


def test_kto_errors_and_config():
    policy = lm(0)
    with pytest.raises(ValueError, match="loss_type"):
        KahnemanTverskyOptimization(policy, loss_type="sigmoid")
    with pytest.raises(ValueError, match="desirable_weight"):
        KahnemanTverskyOptimization(policy, desirable_weight=0.0)
    model = KahnemanTverskyOptimization(policy)
    x = kto_rows()
    with pytest.raises(ValueError, match="no reference model"):
        model.compute_loss(x, y_pred=model(x))
    with pytest.raises(ValueError, match="desirable"):
        model({k: v for k, v in x.items() if k != "desirable"})

    model = KahnemanTverskyOptimization(lm(0), beta=0.3, undesirable_weight=2.0,
                                        loss_type="apo_zero_unpaired")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(clone) is KahnemanTverskyOptimization and clone.reference is None
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    x = dict(x, reference_logps=np.full(B, -5.0, "float32"),
             reference_kl_logps=np.zeros(B, "float32"))
    pl, _ = hand_logps(model.policy, x, "")
    expected, _ = kto_loss(pl, x["reference_logps"], x["desirable"], None, beta=0.3,
                           undesirable_weight=2.0, loss_type="apo_zero_unpaired")
    np.testing.assert_allclose(float(clone.compute_loss(x, y_pred=clone(x))),
                               np.mean(expected), rtol=1e-5)


def test_kto_apo_zero_unpaired_online_reference_scores_the_rows_alone():
    """apo_zero_unpaired has no KL reference point: its online reference
    scores the rows only (KL values zeros, never read), and the loss equals
    the one from the reference's values precomputed into the batch."""
    model = KahnemanTverskyOptimization(lm(0), lm(1), beta=0.3, loss_type="apo_zero_unpaired")
    x = kto_rows()
    outputs = model.compute_frozen_outputs("reference", x)
    assert outputs["reference_logps"].shape == (B,)
    np.testing.assert_array_equal(outputs["reference_kl_logps"], np.zeros(B, "float32"))
    ref_logps, _ = hand_logps(model.reference.model, x, "")
    np.testing.assert_allclose(outputs["reference_logps"], ref_logps, rtol=1e-5, atol=1e-5)
    online = float(model.compute_loss(x, y_pred=model(x)))
    given = dict(x, reference_logps=outputs["reference_logps"].numpy(),
                 reference_kl_logps=np.full(B, 123.0, "float32"))  # never read
    assert float(model.compute_loss(given, y_pred=model(given))) == pytest.approx(online, rel=1e-6)


def test_precomputing_kto_rows_runs_the_kl_rows_only_where_they_are_read():
    x = kto_rows()
    rows = tf.data.Dataset.from_tensors(x)
    kto = KahnemanTverskyOptimization(lm(0), lm(1), beta=0.3)
    apo = KahnemanTverskyOptimization(lm(0), kto.reference, beta=0.3,
                                      loss_type="apo_zero_unpaired")
    full = precompute_reference_log_probs(kto, rows)
    assert np.abs(full["reference_kl_logps"]).min() > 0  # the KL rows ran
    for values in (precompute_reference_log_probs(apo, rows),  # as the objective needs
                   precompute_reference_log_probs(kto.reference, rows, kl_rows=False)):
        np.testing.assert_array_equal(values["reference_kl_logps"], np.zeros(B, "float32"))
        np.testing.assert_allclose(values["reference_logps"], full["reference_logps"],
                                   rtol=1e-6)
    np.testing.assert_allclose(apo.compute_frozen_outputs("reference", x)["reference_logps"],
                               full["reference_logps"], rtol=1e-5)
    with pytest.raises(ValueError, match=r"`kl_rows=True`, but .*'apo_zero_unpaired' has no KL"):
        precompute_reference_log_probs(apo, rows, kl_rows=True)
    with pytest.raises(ValueError, match=r"`kl_rows=False` is for KTO rows, .*pairs"):
        precompute_reference_log_probs(lm(1), tf.data.Dataset.from_tensors(pairs()),
                                       kl_rows=False)


# -- LD-DPO (ld_alpha) -------------------------------------------------------------------


def hand_ld_logps(model, x, ld_alpha):
    """TRL 1.x's `ld_alpha` logps of both sides from the model's full logits, in
    numpy float64, transcribed from its code: `(chosen, rejected)`."""
    per_token, masks = [], []
    for side in ("chosen", "rejected"):
        inputs = {"token_ids": x[f"{side}_token_ids"],
                  "padding_mask": x[f"{side}_padding_mask"]}
        logp = log_softmax(model.logits(model(inputs)).numpy().astype("float64"))
        ids = x[f"{side}_token_ids"]
        per_token.append(np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0])
        masks.append(np.asarray(x[f"{side}_completion_mask"])[:, 1:])
    per_token_logps, shift_completion_mask = np.concatenate(per_token), np.concatenate(masks)
    per_token_logps[shift_completion_mask == 0] = 0.0
    comp_pos = shift_completion_mask.cumsum(1)
    comp_lens = shift_completion_mask.sum(1)
    chosen_lens, rejected_lens = np.split(comp_lens, 2)
    shared_lens = np.concatenate([np.minimum(chosen_lens, rejected_lens)] * 2)[:, None]
    shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens)
    tail_mask = comp_pos > shared_lens
    logps = (per_token_logps * shared_mask).sum(1) + ld_alpha * (
        per_token_logps * tail_mask).sum(1)
    return np.split(logps, 2)


@pytest.mark.parametrize("loss_type, ld_alpha, chunk_size", [
    ("sigmoid", 0.5, 3),
    (["ipo", "sft"], 0.0, None),  # the counts and the sft token mean stay the full ones
])
def test_ld_alpha_equals_trl_online_and_precomputed(loss_type, ld_alpha, chunk_size):
    policy, reference = lm(0), lm(1)
    x = pairs()
    lengths = [x[f"{side}_completion_mask"].sum(1) for side in ("chosen", "rejected")]
    assert np.any(lengths[0] != lengths[1]) and np.any(lengths[0] == lengths[1])
    pc, pr = hand_ld_logps(policy, x, ld_alpha)
    rc, rr = hand_ld_logps(reference, x, ld_alpha)
    plain_c, nc = hand_logps(policy, x, "chosen")
    _, nr = hand_logps(policy, x, "rejected")
    assert not np.allclose(pc, plain_c)  # the tails count less
    np.testing.assert_allclose(hand_ld_logps(policy, x, 1.0)[0], plain_c, rtol=1e-12)
    model = DirectPreferenceOptimization(policy, reference=reference, loss_type=loss_type,
                                         beta=0.5, chunk_size=chunk_size, ld_alpha=ld_alpha)
    out = model(x)
    np.testing.assert_allclose(out["chosen_logps"], pc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["rejected_logps"], pr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["chosen_unweighted_logps"], plain_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["chosen_lengths"], nc)  # full counts, ld_alpha 0 too
    np.testing.assert_array_equal(out["rejected_lengths"], nr)
    references = model.compute_frozen_outputs("reference", x)
    np.testing.assert_allclose(references["reference_chosen_logps"], rc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(references["reference_rejected_logps"], rr, rtol=1e-5,
                               atol=1e-5)
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    expected = 0.0
    for name in types:
        if name == "sft":  # TRL: the plain token mean of the chosen NLL
            expected += -plain_c.sum() / nc.sum()
        elif name == "ipo":  # TRL's formula on the LD logps, over the full token counts
            expected += np.mean(((pc - rc) / nc - (pr - rr) / nr - 1.0 / (2 * 0.5)) ** 2)
        else:
            expected += np.mean(dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=name)[0])
    loss = float(model.compute_loss(x, y_pred=out))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(float(model.chosen_reward.result()), np.mean(0.5 * (pc - rc)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(model.chosen_log_prob.result()), np.mean(pc), rtol=1e-5)
    # Precomputed: the objective gives LD-weighted reference values; a bare reference
    # model needs ld_alpha (without it, the plain sums).
    ordered = tf.data.Dataset.from_tensor_slices(x).batch(3)
    values = precompute_reference_log_probs(model, ordered)
    np.testing.assert_allclose(values["reference_chosen_logps"], rc, rtol=1e-5, atol=1e-5)
    bare = precompute_reference_log_probs(reference, ordered, ld_alpha=ld_alpha)
    np.testing.assert_allclose(bare["reference_rejected_logps"], rr, rtol=1e-5, atol=1e-5)
    unweighted = precompute_reference_log_probs(reference, ordered)
    np.testing.assert_allclose(unweighted["reference_chosen_logps"],
                               hand_logps(reference, x, "chosen")[0], rtol=1e-5, atol=1e-5)
    free = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5,
                                        chunk_size=chunk_size, ld_alpha=ld_alpha)
    batch = dict(x, **values)
    np.testing.assert_allclose(float(free.compute_loss(batch, y_pred=free(batch))), expected,
                               rtol=1e-5)


def test_ld_alpha_one_is_plain_dpo_and_works_under_xla():
    policy = lm(0)
    x = with_reference(pairs(), np.full(B, -9.0), np.full(B, -11.0))
    plain = DirectPreferenceOptimization(policy, loss_type=["sigmoid", "sft"], chunk_size=3)
    one = DirectPreferenceOptimization(policy, loss_type=["sigmoid", "sft"], chunk_size=3,
                                       ld_alpha=1.0)
    np.testing.assert_allclose(float(one.compute_loss(x, y_pred=one(x))),
                               float(plain.compute_loss(x, y_pred=plain(x))), rtol=1e-6)
    model = DirectPreferenceOptimization(policy, loss_type=["sigmoid", "sft"], chunk_size=3,
                                         ld_alpha=0.3, use_weighting=True)
    assert_loss_and_gradients_match_under_xla(model, x)


def test_ld_alpha_config_and_keras_round_trip(tmp_path):
    x = with_reference(pairs(), np.full(B, -9.0), np.full(B, -11.0))
    model = DirectPreferenceOptimization(lm(0), loss_type=["sigmoid", "sft"], chunk_size=3,
                                         ld_alpha=0.25)
    eager = float(model.compute_loss(x, y_pred=model(x)))
    config = model.get_config()
    assert config["ld_alpha"] == 0.25
    assert DirectPreferenceOptimization(lm(0)).get_config()["ld_alpha"] is None
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.ld_alpha == 0.25 and clone.get_config() == config
    model.save(tmp_path / "ld.keras")
    restored = keras.saving.load_model(tmp_path / "ld.keras")
    assert restored.ld_alpha == 0.25
    np.testing.assert_allclose(float(restored.compute_loss(x, y_pred=restored(x))), eager,
                               rtol=1e-6)


def test_ld_alpha_errors():
    policy = lm(0)
    for bad in (-0.5, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"`ld_alpha` must be None .* \[0, 1\]"):
            DirectPreferenceOptimization(policy, ld_alpha=bad)
    model = DirectPreferenceOptimization(policy, reference=lm(1), ld_alpha=0.5)
    ordered = tf.data.Dataset.from_tensor_slices(pairs(4)).batch(2)
    with pytest.raises(ValueError, match=r"`ld_alpha=0.25` differs from the objective's"):
        precompute_reference_log_probs(model, ordered, ld_alpha=0.25)
    with pytest.raises(ValueError, match="`ld_alpha` must be None"):
        precompute_reference_log_probs(lm(1), ordered, ld_alpha=2.0)
    x4 = pairs(4)
    rows = {f"{kl}{name}": x4[f"{side}_{name}"]
            for kl, side in (("", "chosen"), ("kl_", "rejected"))
            for name in ("token_ids", "padding_mask", "completion_mask")}
    rows["desirable"] = np.array([True, False, True, False])
    kto_rows = tf.data.Dataset.from_tensor_slices(rows).batch(2)
    with pytest.raises(ValueError, match="yields KTO rows, which have no pair"):
        precompute_reference_log_probs(lm(1), kto_rows, ld_alpha=0.5)
    sft = DirectPreferenceOptimization(policy, loss_type="sft", ld_alpha=0.5)
    x = pairs()
    y_pred = {k: v for k, v in sft(x).items() if k != "chosen_unweighted_logps"}
    with pytest.raises(ValueError, match="needs 'chosen_unweighted_logps'"):
        sft.compute_loss(x, y_pred=y_pred)


# -- Reference-free DPO (reference_free) -------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_reference_free_equals_dpo_loss_with_zero_reference_log_probs(loss_type):
    policy = lm(0)
    x = pairs()
    pc, nc = hand_logps(policy, x, "chosen")
    pr, nr = hand_logps(policy, x, "rejected")
    # Reference values in the batch are ignored: the reference's log-probabilities are 0.
    batch = with_reference(x, pc + 3.0, pr - 2.0)
    model = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5, chunk_size=3,
                                         reference_free=True)
    assert not model.needs_reference and model.reference is None
    out = model(batch)
    zeros = np.zeros(B, "float32")
    rc, rr = model.reference_log_probs(batch, out["chosen_logps"])
    np.testing.assert_array_equal(rc, zeros)
    np.testing.assert_array_equal(rr, zeros)
    model.compile(optimizer="sgd")
    loss = float(model.compute_loss(batch, y_pred=out))
    losses, chosen, rejected = dpo_loss(out["chosen_logps"], out["rejected_logps"], zeros, zeros,
                                        beta=0.5, loss_type=loss_type,
                                        chosen_lengths=out["chosen_lengths"],
                                        rejected_lengths=out["rejected_lengths"])
    np.testing.assert_allclose(loss, float(np.mean(losses)), rtol=1e-6)
    # By hand from the policy's logits (TRL's formulas with ref_logratios = 0).
    if loss_type == "sigmoid":
        expected = np.mean(np.logaddexp(0.0, -0.5 * (pc - pr)))
    else:  # TRL 1.x's ipo on per-token averages
        expected = np.mean((pc / nc - pr / nr - 1.0 / (2 * 0.5)) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # The rewards are beta * the policy's log-probabilities.
    np.testing.assert_allclose(chosen, 0.5 * out["chosen_logps"], rtol=1e-6)
    np.testing.assert_allclose(float(model.chosen_reward.result()), np.mean(0.5 * pc), rtol=1e-5)
    np.testing.assert_allclose(float(model.rejected_reward.result()), np.mean(0.5 * pr),
                               rtol=1e-5)
    np.testing.assert_allclose(float(model.reward_margin.result()), np.mean(0.5 * (pc - pr)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(model.reward_accuracy.result()), np.mean(pc > pr))
    # The same as a plain DPO fed zero reference values.
    plain = DirectPreferenceOptimization(policy, loss_type=loss_type, beta=0.5, chunk_size=3)
    zero_batch = with_reference(x, zeros, zeros)
    np.testing.assert_allclose(float(plain.compute_loss(zero_batch, y_pred=plain(zero_batch))),
                               loss, rtol=1e-6)


def test_reference_free_tiny_case_by_hand():
    # A policy of zero weights predicts every token with probability 1/V, so a
    # completion of n tokens has log-probability -n log V: with one chosen token and
    # two rejected ones, the reference-free sigmoid loss is -log sig(beta log V).
    policy = lm(0)
    policy.set_weights([np.zeros_like(w) for w in policy.get_weights()])
    x = {"chosen_token_ids": np.array([[3, 4, 7, 0, 0, 0, 0, 0]]),
         "rejected_token_ids": np.array([[3, 4, 8, 9, 0, 0, 0, 0]]),
         "chosen_padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0]], bool),
         "rejected_padding_mask": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], bool),
         "chosen_completion_mask": np.array([[0, 0, 1, 0, 0, 0, 0, 0]]),
         "rejected_completion_mask": np.array([[0, 0, 1, 1, 0, 0, 0, 0]])}
    model = DirectPreferenceOptimization(policy, beta=0.5, reference_free=True)
    out = model(x)
    np.testing.assert_allclose(out["chosen_logps"], [-np.log(V)], rtol=1e-6)
    np.testing.assert_allclose(out["rejected_logps"], [-2 * np.log(V)], rtol=1e-6)
    loss = float(model.compute_loss(x, y_pred=out))
    np.testing.assert_allclose(loss, np.log1p(V ** -0.5), rtol=1e-6)  # -log sig(0.5 log 30)
    np.testing.assert_allclose(float(model.chosen_reward.result()), -0.5 * np.log(V), rtol=1e-6)
    np.testing.assert_allclose(float(model.rejected_reward.result()), -np.log(V), rtol=1e-6)
    assert float(model.reward_accuracy.result()) == 1.0


def test_reference_free_under_xla():
    model = DirectPreferenceOptimization(lm(0), loss_type=["sigmoid", "sft"], beta=0.5,
                                         chunk_size=3, reference_free=True)
    assert_loss_and_gradients_match_under_xla(model, pairs())


def test_reference_free_errors_config_and_keras_round_trip(tmp_path):
    policy = lm(0)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=r"`reference_free` must be True .* or False"):
            DirectPreferenceOptimization(policy, reference_free=bad)
    with pytest.raises(ValueError, match=r"`reference_free=True` .* `reference` was passed.*"
                                         r"Drop `reference=`.*reference_free=False"):
        DirectPreferenceOptimization(policy, reference=lm(1), reference_free=True)
    assert DirectPreferenceOptimization(policy).get_config()["reference_free"] is False
    model = DirectPreferenceOptimization(lm(0), loss_type=["sigmoid", "sft"], chunk_size=3,
                                         reference_free=np.bool_(True))
    x = pairs()  # no reference values, none needed
    eager = float(model.compute_loss(x, y_pred=model(x)))
    config = model.get_config()
    assert config["reference_free"] is True and config["reference"] is None
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone.reference_free and clone.get_config() == config
    model.save(tmp_path / "free.keras")
    restored = keras.saving.load_model(tmp_path / "free.keras")
    assert restored.reference_free and not restored.needs_reference
    np.testing.assert_allclose(float(restored.compute_loss(x, y_pred=restored(x))), eager,
                               rtol=1e-6)
    # Nothing to precompute, by the objective or batch by batch.
    ordered = tf.data.Dataset.from_tensor_slices(pairs(4)).batch(2)
    with pytest.raises(ValueError, match="reference_free=True.*nothing to precompute"):
        precompute_reference_log_probs(model, ordered)
    with pytest.raises(ValueError, match="reference_free=True.*nothing to precompute"):
        precompute_frozen_outputs(model, "reference", ordered)
