"""Sentence-embedding SavedModel export: raw strings in, embeddings out."""

import os

import keras
import tensorflow as tf

from kobjectives.export.saved_model import _archive
from kobjectives.export.saved_model import _check_export_dir
from kobjectives.export.saved_model import _check_vocabulary
from kobjectives.export.saved_model import _input_names
from kobjectives.export.saved_model import _resolve_sequence_length

EMBEDDINGS = "embeddings"


def export_embedding_model(
    encoder,
    export_dir,
    preprocessor=None,
    *,
    sequence_length=None,
    overwrite=False,
    compute_dtype="float32",
    verbose=False,
):
    """Exports a sentence encoder as a SavedModel: text in, embeddings out.

    The served embedding is `encoder.embed(inputs, training=False)`: the
    pooled backbone output *without* the training-time projection (as
    SimCSE evaluates and serves). Written with `keras.export.ExportArchive`,
    it loads with `tf.saved_model.load` and `import tensorflow_text` only.

    Signatures (`B` any batch size, `L` the sequence length, `H` the
    embedding size):

    - `serving_default` (with a preprocessor): `text` string `[B]` ->
      `embeddings` float32 `[B, H]`.
    - `serve_token_ids` (`serving_default` without a preprocessor):
      `token_ids`, `padding_mask` (and `segment_ids` where the backbone takes
      them) int32 `[B, L]` -> `embeddings`.

    The preprocessor's tokenizer is used as configured (special-token
    literals in the text are not interpreted), so served text tokenizes
    exactly as in training.

    Args:
        encoder: an object with `embed(inputs, training=False)`, e.g. a built
            `kobjectives.objectives.ContrastiveEncoder`.
        export_dir: directory to write.
        preprocessor: optional keras-hub preprocessor mapping strings to
            `{"token_ids", "padding_mask", "segment_ids"}` (e.g.
            `keras_hub.models.BertTextClassifierPreprocessor`).
        sequence_length: int; defaults to the preprocessor's, then the
            backbone's `max_sequence_length`.
        overwrite: replace a non-empty `export_dir`.
        compute_dtype: `"float32"` (default: serve in full precision even
            after mixed-precision training) or None.
        verbose: print the endpoints.

    Returns:
        The export directory, as a string.

    Example:

    ```python
    export_embedding_model(model, "embedder", preprocessor)
    # in a process with only tensorflow + tensorflow_text:
    loaded = tf.saved_model.load("embedder")
    vectors = loaded.signatures["serving_default"](text=tf.constant(["a b"]))["embeddings"]
    ```
    """
    if not callable(getattr(encoder, "embed", None)):
        raise TypeError(
            "export_embedding_model needs an encoder with `embed(inputs, "
            "training=False)` (token ids -> pooled embeddings), such as "
            f"kobjectives.objectives.ContrastiveEncoder. Received: {type(encoder).__name__}"
        )
    if isinstance(encoder, keras.layers.Layer) and not encoder.built:
        raise ValueError(f"The {type(encoder).__name__} is not built; fit it or call it first.")
    export_dir = os.fspath(export_dir)
    _check_export_dir(export_dir, overwrite)
    if preprocessor is not None and not callable(preprocessor):
        raise TypeError(f"`preprocessor` must be callable. Received: {type(preprocessor).__name__}")
    if compute_dtype not in (None, "float32"):
        raise ValueError(f"`compute_dtype` must be 'float32' or None. Received: {compute_dtype!r}")
    length = _resolve_sequence_length(encoder, preprocessor, sequence_length)
    _check_vocabulary(encoder, preprocessor)
    input_names = _input_names(encoder)
    token_specs = {name: tf.TensorSpec([None, length], tf.int32, name=name) for name in input_names}

    def forward(inputs):
        inputs = {name: tf.cast(value, tf.int32) for name, value in inputs.items()}
        embeddings = encoder.embed(inputs, training=False)
        return {EMBEDDINGS: tf.cast(embeddings, tf.float32)}

    def serve_text(text):
        features = preprocessor(text)
        inputs = {name: features[name] for name in input_names if name in features}
        missing = sorted(set(input_names) - set(inputs) - {"segment_ids"})
        if missing:
            raise ValueError(
                f"The preprocessor does not provide the backbone inputs {missing}. "
                f"It returned: {sorted(features)}"
            )
        return forward(inputs)

    _archive(
        encoder, export_dir, preprocessor, serve_text, forward, token_specs,
        compute_dtype, verbose=verbose,
    )
    return export_dir
