import dataclasses

import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives import ops
from kobjectives.layers import MaskedLMMasker
from kobjectives.objectives import ElectraPretrainer
from kobjectives.objectives import ReplacedTokenDetectionHead
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, P, B, E = 120, 12, 3, 8, 16
MASK = 4


def electra(hidden, heads=1, embedding_dim=E):
    return tiny_backbone("electra", V, L, hidden, num_heads=heads, embedding_dim=embedding_dim)


def pretrainer(**kwargs):
    kwargs.setdefault("seed", 3)
    return ElectraPretrainer(electra(8), electra(16, 2), **kwargs)


def make_data(n=4 * B, seed=0, high=V):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, high, (n, L)).astype("int32")
    # A learnable signal: every token repeats its left neighbour.
    ids[:, 1::2] = ids[:, 0::2]
    ids[:, 0] = 1
    for i, end in enumerate(rng.integers(L // 2, L, n)):
        ids[i, end:] = 0
    masker = MaskedLMMasker(
        vocabulary_size=V, mask_selection_rate=0.25, mask_token_id=MASK,
        mask_selection_length=P, unselectable_token_ids=(0, 1, 2, 3, MASK),
        mask_token_rate=0.85, random_token_rate=0.0, seed=seed)
    x = {k: np.asarray(v) for k, v in masker(ids, seed=tf.constant([seed, 0])).items()}
    x["segment_ids"] = np.zeros_like(ids)
    return x


def test_token_embedding_table_is_one_variable():
    generator, discriminator = electra(8), electra(16, 2)
    model = ElectraPretrainer(generator, discriminator, seed=0)
    shared = discriminator.token_embedding.embeddings
    assert generator.token_embedding.embeddings is shared
    assert model.generator_mlm.head.token_embedding is generator.token_embedding
    assert sum(v is shared for v in model.trainable_variables) == 1
    # The table is the only variable the two backbones have in common.
    common = {id(v) for v in generator.weights} & {id(v) for v in discriminator.weights}
    assert common == {id(shared)}
    assert model.count_params() == sum(int(np.prod(v.shape)) for v in model.weights)


def test_outputs_and_labels_follow_electra_semantics():
    model = pretrainer()
    x = make_data(n=B)
    out = model(x)
    assert out["mlm_logits"].shape == (B, P, V) and out["rtd_logits"].shape == (B, L)
    assert out["mlm_logits"].dtype == tf.float32 and out["rtd_logits"].dtype == tf.float32
    corrupted, labels, sampled = (out[k].numpy() for k in ("corrupted_ids", "rtd_labels", "sampled_ids"))
    original = x["token_ids"].copy()
    np.put_along_axis(original, x["mask_positions"], x["mask_ids"], 1)  # unused slots: position 0 holds [CLS]=1
    original[:, 0] = 1
    masked = np.zeros_like(original, bool)
    for i in range(B):
        for j in range(P):
            if x["mask_weights"][i, j] > 0:
                masked[i, x["mask_positions"][i, j]] = True
                assert corrupted[i, x["mask_positions"][i, j]] == sampled[i, j]
    np.testing.assert_array_equal(corrupted[~masked], original[~masked])
    np.testing.assert_array_equal(labels, (masked & (corrupted != original)).astype("float32"))
    # Calls draw new samples (a step counter keys the noise).
    assert int(model.sampling_step.numpy()) == 1
    model(x)
    assert int(model.sampling_step.numpy()) == 2


def test_loss_is_weighted_sum_of_mlm_and_rtd():
    model = pretrainer(generator_weight=2.0, discriminator_weight=7.0)
    model.compile()
    x = make_data(n=B)
    out = model(x)
    loss = model.compute_loss(x=x, y_pred=out)
    logits = out["rtd_logits"].numpy().astype(np.float64)
    labels = out["rtd_labels"].numpy()
    p = 1 / (1 + np.exp(-logits))
    per_token = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    w = x["padding_mask"].astype("float64")
    rtd = (per_token * w).sum() / w.sum()
    mlm = float(ops.masked_lm_loss(x["mask_ids"], out["mlm_logits"], x["mask_weights"]))
    np.testing.assert_allclose(float(loss), 2.0 * mlm + 7.0 * rtd, rtol=1e-5)
    # Named losses: each tracked unweighted as `NAME_loss`, the total their
    # weighted sum, with the very ops the objective used before.
    assert model.loss_names == ("generator", "discriminator")
    assert model.loss_weights == {"generator": 2.0, "discriminator": 7.0}
    logs = model.get_metrics_result()
    np.testing.assert_allclose(logs["generator_loss"], mlm, rtol=1e-6)
    np.testing.assert_allclose(logs["discriminator_loss"], rtd, rtol=1e-5)
    reference = 2.0 * ops.masked_lm_loss(x["mask_ids"], out["mlm_logits"], x["mask_weights"]) \
        + 7.0 * ops.rtd_loss(out["rtd_labels"], out["rtd_logits"], x["padding_mask"])
    assert float(loss) == float(reference)


def test_config_holds_the_weights_once_and_round_trips():
    model = pretrainer(generator_weight=2.0, discriminator_weight=7.0, temperature=0.5)
    config = model.get_config()
    assert "loss_weights" not in config
    assert (config["generator_weight"], config["discriminator_weight"]) == (2.0, 7.0)
    clone = ElectraPretrainer.from_config(config)
    assert clone.loss_weights == {"generator": 2.0, "discriminator": 7.0}
    assert clone.temperature == 0.5 and clone.seed == model.seed
    with pytest.raises(ValueError, match="discriminator_weight"):
        ElectraPretrainer(electra(8), electra(16, 2), loss_weights={"generator": 1.0})


def test_both_losses_train_the_shared_embedding():
    model = pretrainer()
    x = make_data(n=B)
    table = model.discriminator.token_embedding.embeddings
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)
        mlm = ops.masked_lm_loss(x["mask_ids"], out["mlm_logits"], x["mask_weights"])
        rtd = ops.rtd_loss(out["rtd_labels"], out["rtd_logits"], x["padding_mask"])
    g_mlm = tf.convert_to_tensor(tape.gradient(mlm, table))
    g_rtd = tf.convert_to_tensor(tape.gradient(rtd, table))
    assert float(tf.norm(g_mlm)) > 0 and float(tf.norm(g_rtd)) > 0
    # The RTD loss does not reach the generator (stop-gradient sampling),
    # except through the shared table.
    generator_only = [v for v in model.generator.trainable_variables if v is not table]
    assert all(g is None for g in tape.gradient(rtd, generator_only))

    before = table.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(x, batch_size=B, epochs=1, verbose=0)
    assert model.generator.token_embedding.embeddings is model.discriminator.token_embedding.embeddings
    assert not np.allclose(before, table.numpy())


CASE = ObjectiveCase(
    build=lambda: pretrainer(discriminator_weight=10.0),
    data=dict(x=make_data(), batch_size=B),
    metrics=("rtd_accuracy", "generator_accuracy", "replaced_recall", "generator_loss",
             "discriminator_loss"),
    optimizer=lambda: keras.optimizers.SGD(0.3), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_mode(one_device):
    assert_jit_matches_eager(CASE, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


@pytest.mark.slow
def test_mixed_bfloat16_trains_with_float32_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = pretrainer()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = make_data(n=2 * B)
    assert model.encode(x).dtype == tf.bfloat16
    out = model(x)
    assert out["mlm_logits"].dtype == tf.float32 and out["rtd_logits"].dtype == tf.float32
    history = model.fit(x, batch_size=B, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert model.discriminator.token_embedding.embeddings.dtype == "float32"


@pytest.mark.slow  # the harness' round trip of the other objectives runs by default
def test_keras_round_trip_continues_with_optimizer_state(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: pretrainer(temperature=0.8, disallow_correct=True),
        optimizer=lambda: keras.optimizers.Adam(1e-2))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras", atol=1e-5)
    assert isinstance(restored, ElectraPretrainer)
    # The weights the round trip compares hold the step that keys the noise.
    assert any(v is restored.sampling_step for v in restored.weights)
    assert restored.get_config()["temperature"] == 0.8 and restored.disallow_correct
    assert (restored.generator.token_embedding.embeddings
            is restored.discriminator.token_embedding.embeddings)


def test_detector_exports_only_the_discriminator(tmp_path):
    from kobjectives.export import export_saved_model

    model = pretrainer()
    # The discriminator is what pretraining produces (a run's preset) and serves.
    assert getattr(model, model.exported_model) is model.discriminator
    assert model.serving_model().backbone is model.discriminator
    x = make_data(n=2)
    detector = model.detector()
    outputs = detector({k: x[k] for k in ("token_ids", "padding_mask", "segment_ids")})
    np.testing.assert_allclose(
        outputs["replaced_probability"].numpy(),
        tf.sigmoid(outputs["rtd_logits"]).numpy(), rtol=1e-6)
    export_saved_model(model, tmp_path / "sm")  # serves model.serving_model()
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = loaded.signatures["serving_default"](
        token_ids=tf.constant(x["token_ids"]),
        padding_mask=tf.cast(x["padding_mask"], tf.int32),
        segment_ids=tf.constant(x["segment_ids"]))
    np.testing.assert_allclose(served["rtd_logits"].numpy(), outputs["rtd_logits"].numpy(), atol=1e-5)
    exported = sum(int(np.prod(v.shape)) for v in loaded.variables)
    assert exported == model.discriminator.count_params() + model.rtd_head.count_params()


def test_bad_input_fails_loudly():
    with pytest.raises(TypeError, match="generator"):
        ElectraPretrainer("electra", electra(16, 2))
    d = electra(16, 2)
    with pytest.raises(ValueError, match="two backbones"):
        ElectraPretrainer(d, d)
    with pytest.raises(ValueError, match="embedding_dim"):
        ElectraPretrainer(electra(8, embedding_dim=8), electra(16, 2))
    with pytest.raises(ValueError, match="discriminator_weight"):
        ElectraPretrainer(electra(8), electra(16, 2), discriminator_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        ElectraPretrainer(electra(8), electra(16, 2), temperature=0.0)
    model = pretrainer()
    x = make_data(n=2)
    with pytest.raises(ValueError, match="mask_ids"):
        model({k: v for k, v in x.items() if k != "mask_ids"})
    with pytest.raises(ValueError, match="own loss"):
        model.compile(loss="mse")


def test_head_config_round_trip():
    head = ReplacedTokenDetectionHead(hidden_dim=8, activation="relu")
    clone = ReplacedTokenDetectionHead.from_config(head.get_config())
    assert clone.hidden_dim == 8 and clone.activation == "relu"
    assert head(np.zeros((2, 5, 4), "float32")).shape == (2, 5)
    with pytest.raises(ValueError, match="hidden_dim"):
        ReplacedTokenDetectionHead(hidden_dim=0)


def _auc(logits, labels):
    """ROC AUC (ties count half), independent of the run module's."""
    pos, neg = logits[labels], logits[~labels]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + 0.5 * ties


def test_discriminator_learns_trivially_detectable_replacements():
    # Wiring check behind the default run's weak discriminator: the text uses
    # ids 5..29 only and, with a huge temperature, the generator's samples are
    # ~uniform over all 120 ids, so most replacements are ids the text never
    # holds. If the discriminator really sees `corrupted_ids`, its labels match
    # them and the RTD gradient reaches its weights through the optimizer
    # (clipnorm 1.0, weight decay, weight 50), it must learn to spot them
    # within ~100 steps, on held-out text.
    keras.utils.set_random_seed(11)
    model = pretrainer(temperature=1e3, discriminator_weight=50.0)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.01, clipnorm=1.0))
    model.fit(make_data(n=8 * B, high=30), batch_size=B, epochs=12, verbose=0)
    x = make_data(n=8 * B, seed=1, high=30)
    out = model(x)
    real = x["padding_mask"].astype(bool)
    logits = out["rtd_logits"].numpy()[real]
    labels = out["rtd_labels"].numpy()[real] > 0.5
    assert 0.05 < labels.mean() < 0.5
    assert _auc(logits, labels) > 0.85
    accuracy = ((logits > 0) == labels).mean()
    assert accuracy > 1.0 - labels.mean() + 0.1  # clearly beats "all original"
