"""Sentence-embedding evaluation: STS Spearman, retrieval, alignment/uniformity.

Thin wrappers over `kobjectives.ops.embedding_metrics`: they embed texts with
an `embed_fn` (strings -> `[n, dim]` embeddings, e.g. `text_embedder`) and
apply the math.
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops import embedding_metrics


def text_embedder(model, tokenizer, sequence_length, batch_size=256):
    """A function `list[str] -> np.ndarray [n, dim]` over `model.embed`.

    Args:
        model: anything with `embed(inputs, training=False)` taking packed
            `{"token_ids", "padding_mask", "segment_ids"}` (a
            `ContrastiveEncoder`), or a backbone-holding objective with
            `encode` (mean-pooled then).
        tokenizer: the keras-hub tokenizer used in training.
        sequence_length: int, the packed length.
        batch_size: int.
    """
    from kobjectives.data.pipelines import tokenized_texts

    if hasattr(model, "embed"):
        embed = tf.function(lambda x: model.embed(x, training=False))
    else:
        embed = tf.function(
            lambda x: embedding_metrics.pool_sequence(
                model.encode(x, training=False), x["padding_mask"], "mean"
            )
        )

    def embed_texts(texts):
        batches = tokenized_texts(texts, tokenizer, sequence_length, batch_size)
        return np.concatenate([embed(x).numpy().astype(np.float32) for x in batches], axis=0)

    return embed_texts


class STSEvaluator:
    """Spearman correlation between cosine similarity and gold STS scores.

    The standard STS protocol (Reimers & Gurevych, 2019; SimCSE, Gao et al.,
    2021, "all" setting): embed both sentences of every pair, take the cosine
    of each pair, and report Spearman's rank correlation with the gold scores
    over the whole set (ties get average ranks). Also reports alignment over
    pairs scored `>= positive_threshold` (4.0 on STS-B's 0-5 scale, as
    SimCSE's analysis) and uniformity over all sentences (Wang & Isola, 2020).

    Args:
        pairs: a `kobjectives.data.SentencePairs` (e.g. from `read_stsb`).
        positive_threshold: gold score at or above which a pair is a positive
            pair for `alignment`.

    Example:

    ```python
    pairs = kobjectives.data.read_stsb("../shared/data/stsb/sts-dev.csv")
    evaluator = kobjectives.metrics.STSEvaluator(pairs)
    result = evaluator(kobjectives.metrics.text_embedder(model, tokenizer, 64))
    result["spearman"]
    ```
    """

    def __init__(self, pairs, positive_threshold=4.0):
        if len(pairs) < 2:
            raise ValueError(f"STS evaluation needs at least 2 pairs. Received {len(pairs)}.")
        self.pairs = pairs
        self.positive_threshold = float(positive_threshold)

    def __call__(self, embed_fn):
        """Embeds the pairs with `embed_fn` (list of str -> `[n, dim]`).

        Returns:
            dict with `spearman`, `alignment` (NaN when no pair reaches the
            threshold), `uniformity` (floats) and `pairs` (int).
        """
        first = np.asarray(embed_fn(self.pairs.sentences1))
        second = np.asarray(embed_fn(self.pairs.sentences2))
        cosines = embedding_metrics.cosine_similarity(first, second)
        result = {
            "spearman": float(embedding_metrics.spearman(cosines, self.pairs.scores)),
            "pairs": len(self.pairs),
        }
        positive = self.pairs.scores >= self.positive_threshold
        result["alignment"] = (
            float(embedding_metrics.alignment(first[positive], second[positive]))
            if positive.any() else float("nan")
        )
        result["uniformity"] = float(
            embedding_metrics.uniformity(np.concatenate([first, second], axis=0))
        )
        return result


def retrieval_recall(embed_fn, queries, documents, k=(1, 5, 10)):
    """Recall@k of retrieving `documents[i]` for `queries[i]` among all documents.

    Returns:
        dict `{"recall@k": float}`.
    """
    q = np.asarray(embed_fn(list(queries)))
    d = np.asarray(embed_fn(list(documents)))
    recalls = embedding_metrics.recall_at_k(q, d, k=list(k))
    return {f"recall@{key}": float(value) for key, value in recalls.items()}
