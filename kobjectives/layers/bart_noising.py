"""`BartNoising`: BART's document noising for `tf.data`."""

import math

import keras
import tensorflow as tf

from kobjectives.ops import bart_noising
from kobjectives.layers.arguments import is_real as _is_real
from kobjectives.layers.arguments import check_int as _check_int
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_ids as _check_ids
from kobjectives.layers.token_inputs import check_token_ids
from kobjectives.layers.token_inputs import unpack_token_inputs

_RATES = (
    "text_infilling_rate",
    "token_deletion_rate",
    "sentence_permutation_rate",
    "document_rotation_rate",
)
_MAX_LAMBDA = 1000.0


@keras.saving.register_keras_serializable(package="kobjectives")
class BartNoising(SeededLayer):
    """BART noising: text infilling, token deletion, sentence permutation and
    document rotation, each with its own rate.

    Corrupts token ids into the encoder input of a BART-style denoising
    autoencoder (the decoder reconstructs the original). The four
    transformations of Lewis et al. (2020), applied in this order (as
    fairseq's `DenoisingDataset`):

    1. **Sentence permutation**: the text is cut into sentences after each
       (run of) `sentence_end_token_ids`; a fraction
       `sentence_permutation_rate` of them (`floor(rate * N + u)` of `N`,
       `u ~ U[0, 1)`) is put in a uniformly random order among their places.
       Without `sentence_end_token_ids` the text is one sentence.
    2. **Text infilling**: spans covering a fraction `text_infilling_rate` of
       the selectable tokens (exactly `floor(rate * n + u)` of `n`) are each
       replaced by ONE `mask_token_id`. Span lengths are drawn from
       `Poisson(poisson_lambda)`, taken while the covered total before a span
       is short of the target, the last one cut to hit it exactly; a
       zero-length span inserts a mask token. The spans and the uncovered
       tokens are arranged in a uniformly random order: spans never overlap
       and never reach into the special tokens at the ends.
    3. **Token deletion**: a fraction `token_deletion_rate` of the selectable
       tokens (`floor(rate * n + u)`, taken among those no span covers) is
       deleted. Needs `text_infilling_rate + token_deletion_rate <= 1`.
    4. **Document rotation**: with probability `document_rotation_rate` the
       text is rotated to start at a uniformly random token (other than the
       current first).

    **Special tokens.** Tokens in `unselectable_token_ids` are never masked
    or deleted. Those before the first selectable token (e.g. `[CLS]`,
    `<s>`) and after the last one (e.g. `[SEP]`, `</s>`) stay at the start
    and end, outside permutation and rotation. One inside the text stays in
    it (it moves with its sentence or the rotation; if it falls inside a
    span, it follows the span's mask).

    **Lengths.** Each row is written to `sequence_length` places and padded
    with 0. Noising usually shortens a row (a span of `l` tokens becomes one
    mask), but zero-length spans lengthen it; a row that comes out longer
    than `sequence_length` loses the end of its text, and its trailing
    special tokens still end it.

    **Randomness.** Stateless and seeded: each row draws its random numbers
    with `tf.random.stateless_uniform` under its own seed, so a row's noise
    depends only on the row and its seed (the same in a batch or alone).
    `call(inputs, seed=...)` takes a seed of shape `[2]` (for a batch, row
    `i` uses `tf.random.experimental.stateless_fold_in(seed, i)`; for one
    unbatched sequence it is the row's seed) or, for a batch, one seed per
    row `[batch, 2]`. Without `seed`, the layer takes the next seed of its
    `keras.random.SeedGenerator(seed)` (new noise on every call; under a
    parallel `tf.data` map the order in which batches get seeds is not
    reproducible). `noiser.map_over(dataset, seed=...)` gives noise that is
    reproducible under parallel maps and new in every epoch.

    Args:
        mask_token_id: int >= 1, the id of the mask token (0 is padding).
        sequence_length: int >= 1, the output length; at least the input's
            length.
        text_infilling_rate: float in `[0, 1]`, the fraction of selectable
            tokens covered by masked spans. Defaults to `0.3` (BART).
        poisson_lambda: float in `(0, 1000]`, the mean span length. Defaults
            to `3.0` (BART).
        token_deletion_rate: float in `[0, 1]`, the fraction of selectable
            tokens deleted. Defaults to `0.0`.
        sentence_permutation_rate: float in `[0, 1]`, the fraction of
            sentences shuffled. Defaults to `1.0` (BART).
        document_rotation_rate: float in `[0, 1]`, the probability of
            rotating a row. Defaults to `0.0`.
        sentence_end_token_ids: sequence of ids that end a sentence (e.g. the
            ids of `"."`, `"!"`, `"?"`). Defaults to `()` (no permutation).
        unselectable_token_ids: sequence of special ids, never masked or
            deleted. Defaults to `(0,)`.
        vocabulary_size: optional int; when set, `mask_token_id` and the
            input ids must lie in `[0, vocabulary_size)`.
        seed: int or `None`, the initial seed of the layer's seed generator
            (and the default seed of `map_over`).
        **kwargs: standard `keras.layers.Layer` arguments (`name`, ...).

    Input:
        Integer token ids `[batch, length]` or `[length]` with `length <=
        sequence_length`, padded at the end with 0 (trailing zeros are
        padding); or a `tf.RaggedTensor` `[batch, None]` (rows of at most
        `sequence_length` tokens); or a dict with `"token_ids"` and
        optionally a bool `"padding_mask"` (other keys pass through).

    Output:
        A dict with `"token_ids"`, the noised ids, int32 `[batch,
        sequence_length]` (`[sequence_length]` unbatched, padded with 0) and
        `"padding_mask"`, bool, same shape, `True` on the noised tokens.

    References:
        - [Lewis et al., 2020](https://arxiv.org/abs/1910.13461) (BART),
          section 2.2 and fairseq's `DenoisingDataset`.

    Example:

    >>> bos, eos, mask, period = 1, 2, 3, 4
    >>> noiser = BartNoising(
    ...     mask_token_id=mask,
    ...     sequence_length=16,
    ...     sentence_end_token_ids=[period],
    ...     unselectable_token_ids=[0, bos, eos],
    ...     seed=42,
    ... )
    >>> batch = tf.constant([
    ...     [bos, 10, 11, 12, period, 13, 14, period, eos, 0, 0, 0],
    ...     [bos, 20, 21, 22, 23, 24, 25, 26, 27, period, eos, 0],
    ... ])
    >>> outputs = noiser(batch)
    >>> outputs["token_ids"].numpy().tolist()
    [[1, 10, 3, 4, 13, 14, 4, 3, 2, 0, 0, 0, 0, 0, 0, 0],
     [1, 3, 22, 23, 24, 25, 26, 27, 4, 2, 0, 0, 0, 0, 0, 0]]
    >>> outputs["padding_mask"].numpy().sum(axis=1).tolist()
    [9, 10]

    In `tf.data`: reproducible noise, new in every epoch.

    >>> ds = tf.data.Dataset.from_tensor_slices(batch).batch(2)
    >>> ds = noiser.map_over(ds, seed=7, num_parallel_calls=tf.data.AUTOTUNE)
    >>> ds.element_spec["token_ids"]
    TensorSpec(shape=(None, 16), dtype=tf.int32, name=None)
    >>> first, second = ([b["token_ids"].numpy().tolist() for b in ds] for _ in range(2))
    >>> first == second
    False
    """

    def __init__(
        self,
        mask_token_id,
        sequence_length,
        text_infilling_rate=0.3,
        poisson_lambda=3.0,
        token_deletion_rate=0.0,
        sentence_permutation_rate=1.0,
        document_rotation_rate=0.0,
        sentence_end_token_ids=(),
        unselectable_token_ids=(0,),
        vocabulary_size=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

        if vocabulary_size is not None:
            _check_int("vocabulary_size", vocabulary_size, minimum=1)
        _check_int("mask_token_id", mask_token_id, minimum=0)
        if vocabulary_size is not None and mask_token_id >= vocabulary_size:
            raise ValueError(
                "`mask_token_id` must be in [0, vocabulary_size - 1] = "
                f"[0, {vocabulary_size - 1}]. Received: "
                f"mask_token_id={mask_token_id}. Use the tokenizer's mask id "
                "or enlarge `vocabulary_size`."
            )
        if mask_token_id == 0:
            raise ValueError(
                "`mask_token_id` must not be 0: 0 is the padding id of "
                "BartNoising's inputs and outputs. Received: mask_token_id=0. "
                "Use the tokenizer's mask id."
            )
        _check_int("sequence_length", sequence_length, minimum=1)
        rates = dict(
            text_infilling_rate=text_infilling_rate,
            token_deletion_rate=token_deletion_rate,
            sentence_permutation_rate=sentence_permutation_rate,
            document_rotation_rate=document_rotation_rate,
        )
        for name, value in rates.items():
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{name}` must be a float in [0, 1]. Received: "
                    f"{name}={value!r}. Pass a fraction such as 0.3 (0.0 "
                    "turns this noise off)."
                )
        if text_infilling_rate + token_deletion_rate > 1.0 + 1e-9:
            raise ValueError(
                "`text_infilling_rate + token_deletion_rate` must be <= 1 "
                "(deleted tokens are taken from those no span covers). "
                f"Received: text_infilling_rate={text_infilling_rate}, "
                f"token_deletion_rate={token_deletion_rate}. Lower one."
            )
        if (
            not _is_real(poisson_lambda)
            or not math.isfinite(poisson_lambda)
            or not 0.0 < poisson_lambda <= _MAX_LAMBDA
        ):
            raise ValueError(
                f"`poisson_lambda` must be a float in (0, {_MAX_LAMBDA:g}], "
                f"the mean span length. Received: "
                f"poisson_lambda={poisson_lambda!r}. BART uses 3.0."
            )
        if seed is not None:
            _check_int("seed", seed)
        sentence_end_token_ids = _check_ids(
            "sentence_end_token_ids", sentence_end_token_ids, vocabulary_size
        )
        unselectable_token_ids = _check_ids(
            "unselectable_token_ids", unselectable_token_ids, vocabulary_size
        )

        self.mask_token_id = int(mask_token_id)
        self.sequence_length = int(sequence_length)
        self.text_infilling_rate = float(text_infilling_rate)
        self.poisson_lambda = float(poisson_lambda)
        self.token_deletion_rate = float(token_deletion_rate)
        self.sentence_permutation_rate = float(sentence_permutation_rate)
        self.document_rotation_rate = float(document_rotation_rate)
        self.sentence_end_token_ids = sentence_end_token_ids
        self.unselectable_token_ids = unselectable_token_ids
        self.vocabulary_size = (
            None if vocabulary_size is None else int(vocabulary_size)
        )
        self._set_seed(seed)
        self.built = True

    def call(self, inputs, seed=None):
        """Noises `inputs`.

        Args:
            inputs: token ids (dense, ragged or a nested list) or a dict, see
                the class docstring.
            seed: optional stateless seed: an int tensor `[2]`, or `[batch,
                2]` (one per row). The same seed and input give the same
                output. When `None`, the layer's seed generator supplies the
                next seed.
        """
        token_ids, given, extras = unpack_token_inputs(inputs, "BartNoising")
        padding_mask = given["padding_mask"]
        unbatched = token_ids.shape.rank == 1
        length = self.sequence_length
        if isinstance(token_ids, tf.RaggedTensor):
            if padding_mask is not None:
                raise ValueError(
                    "BartNoising: pass ragged token ids without a "
                    "'padding_mask'."
                )
            row_lengths = token_ids.row_lengths()
            check = tf.debugging.assert_less_equal(
                tf.reduce_max(tf.concat([row_lengths, [0]], 0)),
                tf.cast(length, row_lengths.dtype),
                message=(
                    "BartNoising: a row is longer than sequence_length="
                    f"{length}. Raise `sequence_length` or truncate the "
                    "rows first (e.g. with keras_hub.layers.StartEndPacker)."
                ),
            )
            with tf.control_dependencies([check]):
                real = tf.sequence_mask(row_lengths, length)
            token_ids = token_ids.to_tensor(shape=[None, length])
        else:
            if unbatched:
                token_ids = token_ids[None, :]
                if padding_mask is not None:
                    padding_mask = tf.convert_to_tensor(padding_mask)[None, :]
            static = token_ids.shape[1]
            if static is not None and static > length:
                raise ValueError(
                    f"`sequence_length` ({length}) is smaller than the input "
                    f"length ({static}). Pass sequence_length >= {static} "
                    "(zero-length spans can make a noised row longer than "
                    "its input) or truncate the input first."
                )
            if static is None:
                check = tf.debugging.assert_less_equal(
                    tf.shape(token_ids)[1],
                    length,
                    message=(
                        "BartNoising: the input is longer than "
                        f"sequence_length={length}. Raise `sequence_length` "
                        "or truncate the input first."
                    ),
                )
                with tf.control_dependencies([check]):
                    token_ids = tf.identity(token_ids)
            if padding_mask is None:
                nonzero = tf.cast(
                    tf.not_equal(token_ids, 0), "int32"
                )
                # Real up to the last non-zero id: trailing zeros are padding.
                real = tf.reverse(
                    tf.cumsum(tf.reverse(nonzero, [1]), axis=1), [1]
                ) > 0
            else:
                real = tf.cast(padding_mask, "bool")
            pad = length - tf.shape(token_ids)[1]
            token_ids = tf.pad(token_ids, [[0, 0], [0, pad]])
            real = tf.pad(real, [[0, 0], [0, pad]])
            token_ids = tf.ensure_shape(token_ids, [None, length])
            real = tf.ensure_shape(real, [None, length])
        token_ids = self._check_ids(token_ids)

        batch_size = tf.shape(token_ids)[0]
        seed = self._next_seed(seed)
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 2:
            if unbatched:
                raise ValueError(
                    "BartNoising: an unbatched input takes a seed of shape "
                    f"[2]. Received a seed of shape {seed.shape}."
                )
            seeds = seed
        elif seed.shape.rank == 1 and unbatched:
            seeds = seed[None, :]
        elif seed.shape.rank == 1:
            seeds = bart_noising.row_seeds(seed, batch_size)
        else:
            raise ValueError(
                "`seed` must have shape [2] or [batch, 2]. Received shape "
                f"{seed.shape}."
            )
        outputs = bart_noising.bart_noise(
            token_ids,
            real,
            seeds,
            mask_token_id=self.mask_token_id,
            sequence_length=length,
            text_infilling_rate=self.text_infilling_rate,
            poisson_lambda=self.poisson_lambda,
            token_deletion_rate=self.token_deletion_rate,
            sentence_permutation_rate=self.sentence_permutation_rate,
            document_rotation_rate=self.document_rotation_rate,
            sentence_end_ids=self.sentence_end_token_ids,
            unselectable_ids=self.unselectable_token_ids,
        )
        if unbatched:
            outputs = {k: tf.squeeze(v, axis=0) for k, v in outputs.items()}
        return {**extras, **outputs}

    def _check_ids(self, token_ids):
        """int32 ids; fails naming the id when one is negative or (with
        `vocabulary_size`) outside the vocabulary."""
        token_ids = check_token_ids(token_ids, "BartNoising", self.vocabulary_size)
        return tf.cast(token_ids, "int32")

    def _output_shape(self, token_shape):
        return tuple(token_shape)[:-1] + (self.sequence_length,)

    def compute_output_shape(self, input_shape):
        extras = {}
        if isinstance(input_shape, dict):
            extras = {
                k: v
                for k, v in input_shape.items()
                if k not in ("token_ids", "padding_mask")
            }
            input_shape = input_shape["token_ids"]
        shape = self._output_shape(input_shape)
        return {**extras, "token_ids": shape, "padding_mask": shape}

    def compute_output_spec(self, inputs, seed=None):
        extras = {}
        if isinstance(inputs, dict):
            extras = {
                k: v
                for k, v in inputs.items()
                if k not in ("token_ids", "padding_mask")
            }
            inputs = inputs["token_ids"]
        shape = self._output_shape(inputs.shape)
        return {
            **extras,
            "token_ids": keras.KerasTensor(shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(shape, dtype="bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mask_token_id": self.mask_token_id,
                "sequence_length": self.sequence_length,
                "text_infilling_rate": self.text_infilling_rate,
                "poisson_lambda": self.poisson_lambda,
                "token_deletion_rate": self.token_deletion_rate,
                "sentence_permutation_rate": self.sentence_permutation_rate,
                "document_rotation_rate": self.document_rotation_rate,
                "sentence_end_token_ids": list(self.sentence_end_token_ids),
                "unselectable_token_ids": list(self.unselectable_token_ids),
                "vocabulary_size": self.vocabulary_size,
                "seed": self.seed,
            }
        )
        return config
