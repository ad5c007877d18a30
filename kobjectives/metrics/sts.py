"""Sentence-embedding evaluation: STS Spearman, retrieval, alignment/uniformity.

Thin wrappers over `kobjectives.ops.embedding_metrics`: they embed texts with
an `embed_fn` (strings -> `[n, dim]` embeddings, e.g. `text_embedder` over
a packing function of `kobjectives.data`) and
apply the math.
"""

import numpy as np
import tensorflow as tf

from kobjectives.ops import embedding_metrics


def embedding_function(model):
    """A `tf.function` from packed inputs `{"token_ids", "padding_mask",
    "segment_ids"}` to embeddings `[batch, dim]`: `model.embed(inputs,
    training=False)` (a `ContrastiveEncoder`), or for a backbone-holding
    objective with only `encode` (a `MaskedLanguageModel`) the mean of its
    hidden states over the real tokens.

    Example:

    >>> import keras_hub, numpy as np
    >>> from kobjectives.objectives import MaskedLanguageModel
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=20, num_layers=1, num_heads=1, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> embed = embedding_function(MaskedLanguageModel(backbone))
    >>> ids = np.array([[2, 7, 3, 0]])
    >>> embed({"token_ids": ids, "padding_mask": ids != 0,
    ...        "segment_ids": 0 * ids}).shape
    TensorShape([1, 8])
    """
    if hasattr(model, "embed"):
        return tf.function(lambda x: model.embed(x, training=False))
    return tf.function(
        lambda x: embedding_metrics.pool_sequence(
            model.encode(x, training=False), x["padding_mask"], "mean"
        )
    )


def text_embedder(model, pack):
    """A function `list[str] -> np.ndarray [n, dim]` over `model`.

    Args:
        model: anything with `embed(inputs, training=False)` taking packed
            `{"token_ids", "padding_mask", "segment_ids"}` (a
            `ContrastiveEncoder`), or a backbone-holding objective with
            `encode` (mean-pooled then); see `embedding_function`.
        pack: a function from a list of str to an iterable of packed input
            batches in order, such as
            `lambda texts: kobjectives.data.tokenized_texts(texts, tokenizer, 64)`.
    """
    return _text_embedder(embedding_function(model), pack)


def _text_embedder(embed, pack):
    def embed_texts(texts):
        return np.concatenate(
            [embed(x).numpy().astype(np.float32) for x in pack(texts)], axis=0)

    return embed_texts


def view_metrics(embed, views):
    """How an encoder treats texts and their augmented views.

    Alignment (mean squared distance of a text's and its view's normalized
    embeddings) and uniformity (log of the mean Gaussian potential between
    texts) of Wang & Isola (2020), and recall@1 of retrieving each view's
    text among all texts.

    Args:
        embed: packed inputs -> `[batch, dim]` embeddings
            (`embedding_function`).
        views: `(anchor, positive)` batch pairs, e.g.
            `kobjectives.data.pipelines.augmented_views`.

    Returns:
        dict of floats `alignment`, `uniformity`, `recall@1`.

    Reference:
        Wang and Isola, 2020, "Understanding Contrastive Representation
        Learning through Alignment and Uniformity on the Hypersphere",
        https://arxiv.org/abs/2005.10242.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> texts = rng.normal(size=(16, 4)).astype("float32")
    >>> noisy = texts + 0.01 * rng.normal(size=(16, 4)).astype("float32")
    >>> result = view_metrics(lambda x: x, [(texts[:8], noisy[:8]), (texts[8:], noisy[8:])])
    >>> result["recall@1"], result["alignment"] < 0.01
    (1.0, True)
    """
    first = np.concatenate([np.asarray(embed(a)) for a, _ in views])
    second = np.concatenate([np.asarray(embed(p)) for _, p in views])
    return {
        "alignment": float(embedding_metrics.alignment(first, second)),
        "uniformity": float(embedding_metrics.uniformity(first)),
        "recall@1": float(embedding_metrics.recall_at_k(second, first, k=1)),
    }


def evaluate_embeddings(model, views, sts=None, pack=None):
    """A sentence encoder on held-out views (`view_metrics`) and, with an
    `STSEvaluator`, on STS.

    Args:
        model: see `embedding_function`.
        views: `(anchor, positive)` batch pairs (`augmented_views`).
        sts: optional `STSEvaluator`.
        pack: with `sts`, the texts' packing (see `text_embedder`).

    Returns:
        `{"heldout": view_metrics(...)}`, plus `"sts"`: the `STSEvaluator`
        result, when `sts` is given.

    Raises:
        ValueError: `sts` without `pack`.
    """
    if sts is not None and pack is None:
        raise ValueError("evaluate_embeddings: `sts` needs `pack`, the function that packs "
                         "its texts into model inputs (see `text_embedder`).")
    embed = embedding_function(model)
    result = {"heldout": view_metrics(embed, views)}
    if sts is not None:
        result["sts"] = sts(_text_embedder(embed, pack))
    return result


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

    An embedding whose cosines rank the pairs as their gold scores do:

    >>> from kobjectives.data import SentencePairs
    >>> pairs = SentencePairs(["a cat", "a dog", "rain"], ["the cat", "a fox", "sun"],
    ...                       np.array([4.5, 2.0, 0.5]))
    >>> vectors = {"a cat": [1, 0], "the cat": [1, 0.1], "a dog": [1, 0],
    ...            "a fox": [1, 1], "rain": [1, 0], "sun": [0, 1]}
    >>> embed = lambda texts: np.array([vectors[t] for t in texts], "float32")
    >>> result = STSEvaluator(pairs)(embed)
    >>> result["spearman"], result["pairs"], round(result["alignment"], 4)
    (1.0, 3, 0.0099)

    On STS-B with a trained model: `pairs =
    kobjectives.data.read_stsb("../shared/data/stsb/sts-dev.csv")` and
    `STSEvaluator(pairs)(text_embedder(model, pack))`, where `pack = lambda
    texts: kobjectives.data.tokenized_texts(texts, tokenizer, 64)`.
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
