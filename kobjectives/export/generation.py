"""Text generation from raw prompts with a keras-hub sampler.

`TextGenerator` turns a batch of raw prompts into generated text: the
serving preprocessor lays a prompt out as in training (for chat SFT the
generation prompt `[start] <|user|> prompt <|end|> <|assistant|>`), a
keras-hub sampler (`keras_hub.samplers.get(name)`: greedy, top-k, top-p,
beam, ...) fills the rest of the window one token at a time, and the
tokenizer turns the new tokens back into text. It is built from TensorFlow
ops only, so `kobjectives.export.export_saved_model(..., generator=...)`
serves it as the SavedModel's `generate` signature.

`Seq2SeqTextGenerator` does the same for an encoder-decoder objective
(`kobjectives.objectives.DenoisingSeq2Seq`): the raw text is the encoder
input, laid out as in training, and the sampler fills the decoder window
after the decoder start id; `kobjectives.export.seq2seq.
export_seq2seq_saved_model(..., generator=...)` serves it.

The generators need one thing of an objective (the export interface of
`kobjectives.export.saved_model` and `kobjectives.export.seq2seq`):
`export_outputs(inputs)` returning `logits` `[batch, length, vocabulary]`
where position `t` predicts token `t + 1` of the (decoder) window
(`kobjectives.objectives.CausalLanguageModel`, `DenoisingSeq2Seq`). They
recompute the whole window at every step (no key/value cache; an encoder
re-reads its input each step too): simple and exact for any backbone,
quadratic in the window length.
"""

import keras_hub
import tensorflow as tf

from kobjectives.export.saved_model import check_objective


