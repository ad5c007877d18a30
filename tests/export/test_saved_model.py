import io
import json
import os
import random
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from kobjectives.export import export_saved_model
from kobjectives.objectives import MaskedLanguageModel

L = 16
RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the quick brown fox jumps over lazy dog a cat sat on mat and then ran to "
    "see big small red blue green tree house river stone bird fish song light "
    "dark night day sun moon star wind rain snow road city king queen old new"
).split()
VOCAB = RESERVED + WORDS + [".", ",", "##s", "##ed"]
V = len(VOCAB)
TEXTS = [
    "The quick [MASK] fox jumps over the lazy dog.",
    "",
    "a cat sat on the mat , then the dog sat on the mat and the bird sang "
    "over the river in the night and the day",  # longer than L: truncated
    "Birds and xylophones",  # suffix pieces and an unknown word
    "[MASK] [MASK] moon",
]

# Runs in a fresh interpreter: only tensorflow (and tensorflow_text's ops).
# argv: export_dir, inputs.npz, outputs.npz, facts.json, mode.
LOADER = textwrap.dedent(
    """
    import json, sys
    export_dir, inputs_path, outputs_path, facts_path, mode = sys.argv[1:]
    BLOCKED = ("keras", "keras_hub", "tf_keras", "kobjectives")
    facts = {}
    if mode == "no_keras":
        # Make Keras & co. unimportable, and register tf-text's kernels
        # without importing the tensorflow_text package (which needs Keras).
        import glob, importlib.util, os
        text_dir = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
        for name in BLOCKED + ("tensorflow_text",):
            sys.modules[name] = None
        import tensorflow as tf
        for library in sorted(glob.glob(os.path.join(text_dir, "python", "ops", "_*.so"))):
            tf.load_op_library(library)
    else:
        import tensorflow as tf
        facts["keras_imported_by_tensorflow"] = "keras" in sys.modules
        import tensorflow_text  # noqa: F401  (registers the tf-text ops)
    before = set(sys.modules)
    import numpy as np

    model = tf.saved_model.load(export_dir)
    inputs = np.load(inputs_path)
    text = model.signatures["serving_default"](text=tf.constant(inputs["text"]))
    ids = model.signatures["serve_token_ids"](
        token_ids=tf.constant(inputs["token_ids"]),
        padding_mask=tf.constant(inputs["padding_mask"]),
        segment_ids=tf.zeros_like(inputs["token_ids"]))
    # Feeding serving_default's token ids back must give the same outputs.
    again = model.signatures["serve_token_ids"](
        token_ids=text["token_ids"], padding_mask=text["padding_mask"],
        segment_ids=tf.zeros_like(text["token_ids"]))
    outputs = {"text/" + k: v.numpy() for k, v in text.items()}
    outputs.update({"ids/" + k: v.numpy() for k, v in ids.items()})
    outputs.update({"again/" + k: v.numpy() for k, v in again.items()})
    np.savez(outputs_path, **outputs)

    new = set(sys.modules) - before
    facts["new_keras_modules"] = sorted(
        m for m in new if m.split(".")[0] in BLOCKED)
    for name in ("keras", "keras_hub", "kobjectives"):
        facts[name + "_loaded"] = sys.modules.get(name) is not None
    facts["signatures"] = {
        key: {
            "inputs": {n: [s.dtype.name, s.shape.as_list()]
                       for n, s in fn.structured_input_signature[1].items()},
            "outputs": {n: [s.dtype.name, s.shape.as_list()]
                        for n, s in fn.structured_outputs.items()},
        }
        for key, fn in model.signatures.items()
    }
    if mode == "no_keras":
        assert all(sys.modules.get(n) is None for n in BLOCKED), facts
    else:
        assert "keras_hub" not in sys.modules and "kobjectives" not in sys.modules
    with open(facts_path, "w") as f:
        json.dump(facts, f)
    """
)


def bert(**kwargs):
    config = dict(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=32,
                  intermediate_dim=64, max_sequence_length=L, dropout=0.0)
    config.update(kwargs)
    return keras_hub.models.BertBackbone(**config)


def preprocessor(**kwargs):
    # The project's convention (training pipeline and CLI).
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True, **kwargs)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer=tokenizer, sequence_length=L)


def all_positions(batch_size):
    return tf.tile(tf.range(L)[None], [batch_size, 1])


