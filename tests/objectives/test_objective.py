"""Guards the Keras 3.15 workaround in `kobjectives.objectives.objective`."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

from kobjectives.objectives.objective import Objective


def _bool_input_model(cls):
    token_ids = keras.Input((4,), dtype="int32", name="token_ids")
    mask = keras.Input((4,), dtype="bool", name="padding_mask")
    x = keras.layers.Embedding(10, 3)(token_ids) * keras.ops.cast(mask, "float32")[..., None]
    return cls(inputs={"token_ids": token_ids, "padding_mask": mask},
               outputs=keras.layers.Dense(1)(keras.layers.Flatten()(x)))


def _fit(model):
    x = {"token_ids": np.ones((8, 4), "int32"), "padding_mask": np.ones((8, 4), bool)}
    model.compile(optimizer="sgd", loss="mse")
    return model.fit(x, np.zeros((8, 1)), batch_size=4, epochs=1, verbose=0)


def test_upstream_method_still_exists_with_the_same_signature():
    # If this fails, Keras changed the private method the workaround overrides:
    # re-check whether the upstream bug is fixed and drop or adapt Objective.
    params = list(inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters)
    assert params == ["self", "iterator", "data_batch"]


def test_upstream_bug_still_present(mirrored_strategy):
    # If this fails, upstream Keras builds from distributed bool batches itself
    # and `Objective._maybe_symbolic_build` can be deleted.
    with mirrored_strategy.scope():
        model = _bool_input_model(keras.Model)
    with pytest.raises(Exception, match="bool"):
        _fit(model)


class BoolInputObjective(Objective):
    # Subclassed, not functional: building a functional model from a class
    # makes Keras rewrite the `__bases__` of the class and its ancestors.
    trained_models = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(10, 3)
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        mask = keras.ops.cast(inputs["padding_mask"], "float32")[..., None]
        return self.dense(keras.ops.sum(self.embed(inputs["token_ids"]) * mask, axis=1))


def test_objective_trains_under_mirrored_with_bool_inputs(mirrored_strategy):
    with mirrored_strategy.scope():
        model = BoolInputObjective()
    assert np.isfinite(_fit(model).history["loss"][0])
    assert keras.Model in Objective.__bases__  # still a plain subclassed base


def test_upstream_reduce_per_replica_still_reduces_multi_worker_logs_on_axis_0():
    # If this fails, Keras changed how multi-worker step logs are reduced:
    # re-check `Objective._make_function` (docs/distributed.md, bug 2).
    from keras.src.backend.tensorflow import trainer as tf_trainer

    params = list(inspect.signature(TensorFlowTrainer._make_function).parameters)
    assert params == ["self", "step_function"]
    source = inspect.getsource(tf_trainer.reduce_per_replica)
    assert 'strategy.reduce("MEAN", v, axis=0)' in source
    assert "_collective_all_reduce_multi_worker(strategy)" in source


def test_scalar_logs_get_a_replica_axis_only_for_multi_worker(mirrored_strategy):
    from kobjectives import compat

    step = compat.scalar_logs_with_replica_axis(
        lambda data: {"loss": tf.constant(2.0), "vector": tf.ones([3])}
    )
    logs = step(None)
    assert logs["loss"].shape == (1,) and logs["vector"].shape == (3,)
    # Reducing the [1]-shaped log over axis 0 gives back the scalar.
    assert float(tf.reduce_mean(logs["loss"], axis=0)) == 2.0
    assert not compat.is_multi_worker(mirrored_strategy)
    assert not compat.is_multi_worker(tf.distribute.get_strategy())
    # Under mirrored the step function is passed through untouched.
    with mirrored_strategy.scope():
        model = BoolInputObjective()
    assert np.isfinite(_fit(model).history["loss"][0])
