"""The shared test harness: tiny backbones, and the checks every
preprocessing layer, objective and run of the package must pass.

- Layers (`assert_layer_contract`): the outputs of one seeded call are the
  same eagerly and inside `Dataset.map`, batched and unbatched (where the
  unbatched outputs are the batched ones without the batch axis); shapes are
  static; the same seed gives the same outputs and another seed others; the
  config (and Keras serialization) round-trips to a layer with the same
  outputs.
- Objectives (`ObjectiveCase`, `fit`, `one_device_fixture`, `assert_jit_matches_eager`,
  `assert_mirrored_matches_one_device`, `assert_keras_round_trip_continues`):
  a seeded fit under `jit_compile=True` equals the graph-mode fit;
  `MirroredStrategy` over two logical CPUs equals one device with the global
  batch; a `.keras` round trip continues training with the same losses and
  weights.
- Runs (`tiny_run`): a registered run on a tiny recipe.

The SavedModel of every objective is served in a clean process by
`tests/export/test_export_every_objective.py`.
"""

import dataclasses
import json
import typing

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

# -- tiny backbones ---------------------------------------------------------------


def tiny_backbone(kind, vocabulary_size, sequence_length, hidden_dim=32, dropout=0.0,
                  **overrides):
    """A one-layer keras-hub backbone of `kind` built from config.

    Args:
        kind: `"bert"`, `"albert"`, `"roberta"`, `"distilbert"`, `"electra"`,
            `"gpt2"`, `"t5"`, `"bart"` or `"xlnet"`.
        vocabulary_size: int.
        sequence_length: int, the backbone's `max_sequence_length` (ignored
            by T5 and XLNet, which have no position table).
        hidden_dim: int.
        dropout: float.
        **overrides: other constructor arguments.
    """
    half = max(hidden_dim // 2, 2)
    common = dict(num_layers=1, num_heads=2, hidden_dim=hidden_dim,
                  intermediate_dim=2 * hidden_dim, dropout=dropout)
    positions = dict(max_sequence_length=sequence_length)
    configs = {
        "bert": (keras_hub.models.BertBackbone,
                 dict(vocabulary_size=vocabulary_size, **common, **positions)),
        "albert": (keras_hub.models.AlbertBackbone,
                   dict(vocabulary_size=vocabulary_size, embedding_dim=half, **common, **positions)),
        "roberta": (keras_hub.models.RobertaBackbone,
                    dict(vocabulary_size=vocabulary_size, **common, **positions)),
        "distilbert": (keras_hub.models.DistilBertBackbone,
                       dict(vocabulary_size=vocabulary_size, **common, **positions)),
        "electra": (keras_hub.models.ElectraBackbone,
                    dict(vocab_size=vocabulary_size, embedding_dim=half, **common, **positions)),
        "gpt2": (keras_hub.models.GPT2Backbone,
                 dict(vocabulary_size=vocabulary_size, **common, **positions)),
        "bart": (keras_hub.models.BartBackbone,
                 dict(vocabulary_size=vocabulary_size, **common, **positions)),
        "t5": (keras_hub.models.T5Backbone,
               dict(vocabulary_size=vocabulary_size, num_layers=1, num_heads=2,
                    hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, key_value_dim=half,
                    dropout=dropout, tie_embedding_weights=True)),
        "xlnet": (keras_hub.models.XLNetBackbone,
                  dict(vocabulary_size=vocabulary_size, num_layers=1, num_heads=2,
                       hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim,
                       dropout=dropout)),
    }
    if kind not in configs:
        raise ValueError(f"Unknown backbone kind {kind!r}. Valid: {sorted(configs)}.")
    cls, config = configs[kind]
    config.update(overrides)
    return cls(**config)


# -- layers ---------------------------------------------------------------------------


def _numpy(structure):
    return tf.nest.map_structure(lambda t: np.asarray(t), structure)


def assert_same_structure_and_values(first, second, atol=0.0):
    """Equal nested outputs: keys, shapes, dtypes and values."""
    tf.nest.assert_same_structure(first, second)
    for a, b in zip(tf.nest.flatten(_numpy(first)), tf.nest.flatten(_numpy(second))):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        if atol:
            np.testing.assert_allclose(a, b, atol=atol)
        else:
            np.testing.assert_array_equal(a, b)


def _differ(first, second):
    return any(
        a.shape != b.shape or not np.array_equal(a, b)
        for a, b in zip(tf.nest.flatten(_numpy(first)), tf.nest.flatten(_numpy(second)))
    )


def assert_layer_contract(make_layer, batch, seeded=True, unbatched="rows"):
    """The contract of a preprocessing layer.

    Args:
        make_layer: `seed -> layer` (a fresh layer; the seed is ignored by
            layers without randomness).
        batch: a batched input (a tensor, ragged tensor or dict of them).
        seeded: the layer takes `seed=` (a `[2]` stateless seed) in `call`,
            as `SeededLayer`s do; checks that seeds decide the outputs.
        unbatched: `"rows"`: a row's outputs depend only on that row (and
            the seed), so an unbatched call on row 0 equals row 0 of the
            batched call; `"spec"`: the unbatched call's outputs have the
            batched structure, shapes and dtypes without the batch axis
            (rows draw from one batch-wide stream); `None`: the layer's
            unbatched input is not a row of its batch (a packer's document
            stream), checked by its own tests.
    """
    seed = tf.constant([3, 5], "int64")
    kwargs = {"seed": seed} if seeded else {}
    layer = make_layer(11)
    eager = layer(batch, **kwargs)

    # Static shapes; the same outputs inside Dataset.map (graph mode).
    in_map = make_layer(11)  # layers (their seed generators) are made outside the graph
    mapped = tf.data.Dataset.from_tensors(batch).map(lambda x: in_map(x, **kwargs))
    for spec in tf.nest.flatten(mapped.element_spec):
        assert spec.shape.rank is not None and all(
            d is not None for d in spec.shape[1:]), mapped.element_spec
    assert_same_structure_and_values(next(iter(mapped)), eager)

    # Unbatched: the batched outputs without the batch axis.
    if unbatched:
        first_row = tf.nest.map_structure(lambda t: t[0], batch)
        single = make_layer(11)(first_row, **kwargs)
        expected = tf.nest.map_structure(lambda t: t[0], eager)
        if unbatched == "rows":
            assert_same_structure_and_values(single, expected)
        else:
            tf.nest.assert_same_structure(single, expected)
            for a, b in zip(tf.nest.flatten(single), tf.nest.flatten(expected)):
                assert a.shape == b.shape and a.dtype == b.dtype, (a, b)
        per_row = make_layer(11)
        rows = tf.data.Dataset.from_tensor_slices(batch).map(lambda x: per_row(x, **kwargs))
        assert_same_structure_and_values(next(iter(rows)), single)

    # Seeds decide the outputs.
    if seeded:
        assert_same_structure_and_values(make_layer(11)(batch, seed=seed), eager)
        assert _differ(layer(batch, seed=tf.constant([4, 5], "int64")), eager), \
            "another seed gave the same outputs"

    # Config and Keras serialization round trips.
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert_same_structure_and_values(clone(batch, **kwargs), eager)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


# -- objectives -------------------------------------------------------------------------


@dataclasses.dataclass
class ObjectiveCase:
    """One objective on fixed data, for the objective checks.

    Attributes:
        build: `() -> objective`, uncompiled (called in a strategy scope,
            after `keras.utils.set_random_seed(seed)`).
        data: the keyword arguments of `model.fit` for the data (`x`, `y`,
            `sample_weight`, `batch_size`), or `() -> tf.data.Dataset`.
        metrics: the logged metrics compared besides `loss`.
        optimizer: `() -> optimizer`.
        seed: int.
    """

    build: typing.Callable
    data: typing.Any
    metrics: tuple = ()
    optimizer: typing.Callable = lambda: keras.optimizers.SGD(0.5)
    seed: int = 7

    def dataset_or_arrays(self):
        return {"x": self.data()} if callable(self.data) else dict(self.data)


def fit(case, strategy=None, jit_compile=False, epochs=2):
    """`(model, history)`: `case`'s objective fitted from its seed."""
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(case.seed)
        model = case.build()
        model.compile(optimizer=case.optimizer(), jit_compile=jit_compile)
    history = model.fit(**case.dataset_or_arrays(), epochs=epochs, shuffle=False,
                        verbose=0).history
    return model, history


def assert_histories_match(first, second, keys, rtol=1e-5, atol=1e-6):
    for key in keys:
        np.testing.assert_allclose(first[key], second[key], rtol=rtol, atol=atol, err_msg=key)


def one_device_fixture(case):
    """A module-scoped pytest fixture `one_device`: `fit(case)` once, the
    graph-mode one-device reference that a module's jit and mirrored checks
    share (`one_device = one_device_fixture(CASE)` in the test module). It
    fits under the float32 policy whatever test of the module ran before."""

    @pytest.fixture(scope="module", name="one_device")
    def _one_device():
        keras.mixed_precision.set_global_policy("float32")
        return fit(case)

    return _one_device


def assert_jit_matches_eager(case, rtol=1e-5, atol=1e-6, learns=True, one_device=None,
                             weights_atol=None):
    """A seeded fit under XLA equals the graph-mode fit `one_device` (default
    `fit(case)`; or an equivalent reference fit); returns that graph fit
    `(model, history)`. With `weights_atol`, the trained weights are equal
    too. With `learns`, the loss falls."""
    graph = one_device or fit(case)
    xla_model, xla = fit(case, jit_compile=True)
    assert_histories_match(xla, graph[1], ("loss", *case.metrics), rtol, atol)
    if weights_atol is not None:
        for a, b in zip(graph[0].get_weights(), xla_model.get_weights()):
            np.testing.assert_allclose(a, b, atol=weights_atol)
    if learns:
        assert graph[1]["loss"][-1] < graph[1]["loss"][0], graph[1]["loss"]
    return graph


def assert_mirrored_matches_one_device(case, strategy, one_device=None, atol=1e-5):
    """`strategy` (two logical CPU replicas, each half the global batch)
    trains to the same logged values and weights as one device."""
    single, single_history = one_device or fit(case)
    mirrored, mirrored_history = fit(case, strategy=strategy)
    assert_histories_match(mirrored_history, single_history, ("loss", *case.metrics), 0, atol)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, atol=atol)


