"""Tiny recipes for every registered run, and a determinism probe.

`python tests/distribute/runner_probe.py NAME OUT_DIR` enables TensorFlow op
determinism (process-wide, irreversible, hence a separate process), trains
the run's objective twice for a few steps from the same seed and prints one
JSON line: `PROBE {"losses": [[...], [...]]}`.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Applied where the recipe has the key.
TINY = {
    "data.max_documents": 300,
    "data.validation_fraction": 0.2,
    "tokenizer.vocabulary_size": 300,
    "tokenizer.max_training_documents": 0,
    "model.sequence_length": 32,
    "model.dropout": 0.1,
    "training.batch_size": 4,
    "training.steps": 3,
    "training.epochs": 1,
    "training.warmup_steps": 1,
    "training.validation_batches": 1,
    "mlm.steps": 2,
    "mlm.batch_size": 4,
    "mlm.warmup_steps": 1,
    "clm.chunk_size": 256,
}


def tiny_run(name, out_dir):
    """The registered run `name` on a tiny recipe, its data and tokenizer
    prepared in `out_dir`."""
    from kobjectives.runs import run_class

    cls = run_class(name)
    recipe = cls.recipe_class()
    recipe = recipe.replace({k: v for k, v in TINY.items() if k in recipe.keys()})
    run = cls(recipe, out_dir, log=lambda *_: None)
    run.prepare()
    return run


def seeded_losses(run, steps=3):
    """Per-step training losses of a fresh objective from the recipe's seed."""
    import keras

    class Losses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append(float(logs["loss"]))

    keras.utils.clear_session()
    keras.utils.set_random_seed(run.recipe.training.seed)
    dataset = run.make_dataset("train", run.recipe.training.batch_size)
    model = run.build_model()
    record = Losses()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[record])
    return record.values


def main(name, out_dir):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    run = tiny_run(name, out_dir)
    losses = [seeded_losses(run) for _ in range(2)]
    print("PROBE " + json.dumps({"losses": losses}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
