import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.export import export_saved_model
from kobjectives.objectives import CPCAccuracy
from kobjectives.objectives import ContrastivePredictiveCoding
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, L, K, B = 60, 12, 3, 8

gpt2 = functools.partial(tiny_backbone, "gpt2", V, L, hidden_dim=16)


def make_data(n=4 * B, seed=0):
    """Token ids with a learnable next-token rule, right-padded."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, L), "int32")
    ids[:, 0] = rng.integers(5, V, n)
    for t in range(1, L):
        ids[:, t] = (ids[:, t - 1] * 7 + 3) % (V - 5) + 5
    mask = np.ones((n, L), bool)
    for i, end in enumerate(rng.integers(L // 2, L + 1, n)):
        mask[i, end:] = False
    ids[~mask] = 0
    return {"token_ids": ids, "padding_mask": mask}


def test_outputs_and_loss_are_the_op_on_the_outputs():
    model = ContrastivePredictiveCoding(gpt2(), max_offset=K)
    model.compile()
    x = make_data(n=B)
    out = model(x)
    assert out["context"].shape == (B, L, 16)
    assert out["encoded"].shape == (B, L, 16)
    assert out["predictions"].shape == (B, L, K, 16)
    # z_t is the backbone's token embedding of token t.
    np.testing.assert_allclose(
        out["encoded"], model.backbone.token_embedding(x["token_ids"]), atol=1e-6)
    loss = model.compute_loss(x=x, y_pred=out)
    expected = ops.cpc_loss(out["predictions"], out["encoded"], x["padding_mask"],
                            x["token_ids"], temperature=0.1, similarity="cosine")
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)


def test_future_tokens_do_not_leak_into_the_context():
    model = ContrastivePredictiveCoding(gpt2(num_layers=2), max_offset=K)
    x = make_data(n=4)
    t = 5
    changed = {k: v.copy() for k, v in x.items()}
    changed["token_ids"][:, t + 1:] = (changed["token_ids"][:, t + 1:] + 11) % V
    a, b = model(x), model(changed)
    np.testing.assert_array_equal(a["context"][:, :t + 1], b["context"][:, :t + 1])
    np.testing.assert_array_equal(a["predictions"][:, :t + 1], b["predictions"][:, :t + 1])
    np.testing.assert_array_equal(a["encoded"][:, :t + 1], b["encoded"][:, :t + 1])
    assert not np.allclose(a["context"][:, t + 1:], b["context"][:, t + 1:])


CASE = ObjectiveCase(
    build=lambda: ContrastivePredictiveCoding(gpt2(), max_offset=K),
    data=dict(x=make_data(), batch_size=B), metrics=("cpc_accuracy",),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=7)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph_mode_and_learns(one_device):
    assert_jit_matches_eager(CASE, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    # Negatives span the replicas, and uneven padding makes per-replica pair
    # counts differ: only global negatives and a global mean give one
    # device's loss and updates.
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


def test_mixed_bfloat16_computes_the_loss_in_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = ContrastivePredictiveCoding(gpt2(), max_offset=K)
    model.compile()
    x = make_data(n=B)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = model.compute_loss(x=x, y_pred=out)
    assert out["predictions"].dtype == tf.bfloat16
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)


def test_keras_round_trip(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: ContrastivePredictiveCoding(
            gpt2(), max_offset=2, similarity="dot", temperature=0.5, exclude_same_token=False),
        optimizer=lambda: keras.optimizers.Adam(2e-3))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    assert isinstance(restored, ContrastivePredictiveCoding)
    config = restored.get_config()
    assert (config["max_offset"], config["similarity"], config["temperature"],
            config["exclude_same_token"]) == (2, "dot", 0.5, False)
    # Re-compiled from the saved compile config, with the built-in loss.
    assert isinstance(restored.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(restored.optimizer.learning_rate), 2e-3, rtol=1e-6)


LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tf-text ops)
    export_dir, inputs_path, outputs_path = sys.argv[1:]
    model = tf.saved_model.load(export_dir)
    inputs = np.load(inputs_path)
    text = model.signatures["serving_default"](text=tf.constant(inputs["text"]))
    ids = model.signatures["serve_token_ids"](
        token_ids=tf.constant(inputs["token_ids"]),
        padding_mask=tf.constant(inputs["padding_mask"]))
    outputs = {"text/" + k: v.numpy() for k, v in text.items()}
    outputs.update({"ids/" + k: v.numpy() for k, v in ids.items()})
    np.savez(outputs_path, **outputs)
    print(sorted(sys.modules.keys() & {"keras", "keras_hub", "kobjectives"}))
    """
)


# About 35 s; fresh-process serving is tested in the default suite by
# tests/export (mlm, embeddings) and the clm, sft and tag runs.
@pytest.mark.slow
def test_export_serves_context_in_a_fresh_process(tmp_path):
    words = "the quick brown fox jumps over a lazy dog and cat sat on mat".split()
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=L)
    model = ContrastivePredictiveCoding(gpt2(), max_offset=K)
    export_dir = tmp_path / "saved_model"
    export_saved_model(model, export_dir, preprocessor=preprocessor,
                       special_tokens_in_strings=False)

    texts = np.array(["the quick brown fox", "a lazy dog sat on the mat and the cat", ""])
    features = preprocessor(tf.constant(texts))
    x = make_data(n=3, seed=1)
    np.savez(tmp_path / "inputs.npz", text=texts, token_ids=x["token_ids"],
             padding_mask=x["padding_mask"].astype("int32"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(export_dir), str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "outputs.npz")

    expected_text = model.export_outputs(
        {"token_ids": features["token_ids"], "padding_mask": features["padding_mask"]})
    expected_ids = model.export_outputs(x)
    for key in ("context", "encoded"):
        np.testing.assert_allclose(out["text/" + key], expected_text[key], atol=1e-5)
        np.testing.assert_allclose(out["ids/" + key], expected_ids[key], atol=1e-5)
    np.testing.assert_array_equal(out["text/token_ids"], features["token_ids"])
    assert out["text/context"].shape == (3, L, 16)
    assert out["text/context"].dtype == np.float32


def test_accuracy_metric_averages_offsets():
    metric = CPCAccuracy(max_offset=2)
    metric.update_state(np.array([[[1, 0], [0, 0]]], "float32"),
                        np.array([[[1, 1], [1, 0]]], "float32"))
    np.testing.assert_allclose(float(metric.result()), 0.25)
    np.testing.assert_allclose(metric.per_offset(), [0.5, 0.0])
    assert CPCAccuracy.from_config(metric.get_config()).max_offset == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_offset": 0}, "max_offset"),
        ({"max_offset": L}, "max_sequence_length"),
        ({"max_offset": 2.5}, "max_offset"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"similarity": "l1"}, "similarity"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastivePredictiveCoding(gpt2(), **kwargs)


def test_bad_backbones_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="not causal"):
        ContrastivePredictiveCoding(tiny_backbone("bert", V, L, hidden_dim=16))
    with pytest.raises(TypeError, match="backbone"):
        ContrastivePredictiveCoding("gpt2")
    model = ContrastivePredictiveCoding(gpt2(), max_offset=K)
    x = make_data(n=2)
    with pytest.raises(ValueError, match="too short"):
        model({k: v[:, :K] for k, v in x.items()})
    with pytest.raises(ValueError, match="padding_mask"):
        model({"token_ids": x["token_ids"]})
    with pytest.raises(ValueError, match="own loss"):
        model.compile(loss="mse")
