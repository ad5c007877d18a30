"""Text generation from raw prompts with a keras-hub sampler.

`TextGenerator` turns a batch of raw prompts into generated text: the
serving preprocessor lays a prompt out as in training (for chat SFT the
generation prompt `[start] <|user|> prompt <|end|> <|assistant|>`), a
keras-hub sampler (`keras_hub.samplers.get(name)`: greedy, top-k, top-p,
beam, ...) fills the rest of the window one token at a time, and the
tokenizer turns the new tokens back into text. It is built from TensorFlow
ops only, so `kobjectives.export.export_saved_model(..., generator=...)`
serves it as the SavedModel's `generate` signature.

The generator needs one thing of an objective (the export interface of
`kobjectives.export.saved_model`): `export_outputs(inputs)` returning
`logits` `[batch, length, vocabulary]` where position `t` predicts token
`t + 1` (`kobjectives.objectives.CausalLanguageModel`). It recomputes the
whole window at every step (no key/value cache): simple and exact for any
backbone, quadratic in the window length.
"""

import tensorflow as tf

GENERATE = "generate"
"""Signature key of the generation endpoint of an exported SavedModel."""


class TextGenerator(tf.Module):
    """Raw prompts -> generated text, with a keras-hub sampler.

    Prompts of different lengths share one right-padded window: generation
    starts after the shortest prompt and a longer prompt's own tokens are
    never overwritten (keras-hub `CausalLM.generate`'s scheme). Each row
    stops at its first stop token (not part of the returned text); the loop
    ends when every row has stopped or the window is full.

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
        max_new_tokens: optional int, the most tokens kept per row.

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
        import keras_hub

        if not callable(getattr(objective, "export_outputs", None)):
            raise TypeError(
                "`objective` must provide `export_outputs(inputs)` with `logits` (e.g. "
                f"kobjectives.objectives.CausalLanguageModel). Received: "
                f"{type(objective).__name__}"
            )
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

    def logits(self, token_ids, index):
        """The logits that predict position `index` of every row."""
        inputs = {"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)}
        logits = self.objective.export_outputs(inputs)["logits"]
        return tf.cast(logits[:, index - 1], tf.float32)

    def __call__(self, text):
        features = self.preprocessor(tf.convert_to_tensor(text))
        return self.generate(features["token_ids"], features["padding_mask"])

    def generate(self, token_ids, padding_mask):
        """Generation from tokenized prompts: `token_ids` `[batch, length]`
        holding each prompt left-aligned (`padding_mask` marks its tokens)
        and room after it. Returns `{"text", "token_ids"}` as calling with
        raw text does."""
        token_ids = tf.cast(token_ids, tf.int32)
        prompt_mask = tf.cast(padding_mask, tf.bool)
        lengths = tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=-1)
        index = tf.maximum(tf.reduce_min(lengths), 1)

        def next_logits(prompt, cache, index):
            return self.logits(prompt, index), None, cache

        generated = self.sampler(
            next_logits, token_ids, index=index, mask=prompt_mask,
            stop_token_ids=self.stop_token_ids or None)
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

