"""Baselines of sentence-pair pretraining (BERT NSP / ALBERT SOP)."""

import numpy as np


def pair_label_baselines(labels):
    """The majority-label baseline of the pair head on held-out pairs.

    Args:
        labels: yields batches of pair labels (`[batch]` ints: 0 in order /
            actual next, 1 swapped / random), e.g.
            `(y["pair_labels"] for _, y in dataset)` of
            `kobjectives.data.sentence_pair_dataset`.

    Returns:
        dict with `majority_pair_accuracy` (always predicting the more
        frequent label), `negative_fraction` (the share of label 1) and
        `pairs` (how many).

    Raises:
        ValueError: no label.

    Example:

    >>> pair_label_baselines([[0, 1, 1], [1]])
    {'majority_pair_accuracy': 0.75, 'negative_fraction': 0.75, 'pairs': 4}
    """
    negatives = pairs = 0.0
    for batch in labels:
        batch = np.asarray(batch)
        negatives += float(batch.sum())
        pairs += batch.size
    if not pairs:
        raise ValueError("`labels` holds no pair: there is no held-out pair to score.")
    fraction = negatives / pairs
    return {
        "majority_pair_accuracy": max(fraction, 1.0 - fraction),
        "negative_fraction": fraction,
        "pairs": int(pairs),
    }
