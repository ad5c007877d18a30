"""`Objective`: the base class of every kobjectives objective."""

import keras
import tensorflow as tf


class Objective(keras.Model):
    """Base `keras.Model` of the objectives: works around a Keras 3.15 bug.

    Under a `tf.distribute` strategy, Keras 3.15's TensorFlow trainer builds
    the model from the first distributed batch by
    `strategy.reduce("MEAN", batch)` (`TensorFlowTrainer._maybe_symbolic_build`).
    Reducing fails for non-float inputs (a bool `padding_mask`: "Value for attr
    'T' of bool is not in the list of allowed values") and, under
    `MultiWorkerMirroredStrategy`, for any `PerReplica` value. The build only
    needs shapes and dtypes, so this class builds from one local replica's
    batch instead. The override is scoped to kobjectives' objectives; Keras is
    not patched. `tests/objectives/test_objective.py` fails when upstream
    changes the method this relies on, so the workaround can be revisited.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            strategy = self.distribute_strategy

            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            for _, _, distributed_iterator in iterator:
                data_batch = tf.nest.map_structure(local, next(distributed_iterator))
                break
        return super()._maybe_symbolic_build(iterator=None, data_batch=data_batch)
