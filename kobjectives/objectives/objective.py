"""`Objective`: the base class of every kobjectives objective, and the
plumbing objectives share to run a backbone."""

import keras
import numpy as np
import tensorflow as tf

from kobjectives import compat
from kobjectives.backbones import backbone_input_names
from kobjectives.objectives.frozen import FrozenModel
from kobjectives.ops.reduction import global_weighted_mean

def sequence_output(outputs):
    """The `[batch, length, hidden]` states from a backbone's outputs."""
    if isinstance(outputs, dict):
        if "sequence_output" not in outputs:
            raise ValueError(
                "The backbone returned a dict without 'sequence_output'. "
                f"Received keys: {sorted(outputs)}. Wrap the backbone so it "
                "returns the per-token hidden states."
            )
        return outputs["sequence_output"]
    return outputs


def run_backbone(backbone, inputs, training=False, all_outputs=False):
    """Runs a backbone on the keys it takes: `[batch, length, hidden]` states
    (with `all_outputs`, whatever the backbone returns, e.g. BERT's dict
    with `pooled_output`).

    Extra keys in `inputs` are ignored; missing `segment_ids` are zeros; a
    bool `padding_mask` is fed as int32 (what keras-hub backbones declare).

    Raises:
        ValueError: a key the backbone needs is missing (named in the error).
    """
    inputs = {k: tf.convert_to_tensor(v) for k, v in inputs.items()}
    feed = {}
    for name in backbone_input_names(backbone):
        if name in inputs:
            value = inputs[name]
            feed[name] = tf.cast(value, tf.int32) if value.dtype == tf.bool else value
        elif name == "segment_ids" and "token_ids" in inputs:
            feed[name] = tf.zeros_like(inputs["token_ids"])
        else:
            raise ValueError(
                f"The backbone needs input {name!r}, which the data does "
                f"not provide. Received keys: {sorted(inputs)}"
            )
    outputs = backbone(feed, training=training)
    return outputs if all_outputs else sequence_output(outputs)


