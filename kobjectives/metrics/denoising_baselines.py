"""Held-out baselines and metrics of denoising seq2seq pretraining (T5 span
corruption, BART noising), over `(x, target_ids, target_weights)` batches
such as `kobjectives.data.seq2seq` yields.

- `unigram_baseline`: a unigram model of the targets (accuracy of its
  most frequent token, perplexity), over all target tokens and over the
  text tokens alone.
- `copy_baselines`: BART's copying baselines (the noised input as output;
  a pointer-copy heuristic under teacher forcing).
- `content_token_accuracy`: a model's teacher-forced accuracy over the text
  tokens of the targets.

"Text tokens" are the target tokens whose ids are not in `excluded_ids`
(padding, EOS, `[CLS]`, T5's sentinels).
"""

import math

import numpy as np
import tensorflow as tf


def unigram_baseline(train_dataset, validation_dataset, vocabulary_size, excluded_ids=(),
                     train_batches=100):
    """Held-out token accuracy and perplexity of a unigram model of targets.

    The unigram distribution is estimated (add-one smoothed) from the real
    target tokens of `train_batches` training batches (sentinels and EOS
    included); its accuracy is that of always predicting its most frequent
    token. `content_token_accuracy` is the same over the target tokens not in
    `excluded_ids` (sentinels, EOS: the text itself), always predicting the
    most frequent such token.

    Args:
        train_dataset: a `tf.data.Dataset` of `(x, target_ids,
            target_weights)` batches (`[batch, length]`).
        validation_dataset: an iterable of the same, the held-out data.
        vocabulary_size: int, the number of token ids.
        excluded_ids: ids that are not text.
        train_batches: int, the training batches counted.

    Returns:
        dict with `token_accuracy`, `perplexity`, `token` (the most frequent
        id), `content_token_accuracy`, `content_token`.

    Example:

    >>> train = tf.data.Dataset.from_tensors(({}, [[5, 5, 6, 3]], [[1.0, 1.0, 1.0, 1.0]]))
    >>> result = unigram_baseline(train, train, 7, excluded_ids=(3,))
    >>> result["token"], result["token_accuracy"], result["content_token_accuracy"]
    (5, 0.5, 0.6666666666666666)
    """
    counts = np.ones(vocabulary_size, np.float64)
    for _, targets, weights in train_dataset.take(train_batches):
        counts += np.bincount(np.asarray(targets).ravel(), weights=np.asarray(weights).ravel(),
                              minlength=vocabulary_size)
    log_p = np.log(counts / counts.sum())
    top = int(counts.argmax())
    content_counts = counts.copy()
    content_counts[list(excluded_ids)] = 0
    content_top = int(content_counts.argmax())
    nll = hits = total = content_hits = content_total = 0.0
    for _, targets, weights in validation_dataset:
        t, w = np.asarray(targets).ravel(), np.asarray(weights).ravel()
        nll -= float((log_p[t] * w).sum())
        hits += float(((t == top) * w).sum())
        total += float(w.sum())
        content = w * ~np.isin(t, list(excluded_ids))
        content_hits += float(((t == content_top) * content).sum())
        content_total += float(content.sum())
    return {
        "token_accuracy": hits / total,
        "perplexity": math.exp(nll / total),
        "token": top,
        "content_token_accuracy": content_hits / max(content_total, 1.0),
        "content_token": content_top,
    }


