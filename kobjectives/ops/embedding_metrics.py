"""Sentence-embedding math: pooling, and the metrics that judge embeddings.

- `pool_sequence`: token states `[batch, length, hidden]` -> one vector per
  text (`"cls"`, `"mean"` over real tokens, or the `"last"` real token).
- `spearman`: Spearman's rank correlation with average ranks for ties (the
  STS metric of Reimers & Gurevych, 2019, and SimCSE).
- `alignment` / `uniformity`: Wang & Isola (2020).
- `recall_at_k`: retrieval recall of the relevant candidate among the top k.

Pooling is XLA-safe and runs in the model; the metrics are evaluation code
(eager, float64 where it matters) and are computed on the whole evaluation set
at once.
"""

import numbers

import tensorflow as tf

from kobjectives.ops.contrastive import l2_normalize

POOLING_MODES = ("cls", "mean", "last")


def pool_sequence(hidden, padding_mask, mode="mean", weights=None):
    """Pools token states into one vector per sequence.

    Args:
        hidden: float `[batch, length, hidden]` token states.
        padding_mask: bool/int `[batch, length]`, true on real tokens (the
            packer puts real tokens first).
        mode: `"cls"` (the first position, BERT's `[CLS]`), `"mean"` (mean
            over real tokens; a row with no real token gives zeros, never
            NaN) or `"last"` (the last real token, for causal backbones; the
            first position for an empty row). Sequences of length 0 give
            zeros in every mode.
        weights: optional non-negative float `[batch, length]` token weights
            for `"mean"`: the weighted mean `sum_t w_t m_t h_t / sum_t w_t
            m_t` (`m` the padding mask); `None` weighs every token 1.

    Returns:
        `[batch, hidden]`, in `hidden`'s dtype.
    """
    if mode not in POOLING_MODES:
        raise ValueError(
            f"`pooling` must be one of {POOLING_MODES}. Received: pooling={mode!r}"
        )
    if weights is not None and mode != "mean":
        raise ValueError(f"Token `weights` apply to mode='mean' only. Received: mode={mode!r}")
    hidden = tf.convert_to_tensor(hidden)
    if hidden.shape.rank is not None and hidden.shape.rank != 3:
        raise ValueError(
            "Pooling expects token states of shape [batch, length, hidden]. "
            f"Received shape {hidden.shape}."
        )
    if mode != "mean" and hidden.shape.rank == 3 and hidden.shape[1] == 0:
        # No position at all: zeros, as "mean" gives for a row without tokens.
        return tf.reduce_sum(hidden, axis=1)
    if mode == "cls":
        return hidden[:, 0, :]
    mask = tf.cast(padding_mask, hidden.dtype)
    if mode == "mean":
        # Sum in float32 so bfloat16 states keep their precision.
        mask = tf.cast(mask, tf.float32)
        if weights is not None:
            mask = mask * tf.cast(weights, tf.float32)
        total = tf.reduce_sum(tf.cast(hidden, tf.float32) * mask[..., None], axis=1)
        count = tf.reduce_sum(mask, axis=1, keepdims=True)
        return tf.cast(tf.math.divide_no_nan(total, count), hidden.dtype)
    last = tf.maximum(tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1) - 1, 0)
    return tf.gather(hidden, last, batch_dims=1)


def average_ranks(values):
    """1-based ranks of `values` `[n]`, ties given their average rank (float64)."""
    values = tf.reshape(tf.convert_to_tensor(values), [-1])
    n = tf.shape(values)[0]
    order = tf.argsort(values, stable=True)
    sorted_values = tf.gather(values, order)
    _, group, counts = tf.unique_with_counts(sorted_values)
    counts = tf.cast(counts, tf.float64)
    starts = tf.cumsum(counts, exclusive=True)
    group_rank = starts + (counts + 1.0) / 2.0
    ranks_sorted = tf.gather(group_rank, group)
    return tf.scatter_nd(order[:, None], ranks_sorted, tf.reshape(n, [1]))


def pearson(x, y):
    """Pearson correlation of two `[n]` vectors (float64; 0 if one is constant)."""
    x = tf.cast(tf.reshape(x, [-1]), tf.float64)
    y = tf.cast(tf.reshape(y, [-1]), tf.float64)
    x = x - tf.reduce_mean(x)
    y = y - tf.reduce_mean(y)
    denominator = tf.sqrt(tf.reduce_sum(x * x) * tf.reduce_sum(y * y))
    return tf.math.divide_no_nan(tf.reduce_sum(x * y), denominator)


def spearman(x, y):
    """Spearman's rank correlation, ties ranked by their average rank.

    Equals `scipy.stats.spearmanr(x, y).correlation` (the Pearson
    correlation of the average ranks). A constant input gives 0, not NaN.

    Args:
        x: `[n]` numbers (e.g. cosine similarities).
        y: `[n]` numbers (e.g. gold scores).

    Returns:
        A float64 scalar in [-1, 1].

    Example:

    >>> float(spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]))  # doctest: +ELLIPSIS
    0.948...
    """
    x = tf.reshape(tf.convert_to_tensor(x), [-1])
    y = tf.reshape(tf.convert_to_tensor(y), [-1])
    if x.shape[0] is not None and y.shape[0] is not None and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`x` and `y` must have the same length. Received {x.shape[0]} and {y.shape[0]}."
        )
    if x.shape[0] is not None and x.shape[0] < 2:
        raise ValueError(f"Spearman correlation needs at least 2 pairs. Received {x.shape[0]}.")
    return pearson(average_ranks(x), average_ranks(y))