class Objective(compat.TrainerWorkarounds, keras.Model):
    """Base `keras.Model` of the objectives: the roles of the models an
    objective holds, named losses, and a training step open to gradient
    surgery.

    **Roles.** A subclass names its sub-models by role (attribute names):

    - `trained_models` (default `("backbone",)`): trained, saved with the
      objective (`get_config` serializes them, `from_config` rebuilds them).
    - `frozen_models` (default none): used but never trained, each a
      `kobjectives.objectives.FrozenModel` (a teacher, a reference policy):
      not trainable, called with `training=False`, outside the objective's
      weights, checkpoints and export; saving stores only where it was
      loaded from. Its outputs may instead be precomputed into the data
      (`frozen_outputs`, `precompute_frozen_outputs`); the objective then
      needs no frozen model at all (pass None).
    - `exported_model` (default `"backbone"`): the trained model the
      objective exists to produce; a run saves it as its keras-hub preset
      (what `--init` starts the next run from).
    - `serving_model()`: what `kobjectives.export.export_saved_model`
      serves (default the objective itself, through its `export_outputs`).

    **Named losses.** An objective with several losses lists their names in
    `loss_names` and implements `compute_losses`, returning `{name: term}`,
    a term being `(per_example_values, weights)` (reduced here to the
    global-batch weighted mean, exact under `tf.distribute`) or an
    already-reduced scalar share. The base weights each term by
    `loss_weights[name]` (default 1), sums them once, adds the layers' own
    losses, and tracks every term, unweighted, as the metric `NAME_loss`.

    **Gradient surgery.** With `per_loss_gradients = True` the training
    step takes the gradient of every named loss separately
    (`compute_gradients`) and hands them to `combine_gradients`, which by
    default takes their weighted sum; override it to project, reweight or
    otherwise combine conflicting gradients (PCGrad, MGDA, GradNorm, ...).
    `compute_gradients` itself can be overridden to compute gradients
    another way (GradCache does, `CachedContrastiveEncoder`). Otherwise the
    step is Keras' own (one tape, one gradient of the total).

    **Loading.** Objectives override `compile()` to give defaults; Keras
    then skips re-compiling a loaded `.keras` file. `compile_from_config`
    re-compiles with the saved configuration (a loss the objective owns is
    dropped), so the optimizer and its state come back with the model.

    Two Keras 3.15 `tf.distribute` bugs are worked around for every
    objective (`kobjectives.compat.TrainerWorkarounds`).

    Args:
        loss_weights: optional dict `{loss name: weight}` for the named
            losses (`loss_names`); missing names weigh 1.
        loss_names: optional sequence, the named losses this instance
            computes: some of the class's `loss_names` (default: all of
            them), e.g. a term an option turns off, which then has no
            weight and no `{name}_loss` metric.
        **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).
    """

    trained_models = ("backbone",)
    frozen_models = ()
    exported_model = "backbone"
    # For each frozen model, the keys of its outputs that an input batch `x`
    # may hold precomputed, e.g. {"teacher": ("teacher_logits",)}.
    precomputed_outputs = {}
    loss_names = ()
    per_loss_gradients = False

    # `compile(optimizer="auto")`: AdamW at this learning rate, weight decay
    # 0.01, clipnorm 1.0.
    default_learning_rate = 5e-4
    # Objectives whose `compute_loss` computes the loss itself describe it
    # here; their `compile` then refuses a `loss`.
    own_loss = None

    def __init__(self, loss_weights=None, loss_names=None, **kwargs):
        super().__init__(**kwargs)
        if loss_names is not None:
            declared = _declared_loss_names(type(self))
            if declared is None:
                raise TypeError(f"{type(self).__name__} derives its loss_names from its "
                                "arguments; it takes no `loss_names`.")
            if not loss_names or set(loss_names) - set(declared):
                raise ValueError(
                    f"`loss_names` must be some of {type(self).__name__}'s losses "
                    f"{list(declared)}. Received: loss_names={list(loss_names)}")
            self.loss_names = tuple(name for name in declared if name in loss_names)
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(self.loss_names))
        if unknown:
            raise ValueError(
                f"`loss_weights` names unknown losses {unknown}; {type(self).__name__}'s "
                f"losses: {list(self.loss_names)}."
            )
        for name, weight in loss_weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                    not 0.0 <= float(weight) < float("inf"):
                raise ValueError(
                    f"`loss_weights[{name!r}]` must be a finite number >= 0. Received: {weight!r}"
                )
        self.loss_weights = {name: float(loss_weights.get(name, 1.0)) for name in self.loss_names}
        if self.loss_names and not any(self.loss_weights.values()):
            raise ValueError(
                f"Every loss weight of {type(self).__name__} is 0: nothing would be trained. "
                f"Make at least one of {list(self.loss_names)} positive."
            )
        self.loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_loss") for name in self.loss_names
        }

    # -- roles -----------------------------------------------------------------

    def freeze(self, model):
        """`model` as a `FrozenModel` (None stays None); for a subclass's
        `__init__`: `self.teacher = self.freeze(teacher)`."""
        return None if model is None else FrozenModel(model)

    def serving_model(self):
        """What the SavedModel serves: a layer with `export_outputs(inputs)`."""
        return self

    def compute_frozen_outputs(self, name, x):
        """The outputs `{key: tensor}` of frozen model `name` for the batch
        `x` (keys `precomputed_outputs[name]`); subclasses with frozen models
        implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} has no frozen model {name!r} to compute outputs with."
        )

    def frozen_outputs(self, name, x):
        """The outputs of frozen model `name` for `x`: taken from `x` where the
        data holds them precomputed (`precompute_frozen_outputs`), else
        computed by the frozen model, without gradient.

        Raises:
            ValueError: neither the data nor the objective provides them.
        """
        keys = tuple(self.precomputed_outputs.get(name, ()))
        if keys and isinstance(x, dict) and all(k in x for k in keys):
            return {k: tf.stop_gradient(x[k]) for k in keys}
        if getattr(self, name, None) is None:
            raise ValueError(
                f"{type(self).__name__} has no {name} model and the data holds no precomputed "
                f"{list(keys)}: pass a {name} model, or add its outputs to the data with "
                "kobjectives.objectives.precompute_frozen_outputs."
            )
        return tf.nest.map_structure(tf.stop_gradient, self.compute_frozen_outputs(name, x))

    # -- losses ----------------------------------------------------------------

    def compile(self, optimizer="auto", **kwargs):
        """Configures training, with the objective's defaults.

        Args:
            optimizer: `"auto"` (AdamW, learning rate `default_learning_rate`,
                weight decay 0.01, clipnorm 1.0) or any `keras.Model.compile`
                optimizer.
            **kwargs: passed to `keras.Model.compile` (`jit_compile`, ...).
                Objectives that own their loss refuse `loss`.
        """
        if self.own_loss is not None or self.loss_names:
            if kwargs.get("loss") is not None:
                raise ValueError(
                    f"{type(self).__name__} computes its own loss "
                    f"({self.own_loss or ' + '.join(self.loss_names)}); "
                    "do not pass `loss` to compile()."
                )
            kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(
                learning_rate=self.default_learning_rate, weight_decay=0.01, clipnorm=1.0
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compute_losses(self, x, y, y_pred, sample_weight=None, training=True):
        """The named losses `{name: term}` of a batch (see the class docstring);
        objectives with `loss_names` implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no named losses.")

    def loss_terms(self, x, y, y_pred, sample_weight=None, training=True):
        """`compute_losses` reduced: `{name: this replica's share of the
        global-batch loss}`, float32 scalars, unweighted."""
        terms = self.compute_losses(x, y, y_pred, sample_weight, training=training)
        if set(terms) != set(self.loss_names):
            raise ValueError(
                f"{type(self).__name__}.compute_losses returned {sorted(terms)}, "
                f"not its loss_names {list(self.loss_names)}."
            )
        shares = {}
        for name in self.loss_names:
            term = terms[name]
            if isinstance(term, (tuple, list)):
                values, weights = term
                shares[name] = global_weighted_mean(values, weights)
                self.loss_trackers[name].update_state(
                    tf.cast(values, tf.float32),
                    sample_weight=tf.broadcast_to(
                        tf.cast(weights, tf.float32), tf.shape(values)),
                )
            else:
                shares[name] = tf.cast(term, tf.float32)
                self.loss_trackers[name].update_state(unscale_for_distribution(shares[name]))
        return shares

    def weighted_total(self, shares):
        """`sum(loss_weights[name] * share)` over the named losses."""
        total = None
        for name in self.loss_names:
            term = self.loss_weights[name] * shares[name]
            total = term if total is None else total + term
        return total

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not self.loss_names:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        shares = self.loss_terms(x, y, y_pred, sample_weight, training=training)
        return self.add_layer_losses(self.weighted_total(shares))

    def add_layer_losses(self, loss):
        """`loss` plus the layers' own losses (`self.losses`: weight
        regularizers, activity losses), for a `compute_loss` override. Under a
        strategy each replica's step adds its share, so the sum over replicas
        adds them once."""
        if not self.losses:
            return loss
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses]) / replicas

    # -- the training step -------------------------------------------------------

    def compute_gradients(self, x, y, sample_weight, variables):
        """The per-loss path's gradients: `(shares, gradients, y_pred)` with
        `shares` `{name: replica share}` and `gradients` `{name: [gradient
        per variable]}` of each named loss (unweighted; loss-scaled under
        float16), plus `"layer_losses"` when the layers add losses.

        Override to compute gradients another way (GradCache)."""
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            shares = self.loss_terms(x, y, y_pred, sample_weight, training=True)
            if self.losses:
                shares["layer_losses"] = self.add_layer_losses(tf.constant(0.0))
            scaled = {name: self.optimizer.scale_loss(share) for name, share in shares.items()}
        gradients = {name: tape.gradient(value, variables) for name, value in scaled.items()}
        del tape
        return shares, gradients, y_pred

    def combine_gradients(self, gradients, variables):
        """One gradient per variable from the per-loss `gradients`
        (`{name: [gradient or None per variable]}`): by default
        `sum(loss_weights[name] * gradient)` (`layer_losses` weigh 1), the
        gradient of the weighted total. Override for gradient surgery."""
        combined = []
        for index in range(len(variables)):
            total = None
            for name, grads in gradients.items():
                grad = grads[index]
                if grad is None:
                    continue
                grad = tf.convert_to_tensor(grad) * self.loss_weights.get(name, 1.0)
                total = grad if total is None else total + grad
            combined.append(total)
        return combined

    def train_step(self, data):
        if not (self.per_loss_gradients or self._overrides("compute_gradients")):
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        shares, gradients, y_pred = self.compute_gradients(x, y, sample_weight, variables)
        total = None
        for name, share in shares.items():
            term = self.loss_weights.get(name, 1.0) * share
            total = term if total is None else total + term
        self.track_loss(total, x)
        combined = self.combine_gradients(gradients, variables)
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(combined, variables) if g is not None]
        )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def track_loss(self, loss, x):
        """Logs `loss` (this replica's share of the global mean) as the step's
        `loss`, weighted by the batch size of `x`: for a `train_step` or
        `test_step` that computes its loss itself."""
        first = next(t for t in tf.nest.flatten(x) if t is not None)
        compat.loss_tracker(self).update_state(
            unscale_for_distribution(loss), sample_weight=tf.shape(first)[0]
        )

    def _overrides(self, method):
        return getattr(type(self), method) is not getattr(Objective, method)

    # -- saving ------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        for name in self.trained_models:
            config[name] = keras.saving.serialize_keras_object(getattr(self, name))
        for name in self.frozen_models:
            frozen = getattr(self, name, None)
            config[name] = None if frozen is None else frozen.get_config()
        if self.loss_names:
            config["loss_weights"] = dict(self.loss_weights)
        declared = _declared_loss_names(type(self))
        if declared is not None and self.loss_names != declared:
            config["loss_names"] = list(self.loss_names)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in cls.trained_models:
            config[name] = keras.saving.deserialize_keras_object(config[name])
        for name in cls.frozen_models:
            if config.get(name) is not None:
                config[name] = FrozenModel.from_config(config[name])
        return cls(**config)

    def compile_from_config(self, config):
        config = dict(keras.saving.deserialize_keras_object(config))
        if config.get("loss") is None:
            config.pop("loss", None)  # objectives that own their loss refuse one
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; with a backup callback waiting to restore
        (`kobjectives.distribute.RunBackup`, `keras.callbacks.BackupAndRestore`)
        an unbuilt objective is first built from `x`'s first batch, since the
        restore needs the variables to exist; otherwise, for a `tf.data`
        `x`, from its element spec, so the train step is traced once."""
        callbacks = kwargs.get("callbacks")
        if len(args) >= 5 and callbacks is None:
            callbacks = args[4]  # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
        if not self.built and _backup_waiting(callbacks):
            self.build_from_dataset(x)
        elif isinstance(x, tf.data.Dataset):
            self._build_from_element_spec(x.element_spec)
        else:
            y = args[0] if args else kwargs.get("y")
            self._build_from_element_spec(_array_spec(x, y, kwargs.get("sample_weight")))
        return super().fit(x, *args, **kwargs)

    def _build_from_element_spec(self, element_spec):
        """Builds the objective and its optimizer from the spec of a batch
        (symbolically, as Keras does under a strategy; no data is read)
        before `fit` traces its step. Without a strategy Keras defers the
        build to the first trace, where creating the optimizer's variables
        makes `tf.function` trace the whole train step twice; building first
        traces it once (seconds per `fit` of a small model). Skipped where a
        dimension other than the batch is unknown, or all is built."""
        if element_spec is None or getattr(self, "optimizer", None) is None:
            return
        if self.optimizer.built and all(layer.built for layer in self.layers):
            return
        specs = tf.nest.flatten(element_spec)
        if not all(isinstance(spec, tf.TensorSpec) and spec.shape.rank is not None
                   and spec.shape[1:].is_fully_defined() for spec in specs):
            return
        with self.distribute_strategy.scope():
            compat.symbolic_build(self, element_spec)

    def build_from_dataset(self, dataset):
        """Builds the objective (and its optimizer) from one batch of a
        `tf.data.Dataset` or a distributed dataset, without training."""
        strategy = self.distribute_strategy
        batch = compat.first_replica(strategy, next(iter(dataset)))
        with strategy.scope():
            compat.symbolic_build(self, batch)


def unscale_for_distribution(value):
    """A replica's share of a global mean times the replicas: the global mean
    (what Keras logs)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * replicas if replicas > 1 else value


