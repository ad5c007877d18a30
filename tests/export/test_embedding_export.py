import os
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.export import export_saved_model
from kobjectives.objectives import ContrastiveEncoder

L = 12
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the quick brown fox jumps over lazy dog a cat sat on mat and then ran"
).split() + [".", "##s"]
TEXTS = ["The quick brown fox.", "", "a cat sat on the mat and then the dog ran over the mat", "cats"]

# A fresh interpreter importing only tensorflow and tensorflow_text.
LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    export_dir, out = sys.argv[1:]
    texts = [line.rstrip("\\n") for line in sys.stdin]
    loaded = tf.saved_model.load(export_dir)
    result = loaded.signatures["serving_default"](text=tf.constant(texts))
    single = loaded.signatures["serving_default"](text=tf.constant(texts[:1]))
    blocked = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "keras_hub", "kobjectives"))
    np.savez(out, embeddings=result["embeddings"].numpy(), single=single["embeddings"].numpy(),
             keras_modules=np.array(len(blocked)))
    """
)


def _model_and_preprocessor():
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=L)
    model = ContrastiveEncoder(backbone, pooling="mean")
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer=tokenizer, sequence_length=L)
    return model, pre


def test_fresh_process_matches_in_memory_model(tmp_path):
    model, pre = _model_and_preprocessor()
    export_dir = export_saved_model(model, tmp_path / "embedder", pre, special_tokens_in_strings=False)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = tmp_path / "out.npz"
    process = subprocess.run(
        [sys.executable, "-c", LOADER, export_dir, str(out)], input="\n".join(TEXTS) + "\n",
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-4000:]
    result = np.load(out)
    features = pre(tf.constant(TEXTS))
    expected = model.embed(features).numpy()  # no projection
    assert result["embeddings"].shape == (len(TEXTS), 16)
    np.testing.assert_allclose(result["embeddings"], expected, atol=1e-5)
    np.testing.assert_allclose(result["single"], expected[:1], atol=1e-5)  # any batch size
    # The projection is not served.
    assert not np.allclose(model.project(expected), expected, atol=1e-3)


def test_token_id_signature_and_errors(tmp_path):
    model, pre = _model_and_preprocessor()
    export_dir = export_saved_model(model, tmp_path / "ids", sequence_length=L)
    loaded = tf.saved_model.load(export_dir)
    features = pre(tf.constant(TEXTS))
    inputs = {k: tf.cast(features[k], tf.int32) for k in ("token_ids", "padding_mask", "segment_ids")}
    out = loaded.signatures["serving_default"](**inputs)["embeddings"]
    np.testing.assert_allclose(out, model.embed(features), atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(model, export_dir, sequence_length=L)
    with pytest.raises(TypeError, match="export_outputs"):
        export_saved_model(object(), tmp_path / "x")
