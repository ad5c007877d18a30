"""Baselines a run reports its held-out metrics against: statistics of the
training tokens and the accuracy of a constant prediction."""

import numpy as np
import tensorflow as tf


def token_counts(tokenizer, documents):
    """Counts of every token id in the tokenized `documents` (list of str),
    special tokens zeroed: the unigram statistics of the baselines.

    Example:

    >>> import keras_hub
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    >>> token_counts(tokenizer, ["a b a", "b a"]).tolist()
    [0, 0, 0, 0, 0, 3, 2]
    """
    counts = np.zeros(tokenizer.vocabulary_size(), np.int64)
    batches = tf.data.Dataset.from_tensor_slices(list(documents)).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
    counts[list(tokenizer.special_token_ids)] = 0
    return counts


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