def _array_spec(x, y=None, sample_weight=None):
    """`fit`'s array inputs as the `(x[, y[, sample_weight]])` batch of
    `tf.TensorSpec`s with an unknown batch (floats as Keras feeds them,
    `floatx`); None where any leaf is not a NumPy array or a tensor."""
    data = (x, y, sample_weight)
    if sample_weight is None:
        data = (x,) if y is None else (x, y)
    leaves = tf.nest.flatten(data)
    if not leaves or not all(isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves):
        return None

    def spec(leaf):
        dtype = tf.as_dtype(leaf.dtype)
        if dtype.is_floating:
            dtype = tf.as_dtype(keras.config.floatx())
        return tf.TensorSpec([None, *leaf.shape[1:]], dtype)

    return tf.nest.map_structure(spec, data)


def _backup_waiting(callbacks):
    for callback in callbacks or ():
        has_backup = getattr(callback, "has_backup", None)
        if callable(has_backup):
            if has_backup():
                return True
        elif isinstance(callback, keras.callbacks.BackupAndRestore):
            return True
    return False


def _declared_loss_names(cls):
    """The class's `loss_names` tuple, or None where instances derive them
    (a property, e.g. from a list of loss types)."""
    names = cls.loss_names
    return names if isinstance(names, tuple) else None