class TextGenerator(tf.Module):
    """Raw prompts -> generated text, with a keras-hub sampler.

    Prompts of different lengths share one right-padded window: generation
    starts after the shortest prompt and a longer prompt's own tokens are
    never overwritten (keras-hub `CausalLM.generate`'s scheme). Each row
    stops at its first stop token (not part of the returned text); the loop
    ends when every row has stopped or the window is full. A subclass feeds
    the objective other inputs through `model_inputs(token_ids, context)`
    (`Seq2SeqTextGenerator`: the encoder input as `context`).

    Args:
        objective: a built objective whose `export_outputs(inputs)` has
            `logits` `[batch, length, vocabulary]`, position `t` predicting
            token `t + 1` (`kobjectives.objectives.CausalLanguageModel`).
        preprocessor: callable mapping a string tensor `[batch]` to
            `{"token_ids", "padding_mask"}` int `[batch, length]`, right
            padded (`kobjectives.data.ChatPromptPreprocessor`,
            `kobjectives.export.PromptPreprocessor`).
        tokenizer: the keras-hub tokenizer of training (its `detokenize`
            writes the text).
        sampler: a keras-hub sampler name or instance. Defaults to
            `"greedy"`.
        stop_token_ids: ids that end a row's generation (e.g. the chat
            template's `<|end|>` marker). Defaults to none.
        max_new_tokens: optional int, the most tokens kept per row;
            generation ends `max_new_tokens` after the batch's longest
            prompt (the rest of the window stays as given).

    Call arguments:
        text: string tensor `[batch]`, the raw prompts.

    Returns (of a call):
        dict of `text` string `[batch]` (the generated continuation,
        detokenized) and `token_ids` int32 `[batch, length]` (prompt and
        generation, as the model saw them).

    Reference: Holtzman et al., 2020, "The Curious Case of Neural Text
    Degeneration" (the samplers).

    Example:

    >>> import keras_hub
    >>> from kobjectives.objectives import CausalLanguageModel
    >>> from kobjectives.export import PromptPreprocessor
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    >>> tokenizer = keras_hub.models.BertTokenizer(vocabulary)
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=7, num_layers=1, num_heads=1, hidden_dim=4,
    ...     intermediate_dim=8, max_sequence_length=8)
    >>> model = CausalLanguageModel(backbone)
    >>> generator = TextGenerator(model, PromptPreprocessor(tokenizer, 8), tokenizer)
    >>> out = generator(tf.constant(["a b", "b"]))
    >>> out["text"].shape, out["token_ids"].shape
    (TensorShape([2]), TensorShape([2, 8]))
    """

    def __init__(self, objective, preprocessor, tokenizer, sampler="greedy",
                 stop_token_ids=None, max_new_tokens=None):
        super().__init__()
        check_objective(objective, type(self).__name__, "a dict with `logits`")
        if not callable(preprocessor):
            raise TypeError(
                "`preprocessor` must map a batch of strings to `token_ids` and "
                f"`padding_mask`. Received: {type(preprocessor).__name__}"
            )
        if not callable(getattr(tokenizer, "detokenize", None)):
            raise TypeError(
                "`tokenizer` must be a keras-hub tokenizer with `detokenize`. Received: "
                f"{type(tokenizer).__name__}"
            )
        if max_new_tokens is not None and (
                isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                or max_new_tokens < 1):
            raise ValueError(
                f"`max_new_tokens` must be a positive int or None. Received: {max_new_tokens!r}"
            )
        self.objective = objective
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.sampler = keras_hub.samplers.get(sampler)
        self.stop_token_ids = tuple(int(i) for i in (stop_token_ids or ()))
        self.max_new_tokens = max_new_tokens

    def model_inputs(self, token_ids, context=None):
        """The objective's inputs for the window `token_ids` `[batch,
        length]` (every position visible: attention is causal, so the
        positions after the one predicted do not count). `context`, the
        extra inputs of `generate`, is unused here."""
        return {"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)}

    def logits(self, token_ids, index, context=None):
        """The logits that predict position `index` of every row, float32
        `[batch, vocabulary]` (the whole window recomputed: no cache)."""
        inputs = self.model_inputs(token_ids, context)
        logits = self.objective.export_outputs(inputs)["logits"]
        return tf.cast(logits[:, index - 1], tf.float32)

    def __call__(self, text):
        features = self.preprocessor(tf.convert_to_tensor(text))
        return self.generate(features["token_ids"], features["padding_mask"])

    def generate(self, token_ids, padding_mask, context=None):
        """Generation from tokenized prompts: `token_ids` `[batch, length]`
        holding each prompt left-aligned (`padding_mask` marks its tokens)
        and room after it; `context`, optional, a dict of `[batch, ...]`
        tensors the objective reads beside the window (an encoder's input,
        `model_inputs`), travels with the rows through the sampler (a beam
        search repeats it per beam). Returns `{"text", "token_ids"}` as
        calling with raw text does."""
        token_ids = tf.cast(token_ids, tf.int32)
        prompt_mask = tf.cast(padding_mask, tf.bool)
        lengths = tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=-1)
        index = tf.maximum(tf.reduce_min(lengths), 1)
        window = tf.shape(token_ids)[1]
        if self.max_new_tokens is not None:
            # The sampler runs to the end of the window it is given: give it
            # the longest prompt and `max_new_tokens` (attention is causal,
            # so the positions cut off never change a logit).
            window = tf.minimum(window, tf.reduce_max(lengths) + self.max_new_tokens)

        def next_logits(prompt, cache, index):
            # The sampler's `cache` carries `context` unchanged (`()` without one).
            return self.logits(prompt, index, cache if context is not None else None), None, cache

        generated = self.sampler(
            next_logits, token_ids[:, :window], cache=context, index=index,
            mask=prompt_mask[:, :window], stop_token_ids=self.stop_token_ids or None)
        generated = tf.concat([generated, token_ids[:, window:]], axis=1)
        return {"text": self._completion_text(generated, lengths), "token_ids": generated}

    def _completion_text(self, token_ids, lengths):
        """Each row's tokens after its prompt, cut at the first stop token."""
        length = tf.shape(token_ids)[1]
        positions = tf.range(length)[None, :]
        new = positions >= lengths[:, None]
        if self.stop_token_ids:
            stop = tf.reduce_any(
                token_ids[..., None] == tf.constant(self.stop_token_ids, tf.int32), axis=-1)
            stopped = tf.cumsum(tf.cast(stop & new, tf.int32), axis=1) > 0
            new &= ~stopped
        if self.max_new_tokens is not None:
            new &= positions < lengths[:, None] + self.max_new_tokens
        completion = tf.ragged.boolean_mask(token_ids, new)
        text = self.tokenizer.detokenize(completion)
        return tf.convert_to_tensor(text)