def copy_baselines(validation_dataset, mask_token_id, excluded_ids=()):
    """Held-out teacher-forced accuracy of two copying baselines for BART
    (the target is the original sequence, the encoder reads its noised copy).

    - `copy`: the output is the noised input itself, position by position.
    - `pointer_copy`: a copying heuristic given the true previous target
      token (as teacher forcing gives the model): predict the encoder token
      after the one copied last, skipping `mask_token_id`; after each target
      token, move the pointer to its next occurrence in the encoder input
      (searching forward first, then from the start: a permuted sentence);
      a token found nowhere (it was under a mask) leaves the pointer.

    Both are counted over the real target tokens (`token_accuracy`) and over
    those not in `excluded_ids` (`content_token_accuracy`).

    Args:
        validation_dataset: an iterable of `(x, target_ids, target_weights)`
            with `x["encoder_token_ids"]`, `x["encoder_padding_mask"]`
            `[batch, source_length]`.
        mask_token_id: int, the noising's mask id.
        excluded_ids: ids that are not text.

    Returns:
        dict `{"copy": {...}, "pointer_copy": {...}}` of
        `{"token_accuracy", "content_token_accuracy"}`.

    Reference:
        Lewis et al., 2020, "BART", https://arxiv.org/abs/1910.13461

    Example:

    Target `[CLS] a b c d [SEP]`, encoder `[CLS] a [MASK] d [SEP]` (`b c`
    infilled): copying matches `[CLS] a`; the pointer also finds `d [SEP]`.

    >>> x = {"encoder_token_ids": np.array([[2, 10, 4, 13, 3]]),
    ...      "encoder_padding_mask": np.array([[1, 1, 1, 1, 1]])}
    >>> target = np.array([[2, 10, 11, 12, 13, 3]])
    >>> result = copy_baselines([(x, target, np.ones((1, 6)))], 4, excluded_ids=(2, 3))
    >>> result["copy"]["token_accuracy"], result["pointer_copy"]["token_accuracy"]
    (0.3333333333333333, 0.6666666666666666)
    """
    excluded = np.asarray(sorted(excluded_ids) or [-1])
    counts = {name: np.zeros(4) for name in ("copy", "pointer_copy")}
    for x, targets, weights in validation_dataset:
        encoder = np.asarray(x["encoder_token_ids"])
        encoder_mask = np.asarray(x["encoder_padding_mask"]).astype(bool)
        targets, weights = np.asarray(targets), np.asarray(weights)
        for row in range(targets.shape[0]):
            source = encoder[row][encoder_mask[row]]
            target = targets[row][weights[row] > 0]
            content = ~np.isin(target, excluded)
            length = min(len(source), len(target))
            aligned = np.zeros(len(target), bool)
            aligned[:length] = source[:length] == target[:length]
            pointed = np.zeros(len(target), bool)
            pointer = -1
            for i, token in enumerate(target):
                guess = pointer + 1
                while guess < len(source) and source[guess] == mask_token_id:
                    guess += 1
                pointed[i] = guess < len(source) and source[guess] == token
                found = np.flatnonzero(source[pointer + 1:] == token)
                if found.size:
                    pointer = pointer + 1 + int(found[0])
                else:
                    found = np.flatnonzero(source == token)
                    if found.size:
                        pointer = int(found[0])
            for name, hits in (("copy", aligned), ("pointer_copy", pointed)):
                counts[name] += (hits.sum(), len(target), (hits & content).sum(), content.sum())
    return {
        name: {"token_accuracy": float(c[0] / max(c[1], 1.0)),
               "content_token_accuracy": float(c[2] / max(c[3], 1.0))}
        for name, c in counts.items()
    }


def content_token_accuracy(model, validation_dataset, excluded_ids=()):
    """The model's teacher-forced accuracy over the held-out target tokens
    not in `excluded_ids` (the text, without sentinels and EOS).

    Returns `(text_argmax, any_argmax)`: the first predicts, at each text
    position, the model's most probable *text* token (the excluded ids'
    logits are ignored), so it is told, as the constant baseline
    `unigram_baseline(...)["content_token_accuracy"]` is, that the position
    holds text; the second takes the arg-max over the whole vocabulary, so a
    position where the model rates "the span ends here" (the next sentinel)
    above every single text token counts as a miss.

    Args:
        model: a callable `model(x, training=False)` -> logits
            `[batch, length, vocabulary_size]` (e.g. `DenoisingSeq2Seq`).
        validation_dataset: an iterable of `(x, target_ids, target_weights)`.
        excluded_ids: ids that are not text.

    Returns:
        `(text_argmax, any_argmax)`, two floats in [0, 1].

    Example:

    >>> logits = np.zeros((1, 2, 4), "float32")
    >>> logits[0, :, 3] = 2.0   # an excluded id on top everywhere
    >>> logits[0, 0, 1] = 1.0   # the right text token second at position 0
    >>> model = lambda x, training=False: tf.constant(logits)
    >>> content_token_accuracy(model, [({}, [[1, 2]], [[1.0, 1.0]])], excluded_ids=(3,))
    (0.5, 0.0)
    """
    excluded = tf.constant(sorted(excluded_ids) or [-1], tf.int32)

    @tf.function
    def counts(x, targets, weights):
        logits = tf.cast(model(x, training=False), tf.float32)
        ids = tf.range(tf.shape(logits)[-1], dtype=tf.int32)
        allowed = tf.logical_not(tf.reduce_any(tf.equal(ids[:, None], excluded[None, :]), axis=-1))
        text_logits = tf.where(allowed, logits, tf.constant(-float("inf"), logits.dtype))
        targets = tf.cast(targets, tf.int32)
        content = tf.logical_not(tf.reduce_any(tf.equal(targets[..., None], excluded), axis=-1))
        w = tf.cast(weights, tf.float32) * tf.cast(content, tf.float32)
        hits = [tf.reduce_sum(w * tf.cast(tf.equal(
            tf.argmax(z, axis=-1, output_type=tf.int32), targets), tf.float32))
            for z in (text_logits, logits)]
        return tf.stack([*hits, tf.reduce_sum(w)])

    totals = np.zeros(3)
    for x, targets, weights in validation_dataset:
        totals += counts(x, targets, weights).numpy()
    return float(totals[0] / max(totals[2], 1.0)), float(totals[1] / max(totals[2], 1.0))
