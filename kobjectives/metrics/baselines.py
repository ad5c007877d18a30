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


def _token_rows(tokenizer, texts):
    """Each text's token ids (a list of int arrays)."""
    rows = []
    batches = tf.data.Dataset.from_tensor_slices(list(texts)).batch(1024).map(tokenizer)
    for ids in batches:
        rows.extend(np.asarray(row, np.int64) for row in ids.numpy())
    return rows


class NaiveBayesBagOfWords:
    """The bag-of-words baseline of text classification: multinomial naive
    Bayes over token counts with add-one smoothing (McCallum and Nigam,
    1998, "A Comparison of Event Models for Naive Bayes Text
    Classification"). Trained on the run's training texts with the run's
    tokenizer, so it sees exactly the data the model sees; special tokens
    are ignored.

    Args:
        tokenizer: a keras-hub tokenizer (strings to ragged ids) with
            `vocabulary_size()` and `special_token_ids`.
        texts: list of str, the training texts (a sentence pair: join it).
        labels: list of int class ids in `[0, num_classes)`.
        num_classes: int.

    Example:

    >>> import keras_hub
    >>> tokenizer = keras_hub.models.BertTokenizer(
    ...     vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"])
    >>> bow = NaiveBayesBagOfWords(tokenizer, ["good film", "bad film", "good"], [1, 0, 1], 2)
    >>> bow.predict(["good", "bad", "film bad"]).tolist()
    [1, 0, 0]
    """

    def __init__(self, tokenizer, texts, labels, num_classes):
        labels = np.asarray(labels, np.int64)
        if len(labels) != len(texts) or not len(labels):
            raise ValueError(
                f"`texts` ({len(texts)}) and `labels` ({len(labels)}) must be non-empty and "
                "of the same length.")
        self.tokenizer = tokenizer
        vocabulary_size = tokenizer.vocabulary_size()
        counts = np.zeros([num_classes, vocabulary_size], np.float64)
        for ids, label in zip(_token_rows(tokenizer, texts), labels):
            counts[label] += np.bincount(ids, minlength=vocabulary_size)
        special = list(getattr(tokenizer, "special_token_ids", []) or [])
        counts[:, special] = 0.0
        smoothed = counts + 1.0
        smoothed[:, special] = 0.0
        probabilities = smoothed / smoothed.sum(axis=1, keepdims=True)
        # Special tokens (probability 0) score 0: they never vote.
        self.log_likelihood = np.log(np.where(probabilities > 0, probabilities, 1.0))
        class_counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        self.log_prior = np.log((class_counts + 1.0) / (class_counts.sum() + num_classes))

    def predict(self, texts):
        """int64 `[len(texts)]`: the most probable class of each text."""
        scores = [self.log_prior + self.log_likelihood[:, ids].sum(axis=1)
                  for ids in _token_rows(self.tokenizer, texts)]
        return np.argmax(np.asarray(scores).reshape(len(scores), -1), axis=1)
