"""Inference SavedModel export, with a raw-string serving signature.

`export_saved_model` writes a TensorFlow SavedModel through Keras'
`keras.export.ExportArchive`: only the traced forward pass and the variables
are saved, so the artifact loads with `tf.saved_model.load` and no Keras,
keras-hub or kobjectives code. When a keras-hub preprocessor is attached,
tokenization and packing (tf-text ops) run inside the serving graph, so a
client sends raw strings.

Signatures (`L` the fixed sequence length, `H` the hidden size, `V` the
vocabulary size; every batch size `B` is accepted):

- `serving_default`, with a preprocessor: `text` string `[B]` -> the
  objective's `export_outputs` (float32, e.g. a masked LM's
  `sequence_output` `[B, L, H]` and `mlm_logits` `[B, L, V]`), plus the
  `token_ids` and `padding_mask` int32 `[B, L]` the text became.
- `serve_token_ids` (`serving_default` without a preprocessor):
  `token_ids`, `padding_mask` (and `segment_ids` where the backbone takes
  them) int32 `[B, L]` -> the `export_outputs`.
- `generate` (with a `generator`, `kobjectives.export.TextGenerator`):
  `text` string `[B]` (raw prompts) -> the generated `text` string `[B]`
  and `token_ids` int32 `[B, L]`.

**The interface export needs of an objective** (all of it; export imports
nothing from `kobjectives.objectives`):

- `serving_model()` (optional): the layer to serve, e.g. ELECTRA's
  discriminator without its generator; the object itself without it. Only
  that layer's variables are written.
- `export_outputs(inputs)` on the served layer (required): a dict of int32
  `[batch, length]` tensors (`token_ids`, `padding_mask`, and the backbone's
  other inputs) -> a dict of named `[batch, ...]` tensors.
- `backbone` on the served layer (optional, a `keras.Model`): its input
  names are the token-id signature's inputs (default `token_ids` and
  `padding_mask`), its `max_sequence_length` bounds the sequence length,
  and its `vocabulary_size` (or the layer's own) is checked against the
  preprocessor's tokenizer.

See `docs/export.md`.
"""

import contextlib
import os

import keras
import tensorflow as tf

from kobjectives import compat
from kobjectives.backbones import backbone_input_names

SERVING_DEFAULT = "serving_default"
"""Signature key of the default endpoint (raw text when a preprocessor is
attached, token ids otherwise)."""

GENERATE = "generate"
"""Signature key of the generation endpoint of an exported SavedModel."""

SERVE_TOKEN_IDS = "serve_token_ids"
"""Signature key of the token-id endpoint."""

_TEXT_INPUT = "text"


