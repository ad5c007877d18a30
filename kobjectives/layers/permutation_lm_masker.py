"""`PermutationLMMasker`: seeded permutation-LM (XLNet) inputs for `tf.data`."""

import numbers

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops import permutation_lm
from kobjectives.layers.arguments import check_int as _check_int
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_token_ids
from kobjectives.layers.token_inputs import token_inputs

_CONSUMED = ("token_ids", "padding_mask")


@keras.saving.register_keras_serializable(package="kobjectives")
class PermutationLMMasker(SeededLayer):
    """Permutation language modeling inputs: permutation mask and targets.

    Prepares XLNet's training inputs from token ids, with the semantics of
    XLNet's `_sample_mask` / `_local_perm` and HuggingFace's
    `DataCollatorForPermutationLanguageModeling`, vectorized over the batch,
    stateless and seeded, with static shapes (see
    `kobjectives.ops.permutation_lm` for the math):

    - **Targets**: each row is cut into segments; a segment draws a span
      length `s ~ U{1, ..., max_span_length}`, has the context length
      `int(s / plm_probability)` and holds `s` consecutive targets at a
      random offset, so about `plm_probability` of the tokens are targets.
      Padding and `unselectable_token_ids` (special tokens) are never
      targets. At most `num_predict` targets per row (the first ones in
      position order; later ones stay context), and a row never has all of
      its real tokens as targets (its first target is dropped), so every
      target sees at least one token.
    - **Factorization order**: a uniformly random order of the targets, all
      non-targets first. With `permutation_size=k`, XLNet's local
      permutation over blocks of `k` tokens (HuggingFace: `k = length / 2`,
      which needs an even length).
    - **`perm_mask[i, j] = 1`** iff token `i` may not see token `j`: `j` is a
      target not earlier than `i` in the order. So targets never see
      themselves or later targets, every token sees all non-targets, and
      non-targets see no target. Padding is not in `perm_mask`; the model
      hides it with `padding_mask`.
    - **`target_mapping`**: one-hot `[num_predict, length]` rows of the
      targets in position order (zero rows for unused slots), with the
      labels `target_ids` and `target_weights` (1 for a real target).

    Token ids are not changed: in XLNet the targets are hidden by the
    attention masks of the two-stream attention, not replaced by `[MASK]`.

    **Randomness.** One stateless seed `[2]` per call: `call(inputs,
    seed=...)` gives the same outputs for the same seed and input. Without a
    seed the layer's `keras.random.SeedGenerator(seed)` supplies one (new
    draws each call). `map_over(dataset, seed=...)` gives draws that are
    reproducible under parallel maps and new in every epoch.

    Args:
        plm_probability: float in `(0, 1]`, the fraction of tokens to
            predict. Defaults to `1/6` (XLNet).
        max_span_length: int >= 1, the longest span of consecutive targets.
            Defaults to `5` (XLNet).
        num_predict: int >= 1 or None, the number of prediction slots (the
            width of `target_mapping`, `target_ids`, ...) and the most
            targets per row. None means the sequence length (as
            HuggingFace). Use about `1.3 * plm_probability * length` to
            save compute (XLNet: 85 for 512 tokens).
        permutation_size: int or None. None: one random order of the whole
            sequence. An int `k`: XLNet's local permutation over blocks of
            `k` tokens; the sequence length must be a multiple of `k`.
        unselectable_token_ids: ids never chosen as targets (e.g. `[CLS]`,
            `[SEP]`, `[PAD]`). Defaults to `(0,)`.
        padding_token_id: int. Without an explicit `padding_mask`, positions
            holding it are padding; ragged inputs are padded with it.
            Defaults to `0`.
        sequence_length: int or None. Required for `tf.RaggedTensor` inputs;
            when set, dense inputs are padded or truncated to it.
        seed: int or None, the seed of the layer's seed generator and the
            default seed of `map_over`.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, ...).

    Input:
        Integer token ids `[batch, length]` or `[length]` (dense with a
        static length, or ragged with `sequence_length` set), or a dict with
        `"token_ids"` and optionally `"padding_mask"`; other keys (e.g.
        `"segment_ids"`) pass through unchanged.

    Output:
        A dict with `"token_ids"` (unchanged), `"padding_mask"` (bool),
        `"perm_mask"` float32 `[batch, length, length]`, `"target_mapping"`
        float32 `[batch, num_predict, length]`, `"target_positions"` int32
        `[batch, num_predict]`, `"target_ids"` `[batch, num_predict]` (the
        labels, 0 in unused slots) and `"target_weights"` float32
        `[batch, num_predict]` (no batch axis for unbatched input). All
        shapes are static.

    Reference:
        Yang et al., 2019, "XLNet: Generalized Autoregressive Pretraining for
        Language Understanding", https://arxiv.org/abs/1906.08237

    Example:

    >>> masker = PermutationLMMasker(
    ...     plm_probability=1 / 3, max_span_length=2, num_predict=4,
    ...     unselectable_token_ids=[0, 1, 2], seed=42)
    >>> batch = tf.constant([[1, 14, 15, 16, 17, 18, 19, 20, 21, 22, 2, 0],
    ...                      [1, 24, 25, 26, 27, 28, 29, 2, 0, 0, 0, 0]])
    >>> outputs = masker(batch)
    >>> outputs["perm_mask"].shape, outputs["target_mapping"].shape
    (TensorShape([2, 12, 12]), TensorShape([2, 4, 12]))
    >>> outputs["target_positions"].numpy().tolist()
    [[2, 3, 7, 0], [2, 3, 0, 0]]
    >>> outputs["target_ids"].numpy().tolist()
    [[15, 16, 20, 0], [25, 26, 0, 0]]
    >>> outputs["target_weights"].numpy().tolist()
    [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    >>> float(outputs["perm_mask"][0, 2, 2])  # a target never sees itself
    1.0

    In `tf.data`: reproducible targets, new in every epoch.

    >>> ds = tf.data.Dataset.from_tensor_slices(batch).batch(2)
    >>> ds = masker.map_over(ds, seed=7, num_parallel_calls=tf.data.AUTOTUNE)
    >>> ds.element_spec["perm_mask"]
    TensorSpec(shape=(None, 12, 12), dtype=tf.float32, name=None)
    """

    def __init__(
        self,
        plm_probability=1 / 6,
        max_span_length=5,
        num_predict=None,
        permutation_size=None,
        unselectable_token_ids=(0,),
        padding_token_id=0,
        sequence_length=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if (
            not isinstance(plm_probability, numbers.Real)
            or isinstance(plm_probability, (bool, np.bool_))
            or not 0.0 < plm_probability <= 1.0
        ):
            raise ValueError(
                "`plm_probability` must be a float in (0, 1]: the fraction of "
                f"tokens to predict. Received: plm_probability={plm_probability!r}. "
                "XLNet uses 1/6."
            )
        _check_int("max_span_length", max_span_length, minimum=1)
        if num_predict is not None:
            _check_int("num_predict", num_predict, minimum=1)
        if permutation_size is not None:
            _check_int("permutation_size", permutation_size, minimum=1)
        _check_int("padding_token_id", padding_token_id, minimum=0)
        if sequence_length is not None:
            _check_int("sequence_length", sequence_length, minimum=2)
            _check_divides(sequence_length, permutation_size)
        if seed is not None:
            _check_int("seed", seed)
        if isinstance(unselectable_token_ids, (int, np.integer)):
            unselectable_token_ids = [unselectable_token_ids]
        unselectable_token_ids = tuple(int(i) for i in unselectable_token_ids)
        if any(i < 0 for i in unselectable_token_ids):
            raise ValueError(
                "`unselectable_token_ids` must be ids >= 0. Received: "
                f"{list(unselectable_token_ids)}."
            )
        self.plm_probability = float(plm_probability)
        self.max_span_length = int(max_span_length)
        self.num_predict = None if num_predict is None else int(num_predict)
        self.permutation_size = None if permutation_size is None else int(permutation_size)
        self.unselectable_token_ids = unselectable_token_ids
        self.padding_token_id = int(padding_token_id)
        self.sequence_length = sequence_length
        self._set_seed(seed)
        self.built = True

    def call(self, inputs, seed=None):
        """Prepares the permutation-LM inputs of `inputs`.

        Args:
            inputs: token ids (dense, ragged, nested list) or a dict, see the
                class docstring.
            seed: optional stateless seed, an integer tensor of shape `[2]`.
        """
        token_ids, given, extras, unbatched = token_inputs(
            inputs, "PermutationLMMasker", self.sequence_length, self.padding_token_id
        )
        padding_mask = given["padding_mask"]
        length = token_ids.shape[-1]
        if length is None:
            raise ValueError(
                "PermutationLMMasker needs a static sequence length (the "
                "permutation mask is [length, length]). Pad the batches to a "
                "fixed length (e.g. keras_hub.layers.StartEndPacker) or set "
                "`sequence_length`."
            )
        if length < 2:
            raise ValueError(
                f"The sequence length must be >= 2 to have a target and some "
                f"context. Received length {length}."
            )
        _check_divides(length, self.permutation_size)
        if padding_mask is None:
            padding_mask = tf.not_equal(
                token_ids, tf.cast(self.padding_token_id, token_ids.dtype)
            )
        padding_mask = tf.cast(padding_mask, "bool")
        token_ids = check_token_ids(token_ids, "PermutationLMMasker")
        seed = self._next_seed(seed)
        outputs = permutation_lm.permutation_lm_inputs(
            token_ids,
            padding_mask,
            seed,
            plm_probability=self.plm_probability,
            max_span_length=self.max_span_length,
            num_predict=self.num_predict,
            permutation_size=self.permutation_size,
            unselectable_ids=self.unselectable_token_ids,
        )
        outputs["token_ids"] = token_ids
        outputs["padding_mask"] = padding_mask
        if unbatched:
            outputs = {k: tf.squeeze(v, axis=0) for k, v in outputs.items()}
        return {**extras, **outputs}

    def _shapes(self, token_shape):
        token_shape = tuple(token_shape)
        if self.sequence_length is not None:
            token_shape = token_shape[:-1] + (self.sequence_length,)
        length = token_shape[-1]
        slots = length if self.num_predict is None else self.num_predict
        lead = token_shape[:-1]
        return token_shape, lead + (length, length), lead + (slots, length), lead + (slots,)

    def compute_output_spec(self, inputs, seed=None):
        extras = {}
        if isinstance(inputs, dict):
            extras = {k: v for k, v in inputs.items() if k not in _CONSUMED}
            inputs = inputs["token_ids"]
        token_shape, square, mapping, slots = self._shapes(inputs.shape)
        dtype = inputs.dtype if inputs.dtype in ("int32", "int64") else "int32"
        return {
            **extras,
            "token_ids": keras.KerasTensor(token_shape, dtype=dtype),
            "padding_mask": keras.KerasTensor(token_shape, dtype="bool"),
            "perm_mask": keras.KerasTensor(square, dtype="float32"),
            "target_mapping": keras.KerasTensor(mapping, dtype="float32"),
            "target_positions": keras.KerasTensor(slots, dtype="int32"),
            "target_ids": keras.KerasTensor(slots, dtype=dtype),
            "target_weights": keras.KerasTensor(slots, dtype="float32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "plm_probability": self.plm_probability,
                "max_span_length": self.max_span_length,
                "num_predict": self.num_predict,
                "permutation_size": self.permutation_size,
                "unselectable_token_ids": list(self.unselectable_token_ids),
                "padding_token_id": self.padding_token_id,
                "sequence_length": self.sequence_length,
                "seed": self.seed,
            }
        )
        return config


def _check_divides(length, permutation_size):
    if permutation_size is not None and length % permutation_size:
        raise ValueError(
            f"The sequence length {length} is not a multiple of "
            f"permutation_size={permutation_size}: XLNet's local permutation "
            "cuts the sequence into blocks of `permutation_size` tokens "
            "(HuggingFace uses length / 2, so the length must be even). Pad "
            "to a multiple of it, or use permutation_size=None (one "
            "permutation of the whole sequence)."
        )