class _EncoderInputs(tf.Module):
    """Raw strings -> `{"encoder_token_ids", "encoder_padding_mask"}` int32
    `[batch, sequence_length]`: tokenized, cut to `sequence_length - 1`
    tokens (`sequence_length` without an end id), ended with `end_token_id`
    and padded, as the seq2seq training examples are
    (`kobjectives.data.seq2seq_sft`, `kobjectives.layers.SpanCorruption`).
    One layout for the text signature of `export_seq2seq_saved_model` and
    for `Seq2SeqTextGenerator`."""

    def __init__(self, tokenizer, sequence_length, end_token_id=None, padding_token_id=0):
        super().__init__()
        self.tokenizer = tokenizer
        self.padding_token_id = int(padding_token_id)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length,
            end_value=end_token_id,
            pad_value=self.padding_token_id,
            return_padding_mask=True,
        )

    def __call__(self, text):
        ids = self.tokenizer(text)
        if isinstance(ids, tf.Tensor):  # a tokenizer that pads its output
            ids = tf.RaggedTensor.from_tensor(ids, padding=self.padding_token_id)
        token_ids, padding_mask = self.packer(ids)
        return {"encoder_token_ids": tf.cast(token_ids, tf.int32),
                "encoder_padding_mask": tf.cast(padding_mask, tf.int32)}


def _check_int(name, value, least):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"`{name}` must be an int >= {least}. Received: {name}={value!r}")
    return value


