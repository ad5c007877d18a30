import numpy as np
import keras

from kobjectives.metrics import MaskedAccuracy
from kobjectives.metrics import Perplexity


def test_perplexity_is_corpus_level_over_weighted_positions():
    metric = Perplexity()
    probs_a = np.array([[[0.25, 0.75], [0.5, 0.5]]], "float32")
    probs_b = np.array([[[0.1, 0.9], [0.6, 0.4]]], "float32")
    metric.update_state([[1, 0]], np.log(probs_a), sample_weight=[[1.0, 0.0]])
    metric.update_state([[1, 0]], np.log(probs_b), sample_weight=[[1.0, 1.0]])
    mean_nll = -(np.log(0.75) + np.log(0.9) + np.log(0.6)) / 3
    np.testing.assert_allclose(float(metric.result()), np.exp(mean_nll), rtol=1e-5)
    metric.reset_state()
    assert float(metric.result()) == 1.0


def test_masked_accuracy_ignores_zero_weight_slots():
    metric = MaskedAccuracy()
    logits = np.array([[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]], "float32")
    metric.update_state([[1, 1, 0, 0]], logits, sample_weight=[[1, 1, 0, 1]])
    np.testing.assert_allclose(float(metric.result()), 2 / 3, rtol=1e-6)


def test_empty_state_is_finite():
    assert float(MaskedAccuracy().result()) == 0.0
    assert np.isfinite(float(Perplexity().result()))


def test_config_round_trip():
    for metric in (Perplexity(name="ppl"), MaskedAccuracy(name="acc")):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(metric)
        )
        assert type(restored) is type(metric) and restored.name == metric.name
