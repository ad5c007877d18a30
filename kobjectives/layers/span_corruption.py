"""`SpanCorruption`: T5's span-corruption preprocessing layer for `tf.data`."""


import keras
import numpy as np
import tensorflow as tf

# Imported by name: `kobjectives.ops.span_corruption` (the package attribute)
# is the function of that name, exported by `kobjectives.ops`.
from kobjectives.ops.span_corruption import span_corruption
from kobjectives.ops.span_corruption import span_corruption_lengths
from kobjectives.layers.arguments import is_real as _is_real
from kobjectives.layers.arguments import check_id
from kobjectives.layers.arguments import check_int as _check_int
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_token_ids
from kobjectives.layers.token_inputs import fit_length as _fit_length
from kobjectives.layers.token_inputs import unpack_token_inputs

OUTPUT_KEYS = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "target_ids",
    "target_padding_mask",
)


@keras.saving.register_keras_serializable(package="kobjectives")
class SpanCorruption(SeededLayer):
    """T5 span corruption: noise spans out of the encoder input, into the target.

    A fraction `noise_density` of each sequence's real tokens is split into
    spans of mean length `mean_noise_span_length` (T5's
    `random_spans_noise_mask`, see `kobjectives.ops.span_corruption`). The
    encoder input keeps the other tokens and holds one sentinel per noise
    span; the target is each noise span after its sentinel:

    ```
    tokens:  Thank you for inviting me to your party last week .
    inputs:  Thank you <extra_id_0> me to your party <extra_id_1> week . </s>
    targets: <extra_id_0> for inviting <extra_id_1> last </s>
    ```

    The `k`-th noise span's sentinel is `sentinel_ids[k]`; by default the top
    ids of the vocabulary counting down (`vocabulary_size - 1`,
    `vocabulary_size - 2`, ...), as T5's `<extra_id_0>`, `<extra_id_1>`, ...
    Reserve them in the tokenizer (e.g.
    `kobjectives.data.add_sentinel_tokens`); a real token equal to a sentinel
    id fails loudly.

    Outputs have static shapes: `inputs_length` and `targets_length` default
    to what the longest sequence (`sequence_length` real tokens, or the
    input's static length) needs, as T5's `compute_input_and_target_lengths`;
    shorter sequences are padded. Randomness is stateless and seeded: the same
    seed and input give the same corruption; `map_over` draws a fresh seed per
    element and epoch. A sequence with a single noise span (30 tokens or
    fewer with T5's rates) gets it at a seeded random place, where T5 would
    always put it at the end (see `kobjectives.ops.span_corruption`).

    Args:
        noise_density: float in (0, 1), the fraction of real tokens
            corrupted. Defaults to 0.15 (T5).
        mean_noise_span_length: float >= 1, the mean noise span length.
            Defaults to 3.0 (T5).
        vocabulary_size: int, the model's vocabulary size (sentinels
            included). Needed for the default sentinels; also checks ids.
        sentinel_ids: optional sequence of ints, the sentinel of the 1st,
            2nd, ... noise span. Defaults to `num_sentinels` ids counting
            down from `vocabulary_size - 1`.
        num_sentinels: optional int, how many top ids are sentinels when
            `sentinel_ids` is not given. Defaults to the number of spans the
            longest sequence gets.
        sequence_length: optional int >= 2, the most real tokens a sequence
            has: ragged inputs are padded or truncated to it, dense ones too.
            Defaults to the input's static length.
        inputs_length: optional int, the encoder input length (EOS
            included). Defaults to the length the longest sequence needs.
        targets_length: optional int, the target length (EOS included).
            Defaults to the length the longest sequence needs.
        eos_token_id: optional int appended to both inputs and targets
            (T5's `</s>`), in `[0, vocabulary_size)` and not a sentinel id.
            None appends nothing.
        padding_token_id: int, the id of padding in the inputs and outputs,
            in `[0, vocabulary_size)` and not a sentinel id. Defaults to 0.
        seed: optional int, the seed of `map_over` and of calls without
            `seed`.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: int token ids `[batch, length]` or `[length]` with real
            tokens first and `padding_token_id` after them, a ragged
            `[batch, None]` (needs `sequence_length`), or a dict with
            `token_ids` and optionally `padding_mask` (other keys pass
            through). Each sequence needs at least 2 real tokens.
        seed: optional stateless seed, int tensor `[2]`.

    Returns:
        A dict with `encoder_token_ids` `[..., inputs_length]`,
        `encoder_padding_mask` (bool) `[..., inputs_length]`, `target_ids`
        `[..., targets_length]` and `target_padding_mask` (bool)
        `[..., targets_length]`.

    Reference:
        Raffel et al., 2020, "Exploring the Limits of Transfer Learning with
        a Unified Text-to-Text Transformer", https://arxiv.org/abs/1910.10683

    Example:

    >>> corrupt = SpanCorruption(
    ...     vocabulary_size=1000, sequence_length=32, eos_token_id=3, seed=0)
    >>> ids = tf.reshape(tf.range(5, 5 + 8 * 32), (8, 32))
    >>> ds = corrupt.map_over(tf.data.Dataset.from_tensor_slices(ids).batch(4))
    >>> batch = next(iter(ds))
    >>> batch["encoder_token_ids"].shape  # 32 - 5 noise + 2 sentinels + EOS
    TensorShape([4, 30])
    >>> batch["target_ids"].shape  # 2 sentinels + 5 noise + EOS
    TensorShape([4, 8])
    >>> batch["target_ids"][0].numpy().tolist()
    [999, 22, 23, 998, 34, 35, 36, 3]
    >>> batch["encoder_token_ids"][0, 15:].numpy().tolist()
    [20, 21, 999, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 998, 3]
    """

    def __init__(
        self,
        noise_density=0.15,
        mean_noise_span_length=3.0,
        vocabulary_size=None,
        sentinel_ids=None,
        num_sentinels=None,
        sequence_length=None,
        inputs_length=None,
        targets_length=None,
        eos_token_id=None,
        padding_token_id=0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if not _is_real(noise_density) or not 0.0 < noise_density < 1.0:
            raise ValueError(
                "`noise_density` must be a float in (0, 1), the fraction of "
                f"tokens to corrupt. Received: noise_density={noise_density!r}. "
                "T5 uses 0.15."
            )
        if not _is_real(mean_noise_span_length) or not mean_noise_span_length >= 1.0:
            raise ValueError(
                "`mean_noise_span_length` must be a float >= 1. Received: "
                f"mean_noise_span_length={mean_noise_span_length!r}. T5 uses 3.0."
            )
        for name, value, minimum in (
            ("vocabulary_size", vocabulary_size, 1),
            ("num_sentinels", num_sentinels, 1),
            ("sequence_length", sequence_length, 2),
            ("inputs_length", inputs_length, 1),
            ("targets_length", targets_length, 1),
            ("seed", seed, None),
        ):
            if value is not None:
                _check_int(name, value, minimum)
        check_id("eos_token_id", eos_token_id, vocabulary_size, optional=True)
        check_id("padding_token_id", padding_token_id, vocabulary_size)
        if sentinel_ids is None and vocabulary_size is None:
            raise ValueError(
                "SpanCorruption needs `vocabulary_size` (sentinels default to "
                "its top ids) or explicit `sentinel_ids`."
            )
        self.noise_density = float(noise_density)
        self.mean_noise_span_length = float(mean_noise_span_length)
        self.vocabulary_size = vocabulary_size
        self.num_sentinels = num_sentinels
        self.sequence_length = sequence_length
        self.inputs_length = inputs_length
        self.targets_length = targets_length
        self.eos_token_id = eos_token_id
        self.padding_token_id = int(padding_token_id)
        self._set_seed(seed)
        self.sentinel_ids = None
        if sentinel_ids is not None:
            if isinstance(sentinel_ids, (int, np.integer)):
                sentinel_ids = [sentinel_ids]
            self.sentinel_ids = tuple(int(i) for i in sentinel_ids)
            self._check_sentinels(self.sentinel_ids)
        if sequence_length is not None:
            self._resolve(sequence_length)
        self.built = True

    # -- static configuration -------------------------------------------------

    def _check_sentinels(self, ids):
        if not ids:
            raise ValueError("`sentinel_ids` is empty; give at least one id.")
        if len(set(ids)) != len(ids):
            raise ValueError(f"`sentinel_ids` repeats an id: {list(ids)}.")
        bad = [i for i in ids if i < 0 or (self.vocabulary_size is not None and i >= self.vocabulary_size)]
        if bad:
            raise ValueError(
                f"`sentinel_ids` {bad} are outside the vocabulary [0, "
                f"{self.vocabulary_size}). Reserve the sentinels inside the "
                "model's vocabulary."
            )
        special = {self.padding_token_id, self.eos_token_id} & set(ids)
        if special:
            raise ValueError(
                f"`sentinel_ids` contain the padding or EOS id {sorted(special)} "
                f"(padding_token_id={self.padding_token_id}, "
                f"eos_token_id={self.eos_token_id}); sentinels must be ids of "
                "their own. Sentinels default to the top ids of the vocabulary "
                "counting down: give the EOS and padding other ids."
            )

    def _resolve(self, length):
        """`(sentinel_ids, inputs_length, targets_length)` for `length` real
        tokens at most; raises when the configuration cannot hold them."""
        if length < 2:
            raise ValueError(
                f"Sequences of length {length} are too short for span "
                "corruption: it needs at least 2 tokens (one corrupted, one "
                "kept). Raise `sequence_length`."
            )
        needed_inputs, needed_targets, spans = span_corruption_lengths(
            length, self.noise_density, self.mean_noise_span_length,
            add_eos=self.eos_token_id is not None,
        )
        if self.sentinel_ids is not None:
            sentinels = self.sentinel_ids
        else:
            count = self.num_sentinels or spans
            if count >= self.vocabulary_size:
                raise ValueError(
                    f"{count} sentinels do not fit a vocabulary of "
                    f"{self.vocabulary_size} ids. Lower `num_sentinels` or "
                    "enlarge `vocabulary_size`."
                )
            sentinels = tuple(self.vocabulary_size - 1 - k for k in range(count))
            self._check_sentinels(sentinels)
        if len(sentinels) < spans:
            raise ValueError(
                f"Sequences of {length} tokens get up to {spans} noise spans "
                f"but only {len(sentinels)} sentinel ids are available. Give "
                "more `sentinel_ids` / `num_sentinels` or a shorter "
                "`sequence_length`."
            )
        for name, given, needed in (
            ("inputs_length", self.inputs_length, needed_inputs),
            ("targets_length", self.targets_length, needed_targets),
        ):
            if given is not None and given < needed:
                raise ValueError(
                    f"`{name}={given}` is too short for sequences of {length} "
                    f"tokens with noise_density={self.noise_density} and "
                    f"mean_noise_span_length={self.mean_noise_span_length}: "
                    f"they need {name}={needed}. Raise it, leave it unset, or "
                    "lower `sequence_length`."
                )
        return (
            sentinels,
            self.inputs_length or needed_inputs,
            self.targets_length or needed_targets,
        )

    def output_lengths(self, length=None):
        """`(inputs_length, targets_length)` for inputs of `length` (default
        `sequence_length`) real tokens at most."""
        length = length or self.sequence_length
        if length is None:
            raise ValueError("Pass `length`: the layer has no `sequence_length`.")
        _, inputs_length, targets_length = self._resolve(int(length))
        return inputs_length, targets_length

    def resolved_sentinel_ids(self, length=None):
        """The sentinel ids used for inputs of `length` (default
        `sequence_length`) real tokens at most."""
        length = length or self.sequence_length
        if length is None:
            raise ValueError("Pass `length`: the layer has no `sequence_length`.")
        return self._resolve(int(length))[0]

    # -- call -----------------------------------------------------------------

    def call(self, inputs, seed=None):
        token_ids, given, extras = unpack_token_inputs(inputs, "SpanCorruption")
        padding_mask = given["padding_mask"]
        unbatched = token_ids.shape.rank == 1
        pad = tf.cast(self.padding_token_id, token_ids.dtype)
        if isinstance(token_ids, tf.RaggedTensor):
            if self.sequence_length is None:
                raise ValueError(
                    "Ragged token ids need a static length: pass "
                    "`sequence_length` to SpanCorruption."
                )
            if unbatched:
                token_ids = token_ids[None]
            lengths = tf.minimum(token_ids.row_lengths(), self.sequence_length)
            token_ids = token_ids.to_tensor(default_value=pad, shape=[None, self.sequence_length])
        else:
            if unbatched:
                token_ids = token_ids[None, :]
                if padding_mask is not None:
                    padding_mask = tf.convert_to_tensor(padding_mask)[None, :]
            if self.sequence_length is not None:
                token_ids = _fit_length(token_ids, self.sequence_length, pad)
                if padding_mask is not None:
                    padding_mask = _fit_length(tf.cast(padding_mask, tf.int32), self.sequence_length, 0)
            if padding_mask is None:
                padding_mask = tf.not_equal(token_ids, pad)
            lengths = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
        length = token_ids.shape[-1]
        if length is None:
            raise ValueError(
                "SpanCorruption needs a static sequence length: pass "
                "`sequence_length` or feed inputs of a static shape."
            )
        sentinels, inputs_length, targets_length = self._resolve(int(length))
        token_ids = self._check_tokens(token_ids, tf.cast(lengths, tf.int32), sentinels)
        seed = self._next_seed(seed)
        outputs = span_corruption(
            token_ids,
            lengths,
            seed,
            sentinel_ids=sentinels,
            inputs_length=inputs_length,
            targets_length=targets_length,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            eos_token_id=self.eos_token_id,
            padding_token_id=self.padding_token_id,
        )
        outputs = {key: outputs[key] for key in OUTPUT_KEYS}
        if unbatched:
            outputs = {k: tf.squeeze(v, axis=0) for k, v in outputs.items()}
        return {**extras, **outputs}

    def _check_tokens(self, token_ids, lengths, sentinels):
        """Fails on rows shorter than 2 tokens and on real tokens that are
        sentinel ids or outside the vocabulary."""
        real = tf.sequence_mask(lengths, tf.shape(token_ids)[1])
        shortest = tf.reduce_min(tf.concat([lengths, [2]], axis=0))
        checks = [
            tf.debugging.Assert(
                shortest >= 2,
                [
                    "SpanCorruption: a sequence has",
                    shortest,
                    "real tokens; span corruption needs at least 2 (one "
                    "corrupted, one kept). Filter out empty and one-token "
                    "documents before corrupting them.",
                ],
            )
        ]
        sentinel_tensor = tf.constant(sentinels, token_ids.dtype)
        is_sentinel = tf.reduce_any(
            tf.equal(token_ids[..., None], sentinel_tensor), axis=-1
        )
        collision = tf.reduce_any(tf.logical_and(is_sentinel, real))
        checks.append(
            tf.debugging.Assert(
                tf.logical_not(collision),
                [
                    "SpanCorruption: a real token id equals a sentinel id "
                    f"(sentinels {sentinels[0]}..{sentinels[-1]}). The "
                    "tokenizer must reserve the sentinel ids (append "
                    "<extra_id_k> tokens at the top of the vocabulary, e.g. "
                    "with kobjectives.data.add_sentinel_tokens), or pass "
                    "`sentinel_ids` that no token uses.",
                ],
            )
        )
        with tf.control_dependencies(checks):
            return check_token_ids(token_ids, "SpanCorruption", self.vocabulary_size, real)

    def compute_output_shape(self, input_shape):
        extras = {}
        if isinstance(input_shape, dict):
            extras = {k: v for k, v in input_shape.items() if k not in ("token_ids", "padding_mask")}
            input_shape = input_shape["token_ids"]
        input_shape = tuple(input_shape)
        inputs_length, targets_length = self.output_lengths(
            self.sequence_length or input_shape[-1]
        )
        prefix = input_shape[:-1]
        return {
            **extras,
            "encoder_token_ids": prefix + (inputs_length,),
            "encoder_padding_mask": prefix + (inputs_length,),
            "target_ids": prefix + (targets_length,),
            "target_padding_mask": prefix + (targets_length,),
        }

    def compute_output_spec(self, inputs, seed=None):
        extras = {}
        if isinstance(inputs, dict):
            extras = {k: v for k, v in inputs.items() if k not in ("token_ids", "padding_mask")}
            inputs = inputs["token_ids"]
        shapes = self.compute_output_shape(inputs.shape)
        dtype = inputs.dtype
        return {
            **extras,
            **{
                key: keras.KerasTensor(shapes[key], dtype="bool" if "mask" in key else dtype)
                for key in OUTPUT_KEYS
            },
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "noise_density": self.noise_density,
                "mean_noise_span_length": self.mean_noise_span_length,
                "vocabulary_size": self.vocabulary_size,
                "sentinel_ids": None if self.sentinel_ids is None else list(self.sentinel_ids),
                "num_sentinels": self.num_sentinels,
                "sequence_length": self.sequence_length,
                "inputs_length": self.inputs_length,
                "targets_length": self.targets_length,
                "eos_token_id": self.eos_token_id,
                "padding_token_id": self.padding_token_id,
                "seed": self.seed,
            }
        )
        return config
