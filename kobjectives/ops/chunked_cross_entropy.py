"""Cross-entropy over a vocabulary projection, computed in chunks of positions.

A language model's loss needs `logits = hidden @ kernel` for every position:
`[batch, length, vocabulary]` floats, often the largest tensor of the step
(batch 4 x length 1024 x vocabulary 50257 is 823 MB in float32, and autodiff
keeps it, plus its softmax, for the backward pass). The functions here never
hold more than `[chunk_size, vocabulary]` of it: the forward pass walks the
positions chunk by chunk, keeping only each position's log-normalizer, and
the backward pass (a `tf.custom_gradient`) recomputes each chunk's logits to
accumulate the gradients of `hidden` and `kernel`. Both loops are
`tf.while_loop`s with `parallel_iterations=1` (chunks run one after another
in graph mode as in XLA), so the memory saved is not given back by the
executor running chunks side by side.
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import poison_invalid_labels
from kobjectives.ops.reduction import global_weighted_mean

DEFAULT_CHUNK_SIZE = 1024
"""Positions per chunk: `chunk_size x vocabulary` logits live at once."""


def _check_chunk_size(chunk_size):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(
            "`chunk_size` must be a positive int (positions whose logits are "
            f"computed at once). Received: chunk_size={chunk_size!r}"
        )


def _check_label_smoothing(label_smoothing):
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(
            "`label_smoothing` must be in [0, 1) (the probability mass spread "
            f"uniformly over the vocabulary). Received: label_smoothing={label_smoothing!r}"
        )


def chunked_token_cross_entropy(
    hidden,
    kernel,
    labels,
    chunk_size=DEFAULT_CHUNK_SIZE,
    label_smoothing=0.0,
    return_correct=False,
    return_log_sum_squared_probs=False,
):
    """Per-position cross-entropy of `softmax(hidden @ kernel)`, in chunks.

    Equals `sparse_softmax_cross_entropy(labels, hidden @ kernel)` (with
    optional label smoothing), but only `[chunk_size, vocabulary]` logits
    exist at a time, in the forward and in the backward pass.

    Precision: the matmul runs in `hidden`'s dtype (bfloat16 under
    `mixed_bfloat16`), the log-sum-exp, the loss and the kernel gradient
    accumulate in float32.

    Args:
        hidden: float tensor `[..., hidden_dim]` (e.g. `[batch, length,
            hidden_dim]`), the states that predict the labels.
        kernel: float tensor `[hidden_dim, vocabulary_size]` (for a tied
            embedding, its transpose).
        labels: int tensor `hidden.shape[:-1]` of target ids in
            `[0, vocabulary_size)`.
        chunk_size: int, positions per chunk (the flattened leading
            dimensions are cut into chunks; the last is zero-padded).
        label_smoothing: float in `[0, 1)`: the target puts
            `1 - label_smoothing` on the label and `label_smoothing` spread
            uniformly over the vocabulary.
        return_correct: also return whether the arg-max logit is the label.
        return_log_sum_squared_probs: also return `log sum_v p_v^2` of each
            position's distribution `p = softmax(hidden @ kernel)`
            (`logsumexp(2 z) - 2 logsumexp(z)` of its logits `z`, float32),
            computed in the same pass over the chunks; WPO's normalizer
            (`kobjectives.ops.sequence_log_probs`).

    Returns:
        float32 tensor `labels.shape` of losses; with `return_correct` or
        `return_log_sum_squared_probs`, a tuple `(losses, correct,
        log_sum_squared_probs)` of the requested ones, in that order:
        `correct` float32 1.0/0.0, `log_sum_squared_probs` float32 `<= 0`,
        neither with a gradient. The loss of a label outside the vocabulary
        is NaN (see Raises).

    Raises:
        ValueError: bad `chunk_size` or `label_smoothing`, mismatched shapes,
            or known labels outside the vocabulary. Traced labels are checked
            by graph asserts, which XLA drops: under `jit_compile=True` an
            out-of-range label is not an error, and its gather would be
            clamped to the nearest id, so its loss is set to NaN instead
            (`kobjectives.ops.labels.poison_invalid_labels`): never a finite
            wrong value.
    """
    _check_chunk_size(chunk_size)
    _check_label_smoothing(label_smoothing)
    hidden = tf.convert_to_tensor(hidden)
    kernel = tf.convert_to_tensor(kernel)
    labels = tf.convert_to_tensor(labels)
    if not hidden.dtype.is_floating or not kernel.dtype.is_floating:
        raise ValueError(
            "`hidden` and `kernel` must be float tensors. Received dtypes "
            f"{hidden.dtype.name} and {kernel.dtype.name}."
        )
    if not labels.dtype.is_integer:
        raise ValueError(f"`labels` must be int token ids. Received dtype {labels.dtype.name}.")
    if kernel.shape.rank != 2:
        raise ValueError(
            "`kernel` must be `[hidden_dim, vocabulary_size]`. Received shape "
            f"{kernel.shape}. For a tied token embedding pass its transpose."
        )
    if hidden.shape.rank is None or hidden.shape.rank < 2:
        raise ValueError(f"`hidden` must be `[..., hidden_dim]` (rank >= 2). Received shape {hidden.shape}.")
    if hidden.shape[-1] is not None and kernel.shape[0] is not None and hidden.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"`hidden`'s last dimension ({hidden.shape[-1]}) must equal `kernel`'s first "
            f"(hidden_dim, {kernel.shape[0]}). Received shapes {hidden.shape} and {kernel.shape}."
        )
    if not labels.shape.is_compatible_with(hidden.shape[:-1]):
        raise ValueError(
            f"`labels` must have `hidden`'s leading shape {hidden.shape[:-1]}. "
            f"Received shape {labels.shape}."
        )
    vocabulary_size = kernel.shape[1]
    if vocabulary_size is None:
        raise ValueError("`kernel`'s vocabulary dimension must be static.")
    given_labels = labels
    labels = check_labels(labels, vocabulary_size)

    out_shape = tf.shape(labels)
    hidden_dim = tf.shape(hidden)[-1]
    flat_hidden = tf.reshape(hidden, [-1, hidden_dim])
    flat_labels = tf.reshape(labels, [-1])
    losses, correct, log_sum_squares = _chunked_losses(
        flat_hidden, kernel, flat_labels, int(chunk_size), float(label_smoothing),
        bool(return_log_sum_squared_probs),
    )
    losses = poison_invalid_labels(tf.reshape(losses, out_shape), given_labels, vocabulary_size)
    outputs = (losses,)
    if return_correct:
        outputs += (tf.reshape(tf.stop_gradient(correct), out_shape),)
    if return_log_sum_squared_probs:
        outputs += (tf.reshape(tf.stop_gradient(log_sum_squares), out_shape),)
    return outputs if len(outputs) > 1 else losses


def chunked_cross_entropy(
    hidden,
    kernel,
    labels,
    sample_weight=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
    label_smoothing=0.0,
):
    """Weighted mean cross-entropy of `softmax(hidden @ kernel)`, in chunks.

    The loss of a language model head without materializing the full
    `[batch, length, vocabulary]` logits (see
    `chunked_token_cross_entropy`): the weighted mean of the per-position
    losses, `sum(w * loss) / sum(w)`, with the weights summed over all
    replicas under `tf.distribute` (`kobjectives.ops.global_weighted_mean`:
    summing the replicas' values gives the exact global mean). Zero total
    weight gives 0, not NaN; a position of weight 0 never counts, even when
    its logits are NaN or infinite; an out-of-range label at a position of
    positive weight makes the loss NaN (under XLA too, see
    `chunked_token_cross_entropy`). Usable by any objective with a large
    vocabulary projection; it is XLA-compilable.

    Args:
        hidden: float tensor `[..., hidden_dim]`.
        kernel: float tensor `[hidden_dim, vocabulary_size]`; the logits are
            `hidden @ kernel`.
        labels: int tensor `hidden.shape[:-1]`, ids in `[0, vocabulary_size)`.
        sample_weight: optional non-negative float tensor broadcastable to
            `labels` (0 for positions that are not targets). None means all 1.
        chunk_size: int, positions whose logits are computed at once.
        label_smoothing: float in `[0, 1)`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.normal(size=(2, 5, 8)).astype("float32")
    >>> kernel = rng.normal(size=(8, 11)).astype("float32")
    >>> labels = rng.integers(0, 11, (2, 5))
    >>> loss = chunked_cross_entropy(hidden, kernel, labels, chunk_size=3)
    >>> plain = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
    ...     labels, hidden @ kernel))
    >>> bool(abs(float(loss) - float(plain)) < 1e-5)
    True
    """
    losses = chunked_token_cross_entropy(
        hidden, kernel, labels, chunk_size=chunk_size, label_smoothing=label_smoothing
    )
    if sample_weight is None:
        sample_weight = tf.ones_like(losses)
    return global_weighted_mean(losses, sample_weight)


def _num_chunks(num_positions, chunk_size):
    return (num_positions + chunk_size - 1) // chunk_size


def _chunked_losses(flat_hidden, kernel, flat_labels, chunk_size, label_smoothing,
                    log_sum_squares=False):
    """`(losses [N], correct [N], log_sum_squares [N] or None)` with a
    chunk-recomputing gradient (none for `correct` and `log_sum_squares`)."""
    compute_dtype = flat_hidden.dtype
    vocabulary_size = kernel.shape[1]
    num_positions = tf.shape(flat_hidden)[0]
    num_chunks = _num_chunks(num_positions, chunk_size)
    padded = num_chunks * chunk_size
    pad = padded - num_positions
    hidden_dim = tf.shape(flat_hidden)[1]

    def chunk_logits(hidden_chunk, kernel_c):
        return tf.cast(tf.matmul(hidden_chunk, kernel_c), tf.float32)

    @tf.custom_gradient
    def losses_fn(h, k):
        h_padded = tf.pad(h, [[0, pad], [0, 0]])
        y_padded = tf.pad(flat_labels, [[0, pad]])
        h_chunks = tf.reshape(h_padded, [num_chunks, chunk_size, hidden_dim])
        y_chunks = tf.reshape(y_padded, [num_chunks, chunk_size])
        k_c = tf.cast(k, compute_dtype)

        def forward_body(i, losses_ta, lse_ta, correct_ta, *square_ta):
            logits = chunk_logits(h_chunks[i], k_c)
            lse = tf.reduce_logsumexp(logits, axis=-1)
            label_logit = tf.gather(logits, y_chunks[i], axis=1, batch_dims=1)
            loss = lse - label_logit
            if label_smoothing:
                smooth = lse - tf.reduce_mean(logits, axis=-1)
                loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
            hit = tf.cast(
                tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y_chunks[i]),
                tf.float32,
            )
            if log_sum_squares:  # log sum_v p_v^2, from the logits already here
                square_ta = (square_ta[0].write(
                    i, tf.reduce_logsumexp(2.0 * logits, axis=-1) - 2.0 * lse),)
            return (
                i + 1,
                losses_ta.write(i, loss),
                lse_ta.write(i, lse),
                correct_ta.write(i, hit),
                *square_ta,
            )

        def new_array():
            return tf.TensorArray(
                tf.float32, size=num_chunks, element_shape=tf.TensorShape([chunk_size])
            )

        arrays = 4 if log_sum_squares else 3
        _, losses_ta, lse_ta, correct_ta, *square_ta = tf.while_loop(
            lambda i, *_: i < num_chunks,
            forward_body,
            (tf.constant(0), *(new_array() for _ in range(arrays))),
            parallel_iterations=1,
        )
        lse_chunks = lse_ta.stack()
        losses = tf.reshape(losses_ta.stack(), [-1])[:num_positions]
        correct = tf.reshape(correct_ta.stack(), [-1])[:num_positions]
        outputs = (losses, correct)
        if log_sum_squares:
            outputs += (tf.reshape(square_ta[0].stack(), [-1])[:num_positions],)

        def grad_fn(d_losses, *unused):
            del unused  # `correct` and `log_sum_squares` have no gradient
            d_padded = tf.reshape(
                tf.pad(tf.cast(d_losses, tf.float32), [[0, pad]]), [num_chunks, chunk_size]
            )
            upstream_all = d_padded

            def backward_body(i, d_hidden_ta, d_kernel):
                # A position whose loss has no gradient (weight 0, padding)
                # takes no part: its states may be NaN or infinite, and
                # `0 * nan` would poison the kernel's gradient.
                used = tf.not_equal(upstream_all[i], 0.0)[:, None]
                h_chunk = tf.where(used, h_chunks[i], tf.zeros_like(h_chunks[i]))
                logits = chunk_logits(h_chunk, k_c)
                upstream = d_padded[i]
                # d loss / d logits = (softmax - target) * upstream, built
                # without a one-hot buffer: the label's share is scattered.
                d_logits = tf.exp(logits - lse_chunks[i][:, None]) * upstream[:, None]
                d_logits = tf.where(used, d_logits, tf.zeros_like(d_logits))
                if label_smoothing:
                    d_logits -= (label_smoothing / vocabulary_size) * upstream[:, None]
                rows = tf.range(chunk_size)
                d_logits = tf.tensor_scatter_nd_sub(
                    d_logits,
                    tf.stack([rows, y_chunks[i]], axis=1),
                    (1.0 - label_smoothing) * upstream,
                )
                d_hidden = tf.matmul(tf.cast(d_logits, compute_dtype), k_c, transpose_b=True)
                d_kernel += tf.matmul(tf.cast(h_chunk, tf.float32), d_logits, transpose_a=True)
                return i + 1, d_hidden_ta.write(i, d_hidden), d_kernel

            d_hidden_ta = tf.TensorArray(
                compute_dtype, size=num_chunks, element_shape=tf.TensorShape([chunk_size, None])
            )
            _, d_hidden_ta, d_kernel = tf.while_loop(
                lambda i, *_: i < num_chunks,
                backward_body,
                (tf.constant(0), d_hidden_ta, tf.zeros_like(k, dtype=tf.float32)),
                parallel_iterations=1,
            )
            d_hidden = tf.reshape(d_hidden_ta.stack(), [padded, hidden_dim])[:num_positions]
            return tf.cast(d_hidden, h.dtype), tf.cast(d_kernel, k.dtype)

        return outputs, grad_fn

    outputs = losses_fn(flat_hidden, kernel)
    return outputs if log_sum_squares else (*outputs, None)
