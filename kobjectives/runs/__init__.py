"""Training runs behind `kobjectives train`, one per objective."""

from kobjectives.runs import cpc
from kobjectives.runs import mlm
from kobjectives.runs import simcse

# recipe `objective` -> train(recipe, out_dir, data, tfds, data_dir, strategy, ...)
RUNNERS = {"mlm": mlm.train, "cpc": cpc.train, "simcse": simcse.train}
