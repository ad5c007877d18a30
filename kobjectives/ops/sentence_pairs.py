"""Sentence-pair sampling (BERT NSP, ALBERT SOP) and the pair losses, as
tensor functions.

`sample_sentence_pairs` follows the semantics of Google BERT's
`create_pretraining_data.py` (and ALBERT's for sentence-order prediction),
recast as one batched, stateless, seeded draw per document:

1. A target length: `max_num_tokens`, or with probability `short_seq_prob`
   a uniform integer in `[2, max_num_tokens]`.
2. A chunk of consecutive sentences: it starts at a uniform sentence
   `c0` in `[0, n - 2]` (`n` sentences) and grows sentence by sentence until
   it holds at least the target length (or the document ends); it always
   holds at least two sentences when the document has two.
3. `a_end` uniform among the chunk's inner sentence boundaries: segment A is
   the chunk's sentences before it, the "actual next" B the rest. A
   one-sentence document (NSP only) is cut at a uniform token instead.
4. The label: 1 with probability `negative_rate` (0.5), else 0.

   - NSP: label 0 keeps the actual next B; label 1 replaces it with text
     from another document of the batch (uniform among the others): from a
     uniform sentence on, sentences until `target - len(A)` tokens.
   - SOP: label 0 keeps `(A, B)`; label 1 swaps them to `(B, A)`.

5. `truncate_seq_pair`: while `len(A) + len(B) > max_num_tokens`, drop one
   token of the longer segment (of B on ties), from its front or its back
   with probability 1/2 each.

Label convention (as Google's `next_sentence_labels`): **0 = in order / the
actual next segment, 1 = random next (NSP) or swapped (SOP).**
"""

import collections

import tensorflow as tf

from kobjectives.ops.masked_lm import sparse_cross_entropy
from kobjectives.ops.reduction import global_weighted_mean

TASKS = ("nsp", "sop")

SentencePairSample = collections.namedtuple(
    "SentencePairSample", ["segment_a", "segment_b", "labels"]
)
"""What `sample_sentence_pairs` returns: ragged `segment_a`, `segment_b`
`[documents, (tokens)]` and int32 `labels` `[documents]`."""

# Number of uniform draws per document (see `sample_sentence_pairs`).
_DRAWS = 7


def truncated_pair_lengths(length_a, length_b, max_num_tokens):
    """The segment lengths after BERT's `truncate_seq_pair`, in closed form.

    `truncate_seq_pair` removes one token at a time from the longer segment
    (from B when they are equal) until `length_a + length_b <=
    max_num_tokens`. The lengths it ends with are

    - unchanged when the pair fits;
    - otherwise `a' = min(length_a, max(ceil(m / 2), m - length_b))` and
      `b' = min(length_b, m - a')` for `m = max_num_tokens`.

    Args:
        length_a: int tensor `[...]`, lengths of segment A.
        length_b: int tensor `[...]`, lengths of segment B (same dtype).
        max_num_tokens: int, the most tokens of A and B together.

    Returns:
        `(new_length_a, new_length_b)`, int tensors like `length_a`.
    """
    length_a = tf.convert_to_tensor(length_a)
    length_b = tf.cast(length_b, length_a.dtype)
    m = tf.cast(max_num_tokens, length_a.dtype)
    half_up = (m + 1) // 2
    new_a = tf.minimum(length_a, tf.maximum(half_up, m - length_b))
    new_b = tf.minimum(length_b, m - new_a)
    return new_a, new_b


def _first_sentence_reaching(starts, ends, counts, first, minimum_index, target):
    """Per row: the first sentence `s >= minimum_index` whose end is at least
    `target` tokens after the start of sentence `first`; the last sentence
    when none is.

    `starts`, `ends`: `[rows, max_sentences]` token offsets (padded);
    `counts`, `first`, `minimum_index`, `target`: `[rows]`.
    """
    index = tf.range(tf.shape(starts)[1], dtype=counts.dtype)[None, :]
    origin = tf.gather(starts, first, batch_dims=1)
    reached = (
        (index < counts[:, None])
        & (index >= minimum_index[:, None])
        & (ends - origin[:, None] >= target[:, None])
    )
    big = tf.reduce_max(counts) + 1
    found = tf.reduce_min(tf.where(reached, index, big), axis=1)
    return tf.minimum(found, counts - 1)


