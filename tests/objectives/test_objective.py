"""The roles of `Objective`: frozen models, named losses, the per-loss
gradient hook."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.objectives import FrozenModel
from kobjectives.objectives import Objective
from kobjectives.objectives import precompute_frozen_outputs
from kobjectives.ops.reduction import global_weighted_mean
from tests.harness import ObjectiveCase
from tests.harness import assert_jit_matches_eager
from tests.harness import assert_keras_round_trip_continues
from tests.harness import assert_mirrored_matches_one_device
from tests.harness import fit


@keras.saving.register_keras_serializable(package="kobjectives_tests")
class Student(Objective):
    """Matches a frozen teacher's outputs, plus an L2 penalty: two named losses."""

    frozen_models = ("teacher",)
    precomputed_outputs = {"teacher": ("teacher_out",)}
    loss_names = ("match", "l2")

    def __init__(self, backbone, teacher=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.teacher = self.freeze(teacher)
        self.built = backbone.built

    def call(self, x, training=False):
        return self.backbone(x["features"], training=training)

    def compute_frozen_outputs(self, name, x):
        return {"teacher_out": self.teacher(x["features"])}

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        target = self.frozen_outputs("teacher", x)["teacher_out"]
        weights = x.get("weights", tf.ones_like(y_pred[:, 0]))
        terms = {
            "match": (tf.reduce_sum((y_pred - target) ** 2, axis=-1), weights),
            # A scalar term must be this replica's share of the global value.
            "l2": global_weighted_mean(tf.reduce_sum(y_pred ** 2, axis=-1), 1.0),
        }
        return {name: terms[name] for name in self.loss_names}


def net(seed, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dropout(dropout),
        keras.layers.Dense(2)])


X = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
W = np.array([1.0, 0.0] * 8, "float32")


def dataset():
    return tf.data.Dataset.from_tensor_slices({"features": X, "weights": W}).batch(8)


def test_frozen_model_is_not_trained_tracked_or_saved(tmp_path):
    teacher = net(1, dropout=0.5)
    model = Student(net(0), teacher)
    assert len(model.weights) == 4 and len(model.trainable_variables) == 4
    assert all(all(w is not v for v in teacher.weights) for w in model.weights)
    assert not teacher.trainable
    # Called with training=False: dropout does not fire, outputs equal inference.
    np.testing.assert_allclose(model.teacher(X), teacher(X, training=False), atol=0)
    before = [w.numpy() for w in teacher.weights]
    model.compile(optimizer="sgd", jit_compile=True)
    model.fit(dataset(), epochs=2, verbose=0)
    for old, new in zip(before, teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())
    model.save_weights(tmp_path / "student.weights.h5")
    restored = Student(net(2), teacher)
    restored.load_weights(tmp_path / "student.weights.h5")  # 4 weights, no teacher's
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("jit_compile,arrays", [(False, False), (True, False), (True, True)])
def test_fit_traces_the_train_step_once_and_trains_as_before(jit_compile, arrays):
    """Keras (no strategy) builds at the first trace, where the optimizer's
    new variables make `tf.function` trace the step twice; the objective
    is built from the element spec (or the arrays' shapes) first, the batch
    dimension unknown."""

    def train(build_first):
        traces = []

        class Counted(Student):
            def train_step(self, data):
                traces.append(1)
                return super().train_step(data)

        model = Counted(net(0), net(1))
        if not build_first:
            model._build_from_element_spec = lambda spec: None
        model.compile(optimizer="adam", jit_compile=jit_compile)
        assert dataset().element_spec["features"].shape.as_list() == [None, 3]
        data = dict(x={"features": X, "weights": W}, batch_size=8, shuffle=False) \
            if arrays else dict(x=dataset())
        history = model.fit(**data, epochs=2, verbose=0).history
        return len(traces), history, [w.numpy() for w in model.weights]

    traces, history, weights = train(build_first=True)
    keras_traces, keras_history, keras_weights = train(build_first=False)
    assert (traces, keras_traces) == (1, 2)
    np.testing.assert_allclose(history["loss"], keras_history["loss"], rtol=1e-6)
    for a, b in zip(weights, keras_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_named_losses_are_weighted_summed_and_tracked():
    model = Student(net(0), net(1), loss_weights={"l2": 0.25})
    assert model.loss_weights == {"match": 1.0, "l2": 0.25}
    batch = {"features": X[:8], "weights": W[:8]}
    pred = model(batch).numpy()
    target = model.teacher(X[:8]).numpy()
    match = ((pred - target) ** 2).sum(-1)
    expected_match = (match * W[:8]).sum() / W[:8].sum()  # weight-0 rows excluded
    expected_l2 = (pred ** 2).sum(-1).mean()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["match_loss"], expected_match, rtol=1e-5)
    np.testing.assert_allclose(logs["l2_loss"], expected_l2, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], expected_match + 0.25 * expected_l2, rtol=1e-5)


