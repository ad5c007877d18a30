"""The sentence-embedding evaluation of `kobjectives.metrics.sts`."""

import keras
import keras_hub
import numpy as np
import pytest

from kobjectives.data import SentencePairs
from kobjectives.data.pipelines import augmented_views
from kobjectives.data.pipelines import tokenized_texts
from kobjectives.layers import TextAugmenter
from kobjectives.metrics import STSEvaluator
from kobjectives.metrics import embedding_function
from kobjectives.metrics import evaluate_embeddings
from kobjectives.metrics import text_embedder
from kobjectives.metrics import view_metrics
from kobjectives.objectives import ContrastiveEncoder
from kobjectives.objectives import MaskedLanguageModel
from kobjectives.ops import embedding_metrics

WORDS = [f"w{i}" for i in range(30)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def _backbone():
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=12)


def _inputs(rows):
    ids = np.array(rows, "int32")
    return {"token_ids": ids, "padding_mask": (ids != 0).astype("int32"),
            "segment_ids": np.zeros_like(ids)}


def test_embedding_function_embeds_or_mean_pools():
    backbone = _backbone()
    x = _inputs([[2, 7, 8, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
    encoder = ContrastiveEncoder(backbone, pooling="cls")
    np.testing.assert_allclose(embedding_function(encoder)(x), encoder.embed(x), atol=1e-6)
    # Without `embed`: the mean of the hidden states over the real tokens only.
    hidden = backbone({k: x[k] for k in ("token_ids", "padding_mask", "segment_ids")})
    hidden = np.asarray(hidden["sequence_output"])
    expected = [hidden[0, :4].mean(0), hidden[1, :3].mean(0)]
    np.testing.assert_allclose(embedding_function(MaskedLanguageModel(backbone))(x), expected,
                               atol=1e-5)


def test_view_metrics_on_known_embeddings():
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(12, 5)).astype("float32")
    views = [(texts[:6], texts[:6]), (texts[6:], texts[6:])]
    same = view_metrics(lambda x: x, views)
    assert same["alignment"] == pytest.approx(0.0, abs=1e-6) and same["recall@1"] == 1.0
    assert same["uniformity"] == pytest.approx(float(embedding_metrics.uniformity(texts)), rel=1e-6)
    # Views that point to the wrong text: each view is its neighbour's text.
    shifted = np.roll(texts, 1, axis=0)
    wrong = view_metrics(lambda x: x, [(texts, shifted)])
    assert wrong["recall@1"] == 0.0 and wrong["alignment"] > 0.5


def test_evaluate_embeddings_matches_its_parts():
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
    encoder = ContrastiveEncoder(_backbone(), pooling="mean")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(20)]
    augmenter = TextAugmenter(len(VOCAB), deletion_rate=0.2, unselectable_token_ids=(0, 1, 2, 3, 4))
    views = augmented_views(texts, tokenizer, 10, augmenter, batch_size=8)
    pairs = SentencePairs(texts[:10], texts[10:], np.linspace(0.0, 5.0, 10))
    sts = STSEvaluator(pairs)
    def pack(texts):
        return tokenized_texts(texts, tokenizer, 10, batch_size=8)

    result = evaluate_embeddings(encoder, views, sts, pack=pack)
    assert result["heldout"] == view_metrics(embedding_function(encoder), views)
    assert result["sts"] == pytest.approx(sts(text_embedder(encoder, pack)))
    assert set(evaluate_embeddings(encoder, views)) == {"heldout"}
    with pytest.raises(ValueError, match="`sts` needs `pack`"):
        evaluate_embeddings(encoder, views, sts)
