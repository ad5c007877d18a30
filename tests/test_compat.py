"""Guards every Keras private name `kobjectives.compat` uses: each test fails
when upstream renames, removes or changes what the compatibility function
relies on, so the use can be revisited."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

from kobjectives import compat
from kobjectives.objectives.objective import Objective


def _nested_model():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dropout(0.5)])
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(2)])
    return inner, outer


def test_flatten_layers_walks_nested_models():
    inner, outer = _nested_model()
    layers = compat.flatten_layers(outer)
    assert layers[0] is outer and inner in layers
    assert sum(isinstance(layer, keras.layers.Dense) for layer in layers) == 2
    assert any(isinstance(layer, keras.layers.Dropout) for layer in layers)


def test_seed_generators_are_the_state_dropout_draws_from():
    dropout = keras.layers.Dropout(0.5, seed=3)
    (generator,) = compat.seed_generators(dropout)
    x = np.ones((4, 64), "float32")
    before = np.array(generator.state)
    first = dropout(x, training=True).numpy()
    assert not np.array_equal(np.array(generator.state), before)
    generator.state.assign(before)  # restoring the state replays the mask
    np.testing.assert_array_equal(dropout(x, training=True).numpy(), first)
    assert compat.seed_generators(keras.layers.Dense(2)) == []


@pytest.mark.parametrize("make", [
    lambda: keras.layers.Dense(3),
    lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=3),
    lambda: keras.layers.Embedding(4, 3),
])
def test_lora_state_is_what_a_keras_checkpoint_does_not_restore(make):
    layer = make()
    layer.build((None, 4) if not isinstance(layer, keras.layers.Embedding) else (None,))
    assert compat.lora_state(layer) == []
    layer.enable_lora(2)
    base, a, b = compat.lora_state(layer)
    assert a.path.endswith("_a") and b.path.endswith("_b") and "lora" in a.path
    a.assign(np.full(a.shape, 0.5, "float32"))
    b.assign(np.full(b.shape, 0.25, "float32"))
    unmerged = np.array(base)
    store = {}
    layer.save_own_variables(store)
    # Upstream saves the merged kernel (alpha = rank: scale 1) ...
    merged = unmerged + np.array(a) @ np.array(b)
    np.testing.assert_allclose(store["0"], merged, rtol=1e-6)
    layer.load_own_variables(store)
    # ... and loads it as the base with zero factors: the training state is lost.
    np.testing.assert_allclose(np.array(base), merged, rtol=1e-6)
    assert not np.array(a).any() and not np.array(b).any()


def test_share_embedding_table_makes_one_variable():
    source, target = keras.layers.Embedding(10, 4), keras.layers.Embedding(10, 4)
    source.build((None,))
    target.build((None,))
    compat.share_embedding_table(source, target)
    assert target.embeddings is source.embeddings
    assert len(target.trainable_variables) == 1
    ids = keras.Input((3,), dtype="int32")
    joint = keras.Model(ids, keras.layers.Add()([source(ids), target(ids)]))
    assert len(joint.trainable_variables) == 1  # deduplicated by identity
    np.testing.assert_allclose(
        joint(np.array([[1, 2, 3]])), 2 * keras.ops.take(source.embeddings, [[1, 2, 3]], axis=0))
    with pytest.raises(ValueError, match="same shape"):
        other = keras.layers.Embedding(11, 4)
        other.build((None,))
        compat.share_embedding_table(source, other)


def test_loss_tracker_is_the_loss_log():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(np.ones((4, 2)), np.zeros((4, 1)), verbose=0)
    tracker = compat.loss_tracker(model)
    assert tracker.name == "loss"
    np.testing.assert_allclose(float(tracker.result()), history.history["loss"][-1], rtol=1e-6)


def test_symbolic_build_builds_model_and_optimizer():
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    compat.symbolic_build(model, (np.ones((2, 3), "float32"), np.zeros((2, 1), "float32")))
    assert model.built and model.optimizer.built
    assert int(model.optimizer.iterations) == 0


def test_is_multi_worker_reads_the_strategy(mirrored_strategy):
    assert hasattr(tf.distribute.MultiWorkerMirroredStrategy, "extended")
    assert not compat.is_multi_worker(mirrored_strategy)
    assert not compat.is_multi_worker(tf.distribute.get_strategy())


# -- TrainerWorkarounds --------------------------------------------------------


def test_upstream_trainer_methods_keep_their_signatures():
    # If this fails, Keras changed the private methods the workarounds override.
    assert list(inspect.signature(TensorFlowTrainer._maybe_symbolic_build).parameters) == [
        "self", "iterator", "data_batch"]
    assert list(inspect.signature(TensorFlowTrainer._make_function).parameters) == [
        "self", "step_function"]


def test_upstream_reduce_per_replica_still_reduces_multi_worker_logs_on_axis_0():
    # If this fails, Keras changed how multi-worker step logs are reduced:
    # re-check TrainerWorkarounds._make_function (docs/distributed.md, bug 2).
    source = inspect.getsource(tf_trainer.reduce_per_replica)
    assert 'strategy.reduce("MEAN", v, axis=0)' in source
    assert "_collective_all_reduce_multi_worker(strategy)" in source


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


def test_upstream_bool_build_bug_still_present(mirrored_strategy):
    # If this fails, upstream Keras builds from distributed bool batches itself
    # and TrainerWorkarounds._maybe_symbolic_build can be deleted.
    with mirrored_strategy.scope():
        model = _bool_input_model(keras.Model)
    with pytest.raises(Exception, match="bool"):
        _fit(model)


class BoolInputObjective(Objective):
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


def test_scalar_logs_get_a_replica_axis():
    step = compat.scalar_logs_with_replica_axis(
        lambda data: {"loss": tf.constant(2.0), "vector": tf.ones([3])})
    logs = step(None)
    assert logs["loss"].shape == (1,) and logs["vector"].shape == (3,)
    assert float(tf.reduce_mean(logs["loss"], axis=0)) == 2.0


def test_no_private_keras_name_outside_compat():
    # Every `obj._name` access on something other than self/cls/super() in the
    # package is in kobjectives/compat.py.
    import ast
    import pathlib

    import kobjectives

    root = pathlib.Path(kobjectives.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                if owner in ("self", "cls", "super()") or owner.startswith("kobjectives"):
                    continue
                found.append(f"{path.relative_to(root)}:{node.lineno}: {owner}.{node.attr}")
    # Attribute access on kobjectives' own modules is allowed.
    own = ("ops", "contrastive_ops", "rtd_ops", "masked_lm_ops", "pair_ops", "compat")
    found = [f for f in found if f.split(": ")[1].split(".")[0] not in own]
    assert found == []