def token_inputs(batch_size=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (batch_size, L)).astype("int32")
    for i, end in enumerate(rng.integers(3, L, batch_size)):
        ids[i, end:] = 0
    return ids, (ids != 0).astype("int32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One float32 model exported with its preprocessor, loaded in two fresh
    processes (with tensorflow_text; with Keras unimportable)."""
    keras.utils.set_random_seed(3)
    model = MaskedLanguageModel(bert(dtype="float32"))
    pre = preprocessor()
    root = tmp_path_factory.mktemp("export")
    export_dir = export_saved_model(model, root / "mlm", pre)
    ids, mask = token_inputs()
    np.savez(root / "inputs.npz", text=np.array(TEXTS, dtype=object).astype(bytes),
             token_ids=ids, padding_mask=mask)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    runs = {}
    for mode in ("tensorflow_text", "no_keras"):
        paths = [str(root / f"{mode}.npz"), str(root / f"{mode}.json")]
        runs[mode] = (paths, subprocess.Popen(
            [sys.executable, "-c", LOADER, export_dir, str(root / "inputs.npz"), *paths, mode],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for mode, ((npz, facts), process) in runs.items():
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, log[-4000:]
        with open(facts) as f:
            results[mode] = (dict(np.load(npz)), json.load(f))
    return model, pre, ids, mask, results


@pytest.mark.parametrize("mode", ["tensorflow_text", "no_keras"])
def test_clean_process_matches_in_memory_model(exported, mode):
    model, pre, ids, mask, results = exported
    outputs, facts = results[mode]
    # Reference: the in-memory model on the same tokenization, computed
    # eagerly (keras-hub's Python tokenizer path, not the traced tf-text one).
    x = preprocessor(special_tokens_in_strings=True)(tf.constant(TEXTS))
    np.testing.assert_array_equal(outputs["text/token_ids"], x["token_ids"])
    np.testing.assert_array_equal(outputs["text/padding_mask"], tf.cast(x["padding_mask"], "int32"))
    hidden = model.encode(x)
    logits = model.head(hidden, mask_positions=all_positions(len(TEXTS)))
    np.testing.assert_allclose(outputs["text/sequence_output"], hidden, atol=1e-5)
    np.testing.assert_allclose(outputs["text/mlm_logits"], logits, atol=1e-5)
    for key in ("sequence_output", "mlm_logits"):
        np.testing.assert_allclose(outputs["again/" + key], outputs["text/" + key], atol=1e-5)

    hidden = model.encode({"token_ids": ids, "padding_mask": mask})
    logits = model.head(hidden, mask_positions=all_positions(len(ids)))
    np.testing.assert_allclose(outputs["ids/sequence_output"], hidden, atol=1e-5)
    np.testing.assert_allclose(outputs["ids/mlm_logits"], logits, atol=1e-5)

    # Nothing of Keras, keras-hub or kobjectives is loaded by the artifact.
    assert facts["new_keras_modules"] == []
    assert not facts["keras_hub_loaded"] and not facts["kobjectives_loaded"]
    if mode == "no_keras":
        assert not facts["keras_loaded"]
    else:
        # TensorFlow 2.21 itself imports `keras.src.optimizers` at import
        # time when Keras is installed; the artifact does not need it.
        assert facts["keras_imported_by_tensorflow"]


def test_fill_mask_and_special_tokens(exported):
    _, pre, _, _, results = exported
    outputs, _ = results["tensorflow_text"]
    token_ids = outputs["text/token_ids"]
    assert token_ids[0].tolist()[:4] == [2, VOCAB.index("the"), VOCAB.index("quick"), 4]
    assert token_ids[1].tolist()[:3] == [2, 3, 0]  # empty string: [CLS] [SEP]
    assert token_ids[2, -1] == 3 and outputs["text/padding_mask"][2].all()  # truncated
    assert token_ids[4].tolist()[:4] == [2, 4, 4, VOCAB.index("moon")]
    predicted = outputs["text/mlm_logits"][0, 3].argmax()  # fill-mask
    assert 0 <= predicted < V
    # The user's tokenizer is left as it was configured.
    assert pre.tokenizer.special_tokens_in_strings is False


def test_signatures(exported):
    _, _, _, _, results = exported
    signatures = results["tensorflow_text"][1]["signatures"]
    H = 32
    model_outputs = {"sequence_output": ["float32", [None, L, H]],
                     "mlm_logits": ["float32", [None, L, V]]}
    assert signatures["serving_default"] == {
        "inputs": {"text": ["string", [None]]},
        "outputs": {**model_outputs, "token_ids": ["int32", [None, L]],
                    "padding_mask": ["int32", [None, L]]},
    }
    assert signatures["serve_token_ids"] == {
        "inputs": {n: ["int32", [None, L]] for n in ("token_ids", "padding_mask", "segment_ids")},
        "outputs": model_outputs,
    }


def test_sentencepiece_albert_with_tokenizer_resource(tmp_path):
    # tf-text's SentencePiece tokenizer holds a resource, which must be
    # tracked to be saved (WordPiece's model is a constant in the graph).
    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(documents), model_writer=proto, vocab_size=60,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2,
        user_defined_symbols=["[MASK]", "[CLS]", "[SEP]"])
    tokenizer = keras_hub.models.AlbertTokenizer(proto=proto.getvalue())
    pre = keras_hub.models.AlbertTextClassifierPreprocessor(tokenizer=tokenizer, sequence_length=L)
    model = MaskedLanguageModel(keras_hub.models.AlbertBackbone(
        vocabulary_size=60, num_layers=1, num_heads=2, embedding_dim=16, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=L))
    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "albert", pre))
    texts = ["the quick [MASK] fox", "", "a cat sat on the mat"]
    out = loaded.signatures["serving_default"](text=tf.constant(texts))
    x = pre(tf.constant(texts))
    np.testing.assert_array_equal(out["token_ids"], x["token_ids"])
    assert 4 in out["token_ids"][0].numpy()  # [MASK] is one user-defined piece
    hidden = model.encode(x)
    np.testing.assert_allclose(out["sequence_output"], hidden, atol=1e-5)
    np.testing.assert_allclose(
        out["mlm_logits"], model.head(hidden, mask_positions=all_positions(3)), atol=1e-5)
    assert set(loaded.signatures["serve_token_ids"].structured_input_signature[1]) == {
        "token_ids", "padding_mask", "segment_ids"}


def test_mixed_bfloat16_exports_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(5)
    model = MaskedLanguageModel(bert())
    reference = MaskedLanguageModel(bert(dtype="float32"))
    reference.set_weights(model.get_weights())
    ids, mask = token_inputs(batch_size=4)
    x = {"token_ids": ids, "padding_mask": mask}

    # Default: float32 compute, as the float32 model with the same weights.
    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "f32"))
    assert set(loaded.signatures) == {"serving_default"}
    out = loaded.signatures["serving_default"](
        token_ids=tf.constant(ids), padding_mask=tf.constant(mask), segment_ids=tf.zeros_like(ids))
    assert out["sequence_output"].dtype == tf.float32 and out["mlm_logits"].dtype == tf.float32
    hidden = reference.encode(x)
    np.testing.assert_allclose(out["sequence_output"], hidden, atol=1e-5)
    np.testing.assert_allclose(
        out["mlm_logits"], reference.head(hidden, mask_positions=all_positions(4)), atol=1e-5)
    # The model's own policies are restored.
    assert model.encode(x).dtype == tf.bfloat16

    # compute_dtype=None: the model's bfloat16 compute, float32 outputs.
    loaded = tf.saved_model.load(export_saved_model(model, tmp_path / "bf16", compute_dtype=None))
    out = loaded.signatures["serving_default"](
        token_ids=tf.constant(ids), padding_mask=tf.constant(mask), segment_ids=tf.zeros_like(ids))
    assert out["mlm_logits"].dtype == tf.float32
    hidden = model.encode(x)
    np.testing.assert_allclose(out["sequence_output"], tf.cast(hidden, "float32"), atol=1e-5)
    np.testing.assert_allclose(
        out["mlm_logits"], model.head(hidden, mask_positions=all_positions(4)), atol=1e-5)


def test_objective_without_export_outputs_is_rejected(tmp_path):
    with pytest.raises(TypeError, match=r"export_outputs"):
        export_saved_model(keras.layers.Dense(3), tmp_path / "a")

    class EncoderOnly:
        def encode(self, inputs):
            return inputs

    with pytest.raises(TypeError, match=r"EncoderOnly has none"):
        export_saved_model(EncoderOnly(), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_lengths_vocabulary_and_unbuilt_models(tmp_path):
    model = MaskedLanguageModel(bert())
    with pytest.raises(ValueError, match="max_sequence_length=16"):
        export_saved_model(model, tmp_path / "m", sequence_length=32)
    with pytest.raises(ValueError, match="differs from the preprocessor"):
        export_saved_model(model, tmp_path / "m", preprocessor(), sequence_length=8)
    small = MaskedLanguageModel(bert(vocabulary_size=V - 1))
    with pytest.raises(ValueError, match="vocabulary_size"):
        export_saved_model(small, tmp_path / "m", preprocessor())

    class Encoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(V, 8)

        def call(self, inputs):
            return self.embed(inputs["token_ids"])

    unbuilt = MaskedLanguageModel(Encoder(), vocabulary_size=V, hidden_dim=8)
    with pytest.raises(ValueError, match="not built"):
        export_saved_model(unbuilt, tmp_path / "m", sequence_length=L)


def test_existing_export_dir(tmp_path):
    model = MaskedLanguageModel(bert())
    target = tmp_path / "mlm"
    target.mkdir()
    (target / "old.txt").write_text("previous export")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_saved_model(model, target)
    assert (target / "old.txt").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a directory"):
        export_saved_model(model, tmp_path / "file", overwrite=True)

    export_saved_model(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mlm"]  # no staging left
    assert not (target / "old.txt").exists()
    assert (target / "saved_model.pb").exists()