def test_an_instance_computes_some_of_the_named_losses():
    model = Student(net(0), net(1), loss_names=["match"])
    assert model.loss_names == ("match",) and model.loss_weights == {"match": 1.0}
    batch = {"features": X[:8], "weights": W[:8]}
    pred, target = model(batch).numpy(), model.teacher(X[:8]).numpy()
    expected = (((pred - target) ** 2).sum(-1) * W[:8]).sum() / W[:8].sum()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
    assert "l2_loss" not in logs
    np.testing.assert_allclose([logs["match_loss"], logs["loss"]], [expected] * 2, rtol=1e-5)
    config = Student(net(0), loss_names=["match"]).get_config()  # (an in-memory teacher is not saved)
    assert config["loss_names"] == ["match"]
    assert "loss_names" not in Student(net(0)).get_config()  # all of them: the class's
    assert Student.from_config(config).loss_names == ("match",)
    for bad in (["typo"], []):
        with pytest.raises(ValueError, match=r"`loss_names` must be some of Student's losses "
                                             r"\['match', 'l2'\]"):
            Student(net(0), loss_names=bad)

    class Derived(Student):  # loss names derived per instance (as the preference objectives')
        loss_names = property(lambda self: ("match",))

    assert Derived(net(0)).loss_names == ("match",)
    with pytest.raises(TypeError, match=r"^Derived derives its loss_names from its arguments; "
                                        r"it takes no `loss_names`\.$"):
        Derived(net(0), loss_names=["match"])


def test_loss_weights_are_checked():
    with pytest.raises(ValueError, match="unknown losses \\['typo'\\]"):
        Student(net(0), loss_weights={"typo": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        Student(net(0), loss_weights={"l2": -1.0})
    with pytest.raises(ValueError, match="Every loss weight"):
        Student(net(0), loss_weights={"l2": 0.0, "match": 0.0})
    with pytest.raises(ValueError, match="computes its own loss"):
        Student(net(0)).compile(loss="mse")


def test_precomputed_outputs_replace_the_frozen_model(tmp_path):
    teacher = net(1)
    online = Student(net(0), teacher)
    precomputed = precompute_frozen_outputs(online, "teacher", dataset(), path=tmp_path / "pre")
    batches = list(precomputed)
    assert "teacher_out" in batches[0] and len(batches) == 2
    np.testing.assert_allclose(batches[0]["teacher_out"], teacher(X[:8]), atol=1e-6)
    # Without any teacher, the precomputed values train exactly like the online teacher.
    offline = Student(net(0))
    for model in (online, offline):
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    online.fit(dataset(), epochs=1, verbose=0, shuffle=False)
    offline.fit(precomputed, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(online.weights, offline.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    # Neither a teacher nor precomputed outputs: a clear error.
    with pytest.raises(ValueError, match="precompute_frozen_outputs"):
        offline.compute_losses({"features": X}, None, offline({"features": X}))


CASE = ObjectiveCase(
    build=lambda: Student(net(0), net(1), loss_weights={"l2": 0.5}), data=dataset,
    metrics=("match_loss", "l2_loss"), optimizer=lambda: keras.optimizers.SGD(0.1), seed=0)


def test_keras_round_trip_reloads_the_frozen_model_from_its_source(tmp_path):
    teacher = net(1)
    teacher.save(tmp_path / "teacher.keras")
    case = dataclasses.replace(CASE, build=lambda: Student(
        net(0), FrozenModel.from_file(tmp_path / "teacher.keras"), loss_weights={"l2": 0.5}))
    loaded = assert_keras_round_trip_continues(case, tmp_path / "student.keras")
    assert loaded.loss_weights == {"match": 1.0, "l2": 0.5}
    assert loaded.teacher.source == {"file": str(tmp_path / "teacher.keras")}
    np.testing.assert_allclose(loaded.teacher(X), teacher(X), atol=1e-6)
    # An in-memory frozen model cannot be saved silently without its weights.
    with pytest.raises(ValueError, match="save_to_preset"):
        Student(net(0), net(1)).save(tmp_path / "bad.keras")


class Surgery(Student):
    per_loss_gradients = True


class Projected(Student):
    """PCGrad-like: the `l2` gradient's component against `match`'s is removed."""

    per_loss_gradients = True

    def combine_gradients(self, gradients, variables):
        out = []
        for g_match, g_l2 in zip(gradients["match"], gradients["l2"]):
            dot = tf.reduce_sum(g_match * g_l2)
            g_l2 = tf.where(dot < 0, g_l2 - dot / tf.reduce_sum(g_match ** 2) * g_match, g_l2)
            out.append(g_match + g_l2)
        return out


SURGERY = dataclasses.replace(
    CASE, build=lambda: Surgery(net(0), net(1), loss_weights={"l2": 0.5}))


def test_per_loss_gradients_with_the_default_combination_equal_the_plain_step():
    # Per-loss gradients under XLA train exactly like the plain graph step.
    assert_jit_matches_eager(SURGERY, rtol=1e-6, atol=0, one_device=fit(CASE),
                             weights_atol=1e-6)


def test_combine_gradients_hook_receives_each_loss_gradient():
    model = Projected(net(0), net(1), loss_weights={"l2": 0.5})
    batch = {"features": X[:8], "weights": W[:8]}
    variables = model.trainable_variables
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    with tf.GradientTape(persistent=True) as tape:
        terms = model.loss_terms(batch, None, model(batch, training=True))
    grads = {name: tape.gradient(term, variables) for name, term in terms.items()}
    expected = [w.numpy() - 0.1 * g.numpy() for w, g in zip(variables, model.combine_gradients(grads, variables))]
    model.train_on_batch(batch)
    for variable, value in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, atol=1e-6)


def test_per_loss_step_under_mirrored_equals_one_device(mirrored_strategy):
    assert_mirrored_matches_one_device(SURGERY, mirrored_strategy, atol=1e-6)
