"""`TextAugmenter`: two seeded EDA views of each text, for contrastive LM."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives.ops import augmentation
from kobjectives.layers.arguments import check_id
from kobjectives.layers.seeded_layer import SeededLayer
from kobjectives.layers.token_inputs import check_token_ids

VIEW_NAMES = ("anchor", "positive")


@keras.saving.register_keras_serializable(package="kobjectives")
class TextAugmenter(SeededLayer):
    """Makes two augmented views of each token sequence (EDA on token ids).

    Each view applies, in order, random deletion, insertion (a copy of a
    random word of the same text after a selectable token), adjacent swap and
    replacement (a random non-special vocabulary id), each at its configured
    per-token rate (Wei & Zou, 2019, without a thesaurus); see
    `kobjectives.ops.augmentation`. Special tokens and padding are never
    altered, and the two views are drawn independently. Training
    `kobjectives.objectives.ContrastiveEncoder` on the two views is the
    augmentation-based contrastive LM (recipe `contrastive_aug`).

    The ops are vectorized over the batch (a stable sort of position keys
    rather than ragged rows), keep the static `[batch, length]` shape, and
    draw from stateless random ops keyed by one `[2]` seed per call. Pass it
    as `call(inputs, seed=...)`; when omitted the layer's
    `keras.random.SeedGenerator(seed)` supplies one (new views per call, but
    not reproducible under parallel maps). `map_over(dataset, seed)` zips the
    dataset with `tf.data.Dataset.random(seed,
    rerandomize_each_iteration=True)`: the same seed gives the same views,
    every epoch gives new ones, also with parallel maps.

    keras-hub's `RandomDeletion` / `RandomSwap` are not used: they return
    ragged rows, run a per-row `map_fn` and draw from a stateful generator
    (or the same per-record hash every epoch).

    Args:
        vocabulary_size: int, the vocabulary size (replacement ids are drawn
            from `[0, vocabulary_size)` minus the special ids).
        deletion_rate: float in [0, 1], probability that a selectable token is
            deleted. Defaults to 0.1.
        insertion_rate: float in [0, 1], probability that a copy of a random
            word is inserted after a selectable token (insertions beyond the
            row's padding are dropped). Defaults to 0.
        replacement_rate: float in [0, 1], probability that a selectable token
            becomes a random id. Defaults to 0.
        swap_rate: float in [0, 1], probability that a selectable token swaps
            with its selectable right neighbour (non-overlapping). Defaults
            to 0.
        unselectable_token_ids: ids never altered (`[CLS]`, `[SEP]`, `[PAD]`,
            ...). Defaults to `(0,)`.
        padding_token_id: int in `[0, vocabulary_size)`, the padding id.
            Defaults to 0.
        seed: int or None, the seed of the layer's seed generator and the
            default seed of `map_over`.
        **kwargs: `keras.layers.Layer` arguments.

    Input:
        int token ids `[batch, length]` or `[length]` (padding where
        `token_ids == padding_token_id`), or a dict with `"token_ids"` and
        optionally `"padding_mask"` and `"segment_ids"` of the same shape
        (single-segment text). Other keys pass through unchanged. Every real
        token id must be in `[0, vocabulary_size)`, otherwise the call fails
        naming the id.

    Output:
        `{"anchor": view, "positive": view}`, each view a dict with
        `"token_ids"` (input dtype), `"padding_mask"` (bool) and, where the
        input had them, `"segment_ids"` (zeros), all of the input's static
        shape: what `ContrastiveEncoder` takes as `x`.

    Reference:
        Wei & Zou, 2019, "EDA: Easy Data Augmentation Techniques for Boosting
        Performance on Text Classification Tasks",
        https://arxiv.org/abs/1901.11196.

    Example:

    >>> import tensorflow as tf
    >>> augmenter = TextAugmenter(vocabulary_size=100, deletion_rate=0.3,
    ...                           unselectable_token_ids=(0, 1, 2), seed=0)
    >>> ids = tf.constant([[1, 10, 11, 12, 13, 2, 0, 0]])
    >>> views = augmenter(ids, seed=tf.constant([1, 2]))
    >>> views["anchor"]["token_ids"].shape
    TensorShape([1, 8])
    """

    def __init__(
        self,
        vocabulary_size,
        deletion_rate=0.1,
        insertion_rate=0.0,
        replacement_rate=0.0,
        swap_rate=0.0,
        unselectable_token_ids=(0,),
        padding_token_id=0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, (int, np.integer)) or vocabulary_size < 1:
            raise ValueError(
                f"`vocabulary_size` must be a positive int. Received: vocabulary_size={vocabulary_size!r}"
            )
        rates = dict(
            deletion_rate=deletion_rate,
            insertion_rate=insertion_rate,
            replacement_rate=replacement_rate,
            swap_rate=swap_rate,
        )
        for name, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a float in [0, 1]. Received: {name}={value!r}")
        self.vocabulary_size = int(vocabulary_size)
        self.deletion_rate = float(deletion_rate)
        self.insertion_rate = float(insertion_rate)
        self.replacement_rate = float(replacement_rate)
        self.swap_rate = float(swap_rate)
        if isinstance(unselectable_token_ids, (int, np.integer)):
            unselectable_token_ids = (unselectable_token_ids,)
        self.unselectable_token_ids = tuple(int(i) for i in unselectable_token_ids)
        bad = [i for i in self.unselectable_token_ids if not 0 <= i < self.vocabulary_size]
        if bad:
            raise ValueError(
                f"`unselectable_token_ids` must be in [0, {self.vocabulary_size - 1}]. "
                f"Received out-of-range ids {bad}."
            )
        self.padding_token_id = check_id("padding_token_id", padding_token_id, self.vocabulary_size)
        excluded = set(self.unselectable_token_ids) | {self.padding_token_id}
        if self.replacement_rate > 0 and len(excluded) >= self.vocabulary_size:
            raise ValueError(
                "`replacement_rate` > 0 but every id is special, so there is no "
                "id to draw replacements from. Set replacement_rate=0."
            )
        self._set_seed(seed)
        self.built = True

    def augment(self, token_ids, padding_mask, seed):
        """One view of dense `[batch, length]` ids: `(token_ids, padding_mask)`."""
        return augmentation.augment_tokens(
            token_ids,
            padding_mask,
            seed,
            vocabulary_size=self.vocabulary_size,
            deletion_rate=self.deletion_rate,
            insertion_rate=self.insertion_rate,
            replacement_rate=self.replacement_rate,
            swap_rate=self.swap_rate,
            unselectable_ids=self.unselectable_token_ids,
            padding_token_id=self.padding_token_id,
        )

    def call(self, inputs, seed=None):
        """Two views of `inputs`; `seed` an optional int `[2]` stateless seed."""
        extras = {}
        padding_mask = None
        with_segments = False
        if isinstance(inputs, dict):
            if "token_ids" not in inputs:
                raise ValueError(
                    "Dict inputs to TextAugmenter need a 'token_ids' key. "
                    f"Received keys: {sorted(inputs)}."
                )
            extras = dict(inputs)
            token_ids = extras.pop("token_ids")
            padding_mask = extras.pop("padding_mask", None)
            with_segments = extras.pop("segment_ids", None) is not None
        else:
            token_ids = inputs
        if isinstance(token_ids, tf.RaggedTensor):
            raise ValueError(
                "TextAugmenter takes dense, packed token ids [batch, length] "
                "(e.g. from keras_hub.layers.StartEndPacker), not ragged ones."
            )
        token_ids = tf.convert_to_tensor(token_ids)
        if not token_ids.dtype.is_integer:
            raise ValueError(
                f"TextAugmenter expects integer token ids. Received dtype {token_ids.dtype.name}."
            )
        if token_ids.shape.rank not in (1, 2):
            raise ValueError(
                "TextAugmenter expects token ids of shape [batch, length] or "
                f"[length]. Received shape {token_ids.shape}."
            )
        unbatched = token_ids.shape.rank == 1
        if padding_mask is None:
            padding_mask = tf.not_equal(token_ids, tf.cast(self.padding_token_id, token_ids.dtype))
        padding_mask = tf.cast(padding_mask, tf.bool)
        if unbatched:
            token_ids, padding_mask = token_ids[None], padding_mask[None]
        token_ids = check_token_ids(token_ids, "TextAugmenter", self.vocabulary_size, padding_mask)
        seed = self._next_seed(seed)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), len(VIEW_NAMES), alg="philox")
        outputs = dict(extras)
        for index, name in enumerate(VIEW_NAMES):
            ids, mask = self.augment(token_ids, padding_mask, seeds[index])
            if unbatched:
                ids, mask = ids[0], mask[0]
            view = {"token_ids": ids, "padding_mask": mask}
            if with_segments:
                view["segment_ids"] = tf.zeros_like(ids)
            outputs[name] = view
        return outputs

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape["token_ids"] if isinstance(input_shape, dict) else input_shape)
        view = {"token_ids": shape, "padding_mask": shape}
        if isinstance(input_shape, dict) and "segment_ids" in input_shape:
            view["segment_ids"] = shape
        return {name: dict(view) for name in VIEW_NAMES}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "deletion_rate": self.deletion_rate,
                "insertion_rate": self.insertion_rate,
                "replacement_rate": self.replacement_rate,
                "swap_rate": self.swap_rate,
                "unselectable_token_ids": list(self.unselectable_token_ids),
                "padding_token_id": self.padding_token_id,
                "seed": self.seed,
            }
        )
        return config
