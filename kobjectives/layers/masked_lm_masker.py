"""`MaskedLMMasker`: fast, seeded masked-LM masking for `tf.data`."""


import keras
import tensorflow as tf

from kobjectives.ops import masking
from kobjectives.layers.arguments import is_real as _is_real
from kobjectives.layers.arguments import check_distinct
from kobjectives.layers.arguments import check_id
from kobjectives.layers.arguments import check_int as _check_int
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_ids
from kobjectives.layers.token_inputs import check_token_ids
from kobjectives.layers.token_inputs import to_tensor
from kobjectives.layers.token_inputs import token_inputs

STRATEGIES = ("token", "whole_word", "span")


@keras.saving.register_keras_serializable(package="kobjectives")
class MaskedLMMasker(SeededLayer):
    """Masked language model masking: BERT token, whole-word or span masking.

    Prepares masked-LM training inputs from token ids, as a drop-in for
    `keras_hub.layers.MaskedLMMaskGenerator` (same argument names), but
    vectorized over the batch (random scores and sorts over `[batch, length]`
    instead of per-example ragged selection), stateless and seeded, and with
    three selection strategies:

    - `"token"` (Devlin et al., 2019): positions are chosen uniformly among
      the selectable tokens.
    - `"whole_word"` (Google's BERT release, "Whole Word Masking"): all
      WordPiece pieces of a word are selected together. Word boundaries come
      from `continuation_token_ids` (the ids of the vocabulary entries that
      continue a word, i.e. those starting with `"##"`), or, for dict inputs,
      from a `"word_starts"` bool tensor (`True` at each word's first piece),
      which takes precedence.
    - `"span"` (Joshi et al., 2020, SpanBERT): contiguous spans whose lengths
      follow a geometric distribution `Geo(span_geometric_p)` truncated at
      `max_span_length` (mean 3.8 for the defaults). Spans are made of tokens
      (SpanBERT additionally snaps spans to whole words) and never contain or
      cross special or padding positions.

    **Selection.** A row's selectable tokens are its real tokens whose id
    is not in `unselectable_token_ids` (padding and special tokens are never
    selected). Each strategy cuts them into chunks (tokens, words or
    geometric tiles), lays the chunks end to end in a uniformly random order
    and takes the first ones, aiming at `t = mask_selection_rate * n` tokens
    for `n` selectable tokens, so that the selected token fraction is
    unbiased for every strategy:

    - `"token"`: exactly `floor(t + u)` random tokens, `u ~ U[0, 1)`
      (stochastic rounding).
    - `"span"`: the tiles are consecutive runs of the selectable tokens with
      i.i.d. lengths (cut where a run of selectable tokens ends); tokens are
      taken until `floor(t + u)`, so the last span may be shorter.
    - `"whole_word"`: whole words only. The word straddling the target `t`
      is taken with probability equal to its share below `t`, so words are
      never cut and the expected count is still `t`.

    At most `mask_selection_length` tokens are selected per row. When that
    cap binds under `"whole_word"`, the first word (in the random order) that
    does not fit entirely is dropped together with all later ones, so some
    slots may stay unused. A row with fewer selectable tokens than needed
    just gets more zero `mask_weights`.

    **Replacement.** Each selected token independently becomes
    `mask_token_id` with probability `mask_token_rate`, a random id with
    probability `random_token_rate`, and stays unchanged otherwise. Random ids
    are uniform over the vocabulary minus `unselectable_token_ids`,
    `mask_token_id` and `padding_token_id`.

    **Randomness.** All random draws come from one stream of random words
    keyed by one integer seed of shape `[2]` per call (a Philox draw expanded
    by SplitMix64, see `kobjectives.ops.masking.random_words`). Pass it as
    `call(inputs, seed=...)` for full control: the same seed and input give
    the same masks. When omitted, the layer takes the next seed of its
    `keras.random.SeedGenerator(seed)` (stateful, like keras-hub: new masks on
    every call, but under a parallel `tf.data.Dataset.map` the order in which
    batches get seeds is not reproducible). For masks that are reproducible
    with parallel maps *and* new in every epoch, use
    `masker.map_over(dataset, seed=...)`: it zips the dataset with
    `tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`, one seed
    per element.

    **Speed.** Everything is batched tensor math (a threshold at each
    row's k-th largest random score instead of a sort, running sums as
    matrix products, one `tf.where` to list the selected positions): no
    per-example Python, no `tf.map_fn`. In a `tf.data` pipeline on a 2-core
    CPU it masks about 4x as many sequences per second as
    `keras_hub.layers.MaskedLMMaskGenerator` once both run at their steady
    rate, at under a quarter of its CPU time (`benchmarks/masking.py`,
    `benchmarks/RESULTS.md`).

    Args:
        vocabulary_size: int, the size of the vocabulary.
        mask_selection_rate: float in `[0, 1]`, the expected fraction of
            selectable tokens that are selected for prediction.
        mask_token_id: int, the id of the mask token, in
            `[0, vocabulary_size)` and not `padding_token_id`.
        mask_selection_length: int >= 0, the number of prediction slots (the
            width of `mask_positions`, `mask_ids` and `mask_weights`) and the
            most tokens selected per sequence (0 selects nothing).
        unselectable_token_ids: sequence of ids never selected (and never
            drawn as random replacements), e.g. `[CLS]`, `[SEP]`, `[PAD]`.
            Defaults to `(0,)`.
        mask_token_rate: float, probability that a selected token becomes
            `mask_token_id`. Defaults to `0.8`.
        random_token_rate: float, probability that a selected token becomes a
            random id. `mask_token_rate + random_token_rate <= 1`; the rest
            stay unchanged. Defaults to `0.1`.
        strategy: `"token"`, `"whole_word"` or `"span"`. Defaults to
            `"token"`.
        seed: int or `None`, initial seed of the layer's seed generator (and
            the default seed of `map_over`).
        padding_token_id: int in `[0, vocabulary_size)`, the id used for
            padding. Without an explicit `padding_mask`, positions holding it
            are padding. Ragged inputs are padded with it. Defaults to `0`.
        sequence_length: int or `None`. When set, inputs are padded or
            truncated to it: ragged ones (returned dense, the static-shape
            path for `tf.data`), dense ones, and in a dict the per-token keys
            (every value of exactly the token ids' static shape, e.g.
            `"segment_ids"`, padded with 0). When `None`, ragged inputs are
            masked as one batch padded to its longest row and `"token_ids"`
            and `"padding_mask"` come back ragged, as from keras-hub.
        continuation_token_ids: sequence of ids that continue a word (for
            `"whole_word"`), e.g. all `"##..."` entries of a WordPiece
            vocabulary.
        span_geometric_p: float in `(0, 1]`, the `p` of the span length
            distribution (for `"span"`). Defaults to `0.2`.
        max_span_length: int >= 1, the longest span (for `"span"`). Defaults
            to `10`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, ...).

    Input:
        Integer token ids `[batch, length]` or `[length]` (int32 or int64;
        other integer types are cast to int32), a dense tensor, a
        `tf.RaggedTensor` or nested Python lists (ragged or not), or a dict
        of dense tensors with `"token_ids"` and optionally `"padding_mask"`
        and `"word_starts"` (consumed); other dict keys pass through (cut to
        `sequence_length` where they are per-token, see `sequence_length`).
        Without a `"padding_mask"`, positions holding `padding_token_id` are
        padding. Every id must be in `[0, vocabulary_size)`, otherwise the
        call fails with an error naming the id and the vocabulary size.

    Output:
        A dict with

        - `"token_ids"`: the masked ids, same shape and dtype as the input
          (`[batch, sequence_length]` for ragged input with
          `sequence_length`; ragged, like the input, without it).
        - `"padding_mask"`: bool, same shape, `True` on real tokens.
        - `"mask_positions"`: int32 `[batch, mask_selection_length]`, the
          selected positions in ascending order, 0 in unused slots.
        - `"mask_ids"`: `[batch, mask_selection_length]`, the original ids at
          `mask_positions`, 0 in unused slots.
        - `"mask_weights"`: float32 `[batch, mask_selection_length]`, 1.0 for
          used slots and 0.0 otherwise.

        (No batch axis for unbatched input.) All shapes are static when the
        input's length is. Rows of length 0 and empty batches give unused
        slots (an empty batch gives an empty batch).

    **keras-hub compatibility.** `keras_hub.layers.MaskedLMMaskGenerator`'s
    own tests pass against this layer (`tests/layers/
    test_masked_lm_masker.py`, `test_keras_hub_*`): the same arguments,
    ragged or dense lists, unbatched input, `mask_selection_length=0`. The
    masks differ (other random draws); `mask_selection_length=None`
    (keras-hub's ragged slots) is not supported: the slots are static.

    References:
        - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805) (BERT).
        - [Joshi et al., 2020](https://arxiv.org/abs/1907.10529) (SpanBERT).
        - [Whole Word Masking](https://github.com/google-research/bert),
          Google's BERT release (2019-05-31 models).

    Example:

    >>> pad_id, cls_id, sep_id, mask_id = 0, 1, 2, 3
    >>> masker = MaskedLMMasker(
    ...     vocabulary_size=100,
    ...     mask_selection_rate=0.25,
    ...     mask_token_id=mask_id,
    ...     mask_selection_length=4,
    ...     unselectable_token_ids=[pad_id, cls_id, sep_id],
    ...     seed=42,
    ... )
    >>> batch = tf.constant([
    ...     [cls_id, 14, 15, 16, sep_id, 17, 18, sep_id, pad_id, pad_id],
    ...     [cls_id, 24, 25, sep_id, 26, 27, 28, 29, sep_id, pad_id],
    ... ])
    >>> outputs = masker(batch)
    >>> outputs["token_ids"].numpy().tolist()  # 26 selected but kept as is
    [[1, 3, 15, 16, 2, 17, 18, 2, 0, 0], [1, 24, 25, 2, 26, 27, 3, 29, 2, 0]]
    >>> outputs["mask_positions"].numpy().tolist()
    [[1, 0, 0, 0], [4, 6, 0, 0]]
    >>> outputs["mask_ids"].numpy().tolist()
    [[14, 0, 0, 0], [26, 28, 0, 0]]
    >>> outputs["mask_weights"].numpy().tolist()
    [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]

    In `tf.data`: reproducible masks, new ones in every epoch.

    >>> ds = tf.data.Dataset.from_tensor_slices(batch).batch(2)
    >>> ds = masker.map_over(ds, seed=7, num_parallel_calls=tf.data.AUTOTUNE)
    >>> ds.element_spec["mask_positions"]
    TensorSpec(shape=(None, 4), dtype=tf.int32, name=None)
    """

    def __init__(
        self,
        vocabulary_size,
        mask_selection_rate,
        mask_token_id,
        mask_selection_length,
        unselectable_token_ids=(0,),
        mask_token_rate=0.8,
        random_token_rate=0.1,
        strategy="token",
        seed=None,
        padding_token_id=0,
        sequence_length=None,
        continuation_token_ids=None,
        span_geometric_p=0.2,
        max_span_length=10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Take tf tensors (dense or ragged), lists and dicts as they come.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

        _check_int("vocabulary_size", vocabulary_size, minimum=1)
        _check_int("mask_selection_length", mask_selection_length, minimum=0)
        for name, value in (
            ("mask_selection_rate", mask_selection_rate),
            ("mask_token_rate", mask_token_rate),
            ("random_token_rate", random_token_rate),
        ):
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{name}` must be a float in [0, 1]. Received: "
                    f"{name}={value!r}. Pass a probability such as 0.15."
                )
        if mask_token_rate + random_token_rate > 1.0 + 1e-9:
            raise ValueError(
                "`mask_token_rate + random_token_rate` must be <= 1 (the rest "
                "of the selected tokens stay unchanged). Received: "
                f"mask_token_rate={mask_token_rate}, "
                f"random_token_rate={random_token_rate}. Lower one of them."
            )
        if strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: "
                f"strategy={strategy!r}."
            )
        check_id("mask_token_id", mask_token_id, vocabulary_size)
        check_id("padding_token_id", padding_token_id, vocabulary_size)
        check_distinct(mask_token_id=mask_token_id, padding_token_id=padding_token_id)
        if sequence_length is not None:
            _check_int("sequence_length", sequence_length, minimum=1)
        if seed is not None:
            _check_int("seed", seed)
        if not _is_real(span_geometric_p) or not 0.0 < span_geometric_p <= 1.0:
            raise ValueError(
                "`span_geometric_p` must be in (0, 1]. Received: "
                f"span_geometric_p={span_geometric_p!r}. SpanBERT uses 0.2."
            )
        _check_int("max_span_length", max_span_length, minimum=1)
        unselectable_token_ids = check_ids(
            "unselectable_token_ids", unselectable_token_ids, vocabulary_size
        )
        if continuation_token_ids is not None:
            continuation_token_ids = check_ids(
                "continuation_token_ids",
                continuation_token_ids,
                vocabulary_size,
            )

        self.vocabulary_size = int(vocabulary_size)
        self.mask_selection_rate = float(mask_selection_rate)
        self.mask_token_id = int(mask_token_id)
        self.mask_selection_length = int(mask_selection_length)
        self.unselectable_token_ids = unselectable_token_ids
        self.mask_token_rate = float(mask_token_rate)
        self.random_token_rate = float(random_token_rate)
        self.strategy = strategy
        self._set_seed(seed)
        self.padding_token_id = int(padding_token_id)
        self.sequence_length = sequence_length
        self.continuation_token_ids = continuation_token_ids
        self.span_geometric_p = float(span_geometric_p)
        self.max_span_length = int(max_span_length)

        excluded = set(unselectable_token_ids)
        excluded |= {self.mask_token_id, self.padding_token_id}
        self._excluded_ids = sorted(excluded)
        if self.random_token_rate > 0 and len(excluded) >= vocabulary_size:
            raise ValueError(
                "`random_token_rate` > 0 but every id is special (unselectable"
                ", mask or padding), so there is no id to draw random "
                "replacements from. Set random_token_rate=0.0."
            )
        self.built = True

    def call(self, inputs, seed=None):
        """Masks `inputs`.

        Args:
            inputs: token ids (dense, ragged, nested list) or a dict, see the
                class docstring.
            seed: optional stateless seed, an integer tensor of shape `[2]`.
                The same seed and input give the same masks. When `None`, the
                layer's seed generator supplies the next seed.
        """
        row_lengths = None
        if self.sequence_length is None and not isinstance(inputs, dict):
            inputs = to_tensor(inputs)
            if isinstance(inputs, tf.RaggedTensor):
                # keras-hub's layout: masked as a dense batch padded to its
                # longest row, returned ragged.
                row_lengths = inputs.row_lengths()
                inputs = {
                    "token_ids": inputs.to_tensor(
                        default_value=tf.cast(self.padding_token_id, inputs.dtype)
                    ),
                    "padding_mask": tf.sequence_mask(row_lengths),
                }
        token_ids, given, extras, unbatched = token_inputs(
            inputs, "MaskedLMMasker", self.sequence_length, self.padding_token_id,
            companions=("padding_mask", "word_starts"),
        )
        padding_mask, word_starts = given["padding_mask"], given["word_starts"]
        unselectable_ids = self.unselectable_token_ids
        if padding_mask is None:
            padding_mask = tf.not_equal(
                token_ids, tf.cast(self.padding_token_id, token_ids.dtype)
            )
            # Padding positions are already excluded by the padding mask.
            if self.strategy != "whole_word":
                unselectable_ids = tuple(
                    i for i in unselectable_ids if i != self.padding_token_id
                )
        padding_mask = tf.cast(padding_mask, "bool")
        token_ids = check_token_ids(token_ids, "MaskedLMMasker", self.vocabulary_size)

        seed = self._next_seed(seed)
        outputs = masking.mask_tokens(
            token_ids,
            padding_mask,
            seed,
            word_starts_mask=word_starts,
            **self._masking_kwargs(unselectable_ids),
        )
        outputs["padding_mask"] = padding_mask
        if row_lengths is not None:
            for key in ("token_ids", "padding_mask"):
                outputs[key] = tf.RaggedTensor.from_tensor(outputs[key], lengths=row_lengths)
        if unbatched:
            outputs = {k: tf.squeeze(v, axis=0) for k, v in outputs.items()}
        return {**extras, **outputs}

    def _masking_kwargs(self, unselectable_ids):
        return dict(
            vocabulary_size=self.vocabulary_size,
            mask_selection_rate=self.mask_selection_rate,
            mask_token_id=self.mask_token_id,
            mask_selection_length=self.mask_selection_length,
            unselectable_ids=unselectable_ids,
            excluded_ids=self._excluded_ids,
            mask_token_rate=self.mask_token_rate,
            random_token_rate=self.random_token_rate,
            strategy=self.strategy,
            continuation_ids=self.continuation_token_ids,
            span_geometric_p=self.span_geometric_p,
            max_span_length=self.max_span_length,
        )

    def _output_shapes(self, token_shape):
        token_shape = tuple(token_shape)
        if self.sequence_length is not None:
            token_shape = token_shape[:-1] + (self.sequence_length,)
        return token_shape, token_shape[:-1] + (self.mask_selection_length,)

    def compute_output_shape(self, input_shape):
        extras = {}
        if isinstance(input_shape, dict):
            extras = {
                k: v
                for k, v in input_shape.items()
                if k not in ("token_ids", "padding_mask", "word_starts")
            }
            input_shape = input_shape["token_ids"]
        token_shape, slot_shape = self._output_shapes(input_shape)
        return {
            **extras,
            "token_ids": token_shape,
            "padding_mask": token_shape,
            "mask_positions": slot_shape,
            "mask_ids": slot_shape,
            "mask_weights": slot_shape,
        }

    def compute_output_spec(self, inputs, seed=None):
        extras = {}
        if isinstance(inputs, dict):
            extras = {
                k: v
                for k, v in inputs.items()
                if k not in ("token_ids", "padding_mask", "word_starts")
            }
            inputs = inputs["token_ids"]
        token_shape, slot_shape = self._output_shapes(inputs.shape)
        dtype = inputs.dtype
        return {
            **extras,
            "token_ids": keras.KerasTensor(token_shape, dtype=dtype),
            "padding_mask": keras.KerasTensor(token_shape, dtype="bool"),
            "mask_positions": keras.KerasTensor(slot_shape, dtype="int32"),
            "mask_ids": keras.KerasTensor(slot_shape, dtype=dtype),
            "mask_weights": keras.KerasTensor(slot_shape, dtype="float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "mask_selection_rate": self.mask_selection_rate,
                "mask_token_id": self.mask_token_id,
                "mask_selection_length": self.mask_selection_length,
                "unselectable_token_ids": list(self.unselectable_token_ids),
                "mask_token_rate": self.mask_token_rate,
                "random_token_rate": self.random_token_rate,
                "strategy": self.strategy,
                "seed": self.seed,
                "padding_token_id": self.padding_token_id,
                "sequence_length": self.sequence_length,
                "continuation_token_ids": (
                    None
                    if self.continuation_token_ids is None
                    else list(self.continuation_token_ids)
                ),
                "span_geometric_p": self.span_geometric_p,
                "max_span_length": self.max_span_length,
            }
        )
        return config
