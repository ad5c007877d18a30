import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.export import GENERATE
from kobjectives.export import Seq2SeqTextGenerator
from kobjectives.export.seq2seq import export_seq2seq_saved_model
from kobjectives.objectives import DenoisingSeq2Seq

V, S, T = 60, 10, 5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(V - 6)] + [
    "<extra_id_0>"]


def _model():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout=0.0)
    return DenoisingSeq2Seq(backbone)


def _data(n=3, seed=0):
    rng = np.random.default_rng(seed)
    encoder = rng.integers(5, V, (n, S)).astype("int32")
    encoder[:, 7:] = 0
    target = rng.integers(5, V, (n, T)).astype("int32")
    return {"encoder_token_ids": encoder, "encoder_padding_mask": encoder != 0,
            "target_ids": target, "target_padding_mask": np.ones_like(target)}


def test_export_serves_the_models_logits(tmp_path):
    model = _model()
    x = _data()
    expected = model(x).numpy()
    export_seq2seq_saved_model(model, tmp_path / "export")
    served = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    ids, mask = model.decoder_inputs(x)
    out = served(encoder_token_ids=tf.constant(x["encoder_token_ids"]),
                 encoder_padding_mask=tf.cast(x["encoder_padding_mask"], tf.int32),
                 decoder_token_ids=ids, decoder_padding_mask=mask)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    assert out["encoder_sequence_output"].shape == (3, S, 16)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_seq2seq_saved_model(model, tmp_path / "export")


def test_text_signature_tokenizes_reads_sentinels_and_ends_with_eos(tmp_path):
    model = _model()
    model(_data())
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=VOCAB, oov_token="[UNK]", special_tokens=["[PAD]", "[SEP]", "<extra_id_0>"],
        special_tokens_in_strings=True)
    export_seq2seq_saved_model(model, tmp_path / "export", tokenizer=tokenizer,
                               encoder_sequence_length=S, eos_token_id=3)
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert sorted(loaded.signatures) == ["serve_token_ids", "serving_default"]
    decoder = tf.constant([[0, 7, 8], [0, 9, 0]])
    out = loaded.signatures["serving_default"](
        text=tf.constant(["w1 <extra_id_0> w2", "w3"]), decoder_token_ids=decoder)
    sentinel = VOCAB.index("<extra_id_0>")
    w = {f"w{i}": VOCAB.index(f"w{i}") for i in range(1, 4)}
    np.testing.assert_array_equal(out["encoder_token_ids"][:, :4],
                                  [[w["w1"], sentinel, w["w2"], 3], [w["w3"], 3, 0, 0]])
    np.testing.assert_array_equal(out["encoder_padding_mask"].numpy().sum(axis=1), [4, 2])
    # Decoder padding after position 0 is masked, as the objective's own call.
    expected = model({"encoder_token_ids": out["encoder_token_ids"],
                      "encoder_padding_mask": out["encoder_padding_mask"],
                      "decoder_token_ids": decoder,
                      "decoder_padding_mask": tf.constant([[1, 1, 1], [1, 1, 0]])})
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)


def test_bad_objectives_and_lengths_fail_with_the_fix(tmp_path):
    with pytest.raises(TypeError, match="export_outputs"):
        export_seq2seq_saved_model(object(), tmp_path / "a")
    model = _model()
    model(_data())
    with pytest.raises(ValueError, match="encoder_sequence_length"):
        export_seq2seq_saved_model(model, tmp_path / "c", tokenizer=lambda t: t)
    with pytest.raises(TypeError, match="generator"):
        export_seq2seq_saved_model(model, tmp_path / "d", generator=lambda text: text)


def test_generate_signature_serves_the_in_process_generation(tmp_path):
    model = _model()
    model(_data())
    rng = np.random.default_rng(1)
    for variable in model.weights:  # wider than the initialization: varied tokens
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=VOCAB, oov_token="[UNK]", special_tokens=["[PAD]", "[SEP]", "<extra_id_0>"],
        special_tokens_in_strings=True)
    generator = Seq2SeqTextGenerator(model, tokenizer, encoder_sequence_length=S,
                                     target_length=T + 2, eos_token_id=3)
    # (No text signature beside it: the generator holds its own tokenizer.)
    export_seq2seq_saved_model(model, tmp_path / "export", generator=generator)
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    assert sorted(loaded.signatures) == [GENERATE, "serving_default"]
    text = tf.constant(["w1 <extra_id_0> w2", "w3", "w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14"])
    served = loaded.signatures[GENERATE](text=text)
    expected = generator(text)
    assert served["token_ids"].shape == (3, T + 2) and served["token_ids"].dtype == tf.int32
    np.testing.assert_array_equal(served["token_ids"], expected["token_ids"])
    assert served["text"].numpy().tolist() == expected["text"].numpy().tolist()
    assert len(set(served["token_ids"].numpy()[:, 1:].ravel().tolist())) > 1