def export_saved_model(
    objective,
    export_dir,
    preprocessor=None,
    *,
    sequence_length=None,
    overwrite=False,
    compute_dtype="float32",
    special_tokens_in_strings=True,
    generator=None,
    verbose=False,
):
    """Exports an objective as an inference SavedModel.

    The objective provides the interface described in this module's
    docstring: `export_outputs(inputs)` (a masked LM's per-position
    `sequence_output` and `mlm_logits`, so a client writes `[MASK]` in its
    text and reads the prediction there; a sentence encoder's `embeddings`;
    ...), optionally `serving_model()` and `backbone`.

    Where it has a `backbone`, the backbone's input names decide the
    token-id signature's inputs (`token_ids`, `padding_mask`, plus
    `segment_ids` for BERT-style backbones); otherwise `token_ids` and
    `padding_mask`.

    Loading needs only TensorFlow, plus `import tensorflow_text` (which
    registers the tokenizer's ops) for the raw-text signature:

    ```python
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tf-text ops)

    model = tf.saved_model.load(export_dir)
    out = model.signatures["serving_default"](text=tf.constant(["a [MASK] b"]))
    ```

    Args:
        objective: the trained objective (built: fitted or called once).
        export_dir: str or path-like. Directory to write the SavedModel to.
        preprocessor: optional keras-hub preprocessor mapping a batch of
            strings to `{"token_ids", "padding_mask", "segment_ids"}` (e.g.
            `keras_hub.models.BertTextClassifierPreprocessor`). When given,
            `serving_default` takes raw text.
        sequence_length: int. The fixed length of the token-id inputs.
            Defaults to `preprocessor.sequence_length`, then to the backbone's
            `max_sequence_length`.
        overwrite: bool. Replace an existing, non-empty `export_dir`.
            Defaults to False (a non-empty `export_dir` is an error).
        compute_dtype: `"float32"` (default) runs the exported forward pass
            in float32 even if the objective was trained under a mixed
            precision policy (its variables are float32 already); `None`
            keeps the objective's own policy (e.g. bfloat16 compute).
            Outputs are float32 either way.
        special_tokens_in_strings: bool. Serve with a tokenizer that maps
            its special tokens written literally in the text (`[MASK]`,
            `[CLS]`, `[SEP]`, `[PAD]`) to their ids, so fill-mask works from
            raw text. Text without such literals tokenizes exactly as in
            training. Defaults to True; False keeps the preprocessor's
            tokenizer as configured.
        generator: optional `kobjectives.export.TextGenerator` of this
            objective: the SavedModel gets a `generate` signature, `text`
            string `[B]` (raw prompts) -> generated `text` string `[B]` and
            `token_ids` int32 `[B, L]`.
        verbose: bool. Print the endpoints once written.

    Returns:
        The export directory, as a string.

    Raises:
        TypeError: the objective has no `export_outputs`, or the
            preprocessor is not callable.
        ValueError: the objective is not built, or the sequence length is
            unknown or too long for the backbone, or the preprocessor's
            vocabulary does not fit the model.
        FileExistsError: `export_dir` is non-empty and `overwrite` is False.
    """
    serving_model = getattr(objective, "serving_model", None)
    objective = serving_model() if callable(serving_model) else objective
    check_objective(objective)
    export_dir = os.fspath(export_dir)
    _check_export_dir(export_dir, overwrite)
    if preprocessor is not None and not callable(preprocessor):
        raise TypeError(
            "`preprocessor` must be a keras-hub preprocessor (a callable "
            "mapping a batch of strings to token ids). Received: "
            f"{type(preprocessor).__name__}"
        )
    if compute_dtype not in (None, "float32"):
        raise ValueError(
            "`compute_dtype` must be 'float32' or None (the objective's own "
            f"policy). Received: compute_dtype={compute_dtype!r}"
        )
    length = _resolve_sequence_length(objective, preprocessor, sequence_length)
    _check_vocabulary(objective, preprocessor)
    input_names = _input_names(objective)

    token_specs = {
        name: tf.TensorSpec([None, length], tf.int32, name=name)
        for name in input_names
    }

    def serve_token_ids(inputs):
        return _forward(objective, inputs, length)

    def serve_text(text):
        features = preprocessor(text)
        if not isinstance(features, dict) or "token_ids" not in features:
            raise ValueError(
                "The preprocessor must return a dict with 'token_ids' and "
                "'padding_mask' for a batch of strings. Received: "
                f"{features!r}"
            )
        inputs = {name: features[name] for name in input_names if name in features}
        missing = sorted(set(input_names) - set(inputs) - {"segment_ids"})
        if missing:
            raise ValueError(
                f"The preprocessor does not provide the backbone inputs "
                f"{missing}. It returned: {sorted(features)}"
            )
        outputs = _forward(objective, inputs, length)
        outputs["token_ids"] = tf.cast(inputs["token_ids"], tf.int32)
        outputs["padding_mask"] = tf.cast(inputs["padding_mask"], tf.int32)
        return outputs

    scopes = []
    if preprocessor is not None and special_tokens_in_strings:
        scopes.append(_special_tokens_in_strings(preprocessor))
    endpoints = {}
    if generator is not None:
        _check_generator(generator, "kobjectives.export.TextGenerator")
        endpoints[GENERATE] = generator
    _archive(
        objective, export_dir, preprocessor, serve_text, serve_token_ids,
        token_specs, compute_dtype, scopes, verbose, endpoints,
    )
    return export_dir