class Seq2SeqTextGenerator(TextGenerator):
    """Raw input text -> generated target text, for an encoder-decoder
    objective, with a keras-hub sampler.

    The text is the encoder input, laid out as the seq2seq export and the
    training examples lay it out (tokenized, cut to its first
    `encoder_sequence_length - 1` tokens, ended with `eos_token_id`,
    padded: keras-hub's `StartEndPacker`). The decoder window
    `[batch, target_length]` starts with the decoder start id (the given
    prompt) and the sampler fills the rest, one token at a time, from
    `objective.export_outputs({encoder_token_ids, encoder_padding_mask,
    decoder_token_ids, decoder_padding_mask})["logits"]`; each row stops at
    its first stop token (by default the end id), not part of the text.
    `TextGenerator`'s loop, with the encoder input as the extra `context`.
    No key/value cache: the encoder and the decoder window are recomputed
    at every step (exact, quadratic in `target_length`).

    Args:
        objective: a built encoder-decoder objective (e.g.
            `kobjectives.objectives.DenoisingSeq2Seq`) whose
            `export_outputs` takes the four inputs above and returns
            `logits` `[batch, target_length, vocabulary]`, decoder position
            `t` predicting decoder token `t + 1`.
        tokenizer: the keras-hub tokenizer of training (strings -> ids;
            `detokenize` writes the text).
        encoder_sequence_length: int >= 2, the encoder length `S`.
        target_length: int, the decoder window `T` (the prompt and at most
            `T - len(decoder_prompt_ids)` generated tokens).
        eos_token_id: optional int, ends the encoder text (and, by default,
            generation).
        decoder_prompt_ids: the ids the decoder window starts with. Defaults
            to `(objective.decoder_start_token_id,)` (T5: the padding id);
            BART as trained by the `seq2seq_sft` run: `(end, start)`.
        sampler: a keras-hub sampler name or instance. Defaults to
            `"greedy"`.
        stop_token_ids: ids that end a row. Defaults to `(eos_token_id,)`
            (none without one); `()` for none.
        max_new_tokens: optional int, as `TextGenerator`'s.
        padding_token_id: int, pads the encoder text and the decoder window.
            Defaults to `objective.padding_token_id`, else 0.

    Call arguments:
        text: string tensor `[batch]`, the raw inputs.

    Returns (of a call):
        dict of `text` string `[batch]` (the generated target, detokenized,
        cut at the stop token) and `token_ids` int32 `[batch, T]` (the
        decoder window: the prompt ids, then the generation as the model
        saw it).

    Reference: Raffel et al., 2020, "Exploring the Limits of Transfer
    Learning with a Unified Text-to-Text Transformer" (T5), decoding as
    keras-hub's `Seq2SeqLM.generate`.

    Example:

    >>> import keras_hub
    >>> from kobjectives.objectives import DenoisingSeq2Seq
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    >>> tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary)
    >>> backbone = keras_hub.models.T5Backbone(
    ...     vocabulary_size=7, num_layers=1, num_heads=1, hidden_dim=4,
    ...     intermediate_dim=8)
    >>> generator = Seq2SeqTextGenerator(
    ...     DenoisingSeq2Seq(backbone), tokenizer, encoder_sequence_length=6,
    ...     target_length=5, eos_token_id=3)
    >>> out = generator(tf.constant(["a b", "b"]))
    >>> out["text"].shape, out["token_ids"].shape
    (TensorShape([2]), TensorShape([2, 5]))
    """

    def __init__(self, objective, tokenizer, encoder_sequence_length, target_length,
                 eos_token_id=None, decoder_prompt_ids=None, sampler="greedy",
                 stop_token_ids=None, max_new_tokens=None, padding_token_id=None):
        check_objective(objective, type(self).__name__, "a dict with `logits`")
        if not callable(tokenizer):
            raise TypeError(
                "`tokenizer` must be the keras-hub tokenizer of training (strings -> ids). "
                f"Received: {type(tokenizer).__name__}"
            )
        _check_int("encoder_sequence_length", encoder_sequence_length, 2)
        if eos_token_id is not None:
            _check_int("eos_token_id", eos_token_id, 0)
        if padding_token_id is None:
            padding_token_id = int(getattr(objective, "padding_token_id", 0))
        if decoder_prompt_ids is None:
            start = getattr(objective, "decoder_start_token_id", None)
            if start is None:
                raise ValueError(
                    f"{type(objective).__name__} has no `decoder_start_token_id`: pass "
                    "`decoder_prompt_ids` (the ids the decoder window starts with).")
            decoder_prompt_ids = (start,)
        if isinstance(decoder_prompt_ids, int):
            decoder_prompt_ids = (decoder_prompt_ids,)
        decoder_prompt_ids = tuple(decoder_prompt_ids)
        if not decoder_prompt_ids or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0
                for i in decoder_prompt_ids):
            raise ValueError(
                "`decoder_prompt_ids` must be one or more non-negative int ids (the decoder "
                f"start id first). Received: {decoder_prompt_ids!r}")
        _check_int("target_length", target_length, len(decoder_prompt_ids) + 1)
        longest = getattr(getattr(objective, "backbone", None), "max_sequence_length", None)
        for name, length in (("encoder_sequence_length", encoder_sequence_length),
                             ("target_length", target_length)):
            if isinstance(longest, int) and length > longest:
                raise ValueError(
                    f"`{name}` = {length} exceeds the backbone's max_sequence_length = "
                    f"{longest}; use at most {longest}.")
        if stop_token_ids is None:
            stop_token_ids = () if eos_token_id is None else (eos_token_id,)
        super().__init__(
            objective, _EncoderInputs(tokenizer, encoder_sequence_length, eos_token_id,
                                      padding_token_id),
            tokenizer, sampler=sampler, stop_token_ids=stop_token_ids,
            max_new_tokens=max_new_tokens)
        self.encoder_sequence_length = encoder_sequence_length
        self.target_length = target_length
        self.decoder_prompt_ids = decoder_prompt_ids
        self.padding_token_id = padding_token_id

    def model_inputs(self, token_ids, context=None):
        """The objective's inputs: the encoder's (`context`) and the decoder
        window `token_ids` (every position visible: decoder self-attention
        is causal)."""
        if context is None:
            raise ValueError(
                "Seq2SeqTextGenerator.generate needs `context`: the encoder inputs "
                "`{encoder_token_ids, encoder_padding_mask}` (calling it with raw text "
                "builds them).")
        return {**context, "decoder_token_ids": token_ids,
                "decoder_padding_mask": tf.ones_like(token_ids)}

    def __call__(self, text):
        encoder = self.preprocessor(tf.convert_to_tensor(text))
        batch = tf.shape(encoder["encoder_token_ids"])[0]
        prompt = len(self.decoder_prompt_ids)
        start = tf.tile(tf.constant([self.decoder_prompt_ids], tf.int32), [batch, 1])
        rest = tf.fill([batch, self.target_length - prompt], self.padding_token_id)
        window = tf.concat([start, rest], axis=1)
        mask = tf.tile(tf.range(self.target_length)[None, :] < prompt, [batch, 1])
        return self.generate(window, mask, context=encoder)
