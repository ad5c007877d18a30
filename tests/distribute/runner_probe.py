"""Tiny recipes for every registered runner, and a determinism probe.

`python tests/distribute/runner_probe.py OBJECTIVE` enables TensorFlow op
determinism (process-wide, irreversible, hence a separate process), trains the
runner's objective twice for a few steps from the same seed and prints one
JSON line: `PROBE {"losses": [[...], [...]]}`.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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


def recipe_for(objective):
    """The first bundled recipe whose `objective` is `objective`."""
    from kobjectives import recipe as recipe_lib

    names = recipe_lib.available_recipes()
    for name in sorted(names, key=lambda n: n != objective):  # the namesake first
        recipe = recipe_lib.load_recipe(name)
        if recipe.get("objective") == objective:
            return recipe
    raise LookupError(f"no bundled recipe has objective {objective!r}")


def tiny_recipe(objective):
    from kobjectives import recipe as recipe_lib

    recipe = recipe_for(objective)
    present = {
        key: value for key, value in TINY.items()
        if isinstance(recipe.get(key.split(".")[0]), dict) and key.split(".")[1] in recipe[key.split(".")[0]]
    }
    return recipe_lib.override(recipe, present)


def seeded_losses(runner, recipe, prepared, steps=3):
    """Per-step training losses of a fresh model from the recipe's seed."""
    import keras

    class Losses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append(float(logs["loss"]))

    keras.utils.clear_session()
    keras.utils.set_random_seed(int(recipe["training"]["seed"]))
    dataset = runner.make_dataset(recipe, prepared, "train", int(recipe["training"]["batch_size"]))
    model = runner.build_model(recipe, prepared)
    record = Losses()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[record])
    return record.values


def main(objective, out_dir):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    from kobjectives.runs import runner_module

    runner = runner_module(objective)
    recipe = tiny_recipe(objective)
    prepared = runner.prepare(recipe, out_dir, log=lambda *_: None)
    losses = [seeded_losses(runner, recipe, prepared) for _ in range(2)]
    print("PROBE " + json.dumps({"losses": losses}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
