"""Training runs behind `kobjectives train`, one per objective."""

from kobjectives.runs import mlm

# recipe `objective` -> train(recipe, out_dir, data, tfds, data_dir, strategy, ...)
RUNNERS = {"mlm": mlm.train}
