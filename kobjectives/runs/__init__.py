"""Training runs behind `kobjectives train` and `kobjectives tune`, one module
per objective.

`RUNNERS` maps a recipe's `objective` to its run module. A run module provides:

- `SEARCH_SPACE`: dict, recipe key -> KerasTuner spec, the objective's natural
  hyperparameters: `("float", low, high, "log"|"linear")`, `("int", low,
  high)` or `("choice", [values])`, e.g. `{"training.learning_rate":
  ("float", 1e-4, 3e-3, "log")}`.
- `prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print)`
  -> dict: the expensive, hyperparameter-free part (documents and their
  train/validation split, the trained tokenizer, saved into `out_dir`).
- `make_dataset(recipe, prepared, split, batch_size, input_context=None)` ->
  `tf.data.Dataset`: `split` is `"train"` (shuffled, repeated) or
  `"validation"` (finite, deterministic); batches of `batch_size` with
  `drop_remainder=True` (static shapes); with a `tf.distribute.InputContext`
  `batch_size` is per replica and the data is sharded by
  `input_context.input_pipeline_id`.
- `build_model(recipe, prepared)` -> the compiled objective (the caller
  enters the strategy's scope).
- `train(recipe, out_dir, data=None, tfds=None, data_dir=None,
  strategy="auto", log=print, **extra)` -> the metrics dict, also written to
  `out_dir/metrics.json`.
"""

import importlib

# recipe `objective` -> module under kobjectives.runs (imported on first use).
RUNNERS = {
    "mlm": "mlm",
    "cpc": "cpc",
    "simcse": "simcse",
}


def runner_module(objective):
    """The run module of a recipe objective; the error lists the valid ones."""
    if objective not in RUNNERS:
        raise ValueError(
            f"Recipe objective {objective!r} has no runner. Valid: {', '.join(sorted(RUNNERS))}."
        )
    return importlib.import_module(f"kobjectives.runs.{RUNNERS[objective]}")


# One line per further objective (appended as objectives land):
RUNNERS["clm"] = "clm"  # recipe objective -> module kobjectives.runs.clm
RUNNERS["xlnet"] = "xlnet"  # recipe objective -> module kobjectives.runs.xlnet
RUNNERS["t5"] = "denoising"  # recipe objective -> module kobjectives.runs.denoising
RUNNERS["bart"] = "denoising"  # recipe objective -> module kobjectives.runs.denoising
RUNNERS["sentence_pairs"] = "sentence_pairs"  # recipes bert (NSP), albert (SOP) -> module kobjectives.runs.sentence_pairs
RUNNERS["electra"] = "electra"  # recipe objective -> module kobjectives.runs.electra
