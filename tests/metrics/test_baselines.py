import keras_hub
import numpy as np
import pytest

from kobjectives.metrics import baselines

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]


def test_token_counts_count_the_end_token_of_each_document_with_text():
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)
    counts = baselines.token_counts(tokenizer, ["a b a", "", "b zz", "b"], end_token=True)
    # "zz" is [UNK] (not a special token: it is a target); three documents have text.
    assert counts.tolist() == [0, 1, 0, 3, 0, 2, 3]


def test_unigram_log_probs_exclude_ids_and_smooth_the_rest():
    log_probs = baselines.unigram_log_probs(np.array([5, 0, 3]), excluded_ids=[0])
    np.testing.assert_allclose(np.exp(log_probs), [0.0, 1 / 5, 4 / 5])


def test_unigram_perplexity_skips_unused_slots_and_refuses_no_targets():
    log_probs = baselines.unigram_log_probs(np.array([7, 1, 1]), excluded_ids=[0])
    # Slot 0 holds the excluded id (probability 0) with weight 0: not scored.
    value = baselines.unigram_perplexity(log_probs, [([[0, 1, 2]], [[0.0, 1.0, 1.0]])])
    assert value == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no weight"):
        baselines.unigram_perplexity(log_probs, [([[1, 2]], [[0.0, 0.0]])])


def test_naive_bayes_bag_of_words_matches_a_hand_computation():
    import keras_hub

    from kobjectives.metrics.baselines import NaiveBayesBagOfWords

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    texts, labels = ["good film good", "bad film", "bad"], [1, 0, 0]
    bow = NaiveBayesBagOfWords(tokenizer, texts, labels, 2)
    # Add-one smoothing over the 4 non-special tokens ([UNK], good, bad, film):
    # class 0 saw bad x2 and film x1, class 1 good x2 and film x1.
    np.testing.assert_allclose(np.exp(bow.log_likelihood[0, 5:]), [1 / 7, 3 / 7, 2 / 7])
    np.testing.assert_allclose(np.exp(bow.log_likelihood[1, 5:]), [3 / 7, 1 / 7, 2 / 7])
    np.testing.assert_allclose(np.exp(bow.log_prior), [3 / 5, 2 / 5])
    # "film": equal likelihoods, so the prior decides; "[MASK] good": specials never vote.
    assert bow.predict(["film", "[MASK] good", "bad bad good"]).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="same length"):
        NaiveBayesBagOfWords(tokenizer, texts, [1], 2)
