"""Inference SavedModel of an encoder-decoder objective (denoising seq2seq).

**The interface this export needs of an objective** (all of it; nothing is
imported from `kobjectives.objectives`):

- `export_outputs(inputs)` (required): a dict of int32 tensors
  `encoder_token_ids`, `encoder_padding_mask` `[batch, source_length]` and
  `decoder_token_ids`, `decoder_padding_mask` `[batch, target_length]` (the
  decoder inputs, already shifted: they start with the decoder start id)
  -> a dict of named `[batch, ...]` tensors (`DenoisingSeq2Seq`: `logits`
  `[batch, target_length, vocabulary_size]` and `encoder_sequence_output`
  `[batch, source_length, hidden]`).
- `padding_token_id` (optional int, default 0): pads the encoder text; a
  decoder id equal to it after position 0 is masked.
- `serving_model()` (optional): the layer to serve (default the object).

With a `generator` (`kobjectives.export.Seq2SeqTextGenerator`) the
SavedModel also generates: raw input text -> the decoded target text.
"""

import contextlib
import os

import keras
import tensorflow as tf

from kobjectives.export.generation import _EncoderInputs
from kobjectives.export.saved_model import GENERATE
from kobjectives.export.saved_model import SERVE_TOKEN_IDS
from kobjectives.export.saved_model import SERVING_DEFAULT
from kobjectives.export.saved_model import _add_text_endpoints
from kobjectives.export.saved_model import _check_export_dir
from kobjectives.export.saved_model import _check_generator
from kobjectives.export.saved_model import _compute_dtype_scope
from kobjectives.export.saved_model import _write
from kobjectives.export.saved_model import check_objective