def _uniform_index(u, size):
    """`floor(u * size)` clipped to `[0, size - 1]` (size >= 1)."""
    size = tf.maximum(size, 1)
    index = tf.cast(tf.floor(u * tf.cast(size, u.dtype)), size.dtype)
    return tf.clip_by_value(index, 0, size - 1)


def sample_sentence_pairs(
    sentences,
    seed,
    max_num_tokens,
    task="nsp",
    short_seq_prob=0.1,
    negative_rate=0.5,
):
    """Draws one NSP or SOP segment pair from every document of a batch.

    See the module docstring for the procedure. All randomness comes from
    `tf.random.stateless_uniform` / `stateless_binomial` keyed by `seed`: the
    same seed and documents give the same pairs.

    Args:
        sentences: int `tf.RaggedTensor` `[documents, (sentences), (tokens)]`,
            the token ids of each document's sentences. Every sentence must
            hold at least one token and every document at least one sentence
            (two for `"sop"`; one-sentence documents need two tokens).
        seed: int tensor of shape `[2]`, the stateless seed.
        max_num_tokens: int >= 2, the most tokens of A and B together
            (BERT: `max_seq_length - 3` for `[CLS]` and two `[SEP]`).
        task: `"nsp"` (next-sentence prediction; needs at least two
            documents, or none: an empty batch gives an empty sample) or
            `"sop"` (sentence-order prediction).
        short_seq_prob: float in `[0, 1]`, the probability of a shorter,
            uniform target length.
        negative_rate: float in `[0, 1]`, the probability of label 1.

    Returns:
        A `SentencePairSample` with `segment_a`, `segment_b` (ragged int
        `[documents, (tokens)]`, each non-empty, together at most
        `max_num_tokens`) and int32 `labels` `[documents]`.

    Raises:
        ValueError: an argument is out of range (statically).
        tf.errors.InvalidArgumentError: a document breaks the rules above.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}.")
    if int(max_num_tokens) < 2:
        raise ValueError(
            "`max_num_tokens` must be >= 2 (one token per segment). Received: "
            f"max_num_tokens={max_num_tokens}."
        )
    if not isinstance(sentences, tf.RaggedTensor) or sentences.shape.rank != 3:
        raise ValueError(
            "`sentences` must be a tf.RaggedTensor of shape [documents, "
            f"(sentences), (tokens)]. Received: {sentences!r}"
        )
    sentences = sentences.with_row_splits_dtype(tf.int64)
    documents = tf.shape(sentences.row_splits, out_type=tf.int64)[0] - 1
    counts = sentences.row_lengths(axis=1)  # [D]
    lengths = sentences.row_lengths(axis=2)  # ragged [D, (S)]
    document_tokens = sentences.merge_dims(1, 2)  # ragged [D, (N)]
    document_lengths = document_tokens.row_lengths()

    checks = [
        tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.concat([counts, [2]], 0)),
            tf.constant(2 if task == "sop" else 1, tf.int64),
            message=(
                "SentencePairGenerator: a document has fewer than "
                + ("2 sentences, which sentence-order prediction (task='sop')"
                   " needs. Drop such documents first (e.g. "
                   "kobjectives.data.sentence_documents(..., min_sentences=2))."
                   if task == "sop" else
                   "1 sentence (an empty document). Drop empty documents first.")
            ),
        ),
        tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.concat([lengths.flat_values, [1]], 0)),
            tf.constant(1, tf.int64),
            message=(
                "SentencePairGenerator: a sentence has no tokens. Drop empty "
                "sentences before the layer."
            ),
        ),
        tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.concat([document_lengths, [2]], 0)),
            tf.constant(2, tf.int64),
            message=(
                "SentencePairGenerator: a document has fewer than 2 tokens, "
                "too few for two segments. Drop such documents first."
            ),
        ),
    ]
    if task == "nsp":
        checks.append(
            tf.debugging.assert_none_equal(
                documents,
                tf.constant(1, tf.int64),
                message=(
                    "SentencePairGenerator(task='nsp') needs at least 2 "
                    "documents per call (the random next segment comes from "
                    "another document of the batch). Batch the documents "
                    "(batch size >= 2)."
                ),
            )
        )
    with tf.control_dependencies(checks):
        counts = tf.identity(counts)

    # Sentence start / end token offsets inside their document, padded.
    ends = tf.math.cumsum(lengths, axis=1)
    starts = ends - lengths
    starts = starts.to_tensor(0)
    ends = ends.to_tensor(0)

    u = tf.random.stateless_uniform([documents, _DRAWS], seed=seed, dtype=tf.float32)
    max_tokens = tf.constant(int(max_num_tokens), tf.int64)
    # 1. Target length.
    short = u[:, 0] < short_seq_prob
    target = tf.where(short, 2 + _uniform_index(u[:, 1], max_tokens - 1), max_tokens)
    # 2. The chunk: sentences c0 .. c1.
    multi = counts >= 2
    c0 = _uniform_index(u[:, 2], counts - 1)
    c1 = _first_sentence_reaching(starts, ends, counts, c0, c0 + 1, target)
    # 3. The A / B boundary: a sentence boundary inside the chunk, or a token
    # of a one-sentence document.
    boundary_sentence = c0 + 1 + _uniform_index(u[:, 3], c1 - c0)
    boundary_sentence = tf.minimum(boundary_sentence, tf.maximum(counts - 1, 0))
    boundary = tf.where(
        multi,
        tf.gather(starts, boundary_sentence, batch_dims=1),
        1 + _uniform_index(u[:, 3], document_lengths - 1),
    )
    a_start = tf.gather(starts, c0, batch_dims=1)
    a_end = boundary
    b_end = tf.where(multi, tf.gather(ends, c1, batch_dims=1), document_lengths)
    # 4. The label.
    labels = tf.cast(u[:, 4] < negative_rate, tf.int32)
    negative = labels > 0
    rows = tf.range(documents, dtype=tf.int64)
    if task == "nsp":
        other = tf.math.floormod(
            rows + 1 + _uniform_index(u[:, 5], documents - 1), documents
        )
        other_counts = tf.gather(counts, other)
        other_starts = tf.gather(starts, other)
        other_ends = tf.gather(ends, other)
        r0 = _uniform_index(u[:, 6], other_counts)
        r1 = _first_sentence_reaching(
            other_starts, other_ends, other_counts, r0, r0, target - (a_end - a_start)
        )
        first_document = rows
        first_start, first_end = a_start, a_end
        second_document = tf.where(negative, other, rows)
        second_start = tf.where(
            negative, tf.gather(other_starts, r0, batch_dims=1), a_end
        )
        second_end = tf.where(negative, tf.gather(other_ends, r1, batch_dims=1), b_end)
    else:
        first_document = second_document = rows
        first_start = tf.where(negative, a_end, a_start)
        first_end = tf.where(negative, b_end, a_end)
        second_start = tf.where(negative, a_start, a_end)
        second_end = tf.where(negative, a_end, b_end)

    # 5. Truncation: front / back coin per removed token.
    length_a = first_end - first_start
    length_b = second_end - second_start
    new_a, new_b = truncated_pair_lengths(length_a, length_b, max_tokens)
    trim_a, trim_b = length_a - new_a, length_b - new_b
    front = tf.random.stateless_binomial(
        [2, documents],
        seed=tf.random.experimental.stateless_fold_in(seed, 1),
        counts=tf.cast(tf.stack([trim_a, trim_b]), tf.float32),
        probs=0.5,
        output_dtype=tf.int64,
    )
    first_start = first_start + front[0]
    second_start = second_start + front[1]

    offsets = document_tokens.row_starts()
    flat = document_tokens.flat_values

    def gather(document, start, length):
        begin = tf.gather(offsets, document) + start
        indices = tf.ragged.range(begin, begin + length)
        return tf.gather(flat, indices)

    return SentencePairSample(
        segment_a=gather(first_document, first_start, new_a),
        segment_b=gather(second_document, second_start, new_b),
        labels=labels,
    )


def pair_classification_loss(labels, logits, sample_weight=None):
    """Mean softmax cross-entropy of the pair head (NSP / SOP), float32.

    Under a `tf.distribute` strategy the value is this replica's share of the
    global mean (`kobjectives.ops.reduction.global_weighted_mean`), so the
    summed gradients are those of the global batch.

    Args:
        labels: int tensor `[batch]` (0 in order, 1 random / swapped).
        logits: float tensor `[batch, 2]`, any float dtype.
        sample_weight: optional float `[batch]`; None means all 1.

    Returns:
        A float32 scalar.
    """
    losses = sparse_cross_entropy(labels, logits)
    if sample_weight is None:
        sample_weight = tf.ones_like(losses)
    return global_weighted_mean(losses, sample_weight)

