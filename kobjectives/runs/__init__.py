"""Training runs behind `kobjectives train`, one per objective."""

from kobjectives.runs import mlm

# recipe `objective` -> train(recipe, out_dir, data, tfds, data_dir, strategy, log)
RUNNERS = {"mlm": mlm.train}
from kobjectives.runs import cpc  # noqa: E402
RUNNERS["cpc"] = cpc.train
from kobjectives.runs import simcse  # noqa: E402
RUNNERS["simcse"] = simcse.train