def _json(config):
    return json.loads(json.dumps(config, default=str))


def assert_keras_round_trip_continues(case, path, atol=1e-6):
    """A fitted objective saved to `.keras` and loaded is the same class and
    config, holds the same weights and optimizer state, and trains on with
    the same losses and weights as the original."""
    model, _ = fit(case, epochs=1)
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    # As JSON: a saved nested model's build shapes come back as lists.
    assert _json(restored.get_config()) == _json(model.get_config())
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations)
    keras.utils.set_random_seed(case.seed + 1)
    continued = model.fit(**case.dataset_or_arrays(), epochs=1, shuffle=False, verbose=0)
    keras.utils.set_random_seed(case.seed + 1)
    again = restored.fit(**case.dataset_or_arrays(), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(again.history["loss"], continued.history["loss"], atol=atol)
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_allclose(a, b, atol=atol)
    return restored


# -- runs ---------------------------------------------------------------------------------

TINY_RUN = {
    "data.max_documents": 300,
    "data.validation_fraction": 0.2,
    "tokenizer.vocabulary_size": 300,
    "tokenizer.max_training_documents": 0,
    "model.sequence_length": 32,
    "training.batch_size": 4,
    "training.steps": 3,
    "training.epochs": 1,
    "training.warmup_steps": 1,
    "training.validation_batches": 1,
    "training.jit_compile": False,
    "mlm.steps": 2,
    "mlm.batch_size": 4,
    "mlm.warmup_steps": 1,
    "clm.chunk_size": 256,
}
"""Tiny values for every run; each applies where the recipe has the key."""


def assert_lora_trained(start, trained, rank, adapted=("query", "value"), also_trained=()):
    """`trained` (a backbone loaded from a LoRA run's preset, adapters merged)
    differs from `start` as rank-`rank` LoRA on the layers named in `adapted`
    allows: their kernels moved by `A @ B` of rank <= `rank` (their biases
    train too), layers in `also_trained` may change, every other weight is
    exactly the start's."""
    moved = []
    for new, old in zip(trained.weights, start.weights):
        layer, name = new.path.split("/")[-2:]
        before, after = old.numpy(), new.numpy()
        if layer in also_trained:
            continue
        if layer not in adapted:
            np.testing.assert_array_equal(after, before, err_msg=new.path)
        elif name == "kernel":
            # Keras factors a kernel [..., out] as A [..., rank] @ B [rank, out]
            # (an attention projection's rank per head).
            delta = (after - before).reshape(-1, before.shape[-1])
            assert 0 < np.linalg.matrix_rank(delta, tol=1e-6) <= rank, new.path
            moved.append(new.path)
    assert moved, f"no kernel of the layers {adapted} moved"


def tiny_run(name, out_dir, overrides=None, log=lambda *_: None, **kwargs):
    """The registered run `name` on a tiny recipe (`TINY_RUN`, then
    `overrides` `{"section.key": value}`), writing into `out_dir`."""
    from kobjectives.runs import run_class

    cls = run_class(name)
    recipe = cls.recipe_class()
    recipe = recipe.replace({k: v for k, v in TINY_RUN.items() if k in recipe.keys()})
    if overrides:
        recipe = recipe.replace(overrides)
    return cls(recipe, out_dir, log=log, **kwargs)
