"""Baselines a run reports its held-out metrics against: statistics of the
training tokens, the unigram model they give (its perplexity at the
targets) and the accuracy of a constant prediction."""

import numpy as np
import tensorflow as tf


def token_counts(tokenizer, documents, end_token=False):
    """Counts of every token id in the tokenized `documents` (list of str),
    special tokens zeroed: the unigram statistics of the baselines.

    Args:
        tokenizer: a keras-hub tokenizer (strings to ragged ids) with
            `special_token_ids` (and `end_token_id` with `end_token`).
        documents: list of str.
        end_token: also count the end token once per non-empty document:
            the targets of documents packed as `[start] tokens [end]` for a
            causal LM (`kobjectives.layers.SequencePacker`).

    Returns:
        int64 array `[vocabulary_size]`.

    Example:

    >>> import keras_hub
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    >>> token_counts(tokenizer, ["a b a", "b a"]).tolist()
    [0, 0, 0, 0, 0, 3, 2]
    >>> token_counts(tokenizer, ["a b a", "", "b a"], end_token=True).tolist()
    [0, 0, 0, 2, 0, 3, 2]
    """
    counts = np.zeros(tokenizer.vocabulary_size(), np.int64)
    documents_with_text = 0
    batches = tf.data.Dataset.from_tensor_slices(list(documents)).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
        documents_with_text += int((ids.row_lengths().numpy() > 0).sum())
    counts[list(tokenizer.special_token_ids)] = 0
    if end_token:
        counts[tokenizer.end_token_id] += documents_with_text
    return counts


def unigram_log_probs(counts, excluded_ids=()):
    """Log-probabilities of the add-one smoothed unigram model of `counts`.

    Args:
        counts: int array `[vocabulary_size]` (e.g. `token_counts`).
        excluded_ids: ids that are never targets (e.g. the special tokens):
            probability 0 (log-probability `-inf`); every other id gets
            `(count + 1) / total`.

    Returns:
        float64 array `[vocabulary_size]`.

    Reference:
        Laplace (add-one) smoothing; Jurafsky & Martin, "Speech and Language
        Processing", 3rd ed., ch. 3.

    Example:

    >>> import numpy as np
    >>> np.exp(unigram_log_probs([0, 3, 1], excluded_ids=[0])).tolist()
    [0.0, 0.6666666666666666, 0.3333333333333333]
    """
    smoothed = np.asarray(counts, np.float64) + 1.0
    smoothed[list(excluded_ids)] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(smoothed / smoothed.sum())


def unigram_perplexity(log_probs, targets):
    """Perplexity of a unigram model at the targets: `exp` of the weighted
    mean of `-log_probs[target]`.

    Args:
        log_probs: float array `[vocabulary_size]` (`unigram_log_probs`).
        targets: yields `(target_ids, weights)` batches (arrays or tensors of
            one shape); slots of weight 0 are skipped (an unused slot may
            hold an id of probability 0).

    Raises:
        ValueError: the targets have no weight.

    Example:

    >>> log_probs = unigram_log_probs([0, 1, 0, 0], excluded_ids=[0])  # p = 0, 1/2, 1/4, 1/4
    >>> unigram_perplexity(log_probs, [([[1, 2, 0]], [[1.0, 1.0, 0.0]])])  # exp(mean(log 2, log 4))
    2.82842712474619
    """
    log_probs = np.asarray(log_probs)
    nll = total = 0.0
    for ids, weights in targets:
        ids, weights = np.asarray(ids), np.asarray(weights)
        real = weights > 0
        nll += float((-log_probs[ids[real]] * weights[real]).sum())
        total += float(weights.sum())
    if not total:
        raise ValueError("The targets have no weight: there is no target to score.")
    return float(np.exp(nll / total))


def most_frequent_token(tokenizer, documents):
    """The most frequent non-special token id of the tokenized `documents`."""
    return int(token_counts(tokenizer, documents).argmax())


def constant_prediction_accuracy(token_id, targets):
    """Accuracy of always predicting `token_id`: `targets` yields
    `(target_ids, weights)` batches; the mean is over the weights.

    Example:

    >>> constant_prediction_accuracy(5, [([[5, 6]], [[1.0, 1.0]]), ([[5]], [[0.0]])])
    0.5
    """
    hits = total = 0.0
    for ids, weights in targets:
        weights = np.asarray(weights)
        hits += float(((np.asarray(ids) == token_id) * weights).sum())
        total += float(weights.sum())
    return hits / total if total else 0.0
