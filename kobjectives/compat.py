"""Every use of a Keras private name, in one place.

kobjectives builds on public Keras and keras-hub APIs. Where no public API
does the job, the private name is used here and nowhere else, and
`tests/test_compat.py` fails when upstream changes it, so each use can be
revisited (and, once upstream has a public way, deleted):

| here | private Keras name | why |
|---|---|---|
| `flatten_layers` | `Layer._flatten_layers` | the recursive layer walk (no public one) |
| `seed_generators` | `Layer._seed_generators` | the random state of dropout, to replay it (GradCache) |
| `lora_state` | `Dense._kernel`, `EinsumDense._kernel`, `Embedding._embeddings` | a LoRA layer's unmerged weights: Keras checkpoints merge the adapters into the kernel and load them back as zeros, so `RunBackup` saves these to resume exactly |
| `share_embedding_table` | `Embedding._embeddings`, `Layer._untrack_variable`, `Layer._tracker` | two embedding layers over one variable (ELECTRA) |
| `loss_tracker` | `Trainer._loss_tracker` | the `loss` log, for a `train_step` that computes its own gradients |
| `is_multi_worker` | `MultiWorkerMirroredStrategy.extended._in_multi_worker_mode` | whether Keras reduces step logs on axis 0 |
| `symbolic_build` | `Trainer._symbolic_build` | builds a model and its optimizer from one batch or its spec, without a step (resume needs the variables; `Objective.fit` builds first so the step is traced once) |
| `TrainerWorkarounds` | `TensorFlowTrainer._maybe_symbolic_build`, `TensorFlowTrainer._make_function` | two Keras 3.15 bugs under `tf.distribute` (see `docs/distributed.md`) |

keras-hub private names: none are used.
"""

import functools

import keras
import tensorflow as tf


def flatten_layers(model):
    """Every layer inside `model`, recursively, `model` first."""
    return list(model._flatten_layers(include_self=True, recursive=True))


def seed_generators(layer):
    """The `keras.random.SeedGenerator`s a layer owns directly (dropout's)."""
    return list(getattr(layer, "_seed_generators", ()))


def lora_state(layer):
    """The variables a LoRA layer's Keras checkpoint does not restore: its
    kernel without the adapters (`Dense._kernel`, `EinsumDense._kernel`,
    `Embedding._embeddings`) and the two factors (`lora_kernel_a`/`_b`,
    `lora_embeddings_a`/`_b`). Keras saves the kernel with the adapters merged in and
    loads the factors back as zeros (`Dense.save_own_variables` /
    `load_own_variables`): the same function, but not the same training
    state. Empty for a layer without LoRA."""
    if not getattr(layer, "lora_enabled", False):
        return []
    if isinstance(layer, keras.layers.Embedding):
        return [layer._embeddings, layer.lora_embeddings_a, layer.lora_embeddings_b]
    return [layer._kernel, layer.lora_kernel_a, layer.lora_kernel_b]


def share_embedding_table(source, target):
    """Makes the built `keras.layers.Embedding` `target` use `source`'s table.

    Keras 3 has no public way to build a layer over an existing variable, so
    the target's own table is untracked and replaced by the source's
    (`Embedding._embeddings`, which `Embedding.embeddings` and
    `ReversibleEmbedding`'s reverse projection read). Afterwards both layers
    hold one `keras.Variable`: every caller reads the same tensor, every
    gradient accumulates on it, and Keras' weight lists (deduplicated by
    identity) and optimizers see it once.

    Raises:
        ValueError: the tables differ in shape or dtype, or a layer is
            quantized or uses LoRA.
    """
    for layer in (source, target):
        if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"Cannot share the table of a quantized or LoRA embedding ({layer.name})."
            )
    shared, own = source._embeddings, target._embeddings
    if own is shared:
        return
    if tuple(own.shape) != tuple(shared.shape) or own.dtype != shared.dtype:
        raise ValueError(
            "Token embeddings must have the same shape and dtype to be shared. Received: "
            f"{tuple(own.shape)} {own.dtype} and {tuple(shared.shape)} {shared.dtype}."
        )
    target._untrack_variable(own)
    locked = target._tracker.locked
    target._tracker.unlock()
    try:
        target._embeddings = shared  # tracked by the layer's attribute tracker
    finally:
        if locked:
            target._tracker.lock()


def loss_tracker(model):
    """The `keras.metrics.Mean` behind a compiled model's `loss` log."""
    return model._loss_tracker


def symbolic_build(model, batch):
    """Builds `model` (its variables, metrics and optimizer) from one batch,
    as `fit` does before its first step."""
    model._symbolic_build(data_batch=batch)


def is_multi_worker(strategy):
    """True under a `MultiWorkerMirroredStrategy` spanning several workers (the
    case in which Keras 3.15 reduces step logs with `axis=0`)."""
    extended = getattr(strategy, "extended", None)
    in_multi_worker_mode = getattr(extended, "_in_multi_worker_mode", None)
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and callable(in_multi_worker_mode)
        and bool(in_multi_worker_mode())
    )


class TrainerWorkarounds:
    """Two Keras 3.15 `tf.distribute` bugs, worked around for the models that
    inherit this mixin (kobjectives' `Objective`); Keras is not patched.

    1. Under a strategy, Keras builds the model from the first distributed
       batch by `strategy.reduce("MEAN", batch)`
       (`TensorFlowTrainer._maybe_symbolic_build`), which fails for bool
       inputs (a `padding_mask`) and, under `MultiWorkerMirroredStrategy`,
       for any `PerReplica` value. The build needs only shapes and dtypes, so
       the model is built from one local replica's batch instead.
    2. Under a multi-worker strategy, Keras reduces every step log with
       `strategy.reduce("MEAN", value, axis=0)`, which fails for scalar logs.
       The step's scalar logs get a leading axis of 1 there only
       (`TensorFlowTrainer._make_function`).

    `tests/test_compat.py` fails when upstream changes either method, and
    `tests/distribute/test_multi_worker.py` when upstream fixes either bug.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, distributed_iterator in iterator:
                data_batch = first_replica(self.distribute_strategy, next(distributed_iterator))
                break
        return super()._maybe_symbolic_build(iterator=None, data_batch=data_batch)

    def _make_function(self, step_function):
        if is_multi_worker(self.distribute_strategy):
            step_function = scalar_logs_with_replica_axis(step_function)
        return super()._make_function(step_function)


def first_replica(strategy, batch):
    """`batch` with every distributed value replaced by its first local replica's."""

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)


def scalar_logs_with_replica_axis(step_function):
    """Wraps a train/test step so its scalar logs have shape `[1]`."""

    def expand(value):
        if isinstance(value, (tf.Tensor, tf.Variable)) and value.shape.rank == 0:
            return tf.reshape(value, [1])
        return value

    @functools.wraps(step_function)
    def step(data):
        return tf.nest.map_structure(expand, step_function(data))

    return step


__all__ = [
    "TrainerWorkarounds",
    "first_replica",
    "flatten_layers",
    "is_multi_worker",
    "loss_tracker",
    "scalar_logs_with_replica_axis",
    "seed_generators",
    "share_embedding_table",
    "symbolic_build",
]
