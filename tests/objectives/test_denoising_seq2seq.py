import dataclasses
import functools

import numpy as np
import pytest
import keras
import keras_hub
import tensorflow as tf

from kobjectives.data.seq2seq import SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import PACKED_SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import Seq2SeqExamples
from kobjectives.data.seq2seq_sft import pack_seq2seq_examples
from kobjectives.objectives import DenoisingSeq2Seq
from kobjectives.objectives.denoising_seq2seq import BACKBONE_INPUTS
from kobjectives.objectives.denoising_seq2seq import run_seq2seq_with_attention_masks
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import fit
from tests.harness import one_device_fixture
from tests.harness import tiny_backbone

V, S, T, B = 200, 12, 7, 8

t5 = functools.partial(tiny_backbone, "t5", V, None, hidden_dim=16)
bart = functools.partial(tiny_backbone, "bart", V, 16, hidden_dim=16)


def make_data(n=2 * B, seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(5, V, (n, S)).astype("int32")
    tgt = rng.integers(5, V, (n, T)).astype("int32")
    enc_len = rng.integers(3, S + 1, n)
    tgt_len = rng.integers(1, T + 1, n)
    for i in range(n):
        enc[i, enc_len[i]:] = 0
        tgt[i, tgt_len[i]:] = 0
    x = {"encoder_token_ids": enc, "encoder_padding_mask": enc != 0,
         "target_ids": tgt, "target_padding_mask": tgt != 0}
    return x, tgt, (tgt != 0).astype("float32")


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_teacher_forcing_shifts_targets_right_after_the_start_token():
    model = DenoisingSeq2Seq(t5(), decoder_start_token_id=1)
    x, _, _ = make_data(n=4)
    ids, mask = model.decoder_inputs(x)
    np.testing.assert_array_equal(ids[:, 0], 1)
    np.testing.assert_array_equal(ids[:, 1:], x["target_ids"][:, :-1])
    np.testing.assert_array_equal(mask[:, 0], 1)
    np.testing.assert_array_equal(mask[:, 1:], x["target_padding_mask"][:, :-1])
    logits = model(x)
    assert logits.shape == (4, T, V) and logits.dtype == tf.float32
    given = {"encoder_token_ids": x["encoder_token_ids"], "encoder_padding_mask": x["encoder_padding_mask"],
             "decoder_token_ids": ids, "decoder_padding_mask": mask}
    np.testing.assert_allclose(model(given), logits, atol=1e-6)


def test_logits_at_a_position_do_not_see_that_target_or_later_ones():
    model = DenoisingSeq2Seq(t5())
    x, _, _ = make_data(n=2)
    x["target_padding_mask"] = np.ones_like(x["target_padding_mask"])
    logits = model(x).numpy()
    changed = dict(x, target_ids=x["target_ids"].copy())
    changed["target_ids"][:, 3:] = 7
    after = model(changed).numpy()
    np.testing.assert_allclose(after[:, :4], logits[:, :4], atol=1e-5)  # positions 0..3 see targets < 3
    assert np.abs(after[:, 4:] - logits[:, 4:]).max() > 1e-4


@pytest.mark.parametrize("kind,task", [
    ("t5", keras_hub.models.T5Seq2SeqLM), ("bart", keras_hub.models.BartSeq2SeqLM)],
    ids=["t5", "bart"])
def test_logits_equal_keras_hub_seq2seq_lm(kind, task):
    backbone = {"t5": t5, "bart": bart}[kind]()
    model = DenoisingSeq2Seq(backbone)
    reference = task(backbone=backbone)
    x, _, _ = make_data(n=4)
    ids, mask = model.decoder_inputs(x)
    expected = reference({"encoder_token_ids": tf.constant(x["encoder_token_ids"]),
                          "encoder_padding_mask": tf.cast(x["encoder_padding_mask"], "int32"),
                          "decoder_token_ids": ids, "decoder_padding_mask": mask})
    np.testing.assert_allclose(model(x), expected, atol=1e-4)
    scale = 16 ** -0.5 if kind == "t5" else 1.0
    assert model.logit_scale == pytest.approx(scale)


def test_loss_is_the_mean_cross_entropy_over_real_target_tokens():
    model = DenoisingSeq2Seq(t5())
    model.compile()
    x, y, w = make_data(n=B)
    logits = model(x).numpy()
    loss = model.compute_loss(x=x, y=y, y_pred=tf.constant(logits), sample_weight=w)
    nll = -np.take_along_axis(log_softmax(logits.astype("float64")), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(), rtol=1e-5)
    result = model.evaluate(x, y, sample_weight=w, batch_size=B, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["perplexity"], np.exp((nll * w).sum() / w.sum()), rtol=1e-4)
    accuracy = ((logits.argmax(-1) == y) * w).sum() / w.sum()
    np.testing.assert_allclose(result["token_accuracy"], accuracy, atol=1e-6)


X, Y, W = make_data()
CASE = ObjectiveCase(
    build=lambda: DenoisingSeq2Seq(t5()),
    data=dict(x=X, y=Y, sample_weight=W, batch_size=B), metrics=("token_accuracy",),
    optimizer=lambda: keras.optimizers.SGD(0.5), seed=3)

one_device = one_device_fixture(CASE)


def test_jit_compile_matches_graph(one_device):
    assert_jit_matches_eager(CASE, atol=0, one_device=one_device)


def test_mirrored_strategy_matches_one_device(mirrored_strategy, one_device):
    # The replicas hold different numbers of real target tokens: only the
    # global weighted mean gives one device's loss and updates.
    assert_mirrored_matches_one_device(CASE, mirrored_strategy, one_device=one_device)


@pytest.mark.slow
def test_mixed_bfloat16_trains_with_float32_logits_and_loss():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = DenoisingSeq2Seq(t5())
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y, w = make_data()
    assert model.run(x)["decoder_sequence_output"].dtype == tf.bfloat16
    assert model(x).dtype == tf.float32
    history = model.fit(x, y, sample_weight=w, batch_size=B, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    # The bf16 model's float32 loss is close to the float32 evaluation of the same weights.
    loss = model.evaluate(x, y, sample_weight=w, batch_size=B, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    full = DenoisingSeq2Seq(t5())
    full.set_weights(model.get_weights())
    full.compile()
    np.testing.assert_allclose(full.evaluate(x, y, sample_weight=w, batch_size=B, verbose=0), loss, rtol=0.02)
    assert model.backbone.token_embedding.embeddings.dtype == "float32"


@pytest.mark.slow
def test_bart_backbone_trains():
    _, history = fit(dataclasses.replace(CASE, build=lambda: DenoisingSeq2Seq(bart())), epochs=3)
    assert history["loss"][-1] < history["loss"][0]


def test_keras_round_trip_continues_training_with_its_optimizer_state(tmp_path):
    case = dataclasses.replace(
        CASE, build=lambda: DenoisingSeq2Seq(t5(), decoder_start_token_id=2),
        optimizer=lambda: keras.optimizers.Adam(1e-2))
    restored = assert_keras_round_trip_continues(case, tmp_path / "m.keras")
    assert isinstance(restored, DenoisingSeq2Seq) and restored.decoder_start_token_id == 2


def test_bad_backbones_and_inputs_fail_with_the_fix():
    with pytest.raises(ValueError, match="encoder-decoder"):
        DenoisingSeq2Seq(tiny_backbone("bert", V, S, hidden_dim=16))
    with pytest.raises(TypeError, match="backbone"):
        DenoisingSeq2Seq("t5")
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        DenoisingSeq2Seq(t5(), decoder_start_token_id=V)
    with pytest.raises(ValueError, match="logit_scale"):
        DenoisingSeq2Seq(t5(), logit_scale=0.0)
    model = DenoisingSeq2Seq(t5())
    x, _, _ = make_data(n=2)
    with pytest.raises(ValueError, match="target_ids"):
        model({k: x[k] for k in ("encoder_token_ids", "encoder_padding_mask")})
    with pytest.raises(ValueError, match="encoder_padding_mask"):
        model({"encoder_token_ids": x["encoder_token_ids"], "target_ids": x["target_ids"]})


# -- packed rows: several examples per row, each computed as if alone -----------


def _short_examples(n=7, seed=5):
    """`Seq2SeqExamples` of short pairs (inputs of 1-5 ids in rows of S,
    targets of 1-3 ids in rows of T), so that 2-3 pack into a row."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(5, V, (n, S)).astype("int32")
    tgt = rng.integers(5, V, (n, T)).astype("int32")
    enc_len, tgt_len = rng.integers(1, 6, n), rng.integers(1, 4, n)
    enc_mask = (np.arange(S) < enc_len[:, None]).astype("int32")
    tgt_mask = (np.arange(T) < tgt_len[:, None]).astype("int32")
    weights = tgt_mask.astype("float32")
    weights[::3, 0] = 0.0  # an unscored forced first token (BART's layout)
    return Seq2SeqExamples(
        encoder_token_ids=enc * enc_mask, encoder_padding_mask=enc_mask,
        target_ids=tgt * tgt_mask, target_padding_mask=tgt_mask, target_weights=weights,
        input_lengths=enc_len, target_lengths=tgt_len, input_capacity=S - 1,
        target_capacity=T - 1)


def _per_example(rows, bins, values):
    """`{example index: values at its target positions}` of packed rows."""
    out = {}
    for row, members in enumerate(bins):
        for segment, index in enumerate(members, 1):
            out[index] = values[row][rows["decoder_segment_ids"][row] == segment]
    return out


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_packed_row_gives_each_example_the_logits_it_has_alone(kind):
    model = DenoisingSeq2Seq({"t5": t5, "bart": bart}[kind](), decoder_start_token_id=2)
    examples = _short_examples()
    rows, bins = pack_seq2seq_examples(examples)
    assert max(len(b) for b in bins) >= 3 and len(bins) < len(examples)
    alone = model(examples.x()).numpy()
    packed = model({key: rows[key] for key in PACKED_SEQ2SEQ_INPUTS}).numpy()
    compiled = tf.function(model.call, jit_compile=True)(
        {key: tf.constant(rows[key]) for key in PACKED_SEQ2SEQ_INPUTS}).numpy()
    for logits in (packed, compiled):
        per_example = _per_example(rows, bins, logits)
        assert sorted(per_example) == list(range(len(examples)))
        for index, values in per_example.items():
            length = int(examples.target_padding_mask[index].sum())
            np.testing.assert_allclose(values, alone[index, :length], atol=1e-5)
    # So the per-token losses, and the loss over the target tokens, are the same.
    y_alone, w_alone = examples.target_ids, examples.target_weights
    nll_alone = -np.take_along_axis(log_softmax(alone.astype("float64")), y_alone[..., None], -1)
    nll_packed = -np.take_along_axis(
        log_softmax(packed.astype("float64")), rows["target_ids"][..., None], -1)
    for index, values in _per_example(rows, bins, nll_packed[..., 0]).items():
        length = int(examples.target_padding_mask[index].sum())
        np.testing.assert_allclose(values, nll_alone[index, :length, 0], atol=1e-5)
    model.compile()
    loss_alone = model.compute_loss(x=examples.x(), y=y_alone, y_pred=tf.constant(alone),
                                    sample_weight=w_alone)
    loss_packed = model.compute_loss(x=rows, y=rows["target_ids"], y_pred=tf.constant(packed),
                                     sample_weight=rows["target_weights"])
    np.testing.assert_allclose(float(loss_packed), float(loss_alone), rtol=1e-5)


def test_packed_training_under_xla_equals_unpacked_training():
    """One SGD step on the packed rows (compiled with XLA) makes the update
    of one step on the same examples one per row: the same loss, the same
    target tokens, the same gradients."""
    examples = _short_examples()
    rows, _ = pack_seq2seq_examples(examples)

    def step(x, y, w, jit_compile):
        keras.utils.set_random_seed(3)
        model = DenoisingSeq2Seq(t5())
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=jit_compile)
        history = model.fit(x, y, sample_weight=w, batch_size=len(y), epochs=1, shuffle=False,
                            verbose=0).history
        return model, history

    alone, alone_history = step(examples.x(), examples.target_ids, examples.target_weights,
                                False)
    packed, packed_history = step({key: rows[key] for key in PACKED_SEQ2SEQ_INPUTS},
                                  rows["target_ids"], rows["target_weights"], True)
    np.testing.assert_allclose(packed_history["loss"], alone_history["loss"], rtol=1e-5)
    np.testing.assert_allclose(packed_history["perplexity"], alone_history["perplexity"],
                               rtol=1e-5)
    for a, b in zip(alone.get_weights(), packed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_packed_rows_fail_clearly_on_an_unsupported_backbone_or_half_the_ids():
    inner = t5()
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in BACKBONE_INPUTS}
    custom = keras.Model(inputs, inner(inputs))
    custom.token_embedding = inner.token_embedding
    model = DenoisingSeq2Seq(custom)
    assert "only keras-hub's T5Backbone and BartBackbone" in model.packing_problem
    rows, _ = pack_seq2seq_examples(_short_examples())
    unpacked = {key: rows[key] for key in SEQ2SEQ_INPUTS}
    assert model(unpacked).shape == (len(rows["target_ids"]), T, V)  # one example per row works
    with pytest.raises(ValueError, match="cannot be run on Functional.*T5Backbone or BartBackbone"):
        model(rows)
    with pytest.raises(ValueError, match=r"need both.*\['decoder_segment_ids'\] is missing"):
        DenoisingSeq2Seq(t5())(dict(unpacked, encoder_segment_ids=rows["encoder_segment_ids"]))
    with pytest.raises(ValueError, match="Cannot pass attention masks to Functional"):
        run_seq2seq_with_attention_masks(custom, *[None] * 5)


def test_a_rewiring_that_differs_from_the_backbone_call_is_refused(monkeypatch):
    from kobjectives.objectives import denoising_seq2seq

    original = denoising_seq2seq.run_seq2seq_with_attention_masks

    def off_by_a_bit(*args, **kwargs):
        out = original(*args, **kwargs)
        return dict(out, decoder_sequence_output=out["decoder_sequence_output"] * 1.01)

    monkeypatch.setattr(denoising_seq2seq, "run_seq2seq_with_attention_masks", off_by_a_bit)
    model = DenoisingSeq2Seq(t5())
    assert "does not reproduce its own call" in model.packing_problem
    rows, _ = pack_seq2seq_examples(_short_examples())
    with pytest.raises(ValueError, match="does not reproduce its own call"):
        model(rows)
