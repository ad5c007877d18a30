"""`FrozenModel`: a model an objective uses but never trains (a teacher, a
reference policy), and `precompute_frozen_outputs`, which writes its outputs
into the data once so training does not hold it."""

import pathlib

import keras
import tensorflow as tf


class FrozenModel:
    """A model an objective calls but never trains: a distillation teacher,
    the reference policy of preference optimization.

    It is deliberately *not* a Keras layer, so the objective holding it does
    not track it: its variables are not in the objective's `weights` or
    `trainable_variables`, the optimizer never sees them, and they are left
    out of the objective's checkpoints (`save_weights`, `model.keras`) and of
    its SavedModel export. It is always called with `training=False` (no
    dropout) and its outputs carry no gradient. Saving the objective stores
    where the frozen model comes from (a keras-hub preset or a `.keras`
    file), and loading it reloads the model from there.

    Under `tf.distribute`, create it inside the strategy's scope, as the
    objective.

    Args:
        model: a built `keras.Model`.
        source: where `model` was loaded from, `{"preset": path_or_name}` or
            `{"file": path}`; `from_preset` and `from_file` set it. An
            objective holding a frozen model without a source cannot be
            saved (its weights would be lost).

    Input and output: whatever `model` takes and returns; the outputs are
        wrapped in `tf.stop_gradient`.

    Example:

    >>> import keras, numpy as np
    >>> teacher = FrozenModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    >>> teacher.model.trainable
    False
    >>> teacher(np.ones((4, 3), "float32")).shape
    TensorShape([4, 2])
    """

    def __init__(self, model, source=None):
        if isinstance(model, FrozenModel):
            model, source = model.model, source or model.source
        if not isinstance(model, keras.Model):
            raise TypeError(
                "FrozenModel wraps a keras.Model (e.g. a keras-hub Backbone). "
                f"Received: {type(model).__name__}. Load one with FrozenModel.from_preset(...) "
                "or FrozenModel.from_file(...)."
            )
        if source is not None and set(source) not in ({"preset"}, {"file"}):
            raise ValueError(
                f"`source` must be {{'preset': path}} or {{'file': path}}. Received: {source!r}"
            )
        model.trainable = False
        self.model = model
        self.source = dict(source) if source else None

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """A frozen keras-hub `Backbone` from a preset directory (one written by
        `save_to_preset`, or a run folder's `preset/`) or a preset name
        keras-hub can resolve. `kwargs` go to `Backbone.from_preset`."""
        import keras_hub

        return cls(
            keras_hub.models.Backbone.from_preset(str(preset), **kwargs),
            source={"preset": str(preset)},
        )

    @classmethod
    def from_file(cls, path):
        """A frozen model from a `.keras` file (`keras.saving.load_model`)."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No model file at {path}: give a `.keras` file.")
        return cls(keras.saving.load_model(path, compile=False), source={"file": str(path)})

    def __call__(self, *args, **kwargs):
        kwargs["training"] = False
        return tf.nest.map_structure(tf.stop_gradient, self.model(*args, **kwargs))

    @property
    def variables(self):
        return self.model.variables

    def get_config(self):
        if self.source is None:
            raise ValueError(
                f"The frozen model {self.model.name!r} was given in memory, so the objective "
                "cannot be saved without losing it (frozen weights are not saved with the "
                "objective). Save it with `save_to_preset(DIR)` and pass "
                "`FrozenModel.from_preset(DIR)` (or a `.keras` file with `FrozenModel.from_file`)."
            )
        return dict(self.source)

    @classmethod
    def from_config(cls, config):
        if "preset" in config:
            return cls.from_preset(config["preset"])
        return cls.from_file(config["file"])


def precompute_frozen_outputs(objective, name, dataset, path=None):
    """Adds the outputs of an objective's frozen model to every batch, once.

    Runs `objective.compute_frozen_outputs(name, x)` over `dataset` in one
    pass and returns the batches with those outputs added to `x` (keys
    `objective.precomputed_outputs[name]`): an objective fed them uses them
    instead of calling the frozen model (`Objective.frozen_outputs`), so the
    frozen model need not be held during training. With `path` the result is
    written there (`tf.data.Dataset.save`) and read back from disk.

    Args:
        objective: an `Objective` with the frozen model `name`.
        name: the frozen model's attribute name (in `objective.frozen_models`).
        dataset: a finite `tf.data.Dataset` of `x` dicts or `(x, ...)` tuples,
            in a fixed order (no reshuffling: the outputs follow the batches).
        path: optional directory to save the dataset to.

    Returns:
        A `tf.data.Dataset` of the same structure, `x` with the outputs added.
    """
    if name not in objective.frozen_models:
        raise ValueError(
            f"{type(objective).__name__} has no frozen model {name!r}; its frozen models: "
            f"{list(objective.frozen_models) or 'none'}."
        )
    compute = tf.function(lambda x: objective.compute_frozen_outputs(name, x))

    def add(element):
        if isinstance(element, tuple):
            x, rest = element[0], element[1:]
            return (dict(x, **compute(x)),) + rest
        return dict(element, **compute(element))

    # Computed once, in order, outside tf.data's threads (the model may sit
    # on an accelerator); the results are streamed into a new dataset.
    spec = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), add(next(iter(dataset)))
    )
    result = tf.data.Dataset.from_generator(
        lambda: (add(element) for element in dataset), output_signature=spec
    )
    if path is None:
        return result.cache()
    result.save(str(path))
    return tf.data.Dataset.load(str(path))
