"""Replaced-token detection (ELECTRA) as tensor functions.

The pieces of ELECTRA's pretraining step (Clark et al., 2020; the semantics
of Google's `pretrain_helpers.py` and `run_pretraining.py`) between the
generator's masked-LM logits and the discriminator's loss:

- `gumbel_max_sample`: draw one replacement per masked slot from
  `softmax(logits / temperature)` by the Gumbel-max trick, under
  stop-gradient, from a stateless seed. Under `tf.distribute` every replica
  draws the noise of the *global* batch and keeps its own rows, so a
  mirrored step samples exactly what one device would with the global batch.
- `corrupt_tokens`: write the samples into the sequence at the masked
  positions and label every position: replaced iff the sampled id differs
  from the original one (a sample equal to the original counts as original).
- `rtd_loss`: sigmoid cross-entropy averaged over the non-padding tokens,
  exact under `tf.distribute` (`global_weighted_mean`).
- `rtd_confusion`: the weighted confusion counts behind the metrics.

All functions are shape-static and XLA-compilable.
"""

import tensorflow as tf

from kobjectives.ops.reduction import global_weighted_mean

def _check_temperature(temperature):
    if isinstance(temperature, (int, float)) and not temperature > 0.0:
        raise ValueError(
            "`temperature` must be > 0 (the generator's logits are divided by "
            f"it before sampling; ELECTRA uses 1.0). Received: temperature={temperature!r}"
        )


_MASK32 = 0xFFFFFFFF


def _mul32(x, constant):
    """`(x * constant) mod 2**32` for int64 `x` in `[0, 2**32)`, exact (no
    int64 overflow: the constant is applied in two 16-bit halves)."""
    low, high = constant & 0xFFFF, constant >> 16
    high_part = tf.bitwise.left_shift(tf.bitwise.bitwise_and(x * high, 0xFFFF), 16)
    return tf.bitwise.bitwise_and(x * low + high_part, _MASK32)