def _archive(model, export_dir, preprocessor, serve_text, serve_token_ids,
             token_specs, compute_dtype, scopes=(), verbose=False, text_endpoints=None):
    """Traces the serving endpoints and writes the SavedModel.

    `serving_default` takes raw strings when there is a `preprocessor`
    (`serve_token_ids` is then the second endpoint), else token ids;
    `text_endpoints` (name -> a callable `tf.Module` of a string `[B]`
    tensor, tracked for its resources) are added beside them. The endpoints trace while writing, inside `compute_dtype`
    and `scopes`.
    """
    is_keras = isinstance(model, keras.layers.Layer)
    archive = keras.export.ExportArchive()
    if is_keras:
        # Saves the model's variables as `variables` on the artifact (the
        # endpoints' own variables are collected either way).
        archive.track(model)
    if preprocessor is not None:
        # Resources the tokenizer holds (e.g. tf-text's SentencePiece model)
        # must be tracked to be saved. `track()` refuses unbuilt layers, and
        # keras-hub preprocessors are never built, so a plain `tf.Module`
        # holds it: the archive walks it for `TrackableResource`s.
        holder = tf.Module()
        holder.preprocessor = preprocessor
        archive.track(holder)
    with contextlib.ExitStack() as stack:
        if compute_dtype is not None and is_keras:
            stack.enter_context(_compute_dtype_scope(model, compute_dtype))
        for scope in scopes:
            stack.enter_context(scope)
        if preprocessor is not None:
            archive.add_endpoint(
                SERVING_DEFAULT,
                serve_text,
                input_signature=[tf.TensorSpec([None], tf.string, name=_TEXT_INPUT)],
            )
            archive.add_endpoint(
                SERVE_TOKEN_IDS, serve_token_ids, input_signature=[token_specs]
            )
        else:
            archive.add_endpoint(
                SERVING_DEFAULT, serve_token_ids, input_signature=[token_specs]
            )
        _add_text_endpoints(archive, text_endpoints or {})
        _write(archive, export_dir, verbose)


def _check_generator(generator, expected):
    if not callable(generator) or not isinstance(generator, tf.Module):
        raise TypeError(
            f"`generator` must be a {expected}. Received: {type(generator).__name__}"
        )


def _add_text_endpoints(archive, endpoints):
    """Adds `endpoints` (name -> a callable `tf.Module` of a string `[B]`
    tensor, e.g. a generator) to `archive`, tracking each for its resources
    and variables; call inside the tracing scopes."""
    for name, module in endpoints.items():
        holder = tf.Module()
        holder.module = module
        archive.track(holder)
        archive.add_endpoint(
            name, module.__call__,
            input_signature=[tf.TensorSpec([None], tf.string, name=_TEXT_INPUT)],
        )


def _write(archive, export_dir, verbose):
    """Writes the archive; replaces a non-empty `export_dir` only once the
    new SavedModel is complete, so a failed export leaves the old one."""
    if not (tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir)):
        archive.write_out(export_dir, verbose=verbose)
        return
    staging = f"{export_dir.rstrip('/')}.export-{os.getpid()}"
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    try:
        archive.write_out(staging, verbose=verbose)
    except BaseException:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(staging, export_dir)


def _forward(objective, inputs, length):
    inputs = dict(inputs)
    inputs["padding_mask"] = tf.cast(inputs["padding_mask"], tf.int32)
    outputs = objective.export_outputs(inputs)
    return {
        name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
        for name, value in outputs.items()
    }


def check_objective(objective, user="export_saved_model", outputs="a dict of named outputs"):
    """Raises unless `objective` can be exported: it has
    `export_outputs(inputs)` (token ids -> `outputs`) and is built.

    Args:
        objective: the model to export.
        user: what needs it, for the message.
        outputs: what `export_outputs` must return, for the message.
    """
    if not callable(getattr(objective, "export_outputs", None)):
        raise TypeError(
            f"{user} needs an objective with `export_outputs(inputs)` (token ids -> "
            f"{outputs}), such as every kobjectives objective. "
            f"{type(objective).__name__} has none."
        )
    if isinstance(objective, keras.layers.Layer) and not objective.built:
        raise ValueError(
            f"The {type(objective).__name__} is not built, so it has no "
            "weights to export. Fit it or call it on a batch first."
        )


def _check_export_dir(export_dir, overwrite):
    if not tf.io.gfile.exists(export_dir):
        return
    if not tf.io.gfile.isdir(export_dir):
        raise FileExistsError(
            f"`export_dir` {export_dir!r} exists and is not a directory."
        )
    if tf.io.gfile.listdir(export_dir) and not overwrite:
        raise FileExistsError(
            f"`export_dir` {export_dir!r} exists and is not empty. Pass "
            "`overwrite=True` to replace it, or choose another directory."
        )