def cosine_similarity(x, y):
    """Row-wise cosine similarity of `[n, dim]` and `[n, dim]` -> `[n]` (float32)."""
    return tf.reduce_sum(l2_normalize(x) * l2_normalize(y), axis=-1)


def _check_exponent(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")


def alignment(x, y, alpha=2.0):
    """Alignment loss of positive pairs (Wang & Isola, 2020).

        align = mean_i || f(x_i) - f(y_i) ||_2 ^ alpha

    with `f` the L2 normalization. 0 when every pair coincides, at most
    `2 ** alpha`; lower is better.

    Args:
        x: float `[n, dim]`, first embeddings of the positive pairs.
        y: float `[n, dim]`, their positives.
        alpha: positive float (2 in the paper and SimCSE).

    Returns:
        A float32 scalar.
    """
    _check_exponent("alpha", alpha)
    x, y = l2_normalize(x), l2_normalize(y)
    distance = tf.norm(x - y, axis=-1)
    return tf.reduce_mean(tf.pow(distance, float(alpha)))


def uniformity(x, t=2.0):
    """Uniformity loss (Wang & Isola, 2020): log of the mean Gaussian potential.

        uniform = log mean_{i < j} exp(-t || f(x_i) - f(x_j) ||_2^2)

    over the distinct pairs, with `f` the L2 normalization (as
    `torch.pdist(x).pow(2).mul(-t).exp().mean().log()` in the paper's code).
    Computed as a log-sum-exp in float64, so it is finite even when every
    pair is far apart. Lower is better (0 when all embeddings coincide).

    Args:
        x: float `[n, dim]`, n >= 2.
        t: positive float (2 in the paper).

    Returns:
        A float64 scalar.
    """
    _check_exponent("t", t)
    x = tf.cast(l2_normalize(x), tf.float64)
    n = tf.shape(x)[0]
    if x.shape[0] is not None and x.shape[0] < 2:
        raise ValueError(f"Uniformity needs at least 2 embeddings. Received {x.shape[0]}.")
    gram = tf.matmul(x, x, transpose_b=True)
    squared = tf.maximum(2.0 - 2.0 * gram, 0.0)
    upper = tf.linalg.band_part(tf.ones([n, n], tf.bool), 0, -1)
    upper = tf.logical_and(upper, tf.logical_not(tf.eye(n, dtype=tf.bool)))
    terms = tf.boolean_mask(-float(t) * squared, upper)
    pairs = tf.cast(n * (n - 1) // 2, tf.float64)
    return tf.reduce_logsumexp(terms) - tf.math.log(pairs)


def recall_at_k(queries, candidates, k=1, relevant=None):
    """Retrieval recall@k with cosine similarity.

    Query `i` is a hit when its relevant candidate ranks among the first `k`
    candidates by cosine similarity. Ties count against the query
    (pessimistic rank): the rank of the relevant candidate is the number of
    *other* candidates whose similarity is `>=` its own, so constant
    embeddings score `0` for `k < num_candidates`, never 1.

    Args:
        queries: float `[n, dim]`.
        candidates: float `[m, dim]`.
        k: int or list of ints, `1 <= k`.
        relevant: optional int `[n]`, the index of each query's relevant
            candidate. Defaults to `range(n)` (candidate `i` answers query
            `i`; then `m >= n`).

    Returns:
        A float32 scalar (or a dict `{k: recall}` when `k` is a list).
    """
    ks = list(k) if isinstance(k, (list, tuple)) else [k]
    for value in ks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`k` must be a positive int. Received: k={value!r}")
    queries = l2_normalize(queries)
    candidates = l2_normalize(candidates)
    n = tf.shape(queries)[0]
    if relevant is None:
        if (
            queries.shape[0] is not None
            and candidates.shape[0] is not None
            and candidates.shape[0] < queries.shape[0]
        ):
            raise ValueError(
                "Without `relevant`, candidate i answers query i, so there must be "
                f"at least as many candidates as queries. Received {queries.shape[0]} "
                f"queries and {candidates.shape[0]} candidates."
            )
        relevant = tf.range(n)
    relevant = tf.cast(tf.reshape(relevant, [-1]), tf.int32)
    scores = tf.matmul(queries, candidates, transpose_b=True)
    target = tf.gather(scores, relevant, batch_dims=1)[:, None]
    m = tf.shape(candidates)[0]
    others = tf.logical_not(tf.one_hot(relevant, m, on_value=True, off_value=False))
    rank = tf.reduce_sum(tf.cast(tf.logical_and(scores >= target, others), tf.int32), axis=1)
    recalls = {value: tf.reduce_mean(tf.cast(rank < value, tf.float32)) for value in ks}
    return recalls if isinstance(k, (list, tuple)) else recalls[k]


__all__ = [
    "POOLING_MODES",
    "alignment",
    "average_ranks",
    "cosine_similarity",
    "pearson",
    "pool_sequence",
    "recall_at_k",
    "spearman",
    "uniformity",
]