def _mix32(x):
    """A 32-bit integer finalizer (Wellons' "lowbias32"): a bijection of
    `[0, 2**32)` whose output bits each depend on every input bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _fold32(x):
    x = tf.cast(x, tf.int64)
    return tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 32)), _MASK32
    )


def counter_uniform(shape, seed, offset=0):
    """Uniform floats in `(0, 1)` from a counter-based hash of `(seed, index)`.

    Element `i` (in row-major order) is `mix(mix(i ^ k1) ^ k2)` with keys
    `k1, k2` derived from the two seed words and `mix` a 32-bit integer hash,
    keeping its top 24 bits: a pure function of the seed and the index, made
    of integer ops only. So it is bit-identical with and without XLA and on
    every device, which `tf.random.stateless_uniform` is not (XLA's Philox
    stream differs from the CPU kernel's), and a slice of a larger draw is
    the draw of the slice's indices.

    Args:
        shape: the output's shape (list or 1-D int tensor).
        seed: int tensor `[2]`.
        offset: int (scalar tensor), the index of the first element: the
            result equals elements `[offset, offset + size)` of a larger draw
            with the same seed.

    Returns:
        float32 tensor of `shape`, values in `[2**-25, 1 - 2**-25]`.
    """
    seed = tf.convert_to_tensor(seed)
    k1 = _mix32(tf.bitwise.bitwise_xor(_fold32(seed[0]), 0x9E3779B9))
    k2 = _mix32(tf.bitwise.bitwise_xor(_fold32(seed[1]), tf.bitwise.bitwise_xor(k1, 0x85EBCA6B)))
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int64)
    index = tf.range(tf.reduce_prod(shape), dtype=tf.int64) + tf.cast(offset, tf.int64)
    index = _fold32(index)
    bits = _mix32(tf.bitwise.bitwise_xor(_mix32(tf.bitwise.bitwise_xor(index, k1)), k2))
    top24 = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32)
    return tf.reshape((top24 + 0.5) * (2.0 ** -24), shape)


def gumbel_noise(shape, seed, offset=0):
    """Standard Gumbel noise `-log(-log(u))` with `u = counter_uniform(...)`.

    Args:
        shape: the noise's shape (list or 1-D int tensor).
        seed: int tensor of shape `[2]`, a stateless seed.
        offset: int, the index of the first element (see `counter_uniform`).

    Returns:
        float32 tensor of `shape`, a deterministic function of `seed`, the
        same with and without XLA and on every device.
    """
    return -tf.math.log(-tf.math.log(counter_uniform(shape, seed, offset)))


def replica_gumbel_noise(shape, seed):
    """This replica's rows of the global batch's Gumbel noise.

    Outside a replica context (or with one replica) it is `gumbel_noise`.
    With `n` replicas in sync each holding `shape[0]` rows, replica `r`
    draws rows `[r * shape[0], (r + 1) * shape[0])` of the global batch's
    noise `[n * shape[0], ...]` (the split a mirrored strategy makes of the
    global batch; only its own rows are computed, `counter_uniform`'s
    `offset`). So a distributed step sees the same noise per example as one
    device with the global batch.
    """
    context = tf.distribute.get_replica_context()
    if (
        tf.distribute.in_cross_replica_context()
        or context is None
        or context.num_replicas_in_sync == 1
    ):
        return gumbel_noise(shape, seed)
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int64)
    replica = tf.cast(context.replica_id_in_sync_group, tf.int64)
    return gumbel_noise(shape, seed, offset=replica * tf.reduce_prod(shape))


def gumbel_max_sample(logits, seed, temperature=1.0, disallowed_ids=None):
    """Samples ids from `softmax(logits / temperature)` by Gumbel-max.

    `argmax(logits / temperature + g)` with `g` i.i.d. standard Gumbel noise
    is an exact draw from the softmax (Gumbel, 1954; Maddison et al., 2014).
    The logits are read under `tf.stop_gradient` in float32: no gradient
    flows from the sample back to the generator (as in ELECTRA, where the
    discriminator's loss does not train the generator).

    Args:
        logits: float tensor `[..., vocabulary_size]` (any float dtype).
        seed: int tensor `[2]`, a stateless seed; the same seed and logits give
            the same samples. Under `tf.distribute` see `replica_gumbel_noise`.
        temperature: float > 0 (a Python number or a scalar tensor).
        disallowed_ids: optional int tensor `[...]` (the logits' shape without
            the last axis): an id per slot that may not be drawn (ELECTRA's
            `disallow_correct` option: never sample the original token).

    Returns:
        int32 tensor `[...]` of sampled ids.

    Raises:
        ValueError: a Python `temperature <= 0`.
    """
    _check_temperature(temperature)
    logits = tf.stop_gradient(tf.cast(logits, tf.float32))
    logits = logits / tf.cast(temperature, tf.float32)
    if disallowed_ids is not None:
        vocabulary_size = tf.shape(logits)[-1]
        logits = tf.where(
            tf.one_hot(tf.cast(disallowed_ids, tf.int32), vocabulary_size) > 0.5,
            tf.constant(-1e9, tf.float32),
            logits,
        )
    noise = replica_gumbel_noise(tf.shape(logits), seed)
    return tf.argmax(logits + noise, axis=-1, output_type=tf.int32)


def scatter_at_positions(token_ids, positions, values, weights):
    """Writes `values` into `token_ids` at `positions` where `weights > 0`.

    Args:
        token_ids: int tensor `[batch, length]`.
        positions: int tensor `[batch, slots]`, distinct within a row among the
            slots with `weights > 0` (as `MaskedLMMasker` emits).
        values: int tensor `[batch, slots]`.
        weights: float tensor `[batch, slots]`; slots with weight 0 are unused
            and write nothing.

    Returns:
        `(updated_ids, written)`: int tensor `[batch, length]` with the dtype of
        `token_ids`, and a bool `[batch, length]` marking the written positions.
    """
    length = tf.shape(token_ids)[-1]
    used = tf.cast(tf.cast(weights, tf.float32) > 0.0, tf.int32)
    hits = tf.one_hot(tf.cast(positions, tf.int32), length, dtype=tf.int32) * used[..., None]
    written_count = tf.reduce_sum(hits, axis=1)
    written = written_count > 0
    scattered = tf.reduce_sum(hits * tf.cast(values, tf.int32)[..., None], axis=1)
    updated = tf.where(written, scattered, tf.cast(token_ids, tf.int32))
    return tf.cast(updated, token_ids.dtype), written


def corrupt_tokens(token_ids, mask_positions, mask_ids, mask_weights, sampled_ids):
    """The discriminator's input and labels, from the generator's samples.

    As ELECTRA's `_get_fake_data`: the masked sequence is first restored
    (`mask_ids` back at `mask_positions`), then the sampled ids are written
    at the used masked positions. A position is *replaced* (label 1) iff it
    was masked and its sample differs from the original id; everything else,
    including a sample that happens to equal the original, is *original*
    (label 0).

    Args:
        token_ids: int `[batch, length]`, the masked sequence ([MASK] or the
            kept original at the masked positions).
        mask_positions: int `[batch, slots]`.
        mask_ids: int `[batch, slots]`, the original ids at the positions.
        mask_weights: float `[batch, slots]`, 1 for used slots, 0 otherwise.
        sampled_ids: int `[batch, slots]`, the generator's samples.

    Returns:
        `(corrupted_ids, labels)`: the discriminator's token ids
        `[batch, length]` (dtype of `token_ids`) and float32 labels
        `[batch, length]`, 1.0 at replaced positions.
    """
    corrupted, written = scatter_at_positions(
        token_ids, mask_positions, sampled_ids, mask_weights
    )
    original, _ = scatter_at_positions(token_ids, mask_positions, mask_ids, mask_weights)
    replaced = tf.logical_and(written, tf.not_equal(corrupted, original))
    return corrupted, tf.cast(replaced, tf.float32)


def sigmoid_cross_entropy(labels, logits):
    """Per-position binary cross-entropy with logits, in float32."""
    return tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.float32), logits=tf.cast(logits, tf.float32)
    )


def rtd_loss(labels, logits, weights):
    """ELECTRA's discriminator loss: sigmoid cross-entropy over real tokens.

    The weighted mean over the non-padding tokens (`weights` is the padding
    mask) of the global batch: under `tf.distribute` this replica's share,
    so the replicas' sum is the exact global mean (see
    `kobjectives.ops.reduction.global_weighted_mean`). No token gives 0.

    Args:
        labels: float/int `[batch, length]`, 1 for replaced, 0 for original.
        logits: float `[batch, length]`, the discriminator's logits.
        weights: bool/float `[batch, length]`, 1 on real tokens.

    Returns:
        A float32 scalar.
    """
    return global_weighted_mean(sigmoid_cross_entropy(labels, logits), tf.cast(weights, tf.float32))


def rtd_confusion(labels, logits, weights=None, threshold=0.0):
    """Weighted confusion counts of replaced-token detection.

    A position is predicted *replaced* when its logit is above `threshold`
    (0.0: probability above 1/2).

    Args:
        labels: `[batch, length]`, 1 for replaced, 0 for original.
        logits: float `[batch, length]`.
        weights: optional `[batch, length]` (the padding mask); None is all 1.
        threshold: float, the logit above which a token is called replaced.

    Returns:
        float32 `[4]`: weighted `[true_positive, false_positive,
        false_negative, true_negative]` with *replaced* as the positive class.
    """
    labels = tf.cast(labels, tf.float32) > 0.5
    predicted = tf.cast(logits, tf.float32) > threshold
    if weights is None:
        weights = tf.ones_like(tf.cast(logits, tf.float32))
    weights = tf.broadcast_to(tf.cast(weights, tf.float32), tf.shape(logits))

    def count(a, b):
        return tf.reduce_sum(tf.where(tf.logical_and(a, b), weights, 0.0))

    not_labels, not_predicted = tf.logical_not(labels), tf.logical_not(predicted)
    return tf.stack([
        count(labels, predicted),
        count(not_labels, predicted),
        count(labels, not_predicted),
        count(not_labels, not_predicted),
    ])
