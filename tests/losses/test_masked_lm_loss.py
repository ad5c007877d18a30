import numpy as np
import pytest
import keras

from kobjectives import ops
from kobjectives.losses import MaskedLMLoss


def test_matches_op_and_ignores_unused_slots():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 11)).astype("float32")
    labels = rng.integers(0, 11, (2, 4))
    weights = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    loss = MaskedLMLoss()(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(float(loss), float(ops.masked_lm_loss(labels, logits, weights)))
    # Differs from Keras' default reduction, which divides by all 8 slots.
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert abs(float(keras_loss(labels, logits, sample_weight=weights)) - float(loss)) > 1e-3


def test_reduction_none_returns_weighted_per_position_losses():
    logits = np.log(np.array([[[0.5, 0.5], [0.2, 0.8]]], "float32"))
    losses = MaskedLMLoss(reduction="none")([[0, 1]], logits, sample_weight=[[1.0, 0.0]])
    np.testing.assert_allclose(losses.numpy(), [[np.log(2), 0.0]], rtol=1e-6)


def test_config_round_trip():
    loss = MaskedLMLoss(reduction="none", name="x")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, MaskedLMLoss)
    assert restored.get_config() == loss.get_config()


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        MaskedLMLoss(reduction="sum")


def test_nan_logits_in_unused_slots_do_not_poison_the_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 11)).astype("float32")
    labels = rng.integers(0, 11, (2, 4))
    weights = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], "float32")
    poisoned = logits.copy()
    poisoned[weights == 0] = np.nan
    clean = float(MaskedLMLoss()(labels, logits, sample_weight=weights))
    np.testing.assert_allclose(float(MaskedLMLoss()(labels, poisoned, sample_weight=weights)), clean)
    losses = MaskedLMLoss(reduction="none")(labels, poisoned, sample_weight=weights).numpy()
    assert np.all(losses[weights == 0] == 0.0) and np.all(np.isfinite(losses))


def test_float_labels_and_negative_weights_are_rejected():
    logits = np.zeros((1, 2, 5), "float32")
    with pytest.raises(ValueError, match="labels"):
        MaskedLMLoss()(np.array([[1.0, 2.7]]), logits)
    with pytest.raises(ValueError, match="sample_weight"):
        MaskedLMLoss()([[1, 2]], logits, sample_weight=[[1.0, -0.5]])
    with pytest.raises(ValueError, match="sample_weight"):
        MaskedLMLoss(reduction="none")([[1, 2]], logits, sample_weight=[[1.0, -0.5]])
