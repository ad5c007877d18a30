"""`TokenClassifier`: softmax and CRF tagging losses against NumPy, the label
mask, learning, XLA, strategies, saving and errors."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.objectives import TokenClassifier
from kobjectives.ops import crf_decode
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, H, B, TAGS = 50, 8, 16, 8, 4

bert = functools.partial(tiny_backbone, "bert", V, L, hidden_dim=H)


def tag_of(ids):
    """The synthetic task: a token's tag is a function of its id."""
    return (ids // 3) % TAGS


def make_data(n=4 * B, seed=0):
    """Padded rows of words split into pieces; only first pieces are labelled
    (non-contiguous label masks); other pieces carry junk tags."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, L)).astype("int32")
    lengths = rng.integers(3, L + 1, n)
    padding = np.arange(L) < lengths[:, None]
    ids[~padding] = 0
    first_piece = (rng.random((n, L)) < 0.6) | (np.arange(L) == 0)
    label_mask = first_piece & padding
    tags = np.where(label_mask, tag_of(ids), rng.choice([-100, 99, 1], (n, L))).astype("int32")
    x = {"token_ids": ids, "padding_mask": padding, "label_mask": label_mask}
    return x, tags


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def logsumexp(z, axis=-1):
    top = z.max(axis, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis, keepdims=True))).squeeze(axis)


def numpy_crf_nll(scores, tags, mask, transitions, start, end):
    """The forward algorithm on each row's labelled positions only."""
    out = []
    for s, t, m in zip(scores.astype("float64"), tags, mask):
        s, t = s[m], t[m]
        if not len(t):
            out.append(0.0)
            continue
        alpha = start + s[0]
        for k in range(1, len(t)):
            alpha = logsumexp(alpha[:, None] + transitions, axis=0) + s[k]
        gold = (start[t[0]] + s[np.arange(len(t)), t].sum()
                + transitions[t[:-1], t[1:]].sum() + end[t[-1]])
        out.append(logsumexp(alpha + end) - gold)
    return np.array(out)


def randomize_crf(model, seed=1):
    rng = np.random.default_rng(seed)
    for variable in (model.transitions, model.start_transitions, model.end_transitions):
        variable.assign(rng.normal(size=variable.shape).astype("float32"))


def test_softmax_loss_is_the_weighted_mean_over_labelled_tokens():
    model = TokenClassifier(bert(), num_tags=TAGS, dropout=0.0)
    model.compile()
    x, y = make_data(n=B)
    weights = np.random.default_rng(3).uniform(0.5, 2.0, (B, L)).astype("float32")
    weights[0, :3] = 0.0
    scores = model(x)
    assert scores.shape == (B, L, TAGS) and scores.dtype == tf.float32
    w = x["label_mask"] * weights
    safe = np.where(w > 0, y, 0)
    ce = -np.take_along_axis(log_softmax(scores.numpy()), safe[..., None], -1)[..., 0]
    want = (ce * w).sum() / w.sum()
    result = model.evaluate(x, y, sample_weight=weights, batch_size=B, verbose=0,
                            return_dict=True)
    np.testing.assert_allclose(result["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(float(model.compute_loss(x, y, scores, weights)), want, rtol=1e-5)
    correct = scores.numpy().argmax(-1) == safe
    np.testing.assert_allclose(result["tag_accuracy"], (correct * w).sum() / w.sum(), rtol=1e-6)
    # predict: the tag scores.
    np.testing.assert_allclose(model.predict(x, verbose=0), scores, atol=1e-6)


def test_crf_loss_is_the_mean_negative_log_likelihood_per_example():
    model = TokenClassifier(bert(), num_tags=TAGS, use_crf=True, dropout=0.0)
    model.compile()
    randomize_crf(model)
    x, y = make_data(n=B, seed=1)
    x["label_mask"][2] = False  # no labelled token: not an example of the mean
    scores = model(x)
    nll = numpy_crf_nll(scores.numpy(), y, x["label_mask"], *(
        v.numpy().astype("float64") for v in
        (model.transitions, model.start_transitions, model.end_transitions)))
    want = nll[x["label_mask"].any(1)].mean()
    np.testing.assert_allclose(float(model.compute_loss(x, y, scores)), want, rtol=1e-5)
    # Per-example weights: the weighted mean of the examples' NLL.
    example = np.arange(1, B + 1, dtype="float32")
    counted = x["label_mask"].any(1)
    np.testing.assert_allclose(
        float(model.compute_loss(x, y, scores, example)),
        (nll * example)[counted].sum() / example[counted].sum(), rtol=1e-5)
    # predict and tag_accuracy: the Viterbi path over the label mask.
    tags, _ = crf_decode(scores, model.transitions, x["label_mask"],
                         model.start_transitions, model.end_transitions)
    predicted = model.predict_step((x,)).numpy()
    assert predicted.dtype == np.int32 and predicted.shape == (B, L)
    np.testing.assert_array_equal(predicted, tags)
    np.testing.assert_array_equal(predicted[~x["label_mask"]], 0)
    result = model.compute_metrics(x, y, scores)
    correct = (predicted == y)[x["label_mask"]]
    np.testing.assert_allclose(result["tag_accuracy"], correct.mean(), rtol=1e-6)
    # The serving outputs decode over every real token.
    outputs = model.export_outputs({k: x[k] for k in ("token_ids", "padding_mask")})
    np.testing.assert_allclose(outputs["tag_scores"], scores, atol=1e-6)
    everywhere, _ = crf_decode(scores, model.transitions, x["padding_mask"],
                               model.start_transitions, model.end_transitions)
    np.testing.assert_array_equal(outputs["tag_ids"], everywhere)


@pytest.mark.parametrize("use_crf", [False, True])
def test_label_mask_is_honoured(use_crf):
    model = TokenClassifier(bert(), num_tags=TAGS, use_crf=use_crf, dropout=0.0)
    if use_crf:
        randomize_crf(model)
    x, y = make_data(n=B, seed=2)
    other = y.copy()
    other[~x["label_mask"]] = (other[~x["label_mask"]] + 1) % TAGS  # valid but wrong tags
    junk = np.where(x["label_mask"], y, -100)

    def loss_and_gradients(tags, inputs=x):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(inputs, tags, model(inputs))
        gradients = tape.gradient(loss, model.trainable_variables)
        return [loss] + [tf.convert_to_tensor(g) for g in gradients if g is not None]

    reference = loss_and_gradients(y)
    for tags in (other, junk):
        for a, b in zip(loss_and_gradients(tags), reference):
            np.testing.assert_allclose(a, b, atol=1e-6)
    # Without a label mask every real token counts.
    unmasked = {k: x[k] for k in ("token_ids", "padding_mask")}
    loss = float(loss_and_gradients(other, unmasked)[0])
    if use_crf:
        assert abs(loss - float(reference[0])) > 1e-3
    else:
        # The mean cross-entropy over every real token, by hand.
        logits = tf.convert_to_tensor(model(unmasked)).numpy().astype("float64")
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(log_probs, other[..., None], -1)[..., 0]
        real = x["padding_mask"].astype(bool)
        np.testing.assert_allclose(loss, -picked[real].mean(), rtol=1e-5)


X, Y = make_data()
CASE = ObjectiveCase(
    build=lambda: TokenClassifier(bert(), num_tags=TAGS, use_crf=True, dropout=0.0),
    data=dict(x=X, y=Y, batch_size=B), metrics=("tag_accuracy",),
    optimizer=lambda: keras.optimizers.Adam(2e-2), seed=7)

one_device = one_device_fixture(CASE)


def test_learns_a_synthetic_tagging_task(one_device):
    model, history = one_device
    test_x, test_y = make_data(n=32, seed=5)
    predicted = model.predict(test_x, verbose=0)  # Viterbi tag ids
    accuracy = (predicted == test_y)[test_x["label_mask"]].mean()
    assert accuracy > 0.9, (accuracy, history)
    assert history["tag_accuracy"][-1] > 0.9 and history["loss"][-1] < history["loss"][0], history


def test_crf_jit_compile_matches_graph_and_learns(one_device):
    model = assert_jit_matches_eager(CASE, rtol=1e-4, atol=1e-5, one_device=one_device)[0]
    assert np.abs(model.transitions.numpy()).max() > 0  # the transitions trained


def test_crf_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


@pytest.mark.slow  # three fits and a save (~30 s on 2 busy cores); config round trip below
def test_keras_round_trip_continues_training(tmp_path):
    restored = assert_keras_round_trip_continues(CASE, tmp_path / "m.keras")
    assert isinstance(restored, TokenClassifier) and restored.use_crf
    assert restored.num_tags == TAGS and restored.dropout == 0.0
    np.testing.assert_array_equal(restored.predict(X, verbose=0).shape, (len(Y), L))


def test_config_round_trips():
    model = TokenClassifier(bert(), num_tags=5, use_crf=True, dropout=0.2)
    config = model.get_config()
    assert {k: config[k] for k in ("num_tags", "use_crf", "dropout", "hidden_dim")} == {
        "num_tags": 5, "use_crf": True, "dropout": 0.2, "hidden_dim": H}
    clone = TokenClassifier.from_config(config)
    assert clone.transitions.shape == (5, 5) and clone.start_transitions.shape == (5,)
    assert len(clone.get_weights()) == len(model.get_weights())
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, TokenClassifier) and restored.get_config()["use_crf"]


def test_bad_arguments_are_named():
    for num_tags in (0, 1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="num_tags"):
            TokenClassifier(bert(), num_tags=num_tags)
    with pytest.raises(ValueError, match="dropout"):
        TokenClassifier(bert(), num_tags=3, dropout=1.0)
    with pytest.raises(TypeError, match="backbone"):
        TokenClassifier("bert", num_tags=3)
    model = TokenClassifier(bert(), num_tags=TAGS)
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="sparse_categorical_crossentropy")
    x, y = make_data(n=2)
    with pytest.raises(ValueError, match="`y` must hold one tag id per token"):
        model.compute_loss(x, y[:, :3], model(x))
    with pytest.raises(ValueError, match="label_mask"):
        model.compute_loss({**x, "label_mask": x["label_mask"][:, :3]}, y, model(x))
    with pytest.raises(ValueError, match="token_ids"):
        model({"padding_mask": x["padding_mask"]})


@pytest.mark.parametrize("use_crf", [False, True])
def test_out_of_range_tags_fail_or_give_nan(use_crf):
    model = TokenClassifier(bert(), num_tags=TAGS, use_crf=use_crf, dropout=0.0)
    model.compile()
    x, y = make_data(n=B, seed=6)
    bad = y.copy()
    bad[3, 0] = TAGS  # position 0 is labelled
    scores = model(x)
    with pytest.raises(ValueError, match=r"`y` must be integer ids in \[0, 4\)"):
        model.compute_loss(x, bad, scores)
    # A traced step fails its assert.
    traced = tf.function(lambda tags: model.compute_loss(x, tags, scores))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be integer ids"):
        traced(tf.constant(bad))
    # Under XLA (no asserts) the loss is NaN, not a finite wrong value.
    jitted = tf.function(lambda tags: model.compute_loss(x, tags, scores), jit_compile=True)
    assert np.isfinite(float(jitted(tf.constant(y))))
    for value in (TAGS, -1):
        bad[3, 0] = value
        assert np.isnan(float(jitted(tf.constant(bad))))


def test_mixed_bfloat16_scores_and_losses_are_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = TokenClassifier(bert(), num_tags=TAGS, use_crf=True, dropout=0.0)
    x, y = make_data(n=B, seed=7)
    assert model.encode(x).dtype == tf.bfloat16
    scores = model(x)
    assert scores.dtype == tf.float32 and model.transitions.dtype == "float32"
    loss = model.compute_loss(x, y, scores)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    assert model.predict_step((x,)).dtype == tf.int32