def export_seq2seq_saved_model(
    objective,
    export_dir,
    tokenizer=None,
    encoder_sequence_length=None,
    eos_token_id=None,
    overwrite=False,
    compute_dtype="float32",
    generator=None,
):
    """Exports an encoder-decoder objective (e.g. `DenoisingSeq2Seq`) as an
    inference SavedModel, through the interface in this module's docstring.

    Signatures (`S` the encoder length, `T` any decoder length, `V` the
    vocabulary size, `H` the hidden size; any batch size):

    - `serve_token_ids` (`serving_default` without a tokenizer):
      `encoder_token_ids`, `encoder_padding_mask` int32 `[B, S]`,
      `decoder_token_ids`, `decoder_padding_mask` int32 `[B, T]` -> the
      objective's `export_outputs` (`DenoisingSeq2Seq`: `logits` float32
      `[B, T, V]`, `encoder_sequence_output` `[B, S, H]`).
    - `serving_default` with a tokenizer: `text` string `[B]` (the
      corrupted text; sentinels such as `<extra_id_0>` may be written in it
      when the tokenizer knows them as special tokens) and
      `decoder_token_ids` int32 `[B, T]` (start with the decoder start id;
      padding ids after position 0 are masked) -> the same outputs plus the
      `encoder_token_ids` and `encoder_padding_mask` used. The text is
      tokenized, truncated to `encoder_sequence_length - 1`, ended with
      `eos_token_id` and padded, as in training.
    - `generate` (with a `generator`, the same key as the causal export's,
      `kobjectives.export.GENERATE`): `text` string `[B]` (the raw input)
      -> the generated `text` string `[B]` (cut at the stop token) and
      `token_ids` int32 `[B, T]` (the decoder window: the start id, then
      the generation; `T` the generator's `target_length`). Greedy by
      default, recomputing the window at every step (no cache).

    Loads with `tf.saved_model.load` and only TensorFlow (plus
    `import tensorflow_text` for the text signature).

    Args:
        objective: a built objective with `export_outputs` (see the module
            docstring).
        export_dir: directory to write.
        tokenizer: optional keras-hub tokenizer (e.g. `WordPieceTokenizer`)
            mapping strings to ragged ids.
        encoder_sequence_length: int, `S`; required with a tokenizer (None
            without one: any encoder length).
        eos_token_id: optional int appended to the encoder text.
        overwrite: replace a non-empty `export_dir`.
        compute_dtype: `"float32"` (serve in float32 whatever the training
            policy) or None (keep the objective's policy).
        generator: optional `kobjectives.export.Seq2SeqTextGenerator` of
            this objective: adds the `generate` signature.

    Returns:
        The export directory (str).

    Raises:
        TypeError: the objective has no `export_outputs`, or `generator`
            is not a generator (`tf.Module`).
        ValueError: the objective is not built, or a tokenizer without an
            `encoder_sequence_length` of at least 2.
        FileExistsError: `export_dir` is non-empty and `overwrite` is False.

    Example:

    ```python
    model = kobjectives.objectives.DenoisingSeq2Seq(backbone)
    model.compile()
    model.fit(dataset, epochs=1)
    export_seq2seq_saved_model(model, "serving/t5", tokenizer=tokenizer,
                               encoder_sequence_length=64, eos_token_id=3)
    served = tf.saved_model.load("serving/t5").signatures["serving_default"]
    served(text=tf.constant(["a <extra_id_0> b"]), decoder_token_ids=tf.constant([[0]]))
    # with generator=kobjectives.export.Seq2SeqTextGenerator(model, tokenizer, 64, 32, 3):
    # tf.saved_model.load(...).signatures["generate"](text=tf.constant(["a b"]))["text"]
    ```
    """
    serving_model = getattr(objective, "serving_model", None)
    objective = serving_model() if callable(serving_model) else objective
    check_objective(objective, "export_seq2seq_saved_model")
    export_dir = os.fspath(export_dir)
    _check_export_dir(export_dir, overwrite)
    if tokenizer is not None and (
        isinstance(encoder_sequence_length, bool)
        or not isinstance(encoder_sequence_length, int)
        or encoder_sequence_length < 2
    ):
        raise ValueError(
            "A text signature needs `encoder_sequence_length` (an int >= 2). "
            f"Received: {encoder_sequence_length!r}"
        )
    if compute_dtype not in (None, "float32"):
        raise ValueError(
            "`compute_dtype` must be 'float32' or None (the objective's own "
            f"policy). Received: compute_dtype={compute_dtype!r}"
        )
    if generator is not None:
        _check_generator(generator, "kobjectives.export.Seq2SeqTextGenerator")
    pad = int(getattr(objective, "padding_token_id", 0))

    def forward(inputs):
        outputs = objective.export_outputs(inputs)
        return {
            name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
            for name, value in outputs.items()
        }

    id_specs = {
        "encoder_token_ids": tf.TensorSpec(
            [None, encoder_sequence_length], tf.int32, name="encoder_token_ids"),
        "encoder_padding_mask": tf.TensorSpec(
            [None, encoder_sequence_length], tf.int32, name="encoder_padding_mask"),
        "decoder_token_ids": tf.TensorSpec([None, None], tf.int32, name="decoder_token_ids"),
        "decoder_padding_mask": tf.TensorSpec([None, None], tf.int32, name="decoder_padding_mask"),
    }
    archive = keras.export.ExportArchive()
    archive.track(objective)
    with contextlib.ExitStack() as stack:
        if compute_dtype is not None:
            stack.enter_context(_compute_dtype_scope(objective, compute_dtype))
        if tokenizer is None:
            archive.add_endpoint(SERVING_DEFAULT, forward, input_signature=[id_specs])
        else:
            holder = tf.Module()
            holder.tokenizer = tokenizer
            archive.track(holder)
            encoder_inputs = _EncoderInputs(tokenizer, encoder_sequence_length, eos_token_id, pad)

            def serve_text(text, decoder_token_ids):
                encoder = encoder_inputs(text)
                decoder_token_ids = tf.cast(decoder_token_ids, tf.int32)
                first = tf.equal(tf.range(tf.shape(decoder_token_ids)[1]), 0)[None, :]
                decoder_mask = tf.logical_or(tf.not_equal(decoder_token_ids, pad), first)
                inputs = {
                    **encoder,
                    "decoder_token_ids": decoder_token_ids,
                    "decoder_padding_mask": tf.cast(decoder_mask, tf.int32),
                }
                outputs = forward(inputs)
                outputs["encoder_token_ids"] = inputs["encoder_token_ids"]
                outputs["encoder_padding_mask"] = inputs["encoder_padding_mask"]
                return outputs

            archive.add_endpoint(
                SERVING_DEFAULT,
                serve_text,
                input_signature=[
                    tf.TensorSpec([None], tf.string, name="text"),
                    tf.TensorSpec([None, None], tf.int32, name="decoder_token_ids"),
                ],
            )
            archive.add_endpoint(SERVE_TOKEN_IDS, forward, input_signature=[id_specs])
        if generator is not None:
            _add_text_endpoints(archive, {GENERATE: generator})
        _write(archive, export_dir, False)
    return export_dir
