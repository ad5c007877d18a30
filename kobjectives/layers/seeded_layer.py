"""The base of kobjectives' random preprocessing layers: seeds and `map_over`."""

import keras
import tensorflow as tf


class SeededLayer(keras.layers.Layer):
    """A preprocessing layer whose randomness is a stateless seed.

    Subclasses implement `call(inputs, seed=None)` with stateless random ops
    (`tf.random.stateless_*`) keyed by `seed`, an integer tensor of shape
    `[2]`, and call `self._set_seed(seed)` in `__init__`. When `call` gets no
    seed it takes the next one from the layer's `keras.random.SeedGenerator`
    (`self._seed_generator`), like keras-hub's layers; `map_over` gives every
    element of a `tf.data.Dataset` its own reproducible seed instead.

    Class attribute `map_over_stream`: the second word of the seeds
    `map_over` hands out, so that two layers mapped over the same elements
    with the same `seed` (say a pair generator and the masker after it) draw
    independent randomness.
    """

    map_over_stream = 0

    def _set_seed(self, seed):
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def _next_seed(self, seed):
        """`seed`, or the seed generator's next one when it is `None`."""
        return self._seed_generator.next() if seed is None else seed

    def map_over(self, dataset, seed=None, num_parallel_calls=None, deterministic=None):
        """Maps the layer over a `tf.data.Dataset` with one seed per element.

        The dataset is zipped with `tf.data.Dataset.random(seed,
        rerandomize_each_iteration=True)`; element `i` of an epoch gets the
        stateless seed `[r_i, map_over_stream]`, `r_i` that dataset's `i`-th
        value. So the output is a deterministic function of `seed`, the epoch
        and the element's position: two pipelines built with the same `seed`
        give identical outputs (also with `num_parallel_calls`), and every
        new iteration over the returned dataset (an epoch) gives new ones.

        Args:
            dataset: a `tf.data.Dataset` whose elements are valid layer inputs.
            seed: int. Defaults to the layer's `seed`; when both are `None`
                the outputs are not reproducible.
            num_parallel_calls: passed to `Dataset.map`, e.g.
                `tf.data.AUTOTUNE`.
            deterministic: passed to `Dataset.map`.

        Returns:
            The mapped `tf.data.Dataset`.
        """
        if seed is None:
            seed = self.seed
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        stream = tf.constant(self.map_over_stream, "int64")
        return tf.data.Dataset.zip((dataset, seeds)).map(
            lambda x, r: self(x, seed=tf.stack([r, stream])),
            num_parallel_calls=num_parallel_calls,
            deterministic=deterministic,
        )