def _input_names(objective):
    backbone = getattr(objective, "backbone", None)
    if isinstance(backbone, keras.Model):
        names = backbone_input_names(backbone)
    else:
        names = ("token_ids", "padding_mask")
    ordered = [n for n in ("token_ids", "padding_mask", "segment_ids") if n in names]
    ordered += [n for n in names if n not in ordered]
    for required in ("token_ids", "padding_mask"):
        if required not in ordered:
            ordered.insert(0 if required == "token_ids" else 1, required)
    return tuple(ordered)


def _resolve_sequence_length(objective, preprocessor, sequence_length):
    from_preprocessor = getattr(preprocessor, "sequence_length", None)
    backbone = getattr(objective, "backbone", None)
    max_length = getattr(backbone, "max_sequence_length", None)
    if sequence_length is None:
        sequence_length = from_preprocessor or max_length
    if sequence_length is None:
        raise ValueError(
            "Cannot tell the sequence length to export. Pass "
            "`sequence_length=` (or a preprocessor with `sequence_length`)."
        )
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 1
    ):
        raise ValueError(
            "`sequence_length` must be a positive int. Received: "
            f"sequence_length={sequence_length!r}"
        )
    if from_preprocessor is not None and from_preprocessor != sequence_length:
        raise ValueError(
            f"`sequence_length={sequence_length}` differs from the "
            f"preprocessor's sequence_length={from_preprocessor}. Leave "
            "`sequence_length` unset or make them equal."
        )
    if max_length is not None and sequence_length > max_length:
        raise ValueError(
            f"The sequence length {sequence_length} exceeds the backbone's "
            f"max_sequence_length={max_length}. Export with a shorter "
            "`sequence_length` (or preprocessor sequence_length)."
        )
    return sequence_length


def _check_vocabulary(objective, preprocessor):
    tokenizer = getattr(preprocessor, "tokenizer", None)
    size_fn = getattr(tokenizer, "vocabulary_size", None)
    model_size = getattr(objective, "vocabulary_size", None)
    if model_size is None:
        backbone = getattr(objective, "backbone", None)
        model_size = getattr(backbone, "vocabulary_size", None)
    if not callable(size_fn) or not isinstance(model_size, int):
        return
    tokenizer_size = size_fn()
    if tokenizer_size > model_size:
        raise ValueError(
            f"The preprocessor's tokenizer has {tokenizer_size} tokens but "
            f"the model's vocabulary_size is {model_size}: token ids would "
            "fall outside the embedding. Export with the tokenizer the model "
            "was trained with."
        )


@contextlib.contextmanager
def _compute_dtype_scope(objective, dtype):
    """Runs every layer of `objective` in `dtype` while the endpoints trace.

    Under a mixed policy (`mixed_bfloat16`, `mixed_float16`) the variables
    are float32 already and only the compute dtype differs, so switching the
    policies to `dtype` serves the same weights in full precision. Quantized
    layers (policy maps, quantization modes) keep their policy. The original
    policies are restored on exit; the traced graphs keep `dtype`.
    """
    swapped = []
    layers = compat.flatten_layers(objective)
    try:
        for layer in layers:
            policy = layer.dtype_policy
            if (
                type(policy) is keras.DTypePolicy
                and policy.quantization_mode is None
                and policy.compute_dtype != dtype
                and policy.variable_dtype == dtype
            ):
                swapped.append((layer, policy))
                layer.dtype_policy = keras.DTypePolicy(dtype)
        yield
    finally:
        for layer, policy in reversed(swapped):
            layer.dtype_policy = policy


@contextlib.contextmanager
def _special_tokens_in_strings(preprocessor):
    """Makes a keras-hub WordPiece tokenizer map literal `[MASK]` etc. to
    their ids while the endpoints trace; restored on exit.

    keras-hub's `WordPieceTokenizer` (and `BertTokenizer`) default to
    `special_tokens_in_strings=False`, which splits `"[MASK]"` into `[`,
    `mask`, `]`. Tokenizers without the option (SentencePiece, whose
    `[MASK]` is a user-defined symbol) are left alone.
    """
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "special_tokens_in_strings"):
        yield
        return
    previous = tokenizer.special_tokens_in_strings
    tokenizer.special_tokens_in_strings = True
    try:
        yield
    finally:
        tokenizer.special_tokens_in_strings = previous
