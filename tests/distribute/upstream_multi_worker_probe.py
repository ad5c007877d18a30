"""Run on each of two workers (with TF_CONFIG): probes Keras' `fit` under
`MultiWorkerMirroredStrategy` and prints one JSON line of outcomes.

- `plain`: a plain `keras.Model` (Keras 3.15 fails in `_maybe_symbolic_build`).
- `build_fix_only`: an `Objective` with the upstream `_make_function`
  (fails in `reduce_per_replica`: "Invalid reduction dimension").
- `objective`: an `Objective` with both workarounds (trains).
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kobjectives.distribute import distribute_datasets  # noqa: E402
from kobjectives.objectives.objective import Objective  # noqa: E402


class Regressor(Objective):
    trained_models = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)


class UpstreamReduce(Regressor):
    _make_function = keras.Model._make_function


def dataset(batch_size, context=None):
    x = np.arange(64, dtype="float32").reshape(32, 2) / 64.0
    ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True)))
    if context is not None:
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    return ds.repeat().batch(batch_size, drop_remainder=True)


def attempt(make_model):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = make_model()
        model.compile(optimizer="sgd", loss="mse")
    try:
        history = model.fit(distribute_datasets(strategy, dataset, 8), epochs=1,
                            steps_per_epoch=3, verbose=0)
        return {"ok": True, "loss": float(history.history["loss"][-1]),
                "weights": [w.tolist() for w in model.get_weights()]}
    except Exception as error:  # noqa: BLE001 - the probe reports any failure
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}


def plain():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


print("PROBE " + json.dumps({
    "plain": attempt(plain),
    "build_fix_only": attempt(UpstreamReduce),
    "objective": attempt(Regressor),
}), flush=True)
