"""`causal_lm_statistics` and `cpc_statistics` on real objectives: the
run-level held-out passes agree with the objectives' own metrics."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.layers import SequencePacker
from kobjectives.metrics import causal_lm_statistics
from kobjectives.metrics import cpc_statistics
from kobjectives.metrics.baselines import unigram_log_probs
from kobjectives.objectives import CausalLanguageModel
from kobjectives.objectives import ContrastivePredictiveCoding

VOCAB, LENGTH = 40, 12


def _gpt2():
    keras.utils.set_random_seed(0)
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=LENGTH, dropout=0.0)


def _windows(batches=3, batch_size=4):
    rng = np.random.default_rng(0)
    documents = [list(rng.integers(5, VOCAB, rng.integers(1, 9))) for _ in range(40)]
    windows = SequencePacker(LENGTH, end_token_id=3, start_token_id=2)(tf.ragged.constant(documents))
    return tf.data.Dataset.from_tensor_slices(windows).batch(
        batch_size, drop_remainder=True).take(batches)


def test_causal_lm_statistics_is_the_token_level_mean_of_the_objective():
    model = CausalLanguageModel(_gpt2(), chunk_size=5)
    model.compile(jit_compile=False)
    dataset = _windows()
    counts = np.zeros(VOCAB)
    counts[5:] = 1.0
    counts[7] = 50.0
    stats = causal_lm_statistics(model, dataset, unigram_log_probs(counts))
    # The objective's own perplexity metric is the same corpus-level mean.
    evaluation = model.evaluate(dataset, return_dict=True, verbose=0)
    np.testing.assert_allclose(stats["perplexity"], evaluation["perplexity"], rtol=1e-5)
    np.testing.assert_allclose(stats["next_token_accuracy"], evaluation["next_token_accuracy"],
                               rtol=1e-5)
    # The baseline: targets counted directly.
    labels = np.concatenate([x["token_ids"].numpy()[:, 1:] for x in dataset])
    keep = np.concatenate([
        (x["padding_mask"].numpy()[:, 1:] & x["padding_mask"].numpy()[:, :-1]
         & (x["segment_ids"].numpy()[:, 1:] == x["segment_ids"].numpy()[:, :-1]))
        for x in dataset])
    assert stats["tokens"] == keep.sum()
    np.testing.assert_allclose(stats["unigram_accuracy"], (labels[keep] == 7).mean())
    log_p = unigram_log_probs(counts)
    np.testing.assert_allclose(stats["unigram_perplexity"], np.exp(-log_p[labels[keep]].mean()),
                               rtol=1e-5)


def test_cpc_statistics_match_the_objectives_accuracy():
    model = ContrastivePredictiveCoding(_gpt2(), max_offset=3)
    model.compile(jit_compile=False)
    dataset = _windows(batches=1, batch_size=6).map(
        lambda x: {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]})
    stats = cpc_statistics(model, dataset)
    evaluation = model.evaluate(dataset, return_dict=True, verbose=0)
    assert len(stats["accuracy_per_offset"]) == 3
    np.testing.assert_allclose(stats["accuracy"], evaluation["cpc_accuracy"], rtol=1e-5)
    # At most 6 x 12 candidates per pair: the chance baseline is above 1/72.
    assert 1 / 72 <= stats["chance_accuracy"] < 1.0
    assert 0.0 < stats["chance_loss"] <= np.log(72) + 1e-6
